"""What checking a big flood run costs, without the run: ``write`` makes a synthetic flood
folder in the run's own format (every message acked once, 1 % acked twice, every node's final
read holding every message), ``check`` runs the flood checkers on a folder (a synthetic one or
``results/<run>/flood`` of a real run) and prints their time and the process's peak memory::

    python -m chaos.floodsynth write /tmp/f1m --messages 1000000 --nodes 5
    python -m chaos.floodsynth check /tmp/f1m
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from array import array
from pathlib import Path

from .checkers.flood import check_flood_run
from .floodlog import OK, Attempt, FinalRead, message_key, write_final_read


def write(folder: Path, messages: int, nodes: int, channels: int, senders: int) -> None:
    folder.mkdir(parents=True, exist_ok=False)
    heads = [0] * channels
    logs = [FinalRead(node=0, channel=c, complete=True) for c in range(channels)]
    with (folder / "sends-w0.bin").open("wb") as fh:
        for i in range(messages):
            sender, number = i % senders, i // senders + 1
            c = sender % channels
            heads[c] += 1
            seq, mid = heads[c], 10**15 + i
            a = Attempt(sender, number, c, 1, OK, 1, 1, seq, mid, float(i), float(i) + 0.05)
            fh.write(a.pack())
            if i % 100 == 0:  # a deliberate resend: the same seq again
                fh.write(Attempt(sender, number, c, 2, OK, 1, 1, seq, mid, i, i + 0.1).pack())
            logs[c].add(seq, message_key(sender, number), mid, True)
    (folder / "recv-w0.json").write_text(json.dumps({"counts": {"recvs": messages}}))
    for n in range(1, nodes + 1):
        with (folder / f"final-n{n}.bin").open("wb") as fh:
            for log in logs:
                copy = FinalRead(node=n, channel=log.channel, complete=True)
                copy.seq, copy.key = array("q", log.seq), array("Q", log.key)
                copy.message_id, copy.payload_ok = array("q", log.message_id), log.payload_ok
                write_final_read(fh, copy)


def check(folder: Path) -> dict[str, object]:
    started = time.monotonic()
    verdict, load = check_flood_run(folder, [], required=())
    return {
        "status": verdict.status,
        "failed": verdict.failed,
        "acked_messages": load["acked_messages"],
        "final_read_messages": verdict.results["lost_acked"].counts["final_read_messages"],
        "check_s": round(time.monotonic() - started, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.floodsynth")
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="a synthetic flood folder")
    w.add_argument("folder", type=Path)
    w.add_argument("--messages", type=int, default=1_000_000)
    w.add_argument("--nodes", type=int, default=5)
    w.add_argument("--channels", type=int, default=24)
    w.add_argument("--senders", type=int, default=48)
    c = sub.add_parser("check", help="check a flood folder; print time and peak memory")
    c.add_argument("folder", type=Path)
    a = p.parse_args(argv)
    if a.command == "write":
        write(a.folder, a.messages, a.nodes, a.channels, a.senders)
        return 0
    result = check(a.folder)
    print(json.dumps(result))
    return 0 if result["status"] == "valid" else 1


if __name__ == "__main__":
    sys.exit(main())
