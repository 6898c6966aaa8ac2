"""A WKProto session that survives lost connections: ``open_session``.

It keeps one connection (``client.wkproto``) to one node of a list, and when it is lost
reconnects with exponential backoff and jitter, trying the nodes in turn. After every
(re)connection it first fetches what it missed, over the HTTP API (``/channel/messagesync``
from the last seq it delivered + 1, as its own uid), for each channel it has seen, sent to or
follows, and only then delivers live messages. Everything goes through one de-duplication
(``client.dedupe``): per channel, nothing at or below the last delivered seq, and no message id
twice. A live message that skips seqs has the hole filled from the log first. Usage::

    async with open_session(["127.0.0.11:5100"], uid="bob", token="t",
                            http=["http://127.0.0.11:5001"]) as s:
        await s.send("alice", ChannelType.PERSON, b"hi")
        message = await s.receive(timeout_s=10)
"""

from __future__ import annotations

import math
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, Unpack

import trio

from proto.wkproto import ReasonCode

from ._groups import sole_exception
from .backoff import Backoff
from .dedupe import ChannelKey, Delivered
from .errors import (
    ClientClosed,
    ClientError,
    ConnectRefused,
    Disconnected,
    SendRefused,
    Unreachable,
)
from .http import RETRIED_REASONS, HttpClient
from .models import Message
from .wkproto import SendOptions, SendResult, WKClient, open_client

RECONNECT_BACKOFF = Backoff(0.2, 5.0)

FINAL_REFUSALS = frozenset(
    {
        ReasonCode.AUTH_FAIL,
        ReasonCode.BAN,
        ReasonCode.CLIENT_KEY_IS_EMPTY,
        ReasonCode.PROTOCOL_UPGRADE_REQUIRED,
    }
)
"""CONNACK refusals that another try would only repeat: the session fails with them."""


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """Where the session's connection stands. ``open_session(on_state=...)`` is called with
    every new state, and ``Session.state`` holds the current one."""

    phase: Literal["connecting", "connected", "retrying", "failed"]
    """``connecting``: an attempt has started (connect, login, catch-up); ``connected``:
    logged in and caught up; ``retrying``: the connection ended or the attempt failed, the next
    one starts after ``retry_in_s``; ``failed``: the session gave up (``Session.failed``)."""
    address: tuple[str, int]
    """The node tried, logged in at, lost, or last tried."""
    node_id: int = 0
    """When connected: the node's id from its CONNACK (0 from a server that sends none)."""
    error: BaseException | None = None
    """When retrying or failed: why the connection ended or the attempt failed."""
    was_connected: bool = False
    """When retrying: the connection had logged in (it was lost, rather than never up)."""
    retry_in_s: float = 0.0
    """When retrying: the wait before the next attempt (backoff with jitter)."""


def parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    """``"host:port"`` (or a (host, port) pair) as a pair."""
    if isinstance(address, tuple):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    return host, int(port)


class Session:
    """A logged-in user whose connection is kept up. Obtain one from ``open_session``."""

    def __init__(
        self,
        nodes: Sequence[tuple[str, int]],
        *,
        uid: str,
        token: str,
        http: HttpClient | None,
        transport: Literal["tcp", "ws"],
        encrypt: bool,
        device_flag: int,
        device_id: str,
        backoff: Backoff,
        connect_timeout_s: float,
        delivered: Delivered,
        on_state: Callable[[ConnectionState], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        route: bool = False,
    ) -> None:
        self.uid = uid
        self._route = route
        self.nodes = list(nodes)
        self.http = http
        """Used to catch up after a reconnection; without it, what was missed stays missed."""
        self.connections = 0
        """Successful logins so far (1 after the first; more after reconnections)."""
        self.last_error: BaseException | None = None
        """Why the last connection ended or the last attempt failed."""
        self.failed: ClientError | None = None
        """Set when the session gave up (a final refusal, a kick); it then does nothing more."""
        self.delivered = delivered
        self.state = ConnectionState("connecting", self.nodes[0])
        """The connection's current state (see ``ConnectionState``)."""
        self._on_state = on_state
        self._token = token
        self._transport = transport
        self._encrypt = encrypt
        self._device_flag = device_flag
        # One device id for every reconnection: the server sees the same device come back.
        self._device_id = device_id
        self._backoff = backoff
        self._connect_timeout_s = connect_timeout_s
        self._ssl_context = ssl_context
        self._client: WKClient | None = None
        self._connected = trio.Event()
        self._changed = trio.Event()
        # Deliveries from the log and from the connection go through this lock, so that the
        # per-channel seq check sees them in order.
        self._deliver_lock = trio.Lock()
        self._inbox_in, self._inbox_out = trio.open_memory_channel[Message](math.inf)

    # --- state -----------------------------------------------------------------------------

    @property
    def client(self) -> WKClient | None:
        """The current connection, None while reconnecting."""
        return self._client

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def wait_connected(self, timeout_s: float = 10.0) -> WKClient:
        """The current connection, waiting for one; raises ``failed`` if the session gave up."""
        with trio.fail_after(timeout_s):
            while True:
                if self.failed is not None:
                    raise self.failed
                if self._client is not None:
                    return self._client
                await self._changed.wait()

    async def drop_connection(self) -> None:
        """Close the current connection as if the network had cut it (the session reconnects
        and catches up). For trying the resume path by hand and in tests."""
        if self._client is not None:
            await self._client.aclose()

    # --- sending ---------------------------------------------------------------------------

    async def send(
        self,
        channel_id: str,
        channel_type: int,
        payload: bytes,
        *,
        client_msg_no: str | None = None,
        timeout_s: float = 10.0,
        **options: Unpack[SendOptions],
    ) -> SendResult:
        """Send and wait for success, across reconnections: a send cut off by a lost
        connection or answered 17/18/10 is sent again with the same ``client_msg_no`` (the
        server answers a repeat with the original ids). Raises ``SendRefused`` with the reason
        code for any other refusal, ``trio.TooSlowError`` past ``timeout_s``. ``options``:
        ``flags`` (default RED_DOT), ``setting``, ``expire``, ``topic``, as ``WKClient.send``."""
        client_msg_no = client_msg_no or uuid.uuid4().hex
        attempt = 0
        with trio.fail_after(timeout_s):
            while True:
                client = await self.wait_connected(math.inf)
                try:
                    result = await client.send(
                        channel_id,
                        channel_type,
                        payload,
                        client_msg_no=client_msg_no,
                        timeout_s=math.inf,
                        **options,
                    )
                except ClientClosed:
                    # The run loop is reconnecting, but may not have let go of this connection
                    # yet: asking for a connection again right away would find the same one,
                    # and the retry would spin without ever letting the run loop go on.
                    while self._client is client:
                        await self._changed.wait()
                    continue
                if result.ok:
                    self.delivered.sent(
                        (channel_id, channel_type), result.message_id, result.message_seq
                    )
                    return result
                if result.reason_code not in RETRIED_REASONS:
                    raise SendRefused(result.reason_code, client_msg_no)
                await trio.sleep(self._backoff.delay(attempt))
                attempt += 1

    # --- receiving -------------------------------------------------------------------------

    async def receive(self, timeout_s: float = 10.0) -> Message:
        """The next message (caught-up ones first after a reconnection). Raises
        ``trio.TooSlowError`` past ``timeout_s``, and ``failed`` once the session gave up and
        every message was taken."""
        with trio.fail_after(timeout_s):
            try:
                return await self._inbox_out.receive()
            except trio.EndOfChannel:
                raise self.failed or ClientClosed("session closed") from None

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.receive(math.inf)
            except ClientClosed:
                return

    async def follow(
        self, channel_id: str, channel_type: int, after_seq: int | None = None
    ) -> None:
        """Deliver the channel's messages above ``after_seq`` (None: from its head now, so only
        new ones), now and after every reconnection, though none has arrived live yet. For a
        person channel, ``channel_id`` is the peer's uid. Needs ``http``."""
        http = self._need_http()
        key = (channel_id, int(channel_type))
        async with self._deliver_lock:
            if after_seq is None:
                last = await http.last_message(channel_id, channel_type, login_uid=self.uid)
                after_seq = last.message_seq if last is not None else 0
            self.delivered.follow(key, after_seq)
            if self.connected:
                await self._fetch(http, key, after_seq + 1)

    # --- the connection loop ---------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        node = 0
        try:
            while True:
                address = await self._routed() or self.nodes[node % len(self.nodes)]
                self._report(ConnectionState("connecting", address))
                logins = self.connections
                try:
                    await self._connection(*address)
                    attempt = 0  # it was up; the next failure starts the backoff again
                except ConnectRefused as e:
                    if e.reason_code in FINAL_REFUSALS:
                        self._give_up(e, address)
                        return
                    self.last_error = e
                except Disconnected as e:
                    self._give_up(e, address)
                    return
                except self._connection_errors() as e:
                    self.last_error = e
                node += 1
                delay = self._backoff.delay(attempt)
                self._report(
                    ConnectionState(
                        "retrying",
                        address,
                        error=self.last_error,
                        was_connected=self.connections > logins,
                        retry_in_s=delay,
                    )
                )
                await trio.sleep(delay)
                attempt += 1
        finally:
            self._set_client(None)
            self._inbox_in.close()

    async def _routed(self) -> tuple[str, int] | None:
        """With ``route``: where the cluster's ``/route`` sends this uid now (a node that drains
        is not handed out); None when it cannot say (the nodes are then tried in turn)."""
        if not self._route or self.http is None:
            return None
        try:
            with trio.move_on_after(self._connect_timeout_s):
                r = await self.http.route(self.uid)
                address = r.ws_addr.removeprefix("ws://") if self._transport == "ws" else r.tcp_addr
                return parse_address(address)
        except (ClientError, ValueError) as e:
            self.last_error = e
        return None

    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        errors: tuple[type[BaseException], ...] = (ClientError, OSError, trio.TooSlowError)
        if self._transport == "ws":
            import trio_websocket

            errors += (trio_websocket.HandshakeError,)
        return errors

    async def _connection(self, host: str, port: int) -> None:
        """One connection's life: log in, catch up, deliver live messages until it ends."""
        async with open_client(
            host,
            port,
            uid=self.uid,
            token=self._token,
            device_flag=self._device_flag,
            device_id=self._device_id,
            encrypt=self._encrypt,
            transport=self._transport,
            connect_timeout_s=self._connect_timeout_s,
            ssl_context=self._ssl_context,
        ) as client:
            # Live messages wait in the connection's inbox while the log is read: logged in
            # first, so nothing committed from now on can fall between the two.
            if self.http is not None:
                async with self._deliver_lock:
                    for key, last in self.delivered.channels():
                        await self._fetch(self.http, key, last + 1)
            self.connections += 1
            self._set_client(client)
            self._report(ConnectionState("connected", (host, port), node_id=client.node_id))
            try:
                while True:
                    try:
                        received = await client.recv(timeout_s=math.inf)
                    except ClientClosed:
                        break
                    m = Message.from_recv(received)
                    if client.closed.is_set() and self.delivered.gap(m) is not None:
                        # The connection is gone and this message is behind a hole: rather than
                        # fill holes one request at a time before reconnecting (seconds, with
                        # a busy channel's backlog), leave it to the catch-up after the next
                        # login, which reads the log from the hole on.
                        continue
                    async with self._deliver_lock:
                        await self._deliver_live(m)
            finally:
                self._set_client(None)
            kick = client.disconnect
            if kick is not None and kick.reason_code == ReasonCode.CONNECT_KICK:
                raise Disconnected(kick.reason_code, kick.reason)
            self.last_error = ClientClosed(client.close_reason)

    async def _deliver_live(self, m: Message) -> None:
        gap = self.delivered.gap(m)
        if gap is not None and self.http is not None:
            # A failure here ends the connection: the next one catches up from the last seq
            # actually delivered, so the hole cannot be skipped.
            await self._fetch(self.http, m.channel, gap[0], until=gap[1])
        self._offer(m)

    async def _fetch(self, http: HttpClient, key: ChannelKey, start: int, until: int = 0) -> None:
        """Deliver the channel's stored messages from ``start`` up to ``until`` (excluded; 0:
        the head)."""
        async for m in http.iter_messages(self.uid, key[0], key[1], start, until):
            self._offer(m)

    def _offer(self, m: Message) -> None:
        if self.delivered.accept(m):
            self._inbox_in.send_nowait(m)

    def _give_up(self, error: ClientError, address: tuple[str, int]) -> None:
        self.failed = error
        self._report(ConnectionState("failed", address, error=error))

    def _report(self, state: ConnectionState) -> None:
        self.state = state
        if self._on_state is not None:
            self._on_state(state)

    def _set_client(self, client: WKClient | None) -> None:
        self._client = client
        self._changed.set()
        self._changed = trio.Event()

    def _need_http(self) -> HttpClient:
        if self.http is None:
            raise ClientError("this needs the HTTP API: open the session with http=...")
        return self.http


@asynccontextmanager
async def open_session(
    nodes: str | Sequence[str | tuple[str, int]],
    *,
    uid: str,
    token: str,
    http: HttpClient | str | Sequence[str] | None = None,
    api_token: str | None = None,
    transport: Literal["tcp", "ws"] = "tcp",
    encrypt: bool = True,
    device_flag: int = 0,
    device_id: str | None = None,
    backoff: Backoff = RECONNECT_BACKOFF,
    connect_timeout_s: float = 5.0,
    wait_connected_s: float | None = 10.0,
    max_tracked_ids: int = 10_000,
    max_tracked_channels: int = 10_000,
    on_state: Callable[[ConnectionState], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    route: bool = False,
) -> AsyncIterator[Session]:
    """A reconnecting session of ``uid`` over the WKProto addresses ``nodes`` (``"host:port"``,
    the TCP port, or the WebSocket port with ``transport="ws"``).

    ``http``: an ``HttpClient`` or its base URL(s), to catch up after reconnections (without
    it, messages sent while disconnected are not fetched); ``api_token`` is the nodes'
    ``auth.api_token`` for a client built from URLs. Entering waits up to
    ``wait_connected_s`` for the first login (None: not at all) and raises the refusal
    (``ConnectRefused``), or ``Unreachable`` if no node accepted in time.

    ``ssl_context`` (with ``transport="ws"`` and the nodes' WSS ports) connects over ``wss://``.

    ``route`` (needs ``http``): before every connection attempt, ask ``/route`` where this uid
    should connect, so that a node that drains (DISCONNECT with reason 18) is left for the one
    the cluster names; ``nodes`` are tried in turn when ``/route`` cannot answer.

    ``on_state`` is called with each new ``ConnectionState`` (connecting, connected, retrying
    in so many seconds, failed), from the session's task: it must return quickly and not raise.
    """
    addresses = [parse_address(a) for a in ([nodes] if isinstance(nodes, str) else nodes)]
    if not addresses:
        raise ValueError("at least one node address is needed")
    # An HttpClient passed in is the caller's to close; one built from URLs is the session's.
    own_http = http is not None and not isinstance(http, HttpClient)
    api = (
        http
        if http is None or isinstance(http, HttpClient)
        else HttpClient(http, api_token=api_token)
    )
    session = Session(
        addresses,
        uid=uid,
        token=token,
        http=api,
        transport=transport,
        encrypt=encrypt,
        device_flag=device_flag,
        device_id=device_id or uuid.uuid4().hex,
        backoff=backoff,
        connect_timeout_s=connect_timeout_s,
        delivered=Delivered(max_tracked_ids, max_tracked_channels),
        on_state=on_state,
        ssl_context=ssl_context,
        route=route,
    )
    try:
        with sole_exception():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session._run)
                try:
                    if wait_connected_s is not None:
                        await _first_login(session, wait_connected_s)
                    yield session
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        if own_http and api is not None:
            with trio.CancelScope(shield=True):
                await api.aclose()


async def _first_login(session: Session, timeout_s: float) -> None:
    try:
        await session.wait_connected(timeout_s)
    except trio.TooSlowError as e:
        last = session.last_error
        raise Unreachable(
            f"no node accepted {session.uid} within {timeout_s} s; last error: {last!r}",
            [last] if last is not None else [],
        ) from e
