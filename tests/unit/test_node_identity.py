"""Data directory identity: which starts are refused, what the file holds, how it changes.

The rules run on real directories in ``tmp_path``; the stored cluster map of an adopted
directory is handed in (reading it needs RocksDB, which the integration tests cover).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from node.config import Config, load_config
from node.identity import (
    IDENTITY_FILE,
    DataDir,
    Identity,
    genesis_cluster_id,
)
from node.startup import EXIT_REFUSED, EXIT_UNAVAILABLE, StartupError

MEMBERS = "1@127.0.0.11,2@127.0.0.12,3@127.0.0.13"


def config(data: Path, node_id: int = 1, **env: str) -> Config:
    hosts = {1: "127.0.0.11", 2: "127.0.0.12", 3: "127.0.0.13", 4: "127.0.0.14"}
    base = {
        "RAFTCHAT_NODE_ID": str(node_id),
        "RAFTCHAT_NODE_HOST": hosts[node_id],
        "RAFTCHAT_NODE_DATA_DIR": str(data),
    }
    return load_config(None, env={**base, **env})


def member(data: Path, node_id: int = 1, password: str = "secret", nodes: str = MEMBERS) -> Config:
    return config(data, node_id, RAFTCHAT_CLUSTER_NODES=nodes, RAFTCHAT_CLUSTER_PASSWORD=password)


def joiner(data: Path, node_id: int = 4, password: str = "secret") -> Config:
    return config(
        data, node_id, RAFTCHAT_CLUSTER_JOIN="127.0.0.11", RAFTCHAT_CLUSTER_PASSWORD=password
    )


def open_dir(cfg: Config, stored: dict[int, str] | None = None) -> DataDir:
    return DataDir.open(cfg, lambda _: stored)


def reopen(cfg: Config, stored: dict[int, str] | None = None) -> DataDir:
    """Open, close (as a stopped process releases its lock), and return the opened dir."""
    opened = open_dir(cfg, stored)
    opened._lock.close()
    return opened


def refusal(cfg: Config, stored: dict[int, str] | None = None) -> str:
    with pytest.raises(StartupError) as caught:
        open_dir(cfg, stored)
    assert caught.value.code == EXIT_REFUSED
    message = str(caught.value)
    assert "\n" not in message and str(cfg.node.data_path()) in message
    return message


def on_disk(data: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((data / IDENTITY_FILE).read_text())
    return loaded


def test_the_initial_members_agree_on_the_cluster_id_without_talking(tmp_path: Path) -> None:
    ids = {reopen(member(tmp_path / f"n{i}", i)).identity.cluster_id for i in (1, 2, 3)}
    assert len(ids) == 1
    # Another password or other members: another cluster.
    assert genesis_cluster_id(member(tmp_path / "x", password="other")) not in ids
    other_members = "1@127.0.0.11,2@127.0.0.22,3@127.0.0.23"
    assert genesis_cluster_id(member(tmp_path / "x", nodes=other_members)) not in ids


def test_the_file_holds_a_fingerprint_never_the_password(tmp_path: Path) -> None:
    cfg = member(tmp_path, password="correct horse battery staple")
    reopen(cfg)
    data = on_disk(tmp_path)
    assert data["format"] == 1 and data["node_id"] == 1 and data["multi_node"] is True
    assert "correct horse" not in (tmp_path / IDENTITY_FILE).read_text()
    assert isinstance(data["password_check"], str) and len(data["password_check"]) == 32
    assert stat.S_IMODE((tmp_path / IDENTITY_FILE).stat().st_mode) == 0o600
    assert not (tmp_path / (IDENTITY_FILE + ".tmp")).exists()


def test_a_member_restarts_on_its_own_directory(tmp_path: Path) -> None:
    first = reopen(member(tmp_path)).identity
    assert reopen(member(tmp_path)).identity == first


def test_a_lone_node_is_refused_on_a_member_directory(tmp_path: Path) -> None:
    reopen(member(tmp_path))
    message = refusal(config(tmp_path))
    assert "belongs to node 1 of a multi-node cluster" in message
    assert "refusing to start it as a lone node" in message


def test_another_node_id_is_refused(tmp_path: Path) -> None:
    reopen(member(tmp_path, 1))
    assert "refusing to start it as node 2" in refusal(member(tmp_path, 2))


def test_another_clusters_member_is_refused(tmp_path: Path) -> None:
    reopen(member(tmp_path))
    assert "describe another cluster" in refusal(member(tmp_path, password="other"))
    other_members = "1@127.0.0.11,2@127.0.0.22,3@127.0.0.23"
    assert "describe another cluster" in refusal(member(tmp_path, nodes=other_members))


def test_a_lone_node_restarts_and_may_change_its_password(tmp_path: Path) -> None:
    first = reopen(config(tmp_path)).identity
    assert first.multi_node is False and first.password_check is None
    again = reopen(config(tmp_path, RAFTCHAT_CLUSTER_PASSWORD="now-one")).identity
    assert again.cluster_id == first.cluster_id and again.password_check is not None
    # A lone directory is not an initial member's: its map would silently win.
    assert "describe another cluster" in refusal(member(tmp_path))


def test_a_joiner_records_the_cluster_it_was_admitted_to(tmp_path: Path) -> None:
    opened = open_dir(joiner(tmp_path))
    assert opened.identity == Identity(4, None, False, None)  # admission pending
    opened.joined("c0ffee0123456789", "secret", 3)
    opened._lock.close()
    assert on_disk(tmp_path)["cluster_id"] == "c0ffee0123456789"
    assert reopen(joiner(tmp_path)).identity.multi_node is True
    assert "whose password is not cluster.password" in refusal(joiner(tmp_path, password="x"))
    assert "refusing to start it as a lone node" in refusal(config(tmp_path, 4))


def test_a_pending_join_may_be_asked_again(tmp_path: Path) -> None:
    reopen(joiner(tmp_path))
    assert reopen(joiner(tmp_path)).identity.cluster_id is None


def test_a_lone_node_that_others_joined_is_refused_as_lone_afterwards(tmp_path: Path) -> None:
    cfg = config(tmp_path, RAFTCHAT_CLUSTER_PASSWORD="secret")
    opened = open_dir(cfg)
    cluster_id = opened.identity.cluster_id
    opened.grew()
    opened._lock.close()
    assert "refusing to start it as a lone node" in refusal(cfg)
    # Restarted with cluster.join (any other member), as the refusal's documentation says.
    again = reopen(config(tmp_path, RAFTCHAT_CLUSTER_JOIN="127.0.0.12", **_pw("secret")))
    assert again.identity.cluster_id == cluster_id


def test_join_is_refused_on_a_lone_clusters_directory(tmp_path: Path) -> None:
    reopen(config(tmp_path, 4))
    assert "cluster.join applies to a new data directory only" in refusal(joiner(tmp_path))


def _pw(password: str) -> dict[str, str]:
    return {"RAFTCHAT_CLUSTER_PASSWORD": password}


def _old_directory(data: Path) -> None:
    """Data as a raftchat from before identity files left it."""
    (data / "controller" / "db").mkdir(parents=True)


def test_an_old_directory_of_a_cluster_is_adopted_or_refused_by_its_map(tmp_path: Path) -> None:
    _old_directory(tmp_path)
    three = {1: "127.0.0.11", 2: "127.0.0.12", 3: "127.0.0.13"}
    message = refusal(config(tmp_path), three)
    assert "holds node 1 of a 3-node cluster" in message and "as a lone node" in message
    assert not (tmp_path / IDENTITY_FILE).exists()  # a refusal writes nothing
    assert "lists nodes 1, 2, 3, not node 4" in refusal(joiner(tmp_path, 4), three)
    adopted = reopen(member(tmp_path), three).identity
    assert adopted == reopen(member(tmp_path / "fresh")).identity  # as if it had had one


def test_an_old_lone_directory_is_adopted_as_lone(tmp_path: Path) -> None:
    _old_directory(tmp_path)
    adopted = reopen(config(tmp_path), {1: "127.0.0.11"}).identity
    assert adopted.multi_node is False and adopted.cluster_id is not None
    # Without a stored map (one that never changed) there is nothing to check against.
    other = tmp_path / "unchanged"
    _old_directory(other)
    assert reopen(config(other), None).identity.multi_node is False


def test_a_damaged_or_newer_identity_file_is_refused(tmp_path: Path) -> None:
    reopen(member(tmp_path))
    (tmp_path / IDENTITY_FILE).write_text("{not json")
    assert "is damaged" in refusal(member(tmp_path))
    (tmp_path / IDENTITY_FILE).write_text(json.dumps({"format": 2, "node_id": 1}))
    assert "format 2 is newer" in refusal(member(tmp_path))


def test_a_second_process_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    running = open_dir(member(tmp_path))
    try:
        with pytest.raises(StartupError) as caught:
            open_dir(member(tmp_path))
        assert caught.value.code == EXIT_UNAVAILABLE
        assert "in use by another raftchat node process" in str(caught.value)
    finally:
        running._lock.close()


def test_a_directory_that_cannot_be_created_names_its_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    for data, reason in ((tmp_path / "file", "not a directory"), (tmp_path / "file" / "n1", "")):
        with pytest.raises(StartupError) as caught:
            open_dir(member(data))
        assert caught.value.code == EXIT_UNAVAILABLE
        assert str(caught.value).startswith(f"data directory {data} is not usable: {reason}")


def test_the_default_data_directory_is_not_where_make_run_keeps_its_nodes() -> None:
    # `make run` = `raftchat dev --data ./data`: node i in ./data/node<i>.
    for node_id in (1, 2, 3):
        path = load_config(None, env={"RAFTCHAT_NODE_ID": str(node_id)}).node.data_path()
        assert path == Path(f"raftchat-data/node{node_id}")
        assert path.parts[0] != "data"


def changing(cfg: Config, accepted: str) -> Config:
    cfg.cluster.password_accepted = accepted
    return cfg


def test_an_initial_member_keeps_its_directory_through_a_password_change(tmp_path: Path) -> None:
    """The three rolling restarts of docs/operations.md: (old, accepting new), (new, accepting
    old), (new alone). The cluster id stays the one the first password gave."""
    first = reopen(member(tmp_path, password="old")).identity
    one = reopen(changing(member(tmp_path, password="old"), "new")).identity
    two = reopen(changing(member(tmp_path, password="new"), "old")).identity
    three = reopen(member(tmp_path, password="new")).identity
    assert first.cluster_id == one.cluster_id == two.cluster_id == three.cluster_id
    assert three.password_check == two.password_check != first.password_check
    assert three.members == MEMBERS
    # A third password does not open it, nor do other members. (The old one still would, as
    # the one its id came from; such a node is refused by its peers, so it runs alone.)
    assert "describe another cluster" in refusal(member(tmp_path, password="third"))
    other_members = "1@127.0.0.11,2@127.0.0.22,3@127.0.0.23"
    refused_members = refusal(member(tmp_path, password="new", nodes=other_members))
    assert "describe another cluster" in refused_members


def test_a_new_password_alone_is_refused_with_a_hint(tmp_path: Path) -> None:
    reopen(member(tmp_path, password="old"))
    assert "cluster.password_accepted must hold the old one" in refusal(
        member(tmp_path, password="new")
    )


def test_a_joined_node_keeps_its_directory_through_a_password_change(tmp_path: Path) -> None:
    opened = open_dir(joiner(tmp_path, password="old"))
    opened.joined("c0ffee0123456789", "old", 3)
    opened._lock.close()
    reopen(changing(joiner(tmp_path, password="new"), "old"))
    assert reopen(joiner(tmp_path, password="new")).identity.cluster_id == "c0ffee0123456789"
    assert "whose password is not cluster.password" in refusal(joiner(tmp_path, password="old"))


# --- the slot group count ---------------------------------------------------------------------


def test_the_slot_group_count_is_recorded_and_another_is_refused(tmp_path: Path) -> None:
    """Channels hash onto the count the cluster was created with: a restart under another
    ``cluster.groups`` would hide their messages, so it is refused, naming the setting."""
    for index, make in enumerate((member, config)):
        data = tmp_path / str(index)
        reopen(make(data, RAFTCHAT_CLUSTER_GROUPS="5") if make is config else make(data))
        recorded = on_disk(data)["slot_groups"]
        assert recorded == (5 if make is config else 3)
        other = "4" if recorded == 5 else "8"
        cfg = config(data, RAFTCHAT_CLUSTER_GROUPS=other)
        if make is member:
            cfg = config(
                data,
                RAFTCHAT_CLUSTER_GROUPS=other,
                RAFTCHAT_CLUSTER_NODES=MEMBERS,
                RAFTCHAT_CLUSTER_PASSWORD="secret",
            )
        assert f"has {recorded} slot groups and this node's cluster.groups is {other}: set " in (
            refusal(cfg)
        )


def test_a_joiner_records_the_clusters_count_once_admitted(tmp_path: Path) -> None:
    opened = open_dir(joiner(tmp_path))
    opened.joined("c0ffee0123456789", "secret", 8)
    opened._lock.close()
    assert on_disk(tmp_path)["slot_groups"] == 8
    assert "has 8 slot groups" in refusal(joiner(tmp_path))
    eight = config(
        tmp_path,
        4,
        RAFTCHAT_CLUSTER_JOIN="127.0.0.11",
        RAFTCHAT_CLUSTER_PASSWORD="secret",
        RAFTCHAT_CLUSTER_GROUPS="8",
    )
    assert reopen(eight).identity.slot_groups == 8


def test_an_older_file_is_judged_by_the_groups_it_holds_then_recorded(tmp_path: Path) -> None:
    """A file from before the count was recorded: replicas of slot group 8 prove a cluster of
    at least 8 groups (the old default), refused under 3; groups 1-3 alone are accepted."""
    reopen(member(tmp_path))
    written = on_disk(tmp_path)
    del written["slot_groups"]
    (tmp_path / IDENTITY_FILE).write_text(json.dumps(written))
    for g in (1, 2, 3, 8):
        (tmp_path / "groups" / f"g{g}").mkdir(parents=True)
    assert "holds slot group 8 and this node's cluster.groups is 3" in refusal(member(tmp_path))
    (tmp_path / "groups" / "g8").rmdir()
    # Groups 1-3 alone prove nothing (a node of a big cluster may hold no group above 3): the
    # count is recorded once the node's stored map, checked against cluster.groups, gives it.
    opened = reopen(member(tmp_path))
    assert opened.identity.slot_groups is None and on_disk(tmp_path)["slot_groups"] is None
    opened.slot_groups_known(8)
    assert on_disk(tmp_path)["slot_groups"] == 8
    assert "has 8 slot groups and this node's cluster.groups is 3" in refusal(member(tmp_path))


def test_zones_in_cluster_nodes_are_part_of_the_cluster(tmp_path: Path) -> None:
    """A map that never changed is placed again from cluster.nodes at every start, zones
    included: a member whose zones there changed would place its groups unlike the others."""
    zoned = "1@127.0.0.11#m1,2@127.0.0.12#m1,3@127.0.0.13#m2"

    def zoned_member(data: Path, node_id: int, nodes: str = zoned) -> Config:
        zone = "m2" if node_id == 3 else "m1"
        return config(
            data,
            node_id,
            RAFTCHAT_CLUSTER_NODES=nodes,
            RAFTCHAT_CLUSTER_PASSWORD="secret",
            RAFTCHAT_NODE_ZONE=zone,
        )

    ids = {reopen(zoned_member(tmp_path / f"n{i}", i)).identity.cluster_id for i in (1, 2, 3)}
    assert len(ids) == 1
    assert genesis_cluster_id(member(tmp_path / "x")) not in ids
    assert on_disk(tmp_path / "n1")["members"] == zoned
    reopen(zoned_member(tmp_path / "n1", 1))  # unchanged: starts again
    moved = "1@127.0.0.11#m1,2@127.0.0.12#m3,3@127.0.0.13#m2"
    message = refusal(zoned_member(tmp_path / "n1", 1, moved))
    assert f"created with cluster.nodes = {zoned}: the zones there place the first" in message
    # zones added to the cluster.nodes of a cluster made without them: the same
    reopen(member(tmp_path / "plain"))
    assert "cannot change" in refusal(zoned_member(tmp_path / "plain", 1))


def test_the_cluster_id_of_members_without_zones_is_as_before(tmp_path: Path) -> None:
    """Pinned: what revision 562aa00, before zones, computed."""
    assert genesis_cluster_id(member(tmp_path)) == "c1dcea4d1c0da7cb"
