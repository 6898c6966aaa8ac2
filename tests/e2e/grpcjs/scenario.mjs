// Drives raftchat's public gRPC API from the .proto files alone (no generated code): loads
// proto/raftchat/v1/api.proto with @grpc/proto-loader and calls it with @grpc/grpc-js.
//
//   node scenario.mjs '{"nodes": ["127.0.0.11:5002", "127.0.0.12:5002", "127.0.0.13:5002"],
//                       "api_token": "...", "proto_root": "../../..", "channel_id": "js-room",
//                       "timeout_ms": 20000}'
//
// Against a cluster of three: creates a group on node 1, subscribes to it on node 2, sends on
// node 3, reads the message back by seq on node 1 and waits for it on the stream; then checks
// the error model (a send to a missing channel) and that a call without the API token is
// refused. Every other call carries the token as `authorization: Bearer` metadata. Prints one
// JSON line; exit 0 = ok.
//
// Over TLS: "ca_file" (PEM) is the CA to trust, passed to grpc.credentials.createSsl; with
// "cert_file" and "key_file" a client certificate is presented where the port asks for one.
import { readFileSync } from "node:fs";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const spec = JSON.parse(process.argv[2] ?? "{}");
const timeoutMs = spec.timeout_ms ?? 20000;
const result = { ok: false };

function finish(code) {
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(code);
}

setTimeout(() => {
  result.error = `timed out after ${timeoutMs} ms`;
  finish(1);
}, timeoutMs).unref();

const definition = protoLoader.loadSync("proto/raftchat/v1/api.proto", {
  includeDirs: [path.resolve(spec.proto_root)],
  keepCase: true, // the field names of the .proto (and of the HTTP API's JSON)
  longs: String, // int64 ids as decimal strings: JavaScript numbers lose precision
  defaults: true,
  oneofs: true,
});
const v1 = grpc.loadPackageDefinition(definition).raftchat.v1;
const read = (file) => (file ? readFileSync(file) : null);
const creds = spec.ca_file
  ? grpc.credentials.createSsl(read(spec.ca_file), read(spec.key_file), read(spec.cert_file))
  : grpc.credentials.createInsecure();
const at = (i, Service) => new Service(spec.nodes[i], creds);

// The API token travels as call metadata: grpc-js composes call credentials with secure
// channels only.
function authorized() {
  const md = new grpc.Metadata();
  if (spec.api_token) md.add("authorization", `Bearer ${spec.api_token}`);
  return md;
}

function unary(client, method, request, metadata = authorized()) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + 10000 }, (err, reply) =>
      err ? reject(err) : resolve(reply),
    );
  });
}

// The stream's events, with a way to wait for the first one matching a predicate.
function follow(stream) {
  const events = [];
  const waiters = [];
  stream.on("data", (event) => {
    events.push(event);
    for (const w of waiters.splice(0)) w();
  });
  stream.on("error", (err) => {
    if (err.code !== grpc.status.CANCELLED) result.stream_error = `${err.code} ${err.details}`;
  });
  return async (predicate) => {
    for (;;) {
      const found = events.find(predicate);
      if (found) return found;
      await new Promise((resolve) => waiters.push(resolve));
    }
  };
}

async function main() {
  const room = spec.channel_id ?? "js-room";
  const text = "hello from grpc-js";

  await unary(at(0, v1.Channels), "Create", {
    channel_id: room,
    channel_type: 2,
    subscribers: ["js-alice", "js-bob"],
  });

  const stream = at(1, v1.Messages).Subscribe(
    { channel: { channel_id: room, channel_type: 2, login_uid: "js-bob" } },
    authorized(),
  );
  const waitFor = follow(stream);
  const start = await waitFor((e) => e.event === "start");
  result.start_positions = start.start.positions.map((p) => Number(p.message_seq));

  const sent = await unary(at(2, v1.Messages), "Send", {
    from_uid: "js-alice",
    channel_id: room,
    channel_type: 2,
    payload: Buffer.from(text),
    client_msg_no: "js-1",
  });
  result.sent = { message_id: sent.message_id, message_seq: Number(sent.message_seq) };

  const bySeq = await unary(at(0, v1.Messages), "GetBySeq", {
    login_uid: "js-bob",
    channel_id: room,
    channel_type: 2,
    message_seq: sent.message_seq,
  });
  result.by_seq = {
    message_id: bySeq.message_id,
    message_seq: Number(bySeq.message_seq),
    from_uid: bySeq.from_uid,
    client_msg_no: bySeq.client_msg_no,
    payload: bySeq.payload.toString(),
  };

  const live = await waitFor((e) => e.event === "message" && e.message.message_id === sent.message_id);
  result.streamed = {
    message_id: live.message.message_id,
    message_seq: Number(live.message.message_seq),
    channel_id: live.message.channel_id,
    payload: live.message.payload.toString(),
  };
  stream.cancel();

  try {
    await unary(at(1, v1.Messages), "Send", {
      from_uid: "js-alice",
      channel_id: "js-missing",
      channel_type: 2,
      payload: Buffer.from("x"),
    });
    result.missing_channel = "accepted";
  } catch (err) {
    result.missing_channel = {
      code: err.code,
      details: err.details,
      reason_code: err.metadata.get("raftchat-reason-code")[0] ?? null,
      has_status_details: err.metadata.get("grpc-status-details-bin").length === 1,
    };
  }
  try {
    await unary(at(2, v1.Channels), "GetInfo", { channel_id: room, channel_type: 2 }, new grpc.Metadata());
    result.without_token = "accepted";
  } catch (err) {
    result.without_token = { code: err.code };
  }
  result.ok = true;
}

main().then(
  () => finish(0),
  (err) => {
    result.error = `${err.code ?? ""} ${err.details ?? err.stack ?? err}`;
    finish(1);
  },
);
