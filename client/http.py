"""HTTP API clients: ``HttpClient`` (trio, ``async``) and ``SyncHttpClient`` (blocking).

Both have one method per route of ``client.routes`` (the same names and arguments; the trio
one's are coroutines) and share everything but the I/O: building requests, failing over between
nodes, deciding on retries and parsing answers happen in ``_Attempt``. Usage::

    with SyncHttpClient(["http://127.0.0.11:5001", "http://127.0.0.12:5001"]) as api:
        api.user_token("alice", "secret")
        sent = api.send("alice", "bob", ChannelType.PERSON, b"hi")

Over HTTPS, ``base_urls`` start with ``https://``; ``ca_file`` names the CA to trust (PEM) when
it is not one of the system's.

Any node answers any call, so the list is only for availability: a node that cannot be reached
is left for the next one, also for later calls. A 503 with reason code 17, 18 or 10 (the
cluster is between leaders) is retried with backoff, a bounded number of times.

A node with ``auth.api_token`` wants it with every call (``api_token=``); the ``cluster_*``
calls want ``auth.admin_token`` instead (``admin_token=``). Both go in the ``token:`` header.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import httpx
import trio

from proto.wkproto import ReasonCode

from . import routes
from ._bind import Async, Blocking, endpoint
from .backoff import Backoff
from .defaults import DEFAULT_HTTP_URL
from .errors import ApiError, ClientError, Unreachable, api_error
from .models import Message
from .routes import Call

T = TypeVar("T")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)

RETRIED_REASONS = frozenset(
    {ReasonCode.NODE_MATCH_ERROR, ReasonCode.NODE_NOT_MATCH, ReasonCode.FORWARD_SEND_PACKET_ERROR}
)
"""503 reasons worth a retry: no leader (17), leader moved or outcome unknown (18), leader
unreachable (10). Only 18 may have taken effect; the others are retried for any call."""

NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Transport failures that prove the request never reached a server: safe to resend anything."""

HTTP_BACKOFF = Backoff(0.1, 2.0)
"""With the default 4 retries: about 1.5 s at most before giving up on a call."""

DEFAULT_URL = DEFAULT_HTTP_URL


class TokenAuth(httpx.Auth):
    """Puts the right token on each request: the admin token on ``/cluster/*`` routes, the API
    token on the others (either may be None: that request then goes without). Usable on any
    ``httpx`` client: ``httpx.Client(auth=TokenAuth(api_token, admin_token))``."""

    def __init__(self, api_token: str | None = None, admin_token: str | None = None) -> None:
        self.api_token = api_token
        self.admin_token = admin_token

    def auth_flow(self, request: httpx.Request) -> Any:
        admin = "/cluster/" in request.url.path  # also behind a proxy's path prefix
        token = self.admin_token if admin else self.api_token
        if token:
            request.headers["token"] = token
        yield request


class _Again(Exception):
    """Retry the call after ``delay`` seconds (a retryable 503)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay


class _Attempt(Generic[T]):
    """One call through its retries; the executors only do the I/O and the sleeping."""

    def __init__(self, client: _Base[Any], call: Call[T]) -> None:
        self.client = client
        self.call = call
        self.attempt = 0
        self.errors: list[BaseException] = []

    def request(self) -> tuple[str, str, dict[str, Any]]:
        """(method, URL, httpx keyword arguments) for the node to try now."""
        call = self.call
        kwargs: dict[str, Any] = {}
        if call.body is not None:
            kwargs["json"] = call.body
        if call.query:
            kwargs["params"] = dict(call.query)
        kwargs["auth"] = self.client.auth
        return call.method, self.client.url + call.path, kwargs

    def transport_failed(self, error: httpx.TransportError) -> float:
        """Seconds to wait before the next try (on the next node); raises ``Unreachable``."""
        self.errors.append(error)
        where = self.client.url
        self.client.next_node()
        if not isinstance(error, NOT_SENT) and not self.call.idempotent:
            raise Unreachable(
                f"{self.call.method} {self.call.path} on {where}: {error!r}; it may have "
                "taken effect and is not safe to resend",
                self.errors,
            ) from error
        return self._retry_or(
            lambda: Unreachable(
                f"{self.call.method} {self.call.path}: no node answered after "
                f"{self.attempt} attempts; last error on {where}: {error!r}",
                self.errors,
            )
        )

    def answered(self, status: int, content: bytes) -> T:
        """The call's result; raises the ``ApiError``, or ``_Again`` to retry it."""
        call = self.call
        body = _decode(content)
        if status in call.statuses:
            if body is None and content:
                raise ClientError(
                    f"{call.method} {call.path}: answer is not JSON: {content[:80]!r}"
                )
            try:
                return call.parse(body)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ClientError(f"{call.method} {call.path}: unexpected answer {body!r}") from e
        error = _error(call, status, body, content)
        self.errors.append(error)
        reason = error.reason_code
        retry = status == 503 and reason in RETRIED_REASONS
        if reason == ReasonCode.NODE_NOT_MATCH and not call.idempotent:
            retry = False
        if not retry:
            raise error
        raise _Again(self._retry_or(lambda: error))

    def _retry_or(self, give_up: Callable[[], ClientError]) -> float:
        self.attempt += 1
        if self.attempt > self.client.retries:
            raise give_up()
        return self.client.backoff.delay(self.attempt - 1)


def _decode(content: bytes) -> Any:
    try:
        return json.loads(content) if content else None
    except ValueError:
        return None


def _error(call: Call[Any], status: int, body: Any, content: bytes) -> ApiError:
    d = body if isinstance(body, dict) else {}
    message = d.get("msg") or content.decode("utf-8", errors="replace")[:200]
    reason = d.get("reason")
    return api_error(
        status,
        str(message),
        reason if isinstance(reason, int) and not isinstance(reason, bool) else None,
        method=call.method,
        path=call.path,
        body=body,
    )


class _Base(Generic[H]):
    """The routes, the node list and the constructor, shared by both clients."""

    def __init__(
        self,
        base_urls: str | Sequence[str] = DEFAULT_URL,
        *,
        timeout_s: float = 10.0,
        retries: int = 4,
        backoff: Backoff = HTTP_BACKOFF,
        http: H | None = None,
        ca_file: str | None = None,
        api_token: str | None = None,
        admin_token: str | None = None,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("at least one base URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.retries = retries
        """Tries after the first, for unreachable nodes and retryable 503s."""
        self.backoff = backoff
        verify: ssl.SSLContext | bool = (
            True if ca_file is None else ssl.create_default_context(cafile=ca_file)
        )
        self.http: H = http if http is not None else self._new_http(timeout_s, verify)
        """The httpx client underneath; pass your own (``http=``) to configure it."""
        self.auth = TokenAuth(api_token, admin_token)
        """The node's ``auth.api_token`` and ``auth.admin_token``, sent with each request."""
        self._current = 0

    @staticmethod
    def _new_http(timeout_s: float, verify: ssl.SSLContext | bool) -> H:
        raise NotImplementedError

    @property
    def url(self) -> str:
        """The node calls go to now."""
        return self.urls[self._current]

    def next_node(self) -> None:
        self._current = (self._current + 1) % len(self.urls)

    def run(self, call: Call[T]) -> Any:
        raise NotImplementedError

    # The route table, bound: see client/routes.py for each one's arguments and answer.
    call = endpoint(routes.call)
    health = endpoint(routes.health)
    route = endpoint(routes.route)
    route_batch = endpoint(routes.route_batch)
    cluster_status = endpoint(routes.cluster_status)
    cluster_leave = endpoint(routes.cluster_leave)
    cluster_drain = endpoint(routes.cluster_drain)
    user_token = endpoint(routes.user_token)
    device_quit = endpoint(routes.device_quit)
    online_status = endpoint(routes.online_status)
    system_uids = endpoint(routes.system_uids)
    system_uids_add = endpoint(routes.system_uids_add)
    system_uids_remove = endpoint(routes.system_uids_remove)
    channel_create = endpoint(routes.channel_create)
    channel_info_update = endpoint(routes.channel_info_update)
    channel_info = endpoint(routes.channel_info)
    channel_delete = endpoint(routes.channel_delete)
    subscribers = endpoint(routes.subscribers)
    subscriber_add = endpoint(routes.subscriber_add)
    subscriber_remove = endpoint(routes.subscriber_remove)
    subscriber_remove_all = endpoint(routes.subscriber_remove_all)
    list_change = endpoint(routes.list_change)
    list_get = endpoint(routes.list_get)
    send = endpoint(routes.send)
    send_to = endpoint(routes.send_to)
    send_batch = endpoint(routes.send_batch)
    messagesync = endpoint(routes.messagesync)
    messages = endpoint(routes.messages)
    message = endpoint(routes.message)
    message_by_client_msg_no = endpoint(routes.message_by_client_msg_no)
    max_message_seq = endpoint(routes.max_message_seq)
    last_message = endpoint(routes.last_message)
    message_sync = endpoint(routes.message_sync)
    message_syncack = endpoint(routes.message_syncack)
    revoke = endpoint(routes.revoke)
    edit = endpoint(routes.edit)
    delete_messages = endpoint(routes.delete_messages)
    readed = endpoint(routes.readed)
    conversation_sync = endpoint(routes.conversation_sync)
    conversation_change = endpoint(routes.conversation_change)
    set_unread = endpoint(routes.set_unread)


class SyncHttpClient(Blocking, _Base[httpx.Client]):
    """The blocking client, over an ``httpx.Client``. Usable from any thread that does not
    run an event loop."""

    @staticmethod
    def _new_http(timeout_s: float, verify: ssl.SSLContext | bool) -> httpx.Client:
        return httpx.Client(timeout=timeout_s, verify=verify)

    def run(self, call: Call[T]) -> T:
        """Send a built call (what every route method does)."""
        attempt = _Attempt(self, call)
        while True:
            method, url, kwargs = attempt.request()
            try:
                resp = self.http.request(method, url, **kwargs)
                return attempt.answered(resp.status_code, resp.content)
            except httpx.TransportError as e:
                delay = attempt.transport_failed(e)
            except _Again as again:
                delay = again.delay
            time.sleep(delay)

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """One raw request to the current node: no retry, no failover, no status check."""
        return self.http.request(method, self.url + path, json=body, auth=self.auth)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class HttpClient(Async, _Base[httpx.AsyncClient]):
    """The trio client, over an ``httpx.AsyncClient`` (``http``). Use it as
    ``async with HttpClient(urls) as api:`` (or call ``aclose``)."""

    @staticmethod
    def _new_http(timeout_s: float, verify: ssl.SSLContext | bool) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=timeout_s, verify=verify)

    async def run(self, call: Call[T]) -> T:
        """Send a built call (what every route method does)."""
        attempt = _Attempt(self, call)
        while True:
            method, url, kwargs = attempt.request()
            try:
                resp = await self.http.request(method, url, **kwargs)
                return attempt.answered(resp.status_code, resp.content)
            except httpx.TransportError as e:
                delay = attempt.transport_failed(e)
            except _Again as again:
                delay = again.delay
            await trio.sleep(delay)

    async def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """One raw request to the current node: no retry, no failover, no status check."""
        return await self.http.request(method, self.url + path, json=body, auth=self.auth)

    async def iter_messages(
        self,
        login_uid: str,
        channel_id: str,
        channel_type: int,
        start_message_seq: int = 1,
        end_message_seq: int = 0,
        *,
        page_size: int = 500,
    ) -> AsyncIterator[Message]:
        """A channel's stored messages from ``start_message_seq`` up to ``end_message_seq``
        (excluded; 0: the head when the last page is read), in seq order, page by page."""
        cursor = start_message_seq
        while True:
            page = await self.messagesync(
                login_uid, channel_id, channel_type, cursor, end_message_seq, limit=page_size
            )
            for m in page.messages:
                yield m
            if not page.more or not page.messages:
                return
            cursor = page.messages[-1].message_seq + 1

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
