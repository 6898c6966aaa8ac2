"""The nemesis schedule: with no fault family the run still lasts its ``--time``."""

from __future__ import annotations

import random
from typing import Any, cast

import trio
import trio.testing

from chaos.history import MemoryHistory
from chaos.nemesis import Nemesis, Timing


def test_no_family_still_runs_for_the_whole_time() -> None:
    """``--nemesis none --time 15`` used to end the workload phase at once (the nursery of no
    loops exits immediately), so a run without faults had only its after-heal seconds."""

    async def main() -> float:
        nemesis = Nemesis(cast(Any, None), None, MemoryHistory(), random.Random(1), [], Timing(), 3)
        start = trio.current_time()
        await nemesis.run(start + 15.0)
        return trio.current_time() - start

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == 15.0
