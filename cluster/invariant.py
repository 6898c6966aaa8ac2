"""Invariants stated where they must hold.

``invariant(condition, what, *details)`` raises ``InvariantViolation`` when ``condition`` is
false. Unlike ``assert`` it is not removed by ``python -O``, and the message is built only on
failure (the checks sit on hot paths: a slot group's apply, the pipeline's release). A
violation is a bug: the code around it must not go on as if nothing happened, so it is not
meant to be caught, except by whatever already contains a failing apply or task."""

from __future__ import annotations


class InvariantViolation(AssertionError):
    pass


def invariant(condition: bool, what: str, *details: object) -> None:
    if not condition:
        raise InvariantViolation(f"{what}: {', '.join(map(repr, details))}" if details else what)
