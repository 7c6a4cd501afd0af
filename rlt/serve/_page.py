"""The status page at ``GET /``: one self-contained HTML page (inline CSS and JS, no external URL) that
polls ``/v1/status`` every 2 s and draws progress, throughput over time, recent errors and the
requests by HTTP status, and the watch job's when the status has a ``watch`` key.

The page is static and needs no token; the data comes from ``/v1/status``, which does. A server
with a token is opened as ``/#token=<token>``: the fragment never leaves the browser, and the page
sends it as ``Authorization: Bearer`` on its fetches.
"""

from __future__ import annotations

# The browser may load nothing but this page and fetch nothing but this server's /v1/status.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rlt-prep serve: status</title>
<link rel="icon" href="data:,">
<style>
  :root { --ink: #1d2433; --muted: #5b6478; --line: #dde2ea; --card: #ffffff; --bg: #f3f5f9;
          --ok: #2f9e44; --warn: #e8590c; --bad: #c92a2a; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
         color: var(--ink); background: var(--bg); }
  header { display: flex; align-items: baseline; gap: 16px; padding: 14px 24px;
           background: #1d2433; color: #fff; }
  header h1 { margin: 0; font-size: 18px; font-weight: 600; }
  header .live { margin-left: auto; color: #c5cbd8; font-size: 13px; }
  header .live::before { content: "\\25CF"; margin-right: 6px; color: #8f96a3; }
  header .live.ok::before { color: #51cf66; }
  header .live.down::before { color: #ff6b6b; }
  main { padding: 16px 24px 32px; max-width: 1400px; }
  #banner { margin: 0 0 16px; padding: 10px 14px; border-radius: 6px; font-weight: 500;
            background: #fff4e6; border: 1px solid #ffc078; color: #7a2e00; }
  #banner.error { background: #fff5f5; border-color: #ffa8a8; color: #8a1c1c; }
  section { margin-bottom: 28px; }
  section.stale .value { color: var(--muted); }
  h2 { margin: 0 0 10px; font-size: 16px; font-weight: 600; }
  h2 .sub { color: var(--muted); font-weight: 400; margin-left: 8px; }
  .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
           background: #e7f5ff; color: #1864ab; vertical-align: 2px; margin-left: 8px; }
  .badge.stopped { background: #f1f3f5; color: #495057; }
  .cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr)); gap: 10px; }
  .card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
  .card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
  .card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; margin-top: 2px; }
  .card[data-key="videos_failed"] .value.nonzero { color: var(--bad); }
  .row { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; margin-top: 12px; }
  .row.tables { grid-template-columns: 3fr 1fr; }
  .panel { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
  .panel h3 { margin: 0 0 6px; font-size: 13px; font-weight: 600; color: var(--muted); }
  svg.chart { width: 100%; height: auto; display: block; }
  svg.chart text { font-size: 11px; fill: var(--muted); font-variant-numeric: tabular-nums; }
  svg.chart .grid { stroke: var(--line); stroke-width: 1; }
  table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
  th { color: var(--muted); font-weight: 500; font-size: 12px; }
  td.reason { word-break: break-word; }
  td.none { color: var(--muted); font-style: italic; }
  td.code.c2 { color: var(--ok); } td.code.c4 { color: var(--warn); } td.code.c5 { color: var(--bad); }
  @media (max-width: 800px) { .row, .row.tables { grid-template-columns: 1fr; } }
</style>
</head>
<body>
<header><h1>rlt-prep serve</h1><span>status</span><span class="live" id="live">connecting</span></header>
<main>
  <div id="banner" hidden></div>
  <section id="serve">
    <h2>This replica <span class="sub" id="replica-note">counters since it started</span></h2>
    <div class="cards" id="cards"></div>
    <div class="row">
      <div class="panel"><h3>Videos per second</h3><svg class="chart" id="chart-videos"></svg></div>
      <div class="panel"><h3>Kept tokens per second</h3><svg class="chart" id="chart-tokens"></svg></div>
    </div>
    <div class="row tables">
      <div class="panel"><h3>Recent errors</h3><table id="errors"></table></div>
      <div class="panel"><h3>Requests by HTTP status</h3><table id="requests"></table></div>
    </div>
  </section>
  <section id="watch" hidden>
    <h2>Watch <span class="badge" id="watch-state"></span>
      <span class="sub"><span id="watch-source"></span> &rarr; <span id="watch-dataset"></span></span></h2>
    <div class="cards" id="watch-cards"></div>
    <div class="row">
      <div class="panel"><h3>Videos per second</h3><svg class="chart" id="watch-chart-videos"></svg></div>
      <div class="panel"><h3>Kept tokens per second</h3><svg class="chart" id="watch-chart-tokens"></svg></div>
    </div>
    <div class="row tables">
      <div class="panel"><h3>Recent errors</h3><table id="watch-errors"></table></div>
    </div>
  </section>
</main>
<script>
"use strict";
const EVERY_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const VIDEOS = "#2563eb", TOKENS = "#d9480f";  // the charts' colours

const int = (n) => Number(n).toLocaleString("en-US");
const rate = (x) => (x < 10 ? Number(x).toFixed(2) : int(Math.round(x)));
const ratio = (x) => (x === null || x === undefined ? "\\u2013" : (100 * x).toFixed(1) + " %");
const clock = (t) => new Date(t * 1000).toLocaleTimeString("en-GB");
function duration(s) {
  s = Math.floor(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return h ? h + "h " + pad(m) + "m" : m ? m + "m " + pad(sec) + "s" : sec + "s";
}

// [key in the status, label, format]: the cards of each section.
const SERVE_CARDS = [
  ["videos_done", "Videos done", int], ["videos_queued", "Queued", int], ["videos_failed", "Failed", int],
  ["clips", "Clips", int], ["kept_tokens", "Kept tokens", int], ["kept_ratio", "Kept ratio", ratio],
  ["videos_per_s", "Videos/s", rate], ["tokens_per_s", "Tokens/s", rate], ["uptime_s", "Uptime", duration],
];
const WATCH_CARDS = [
  ["generation", "Generation", int], ["shards", "Shards", int], ["videos_done", "Videos done", int],
  ["videos_queued", "Queued", int], ["videos_failed", "Failed", int], ["clips", "Clips", int],
  ["kept_tokens", "Kept tokens", int], ["kept_ratio", "Kept ratio", ratio],
  ["videos_per_s", "Videos/s", rate], ["tokens_per_s", "Tokens/s", rate],
];

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;  // never innerHTML: names and reasons come from users
  return node;
}

function makeCards(container, prefix, spec) {
  for (const [key, label] of spec) {
    const card = el("div", { class: "card", "data-key": key });
    card.append(el("div", { class: "label" }, label), el("div", { class: "value", id: prefix + key }, "\\u2013"));
    container.append(card);
  }
}

function fillCards(prefix, spec, data) {
  for (const [key, , format] of spec) {
    const node = document.getElementById(prefix + key);
    if (!(key in data)) continue;
    node.textContent = format(data[key]);
    node.classList.toggle("nonzero", Boolean(data[key]));
  }
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// A step line of the rate of history[i][column] over each interval between two samples.
function drawChart(svg, history, column, colour) {
  const W = 600, H = 180, left = 56, right = 10, top = 10, bottom = 22;
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.replaceChildren();
  const steps = [];
  for (let i = 1; i < history.length; i++) {
    const dt = history[i][0] - history[i - 1][0];
    if (dt > 0) steps.push([history[i - 1][0], history[i][0], (history[i][column] - history[i - 1][column]) / dt]);
  }
  if (!steps.length) {
    svg.append(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no samples yet"));
    return;
  }
  const t0 = steps[0][0], t1 = steps[steps.length - 1][1];
  const peak = Math.max(...steps.map((s) => s[2]));
  const top_value = peak > 0 ? peak * 1.1 : 1;
  const x = (t) => left + ((t - t0) / Math.max(t1 - t0, 1e-9)) * (W - left - right);
  const y = (v) => top + (1 - v / top_value) * (H - top - bottom);
  for (const v of [0, top_value / 2, top_value]) {
    svg.append(svgEl("line", { class: "grid", x1: left, x2: W - right, y1: y(v), y2: y(v) }));
    svg.append(svgEl("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, rate(v)));
  }
  svg.append(svgEl("text", { x: left, y: H - 6 }, clock(t0)));
  svg.append(svgEl("text", { x: W - right, y: H - 6, "text-anchor": "end" }, clock(t1)));
  let d = "M" + x(steps[0][0]).toFixed(1) + " " + y(steps[0][2]).toFixed(1);
  for (const [, end, value] of steps) d += " V" + y(value).toFixed(1) + " H" + x(end).toFixed(1);
  const base = y(0).toFixed(1);
  const area = d + " V" + base + " H" + x(t0).toFixed(1) + " Z";
  svg.append(svgEl("path", { d: area, fill: colour, "fill-opacity": "0.12", stroke: "none" }));
  svg.append(svgEl("path", { class: "line", d: d, fill: "none", stroke: colour, "stroke-width": "2" }));
}

function fillErrors(table, errors) {
  const rows = [el("tr")];
  rows[0].append(el("th", {}, "time"), el("th", {}, "video"), el("th", {}, "reason"));
  for (const e of (errors || []).slice().reverse()) {
    const row = el("tr");
    row.append(el("td", {}, clock(e.time)), el("td", { class: "video" }, e.video));
    row.append(el("td", { class: "reason" }, e.reason));
    rows.push(row);
  }
  if (rows.length === 1) {
    const row = el("tr");
    row.append(el("td", { class: "none", colspan: "3" }, "none"));
    rows.push(row);
  }
  table.replaceChildren(...rows);
}

function fillRequests(table, requests) {
  const rows = [el("tr")];
  rows[0].append(el("th", {}, "status"), el("th", {}, "requests"));
  for (const [code, n] of Object.entries(requests || {})) {
    const row = el("tr");
    row.append(el("td", { class: "code c" + code[0], id: "requests-" + code }, code), el("td", {}, int(n)));
    rows.push(row);
  }
  if (rows.length === 1) {
    const row = el("tr");
    row.append(el("td", { class: "none", colspan: "2" }, "none yet"));
    rows.push(row);
  }
  table.replaceChildren(...rows);
}

function render(status) {
  fillCards("", SERVE_CARDS, status);
  drawChart(document.getElementById("chart-videos"), status.history || [], 1, VIDEOS);
  drawChart(document.getElementById("chart-tokens"), status.history || [], 2, TOKENS);
  fillErrors(document.getElementById("errors"), status.errors);
  fillRequests(document.getElementById("requests"), status.requests);
  const watch = status.watch;
  document.getElementById("watch").hidden = !watch;
  if (!watch) return;
  fillCards("watch-", WATCH_CARDS, watch);
  const state = document.getElementById("watch-state");
  state.textContent = watch.state;
  state.className = "badge " + watch.state;
  document.getElementById("watch-source").textContent = watch.source;
  document.getElementById("watch-dataset").textContent = watch.dataset;
  drawChart(document.getElementById("watch-chart-videos"), watch.history || [], 1, VIDEOS);
  drawChart(document.getElementById("watch-chart-tokens"), watch.history || [], 2, TOKENS);
  fillErrors(document.getElementById("watch-errors"), watch.errors);
}

// What went wrong, in a banner; the last numbers stay on the page, greyed.
function trouble(message, live) {
  const banner = document.getElementById("banner");
  banner.textContent = message;
  banner.className = "error";
  banner.hidden = false;
  for (const section of document.querySelectorAll("section")) section.classList.add("stale");
  const node = document.getElementById("live");
  node.textContent = live;
  node.className = "live down";
}

function token() {
  return new URLSearchParams(location.hash.slice(1)).get("token");
}

let lastOk = null, timer = null;

async function poll() {
  const given = token();
  const headers = given ? { Authorization: "Bearer " + given } : {};
  const kept = lastOk ? " Showing the numbers of " + clock(lastOk) + "." : "";
  try {
    const response = await fetch("v1/status", { headers: headers, cache: "no-store" });
    if (response.status === 401) {
      trouble(
        (given
          ? "401: the token in this page's address (#token=\\u2026) is wrong."
          : "401: this server needs its bearer token: open this page as /#token=<token>.") + kept,
        "unauthorized");
    } else if (!response.ok) {
      trouble("The server answered HTTP " + response.status + " to /v1/status." + kept, "HTTP " + response.status);
    } else {
      const status = await response.json();
      lastOk = Date.now() / 1000;
      render(status);
      document.getElementById("banner").hidden = true;
      for (const section of document.querySelectorAll("section")) section.classList.remove("stale");
      const node = document.getElementById("live");
      node.textContent = "updated " + clock(lastOk);
      node.className = "live ok";
    }
  } catch (e) {
    trouble("Cannot reach the server; retrying every " + EVERY_MS / 1000 + " s." + kept, "unreachable");
  } finally {
    clearTimeout(timer);
    timer = setTimeout(poll, EVERY_MS);
  }
}

makeCards(document.getElementById("cards"), "", SERVE_CARDS);
makeCards(document.getElementById("watch-cards"), "watch-", WATCH_CARDS);
window.addEventListener("hashchange", () => { clearTimeout(timer); poll(); });
poll();
</script>
</body>
</html>
"""
