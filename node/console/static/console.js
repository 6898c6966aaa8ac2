// The raftchat operators' console: one page per hash (#/cluster, #/throughput, ...), each
// drawn from the node's own API routes under /api/ (docs/console.md). Plain DOM: every value
// from the server goes in as text (textContent), never as markup.
"use strict";

const PAGES = {};
let timers = [];
let session = null;

// ---- helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

class ApiFailure extends Error {
  constructor(status, msg) {
    super(msg);
    this.status = status;
  }
}

// Every call carries the header that marks it as the console's own (docs/console.md, CSRF).
async function api(method, path, body) {
  const init = { method, headers: { "x-raftchat-console": "1" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  if (resp.status === 401 && path.startsWith("/api/")) {
    showLogin("");
    throw new ApiFailure(401, "logged out");
  }
  let data = text;
  if ((resp.headers.get("content-type") || "").includes("json")) {
    try { data = JSON.parse(text); } catch (e) { data = text; }
  }
  if (!resp.ok) {
    const msg = data && data.msg ? data.msg : text;
    throw new ApiFailure(resp.status, `HTTP ${resp.status}: ${msg}`);
  }
  return data;
}

function query(params) {
  return new URLSearchParams(params).toString();
}

function every(ms, fn) {
  fn();
  timers.push(setInterval(fn, ms));
}

function table(id, columns, rows) {
  return el("table", { id },
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", {}, c)))),
    el("tbody", {}, rows));
}

function errorLine(id) {
  return el("p", { id, class: "error", role: "alert" });
}

function setError(id, e) {
  const node = document.getElementById(id);
  if (node) node.textContent = e ? String(e.message || e) : "";
}

function members() {
  return Object.keys(session.nodes).map(Number).sort((a, b) => a - b);
}

// A confirmation box in the page: the action runs only after "Confirm" is pressed.
function confirmBox(host, text, action) {
  host.replaceChildren(el("div", { class: "confirm", id: "confirm" },
    el("p", { id: "confirm-text" }, text),
    el("button", { id: "confirm-yes", class: "danger", type: "button",
      onclick: () => { host.replaceChildren(); action(); } }, "Confirm"),
    el("button", { id: "confirm-no", type: "button",
      onclick: () => host.replaceChildren() }, "Cancel")));
}

// ---- log-in ----------------------------------------------------------------------------

function showLogin(msg) {
  stopTimers();
  session = null;
  document.getElementById("main").replaceChildren();
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = msg;
  document.getElementById("token").focus();
}

async function login(event) {
  event.preventDefault();
  const token = document.getElementById("token");
  try {
    await api("POST", "/login", { token: token.value });
    token.value = "";
    await start();
  } catch (e) {
    document.getElementById("login-error").textContent = e.message;
  }
}

async function logout() {
  try { await api("POST", "/logout", {}); } finally { showLogin("Logged out."); }
}

async function start() {
  try {
    session = await api("GET", "/api/session");
  } catch (e) {
    if (!(e instanceof ApiFailure && e.status === 401)) showLogin(e.message);
    return;
  }
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("who").textContent = `node ${session.node_id}`;
  render();
}

function stopTimers() {
  timers.forEach(clearInterval);
  timers = [];
}

function render() {
  if (!session) return;
  stopTimers();
  const name = (location.hash.replace(/^#\//, "") || "cluster").split("?")[0];
  const page = PAGES[name] ? name : "cluster";
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("current", a.dataset.page === page);
  }
  const main = document.getElementById("main");
  main.replaceChildren();
  delete main.dataset.loaded;
  main.dataset.page = page;
  PAGES[page](main);
}

// ---- cluster map -----------------------------------------------------------------------

PAGES.cluster = (main) => {
  const nodes = el("div", { id: "nodes-box" });
  const groups = el("div", { id: "groups-box" });
  const stamp = el("p", { id: "cluster-stamp", class: "note" });
  main.append(el("h1", {}, "Cluster"), stamp, errorLine("cluster-error"),
    el("h2", {}, "Nodes"), nodes, el("h2", {}, "Slot groups"), groups,
    el("p", { class: "note" }, "Lag: the leader's commit index less the entries each follower " +
      "has applied. Commit ms: p50/p99 of the leader's recent propose-to-durable times."));
  every(5000, async () => {
    try {
      const o = await api("GET", "/api/overview");
      stamp.textContent = `Cluster map version ${o.placement_version}, seen from node ` +
        `${o.node_id} at ${new Date().toLocaleTimeString()}.`;
      nodes.replaceChildren(table("nodes", ["node", "address", "zone", "health", "leads groups",
        "draining", "detail"], o.nodes.map((n) => el("tr", { "data-node": n.node_id },
        el("td", { class: "num" }, n.node_id), el("td", {}, n.address), el("td", {}, n.zone),
        el("td", { class: `health-${n.health}` }, n.health),
        el("td", { class: "leads" }, n.leads.map((g) => (g === 0 ? "ctrl" : g)).join(", ")),
        el("td", {}, n.draining ? "yes" : ""), el("td", {}, n.detail)))));
      groups.replaceChildren(table("groups", o.group_columns, o.groups.map((row) =>
        el("tr", { "data-group": row[0] }, row.map((cell) => el("td", {}, cell))))));
      main.dataset.loaded = "1";
      setError("cluster-error", null);
    } catch (e) {
      setError("cluster-error", e);
    }
  });
};

// ---- throughput and latency ------------------------------------------------------------

// Prometheus text: the sum of every sample of `name` (all label sets), per node.
function metricSum(text, name) {
  let total = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== " " && rest[0] !== "{") continue;
    const value = Number(line.slice(line.lastIndexOf(" ") + 1));
    if (Number.isFinite(value)) total += value;
  }
  return total;
}

const SERIES = [
  { id: "sends", title: "Sends per second", unit: "/s",
    value: (d, dt) => d.sends / dt },
  { id: "deliveries", title: "Deliveries per second", unit: "/s",
    value: (d, dt) => d.deliveries / dt },
  { id: "sendack", title: "SENDACK latency, mean (ms)", unit: " ms",
    value: (d) => (d.ackCount > 0 ? (d.ackSum / d.ackCount) * 1000 : 0) },
  { id: "commit", title: "Commit latency, mean (ms)", unit: " ms",
    value: (d) => (d.commitCount > 0 ? (d.commitSum / d.commitCount) * 1000 : 0) },
];
const KEEP = 60;

function chart(points) {
  const w = 270, h = 110, pad = 28;
  const peak = Math.max(0, ...points);
  const max = peak > 0 ? peak : 1;
  const root = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img" });
  root.append(svg("line", { class: "axis", x1: pad, y1: h - 14, x2: w, y2: h - 14 }));
  root.append(svg("line", { class: "axis", x1: pad, y1: 4, x2: pad, y2: h - 14 }));
  const top = svg("text", { x: 0, y: 12 });
  top.textContent = max >= 100 ? max.toFixed(0) : String(Number(max.toPrecision(2)));
  const zero = svg("text", { x: 0, y: h - 14 });
  zero.textContent = "0";
  root.append(top, zero);
  if (points.length > 1) {
    const step = (w - pad) / (KEEP - 1);
    const xy = points.map((p, i) =>
      `${(pad + (KEEP - points.length + i) * step).toFixed(1)},` +
      `${(h - 14 - (p / max) * (h - 22)).toFixed(1)}`);
    root.append(svg("polyline", { class: "line", points: xy.join(" ") }));
  }
  return root;
}

PAGES.throughput = (main) => {
  const boxes = {};
  const history = Object.fromEntries(SERIES.map((s) => [s.id, []]));
  const charts = el("div", { class: "charts" });
  for (const s of SERIES) {
    boxes[s.id] = el("div", { class: "chart", id: `chart-${s.id}` },
      el("h2", {}, s.title), el("span", { class: "value", id: `rate-${s.id}` }, "…"),
      el("div", { class: "plot" }));
    charts.append(boxes[s.id]);
  }
  const totals = el("div", { id: "totals-box" });
  main.append(el("h1", {}, "Throughput and latency"),
    el("p", { class: "note" }, "Every member's /metrics, sampled every 3 s; rates over each " +
      "interval, summed over the nodes. The last three minutes."),
    errorLine("throughput-error"), charts, el("h2", {}, "Since each node started"), totals);
  let last = null;
  every(3000, async () => {
    try {
      const ids = members();
      // A member that does not answer is left out of the sums (and says why in the table).
      const texts = await Promise.all(ids.map((n) => api("GET", `/api/metrics?node=${n}`)
        .catch((e) => ({ error: e.message }))));
      const now = performance.now();
      const per = {};
      const rows = [];
      texts.forEach((text, i) => {
        if (typeof text !== "string") {
          rows.push(el("tr", { "data-node": ids[i] }, el("td", { class: "num" }, ids[i]),
            el("td", { class: "error", colspan: 3 }, text.error)));
          return;
        }
        const s = {
          sends: metricSum(text, "raftchat_sends_total"),
          deliveries: metricSum(text, "raftchat_deliveries_total"),
          ackSum: metricSum(text, "raftchat_sendack_latency_seconds_sum"),
          ackCount: metricSum(text, "raftchat_sendack_latency_seconds_count"),
          commitSum: metricSum(text, "raftchat_commit_latency_seconds_sum"),
          commitCount: metricSum(text, "raftchat_commit_latency_seconds_count"),
        };
        per[ids[i]] = s;
        rows.push(el("tr", { "data-node": ids[i] }, el("td", { class: "num" }, ids[i]),
          el("td", { class: "num sends" }, s.sends),
          el("td", { class: "num deliveries" }, s.deliveries),
          el("td", { class: "num" }, metricSum(text, "raftchat_connections"))));
      });
      totals.replaceChildren(table("totals", ["node", "sends", "deliveries", "connections"],
        rows));
      if (last !== null) {
        const dt = Math.max((now - last.at) / 1000, 1e-3);
        // Each node's counters since the last sample, for the nodes that answered both times
        // (a restarted node's counters start again from 0: its drop counts as nothing).
        const delta = { sends: 0, deliveries: 0, ackSum: 0, ackCount: 0, commitSum: 0,
          commitCount: 0 };
        for (const [node, s] of Object.entries(per)) {
          const before = last.per[node];
          if (!before) continue;
          for (const k of Object.keys(delta)) delta[k] += Math.max(s[k] - before[k], 0);
        }
        for (const s of SERIES) {
          const points = history[s.id];
          points.push(s.value(delta, dt));
          if (points.length > KEEP) points.shift();
          const v = points[points.length - 1];
          document.getElementById(`rate-${s.id}`).textContent =
            `${v >= 100 ? v.toFixed(0) : v.toFixed(2)}${s.unit}`;
          boxes[s.id].querySelector(".plot").replaceChildren(chart(points));
        }
      }
      last = { at: now, per };
      main.dataset.loaded = "1";
      setError("throughput-error", null);
    } catch (e) {
      setError("throughput-error", e);
    }
  });
};

// ---- connections -----------------------------------------------------------------------

PAGES.connections = (main) => {
  const box = el("div", { id: "connections-box" });
  const summary = el("p", { id: "connections-summary" });
  main.append(el("h1", {}, "Connections"),
    el("p", { class: "note" }, "Logged-in client connections of every node (its /connz), " +
      "100 per node at most, most recent first."),
    errorLine("connections-error"), summary, box);
  every(5000, async () => {
    try {
      const ids = members();
      const answers = await Promise.all(ids.map((n) =>
        api("GET", `/api/connz?${query({ node: n, limit: 100, sort: "uptimeDesc" })}`)
          .catch((e) => ({ error: e.message }))));
      const rows = [];
      const counts = [];
      answers.forEach((a, i) => {
        if (a.error) {
          counts.push(`node ${ids[i]}: ${a.error}`);
          return;
        }
        counts.push(`node ${ids[i]}: ${a.total}`);
        for (const c of a.connections) {
          rows.push(el("tr", { "data-uid": c.uid, "data-node": ids[i] },
            el("td", { class: "num" }, ids[i]), el("td", { class: "num" }, c.id),
            el("td", { class: "uid" }, c.uid), el("td", {}, c.device),
            el("td", {}, c.transport), el("td", {}, `${c.ip}:${c.port}`),
            el("td", {}, c.uptime), el("td", {}, c.idle),
            el("td", { class: "num" }, c.in_msgs), el("td", { class: "num" }, c.out_msgs),
            el("td", { class: "num" }, c.version)));
        }
      });
      summary.textContent = `Connections per node: ${counts.join("; ")}.`;
      box.replaceChildren(table("connections", ["node", "id", "uid", "device", "transport",
        "address", "uptime", "idle", "in msgs", "out msgs", "version"], rows));
      main.dataset.loaded = "1";
      setError("connections-error", null);
    } catch (e) {
      setError("connections-error", e);
    }
  });
};

// ---- channels and messages -------------------------------------------------------------

const CHANNEL_TYPES = [[2, "group"], [1, "person"], [3, "customer service"], [4, "community"],
  [5, "community topic"], [6, "info"], [7, "data"], [8, "temp"], [9, "live"], [10, "visitors"],
  [11, "agent"], [12, "agent group"]];

function payloadText(b64) {
  try {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (e) {
    return `<${b64.length} base64 characters>`;
  }
}

PAGES.channels = (main) => {
  const form = el("form", { id: "channel-form" },
    el("label", {}, "Channel id", el("input", { id: "channel-id", required: "" })),
    el("label", {}, "Type", el("select", { id: "channel-type" },
      CHANNEL_TYPES.map(([v, name]) => el("option", { value: v }, `${v} ${name}`)))),
    el("label", {}, "Read as uid (a person channel: one of its users)",
      el("input", { id: "channel-login", placeholder: "console" })),
    el("button", { id: "channel-lookup", type: "submit" }, "Look up"));
  const info = el("div", { id: "channel-info" });
  const messages = el("div", { id: "messages-box" });
  const more = el("div", { id: "more-box" });
  main.append(el("h1", {}, "Channels"), form, errorLine("channel-error"), info, messages, more);
  let current = null;
  let rows = [];

  async function page(start) {
    const body = { login_uid: current.login, channel_id: current.id,
      channel_type: current.type, start_message_seq: start, end_message_seq: 0, limit: 50,
      pull_mode: 0 };
    const answer = await api("POST", "/api/channel/messagesync", body);
    const newer = rows;
    rows = answer.messages.slice().reverse().map((m) => el("tr", { "data-seq": m.message_seq },
      el("td", { class: "num" }, m.message_seq), el("td", {}, m.message_idstr),
      el("td", {}, m.from_uid), el("td", {}, new Date(m.timestamp * 1000).toISOString()),
      el("td", {}, m.client_msg_no),
      el("td", {}, el("pre", { class: "payload" }, payloadText(m.payload)))));
    rows = newer.concat(rows);
    messages.replaceChildren(el("h2", {}, "Messages, newest first"),
      table("messages", ["seq", "message id", "from", "time", "client_msg_no", "payload"],
        rows));
    const oldest = answer.messages.length ? answer.messages[0].message_seq : 0;
    more.replaceChildren();
    if (answer.more && oldest > 1) {
      more.append(el("button", { id: "older", type: "button",
        onclick: () => page(oldest - 1).catch((e) => setError("channel-error", e)) },
        "Older messages"));
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    delete main.dataset.loaded;
    setError("channel-error", null);
    info.replaceChildren();
    messages.replaceChildren();
    more.replaceChildren();
    rows = [];
    current = {
      id: document.getElementById("channel-id").value.trim(),
      type: Number(document.getElementById("channel-type").value),
      login: document.getElementById("channel-login").value.trim() || "console",
    };
    try {
      const q = query({ channel_id: current.id, channel_type: current.type });
      let facts;
      try {
        facts = await api("GET", `/api/channel/info?${q}`);
      } catch (e) {
        if (!(e instanceof ApiFailure && e.status === 404)) throw e;
        facts = null;
      }
      const subs = current.type === 1 ? [] : await api("GET", `/api/channel/subscribers?${q}`);
      const head = current.type === 1 ? null
        : await api("GET", `/api/channel/max_message_seq?${q}`);
      const flags = facts ? ["ban", "disband", "send_ban", "allow_stranger", "large"]
        .filter((k) => facts[k]).join(", ") || "none" : "no stored channel info";
      info.append(table("channel-facts", ["channel", "type", "flags", "subscribers",
        "last seq"], [el("tr", {}, el("td", {}, current.id), el("td", {}, current.type),
        el("td", {}, flags), el("td", { id: "subscribers" }, subs.join(", ")),
        el("td", { class: "num", id: "head-seq" }, head ? head.message_seq : "-"))]));
      await page(0);
      main.dataset.loaded = "1";
    } catch (e) {
      setError("channel-error", e);
    }
  });
};

// ---- users -----------------------------------------------------------------------------

const DEVICE_FLAGS = { 0: "App", 1: "Web", 2: "PC" };

PAGES.users = (main) => {
  const form = el("form", { id: "user-form" },
    el("label", {}, "uid", el("input", { id: "user-uid", required: "" })),
    el("button", { id: "user-lookup", type: "submit" }, "Look up"));
  const box = el("div", { id: "user-box" });
  const confirm = el("div", { id: "confirm-box" });
  const result = el("p", { id: "user-result" });
  main.append(el("h1", {}, "Users"), form, errorLine("user-error"), confirm, result, box);

  async function lookUp(uid) {
    delete main.dataset.loaded;
    const online = await api("POST", "/api/user/onlinestatus", [uid]);
    const sessions = await Promise.all(members().map((n) =>
      api("GET", `/api/connz?${query({ node: n, uid, limit: 100 })}`)
        .then((a) => a.connections.map((c) => ({ node: n, ...c })))
        .catch(() => [])));
    const rows = online.map((o) => el("tr", { "data-flag": o.device_flag },
      el("td", {}, DEVICE_FLAGS[o.device_flag] || o.device_flag), el("td", {}, "online"),
      el("td", {}, sessions.flat().filter((c) => c.device_flag === o.device_flag)
        .map((c) => `node ${c.node} (${c.transport} ${c.ip}:${c.port}, up ${c.uptime})`)
        .join("; ")),
      el("td", {}, el("button", { class: "danger kick", type: "button",
        "data-flag": o.device_flag, onclick: () => kick(uid, o.device_flag) }, "Kick"))));
    box.replaceChildren(
      el("p", { id: "user-summary" }, online.length
        ? `${uid}: online on ${online.length} device kind(s).` : `${uid}: not online.`),
      rows.length ? table("devices", ["device", "status", "sessions", ""], rows) : "");
    main.dataset.loaded = "1";
  }

  function kick(uid, flag) {
    confirmBox(confirm, `Kick ${uid}'s ${DEVICE_FLAGS[flag]} devices? Their sessions are ` +
      "closed and their device token is cleared (/user/device_quit): they log in again only " +
      "with a new token.", async () => {
      try {
        await api("POST", "/api/user/device_quit", { uid, device_flag: flag });
        result.textContent = `Kicked ${uid}'s ${DEVICE_FLAGS[flag]} devices.`;
        await lookUp(uid);
      } catch (e) {
        setError("user-error", e);
      }
    });
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setError("user-error", null);
    result.textContent = "";
    try {
      await lookUp(document.getElementById("user-uid").value.trim());
    } catch (e) {
      setError("user-error", e);
    }
  });
};

// ---- cluster actions -------------------------------------------------------------------

PAGES.actions = (main) => {
  const confirm = el("div", { id: "confirm-box" });
  const result = el("p", { id: "action-result", role: "status" });

  async function act(path, body, done) {
    setError("action-error", null);
    result.textContent = "";
    try {
      await api("POST", path, body);
      result.textContent = done;
    } catch (e) {
      setError("action-error", e);
    }
  }

  const rows = members().map((n) => el("tr", { "data-node": n },
    el("td", { class: "num" }, n), el("td", {}, session.nodes[n]),
    el("td", {}, el("button", { class: "danger drain", type: "button", onclick: () =>
      confirmBox(confirm, `Drain node ${n}? It stops taking clients, hands its leaderships ` +
        "to other nodes, moves its clients away, and then exits.",
      () => act("/api/cluster/drain", { node_id: n }, `Node ${n} is draining.`)) },
    `Drain node ${n}`)),
    el("td", {}, el("button", { class: "danger leave", type: "button", onclick: () =>
      confirmBox(confirm, `Remove node ${n} from the cluster? Its replicas move to the ` +
        "other nodes, then it leaves.",
      () => act("/api/cluster/leave", { node_id: n }, `Node ${n} is leaving.`)) },
    `Remove node ${n}`))));
  const join = el("form", { id: "join-form" },
    el("label", {}, "node id", el("input", { id: "join-id", type: "number", min: 1,
      max: 1023, required: "" })),
    el("label", {}, "address", el("input", { id: "join-host", required: "" })),
    el("button", { id: "join-button", type: "submit" }, "Join"));
  join.addEventListener("submit", (event) => {
    event.preventDefault();
    const nodeId = Number(document.getElementById("join-id").value);
    const host = document.getElementById("join-host").value.trim();
    confirmBox(confirm, `Ask the cluster to admit node ${nodeId} at ${host}?`,
      () => act("/api/cluster/join", { node_id: nodeId, host }, "Joined."));
  });
  main.append(el("h1", {}, "Cluster actions"),
    el("p", { class: "note" }, "Every action asks for confirmation first."),
    confirm, errorLine("action-error"), result,
    el("h2", {}, "Members"), table("members", ["node", "address", "", ""], rows),
    el("h2", {}, "Join"),
    el("p", { class: "note" }, "A node joins by itself, started with cluster.join and the " +
      "cluster password; the cluster answers what to do."), join);
  main.dataset.loaded = "1";
};

// ---- start -----------------------------------------------------------------------------

window.addEventListener("hashchange", render);
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login-form").addEventListener("submit", login);
  document.getElementById("logout").addEventListener("click", logout);
  start();
});
