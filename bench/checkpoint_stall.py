"""``python -m bench.checkpoint_stall``: how long a RocksDB checkpoint stops a store's writers.

A store of 200,000 messages (200-byte payloads); before each checkpoint 20,000 more sit in the
memtables, as between two of a busy group's snapshots. A thread writes one message per
millisecond meanwhile and records the longest gap between two of its writes: that is what an
apply on the Raft driver thread waits; a thread that only sleeps 1 ms at a time records what
the GIL alone holds up (the trio loop, say). Compared: a checkpoint taken under the store's lock
alone (the memtable flush inside it, and rocksdict holds the GIL through ``create_checkpoint``,
so every thread of the process waits), and ``Store.checkpoint_at`` (memtables flushed first,
outside the lock; rocksdict releases the GIL during a flush).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rocksdict import Checkpoint

from node.storage import MessageRecord, Store
from node.storage.db import Batch


class Probe:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = Store(root / "db")
        self.seq = 0

    def batch(self, n: int) -> Batch:
        wb = self.store.batch()
        for _ in range(n):
            self.seq += 1
            s = self.seq
            wb.append_message(MessageRecord(s, s, 0, f"c{s % 64}", 2, "u", f"n{s}", b"x" * 200))
        wb.set_applied(self.seq)
        return wb

    def fill(self, n: int) -> None:
        for _ in range(n // 1000):
            self.store.write(self.batch(1000))

    def under_lock_only(self, path: str) -> None:
        with self.store._lock:
            Checkpoint(self.store._db).create_checkpoint(path)

    def worst_gaps(self, take: Callable[[str], object]) -> tuple[float, float, float]:
        """(ms the checkpoint took, longest ms between two writes of a writer thread, longest
        ms between two wake-ups of a thread that only sleeps: what the GIL alone stops)."""
        stop = threading.Event()
        worst = {"writer": 0.0, "sleeper": 0.0}

        def loop(name: str, write: bool) -> None:
            last = time.perf_counter()
            while not stop.is_set():
                if write:
                    self.store.write(self.batch(1))
                time.sleep(0.001)
                now = time.perf_counter()
                worst[name] = max(worst[name], now - last)
                last = now

        threads = [
            threading.Thread(target=loop, args=("writer", True)),
            threading.Thread(target=loop, args=("sleeper", False)),
        ]
        for t in threads:
            t.start()
        time.sleep(0.05)
        began = time.perf_counter()
        take(str(self.root / f"ckpt-{self.seq}"))
        took = time.perf_counter() - began
        stop.set()
        for t in threads:
            t.join()
        return took * 1000, worst["writer"] * 1000, worst["sleeper"] * 1000


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    probe = Probe(root)
    try:
        probe.fill(200_000)
        ways: list[tuple[str, Callable[[str], object]]] = [
            ("under the lock only", probe.under_lock_only),
            ("Store.checkpoint_at", probe.store.checkpoint_at),
        ]
        for name, take in ways * 3:
            probe.fill(20_000)
            took, writer, sleeper = probe.worst_gaps(take)
            print(
                f"{name}: checkpoint {took:.1f} ms, longest gap between writes {writer:.1f} ms, "
                f"between wake-ups of a sleeping thread {sleeper:.1f} ms"
            )
    finally:
        probe.store.close()
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
