"""The receiving end of a long-lived signed peer stream (``cluster/peer_stream.py`` sends).

Runs on the gRPC servers' asyncio thread. The opening's credential is checked like a call's;
then each frame's MAC and number (one more than the last), and its body is handed to trio in
arrival order (``GrpcServer.hand_over``, which also holds a sender back while trio is behind).
Acknowledgements are cumulative and sent at most every ``ACK_DELAY_S``: the sender needs them
only to free its window and to know what to send again on a new stream, and an answer per frame
would cost what the stream saves. A sender's frames are numbered over all its streams (one
*epoch*), and a frame whose number was already handed on is acknowledged, not handed on again,
so a batch sent again after a broken stream reaches the node's sessions once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from cluster.peerauth import METADATA_KEY, PeerVerifier, body_digest, parse
from cluster.ratelog import RateLimitedLog
from cluster.stream_auth import (
    EPOCH_METADATA_KEY,
    ack_mac,
    frame_matches,
    opening_key,
    parse_epoch,
    stream_key,
)
from proto.raftchat.peer.v1 import peer_pb2 as pb

log = logging.getLogger("raftchat.bridge")

ACK_DELAY_S = 0.05
"""How long an acknowledgement waits for more frames to cover."""
EPOCHS_REMEMBERED = 1024
"""Senders' epochs whose last frame number a server keeps (a sender has one per peer and
process: a restart makes a new one)."""


@dataclass(frozen=True)
class InboundStream:
    """A stream method of a signed service: each frame's body, decoded, to ``handle`` on the
    trio thread in order. A body that does not decode ends the stream INVALID_ARGUMENT."""

    handle: Callable[[Any], None]
    decode: Callable[[bytes], Any]


class StreamHost(Protocol):
    """What the stream needs of its ``GrpcServer``."""

    peer_verifier: PeerVerifier | None
    auth_refusals: RateLimitedLog
    inbound_tasks: set[asyncio.Task[Any]]
    """The handlers of open streams, which the server ends when it stops."""

    def log_refusal(self, context: Any, name: str, problem: str) -> None: ...

    @property
    def grace_s(self) -> float: ...

    def queue_for_trio(
        self, name: str, handle: Callable[[Any], None], request: Any
    ) -> tuple[bool, asyncio.Future[None] | None]: ...


class _Acks:
    """Cumulative acknowledgements of one stream, one write at a time."""

    def __init__(self, context: Any, skey: bytes) -> None:
        self._context, self._skey = context, skey
        self._due = 0  # highest frame handed on
        self._sent = 0
        self._task: asyncio.Task[None] | None = None

    def up_to(self, seq: int) -> None:
        self._due = seq
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        while self._sent < self._due:
            await asyncio.sleep(ACK_DELAY_S)
            seq = self._due
            ack = pb.StreamAck(seq=seq, mac=ack_mac(self._skey, seq))
            await self._context.write(ack.SerializeToString())
            self._sent = seq

    async def flush(self) -> None:
        """Acknowledge at once what was handed on (a stopping server's last word, so that
        its sender does not send those frames again to the node's next process)."""
        self.stop()
        if self._sent < self._due:
            seq = self._due
            ack = pb.StreamAck(seq=seq, mac=ack_mac(self._skey, seq))
            with contextlib.suppress(Exception):
                await self._context.write(ack.SerializeToString())
                self._sent = seq

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


class _Epochs:
    """The last frame number handed on per sender epoch, the least recently used forgotten."""

    def __init__(self) -> None:
        self._last: OrderedDict[bytes, int] = OrderedDict()

    def last(self, epoch: bytes) -> int:
        return self._last.get(epoch, 0)

    def handed(self, epoch: bytes, seq: int) -> None:
        self._last[epoch] = max(seq, self._last.get(epoch, 0))
        self._last.move_to_end(epoch)
        while len(self._last) > EPOCHS_REMEMBERED:
            self._last.popitem(last=False)


class Refused(Exception):
    """Ends a stream with this status (raised by a session)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(code, message)
        self.code, self.message = code, message


class Session(Protocol):
    """One open stream's receiving side."""

    async def receive(self, frames: Any) -> None:
        """Read frames until the sender ends the stream; raise Refused to end it."""

    async def stopping(self) -> None:
        """The server is stopping: the session's last word to the sender, if any."""

    def close(self) -> None: ...


OpenSession = Callable[[Any, bytes, bytes], Session]
"""(the call's context, the stream's key, the sender's epoch) -> its session."""


def signed_stream_method(
    host: StreamHost, path: str, name: str, open_session: OpenSession
) -> Callable[..., Awaitable[None]]:
    """The grpc.aio handler (raw bytes in and out) of a signed stream ``name`` at ``path``:
    checks the opening, then lets a session read the frames until the sender or the server
    ends the stream."""

    async def method(_servicer: Any, frames: Any, context: Any) -> None:
        try:
            skey, epoch = _open(host, path, name, context)
            await context.send_initial_metadata(())  # accepted (``peer_stream.open_stream``)
            session = open_session(context, skey, epoch)
            # The frames are read in a task of their own, which the server cancels when it
            # stops; this handler then ends the call itself (cancelling the call's own task
            # leaves it to the server's grace period).
            receiving = asyncio.get_running_loop().create_task(session.receive(frames))
            host.inbound_tasks.add(receiving)
            try:
                await asyncio.shield(receiving)
            except asyncio.CancelledError:
                if not receiving.cancelled():  # the call itself was (the peer went away)
                    receiving.cancel()
                    raise
                await session.stopping()
                raise Refused(grpc.StatusCode.UNAVAILABLE, "node is shutting down") from None
            finally:
                host.inbound_tasks.discard(receiving)
                session.close()
        except Refused as e:
            await context.abort(e.code, e.message)

    method.__name__ = method.__qualname__ = name
    return method


def stream_method(
    host: StreamHost, path: str, name: str, stream: InboundStream
) -> Callable[..., Awaitable[None]]:
    """The handler of an inbound stream of batches (``DeliverStream``)."""
    epochs = _Epochs()

    def open_session(context: Any, skey: bytes, epoch: bytes) -> Session:
        return _Batches(host, name, stream, skey, epoch, epochs, _Acks(context, skey))

    return signed_stream_method(host, path, name, open_session)


class _Batches:
    """A stream of batches, each handed on once, acknowledged in bulk."""

    def __init__(
        self,
        host: StreamHost,
        name: str,
        stream: InboundStream,
        skey: bytes,
        epoch: bytes,
        epochs: _Epochs,
        acks: _Acks,
    ) -> None:
        self._host, self._name, self._stream = host, name, stream
        self._skey, self._epoch, self._epochs, self._acks = skey, epoch, epochs, acks

    async def receive(self, frames: Any) -> None:
        expected = 0  # the number the next frame must carry; 0: the first sets it
        name, epochs, epoch = self._name, self._epochs, self._epoch
        async for raw in frames:
            frame = decoded(pb.StreamFrame.FromString, raw, name, "frame")
            check_frame(frame, self._skey, expected, name)
            expected = frame.seq + 1
            handled = None
            if frame.seq > epochs.last(epoch):
                request = decoded(self._stream.decode, frame.body, name, "body")
                queued, handled = self._host.queue_for_trio(name, self._stream.handle, request)
                if not queued:
                    raise Refused(grpc.StatusCode.UNAVAILABLE, "node is shutting down")
                # Queued is handed on: recorded before any wait, so that a stream broken
                # while trio catches up does not get the frame handed on again.
                epochs.handed(epoch, frame.seq)
            self._acks.up_to(frame.seq)
            if handled is not None:
                await handled  # trio is behind: the sender waits (HTTP/2 flow control)

    async def stopping(self) -> None:
        await self._acks.flush()

    def close(self) -> None:
        self._acks.stop()


def check_frame(frame: pb.StreamFrame, skey: bytes, expected: int, name: str) -> None:
    """A frame's MAC, and its number: ``expected`` (any but 0 for a stream's first frame)."""
    if not frame_matches(skey, frame.seq, frame.body, frame.mac):
        raise Refused(grpc.StatusCode.UNAUTHENTICATED, f"{name}: frame MAC does not match")
    if frame.seq == 0 or (expected and frame.seq != expected):
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: frame out of order")


def _open(host: StreamHost, path: str, name: str, context: Any) -> tuple[bytes, bytes]:
    """The stream's key and its sender's epoch, once the opening's credential checked out."""
    verifier = host.peer_verifier
    assert verifier is not None
    metadata = dict(_pairs(context.invocation_metadata() or ()))
    epoch = parse_epoch(metadata.get(EPOCH_METADATA_KEY))
    if epoch is None:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: no sender epoch")
    value = metadata.get(METADATA_KEY)
    digest = body_digest(epoch)
    problem = verifier.verify(path, value, digest)
    cred = parse(value) if isinstance(value, str) and problem is None else None
    key = opening_key(verifier.keys, path, cred, digest) if cred is not None else None
    if key is None or cred is None:
        host.log_refusal(context, name, problem or "wrong peer credential")
        raise Refused(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid peer credential")
    host.auth_refusals.flush()  # counts of refusals whose interval is over
    return stream_key(key, path, cred.nonce_hex), epoch


def decoded(decode: Callable[[bytes], Any], raw: bytes, name: str, what: str) -> Any:
    try:
        return decode(raw)
    except DecodeError as e:
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT, f"{name}: the {what} does not decode: {e}"
        ) from None


def _pairs(metadata: Any) -> Iterator[tuple[str, Any]]:
    for item in metadata:
        with contextlib.suppress(TypeError, ValueError):
            key, value = item
            yield key, value
