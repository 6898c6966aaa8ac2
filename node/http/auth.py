"""Who may call the HTTP API and the public gRPC API (``docs/api.md``, "Credentials").

Three kinds of route, decided here once for both APIs:

* **exempt** (``EXEMPT_ROUTES``): health, readiness and metrics, which load balancers and
  monitoring call without a secret; plus ``GET /route`` without ``intranet=1``
  (``PUBLIC_ROUTES``), which WuKongIM clients call before they have logged in and which tells
  only the addresses those clients connect to anyway;
* **cluster administration** (``/cluster/*``): the admin token (``auth.admin_token``) and no
  other. Without an admin token configured no route changes the cluster (403), and a
  multi-node cluster answers none of them; a lone node then treats its ``/cluster/*`` reads as
  product routes;
* **everything else** (the product API): the API token (``auth.api_token``) when one is set.

A token is presented as ``token: <value>`` (WuKongIM's manager-token header) or
``Authorization: Bearer <value>``; the gRPC API takes the ``authorization`` metadata. Tokens
are compared as SHA-256 digests with ``hmac.compare_digest``, so neither their content nor
their length shows in the time an answer takes. ``*_previous`` tokens are accepted too, so that
clients can move to a new token while the nodes take both (``docs/security.md``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from cluster.ratelog import RateLimitedLog

from ..config_sections import AuthSection
from .admission import client_key

EXEMPT_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/health"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
    }
)
"""Routes any client may call without a token (the ones of them that exist answer; the rest
are 404 for everyone). Add a health, readiness or metrics route here, and nothing else."""

PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset({("GET", "/route")})
"""Exempt unless the query asks for the intranet addresses (``intranet=1``), which are not
the clients' business."""

ADMIN_PREFIX = "/cluster/"
ADMIN_DISABLED = (
    "cluster administration is disabled on this cluster: set auth.admin_token on every node "
    "to use the /cluster/* routes"
)
LOG_INTERVAL_S = 10.0


@dataclass(frozen=True)
class Refusal:
    """Why a call is refused: HTTP ``status`` (401 or 403) and a message for the caller, which
    never repeats what the caller presented."""

    status: int
    msg: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _matches(given: Iterable[str], accepted: list[bytes]) -> bool:
    found = False
    for candidate in given:
        d = _digest(candidate)
        for token in accepted:  # every comparison runs: no early exit on a match
            found |= hmac.compare_digest(d, token)
    return found


def presented_tokens(headers: Mapping[str, str]) -> list[str]:
    """The tokens a request carries (header names in lower case, as h11 and gRPC give them)."""
    out = []
    token = headers.get("token")
    if token:
        out.append(token.strip())
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        out.append(value.strip())
    return out


class Credentials:
    """The node's API and admin tokens and the rules above. ``multi_node`` tells whether the
    cluster has more than one member now (it can grow while the node runs)."""

    def __init__(self, auth: AuthSection, multi_node: Callable[[], bool]) -> None:
        self._api = [_digest(t) for t in (auth.api_token, auth.api_token_previous) if t]
        self._admin = [_digest(t) for t in (auth.admin_token, auth.admin_token_previous) if t]
        self._multi_node = multi_node
        self._log = RateLimitedLog(logging.getLogger("raftchat.auth"), LOG_INTERVAL_S)

    @property
    def api_protected(self) -> bool:
        return bool(self._api)

    @property
    def admin_configured(self) -> bool:
        return bool(self._admin)

    def is_admin(self, token: str) -> bool:
        """Whether ``token`` is the admin token (or the previous one, during a rotation)."""
        return bool(self._admin) and _matches([token], self._admin)

    def refusal(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        tokens: list[str],
        client: str = "",
    ) -> Refusal | None:
        """None when the call may go ahead; else the answer, logged at most once per client
        address and kind of refusal every ``LOG_INTERVAL_S``."""
        if (method, path) in EXEMPT_ROUTES:
            return None
        if (method, path) in PUBLIC_ROUTES and query.get("intranet", "0") in ("", "0"):
            return None
        if path.startswith(ADMIN_PREFIX):
            refusal = self._admin_refusal(method, tokens)
        else:
            refusal = self._api_refusal(tokens)
        if refusal is not None:
            key = client_key(client) if client else "?"
            self._log.warning(
                (key, refusal.status),
                "API call refused",
                client=client or "?",
                path=path[:100],
                why=refusal.msg,
            )
        return refusal

    def _api_refusal(self, tokens: list[str]) -> Refusal | None:
        if not self._api:
            return None
        if not tokens:
            return Refusal(
                401,
                "this route needs the API token: send the header `token: <auth.api_token>` "
                "or `Authorization: Bearer <auth.api_token>`",
            )
        if not _matches(tokens, self._api):
            return Refusal(401, "wrong API token")
        return None

    def _admin_refusal(self, method: str, tokens: list[str]) -> Refusal | None:
        if not self._admin:
            if method != "GET" or self._multi_node():
                return Refusal(403, ADMIN_DISABLED)
            return self._api_refusal(tokens)  # a lone node's status, like any product route
        if not tokens:
            return Refusal(
                401,
                "cluster administration needs the admin token: send the header "
                "`token: <auth.admin_token>` or `Authorization: Bearer <auth.admin_token>`",
            )
        if not _matches(tokens, self._admin):
            return Refusal(401, "wrong admin token")
        return None
