// What both pages' scripts (app.js, map.js) build their DOM with; loaded before them (defer keeps the
// order). Plain JavaScript, no libraries.
"use strict";

window.siameseDom = (function () {
  const SVG = "http://www.w3.org/2000/svg";

  function element(tag, properties, children) {
    const node = document.createElement(tag);
    Object.assign(node, properties || {});
    for (const child of children || []) node.append(child);
    return node;
  }

  function svg(tag, attributes, children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
    for (const child of children || []) node.append(child);
    return node;
  }

  return { element, svg };
})();
