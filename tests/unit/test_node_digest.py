"""A replica's digest (``GET /cluster/digest``): one consistent scan of the store giving the
applied index and, per channel, the head and a hash of the whole log."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.groups.digest import channel_digests, message_bytes
from node.groups.machine import GroupMachine
from node.pipeline_rules import SYSTEM_UID
from node.storage import MessageRecord, Store
from proto.wkproto import ChannelType, HeaderFlag
from tests.unit.test_node_machine import GROUP, PERSON, Feeder, item


@pytest.fixture
def feeders(tmp_path: Path) -> Iterator[list[Feeder]]:
    made: list[Feeder] = []

    def more() -> None:
        made.append(Feeder(GroupMachine(1, Store(tmp_path / f"db{len(made)}"))))

    more()
    more()
    yield made
    for f in made:
        f.store.close()


def fill(f: Feeder, payload: bytes = b"hi") -> None:
    f.group("g1", ["u1"])
    f.send(item(no="a"), item(no="b", payload=payload))
    f.send(item("u1@u2", ctype=PERSON, no="p"), item(from_uid=SYSTEM_UID, trusted=True))
    f.send(item(no="t", flags=HeaderFlag.NO_PERSIST))  # transient: stored nowhere


def test_empty_store(feeders: list[Feeder]) -> None:
    assert channel_digests(feeders[0].store) == (0, {})


def test_heads_hashes_and_the_applied_index(feeders: list[Feeder]) -> None:
    f = feeders[0]
    fill(f)
    applied, channels = channel_digests(f.store)
    assert applied == f.store.applied_index() == f.index
    assert set(channels) == {"2:g1", "1:u1@u2"}  # type:id as stored (canonical person id)
    assert channels["2:g1"][0] == 3 and channels["1:u1@u2"][0] == 1
    expected = hashlib.sha256()
    for m in f.store.messages(GROUP, "g1", 0, 0, 100):
        expected.update(message_bytes(m))
    assert channels["2:g1"][1] == expected.hexdigest()[:32]


def test_equal_logs_hash_equal_and_any_difference_shows(feeders: list[Feeder]) -> None:
    a, b = feeders
    fill(a)
    fill(b)
    assert channel_digests(a.store) == channel_digests(b.store)
    b.send(item(no="late"))
    _, da = channel_digests(a.store)
    _, db = channel_digests(b.store)
    assert da["1:u1@u2"] == db["1:u1@u2"]
    assert da["2:g1"][0] == 3 and db["2:g1"][0] == 4


def test_the_hash_covers_each_listed_field() -> None:
    base = MessageRecord(7, 3, 0, "g1", int(ChannelType.GROUP), "u1", "c-1", b"hi")
    changed = [
        MessageRecord(8, 3, 0, "g1", 2, "u1", "c-1", b"hi"),
        MessageRecord(7, 4, 0, "g1", 2, "u1", "c-1", b"hi"),
        MessageRecord(7, 3, 0, "g1", 2, "u2", "c-1", b"hi"),
        MessageRecord(7, 3, 0, "g1", 2, "u1", "c-2", b"hi"),
        MessageRecord(7, 3, 0, "g1", 2, "u1", "c-1", b"ho"),
        MessageRecord(7, 3, 0, "g1", 2, "u1c", "-1", b"hi"),  # no ambiguity between fields
    ]
    assert len({message_bytes(r) for r in [base, *changed]}) == len(changed) + 1
