"""Exponential backoff with jitter, shared by the HTTP client's retries and the session's
reconnects."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """The n-th wait (n from 0) is ``min(cap_s, base_s * 2**n)``, reduced at random by up to
    half: clients that lost the same node at the same moment do not all come back together."""

    base_s: float = 0.1
    cap_s: float = 5.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(attempt, 32))
        jitter: float = (rng or random).random()
        return ceiling * (1.0 - 0.5 * jitter)
