"""Node configuration: defaults, the TOML file, RAFTCHAT_* overrides, strict keys and types.

Every test passes ``env`` explicitly so that the process environment cannot leak in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import Config, ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file() -> None:
    cfg = load_config(None, env={})
    assert cfg == Config()
    assert cfg.node.id == 1
    assert cfg.gateway.tcp_port == 5100
    assert cfg.gateway.ws_port == 5200
    assert cfg.gateway.encryption is True
    assert cfg.devices.app_limit == 1
    assert cfg.devices.web_limit == 10
    assert cfg.devices.pc_limit == 1
    assert cfg.http.port == 5001
    assert cfg.messages.commit_window_ms == 1.0
    assert cfg.log.format == "json"


def test_empty_file_is_the_default_config(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), env={}) == Config()


def test_variables_without_the_prefix_are_ignored() -> None:
    cfg = load_config(None, env={"GATEWAY_TCP_PORT": "1", "PATH": "/bin", "RAFTCHATX": "1"})
    assert cfg == Config()


def test_file_sets_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[node]
id = 7
name = "n7"
data_dir = "/var/lib/raftchat"

[gateway]
tcp_port = 6100
auth_timeout_s = 2          # an integer is accepted for a float
encryption = false

[devices]
web_limit = 3

[messages]
commit_window_ms = 0.5

[log]
format = "text"
""",
    )
    cfg = load_config(path, env={})
    assert cfg.node.id == 7
    assert cfg.node.name == "n7"
    assert cfg.node.data_dir == "/var/lib/raftchat"
    assert cfg.gateway.tcp_port == 6100
    assert cfg.gateway.auth_timeout_s == 2.0
    assert isinstance(cfg.gateway.auth_timeout_s, float)
    assert cfg.gateway.encryption is False
    assert cfg.devices.web_limit == 3
    assert cfg.messages.commit_window_ms == 0.5
    assert cfg.log.format == "text"
    # keys the file does not mention keep their defaults
    assert cfg.gateway.ws_port == 5200
    assert cfg.devices.app_limit == 1


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[gateway]\ntcp_port = 6100\nencryption = true\n[messages]\ncommit_window_ms = 5.0\n",
    )
    cfg = load_config(
        path,
        env={
            "RAFTCHAT_GATEWAY_TCP_PORT": "5101",
            "RAFTCHAT_GATEWAY_ENCRYPTION": "false",
            "RAFTCHAT_MESSAGES_COMMIT_WINDOW_MS": "2",
            "RAFTCHAT_NODE_NAME": "from env",
        },
    )
    assert cfg.gateway.tcp_port == 5101
    assert cfg.gateway.encryption is False
    assert cfg.messages.commit_window_ms == 2.0
    assert isinstance(cfg.messages.commit_window_ms, float)
    assert cfg.node.name == "from env"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[("1", True), ("true", True), ("Yes", True), (" on ", True)],
        *[("0", False), ("FALSE", False), ("no", False), ("off", False)],
    ],
)
def test_environment_booleans(text: str, expected: bool) -> None:
    assert load_config(None, env={"RAFTCHAT_AUTH_TOKEN_AUTH": text}).auth.token_auth is expected


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[gateway]\ntcp_prot = 5100\n")
    with pytest.raises(ConfigError, match=r"gateway\.tcp_prot"):
        load_config(path, env={})


def test_unknown_section_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[gatway]\ntcp_port = 5100\n")
    with pytest.raises(ConfigError, match="gatway"):
        load_config(path, env={})


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "node = 3\n")
    with pytest.raises(ConfigError, match="node"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("RAFTCHAT_GATEWAY_TCP_PROT", "tcp_prot"),  # known section, unknown key
        ("RAFTCHAT_GATWAY_TCP_PORT", "RAFTCHAT_GATWAY_TCP_PORT"),  # unknown section
        ("RAFTCHAT_NODE", "RAFTCHAT_NODE"),  # section without a key
        ("RAFTCHAT_", "RAFTCHAT_"),
    ],
)
def test_unknown_environment_variable(name: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={name: "1"})
    assert named.lower() in str(info.value).lower()


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[gateway]\ntcp_port = "fast"', "gateway.tcp_port"),  # string for int
        ("[gateway]\ntcp_port = 5100.0", "gateway.tcp_port"),  # float for int
        ("[gateway]\ntcp_port = true", "gateway.tcp_port"),  # bool for int
        ('[gateway]\nencryption = "maybe"', "gateway.encryption"),
        ("[gateway]\nencryption = 1", "gateway.encryption"),  # int for bool
        ("[gateway]\nauth_timeout_s = true", "gateway.auth_timeout_s"),  # bool for float
        ('[gateway]\nauth_timeout_s = "soon"', "gateway.auth_timeout_s"),
        ("[node]\nname = 5", "node.name"),  # int for str
        ("[node]\nid = [1]", "node.id"),
    ],
)
def test_wrong_type_in_file(tmp_path: Path, toml: str, key: str) -> None:
    path = write(tmp_path, toml + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("RAFTCHAT_GATEWAY_TCP_PORT", "fast", "gateway.tcp_port"),
        ("RAFTCHAT_GATEWAY_TCP_PORT", "5100.5", "gateway.tcp_port"),
        ("RAFTCHAT_GATEWAY_TCP_PORT", "", "gateway.tcp_port"),
        ("RAFTCHAT_GATEWAY_ENCRYPTION", "maybe", "gateway.encryption"),
        ("RAFTCHAT_GATEWAY_ENCRYPTION", "", "gateway.encryption"),
        ("RAFTCHAT_MESSAGES_COMMIT_WINDOW_MS", "quick", "messages.commit_window_ms"),
    ],
)
def test_wrong_type_in_environment(name: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={name: value})
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"RAFTCHAT_NODE_ID": "0"}, "node.id"),
        ({"RAFTCHAT_NODE_ID": "1024"}, "node.id"),
        ({"RAFTCHAT_NODE_ID": "-1"}, "node.id"),
        ({"RAFTCHAT_LOG_FORMAT": "xml"}, "log.format"),
        ({"RAFTCHAT_DEVICES_APP_LIMIT": "0"}, "devices.app_limit"),
        ({"RAFTCHAT_DEVICES_WEB_LIMIT": "0"}, "devices.web_limit"),
        ({"RAFTCHAT_DEVICES_PC_LIMIT": "-3"}, "devices.pc_limit"),
        ({"RAFTCHAT_GATEWAY_TCP_PORT": "65536"}, "gateway.tcp_port"),
        ({"RAFTCHAT_GATEWAY_WS_PORT": "-1"}, "gateway.ws_port"),
        ({"RAFTCHAT_HTTP_PORT": "70000"}, "http.port"),
        ({"RAFTCHAT_GATEWAY_AUTH_TIMEOUT_S": "0"}, "timeout"),
        ({"RAFTCHAT_GATEWAY_IDLE_TIMEOUT_S": "-1"}, "timeout"),
        ({"RAFTCHAT_CLUSTER_PASSWORD_ACCEPTED": "old"}, "cluster.password_accepted"),
    ],
)
def test_validation(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    assert key in str(info.value)


def test_validation_applies_to_file_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.id"):
        load_config(write(tmp_path, "[node]\nid = 1024\n"), env={})


def test_environment_can_repair_an_invalid_file_value(tmp_path: Path) -> None:
    """Validation runs once, after the overrides: the effective value is what counts."""
    path = write(tmp_path, "[node]\nid = 0\n")
    assert load_config(path, env={"RAFTCHAT_NODE_ID": "5"}).node.id == 5


def test_boundary_values_are_valid() -> None:
    cfg = load_config(None, env={"RAFTCHAT_NODE_ID": "1023", "RAFTCHAT_GATEWAY_TCP_PORT": "65535"})
    assert cfg.node.id == 1023
    assert cfg.gateway.tcp_port == 65535


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_config(missing, env={})


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[node\nid = 1\n"), env={})


def test_load_config_does_not_share_state_between_calls() -> None:
    a = load_config(None, env={"RAFTCHAT_NODE_ID": "9"})
    b = load_config(None, env={})
    assert a.node.id == 9
    assert b.node.id == 1


# --- values that used to pass validation and broke the node later ----------------------------


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error", "INFO"])
def test_known_log_levels(level: str) -> None:
    assert load_config(None, env={"RAFTCHAT_LOG_LEVEL": level}).log.level == level


def test_unknown_log_level_is_a_config_error() -> None:
    """Unchecked, 'loud' reached setup_logging() and died there with ValueError."""
    with pytest.raises(ConfigError, match=r"log\.level"):
        load_config(None, env={"RAFTCHAT_LOG_LEVEL": "loud"})


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_bad_commit_window_is_a_config_error(value: str) -> None:
    """Unchecked, a negative window crashed SendPipeline.run in trio.move_on_after()."""
    with pytest.raises(ConfigError, match=r"messages\.commit_window_ms"):
        load_config(None, env={"RAFTCHAT_MESSAGES_COMMIT_WINDOW_MS": value})


def test_zero_commit_window_is_allowed() -> None:
    cfg = load_config(None, env={"RAFTCHAT_MESSAGES_COMMIT_WINDOW_MS": "0"})
    assert cfg.messages.commit_window_ms == 0.0


@pytest.mark.parametrize(
    "name", ["GATEWAY_AUTH_TIMEOUT_S", "GATEWAY_IDLE_TIMEOUT_S", "GATEWAY_KICK_CLOSE_DELAY_S"]
)
@pytest.mark.parametrize("value", ["nan", "-inf", "-2"])
def test_timeouts_must_not_be_nan_or_negative(name: str, value: str) -> None:
    """NaN used to slip through because ``nan <= 0`` is False."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env={f"RAFTCHAT_{name}": value})
    assert name.lower().replace("_", ".", 1) in str(info.value)


def test_nan_in_the_toml_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[gateway]\nidle_timeout_s = nan\n")
    with pytest.raises(ConfigError, match=r"gateway\.idle_timeout_s"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"RAFTCHAT_MESSAGES_MAX_BATCH": "0"}, "messages.max_batch"),
        ({"RAFTCHAT_HTTP_MAX_BODY_BYTES": "-1"}, "http.max_body_bytes"),
        ({"RAFTCHAT_HTTP_MAX_BODY_BYTES": "10"}, "http.max_body_bytes"),
    ],
)
def test_batch_and_body_limits(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    assert key in str(info.value)


# ---- API credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        # An API on an address others can reach, without a credential.
        ({"RAFTCHAT_NODE_HOST": "10.0.0.5"}, "auth.api_token"),
        ({"RAFTCHAT_NODE_HOST": "0.0.0.0"}, "auth.api_token"),
        ({"RAFTCHAT_NODE_HOST": "db.example"}, "auth.api_token"),
        ({"RAFTCHAT_HTTP_ALSO_HOST": "192.168.1.2"}, "192.168.1.2"),
        # Contradictions and tokens that cannot travel in a header.
        ({"RAFTCHAT_AUTH_API_TOKEN": "same", "RAFTCHAT_AUTH_ADMIN_TOKEN": "same"}, "differ"),
        (
            {"RAFTCHAT_AUTH_API_TOKEN": "a", "RAFTCHAT_AUTH_ADMIN_TOKEN_PREVIOUS": "a"},
            "auth.admin_token_previous",
        ),
        ({"RAFTCHAT_AUTH_API_TOKEN_PREVIOUS": "old"}, "auth.api_token_previous"),
        ({"RAFTCHAT_AUTH_API_TOKEN": "two words"}, "auth.api_token"),
        ({"RAFTCHAT_AUTH_ADMIN_TOKEN": "caf\u00e9"}, "auth.admin_token"),
        ({"RAFTCHAT_AUTH_API_TOKEN": "t", "RAFTCHAT_AUTH_API_OPEN": "true"}, "api_open"),
    ],
)
def test_api_credential_settings_that_are_refused(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    assert named in str(info.value)
    assert "\n" not in str(info.value)  # one line


@pytest.mark.parametrize(
    "env",
    [
        {},  # loopback (127.0.0.1): as easy as ever
        {"RAFTCHAT_NODE_HOST": "127.0.0.12", "RAFTCHAT_HTTP_ALSO_HOST": "127.0.0.1"},
        {"RAFTCHAT_NODE_HOST": "::1"},
        {"RAFTCHAT_NODE_HOST": "localhost"},
        {"RAFTCHAT_NODE_HOST": "10.0.0.5", "RAFTCHAT_AUTH_API_TOKEN": "s3cret"},
        {"RAFTCHAT_NODE_HOST": "10.0.0.5", "RAFTCHAT_AUTH_API_OPEN": "true"},
        {
            "RAFTCHAT_AUTH_API_TOKEN": "new",
            "RAFTCHAT_AUTH_API_TOKEN_PREVIOUS": "old",
            "RAFTCHAT_AUTH_ADMIN_TOKEN": "admin-new",
            "RAFTCHAT_AUTH_ADMIN_TOKEN_PREVIOUS": "admin-old",
        },
    ],
)
def test_api_credential_settings_that_start(env: dict[str, str]) -> None:
    load_config(None, env=env)


def test_the_public_grpc_port_is_its_own() -> None:
    cfg = load_config(None, env={})
    assert cfg.grpc.port == 5002 and cfg.cluster.grpc_port == 11110
    with pytest.raises(ConfigError, match=r"grpc\.port"):
        load_config(None, env={"RAFTCHAT_GRPC_PORT": "65536"})


def test_console_settings() -> None:
    cfg = load_config(None, env={})
    assert (cfg.console.enabled, cfg.console.port) == (True, 5300)
    env = {"RAFTCHAT_CONSOLE_ENABLED": "false", "RAFTCHAT_CONSOLE_PORT": "5301"}
    cfg = load_config(None, env=env)
    assert (cfg.console.enabled, cfg.console.port) == (False, 5301)
    with pytest.raises(ConfigError, match=r"console\.port must be a TCP port"):
        load_config(None, env={"RAFTCHAT_CONSOLE_PORT": "70000"})


def test_the_launchers_slot_group_count_is_the_default() -> None:
    """The launcher, the bench and chaos import nothing of the node: they check and fuzz the Raft
    ports of the default count, which they keep as a number of their own."""
    from launcher.devcluster import SLOT_GROUPS

    assert load_config(None, env={}).cluster.groups == SLOT_GROUPS


def test_node_zone() -> None:
    assert Config().node.zone == ""
    cfg = load_config(None, env={"RAFTCHAT_NODE_ZONE": "machine-1.rack_2"})
    assert cfg.node.zone == "machine-1.rack_2"
    # a lone or joining node's own entry carries its zone
    assert [n.zone for n in cfg.cluster_nodes()] == ["machine-1.rack_2"]
    assert load_config(None, env={"RAFTCHAT_NODE_ZONE": "z" * 64}).node.zone == "z" * 64


@pytest.mark.parametrize(
    "zone",
    ["z" * 65, "a b", "m1,m2", "m1#2", "../etc", "é", "tab\there", "line\nbreak", "x\x00"],
)
def test_node_zone_refuses_what_is_not_a_label(zone: str) -> None:
    with pytest.raises(ConfigError, match=r"^node\.zone: a zone is 1 to 64 of the characters"):
        load_config(None, env={"RAFTCHAT_NODE_ZONE": zone})


def test_zones_in_cluster_nodes() -> None:
    base = {
        "RAFTCHAT_CLUSTER_NODES": "1@127.0.0.11#m1,2@127.0.0.12#m1,3@127.0.0.13",
        "RAFTCHAT_CLUSTER_PASSWORD": "secret",
        "RAFTCHAT_NODE_HOST": "127.0.0.11",
    }
    cfg = load_config(None, env={**base, "RAFTCHAT_NODE_ZONE": "m1"})
    assert [(n.node_id, n.zone) for n in cfg.cluster_nodes()] == [(1, "m1"), (2, "m1"), (3, "")]
    # this node's zone in cluster.nodes must be node.zone
    with pytest.raises(ConfigError, match=r"gives node 1 the zone m1, but node\.zone is m2$"):
        load_config(None, env={**base, "RAFTCHAT_NODE_ZONE": "m2"})
    with pytest.raises(ConfigError, match=r"gives node 1 the zone m1, but node\.zone is empty$"):
        load_config(None, env=base)
    # without a zone there, node.zone may name one (it reaches the map after start)
    three = {**base, "RAFTCHAT_NODE_ID": "3", "RAFTCHAT_NODE_HOST": "127.0.0.13"}
    assert load_config(None, env={**three, "RAFTCHAT_NODE_ZONE": "m2"}).node.zone == "m2"
    with pytest.raises(ConfigError, match=r"^cluster\.nodes: node 2: a zone is 1 to 64"):
        load_config(None, env={**base, "RAFTCHAT_CLUSTER_NODES": "1@127.0.0.11,2@h#a/b"})
    with pytest.raises(ConfigError, match=r"^cluster\.nodes: '2@h#' has a '#' but no zone"):
        load_config(None, env={**base, "RAFTCHAT_CLUSTER_NODES": "1@127.0.0.11,2@h#"})
