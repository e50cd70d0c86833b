// `/quarantine`: lines the ingester refused, with file, offset, reason and the raw text.
"use strict";
(() => {
  const { el, clear, api, href, when } = K;
  K.nav("/quarantine");
  const main = clear(document.getElementById("main"));
  const state = Object.fromEntries(new URLSearchParams(location.search)); delete state.token;
  state.offset = Number(state.offset || 0);
  const form = el("form", { class: "filters" }, el("label", {}, "reason contains", el("input", { name: "reason", value: state.reason || "", type: "search" })), el("button", { type: "submit" }, "Filter"));
  const out = el("div", { id: "lines" });
  K.add(main, el("h1", {}, "Quarantine"), el("p", { class: "muted" }, "Lines the ingester could not accept. They are kept byte for byte; fix the writer, the store never edits them."), form, out);
  form.addEventListener("submit", ev => { ev.preventDefault(); state.reason = new FormData(form).get("reason"); state.offset = 0; load(); });
  async function load() {
    history.replaceState(null, "", href("/quarantine", state));
    try {
      const d = await api("/api/quarantine", state);
      K.put(out, el("p", { class: "counts" }, `${d.matched} of ${d.total} quarantined lines`),
        d.lines.length ? el("table", { id: "quarantine" },
          el("tr", {}, ["quarantined", "file", "offset", "reason", "raw text"].map(h => el("th", {}, h))),
          d.lines.map(q => el("tr", {}, el("td", {}, when(q.quarantined_at)), el("td", { class: "text" }, q.source_path), el("td", { class: "num" }, q.offset),
            el("td", { class: "text" }, q.reason), el("td", { class: "text" }, el("pre", { class: "block" }, q.raw_text + (q.raw_length > q.raw_text.length ? ` … (${q.raw_length} characters)` : ""))))))
          : el("p", { class: "muted" }, "Nothing is quarantined."),
        el("div", { class: "pager" },
          el("button", { class: "plain", disabled: d.offset === 0, onclick: () => { state.offset = Math.max(0, d.offset - d.limit); load(); } }, "← previous"),
          el("button", { class: "plain", disabled: d.offset + d.lines.length >= d.matched, onclick: () => { state.offset = d.offset + d.limit; load(); } }, "next →")));
    } catch (e) { K.showError(out, e); }
  }
  load();
})();
