"""The ``flood`` workload: as many acknowledged messages as the cluster will take, all checked.

Many WKProto sessions (``fl0``, ``fl1``, ...) each keep a window of SENDs in flight to their
group channel (``fc<j>``, the senders ``s`` with ``s % channels == j`` as its members), as
``raftchat bench`` does, from load-generator processes of their own so that the runner's trio
loop, which also drives the nemesis, is not starved. Every message has its own
``client_msg_no``; an attempt whose outcome is unknown (timeout, lost session, a "retry"
reason) is retried with the same one, up to ``max_attempts``, and a small fraction of
acknowledged messages is sent once more on purpose: the server must answer with the original
seq and store nothing new. A session that dies or stops answering is reopened on a random
serving node (the runner tells the workers which nodes serve, once a second).

The history is compact (:mod:`chaos.floodlog`): one binary row per attempt, per-worker RECV
summaries, and at the end every channel read in full from every node into columnar blocks.
:mod:`chaos.checkers.flood` checks them; the JSON history keeps the nemesis and the digests.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import multiprocessing
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, BinaryIO

import trio

from bench.load import run_worker
from client.errors import ClientError
from client.wkproto import WKClient, open_client
from launcher.devcluster import TCP_PORT
from proto.wkproto import ChannelType

from .cluster import ChaosCluster
from .floodlog import (
    FAIL,
    INFO,
    OK,
    PHANTOM,
    Attempt,
    FinalRead,
    client_msg_no,
    parse_key,
    payload,
    split_key,
    uid_of,
    write_final_read,
)
from .history import Recorder, classify_send_reason
from .http import HttpError
from .workload import DEVICE_WEB, is_stored, record_digests, setup_call

SYNC_PAGE = 5000
"""Messages per ``/channel/messagesync`` page of a final read (the server allows 10,000)."""

_OUTCOME = {"ok": OK, "fail": FAIL, "info": INFO}


@dataclass(frozen=True, slots=True)
class FloodConfig:
    sessions: int = 96
    """Twice as many as a window of 4 needs to saturate a healthy cluster: under faults the
    sessions on a paused or cut-off node wait out their send timeout, and the others go on
    (a 5-node all-nemesis run: 154 acked/s with 48 sessions, 224 with 96)."""
    channels: int = 48
    """Two members each: every send is one RECV to the other, and the channel's rate limit
    (``messages.group_rate_limit``, 40/s) is seldom reached."""
    window: int = 4
    """SENDs in flight per session."""
    rate: float = 0.0
    """Total new messages per second over all workers; 0: as fast as the windows allow."""
    workers: int = 1
    """Load-generator processes. One keeps up with the cluster on this 2-core machine; more
    only take CPU from the nodes."""
    payload: int = 64
    max_attempts: int = 6
    send_timeout_s: float = 12.0
    """Longer than the server's own bound on a send (10 s): the server should answer first."""
    resend_fraction: float = 0.01
    recv_sample: int = 100
    """One RECV in this many is kept, with its message, for the checker."""
    drain_s: float = 30.0
    """After the stop, messages already begun may finish their retries this long; an attempt
    still in flight then is recorded as ``info``."""


def channel_name(j: int) -> str:
    return f"fc{j}"


def channel_index(name: str) -> int | None:
    return int(name[2:]) if name.startswith("fc") and name[2:].isdigit() else None


# --- the load generator (runs in worker processes) ------------------------------------------


@dataclass
class SessionSpec:
    sender: int
    token: str
    channel: int


@dataclass
class FloodJob:
    worker: int
    sessions: list[SessionSpec]
    hosts: dict[int, str]
    cfg: FloodConfig
    folder: str
    seed: int
    rate: float = 0.0
    """This worker's share of :attr:`FloodConfig.rate`."""


@dataclass
class _Session:
    spec: SessionSpec
    client: WKClient | None = None
    scope: trio.CancelScope | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    number: int = 0
    connections: int = 0


class _Flood:
    def __init__(self, job: FloodJob, rows: BinaryIO) -> None:
        self.job = job
        self.cfg = job.cfg
        self.rows = rows
        self.rng = random.Random(job.seed)
        self.hosts = dict(job.hosts)
        self.sessions = [_Session(s) for s in job.sessions]
        self.stopping = False
        self.finished = False
        self.interval = 0.0 if job.rate <= 0 else 1.0 / job.rate
        self.next_t = 0.0
        self.counts: dict[str, int] = {
            "attempts_ok": 0,
            "attempts_fail": 0,
            "attempts_info": 0,
            "messages": 0,
            "resends": 0,
            "sessions_opened": 0,
            "recvs": 0,
            "recv_regressions": 0,
        }
        self.recv_examples: list[dict[str, Any]] = []
        self.recv_sample: list[list[int]] = []

    # sessions and RECVs

    def pick(self) -> tuple[int, str] | None:
        if not self.hosts:
            return None
        node = self.rng.choice(sorted(self.hosts))
        return node, self.hosts[node]

    async def session_loop(self, s: _Session) -> None:
        while not self.finished:
            target = self.pick()
            if target is None:
                await trio.sleep(0.5)
                continue
            node, host = target
            s.connections += 1
            with trio.CancelScope() as scope:
                s.scope = scope
                try:
                    async with open_client(
                        host,
                        TCP_PORT,
                        uid=uid_of(s.spec.sender),
                        token=s.spec.token,
                        device_flag=DEVICE_WEB,
                        connect_timeout_s=5.0,
                    ) as client:
                        self.counts["sessions_opened"] += 1
                        s.client = client
                        s.ready.set()
                        await self.receive(s, client, node)
                except* (ClientError, OSError, trio.TooSlowError, trio.BrokenResourceError):
                    pass  # the session ended: reopen it, likely on another node
                finally:
                    s.client = s.scope = None
                    if s.ready.is_set():
                        s.ready = trio.Event()
            await trio.sleep(0.2 + self.rng.random() * 0.5)

    async def receive(self, s: _Session, client: WKClient, node: int) -> None:
        last: dict[int, int] = {}  # per channel, the last seq this session was pushed
        while True:
            m = await client.recv(timeout_s=math.inf)
            if not is_stored(m):
                continue
            channel = channel_index(m.channel_id)
            if channel is None or m.channel_type != ChannelType.GROUP:
                channel = -1
            self.counts["recvs"] += 1
            before = last.get(channel, 0)
            if m.message_seq <= before:
                self.counts["recv_regressions"] += 1
                if len(self.recv_examples) < 10:
                    self.recv_examples.append(
                        {
                            "kind": "repeat" if m.message_seq == before else "backwards",
                            "session": f"{uid_of(s.spec.sender)}/{s.connections}",
                            "node": node,
                            "channel": m.channel_id,
                            "after": before,
                            "seq": m.message_seq,
                        }
                    )
            last[channel] = max(before, m.message_seq)
            if self.counts["recvs"] % self.cfg.recv_sample == 0:
                key = parse_key(m.from_uid, m.client_msg_no)
                self.recv_sample.append([channel, m.message_seq, key, m.message_id])

    # sends

    async def pace(self) -> None:
        if self.interval <= 0:
            return
        now = trio.current_time()
        t = max(self.next_t, now)
        self.next_t = t + self.interval
        await trio.sleep_until(t)

    async def slot(self, s: _Session) -> None:
        while not self.stopping:
            await self.pace()
            if self.stopping:
                return
            s.number += 1
            await self.message(s, s.number)

    async def message(self, s: _Session, number: int) -> None:
        self.counts["messages"] += 1
        body = payload(s.spec.sender, number, self.cfg.payload)
        outcome, attempt = INFO, 0
        while outcome == INFO and attempt < self.cfg.max_attempts:
            attempt += 1
            outcome = await self.attempt(s, number, attempt, body)
            if outcome == INFO and attempt < self.cfg.max_attempts:
                await trio.sleep(0.2 + self.rng.random() * attempt)
        if outcome == OK and self.rng.random() < self.cfg.resend_fraction:
            self.counts["resends"] += 1
            await self.attempt(s, number, attempt + 1, body)
        elif outcome == FAIL:
            # Refused (mostly the channel's rate limit, messages.group_rate_limit): back off as
            # a client would, rather than spend the cluster's time on more refusals.
            await trio.sleep(0.2 + self.rng.random() * 0.3)

    async def attempt(self, s: _Session, number: int, attempt: int, body: bytes) -> int:
        while s.client is None:
            await s.ready.wait()  # nothing is sent yet: waiting is not an attempt
        client, scope = s.client, s.scope
        node = client.node_id if 0 <= client.node_id < 256 else 0  # the row keeps one byte
        t_send = time.monotonic()
        row = Attempt(s.spec.sender, number, s.spec.channel, attempt, INFO, node, t_send=t_send)
        outcome = INFO
        try:
            r = await client.send(
                channel_name(s.spec.channel),
                ChannelType.GROUP,
                body,
                client_msg_no=client_msg_no(s.spec.sender, number),
                timeout_s=self.cfg.send_timeout_s,
            )
        except trio.TooSlowError:
            if scope is not None:
                scope.cancel()  # as an SDK whose pings go unanswered: reconnect elsewhere
        except (ClientError, OSError, trio.BrokenResourceError):
            pass
        else:
            outcome = _OUTCOME[classify_send_reason(r.reason_code)]
            row = dataclasses.replace(row, outcome=outcome, reason=r.reason_code)
            if outcome == OK:
                row = dataclasses.replace(row, seq=r.message_seq, message_id=r.message_id)
        finally:
            # Also when cancelled at the end of the drain: the SEND may have been committed.
            done = dataclasses.replace(row, t_done=time.monotonic())
            self.rows.write(done.pack())
            self.counts[f"attempts_{('ok', 'fail', 'info')[done.outcome]}"] += 1
        return outcome

    # control

    async def listen(self, conn: Connection, senders: trio.CancelScope) -> None:
        """Host updates and the stop, from the runner; polled, so no thread blocks on it."""
        while True:
            while conn.poll():
                kind, value = conn.recv()
                if kind == "hosts":
                    self.hosts = {int(n): h for n, h in value.items()}
                elif kind == "stop":
                    self.stopping = True
                    senders.deadline = trio.current_time() + float(value)
            await trio.sleep(0.2)

    def summary(self) -> dict[str, Any]:
        return {
            "worker": self.job.worker,
            "counts": self.counts,
            "recv_examples": self.recv_examples,
            "recv_sample": self.recv_sample,
        }


async def _flood(conn: Connection, job: FloodJob) -> dict[str, Any]:
    folder = Path(job.folder)
    with (folder / f"sends-w{job.worker}.bin").open("xb") as rows:
        flood = _Flood(job, rows)
        async with trio.open_nursery() as top:
            async with trio.open_nursery() as sessions:
                for s in flood.sessions:
                    sessions.start_soon(flood.session_loop, s)
                with trio.CancelScope() as senders:
                    top.start_soon(flood.listen, conn, senders)
                    async with trio.open_nursery() as slots:
                        for s in flood.sessions:
                            for _ in range(job.cfg.window):
                                slots.start_soon(flood.slot, s)
                flood.finished = True
                sessions.cancel_scope.cancel()
            top.cancel_scope.cancel()
    result = flood.summary()
    (folder / f"recv-w{job.worker}.json").write_text(json.dumps(result, separators=(",", ":")))
    return result


def worker_main(conn: Connection, job: FloodJob) -> None:
    """Entry point of a load process."""
    conn.send(("done", run_worker(conn, _flood, job)["counts"]))


# --- the runner's side ------------------------------------------------------------------------


class FloodWorkload:
    def __init__(
        self,
        cluster: ChaosCluster,
        recorder: Recorder,
        cfg: FloodConfig,
        rng: random.Random,
        folder: Path,
    ) -> None:
        self.cluster = cluster
        self.rec = recorder
        self.cfg = cfg
        self.rng = rng
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.specs = [
            SessionSpec(s, f"ft{s}-{rng.getrandbits(32):x}", s % cfg.channels)
            for s in range(cfg.sessions)
        ]
        self.users = {uid_of(s.sender): s for s in self.specs}
        self.channels = [channel_name(j) for j in range(cfg.channels)]
        self.stopping = False
        self.procs: list[Any] = []
        self.pipes: list[Connection] = []
        self.results: dict[int, dict[str, int]] = {}

    async def setup(self) -> None:
        for s in self.specs:
            body = {"uid": uid_of(s.sender), "token": s.token, "device_flag": DEVICE_WEB}
            await setup_call(self.cluster, self.rng, "/user/token", body)
        for j, name in enumerate(self.channels):
            members = [uid_of(s.sender) for s in self.specs if s.channel == j]
            body = {"channel_id": name, "channel_type": ChannelType.GROUP, "subscribers": members}
            await setup_call(self.cluster, self.rng, "/channel", body)

    def _serving_hosts(self) -> dict[int, str]:
        return {n: self.cluster.hosts[n] for n in self.cluster.serving()}

    async def run(self, nursery: trio.Nursery) -> None:
        ctx = multiprocessing.get_context("spawn")
        workers = max(1, min(self.cfg.workers, len(self.specs)))
        for w in range(workers):
            job = FloodJob(
                worker=w,
                sessions=self.specs[w::workers],
                hosts=self._serving_hosts(),
                cfg=self.cfg,
                folder=str(self.folder),
                seed=self.rng.getrandbits(64),
                rate=self.cfg.rate * len(self.specs[w::workers]) / len(self.specs),
            )
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, job), name=f"chaos-flood-{w}")
            proc.start()
            child.close()
            self.procs.append(proc)
            self.pipes.append(parent)
        nursery.start_soon(self._tend)

    def stop(self) -> None:
        self.stopping = True

    async def _tend(self) -> None:
        """Tell the workers which nodes serve, then to stop; wait for their results."""
        told_stop = False
        last_hosts = 0.0
        try:
            while len(self.results) < len(self.procs):
                now = trio.current_time()
                for w, (conn, proc) in enumerate(zip(self.pipes, self.procs, strict=True)):
                    if w in self.results:
                        continue
                    if self.stopping and not told_stop:
                        conn.send(("stop", self.cfg.drain_s))
                    elif now - last_hosts >= 1.0:
                        conn.send(("hosts", self._serving_hosts()))
                    while w not in self.results and conn.poll():
                        try:
                            kind, value = conn.recv()
                        except EOFError:
                            break  # gone without a word: the liveness check below says so
                        if kind == "error":
                            raise RuntimeError(f"flood worker {w} failed: {value}")
                        self.results[w] = value
                    if w not in self.results and not proc.is_alive():
                        raise RuntimeError(f"flood worker {w} died (exit {proc.exitcode})")
                if now - last_hosts >= 1.0:
                    last_hosts = now
                told_stop = told_stop or self.stopping
                await trio.sleep(0.2)
        finally:
            for w, proc in enumerate(self.procs):
                proc.join(timeout=5.0 if w in self.results else 0.1)
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=5)

    def facts(self) -> dict[str, Any]:
        total: dict[str, int] = {}
        for counts in self.results.values():
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
        return {"flood": {"config": asdict(self.cfg), "workers": total}}

    # final reads

    async def final_reads(self, nodes: Sequence[int]) -> int:
        """Read every channel in full from every node into ``final-n<node>.bin``, the nodes side
        by side (each node parses and encodes its own answers, so two cores are both used);
        returns how many reads failed after retries (a node that keeps failing is skipped for
        the rest of its channels)."""
        failed = [0]

        async def from_node(node: int) -> None:
            given_up = False
            with (self.folder / f"final-n{node}.bin").open("xb") as fh:
                for j in range(len(self.channels)):
                    if given_up:
                        failed[0] += 1
                        continue
                    for attempt in range(3):
                        read = await self.read_channel(node, j)
                        if read is not None:
                            write_final_read(fh, read)
                            break
                        await trio.sleep(1.0 + attempt)
                    else:
                        failed[0] += 1
                        given_up = True

        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(from_node, node)
        return failed[0]

    async def read_channel(self, node: int, j: int) -> FinalRead | None:
        """Channel ``j`` from seq 1 to its head, paged; None if a page failed."""
        members = [s for s in self.specs if s.channel == j]
        login = uid_of(members[0].sender) if members else ""
        read = FinalRead(node=node, channel=j)
        cursor = 1
        while True:
            try:
                code, answer = await self.cluster.call(
                    node,
                    "POST",
                    "/channel/messagesync",
                    {
                        "login_uid": login,
                        "channel_id": channel_name(j),
                        "channel_type": ChannelType.GROUP,
                        "start_message_seq": cursor,
                        "end_message_seq": 0,
                        "limit": SYNC_PAGE,
                        "pull_mode": 1,
                    },
                    timeout_s=60.0,
                )
            except HttpError:
                return None
            if code != 200 or not isinstance(answer, dict):
                return None
            page = answer.get("messages") or []
            try:
                for m in page:
                    self._add(read, m)
            except (KeyError, ValueError, TypeError):
                return None
            if not answer.get("more") or not page:
                read.complete = not answer.get("more")
                return read
            cursor = int(page[-1]["message_seq"]) + 1

    def _add(self, read: FinalRead, m: dict[str, Any]) -> None:
        seq, mid = int(m["message_seq"]), int(m["message_id"])
        from_uid, cmn = str(m["from_uid"]), str(m["client_msg_no"])
        key = parse_key(from_uid, cmn)
        ok = False
        if key == PHANTOM:
            if len(read.phantoms) < 10:
                read.phantoms.append({"seq": seq, "from_uid": from_uid, "client_msg_no": cmn})
        else:
            sender, number = split_key(key)
            ok = base64.b64decode(m["payload"]) == payload(sender, number, self.cfg.payload)
        read.add(seq, key, mid, ok)

    async def digests(self, nodes: Sequence[int], timeout_s: float = 60.0) -> bool:
        return await record_digests(self.cluster, self.rec, nodes, timeout_s)
