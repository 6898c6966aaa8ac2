"""What ``GET /metrics`` exposes, in Prometheus' text format, from a registry of this node's own.

Two kinds of figure:

* **events** counted where they happen (sends by reason, SENDACK and commit latencies, RECVs
  handed to sessions, slow clients closed): the counters and histograms of ``NodeMetrics``;
* **state** that the node already keeps (connections, each slot group's Raft positions, the
  router's retry and drop counts, the webhook queues, RocksDB's size on disk): read at scrape
  time by ``NodeCollector``, so that nothing is counted twice.

A registry per node, not prometheus_client's global one: tests run several nodes in one
process, and the global registry would mix them (and refuse the second node's metrics).
Metric names and what to alert on are in ``docs/operations.md``, "Monitoring".
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from proto.wkproto import ReasonCode

from .sessions import ConnectedDevice

if TYPE_CHECKING:
    from .gateway.listeners import Gateway
    from .router import Router
    from .webhooks import Webhooks

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""From a lone node's batched commit (a few ms) to a send that waited out a failover
(``cluster.forward_timeout_s``, 5 s by default)."""


@dataclass
class Traffic:
    """A connection's traffic, with WuKongIM's ``/connz`` names: messages are SENDs in and
    RECVs out (bytes: their payloads); packets are every frame (bytes: as on the wire)."""

    in_msgs: int = 0
    out_msgs: int = 0
    in_msg_bytes: int = 0
    out_msg_bytes: int = 0
    in_packets: int = 0
    out_packets: int = 0
    in_packet_bytes: int = 0
    out_packet_bytes: int = 0

    def add(self, other: Traffic) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Connection(ConnectedDevice, Protocol):
    """What monitoring reads of a live client connection (the gateway's ``Session``)."""

    @property
    def version(self) -> int: ...
    @property
    def transport_kind(self) -> str: ...
    @property
    def peer(self) -> str: ...
    @property
    def last_active(self) -> float: ...
    @property
    def traffic(self) -> Traffic: ...
    def pending_bytes(self) -> int:
        """Bytes queued for the client, not yet written."""


def reason_name(reason: int) -> str:
    try:
        return ReasonCode(reason).name
    except ValueError:
        return str(reason)


class NodeMetrics:
    """This node's registry and the figures counted as things happen. One per node process
    (and one per node in tests that run several in one process)."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.registry = CollectorRegistry()
        r = self.registry
        self.sends = Counter(
            "raftchat_sends",
            "Sends answered, by API (gateway: SENDACK; http: /message/send) and reason code",
            ["api", "reason"],
            registry=r,
        )
        self.sendack_seconds = Histogram(
            "raftchat_sendack_latency_seconds",
            "From a SEND frame read to its SENDACK queued, whatever the reason code",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "raftchat_commit_latency_seconds",
            "A send batch on its group's leader: proposed to committed, applied and fsynced",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.deliveries = 0
        """Committed messages handed to local sessions as RECV, one per session."""
        self.slow_clients = 0
        """Sessions closed because their outbound queue was full (their RECVs dropped)."""
        ProcessCollector(registry=r)  # process_cpu_seconds_total, _resident_memory_, _open_fds
        self.connections: dict[int, Connection] = {}
        """Live client connections by id, authenticated or not (``/connz``)."""
        self.closed = Traffic()
        """The traffic of connections that have closed (``/varz`` adds the live ones)."""

    def sendack(self, api: str, reason: int, seconds: float | None = None) -> None:
        self.sends.labels(api, reason_name(reason)).inc()
        if seconds is not None:
            self.sendack_seconds.observe(seconds)

    def traffic(self) -> Traffic:
        total = Traffic()
        total.add(self.closed)
        for conn in self.connections.values():
            total.add(conn.traffic)
        return total

    def render(self) -> bytes:
        return generate_latest(self.registry)


def dir_size(path: str) -> int:
    """Bytes of the files under ``path`` (RocksDB's SST files, WAL and manifest); files that
    vanish while being counted (a compaction) count nothing."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


class NodeCollector(Collector):
    """State the node keeps anyway, read at scrape time on the trio thread (the scrape is an
    HTTP handler): as fresh as ``/cluster/status``, at no cost between scrapes."""

    def __init__(
        self,
        metrics: NodeMetrics,
        router: Router,
        webhooks: Callable[[], Webhooks | None],
        gateway: Callable[[], Gateway | None] = lambda: None,
    ) -> None:
        self._m = metrics
        self._router = router
        self._webhooks = webhooks
        self._gateway = gateway

    def collect(self) -> Iterator[Metric]:
        yield self._connections()
        yield from self._gateway_sockets()
        yield from self._groups()
        router = self._router
        yield CounterMetricFamily(
            "raftchat_forward_retries",
            "Attempts of a send, metadata change or read retried after a failure "
            "(moved leader, election, unreachable peer)",
            value=router.retries,
        )
        yield CounterMetricFamily(
            "raftchat_delivery_batches_dropped",
            "Committed batches not delivered to another node (its queue full, or unreachable "
            "for cluster deliveries' retry time): its clients resync by seq",
            value=router.fanout.failures,
        )
        yield CounterMetricFamily(
            "raftchat_deliveries",
            "Committed messages handed to local sessions as RECV, one per session",
            value=self._m.deliveries,
        )
        yield CounterMetricFamily(
            "raftchat_slow_clients",
            "Sessions closed because their outbound queue was full (their RECVs dropped)",
            value=self._m.slow_clients,
        )
        yield from self._webhook_metrics()

    def _connections(self) -> Metric:
        counts: dict[tuple[str, str], int] = {}
        for conn in list(self._m.connections.values()):
            if conn.uid:
                key = (conn.transport_kind, str(conn.version))
                counts[key] = counts.get(key, 0) + 1
        family = GaugeMetricFamily(
            "raftchat_connections",
            "Logged-in client connections by transport and WKProto version",
            labels=["transport", "version"],
        )
        for (transport, version), n in sorted(counts.items()):
            family.add_metric([transport, version], n)
        return family

    def _gateway_sockets(self) -> Iterator[Metric]:
        # Sockets, not sessions: a connection holds a place from its accept, through the TLS
        # handshake and the CONNECT, which is what gateway.max_connections bounds.
        gateway = self._gateway()
        if gateway is None:
            return
        yield GaugeMetricFamily(
            "raftchat_gateway_sockets",
            "Client sockets open on the gateway, logged in or not (bounded by "
            "gateway.max_connections)",
            value=gateway.open,
        )
        yield CounterMetricFamily(
            "raftchat_gateway_refused",
            "Client connections closed at accept because the node was at gateway.max_connections",
            value=gateway.refused,
        )

    def _groups(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str, extra: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["group", *(extra or [])])

        leader = gauge("raftchat_group_is_leader", "1 when this node leads the slot group")
        known = gauge("raftchat_group_has_leader", "1 when this replica knows a leader")
        term = gauge("raftchat_group_term", "Raft term of this replica")
        commit = gauge("raftchat_group_commit_index", "Raft commit index of this replica")
        applied = gauge("raftchat_group_applied_index", "Raft index applied by this replica")
        lag = gauge(
            "raftchat_group_follower_lag",
            "On the leader: commit index minus each follower's match index (entries)",
            ["follower"],
        )
        size = gauge("raftchat_group_db_bytes", "Size of this replica's RocksDB on disk")
        diverged = CounterMetricFamily(
            "raftchat_group_diverged_refusals",
            "AppendEntries this replica refused because they would replace entries it applied "
            "(its state has diverged: rebuild the replica)",
            labels=["group"],
        )
        for gid, local in sorted(self._router.local.items()):
            view = local.view
            g = str(gid)
            is_leader = view.is_leader
            commit_index = view.commit_index
            leader.add_metric([g], int(is_leader))
            known.add_metric([g], int(local.leader_id() is not None))
            term.add_metric([g], view.term)
            commit.add_metric([g], commit_index)
            applied.add_metric([g], view.applied_index)
            diverged.add_metric([g], view.diverged_refusals)
            if is_leader:
                for follower, match in local.follower_matches().items():
                    lag.add_metric([g, str(follower)], max(0, commit_index - match))
            size.add_metric([g], dir_size(local.store.path))
        yield from (leader, known, term, commit, applied, lag, size, diverged)

    def _webhook_metrics(self) -> Iterator[Metric]:
        hooks = self._webhooks()
        if hooks is None:
            return
        status = hooks.status()["events"]
        queued = GaugeMetricFamily(
            "raftchat_webhook_queued", "Webhook items waiting, by event", labels=["event"]
        )
        failed = CounterMetricFamily(
            "raftchat_webhook_failed_attempts", "Webhook POSTs that failed", labels=["event"]
        )
        dropped = CounterMetricFamily(
            "raftchat_webhook_dropped_items",
            "Webhook items given up (attempts exhausted, or pushed out of a full queue)",
            labels=["event"],
        )
        for kind, s in sorted(status.items()):
            queued.add_metric([kind], s["queued"])
            failed.add_metric([kind], s["failed_attempts"])
            dropped.add_metric([kind], s["dropped_items"])
        yield from (queued, failed, dropped)
