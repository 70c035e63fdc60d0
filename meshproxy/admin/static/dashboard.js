"use strict";
/*
 * The meshproxy dashboard: every router, its rules, the traffic of each
 * bound name (rate, success rate, p50 and p99 latency, with sparklines of
 * the last minutes) and the state of every endpoint, read from the admin
 * API every 2 seconds; and an explain form.
 *
 * Served under a Content-Security-Policy that allows only this file and
 * the stylesheet, from the page's own origin: no inline script or style,
 * nothing from elsewhere. Everything the API says is inserted as text
 * (textContent, attribute values): names and addresses come from namers
 * (files, etcd) and must never be parsed as HTML.
 *
 * The API gives cumulative counters (GET admin/stats): rates come from the
 * difference between two polls, over the proxy's own clock, and the
 * percentiles from the difference of the latency buckets, as Prometheus'
 * histogram_quantile computes them.
 */

const POLL_MS = 2000;
const WINDOW_S = 10;      // the numbers shown are over the last 10 seconds
const HISTORY_S = 300;    // the sparklines show the last 5 minutes
const COLUMNS = 7;        // every table has 7 columns, one set of widths (dashboard.css)
const TOKEN_KEY = "meshproxy-token";
const SVG_NS = "http://www.w3.org/2000/svg";
const NONE = "\u2014";

// -- the API ------------------------------------------------------------------

class Unauthorized extends Error {}

// The one place the page talks to the API: a GET (the only method it uses)
// of a path relative to the page, with the token when one was given.
async function get(path) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, {headers: headers, cache: "no-store"});
  if (response.status === 401) throw new Unauthorized(path);
  return response;
}

async function getJSON(path) {
  const response = await get(path);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error(path + " answered " + response.status +
                    (body && body.error ? ": " + body.error : ""));
  }
  return body;
}

// -- elements -----------------------------------------------------------------

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function svgEl(tag, attributes) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    e.setAttribute(name, String(value));
  }
  return e;
}

function badge(text, kind) {
  return el("span", text, "badge " + kind);
}

const RESOLUTION_KIND = {bound: "ok", pending: "warn", neg: "bad", failed: "bad"};
const STATE_KIND = {live: "ok", probing: "warn", draining: "warn", ejected: "bad"};

// -- numbers ------------------------------------------------------------------

// The q-quantile of a latency histogram, as Prometheus' histogram_quantile:
// counts are cumulative, one per bound (seconds) and a last one for +Inf.
// The rank falls in the first bucket whose count reaches it, and the value
// is interpolated linearly between that bucket's lower bound (the previous
// bound, or 0) and its upper bound. A rank in the +Inf bucket gives the
// highest bound. No requests: null.
function quantile(q, bounds, counts) {
  const total = counts[counts.length - 1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let i = 0;
  while (i < counts.length - 1 && counts[i] < rank) i++;
  if (i >= bounds.length) return bounds[bounds.length - 1];
  const lower = i === 0 ? 0 : bounds[i - 1];
  const below = i === 0 ? 0 : counts[i - 1];
  const inside = counts[i] - below;
  if (!(inside > 0)) return bounds[i];
  return lower + (bounds[i] - lower) * (rank - below) / inside;
}

function isNumber(v) {
  return typeof v === "number" && isFinite(v);
}

function fmtRate(r, unit) {
  if (!isNumber(r)) return NONE;
  if (r === 0) return "0" + unit;
  if (r < 0.1) return r.toFixed(2) + unit;
  if (r < 10) return r.toFixed(1) + unit;
  if (r < 1000) return Math.round(r) + unit;
  return (r / 1000).toFixed(1) + "k" + unit;
}

function fmtPercent(x) {
  if (!isNumber(x)) return NONE;
  const p = Math.floor(x * 10000) / 100;
  return (p >= 99 && p < 100 ? p.toFixed(2) : p.toFixed(p === 100 ? 0 : 1)) + " %";
}

function fmtSeconds(s) {
  if (!isNumber(s)) return NONE;
  const ms = s * 1000;
  if (ms < 10) return ms.toFixed(2) + " ms";
  if (ms < 100) return ms.toFixed(1) + " ms";
  if (ms < 1000) return Math.round(ms) + " ms";
  return s.toFixed(2) + " s";
}

function fmtCount(n) {
  return isNumber(n) ? n.toLocaleString("en-US") : NONE;
}

function fmtFixed(v, digits) {
  return isNumber(v) ? v.toFixed(digits) : NONE;
}

// -- history ------------------------------------------------------------------

// JSON.stringify([router, boundName]) → samples, oldest first:
// {t: the proxy's clock, n: requests, done: answered, bad: failed,
//  bounds, buckets: cumulative latency counts (HTTP only)}.
const history = new Map();

function remember(key, sample, seen) {
  seen.add(key);
  let samples = history.get(key) || [];
  const last = samples[samples.length - 1];
  if (last && (sample.n < last.n || sample.done < last.done)) {
    samples = [];  // the counters restarted (a new process, an endpoint gone)
  } else if (last && sample.t <= last.t) {
    return samples;
  }
  samples.push(sample);
  // Keep one sample older than the history, so its first interval is whole.
  while (samples.length > 2 && samples[1].t <= sample.t - HISTORY_S) samples.shift();
  history.set(key, samples);
  return samples;
}

function forget(seen) {
  for (const key of Array.from(history.keys())) {
    if (!seen.has(key)) history.delete(key);
  }
}

// Rate, success rate and percentiles between two samples.
function between(a, b) {
  const dt = b.t - a.t;
  const requests = b.n - a.n;
  const answered = b.done - a.done;
  const result = {
    t: b.t,
    rate: dt > 0 ? requests / dt : null,
    success: answered > 0 ? 1 - (b.bad - a.bad) / answered : null,
    p50: null,
    p99: null,
  };
  if (a.buckets && b.buckets && a.buckets.length === b.buckets.length) {
    const counts = b.buckets.map((count, i) => count - a.buckets[i]);
    result.p50 = quantile(0.5, b.bounds, counts);
    result.p99 = quantile(0.99, b.bounds, counts);
  }
  return result;
}

// The numbers shown: over the last WINDOW_S seconds (or the last two polls).
function recent(samples) {
  if (samples.length < 2) return null;
  const last = samples[samples.length - 1];
  let first = samples[samples.length - 2];
  for (let i = samples.length - 3; i >= 0 && last.t - samples[i].t <= WINDOW_S + 0.5; i--) {
    first = samples[i];
  }
  return between(first, last);
}

// One point per interval between polls, for the sparklines.
function series(samples) {
  const points = [];
  for (let i = 1; i < samples.length; i++) points.push(between(samples[i - 1], samples[i]));
  return points;
}

// -- sparklines -----------------------------------------------------------------

// An inline SVG line of points[i][field] up to now (the proxy's clock),
// over the last HISTORY_S seconds, or over what the page has seen when that
// is less (at least MIN_SPAN_S): the line fills its cell from the first
// minute. Gaps where there is no value. The scale runs from 0 (or from
// `floor`, lowered to the smallest value) to the largest value.
const MIN_SPAN_S = 10;

function sparkline(points, field, now, floor, describe) {
  const W = 120, H = 22, PAD = 2.5;
  const svg = svgEl("svg", {
    viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", class: "spark",
  });
  svg.appendChild(svgEl("line", {x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: "base"}));
  const values = points.map(p => p[field]).filter(isNumber);
  if (!values.length) return svg;
  const lo = floor === undefined ? 0 : Math.min(floor, ...values);
  let hi = Math.max(...values);
  if (hi <= lo) hi = lo + (lo === 0 ? 1 : Math.abs(lo) * 0.1);
  const seen = now - points[0].t + POLL_MS / 1000;
  const span = Math.min(HISTORY_S, Math.max(MIN_SPAN_S, seen));
  const x = t => Math.max(0, W * (1 - (now - t) / span));
  const y = v => H - PAD - (H - 2 * PAD) * (v - lo) / (hi - lo);
  let line = "", area = "", start = null, previous = null;
  const closeArea = () => {
    if (start !== null) area += " L" + previous + " " + (H - 0.5) + " L" + start + " " + (H - 0.5) + " Z";
    start = null;
  };
  for (const p of points) {
    const v = p[field];
    if (!isNumber(v)) { closeArea(); continue; }
    const px = x(p.t).toFixed(1), py = y(v).toFixed(1);
    if (start === null) {
      line += " M" + px + " " + py + " l0 0";  // a lone point still shows, as a dot
      area += " M" + px + " " + py;
      start = px;
    } else {
      line += " L" + px + " " + py;
      area += " L" + px + " " + py;
    }
    previous = px;
  }
  closeArea();
  if (floor === undefined) svg.appendChild(svgEl("path", {d: area.trim(), class: "area"}));
  svg.appendChild(svgEl("path", {d: line.trim(), class: "line"}));
  const title = svgEl("title");
  const minutes = Math.round(span / 60);
  title.textContent = "last " + (span < 90 ? Math.round(span) + " s" : minutes + " minutes") +
    ", highest " + describe(Math.max(...values));
  svg.appendChild(title);
  return svg;
}

// -- router sections -------------------------------------------------------------

const HEADERS = {
  http: {
    traffic: ["bound name", "resolution", "requests", "req/s", "success", "p50", "p99"],
    endpoints: ["bound name", "endpoint", "state", "EWMA ms", "pending", "requests", "success"],
  },
  tcp: {
    traffic: ["bound name", "resolution", "connections", "conn/s", "success", "open", "live endpoints"],
    endpoints: ["bound name", "endpoint", "state", "connect ms", "open", "connections", "success"],
  },
};
// The first column holding numbers, right-aligned from there on.
const NUMERIC_FROM = {traffic: 2, endpoints: 3};

function grid(cls) {
  const table = el("table", null, "grid " + cls);
  const cols = el("colgroup");
  for (let i = 0; i < COLUMNS; i++) cols.appendChild(el("col"));
  table.appendChild(cols);
  const head = el("thead");
  const row = el("tr");
  head.appendChild(row);
  table.appendChild(head);
  const body = el("tbody");
  table.appendChild(body);
  return {table: table, head: row, body: body};
}

function setHeaders(row, names, numericFrom) {
  row.replaceChildren(...names.map((name, i) => el("th", name, i >= numericFrom ? "num" : null)));
}

// Router name → its section's elements, made once and updated in place so
// that a reader's selection (in the rules, say) survives the polls.
const sections = new Map();

function section(name) {
  let s = sections.get(name);
  if (s) return s;
  s = {protocol: null, rulesText: null};
  s.root = el("section", null, "card router");
  s.root.dataset.router = name;
  const head = el("div", null, "card-head");
  head.appendChild(el("h2", name));
  s.pill = head.appendChild(el("span", "", "pill"));
  s.listen = head.appendChild(el("code", "", "listen"));
  s.conns = head.appendChild(el("span", "", "conns"));
  s.root.appendChild(head);

  s.rulesBox = el("div", null, "rules");
  const rulesHead = el("h3", "Rules ");
  s.version = rulesHead.appendChild(el("span", "", "version"));
  s.rulesBox.appendChild(rulesHead);
  s.rules = s.rulesBox.appendChild(el("pre", "", "rules-text"));
  s.root.appendChild(s.rulesBox);

  s.destinationBox = el("div", null, "rules");
  s.destinationBox.appendChild(el("h3", "Destination"));
  s.destination = s.destinationBox.appendChild(el("pre", "", "rules-text"));
  s.root.appendChild(s.destinationBox);

  s.root.appendChild(el("h3", "Traffic"));
  s.traffic = grid("traffic");
  s.root.appendChild(s.traffic.table);
  s.root.appendChild(el("h3", "Endpoints"));
  s.endpoints = grid("endpoints");
  s.root.appendChild(s.endpoints.table);
  sections.set(name, s);
  return s;
}

function numberCell(text, cls) {
  const td = el("td", null, "num " + (cls || ""));
  td.appendChild(el("span", text, "val"));
  return td;
}

function metricCell(text, cls, points, field, now, floor, describe) {
  const td = numberCell(text, "metric " + cls);
  td.appendChild(sparkline(points, field, now, floor, describe));
  return td;
}

function nameCell(text) {
  const td = el("td", text, "name");
  td.title = text;
  return td;
}

function resolutionCell(info) {
  const td = el("td", null, "resolution");
  const resolution = info && info.resolution;
  if (resolution) td.appendChild(badge(resolution, RESOLUTION_KIND[resolution] || "warn"));
  if (info && info.panicking) td.appendChild(badge("panic", "bad"));
  return td;
}

function emptyRow(text) {
  const tr = el("tr", null, "empty");
  const td = el("td", text, "muted");
  td.colSpan = COLUMNS;
  tr.appendChild(td);
  return tr;
}

function sum(list, field) {
  return list.reduce((total, item) => total + (isNumber(field(item)) ? field(item) : 0), 0);
}

// A traffic row: the numbers over the last seconds, with sparklines.
function trafficRow(router, name, info, protocol, samples, now) {
  const tr = el("tr");
  tr.dataset.router = router;
  tr.dataset.name = name;
  const resolution = info && info.resolution;
  if (resolution && resolution !== "bound") tr.className = "unresolved";
  tr.appendChild(nameCell(name));
  tr.appendChild(resolutionCell(info));
  const last = samples.length ? samples[samples.length - 1] : null;
  const shown = recent(samples) || {};
  const points = series(samples);
  const perSecond = v => fmtRate(v, "/s");
  tr.appendChild(numberCell(last ? fmtCount(last.n) : "0", "total"));
  tr.appendChild(metricCell(perSecond(shown.rate), "rate", points, "rate", now, undefined,
                            perSecond));
  tr.appendChild(metricCell(fmtPercent(shown.success), "success", points, "success", now, 0.9,
                            fmtPercent));
  if (protocol === "tcp") {
    const endpoints = (info && info.endpoints) || [];
    tr.appendChild(numberCell(fmtCount(sum(endpoints, ep => ep.pending)), "open"));
    const live = endpoints.filter(ep => ep.state === "live").length;
    tr.appendChild(numberCell(live + " / " + endpoints.length, "live"));
  } else {
    tr.appendChild(metricCell(fmtSeconds(shown.p50), "p50", points, "p50", now, undefined, fmtSeconds));
    tr.appendChild(metricCell(fmtSeconds(shown.p99), "p99", points, "p99", now, undefined, fmtSeconds));
  }
  return tr;
}

function endpointRows(name, info) {
  const endpoints = (info && info.endpoints) || [];
  if (!endpoints.length) {
    const tr = el("tr", null, "unresolved");
    tr.appendChild(nameCell(name));
    tr.appendChild(el("td", "no endpoints", "muted"));
    tr.appendChild(resolutionCell(info));
    for (let i = 3; i < COLUMNS; i++) tr.appendChild(el("td"));
    return [tr];
  }
  return endpoints.map((ep, i) => {
    const tr = el("tr");
    const first = nameCell(i === 0 ? name : "");
    if (i > 0) first.className = "name same";
    tr.appendChild(first);
    const address = el("td", ep.address || "", "address");
    address.title = ep.address || "";
    tr.appendChild(address);
    const state = el("td", null, "state");
    if (ep.state) {
      state.appendChild(badge(ep.state, STATE_KIND[ep.state] || "warn"));
      if (ep.state === "ejected" && isNumber(ep.ejectedUntil)) {
        state.title = "probed again at " + new Date(ep.ejectedUntil * 1000).toLocaleTimeString();
      }
    }
    tr.appendChild(state);
    tr.appendChild(numberCell(fmtFixed(ep.ewmaMs, 2), "ewma"));
    tr.appendChild(numberCell(fmtCount(ep.pending), "pending"));
    tr.appendChild(numberCell(fmtCount(ep.requests), "requests"));
    tr.appendChild(numberCell(fmtPercent(ep.successRate), "success"));
    return tr;
  });
}

function renderRouter(name, state, stats, now, seen) {
  const s = section(name);
  const protocol = state.protocol === "tcp" ? "tcp" : "http";
  if (s.protocol !== protocol) {
    s.protocol = protocol;
    setHeaders(s.traffic.head, HEADERS[protocol].traffic, NUMERIC_FROM.traffic);
    setHeaders(s.endpoints.head, HEADERS[protocol].endpoints, NUMERIC_FROM.endpoints);
    s.destinationBox.hidden = protocol !== "tcp";
  }
  s.pill.textContent = protocol;
  s.listen.textContent = state.listen || "";
  s.listen.title = "listens on " + (state.listen || "?");
  if (protocol === "tcp") {
    // A fixed destination, or the server name of each ClientHello.
    const id = state.identifier;
    s.destination.textContent = state.destination ||
      (id ? "by SNI: " + id.prefix + "/<server name>" +
            (id["default"] ? " (none: " + id["default"] + ")" : "") : "");
  }

  const conns = (stats && stats.connections) || state.connections;
  if (conns) {
    const samples = remember(JSON.stringify([name]), {t: now, n: conns.opened, done: 0, bad: 0}, seen);
    const opened = (recent(samples) || {}).rate;
    s.conns.textContent = fmtCount(conns.opened - conns.closed) + " open \u00b7 " +
      fmtRate(opened, " new/s");
  }

  const boundStates = state.boundNames || {};
  const boundStats = (stats && stats.boundNames) || {};
  const names = Array.from(new Set(Object.keys(boundStates).concat(Object.keys(boundStats)))).sort();
  const traffic = [], endpoints = [];
  for (const bound of names) {
    const info = boundStates[bound];
    let sample;
    if (protocol === "tcp") {
      const eps = (info && info.endpoints) || [];
      sample = {t: now, n: sum(eps, ep => ep.requests),
                done: sum(eps, ep => ep.successes) + sum(eps, ep => ep.failures),
                bad: sum(eps, ep => ep.failures)};
    } else {
      const counters = boundStats[bound];
      const responses = (counters && counters.responses) || {};
      const duration = (counters && counters.duration) || {};
      sample = {t: now, n: counters ? counters.requests : 0,
                done: Object.values(responses).reduce((a, b) => a + b, 0),
                bad: responses["5xx"] || 0,
                bounds: duration.bounds, buckets: duration.buckets};
    }
    const samples = remember(JSON.stringify([name, bound]), sample, seen);
    traffic.push(trafficRow(name, bound, info, protocol, samples, now));
    endpoints.push(...endpointRows(bound, info));
  }
  s.traffic.body.replaceChildren(...(traffic.length ? traffic : [emptyRow("no requests yet")]));
  s.endpoints.body.replaceChildren(...(endpoints.length ? endpoints : [emptyRow("no bound names yet")]));
  return s;
}

async function loadRules(name) {
  const s = sections.get(name);
  try {
    const response = await get("admin/routers/" + encodeURIComponent(name) + "/rules");
    if (!response.ok) throw new Error("answered " + response.status);
    const text = await response.text();
    if (text !== s.rulesText) {
      s.rulesText = text;
      s.rules.textContent = text;
    }
    const etag = response.headers.get("ETag") || "";
    s.version.textContent = "version " + etag.replace(/"/g, "");
    s.version.className = "version";
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
    s.version.textContent = "cannot read the rules: " + e.message;
    s.version.className = "version bad";
  }
}

// -- status and token ------------------------------------------------------------

function show(text, bad) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = bad ? "bad" : "";
}

function askToken() {
  const box = document.getElementById("auth");
  document.getElementById("auth-note").textContent =
    sessionStorage.getItem(TOKEN_KEY) ? "the API refused this token" : "";
  if (box.hidden) {
    box.hidden = false;
    document.getElementById("token").focus();
  }
  show("this admin API needs a token", true);
}

function saveToken() {
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
  document.getElementById("token").value = "";
  document.getElementById("auth").hidden = true;
  show("trying the token\u2026");
  tick();
}

// -- polling -------------------------------------------------------------------

let shownOrder = "";

async function refresh() {
  let state, stats;
  try {
    [state, stats] = await Promise.all([getJSON("admin/state"), getJSON("admin/stats")]);
  } catch (e) {
    if (e instanceof Unauthorized) askToken();
    else show("cannot read the admin API: " + e.message, true);
    return;
  }
  document.getElementById("auth").hidden = true;
  const routers = state.routers || {};
  const statsOf = stats.routers || {};
  const names = Object.keys(routers).sort();
  const seen = new Set();
  names.forEach(n => renderRouter(n, routers[n], statsOf[n], stats.time, seen));
  forget(seen);
  for (const name of Array.from(sections.keys())) {
    if (!(name in routers)) sections.delete(name);
  }
  const order = JSON.stringify(names);
  if (order !== shownOrder) {
    shownOrder = order;
    const box = document.getElementById("routers");
    box.replaceChildren(...names.map(n => sections.get(n).root));
    if (!names.length) box.appendChild(el("p", "no routers", "muted"));
  }
  // Every router has rules and explains (a TCP router's names: its
  // destination, or /svc/<server name>); HTTP routers first, the default.
  const explainable = names.filter(n => routers[n].protocol !== "tcp")
    .concat(names.filter(n => routers[n].protocol === "tcp"));
  routerChoices(explainable);
  try {
    await Promise.all(explainable.map(loadRules));
  } catch (e) {
    askToken();
    return;
  }
  show("updated " + new Date(stats.time * 1000).toLocaleTimeString() +
       " \u00b7 every " + POLL_MS / 1000 + " s");
}

let timer = null, running = false, again = false;

// One refresh at a time, the next one POLL_MS after the end of this one.
async function tick() {
  if (running) {
    again = true;
    return;
  }
  running = true;
  clearTimeout(timer);
  try {
    await refresh();
  } finally {
    running = false;
    timer = setTimeout(tick, again ? 0 : POLL_MS);
    again = false;
  }
}

// -- explain ---------------------------------------------------------------------

// The routers that can explain, the first chosen by default.
function routerChoices(names) {
  const select = document.getElementById("explain-router");
  const current = Array.from(select.options).map(o => o.value);
  if (JSON.stringify(current) === JSON.stringify(names)) return;
  const chosen = select.value;
  select.replaceChildren(...names.map(n => {
    const option = el("option", n);
    option.value = n;
    return option;
  }));
  select.value = names.includes(chosen) ? chosen : (names[0] || "");
}

function stepItem(node) {
  const li = el("li");
  li.appendChild(el("code", node.path === null || node.path === undefined ? "" : node.path));
  if (node.dentry) li.appendChild(el("span", "  by " + node.dentry, "muted"));
  if (node.result !== null && node.result !== undefined && node.result !== node.path) {
    li.appendChild(el("span", "  \u2192 " + node.result));
  }
  if (node.bound && typeof node.bound === "object") {
    li.appendChild(document.createTextNode("  "));
    li.appendChild(badge("bound " + (node.bound.id || ""), "ok"));
  }
  for (const key of ["neg", "fail", "empty", "error"]) {
    if (node[key]) {
      li.appendChild(document.createTextNode("  "));
      li.appendChild(badge(node[key] === true ? key : key + ": " + node[key], "bad"));
    }
  }
  if (node.repeated) li.appendChild(el("span", "  (repeated, see above)", "muted"));
  if (Array.isArray(node.children) && node.children.length) {
    const ul = el("ul");
    node.children.forEach(child => ul.appendChild(stepItem(child)));
    li.appendChild(ul);
  }
  return li;
}

function explainTable(endpoints) {
  const t = grid("explained");
  setHeaders(t.head, ["bound name", "endpoint", "state", "EWMA ms", "pending", "weight", "score"],
             NUMERIC_FROM.endpoints);
  for (const bound of Object.keys(endpoints || {}).sort()) {
    (endpoints[bound] || []).forEach((ep, i) => {
      const tr = el("tr");
      tr.appendChild(nameCell(i === 0 ? bound : ""));
      tr.appendChild(el("td", ep.address || "", "address"));
      const state = el("td");
      if (ep.state) state.appendChild(badge(ep.state, STATE_KIND[ep.state] || "warn"));
      tr.appendChild(state);
      tr.appendChild(numberCell(fmtFixed(ep.ewmaMs, 2)));
      tr.appendChild(numberCell(fmtCount(ep.pending)));
      tr.appendChild(numberCell(fmtFixed(ep.weight, 1)));
      tr.appendChild(numberCell(fmtFixed(ep.score, 3)));
      t.body.appendChild(tr);
    });
  }
  return t.table;
}

async function explain() {
  const router = document.getElementById("explain-router").value;
  const name = document.getElementById("explain-name").value.trim();
  const status = document.getElementById("explain-status");
  const tree = document.getElementById("explain-tree");
  const endpoints = document.getElementById("explain-endpoints");
  const raw = document.getElementById("explain-raw");
  [tree, endpoints, raw].forEach(e => e.replaceChildren());
  status.className = "";
  if (!router || !name) {
    status.textContent = "choose a router and a name";
    return;
  }
  status.textContent = "asking\u2026";
  try {
    const answer = await getJSON("admin/routers/" + encodeURIComponent(router) +
                                 "/explain?name=" + encodeURIComponent(name));
    raw.textContent = JSON.stringify(answer, null, 2);
    if (answer.error) {
      status.textContent = answer.error;
      status.className = "bad";
    } else {
      status.textContent = router + ": " + name + " \u2192 " + (answer.destination || NONE);
    }
    if (answer.delegation) {
      const ul = el("ul", null, "tree");
      ul.appendChild(stepItem(answer.delegation));
      tree.appendChild(ul);
    }
    if (answer.endpoints && Object.keys(answer.endpoints).length) {
      endpoints.appendChild(explainTable(answer.endpoints));
    }
  } catch (e) {
    if (e instanceof Unauthorized) {
      askToken();
      status.textContent = "explain needs the token";
    } else {
      status.textContent = e.message;
    }
    status.className = "bad";
  }
}

// -- start -------------------------------------------------------------------------

document.getElementById("save").addEventListener("click", saveToken);
document.getElementById("token").addEventListener("keydown", e => {
  if (e.key === "Enter") saveToken();
});
document.getElementById("explain-go").addEventListener("click", explain);
document.getElementById("explain-name").addEventListener("keydown", e => {
  if (e.key === "Enter") explain();
});
tick();
