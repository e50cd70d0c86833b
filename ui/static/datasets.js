// `/datasets`: what `kaelum-train` would select, by the trainer's own filters and rendering.
"use strict";
(() => {
  const { el, clear, api, href, num } = K;
  K.nav("/datasets");
  const main = clear(document.getElementById("main"));
  const state = Object.fromEntries(new URLSearchParams(location.search)); delete state.token;
  if (!("min_reward" in state)) state.min_reward = "0.7";
  const DOMAINS = ["math", "code", "logic", "factual", "creative", "analysis"];
  const form = el("form", { class: "filters", id: "dataset-form" },
    el("label", {}, "--method", el("select", { name: "method" }, ["sft", "dpo"].map(m => el("option", { value: m, selected: state.method === m }, m)))),
    el("label", {}, "--domain", el("select", { name: "domain" }, el("option", { value: "" }, "all"), DOMAINS.map(d => el("option", { value: d, selected: state.domain === d }, d)))),
    el("label", {}, "--min-reward", el("input", { name: "min_reward", type: "number", min: 0, max: 1, step: 0.05, value: state.min_reward, style: "width:80px" })),
    el("label", {}, "--where (SQL over the view's columns)", el("input", { name: "where", id: "where", value: state.where || "", size: 40, placeholder: "reward > 0.9 and n_steps <= 6" })),
    el("label", {}, "examples shown", el("input", { name: "examples", type: "number", min: 0, max: 20, value: state.examples || 3, style: "width:70px" })),
    el("button", { type: "submit", id: "select" }, "Select"));
  const out = el("div", { id: "selection" });
  K.add(main, el("h1", {}, "Datasets"), el("p", { class: "muted" }, "The trainer's own selection and validator: the counts are what kaelum-train --dry-run prints."), form, out);
  form.addEventListener("submit", ev => { ev.preventDefault(); const f = new FormData(form); for (const k of ["method", "domain", "min_reward", "where", "examples"]) state[k] = f.get(k) || ""; load(); });

  function example(e, i, d) {
    const r = e.rendered;
    const parts = [el("h3", {}, `Example ${i + 1} · ${e.domain} · `, el("a", { href: href("/traces/" + encodeURIComponent(e.trace_id)) }, e.trace_id))];
    if (r) {
      parts.push(el("p", { class: "muted" }, "rendered with the chat template of " + d.rendered_with + " (the text the trainer tokenizes)"));
      for (const [k, v] of Object.entries(r)) parts.push(el("div", { class: "muted" }, k), el("pre", { class: "block rendered" }, v));
    } else {
      for (const m of e.messages) parts.push(el("div", { class: "muted" }, m.role), el("pre", { class: "block" }, m.content));
      if (d.method === "dpo") {
        parts.push(el("div", { class: "muted" }, "assistant prefix (partial path)"), el("pre", { class: "block" }, e.prefix),
          el("div", { class: "muted ok" }, "chosen (value " + num(e.chosen_value) + ")"), el("pre", { class: "block" }, e.chosen),
          el("div", { class: "muted bad" }, "rejected (value " + num(e.rejected_value) + ")"), el("pre", { class: "block" }, e.rejected));
      } else parts.push(el("div", { class: "muted" }, "assistant (the learned completion, reward " + num(e.reward, 3) + ")"), el("pre", { class: "block completion" }, e.completion));
    }
    return el("div", { class: "panel example" }, parts);
  }

  async function load() {
    history.replaceState(null, "", href("/datasets", state));
    K.put(out, el("p", { class: "muted" }, "Selecting…"));
    try {
      const d = await api("/api/datasets", state);
      const copy = el("button", { class: "plain", type: "button", onclick: async ev => { try { await navigator.clipboard.writeText(d.command); ev.target.textContent = "Copied"; } catch (e) { ev.target.textContent = "Select the text to copy"; } } }, "Copy");
      K.put(out, 
        el("h2", {}, "Command"), el("div", { class: "command" }, el("code", { id: "command" }, d.command), copy),
        el("h2", {}, "Counts after each filter"),
        el("table", { class: "stages", id: "stages" }, el("tr", {}, el("th", {}, "examples left"), el("th", {}, "after")),
          d.stages.map(s => el("tr", {}, el("td", { class: "num" }, s.count.toLocaleString()), el("td", {}, s.filter)))),
        d.problem ? el("div", { class: "error", id: "problem" }, d.problem) : null,
        d.warnings.map(w => el("p", { class: "muted warning" }, "⚠ " + w)),
        el("h2", {}, "Per domain"), el("p", {}, Object.entries(d.per_domain).map(([k, v]) => `${k}: ${v}`).join(" · ") || "none"),
        el("h2", {}, `Examples (${d.examples.length} of ${d.selected})`),
        d.rendered_with ? null : el("p", { class: "muted" }, "Start kaelum ui with --model to see them through the model's chat template; shown here: the messages and the completion the trainer renders."),
        d.examples.map((e, i) => example(e, i, d)));
    } catch (e) { K.showError(out, e); }
  }
  load();
})();
