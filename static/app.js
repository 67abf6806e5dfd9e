// Siamese search page: asks the JSON API and draws the query, its neighbours, a chart of similarity
// over time and the timeline. Plain JavaScript, no libraries. The page's state is in its URL
// (?urn=...&step=...&nns=...): a search can be bookmarked or shared, and the browser's back and
// forward buttons walk through searches.
"use strict";

(function () {
  const collection = JSON.parse(document.getElementById("collection").textContent);
  const steps = collection.steps;  // largest first, as the server lists them
  const DEFAULT_STEP = steps[steps.length - 1];  // the finest: a row per year shows the most
  const DEFAULT_NNS = 10;
  const LARGER_IS_CLOSER = collection.metric === "dot";  // Annoy's "dot" distance is a similarity

  const $ = (id) => document.getElementById(id);
  let requestNumber = 0;  // answers to superseded requests are dropped
  let current = { urn: null, step: DEFAULT_STEP, nns: DEFAULT_NNS, filters: [] };  // filters: ["column:value"]
  let currentUpload = null;  // { file, url } while the page shows the results of an uploaded image
  const MAX_UPLOAD_BYTES = 20 * 1024 * 1024;  // the server's limit (it answers 413 above it)
  // Reprints: the nearest images checked for being the same printed image (another scan, a reprint),
  // when the server has images to check them on (its thumbnails or the originals).
  const REPRINTS = collection.reprints && collection.reprints.images ? String(collection.reprints.default) : null;

  // ------------------------------------------------------------------------------ helpers

  const { element, svg } = window.siameseDom;  // static/dom.js

  function pageUrl(state) {
    return "?" + new URLSearchParams([["urn", state.urn], ["step", String(state.step)], ["nns", String(state.nns)],
                                      ...(state.filters || []).map((filter) => ["filter", filter])]);
  }

  function title(item) {
    return item.title || item.name || item.caption || item.label || item.urn;
  }

  function formatDistance(distance) {
    const size = Math.abs(distance);
    return distance.toFixed(size >= 100 ? 0 : size >= 10 ? 1 : 2);
  }

  function periodName(length) {
    return length === 1 ? "year" : length === 10 ? "decade" : length === 100 ? "century" : "period";
  }

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status || 0;
    }
  }

  async function getJson(path, parameters) {
    const url = path + "?" + new URLSearchParams(parameters).toString();
    let response;
    try {
      response = await fetch(url, { headers: { Accept: "application/json" } });
    } catch (error) {
      throw new ApiError("The server cannot be reached (" + error.message + ").");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (!response.ok || body === null) {
      throw new ApiError((body && body.error) || "The server answered " + response.status + ".", response.status);
    }
    return body;
  }

  // POST an uploaded image to api/search (multipart: image, nns, step), as getJson does for GETs.
  async function postImage(file, parameters) {
    const body = new FormData();
    body.append("image", file, file.name || "upload");
    for (const [name, value] of new URLSearchParams(parameters)) body.append(name, value);
    let response;
    try {
      response = await fetch("api/search", { method: "POST", body: body, headers: { Accept: "application/json" } });
    } catch (error) {
      throw new ApiError("The server cannot be reached (" + error.message + ").");
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch (error) {
      answer = null;
    }
    if (!response.ok || answer === null) {
      throw new ApiError((answer && answer.error) || "The server answered " + response.status + ".");
    }
    return answer;
  }

  // The download links: for a urn, the same request as the page's with format=csv|json (the answer
  // shown, as a file); for an upload, the image posted again with the format (it is not in a URL).
  function setDownloads(parameters, file) {
    for (const format of ["csv", "json"]) {
      const link = $("download-" + format);
      const query = new URLSearchParams(parameters);
      query.set("format", format);
      link.onclick = null;
      if (file === null) {
        link.href = "api/neighbours?" + query;
        link.removeAttribute("download");
      } else {
        link.href = "#";
        link.onclick = async (event) => {
          event.preventDefault();
          const body = new FormData();
          body.append("image", file, file.name || "upload");
          for (const [name, value] of query) body.append(name, value);
          const response = await fetch("api/search", { method: "POST", body: body });
          if (!response.ok) { showMessage("The download failed: the server answered " + response.status + "."); return; }
          const disposition = response.headers.get("Content-Disposition") || "";
          const name = (disposition.match(/filename="([^"]+)"/) || [null, "siamese-upload." + format])[1];
          saveFile(name, await response.blob());
        };
      }
    }
  }

  function showMessage(text) {
    $("message").textContent = text;
    $("message").hidden = false;
  }

  function hideMessage() {
    $("message").hidden = true;
  }

  // The waiting state: shown at once, in the same task as the click or upload, so that a slow answer
  // (the first upload loads the model: seconds) never leaves the page looking dead.
  function showBusy(text) {
    document.body.classList.add("busy");
    $("status").textContent = text;
    $("status").hidden = false;
  }

  function hideBusy() {
    document.body.classList.remove("busy");
    $("status").hidden = true;
  }

  // ------------------------------------------------------------------------------ drawing

  function image(item, lazy) {
    const placeholder = () => element("span", { className: "placeholder", textContent: "no thumbnail" });
    if (!item.thumbnail) return placeholder();
    const node = element("img", { src: item.thumbnail, alt: title(item), decoding: "async" });
    if (lazy) node.loading = "lazy";
    node.addEventListener("error", () => node.replaceWith(placeholder()));
    return node;
  }

  function thumbnail(item) {
    const link = element("a", {
      className: "thumb",
      href: pageUrl({ urn: item.urn, step: current.step, nns: current.nns }),
      title: [title(item), item.urn, item.date,
              item.distance === undefined ? null : "distance " + formatDistance(item.distance)]
        .filter((part) => part !== null && part !== undefined && part !== "").join("\n"),
    });
    link.dataset.urn = item.urn;
    const caption = element("span", { className: "caption" }, [
      element("span", { className: "year", textContent: String(item.year) }),
    ]);
    if (item.distance !== undefined) {
      caption.append(element("span", { className: "distance", textContent: formatDistance(item.distance) }));
    }
    link.append(image(item, true), caption);
    if (item.reprint) {
      link.classList.add("reprint");
      link.title += "\nthe same image (" + item.inliers + " matching points, geometry and content checked)";
      link.append(element("span", { className: "badge", textContent: "same image" }));
    }
    link.addEventListener("click", (event) => {
      if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) {
        return;  // a new tab or window: let the browser follow the link
      }
      event.preventDefault();
      search({ ...current, urn: item.urn }, "push");
      window.scrollTo({ top: 0 });
    });
    return link;
  }

  function drawQuery(answer) {
    const metadata = answer.metadata;
    const item = Object.assign({}, metadata, { urn: answer.urn, thumbnail: answer.thumbnail });
    $("query").replaceChildren(image(item, false));
    $("query-title").textContent = title(item);
    const rows = [];
    const fields = [["urn", answer.urn], ["date", metadata.date]];
    for (const [name, value] of Object.entries(metadata)) {
      if (name !== "date" && name !== "year" && value !== "" && value !== null) fields.push([name, value]);
    }
    for (const [name, value] of fields) {
      const text = String(value);
      const cell = /^https?:\/\/\S+$/i.test(text)  // a link to the source, where the metadata has one
        ? element("a", { href: text, textContent: text, target: "_blank", rel: "noopener noreferrer" })
        : text;
      rows.push(element("dt", { textContent: name.replace(/_/g, " ") }), element("dd", {}, [cell]));
    }
    $("query-metadata").replaceChildren(...rows);
    $("urn").value = answer.urn;
    document.title = title(item) + " — Siamese";
    shownItem = Object.assign({ urn: answer.urn }, metadata, { thumbnail: answer.thumbnail });
    drawBasket();
  }

  // ------------------------------------------------------------------------------ the basket
  // Images kept across searches (the query of the moment: "Keep in the basket"), in this browser's
  // localStorage, so that a reload or another day keeps them; downloaded as CSV or JSON made here.
  const BASKET_KEY = "siamese-basket";
  let shownItem = null;  // the query image shown (a urn of the collection), with its metadata

  function basket() {
    try {
      const kept = JSON.parse(localStorage.getItem(BASKET_KEY) || "[]");
      return Array.isArray(kept) ? kept : [];
    } catch (error) {
      return [];
    }
  }

  function saveBasket(kept) {
    try {
      localStorage.setItem(BASKET_KEY, JSON.stringify(kept));
    } catch (error) {
      showMessage("The basket cannot be saved in this browser (" + error.message + ").");
    }
    drawBasket();
  }

  function drawBasket() {
    const kept = basket();
    $("basket").hidden = kept.length === 0;
    $("basket-count").textContent = String(kept.length);
    $("basket-images").replaceChildren(...kept.map((item) => thumbnail(item)));
    const isKept = shownItem !== null && kept.some((item) => item.urn === shownItem.urn);
    $("keep").hidden = shownItem === null;
    $("keep").setAttribute("aria-pressed", String(isKept));
    $("keep").textContent = isKept ? "Kept in the basket ✓ (remove)" : "Keep in the basket";
  }

  $("keep").addEventListener("click", () => {
    if (shownItem === null) return;
    const kept = basket();
    const others = kept.filter((item) => item.urn !== shownItem.urn);
    saveBasket(others.length < kept.length ? others : [...kept, { ...shownItem, kept: new Date().toISOString() }]);
  });

  $("basket-empty").addEventListener("click", () => saveBasket([]));

  function basketCsv(kept) {
    const fixed = ["urn", "date", "year", "path"];
    const columns = [...fixed];
    for (const item of kept) {
      for (const name of Object.keys(item)) {
        if (!columns.includes(name) && !["thumbnail", "kept", "distance"].includes(name)) columns.push(name);
      }
    }
    columns.push("kept", "siamese_url");
    const page = new URL(".", window.location.href).href;
    const cell = (value) => {
      let text = value === undefined || value === null ? "" : String(value);
      if (/^[=+\-@\t\r]/.test(text)) text = "'" + text;  // never a formula in a spreadsheet
      return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
    };
    const rows = kept.map((item) => columns.map((name) =>
      cell(name === "siamese_url" ? page + "?" + new URLSearchParams({ urn: item.urn }) : item[name])).join(","));
    return [columns.join(","), ...rows].join("\r\n") + "\r\n";
  }

  // Save `blob` as the file `name` (what a download link does, for data the page holds or fetched).
  function saveFile(name, blob) {
    const url = URL.createObjectURL(blob);
    const save = element("a", { href: url, download: name });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  $("basket-csv").addEventListener("click", (event) => {
    event.preventDefault();
    saveFile("siamese-basket.csv", new Blob([basketCsv(basket())], { type: "text/csv" }));
  });
  $("basket-json").addEventListener("click", (event) => {
    event.preventDefault();
    saveFile("siamese-basket.json", new Blob([JSON.stringify(basket(), null, 1)], { type: "application/json" }));
  });

  function drawUploadQuery(answer, url) {
    shownItem = null;  // an upload is not in the collection: nothing to keep
    drawBasket();
    const metadata = answer.metadata;
    const preview = element("img", { src: url, alt: "the uploaded image", className: "upload-preview" });
    $("query").replaceChildren(preview);
    $("query-title").textContent = metadata.filename || "Uploaded image";
    const fields = [["uploaded file", metadata.filename || "(no name)"],
                    ["size", metadata.width + " × " + metadata.height + " pixels"],
                    ["model", answer.model]];
    $("query-metadata").replaceChildren(...fields.flatMap(([name, value]) =>
      [element("dt", { textContent: name }), element("dd", { textContent: String(value) })]));
    $("urn").value = "";
    document.title = (metadata.filename || "Uploaded image") + " — Siamese";
  }

  function drawNeighbours(neighbours, reprints) {
    $("neighbours").replaceChildren(...(neighbours.length
      ? neighbours.map((item) => thumbnail(item))
      : [element("p", { className: "none", textContent: "no other images" })]));
    const summary = $("reprint-summary");
    summary.hidden = !reprints;
    if (reprints && reprints.note) {
      summary.textContent = "Same image: " + reprints.note + ".";
    } else if (reprints) {
      const found = reprints.found === 1 ? "1 is" : reprints.found + " are";
      summary.textContent = "Same image: " + found + " the same printed image among the " + reprints.checked
        + " nearest (checked on the " + reprints.images + "); shown first, marked \u201csame image\u201d.";
    }
  }

  function drawControls(state) {
    $("steps").replaceChildren(...steps.map((size) => {
      const button = element("button", { type: "button", textContent: "per " + (size === 1 || size === 10 || size === 100 ? periodName(size) : size + " years") });
      button.dataset.step = String(size);
      button.setAttribute("aria-pressed", String(size === state.step));
      button.addEventListener("click", () => {
        if (size !== current.step) rerun({ ...current, step: size });
      });
      return button;
    }));
    const choices = [5, 10, 20, 50, 100].filter((n) => n <= collection.max_nns);
    if (!choices.includes(state.nns)) choices.push(state.nns);
    $("nns").replaceChildren(...choices.sort((a, b) => a - b).map((n) =>
      element("option", { value: String(n), textContent: String(n), selected: n === state.nns })));
  }

  // The distance of the closest neighbour in each period, as bars: taller is more alike.
  let lastChart = null;

  function drawChart(periods, queryYear) {
    lastChart = [periods, queryYear];
    const found = periods.filter((period) => period.neighbours.length).map((period) => period.neighbours[0].distance);
    $("chart-section").hidden = found.length === 0;
    if (found.length === 0) return;
    // Drawn at the size it is shown (not stretched), so that its text keeps its shape on any screen.
    const width = Math.max($("chart").clientWidth, 240), height = 150, top = 22, bottom = 24;
    const left = 42, right = 14;  // room for the distance scale, and for the first and last labels
    const slot = (width - left - right) / Math.max(periods.length, 1);
    const barWidth = Math.min(slot * 0.72, 56);
    const best = LARGER_IS_CLOSER ? Math.max(...found) : Math.min(...found);
    const worst = LARGER_IS_CLOSER ? Math.min(...found) : Math.max(...found);
    const floor = worst + (worst - best) * 0.25 || worst * 1.1 || 1;  // the worst bar keeps some height
    const labelEvery = Math.max(1, Math.ceil(40 / slot));  // period labels at least 40 px apart
    const showValues = slot >= 34;
    const heightOf = (distance) => Math.max(3, Math.abs(floor - distance) / Math.abs(floor - best || 1) * (height - top - bottom));
    // The scale: the distances of the closest and the farthest bar (and one between), as lines to read bars against
    const ticks = [...new Set([best, (best + worst) / 2, worst])].map((distance) => {
      const y = height - bottom - heightOf(distance);
      return svg("g", { class: "scale" }, [
        svg("line", { x1: left - 4, x2: width - right, y1: y, y2: y }),
        svg("text", { x: left - 6, y: y + 3 }, [formatDistance(distance)]),
      ]);
    });
    const bars = periods.map((period, index) => {
      const x = left + index * slot + (slot - barWidth) / 2;
      const own = period.start <= queryYear && queryYear <= period.end;
      const label = index % labelEvery === 0
        ? [svg("text", { x: x + barWidth / 2, y: height - 6, class: "axis" }, [period.start === period.end ? String(period.start) : period.start + "s"])]
        : [];
      if (!period.neighbours.length) {  // marked, not left blank: a gap here means "no images"
        return svg("g", { class: own ? "empty own" : "empty" }, [
          svg("title", {}, [period.period + (own ? ": no other images" : ": no images")]),
          svg("rect", { x: x, y: height - bottom - 7, width: barWidth, height: 7 }),
          ...label]);
      }
      const distance = period.neighbours[0].distance;
      const barHeight = heightOf(distance);
      const reprintNote = period.reprints ? "; " + period.reprints + " reprint" + (period.reprints === 1 ? "" : "s") : "";
      const link = svg("a", { href: "#period-" + period.period, class: own ? "bar own" : "bar" }, [
        svg("title", {}, [period.period + ": closest distance " + formatDistance(distance) + reprintNote]),
        svg("rect", { x: x, y: height - bottom - barHeight, width: barWidth, height: barHeight, rx: 2 }),
      ]);
      if (period.reprints) {  // a mark above the bar: the same image was printed in this period
        const inside = barHeight >= 18;  // inside the bar's top, clear of the value above it
        link.append(svg("circle", { cx: x + barWidth / 2,
                                    cy: inside ? height - bottom - barHeight + 8 : height - bottom - barHeight - 18,
                                    r: 4.5, class: "reprint-mark" }));
      }
      if (showValues) {
        link.append(svg("text", { x: x + barWidth / 2, y: height - bottom - barHeight - 5, class: "value" },
                        [formatDistance(distance)]));
      }
      link.addEventListener("click", (event) => {
        event.preventDefault();  // scroll to the row without a history entry of its own
        const row = document.getElementById("period-" + period.period);
        row.scrollIntoView({ behavior: "smooth", block: "center" });
        row.focus({ preventScroll: true });
      });
      return svg("g", {}, [link, ...label]);
    });
    $("chart").replaceChildren(svg("svg", {
      viewBox: `0 0 ${width} ${height}`, width: width, height: height, role: "img",
      "aria-label": "Distance of the closest neighbour in each period; taller bars are more alike",
    }, [...ticks, svg("text", { x: 2, y: 11, class: "scale-title" }, ["distance of the closest image"]),
        svg("line", { x1: left - 4, x2: width - right, y1: height - bottom, y2: height - bottom, class: "baseline" }),
        ...bars]));
  }

  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => { if (lastChart && !$("results").hidden) drawChart(...lastChart); }, 150);
  });

  // One row per period; a run of periods without images folds into one row ("2013–2015: no images"),
  // so that a sparse century of years reads as the years that have something to show.
  function drawTimeline(periods, queryYear) {
    const rows = [];
    let run = [];
    const flush = () => {
      if (run.length === 1) rows.push(periodRow(run[0], false));
      else if (run.length > 1) rows.push(foldedRow(run));
      run = [];
    };
    for (const period of periods) {
      const own = period.start <= queryYear && queryYear <= period.end;
      if (period.neighbours.length === 0 && !own) {
        run.push(period);
        continue;
      }
      flush();
      rows.push(periodRow(period, own));
    }
    flush();
    $("timeline").replaceChildren(...rows);
  }

  function periodRow(period, own) {
    const empty = period.neighbours.length === 0;
    const row = element("div", {
      id: "period-" + period.period,
      tabIndex: -1,
      className: "period" + (empty ? " empty" : "") + (period.start === period.end ? " single" : "")
        + (own ? " own" : ""),
    });
    row.dataset.period = period.period;
    const label = element("div", { className: "period-label", textContent: period.period.replace("-", "–") });
    if (own) {
      label.append(element("small", {
        className: "own-tag", textContent: "the query's " + periodName(period.end - period.start + 1),
      }));
    }
    if (!empty) {
      label.append(element("small", { textContent: "closest " + formatDistance(period.neighbours[0].distance) }));
    }
    if (period.reprints) {
      label.append(element("small", {
        className: "reprint-count",
        textContent: period.reprints === 1 ? "1 reprint" : period.reprints + " reprints",
      }));
    }
    const strip = element("div", { className: "strip" },
      empty ? [element("span", { className: "none",
                                 textContent: own ? "no other images: the query is this " +
                                   periodName(period.end - period.start + 1) + "'s only image"
                                   : "no images from this period" })]
            : period.neighbours.map((item) => thumbnail(item)));
    row.append(label, strip);
    if (!empty) {
      // a row wider than the screen scrolls sideways: say so with a fade at its edge, kept up to date
      const mark = () => strip.classList.toggle("more", strip.scrollLeft + strip.clientWidth < strip.scrollWidth - 2);
      strip.addEventListener("scroll", mark, { passive: true });
      requestAnimationFrame(mark);
    }
    return row;
  }

  function foldedRow(run) {
    const first = run[0], last = run[run.length - 1];
    const length = first.end - first.start + 1;
    const row = element("div", { id: "period-" + first.period, tabIndex: -1, className: "period empty folded" });
    row.dataset.period = first.start + "-" + last.end;
    row.dataset.periods = String(run.length);
    row.append(
      element("div", { className: "period-label", textContent: first.start + "–" + last.end }),
      element("div", { className: "strip" }, [element("span", {
        className: "none", textContent: "no images in these " + run.length + " " + periodName(length) + "s",
      })]));
    return row;
  }

  // Filters: a list for each metadata column with few values (api/facets: its values and how many
  // images have each), as Datasette's facets; choosing one searches again within it, in every period.
  let facets = [];

  async function loadFacets() {
    try {
      facets = (await getJson("api/facets", {})).facets;
    } catch (error) {
      facets = [];
    }
    drawFilters(current.filters);
  }

  function drawFilters(filters) {
    const chosen = new Map(filters.map((filter) => [filter.slice(0, filter.indexOf(":")), filter.slice(filter.indexOf(":") + 1)]));
    $("filters").hidden = facets.length === 0;
    $("filters").replaceChildren(element("span", { className: "filters-title", textContent: "Only:" }),
      ...facets.map((facet) => {
        const select = element("select");
        select.setAttribute("aria-label", "Only images whose " + facet.name + " is");
        select.dataset.column = facet.name;
        select.append(element("option", { value: "", textContent: "any " + facet.name }),
          ...facet.values.map(([value, count]) => element("option", {
            value: value, textContent: value + " (" + count + ")", selected: chosen.get(facet.name) === value,
          })));
        select.addEventListener("change", () => {
          const others = current.filters.filter((filter) => !filter.startsWith(facet.name + ":"));
          rerun({ ...current, filters: select.value ? [...others, facet.name + ":" + select.value] : others });
        });
        return element("label", { className: "filter" }, [select]);
      }));
  }

  // ------------------------------------------------------------------------------ the map inset
  // Where the query lies on the collection map (make_map.py), when one is built: the map's overview
  // with a marker, linking to the map centred there. An uploaded image is placed at the mean position
  // of its 10 nearest images. Without a map (api/clusters answers 404) nothing is shown.
  let collectionMap = null;  // a Promise of api/clusters' answer, or of null when there is no map
  let insetNumber = 0;  // answers for a query no longer shown are dropped

  async function drawInset(urn, neighbours) {
    const mine = ++insetNumber;
    const done = (shown) => { if (mine === insetNumber) document.body.dataset.mapInset = shown ? "shown" : "none"; };
    $("map-inset").hidden = true;
    if (collectionMap === null) collectionMap = getJson("api/clusters", {}).catch(() => null);
    try {
      const map = await collectionMap;
      const urns = urn !== null ? [urn] : neighbours.slice(0, 10).map((item) => item.urn);
      if (!map || !map.overview || urns.length === 0) return done(false);
      const points = (await getJson("api/map", urns.map((one) => ["urn", one]))).points;
      if (mine !== insetNumber || points.length === 0) return done(false);
      const x = points.reduce((sum, point) => sum + point.x, 0) / points.length;
      const y = points.reduce((sum, point) => sum + point.y, 0) / points.length;
      $("map-inset-marker").style.left = (100 * x / 65535).toFixed(3) + "%";
      $("map-inset-marker").style.top = (100 * y / 65535).toFixed(3) + "%";
      $("map-inset-image").src = map.overview;
      const filters = (current.filters || []).map((filter) => ["filter", filter]);
      // an upload has no urn: its place goes in the fragment (map#at=x,y), which the map page reads
      const query = new URLSearchParams(urn !== null ? [["focus", urn], ...filters] : filters).toString();
      $("map-inset").href = "map" + (query ? "?" + query : "") + (urn !== null ? "" : "#at=" + Math.round(x) + "," + Math.round(y));
      $("map-inset").hidden = false;
      done(true);
    } catch (error) {
      done(false);  // the map is extra: the search stands without it
    }
  }

  // ------------------------------------------------------------------------------ searching

  function remember(state, how) {
    const url = pageUrl(state);
    if (how === "push") history.pushState(state, "", url);
    else if (how === "replace") history.replaceState(state, "", url);
  }

  // Show a search (urn, step, nns); how: "push" (a new history entry), "replace" or "none".
  // notice: said once the search is shown (the page's parameters it could not use).
  async function search(state, how, notice) {
    const mine = ++requestNumber;
    showBusy("Searching…");
    try {
      // One request: the whole collection (the top list) and the timeline's step, answered together.
      const parameters = [["urn", state.urn], ["nns", String(state.nns)], ["step", "all," + String(state.step)],
                          ...(REPRINTS ? [["reprints", REPRINTS]] : []),
                          ...(state.filters || []).map((filter) => ["filter", filter])];
      const answer = await getJson("api/neighbours", parameters);
      if (mine !== requestNumber) return;
      forgetUpload();
      setDownloads(parameters, null);
      const step = answer.step[1];
      current = { urn: answer.urn, step: step, nns: answer.nns, filters: state.filters || [] };
      drawFilters(current.filters);
      const periods = answer.steps[String(step)];
      hideMessage();
      $("start").hidden = true;
      $("results").hidden = false;
      drawQuery(answer);
      drawInset(answer.urn, null);
      drawNeighbours(answer.steps.all[0].neighbours, answer.reprints);
      drawControls(current);
      drawTimeline(periods, answer.metadata.year);
      drawChart(periods, answer.metadata.year);
      remember(current, how);
      if (notice) showMessage(notice);
    } catch (error) {
      if (mine !== requestNumber) return;
      if (error instanceof ApiError && error.status === 404) {  // said for a person, not for a script
        showMessage("There is no image " + JSON.stringify(state.urn) + " in this collection (identifiers " +
                    "are matched exactly as in its metadata). Pick one of the images below, or search with an image of your own.");
      } else {
        showMessage(error instanceof ApiError ? error.message : "Something went wrong: " + error);
      }
      $("urn").value = state.urn;
      if (current.urn === null && currentUpload === null) await showStart();
    } finally {
      if (mine === requestNumber) hideBusy();
    }
  }

  function forgetUpload() {
    if (currentUpload !== null) URL.revokeObjectURL(currentUpload.url);
    currentUpload = null;
  }

  // The same search for the current query: an uploaded image or a urn.
  function rerun(state) {
    if (currentUpload !== null && state.urn === null) searchUpload(currentUpload.file, state);
    else if (state.urn !== null) search(state, "push");
  }

  // Search with an image file from the user's computer (file picker or drop): the whole collection
  // and the timeline of the current step, both answered by one POST api/search (one upload, embedded
  // once).
  async function searchUpload(file, state) {
    if (file.size > MAX_UPLOAD_BYTES) {
      showMessage("That file is " + Math.round(file.size / 1048576) + " MB; images of at most 20 MB can be uploaded.");
      return;
    }
    const mine = ++requestNumber;
    showBusy("Reading the image and searching… (the first upload also loads the model: up to a minute)");
    try {
      const parameters = [["nns", String(state.nns)], ["step", "all," + String(state.step)],
                          ...(REPRINTS ? [["reprints", REPRINTS]] : []),
                          ...(state.filters || []).map((filter) => ["filter", filter])];
      const answer = await postImage(file, parameters);
      if (mine !== requestNumber) return;
      if (currentUpload === null || currentUpload.file !== file) {
        forgetUpload();
        currentUpload = { file: file, url: URL.createObjectURL(file) };
      }
      setDownloads(parameters, file);
      const step = answer.step[1];
      current = { urn: null, step: step, nns: answer.nns, filters: state.filters || [] };
      drawFilters(current.filters);
      const periods = answer.steps[String(step)];
      hideMessage();
      $("start").hidden = true;
      $("results").hidden = false;
      drawUploadQuery(answer, currentUpload.url);
      drawInset(null, answer.steps.all[0].neighbours);
      drawNeighbours(answer.steps.all[0].neighbours, answer.reprints);
      drawControls(current);
      drawTimeline(periods, NaN);  // an upload has no year of its own
      drawChart(periods, NaN);
      if (window.location.search) history.pushState({ upload: true }, "", "./");  // no urn to link to
    } catch (error) {
      if (mine !== requestNumber) return;
      showMessage(error instanceof ApiError ? error.message : "Something went wrong: " + error);
    } finally {
      if (mine === requestNumber) hideBusy();
    }
  }

  async function showStart() {
    $("results").hidden = true;
    $("start").hidden = false;
    try {
      const answer = await getJson("api/random", { n: "24" });
      $("random-images").replaceChildren(...answer.images.map((item) => thumbnail(item)));
    } catch (error) {
      showMessage(error.message);
    }
  }

  // The page's own parameters, forgivingly: a bad step or nns (a typo, an old link) falls back to its
  // default and is named in a notice, all of them at once; the search itself still happens. (The JSON
  // API stays strict.) Returns [step, nns, notice or null].
  function pageParameters(parameters) {
    const ignored = [];
    let step = DEFAULT_STEP;
    const givenStep = parameters.get("step");
    if (givenStep !== null && givenStep !== "" && givenStep !== "all") {
      if (/^[0-9]+$/.test(givenStep) && steps.includes(Number(givenStep))) step = Number(givenStep);
      else ignored.push("step=" + givenStep + " (this collection has periods of " +
                        steps.map((size) => size === 1 ? "1 year" : size + " years").join(" and ") + ")");
    }
    let nns = DEFAULT_NNS;
    const givenNns = parameters.get("nns");
    if (givenNns !== null && givenNns !== "") {
      const n = Number(givenNns);
      if (/^[0-9]+$/.test(givenNns) && n >= 1 && n <= collection.max_nns) nns = n;
      else ignored.push("nns=" + givenNns + " (a number of images from 1 to " + collection.max_nns + ")");
    }
    const notice = ignored.length ? "This link's " + ignored.join(" and ") + (ignored.length > 1 ? " were" : " was") +
      " not used: showing " + periodName(step) + "s and " + nns + " images per list instead." : null;
    return [step, nns, notice];
  }

  function fromLocation(how) {
    const parameters = new URLSearchParams(window.location.search);
    const urn = parameters.get("urn");
    const [step, nns, notice] = pageParameters(parameters);
    if (urn) {
      search({ urn: urn, step: step, nns: nns, filters: parameters.getAll("filter").filter((f) => f.includes(":")) },
             how, notice);
    } else {
      current = { urn: null, step: DEFAULT_STEP, nns: DEFAULT_NNS, filters: [] };
      forgetUpload();
      hideMessage();
      $("urn").value = "";
      document.title = "Siamese — visual similarity search";
      showStart();
    }
  }

  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const urn = $("urn").value.trim();
    if (urn) search({ ...current, urn: urn }, "push");
  });

  $("nns").addEventListener("change", () => {
    rerun({ ...current, nns: Number($("nns").value) });
  });

  // Query by upload: the file picker, and the drop zone around it.
  function startUpload(files) {
    const file = files && files[0];
    if (!file) return;
    searchUpload(file, { ...current, urn: null });
  }

  $("upload-file").addEventListener("change", (event) => {
    startUpload(event.target.files);
    event.target.value = "";  // choosing the same file again searches again
  });

  const dropZone = $("drop-zone");
  dropZone.addEventListener("dragover", (event) => {
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    dropZone.classList.add("dragging");
  });
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("dragging");
    startUpload(event.dataTransfer.files);
  });

  $("random").addEventListener("click", async () => {
    try {
      const answer = await getJson("api/random", { n: "1" });
      if (answer.images.length) search({ ...current, urn: answer.images[0].urn }, "push");
      else showMessage("The collection is empty.");
    } catch (error) {
      showMessage(error.message);
    }
  });

  window.addEventListener("popstate", () => fromLocation("none"));
  fromLocation("replace");
  loadFacets();
  drawBasket();
  window.addEventListener("storage", (event) => { if (event.key === BASKET_KEY) drawBasket(); });  // other tabs
})();
