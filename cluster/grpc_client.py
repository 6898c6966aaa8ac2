"""The client side of gRPC between cluster nodes, driven from trio.

A call is the sync stub's ``.future()`` with a done-callback that reschedules the waiting trio
task (``_Waiter``). grpcio completes such calls on a per-channel "spin" thread that it starts
when a call begins on an idle channel and ends when the last call finishes; between sporadic
calls that meant a new thread per call, and ``Thread.start`` blocks the trio thread until the
new thread runs. Each channel here keeps its spin thread for its lifetime
(``_keep_spin_thread``): 36 % less CPU per call in a loop of calls, and about a third of the
trio thread's time at 300 sends/s in the bench was starting those threads.

A peer signs each call with the cluster password (``cluster/peerauth.py``) over the bytes that
travel: the request is serialized once, signed and sent as those bytes, and the reply is decoded
only once its MAC for this call checked out. The server side is ``cluster/bridge.py``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import outcome
import trio

from cluster.peerauth import (
    METADATA_KEY,
    REPLY_METADATA_KEY,
    PeerKeys,
    parse,
    recipient_of,
    reply_matches,
    sign,
)

log = logging.getLogger("raftchat.bridge")

AUTH_METADATA_KEY = METADATA_KEY
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CLIENT_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # A restarted peer should be reachable again within about a second, not after grpc's
    # default backoff that grows to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    # Notice a silently dead peer (power loss, partition) on an idle connection within ~15 s.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


class GrpcCallError(Exception):
    """A call ended with a non-OK status (including UNAVAILABLE and DEADLINE_EXCEEDED)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


class _Waiter:
    """Wakes one trio task, at most once, from grpc's callback thread."""

    def __init__(self) -> None:
        self.task = trio.lowlevel.current_task()
        self.token = trio.lowlevel.current_trio_token()
        self.waiting = True

    def on_done(self, fut: Any) -> None:
        """grpc thread (or the caller's, if the future is already done)."""
        result = outcome.capture(fut.result)
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(self._wake, result)

    def _wake(self, result: outcome.Outcome[Any]) -> None:
        # Trio thread. After a cancel the task is no longer parked here; rescheduling it
        # would corrupt trio's scheduler.
        if self.waiting:
            self.waiting = False
            trio.lowlevel.reschedule(self.task, result)


class _SignedMethod:
    """A unary-unary method that serializes the request once, signs those bytes and sends
    them as they are (re-serializing could give other bytes: protobuf is not canonical)."""

    def __init__(
        self,
        path: str,
        serialize: Callable[[Any], bytes],
        raw: Any,
        keys: PeerKeys,
        to: str,
        deserialize: Callable[[bytes], Any] | None = None,
    ) -> None:
        self._path, self._serialize, self._raw, self._keys = path, serialize, raw, keys
        self._to = to
        self._deserialize = deserialize

    def future(self, request: Any, timeout: float, metadata: Sequence[Any] = ()) -> Any:
        body = self._serialize(request)
        value = sign(self._keys, self._path, body, to=self._to)
        signed = ((AUTH_METADATA_KEY, value), *metadata)
        fut = self._raw.future(body, timeout=timeout, metadata=signed)
        cred = parse(value)
        assert cred is not None
        return _VerifiedReply(fut, self._keys, self._path, cred.nonce_hex, self._deserialize)


class _VerifiedReply:
    """A call's future whose result is the reply decoded only once its MAC (trailing metadata
    ``x-raftchat-reply``, for this call's nonce) checked out under the cluster's keys."""

    def __init__(
        self,
        fut: Any,
        keys: PeerKeys,
        path: str,
        nonce_hex: str,
        deserialize: Callable[[bytes], Any] | None,
    ) -> None:
        self._fut, self._keys, self._path, self._nonce = fut, keys, path, nonce_hex
        self._deserialize = deserialize

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._fut.add_done_callback(lambda _fut: callback(self))

    def cancel(self) -> bool:
        return bool(self._fut.cancel())

    def result(self, timeout: float | None = None) -> Any:
        raw = self._fut.result(timeout)
        tag = next(
            (v for k, v in self._fut.trailing_metadata() or () if k == REPLY_METADATA_KEY), None
        )
        if not reply_matches(self._keys, self._path, self._nonce, raw, tag):
            raise GrpcCallError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{self._path}: the reply is not signed by a member of the cluster",
            )
        return raw if self._deserialize is None else self._deserialize(raw)


class _SigningChannel:
    """Stands in for the channel while a generated stub is built, so that each of its unary
    methods signs its calls (``_SignedMethod``); the peer service has no other kind."""

    def __init__(self, channel: grpc.Channel, keys: PeerKeys, to: str) -> None:
        self._channel, self._keys, self._to = channel, keys, to

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        **kwargs: Any,
    ) -> _SignedMethod:
        # Neither serializer: the request goes as the bytes that were signed, and the reply is
        # decoded once its MAC has been checked.
        raw = self._channel.unary_unary(method, **kwargs)
        return _SignedMethod(
            method, request_serializer or bytes, raw, self._keys, self._to, response_deserializer
        )

    def stream_stream(self, method: str, *_args: Any, **_kwargs: Any) -> Callable[..., Any]:
        """A stream is not made through the stub: ``cluster/peer_stream.py`` opens and signs
        it, frame by frame."""

        def refuse(*_a: Any, **_k: Any) -> Any:
            raise TypeError(f"{method}: a signed stream is opened by cluster.peer_stream")

        return refuse


class GrpcClient:
    def __init__(
        self,
        target: str,
        stub_class: Callable[[Any], Any],
        peer_auth: PeerKeys | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.target = target
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=CLIENT_OPTIONS)
        else:  # TLS (``cluster/grpc_tls.py``)
            self._channel = grpc.secure_channel(target, credentials, options=CLIENT_OPTIONS)
        self._pinned = _keep_spin_thread(self._channel)
        to = recipient_of(target)
        signing = _SigningChannel(self._channel, peer_auth, to) if peer_auth else None
        self._stub = stub_class(signing or self._channel)

    async def call(self, method: str, request: Any, timeout_s: float) -> Any:
        """Call ``method``; raises GrpcCallError on any non-OK status. Always has a deadline."""
        await trio.lowlevel.checkpoint_if_cancelled()
        fut = getattr(self._stub, method).future(request, timeout=timeout_s)
        waiter = _Waiter()

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            waiter.waiting = False
            fut.cancel()  # tells the server, whose handler is then cancelled too
            return trio.lowlevel.Abort.SUCCEEDED

        fut.add_done_callback(waiter.on_done)
        try:
            return await trio.lowlevel.wait_task_rescheduled(abort)
        except grpc.FutureCancelledError:  # only if someone else cancelled it (close())
            raise GrpcCallError(grpc.StatusCode.CANCELLED, "call cancelled") from None
        except grpc.RpcError as e:
            raise GrpcCallError(e.code(), e.details() or "") from None

    def close(self) -> None:
        if self._pinned:
            _release_spin_thread(self._channel)
        self._channel.close()


def _keep_spin_thread(channel: grpc.Channel) -> bool:
    """Count one never-ending call on the channel so that grpcio's spin thread, started now,
    stays for the channel's life (it exits when the call count drops to zero). Relies on
    grpcio's private ``_call_state`` (grpcio is pinned); without it, calls still work as
    before, a thread per burst."""
    from grpc import _channel

    state = getattr(channel, "_call_state", None)
    start = getattr(_channel, "_run_channel_spin_thread", None)
    if state is None or start is None or not hasattr(state, "managed_calls"):
        log.warning("grpcio internals changed: a spin thread per call burst")
        return False
    with state.lock:
        state.managed_calls += 1
        if state.managed_calls == 1:
            start(state)
    return True


def _release_spin_thread(channel: grpc.Channel) -> None:
    """Let the spin thread end before the channel closes (closing under it makes it die with
    a traceback). It ends when a call completes and none is left, so one last call, to a
    method no server has, gives our count back from its done-callback, which runs on the spin
    thread just before that check."""
    state = channel._call_state

    def give_back(_fut: Any) -> None:
        with state.lock:
            state.managed_calls -= 1

    last = channel.unary_unary(_NO_SUCH_METHOD).future(b"", timeout=0.2)
    last.add_done_callback(give_back)
    with contextlib.suppress(grpc.RpcError, grpc.FutureCancelledError):
        last.result()


_NO_SUCH_METHOD = "/raftchat.internal.Nothing/Nothing"


class GrpcClients:
    """One client (one channel, so one HTTP/2 connection) per peer address."""

    def __init__(
        self,
        stub_class: Callable[[Any], Any],
        peer_auth: PeerKeys | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._stub_class = stub_class
        self._peer_auth = peer_auth
        self._credentials = credentials
        self._clients: dict[str, GrpcClient] = {}

    def get(self, target: str) -> GrpcClient:
        client = self._clients.get(target)
        if client is None:
            client = self._clients[target] = GrpcClient(
                target, self._stub_class, self._peer_auth, self._credentials
            )
        return client

    def close_all(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
