"""The HTTP API, with WuKongIM v2 request bodies and envelopes; every route works on every
node (the router takes each request to the leader of the slot group that owns its key).

Errors are HTTP 400 ``{"msg": ..., "status": 400}`` naming the field; permission refusals of
``/message/send`` are 403 with the reason code; a cluster that cannot serve the request in time
is 503 with the reason code (17, 18 or 10); see ``docs/api.md``.

The routes live in the ``routes_*`` modules, one subject each; this module puts them behind
the credentials check (``auth.py``) and the 503 of ``common.guard``.
"""

from __future__ import annotations

import functools

from . import (
    routes_backup,
    routes_channels,
    routes_cluster,
    routes_conversations,
    routes_history,
    routes_import,
    routes_message_ops,
    routes_monitoring,
    routes_sends,
    routes_streams,
    routes_users,
    routes_webhooks,
)
from .auth import Credentials
from .common import ApiContext, guard
from .server import Router as HttpRouter

_MODULES = (
    routes_backup,
    routes_channels,
    routes_cluster,
    routes_conversations,
    routes_history,
    routes_import,
    routes_message_ops,
    routes_monitoring,
    routes_sends,
    routes_streams,
    routes_users,
    routes_webhooks,
)
"""Each lists its routes in ``ROUTES``: (method, path, handler of the context and request)."""


def build_router(ctx: ApiContext) -> HttpRouter:
    """Every route of the HTTP API, served with the context of this node."""
    r = HttpRouter(Credentials(ctx.config.auth, lambda: len(ctx.router.placement.nodes) > 1))
    for module in _MODULES:
        for method, path, handler in module.ROUTES:
            r.add(method, path, guard(functools.partial(handler, ctx)))
    return r
