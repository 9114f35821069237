// Usage graphs (templates/metrics/_graphs.html): fetch the JSON endpoint, draw it with uPlot, poll for more.
// Polling, not the live websocket: the endpoint already checks who may see what, a poll survives network
// losses and restarts by itself, and one request per interval per open page is cheap. Colours come from
// Bootstrap's CSS variables, read again whenever data-bs-theme changes, so the graphs follow dark mode.
(function () {
  "use strict";

  var CHARTS = [
    {key: "cpu", title: "CPU", unit: "pct", lines: [["cpu", "average", "--bs-primary"], ["cpu_max", "peak", "--bs-info"]]},
    {key: "mem", title: "Memory", unit: "bytes", lines: [["mem", "average", "--bs-success"], ["mem_max", "peak", "--bs-teal"]]},
    {key: "disk", title: "Disk", unit: "bytes", lines: [["disk", "used", "--bs-warning"]]},
    {key: "net", title: "Network", unit: "rate", lines: [["net_in", "in", "--bs-primary"], ["net_out", "out", "--bs-danger"]]},
    {key: "nproc", title: "Processes", unit: "count", lines: [["nproc", "processes", "--bs-secondary-color"]]}
  ];
  var TITLES = {cpu: "CPU", mem: "Memory", disk: "Disk", net_in: "Network in", net_out: "Network out", nproc: "Processes"};
  var UNITS = {cpu: "pct", mem: "bytes", disk: "bytes", net_in: "rate", net_out: "rate", nproc: "count"};
  var PALETTE = ["--bs-primary", "--bs-success", "--bs-danger", "--bs-warning", "--bs-info", "--bs-indigo",
                 "--bs-pink", "--bs-teal", "--bs-orange", "--bs-purple", "--bs-cyan", "--bs-secondary-color"];

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
  }

  function human(v, unit) {
    if (v == null) return "–";
    if (unit === "pct") return v.toFixed(v < 10 ? 1 : 0) + " %";
    if (unit === "count") return String(Math.round(v));
    var units = unit === "rate" ? ["B/s", "KB/s", "MB/s", "GB/s"] : ["B", "KB", "MB", "GB", "TB"];
    var i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return v.toFixed(v < 10 && i ? 1 : 0) + " " + units[i];
  }

  function Graphs(root) {
    this.root = root;
    this.url = root.getAttribute("data-metrics-url");
    this.grid = root.querySelector("[data-graphs-grid]");
    this.note = root.querySelector("[data-graphs-note]");
    this.view = root.querySelector("[data-graphs-view]");
    this.range = "hour";
    this.plots = [];
    this.data = null;
    this.timer = null;
    var self = this;
    root.querySelectorAll("[data-range]").forEach(function (button) {
      button.addEventListener("click", function () {
        root.querySelectorAll("[data-range]").forEach(function (b) {
          b.classList.toggle("active", b === button);
          b.setAttribute("aria-pressed", b === button ? "true" : "false");
        });
        self.range = button.getAttribute("data-range");
        self.load(true);
      });
    });
    if (this.view) this.view.addEventListener("change", function () { self.load(true); });
    new MutationObserver(function () { self.draw(true); })
      .observe(document.documentElement, {attributes: true, attributeFilter: ["data-bs-theme"]});
    var resizing = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizing);
      resizing = setTimeout(function () { self.resize(); }, 150);
    });
    document.addEventListener("visibilitychange", function () { if (!document.hidden) self.load(false); });
    this.load(true);
  }

  Graphs.prototype.query = function () {
    var q = "?range=" + encodeURIComponent(this.range);
    if (this.view && this.view.value) q += "&by=ve&metric=" + encodeURIComponent(this.view.value);
    return this.url + q;
  };

  Graphs.prototype.load = function (fresh) {
    var self = this;
    clearTimeout(this.timer);
    var asked = this.query();
    fetch(asked, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) {
        if (!r.ok) throw new Error("the server answered " + r.status);
        return r.json();
      })
      .then(function (data) {
        if (asked !== self.query()) return;  // the range changed meanwhile: that answer is on its way
        self.data = data;
        self.draw(fresh);
        self.schedule(data);
      })
      .catch(function (err) {
        self.note.textContent = "Could not load the graphs (" + err.message + "); trying again.";
        self.schedule(null);
      });
  };

  Graphs.prototype.schedule = function (data) {
    var self = this;
    var every = data ? Math.min(Math.max(data.interval, data.step), 600) : 10;
    this.timer = setTimeout(function () { if (!document.hidden) self.load(false); }, every * 1000);
  };

  Graphs.prototype.specs = function () {
    var d = this.data;
    if (d.lines) {
      var metric = d.metric.replace("_max", "");
      return [{key: d.metric, title: (TITLES[metric] || d.metric) + " per student", unit: UNITS[metric] || "count",
               wide: true, lines: d.lines.map(function (line, i) {
                 return [line.values, line.label + " (" + line.ctid + ")", PALETTE[i % PALETTE.length]];
               })}];
    }
    return CHARTS.map(function (c) {
      return {key: c.key, title: c.title, unit: c.unit, lines: c.lines.map(function (l) {
        return [d.metrics[l[0]], l[1], l[2]];
      })};
    });
  };

  Graphs.prototype.draw = function (fresh) {
    if (!this.data || !window.uPlot) return;
    var d = this.data;
    var specs = this.specs();
    var sampled = specs.some(function (s) {
      return s.lines.some(function (l) { return l[0].some(function (v) { return v != null; }); });
    });
    this.note.textContent = sampled
      ? "One point per " + (d.step < 60 ? d.step + " s" : d.step < 3600 ? d.step / 60 + " min" : d.step / 3600 + " h") +
        "; updated every " + Math.min(Math.max(d.interval, d.step), 600) + " s."
      : "Nothing sampled in this range yet: samples are taken every " + d.interval + " s while a VE runs.";
    if (!fresh && this.plots.length === specs.length && this.plots.every(function (p, i) {
      return p.spec.key === specs[i].key && p.plot.series.length === specs[i].lines.length + 1;
    })) {
      this.plots.forEach(function (p, i) {
        p.plot.setData([d.t].concat(specs[i].lines.map(function (l) { return l[0]; })));
      });
      return;
    }
    this.plots.forEach(function (p) { p.plot.destroy(); });
    this.plots = [];
    this.grid.textContent = "";
    var self = this;
    specs.forEach(function (spec) {
      var col = document.createElement("div");
      col.className = spec.wide ? "col-12" : "col-lg-6";
      var box = document.createElement("figure");
      box.className = "mb-0";
      box.setAttribute("data-graph", spec.key);
      var caption = document.createElement("figcaption");
      caption.className = "small fw-semibold mb-1";
      caption.textContent = spec.title;
      box.appendChild(caption);
      col.appendChild(box);
      self.grid.appendChild(col);
      var plot = new uPlot(self.options(spec, box), [d.t].concat(spec.lines.map(function (l) { return l[0]; })), box);
      self.plots.push({spec: spec, plot: plot, box: box});
    });
  };

  Graphs.prototype.options = function (spec, box) {
    var text = css("--bs-body-color"), muted = css("--bs-secondary-color"), grid = css("--bs-border-color");
    var axis = {stroke: muted, grid: {stroke: grid, width: 1}, ticks: {stroke: grid, width: 1},
                font: "11px system-ui, sans-serif"};
    return {
      width: Math.max(box.clientWidth, 200),
      height: 170,
      cursor: {drag: {x: false, y: false}},
      legend: {live: true},
      scales: {y: {range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; }}},
      axes: [axis, Object.assign({}, axis, {size: 70, values: function (u, ticks) {
        return ticks.map(function (v) { return human(v, spec.unit); });
      }})],
      series: [{value: "{YYYY}-{MM}-{DD} {HH}:{mm}:{ss}"}].concat(spec.lines.map(function (l) {
        var colour = css(l[2]);
        return {label: l[1], stroke: colour, width: 1.5, spanGaps: false, points: {show: false},
                value: function (u, v) { return human(v, spec.unit); }};
      })),
      hooks: {ready: [function (u) { u.root.style.color = text; }]}
    };
  };

  Graphs.prototype.resize = function () {
    this.plots.forEach(function (p) { p.plot.setSize({width: Math.max(p.box.clientWidth, 200), height: 170}); });
  };

  function start() {
    document.querySelectorAll("[data-metrics-url]").forEach(function (root) {
      if (!root.vzGraphs) root.vzGraphs = new Graphs(root);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
