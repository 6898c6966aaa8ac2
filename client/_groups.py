"""Exception groups from the nurseries the client runs its tasks in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sole_exception() -> Iterator[None]:
    """Re-raise the one exception of a single-member group as itself.

    A trio nursery wraps even a lone exception in a group; callers should be able to write
    ``except ConnectRefused`` (or see their own exception) instead of unpicking groups.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        sole = group.exceptions[0]
        # Re-raising inside ``except`` would chain the group (which holds this very exception)
        # as its context; restoring the old context keeps tracebacks readable.
        context = sole.__context__
        try:
            raise sole
        finally:
            sole.__context__ = context
            del sole, context
