"""The test-only sabotage switch: refused without its guard variable, and each mode really is
the bug it claims to be (the chaos suite relies on that to prove its checkers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.config import ConfigError, load_config
from node.groups.machine import GroupMachine
from node.sabotage import ALLOW_ENV, AckCounter
from node.storage import Store
from proto.wkproto import ReasonCode
from tests.unit.test_node_machine import GROUP, Feeder, item

# --- config -------------------------------------------------------------------------------------


def test_no_sabotage_by_default() -> None:
    assert load_config(None, env={}).testing.sabotage == ""


@pytest.mark.parametrize("mode", ["ack-without-commit", "skip-dedupe"])
def test_sabotage_needs_the_guard_variable(mode: str) -> None:
    with pytest.raises(ConfigError, match=ALLOW_ENV):
        load_config(None, env={"RAFTCHAT_TESTING_SABOTAGE": mode})
    with pytest.raises(ConfigError, match=ALLOW_ENV):
        load_config(None, env={"RAFTCHAT_TESTING_SABOTAGE": mode, ALLOW_ENV: "0"})
    cfg = load_config(None, env={"RAFTCHAT_TESTING_SABOTAGE": mode, ALLOW_ENV: "1"})
    assert cfg.testing.sabotage == mode


def test_sabotage_from_the_file_needs_the_guard_too(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[testing]\nsabotage = "skip-dedupe"\n')
    with pytest.raises(ConfigError, match=ALLOW_ENV):
        load_config(path, env={})
    assert load_config(path, env={ALLOW_ENV: "1"}).testing.sabotage == "skip-dedupe"


def test_unknown_sabotage_is_refused_even_when_allowed() -> None:
    with pytest.raises(ConfigError, match=r"testing\.sabotage"):
        load_config(None, env={"RAFTCHAT_TESTING_SABOTAGE": "drop-all", ALLOW_ENV: "1"})


def test_the_guard_variable_alone_is_not_an_unknown_config_variable() -> None:
    assert load_config(None, env={ALLOW_ENV: "1"}).testing.sabotage == ""


# --- ack-without-commit -------------------------------------------------------------------------


def test_ack_counter_fakes_every_tenth_send() -> None:
    counter = AckCounter()
    assert [i + 1 for i in range(30) if counter.due()] == [10, 20, 30]
    assert counter.faked == 3


# --- skip-dedupe --------------------------------------------------------------------------------


def feeder(path: Path, *, skip_dedupe: bool) -> Feeder:
    return Feeder(GroupMachine(1, Store(path), skip_dedupe=skip_dedupe))


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[list[Store]]:
    opened: list[Store] = []
    yield opened
    for store in opened:
        store.close()


@pytest.mark.parametrize("skip_dedupe", [False, True])
def test_skip_dedupe_stores_a_retry_again(
    tmp_path: Path, stores: list[Store], skip_dedupe: bool
) -> None:
    f = feeder(tmp_path / "db", skip_dedupe=skip_dedupe)
    stores.append(f.store)
    f.group("g1", ["u1"])
    first = f.send(item(no="c-1", payload=b"original")).outcomes[0]
    retry = f.send(item(no="c-1", payload=b"retransmitted")).outcomes[0]
    assert first.reason == retry.reason == ReasonCode.SUCCESS
    stored = [(m.message_seq, m.client_msg_no) for m in f.store.messages(GROUP, "g1", 0, 0, 10)]
    if skip_dedupe:
        assert not retry.duplicate and retry.message_seq == 2
        assert stored == [(1, "c-1"), (2, "c-1")]  # the duplicate the checkers must find
    else:
        assert retry.duplicate and retry.message_seq == first.message_seq == 1
        assert stored == [(1, "c-1")]
