/*
 * The status page's charts: the series of /status.json as SVG polylines, redrawn every
 * sample; the numbers (rendered by the server) are taken again from /status.
 */
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var COLORS = ["#2f6fde", "#1f9d55", "#e3a008", "#d9480f", "#8e44ad", "#c0392b", "#16a085"];
  var W = 400, H = 130, LEFT = 44, BOTTOM = 16;

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  // lines: [{name, values}] over the same samples; max: the y axis's top (or the data's).
  function draw(panel, lines, opts) {
    var svg = panel.querySelector("svg");
    var legend = panel.querySelector(".legend");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.textContent = "";
    legend.textContent = "";
    var count = Math.max.apply(null, lines.map(function (l) { return l.values.length; }).concat([0]));
    var top = opts.max || Math.max.apply(null, lines.map(function (l) {
      return Math.max.apply(null, l.values.filter(function (v) { return v !== null; }).concat([0]));
    }));
    top = top > 0 ? top : 1;
    el("line", { x1: LEFT, y1: H - BOTTOM, x2: W, y2: H - BOTTOM, stroke: "#c9ced8" }, svg);
    el("text", { x: LEFT - 4, y: 10, "text-anchor": "end", "font-size": 10, fill: "#5b6376" }, svg)
      .textContent = format(top, opts.unit);
    el("text", { x: LEFT - 4, y: H - BOTTOM, "text-anchor": "end", "font-size": 10, fill: "#5b6376" }, svg)
      .textContent = "0";
    el("text", { x: W, y: H - 2, "text-anchor": "end", "font-size": 10, fill: "#5b6376" }, svg)
      .textContent = "now";
    el("text", { x: LEFT, y: H - 2, "font-size": 10, fill: "#5b6376" }, svg)
      .textContent = "-" + Math.round(count * opts.sampleS) + " s";
    lines.forEach(function (line, i) {
      var color = COLORS[i % COLORS.length];
      var points = [];
      line.values.forEach(function (v, j) {
        if (v === null) return;
        var x = LEFT + (count > 1 ? j / (count - 1) : 1) * (W - LEFT);
        var y = (H - BOTTOM) - Math.min(v / top, 1) * (H - BOTTOM - 4);
        points.push(x.toFixed(1) + "," + y.toFixed(1));
      });
      if (points.length) {
        el("polyline", { points: points.join(" "), fill: "none", stroke: color, "stroke-width": 1.6,
          "data-series": line.name }, svg);
      }
      var present = line.values.filter(function (v) { return v !== null; });
      var last = present.length ? present[present.length - 1] : null;  // the latest there is
      var item = document.createElement("span");
      var swatch = document.createElement("i");
      swatch.style.background = color;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(line.name + " " + format(last, opts.unit)));
      legend.appendChild(item);
    });
  }

  function format(v, unit) {
    if (v === null || v === undefined) return "–";
    if (unit === "%") return (v).toFixed(0) + "%";
    return (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) + (unit || "");
  }

  function pick(series, key, scale) {
    return series.map(function (s) {
      var v = s[key];
      return v === null || v === undefined ? null : v * (scale || 1);
    });
  }

  function panel(name) { return document.querySelector('[data-panel="' + name + '"]'); }

  function render(status) {
    var s = status.series;
    var opts = { sampleS: status.sample_s };
    var answers = ["hit", "built", "carried", "fallback", "shed", "limited", "error"].map(function (name) {
      return { name: name, values: s.map(function (x) { return x.answers[name]; }) };
    });
    draw(panel("answers"), answers, opts);
    draw(panel("share"), [{ name: "tailored", values: pick(s, "tailored_share", 100) }],
      { sampleS: status.sample_s, max: 100, unit: "%" });
    draw(panel("ttfb"), [{ name: "p50", values: pick(s, "ttfb_p50_ms") },
      { name: "p99", values: pick(s, "ttfb_p99_ms") }], opts);
    draw(panel("builds"), [{ name: "queue", values: pick(s, "queue") },
      { name: "busy of " + status.pool_size, values: pick(s, "busy") }], opts);
    draw(panel("esbuild"), [{ name: "runs", values: pick(s, "esbuild_runs") }], opts);
    draw(panel("lag"), [{ name: "smoothed", values: pick(s, "lag_ms") }], opts);
    draw(panel("tiers"), [
      { name: "memory", values: pick(s, "memory_bytes", 100 / status.bounds.memory_bytes) },
      { name: "disk", values: pick(s, "disk_bytes", 100 / status.bounds.disk_bytes) },
    ], { sampleS: status.sample_s, max: 100, unit: "%" });
    document.getElementById("updated").textContent = "Updated " + new Date().toLocaleTimeString() + ".";
  }

  function refresh() {
    var json = fetch("status.json", { cache: "no-store" }).then(function (r) { return r.json(); });
    var page = fetch("status", { cache: "no-store" }).then(function (r) { return r.text(); });
    return Promise.all([json, page]).then(function (both) {
      render(both[0]);
      var fresh = new DOMParser().parseFromString(both[1], "text/html").getElementById("now");
      if (fresh) document.getElementById("now").innerHTML = fresh.innerHTML;
    }).catch(function (e) {
      document.getElementById("updated").textContent = "Could not refresh: " + e.message;
    });
  }

  refresh().then(function () {
    document.body.dataset.drawn = "yes";
    setInterval(refresh, 3000);
  });
})();
