"""Target ``http``: the HTTP API (5001) and, for a tenth of the connections, the web console
(5300). One frame = one HTTP request written.

Requests are built from a table of the server's routes and the fields each reads (docs/api.md),
with values from the edges of the field checks (wrong types, huge and negative numbers, floats,
NaN, lone surrogates, deep nesting, long strings, empty and extra fields), and then sometimes
mutated at the byte level: request line, headers (conflicting lengths, chunked bodies with bad
sizes, folded lines) or body. Several requests go down one keep-alive connection in one write
(pipelining), the last one asking the server to close.

What must not be sent (:mod:`chaos.fuzz.safety`): routes in ``DESTRUCTIVE_ROUTES`` only get
bodies that are not a JSON object, and no request names a workload id or a fuzz login user.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
from collections.abc import Generator
from typing import Any
from urllib.parse import quote, unquote

from .context import FuzzContext
from .mutate import garbage, mutate, pick
from .safety import DESTRUCTIVE_ROUTES, json_is_safe, sanitize, text_is_safe, unparseable_json
from .scenario import Action, HalfClose, Read, Received, Reset, Scenario, Sleep, Write
from .wk import trickle

ID_FIELDS = ("uid", "from_uid", "sender_uid", "login_uid", "channel_id", "revoker")
LIST_FIELDS = ("subscribers", "uids", "readers", "parties")
FLAG_FIELDS = (
    "reset", "ban", "disband", "send_ban", "allow_stranger", "large", "red_dot", "no_persist",
    "sync_once", "is_stream", "force", "only_unread", "include_private", "admin", "read",
)  # fmt: skip

POST_ROUTES: dict[str, tuple[str, ...]] = {
    "/user/token": ("uid", "token", "device_flag", "device_level"),
    "/user/device_quit": ("uid", "device_flag"),
    "/user/onlinestatus": (),
    "/user/systemuids_add": ("uids",),
    "/user/systemuids_remove": ("uids",),
    "/channel": ("channel_id", "channel_type", "subscribers", "reset", "ban", "large"),
    "/channel/info": ("channel_id", "channel_type", "ban", "disband", "send_ban", "large"),
    "/channel/subscriber_add": ("channel_id", "channel_type", "subscribers", "reset"),
    "/channel/subscriber_remove": ("channel_id", "channel_type", "subscribers"),
    "/channel/subscriber_remove_all": ("channel_id", "channel_type"),
    "/channel/delete": ("channel_id", "channel_type"),
    "/channel/messages_delete": ("channel_id", "channel_type", "message_seq", "login_uid"),
    "/channel/retention": ("channel_id", "channel_type", "retention_days"),
    "/channel/blacklist_add": ("channel_id", "channel_type", "uids"),
    "/channel/blacklist_set": ("channel_id", "channel_type", "uids"),
    "/channel/blacklist_remove": ("channel_id", "channel_type", "uids"),
    "/channel/blacklist_remove_all": ("channel_id", "channel_type"),
    "/channel/whitelist_add": ("channel_id", "channel_type", "uids"),
    "/channel/whitelist_set": ("channel_id", "channel_type", "uids"),
    "/channel/whitelist_remove": ("channel_id", "channel_type", "uids"),
    "/channel/whitelist_remove_all": ("channel_id", "channel_type"),
    "/channel/messagesync": (
        "login_uid", "channel_id", "channel_type", "start_message_seq", "end_message_seq",
        "limit", "pull_mode",
    ),
    "/message/send": (
        "header", "from_uid", "channel_id", "channel_type", "payload", "client_msg_no",
        "expire", "topic", "setting", "subscribers", "is_stream", "stream_no",
    ),
    "/message/sendbatch": ("header", "from_uid", "payload", "subscribers", "client_msg_no"),
    "/message/sync": ("uid", "message_seq", "limit"),
    "/message/syncack": ("uid", "last_message_seq"),
    "/message/event": (
        "channel_id", "channel_type", "client_msg_no", "message_id", "event_type", "event_key",
        "event", "from_uid",
    ),
    "/message/eventsync": (
        "channel_id", "channel_type", "client_msg_no", "from_msg_event_seq", "limit",
        "login_uid",
    ),
    "/messages": ("login_uid", "channel_id", "channel_type", "message_seqs"),
    "/message": ("message_id", "login_uid"),
    "/message/revoke": ("message_id", "channel_id", "channel_type", "client_msg_no", "revoker"),
    "/message/edit": ("message_id", "channel_id", "channel_type", "payload", "from_uid"),
    "/message/delete": ("login_uid", "channel_id", "channel_type", "message_seq", "message_id"),
    "/message/readed": ("login_uid", "channel_id", "channel_type", "message_seqs"),
    "/conversation/sync": ("uid", "version", "last_msg_seqs", "msg_count", "only_unread"),
    "/conversations/clearUnread": ("uid", "channel_id", "channel_type", "message_seq"),
    "/conversations/setUnread": ("uid", "channel_id", "channel_type", "unread"),
    "/conversations/delete": ("uid", "channel_id", "channel_type"),
    "/conversations/clearMessages": ("uid", "channel_id", "channel_type", "message_seq"),
    "/message/import": ("channel_id", "channel_type", "login_uid", "messages"),
    "/route/batch": (),
    "/cluster/join": ("node_id", "host"),
    "/cluster/leave": ("node_id", "force"),
    "/cluster/drain": ("node_id",),
    "/cluster/backup/checkpoint": ("group",),
    "/cluster/backup/release": ("id",),
}  # fmt: skip

GET_ROUTES: dict[str, tuple[str, ...]] = {
    "/health": (),
    "/route": ("uid",),
    "/cluster/status": (),
    "/cluster/backup/file": ("id", "name", "offset"),
    "/user/systemuids": (),
    "/webhook/status": (),
    "/channel/max_message_seq": ("channel_id", "channel_type"),
    "/channel/info": ("channel_id", "channel_type"),
    "/channel/subscribers": ("channel_id", "channel_type"),
    "/channel/blacklist": ("channel_id", "channel_type"),
    "/channel/whitelist": ("channel_id", "channel_type"),
    "/channel/last_message": ("channel_id", "channel_type", "login_uid"),
    "/message/byclientmsgno": ("channel_id", "channel_type", "from_uid", "client_msg_no"),
    "/conversations/peerRead": ("uid", "channel_id", "channel_type"),
    "/message/receipt": ("channel_id", "channel_type", "message_seq", "login_uid"),
    "/healthz": (),
    "/readyz": (),
    "/varz": ("show", "conn_limit", "node_id"),
    "/connz": ("sort", "offset", "limit", "uid", "node_id"),
}

RARE_GET = {"/cluster/digest": (), "/metrics": ()}
"""Scans every stored message under the group's store lock (docs/api.md), or walks every
group's RocksDB directory (``/metrics``): a few calls, not a flood, or the fuzzer measures its
own load instead of the server's robustness."""

EXTREME_INTS = (
    -1, 0, 1, 2, 255, 256, 10_000, 10_001, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63,
    2**64, -(2**63) - 1, 10**30,
)  # fmt: skip
"""Numbers around the limits of every integer field, including what no int64 holds."""


# --- values ----------------------------------------------------------------------------------


def http_id(rng: random.Random, ctx: FuzzContext) -> str:
    kind = rng.randrange(10)
    if kind < 4:
        return f"fzh{rng.randrange(6)}"
    if kind < 6 and ctx.groups:
        return rng.choice(ctx.groups)
    if kind == 6:
        return f"fzh{rng.randrange(6)}@fzh{rng.randrange(6)}"
    if kind == 7:
        return rng.choice(("", "fz" + "x" * 63, "fz x", "fz#1", "\u202efz", "fz\x00"))
    return f"fz{rng.getrandbits(20):x}"


def wrong_type(rng: random.Random) -> Any:
    return rng.choice(
        (
            None,
            True,
            "1",
            "",
            1.5,
            -0.0,
            float("nan"),
            float("inf"),
            [],
            [1],
            {},
            {"a": 1},
            rng.choice(EXTREME_INTS),
            "\ud800",
            "x" * rng.choice((100, 70_000)),
            [0] * rng.choice((10, 10_000)),
        )
    )


def field_value(name: str, rng: random.Random, ctx: FuzzContext) -> Any:
    """A value that is right for the field's type (ids from the fuzz pools); an edge case or
    a wrong type about one time in four."""
    if rng.random() < 0.25:
        return wrong_type(rng) if rng.random() < 0.6 else rng.choice(EXTREME_INTS)
    if name in ID_FIELDS:
        return http_id(rng, ctx)
    if name in LIST_FIELDS:
        return [http_id(rng, ctx) for _ in range(rng.choice((0, 1, 2, 5, 300)))]
    if name in FLAG_FIELDS:
        return rng.choice((0, 1, 1, 2, -1, True))
    if name == "channel_type":
        return rng.choice((1, 2, 2, 0, 3, 7, 8, 9, 11, 12, 13, 255))
    if name in ("device_flag", "device_level", "pull_mode"):
        return rng.choice((0, 1, 2, 3, -1))
    if name == "payload":
        inner = rng.choice((b'{"type":1,"content":"fz"}', b'{"type":1001}', b"", b"\xff" * 20))
        text = base64.b64encode(inner).decode()
        return rng.choice((text, text, "not base64!", "A" * 20_000, text[:-1]))
    if name in ("message_id", "message_seq", "start_message_seq", "end_message_seq"):
        v = rng.choice((0, 1, 2, 7, rng.randrange(1, 10_000), rng.choice(EXTREME_INTS)))
        return str(v) if name == "message_id" and rng.random() < 0.3 else v
    if name in ("message_seqs", "message_ids"):
        return [rng.choice((0, 1, 2, -1, 2**63)) for _ in range(rng.choice((0, 1, 3, 1000)))]
    if name == "header":
        return {k: rng.choice((0, 1, 2)) for k in ("red_dot", "no_persist", "sync_once")}
    if name == "node_id":
        return rng.choice((0, 1, 2, 3, 99, -1))
    if name == "host":
        return rng.choice(("", "127.0.0.1", "x" * 300, "::1"))
    if name in ("limit", "msg_count", "retention_days", "version", "unread", "last_message_seq"):
        return rng.choice((0, 1, 100, 10_000, 10_001, -1, rng.choice(EXTREME_INTS)))
    if name == "last_msg_seqs":
        return rng.choice(("", "fzh1:1:3|fzg0:2:9", "a:b:c", "|" * 50, ":::"))
    if name in ("event",):
        return {"type": rng.choice(("x", "", 1)), "data": rng.choice(("d", None, {"k": [1]}))}
    return rng.choice(("", "fz", "x" * 65, "\U0001f600", "\x00", f"fzm-{rng.getrandbits(32):x}"))


def json_body(path: str, rng: random.Random, ctx: FuzzContext) -> bytes:
    fields = POST_ROUTES.get(path, ())
    if path == "/user/onlinestatus":
        value: Any = [http_id(rng, ctx) for _ in range(rng.choice((0, 1, 3, 1000)))]
    else:
        value = {name: field_value(name, rng, ctx) for name in fields if rng.random() < 0.85}
        if rng.random() < 0.1:
            value[rng.choice(("extra", "", "\u0000", "x" * 100))] = wrong_type(rng)
    value = sanitize(value, ctx.api_protected)
    special = rng.randrange(40)
    if special == 0:
        depth = rng.choice((100, 1000, 100_000))
        return b"[" * depth + b"]" * depth
    if special == 1:
        return json.dumps(value).encode() + b" trailing"
    if special == 2:
        return json.dumps(value).replace('"', "'").encode()
    if special == 3:
        return b'{"channel_id": "a", "channel_id": 1}'
    return json.dumps(value, allow_nan=True).encode()


def query(path: str, rng: random.Random, ctx: FuzzContext) -> str:
    fields = GET_ROUTES.get(path, ())
    parts = []
    for name in fields:
        if rng.random() < 0.15:
            continue
        v = field_value(name, rng, ctx)
        text = v if isinstance(v, str) else json.dumps(v)
        text = ctx.api_protected.rewrite(text)
        raw = text.encode("utf-8", "surrogatepass")  # a lone surrogate goes out as its bytes
        parts.append(f"{name}={quote(raw, safe='')}")
    if rng.random() < 0.1:
        parts.append(rng.choice(("%zz", "a=%00", "=", "&&&", "channel_id=%ff%fe", "x" * 9000)))
    return "&".join(parts)


# --- requests --------------------------------------------------------------------------------


def credential(rng: random.Random, ctx: FuzzContext, target: str) -> list[tuple[bytes, bytes]]:
    """The token header of a request: mostly the right one (the admin token on
    ``/cluster/*``), so that requests reach the handlers; now and then none, a wrong or
    damaged one, or the other token, so that the check itself is fuzzed."""
    admin = target.startswith("/cluster/")
    right = (ctx.admin_token if admin else ctx.api_token).encode()
    other = (ctx.api_token if admin else ctx.admin_token).encode()
    if not right:
        return []
    roll = rng.randrange(40)
    if roll < 30:
        return [(b"token", right)]
    if roll < 34:
        return [(b"Authorization", rng.choice((b"Bearer ", b"bearer ")) + right)]
    if roll < 36:
        return []
    if roll < 38:
        wrong = (b"", b"wrong", right + b"x", right[:-1], other, b"\xff" * 10, b"t" * 8000)
        return [(b"token", rng.choice(wrong))]
    auth = (b"Bearer", b"Bearer  ", b"Basic " + right, b"Bearer " + other, right)
    return [(b"Authorization", rng.choice(auth))]


def request(
    method: str,
    target: str,
    body: bytes,
    rng: random.Random,
    *,
    close: bool = False,
    ctx: FuzzContext | None = None,
) -> bytes:
    """One request (with a credential when ``ctx`` is given), with header-level abuse now
    and then."""
    headers = [(b"Host", b"fz"), (b"Content-Type", b"application/json")]
    if ctx is not None:
        headers += credential(rng, ctx, target)
    kind = rng.randrange(30)
    if close:
        headers.append((b"Connection", b"close"))
    if kind == 0:
        # Chunked, with a chunk size that lies or overflows now and then.
        size = rng.choice(
            (f"{len(body):x}", "fffffffffffffffffff", "-1", "zz", f"{len(body) + 5:x}")
        )
        data = size.encode() + b"\r\n" + body + b"\r\n0\r\n\r\n"
        headers.append((b"Transfer-Encoding", b"chunked"))
        return _head(method, target, headers) + data
    if kind == 1:
        headers += [
            (b"Content-Length", str(len(body)).encode()),
            (b"Transfer-Encoding", b"chunked"),
        ]
    elif kind == 2:
        headers += [(b"Content-Length", str(len(body)).encode()), (b"Content-Length", b"1")]
    elif kind == 3:
        headers.append(
            (b"Content-Length", rng.choice((b"-1", b"1e3", b" 5", b"99999999999999999999")))
        )
    elif kind == 4:
        headers += [(b"Content-Length", str(len(body)).encode()), (b"X-Fold", b"a\r\n b")]
    elif kind == 5:
        headers += [(b"Content-Length", str(len(body)).encode()), (b"Expect", b"100-continue")]
    elif kind == 6:
        headers += [(b"Content-Length", str(len(body)).encode()), (b"X-Big", b"h" * 70_000)]
    elif kind == 7:
        headers = [h for h in headers if h[0] != b"Host"]  # no Host
        headers.append((b"Content-Length", str(len(body)).encode()))
    else:
        headers.append((b"Content-Length", str(len(body)).encode()))
    return _head(method, target, headers) + body


def _head(method: str, target: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode()] + [k + b": " + v for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def one_request(rng: random.Random, ctx: FuzzContext, *, close: bool) -> bytes:
    """A request to a real route (or a near miss), safe by :mod:`safety`'s rules."""
    roll = rng.random()
    if roll < 0.001:
        path = rng.choice(sorted(RARE_GET))
        return request("GET", path, b"", rng, close=close, ctx=ctx)
    if roll < 0.3:
        path = rng.choice(list(GET_ROUTES))
        q = query(path, rng, ctx)
        target = path + ("?" + q if q else "")
        if not text_is_safe(unquote(target), ctx.api_protected):
            target = path
        method = "GET" if rng.random() < 0.95 else rng.choice(("POST", "DELETE", "PUT", "HEAD"))
        return request(method, target, b"", rng, close=close, ctx=ctx)
    if roll < 0.33:
        path = rng.choice(
            (
                "/", "/x", "/message/send/", "//message/send", "/%2e%2e/", "/" * 3000,
                # the console's own routes (on its port; 404s on the API's)
                "/login", "/logout", "/api/cluster/status", "/api/cluster/drain", "/console.js",
            )
        )  # fmt: skip
        return request(rng.choice(("GET", "POST")), path, b"{}", rng, close=close, ctx=ctx)
    path = rng.choice(list(POST_ROUTES))
    body = json_body(path, rng, ctx)
    if rng.random() < 0.1:
        body = mutate(body, rng)
    if path in DESTRUCTIVE_ROUTES:
        body = unparseable_json(rng, body)
    elif not json_is_safe(body, ctx.api_protected):
        body = b"{}"
    method = "POST" if rng.random() < 0.97 else "GET"
    return request(method, path, body, rng, close=close, ctx=ctx)


def raw_request(rng: random.Random, ctx: FuzzContext) -> bytes:
    """A request damaged at the byte level, or a request line no parser should take."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice(
            (
                b"GET\r\n\r\n",
                b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
                b"\r\n\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
                b"GET / HTTP/1.1\r\n: v\r\nHost: x\r\n\r\n",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                b"G" * 70_000 + b" / HTTP/1.1\r\n\r\n",
            )
        )
    if kind == 1:
        return garbage(rng, 2048)
    while True:
        out = mutate(one_request(rng, ctx, close=False), rng)
        # A mutation may turn a refused body into one the server parses: check again.
        head, _, body = out.partition(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        route = line.split(" ")[1].split("?")[0] if line.count(" ") >= 1 else ""
        destructive = any(route.rstrip("/").endswith(p) for p in DESTRUCTIVE_ROUTES)
        if not text_is_safe(unquote(head.decode("latin-1")), ctx.api_protected):
            continue
        if destructive or not json_is_safe(body, ctx.api_protected):
            out = head + b"\r\n\r\n" + unparseable_json(rng, body)
        return out


# --- scenarios -------------------------------------------------------------------------------

CONSOLE_SHARE = 0.1
"""Of the ``http`` target's connections, those that go to the web console's port."""

KINDS = (
    (70, "pipeline"),
    (12, "raw"),
    (2, "big_body"),
    (5, "half_open"),
    (3, "trickle"),
)

Steps = Generator[Action, Received | None, None]


def make(ctx: FuzzContext, rng: random.Random) -> Scenario:
    node = rng.choice(ctx.nodes)
    kind = pick(rng, KINDS)
    sent: list[bytes] = []
    steps = _KINDS[kind](rng, ctx, sent)
    port = ctx.console_port if rng.random() < CONSOLE_SHARE else ctx.http_port
    return Scenario("http", kind, node, port, steps, max_s=10.0, sent=sent)


def drain(max_s: float = 1.0) -> Steps:
    """Read until the server closes (our last request asked it to) or ``max_s`` passed (a
    request whose declared body never came keeps the server waiting)."""
    waited = 0.0
    while waited < max_s:
        got = yield Read(0.25)
        waited += 0.25
        assert got is not None
        if got.eof:
            return


def _pipeline(rng: random.Random, ctx: FuzzContext, sent: list[bytes]) -> Steps:
    n = rng.choice((1, 2, 8, 20, rng.randint(1, 60)))
    batch = []
    for i in range(n):
        req = one_request(rng, ctx, close=i == n - 1)
        batch.append(req)
        sent.append(req)
    cuts = sorted({0, n, *(rng.randrange(n + 1) for _ in range(rng.choice((0, 1, 3))))})
    for a, b in itertools.pairwise(cuts):
        yield Write(b"".join(batch[a:b]), b - a)
    yield from drain()


def _raw(rng: random.Random, ctx: FuzzContext, sent: list[bytes]) -> Steps:
    reqs = [raw_request(rng, ctx) for _ in range(rng.choice((1, 1, 3)))]
    if rng.random() < 0.5:
        reqs.insert(0, one_request(rng, ctx, close=False))
    sent.extend(reqs)
    yield Write(b"".join(reqs), len(reqs))
    yield from drain()


def _big_body(rng: random.Random, ctx: FuzzContext, sent: list[bytes]) -> Steps:
    limit = 2 * 1024 * 1024
    if rng.random() < 0.5:
        # Declares a body far above the limit and sends only the start of it.
        declared = str(rng.choice((limit + 1, 2**40))).encode()
        headers = [(b"Host", b"fz"), *credential(rng, ctx, "/message/send")]
        head = _head("POST", "/message/send", [*headers, (b"Content-Length", declared)])
        req = head + b'{"channel_id":' + b" " * 65536
    else:
        body = b'{"payload":"' + b"A" * (limit + rng.choice((-100, 1, 4096))) + b'"}'
        req = request("POST", "/message/send", body, rng, close=True, ctx=ctx)
    sent.append(req)
    yield Write(req)
    yield from drain()


def _half_open(rng: random.Random, ctx: FuzzContext, sent: list[bytes]) -> Steps:
    req = one_request(rng, ctx, close=False)
    sent.append(req)
    yield Write(req[: rng.randrange(1, len(req) + 1)])
    if rng.random() < 0.5:
        yield HalfClose()
        yield from drain()
    else:
        yield Sleep(rng.choice((0.1, 1.0)))
        yield Reset()


def _trickle(rng: random.Random, ctx: FuzzContext, sent: list[bytes]) -> Steps:
    req = one_request(rng, ctx, close=True)
    sent.append(req)
    yield from trickle(req, rng, max_s=4.0)
    yield from drain()


_KINDS = {
    "pipeline": _pipeline,
    "raw": _raw,
    "big_body": _big_body,
    "half_open": _half_open,
    "trickle": _trickle,
}
