"""What ``raftchat dev`` prints: commands that reach the cluster it started, as printed; and
its ``--zones``."""

from __future__ import annotations

import pytest

from launcher.devcluster import cluster_env
from node.dev import dev_zones, usage

TOKENS = {"RAFTCHAT_AUTH_API_TOKEN": "api-t", "RAFTCHAT_AUTH_ADMIN_TOKEN": "admin-t"}
STANDARD = {"http": "http://127.0.0.11:5001", "tcp": "127.0.0.11:5100"}


def lines(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if word in line]


def test_the_standard_cluster_in_data_needs_no_address_or_token() -> None:
    text = usage("./data", TOKENS, STANDARD)
    assert lines(text, "curl")[0].endswith(
        """http://127.0.0.1:5001/user/token -d '{"uid":"alice","token":"secret","device_flag":1}'"""
    )
    assert lines(text, "raftchat cluster")[0].strip() == ".venv/bin/raftchat cluster status"
    assert lines(text, "raftchat chat")[0].strip() == (
        ".venv/bin/raftchat chat --uid alice --to bob"
    )


def test_other_ports_from_a_base_config_are_in_every_command() -> None:
    node1 = {"http": "http://127.0.0.11:7501", "tcp": "127.0.0.11:7600"}
    text = usage("./data", TOKENS, node1)
    assert all("127.0.0.1:7501/" in line for line in lines(text, "curl"))
    (cluster,) = lines(text, "raftchat cluster")
    assert "--api http://127.0.0.11:7501" in cluster
    # With an address given, the commands do not read ./data's token files: the token comes
    # from the environment.
    assert "RAFTCHAT_AUTH_ADMIN_TOKEN=$(cat ./data/admin.token)" in cluster
    (chat,) = lines(text, "raftchat chat")
    assert "--node 127.0.0.11:7600 --http http://127.0.0.11:7501" in chat
    assert "RAFTCHAT_AUTH_API_TOKEN=$(cat ./data/api.token)" in chat


def test_a_single_node_on_127_0_0_1_is_named_too() -> None:
    node1 = {"http": "http://127.0.0.1:5001", "tcp": "127.0.0.1:5100"}
    text = usage("./data", TOKENS, node1)
    assert "--api http://127.0.0.1:5001" in lines(text, "raftchat cluster")[0]
    assert "--node 127.0.0.1:5100 --http http://127.0.0.1:5001" in lines(text, "raftchat chat")[0]


def test_another_data_directory_passes_its_tokens() -> None:
    text = usage("/tmp/d", TOKENS, STANDARD)
    assert "RAFTCHAT_AUTH_ADMIN_TOKEN=$(cat /tmp/d/admin.token)" in lines(text, "cluster status")[0]
    assert "--api" not in text


def test_zones_of_a_dev_cluster() -> None:
    assert dev_zones("", 3) == {} and dev_zones("  ", 1) == {}
    assert dev_zones("m1, m1,m2", 3) == {1: "m1", 2: "m1", 3: "m2"}
    hosts = {1: "127.0.0.11", 2: "127.0.0.12", 3: "127.0.0.13"}
    envs = cluster_env(hosts, "pw", None, {1: "m1", 2: "m1", 3: "m2"})
    members = "1@127.0.0.11#m1,2@127.0.0.12#m1,3@127.0.0.13#m2"
    assert {n: e["RAFTCHAT_CLUSTER_NODES"] for n, e in envs.items()} == dict.fromkeys(
        hosts, members
    )
    assert {n: e["RAFTCHAT_NODE_ZONE"] for n, e in envs.items()} == {1: "m1", 2: "m1", 3: "m2"}
    plain = cluster_env(hosts, "pw")
    assert plain[1]["RAFTCHAT_CLUSTER_NODES"] == "1@127.0.0.11,2@127.0.0.12,3@127.0.0.13"
    assert "RAFTCHAT_NODE_ZONE" not in plain[1]


@pytest.mark.parametrize(
    ("text", "nodes", "why"),
    [
        ("m1,m2", 3, r"names 2 zone\(s\) for 3 node\(s\)"),
        ("m1,,m2", 3, "an empty zone"),
        ("m1,m 2", 2, "A-Z a-z 0-9"),
    ],
)
def test_zones_a_dev_cluster_refuses(text: str, nodes: int, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        dev_zones(text, nodes)
