"""Stateful model tests: hypothesis drives sends, retries, the network, partitions, crashes and
the clock through the simulated cluster (real ``GroupMachine`` and RocksDB on every replica, real
routing decisions), checking after every step that no acknowledged send is lost, that a
``client_msg_no`` gets one seq per channel across retries and leader changes, that seqs are
contiguous and ids unique, that replicas agree, and that a send answered with a definite failure
never commits. A failing schedule shrinks to a few steps (see the sabotage test).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from node.groups.machine import GroupMachine
from node.storage import Store

from .harness import MODEL_SETTINGS, ClusterModel
from .sim import StorePool


def test_cluster_model(store_pool: StorePool) -> None:
    ClusterModel.stats.clear()
    run_state_machine_as_test(ClusterModel, settings=MODEL_SETTINGS)
    stats = ClusterModel.stats
    print("model search reached:", dict(stats))  # shown with -s
    # The search must have reached the interesting states, or passing means little (the rarer
    # paths are pinned down by test_cluster_schedules.py).
    for what in ("acks", "duplicate acks", "definite failures", "retry codes", "elections"):
        assert stats[what] > 0, f"no {what} in {dict(stats)}"


# --- the harness can fail --------------------------------------------------------------------


class _ForgetfulStore:
    """A store whose dedupe records are never found: retries commit again."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def get_dedupe(self, *key: Any) -> None:
        return None


def _no_dedupe_machine(group: int, store: Store) -> GroupMachine:
    return GroupMachine(group, _ForgetfulStore(store))


class NoDedupeModel(ClusterModel):
    machine_factory = staticmethod(_no_dedupe_machine)


SABOTAGE_SETTINGS = settings(
    MODEL_SETTINGS,
    max_examples=100,
    report_multiple_bugs=False,
    phases=[Phase.generate, Phase.shrink],
)


def test_model_catches_a_machine_without_dedupe(store_pool: StorePool) -> None:
    with pytest.raises(AssertionError, match="client_msg_no") as failure:
        run_state_machine_as_test(NoDedupeModel, settings=SABOTAGE_SETTINGS)
    steps = NoDedupeModel.last_steps  # the last run is the shrunk example, replayed
    assert any(s.startswith("retry(") for s in steps), steps
    assert len(steps) <= 4, f"shrunk to {len(steps)} steps: {steps}\n{failure.value}"
