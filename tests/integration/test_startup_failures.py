"""A node that cannot start says why in one line and exits; SIGTERM stops a node at any moment.

Real ``raftchat node`` processes. Each failure must end the process within 10 s (the
``subprocess.run`` timeout is the assertion) with a non-zero code and exactly one line on
stderr, which names the address or the path: before the fixes, a taken Raft port or an address
not on the machine hung the node, and a taken HTTP port printed an ExceptionGroup.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from launcher.devcluster import cluster_env, node_env
from tests.conftest import fresh_host, fresh_hosts, start_node

ROOT = Path(__file__).resolve().parents[2]
NODE = [sys.executable, "-m", "node.cli", "node"]
FAILURE_WITHIN_S = 10.0
REFUSED, UNAVAILABLE = 2, 3


@dataclass
class Exit:
    code: int
    stderr: list[str]


def run_to_exit(env: dict[str, str], prefix: list[str] | None = None) -> Exit:
    """Run a node that must fail; TimeoutExpired (the test fails) if it runs on."""
    done = subprocess.run(
        [*(prefix or []), *NODE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=FAILURE_WITHIN_S,
    )
    return Exit(done.returncode, done.stderr.splitlines())


def lone_env(host: str, data: Path, **extra: str) -> dict[str, str]:
    return node_env(1, host, data, {"RAFTCHAT_LOG_FORMAT": "text", **extra})


@contextmanager
def listener_on(host: str, port: int) -> Iterator[None]:
    """Another program holding ``host:port``."""
    with socket.socket() as s:
        s.bind((host, port))
        s.listen()
        yield


def namespace_prefix(mount: bool = False) -> list[str]:
    """A command prefix that runs in private namespaces (a network namespace, and a mount
    namespace with ``mount``), as root or, failing that, in a user namespace. Skips when this
    machine allows neither, except in CI, which must run these tests."""
    unshare = shutil.which("unshare")
    ip = shutil.which("ip")
    kinds = ["--net"] + (["--mount"] if mount else [])
    candidates = [[unshare, *kinds]] if os.geteuid() == 0 else []
    candidates.append([unshare, "--user", "--map-root-user", *kinds])
    for prefix in candidates if unshare and ip else []:
        probe = subprocess.run([*prefix, "true"], capture_output=True)  # type: ignore[list-item]
        if probe.returncode == 0:
            return prefix  # type: ignore[return-value]
    if os.environ.get("CI") == "true":
        pytest.fail("CI must be able to create namespaces (unshare and ip, as root)")
    pytest.skip("cannot create a network namespace here (needs unshare and ip, or root)")


# --- addresses and ports ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "port"),
    [
        ("Raft", 12002),  # slot group 2: the node hung here after opening group 1
        ("peer gRPC", 11110),
        ("public gRPC", 5002),
        ("HTTP", 5001),
        ("WKProto TCP", 5100),
        ("WKProto WebSocket", 5200),
    ],
)
def test_a_taken_port_is_named_in_one_line(tmp_path: Path, what: str, port: int) -> None:
    host = fresh_host()
    with listener_on(host, port):
        result = run_to_exit(lone_env(host, tmp_path / "node1"))
    assert result.code == UNAVAILABLE, result.stderr
    assert result.stderr == [
        f"raftchat: cannot listen on {host}:{port} ({what}): Address already in use"
    ]


def test_an_address_not_on_this_machine_is_named_in_one_line(tmp_path: Path) -> None:
    """The node runs in a network namespace of its own whose loopback interface has no
    address: its 127.0.x.y is not on its machine, and nothing it does can leave the namespace
    (no interface but ``lo``). An address outside 127.0.0.0/8 is not used: a misconfigured
    host that let the bind succeed would have a test server listening beyond loopback."""
    prefix = namespace_prefix()
    host = fresh_host()
    unaddressed = ["sh", "-c", 'ip link set lo up && ip addr flush dev lo && exec "$@"', "sh"]
    env = lone_env(host, tmp_path / "node1")
    env["PATH"] = os.pathsep.join([os.path.dirname(shutil.which("ip") or ""), env["PATH"]])
    result = run_to_exit(env, prefix + unaddressed)
    assert result.code == UNAVAILABLE, result.stderr
    assert result.stderr == [
        f"raftchat: cannot listen on {host}:12000 (Raft): Cannot assign requested address"
    ]
    assert not (tmp_path / "node1").exists()  # nothing was touched before the check


@pytest.mark.parametrize(
    ("settings", "exposed"),
    [
        ({"RAFTCHAT_NODE_HOST": "10.255.255.1"}, "10.255.255.1"),
        ({"RAFTCHAT_HTTP_ALSO_HOST": "0.0.0.0"}, "0.0.0.0"),
    ],
)
def test_an_api_beyond_loopback_without_a_token_is_refused_in_one_line(
    tmp_path: Path, settings: dict[str, str], exposed: str
) -> None:
    """Refused from the configuration alone: nothing is bound, nothing is created."""
    env = lone_env(fresh_host(), tmp_path / "node1", **settings)
    result = run_to_exit(env)
    assert result.code == REFUSED, result.stderr
    assert result.stderr == [
        f"raftchat: configuration error: the HTTP and gRPC APIs would listen on {exposed} "
        "without a credential: set auth.api_token (or auth.api_open = true to serve them "
        "open, knowingly)"
    ]
    assert not (tmp_path / "node1").exists()


# --- the data directory -----------------------------------------------------------------------


def test_a_data_directory_under_a_file_is_named_in_one_line(tmp_path: Path) -> None:
    """Unwritable for root too (permissions would not stop root)."""
    (tmp_path / "file").write_text("")
    data = tmp_path / "file" / "node1"
    result = run_to_exit(lone_env(fresh_host(), data))
    assert result.code == UNAVAILABLE, result.stderr
    assert result.stderr == [f"raftchat: data directory {data} is not usable: Not a directory"]


def test_a_read_only_data_directory_is_named_in_one_line(tmp_path: Path) -> None:
    """A read-only bind mount of the directory, in a mount namespace of the node's own (root
    writes through permissions, not through a read-only mount)."""
    prefix = namespace_prefix(mount=True)
    data = tmp_path / "node1"
    data.mkdir()
    read_only = [
        "sh",
        "-c",
        'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && shift && exec "$@"',
        str(data),
        "--",
    ]
    env = lone_env(fresh_host(), data)
    result = run_to_exit(env, prefix + read_only)
    assert result.code == UNAVAILABLE, result.stderr
    assert result.stderr == [
        f"raftchat: data directory {data} is not usable: Read-only file system"
    ]


def test_a_slot_group_count_other_than_the_maps_is_refused_in_one_line(tmp_path: Path) -> None:
    """The count is fixed when the cluster is created: channels hash onto it, so a node
    restarted with another ``cluster.groups`` would recompute an unchanged map under the new
    count and hide the messages it stores. Before the data directory recorded the count, it
    did start, and served empty histories."""
    host = fresh_host()
    first = start_node(tmp_path, host=host, cluster__groups=2)
    first.stop()
    result = run_to_exit(lone_env(host, first.data_dir, RAFTCHAT_CLUSTER_GROUPS="5"))
    assert result.code == REFUSED, result.stderr
    assert result.stderr == [
        f"raftchat: the cluster of data directory {first.data_dir} has 2 slot groups and this "
        "node's cluster.groups is 5: set cluster.groups = 2 (the count is fixed when the "
        "cluster is created)"
    ]


# --- SIGTERM ----------------------------------------------------------------------------------


class Starting:
    """A node process whose stderr lines are read as they come."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            NODE, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._pumping = threading.Thread(target=self._pump, daemon=True)
        self._pumping.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for_line(self, text: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.seen):
            remaining = deadline - time.monotonic()
            assert remaining > 0 and self.proc.poll() is None, (text, self.seen)
            with suppress(queue.Empty):
                self.seen.append(self.lines.get(timeout=remaining))

    def stop_within(self, timeout_s: float) -> int:
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running {timeout_s} s after SIGTERM") from None
        assert time.monotonic() - start < timeout_s
        return code

    def all_lines(self) -> list[str]:
        """Every line, once the process has ended."""
        self._pumping.join(10)
        while not self.lines.empty():
            self.seen.append(self.lines.get_nowait())
        return self.seen

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


SHUTDOWN_TIMEOUT_S = 5.0


@pytest.mark.parametrize("phase", ["waiting for elections", "joining"])
def test_sigterm_during_start_up_stops_within_the_shutdown_timeout(
    tmp_path: Path, phase: str
) -> None:
    """Node 1 of a three-node cluster whose peers never start waits for its groups' leaders;
    a joining node whose seed is down waits to be admitted. SIGTERM ends either cleanly."""
    hosts = dict(zip((1, 2, 3), fresh_hosts(3), strict=True))
    settings = {
        "RAFTCHAT_LOG_FORMAT": "text",
        "RAFTCHAT_NODE_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
    }
    if phase == "joining":
        settings.update({"RAFTCHAT_CLUSTER_JOIN": hosts[2], "RAFTCHAT_CLUSTER_PASSWORD": "s"})
        waiting = "join not accepted yet"
    else:
        settings.update(cluster_env(hosts, "secret")[1])
        waiting = "waiting until ready"
    node = Starting(node_env(1, hosts[1], tmp_path / "node1", settings))
    try:
        node.wait_for_line(waiting)
        assert node.stop_within(SHUTDOWN_TIMEOUT_S) == 0
        lines = node.all_lines()
        assert any("stopping on signal" in line for line in lines)
        assert lines[-1] == "raftchat: node stopped"
    finally:
        node.kill()


def test_a_stop_that_overruns_the_shutdown_timeout_is_cut_short() -> None:
    """The last resort behind every bounded wait: whatever the node is stuck in (here, a
    sleep), it exits once the timeout has passed since the stop began."""
    code = (
        "from node.app import StopDeadline\nimport time\nStopDeadline(0.5).arm()\ntime.sleep(30)\n"
    )
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=10
    )
    assert time.monotonic() - start < 5
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "raftchat: node did not stop within node.shutdown_timeout_s = 0.5 s; exiting"
    ]
