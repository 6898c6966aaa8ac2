"""The sections of a node's configuration (``node/config.py``): each key with its default, and
the checks a section makes of itself.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from pathlib import Path

_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (127.0.0.0/8, ::1, ``localhost``). Any
    other name counts as reachable from outside: it could resolve to anything."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class NodeSection:
    id: int = 1
    """Unique per cluster, 1..1023."""
    name: str = ""
    data_dir: str = ""
    """Empty: ``./raftchat-data/node<id>`` (never a directory ``raftchat dev`` uses)."""
    host: str = "127.0.0.1"
    """Address every listener binds unless the listener names its own."""
    zone: str = ""
    """Where the node runs, as far as failures go (the machine, when several nodes share one):
    each slot group's replicas are spread over as many zones as the members name. Up to 64 of
    A-Z a-z 0-9 . _ -; empty: none given (the node counts as a zone of its own)."""
    shutdown_timeout_s: float = 10.0
    """From SIGTERM (or a failed start) to exit at most; a stop that takes longer is cut short
    and exits with code 1."""

    def data_path(self) -> Path:
        """``data_dir``, or by default ``./raftchat-data/node<id>``: not under ``./data``,
        where ``make run`` keeps its nodes, so that a node started in the checkout without a
        config never opens one of theirs."""
        return Path(self.data_dir or f"./raftchat-data/node{self.id}")


@dataclass
class GatewaySection:
    tcp_port: int = 5100
    ws_port: int = 5200
    auth_timeout_s: float = 4.0
    """A connection that has not sent a valid CONNECT by then is closed."""
    idle_timeout_s: float = 180.0
    """An authenticated connection with no inbound frame for this long is closed."""
    encryption: bool = True
    """Payload encryption (X25519 + AES-CBC). Off: CONNACK carries no keys, payloads are clear."""
    kick_close_delay_s: float = 2.0
    """Time between a DISCONNECT kick and the socket close, so the client can read the reason."""
    max_connections: int = 0
    """Client connections (TCP and WebSocket together) open at once; beyond, a new one is
    closed right after the accept. 0: the open-file limit less 1,024 kept for other sockets
    and files."""
    external_tcp_addr: str = ""
    external_ws_addr: str = ""
    """What ``/route`` tells clients; empty means the bound address."""
    wss_port: int = 5210
    """WKProto or JSON-RPC over WebSocket over TLS (WuKongIM's port); served when
    ``tls.cert_file`` is set."""
    external_wss_addr: str = ""
    """What ``/route`` tells clients as ``wss_addr``; empty: ``wss://<node.host>:<wss_port>``
    when WSS is served, else nothing."""


@dataclass
class DevicesSection:
    """Concurrent sessions per uid and platform; the oldest session over a limit is kicked."""

    app_limit: int = 1
    web_limit: int = 10
    pc_limit: int = 1


@dataclass
class HttpSection:
    """The HTTP API and its limits: every client is treated as possibly hostile, so each
    connection has deadlines and each client address a share (``docs/security.md``)."""

    port: int = 5001
    max_body_bytes: int = 2 * 1024 * 1024
    """Larger bodies get 413."""
    max_head_bytes: int = 64 * 1024
    """The request line and headers together; more gets 431."""
    max_json_depth: int = 64
    """Arrays and objects nested deeper than this in a body get 400 (at most 256)."""
    max_connections: int = 1024
    """Connections served at once; one more is answered 503 and closed."""
    max_connections_per_address: int = 128
    """Connections served at once per client address (per /64 for IPv6); one more gets 503."""
    head_timeout_s: float = 5.0
    """The request line and headers must arrive within this, counted from the connection's
    opening (first request) or from the request's first byte (later ones); else 408, closed."""
    body_timeout_s: float = 10.0
    """The whole body must arrive within this after the headers; else 408 and closed."""
    send_timeout_s: float = 10.0
    """A client that has not taken the whole response by then is disconnected."""
    keep_alive_timeout_s: float = 30.0
    """An open connection with no request in progress is closed after this."""
    also_host: str = ""
    """A second address the HTTP API listens on (``raftchat dev`` puts node 1 on 127.0.0.1
    too, so that ``curl http://127.0.0.1:5001/health`` answers)."""
    tls: bool = False
    """HTTPS instead of HTTP, with ``tls.cert_file`` (which must then be set)."""


@dataclass
class AuthSection:
    token_auth: bool = True
    """Check CONNECT tokens against ``/user/token``. Off: any token is accepted (development)."""
    api_token: str = ""
    """When set, every HTTP route but the exempt ones (``node/http/auth.py``) and every public
    gRPC call needs it (header ``token:`` or ``Authorization: Bearer``)."""
    api_token_previous: str = ""
    """Accepted as well as ``api_token`` while clients move to a new one (rotation)."""
    admin_token: str = ""
    """What the ``/cluster/*`` routes need (a different secret from ``api_token``). Unset: no
    route changes the cluster, and a multi-node cluster answers no ``/cluster/*`` route."""
    admin_token_previous: str = ""
    """Accepted as well as ``admin_token`` during a rotation."""
    api_open: bool = False
    """Serve the API without ``api_token`` on an address that is not loopback (WuKongIM's
    open mode); refused otherwise. Logged as a warning at start."""

    def problems(self, hosts: list[str]) -> list[str]:
        out = []
        for key in ("api_token", "api_token_previous", "admin_token", "admin_token_previous"):
            value = getattr(self, key)
            if value and not _TOKEN_CHARS.fullmatch(value):
                out.append(
                    f"auth.{key} must be printable ASCII without spaces (it travels in a header)"
                )
        for key in ("api_token", "admin_token"):
            if getattr(self, f"{key}_previous") and not getattr(self, key):
                out.append(f"auth.{key}_previous is set but auth.{key} is not")
        api = {self.api_token, self.api_token_previous} - {""}
        admin = {self.admin_token, self.admin_token_previous} - {""}
        if api & admin:
            out.append("auth.admin_token must differ from auth.api_token")
        if self.api_open and self.api_token:
            out.append("auth.api_open = true contradicts auth.api_token: set one of them")
        exposed = [h for h in hosts if not is_loopback(h)]
        if exposed and not self.api_token and not self.api_open:
            out.append(
                f"the HTTP and gRPC APIs would listen on {exposed[0]} without a credential: "
                "set auth.api_token (or auth.api_open = true to serve them open, knowingly)"
            )
        return out


@dataclass
class ConsoleSection:
    """The operators' web console (``docs/console.md``): served by every node on its own port,
    behind ``auth.admin_token``."""

    enabled: bool = True
    """Serve the console. Without ``auth.admin_token`` it is not served whatever this says
    (nobody could log in), and the node logs why."""
    port: int = 5300
    """WuKongIM's manager port; on ``node.host``, HTTPS with ``http.tls``."""


@dataclass
class GrpcSection:
    """The public gRPC API (``raftchat.v1``, ``docs/grpc.md``), on a port of its own: the peer
    port (``cluster.grpc_port``) serves only the cluster's nodes."""

    port: int = 5002


@dataclass
class MessagesSection:
    commit_window_ms: float = 1.0
    """How long the send pipeline gathers SENDs into one batch before it commits."""
    max_batch: int = 512
    max_in_flight_batches: int = 4
    """Batches of one slot group in Raft at once; while they are, new SENDs gather into the
    next batch, so batches grow with load."""
    max_payload_bytes: int = 12 * 1024
    """The largest message payload accepted (the source documents' 12 KB)."""
    group_rate_limit: float = 40.0
    """Sends per second one non-person channel accepts (0 = no limit)."""
    person_rate_limit: float = 20.0
    """Person-channel sends per second one sender may make through one node, bursts up to one
    second's worth (0 = no limit; system accounts are never limited)."""
    revoke_window_s: int = 120
    """How long after sending a sender may revoke a message (an admin may at any time)."""
    retention_days: float = 0.0
    """Messages older than this are deleted (0 = kept until deleted explicitly)."""
    person_whitelist: bool = False
    """Person channels accept only senders on the receiver's allow list (or allow_stranger)."""
    payload_conventions: bool = True
    """Check JSON payloads of the documented types (1-4, 8, 99, > 1000) and give system types
    their recommended header flags (docs/messaging.md); off: payloads pass untouched."""
    stream_snapshot_bytes: int = 64 * 1024
    """Text of a stream lane kept folded for history (``event_meta``); more is cut off."""


@dataclass
class WebhookSection:
    url: str = ""
    """Where events are POSTed (``<url>?event=<name>``); empty = no webhooks."""
    events: str = "msg.notify,msg.offline,user.onlinestatus"
    queue_size: int = 10_000
    """Items (messages, status lines) waiting per event kind; when full the oldest is dropped."""
    batch_size: int = 100
    """Most messages (msg.notify) or status lines (user.onlinestatus) in one POST."""
    max_attempts: int = 5
    """POSTs of one event before it is dropped."""
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    """After the n-th consecutive failure the sender waits ``min(cap, base * 2**(n-1))``, halved
    at random by up to a half (jitter), before its next request, whatever event that carries."""
    timeout_s: float = 5.0
    """A POST without a complete answer by then counts as failed."""

    def problems(self) -> list[str]:
        out = []
        if self.url and not self.url.startswith(("http://", "https://")):
            out.append("webhook.url must start with http:// or https://")
        known = {"msg.notify", "msg.offline", "user.onlinestatus"}
        for name in (n.strip() for n in self.events.split(",")):
            if name and name not in known:
                out.append(f"webhook.events: unknown event {name!r} (known: {sorted(known)})")
        for key in ("queue_size", "batch_size", "max_attempts"):
            if getattr(self, key) < 1:
                out.append(f"webhook.{key} must be at least 1")
        for key in ("backoff_base_s", "backoff_cap_s", "timeout_s"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                out.append(f"webhook.{key} must be a positive number of seconds")
        if self.backoff_cap_s < self.backoff_base_s:
            out.append("webhook.backoff_cap_s must be at least webhook.backoff_base_s")
        return out


@dataclass
class ClusterSection:
    nodes: str = ""
    """The initial members, ``"1@10.0.0.1,2@10.0.0.2,3@10.0.0.3"``; empty: this node alone."""
    join: str = ""
    """Address of a member to join through (a new node of a running cluster); ``cluster.nodes``
    is then not needed. Its placement comes from the cluster."""
    password: str = ""
    """Shared secret of the Raft ports (the key of their AES-256-GCM frames) and the peer gRPC
    service (a MAC per call). Required when the cluster has more than one node. User tokens
    are stored as hashes under a key derived from it (``node/usertokens.py``)."""
    password_accepted: str = ""
    """A second password this node accepts (peer calls, Raft frames, user-token hashes, its data
    directory's identity) though it signs, seals and hashes with ``password`` only: for
    changing the password on a running cluster (three rolling restarts, ``docs/security.md``).
    A user token hashed under it is hashed again under ``password`` at its next login. Empty
    outside such a change."""
    groups: int = 3
    """Slot groups the 256 hash slots are spread over, fixed when the cluster is created. Every
    group costs each of its replicas heartbeats while idle; one group per node leads one group
    on every node of a three-node cluster (ADR 024)."""
    replicas: int = 3
    """Replicas per slot group (or every node, when there are fewer)."""
    raft_port: int = 12000
    """Slot group g listens on ``raft_port + g`` on the node's address."""
    grpc_port: int = 11110
    forward_timeout_s: float = 5.0
    """How long a node retries a request whose group leader moves or is unknown."""
    proposal_timeout_s: float = 3.0
    heartbeat_s: float = 0.1
    """A leader's idle AppendEntries interval: what an idle node spends its CPU on (ADR 024)."""
    election_min_s: float = 0.5
    election_max_s: float = 1.0


@dataclass
class LogSection:
    level: str = "info"
    format: str = "json"
    """``json`` (one object per line) or ``text``."""


@dataclass
class TlsSection:
    """This node's certificate for its TLS listeners (docs/security.md). Without ``cert_file``
    nothing is TLS; the files are read and checked at start-up (``node/tls.py``)."""

    cert_file: str = ""
    """PEM: the node's certificate, then any intermediates. Set: WSS on ``gateway.wss_port``."""
    key_file: str = ""
    """PEM: the certificate's private key, unencrypted."""
    ca_file: str = ""
    """PEM: the CA that issues the cluster's node certificates. Set: peer gRPC is mutual TLS,
    each node presenting its certificate and requiring one from this CA."""


@dataclass
class TestingSection:
    """Switches for the test suites only; never set them in production."""

    sabotage: str = ""
    """A deliberate server bug (``node/sabotage.py``): ``ack-without-commit`` or
    ``skip-dedupe``. Refused unless the environment has ``RAFTCHAT_ALLOW_SABOTAGE=1``."""
