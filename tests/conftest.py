"""Shared fixtures: real node processes on loopback, each test on its own address.

Every node gets a fresh 127.0.x.y address with the standard ports, so a test never collides
with another test's node, a developer's ``make run``, or a port in the ephemeral range.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from node.devcluster import NodeProcess, node_env

_addresses = (f"127.0.{(os.getpid() % 200) + 20}.{n}" for n in itertools.count(10))


def start_node(tmp_path: Path, node_id: int = 1, **settings: Any) -> NodeProcess:
    """Start a real node. ``settings`` are config keys as ``section__key=value``."""
    host = next(_addresses)
    data = tmp_path / f"node{node_id}-{host}"
    extra = {
        f"RAFTCHAT_{k.replace('__', '_').upper()}": str(v).lower()
        if isinstance(v, bool)
        else str(v)
        for k, v in settings.items()
    }
    extra.setdefault("RAFTCHAT_LOG_FORMAT", "text")
    proc = NodeProcess(
        node_id=node_id,
        data_dir=data,
        env=node_env(node_id, host, data, extra),
        log_path=tmp_path / f"node{node_id}-{host}.log",
    )
    proc.start()
    return proc


def eventually(check: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    """Poll an externally observable condition until it holds. Only for state that offers no
    event to wait on (say, the server noticing a closed socket, seen through the HTTP API)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.02)


class Api:
    """A thin synchronous HTTP client for tests (the full client library is issue 6)."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10.0)

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.http.post(path, json=body)

    def ok(self, path: str, body: Any) -> Any:
        resp = self.post(path, body)
        assert resp.status_code == 200, (path, resp.status_code, resp.text)
        return resp.json()

    def token(self, uid: str, token: str, device_flag: int = 0, device_level: int = 0) -> None:
        self.ok(
            "/user/token",
            {"uid": uid, "token": token, "device_flag": device_flag, "device_level": device_level},
        )


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    proc = start_node(tmp_path)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def api(node: NodeProcess) -> Iterator[Api]:
    client = Api(node.endpoints["http"])
    yield client
    client.http.close()
