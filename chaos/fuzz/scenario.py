"""What a generator hands the executor: one scenario per connection, as a sans-IO generator of
steps.

A generator decides everything (bytes, pauses, when to read) from its own ``random.Random``,
seeded from the run's seed, the target and the connection number (:func:`scenario_rng`), so
that ``--replay TARGET:N`` regenerates connection N of a run exactly. The only input it gets
back is what the server sent (:class:`Received`), which a login needs; the executor does the IO.
"""

from __future__ import annotations

import random
from collections.abc import Generator
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Write:
    """Send ``data``; it holds ``frames`` frames of the target's unit (docs/fuzz.md), counted
    once the write returned."""

    data: bytes
    frames: int = 1


@dataclass(frozen=True, slots=True)
class Read:
    """Wait up to ``timeout_s`` for bytes from the server; the answer is every byte that came
    since the previous ``Read`` (empty on timeout or at EOF)."""

    timeout_s: float


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class HalfClose:
    """Shut down our sending side (FIN) and keep reading: a half-open connection."""


@dataclass(frozen=True, slots=True)
class Reset:
    """Abort the connection with a TCP RST (SO_LINGER 0) instead of a FIN; ends the scenario."""


@dataclass(frozen=True, slots=True)
class Flood:
    """Open ``connections`` more connections to the same port, write ``data`` on each (one
    frame each when not empty) and hold them open until the scenario ends."""

    connections: int
    data: bytes = b""


Action = Write | Read | Sleep | HalfClose | Reset | Flood


@dataclass(frozen=True, slots=True)
class Received:
    data: bytes
    eof: bool
    """The server closed (or reset) the connection; no more bytes will come."""


Steps = Generator[Action, Received | None, None]


@dataclass(slots=True)
class Scenario:
    target: str
    kind: str
    node: int
    port: int
    steps: Steps
    max_s: float = 10.0
    """The executor abandons the scenario after this long (a server that stopped reading)."""
    sent: list[bytes] = field(default_factory=list)
    """Requests in the order written, for targets whose answers come back in that order (HTTP):
    the accounting pairs a 500 with the request that got it."""


def scenario_rng(seed: int, target: str, conn_no: int) -> random.Random:
    # A str seed goes through SHA-512, so it does not depend on PYTHONHASHSEED.
    return random.Random(f"{seed}:{target}:{conn_no}")
