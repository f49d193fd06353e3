// ledger view: the charts, drawn as SVG from figures the server computed
// (projections/charts.py: accuracy and its 95% CI, latency histogram, requests over time).
// Nothing is estimated here: the page only scales and draws. No library, nothing fetched
// from elsewhere: the page works offline.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const RUN_COLOURS = 6; // .series-0 .. .series-5 in style.css

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) if (c) node.append(c);
  return node;
}

const tip = (text) => svg("title", { text });
const fmtPct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= value) return m * power;
  return 10 * power;
}

function frame(kind, width, height, title) {
  return svg("svg", { class: "chart " + kind, viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": title });
}

// Accuracy per group (or per run when there is no group): one bar per (group, run), each
// with its 95% interval as a whisker. groups: [{label, bars: [{run, series, value, ci95, n}]}]
function accuracyChart(groups, title) {
  const perGroup = Math.max(1, ...groups.map((g) => g.bars.length));
  const barW = 22, gap = 4, groupGap = 26, left = 44, top = 14, plotH = 170, bottom = 44;
  const width = left + groups.length * (perGroup * (barW + gap) + groupGap) + 10;
  const chart = frame("chart-accuracy", Math.max(width, 260), top + plotH + bottom, title);
  const y = (v) => top + plotH * (1 - v);
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    chart.append(svg("line", { class: "grid-line", x1: left, x2: width - 6, y1: y(t), y2: y(t) }),
      svg("text", { class: "axis", x: left - 6, y: y(t) + 4, "text-anchor": "end", text: `${t * 100}%` }));
  }
  groups.forEach((group, gi) => {
    const x0 = left + 8 + gi * (perGroup * (barW + gap) + groupGap);
    group.bars.forEach((b, bi) => {
      const x = x0 + bi * (barW + gap);
      const label = `${b.run}${group.label === null ? "" : " · " + group.label}: ${fmtPct(b.value)}` +
        (b.ci95 ? ` (95% CI ${fmtPct(b.ci95[0])}–${fmtPct(b.ci95[1])})` : "") + `, n=${b.n}`;
      if (b.value === null) {
        chart.append(svg("text", { class: "axis", x: x + barW / 2, y: y(0) - 4, "text-anchor": "middle", text: "–" }));
        return;
      }
      chart.append(svg("rect", { class: `bar series-${b.series % RUN_COLOURS}`, x, y: y(b.value), width: barW,
        height: Math.max(0.5, plotH * b.value), "data-value": b.value, "data-run": b.run, "data-group": group.label ?? "" }, tip(label)));
      if (b.ci95) {
        const cx = x + barW / 2;
        chart.append(svg("g", { class: "whisker" },
          svg("line", { x1: cx, x2: cx, y1: y(b.ci95[1]), y2: y(b.ci95[0]) }),
          svg("line", { x1: cx - 5, x2: cx + 5, y1: y(b.ci95[1]), y2: y(b.ci95[1]) }),
          svg("line", { x1: cx - 5, x2: cx + 5, y1: y(b.ci95[0]), y2: y(b.ci95[0]) }), tip(label)));
      }
    });
    const mid = x0 + (group.bars.length * (barW + gap) - gap) / 2;
    const text = group.label === null ? "" : String(group.label);
    chart.append(svg("text", { class: "axis group-label", x: mid, y: top + plotH + 16, "text-anchor": "middle",
      text: text.length > 16 ? text.slice(0, 15) + "…" : text }, tip(text)));
    if (group.items !== undefined) {
      chart.append(svg("text", { class: "axis muted", x: mid, y: top + plotH + 30, "text-anchor": "middle", text: `n=${group.items}` }));
    }
  });
  return chart;
}

// Latency histogram: counts per bin of step_ms from start_ms, p50/p90/p99 marked.
function latencyChart(lat, series) {
  const width = 420, height = 190, left = 40, top = 12, plotH = 140, right = 10;
  const chart = frame("chart-latency", width, height, "latency distribution");
  if (!lat.n) return emptyChart(chart, width, height, "no replies yet");
  const n = lat.counts.length, plotW = width - left - right, barW = plotW / n;
  const max = niceMax(Math.max(...lat.counts));
  const y = (v) => top + plotH * (1 - v / max);
  chart.append(svg("text", { class: "axis", x: left - 6, y: y(max) + 4, "text-anchor": "end", text: String(max) }),
    svg("text", { class: "axis", x: left - 6, y: y(0) + 4, "text-anchor": "end", text: "0" }),
    svg("line", { class: "grid-line", x1: left, x2: width - right, y1: y(0), y2: y(0) }));
  lat.counts.forEach((c, i) => {
    const lo = lat.start_ms + i * lat.step_ms;
    chart.append(svg("rect", { class: `bar series-${series % RUN_COLOURS}`, x: left + i * barW + 1, y: y(c), width: Math.max(1, barW - 2),
      height: plotH * c / max, "data-count": c }, tip(`${ms(lo)}–${ms(lo + lat.step_ms)}: ${c} replies`)));
  });
  const xOf = (v) => left + plotW * (v - lat.start_ms) / (n * lat.step_ms);
  for (const q of ["p50", "p90", "p99"]) {
    if (lat[q] === null) continue;
    const x = xOf(lat[q]);
    chart.append(svg("line", { class: "marker marker-" + q, x1: x, x2: x, y1: top, y2: top + plotH }, tip(`${q} ${ms(lat[q])}`)),
      svg("text", { class: "axis marker-label", x: x > width - 40 ? x - 3 : x + 3, "text-anchor": x > width - 40 ? "end" : "start",
        y: top + 8 + 11 * ["p50", "p90", "p99"].indexOf(q), text: q }));
  }
  for (const i of [0, Math.floor(n / 2), n]) {
    chart.append(svg("text", { class: "axis", x: left + i * barW, y: top + plotH + 14, "text-anchor": "middle",
      text: ms(lat.start_ms + i * lat.step_ms) }));
  }
  return chart;
}

function ms(v) {
  return v >= 10000 ? (v / 1000).toFixed(1) + " s" : v >= 100 ? Math.round(v) + " ms" : (+v.toFixed(1)) + " ms";
}

// Requests over time: per bin, the attempts sent (a light bar) and, stacked in front of it,
// how the attempts that ended in that bin ended: replies, 429s, other errors.
const OUTCOMES = [["replies", "ok"], ["rate_limited", "rl"], ["errors", "err"]];

function timelineChart(tl) {
  const width = 420, height = 190, left = 40, top = 12, plotH = 140, right = 10;
  const chart = frame("chart-timeline", width, height, "requests over time");
  if (!tl.bins.length) return emptyChart(chart, width, height, "no requests yet");
  const n = tl.bins.length, plotW = width - left - right, barW = plotW / n;
  const max = niceMax(Math.max(...tl.bins.map((b) => Math.max(b.requests, b.replies + b.rate_limited + b.errors))));
  const y = (v) => top + plotH * (1 - v / max);
  chart.append(svg("text", { class: "axis", x: left - 6, y: y(max) + 4, "text-anchor": "end", text: String(max) }),
    svg("text", { class: "axis", x: left - 6, y: y(0) + 4, "text-anchor": "end", text: "0" }),
    svg("line", { class: "grid-line", x1: left, x2: width - right, y1: y(0), y2: y(0) }));
  tl.bins.forEach((b, i) => {
    const when = clock(b.t, tl.step_s);
    const label = `${when} UTC (+${tl.step_s} s): ${b.requests} sent, ${b.replies} replies, ${b.rate_limited} 429s, ${b.errors} errors`;
    const column = svg("g", { class: "bin", "data-requests": b.requests, "data-replies": b.replies,
      "data-rate-limited": b.rate_limited, "data-errors": b.errors }, tip(label));
    if (b.requests) { // attempts sent in the bin, behind how the attempts that ended in it ended
      column.append(svg("rect", { class: "bar sent", x: left + i * barW + 0.5, y: y(b.requests),
        width: Math.max(1, barW - 1), height: plotH * b.requests / max }));
    }
    let base = 0;
    for (const [key, cls] of OUTCOMES) {
      if (!b[key]) continue;
      column.append(svg("rect", { class: "bar stack-" + cls, x: left + i * barW + 0.5, y: y(base + b[key]),
        width: Math.max(1, barW - 1), height: plotH * b[key] / max }));
      base += b[key];
    }
    chart.append(column);
  });
  const t0 = clock(tl.start, tl.step_s);
  chart.append(svg("text", { class: "axis", x: left, y: top + plotH + 14, text: t0 + " UTC" }),
    svg("text", { class: "axis", x: width - right, y: top + plotH + 14, "text-anchor": "end", text: `${n} × ${tl.step_s} s` }));
  return chart;
}

function clock(t, step) {
  return new Date(t * 1000).toISOString().slice(11, step < 1 ? 21 : 19); // UTC, tenths when bins are shorter than 1 s
}

function emptyChart(chart, width, height, text) {
  chart.append(svg("text", { class: "axis", x: width / 2, y: height / 2, "text-anchor": "middle", text }));
  return chart;
}

window.ledgerCharts = { accuracyChart, latencyChart, timelineChart, ms, fmtPct };
