"""CPU per Raft message hop of the frame format (``cluster/raft/wire.py``).

``python -m bench.raft_frames``: what one hop of an AppendEntries costs, as pysyncobj makes it
with raftchat's framing installed: the sender pickles ``(connection key, message)`` and seals
it, the receiver opens the frame (timestamp, then data, as pysyncobj asks) and unpickles. Two
sizes: a heartbeat-sized AppendEntries carrying one send (~400 bytes, the common case at light
load) and one carrying 1 MiB of entries (a saturated batch, or a follower catching up). Also
the frame format alone (seal + open, without pickle). Best of seven runs, in process CPU time,
so that other processes on the machine count less. The script uses only the public functions
of ``wire.py``, so the same file measures any revision of the framing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

from pysyncobj import pickle as raft_pickle

from cluster.raft.wire import authenticator_for

RUNS = 7


def _message(entry_bytes: int, entries: int) -> tuple[bytes, dict[str, object]]:
    command = os.urandom(entry_bytes)  # a serialized protobuf command: incompressible-ish
    log = [(b"\x00" + command, 1000 + i, 3) for i in range(entries)]
    body = {
        "type": "append_entries",
        "term": 3,
        "commit_index": 999,
        "entries": log,
        "prevLogIdx": 999,
        "prevLogTerm": 3,
    }
    return os.urandom(32), body


def _per_call(fn: Callable[[], object], number: int) -> float:
    """Best CPU microseconds per call over ``RUNS`` runs of ``number`` calls."""
    best = float("inf")
    for _ in range(RUNS):
        start = time.process_time()
        for _ in range(number):
            fn()
        best = min(best, time.process_time() - start)
    return best / number * 1e6


def measure(entry_bytes: int, entries: int, number: int) -> dict[str, float]:
    key, message = _message(entry_bytes, entries)
    sender, receiver = authenticator_for("bench-password"), authenticator_for("bench-password")
    stamp = int(time.monotonic())
    body = raft_pickle.dumps((key, message))
    token = sender.encrypt_at_time(body, stamp)

    def seal() -> bytes | bytearray:
        return sender.encrypt_at_time(body, stamp)

    def open_() -> bytes:
        fresh = bytes(memoryview(token))  # a new object per frame, as read from a socket
        receiver.extract_timestamp(fresh)
        return receiver.decrypt(fresh)

    def hop() -> object:
        sent = sender.encrypt_at_time(raft_pickle.dumps((key, message)), stamp)
        received = bytes(memoryview(sent))
        receiver.extract_timestamp(received)
        return raft_pickle.loads(receiver.decrypt(received))

    return {
        "pickle_bytes": len(body),
        "frame_bytes": len(token),
        "seal_us": _per_call(seal, number),
        "open_us": _per_call(open_, number),
        "hop_us": _per_call(hop, number),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    args = parser.parse_args()
    results = {
        "append_entries_1_send": measure(300, 1, 20_000),
        "append_entries_1_MiB": measure(4096, 256, 40),
    }
    if args.json:
        print(json.dumps(results))
        return
    columns = ("pickle B", "frame B", "seal us", "open us", "hop us")
    print(f"{'message':<24}" + "".join(f"{c:>10}" for c in columns))
    for name, r in results.items():
        print(
            f"{name:<24}{r['pickle_bytes']:>10}{r['frame_bytes']:>10}"
            f"{r['seal_us']:>10.1f}{r['open_us']:>10.1f}{r['hop_us']:>10.1f}"
        )


if __name__ == "__main__":
    main()
