"""Message lookups and operations on messages."""

from __future__ import annotations

from . import routes_message_ops
from .common import ApiContext, RouteAdder


def register(route: RouteAdder, ctx: ApiContext) -> None:
    """Add this module's routes."""
    routes_message_ops.register(route, ctx)
