// The cmq web console: plain JavaScript over the JSON API (docs/HTTP_API.md).
// Pages are rendered with DOM calls (never innerHTML with broker data), every
// fetch has a timeout, and every broker error is shown in the error bar.
"use strict";

const API = "/api/v1/";
const FETCH_TIMEOUT_MS = 10000;
const COLORS = ["#2f6fed", "#e8710a", "#2e7d32", "#9334e6", "#c62828", "#00838f", "#6d4c41", "#ad1457"];

const state = { session: null, timer: null, page: null, sort: { key: "queueName", dir: 1 }, filter: "" };

// ---- DOM helpers ----------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (sel) => document.querySelector(sel);

function setMain(...nodes) {
  const main = $("#main");
  main.replaceChildren(...nodes);
}

function showError(msg) {
  $("#error-text").textContent = msg;
  $("#error").hidden = false;
}

function clearError() {
  $("#error").hidden = true;
}

function fmt(n, digits) {
  if (n === undefined || n === null) return "–";
  if (typeof n !== "number") return String(n);
  return digits === undefined ? n.toLocaleString("en-US") : n.toFixed(digits);
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function age(unixSecs) {
  if (!unixSecs) return "–";
  const s = Math.max(0, Math.round(Date.now() / 1000 - unixSecs));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

// ---- API ------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

// One API call: form-encoded parameters, the CSRF token on anything but GET,
// aborted after FETCH_TIMEOUT_MS so that no page hangs on a slow broker.
async function api(method, path, params) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
  const init = { method, credentials: "same-origin", signal: ctl.signal, headers: { "X-Requested-With": "cmq-console" } };
  let url = API + path;
  if (params && method === "GET") {
    url += "?" + new URLSearchParams(params).toString();
  } else if (params) {
    init.body = new URLSearchParams(params).toString();
    init.headers["Content-Type"] = "application/x-www-form-urlencoded";
  }
  if (method !== "GET" && state.session && state.session.csrfToken) {
    init.headers["X-CSRF-Token"] = state.session.csrfToken;
  }
  let resp;
  try {
    resp = await fetch(url, init);
  } catch (e) {
    throw new ApiError(0, ctl.signal.aborted ? "TIMED_OUT" : "NETWORK",
      ctl.signal.aborted ? `no answer within ${FETCH_TIMEOUT_MS / 1000} s` : String(e));
  } finally {
    clearTimeout(timer);
  }
  let body = {};
  try { body = await resp.json(); } catch (_) { /* not JSON: reported below */ }
  if (!resp.ok) {
    const err = body.error || { code: `HTTP_${resp.status}`, message: resp.statusText };
    if (resp.status === 401 && err.code === "SIGN_IN_REQUIRED") {
      state.session = null;
      setTimeout(render, 0);
    }
    throw new ApiError(resp.status, err.code, err.message);
  }
  return body;
}

// Runs an action; shows its error instead of throwing. Returns the answer or null.
async function attempt(fn) {
  try {
    const r = await fn();
    clearError();
    return r;
  } catch (e) {
    showError(e.message);
    return null;
  }
}

// ---- charts (a hand-written canvas line chart) ------------------------------

function chart(title, series) {
  const canvas = h("canvas", { class: "chart", width: 600, height: 200 });
  const legend = h("div", { class: "legend" }, series.map((s, i) => {
    const sw = h("span", { class: "swatch" });
    sw.style.background = s.color || COLORS[i % COLORS.length];
    return h("span", {}, sw, s.label);
  }));
  const card = h("div", { class: "card" }, h("h2", { text: title }), legend, canvas);
  requestAnimationFrame(() => draw(canvas, series));
  return card;
}

function draw(canvas, series) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600;
  const hgt = canvas.clientHeight || 200;
  canvas.width = w * dpr;
  canvas.height = hgt * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  const pad = { l: 48, r: 8, t: 8, b: 20 };
  const pts = series.flatMap((s) => s.points);
  g.clearRect(0, 0, w, hgt);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#6b7385";
  if (!series.some((s) => s.points.length >= 2)) {
    g.fillText("collecting samples…", pad.l, hgt / 2);
    return;
  }
  const t0 = Math.min(...pts.map((p) => p[0]));
  const t1 = Math.max(...pts.map((p) => p[0]));
  const vmax = Math.max(1, ...pts.map((p) => p[1])) * 1.1;
  const x = (t) => pad.l + ((t - t0) / Math.max(1, t1 - t0)) * (w - pad.l - pad.r);
  const y = (v) => hgt - pad.b - (v / vmax) * (hgt - pad.t - pad.b);
  g.strokeStyle = "#dde1e8";
  g.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const v = (vmax * k) / 4;
    g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(w - pad.r, y(v)); g.stroke();
    g.fillText(v >= 100 ? Math.round(v).toString() : v.toFixed(1), 4, y(v) + 4);
  }
  g.fillText(`${Math.round((t1 - t0) / 1000)} s`, w - pad.r - 30, hgt - 4);
  series.forEach((s, i) => {
    g.strokeStyle = s.color || COLORS[i % COLORS.length];
    g.lineWidth = 1.6;
    g.beginPath();
    s.points.forEach((p, k) => (k ? g.lineTo(x(p[0]), y(p[1])) : g.moveTo(x(p[0]), y(p[1]))));
    g.stroke();
  });
}

// ---- session ----------------------------------------------------------------

async function loadSession() {
  try {
    const s = await api("GET", "session");
    state.session = s.signedIn ? s : null;
  } catch (e) {
    state.session = null;
    showError(e.message);
  }
}

function renderHeader() {
  const s = state.session;
  $("#nav").hidden = !s;
  $("#signout").hidden = !s || s.anonymous;
  $("#who").textContent = !s ? "" : s.anonymous ? "anonymous" : `key ${s.key.name || s.key.secretId}`;
  const notice = $("#notice");
  notice.hidden = !(s && s.anonymous);
  notice.textContent = "Anonymous access: this broker has no keys and serves this machine without sign-in, " +
    "with every permission. Create a key (cmq key create) to require sign-in.";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === state.page);
}

function renderSignIn() {
  const node = $("#signin-tpl").content.cloneNode(true);
  setMain(node);
  $("#signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    const s = await attempt(() => api("POST", "session", { secretId: form.get("secretId"), secretKey: form.get("secretKey") }));
    if (s) {
      state.session = s;
      if (!location.hash || location.hash === "#/") location.hash = "#/overview";
      render();
    }
  });
}

async function signOut() {
  await attempt(() => api("DELETE", "session"));
  state.session = null;
  render();
}

// ---- router -----------------------------------------------------------------

const PAGES = {
  overview: pageOverview,
  queues: pageQueues,
  queue: pageQueue,
  deadletters: pageDeadLetters,
  topics: pageTopics,
  topic: pageTopic,
  cluster: pageCluster,
};

function render() {
  clearInterval(state.timer);
  state.timer = null;
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  state.page = PAGES[name] ? name : "overview";
  renderHeader();
  if (!state.session) return renderSignIn();
  PAGES[state.page](...rest.map(decodeURIComponent));
}

// Calls `fn` now and every `ms` while the page is shown.
function every(ms, fn) {
  fn();
  state.timer = setInterval(fn, ms);
}

// ---- overview ---------------------------------------------------------------

function pageOverview() {
  const body = h("div", { id: "overview" });
  setMain(h("h1", { text: "Overview" }), body);
  every(2000, async () => {
    const o = await attempt(() => api("GET", "overview"));
    if (!o) return;
    const hist = o.history;
    const last = hist[hist.length - 1] || { inPerSec: 0, outPerSec: 0, diskBytes: 0, shards: [] };
    const health = h("span", { class: `pill ${o.health === "ok" ? "ok" : "bad"}`, id: "health", text: o.health });
    const stats = h("div", { class: "grid" },
      stat("Health", health), stat("Shards", o.shards), stat("Messages in /s", fmt(last.inPerSec, 1)),
      stat("Messages out /s", fmt(last.outPerSec, 1)), stat("Disk (logs)", bytes(last.diskBytes)),
      stat("Connections", last.shards.reduce((a, s) => a + s.connections, 0)));
    const rates = chart("Messages per second", [
      { label: "in", points: hist.map((p) => [p.t, p.inPerSec]) },
      { label: "out", points: hist.map((p) => [p.t, p.outPerSec]) },
    ]);
    const shardIds = last.shards.map((s) => s.shard);
    const load = chart("Shard loop turns per second", shardIds.map((id) => ({
      label: `shard ${id}`,
      points: hist.map((p) => [p.t, (p.shards.find((s) => s.shard === id) || { turnsPerSec: 0 }).turnsPerSec]),
    })));
    const table = h("table", {}, h("thead", {}, h("tr", {}, h("th", { text: "Shard" }),
      h("th", { class: "num", text: "Turns /s" }), h("th", { class: "num", text: "Inbox" }),
      h("th", { class: "num", text: "Connections" }))),
    h("tbody", {}, last.shards.map((s) => h("tr", {}, h("td", { text: s.shard }),
      h("td", { class: "num", text: fmt(s.turnsPerSec, 1) }), h("td", { class: "num", text: s.inbox }),
      h("td", { class: "num", text: s.connections })))));
    body.replaceChildren(stats, h("div", { class: "charts" }, rates, load), h("h2", { text: "Shards" }), table,
      h("p", { class: "muted", text: `History: the last ${hist.length} samples, one every ${o.sampleEveryMs / 1000} s, kept by the broker.` }));
  });
}

function stat(label, value) {
  return h("div", { class: "stat" }, h("div", { class: "label", text: label }),
    h("div", { class: "value" }, value instanceof Node ? value : String(value)));
}

// ---- queues -----------------------------------------------------------------

const QUEUE_COLUMNS = [
  ["queueName", "Queue"], ["activeMsgNum", "Ready"], ["inactiveMsgNum", "In flight"], ["delayMsgNum", "Delayed"],
  ["minMsgTime", "Oldest"], ["inPerSec", "In /s"], ["outPerSec", "Out /s"], ["flushPolicy", "Flush"],
];

function pageQueues() {
  const tbody = h("tbody", { id: "queue-rows" });
  const head = h("tr", {}, QUEUE_COLUMNS.map(([key, label]) => h("th", {
    class: `sortable ${key === "queueName" || key === "flushPolicy" ? "" : "num"}`, "data-key": key, text: label,
    onclick: () => { state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 }; refresh(); },
  })), h("th", { text: "" }));
  const filter = h("input", { id: "queue-filter", placeholder: "filter by name", value: state.filter,
    oninput: (e) => { state.filter = e.target.value; refresh(); } });
  const create = h("form", { class: "inline card", id: "create-queue" },
    h("label", {}, "Name", h("input", { name: "queueName", id: "new-queue-name", required: true })),
    h("label", {}, "Visibility timeout (s)", h("input", { name: "visibilityTimeout", type: "number", min: 0 })),
    h("label", {}, "Dead-letter queue", h("input", { name: "deadLetterQueueName" })),
    h("label", {}, "Max receive count", h("input", { name: "maxReceiveCount", type: "number", min: 0 })),
    h("label", {}, "Flush policy", flushSelect("new-queue-flush", "")),
    h("button", { type: "submit", id: "create-queue-submit", text: "Create queue" }));
  create.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const done = await attempt(() => api("POST", "queues", formParams(create)));
    if (done) { create.reset(); refresh(); }
  });
  setMain(h("h1", { text: "Queues" }), create, h("div", { class: "toolbar" }, filter,
    h("span", { class: "muted", id: "queue-count" })), h("table", { id: "queues" }, h("thead", {}, head), tbody));
  let rows = [];
  async function load() {
    const r = await attempt(() => api("GET", "queues", state.filter ? { search: state.filter } : undefined));
    if (!r) return;
    rows = r.queues;
    $("#queue-count").textContent = `${r.total} queue${r.total === 1 ? "" : "s"}${r.total > rows.length ? `, first ${rows.length} shown` : ""}`;
    refreshRows();
  }
  function refreshRows() {
    const { key, dir } = state.sort;
    const sorted = [...rows].sort((a, b) => (a[key] > b[key] ? dir : a[key] < b[key] ? -dir : 0));
    for (const th of head.querySelectorAll("th[data-key]")) {
      th.classList.toggle("sorted-asc", th.dataset.key === key && dir === 1);
      th.classList.toggle("sorted-desc", th.dataset.key === key && dir === -1);
    }
    tbody.replaceChildren(...sorted.map((q) => h("tr", { "data-queue": q.queueName },
      h("td", {}, h("a", { href: `#/queue/${encodeURIComponent(q.queueName)}`, text: q.queueName })),
      h("td", { class: "num", text: fmt(q.activeMsgNum) }), h("td", { class: "num", text: fmt(q.inactiveMsgNum) }),
      h("td", { class: "num", text: fmt(q.delayMsgNum) }), h("td", { class: "num", text: age(q.minMsgTime) }),
      h("td", { class: "num", text: fmt(q.inPerSec, 1) }), h("td", { class: "num", text: fmt(q.outPerSec, 1) }),
      h("td", { class: "flush", text: q.flushPolicy }),
      h("td", { class: "actions" },
        h("button", { class: "danger", text: "Purge", onclick: () => purgeQueue(q.queueName, load) }),
        h("button", { class: "danger", text: "Delete", onclick: () => deleteQueue(q.queueName, load) })))));
  }
  function refresh() { refreshRows(); load(); }
  every(5000, load);
}

// The flush policy choice: `current` selected ("" offers the broker's default).
function flushSelect(id, current) {
  const options = current ? [] : [h("option", { value: "", text: "broker default" })];
  for (const [v, label] of [["sync", "sync: answered once on disk"], ["async", "async: answered once written"]]) {
    options.push(h("option", { value: v, text: label, selected: v === current }));
  }
  return h("select", { name: "flushPolicy", id }, options);
}

function formParams(form) {
  const out = {};
  for (const [k, v] of new FormData(form).entries()) if (String(v).trim() !== "") out[k] = String(v).trim();
  return out;
}

async function purgeQueue(name, after) {
  if (!confirm(`Purge every message of queue ${name}? This cannot be undone.`)) return;
  const r = await attempt(() => api("POST", `queues/${encodeURIComponent(name)}/purge`));
  if (r && after) after();
}

async function deleteQueue(name, after) {
  if (!confirm(`Delete queue ${name} and every message in it?`)) return;
  const r = await attempt(() => api("DELETE", `queues/${encodeURIComponent(name)}`));
  if (r && after) after();
}

const QUEUE_ATTRS = [
  ["visibilityTimeout", "Visibility timeout (s)"], ["pollingWaitSeconds", "Polling wait (s)"],
  ["maxMsgSize", "Max message size (bytes)"], ["msgRetentionSeconds", "Retention (s)"],
  ["rewindSeconds", "Rewind window (s)"], ["maxMsgHeapNum", "Max messages"],
];
const DLQ_ATTRS = [
  ["deadLetterQueueName", "Dead-letter queue"], ["maxReceiveCount", "Max receive count"],
  ["maxTimeToLive", "Max time to live (s)"],
];

function pageQueue(name) {
  const path = `queues/${encodeURIComponent(name)}`;
  const live = h("div", { id: "queue-live" });
  const send = h("form", { class: "inline", id: "send-form" },
    h("label", {}, "Message body", h("textarea", { name: "msgBody", id: "send-body", required: true })),
    h("label", {}, "Delay (s)", h("input", { name: "delaySeconds", type: "number", min: 0 })),
    h("button", { type: "submit", id: "send-submit", text: "Send test message" }));
  send.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await attempt(() => api("POST", `${path}/messages`, formParams(send)));
    if (r) { $("#send-result").textContent = `sent, msgId ${r.msgId}`; send.reset(); load(); }
  });
  const peekRows = h("tbody", { id: "peek-rows" });
  const peek = async () => {
    const r = await attempt(() => api("GET", `${path}/messages`, { max: 20 }));
    if (!r) return;
    peekRows.replaceChildren(...(r.messages.length ? r.messages.map((m) => h("tr", {},
      h("td", { text: m.msgId }), h("td", { text: m.state }), h("td", { class: "num", text: m.dequeueCount }),
      h("td", { text: new Date(m.enqueueTime).toLocaleTimeString() }),
      h("td", { class: "body", text: m.bodyPreview + (m.truncated ? " …" : "") }))) :
      [h("tr", {}, h("td", { colspan: 5, class: "muted", text: "no messages" }))]));
  };
  const attrs = h("form", { class: "card", id: "attrs-form" });
  attrs.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await attempt(() => api("PUT", path, formParams(attrs)));
    if (r) { $("#attrs-result").textContent = "saved"; load(); }
  });
  setMain(h("h1", {}, h("a", { href: "#/queues", text: "Queues" }), " / ", name), live,
    h("div", { class: "card" }, h("h2", { text: "Send a test message" }), send, h("p", { class: "muted", id: "send-result" })),
    h("div", { class: "card" }, h("div", { class: "toolbar" }, h("h2", { text: "Messages" }),
      h("button", { class: "secondary", id: "peek", text: "Peek", onclick: peek }),
      h("button", { class: "danger", id: "purge", text: "Purge", onclick: () => purgeQueue(name, () => { load(); peek(); }) }),
      h("button", { class: "danger", id: "delete", text: "Delete queue", onclick: () => deleteQueue(name, () => { location.hash = "#/queues"; }) })),
    h("table", { id: "peek-table" }, h("thead", {}, h("tr", {}, ["Message id", "State", "Dequeues", "Enqueued", "Body"].map((t) => h("th", { text: t })))), peekRows)),
    h("h2", { text: "Attributes and dead-letter settings" }), attrs);
  let filled = false;
  async function load() {
    const q = await attempt(() => api("GET", path));
    if (!q) return;
    const hist = q.history || [];
    live.replaceChildren(h("div", { class: "grid" },
      stat("Ready", h("span", { id: "q-active", text: fmt(q.activeMsgNum) })),
      stat("In flight", h("span", { id: "q-inflight", text: fmt(q.inactiveMsgNum) })),
      stat("Delayed", fmt(q.delayMsgNum)), stat("Oldest message", age(q.minMsgTime)),
      stat("In /s", fmt(q.inPerSec, 1)), stat("Out /s", fmt(q.outPerSec, 1)),
      stat("Shard", q.shard), stat("Flush policy", q.flushPolicy)),
    h("div", { class: "charts" },
      chart("Depth", [{ label: "ready", points: hist.map((p) => [p.t, p.active]) },
        { label: "in flight", points: hist.map((p) => [p.t, p.inFlight]) },
        { label: "delayed", points: hist.map((p) => [p.t, p.delayed]) }]),
      chart("Messages per second", [{ label: "in", points: hist.map((p) => [p.t, p.inPerSec]) },
        { label: "out", points: hist.map((p) => [p.t, p.outPerSec]) }])));
    if (!filled) {
      filled = true;
      const field = ([k, label]) => h("label", {}, label, h("input", { name: k, value: q[k] ?? "", id: `attr-${k}` }));
      attrs.replaceChildren(h("div", { class: "inline" }, QUEUE_ATTRS.map(field),
        h("label", {}, "Flush policy", flushSelect("attr-flushPolicy", q.flushPolicy))),
        h("h2", { text: "Dead letters" }), h("div", { class: "inline" }, DLQ_ATTRS.map(field)),
        h("div", { class: "toolbar" }, h("button", { type: "submit", id: "attrs-submit", text: "Save" }),
          h("span", { class: "muted", id: "attrs-result" })));
    }
  }
  every(2000, load);
}

// ---- dead letters -----------------------------------------------------------

function pageDeadLetters() {
  const dlqs = h("div", { id: "dlqs" });
  const redrives = h("tbody", { id: "redrive-rows" });
  setMain(h("h1", { text: "Dead letters" }), dlqs, h("h2", { text: "Redrives" }),
    h("table", { id: "redrives" }, h("thead", {}, h("tr", {}, ["Id", "Dead-letter queue", "To", "Rate /s", "State", "Progress", ""].map((t) => h("th", { text: t })))), redrives));
  let shown = "";
  async function load() {
    const d = await attempt(() => api("GET", "deadletters"));
    if (!d) return;
    // The forms are rebuilt only when the set of queues changes, not while someone types.
    const key = JSON.stringify(d.deadLetterQueues.map((q) => [q.queueName, q.sources]));
    if (key !== shown) {
      shown = key;
      dlqs.replaceChildren(...(d.deadLetterQueues.length ? [] : [h("p", { class: "muted", text: "No queue has a dead-letter queue." })]),
        ...d.deadLetterQueues.map(dlqCard));
    }
    for (const q of d.deadLetterQueues) {
      const count = document.querySelector(`[data-dlq-count="${CSS.escape(q.queueName)}"]`);
      if (count) count.textContent = fmt(q.activeMsgNum);
    }
    redrives.replaceChildren(...d.redrives.map((r) => {
      const total = r.moved + r.remaining + r.failed;
      return h("tr", { "data-redrive": r.id, "data-state": r.state },
        h("td", { text: r.id }), h("td", { text: r.deadLetterQueue }), h("td", { text: r.to || "(sources)" }),
        h("td", { class: "num", text: r.ratePerSecond || "unlimited" }), h("td", { class: "redrive-state", text: r.state }),
        h("td", {}, h("progress", { max: Math.max(1, total), value: r.moved }), ` ${r.moved}/${total}`),
        h("td", {}, r.state === "running" ? h("button", { class: "danger", text: "Cancel", "data-cancel": r.id,
          onclick: async () => { if (await attempt(() => api("DELETE", `redrives/${r.id}`))) load(); } }) : ""));
    }));
  }
  function dlqCard(q) {
    const form = h("form", { class: "inline", "data-redrive-form": q.queueName },
      h("label", {}, "Rate (messages/s, 0 = unlimited)", h("input", { name: "ratePerSecond", type: "number", min: 0, value: 10 })),
      h("label", {}, "To (empty: back to each source)", h("input", { name: "to" })),
      h("button", { type: "submit", text: "Start redrive" }));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (await attempt(() => api("POST", "redrives", { deadLetterQueue: q.queueName, ...formParams(form) }))) load();
    });
    return h("div", { class: "card" }, h("h2", {}, h("a", { href: `#/queue/${encodeURIComponent(q.queueName)}`, text: q.queueName }),
      " — ", h("span", { "data-dlq-count": q.queueName, text: fmt(q.activeMsgNum) }), " messages"),
    h("p", { class: "muted", text: `Sources: ${q.sources.join(", ")}${q.exists ? "" : " (this queue does not exist)"}` }), form);
  }
  every(1000, load);
}

// ---- topics -----------------------------------------------------------------

function pageTopics() {
  const rows = h("tbody", { id: "topic-rows" });
  const create = h("form", { class: "inline card", id: "create-topic" },
    h("label", {}, "Name", h("input", { name: "topicName", id: "new-topic-name", required: true })),
    h("label", {}, "Filter", h("select", { name: "filterType" }, h("option", { value: "1", text: "tags" }), h("option", { value: "2", text: "routing keys" }))),
    h("button", { type: "submit", id: "create-topic-submit", text: "Create topic" }));
  create.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (await attempt(() => api("POST", "topics", formParams(create)))) { create.reset(); load(); }
  });
  setMain(h("h1", { text: "Topics" }), create, h("table", { id: "topics" }, h("thead", {}, h("tr", {},
    ["Topic", "Filter", "Subscriptions", "Messages", ""].map((t) => h("th", { text: t })))), rows));
  async function load() {
    const r = await attempt(() => api("GET", "topics"));
    if (!r) return;
    rows.replaceChildren(...r.topics.map((t) => h("tr", { "data-topic": t.topicName },
      h("td", {}, h("a", { href: `#/topic/${encodeURIComponent(t.topicName)}`, text: t.topicName })),
      h("td", { text: t.filterType === 2 ? "routing keys" : "tags" }), h("td", { class: "num", text: t.subscriptionCount }),
      h("td", { class: "num", text: fmt(t.msgCount) }),
      h("td", {}, h("button", { class: "danger", text: "Delete", onclick: async () => {
        if (confirm(`Delete topic ${t.topicName} and its subscriptions?`) &&
          await attempt(() => api("DELETE", `topics/${encodeURIComponent(t.topicName)}`))) load();
      } })))));
  }
  every(5000, load);
}

const list = (s) => String(s || "").split(",").map((x) => x.trim()).filter(Boolean);

function indexed(name, items) {
  const out = {};
  items.forEach((v, i) => { out[`${name}.${i + 1}`] = v; });
  return out;
}

function pageTopic(name) {
  const path = `topics/${encodeURIComponent(name)}`;
  const rows = h("tbody", { id: "sub-rows" });
  const sub = h("form", { class: "inline card", id: "subscribe-form" },
    h("label", {}, "Subscription", h("input", { name: "subscriptionName", id: "sub-name", required: true })),
    h("label", {}, "Protocol", h("select", { name: "protocol", id: "sub-protocol" }, h("option", { value: "queue", text: "queue" }), h("option", { value: "http", text: "HTTP endpoint" }))),
    h("label", {}, "Queue name or URL", h("input", { name: "endpoint", id: "sub-endpoint", required: true })),
    h("label", {}, "Filter tags (comma-separated)", h("input", { name: "tags" })),
    h("label", {}, "Binding keys (comma-separated)", h("input", { name: "keys" })),
    h("button", { type: "submit", id: "subscribe-submit", text: "Subscribe" }));
  sub.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = formParams(sub);
    const params = { subscriptionName: f.subscriptionName, protocol: f.protocol, endpoint: f.endpoint,
      ...indexed("filterTag", list(f.tags)), ...indexed("bindingKey", list(f.keys)) };
    if (await attempt(() => api("POST", `${path}/subscriptions`, params))) { sub.reset(); load(); }
  });
  const pub = h("form", { class: "inline card", id: "publish-form" },
    h("label", {}, "Message body", h("textarea", { name: "msgBody", id: "publish-body", required: true })),
    h("label", {}, "Tags (comma-separated)", h("input", { name: "tags" })),
    h("label", {}, "Routing key", h("input", { name: "routingKey" })),
    h("button", { type: "submit", id: "publish-submit", text: "Publish" }), h("span", { class: "muted", id: "publish-result" }));
  pub.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = formParams(pub);
    const params = { msgBody: f.msgBody, ...indexed("msgTag", list(f.tags)), ...(f.routingKey ? { routingKey: f.routingKey } : {}) };
    const r = await attempt(() => api("POST", `${path}/messages`, params));
    if (r) { $("#publish-result").textContent = `published, msgId ${r.msgId}`; load(); }
  });
  setMain(h("h1", {}, h("a", { href: "#/topics", text: "Topics" }), " / ", name),
    h("h2", { text: "Subscriptions" }), h("table", { id: "subscriptions" }, h("thead", {}, h("tr", {},
      ["Subscription", "Protocol", "Endpoint", "Tags", "Binding keys", "Pending", "Delivered", "Dropped", "Last push failure", ""].map((t) => h("th", { text: t })))), rows),
    h("h2", { text: "Subscribe" }), sub, h("h2", { text: "Publish a message" }), pub);
  async function load() {
    const r = await attempt(() => api("GET", `${path}/subscriptions`));
    if (!r) return;
    rows.replaceChildren(...(r.subscriptions.length ? r.subscriptions.map((s) => h("tr", { "data-sub": s.subscriptionName },
      h("td", { text: s.subscriptionName }), h("td", { text: s.protocol }),
      h("td", {}, s.protocol === "queue" ? h("a", { href: `#/queue/${encodeURIComponent(s.endpoint)}`, text: s.endpoint }) : s.endpoint),
      h("td", { text: (s.filterTag || []).join(", ") }), h("td", { text: (s.bindingKey || []).join(", ") }),
      h("td", { class: "num", text: fmt(s.msgCount) }), h("td", { class: "num sub-delivered", text: fmt(s.delivered) }),
      h("td", { class: "num", text: fmt(s.dropped) }),
      h("td", { class: "failure", text: s.lastFailure ?
        `${s.lastFailure.reason} (${s.lastFailure.count}×, ${new Date(s.lastFailure.atMs).toLocaleTimeString()}${s.lastFailure.rejected ? ", final" : ""})` : "–" }),
      h("td", {}, h("button", { class: "danger", text: "Unsubscribe", onclick: async () => {
        if (confirm(`Unsubscribe ${s.subscriptionName}?`) &&
          await attempt(() => api("DELETE", `${path}/subscriptions/${encodeURIComponent(s.subscriptionName)}`))) load();
      } })))) : [h("tr", {}, h("td", { colspan: 10, class: "muted", text: "no subscriptions" }))]));
  }
  every(3000, load);
}

// ---- cluster ----------------------------------------------------------------

function pageCluster() {
  const body = h("div", { id: "cluster" });
  setMain(h("h1", { text: "Cluster" }), body);
  every(2000, async () => {
    const c = await attempt(() => api("GET", "cluster"));
    if (!c) return;
    if (!c.clustered) {
      body.replaceChildren(h("div", { class: "card" }, h("p", { text: `This broker runs alone (node ${c.nodeId}): no replication.` }),
        h("p", { class: "muted", text: "Start nodes with --peers (make cluster) to see nodes, leaders and replication lag here." })));
      return;
    }
    const nodes = h("table", { id: "cluster-nodes" }, h("thead", {}, h("tr", {}, ["Node", "State", "Client address", "Peer address"].map((t) => h("th", { text: t })))),
      h("tbody", {}, c.nodes.map((n) => h("tr", { "data-node": n.id, "data-up": String(n.up) },
        h("td", { text: `${n.id}${n.self ? " (this node)" : ""}` }),
        h("td", { class: "node-state" }, h("span", { class: `pill ${n.up ? "ok" : "bad"}`, text: n.up ? "up" : "down" }),
          n.up ? "" : h("span", { class: "muted", text: ` ${n.down}` })),
        h("td", { text: n.clientAddr || "–" }), h("td", { text: n.peerAddr })))));
    const shards = h("table", { id: "cluster-shards" }, h("thead", {}, h("tr", {}, ["Shard", "Leader", "Term", "Commit", "Applied", "Last index", "Followers (entries behind)"].map((t) => h("th", { text: t })))),
      h("tbody", {}, c.shards.map((s) => h("tr", { "data-shard": s.shard, "data-leader": s.leader },
        h("td", { text: s.shard }), h("td", { class: "leader", text: s.leader ? `node ${s.leader}` : "none (election)" }),
        h("td", { class: "num", text: s.term }), h("td", { class: "num", text: s.commit }), h("td", { class: "num", text: s.applied }),
        h("td", { class: "num", text: s.lastIndex }),
        h("td", { class: "followers", text: s.followers.length ? s.followers.map((f) => `node ${f.node}: ${f.lag}`).join(", ") :
          s.leader ? `known to the leader (node ${s.leader})` : "–" })))));
    body.replaceChildren(h("h2", { text: "Nodes" }), nodes, h("h2", { text: "Shards" }), shards,
      h("p", { class: "muted", text: `As node ${c.nodeId} sees it: leaders as it knows them, follower lag for the shards it leads, ` +
        "a node up when its client port answers." }));
  });
}

// ---- start ------------------------------------------------------------------

window.addEventListener("hashchange", render);
document.addEventListener("DOMContentLoaded", async () => {
  $("#signout").addEventListener("click", signOut);
  $("#error-close").addEventListener("click", clearError);
  await loadSession();
  render();
});
