// Shared helpers of every page. Model text is untrusted: the DOM is built with text nodes and
// attributes only (el(), never innerHTML), so markup in a thought renders as text.
"use strict";

const K = (() => {
  const settings = JSON.parse(document.body.dataset.settings || "{}");
  const token = new URLSearchParams(location.search).get("token") || sessionStorage.getItem("kaelum-ui-token") || "";
  if (token) sessionStorage.setItem("kaelum-ui-token", token);

  // href for a page of this app, carrying the access token when the server needs one.
  function href(path, params) {
    const q = new URLSearchParams(params || {});
    for (const [k, v] of [...q.entries()]) if (v === "" || v === null || v === undefined) q.delete(k);
    if (token) q.set("token", token);
    const s = q.toString();
    return path + (s ? "?" + s : "");
  }

  async function api(path, params, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    if (token) opts.headers["Authorization"] = "Bearer " + token;
    const q = new URLSearchParams(params || {});
    for (const [k, v] of [...q.entries()]) if (v === "" || v === null || v === undefined) q.delete(k);
    const url = path + (q.toString() ? "?" + q.toString() : "");
    const res = await fetch(url, opts);
    let body;
    try { body = await res.json(); } catch (e) { body = { error: "HTTP " + res.status }; }
    if (!res.ok) throw new Error(body.error || "HTTP " + res.status);
    return body;
  }

  async function post(path, body) {
    return api(path, null, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Kaelum-CSRF": settings.csrf },
      body: JSON.stringify(body),
    });
  }

  // el("div", {class: "x", title: t}, child, "text", ...): children are nodes or strings (as text).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    return add(node, ...children);
  }

  // Append children (nodes, strings as text, nested arrays; null/false skipped) to `node`.
  function add(node, ...children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function put(node, ...children) { return add(clear(node), ...children); }

  function num(v, digits) {
    if (v === null || v === undefined) return "–";
    return typeof v === "number" ? v.toFixed(digits === undefined ? 2 : digits) : String(v);
  }
  function when(iso) { return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z") : "–"; }
  function yesno(v) { return v === true ? "yes" : v === false ? "no" : "–"; }

  function nav(active) {
    const links = [["/", "Traces"], ["/charts", "Charts"], ["/datasets", "Datasets"], ["/quarantine", "Quarantine"]];
    const bar = el("nav", { class: "top" }, el("span", { class: "brand" }, "Kaelum"),
      links.map(([p, name]) => el("a", { href: href(p), class: p === active ? "active" : null }, name)),
      el("span", { class: "who" }, "store " + (settings.store || "") + " · feedback as " + (settings.user || "")));
    document.body.prepend(bar);
  }

  function showError(where, err) {
    clear(where).appendChild(el("div", { class: "error", role: "alert" }, String(err && err.message ? err.message : err)));
  }

  return { settings, token, href, api, post, el, add, put, clear, num, when, yesno, nav, showError };
})();
