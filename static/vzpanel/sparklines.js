// Small usage graphs in lists (the dashboard's VEs): the last hour of CPU and memory of each VE, from the
// metrics app's JSON endpoint in data-sparkline (vzpanel/metrics/views.py), drawn as one inline SVG each.
// A few requests at a time; an element whose request fails stays empty (the numbers beside it still show).
(function () {
  "use strict";
  var W = 96, H = 22, AT_ONCE = 4;

  function path(values, max) {
    var pts = [], n = values.length;
    values.forEach(function (v, i) {
      if (v == null) return;
      var x = n > 1 ? (i * (W - 2)) / (n - 1) + 1 : W / 2;
      var y = H - 1 - (max > 0 ? (v / max) * (H - 2) : 0);
      pts.push(x.toFixed(1) + "," + y.toFixed(1));
    });
    return pts.join(" ");
  }

  function last(values) {
    for (var i = values.length - 1; i >= 0; i--) if (values[i] != null) return values[i];
    return null;
  }

  function draw(el, data) {
    var cpu = (data.metrics && data.metrics.cpu) || [], mem = (data.metrics && data.metrics.mem) || [];
    var nums = function (a) { return a.filter(function (v) { return v != null; }); };
    if (!nums(cpu).length && !nums(mem).length) return;
    var cpuMax = Math.max(100, Math.max.apply(null, nums(cpu).concat([0])));
    var memMax = Math.max.apply(null, nums(mem).concat([0]));
    var now = last(cpu), memNow = last(mem);
    var label = "Last hour: CPU " + (now == null ? "unknown" : now.toFixed(0) + " % now") +
      ", memory " + (memNow == null ? "unknown" : (memNow / 1048576).toFixed(0) + " MiB now");
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("role", "img"); svg.setAttribute("aria-label", label);
    var title = document.createElementNS(ns, "title"); title.textContent = label; svg.appendChild(title);
    [[mem, memMax, "var(--bs-success)"], [cpu, cpuMax, "var(--bs-primary)"]].forEach(function (line) {
      var p = document.createElementNS(ns, "polyline");
      p.setAttribute("points", path(line[0], line[1]));
      p.setAttribute("fill", "none"); p.setAttribute("stroke", line[2]); p.setAttribute("stroke-width", "1.5");
      svg.appendChild(p);
    });
    el.replaceChildren(svg);
  }

  function start() {
    var queue = Array.prototype.slice.call(document.querySelectorAll("[data-sparkline]"));
    function next() {
      var el = queue.shift();
      if (!el) return;
      fetch(el.getAttribute("data-sparkline") + "?range=hour", {credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data) draw(el, data); })
        .catch(function () {})
        .then(next);
    }
    for (var i = 0; i < AT_ONCE; i++) next();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
