#!/usr/bin/env node
// End-to-end scenario driving two instances of the UNMODIFIED official
// WuKongIM JS SDK (npm wukongimjssdk@1.0.4) against a raftchat node.
//
// Setup (once):   cd tests/e2e/jssdk && npm ci
// Run:            cd tests/e2e/jssdk && node --import ./register.mjs scenario.mjs '<json>'
//                 (the JSON may also be given on stdin: ... scenario.mjs - < input.json;
//                 `--import ./register.mjs` is optional, sdk.mjs registers the hooks itself)
//
// Input JSON:
//   {"ws_url": "ws://127.0.0.11:5200",
//    "a": {"uid": "alice", "token": "..."}, "b": {"uid": "bob", "token": "..."},
//    "group_id": "g1",               // optional; without it only the person message is sent
//    "timeout_ms": 15000,            // optional, whole run
//    "person_text": "hello bob",     // optional (alias: "text")
//    "group_text": "hello group",    // optional (falls back to "text", then "hello group")
//    "sdk_log": true,                // optional; SDK console output goes to STDERR (false: dropped)
//    "steps": [...]}                 // optional, see STEPS below
//
// Default flow: load SDK instances "a" and "b" (separate module graphs, hence
// separate singletons), configure config.addr/uid/token (deviceFlag stays 1 =
// WEB, protoVersion 2, encryption always on in this SDK), register listeners,
// connect both and wait for ConnectStatus.Connected (fail fast on ConnectFail /
// ConnectKick), then A sends MessageText(person_text) to Channel(b.uid, 1) and,
// if group_id is given, MessageText(group_text) to Channel(group_id, 2); wait
// for A's SENDACKs (message status listener) and for B to receive both
// messages (matched by client_msg_no); print the result; disconnect both.
//
// Output: exactly ONE JSON line on stdout (everything else goes to stderr):
//   {"ok": true,
//    "a_acks": [{"client_msg_no", "client_seq", "message_id" (string), "message_seq",
//                "reason_code", "channel_id", "channel_type"}, ...],     // in send order
//    "b_received": [{"from_uid", "channel_id", "channel_type", "content", "content_type",
//                    "message_seq", "message_id" (string), "client_msg_no", "timestamp"}, ...],
//    "a_received": [...],            // RECVs seen by A (normally empty)
//    "connect": {"a": {...}, "b": {...}},  // last connect status / reason code per user
//    "errors": [...]}                // anomalies seen on the way (unexpected disconnects,
//                                    // exceptions thrown inside the SDK, ...)
// Exit 0 on success. On timeout/failure: the same JSON object with "ok": false and
// "error": "<reason>", exit 1. Bad input: {"ok": false, "error": ...}, exit 2.
//
// STEPS mode (optional): if "steps" is a list, both users connect first, then
// the steps run in order instead of the default flow:
//   {"op": "send", "from": "a", "channel_id": "bob", "channel_type": 1, "text": "hi",
//    "wait_ack": true, "expect_reason": 1}
//        wait_ack (default true) waits for the SENDACK; expect_reason (default 1,
//        null = accept any) fails the run if the SENDACK reason code differs.
//   {"op": "wait_recv", "who": "b", "steps": [0, 2]}   wait until "who" has received the
//                                                      messages sent by those step indexes
//   {"op": "wait_recv", "who": "b", "count": 3}        ... or at least N messages in total
//   {"op": "wait_acks"}                                wait for every outstanding SENDACK
//   {"op": "sleep", "ms": 500}
//   {"op": "disconnect", "who": "b"}                   SDK disconnect (closes the socket)
//   {"op": "connect", "who": "b"}                      reconnect and wait for Connected
// Steps output adds "acks": {"a": [...], "b": [...]}, "received": {"a": [...], "b": [...]}
// and "steps_done"; "a_acks"/"b_received" are filled as in the default flow.

import { formatWithOptions } from 'node:util';
import { readFileSync } from 'node:fs';
import { loadSdkInstance, SDK_VERSION } from './sdk.mjs';

const out = {
  ok: false,
  sdk_version: SDK_VERSION,
  a_acks: [],
  b_received: [],
  a_received: [],
  connect: {},
  errors: [],
};

// ---------------------------------------------------------------------------
// stdout hygiene: the SDK console.log()s a lot (Chinese debug strings, whole
// WebSocket event objects).  Route every console method to stderr so stdout
// carries only our single JSON line.
const realStdoutWrite = process.stdout.write.bind(process.stdout);
let sdkLogEnabled = true;
// SDK log lines that reveal a protocol problem the SDK otherwise swallows;
// they are copied into out.errors (English gloss first).
const SDK_LOG_ERRORS = [
  ['非法的消息', 'SDK dropped a RECV: msgKey mismatch (not encrypted with this connection key?), no RECVACK sent'],
  ['解码数据异常', 'SDK failed to decode an incoming frame and will reconnect in 3s'],
  ['不支持的协议包', 'SDK received a frame type it cannot decode'],
  ['ping没有响应', 'SDK got no PONG for >3 pings and dropped the connection'],
];
function logToStderr(prefix, args) {
  let line = formatWithOptions({ depth: 1, breakLength: Infinity, colors: false }, ...args);
  if (prefix === '[sdk]' && args[0] === '连接出错！' && args[1] && args[1].message) {
    out.errors.push(`websocket error: ${args[1].message}`);
  }
  if (prefix === '[sdk]' && typeof args[0] === 'string') {
    for (const [needle, gloss] of SDK_LOG_ERRORS) {
      if (args[0].includes(needle)) out.errors.push(`${gloss}: ${line.slice(0, 300)}`);
    }
  }
  if (!sdkLogEnabled && prefix === '[sdk]') return;
  if (line.length > 600) line = line.slice(0, 600) + '...';
  process.stderr.write(`${prefix} ${line}\n`);
}
for (const m of ['log', 'info', 'debug', 'warn', 'trace']) {
  console[m] = (...args) => logToStderr('[sdk]', args);
}
const hlog = (...args) => logToStderr('[harness]', args);

// ---------------------------------------------------------------------------
// JSON helpers: BigNumber (bignumber.js) / BigInt / number ids -> decimal strings.
function idToString(v) {
  if (v === undefined || v === null) return null;
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'string') return v;
  if (typeof v === 'number') return Number.isSafeInteger(v) ? String(v) : v.toFixed(0);
  if (typeof v === 'object' && typeof v.toFixed === 'function') return v.toFixed(); // BigNumber: no exponent
  return String(v);
}
function toNum(v) {
  if (v === undefined || v === null) return null;
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  return Number(idToString(v));
}
function jsonLine(obj) {
  return JSON.stringify(obj, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
}

// ---------------------------------------------------------------------------
let finished = false;
const clients = {};

function emitAndExit(code) {
  if (finished) return;
  finished = true;
  for (const c of Object.values(clients)) {
    try { c.shutdown(); } catch (e) { /* ignore */ }
  }
  for (const [k, c] of Object.entries(clients)) out.connect[k] = c.connectInfo();
  if (!out.ok) {
    // attach whatever was collected so far
    if (clients.a) { out.a_acks = clients.a.acksInSendOrder(); out.a_received = clients.a.received; out.a_sent = clients.a.sent; }
    if (clients.b) out.b_received = clients.b.received;
  }
  realStdoutWrite(jsonLine(out) + '\n', () => process.exit(code));
  // safety net in case the write callback never fires
  setTimeout(() => process.exit(code), 2000).unref();
}
function fail(reason, code = 1) {
  if (finished) return;
  out.ok = false;
  out.error = reason;
  hlog('FAIL:', reason);
  emitAndExit(code);
}

process.on('unhandledRejection', (err) => {
  // e.g. a RECV payload that is not JSON makes the SDK's async onPacket throw.
  out.errors.push(`unhandled rejection: ${err && err.stack ? err.stack.split('\n').slice(0, 3).join(' | ') : String(err)}`);
});
process.on('uncaughtException', (err) => {
  out.errors.push(`uncaught exception: ${err && err.stack ? err.stack.split('\n').slice(0, 3).join(' | ') : String(err)}`);
});

// ---------------------------------------------------------------------------
class Client {
  constructor(key, inst, cfg, wsUrl) {
    this.key = key;
    this.inst = inst;
    this.uid = cfg.uid;
    this.sdk = inst.sdk;
    this.CS = inst.ConnectStatus;
    this.sent = []; // {client_seq, client_msg_no, channel_id, channel_type, text, step}
    this.acks = new Map(); // client_seq -> ack record
    this.ackWaiters = new Map(); // client_seq -> [resolve]
    this.received = []; // RECVs (local echoes of own sends are excluded)
    this.recvWaiters = []; // {pred, resolve}
    this.connectWaiter = null;
    this.everConnected = false;
    this.expectingClose = false;
    this.lastStatus = null;
    this.lastReason = null;

    const config = this.sdk.config;
    config.addr = wsUrl;
    config.uid = cfg.uid;
    config.token = cfg.token;
    if (cfg.device_flag !== undefined) config.deviceFlag = cfg.device_flag; // default 1 (WEB)

    this.sdk.connectManager.addConnectStatusListener((status, reasonCode) => this.onStatus(status, reasonCode));
    this.sdk.chatManager.addMessageListener((message) => this.onMessage(message));
    this.sdk.chatManager.addMessageStatusListener((ack) => this.onAck(ack));
  }

  statusName(s) { return this.CS[s] ?? String(s); }

  connectInfo() {
    return { uid: this.uid, status: this.lastStatus === null ? null : this.statusName(this.lastStatus), reason_code: this.lastReason };
  }

  onStatus(status, reasonCode) {
    this.lastStatus = status;
    this.lastReason = reasonCode ?? null;
    hlog(`${this.key}: connect status ${this.statusName(status)} reason=${reasonCode}`);
    if (status === this.CS.Connected) {
      this.everConnected = true;
      if (this.connectWaiter) { this.connectWaiter.resolve(); this.connectWaiter = null; }
    } else if (status === this.CS.ConnectFail) {
      fail(`${this.key} (${this.uid}): ConnectFail, CONNACK reason_code=${reasonCode}`);
    } else if (status === this.CS.ConnectKick) {
      fail(`${this.key} (${this.uid}): ConnectKick (server sent DISCONNECT), reason_code=${reasonCode}`);
    } else if (status === this.CS.Disconnect && !this.expectingClose && !finished) {
      // socket closed/errored; the SDK retries every 3 s by itself
      out.errors.push(`${this.key}: socket closed ${this.everConnected ? 'after' : 'before'} CONNACK (SDK will reconnect in 3s)`);
    }
  }

  onMessage(message) {
    // ChatManager.send() also notifies message listeners with the local copy of
    // the outgoing message (no messageID yet): skip those echoes.
    if (message.messageID === undefined || message.messageID === null) return;
    const content = message.content || {};
    const rec = {
      from_uid: message.fromUID,
      channel_id: message.channel ? message.channel.channelID : null,
      channel_type: message.channel ? message.channel.channelType : null,
      content: content.text !== undefined ? content.text : (content.contentObj ?? null),
      content_type: message.contentType ?? null,
      message_seq: toNum(message.messageSeq),
      message_id: idToString(message.messageID),
      client_msg_no: message.clientMsgNo,
      timestamp: toNum(message.timestamp),
    };
    hlog(`${this.key}: RECV ${jsonLine(rec)}`);
    this.received.push(rec);
    this.recvWaiters = this.recvWaiters.filter((w) => (w.pred() ? (w.resolve(), false) : true));
  }

  onAck(ack) {
    const clientSeq = toNum(ack.clientSeq);
    const sent = this.sent.find((s) => s.client_seq === clientSeq);
    const rec = {
      client_msg_no: sent ? sent.client_msg_no : null,
      client_seq: clientSeq,
      message_id: idToString(ack.messageID),
      message_seq: toNum(ack.messageSeq),
      reason_code: toNum(ack.reasonCode),
      channel_id: sent ? sent.channel_id : null,
      channel_type: sent ? sent.channel_type : null,
    };
    hlog(`${this.key}: SENDACK ${jsonLine(rec)}`);
    if (!sent) out.errors.push(`${this.key}: SENDACK for unknown client_seq ${clientSeq}`);
    if (this.acks.has(clientSeq)) out.errors.push(`${this.key}: duplicate SENDACK for client_seq ${clientSeq}`);
    this.acks.set(clientSeq, rec);
    for (const r of this.ackWaiters.get(clientSeq) || []) r(rec);
    this.ackWaiters.delete(clientSeq);
  }

  connect() {
    if (this.sdk.connectManager.status === this.CS.Connected) return Promise.resolve();
    this.expectingClose = false;
    const p = new Promise((resolve) => { this.connectWaiter = { resolve }; });
    this.sdk.connect();
    return p;
  }

  disconnect() {
    this.expectingClose = true;
    this.sdk.disconnect();
  }

  async syncConversations(httpUrl, msgCount) {
    const { model } = this.inst.modules;
    this.sdk.config.provider.syncConversationsCallback = async () => {
      const res = await fetch(new URL('/conversation/sync', httpUrl), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ uid: this.uid, version: 0, msg_count: msgCount }),
      });
      if (res.status !== 200) throw new Error(`/conversation/sync answered ${res.status}: ${await res.text()}`);
      return (await res.json()).map((row) => {
        const conv = new model.Conversation();
        conv.channel = new this.inst.Channel(String(row.channel_id), Number(row.channel_type));
        conv.unread = row.unread;
        conv.timestamp = row.timestamp;
        const last = row.recents && row.recents.length ? row.recents[row.recents.length - 1] : null;
        if (last) {
          const m = new this.inst.Message();
          m.messageID = last.message_idstr;
          m.messageSeq = last.message_seq;
          m.fromUID = last.from_uid;
          m.channel = conv.channel;
          m.timestamp = last.timestamp;
          const content = JSON.parse(Buffer.from(last.payload, 'base64').toString('utf8'));
          m.content = this.sdk.getMessageContent(content.type);
          m.content.decode(Buffer.from(last.payload, 'base64'));
          conv.lastMessage = m;
        }
        return conv;
      });
    };
    const convs = await this.sdk.conversationManager.sync({});
    return convs.map((conv) => ({
      channel_id: conv.channel.channelID,
      channel_type: conv.channel.channelType,
      unread: conv.unread,
      timestamp: conv.timestamp,
      last_msg_seq: conv.lastMessage ? toNum(conv.lastMessage.messageSeq) : null,
      last_content_type: conv.lastMessage ? conv.lastMessage.contentType : null,
      last_text: conv.lastMessage && conv.lastMessage.content ? (conv.lastMessage.content.text ?? null) : null,
    }));
  }

  async send(text, channelId, channelType, step = null) {
    const content = new this.inst.MessageText(text);
    const channel = new this.inst.Channel(String(channelId), Number(channelType));
    const message = await this.sdk.chatManager.send(content, channel);
    const s = {
      client_seq: message.clientSeq,
      client_msg_no: message.clientMsgNo,
      channel_id: channel.channelID,
      channel_type: channel.channelType,
      text,
      step,
    };
    this.sent.push(s);
    hlog(`${this.key}: SEND ${jsonLine(s)}`);
    // the SENDACK cannot have arrived yet (send() is synchronous up to here), but be safe:
    const fixup = this.acks.get(s.client_seq);
    if (fixup) Object.assign(fixup, { client_msg_no: s.client_msg_no, channel_id: s.channel_id, channel_type: s.channel_type });
    return s;
  }

  waitAck(clientSeq) {
    if (this.acks.has(clientSeq)) return Promise.resolve(this.acks.get(clientSeq));
    return new Promise((resolve) => {
      const list = this.ackWaiters.get(clientSeq) || [];
      list.push(resolve);
      this.ackWaiters.set(clientSeq, list);
    });
  }

  waitRecv(pred) {
    if (pred()) return Promise.resolve();
    return new Promise((resolve) => this.recvWaiters.push({ pred, resolve }));
  }

  hasReceived(clientMsgNo) {
    return this.received.some((r) => r.client_msg_no === clientMsgNo);
  }

  acksInSendOrder() {
    return this.sent.filter((s) => this.acks.has(s.client_seq)).map((s) => this.acks.get(s.client_seq));
  }

  shutdown() {
    this.expectingClose = true;
    try { this.sdk.disconnect(); } catch (e) { /* ignore */ }
    // ReceiptManager starts a 2 s setInterval at SDK init that is never cleared.
    if (this.sdk.receiptManager && this.sdk.receiptManager.timer) clearInterval(this.sdk.receiptManager.timer);
  }
}

// ---------------------------------------------------------------------------
function readInput() {
  let raw = process.argv[2];
  if (raw === undefined || raw === '-') raw = readFileSync(0, 'utf8');
  let input;
  try {
    input = JSON.parse(raw);
  } catch (e) {
    throw new Error(`input is not valid JSON: ${e.message}`);
  }
  const need = (cond, what) => { if (!cond) throw new Error(`bad input: ${what}`); };
  need(input && typeof input === 'object', 'expected a JSON object');
  need(typeof input.ws_url === 'string' && /^wss?:\/\//.test(input.ws_url), 'ws_url must be ws://host:port[/path]');
  for (const k of ['a', 'b']) {
    need(input[k] && typeof input[k].uid === 'string' && input[k].uid.length > 0, `${k}.uid missing`);
    need(typeof input[k].token === 'string', `${k}.token missing`);
  }
  if (input.steps !== undefined) need(Array.isArray(input.steps), 'steps must be a list');
  return input;
}

function who(input, k) {
  if (!clients[k]) throw new Error(`unknown user ${JSON.stringify(k)} (expected "a" or "b")`);
  return clients[k];
}

async function runDefault(input, phase) {
  const a = clients.a;
  const b = clients.b;
  const personText = input.person_text ?? input.text ?? 'hello bob';
  const groupText = input.group_text ?? input.text ?? 'hello group';

  phase('A sends person + group messages');
  const sends = [await a.send(personText, input.b.uid, 1)];
  if (input.group_id !== undefined && input.group_id !== null && input.group_id !== '') {
    sends.push(await a.send(groupText, input.group_id, 2));
  }

  phase('waiting for A SENDACKs and B RECVs');
  const ackWait = Promise.all(sends.map(async (s) => {
    const ack = await a.waitAck(s.client_seq);
    if (ack.reason_code !== 1) {
      fail(`SENDACK for ${s.channel_type === 1 ? 'person' : 'group'} message has reason_code=${ack.reason_code} (expected 1 = success)`);
    }
    return ack;
  }));
  const recvWait = b.waitRecv(() => sends.every((s) => b.hasReceived(s.client_msg_no)));
  await Promise.all([ackWait, recvWait]);
}

function resolveAckRefs(value, stepSends, here) {
  if (typeof value === 'string' && value.startsWith('$ack:')) {
    const [, j, field] = value.split(':');
    const e = stepSends.get(Number(j));
    if (!e) throw new Error(`step ${here}: ${value} names no earlier send step`);
    const ack = e.c.acks.get(e.s.client_seq);
    if (!ack) throw new Error(`step ${here}: ${value}: that send has no SENDACK yet`);
    return ack[field];
  }
  if (Array.isArray(value)) return value.map((v) => resolveAckRefs(v, stepSends, here));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, resolveAckRefs(v, stepSends, here)]));
  }
  return value;
}

async function runSteps(input, phase) {
  const stepSends = new Map(); // step index -> {client, sent}
  for (let i = 0; i < input.steps.length; i++) {
    const st = input.steps[i];
    phase(`step ${i}: ${jsonLine(st)}`);
    switch (st.op) {
      case 'send': {
        const c = who(input, st.from);
        const s = await c.send(st.text ?? 'hello', st.channel_id, st.channel_type ?? 1, i);
        stepSends.set(i, { c, s });
        if (st.wait_ack !== false) {
          const ack = await c.waitAck(s.client_seq);
          const expect = st.expect_reason === undefined ? 1 : st.expect_reason;
          if (expect !== null && ack.reason_code !== expect) {
            return fail(`step ${i}: SENDACK reason_code=${ack.reason_code}, expected ${expect}`);
          }
        }
        break;
      }
      case 'wait_acks': {
        await Promise.all(Object.values(clients).flatMap((c) => c.sent.map((s) => c.waitAck(s.client_seq))));
        break;
      }
      case 'wait_recv': {
        const c = who(input, st.who);
        if (Array.isArray(st.steps)) {
          const nos = st.steps.map((j) => {
            const e = stepSends.get(j);
            if (!e) throw new Error(`step ${i}: step ${j} is not an earlier send step`);
            return e.s.client_msg_no;
          });
          await c.waitRecv(() => nos.every((no) => c.hasReceived(no)));
        } else {
          const n = Number(st.count ?? 1);
          await c.waitRecv(() => c.received.length >= n);
        }
        break;
      }
      case 'http': {
        // An app-backend call made by the harness (the SDK has no HTTP): the body may name
        // an earlier send step's SENDACK fields as "$ack:<step>:<field>".
        const body = resolveAckRefs(st.body ?? {}, stepSends, i);
        const res = await fetch(new URL(st.path, input.http_url), {
          method: st.method ?? 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
        });
        const text = await res.text();
        out.http = out.http ?? {};
        out.http[st.save ?? String(i)] = { status: res.status, body: text ? JSON.parse(text) : null };
        if (st.expect_status !== undefined && res.status !== st.expect_status) {
          return fail(`step ${i}: HTTP ${res.status} from ${st.path}, expected ${st.expect_status}: ${text}`);
        }
        break;
      }
      case 'sync_conversations': {
        // The SDK's own ConversationManager.sync(), fed by the provider callback an app writes:
        // POST /conversation/sync, each row turned into the SDK's Conversation model.
        const c = who(input, st.who);
        const convs = await c.syncConversations(input.http_url, st.msg_count ?? 20);
        out.conversations = out.conversations ?? {};
        out.conversations[st.who] = convs;
        break;
      }
      case 'wait_recv_type': {
        const c = who(input, st.who);
        await c.waitRecv(() => c.received.some((r) => r.content_type === st.content_type));
        break;
      }
      case 'sleep':
        await new Promise((r) => setTimeout(r, Number(st.ms ?? 0)));
        break;
      case 'disconnect':
        who(input, st.who).disconnect();
        break;
      case 'connect':
        await who(input, st.who).connect();
        break;
      default:
        throw new Error(`step ${i}: unknown op ${JSON.stringify(st.op)}`);
    }
    out.steps_done = i + 1;
  }
}

async function main() {
  let input;
  try {
    input = readInput();
  } catch (e) {
    return fail(e.message, 2);
  }
  if (input.sdk_log === false) sdkLogEnabled = false;
  const timeoutMs = Number(input.timeout_ms ?? 15000);
  let phase = 'loading SDK';
  const setPhase = (p) => { phase = p; hlog(p); };
  setTimeout(() => fail(`timeout after ${timeoutMs} ms while ${phase}`), timeoutMs).unref();
  // keep the process alive while waiting (the timeout above is unref'd)
  const keepAlive = setInterval(() => {}, 1 << 30);

  const instA = await loadSdkInstance('a');
  const instB = await loadSdkInstance('b');
  if (instA.sdk === instB.sdk || instA.sdk.connectManager === instB.sdk.connectManager) {
    return fail('SDK instances are not isolated (loader hook not active?)');
  }
  clients.a = new Client('a', instA, input.a, input.ws_url);
  clients.b = new Client('b', instB, input.b, input.ws_url);

  setPhase('connecting A and B');
  await Promise.all([clients.a.connect(), clients.b.connect()]);
  if (finished) return;

  if (Array.isArray(input.steps)) {
    out.steps_done = 0;
    await runSteps(input, setPhase);
  } else {
    await runDefault(input, setPhase);
  }
  if (finished) return;

  out.a_acks = clients.a.acksInSendOrder();
  out.b_received = clients.b.received;
  out.a_received = clients.a.received;
  if (Array.isArray(input.steps)) {
    out.acks = { a: clients.a.acksInSendOrder(), b: clients.b.acksInSendOrder() };
    out.received = { a: clients.a.received, b: clients.b.received };
  }
  out.ok = true;
  clearInterval(keepAlive);
  emitAndExit(0);
}

main().catch((e) => {
  out.errors.push(`harness exception: ${e && e.stack ? e.stack.split('\n').slice(0, 3).join(' | ') : String(e)}`);
  fail(`harness exception: ${e && e.message ? e.message : String(e)}`);
});
