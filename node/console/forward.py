"""The console's calls to another member's HTTP API, for the routes that answer for their own
node only (``/connz``, ``/metrics``, ``/cluster/status``).

The call carries this node's own tokens (``client.http.TokenAuth`` picks the admin token for
``/cluster/*``); the member's answer is passed on as it came. A member that cannot be reached
is a 502, one that does not answer in time a 504, each naming the member.
"""

from __future__ import annotations

import ssl

import httpx
import trio

from client.http import TokenAuth

from ..cluster_health import PROBE_TIMEOUT_S
from ..http.server import ApiError, Response

TIMEOUT_S = PROBE_TIMEOUT_S
"""A member answers these routes in milliseconds; one that takes this long is not serving."""


class Forwarder:
    def __init__(
        self,
        port: int,
        https: bool,
        api_token: str | None,
        admin_token: str | None,
        ca_file: str = "",
    ) -> None:
        self._port = port
        self._scheme = "https" if https else "http"
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        self.http = httpx.Client(
            timeout=TIMEOUT_S, verify=verify, auth=TokenAuth(api_token, admin_token)
        )
        """Kept open for every call (the cluster page's health probes use it too)."""

    def url_of(self, host: str) -> str:
        """A member's HTTP API: every node serves it on the same port, on its own address."""
        address = f"[{host}]" if ":" in host else host
        return f"{self._scheme}://{address}:{self._port}"

    async def call(
        self, node_id: int, host: str, method: str, path: str, query: dict[str, str], body: bytes
    ) -> Response:
        url = self.url_of(host) + path
        headers = {"content-type": "application/json"} if body else {}

        def request() -> httpx.Response:
            return self.http.request(
                method, url, params=query, content=body or None, headers=headers
            )

        try:
            resp = await trio.to_thread.run_sync(request, abandon_on_cancel=True)
        except httpx.TimeoutException:
            raise ApiError(504, f"node {node_id} did not answer within {TIMEOUT_S:g} s") from None
        except httpx.HTTPError as e:  # unreachable, reset, or an answer that is not HTTP
            raise ApiError(502, f"node {node_id} cannot be reached: {type(e).__name__}") from None
        content_type = resp.headers.get("content-type", "application/json")
        return Response(resp.status_code, resp.content, content_type=content_type)

    def close(self) -> None:
        self.http.close()
