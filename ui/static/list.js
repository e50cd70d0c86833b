// `/`: the trace list. Filters live in the page's URL, so a filtered view can be shared or reloaded.
"use strict";
(() => {
  const { el, clear, api, href, num, when, yesno } = K;
  K.nav("/");
  const main = clear(document.getElementById("main"));
  const FIELDS = ["q", "domain", "status", "verified", "verified_by", "reward_min", "reward_max", "tag", "worker_model", "since", "until"];
  const state = Object.fromEntries(new URLSearchParams(location.search));
  delete state.token;
  state.sort = state.sort || "started_at"; state.order = state.order || "desc";
  state.offset = Number(state.offset || 0); state.limit = Number(state.limit || 50);

  const form = el("form", { class: "filters", id: "filters" });
  const counts = el("div", { class: "counts", id: "counts" });
  const live = el("span", { class: "live", id: "live" });
  const errors = el("div");
  const table = el("div", { id: "table" });
  const pager = el("div", { class: "pager" });
  K.add(main, el("h1", {}, "Traces"), form, errors, el("div", { class: "toolbar" }, counts, live), table, pager);

  function input(name, label, attrs) {
    return el("label", {}, label, el("input", Object.assign({ name, value: state[name] || "" }, attrs || {})));
  }
  function choice(name, label, options) {
    const s = el("select", { name }, el("option", { value: "" }, "any"),
      options.map(o => el("option", { value: o.value, selected: state[name] === String(o.value) }, o.label || o.value)));
    return el("label", {}, label, s);
  }

  async function buildForm() {
    let f = { domain: [], status: [], worker_model: [], tag: [], has_verified_by: false };
    try { f = await api("/api/facets"); } catch (e) { K.showError(errors, e); }
    const opts = list => list.map(x => ({ value: x.value, label: x.value + " (" + x.count + ")" }));
    K.add(form, 
      input("q", "text in query or answer", { type: "search", placeholder: "search…", size: 22 }),
      choice("domain", "domain", opts(f.domain)),
      choice("status", "status", opts(f.status)),
      choice("verified", "verified", [{ value: "true", label: "yes" }, { value: "false", label: "no" }]),
      f.has_verified_by ? choice("verified_by", "verified by", opts(f.verified_by || [])) : null,
      input("reward_min", "reward ≥", { type: "number", min: 0, max: 1, step: 0.05, style: "width:80px" }),
      input("reward_max", "reward ≤", { type: "number", min: 0, max: 1, step: 0.05, style: "width:80px" }),
      choice("tag", "tag", opts(f.tag)),
      choice("worker_model", "worker model", opts(f.worker_model)),
      input("since", "started from", { type: "datetime-local" }),
      input("until", "started before", { type: "datetime-local" }),
      el("button", { type: "submit", id: "apply" }, "Filter"),
      el("button", { type: "button", class: "plain", onclick: () => { for (const n of FIELDS) delete state[n]; location.href = href("/"); } }, "Clear"));
    form.addEventListener("submit", ev => {
      ev.preventDefault();
      const data = new FormData(form);
      for (const n of FIELDS) { const v = data.get(n); if (v) state[n] = v; else delete state[n]; }
      state.offset = 0;
      load();
    });
  }

  function params() {
    const p = {};
    for (const [k, v] of Object.entries(state)) if (v !== "" && v !== undefined) p[k] = v;
    for (const k of ["since", "until"]) if (p[k] && p[k].length === 16) p[k] += ":00Z";
    return p;
  }

  const COLS = [
    ["started_at", "started"], [null, "domain"], [null, "query"], [null, "answer"], ["status", "status"],
    [null, "verified"], ["reward", "reward"], ["feedback_count", "feedback"], ["llm_calls", "LLM calls"], ["duration_ms", "s"],
  ];

  function render(data) {
    const ver = data.has_verified_by;
    const head = el("tr", {}, COLS.map(([key, label]) => el("th", {
      class: key ? "sortable" + (state.sort === key ? " sorted" : "") : null,
      onclick: key ? () => { state.order = state.sort === key && state.order === "desc" ? "asc" : "desc"; state.sort = key; state.offset = 0; load(); } : null,
    }, label + (state.sort === key ? (state.order === "desc" ? " ↓" : " ↑") : ""))), ver ? el("th", {}, "verified by") : null, el("th", {}, "model"));
    const body = data.traces.map(t => el("tr", { class: "trace-row", dataset: { traceId: t.trace_id } },
      el("td", {}, el("a", { href: href("/traces/" + encodeURIComponent(t.trace_id)), class: "trace-link" }, when(t.started_at))),
      el("td", {}, t.domain || "–"),
      el("td", { class: "text" }, t.query || ""),
      el("td", { class: "text" }, t.final_answer === null ? "–" : t.final_answer),
      el("td", { class: t.status === "ok" ? "ok" : "bad" }, t.status || "running"),
      el("td", { class: t.verified ? "ok" : "bad" }, yesno(t.verified)),
      el("td", { class: "num", title: t.feedback_reward !== null ? "corrected from " + num(t.completed_reward) : null }, num(t.reward) + (t.feedback_reward !== null ? " *" : "")),
      el("td", {}, t.feedback_count ? t.feedback_count + (t.feedback_label ? " · " + t.feedback_label : "") : ""),
      el("td", { class: "num" }, t.llm_calls === null ? "–" : t.llm_calls),
      el("td", { class: "num" }, t.duration_ms === null ? "–" : num(t.duration_ms / 1000, 1)),
      ver ? el("td", {}, t.verified_by || "–") : null,
      el("td", { class: "text" }, t.worker_model || "")));
    K.put(table, el("table", { id: "traces" }, el("thead", {}, head), el("tbody", {}, body)));
    const last = Math.min(data.offset + data.traces.length, data.matched);
    counts.textContent = `${data.matched.toLocaleString()} of ${data.total.toLocaleString()} traces match` +
      (data.matched ? ` · showing ${data.offset + (data.traces.length ? 1 : 0)}–${last}` : "");
    K.put(pager, 
      el("button", { class: "plain", disabled: data.offset === 0, onclick: () => { state.offset = Math.max(0, data.offset - data.limit); load(); } }, "← previous"),
      el("button", { class: "plain", disabled: last >= data.matched, onclick: () => { state.offset = data.offset + data.limit; load(); } }, "next →"));
  }

  let lastTotal = null;
  async function load(quiet) {
    const p = params();
    if (!quiet) history.replaceState(null, "", href("/", p));
    try {
      const data = await api("/api/traces", p);
      clear(errors);
      if (!quiet || data.total !== lastTotal) render(data);
      if (lastTotal !== null && data.total > lastTotal) {
        live.textContent = `live · ${data.total - lastTotal} new at ${new Date().toLocaleTimeString()}`;
        live.classList.add("fresh");
      } else if (!live.textContent) live.textContent = "live · checking every " + K.settings.poll_s + " s";
      lastTotal = data.total;
    } catch (e) { K.showError(errors, e); }
  }

  // Live updates: re-ask every poll_s seconds, but never spend more than a tenth of the time
  // querying (on a large store one list query takes seconds; a poll must not keep a core busy).
  async function poll() {
    const t0 = performance.now();
    if (!document.hidden) await load(true);
    const took = performance.now() - t0;
    setTimeout(poll, Math.max(1000 * (K.settings.poll_s || 5), 10 * took));
  }
  buildForm().then(() => load()).then(() => setTimeout(poll, 1000 * (K.settings.poll_s || 5)));
})();
