"""Node configuration: a TOML file, then ``RAFTCHAT_*`` environment overrides, then validation.

Every key has a default, so an empty file is a valid single-node configuration. An unknown key
(in the file or the environment) stops start-up with an error that names it: a typo must never
silently fall back to a default.

The sections, with their keys and defaults, are in ``node/config_sections.py``; this module
loads them and checks the whole.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from cluster.placement import NodeAddress, parse_nodes, zone_problem

from .config_sections import (
    AuthSection,
    ClusterSection,
    ConsoleSection,
    DevicesSection,
    GatewaySection,
    GrpcSection,
    HttpSection,
    LogSection,
    MessagesSection,
    NodeSection,
    TestingSection,
    TlsSection,
    WebhookSection,
)
from .sabotage import ALLOW_ENV as ALLOW_SABOTAGE_ENV
from .sabotage import MODES as SABOTAGE_MODES
from .safejson import ABSOLUTE_MAX_DEPTH

ENV_PREFIX = "RAFTCHAT_"
_LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


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
