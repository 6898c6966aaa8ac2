"""Message lookups and operations on messages (issue 5)."""

from __future__ import annotations

from .common import ApiContext, RouteAdder


def register(route: RouteAdder, ctx: ApiContext) -> None:
    """Add this module's routes."""
