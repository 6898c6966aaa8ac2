"""The bench's CPU attribution: thread rows, per-thread shares, CPU per send."""

from __future__ import annotations

import os
import threading

from bench.cpumeter import (
    MAIN_THREAD,
    cpu_per_send,
    ms_per_send,
    per_thread_pct,
    thread_group,
    thread_seconds,
)
from node.proctitle import os_thread_name


def test_thread_rows_fold_numbered_pools_and_name_the_main_thread() -> None:
    assert thread_group(100, 100, "raftchat node 1") == MAIN_THREAD
    assert thread_group(100, 101, "Trio thread 3") == "trio-workers"
    assert thread_group(100, 106, "sleep from trio") == "trio-workers"
    assert thread_group(100, 102, "event_engine") == "event_engine"
    assert thread_group(100, 103, "raft-driver") == "raft-driver"
    assert thread_group(100, 104, "raftchat node 1") == "unnamed"
    assert thread_group(100, 105, "worker-12") == "worker"


def test_a_thread_that_started_in_the_window_counts_from_zero() -> None:
    before = {1: ("trio-main", 10.0), 2: ("raft-driver", 5.0)}
    after = {1: ("trio-main", 10.5), 2: ("raft-driver", 5.1), 3: ("grpc-spin", 0.2)}
    assert per_thread_pct(before, after, 2.0) == {
        "trio-main": 25.0,
        "grpc-spin": 10.0,
        "raft-driver": 5.0,
    }


def test_cpu_per_send_sums_nodes_and_rows_and_subtracts_idle() -> None:
    load = {
        "pct_of_one_core": {"node1": 30.0, "node2": 20.0, "load0": 50.0},
        "threads_pct_of_one_core": {
            "node1": {"trio-main": 20.0, "raft-driver": 10.0},
            "node2": {"trio-main": 12.0, "raft-driver": 8.0},
        },
    }
    idle = {
        "pct_of_one_core": {"node1": 5.0, "node2": 5.0},
        "threads_pct_of_one_core": {
            "node1": {"trio-main": 1.0, "raft-driver": 4.0},
            "node2": {"trio-main": 1.0, "raft-driver": 4.0},
        },
    }
    per = cpu_per_send(load, 50.0, idle)
    assert per["cluster_ms"] == 10.0  # 50 % of a core for 50 sends/s; the load process is not
    assert per["nodes_ms"] == {"node1": 6.0, "node2": 4.0}
    assert per["threads_ms"] == {"trio-main": 6.4, "raft-driver": 3.6}
    assert per["cluster_above_idle_ms"] == 8.0
    assert per["threads_above_idle_ms"] == {"trio-main": 6.0, "raft-driver": 2.0}
    assert "cluster_above_idle_ms" not in cpu_per_send(load, 50.0, None)
    assert ms_per_send(10.0, 0.0) is None


def test_this_process_threads_are_read_from_proc() -> None:
    rows = thread_seconds(os.getpid())
    assert threading.get_native_id() in rows
    assert rows[os.getpid()][0] == MAIN_THREAD


def test_kernel_thread_names_fit_and_say_what_runs() -> None:
    assert os_thread_name("node3-driver", "", "") == "raft-driver"
    assert os_thread_name("wal-flusher", "", "") == "wal-flusher"
    grpc = "/x/site-packages/grpc/_channel.py"
    assert os_thread_name("Thread-2 (_run)", grpc, "channel_spin") == "grpc-spin"
    assert os_thread_name("Thread-1 (_poll_wrapper)", "grpc/_cython/cygrpc/", "_poll_wrapper") == (
        "grpc-poller"
    )
    assert os_thread_name("Thread-4 (work)", "/x/app/mod.py", "work") == "py-work"
    assert len(os_thread_name("a-very-long-thread-name-indeed", "", "")) == 15
