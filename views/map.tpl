<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Collection map — Siamese</title>
  <link rel="icon" href="static/favicon.svg?v={{version}}" type="image/svg+xml">
  <link rel="stylesheet" href="static/app.css?v={{version}}">
  <link rel="stylesheet" href="static/map.css?v={{version}}">
  <script id="collection" type="application/json">{{!info_json.replace("</", "<\\/")}}</script>
  <script id="map-data" type="application/json">{{!map_json.replace("<", "\\u003c")}}</script>
  % if map_json != "null":
  <script src="static/dom.js?v={{version}}" defer></script>
  <script src="static/map.js?v={{version}}" defer></script>
  % end
</head>
<body class="map-page">
  <header class="site-header">
    <a class="brand" href="./" title="The search page">Siamese</a>
    <nav class="site-nav" aria-label="Pages">
      <a href="./">Search</a>
      <a href="map" aria-current="page">Map</a>
    </nav>
    <p class="collection" id="collection-summary">
      {{count}} images
      % if info["years"]:
      · {{info["years"]["first"]}}–{{info["years"]["last"]}}
      % end
      · {{info["model"]}}
    </p>
  </header>

  % if map_json == "null":
  <main class="map-none">
    <div id="no-map" class="message no-map" role="alert">
      <p>No map built for this collection yet: <code>python make_map.py VECTOR_DIR INDEX_DIR --thumbnails THUMBNAIL_DIR</code></p>
      <p><a href="./">Back to the search page</a></p>
    </div>
  </main>
  % else:
  <main class="map-main">
    <div id="message" class="message" role="alert" hidden></div>
    <div class="map-layout">
      <div class="map-column">
        <div id="stage" class="map-stage">
          <canvas id="map" class="map-canvas" tabindex="0"
                  aria-label="Map of the collection: similar images lie close together. Drag or use the arrow keys to move, the wheel or + and − to zoom, 0 to see it all; click a point to search from its image."></canvas>
          <canvas id="map-marks" class="map-marks" aria-hidden="true"></canvas>
          <p id="map-loading" class="map-loading" role="status">Loading the map…</p>
          <div id="year-display" class="map-year all" aria-live="polite">all years</div>
          <div class="map-zoom" role="group" aria-label="Zoom">
            <button type="button" id="zoom-in" title="Zoom in (+)" aria-label="Zoom in">+</button>
            <button type="button" id="zoom-out" title="Zoom out (−)" aria-label="Zoom out">−</button>
            <button type="button" id="zoom-reset" title="The whole map (0)" aria-label="Show the whole map">⤢</button>
          </div>
          <div id="legend" class="map-legend" aria-label="Legend"></div>
          <div id="tooltip" class="map-tooltip" role="tooltip" hidden></div>
        </div>
        <div class="map-controls">
          <button type="button" id="play" class="play" aria-pressed="false" title="Step through the years">▶ Play</button>
          <label class="year-slider">
            <span class="visually-hidden">Year shown</span>
            <input id="year" type="range" min="0" max="0" step="1" value="0">
          </label>
          <output id="year-value" for="year" class="year-value">all years</output>
          <fieldset class="colour-by">
            <legend class="visually-hidden">Colour the points by</legend>
            colour by
            <label><input type="radio" name="colour" value="year" checked> year</label>
            <label><input type="radio" name="colour" value="cluster"> cluster</label>
          </fieldset>
        </div>
        <div id="filters" class="filters map-filters" role="group" aria-label="Filters" hidden></div>
        <p id="map-summary" class="hint map-summary" aria-live="polite"></p>
      </div>
      <section class="streams" aria-labelledby="streams-heading">
        <div class="section-head">
          <h2 id="streams-heading">Themes over time</h2>
          <div id="stream-mode" class="steps" role="group" aria-label="Stream height">
            <button type="button" data-mode="share" aria-pressed="true">share</button>
            <button type="button" data-mode="count" aria-pressed="false">number</button>
          </div>
        </div>
        <p class="hint">The largest clusters' part of each period. Click a stream to show its images on the map;
          click it again to show all.</p>
        <div id="streams" class="stream-graph"></div>
        <p id="stream-label" class="stream-label" aria-live="polite"></p>
      </section>
    </div>
  </main>
  % end
</body>
</html>
