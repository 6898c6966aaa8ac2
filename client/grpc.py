"""Clients of the public gRPC API (``proto/raftchat/v1/api.proto``, ``docs/grpc.md``):
``SyncGrpcClient`` (blocking) and ``GrpcClient`` (trio). Usage::

    with SyncGrpcClient(["127.0.0.11:5002", "127.0.0.12:5002"], api_token=token) as rpc:
        sent = rpc.send("alice", "bob", ChannelType.PERSON, b"hi")
        msg = rpc.get_by_seq("bob", "alice", ChannelType.PERSON, sent.message_seq)
        info = rpc.call("Channels", "GetInfo", v1.Channel(channel_id="team", channel_type=2))

Over TLS: ``SyncGrpcClient(targets, ca_file="ca.pem")`` (``tls=True`` trusts the system's CAs;
``cert_file`` and ``key_file`` present a client certificate where the port asks for one).

Both share everything but the waiting: the request builders, the failover between targets and
the error parsing live here once; the trio client waits for the same gRPC futures in trio's
worker threads (``grpc.aio`` is asyncio-only), cancelling the call when its task is cancelled.
Every call has a deadline (``timeout_s``); a failed one raises ``GrpcError``. Replies are the
proto messages (``proto.raftchat.v1.api_pb2``). Calls carry ``authorization: Bearer <token>``
metadata: the node's ``auth.api_token`` (``api_token=``), or for the ``Cluster`` service its
``auth.admin_token`` (``admin_token=``); the raw stubs too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypedDict, TypeVar, Unpack, cast

import grpc
import trio
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from proto.raftchat.v1 import api_pb2 as v1
from proto.raftchat.v1 import api_pb2_grpc as v1_grpc

from ._bind import Async, Blocking, endpoint
from .defaults import DEFAULT_GRPC_TARGET
from .errors import _BY_STATUS as HTTP_ERRORS
from .errors import ApiError
from .routes import SendOptions, SendSettings

R = TypeVar("R")

DETAILS_KEY = "grpc-status-details-bin"
"""The trailer holding a ``raftchat.v1.Status`` (wire-compatible with ``google.rpc.Status``)."""
REASON_KEY = "raftchat-reason-code"
"""Plain trailing metadata: the reason code as a decimal string, when there is one."""

DEFAULT_TIMEOUT_S = 10.0
"""The deadline of every unary call, from its start and across its failover."""


class GrpcError(ApiError):
    """A gRPC call failed. ``code`` is the ``grpc.StatusCode``, ``message`` the status message
    (the HTTP API's ``msg``), ``reason_code`` the WKProto reason code (a ``ReasonCode`` when
    known, None when the server gave none) and ``status`` the HTTP status of the same failure
    (0 when the failure came from the transport or the client, say a deadline).

    A failure the server answered is also the ``ApiError`` subclass of its HTTP status, so
    ``except NotFound`` (or ``Refused``, ``Unavailable``...) catches it from either API."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason_code: int | None = None,
        *,
        rpc: str = "",
        http_status: int = 0,
    ) -> None:
        super().__init__(http_status, message, reason_code, method="gRPC", path=rpc)
        self.code = code
        self.rpc = rpc
        reason = f" (reason {self.reason_code!r})" if self.reason_code is not None else ""
        self.args = (f"{rpc}: {code.name}: {message}{reason}".lstrip(": "),)

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, rpc: str = "") -> GrpcError:
        """Parse a failed call (a ``grpc.Call``): the ``ErrorInfo`` of the status details
        trailer, else the ``raftchat-reason-code`` entry, else the bare status."""
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = (error.details() if hasattr(error, "details") else None) or ""
        trailers = (
            error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        ) or ()
        reason: int | None = None
        http_status = 0
        info = error_info(trailers)
        if info is not None:
            reason = info.reason_code or None
            message = info.message or message
            http_status = info.http_status
        else:
            text = dict(trailers).get(REASON_KEY)
            if isinstance(text, str) and text.isdigit():
                reason = int(text)
        kind = _BY_HTTP_STATUS.get(http_status, cls) if cls is GrpcError else cls
        return kind(code, message, reason, rpc=rpc, http_status=http_status)


_BY_HTTP_STATUS: dict[int, type[GrpcError]] = {
    status: cast(
        type[GrpcError], type(f"Grpc{base.__name__}", (GrpcError, base), {"__doc__": base.__doc__})
    )
    for status, base in HTTP_ERRORS.items()
}
"""``GrpcError``s that are also ``NotFound``, ``Refused``... (by ``ErrorInfo.http_status``)."""


def error_info(trailers: Sequence[tuple[str, str | bytes]]) -> v1.ErrorInfo | None:
    """The ``ErrorInfo`` in a call's trailing metadata, or None (absent or undecodable)."""
    raw = dict(trailers).get(DETAILS_KEY)
    if not isinstance(raw, bytes):
        return None
    try:
        status = v1.Status.FromString(raw)
        for detail in status.details:
            info = v1.ErrorInfo()
            if detail.Unpack(info):
                return info
    except DecodeError:
        return None
    return None


# --- requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc(Generic[R]):
    """One unary call, ready to send: ``service`` and ``method`` as in the ``.proto``."""

    service: str
    method: str
    request: ProtoMessage
    failover: bool = True
    """Whether UNAVAILABLE may send it again to the next target."""

    @property
    def name(self) -> str:
        return f"{self.service}.{self.method}"


def send_request(
    from_uid: str,
    channel_id: str,
    channel_type: int,
    payload: bytes | str,
    **options: Unpack[SendOptions],
) -> Rpc[v1.SendReply]:
    """``Messages.Send`` as ``from_uid`` ("" sends as the system), with the HTTP client's
    ``SendOptions`` (a ``client_msg_no`` is generated when absent, so that a resend after
    UNAVAILABLE returns the original ids instead of storing the message twice)."""
    o = SendSettings.of(options)
    request = v1.SendRequest(
        from_uid=from_uid,
        channel_id=channel_id,
        channel_type=channel_type,
        payload=payload.encode() if isinstance(payload, str) else payload,
        client_msg_no=o.client_msg_no,
        header=v1.Header(red_dot=o.red_dot, no_persist=o.no_persist, sync_once=o.sync_once),
        setting=o.setting,
        expire=o.expire,
    )
    return Rpc("Messages", "Send", request)


def get_by_seq_request(
    login_uid: str, channel_id: str, channel_type: int, message_seq: int
) -> Rpc[v1.Message]:
    """``Messages.GetBySeq``: the message at one seq as ``login_uid`` reads it."""
    request = v1.GetBySeqRequest(
        login_uid=login_uid,
        channel_id=channel_id,
        channel_type=channel_type,
        message_seq=message_seq,
    )
    return Rpc("Messages", "GetBySeq", request)


def sync_request(
    login_uid: str,
    channel_id: str,
    channel_type: int,
    start_message_seq: int = 0,
    end_message_seq: int = 0,
    *,
    limit: int = 0,
    pull_mode: int = 1,
) -> Rpc[v1.SyncReply]:
    """``Messages.Sync``; like ``SyncHttpClient.messagesync``, reads forward (``pull_mode``
    1) by default. ``limit`` 0 is the server's 100."""
    request = v1.SyncRequest(
        login_uid=login_uid,
        channel_id=channel_id,
        channel_type=channel_type,
        start_message_seq=start_message_seq,
        end_message_seq=end_message_seq,
        limit=limit,
        pull_mode=pull_mode,
    )
    return Rpc("Messages", "Sync", request)


class SubscribeTarget(TypedDict, total=False):
    """What ``subscribe`` streams: one user (``uid``) or one channel (``channel``: (id, type),
    read as ``login_uid``, required for a person channel); ``positions``: (channel id, type) ->
    the last seq received, to resume from; ``only_new``: start at the channels' heads."""

    uid: str
    channel: tuple[str, int]
    login_uid: str
    positions: Mapping[tuple[str, int], int]
    only_new: bool


def subscribe_request(**target: Unpack[SubscribeTarget]) -> v1.SubscribeRequest:
    """A ``Messages.Subscribe`` request (see ``SubscribeTarget``)."""
    uid, channel = target.get("uid"), target.get("channel")
    if (uid is None) == (channel is None):
        raise ValueError("subscribe to either a uid or a channel")
    positions = [
        v1.Position(channel_id=c, channel_type=t, message_seq=s)
        for (c, t), s in target.get("positions", {}).items()
    ]
    only_new = target.get("only_new", False)
    if uid is not None:
        return v1.SubscribeRequest(uid=uid, positions=positions, only_new=only_new)
    assert channel is not None
    chosen = v1.ChannelTarget(
        channel_id=channel[0], channel_type=channel[1], login_uid=target.get("login_uid", "")
    )
    return v1.SubscribeRequest(channel=chosen, positions=positions, only_new=only_new)


def call_request(
    service: str, method: str, request: ProtoMessage, *, failover: bool = True
) -> Rpc[Any]:
    """Any unary RPC, e.g. ``call("Channels", "GetInfo", v1.Channel(...))``, with the deadline,
    failover and ``GrpcError`` of the other methods (``failover=False``: never send it twice,
    for ``Edit`` or ``SendBatch`` when that matters)."""
    return Rpc(service, method, request, failover)


# --- the clients ---------------------------------------------------------------------------


def tls_credentials(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials:
    """TLS trusting ``ca_file`` (None: the system's CAs), presenting ``cert_file`` and
    ``key_file`` (PEM) when the server asks for a client certificate."""

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as f:
            return f.read()

    if (cert_file is None) != (key_file is None):
        raise ValueError("cert_file and key_file go together")
    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))


CLUSTER_SERVICE = "/raftchat.v1.Cluster/"


class _CallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, details: Any, metadata: list[tuple[str, str]]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class TokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds ``authorization: Bearer`` metadata to every call on a channel: the admin token on
    the ``Cluster`` service, the API token on the others (None: none)."""

    def __init__(self, api_token: str | None, admin_token: str | None) -> None:
        self.api_token = api_token
        self.admin_token = admin_token

    def _details(self, details: Any) -> Any:
        admin = str(details.method).startswith(CLUSTER_SERVICE)
        token = self.admin_token if admin else self.api_token
        if not token:
            return details
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {token}")]
        return _CallDetails(details, metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class Stubs:
    """One target's channel and the five service stubs on it."""

    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None = None,
        api_token: str | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.target = target
        if credentials is None:
            self._raw = grpc.insecure_channel(target)
        else:
            self._raw = grpc.secure_channel(target, credentials)
        self.channel = grpc.intercept_channel(self._raw, TokenInterceptor(api_token, admin_token))
        self.messages = v1_grpc.MessagesStub(self.channel)
        self.channels = v1_grpc.ChannelsStub(self.channel)
        self.users = v1_grpc.UsersStub(self.channel)
        self.conversations = v1_grpc.ConversationsStub(self.channel)
        self.cluster = v1_grpc.ClusterStub(self.channel)

    def close(self) -> None:
        self._raw.close()

    def callable(self, rpc: Rpc[Any]) -> Any:
        return getattr(getattr(self, rpc.service.lower()), rpc.method)


class _Attempt(Generic[R]):
    """One unary call through its failover; the clients only wait for the futures."""

    def __init__(self, client: _Base, rpc: Rpc[R]) -> None:
        self.client = client
        self.rpc = rpc
        self.deadline = time.monotonic() + client.timeout_s
        self.tries = 0

    def start(self) -> Any:
        """The call on the current target, as a ``grpc.Future``."""
        self.tries += 1
        left = max(0.0, self.deadline - time.monotonic())
        return self.client.stubs.callable(self.rpc).future(self.rpc.request, timeout=left)

    def failed(self, error: grpc.RpcError) -> None:
        """Returns when the call should be tried again (on the next target); else raises its
        ``GrpcError``."""
        parsed = GrpcError.from_rpc_error(error, self.rpc.name)
        if (
            self.rpc.failover
            and time.monotonic() < self.deadline
            and self.client.failover(parsed, self.tries)
        ):
            return
        raise parsed from error


class Subscription:
    """A ``Messages.Subscribe`` stream: iterate it for ``SubscribeEvent``s (the first is
    ``start``). It ends when the server ends the stream or ``cancel`` is called (from any
    thread); a failure raises ``GrpcError``. A stream that fails with UNAVAILABLE before its
    first event is opened again on the next target."""

    def __init__(
        self, client: _Base, request: v1.SubscribeRequest, timeout_s: float | None
    ) -> None:
        self.client = client
        self.request = request
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._call: Any = None
        self._cancelled = False
        self._received = False
        self._tries = 0

    def next_event(self) -> v1.SubscribeEvent | None:
        """The next event, or None once the stream has ended (blocks)."""
        while True:
            with self._lock:
                if self._cancelled:
                    return None
                if self._call is None:
                    self._tries += 1
                    stub = self.client.stubs.messages
                    self._call = stub.Subscribe(self.request, timeout=self.timeout_s)
                call = self._call
            try:
                event: v1.SubscribeEvent = next(call)
            except StopIteration:
                return None
            except grpc.RpcError as e:
                if self._cancelled:
                    return None
                error = GrpcError.from_rpc_error(e, "Messages.Subscribe")
                if not self._received and self.client.failover(error, self._tries):
                    with self._lock:
                        self._call = None
                    continue
                raise error from e
            self._received = True
            return event

    def cancel(self) -> None:
        """End the stream (the gRPC call is cancelled); iteration stops."""
        with self._lock:
            self._cancelled = True
            if self._call is not None:
                self._call.cancel()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> v1.SubscribeEvent:
        event = self.next_event()
        if event is None:
            raise StopIteration
        return event

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class _Base:
    """The targets, their channels and stubs, and the failover rule, shared by both clients."""

    def __init__(
        self,
        targets: str | Sequence[str] = DEFAULT_GRPC_TARGET,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        tls: bool = False,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        api_token: str | None = None,
        admin_token: str | None = None,
    ) -> None:
        listed = [targets] if isinstance(targets, str) else list(targets)
        if not listed:
            raise ValueError("at least one target is needed")
        self.targets = listed
        self.timeout_s = timeout_s
        """The deadline of every unary call (from its start, across its failover)."""
        secure = tls or ca_file is not None or cert_file is not None
        credentials = tls_credentials(ca_file, cert_file, key_file) if secure else None
        self._stubs = [Stubs(t, credentials, api_token, admin_token) for t in listed]
        self._current = 0

    @property
    def stubs(self) -> Stubs:
        """The current target's channel and stubs."""
        return self._stubs[self._current]

    @property
    def target(self) -> str:
        return self.stubs.target

    # The raw stubs of the current target: no deadline, failover or GrpcError of their own.
    @property
    def messages(self) -> v1_grpc.MessagesStub:
        return self.stubs.messages

    @property
    def channels(self) -> v1_grpc.ChannelsStub:
        return self.stubs.channels

    @property
    def users(self) -> v1_grpc.UsersStub:
        return self.stubs.users

    @property
    def conversations(self) -> v1_grpc.ConversationsStub:
        return self.stubs.conversations

    @property
    def cluster(self) -> v1_grpc.ClusterStub:
        return self.stubs.cluster

    def failover(self, error: GrpcError, tries: int) -> bool:
        """Whether a call that failed with ``error`` after ``tries`` goes to the next target
        (which it then makes current): UNAVAILABLE, while some target was not tried yet."""
        if error.code != grpc.StatusCode.UNAVAILABLE or tries >= len(self._stubs):
            return False
        self._current = (self._current + 1) % len(self._stubs)
        return True

    call = endpoint(call_request)
    send = endpoint(send_request)
    get_by_seq = endpoint(get_by_seq_request)
    sync = endpoint(sync_request)

    def close(self) -> None:
        for s in self._stubs:
            s.close()


class SyncGrpcClient(Blocking, _Base):
    """The blocking client; usable from any thread."""

    def run(self, rpc: Rpc[R]) -> R:
        """Send a built call (what every RPC method does)."""
        attempt = _Attempt(self, rpc)
        while True:
            try:
                reply: R = attempt.start().result()
                return reply
            except grpc.RpcError as e:
                attempt.failed(e)

    def subscribe(
        self, *, timeout_s: float | None = None, **target: Unpack[SubscribeTarget]
    ) -> Subscription:
        """A user's (``uid=``) or a channel's (``channel=(id, type)``, ``login_uid=``) stream
        (``SubscribeTarget``); no deadline unless ``timeout_s``. Use it as a context manager,
        which cancels it on exit."""
        return Subscription(self, subscribe_request(**target), timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class GrpcClient(Async, _Base):
    """The trio client: the same methods as coroutines, ``subscribe`` an async iterator. Use it
    as ``async with GrpcClient(targets) as rpc:`` (or call ``aclose``)."""

    async def run(self, rpc: Rpc[R]) -> R:
        """Send a built call; cancelling the task cancels the gRPC call."""
        attempt = _Attempt(self, rpc)
        while True:
            future = attempt.start()
            try:
                reply: R = await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)
                return reply
            except grpc.RpcError as e:
                attempt.failed(e)
            finally:
                future.cancel()  # when the task was cancelled; a no-op once done

    async def subscribe(
        self, *, timeout_s: float | None = None, **target: Unpack[SubscribeTarget]
    ) -> AsyncIterator[v1.SubscribeEvent]:
        """``SyncGrpcClient.subscribe`` as an async iterator: each event is read in a trio
        worker thread; cancelling the task (or closing the iterator: use
        ``contextlib.aclosing``) cancels the gRPC call."""
        stream = Subscription(self, subscribe_request(**target), timeout_s)
        try:
            while True:
                event = await trio.to_thread.run_sync(stream.next_event, abandon_on_cancel=True)
                if event is None:
                    return
                yield event
        finally:
            stream.cancel()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
