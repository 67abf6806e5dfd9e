// Siamese collection map: every image of the collection as a point, similar images close together
// (make_map.py's layout), coloured by year or by cluster; pan and zoom, thumbnails when zoomed in, a
// time slider that plays the years, a stream graph of the clusters' share of each period, filters.
// Plain JavaScript, no libraries: the points are written straight into an ImageData (fast enough in
// software rendering for 426,777 points), the thumbnails drawn from sprite atlases on top.
// The page's state is in its URL (?filter=column:value&year=1953&colour=cluster&focus=URN; an uploaded
// image's place, which has no urn, as #at=x,y), kept up to date with replaceState.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const MAP = JSON.parse($("map-data").textContent);  // /api/clusters' answer
  if (!MAP) return;  // no map built: the page says so (views/map.tpl)

  const N = MAP.count;
  const FULL = 65535;
  const NO_YEAR = -32768;
  const FIRST = MAP.years ? MAP.years[0] : null;
  const LAST = MAP.years ? MAP.years[1] : null;
  const SPRITE_LIMIT = 1500;  // points in view at most for thumbnails instead of points
  const PLAY_MS = 400;  // per year
  const GLOW_YEARS = 3;  // in a year view, the points of the years just before it fade out over these
  const TOP_CLUSTERS = 12;  // streams of their own in the graph; the others are "other"
  const BACKGROUND = [23, 27, 36];
  const UNKNOWN_COLOUR = [150, 156, 166];
  const CLUSTER_PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
                           "#ff9da7", "#9c755f", "#bab0ac", "#a0cbe8", "#ffbe7d", "#8cd17d", "#d4a6c8",
                           "#86bcb6", "#f1ce63", "#ff9d9a", "#d7b5a6", "#79706e", "#fabfd2"];
  const OTHER_COLOUR = "#c9ced6";
  // the years' scale: from blue-violet to yellow, lighter with every year (viridis' hues, its darkest
  // part lifted so that the first years still show on the dark map)
  const YEAR_SCALE = [[104, 110, 232], [62, 140, 214], [40, 170, 190], [38, 190, 140], [122, 209, 81],
                      [253, 231, 37]];

  // ------------------------------------------------------------------------------ helpers

  const { element, svg } = window.siameseDom;  // static/dom.js

  const number = (value) => value.toLocaleString("en");

  function showMessage(text) {
    $("message").textContent = text;
    $("message").hidden = false;
  }

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status || 0;
    }
  }

  async function request(url, kind) {
    let response;
    try {
      response = await fetch(url, { headers: { Accept: kind === "json" ? "application/json" : "*/*" } });
    } catch (error) {
      throw new ApiError("The server cannot be reached (" + error.message + ").");
    }
    if (!response.ok) {
      let message = "The server answered " + response.status + ".";
      try {
        message = (await response.json()).error || message;
      } catch (error) { /* not JSON */ }
      throw new ApiError(message, response.status);
    }
    return kind === "json" ? response.json() : response.arrayBuffer();
  }

  function rgb(hex) {
    const value = parseInt(hex.slice(1), 16);
    return [value >> 16, (value >> 8) & 255, value & 255];
  }

  const css = (colour) => "rgb(" + colour.join(",") + ")";

  function yearColour(t) {
    const scaled = Math.min(1, Math.max(0, t)) * (YEAR_SCALE.length - 1);
    const low = Math.min(YEAR_SCALE.length - 2, Math.floor(scaled));
    const f = scaled - low;
    return YEAR_SCALE[low].map((value, i) => Math.round(value + (YEAR_SCALE[low + 1][i] - value) * f));
  }

  const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

  // A colour as the Uint32 an ImageData's pixel is on this machine (RGBA in memory), mixed with the
  // background: `amount` 1 is the colour itself.
  function pixel(colour, amount) {
    const [r, g, b] = colour.map((value, i) => Math.round(BACKGROUND[i] + (value - BACKGROUND[i]) * amount));
    return LITTLE_ENDIAN ? ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0
                         : ((r << 24) | (g << 16) | (b << 8) | 255) >>> 0;
  }

  // ------------------------------------------------------------------------------ the state

  const clusters = MAP.clusters || [];
  const bySize = clusters.slice().sort((a, b) => b.size - a.size || a.id - b.id);
  const clusterRank = new Map(bySize.map((cluster, rank) => [cluster.id, rank]));
  const clusterById = new Map(clusters.map((cluster) => [cluster.id, cluster]));
  const clusterColour = (id) => CLUSTER_PALETTE[(clusterRank.has(id) ? clusterRank.get(id) : id) % CLUSTER_PALETTE.length];
  const atlases = MAP.atlases;

  const page = new URLSearchParams(window.location.search);
  const state = {
    colour: "year",  // or "cluster"
    year: null,  // the slider's year; null: all years
    highlight: null,  // a cluster id chosen in the stream graph
    filters: page.getAll("filter").filter((filter) => filter.includes(":")),
    mask: null,  // Uint8Array bitmask of the rows passing the filters; null: no filter
    focus: null,  // {row, x, y, urn} or {x, y} (an uploaded image's place)
  };
  if (page.get("colour") === "cluster") state.colour = "cluster";
  const givenYear = Number(page.get("year"));
  if (FIRST !== null && page.get("year") && Number.isInteger(givenYear) && givenYear >= FIRST && givenYear <= LAST) {
    state.year = givenYear;
  }

  let xs = null, ys = null, cs = null, years = null;  // the points: typed arrays of N
  let colourIndex = null;  // Uint16Array: each point's entry in the palettes below
  let palettes = null;  // {bright, glow: [per age], faint}: Uint32Arrays of pixels
  let bounds = null;  // {x0, y0, x1, y1} of the points
  let grid = null;  // the spatial index for hovering
  const view = { x: FULL / 2, y: FULL / 2, scale: 1 };
  let fitted = true;  // the view is the whole map (kept so on resize)
  let hovered = null;  // the row under the pointer
  let firstDrawMs = null;
  const stats = { drawn: 0, visible: 0, sprites: 0, highlighted: 0, ms: 0 };

  const canvas = $("map");
  const stage = $("stage");
  const context = canvas.getContext("2d");
  const marks = $("map-marks");  // the rings of the focus and of the point under the pointer, on top
  const marksContext = marks.getContext("2d");
  let cssWidth = 0, cssHeight = 0, ratio = 1;
  let imageData = null, pixels = null;
  let brightRows = new Uint32Array(0);

  // ------------------------------------------------------------------------------ loading

  async function load() {
    const buffer = await request("api/map?format=binary", "binary");
    if (buffer.byteLength !== 8 * N) {
      throw new ApiError("The map's points do not match the map (" + buffer.byteLength + " bytes for " + N + " points).");
    }
    if (LITTLE_ENDIAN) {
      xs = new Uint16Array(buffer, 0, N);
      ys = new Uint16Array(buffer, 2 * N, N);
      cs = new Uint16Array(buffer, 4 * N, N);
      years = new Int16Array(buffer, 6 * N, N);
    } else {
      const data = new DataView(buffer);
      xs = new Uint16Array(N); ys = new Uint16Array(N); cs = new Uint16Array(N); years = new Int16Array(N);
      for (let i = 0; i < N; i++) {
        xs[i] = data.getUint16(2 * i, true);
        ys[i] = data.getUint16(2 * N + 2 * i, true);
        cs[i] = data.getUint16(4 * N + 2 * i, true);
        years[i] = data.getInt16(6 * N + 2 * i, true);
      }
    }
    let x0 = FULL, y0 = FULL, x1 = 0, y1 = 0;
    for (let i = 0; i < N; i++) {
      const x = xs[i], y = ys[i];
      if (x < x0) x0 = x;
      if (x > x1) x1 = x;
      if (y < y0) y0 = y;
      if (y > y1) y1 = y;
    }
    bounds = N ? { x0, y0, x1, y1 } : { x0: 0, y0: 0, x1: FULL, y1: FULL };
    brightRows = new Uint32Array(N);
    buildGrid();
    setColours(state.colour);
  }

  // A grid of 256 × 256 buckets over the map, each the rows inside it (counting sort, built once):
  // the point under the pointer is looked for in the few buckets around it.
  const GRID = 256;
  const CELL = 256;  // map units per bucket (65,536 / 256)
  function buildGrid() {
    const starts = new Uint32Array(GRID * GRID + 1);
    const bucket = new Uint32Array(N);
    for (let i = 0; i < N; i++) {
      const b = (ys[i] >> 8) * GRID + (xs[i] >> 8);
      bucket[i] = b;
      starts[b + 1]++;
    }
    for (let b = 0; b < GRID * GRID; b++) starts[b + 1] += starts[b];
    const next = starts.slice(0, GRID * GRID);
    const rows = new Uint32Array(N);
    for (let i = 0; i < N; i++) rows[next[bucket[i]]++] = i;
    grid = { starts, rows };
  }

  // Each point's colour: its year on a sequential scale, or its cluster's colour.
  function setColours(mode) {
    state.colour = mode;
    let colours;
    colourIndex = new Uint16Array(N);
    if (mode === "cluster") {
      const highest = clusters.reduce((most, cluster) => Math.max(most, cluster.id), 0);
      colours = [];
      for (let id = 0; id <= highest; id++) colours.push(rgb(clusterColour(id)));
      colours.push(UNKNOWN_COLOUR);
      const unknown = colours.length - 1;
      for (let i = 0; i < N; i++) colourIndex[i] = cs[i] <= highest ? cs[i] : unknown;
    } else {
      colours = [];
      const span = FIRST === null ? 0 : LAST - FIRST;
      if (FIRST !== null) for (let year = FIRST; year <= LAST; year++) colours.push(yearColour(span ? (year - FIRST) / span : 1));
      colours.push(UNKNOWN_COLOUR);
      const unknown = colours.length - 1;
      for (let i = 0; i < N; i++) {
        const year = years[i];
        colourIndex[i] = year === NO_YEAR || FIRST === null || year < FIRST || year > LAST ? unknown : year - FIRST;
      }
    }
    const table = (amount) => Uint32Array.from(colours, (colour) => pixel(colour, amount));
    palettes = { bright: table(1), glow: [table(1), table(0.62), table(0.42), table(0.3)], faint: table(0.22) };
    drawLegend();
  }

  // ------------------------------------------------------------------------------ the view

  function resize() {
    const box = stage.getBoundingClientRect();
    ratio = window.devicePixelRatio || 1;
    cssWidth = Math.max(1, box.width);
    cssHeight = Math.max(1, box.height);
    canvas.width = marks.width = Math.round(cssWidth * ratio);
    canvas.height = marks.height = Math.round(cssHeight * ratio);
    imageData = context.createImageData(canvas.width, canvas.height);
    pixels = new Uint32Array(imageData.data.buffer);
    if (fitted) fit();
    requestDraw();
  }

  function fitScale() {
    if (!bounds) return cssWidth / FULL;
    const width = Math.max(bounds.x1 - bounds.x0, 1), height = Math.max(bounds.y1 - bounds.y0, 1);
    return Math.min(cssWidth * 0.92 / width, cssHeight * 0.88 / height, cssWidth / 64, cssHeight / 64);
  }

  function limits() {
    const fitting = fitScale();
    return [fitting / 2, Math.max(fitting * 1024, 4)];
  }

  function fit() {
    view.scale = fitScale();
    view.x = bounds ? (bounds.x0 + bounds.x1) / 2 : FULL / 2;
    view.y = bounds ? (bounds.y0 + bounds.y1) / 2 : FULL / 2;
    fitted = true;
  }

  const zoomLevel = () => view.scale / fitScale();

  // The map point under the page pixel (clientX, clientY), and back.
  function toMap(clientX, clientY) {
    const box = canvas.getBoundingClientRect();
    return [view.x + (clientX - box.left - cssWidth / 2) / view.scale,
            view.y + (clientY - box.top - cssHeight / 2) / view.scale];
  }

  function toClient(x, y) {
    const box = canvas.getBoundingClientRect();
    return [box.left + cssWidth / 2 + (x - view.x) * view.scale, box.top + cssHeight / 2 + (y - view.y) * view.scale];
  }

  // Zoom by `factor` keeping the map point under (clientX, clientY) where it is.
  function zoomAt(factor, clientX, clientY) {
    const [low, high] = limits();
    const scale = Math.min(high, Math.max(low, view.scale * factor));
    const [x, y] = toMap(clientX, clientY);
    view.x = x - (x - view.x) * view.scale / scale;
    view.y = y - (y - view.y) * view.scale / scale;
    view.scale = scale;
    fitted = false;
    requestDraw();
  }

  function zoomCentre(factor) {
    const box = canvas.getBoundingClientRect();
    zoomAt(factor, box.left + cssWidth / 2, box.top + cssHeight / 2);
  }

  function panBy(dx, dy) {  // CSS pixels
    view.x -= dx / view.scale;
    view.y -= dy / view.scale;
    fitted = false;
    requestDraw();
  }

  function centreOn(x, y, zoom) {
    view.x = x;
    view.y = y;
    if (zoom) {
      const [low, high] = limits();
      view.scale = Math.min(high, Math.max(low, fitScale() * zoom));
    }
    fitted = false;
    requestDraw();
  }

  // ------------------------------------------------------------------------------ drawing

  let drawPending = false;
  let ready = false;  // nothing is drawn before the points, the focus and the filters are in
  function requestDraw() {
    if (drawPending || !ready) return;
    drawPending = true;
    requestAnimationFrame(() => {
      drawPending = false;
      draw();
    });
  }

  // A point's side in device pixels: 2 CSS pixels for hundreds of thousands of points, up to 5 for a
  // few hundred, growing as one zooms in.
  function pointSize() {
    const zoom = Math.max(1, zoomLevel());
    const base = Math.max(2, Math.min(5, 0.05 * Math.sqrt(cssWidth * cssHeight / Math.max(1, N))));
    return Math.max(2, Math.min(Math.round(8 * ratio), Math.round(ratio * (base + Math.log2(zoom) * 0.7))));
  }

  function draw() {
    if (!xs || !imageData) return;
    const started = performance.now();
    const width = canvas.width, height = canvas.height;
    const size = pointSize();
    const half = size >> 1;
    const k = view.scale * ratio;
    const originX = width / 2 - view.x * k, originY = height / 2 - view.y * k;
    const mask = state.mask;
    const year = state.year;
    const highlight = state.highlight;
    const bright = palettes.bright, faint = palettes.faint, glow = palettes.glow;
    const background = pixel(BACKGROUND, 1);
    pixels.fill(background);
    let drawn = 0, visible = 0, nBright = 0;
    const maxX = width - size, maxY = height - size;
    // First pass: every point drawn; the faint ones at once, the bright ones listed to be drawn over them.
    for (let i = 0; i < N; i++) {
      if (mask !== null && (mask[i >> 3] & (1 << (i & 7))) === 0) continue;
      const sx = originX + xs[i] * k, sy = originY + ys[i] * k;
      if (sx < -half || sy < -half || sx >= width + half || sy >= height + half) continue;
      drawn++;
      let colour = -1;  // -1: bright
      if (year !== null) {
        const own = years[i];
        if (own !== year) {
          const age = year - own;
          colour = own !== NO_YEAR && age > 0 && age <= GLOW_YEARS ? glow[age][colourIndex[i]] : faint[colourIndex[i]];
        }
      }
      if (colour === -1) {
        visible++;
        if (highlight !== null && cs[i] !== highlight) colour = faint[colourIndex[i]];
      }
      if (colour === -1) {
        brightRows[nBright++] = i;
        continue;
      }
      square(Math.min(maxX, Math.max(0, (sx | 0) - half)), Math.min(maxY, Math.max(0, (sy | 0) - half)),
             size, width, colour);
    }
    // in a year's view or a cluster's, its points a little larger than the faint others
    const big = year !== null || highlight !== null ? size + Math.max(1, Math.round(ratio)) : size;
    const bigHalf = big >> 1, bigX = width - big, bigY = height - big;
    for (let j = 0; j < nBright; j++) {
      const i = brightRows[j];
      const sx = originX + xs[i] * k, sy = originY + ys[i] * k;
      square(Math.min(bigX, Math.max(0, (sx | 0) - bigHalf)), Math.min(bigY, Math.max(0, (sy | 0) - bigHalf)),
             big, width, bright[colourIndex[i]]);
    }
    context.putImageData(imageData, 0, 0);
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    const sprites = spritesShown(nBright) ? drawSprites(nBright) : 0;
    if (!sprites) drawLabels();
    context.setTransform(1, 0, 0, 1, 0, 0);
    drawMarks();
    stats.drawn = drawn;
    stats.visible = visible;
    stats.highlighted = highlight === null ? 0 : nBright;
    stats.sprites = sprites;
    if (firstDrawMs === null) firstDrawMs = performance.now();
    stats.ms = performance.now() - started;
    $("map-loading").hidden = true;
    publish();
  }

  function square(left, top, size, width, colour) {
    const p = pixels;
    let offset = top * width + left;
    if (size === 2) {  // most points of a large map: written directly, no loop
      p[offset] = colour; p[offset + 1] = colour;
      p[offset + width] = colour; p[offset + width + 1] = colour;
    } else if (size === 3) {
      p[offset] = colour; p[offset + 1] = colour; p[offset + 2] = colour;
      offset += width;
      p[offset] = colour; p[offset + 1] = colour; p[offset + 2] = colour;
      offset += width;
      p[offset] = colour; p[offset + 1] = colour; p[offset + 2] = colour;
    } else {
      for (let row = 0; row < size; row++, offset += width) {
        for (let column = 0; column < size; column++) p[offset + column] = colour;
      }
    }
  }

  // ------------------------------------------------------------------------------ thumbnails

  const atlasImages = new Map();  // atlas number -> Image (loading or loaded)

  function atlas(number) {
    let image = atlasImages.get(number);
    if (!image) {
      image = new Image();
      image.decoding = "async";
      image.addEventListener("load", requestDraw);
      image.addEventListener("error", () => { image.failed = true; });
      image.src = atlases.urls[number];
      atlasImages.set(number, image);
    }
    return image;
  }

  function spritesShown(nBright) {
    return atlases && atlases.urls && atlases.urls.length > 0 && nBright > 0 && nBright <= SPRITE_LIMIT
      && zoomLevel() >= 2;
  }

  function spriteSize(nBright) {  // CSS pixels
    const crowd = 1.4 * Math.sqrt(cssWidth * cssHeight / Math.max(1, nBright));
    return Math.max(12, Math.min(128, 12 * zoomLevel(), crowd));
  }

  function drawSprites(nBright) {
    const size = spriteSize(nBright);
    const cell = atlases.cell, columns = atlases.columns, perAtlas = atlases.per_atlas;
    const halfWidth = cssWidth / 2, halfHeight = cssHeight / 2;
    let drawn = 0;
    context.imageSmoothingQuality = "medium";
    for (let j = 0; j < nBright; j++) {
      const i = brightRows[j];
      const number = Math.floor(i / perAtlas);
      if (number >= atlases.urls.length) continue;
      const image = atlas(number);
      if (!image.complete || image.failed || !image.naturalWidth) continue;
      const c = i % perAtlas;
      const x = halfWidth + (xs[i] - view.x) * view.scale, y = halfHeight + (ys[i] - view.y) * view.scale;
      context.drawImage(image, (c % columns) * cell, Math.floor(c / columns) * cell, cell, cell,
                        x - size / 2, y - size / 2, size, size);
      drawn++;
    }
    return drawn;
  }

  // ------------------------------------------------------------------------------ labels and marks

  function drawLabels() {
    if (zoomLevel() > 6 || !clusters.length) return;
    context.font = "600 13px system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif";
    context.textAlign = "center";
    context.textBaseline = "middle";
    context.lineJoin = "round";
    const placed = [];
    const chosen = state.highlight === null ? bySize : [clusterById.get(state.highlight), ...bySize];
    let shown = 0;
    const most = Math.round(Math.min(24, 12 * Math.max(1, zoomLevel())));  // more as one zooms in
    for (const cluster of chosen) {
      if (!cluster || shown >= most) break;
      let [x, y] = [cssWidth / 2 + (cluster.x - view.x) * view.scale, cssHeight / 2 + (cluster.y - view.y) * view.scale];
      if (x < 0 || y < 0 || x > cssWidth || y > cssHeight) continue;
      let text = String(cluster.label);
      if (text.length > 32) text = text.slice(0, 31) + "…";
      const width = context.measureText(text).width + 8;
      x = Math.min(Math.max(x, width / 2 + 2), cssWidth - width / 2 - 2);  // the whole label inside
      y = Math.min(Math.max(y, 12), cssHeight - 12);
      const box = [x - width / 2 - 4, y - 13, x + width / 2 + 4, y + 13];
      if (placed.some((other) => box[0] < other[2] && other[0] < box[2] && box[1] < other[3] && other[1] < box[3])) continue;
      placed.push(box);
      context.lineWidth = 4;
      context.strokeStyle = "rgba(10, 12, 18, 0.85)";
      context.strokeText(text, x, y);
      context.fillStyle = state.highlight === cluster.id ? "#ffe066" : "#f2f4f8";
      context.fillText(text, x, y);
      shown++;
    }
  }

  function drawMarks() {
    const context = marksContext;
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.clearRect(0, 0, marks.width, marks.height);
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    const ring = (x, y, radius, colour) => {
      const [cx, cy] = [cssWidth / 2 + (x - view.x) * view.scale, cssHeight / 2 + (y - view.y) * view.scale];
      context.beginPath();
      context.arc(cx, cy, radius, 0, 2 * Math.PI);
      context.lineWidth = 4;
      context.strokeStyle = "rgba(0, 0, 0, 0.7)";
      context.stroke();
      context.lineWidth = 2;
      context.strokeStyle = colour;
      context.stroke();
    };
    if (state.focus) ring(state.focus.x, state.focus.y, 11, "#ff4f9a");
    if (hovered !== null) ring(xs[hovered], ys[hovered], stats.sprites ? spriteSize(brightCount()) / 2 + 3 : 7, "#ffffff");
  }

  // Only the rings again (the pointer moved to another point): the points stay as they are.
  let marksPending = false;
  function requestMarks() {
    if (marksPending || !ready) return;
    marksPending = true;
    requestAnimationFrame(() => {
      marksPending = false;
      drawMarks();
      publish();
    });
  }

  // What the tests and the benchmark read after every draw.
  function publish() {
    window.siameseMap = {
      points: N,
      drawnPoints: stats.drawn,
      visiblePoints: stats.visible,
      highlightedPoints: stats.highlighted,
      spritesDrawn: stats.sprites,
      view: { x: view.x, y: view.y, scale: view.scale },
      zoom: zoomLevel(),
      year: state.year,
      highlight: state.highlight,
      colour: state.colour,
      filters: state.filters.slice(),
      hovered: hovered,
      firstDrawMs: firstDrawMs,
      lastDrawMs: stats.ms,
      screenOf: (row) => {
        const [x, y] = toClient(xs[row], ys[row]);
        return { x, y };
      },
    };
    document.body.dataset.mapReady = "drawn";
    $("map-summary").textContent = number(stats.visible) + " of " + number(N) + " images in view" +
      (state.mask !== null ? " (filtered: " + state.filters.join(", ") + ")" : "") +
      (state.year !== null ? " from " + state.year : "") +
      (state.highlight !== null ? " · " + number(stats.highlighted) + " of them in the cluster chosen" : "") +
      (stats.sprites ? " · thumbnails shown" : "");
  }

  // ------------------------------------------------------------------------------ the legend

  function drawLegend() {
    const legend = $("legend");
    if (state.colour === "year") {
      if (FIRST === null) {
        legend.replaceChildren(element("span", { textContent: "no years known" }));
        return;
      }
      const stops = [];
      for (let s = 0; s <= 8; s++) stops.push(svg("stop", { offset: s / 8, "stop-color": css(yearColour(s / 8)) }));
      const picture = svg("svg", { width: 180, height: 30, viewBox: "0 0 180 30", role: "img",
                                   "aria-label": "Colour by year: " + FIRST + " to " + LAST }, [
        svg("defs", {}, [svg("linearGradient", { id: "year-scale" }, stops)]),
        svg("rect", { x: 0, y: 0, width: 180, height: 10, rx: 2, fill: "url(#year-scale)" }),
        svg("text", { x: 0, y: 25, class: "start" }, [String(FIRST)]),
        svg("text", { x: 180, y: 25, class: "end" }, [String(LAST)]),
      ]);
      const unknown = years && years.some((year) => year === NO_YEAR);
      legend.replaceChildren(picture, ...(unknown ? [swatchRow(css(UNKNOWN_COLOUR), "year unknown")] : []));
    } else {
      const rows = bySize.slice(0, 8).map((cluster) => swatchRow(clusterColour(cluster.id), cluster.label));
      if (bySize.length > 8) rows.push(element("span", { className: "more", textContent: "… " + (bySize.length - 8) + " more clusters" }));
      legend.replaceChildren(...rows);
    }
  }

  function swatchRow(colour, text) {
    const swatch = svg("svg", { width: 10, height: 10, viewBox: "0 0 10 10", "aria-hidden": "true" },
                       [svg("rect", { width: 10, height: 10, rx: 2, fill: colour })]);
    return element("span", { className: "swatch", title: text }, [swatch, " " + text]);
  }

  // ------------------------------------------------------------------------------ hover and click

  // The drawn point nearest to (clientX, clientY) within `radius` CSS pixels; null when none.
  function pointAt(clientX, clientY) {
    if (!grid) return null;
    const [mx, my] = toMap(clientX, clientY);
    const sprites = stats.sprites > 0;
    const radiusPx = sprites ? spriteSize(brightCount()) / 2 : Math.max(6, pointSize() / ratio + 3);
    const r = radiusPx / view.scale;
    const cx0 = Math.max(0, Math.floor((mx - r) / CELL)), cx1 = Math.min(GRID - 1, Math.floor((mx + r) / CELL));
    const cy0 = Math.max(0, Math.floor((my - r) / CELL)), cy1 = Math.min(GRID - 1, Math.floor((my + r) / CELL));
    if (cx0 > cx1 || cy0 > cy1) return null;
    let best = null, bestDistance = Infinity;
    const mask = state.mask, year = state.year;
    for (let gy = cy0; gy <= cy1; gy++) {
      for (let gx = cx0; gx <= cx1; gx++) {
        const b = gy * GRID + gx;
        for (let j = grid.starts[b]; j < grid.starts[b + 1]; j++) {
          const i = grid.rows[j];
          if (mask !== null && (mask[i >> 3] & (1 << (i & 7))) === 0) continue;
          const dx = xs[i] - mx, dy = ys[i] - my;
          let distance = dx * dx + dy * dy;
          if (distance > r * r) continue;
          const faint = (year !== null && years[i] !== year) || (state.highlight !== null && cs[i] !== state.highlight);
          if (faint) {
            if (sprites) continue;
            distance = distance * 4 + 1;  // a bright point wins over a faint one about as near
          }
          if (distance < bestDistance) {
            bestDistance = distance;
            best = i;
          }
        }
      }
    }
    return best;
  }

  function brightCount() {
    return stats.highlighted || stats.visible;
  }

  const items = new Map();  // row -> Promise of {urn, metadata, thumbnail}

  function itemOf(row) {
    let item = items.get(row);
    if (!item) {
      item = (async () => {
        const answer = await request("api/map?" + new URLSearchParams({ row: String(row) }), "json");
        const urn = answer.points[0].urn;
        return request("api/item?" + new URLSearchParams({ urn: urn }), "json");
      })();
      item.catch(() => items.delete(row));
      items.set(row, item);
    }
    return item;
  }

  function title(metadata, urn) {
    return metadata.title || metadata.name || metadata.caption || metadata.label || urn;
  }

  const tooltip = $("tooltip");

  function showTooltip(row, clientX, clientY) {
    const cluster = clusterById.get(cs[row]);
    const year = years[row] === NO_YEAR ? "year unknown" : String(years[row]);
    const picture = element("div", { className: "tooltip-image" }, [element("span", { className: "placeholder", textContent: "…" })]);
    const heading = element("strong", { className: "tooltip-title", textContent: "image " + number(row + 1) });
    const urn = element("code", { className: "tooltip-urn" });
    const fields = element("dl", { className: "tooltip-fields" });
    tooltip.replaceChildren(picture, element("div", { className: "tooltip-text" }, [
      heading, urn,
      element("span", { className: "tooltip-year", textContent: year }),
      element("span", { className: "tooltip-cluster", textContent: cluster ? cluster.label : "cluster " + cs[row] }),
      fields,
      element("span", { className: "tooltip-hint", textContent: "click: search from this image" }),
    ]));
    tooltip.dataset.row = String(row);
    tooltip.hidden = false;
    placeTooltip(clientX, clientY);
    itemOf(row).then((item) => {
      if (tooltip.dataset.row !== String(row) || tooltip.hidden) return;
      heading.textContent = title(item.metadata, item.urn);
      urn.textContent = item.urn;
      tooltip.dataset.urn = item.urn;
      picture.replaceChildren(item.thumbnail
        ? element("img", { src: item.thumbnail, alt: "", decoding: "async" })
        : element("span", { className: "placeholder", textContent: "no thumbnail" }));
      const shown = Object.entries(item.metadata)
        .filter(([name, value]) => !["year", "path", "title", "name"].includes(name) && value !== "" && value !== null)
        .slice(0, 4);
      fields.replaceChildren(...shown.flatMap(([name, value]) => {
        const text = String(value);
        return [element("dt", { textContent: name.replace(/_/g, " ") }),
                element("dd", { textContent: text.length > 80 ? text.slice(0, 79) + "…" : text })];
      }));
    }, () => {
      if (tooltip.dataset.row !== String(row)) return;
      picture.replaceChildren(element("span", { className: "placeholder", textContent: "not available" }));
    });
  }

  function placeTooltip(clientX, clientY) {
    const box = stage.getBoundingClientRect();
    const width = tooltip.offsetWidth || 260, height = tooltip.offsetHeight || 120;
    let left = clientX - box.left + 16, top = clientY - box.top + 16;
    if (left + width > box.width - 4) left = clientX - box.left - width - 16;
    if (top + height > box.height - 4) top = Math.max(4, clientY - box.top - height - 16);
    tooltip.style.left = Math.max(4, left) + "px";
    tooltip.style.top = Math.max(4, top) + "px";
  }

  function hideTooltip() {
    tooltip.hidden = true;
    delete tooltip.dataset.row;
    delete tooltip.dataset.urn;
  }

  function hover(clientX, clientY) {
    const row = pointAt(clientX, clientY);
    if (row === hovered) {
      if (row !== null) placeTooltip(clientX, clientY);
      return;
    }
    hovered = row;
    canvas.classList.toggle("over-point", row !== null);
    if (row === null) hideTooltip();
    else showTooltip(row, clientX, clientY);
    requestMarks();
  }

  function searchUrl(urn) {
    return "./?" + new URLSearchParams([["urn", urn], ...state.filters.map((filter) => ["filter", filter])]);
  }

  async function open(row, newTab) {
    try {
      const item = await itemOf(row);
      if (newTab) window.open(searchUrl(item.urn), "_blank", "noopener");
      else window.location.assign(searchUrl(item.urn));
    } catch (error) {
      showMessage(error.message);
    }
  }

  // ------------------------------------------------------------------------------ pointer, wheel, keys

  const pointers = new Map();  // pointerId -> {x, y}
  let gesture = null;  // {moved, startX, startY}

  canvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 && event.pointerType === "mouse") return;
    canvas.setPointerCapture(event.pointerId);
    pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
    if (pointers.size === 1) gesture = { moved: 0, startX: event.clientX, startY: event.clientY };
    else if (gesture) gesture.moved = Infinity;  // a pinch is never a click
  });

  canvas.addEventListener("pointermove", (event) => {
    const last = pointers.get(event.pointerId);
    if (!last) {
      if (event.pointerType === "mouse") hover(event.clientX, event.clientY);
      return;
    }
    if (pointers.size === 1) {
      panBy(event.clientX - last.x, event.clientY - last.y);
      if (gesture) gesture.moved = Math.max(gesture.moved, Math.hypot(event.clientX - gesture.startX, event.clientY - gesture.startY));
      if (gesture && gesture.moved > 4) hideTooltip();
    } else if (pointers.size === 2) {
      let other = null;
      for (const [id, point] of pointers) if (id !== event.pointerId) other = point;
      const before = Math.hypot(last.x - other.x, last.y - other.y);
      const after = Math.hypot(event.clientX - other.x, event.clientY - other.y);
      const midX = (event.clientX + other.x) / 2, midY = (event.clientY + other.y) / 2;
      panBy((event.clientX - last.x) / 2, (event.clientY - last.y) / 2);
      if (before > 0) zoomAt(after / before, midX, midY);
    }
    pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
  });

  function pointerEnd(event) {
    if (!pointers.has(event.pointerId)) return;
    pointers.delete(event.pointerId);
    if (pointers.size === 0 && gesture) {
      const click = event.type === "pointerup" && gesture.moved <= 4;
      gesture = null;
      if (click) {
        const row = pointAt(event.clientX, event.clientY);
        if (row !== null) open(row, event.ctrlKey || event.metaKey);
      }
    }
  }
  canvas.addEventListener("pointerup", pointerEnd);
  canvas.addEventListener("pointercancel", pointerEnd);
  canvas.addEventListener("pointerleave", (event) => {
    if (event.pointerType === "mouse" && !pointers.size) {
      hovered = null;
      hideTooltip();
      requestMarks();
    }
  });

  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    const unit = event.deltaMode === 1 ? 0.05 : event.deltaMode === 2 ? 1 : 0.0015;
    zoomAt(Math.exp(-event.deltaY * unit), event.clientX, event.clientY);
  }, { passive: false });

  canvas.addEventListener("keydown", (event) => {
    const step = 0.15;
    const actions = {
      ArrowLeft: () => panBy(cssWidth * step, 0),
      ArrowRight: () => panBy(-cssWidth * step, 0),
      ArrowUp: () => panBy(0, cssHeight * step),
      ArrowDown: () => panBy(0, -cssHeight * step),
      "+": () => zoomCentre(1.5),
      "=": () => zoomCentre(1.5),
      "-": () => zoomCentre(1 / 1.5),
      "_": () => zoomCentre(1 / 1.5),
      "0": () => { fit(); requestDraw(); },
    };
    const action = actions[event.key];
    if (!action || event.ctrlKey || event.metaKey || event.altKey) return;
    event.preventDefault();
    hovered = null;
    hideTooltip();
    action();
  });

  $("zoom-in").addEventListener("click", () => zoomCentre(1.6));
  $("zoom-out").addEventListener("click", () => zoomCentre(1 / 1.6));
  $("zoom-reset").addEventListener("click", () => { fit(); requestDraw(); });

  // ------------------------------------------------------------------------------ time

  const slider = $("year");
  let playing = null;

  function setYear(year) {
    state.year = year;
    const text = year === null ? "all years" : String(year);
    slider.value = String(year === null ? FIRST - 1 : year);
    slider.setAttribute("aria-valuetext", text);
    $("year-value").value = text;
    $("year-value").textContent = text;
    $("year-display").textContent = text;
    $("year-display").classList.toggle("all", year === null);
    if (hovered !== null) { hovered = null; hideTooltip(); }
    markStreamYear();
    remember();
    requestDraw();
  }

  function stop() {
    if (playing !== null) clearInterval(playing);
    playing = null;
    $("play").textContent = "▶ Play";
    $("play").setAttribute("aria-pressed", "false");
  }

  function play() {
    if (state.year === null || state.year >= LAST) setYear(FIRST);
    $("play").textContent = "❚❚ Pause";
    $("play").setAttribute("aria-pressed", "true");
    playing = setInterval(() => {
      if (state.year === null || state.year >= LAST) {
        stop();
        return;
      }
      setYear(state.year + 1);
      if (state.year >= LAST) stop();
    }, PLAY_MS);
  }

  if (FIRST === null) {
    $("play").hidden = true;
    slider.closest("label").hidden = true;
    $("year-value").hidden = true;
    $("year-display").hidden = true;
  } else {
    slider.min = String(FIRST - 1);  // the leftmost position: all years
    slider.max = String(LAST);
    slider.value = String(state.year === null ? FIRST - 1 : state.year);
    slider.setAttribute("aria-valuetext", state.year === null ? "all years" : String(state.year));
    slider.addEventListener("input", () => {
      const value = Number(slider.value);
      setYear(value < FIRST ? null : value);
    });
    slider.addEventListener("keydown", (event) => { if (event.key === " ") { event.preventDefault(); $("play").click(); } });
    $("play").addEventListener("click", () => (playing === null ? play() : stop()));
  }

  for (const radio of document.querySelectorAll("input[name=colour]")) {
    radio.checked = radio.value === state.colour;
    radio.addEventListener("change", () => {
      if (!radio.checked || !xs) return;
      setColours(radio.value);
      remember();
      requestDraw();
    });
  }

  // ------------------------------------------------------------------------------ the stream graph

  const streamStep = MAP.steps && MAP.steps.length ? MAP.steps[MAP.steps.length - 1] : null;
  const streamPeriods = streamStep === null ? [] : (MAP.periods[String(streamStep)] || []);
  let streamMode = "share";
  let streamGeometry = null;  // {left, width, count} to place the year mark and find a period

  function drawStreams() {
    const box = $("streams");
    if (!streamPeriods.length || !clusters.length) {
      box.replaceChildren(element("p", { className: "none", textContent: "no periods to show" }));
      return;
    }
    const width = Math.max(320, box.clientWidth || 800), height = 220;
    const left = 8, right = 8, top = 8, bottom = 26;
    const key = String(streamStep);
    const shown = bySize.slice(0, TOP_CLUSTERS);
    const totals = streamPeriods.map((period) => period.total);
    const layers = shown.map((cluster) => ({ id: cluster.id, label: cluster.label, colour: clusterColour(cluster.id),
                                             counts: (cluster.counts && cluster.counts[key]) || totals.map(() => 0) }));
    const other = totals.map((total, p) => Math.max(0, total - layers.reduce((sum, layer) => sum + (layer.counts[p] || 0), 0)));
    if (other.some((count) => count > 0)) layers.push({ id: "other", label: "other clusters", colour: OTHER_COLOUR, counts: other });
    const value = (layer, p) => {
      const count = layer.counts[p] || 0;
      return streamMode === "share" ? (totals[p] ? count / totals[p] : 0) : count;
    };
    const sums = streamPeriods.map((_, p) => layers.reduce((sum, layer) => sum + value(layer, p), 0));
    const largest = Math.max(...sums, 1e-9);
    const plotHeight = height - top - bottom, plotWidth = width - left - right;
    const mid = top + plotHeight / 2;
    const unit = plotHeight / largest;
    const xOf = (p) => left + (p + 0.5) * plotWidth / streamPeriods.length;
    streamGeometry = { left, width: plotWidth, count: streamPeriods.length, top, height: plotHeight };
    const base = sums.map((sum) => mid - sum * unit / 2);  // centred: a stream graph's silhouette
    const paths = layers.map((layer) => {
      const upper = base.slice();
      const lower = streamPeriods.map((_, p) => base[p] + value(layer, p) * unit);
      for (let p = 0; p < base.length; p++) base[p] = lower[p];
      const path = svg("path", { d: area(upper, lower, xOf, left, left + plotWidth), fill: layer.colour,
                                 class: "stream" + (layer.id === "other" ? " other" : "") +
                                   (layer.id === state.highlight ? " selected" : "") });
      path.dataset.cluster = String(layer.id);
      path.append(svg("title", {}, [layer.label]));
      path.addEventListener("mousemove", (event) => describeStream(layer, event));
      path.addEventListener("mouseleave", () => { $("stream-label").textContent = ""; });
      if (layer.id !== "other") {
        path.setAttribute("tabindex", "0");
        path.setAttribute("role", "button");
        path.setAttribute("aria-label", layer.label + ": show its images on the map");
        path.addEventListener("click", () => chooseCluster(layer.id));
        path.addEventListener("keydown", (event) => {
          if (event.key === "Enter" || event.key === " ") {
            event.preventDefault();
            chooseCluster(layer.id);
          }
        });
        path.addEventListener("focus", () => { $("stream-label").textContent = layer.label; });
      }
      return path;
    });
    // a label every 1, 2, 5, 10, ... periods, at least 44 pixels apart, on round years
    const spacing = plotWidth / streamPeriods.length;
    const every = [1, 2, 5, 10, 20, 50, 100, 200, 500].find((n) => n * spacing >= (streamStep === 1 ? 40 : 80)) || 1000;
    const ticks = [];
    streamPeriods.forEach((period, p) => {
      if (Math.round(period.start / streamStep) % every !== 0) return;
      ticks.push(svg("text", { x: xOf(p), y: height - 8, class: "axis" },
                     [streamStep === 1 ? String(period.start) : period.period.replace("-", "–")]));
    });
    const mark = svg("line", { id: "stream-year", class: "year-mark", x1: 0, x2: 0, y1: top - 4, y2: top + plotHeight + 4 });
    box.replaceChildren(svg("svg", {
      width: width, height: height, viewBox: `0 0 ${width} ${height}`, role: "img",
      class: state.highlight === null ? "" : "has-selection",
      "aria-label": "Stream graph: the " + (streamMode === "share" ? "share" : "number") + " of each period's images in the " +
        shown.length + " largest clusters",
    }, [...paths, ...ticks, mark]), streamLegend(layers));
    markStreamYear();
  }

  // The streams' names, largest first: buttons that do what a click on the stream does.
  function streamLegend(layers) {
    return element("div", { className: "stream-legend" }, layers.map((layer) => {
      const swatch = svg("svg", { width: 10, height: 10, viewBox: "0 0 10 10", "aria-hidden": "true" },
                         [svg("rect", { width: 10, height: 10, rx: 2, fill: layer.colour })]);
      if (layer.id === "other") return element("span", { className: "stream-key other" }, [swatch, " " + layer.label]);
      const button = element("button", { type: "button", className: "stream-key" }, [swatch, " " + layer.label]);
      button.dataset.cluster = String(layer.id);
      button.setAttribute("aria-pressed", String(state.highlight === layer.id));
      button.addEventListener("click", () => chooseCluster(layer.id));
      return button;
    }));
  }

  // A closed area between two lines through the periods' centres, smoothed (the curves between two
  // periods bend alike for every layer, so that stacked layers never cross).
  function area(upper, lower, xOf, x0, x1) {
    const line = (values, reverse) => {
      const order = values.map((_, p) => p);
      if (reverse) order.reverse();
      let d = "";
      order.forEach((p, j) => {
        const x = xOf(p), y = values[p];
        if (j === 0) {
          d += (reverse ? "L" : "M") + (reverse ? x1 : x0).toFixed(1) + "," + y.toFixed(1) + "L" + x.toFixed(1) + "," + y.toFixed(1);
        } else {
          const previous = order[j - 1];
          const px = xOf(previous), py = values[previous], cx = (px + x) / 2;
          d += "C" + cx.toFixed(1) + "," + py.toFixed(1) + " " + cx.toFixed(1) + "," + y.toFixed(1) + " " + x.toFixed(1) + "," + y.toFixed(1);
        }
      });
      d += "L" + (reverse ? x0 : x1).toFixed(1) + "," + values[order[order.length - 1]].toFixed(1);
      return d;
    };
    return line(upper, false) + line(lower, true) + "Z";
  }

  function periodAt(event) {
    if (!streamGeometry) return null;
    const box = event.currentTarget.ownerSVGElement.getBoundingClientRect();
    const scale = box.width / event.currentTarget.ownerSVGElement.viewBox.baseVal.width;
    const x = (event.clientX - box.left) / scale;
    const p = Math.floor((x - streamGeometry.left) / streamGeometry.width * streamGeometry.count);
    return p >= 0 && p < streamPeriods.length ? p : null;
  }

  function describeStream(layer, event) {
    const p = periodAt(event);
    let text = layer.label;
    if (p !== null) {
      const count = layer.counts[p] || 0, total = streamPeriods[p].total;
      text += " — " + streamPeriods[p].period.replace("-", "–") + ": " + number(count) + " of " + number(total) +
        " images" + (total ? " (" + (100 * count / total).toFixed(1) + " %)" : "");
    }
    $("stream-label").textContent = text;
  }

  function markStreamYear() {
    const mark = document.getElementById("stream-year");
    if (!mark || !streamGeometry) return;
    const p = state.year === null ? -1 : streamPeriods.findIndex((period) => period.start <= state.year && state.year <= period.end);
    mark.classList.toggle("off", p < 0);
    const x = p < 0 ? 0 : streamGeometry.left + (p + 0.5) * streamGeometry.width / streamGeometry.count;
    mark.setAttribute("x1", x.toFixed(1));
    mark.setAttribute("x2", x.toFixed(1));
  }

  // Centre the map on a cluster's centre, zoomed so that all its points are in view.
  function showCluster(cluster) {
    let dx = 0, dy = 0;
    for (let i = 0; i < N; i++) {
      if (cs[i] !== cluster.id) continue;
      dx = Math.max(dx, Math.abs(xs[i] - cluster.x));
      dy = Math.max(dy, Math.abs(ys[i] - cluster.y));
    }
    const scale = Math.min(cssWidth * 0.46 / Math.max(dx, 1), cssHeight * 0.44 / Math.max(dy, 1));
    centreOn(cluster.x, cluster.y, Math.min(16, scale / fitScale()));
  }

  function chooseCluster(id) {
    state.highlight = state.highlight === id ? null : id;
    const cluster = clusterById.get(id);
    if (state.highlight !== null && cluster) showCluster(cluster);
    const label = cluster ? cluster.label : String(id);
    $("stream-label").textContent = state.highlight === null ? "" : label + ": its images are bright on the map";
    drawStreams();
    remember();
    requestDraw();
  }

  for (const button of document.querySelectorAll("#stream-mode button")) {
    button.addEventListener("click", () => {
      streamMode = button.dataset.mode;
      for (const other of document.querySelectorAll("#stream-mode button")) other.setAttribute("aria-pressed", String(other === button));
      drawStreams();
    });
  }

  // ------------------------------------------------------------------------------ filters

  let facets = [];

  async function loadFacets() {
    try {
      facets = ((await request("api/facets", "json")).facets || []).map((facet) => ({
        name: facet.name || facet.column,
        values: (facet.values || []).map((value) => Array.isArray(value) ? value : [value.value, value.count]),
      }));
    } catch (error) {
      facets = [];
    }
    drawFilters();
  }

  function drawFilters() {
    const chosen = new Map(state.filters.map((filter) => [filter.slice(0, filter.indexOf(":")), filter.slice(filter.indexOf(":") + 1)]));
    const box = $("filters");
    const lists = facets.map((facet) => {
      const select = element("select");
      select.setAttribute("aria-label", "Only images whose " + facet.name + " is");
      select.dataset.column = facet.name;
      select.append(element("option", { value: "", textContent: "any " + facet.name }),
        ...facet.values.map(([value, count]) => element("option", {
          value: value, textContent: value + " (" + number(count) + ")", selected: chosen.get(facet.name) === value,
        })));
      select.addEventListener("change", () => {
        const others = state.filters.filter((filter) => !filter.startsWith(facet.name + ":"));
        setFilters(select.value ? [...others, facet.name + ":" + select.value] : others);
      });
      return element("label", { className: "filter" }, [select]);
    });
    const listed = new Set(facets.map((facet) => facet.name));
    const chips = state.filters.filter((filter) => !listed.has(filter.slice(0, filter.indexOf(":")))).map((filter) => {
      const remove = element("button", { type: "button", className: "link-button", textContent: "✕" });
      remove.setAttribute("aria-label", "Remove the filter " + filter);
      remove.addEventListener("click", () => setFilters(state.filters.filter((other) => other !== filter)));
      return element("span", { className: "filter-chip" }, [filter.replace(":", ": ") + " ", remove]);
    });
    box.hidden = lists.length === 0 && chips.length === 0;
    box.replaceChildren(element("span", { className: "filters-title", textContent: "Only:" }), ...lists, ...chips);
  }

  let maskRequest = 0;

  async function applyFilters() {
    const mine = ++maskRequest;
    if (!state.filters.length) {
      state.mask = null;
      requestDraw();
      return;
    }
    try {
      const query = new URLSearchParams([["format", "mask"], ...state.filters.map((filter) => ["filter", filter])]);
      const buffer = await request("api/map?" + query, "binary");
      if (mine !== maskRequest) return;
      if (buffer.byteLength < Math.ceil(N / 8)) throw new ApiError("The filter's answer is too short for the map.");
      state.mask = new Uint8Array(buffer);
      $("message").hidden = true;
    } catch (error) {
      if (mine !== maskRequest) return;
      showMessage("The filter " + state.filters.join(" and ") + " cannot be used: " + error.message);
      state.filters = [];
      state.mask = null;
      drawFilters();
      remember();
    }
    if (hovered !== null) { hovered = null; hideTooltip(); }
    requestDraw();
  }

  function setFilters(filters) {
    state.filters = filters;
    drawFilters();
    remember();
    return applyFilters();
  }

  // ------------------------------------------------------------------------------ the address

  function remember() {
    const parameters = new URLSearchParams();
    for (const filter of state.filters) parameters.append("filter", filter);
    if (state.year !== null) parameters.set("year", String(state.year));
    if (state.colour !== "year") parameters.set("colour", state.colour);
    if (state.focus && state.focus.urn) parameters.set("focus", state.focus.urn);
    const query = parameters.toString();
    const place = state.focus && !state.focus.urn ? "#at=" + state.focus.x + "," + state.focus.y : "";
    history.replaceState(null, "", (query ? "?" + query : window.location.pathname) + place);
  }

  async function applyFocus() {
    const urn = page.get("focus");
    const at = /^#at=(\d+),(\d+)$/.exec(window.location.hash);  // an uploaded image's place (app.js)
    if (urn) {
      try {
        const answer = await request("api/map?" + new URLSearchParams({ urn: urn }), "json");
        const point = answer.points[0];
        state.focus = { row: point.row, x: point.x, y: point.y, urn: urn };
        centreOn(point.x, point.y, 8);
      } catch (error) {
        showMessage(error.status === 404 ? "There is no image " + JSON.stringify(urn) + " in this collection's map." : error.message);
      }
    } else if (at) {
      state.focus = { x: Math.min(FULL, Number(at[1])), y: Math.min(FULL, Number(at[2])) };
      centreOn(state.focus.x, state.focus.y, 8);
    }
  }

  // ------------------------------------------------------------------------------ start

  document.body.dataset.mapReady = "loading";
  let resizing = null;
  new ResizeObserver(() => {
    if (!xs) return;
    resize();
    clearTimeout(resizing);
    resizing = setTimeout(drawStreams, 150);
  }).observe(stage);

  drawStreams();
  drawFilters();
  loadFacets();
  (async () => {
    try {
      await load();
    } catch (error) {
      $("map-loading").hidden = true;
      showMessage(error.message);
      document.body.dataset.mapReady = "failed";
      return;
    }
    resize();
    await Promise.all([applyFocus(), applyFilters()]);
    if (state.year !== null) setYear(state.year);
    remember();
    ready = true;
    requestDraw();
  })();
})();
