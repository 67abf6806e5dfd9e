<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Siamese — visual similarity search</title>
  <link rel="icon" href="static/favicon.svg?v={{version}}" type="image/svg+xml">
  <link rel="stylesheet" href="static/app.css?v={{version}}">
  <script id="collection" type="application/json">{{!info_json.replace("</", "<\\/")}}</script>
  <script src="static/dom.js?v={{version}}" defer></script>
  <script src="static/app.js?v={{version}}" defer></script>
</head>
<body>
  <header class="site-header">
    <a class="brand" href="./" title="Start again with random images">Siamese</a>
    <form id="search" class="search" action="./" method="get" role="search">
      <label class="visually-hidden" for="urn">Identifier (urn) of an image</label>
      <input id="urn" name="urn" type="search" autocomplete="off" spellcheck="false" required
             placeholder="Identifier (urn) of an image">
      <button type="submit">Search</button>
      <button type="button" id="random" title="Search with an image drawn at random">Random</button>
    </form>
    <div id="drop-zone" class="drop-zone" title="Search with an image from your computer (at most 20 MB)">
      <label for="upload-file" class="upload-button">Upload an image</label>
      <input id="upload-file" class="visually-hidden" type="file" accept="image/*">
      <span class="drop-hint">or drop one here</span>
    </div>
    <nav class="site-nav" aria-label="Pages"><a href="map" title="Every image of the collection on one map, and its themes over time">Map</a></nav>
    <p class="collection" id="collection-summary">
      {{count}} images
      % if info["years"]:
      · {{info["years"]["first"]}}–{{info["years"]["last"]}}
      % end
      · {{info["model"]}} · {{info["metric"]}} distance
    </p>
  </header>

  <main>
    <div id="message" class="message" role="alert" hidden></div>
    <p id="status" class="status" role="status" aria-live="polite" hidden></p>

    <section id="start" class="start" hidden>
      <h1>Which images look alike, and when?</h1>
      <p class="lead">Pick any image to see the most similar ones in the whole collection and in every
        period of its timeline. Click a result to search from it; the browser's back button returns.</p>
      <div id="random-images" class="grid"></div>
    </section>

    <div id="results" class="results" hidden>
      <div id="filters" class="filters" role="group" aria-label="Filters" hidden></div>
      <aside class="query-card" aria-labelledby="query-title">
        <h2 class="card-heading">Query image</h2>
        <figure id="query" class="query-figure"></figure>
        <h3 id="query-title" class="query-title"></h3>
        <button id="keep" class="keep" type="button" aria-pressed="false" hidden>Keep in the basket</button>
        <dl id="query-metadata" class="metadata"></dl>
        <a id="map-inset" class="map-inset" href="map" hidden>
          <span class="map-inset-frame"><img id="map-inset-image" alt="The collection map"><span
            id="map-inset-marker" class="map-inset-marker"></span></span>
          <span class="map-inset-caption">Where it lies on the collection map: open the map there</span>
        </a>
      </aside>

      <div class="result-lists">
        <section aria-labelledby="neighbours-heading">
          <div class="section-head">
            <h2 id="neighbours-heading">Most similar in the whole collection</h2>
            <p class="hint">nearest first · year and distance under each image</p>
            <label class="nns-choice">show
              <select id="nns" aria-label="Neighbours per list"></select> per list</label>
          </div>
          <p id="reprint-summary" class="reprint-summary" hidden></p>
          <div id="neighbours" class="grid"></div>
        </section>

        <section aria-labelledby="timeline-heading">
          <div class="section-head">
            <h2 id="timeline-heading">Most similar in each period</h2>
            <div id="steps" class="steps" role="group" aria-label="Period length"></div>
          </div>
          <figure id="chart-section" class="chart-figure">
            <div id="chart" class="chart"></div>
            <figcaption>Distance of the closest image in each period: the taller the bar, the more alike
              (the lines are distances to read them against). <span class="legend own"></span> the query's own
              period · <span class="legend empty"></span> no images · click a bar to go to its row.</figcaption>
          </figure>
          <div id="timeline" class="timeline"></div>
        </section>
        <p class="downloads">Download this answer (the whole collection and every period shown):
          <a id="download-csv" href="#">CSV</a> · <a id="download-json" href="#">JSON</a></p>
      </div>
    </div>
    <section id="basket" class="basket" aria-labelledby="basket-heading" hidden>
      <h2 id="basket-heading">Basket: <span id="basket-count">0</span> kept</h2>
      <p class="hint">Images kept across searches (in this browser); download them as a list.</p>
      <div id="basket-images" class="grid"></div>
      <p class="downloads"><a id="basket-csv" href="#">CSV</a> · <a id="basket-json" href="#">JSON</a> ·
        <button id="basket-empty" type="button" class="link-button">empty the basket</button></p>
    </section>
  </main>

  <footer class="footer">
    JSON API: <code>api/neighbours?urn=…&amp;nns=10&amp;step={{info["steps"][-1]}}&amp;vectors=false&amp;reprints=20</code> ·
    <code>api/item?urn=…</code> · <code>api/random?n=1&amp;period=…</code> · <code>api/collection</code> ·
    <code>thumbnail?urn=…</code> · <code>POST api/search</code> (multipart <code>image</code>, <code>nns</code>,
    <code>step</code>, <code>reprints</code>)
  </footer>
</body>
</html>
