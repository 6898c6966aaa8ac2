"""The HTTP client library against a real node: the blocking and the trio client, typed
results, errors with reason codes, failover past a node that is down.

One node serves the module: each test has users and channels of its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from client.errors import BadRequest, NotFound, Refused, Unreachable
from client.http import HttpClient, SyncHttpClient
from launcher.devcluster import NodeProcess
from proto.wkproto import ChannelType, ReasonCode
from tests.conftest import running_node

GROUP = ChannelType.GROUP
PERSON = ChannelType.PERSON


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    yield from running_node(tmp_path_factory.mktemp("clienthttp"))


def test_sync_client_round_trip(node: NodeProcess) -> None:
    with SyncHttpClient(node.endpoints["http"]) as api:
        assert api.health()
        assert api.route().tcp_addr.endswith(":5100")
        api.channel_create("team", GROUP, ["alice", "bob"])
        assert sorted(api.subscribers("team", GROUP)) == ["alice", "bob"]
        sent = [api.send("alice", "team", GROUP, f"m{i}".encode()) for i in range(3)]
        assert [s.message_seq for s in sent] == [1, 2, 3]

        # The same client_msg_no again returns the original ids and stores nothing.
        again = api.send("alice", "team", GROUP, b"m0", client_msg_no=sent[0].client_msg_no)
        assert again == sent[0]
        assert api.max_message_seq("team", GROUP) == 3

        page = api.messagesync("bob", "team", GROUP, 2)
        assert [(m.message_seq, m.payload, m.from_uid) for m in page.messages] == [
            (2, b"m1", "alice"),
            (3, b"m2", "alice"),
        ]
        assert not page.more
        by_id = api.message(sent[1].message_id)
        assert by_id is not None and by_id.payload == b"m1"
        assert api.message(sent[1].message_id + 12345) is None
        found = api.message_by_client_msg_no("team", GROUP, "alice", sent[2].client_msg_no)
        assert found is not None and found.message_id == sent[2].message_id

        info = api.channel_info("team", GROUP)
        assert info is not None and not info.ban
        api.channel_info_update("team", GROUP, ban=True)
        info = api.channel_info("team", GROUP)
        assert info is not None and info.ban

        (conv,) = api.conversation_sync("bob")
        assert (conv.channel_id, conv.unread, conv.last_msg_seq) == ("team", 3, 3)
        assert [m.payload for m in conv.recents] == [b"m0", b"m1", b"m2"]
        api.conversation_change("clearUnread", "bob", "team", GROUP)
        assert api.conversation_sync("bob")[0].unread == 0


def test_sync_client_errors_carry_status_and_reason(node: NodeProcess) -> None:
    with SyncHttpClient(node.endpoints["http"]) as api:
        with pytest.raises(NotFound) as missing:
            api.send("alice", "nowhere", GROUP, b"x")
        assert missing.value.reason_code == ReasonCode.CHANNEL_NOT_EXIST

        api.channel_create("banned", GROUP, ["alice"], ban=True)
        with pytest.raises(Refused) as refused:
            api.send("alice", "banned", GROUP, b"x")
        assert (refused.value.status, refused.value.reason_code) == (403, ReasonCode.BAN)

        with pytest.raises(BadRequest, match="uid") as bad:
            api.user_token("", "t")
        assert bad.value.status == 400 and bad.value.reason_code is None


def test_person_channels_and_message_operations(node: NodeProcess) -> None:
    with SyncHttpClient(node.endpoints["http"]) as api:
        first = api.send("pia", "quinn", PERSON, b"hello")
        api.send("quinn", "pia", PERSON, b"hi pia")
        # Person channels appear under the peer's uid, from each side.
        quinn_view = api.messagesync("quinn", "pia", PERSON).messages
        assert [(m.channel_id, m.payload) for m in quinn_view] == [
            ("pia", b"hello"),
            ("pia", b"hi pia"),
        ]
        edited = api.edit("pia", "quinn", PERSON, b"hello!", message_seq=first.message_seq)
        assert edited.version == 1
        revoked = api.revoke("pia", "quinn", PERSON, message_id=first.message_id)
        assert (revoked.message_seq, revoked.revoker) == (first.message_seq, "pia")
        m = api.messagesync("quinn", "pia", PERSON).messages[0]
        assert m.revoked and m.payload == b""
        batch = api.send_batch("news", ["pia", "quinn"], b"extra!")
        assert batch.ok


def test_unreachable_nodes_are_skipped_and_reported(node: NodeProcess) -> None:
    # 127.0.0.2 has nothing listening on 5001 (the fixtures use 127.p.x.y with p >= 20).
    dead = "http://127.0.0.2:5001"
    with SyncHttpClient([dead, node.endpoints["http"]]) as api:
        assert api.health()
        assert api.url == node.endpoints["http"]
    with SyncHttpClient(dead, retries=1) as api, pytest.raises(Unreachable) as info:
        api.health()
    assert len(info.value.errors) == 2


def test_trio_client_round_trip(node: NodeProcess) -> None:
    async def main() -> None:
        async with HttpClient(node.endpoints["http"]) as api:
            await api.user_token("tess", "secret")
            sent = await api.send("tess", "ugo", PERSON, "text is UTF-8 encoded ✓")
            last = await api.last_message("tess", PERSON, login_uid="ugo")
            assert last is not None and last.message_id == sent.message_id
            assert last.text == "text is UTF-8 encoded ✓"
            assert [m.message_seq async for m in api.iter_messages("ugo", "tess", PERSON)] == [
                sent.message_seq
            ]
            with pytest.raises(NotFound):
                await api.send("tess", "nowhere", GROUP, b"x")
            status = await api.cluster_status()
            assert status.node_id == 1 and status.group(0).leader == 1

    trio.run(main)
