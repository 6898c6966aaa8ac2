"""What a domain module gets while a command is applied (see ``GroupMachine.apply``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..storage import Store
from ..storage.db import Batch


@dataclass
class ApplyContext:
    group: int
    store: Store
    wb: Batch
    time_ms: int
    """The proposing leader's clock: the only time apply may use (determinism)."""
    cache: dict[Any, Any] = field(default_factory=dict)
    """Values written earlier in the same command: a WriteBatch cannot be read back, so a
    module that reads what it may already have written in this batch looks here first."""
