"""Runs scenarios over real sockets: connects, drives a scenario's steps, reads the answers in
the background, and keeps each target's counts.

A frame counts as sent once the write that holds it returned (the kernel took the bytes; the
server may still close before reading them: a session ends at its first bad frame, and what was
written after it is counted and never parsed). Connections that could not be opened are counted
apart ("refused"), and so are writes that failed because the server had closed ("broken").
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

from .answers import Accounter, accounter_for
from .scenario import Flood, HalfClose, Read, Received, Reset, Scenario, Sleep, Write

MAX_FINDINGS = 20
CONNECT_TIMEOUT_S = 3.0
RECEIVE_CHUNK = 65536


@dataclass(slots=True)
class TargetStats:
    frames: int = 0
    bytes: int = 0
    connections: int = 0
    refused: int = 0
    """Connections that could not be opened (a node down or restarting, a full backlog)."""
    broken: int = 0
    """Writes the server cut off by closing or resetting the connection."""
    abandoned: int = 0
    """Scenarios stopped at their time bound (the server stopped reading, or never answered)."""
    fuzzer_errors: int = 0
    """Generators that raised: a bug in the fuzzer, listed in the findings with its traceback."""
    scenarios: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    findings: list[dict[str, Any]] = field(default_factory=list)
    findings_total: int = 0

    def add_findings(self, found: list[dict[str, Any]], replay: str) -> None:
        for f in found:
            self.findings_total += 1
            if len(self.findings) < MAX_FINDINGS:
                self.findings.append({**f, "replay": replay})

    def to_json(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "connections": self.connections,
            "refused": self.refused,
            "broken": self.broken,
            "abandoned": self.abandoned,
            "fuzzer_errors": self.fuzzer_errors,
            "scenarios": dict(self.scenarios),
            "answers": dict(self.answers),
            "findings_total": self.findings_total,
            "findings": self.findings,
        }


class Limiter:
    """A token bucket over frames for the whole worker (``rate`` 0: no limit)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = 0.0
        self._last = trio.current_time()

    async def take(self, frames: int) -> None:
        if self.rate <= 0 or frames <= 0:
            return
        now = trio.current_time()
        self._tokens = min(self._tokens + (now - self._last) * self.rate, self.rate / 2 + frames)
        self._last = now
        self._tokens -= frames
        if self._tokens < 0:
            await trio.sleep(-self._tokens / self.rate)


class _Conn:
    def __init__(self, stream: trio.SocketStream, accounter: Accounter) -> None:
        self.stream = stream
        self.accounter = accounter
        self.inbox = bytearray()
        self.eof = False
        self.arrived = trio.Event()

    async def reader(self) -> None:
        try:
            while True:
                data = await self.stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    break
                self.inbox += data
                self.accounter.feed(bytes(data))
                self.arrived.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.eof = True
            self.arrived.set()

    async def read(self, timeout_s: float) -> Received:
        if not self.inbox and not self.eof:
            with trio.move_on_after(timeout_s):
                await self.arrived.wait()
        self.arrived = trio.Event()
        if self.eof:
            self.arrived.set()
        data = bytes(self.inbox)
        self.inbox.clear()
        return Received(data, self.eof and not data)


def _reset(stream: trio.SocketStream) -> None:
    """Close with a RST: SO_LINGER on with a zero timeout."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _open(host: str, port: int) -> trio.SocketStream | None:
    with trio.move_on_after(CONNECT_TIMEOUT_S):
        try:
            return await trio.open_tcp_stream(host, port)
        except OSError:
            return None
    return None


async def run_scenario(
    sc: Scenario, host: str, stats: TargetStats, limiter: Limiter, replay: str
) -> None:
    """Run one scenario to its end (or its time bound); counts go into ``stats``."""
    stats.scenarios[sc.kind] += 1
    stream = await _open(host, sc.port)
    if stream is None:
        stats.refused += 1
        sc.steps.close()
        return
    stats.connections += 1
    accounter = accounter_for(sc.target, sc.sent)
    conn = _Conn(stream, accounter)
    extra: list[trio.SocketStream] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.reader)
            with trio.move_on_after(sc.max_s) as scope:
                await _drive(sc, conn, stats, limiter, extra, host)
            if scope.cancelled_caught:
                stats.abandoned += 1
            nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        stats.broken += 1
    finally:
        sc.steps.close()
        with trio.CancelScope(shield=True):
            for s in extra:
                await _close(s)
            await _close(stream)
        stats.answers.update(accounter.counts)
        stats.add_findings(accounter.findings, replay)


async def _close(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await stream.aclose()


async def _drive(
    sc: Scenario,
    conn: _Conn,
    stats: TargetStats,
    limiter: Limiter,
    extra: list[trio.SocketStream],
    host: str,
) -> None:
    answer: Received | None = None
    while True:
        try:
            action = sc.steps.send(answer)
        except StopIteration:
            return
        answer = None
        match action:
            case Write(data=data, frames=frames):
                await limiter.take(frames)
                await conn.stream.send_all(data)
                stats.frames += frames
                stats.bytes += len(data)
            case Read(timeout_s=timeout_s):
                answer = await conn.read(timeout_s)
            case Sleep(seconds=seconds):
                await trio.sleep(seconds)
            case HalfClose():
                try:
                    await conn.stream.send_eof()
                except OSError as e:
                    if e.errno != errno.ENOTCONN:
                        raise
            case Reset():
                _reset(conn.stream)
                return
            case Flood(connections=n, data=data):
                await _flood(sc.port, host, n, data, stats, limiter, extra)


async def _flood(
    port: int,
    host: str,
    n: int,
    data: bytes,
    stats: TargetStats,
    limiter: Limiter,
    extra: list[trio.SocketStream],
) -> None:
    for _ in range(n):
        s = await _open(host, port)
        if s is None:
            stats.refused += 1
            continue
        extra.append(s)
        stats.connections += 1
        if data:
            await limiter.take(1)
            try:
                await s.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                stats.broken += 1
                continue
            stats.frames += 1
            stats.bytes += len(data)
