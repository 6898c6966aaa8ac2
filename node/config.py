"""Node configuration: a TOML file, then ``RAFTCHAT_*`` environment overrides, then validation.

Every key has a default, so an empty file is a valid single-node configuration. An unknown key
(in the file or the environment) stops start-up with an error that names it: a typo must never
silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from cluster.placement import NodeAddress, parse_nodes, zone_problem

from .sabotage import ALLOW_ENV as ALLOW_SABOTAGE_ENV
from .sabotage import MODES as SABOTAGE_MODES
from .safejson import ABSOLUTE_MAX_DEPTH

ENV_PREFIX = "RAFTCHAT_"
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
_LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


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


@dataclass
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    gateway: GatewaySection = field(default_factory=GatewaySection)
    devices: DevicesSection = field(default_factory=DevicesSection)
    http: HttpSection = field(default_factory=HttpSection)
    auth: AuthSection = field(default_factory=AuthSection)
    grpc: GrpcSection = field(default_factory=GrpcSection)
    console: ConsoleSection = field(default_factory=ConsoleSection)
    messages: MessagesSection = field(default_factory=MessagesSection)
    webhook: WebhookSection = field(default_factory=WebhookSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)
    log: LogSection = field(default_factory=LogSection)
    tls: TlsSection = field(default_factory=TlsSection)
    testing: TestingSection = field(default_factory=TestingSection)

    def validate(self) -> None:
        if not 1 <= self.node.id <= 1023:
            raise ConfigError(f"node.id must be in 1..1023, got {self.node.id}")
        zone = zone_problem(self.node.zone)
        if zone is not None:
            raise ConfigError(f"node.zone: {zone} (or empty: no zone)")
        ports = (
            "gateway.tcp_port",
            "gateway.ws_port",
            "gateway.wss_port",
            "http.port",
            "grpc.port",
            "console.port",
        )
        for key in ports:
            sect, name = key.split(".")
            port = getattr(getattr(self, sect), name)
            if not 0 <= port < 65536:
                raise ConfigError(f"{key} must be a TCP port, got {port}")
        if self.gateway.max_connections < 0:
            raise ConfigError("gateway.max_connections must be >= 0 (0: from the open-file limit)")
        for name in ("app_limit", "web_limit", "pc_limit"):
            if getattr(self.devices, name) < 1:
                raise ConfigError(f"devices.{name} must be at least 1")
        for problem in self.webhook.problems():
            raise ConfigError(problem)
        if self.log.format not in ("json", "text"):
            raise ConfigError(f"log.format must be 'json' or 'text', got {self.log.format!r}")
        if self.log.level.lower() not in _LOG_LEVELS:
            raise ConfigError(f"log.level must be one of {', '.join(_LOG_LEVELS)}")
        # "not x > 0" rather than "x <= 0": NaN fails every comparison and must be refused too.
        for key in (
            "node.shutdown_timeout_s",
            "gateway.auth_timeout_s",
            "gateway.idle_timeout_s",
            "gateway.kick_close_delay_s",
        ):
            sect, name = key.split(".")
            value = getattr(getattr(self, sect), name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{key} must be a positive number of seconds, got {value}")
        window = self.messages.commit_window_ms
        if not (math.isfinite(window) and window >= 0):
            raise ConfigError(f"messages.commit_window_ms must be >= 0, got {window}")
        if self.messages.max_payload_bytes < 1:
            raise ConfigError("messages.max_payload_bytes must be at least 1")
        if self.messages.stream_snapshot_bytes < 1:
            raise ConfigError("messages.stream_snapshot_bytes must be at least 1")
        for key in ("group_rate_limit", "person_rate_limit"):
            rate = getattr(self.messages, key)
            if not (math.isfinite(rate) and rate >= 0):
                raise ConfigError(f"messages.{key} must be >= 0, got {rate}")
        if self.messages.max_batch < 1:
            raise ConfigError("messages.max_batch must be at least 1")
        if self.messages.max_in_flight_batches < 1:
            raise ConfigError("messages.max_in_flight_batches must be at least 1")
        self._validate_http()
        self._validate_tls()
        self._validate_cluster()
        for problem in self.auth.problems(self.api_hosts()):
            raise ConfigError(problem)
        sabotage = self.testing.sabotage
        if sabotage and sabotage not in SABOTAGE_MODES:
            raise ConfigError(
                f"testing.sabotage must be empty or one of {', '.join(SABOTAGE_MODES)}, "
                f"got {sabotage!r}"
            )

    def _validate_http(self) -> None:
        h = self.http
        if h.max_body_bytes < 1024:
            raise ConfigError("http.max_body_bytes must be at least 1024")
        if h.max_head_bytes < 1024:
            raise ConfigError("http.max_head_bytes must be at least 1024")
        if not 1 <= h.max_json_depth <= ABSOLUTE_MAX_DEPTH:
            raise ConfigError(f"http.max_json_depth must be in 1..{ABSOLUTE_MAX_DEPTH}")
        for key in ("max_connections", "max_connections_per_address"):
            if getattr(h, key) < 1:
                raise ConfigError(f"http.{key} must be at least 1")
        for key in ("head_timeout_s", "body_timeout_s", "send_timeout_s", "keep_alive_timeout_s"):
            value = getattr(h, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"http.{key} must be a positive number of seconds, got {value}")

    def _validate_tls(self) -> None:
        t = self.tls
        if bool(t.cert_file) != bool(t.key_file):
            raise ConfigError("tls.cert_file and tls.key_file go together: set both or neither")
        if t.ca_file and not t.cert_file:
            raise ConfigError(
                "tls.ca_file makes peer gRPC mutual TLS, which needs this node's own "
                "certificate: set tls.cert_file and tls.key_file too"
            )
        if self.http.tls and not t.cert_file:
            raise ConfigError("http.tls = true needs tls.cert_file and tls.key_file")

    def api_hosts(self) -> list[str]:
        """The addresses the HTTP API and the public gRPC API listen on."""
        also = self.http.also_host
        return [self.node.host] + ([also] if also and also != self.node.host else [])

    def cluster_nodes(self) -> list[NodeAddress]:
        """The initial members; this node alone when ``cluster.nodes`` is empty."""
        if not self.cluster.nodes.strip() or self.cluster.join:
            return [NodeAddress(self.node.id, self.node.host, self.node.zone)]
        return parse_nodes(self.cluster.nodes)

    def _validate_cluster(self) -> None:
        c = self.cluster
        try:
            nodes = self.cluster_nodes()
        except ValueError as e:
            raise ConfigError(f"cluster.nodes: {e}") from None
        mine = [n for n in nodes if n.node_id == self.node.id]
        if not mine:
            raise ConfigError(f"cluster.nodes does not list this node (node.id {self.node.id})")
        if mine[0].host != self.node.host:
            raise ConfigError(
                f"cluster.nodes gives node {self.node.id} the address {mine[0].host}, "
                f"but node.host is {self.node.host}"
            )
        # A zone in cluster.nodes is what every initial member places the first map by; this
        # node's own must agree. (Without one there, node.zone reaches the map after start.)
        if mine[0].zone and mine[0].zone != self.node.zone:
            raise ConfigError(
                f"cluster.nodes gives node {self.node.id} the zone {mine[0].zone}, "
                f"but node.zone is {self.node.zone or 'empty'}"
            )
        if (len(nodes) > 1 or c.join) and not c.password:
            raise ConfigError(
                "cluster.password is required for a multi-node cluster: without it anyone who "
                "reaches a Raft port can make the node unpickle arbitrary data"
            )
        if c.password_accepted and not c.password:
            raise ConfigError("cluster.password_accepted needs cluster.password")
        if not 1 <= c.groups <= 256:
            raise ConfigError("cluster.groups must be in 1..256 (there are 256 hash slots)")
        if c.replicas < 1:
            raise ConfigError("cluster.replicas must be at least 1")
        if not (c.raft_port > 0 and c.raft_port + c.groups < 65536):
            raise ConfigError("cluster.raft_port + cluster.groups must be a TCP port")
        if not (c.election_min_s > 3 * c.heartbeat_s > 0 and c.election_max_s > c.election_min_s):
            raise ConfigError(
                "cluster timing needs election_max_s > election_min_s > 3 * heartbeat_s > 0"
            )
        for key in ("forward_timeout_s", "proposal_timeout_s"):
            value = getattr(c, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"cluster.{key} must be a positive number of seconds")


def _coerce(key: str, value: Any, typ: type) -> Any:
    """Convert a TOML or environment value to the field's type, refusing lossy conversions."""
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        if typ is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{key}: expected a boolean, got {value!r}")
        try:
            return typ(text)
        except ValueError:
            raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected a boolean, got {value!r}")
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, typ):
        raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")
    return value


def _section_types(section: object) -> dict[str, type]:
    hints = get_type_hints(type(section))
    return {f.name: hints[f.name] for f in dataclasses.fields(section)}  # type: ignore[arg-type]


def _apply(cfg: Config, data: Mapping[str, Any], origin: str) -> None:
    sections = {f.name for f in dataclasses.fields(cfg)}
    for sect_name, values in data.items():
        if sect_name not in sections:
            raise ConfigError(f"unknown config section {sect_name!r} in {origin}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"config section {sect_name!r} in {origin} must be a table")
        section = getattr(cfg, sect_name)
        types = _section_types(section)
        for key, value in values.items():
            full = f"{sect_name}.{key}"
            if key not in types:
                raise ConfigError(f"unknown config key {full!r} in {origin}")
            setattr(section, key, _coerce(full, value, types[key]))


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``RAFTCHAT_GATEWAY_TCP_PORT=5101`` -> ``{"gateway": {"tcp_port": "5101"}}``."""
    sections = {f.name for f in dataclasses.fields(Config)}
    out: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ALLOW_SABOTAGE_ENV:
            continue  # the sabotage guard is not a config key: a file cannot set it
        rest = name[len(ENV_PREFIX) :].lower()
        sect, _, key = rest.partition("_")
        if sect not in sections or not key:
            raise ConfigError(f"unknown config variable {name}")
        out.setdefault(sect, {})[key] = value
    return out


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    cfg = Config()
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        _apply(cfg, data, str(path))
    env = os.environ if env is None else env
    _apply(cfg, _env_overrides(env), "environment")
    cfg.validate()
    if cfg.testing.sabotage and env.get(ALLOW_SABOTAGE_ENV) != "1":
        raise ConfigError(
            f"testing.sabotage = {cfg.testing.sabotage!r} makes this node lose or duplicate "
            f"messages on purpose (tests only); refusing to start without {ALLOW_SABOTAGE_ENV}=1"
        )
    return cfg
