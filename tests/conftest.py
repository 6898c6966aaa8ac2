"""Shared fixtures: real node processes on loopback, each test on its own address.

Every node gets a fresh 127.p.x.y address with the standard ports, where p (20..219) comes from
the pytest process and x.y counts up through the run: a test never collides with another
test's node (not even one still stopping, or a module's node still running), a developer's
``make run`` or the bench and chaos runs (all on 127.0.x.y), or a port in the ephemeral range.
"""

from __future__ import annotations

import itertools
import os
import ssl
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.http import SyncHttpClient, TokenAuth
from launcher.devcluster import NodeProcess, cluster_env, node_env, start_all, stop_all_now

_PROCESS_OCTET = (os.getpid() % 200) + 20
_addresses = (f"127.{_PROCESS_OCTET}.{n // 240 + 1}.{n % 240 + 10}" for n in itertools.count())

ADMIN_TOKEN = "test-admin-token"
"""The admin token every test ``Cluster`` runs with (``/cluster/*`` of a multi-node cluster
answer nothing without one); a lone node runs without tokens unless a test asks."""


def fresh_host() -> str:
    """A loopback address no other test of this run uses."""
    return next(_addresses)


def fresh_hosts(count: int) -> list[str]:
    """``count`` loopback addresses no other test of this run uses."""
    return [next(_addresses) for _ in range(count)]


def start_node(
    tmp_path: Path, node_id: int = 1, host: str | None = None, **settings: Any
) -> NodeProcess:
    """Start a real node (on ``host``, by default a fresh address). ``settings`` are config
    keys as ``section__key=value``."""
    host = host or next(_addresses)
    data = tmp_path / f"node{node_id}-{host}"
    extra = _settings_env(settings)
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
    """The HTTP API for tests, on the client library: ``client`` is a ``SyncHttpClient`` with
    typed methods; ``post`` gives the raw answer (for tests of error answers); ``ok`` the
    decoded JSON of a 200. No retries: a test sees every answer as the server gave it.
    Requests carry the tokens given (``http`` too: the admin one on ``/cluster/*``)."""

    def __init__(
        self,
        base_url: str,
        api_token: str | None = None,
        admin_token: str | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        auth = TokenAuth(api_token, admin_token)
        verify = True if ca_file is None else ssl.create_default_context(cafile=str(ca_file))
        self.http = httpx.Client(base_url=base_url, timeout=10.0, auth=auth, verify=verify)
        self.client = SyncHttpClient(
            base_url,
            http=self.http,
            retries=0,
            api_token=api_token,
            admin_token=admin_token,
        )

    @classmethod
    def of(cls, node: NodeProcess, url: str | None = None) -> Api:
        """The API of a node started here, with the tokens it was started with."""
        return cls(url or node.endpoints["http"], *tokens_of(node))

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.client.request("POST", path, body)

    def ok(self, path: str, body: Any) -> Any:
        resp = self.post(path, body)
        assert resp.status_code == 200, (path, resp.status_code, resp.text)
        return resp.json()

    def token(
        self, uid: str, token: str, device_flag: int = 0, device_level: int = 0, expire: int = 0
    ) -> None:
        self.client.user_token(uid, token, device_flag, device_level, expire)


def running_node(tmp_path: Path, **settings: Any) -> Iterator[NodeProcess]:
    """The body of a node fixture: a node started in ``tmp_path``, stopped when the fixture
    ends (``yield from running_node(...)``, for a test or, module-scoped, for a whole file)."""
    proc = start_node(tmp_path, **settings)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    yield from running_node(tmp_path)


def tokens_of(node: NodeProcess) -> tuple[str | None, str | None]:
    """(API token, admin token) a node was started with."""
    env = node.env
    return env.get("RAFTCHAT_AUTH_API_TOKEN"), env.get("RAFTCHAT_AUTH_ADMIN_TOKEN")


@pytest.fixture
def api(node: NodeProcess) -> Iterator[Api]:
    client = Api.of(node)
    yield client
    client.http.close()


class Cluster:
    """Real node processes forming one cluster, each on its own loopback address."""

    def __init__(self, tmp_path: Path, size: int, **settings: Any) -> None:
        self.hosts = dict(zip(range(1, size + 1), fresh_hosts(size), strict=True))
        settings.setdefault("auth__admin_token", ADMIN_TOKEN)
        envs = cluster_env(self.hosts, "test-cluster-secret")
        self.nodes: dict[int, NodeProcess] = {}
        for i, host in self.hosts.items():
            data = tmp_path / f"node{i}"
            extra = dict(envs[i])
            extra.update(_settings_env(settings))
            extra.setdefault("RAFTCHAT_LOG_FORMAT", "text")
            self.nodes[i] = NodeProcess(
                node_id=i,
                data_dir=data,
                env=node_env(i, host, data, extra),
                log_path=tmp_path / f"node{i}.log",
            )

    def start(self) -> None:
        start_all(list(self.nodes.values()))

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api(self, node_id: int) -> Api:
        return Api.of(self.nodes[node_id], f"http://{self.hosts[node_id]}:5001")

    def tcp(self, node_id: int) -> tuple[str, int]:
        return self.hosts[node_id], 5100

    def status(self, node_id: int) -> Any:
        return self.api(node_id).http.get("/cluster/status").json()

    def leader_of_key(self, key: str, via: int, timeout_s: float = 10.0) -> int:
        """The node leading the group that owns ``key``, as a replica of that group sees it.

        Polls (bounded): right after a start, a kill or a leadership transfer by the controller's
        balancer, a group may be between leaders, and elections signal nothing observable."""
        group = self.status(via)["slot_table"][zlib.crc32(key.encode()) % 256]
        deadline = time.monotonic() + timeout_s
        while True:
            for node_id, proc in self.nodes.items():
                if not proc.running:
                    continue
                for g in self.status(node_id)["groups"]:
                    if g["group"] == group and g.get("is_leader"):
                        return node_id
            assert time.monotonic() < deadline, f"no leader for group {group}"
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every node at once, without a drain (``tests/integration/test_drain.py`` is
        where draining is tested): once a test is done, a drain is only waiting."""
        stop_all_now(list(self.nodes.values()))


def _settings_env(settings: dict[str, Any]) -> dict[str, str]:
    return {
        f"RAFTCHAT_{k.replace('__', '_').upper()}": str(v).lower()
        if isinstance(v, bool)
        else str(v)
        for k, v in settings.items()
    }


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, 3)
    c.start()
    try:
        yield c
    finally:
        c.stop()


PHASE_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
"""Each test's reports by phase (``setup``, ``call``, ``teardown``), so that a fixture's
teardown can tell whether its test failed (the console tests save a screenshot then)."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    return report
