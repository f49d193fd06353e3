// ledger view: plain JavaScript, no build step. Every text from a run is set with
// textContent (never innerHTML): a model's reply is data, not markup. Every filter, the
// order, the page, the tab and the open item live in the URL, so a view can be shared.
"use strict";

const POLL_MS = 3000;
const $ = (id) => document.getElementById(id);
const charts = window.ledgerCharts;

const state = {
  runs: [], q: "", word: false, show: "", meta: {}, sort: "item", desc: false, page: 0, tab: "items", group: "",
  item: null, sample: 0, pages: 1, running: false, seq: 0, rows: [], cursor: -1, names: [], reviewMode: false,
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
  // run.status is the word (its colour: green only for "completed" with nothing failed or
  // pending); run.status_text is what a person reads ("completed, 3 failed")
  return el("span", { class: "badge status-" + run.status, text: run.status_text || run.status });
}

// A person's verdict beside the machine's: applied (its own run's review, or one carried from
// another run for the same reply text), or stale (given for another reply: not applied).
function reviewMark(a) {
  const r = a.review;
  if (!r || (r.verdict === "cleared" && !r.stale)) return null;
  const who = `${r.who || "someone"}${r.carried ? ` in run ${r.run_id}` : ""}${r.note ? ": " + r.note : ""}`;
  if (r.stale) return el("span", { class: "review-mark stale", title: `stale review (${r.verdict}, by ${who}): given for another reply, not applied`, text: "stale" });
  const ok = r.verdict === "correct";
  return el("span", { class: "review-mark " + (ok ? "ok" : "bad") + (r.carried ? " carried" : ""),
    title: `reviewed ${r.verdict} by ${who}`, "data-verdict": r.verdict, text: ok ? "✓ reviewed" : "✗ reviewed" });
}

async function postReview(run, item, sample, verdict, note) {
  const res = await fetch("/api/review", { method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ run, item, sample, verdict, note: note || "" }) });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) { setError("Review not saved: " + (data.error || data.detail || res.status)); return false; }
  setError("");
  await refresh();
  if (state.item === item && state.sample === sample && !$("detail").hidden) openDetail(item, sample);
  return true;
}

function reviewButtons(run, row) {
  // review mode only: mark this run's answer right or wrong (a note: in the detail view)
  const click = (verdict) => (e) => { e.stopPropagation(); postReview(run, row.item_id, row.sample, verdict, ""); };
  return el("span", { class: "review-btns" },
    el("button", { class: "review-btn ok", "data-verdict": "correct", title: "mark correct", "aria-label": "mark correct", onclick: click("correct") }, "✓"),
    el("button", { class: "review-btn bad", "data-verdict": "incorrect", title: "mark incorrect", "aria-label": "mark incorrect", onclick: click("incorrect") }, "✗"));
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
  state.word = p.get("word") === "1";
  state.show = p.get("show") || (p.get("diff") === "1" ? "differ" : p.get("wrong") === "1" ? "wrong" : "");
  state.meta = {};
  for (const [k, v] of p) if (k.startsWith("m.") && k.length > 2) state.meta[k.slice(2)] = v;
  state.sort = p.get("sort") || "item";
  state.desc = p.get("desc") === "1";
  state.page = parseInt(p.get("page") || "0", 10) || 0;
  state.tab = p.get("tab") === "charts" ? "charts" : "items";
  state.group = p.get("group") || "";
  state.item = p.get("item");
  state.sample = parseInt(p.get("sample") || "0", 10) || 0;
}

function query(extra) {
  const p = new URLSearchParams();
  for (const r of state.runs) p.append("run", r);
  if (state.q) p.set("q", state.q);
  if (state.word) p.set("word", "1");
  if (state.show) p.set("show", state.show);
  for (const [k, v] of Object.entries(state.meta)) p.set("m." + k, v);
  if (state.sort !== "item") p.set("sort", state.sort);
  if (state.desc) p.set("desc", "1");
  if (state.page) p.set("page", String(state.page));
  for (const [k, v] of Object.entries(extra || {})) p.set(k, String(v));
  return p;
}

function writeURL() {
  const extra = {};
  if (state.tab === "charts") extra.tab = "charts";
  if (state.group) extra.group = state.group;
  if (state.item !== null) Object.assign(extra, { item: state.item, sample: state.sample });
  const qs = query(extra).toString();
  history.replaceState(null, "", qs ? "?" + qs : location.pathname);
}

// -- the list of runs (newest first, as the server sends them) ----------------------------

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
  const box = el("input", { type: "checkbox", value: r.run_id, checked, "aria-label": "select " + r.run_id,
    onchange: updateCompareButton });
  const dataset = (r.dataset || "").split("/").pop();
  return el("tr", { "data-run": r.run_id },
    el("td", { class: "narrow" }, box),
    el("td", {}, el("a", { class: "run-link", href: "/?run=" + encodeURIComponent(r.run_id), text: r.run_id })),
    el("td", {}, statusBadge(r)),
    el("td", { text: r.model || "–" }),
    el("td", { class: "mono small", title: r.dataset || "", text: dataset || "–" }),
    el("td", {}, progressBar(r), el("span", { class: "small muted", text: ` ${r.done + r.failed} / ${r.planned}` })),
    el("td", { class: "num" + (r.failed ? " bad-num" : ""), text: String(r.failed) }),
    el("td", { class: "num strong", text: pct(r.accuracy) }),
    el("td", { class: "small muted", text: r.started || "" }));
}

function progressBar(r) {
  // done and failed as two segments: a run with failures does not look all done
  const done = el("div", { class: "fill" }), failed = el("div", { class: "fill failed" });
  const share = (n) => (r.planned ? (100 * Math.min(1, n / r.planned)).toFixed(1) + "%" : "0%");
  done.style.width = share(r.done); // CSSOM, allowed by the page's CSP
  failed.style.width = share(r.failed);
  return el("div", { class: "progress", title: `${r.done} done, ${r.failed} failed of ${r.planned}` }, done, failed);
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
  const data = await getJSON("/api/items", query({ size: 50 }));
  if (seq !== state.seq) return; // a newer request is on its way
  state.page = data.page;
  state.pages = data.pages;
  state.names = data.runs.map((r) => r.run_id);
  state.running = data.runs.some((r) => r.status === "running");
  state.reviewMode = !!data.review_mode;
  document.body.classList.toggle("review-mode", state.reviewMode);
  renderCards(data);
  renderFilters(data);
  renderHead(data);
  renderRows(data);
  writeURL();
  stamp();
}

function renderCards(data) {
  const cards = data.runs.map((r, i) => el("div", { class: "card series-edge-" + (i % 6) },
    el("div", { class: "card-head" }, el("span", { class: "card-title", text: r.run_id }), statusBadge(r)),
    el("div", { class: "card-model muted", text: r.model || "–" }),
    el("div", { class: "card-figure" }, el("span", { class: "big", text: pct(r.accuracy) }),
      el("span", { class: "muted small", text: " accuracy" })),
    el("div", { class: "small muted ci", text: r.ci95 ? `95% CI ${pct(r.ci95[0])}–${pct(r.ci95[1])} · ${r.correct} of ${r.scored} scored`
      : `on ${r.scored} scored items` }),
    el("div", { class: "small muted", text: `${r.finished} finished · ${r.failed} failed · ${r.planned} planned` }),
    reviewedLine(r.reviewed)));
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
  $("notes").textContent = (data.notes || []).join("; ");
  show($("notes"), (data.notes || []).length > 0);
}

function reviewedLine(rv) {
  // both accuracies: the machine's above, with people's verdicts where given here
  if (!rv) return null;
  const carried = rv.carried ? ` (${rv.carried} from other runs)` : "";
  const stale = rv.stale ? ` · ${rv.stale} stale` : "";
  return el("div", { class: "small reviewed-acc", "data-reviewed": rv.accuracy === null ? "" : String(rv.accuracy) },
    el("span", { class: "strong", text: pct(rv.accuracy) }), ` reviewed accuracy · ${rv.verdicts} verdict${rv.verdicts === 1 ? "" : "s"}${carried}${stale}`);
}

// The outcome buttons: how a person compares two runs (only A right, only B right, both
// wrong, all differ), each with its count among the rows the search and metadata allow.
function categoryLabel(name, runs) {
  const two = runs.length === 2;
  if (name.startsWith("only")) return `Only ${runs[+name.slice(4)].run_id} right`;
  return { allwrong: two ? "Both wrong" : "All wrong", differ: two ? "All differ" : "Answers differ",
    alldiffer: "All differ", wrong: "Wrong in any run", toreview: "To review" }[name] || name;
}

function renderFilters(data) {
  const chips = [["", `All`, data.counts.all]].concat(data.categories.map((c) => [c, categoryLabel(c, data.runs), data.counts[c]]));
  $("chips").replaceChildren(...chips.map(([name, label, count]) => el("button", {
    class: "chip" + (state.show === name ? " active" : "") + (name ? " chip-" + name.replace(/\d+$/, "") : ""),
    "data-show": name, "aria-pressed": state.show === name ? "true" : "false",
    onclick: () => { state.show = state.show === name ? "" : name; state.page = 0; state.cursor = -1; refresh(); } },
    label, " ", el("span", { class: "count", text: String(count) }))));
  const selects = data.fields.filter((f) => data.values[f]).map((f) => {
    const select = el("select", { "data-field": f, "aria-label": "filter by " + f,
      onchange: (e) => { if (e.target.value) state.meta[f] = e.target.value; else delete state.meta[f]; state.page = 0; refresh(); } },
      el("option", { value: "", text: `${f}: any` }),
      data.values[f].map(([v, n]) => el("option", { value: v, selected: state.meta[f] === v, text: `${f}: ${v} (${n})` })));
    return el("label", { class: "meta-filter" + (state.meta[f] !== undefined ? " active" : "") }, select);
  });
  $("meta-filters").replaceChildren(...selects);
  const filtered = state.q || state.show || Object.keys(state.meta).length;
  $("counts").textContent = filtered ? `${data.matching} of ${data.items} items match` : `${data.items} items`;
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

function renderHead(data) {
  const runs = data.runs, multi = runs.length > 1;
  const top = el("tr", {},
    sortHeader("Item", "item", { rowspan: 2 }),
    sortHeader("Prompt", "prompt", { rowspan: 2, class: "prompt-col" }),
    data.fields.map((f) => sortHeader(f, "m." + f, { rowspan: 2, class: "meta-col" })),
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
  state.rows = data.rows;
  body.replaceChildren(...data.rows.map((row) => itemRow(row, data)));
  show($("items-empty"), data.rows.length === 0);
  $("page-info").textContent = `Page ${data.page + 1} of ${data.pages}`;
  $("first").disabled = $("prev").disabled = data.page <= 0;
  $("next").disabled = $("last").disabled = data.page >= data.pages - 1;
  if (state.cursor >= data.rows.length) state.cursor = data.rows.length - 1;
  markCursor(false);
}

function itemRow(row, data) {
  const runs = data.runs, multi = runs.length > 1;
  const cls = "item" + (row.agree === false ? " disagree" : "");
  const open = () => { state.cursor = state.rows.indexOf(row); markCursor(false); openDetail(row.item_id, row.sample); };
  return el("tr", { class: cls, tabindex: -1, "data-item": row.item_id, "data-sample": row.sample, onclick: open },
    el("td", { class: "mono item-id" }, row.item_id, row.sample ? el("span", { class: "muted small", text: ` s${row.sample}` }) : null),
    promptCell(row.prompt),
    data.fields.map((f) => el("td", { class: "meta-col small", text: row.metadata[f] ?? "–" })),
    el("td", { class: "mono", text: row.expected ?? "–" }),
    multi ? el("td", { class: "narrow agree-cell" }, agreeMark(row.agree)) : null,
    row.answers.map((a, i) => answerCells(a, runs[i], row)));
}

function promptCell(prompt) {
  // cut to two lines; the whole prompt on hover (title), or in place with the ▸ toggle
  if (prompt === null || prompt === undefined) return el("td", { class: "prompt-col muted", text: "–" });
  const text = el("div", { class: "clamp prompt", title: prompt, text: prompt });
  const toggle = el("button", { class: "expand", title: "Show the whole prompt", "aria-label": "expand prompt",
    onclick: (e) => { e.stopPropagation(); const open = text.classList.toggle("expanded"); toggle.textContent = open ? "▾" : "▸"; } }, "▸");
  return el("td", { class: "prompt-col" }, el("div", { class: "prompt-wrap" }, toggle, text));
}

function agreeMark(agree) {
  if (agree === false) return el("span", { class: "diff-flag", title: "the runs' parsed answers differ", text: "≠" });
  if (agree === true) return el("span", { class: "muted", title: "same parsed answer", text: "=" });
  return el("span", { class: "muted", title: "not in every run: not compared", text: "…" });
}

function answerCells(a, run, row) {
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
  const judge = state.reviewMode && a.response !== null ? reviewButtons(run.run_id, row) : null;
  const cached = a.cached_from ? el("span", { class: "muted small cached", title: `copied from the cache: run ${a.cached_from.run}, event ${a.cached_from.seq} (nothing sent)`, text: " ↺ cached" }) : null;
  return [el("td", { class: "narrow run-start", "data-run": run.run_id }, correctMark(a.correct), reviewMark(a), judge),
    el("td", { class: "mono" }, answer, ...(cached ? [cached] : [])), el("td", { class: "response-col" }, response)];
}

// -- keyboard: j / k move, Enter opens, Esc closes, / searches -----------------------------

function markCursor(scroll) {
  const rows = $("items-table").tBodies[0].rows;
  for (const r of rows) r.classList.remove("cursor");
  const row = rows[state.cursor];
  if (!row) return;
  row.classList.add("cursor");
  if (scroll) { row.focus({ preventScroll: true }); row.scrollIntoView({ block: "nearest" }); }
}

async function moveCursor(step) {
  const next = state.cursor + step;
  if (next >= state.rows.length && state.page < state.pages - 1) {
    state.page += 1; state.cursor = 0; await refresh();
  } else if (next < 0 && state.page > 0) {
    state.page -= 1; state.cursor = 49; await refresh();
  } else {
    state.cursor = Math.max(0, Math.min(next, state.rows.length - 1));
  }
  markCursor(true);
  const row = state.rows[state.cursor];
  if (row && !$("detail").hidden) openDetail(row.item_id, row.sample); // the drawer follows the cursor
}

function onKey(e) {
  const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(e.target.tagName);
  if (e.key === "Escape") {
    if (!$("detail").hidden) { closeDetail(); e.preventDefault(); } else if (typing) e.target.blur();
    return;
  }
  if (typing || e.ctrlKey || e.metaKey || e.altKey || !state.runs.length || state.tab !== "items") return;
  if (e.key === "j" || e.key === "ArrowDown") { e.preventDefault(); moveCursor(1); }
  else if (e.key === "k" || e.key === "ArrowUp") { e.preventDefault(); moveCursor(-1); }
  else if (e.key === "Enter" && state.rows[state.cursor] && $("detail").hidden) {
    e.preventDefault();
    openDetail(state.rows[state.cursor].item_id, state.rows[state.cursor].sample);
  } else if (e.key === "/") { e.preventDefault(); $("search").focus(); }
}

// -- the charts tab -----------------------------------------------------------------------

async function loadCharts() {
  const extra = state.group ? { group: state.group } : {};
  const p = new URLSearchParams();
  for (const r of state.runs) p.append("run", r);
  for (const [k, v] of Object.entries(extra)) p.set(k, v);
  const data = await getJSON("/api/charts", p);
  state.running = data.runs.some((r) => r.status === "running");
  // overall: one group per run (its name under its bar); by group: one bar per run in each
  const overall = data.runs.map((r, i) => ({ label: r.run_id, items: r.accuracy.scored, bars: [{ run: r.run_id, series: i,
    value: r.accuracy.accuracy, ci95: r.accuracy.ci95, n: r.accuracy.scored }] }));
  const top = [panel("Accuracy with 95% CI", "accuracy", charts.accuracyChart(overall, "accuracy per run"))];
  if (data.group) {
    const first = data.runs[0].groups;
    const groups = first.map((g0) => ({ label: g0.value, items: g0.items,
      bars: data.runs.map((r, i) => { const g = r.groups.find((x) => x.value === g0.value) || {}; return { run: r.run_id, series: i,
        value: g.accuracy ?? null, ci95: g.ci95 || null, n: g.scored || 0 }; }) }));
    const picker = data.groupable.length > 1 ? el("label", { class: "small muted" }, "group by ", el("select", { id: "group-select",
      "aria-label": "group by", onchange: (e) => { state.group = e.target.value; refresh(); } },
      data.groupable.map((f) => el("option", { value: f, selected: f === data.group, text: f })))) : null;
    top.push(panel(`Accuracy by ${data.group} (95% CI)`, "groups", charts.accuracyChart(groups, "accuracy by " + data.group),
      el("div", { class: "legend-row" }, legend(data.runs), picker)));
  }
  const panels = [el("div", { class: "chart-row" }, top)];
  for (const [i, r] of data.runs.entries()) {
    const lat = r.latency, tl = r.timeline;
    const latNote = lat.n ? `${lat.n} replies · p50 ${charts.ms(lat.p50)} · p90 ${charts.ms(lat.p90)} · p99 ${charts.ms(lat.p99)}` : "";
    const tlNote = `${tl.totals.requests} sent · ${tl.totals.replies} replies · ${tl.totals.rate_limited} 429s · ${tl.totals.errors} errors`;
    panels.push(el("div", { class: "run-charts", "data-run": r.run_id },
      el("h3", {}, el("span", { class: "swatch series-" + (i % 6) }), r.run_id, " ", statusBadge(r)),
      r.error ? el("p", { class: "error", text: r.error }) : null,
      el("div", { class: "chart-row" },
        panel("Latency per reply", "latency", charts.latencyChart(lat, i), el("div", { class: "small muted", text: latNote })),
        panel("Requests over time", "timeline", charts.timelineChart(tl),
          el("div", { class: "small muted", text: tlNote }),
          el("div", { class: "legend small" }, el("span", { class: "swatch sent" }), "sent ", el("span", { class: "swatch stack-ok" }), "replies ",
            el("span", { class: "swatch stack-rl" }), "429s ", el("span", { class: "swatch stack-err" }), "errors")))));
  }
  $("charts").replaceChildren(...panels);
  writeURL();
  stamp();
}

function panel(title, kind, ...content) {
  return el("section", { class: "chart-panel", "data-chart": kind }, el("h4", { text: title }), content);
}

function legend(runs) {
  return el("div", { class: "legend small" }, runs.map((r, i) => [el("span", { class: "swatch series-" + (i % 6) }), r.run_id + " "]));
}

function setTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === tab);
  show($("items-pane"), tab === "items");
  show($("charts"), tab === "charts");
  writeURL();
}

// -- the detail drawer --------------------------------------------------------------------

async function openDetail(item, sample) {
  state.item = item;
  state.sample = sample;
  writeURL();
  const row = state.rows.find((r) => r.item_id === item && r.sample === sample);
  const meta = row ? Object.entries(row.metadata).map(([k, v]) => el("span", { class: "meta-tag", text: `${k}: ${v}` })) : [];
  $("detail-title").replaceChildren(el("span", { class: "muted", text: "Item " }), el("span", { class: "mono", text: item }),
    el("span", { class: "muted", text: ` · sample ${sample}` }), ...meta);
  $("detail-body").replaceChildren(el("p", { class: "muted", text: "Loading…" }));
  show($("detail"), true);
  show($("backdrop"), true);
  try {
    const data = await getJSON("/api/item", query({ item, sample }));
    if (state.item !== item || state.sample !== sample) return; // moved on meanwhile
    $("detail-body").replaceChildren(el("div", { class: "story-grid cols-" + Math.min(data.runs.length, 3) },
      data.runs.map((run) => storyColumn(run, run.answer, item, sample))));
  } catch (e) {
    $("detail-body").replaceChildren(el("p", { class: "error", text: String(e.message || e) }));
  }
}

function closeDetail() {
  state.item = null;
  show($("detail"), false);
  show($("backdrop"), false);
  writeURL();
  markCursor(true);
}

function reviewPanel(run, answer, item, sample) {
  // the verdict bearing on this run's answer; in review mode, the form that gives one
  const r = answer && answer.review;
  const said = !r ? "No review." : r.stale ? `Stale review (${r.verdict}) by ${r.who}${r.carried ? " in run " + r.run_id : ""}: given for another reply, not applied.`
    : r.verdict === "cleared" ? `Review cleared by ${r.who}.`
    : `Reviewed ${r.verdict} by ${r.who}${r.carried ? " in run " + r.run_id + " (same reply)" : ""}${r.note ? ": " + r.note : ""}.`;
  const parts = [el("p", { class: "small review-said", text: said })];
  if (state.reviewMode && answer && answer.response !== null) {
    const note = el("input", { type: "text", class: "review-note", placeholder: "note (optional)", "aria-label": "review note" });
    const send = (verdict) => () => postReview(run.run_id, item, sample, verdict, note.value);
    parts.push(el("div", { class: "review-form", "data-run": run.run_id }, note,
      el("button", { class: "review-btn ok", "data-verdict": "correct", onclick: send("correct") }, "✓ Correct"),
      el("button", { class: "review-btn bad", "data-verdict": "incorrect", onclick: send("incorrect") }, "✗ Incorrect"),
      el("button", { class: "review-btn", "data-verdict": "cleared", onclick: send("cleared") }, "Clear")));
  }
  return el("div", { class: "review-panel" }, parts);
}

function storyColumn(run, answer, item, sample) {
  const head = el("h3", {}, run.run_id);
  if (!run.found) return el("section", { class: "story" }, head, el("p", { class: "muted", text: run.error || "No events for this item in this run." }));
  const c = run.conversation;
  const facts = c ? el("dl", { class: "facts" },
    fact("Parsed", el("span", { class: "mono answer " + (c.correct === true ? "ok" : c.correct === false ? "bad" : ""), text: fmt(c.parsed) })),
    fact("Expected", el("span", { class: "mono", text: fmt(c.expected) })),
    fact("Correct", correctMark(c.correct)),
    answer && answer.review && !answer.review.stale && answer.review.verdict !== "cleared"
      ? fact("Reviewed", correctMark(answer.correct_reviewed)) : null,
    fact("Attempts", String(c.attempts)),
    fact("Latency", run.latency_s === null ? "–" : `${run.latency_s.toFixed(3)} s`),
    run.usage ? fact("Tokens", `${run.usage.prompt_tokens} in / ${run.usage.completion_tokens} out`) : null,
    c.error ? fact("Error", el("span", { class: "err-text", text: c.error })) : null)
    : el("p", { class: "muted", text: "Not finished yet: attempts so far below." });
  const messages = c ? el("div", { class: "conversation" }, c.messages.map((m) =>
    el("div", { class: "msg role-" + m.role }, el("div", { class: "role", text: m.role }), el("div", { class: "content", text: fmt(m.content) }))))
    : null;
  return el("section", { class: "story", "data-run": run.run_id }, head, facts, reviewPanel(run, answer, item, sample),
    c ? el("h4", { text: "Conversation" }) : null, messages,
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
    if (!state.runs.length) await loadRuns();
    else if (state.tab === "charts") await Promise.all([loadItems(), loadCharts()]);
    else await loadItems();
    setError("");
  } catch (e) {
    setError("Could not load: " + (e.message || e));
  }
}

function startPolling() {
  // Every few seconds while a run is going (the charts too: a live run's view); otherwise
  // every fifth tick, so that a run that starts or resumes later shows up without a reload.
  let tick = 0;
  setInterval(() => {
    tick += 1;
    if (state.running || tick % 5 === 0) refresh();
  }, POLL_MS);
}

function bindControls() {
  let debounce = null;
  $("search").value = state.q;
  $("whole-word").checked = state.word;
  $("search").addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { state.q = $("search").value; state.page = 0; state.cursor = -1; refresh(); }, 250);
  });
  $("whole-word").addEventListener("change", () => { state.word = $("whole-word").checked; state.page = 0; refresh(); });
  const go = (page) => { state.page = Math.max(0, Math.min(page, state.pages - 1)); state.cursor = -1; refresh(); };
  $("first").addEventListener("click", () => go(0));
  $("prev").addEventListener("click", () => go(state.page - 1));
  $("next").addEventListener("click", () => go(state.page + 1));
  $("last").addEventListener("click", () => go(state.pages - 1));
  $("detail-close").addEventListener("click", closeDetail);
  $("backdrop").addEventListener("click", closeDetail);
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => { setTab(b.dataset.tab); refresh(); });
  document.addEventListener("keydown", onKey);
}

async function start() {
  readURL();
  bindControls();
  show($("runs-view"), state.runs.length === 0);
  show($("items-view"), state.runs.length > 0);
  if (!state.runs.length) $("crumbs").replaceChildren(el("span", { text: "Runs" }));
  else setTab(state.tab);
  await refresh();
  if (state.item !== null) openDetail(state.item, state.sample);
  startPolling();
}

start();
