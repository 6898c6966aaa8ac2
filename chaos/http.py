"""HTTP for the workload and the runner, on the client library's ``HttpClient``.

One client per node, with no retries and no failover (the workload picks the node and must see
each answer as it was given), and no keep-alive: the workload sends a few requests a second per
client and must not carry a broken connection from before a fault into the next request. Every
failure to get an answer is :class:`HttpError` (the caller records it as "unknown outcome").
"""

from __future__ import annotations

from typing import Any

import httpx
import trio

from client.errors import ApiError, ClientError
from client.http import HttpClient


class HttpError(Exception):
    """No complete answer: refused, reset, timed out or unparsable."""


class NodeHttp:
    """HTTP clients of the nodes, made on first use (a joining node gets one when asked)."""

    def __init__(self, api_token: str | None = None, admin_token: str | None = None) -> None:
        self._clients: dict[str, HttpClient] = {}
        self._api_token, self._admin_token = api_token, admin_token

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout_s: float = 10.0,
    ) -> tuple[int, Any]:
        """(status, decoded JSON body or None). Raises HttpError when there is no answer."""
        url = f"http://{host}:{port}"
        api = self._clients.get(url)
        if api is None:
            transport = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))
            api = self._clients[url] = HttpClient(
                url,
                retries=0,
                http=transport,
                api_token=self._api_token,
                admin_token=self._admin_token,
            )
        try:
            with trio.fail_after(timeout_s):
                return 200, await api.call(method, path, body)
        except ApiError as e:
            return e.status, e.body
        except (ClientError, trio.TooSlowError) as e:
            raise HttpError(f"{method} {path} on {host}:{port}: {type(e).__name__}: {e}") from e

    async def aclose(self) -> None:
        for api in self._clients.values():
            await api.aclose()
        self._clients.clear()
