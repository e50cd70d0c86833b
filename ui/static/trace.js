// `/traces/{id}`: one trace — its LATS tree (lazy, collapsible), timeline, pairs and feedback.
// A node's children are only built when it is first expanded, and at most CHUNK at a time, so a
// 2,000-node tree opens as fast as a small one.
"use strict";
(() => {
  const { el, clear, api, post, href, num, when, yesno } = K;
  K.nav(null);
  const main = clear(document.getElementById("main"));
  const traceId = decodeURIComponent(location.pathname.split("/").pop());
  const CHUNK = 100, TIMELINE_FIRST = 200, THOUGHT_CHARS = 180;
  let data, byId = new Map(), children = new Map(), best = new Set(), marks = new Map(), rows = new Map(), selected = null;

  function short(s, n) { s = s === null || s === undefined ? "" : String(s); return s.length > n ? s.slice(0, n - 1) + "…" : s; }
  function mark(nodeId, text, cls) { if (!marks.has(nodeId)) marks.set(nodeId, []); marks.get(nodeId).push([text, cls]); }

  // --- summary -------------------------------------------------------------------------------
  function card(k, v, cls, id) { return el("div", { class: "card", id }, el("div", { class: "k" }, k), el("div", { class: "v " + (cls || "") }, v)); }
  function summary(t) {
    const cards = [
      card("domain", t.domain || "–"), card("status", t.status || "running", t.status === "ok" ? "ok" : "bad"),
      card("verified", yesno(t.verified), t.verified ? "ok" : "bad"),
      "verified_by" in t ? card("verified by", t.verified_by || "–") : null,
      card("reward", num(t.reward, 3), "", "reward-card"),
      card("completion reward", num(t.completed_reward, 3)),
      card("feedback", t.feedback_count ? `${t.feedback_count} · ${t.feedback_label || "no label"}` : "none", "", "feedback-card"),
      card("worker model", t.worker_model || "–"),
      card("started", when(t.started_at)), card("duration", t.duration_ms === null ? "–" : num(t.duration_ms / 1000, 2) + " s"),
      card("LLM calls", `${data.llm_totals.calls} · ${data.llm_totals.prompt_tokens}+${data.llm_totals.completion_tokens} tok`),
    ];
    return el("div", { class: "cards", id: "summary" }, cards);
  }

  // --- tree ----------------------------------------------------------------------------------
  function badges(n) {
    const out = [];
    if (n.value !== null) out.push(el("span", { class: "stats" }, "v=" + num(n.value)));
    if (n.visits !== null && n.visits !== undefined) out.push(el("span", { class: "stats" }, "n=" + n.visits));
    if (n.passed === true) out.push(el("span", { class: "badge pass", title: n.verifier || "" }, "✓ " + (n.verifier || "verified")));
    if (n.passed === false) out.push(el("span", { class: "badge fail", title: n.verifier || "" }, "✗ " + (n.verifier || "failed")));
    if (n.terminal && n.answer !== null) out.push(el("span", { class: "badge" }, "answer: " + short(n.answer, 60)));
    if (n.reflections.length) out.push(el("span", { class: "badge refl" }, "reflection"));
    for (const [text, cls] of marks.get(n.node_id) || []) out.push(el("span", { class: "badge " + cls }, text));
    return out;
  }

  function nodeRow(n) {
    const kids = children.get(n.node_id) || [];
    const toggle = el("span", { class: "toggle" }, kids.length ? "▸" : "·");
    const row = el("div", { class: "node" + (best.has(n.node_id) ? " best" : ""), dataset: { nodeId: n.node_id }, tabindex: 0 },
      toggle, el("span", { class: "nid" }, n.node_id), el("span", { class: "thought" }, short(n.thought, THOUGHT_CHARS)),
      el("span", { class: "badges" }, badges(n)));
    const li = el("li", {}, row);
    const state = { open: false, list: null, shown: 0, li, toggle, row };
    rows.set(n.node_id, state);
    toggle.addEventListener("click", ev => { ev.stopPropagation(); setOpen(n.node_id, !state.open); });
    row.addEventListener("click", () => select(n.node_id));
    row.addEventListener("dblclick", () => setOpen(n.node_id, !state.open));
    return li;
  }

  function showMore(id) {
    const s = rows.get(id), kids = children.get(id) || [];
    const more = s.list.querySelector(":scope > li.more-li"); if (more) more.remove();
    const next = kids.slice(s.shown, s.shown + CHUNK);
    for (const k of next) s.list.appendChild(nodeRow(byId.get(k)));
    s.shown += next.length;
    if (s.shown < kids.length) {
      s.list.appendChild(el("li", { class: "more-li" }, el("span", { class: "more", onclick: () => showMore(id) }, `show ${Math.min(CHUNK, kids.length - s.shown)} more (${kids.length - s.shown} not shown)`)));
    }
  }

  function setOpen(id, open) {
    const s = rows.get(id); if (!s || !(children.get(id) || []).length) return;
    if (open && !s.list) { s.list = el("ul"); s.li.appendChild(s.list); showMore(id); }
    if (s.list) s.list.hidden = !open;
    s.open = open; s.toggle.textContent = open ? "▾" : "▸";
  }

  function expandPath(path) { for (const id of path) { if (!rows.has(id)) { const p = byId.get(id); if (p && p.parent_id) reveal(p.parent_id, id); } setOpen(id, true); } }
  // Make node `id` (a child of `parent`) rendered even if it is beyond the first chunk.
  function reveal(parent, id) {
    const s = rows.get(parent); if (!s) return;
    setOpen(parent, true);
    while (!rows.has(id) && s.shown < (children.get(parent) || []).length) showMore(parent);
  }
  function pathTo(id) { const out = []; let n = byId.get(id); while (n) { out.unshift(n.node_id); n = n.parent_id ? byId.get(n.parent_id) : null; } return out; }

  function expandAll() {
    const stack = [...roots()];
    while (stack.length) {
      const id = stack.pop();
      const kids = children.get(id) || [];
      if (!kids.length) continue;
      setOpen(id, true);
      const s = rows.get(id);
      while (s.shown < kids.length) showMore(id);
      stack.push(...kids);
    }
  }
  function collapseAll() { for (const [id, s] of rows) if (s.open) setOpen(id, false); }
  function roots() { return data.nodes.filter(n => !n.parent_id || !byId.has(n.parent_id)).map(n => n.node_id); }

  // --- selected node -------------------------------------------------------------------------
  const detail = el("div", { class: "panel", id: "node-detail" }, el("p", { class: "muted" }, "Select a node to see its full text."));
  function select(id) {
    if (selected && rows.get(selected)) rows.get(selected).row.classList.remove("selected");
    selected = id;
    const n = byId.get(id);
    const p = pathTo(id); expandPath(p.slice(0, -1));
    rows.get(id).row.classList.add("selected");
    clear(detail).appendChild(el("div", {},
      el("h2", {}, "Node " + n.node_id + (best.has(id) ? " (best path)" : "")),
      el("div", { class: "muted" }, `depth ${n.depth} · value ${num(n.value)} (${n.evaluations} evaluations) · visits ${n.visits ?? "–"}` +
        (n.llm_model ? ` · ${n.llm_model}: ${n.prompt_tokens}+${n.completion_tokens} tokens, ${num(n.latency_ms, 1)} ms` : "")),
      el("h3", {}, "Thought"), el("pre", { class: "thought-full" }, n.thought || ""),
      n.terminal ? [el("h3", {}, "Answer"), el("pre", { class: "answer-full" }, n.answer === null ? "(none)" : n.answer)] : null,
      n.passed !== null ? el("p", { class: n.passed ? "ok" : "bad" }, (n.passed ? "passed " : "failed ") + (n.verifier || "") + " (score " + num(n.verification_score) + ")") : null,
      n.reflections.length ? [el("h3", {}, "Reflections"), n.reflections.map(r => el("pre", { class: "reflection" }, r))] : null,
      (marks.get(id) || []).length ? el("p", {}, "Preference pairs: " + marks.get(id).map(m => m[0]).join(", ")) : null));
  }

  // --- feedback ------------------------------------------------------------------------------
  const fbHistory = el("div", { id: "feedback-history" });
  function renderFeedback(list) {
    K.put(fbHistory, list.length ? el("table", {}, el("tr", {}, ["time", "by", "reward", "label", "comment"].map(h => el("th", {}, h))),
      list.map(f => el("tr", {}, el("td", {}, when(f.ts)), el("td", {}, f.by || ""), el("td", { class: "num" }, num(f.reward, 3)), el("td", {}, f.label || ""), el("td", { class: "text" }, f.comment || ""))))
      : el("p", { class: "muted" }, "No feedback yet."));
  }
  function feedbackForm() {
    const status = el("div", { id: "feedback-status", class: "muted" });
    const reward = el("input", { name: "reward", id: "fb-reward", type: "number", min: 0, max: 1, step: 0.01, placeholder: "0.0–1.0", style: "width:90px" });
    const label = el("input", { name: "label", id: "fb-label", list: "labels", placeholder: "correct, wrong, …", size: 14 });
    const comment = el("input", { name: "comment", id: "fb-comment", placeholder: "comment (optional)", size: 24 });
    const form = el("form", { class: "filters", id: "feedback-form" },
      el("label", {}, "corrected reward", reward), el("label", {}, "label", label),
      el("datalist", { id: "labels" }, ["correct", "wrong", "harmful", "incomplete"].map(v => el("option", { value: v }))),
      el("label", {}, "comment", comment), el("button", { type: "submit", id: "fb-submit" }, "Save feedback"));
    form.addEventListener("submit", async ev => {
      ev.preventDefault();
      const body = {};
      if (reward.value !== "") body.reward = Number(reward.value);
      if (label.value.trim()) body.label = label.value.trim();
      if (comment.value.trim()) body.comment = comment.value.trim();
      status.textContent = "saving…";
      try {
        const res = await post("/api/traces/" + encodeURIComponent(traceId) + "/feedback", body);
        data.trace = res.trace;
        document.getElementById("summary").replaceWith(summary(res.trace));
        renderFeedback(res.feedback);
        status.textContent = `saved as a feedback event by ${res.written.data.by}; the trace's reward is now ${num(res.trace.reward, 3)}`;
        status.className = "ok";
        form.reset();
      } catch (e) { status.textContent = e.message; status.className = "bad"; }
    });
    return el("div", { class: "panel" }, el("h2", {}, "Feedback"), el("p", { class: "muted" }, "Written as a new feedback event by " + K.settings.user + "; events are never edited."), form, status, fbHistory);
  }

  // --- pairs ---------------------------------------------------------------------------------
  const pairsPanel = el("div", { class: "panel", id: "pairs" }, el("h2", {}, "Preference pairs"), el("p", { class: "muted" }, "Loading…"));
  async function loadPairs() {
    try {
      const res = await api("/api/traces/" + encodeURIComponent(traceId) + "/pairs");
      for (const p of res.pairs) {
        mark(p.branch_node_id, "branch of a pair", "pair");
        mark(p.chosen_node_id, "chosen @" + p.branch_node_id, "pair");
        mark(p.rejected_node_id, "rejected @" + p.branch_node_id, "pair");
      }
      for (const id of new Set(res.pairs.flatMap(p => [p.branch_node_id, p.chosen_node_id, p.rejected_node_id]))) {
        const s = rows.get(id); if (s) s.row.querySelector(".badges").replaceWith(el("span", { class: "badges" }, badges(byId.get(id))));
      }
      K.put(pairsPanel, el("h2", {}, "Preference pairs"), res.pairs.length ? el("table", {},
        el("tr", {}, ["branch", "chosen", "value", "rejected", "value"].map(h => el("th", {}, h))),
        res.pairs.map(p => el("tr", {}, el("td", {}, p.branch_node_id), el("td", {}, p.chosen_node_id + " → " + short(p.chosen_answer, 40)),
          el("td", { class: "num" }, num(p.chosen_value)), el("td", {}, p.rejected_node_id + " → " + short(p.rejected_answer, 40)), el("td", { class: "num" }, num(p.rejected_value)))))
        : el("p", { class: "muted" }, "This trace gives no preference pair (it needs a passed and a failed verified leaf)."));
    } catch (e) { K.showError(pairsPanel, e); }
  }

  // --- timeline ------------------------------------------------------------------------------
  function timeline() {
    const t0 = data.timeline.length ? Date.parse(data.timeline[0].ts) : 0;
    const line = e => {
      let what = "";
      if (e.type === "node_expanded") what = e.llm_model ? `${e.llm_model}: ${e.prompt_tokens} prompt + ${e.completion_tokens} completion tokens, ${num(e.latency_ms, 1)} ms` : "root";
      else if (e.type === "node_evaluated") what = "value " + num(e.value);
      else if (e.type === "verification") what = (e.passed ? "passed" : "failed") + " " + (e.verifier || "") + " (score " + num(e.score) + ")";
      else if (e.type === "reflection") what = short(e.text, 200);
      else if (e.type === "feedback") what = `by ${e.summary.by}: reward ${num(e.summary.reward, 3)} ${e.summary.label || ""}`;
      else if (e.type === "trace_completed") what = `${e.summary.status}, verified ${yesno(e.summary.verified)}, reward ${num(e.summary.reward, 3)}`;
      return el("tr", { class: "ev-" + e.type }, el("td", { class: "num" }, e.seq), el("td", { class: "num" }, "+" + ((Date.parse(e.ts) - t0) / 1000).toFixed(3) + " s"),
        el("td", {}, e.type), el("td", {}, e.node_id || ""), el("td", { class: "text" }, what));
    };
    const body = el("tbody", {}, data.timeline.slice(0, TIMELINE_FIRST).map(line));
    const rest = data.timeline.length - TIMELINE_FIRST;
    const more = rest > 0 ? el("button", { class: "plain", onclick: ev => { data.timeline.slice(TIMELINE_FIRST).forEach(e => body.appendChild(line(e))); ev.target.remove(); } }, `show ${rest} more events`) : null;
    const tot = data.llm_totals;
    return el("div", { class: "timeline" }, el("h2", {}, "Timeline"),
      el("p", { class: "muted" }, `${data.timeline.length} events · ${tot.calls} LLM calls · ${tot.prompt_tokens} prompt + ${tot.completion_tokens} completion tokens · ${num(tot.latency_ms / 1000, 2)} s of LLM latency`),
      el("table", { id: "timeline" }, el("thead", {}, el("tr", {}, ["seq", "time", "event", "node", "details"].map(h => el("th", {}, h)))), body), more);
  }

  async function load() {
    try { data = await api("/api/traces/" + encodeURIComponent(traceId)); } catch (e) { K.showError(main, e); return; }
    const t = data.trace;
    document.title = "Trace " + short(t.query, 40) + " · Kaelum";
    for (const n of data.nodes) { byId.set(n.node_id, n); }
    for (const n of data.nodes) if (n.parent_id && byId.has(n.parent_id)) { if (!children.has(n.parent_id)) children.set(n.parent_id, []); children.get(n.parent_id).push(n.node_id); }
    best = new Set(t.best_path || []);
    const treeBox = el("div", { class: "tree", id: "tree" }, el("ul", {}, roots().map(id => nodeRow(byId.get(id)))));
    const toolbar = el("div", { class: "toolbar" },
      el("button", { class: "plain", id: "expand-all", onclick: expandAll }, "Expand all"),
      el("button", { class: "plain", id: "collapse-all", onclick: collapseAll }, "Collapse all"),
      el("button", { class: "plain", id: "show-best", onclick: () => { const b = [...best]; expandPath(b.slice(0, -1)); if (b.length) select(b[b.length - 1]); } }, "Best path"),
      el("span", { class: "muted" }, `${data.nodes.length} nodes · best path highlighted · click a node for its text, ▸ to expand`));
    K.put(main, 
      el("h1", {}, "Trace ", el("code", {}, t.trace_id)), summary(t),
      el("h2", {}, "Query"), el("pre", { class: "block", id: "query" }, t.query || ""),
      el("h2", {}, "Final answer"), el("pre", { class: "block", id: "final-answer" }, t.final_answer === null ? "(none)" : t.final_answer),
      t.error ? el("div", { class: "error" }, t.error) : null,
      el("div", { class: "layout" },
        el("div", {}, el("h2", {}, "Search tree"), toolbar, treeBox),
        el("div", {}, detail, feedbackForm(), pairsPanel)),
      timeline());
    renderFeedback(data.feedback);
    expandPath([...best].slice(0, -1));
    for (const r of roots()) setOpen(r, true);
    loadPairs();
  }
  load();
})();
