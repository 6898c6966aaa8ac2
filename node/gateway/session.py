"""One client session, the same state machine behind TCP and WebSocket, WKProto and JSON-RPC.

The session works on WKProto frames; its codec (``codec.py``) reads and writes the client's
protocol. States: awaiting CONNECT (bounded by ``auth_timeout_s``) -> authenticated (closed after
``idle_timeout_s`` without an inbound frame) -> closed. A failed CONNECT is always answered with
a CONNACK carrying its reason before the close; a kick sends DISCONNECT first. Outbound frames go
through one queue and one writer task, so SENDACKs and RECVs never interleave on the stream.
"""

from __future__ import annotations

import collections
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from proto.jsonrpc import Answer
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import (
    LATEST_VERSION,
    Connack,
    Connect,
    CryptoError,
    Disconnect,
    Event,
    Frame,
    Ping,
    Pong,
    ProtocolError,
    ReasonCode,
    Recvack,
    Send,
    Sub,
    Suback,
)
from proto.wkproto.crypto import KeyPair, SessionCipher, new_salt

from ..config import Config
from ..groups.streams import event_view
from ..log import get_logger
from ..metrics import NodeMetrics, Traffic
from ..router import ClusterUnavailable, Router
from ..send_admission import GATEWAY, Refusal, Settings, admit_send
from ..send_checks import SendRules
from ..sessions import SessionRegistry
from ..storage import MessageRecord
from ..userfacts import UserFacts
from ..usertokens import TokenKeys
from .codec import SessionCodec, WkprotoCodec, choose_codec
from .login import authenticate
from .recv import recv_frame
from .sends import draft_of, open_payload, sendack
from .transport import Transport

EVENT_MIN_VERSION = 5
"""The first protocol version with stream EVENT frames (and without stream fields in RECV)."""

log = get_logger("gateway")

OUTBOUND_QUEUE = 4096
"""Frames waiting for a slow client; past this the session is closed and the client resyncs."""
SEQ_MEMORY = 4096
"""Channels per session whose last delivered seq is remembered (least recently used dropped)."""
SENDS_IN_FLIGHT = 256
"""SENDs of one session being committed at once; past this the session stops reading."""

_conn_ids = itertools.count(1)


@dataclass
class GatewayContext:
    config: Config
    registry: SessionRegistry
    router: Router
    nursery: trio.Nursery
    """For short tasks that outlive a call (delayed closes after a kick)."""
    facts: UserFacts | None = None
    """User facts for the send pre-check; ``None`` only in tests that never send."""
    rules: SendRules = field(default_factory=SendRules)
    on_login: Callable[[Session], None] | None = None
    """Called once a session is registered (the cluster-wide multi-device policy)."""
    token_keys: TokenKeys | None = None
    """Checks CONNECT tokens against their stored hashes; ``None`` only in unit tests (the
    stored token is then compared as it is)."""
    metrics: NodeMetrics | None = None
    """Sends, SENDACK latency and slow clients counted, live connections listed (``/connz``);
    ``None`` in unit tests."""


class Session:
    def __init__(self, ctx: GatewayContext, transport: Transport) -> None:
        self._ctx = ctx
        self._transport = transport
        self.conn_id = next(_conn_ids)
        self.uid = ""
        self.device_flag = 0
        self.device_id = ""
        self.device_level = 0
        self.connected_at = 0.0
        self.version = LATEST_VERSION
        self.transport_kind = transport.kind
        self.peer = transport.peer
        self.traffic = Traffic()
        self.last_active = time.time()
        self._pending_bytes = 0
        self._cipher: SessionCipher | None = None
        self._refused_why = ""
        # Chosen by the first message on a WebSocket (JSON-RPC or WKProto); TCP is WKProto.
        self._codec: SessionCodec | None = None if transport.json_rpc else WkprotoCodec()
        self._out_send, self._out_recv = trio.open_memory_channel[bytes | str](OUTBOUND_QUEUE)
        self._scope = trio.CancelScope()
        self._leaving = False
        self._draining = False
        self._sends = trio.Semaphore(SENDS_IN_FLIGHT)
        self._last_seq: collections.OrderedDict[tuple[int, str], int] = collections.OrderedDict()
        self._nursery: trio.Nursery | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        gw = self._ctx.config.gateway
        metrics = self._ctx.metrics
        if metrics is not None:
            metrics.connections[self.conn_id] = self
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._writer)
                    try:
                        await self._reader()
                    except ProtocolError as e:
                        log.info("protocol error, closing", **self._fields(), error=str(e))
                    finally:
                        self._out_send.close()
                    # Let the writer flush what is queued (a refusing CONNACK, say), briefly.
                    nursery.cancel_scope.deadline = trio.current_time() + gw.kick_close_delay_s
        finally:
            self._ctx.registry.remove(self)
            if metrics is not None:
                metrics.connections.pop(self.conn_id, None)
                metrics.closed.add(self.traffic)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._transport.aclose()
            if self.uid:
                log.info("session closed", **self._fields())

    def pending_bytes(self) -> int:
        """Bytes queued for the client and not yet handed to the transport (``/connz``)."""
        return self._pending_bytes

    def kick(self, reason_code: ReasonCode, reason: str) -> None:
        """Send DISCONNECT, then close after a short delay so that the client can read it."""
        if self._leaving:
            return
        self._leaving = True
        log.info("kicking session", **self._fields(), reason=reason)
        self._enqueue(Disconnect(reason_code=reason_code, reason=reason))
        self._ctx.nursery.start_soon(self._close_after, self._ctx.config.gateway.kick_close_delay_s)

    def close(self) -> None:
        self._leaving = True
        self._scope.cancel()

    def drain(self, reason_code: ReasonCode, reason: str, wait_s: float) -> None:
        """The node is going away: take no further SEND, let those in flight be answered
        (for at most ``wait_s``), then DISCONNECT with ``reason_code`` and close. A SEND read
        after this gets no SENDACK: the client sends it again, with its ``client_msg_no``,
        to the node it reconnects to."""
        if self._leaving or self._draining:
            return
        self._draining = True
        self._ctx.nursery.start_soon(self._drain, reason_code, reason, wait_s)

    async def _drain(self, reason_code: ReasonCode, reason: str, wait_s: float) -> None:
        with trio.move_on_after(wait_s):
            # Holding every permit means no SEND is being committed any more.
            for _ in range(SENDS_IN_FLIGHT):
                await self._sends.acquire()
        self.kick(reason_code, reason)

    async def _close_after(self, delay_s: float) -> None:
        await trio.sleep(delay_s)
        self._scope.cancel()

    def _fields(self) -> dict[str, object]:
        fields: dict[str, object] = {
            "conn": self.conn_id,
            "uid": self.uid,
            "transport": self._transport.kind,
        }
        if self._codec is not None and self._codec.name != "wkproto":
            fields["protocol"] = self._codec.name
        return fields

    @property
    def _encrypts(self) -> bool:
        """Payload encryption: configured, and possible in the client's protocol."""
        return self._ctx.config.gateway.encryption and bool(self._codec and self._codec.encrypts)

    # --- IO -------------------------------------------------------------------------------

    async def _writer(self) -> None:
        try:
            async for first in self._out_recv:
                frames = [first]
                while True:
                    try:
                        frames.append(self._out_recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                size = sum(map(_size, frames))
                self.traffic.out_packets += len(frames)
                self.traffic.out_packet_bytes += size
                self._pending_bytes -= size
                await self._transport.send_frames(frames)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._scope.cancel()
        except Exception as e:  # a transport closing under us
            log.debug("writer stopped", **self._fields(), error=repr(e))
            self._scope.cancel()

    def _enqueue(self, frame: Frame) -> None:
        if self._codec is None:
            return
        try:
            data = self._codec.encode(frame)
        except ProtocolError as e:
            log.error("cannot encode frame for session", **self._fields(), error=str(e))
            return
        if data is not None:
            self._put(data)

    def _put(self, data: bytes | str) -> None:
        try:
            self._out_send.send_nowait(data)
            self._pending_bytes += _size(data)
        except trio.WouldBlock:
            log.warning("slow client: outbound queue full, closing", **self._fields())
            if self._ctx.metrics is not None:
                self._ctx.metrics.slow_clients += 1
            self.close()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _next_frame(self) -> Frame | None:
        while True:
            item = self._codec.next_frame() if self._codec is not None else None
            if isinstance(item, Answer):
                self._answer(item)
                continue
            if item is not None:
                self.traffic.in_packets += 1
                return item
            data = await self._transport.receive()
            if not data:
                return None
            self.traffic.in_packet_bytes += _size(data)
            self.last_active = time.time()
            if self._codec is None:
                self._codec = choose_codec(data, self._transport.json_rpc)
                if self._codec is None:
                    continue
            self._codec.feed(data)

    def _answer(self, answer: Answer) -> None:
        """Send the codec's answer to refused input; raise when the session must end."""
        if answer.text is not None:
            self._put(answer.text)
        if answer.close:
            raise ProtocolError(answer.reason)
        log.info("request refused", **self._fields(), reason=answer.reason)

    async def _reader(self) -> None:
        gw = self._ctx.config.gateway
        frame: Frame | None = None
        with trio.move_on_after(gw.auth_timeout_s):
            frame = await self._next_frame()
        if frame is None:
            log.info("no CONNECT in time, closing", **self._fields(), peer=self._transport.peer)
            return
        if not isinstance(frame, Connect):
            log.info("first frame is not CONNECT", **self._fields(), frame=type(frame).__name__)
            return
        if not await self._on_connect(frame):
            return
        while True:
            with trio.move_on_after(gw.idle_timeout_s):
                frame = await self._next_frame()
                if frame is None:
                    return
                if not await self._dispatch(frame):
                    return
                continue
            log.info("idle timeout, closing", **self._fields())
            return

    # --- CONNECT --------------------------------------------------------------------------

    async def _on_connect(self, c: Connect) -> bool:
        cfg = self._ctx.config
        # Version 0 (unset) and anything newer than ours run at our latest, as WuKongIM v3 does.
        self.version = LATEST_VERSION if c.version == 0 else min(c.version, LATEST_VERSION)
        assert self._codec is not None  # it decoded this CONNECT
        self._codec.version = self.version
        now_ms = int(time.time() * 1000)
        self.uid = c.uid
        login = await authenticate(self._ctx, c, self._encrypts, self._fields())
        reason, level, self._refused_why = login.reason, login.level, login.why
        server_key, salt = "", ""
        if reason == ReasonCode.SUCCESS and self._encrypts:
            pair = KeyPair()
            salt = new_salt()
            try:
                self._cipher = SessionCipher(pair.aes_key(c.client_key), salt.encode())
                server_key = pair.public_b64
            except CryptoError as e:
                log.info("bad client key", **self._fields(), error=str(e))
                reason = ReasonCode.AUTH_FAIL
        ack = Connack(
            # Clamped to the field's i64: a client clock of +-2**63 must still get its answer.
            time_diff=max(-(2**63), min(2**63 - 1, now_ms - c.client_timestamp)),
            reason_code=reason,
            server_key=server_key if reason == ReasonCode.SUCCESS else "",
            salt=salt if reason == ReasonCode.SUCCESS else "",
            node_id=cfg.node.id,
            server_version=self.version,
        )
        if reason != ReasonCode.SUCCESS:
            why = {"why": self._refused_why} if self._refused_why else {}
            log.info("CONNECT refused", **self._fields(), reason=reason.name, **why)
            self._enqueue(ack)
            return False
        self.device_flag = c.device_flag
        self.device_id = c.device_id
        self.device_level = level
        # Wall clock: the multi-device policy orders logins across nodes (node/presence.py).
        self.connected_at = time.time()
        # Registration and CONNACK happen in one synchronous step, so no RECV can be queued
        # for this session before its CONNACK.
        for ev in self._ctx.registry.add(self):
            if ev.kick:
                ev.session.kick(ReasonCode.CONNECT_KICK, "login in other device")
            else:
                ev.session.close()
        self._enqueue(ack)
        if self._ctx.on_login is not None:
            self._ctx.on_login(self)  # the policy on the other nodes, after the CONNACK
        log.info(
            "session open",
            **self._fields(),
            version=self.version,
            device_flag=self.device_flag,
            device_id=self.device_id,
            peer=self._transport.peer,
        )
        return True

    # --- frames after CONNECT -------------------------------------------------------------

    async def _dispatch(self, frame: Frame) -> bool:
        """Handle one frame; False closes the session."""
        match frame:
            case Send():
                if self._draining:
                    log.debug("SEND while draining: left unanswered", **self._fields())
                else:
                    await self._on_send(frame)
            case Recvack():
                pass  # Delivery is best effort; clients close gaps by syncing by seq.
            case Ping():
                self._enqueue(Pong())
            case Sub():
                self._enqueue(
                    Suback(
                        sub_no=frame.sub_no,
                        channel_id=frame.channel_id,
                        channel_type=frame.channel_type,
                        action=frame.action,
                        reason_code=ReasonCode.NOT_SUPPORT_CHANNEL_TYPE,
                    )
                )
            case Disconnect():
                log.info("client said DISCONNECT", **self._fields())
                return False
            case _:
                log.info("unexpected frame, closing", **self._fields(), frame=type(frame).__name__)
                return False
        return True

    async def _on_send(self, s: Send) -> None:
        received = time.perf_counter()
        self.traffic.in_msgs += 1
        self.traffic.in_msg_bytes += len(s.payload)

        def answer(reason: int, message_id: int = 0, message_seq: int = 0) -> None:
            if self._ctx.metrics is not None:
                self._ctx.metrics.sendack("gateway", reason, time.perf_counter() - received)
            self._enqueue(sendack(s, reason, message_id, message_seq))

        try:
            # Awaited here (user facts may be loaded), so that sends enter the log in frame order.
            admitted = await self._admit(s)
        except ClusterUnavailable as e:
            answer(e.reason)
            return
        if isinstance(admitted, Refusal):
            if admitted.malformed or admitted.reason == ReasonCode.NOT_ALLOW_SEND:
                log.info(
                    "SEND refused",
                    **self._fields(),
                    reason=admitted.reason.name,
                    why=admitted.message,
                    client_seq=s.client_seq,
                )
            answer(admitted.reason)
            return
        # Commit concurrently with reading further frames; the semaphore bounds a client that
        # sends faster than the cluster commits (it stops being read: TCP backpressure).
        await self._sends.acquire()
        assert self._nursery is not None
        # Queued now, in frame order; only the wait runs in its own task.
        finish = self._ctx.router.begin_send(admitted)
        self._nursery.start_soon(self._commit_send, finish, answer)

    async def _admit(self, s: Send) -> pb.SendItem | Refusal:
        """The item to commit, or why not (``send_admission.py``)."""
        payload = open_payload(s, self._cipher)
        if isinstance(payload, Refusal):
            return payload
        ctx = self._ctx
        return await admit_send(
            draft_of(s, self.uid, self.conn_id, payload),
            ctx.facts,
            Settings.of(ctx.config, ctx.rules),
            GATEWAY,
            ctx.rules.senders.allow,
        )

    async def _commit_send(
        self,
        finish: Callable[[], Awaitable[pb.SendOutcome]],
        answer: Callable[[int, int, int], None],
    ) -> None:
        try:
            outcome = await finish()
            answer(outcome.reason, outcome.message_id, outcome.message_seq)
        finally:
            self._sends.release()

    # --- delivery -------------------------------------------------------------------------

    def _push_event(self, ev: pb.EventPush) -> None:
        """Queue an EVENT frame of a stream event; only protocol 5 and later know the frame
        (the official JS SDK 1.0.4 speaks 2, and its decoder throws on type 12)."""
        if self.version < EVENT_MIN_VERSION:
            return
        data = event_view(json.loads(ev.data), self.uid)
        self._enqueue(
            Event(
                id=ev.event_id,
                type=ev.event_type,
                timestamp=ev.timestamp_ms,
                data=json.dumps(data, separators=(",", ":")).encode(),
            )
        )

    def push(self, msg: MessageRecord | pb.EventPush) -> None:
        """Queue a RECV of a committed message, encrypted for this session (or an EVENT)."""
        if self._leaving:
            return
        if isinstance(msg, pb.EventPush):
            self._push_event(msg)
            return
        if msg.message_seq:
            # A channel's stream to a session never goes backwards or repeats (a late fan-out
            # from a deposed leader, a retried delivery): gaps are the client's to sync.
            key = (msg.channel_type, msg.channel_id)
            if msg.message_seq <= self._last_seq.get(key, 0):
                return
            self._last_seq[key] = msg.message_seq
            self._last_seq.move_to_end(key)
            if len(self._last_seq) > SEQ_MEMORY:
                self._last_seq.popitem(last=False)
        self.traffic.out_msgs += 1
        self.traffic.out_msg_bytes += len(msg.payload)
        self._enqueue(recv_frame(msg, self.uid, self._cipher))


def _size(data: bytes | str) -> int:
    return len(data) if isinstance(data, bytes) else len(data.encode())
