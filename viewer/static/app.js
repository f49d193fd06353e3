// ledger view: plain JavaScript, no build step. Every text from a run is set with
// textContent (never innerHTML): a model's reply is data, not markup.
"use strict";

const POLL_MS = 3000;
const $ = (id) => document.getElementById(id);

const state = {
  runs: [], q: "", diff: false, wrong: false, sort: "item", desc: false, page: 0,
  item: null, sample: 0, pages: 1, running: false, seq: 0,
};

// -- small helpers ------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
const show = (node, visible) => { node.hidden = !visible; };

async function getJSON(path, params) {
  const url = path + "?" + params.toString();
  const res = await fetch(url, { headers: { Accept: "application/json" } });
  if (!res.ok) throw new Error(`${res.status} ${res.statusText}: ${(await res.text()).slice(0, 200)}`);
  return res.json();
}

function setError(message) {
  $("error").textContent = message || "";
  show($("error"), !!message);
}

function stamp() {
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  show($("live"), state.running);
}

function statusBadge(run) {
  // run.status is the word (its colour); run.status_text is what a person reads ("completed, 3 failed")
  return el("span", { class: "badge status-" + run.status, text: run.status_text || run.status });
}

function correctMark(correct) {
  if (correct === true) return el("span", { class: "mark ok", title: "correct", text: "✓" });
  if (correct === false) return el("span", { class: "mark bad", title: "wrong", text: "✗" });
  return el("span", { class: "mark none", title: "not scored", text: "·" });
}

// -- URL state ----------------------------------------------------------------------------

function readURL() {
  const p = new URLSearchParams(location.search);
  state.runs = p.getAll("run");
  state.q = p.get("q") || "";
  state.diff = p.get("diff") === "1";
  state.wrong = p.get("wrong") === "1";
  state.sort = p.get("sort") || "item";
  state.desc = p.get("desc") === "1";
  state.page = parseInt(p.get("page") || "0", 10) || 0;
  state.item = p.get("item");
  state.sample = parseInt(p.get("sample") || "0", 10) || 0;
}

function query(extra) {
  const p = new URLSearchParams();
  for (const r of state.runs) p.append("run", r);
  if (state.q) p.set("q", state.q);
  if (state.diff) p.set("diff", "1");
  if (state.wrong) p.set("wrong", "1");
  if (state.sort !== "item") p.set("sort", state.sort);
  if (state.desc) p.set("desc", "1");
  if (state.page) p.set("page", String(state.page));
  for (const [k, v] of Object.entries(extra || {})) p.set(k, String(v));
  return p;
}

function writeURL() {
  const p = query(state.item !== null ? { item: state.item, sample: state.sample } : {});
  const qs = p.toString();
  history.replaceState(null, "", qs ? "?" + qs : location.pathname);
}

// -- the list of runs ---------------------------------------------------------------------

async function loadRuns() {
  const data = await getJSON("/api/runs", new URLSearchParams());
  $("runs-dir").textContent = data.runs_dir;
  state.running = data.runs.some((r) => r.status === "running");
  const body = $("runs-table").tBodies[0];
  const checked = new Set([...body.querySelectorAll("input:checked")].map((i) => i.value));
  body.replaceChildren(...data.runs.map((r) => runRow(r, checked.has(r.run_id))));
  show($("runs-empty"), data.runs.length === 0);
  updateCompareButton();
  stamp();
}

function runRow(r, checked) {
  const share = r.planned ? Math.min(1, (r.done + r.failed) / r.planned) : 0;
  const box = el("input", { type: "checkbox", value: r.run_id, checked, "aria-label": "select " + r.run_id,
    onchange: updateCompareButton });
  const dataset = (r.dataset || "").split("/").pop();
  return el("tr", {},
    el("td", { class: "narrow" }, box),
    el("td", {}, el("a", { class: "run-link", href: "/?run=" + encodeURIComponent(r.run_id), text: r.run_id })),
    el("td", {}, statusBadge(r)),
    el("td", { text: r.model || "–" }),
    el("td", { class: "mono small", title: r.dataset || "", text: dataset || "–" }),
    el("td", {}, progressBar(share, `${r.done} done, ${r.failed} failed of ${r.planned}`),
      el("span", { class: "small muted", text: ` ${r.done + r.failed} / ${r.planned}` })),
    el("td", { class: "num", text: String(r.failed) }),
    el("td", { class: "num strong", text: pct(r.accuracy) }),
    el("td", { class: "small muted", text: r.started || "" }));
}

function progressBar(share, title) {
  const fill = el("div", { class: "fill" });
  fill.style.width = (100 * share).toFixed(1) + "%"; // CSSOM, allowed by the page's CSP
  return el("div", { class: "progress", title }, fill);
}

function updateCompareButton() {
  const picked = [...document.querySelectorAll("#runs-table tbody input:checked")].map((i) => i.value);
  const button = $("compare-btn");
  button.disabled = picked.length < 1;
  button.textContent = picked.length === 1 ? "Open selected" : "Compare selected";
  button.onclick = () => {
    const p = new URLSearchParams();
    for (const r of picked) p.append("run", r);
    location.href = "/?" + p.toString();
  };
}

// -- the item table -----------------------------------------------------------------------

async function loadItems() {
  const seq = ++state.seq;
  const p = query({ size: 50 });
  const data = await getJSON("/api/items", p);
  if (seq !== state.seq) return; // a newer request is on its way
  state.page = data.page;
  state.pages = data.pages;
  state.running = data.runs.some((r) => r.status === "running");
  renderCards(data);
  renderHead(data.runs);
  renderRows(data);
  writeURL();
  stamp();
}

function renderCards(data) {
  const cards = data.runs.map((r) => el("div", { class: "card" },
    el("div", { class: "card-head" }, el("span", { class: "card-title", text: r.run_id }), statusBadge(r)),
    el("div", { class: "card-model muted", text: r.model || "–" }),
    el("div", { class: "card-figure" }, el("span", { class: "big", text: pct(r.accuracy) }),
      el("span", { class: "muted small", text: " accuracy" })),
    el("div", { class: "small muted", text: `on ${r.scored} scored items` }),
    el("div", { class: "small muted", text: `${r.finished} finished · ${r.failed} failed · ${r.planned} planned` })));
  const cover = data.coverage;
  if (data.runs.length > 1) {
    const shared = cover.shared;
    const share = shared ? data.disagreements / shared : 0;
    const where = cover.complete ? ` of ${shared} items (${pct(share)})` : ` of ${shared} shared items (${pct(share)})`;
    cards.push(el("div", { class: "card card-diff" },
      el("div", { class: "card-head" }, el("span", { class: "card-title", text: "Disagreements" })),
      el("div", { class: "card-figure" }, el("span", { class: "big", text: shared ? String(data.disagreements) : "–" }),
        el("span", { class: "muted small", text: shared ? where : " no shared items" })),
      el("div", { class: "small muted", text: "parsed answers differ after normalization" })));
  }
  // The same sentence `ledger compare` prints (projections.compare.coverage).
  const multi = data.runs.length > 1 && !cover.complete;
  $("coverage").textContent = !multi ? "" : cover.shared
    ? `${cover.message[0].toUpperCase()}${cover.message.slice(1)}: disagreements and agreement count only the ${cover.shared} shared.`
    : `${cover.message[0].toUpperCase()}${cover.message.slice(1)}: nothing to compare (ledger compare refuses these runs).`;
  show($("coverage"), multi);
  $("run-cards").replaceChildren(...cards);
  $("crumbs").replaceChildren(el("a", { href: "/", text: "Runs" }), el("span", { class: "sep", text: "/" }),
    el("span", { text: state.runs.join(" vs ") }));
  show($("only-diff-label"), data.runs.length > 1);
}

function sortHeader(label, key, attrs) {
  const active = state.sort === key;
  const arrow = active ? (state.desc ? " ▼" : " ▲") : "";
  return el("th", { ...(attrs || {}), class: ((attrs && attrs.class) || "") + " sortable" + (active ? " sorted" : ""),
    title: "Sort by " + label.trim(), onclick: () => setSort(key) }, label + arrow);
}

function setSort(key) {
  if (state.sort === key) state.desc = !state.desc;
  else { state.sort = key; state.desc = false; }
  state.page = 0;
  refresh();
}

function renderHead(runs) {
  const multi = runs.length > 1;
  const top = el("tr", {},
    sortHeader("Item", "item", { rowspan: 2 }),
    sortHeader("Expected", "expected", { rowspan: 2 }),
    multi ? sortHeader("Agree", "agree", { rowspan: 2, class: "narrow" }) : null,
    runs.map((r) => el("th", { colspan: 3, class: "run-col", text: r.run_id })));
  const sub = el("tr", {}, runs.map((r, i) => [
    sortHeader("✓", "correct" + i, { class: "narrow run-start" }),
    sortHeader("Answer", "parsed" + i),
    el("th", { class: "response-col", text: "Response" })]));
  $("items-table").tHead.replaceChildren(top, sub);
}

function renderRows(data) {
  const body = $("items-table").tBodies[0];
  body.replaceChildren(...data.rows.map((row) => itemRow(row, data.runs)));
  show($("items-empty"), data.rows.length === 0);
  const filtered = state.q || state.diff || state.wrong;
  $("counts").textContent = filtered ? `${data.matching} of ${data.items} items match` : `${data.items} items`;
  $("page-info").textContent = `Page ${data.page + 1} of ${data.pages}`;
  $("first").disabled = $("prev").disabled = data.page <= 0;
  $("next").disabled = $("last").disabled = data.page >= data.pages - 1;
}

function itemRow(row, runs) {
  const multi = runs.length > 1;
  const cls = row.agree === false ? "item disagree" : "item";
  const open = () => openDetail(row.item_id, row.sample);
  return el("tr", { class: cls, tabindex: 0, "data-item": row.item_id, "data-sample": row.sample, onclick: open,
    onkeydown: (e) => { if (e.key === "Enter") open(); } },
    el("td", { class: "mono item-id" }, row.item_id, row.sample ? el("span", { class: "muted small", text: ` s${row.sample}` }) : null),
    el("td", { class: "mono", text: row.expected ?? "–" }),
    multi ? el("td", { class: "narrow agree-cell" }, agreeMark(row.agree)) : null,
    row.answers.map((a, i) => answerCells(a, runs[i])));
}

function agreeMark(agree) {
  if (agree === false) return el("span", { class: "diff-flag", title: "the runs' parsed answers differ", text: "≠" });
  if (agree === true) return el("span", { class: "muted", title: "same parsed answer", text: "=" });
  return el("span", { class: "muted", title: "not in every run: not compared", text: "…" });
}

function answerCells(a, run) {
  if (!a) {
    // a run with nothing left to do never had this item; otherwise it may still come
    const open = run.status === "running" || run.pending + run.in_flight > 0;
    return [el("td", { class: "narrow run-start" }, el("span", { class: "mark none", text: "·" })),
      el("td", { class: "muted small", colspan: 2, text: open ? "not finished" : "not in this run" })];
  }
  const answer = a.parsed === null ? el("span", { class: "muted", text: a.error ? "error" : "(none)" })
    : el("span", { class: "answer " + (a.correct === true ? "ok" : a.correct === false ? "bad" : ""), text: a.parsed });
  const response = a.error && a.response === null ? el("span", { class: "err-text", text: a.error })
    : el("div", { class: "clamp", text: a.response ?? "" });
  return [el("td", { class: "narrow run-start" }, correctMark(a.correct)), el("td", { class: "mono" }, answer),
    el("td", { class: "response-col" }, response)];
}

// -- the detail drawer --------------------------------------------------------------------

async function openDetail(item, sample) {
  state.item = item;
  state.sample = sample;
  writeURL();
  $("detail-title").replaceChildren(el("span", { class: "muted", text: "Item " }), el("span", { class: "mono", text: item }),
    el("span", { class: "muted", text: ` · sample ${sample}` }));
  $("detail-body").replaceChildren(el("p", { class: "muted", text: "Loading…" }));
  show($("detail"), true);
  show($("backdrop"), true);
  try {
    const data = await getJSON("/api/item", query({ item, sample }));
    $("detail-body").replaceChildren(el("div", { class: "story-grid cols-" + Math.min(data.runs.length, 3) },
      data.runs.map(storyColumn)));
  } catch (e) {
    $("detail-body").replaceChildren(el("p", { class: "error", text: String(e.message || e) }));
  }
}

function closeDetail() {
  state.item = null;
  show($("detail"), false);
  show($("backdrop"), false);
  writeURL();
}

function storyColumn(run) {
  const head = el("h3", {}, run.run_id);
  if (!run.found) return el("section", { class: "story" }, head, el("p", { class: "muted", text: run.error || "No events for this item in this run." }));
  const c = run.conversation;
  const facts = c ? el("dl", { class: "facts" },
    fact("Parsed", el("span", { class: "mono answer " + (c.correct === true ? "ok" : c.correct === false ? "bad" : ""), text: fmt(c.parsed) })),
    fact("Expected", el("span", { class: "mono", text: fmt(c.expected) })),
    fact("Correct", correctMark(c.correct)),
    fact("Attempts", String(c.attempts)),
    fact("Latency", run.latency_s === null ? "–" : `${run.latency_s.toFixed(3)} s`),
    run.usage ? fact("Tokens", `${run.usage.prompt_tokens} in / ${run.usage.completion_tokens} out`) : null,
    c.error ? fact("Error", el("span", { class: "err-text", text: c.error })) : null)
    : el("p", { class: "muted", text: "Not finished yet: attempts so far below." });
  const messages = c ? el("div", { class: "conversation" }, c.messages.map((m) =>
    el("div", { class: "msg role-" + m.role }, el("div", { class: "role", text: m.role }), el("div", { class: "content", text: fmt(m.content) }))))
    : null;
  return el("section", { class: "story" }, head, facts, c ? el("h4", { text: "Conversation" }) : null, messages,
    el("h4", { text: `Attempts (${run.events.length} events)` }), el("ol", { class: "events" }, run.events.map(eventItem)));
}

function fact(label, value) {
  return [el("dt", { text: label }), el("dd", {}, value)];
}

function fmt(value) {
  if (value === null || value === undefined) return "–";
  return typeof value === "string" ? value : JSON.stringify(value);
}

function eventItem(e) {
  const head = el("div", { class: "ev-head" }, el("span", { class: "ev-type ev-" + e.type, text: e.type }),
    el("span", { class: "muted small", text: ` #${e.seq} · turn ${e.turn ?? 0}` + (e.attempt ? ` · attempt ${e.attempt}` : "") +
      " · " + new Date(e.ts * 1000).toISOString().replace("T", " ").slice(0, 23) }));
  let body = null;
  if (e.type === "started") {
    body = el("details", {}, el("summary", { text: "request" }), el("pre", { text: JSON.stringify(e.request, null, 2) }));
  } else if (e.type === "response") {
    const usage = e.usage ? ` · ${e.usage.prompt_tokens} in / ${e.usage.completion_tokens} out` : "";
    body = [el("div", { class: "small muted", text: `${(e.latency || 0).toFixed(3)} s · ${e.finish_reason}${usage}` }),
      el("pre", { class: "reply", text: e.text ?? "" })];
  } else if (e.type === "failed") {
    body = el("div", { class: "err-text", text: `${e.error_type}: ${e.message}` + (e.status ? ` (HTTP ${e.status})` : "") +
      (e.final ? " · final" : e.retryable ? " · will retry" : "") });
  } else if (e.type === "parsed") {
    body = el("div", { class: "small" }, `${e.parser}: `, el("span", { class: "mono", text: e.ok ? fmt(e.value) : "failed" }),
      e.error ? el("span", { class: "err-text", text: " " + e.error }) : null);
  }
  return el("li", { class: "ev" }, head, body);
}

// -- wiring -------------------------------------------------------------------------------

async function refresh() {
  try {
    if (state.runs.length) await loadItems();
    else await loadRuns();
    setError("");
  } catch (e) {
    setError("Could not load: " + (e.message || e));
  }
}

function startPolling() {
  // Every few seconds while a run is going; otherwise every fifth tick, so that a run that
  // starts or resumes later (or a new run in the list) shows up without a reload.
  let tick = 0;
  setInterval(() => {
    tick += 1;
    if (state.running || tick % 5 === 0) refresh();
  }, POLL_MS);
}

function bindControls() {
  let debounce = null;
  $("search").value = state.q;
  $("only-diff").checked = state.diff;
  $("only-wrong").checked = state.wrong;
  $("search").addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { state.q = $("search").value; state.page = 0; refresh(); }, 250);
  });
  $("only-diff").addEventListener("change", () => { state.diff = $("only-diff").checked; state.page = 0; refresh(); });
  $("only-wrong").addEventListener("change", () => { state.wrong = $("only-wrong").checked; state.page = 0; refresh(); });
  const go = (page) => { state.page = Math.max(0, Math.min(page, state.pages - 1)); refresh(); };
  $("first").addEventListener("click", () => go(0));
  $("prev").addEventListener("click", () => go(state.page - 1));
  $("next").addEventListener("click", () => go(state.page + 1));
  $("last").addEventListener("click", () => go(state.pages - 1));
  $("detail-close").addEventListener("click", closeDetail);
  $("backdrop").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !$("detail").hidden) closeDetail(); });
}

async function start() {
  readURL();
  bindControls();
  show($("runs-view"), state.runs.length === 0);
  show($("items-view"), state.runs.length > 0);
  if (!state.runs.length) $("crumbs").replaceChildren(el("span", { text: "Runs" }));
  await refresh();
  if (state.item !== null) openDetail(state.item, state.sample);
  startPolling();
}

start();
