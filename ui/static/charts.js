// `/charts`: verified rate and mean reward per domain over time, and the reward histogram.
"use strict";
(() => {
  const { el, clear, api, href, num } = K;
  K.nav("/charts");
  const main = clear(document.getElementById("main"));
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = { math: "#2f6fd0", code: "#1f8a4c", logic: "#a86200", factual: "#7a3fb8", creative: "#c23b32", analysis: "#0f8b8d" };
  const state = Object.fromEntries(new URLSearchParams(location.search)); delete state.token;

  function svg(tag, attrs, ...kids) {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
    for (const c of kids) n.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    return n;
  }

  const W = 640, H = 240, L = 44, R = 12, T = 12, B = 36;
  function lineChart(id, title, series, key) {
    const buckets = [...new Set(series.map(s => s.bucket))].sort();
    const x = i => L + (buckets.length > 1 ? i * (W - L - R) / (buckets.length - 1) : (W - L - R) / 2);
    const y = v => T + (1 - v) * (H - T - B);
    const g = svg("svg", { id, width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" }, svg("title", {}, title));
    for (const v of [0, 0.25, 0.5, 0.75, 1]) {
      g.appendChild(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e3e7eb" }));
      g.appendChild(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#68727d" }, v.toFixed(2)));
    }
    const step = Math.max(1, Math.ceil(buckets.length / 6));
    buckets.forEach((b, i) => { if (i % step === 0) g.appendChild(svg("text", { x: x(i), y: H - 12, "text-anchor": "middle", "font-size": 11, fill: "#68727d" }, b.slice(0, 16).replace("T", " "))); });
    const domains = [...new Set(series.map(s => s.domain))].sort();
    for (const d of domains) {
      const pts = series.filter(s => s.domain === d && s[key] !== null).map(s => [x(buckets.indexOf(s.bucket)), y(s[key])]);
      if (pts.length > 1) g.appendChild(svg("polyline", { points: pts.map(p => p.join(",")).join(" "), fill: "none", stroke: COLORS[d] || "#333", "stroke-width": 2 }));
      for (const [px, py] of pts) g.appendChild(svg("circle", { cx: px, cy: py, r: 3, fill: COLORS[d] || "#333" }));
    }
    return el("div", { class: "panel" }, el("h2", {}, title), g,
      el("div", { class: "legend" }, domains.map(d => el("span", {}, el("i", { style: "background:" + (COLORS[d] || "#333") }), d))));
  }

  function histogram(bins) {
    const max = Math.max(1, ...bins.map(b => b.count));
    const bw = (W - L - R) / bins.length;
    const g = svg("svg", { id: "reward-histogram", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" }, svg("title", {}, "reward histogram"));
    bins.forEach((b, i) => {
      const h = (b.count / max) * (H - T - B);
      g.appendChild(svg("rect", { x: L + i * bw + 1, y: H - B - h, width: bw - 2, height: h, fill: "#2f6fd0" }, svg("title", {}, `${b.lo.toFixed(2)}–${b.hi.toFixed(2)}: ${b.count}`)));
      if (i % 4 === 0) g.appendChild(svg("text", { x: L + i * bw, y: H - 12, "font-size": 11, fill: "#68727d" }, b.lo.toFixed(2)));
    });
    g.appendChild(svg("text", { x: L - 6, y: T + 10, "text-anchor": "end", "font-size": 11, fill: "#68727d" }, max));
    return el("div", { class: "panel" }, el("h2", {}, "Reward histogram"), g, el("p", { class: "muted" }, bins.reduce((a, b) => a + b.count, 0).toLocaleString() + " traces with a reward"));
  }

  const form = el("form", { class: "filters", id: "chart-filters" },
    el("label", {}, "domain", el("select", { name: "domain" }, el("option", { value: "" }, "all"),
      Object.keys(COLORS).map(d => el("option", { value: d, selected: state.domain === d }, d)))),
    el("label", {}, "bucket", el("select", { name: "bucket" }, el("option", { value: "" }, "auto"),
      ["hour", "day", "week", "month"].map(b => el("option", { value: b, selected: state.bucket === b }, b)))),
    el("button", { type: "submit" }, "Show"));
  const out = el("div", { class: "charts" });
  K.add(main, el("h1", {}, "Charts"), form, out);
  form.addEventListener("submit", ev => { ev.preventDefault(); const f = new FormData(form); for (const k of ["domain", "bucket"]) { if (f.get(k)) state[k] = f.get(k); else delete state[k]; } load(); });

  async function load() {
    history.replaceState(null, "", href("/charts", state));
    try {
      const d = await api("/api/charts", state);
      K.put(out, el("p", { class: "muted" }, "per " + d.bucket),
        lineChart("verified-rate", "Verified rate by domain", d.series, "verified_rate"),
        lineChart("mean-reward", "Mean reward by domain", d.series, "mean_reward"), histogram(d.histogram));
    } catch (e) { K.showError(out, e); }
  }
  load();
})();
