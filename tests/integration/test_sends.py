"""Sends on one real node: payload limit, rate limit, online-only sends, live channels,
explicit-subscriber and system sends, command messages and their sync, batch sends."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from client.wkproto import open_client
from launcher.devcluster import NodeProcess
from node.channels import person_channel_id
from proto.wkproto import HeaderFlag, ReasonCode
from tests.conftest import Api, start_node

RATE = 5
"""The node's per-channel rate limit: low, so that a test can exceed it in a moment."""
PERSON_RATE = 1
"""The per-sender limit on person channels of ``pnode``: one send per second, so that the test
does not depend on how fast the machine answers."""

_ids = itertools.count(1)


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


@pytest.fixture(scope="module")
def snode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = start_node(tmp_path_factory.mktemp("sends"), messages__group_rate_limit=RATE)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def pnode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = start_node(tmp_path_factory.mktemp("psends"), messages__person_rate_limit=PERSON_RATE)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def papi(pnode: NodeProcess) -> Iterator[Api]:
    client = Api(pnode.endpoints["http"])
    yield client
    client.http.close()


@pytest.fixture(scope="module")
def sapi(snode: NodeProcess) -> Iterator[Api]:
    client = Api(snode.endpoints["http"])
    yield client
    client.http.close()


def tcp(node: NodeProcess) -> tuple[str, int]:
    host, port = node.endpoints["tcp"].rsplit(":", 1)
    return host, int(port)


def users(api: Api, *prefixes: str) -> list[str]:
    out = []
    for p in prefixes:
        uid = fresh(p)
        api.token(uid, f"tok-{uid}")
        out.append(uid)
    return out


def make_group(api: Api, members: list[str], channel_type: int = 2) -> str:
    gid = fresh("g")
    api.ok("/channel", {"channel_id": gid, "channel_type": channel_type, "subscribers": members})
    return gid


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def send_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"payload": b64(b"hello")}
    body.update(fields)
    return body


# --- 1. payload limit and rate limit -----------------------------------------------------------


def test_http_payload_over_the_limit_is_400(sapi: Api) -> None:
    a, b = users(sapi, "a", "b")
    limit = 12 * 1024
    ok = sapi.post(
        "/message/send",
        send_body(from_uid=a, channel_id=b, channel_type=1, payload=b64(b"x" * limit)),
    )
    assert ok.status_code == 200, ok.text
    resp = sapi.post(
        "/message/send",
        send_body(from_uid=a, channel_id=b, channel_type=1, payload=b64(b"x" * (limit + 1))),
    )
    assert resp.status_code == 400
    assert resp.json() == {"msg": f"payload is larger than {limit} bytes", "status": 400}


def test_wkproto_payload_over_the_limit_is_payload_decode_error(
    sapi: Api, snode: NodeProcess
) -> None:
    a, b = users(sapi, "a", "b")

    async def main() -> None:
        async with open_client(*tcp(snode), uid=a, token=f"tok-{a}") as ca:
            big = await ca.send(b, 1, b"y" * (12 * 1024 + 1))
            assert big.reason_code == ReasonCode.PAYLOAD_DECODE_ERROR and big.message_seq == 0
            fits = await ca.send(b, 1, b"y" * (12 * 1024))
            assert fits.ok

    trio.run(main)


def test_http_sends_over_the_group_rate_are_429(sapi: Api) -> None:
    (a,) = users(sapi, "a")
    gid = make_group(sapi, [a])
    codes = []
    for _ in range(RATE * 3):
        resp = sapi.post("/message/send", send_body(from_uid=a, channel_id=gid, channel_type=2))
        codes.append(resp.status_code)
        if resp.status_code == 429:
            assert resp.json()["reason"] == ReasonCode.RATE_LIMIT
    assert codes[:RATE] == [200] * RATE  # the first second's burst passes
    assert 429 in codes
    # Another channel has its own budget, and person channels are limited per sender
    # instead: more than RATE in a burst pass there.
    other = make_group(sapi, [a])
    assert (
        sapi.post(
            "/message/send", send_body(from_uid=a, channel_id=other, channel_type=2)
        ).status_code
        == 200
    )
    (b,) = users(sapi, "b")
    for _ in range(RATE * 3):  # within the default per-sender burst of 20
        sapi.ok("/message/send", send_body(from_uid=a, channel_id=b, channel_type=1))


def test_wkproto_person_sends_over_the_sender_rate_get_rate_limit(
    papi: Api, pnode: NodeProcess
) -> None:
    a, b, c = users(papi, "a", "b", "c")

    async def main() -> None:
        async with open_client(*tcp(pnode), uid=a, token=f"tok-{a}") as ca:
            # Alternating receivers: the budget is the sender's, not a channel's.
            acks = [await ca.send((b, c)[i % 2], 1, b"m") for i in range(4)]
            reasons = [r.reason_code for r in acks]
            assert reasons[0] == ReasonCode.SUCCESS
            assert ReasonCode.RATE_LIMIT in reasons
            refused = [r for r in acks if r.reason_code == ReasonCode.RATE_LIMIT]
            assert all(r.message_seq == 0 and r.message_id == 0 for r in refused)
        # Another sender has its own budget.
        async with open_client(*tcp(pnode), uid=b, token=f"tok-{b}") as cb:
            assert (await cb.send(c, 1, b"from b")).ok

    trio.run(main)


def test_http_person_sends_over_the_sender_rate_are_429_and_a_batch_is_one_send(
    papi: Api,
) -> None:
    a, b, c = users(papi, "a", "b", "c")
    batch = {"from_uid": a, "subscribers": [b, c], "payload": b64(b"hi")}
    # A batch to two receivers takes one token, so both pass on a budget of one.
    assert papi.ok("/message/sendbatch", batch) == {"fail_uids": [], "reason": []}
    codes = []
    for _ in range(4):
        resp = papi.post("/message/send", send_body(from_uid=a, channel_id=b, channel_type=1))
        codes.append(resp.status_code)
        if resp.status_code == 429:
            assert resp.json()["reason"] == ReasonCode.RATE_LIMIT
    assert 429 in codes
    refused = papi.ok("/message/sendbatch", batch)
    if refused["fail_uids"]:  # unless a token came back meanwhile: then the next one is out
        assert refused == {"fail_uids": [b, c], "reason": [ReasonCode.RATE_LIMIT] * 2}
    # A system account is never limited.
    (bot,) = users(papi, "bot")
    papi.ok("/user/systemuids_add", {"uids": [bot]})
    for _ in range(10):
        papi.ok("/message/send", send_body(from_uid=bot, channel_id=b, channel_type=1))


def test_wkproto_sends_over_the_group_rate_get_rate_limit(sapi: Api, snode: NodeProcess) -> None:
    a, b = users(sapi, "a", "b")
    gid = make_group(sapi, [a, b])

    async def main() -> None:
        async with open_client(*tcp(snode), uid=a, token=f"tok-{a}") as ca:
            acks = [await ca.send(gid, 2, f"m{i}".encode()) for i in range(RATE * 3)]
            reasons = [r.reason_code for r in acks]
            assert reasons[:RATE] == [ReasonCode.SUCCESS] * RATE
            assert ReasonCode.RATE_LIMIT in reasons
            refused = [r for r in acks if r.reason_code == ReasonCode.RATE_LIMIT]
            assert all(r.message_seq == 0 and r.message_id == 0 for r in refused)
            # Only accepted sends are stored: seqs stay contiguous.
            seqs = [r.message_seq for r in acks if r.ok]
            assert seqs == list(range(1, len(seqs) + 1))

    trio.run(main)


# --- 2. online-only sends, live channels, explicit subscribers, system sends -----------------


def head(api: Api, channel_id: str, channel_type: int) -> int:
    resp = api.http.get(
        "/channel/max_message_seq",
        params={"channel_id": channel_id, "channel_type": channel_type},
    )
    assert resp.status_code == 200, resp.text
    return int(resp.json()["message_seq"])


async def post(api: Api, path: str, body: dict[str, Any]) -> Any:
    """An HTTP call from a trio test, off the event loop (the clients keep reading)."""
    return await trio.to_thread.run_sync(api.post, path, body)


def test_no_persist_is_delivered_but_never_stored(sapi: Api, snode: NodeProcess) -> None:
    a, b = users(sapi, "a", "b")

    async def main() -> None:
        async with (
            open_client(*tcp(snode), uid=a, token=f"tok-{a}") as ca,
            open_client(*tcp(snode), uid=b, token=f"tok-{b}") as cb,
        ):
            ack = await ca.send(b, 1, b"typing...", flags=HeaderFlag.NO_PERSIST)
            assert ack.ok and ack.message_seq == 0 and ack.message_id > 0
            got = await cb.recv()
            assert (got.payload, got.message_seq, got.message_id) == (
                b"typing...",
                0,
                ack.message_id,
            )
            assert got.flags & HeaderFlag.NO_PERSIST
            resp = await post(
                sapi,
                "/message/send",
                send_body(
                    from_uid=b,
                    channel_id=a,
                    channel_type=1,
                    header={"no_persist": 1},
                    payload=b64(b"over http"),
                ),
            )
            assert resp.status_code == 200 and resp.json()["message_seq"] == 0
            back = await ca.recv()
            assert (back.payload, back.message_seq, back.from_uid) == (b"over http", 0, b)
            # A stored message after them is seq 1: nothing was written for the two above.
            stored = await ca.send(b, 1, b"kept")
            assert stored.message_seq == 1

    trio.run(main)
    assert head(sapi, person_channel_id(a, b), 1) == 1


def test_live_channel_messages_are_online_only(sapi: Api, snode: NodeProcess) -> None:
    a, b, stranger = users(sapi, "a", "b", "s")
    live = make_group(sapi, [a, b], channel_type=9)

    async def main() -> None:
        async with (
            open_client(*tcp(snode), uid=a, token=f"tok-{a}") as ca,
            open_client(*tcp(snode), uid=b, token=f"tok-{b}") as cb,
            open_client(*tcp(snode), uid=stranger, token=f"tok-{stranger}") as cs,
        ):
            ack = await ca.send(live, 9, b"on air")
            assert ack.ok and ack.message_seq == 0
            got = await cb.recv()
            assert (got.channel_id, got.channel_type, got.payload) == (live, 9, b"on air")
            assert got.message_seq == 0 and got.flags & HeaderFlag.NO_PERSIST
            # Not a subscriber: refused like a group.
            refused = await cs.send(live, 9, b"let me in")
            assert refused.reason_code == ReasonCode.SUBSCRIBER_NOT_EXIST
            resp = await post(sapi, "/message/send", send_body(channel_id=live, channel_type=9))
            assert resp.status_code == 200 and resp.json()["message_seq"] == 0
            assert (await cb.recv()).from_uid == ""

    trio.run(main)
    assert head(sapi, live, 9) == 0


def test_system_send_reaches_members_with_an_empty_sender(sapi: Api, snode: NodeProcess) -> None:
    (a,) = users(sapi, "a")
    gid = make_group(sapi, [a])

    async def main() -> None:
        async with open_client(*tcp(snode), uid=a, token=f"tok-{a}") as ca:
            resp = await post(sapi, "/message/send", send_body(channel_id=gid, channel_type=2))
            assert resp.status_code == 200, resp.text
            got = await ca.recv()
            assert (got.from_uid, got.channel_id, got.message_seq) == ("", gid, 1)

    trio.run(main)


def test_explicit_subscribers_reach_exactly_those_uids(sapi: Api, snode: NodeProcess) -> None:
    a, b, c = users(sapi, "a", "b", "c")

    async def main() -> None:
        async with (
            open_client(*tcp(snode), uid=a, token=f"tok-{a}") as ca,
            open_client(*tcp(snode), uid=b, token=f"tok-{b}") as cb,
            open_client(*tcp(snode), uid=c, token=f"tok-{c}") as cc,
        ):
            online = send_body(
                subscribers=[a, b],
                header={"sync_once": 1, "no_persist": 1},
                payload=b64(b"online cmd"),
            )
            resp = await post(sapi, "/message/send", online)
            assert resp.status_code == 200, resp.text
            assert resp.json()["message_seq"] == 0
            for client in (ca, cb):
                got = await client.recv()
                assert (got.payload, got.message_seq, got.from_uid) == (b"online cmd", 0, "")
                assert got.flags & HeaderFlag.SYNC_ONCE and got.channel_type == 8
            stored = send_body(
                subscribers=[b, a, b],
                header={"sync_once": 1},
                from_uid=c,
                payload=b64(b"stored cmd"),
            )
            first = await post(sapi, "/message/send", stored)
            second = await post(sapi, "/message/send", stored)
            assert first.status_code == 200 and first.json()["message_seq"] == 1
            assert second.json()["message_seq"] == 2  # the same uid set: the same channel
            m1, m2 = await ca.recv(), await ca.recv()
            assert (m1.message_seq, m2.message_seq, m1.from_uid) == (1, 2, c)
            assert m1.channel_id == m2.channel_id
            assert (await cb.recv()).message_seq == 1
            # c sent it but is not listed: nothing for c (a ping proves nothing is queued).
            await cc.ping()
            assert cc.pending_messages() == 0

    trio.run(main)


@pytest.mark.parametrize(
    ("body", "msg"),
    [
        (
            {
                "subscribers": ["u1"],
                "channel_id": "g",
                "channel_type": 2,
                "header": {"sync_once": 1},
            },
            "channel_id and subscribers are mutually exclusive",
        ),
        ({"subscribers": ["u1"]}, "subscribers requires header.sync_once = 1"),
        ({"subscribers": [], "header": {"sync_once": 1}}, "subscribers must not be empty"),
        (
            {"subscribers": "u1", "header": {"sync_once": 1}},
            "subscribers must be a list of strings",
        ),
        ({"subscribers": ["a@b"], "header": {"sync_once": 1}}, "subscribers uid contains"),
        ({"subscribers": ["u1"], "header": {"sync_once": 2}}, "header.sync_once must be 0 or 1"),
        (
            {"subscribers": ["u1"], "header": {"sync_once": 1}, "payload": "***"},
            "payload must be base64",
        ),
    ],
)
def test_explicit_subscribers_bad_input_is_400(sapi: Api, body: dict[str, Any], msg: str) -> None:
    resp = sapi.post("/message/send", {"payload": b64(b"x"), **body})
    assert resp.status_code == 400, resp.text
    assert resp.json()["msg"].startswith(msg)


# --- 3. command (sync_once) messages and their per-device sync -----------------------------


def sync_all(api: Api, uid: str, device_flag: int = 0, limit: int = 200) -> list[dict[str, Any]]:
    """Sync and acknowledge page after page until nothing is pending."""
    got: list[dict[str, Any]] = []
    for _ in range(50):
        page = api.ok("/message/sync", {"uid": uid, "device_flag": device_flag, "limit": limit})
        if not page:
            return got
        got.extend(page)
        last = page[-1]["message_seq"]
        api.ok(
            "/message/syncack",
            {"uid": uid, "device_flag": device_flag, "last_message_seq": last},
        )
    raise AssertionError("sync never drained")


def test_sync_once_goes_to_the_command_twin_and_syncs_once(sapi: Api, snode: NodeProcess) -> None:
    a, b, outsider = users(sapi, "a", "b", "o")
    gid = make_group(sapi, [a, b])

    async def main() -> None:
        async with (
            open_client(*tcp(snode), uid=a, token=f"tok-{a}") as ca,
            open_client(*tcp(snode), uid=b, token=f"tok-{b}") as cb,
            open_client(*tcp(snode), uid=outsider, token=f"tok-{outsider}") as co,
        ):
            ack = await ca.send(gid, 2, b"cmd-group", flags=HeaderFlag.SYNC_ONCE)
            assert ack.ok and ack.message_seq == 1
            got = await cb.recv()
            assert (got.channel_id, got.payload, got.message_seq) == (
                f"{gid}____cmd",
                b"cmd-group",
                1,
            )
            assert got.flags & HeaderFlag.SYNC_ONCE
            # Permission is the source channel's: a non-member is refused.
            refused = await co.send(gid, 2, b"no", flags=HeaderFlag.SYNC_ONCE)
            assert refused.reason_code == ReasonCode.SUBSCRIBER_NOT_EXIST
            person = await ca.send(b, 1, b"cmd-person", flags=HeaderFlag.SYNC_ONCE)
            assert person.ok and person.message_seq == 1
            assert (await cb.recv()).channel_id == f"{a}____cmd"  # b's view of the twin
            # Chat history is untouched; the twin has its own seqs.
            chat = await ca.send(gid, 2, b"chat")
            assert chat.message_seq == 1

    trio.run(main)
    sapi.ok(
        "/message/send",
        send_body(
            from_uid=a,
            channel_id=b,
            channel_type=1,
            header={"sync_once": 1},
            payload=b64(b"cmd-http"),
        ),
    )
    sapi.ok(
        "/message/send",
        send_body(subscribers=[b], header={"sync_once": 1}, payload=b64(b"cmd-list")),
    )
    assert head(sapi, gid, 2) == 1 and head(sapi, f"{gid}____cmd", 2) == 1

    # b's web device acknowledges once early, so it keeps a cursor of its own.
    first = sapi.ok("/message/sync", {"uid": b, "device_flag": 1, "limit": 1})
    assert len(first) == 1
    sapi.ok(
        "/message/syncack",
        {"uid": b, "device_flag": 1, "last_message_seq": first[0]["message_seq"]},
    )

    synced = sync_all(sapi, b)
    assert sorted(base64.b64decode(m["payload"]) for m in synced) == [
        b"cmd-group",
        b"cmd-http",
        b"cmd-list",
        b"cmd-person",
    ]
    by_payload = {base64.b64decode(m["payload"]): m for m in synced}
    assert by_payload[b"cmd-group"]["channel_id"] == f"{gid}____cmd"
    assert by_payload[b"cmd-group"]["header"]["sync_once"] == 1
    assert by_payload[b"cmd-person"]["channel_id"] == f"{a}____cmd"
    assert by_payload[b"cmd-list"]["from_uid"] == ""
    assert sync_all(sapi, b) == []  # once: acknowledged messages do not come back
    web = sync_all(sapi, b, device_flag=1)
    assert len(web) == 3 and first[0]["message_id"] not in {m["message_id"] for m in web}
    # The sender's own commands are not queued for it.
    assert sync_all(sapi, a) == []


def test_sync_pages_and_resume_after_message_seq(sapi: Api) -> None:
    a, b = users(sapi, "a", "b")
    for i in range(5):
        sapi.ok(
            "/message/send",
            send_body(
                from_uid=a,
                channel_id=b,
                channel_type=1,
                header={"sync_once": 1},
                payload=b64(f"c{i}".encode()),
            ),
        )
    page1 = sapi.ok("/message/sync", {"uid": b, "limit": 2})
    # Without an ack, message_seq resumes after what was seen; nothing moves server-side.
    page2 = sapi.ok(
        "/message/sync", {"uid": b, "limit": 2, "message_seq": page1[-1]["message_seq"]}
    )
    again = sapi.ok("/message/sync", {"uid": b, "limit": 2})
    assert [m["payload"] for m in again] == [m["payload"] for m in page1]
    assert [base64.b64decode(m["payload"]) for m in page1 + page2] == [b"c0", b"c1", b"c2", b"c3"]
    assert [m["channel_message_seq"] for m in page1 + page2] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("path", "body", "msg"),
    [
        ("/message/sync", {}, "uid is required"),
        ("/message/sync", {"uid": "u", "limit": 0}, "limit must be at least 1"),
        ("/message/sync", {"uid": "u", "device_flag": 7}, "device_flag must be one of"),
        ("/message/sync", {"uid": "u", "message_seq": "x"}, "message_seq must be an integer"),
        ("/message/syncack", {"uid": "u"}, "last_message_seq is required"),
        ("/message/syncack", {"uid": "u", "last_message_seq": 1}, "last_message_seq is not"),
        ("/message/syncack", {"uid": "a b", "last_message_seq": 513}, "uid contains"),
    ],
)
def test_sync_bad_input_is_400(sapi: Api, path: str, body: dict[str, Any], msg: str) -> None:
    resp = sapi.post(path, body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["msg"].startswith(msg)


# --- 4. batch sends ------------------------------------------------------------------------------


def test_sendbatch_sends_a_person_message_to_each(sapi: Api, snode: NodeProcess) -> None:
    a, b, c = users(sapi, "a", "b", "c")

    async def main() -> None:
        async with (
            open_client(*tcp(snode), uid=b, token=f"tok-{b}") as cb,
            open_client(*tcp(snode), uid=c, token=f"tok-{c}") as cc,
        ):
            body = {
                "from_uid": a,
                "subscribers": [b, c, b],
                "header": {"red_dot": 1},
                "payload": b64(b"news"),
            }
            resp = await post(sapi, "/message/sendbatch", body)
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"fail_uids": [], "reason": []}
            for client in (cb, cc):
                got = await client.recv()
                assert (got.from_uid, got.channel_id, got.channel_type) == (a, a, 1)
                assert (got.payload, got.message_seq) == (b"news", 1)
                assert got.flags & HeaderFlag.RED_DOT
            await cb.ping()
            assert cb.pending_messages() == 0  # b listed twice, sent once

    trio.run(main)
    assert head(sapi, person_channel_id(a, b), 1) == 1


def test_sendbatch_keeps_the_receivers_person_lists(sapi: Api) -> None:
    """A batch send in a user's name is held to the same user-level rules as any send: a
    receiver who denies the sender is a failed uid with InBlacklist, the others get it."""
    a, b, c = users(sapi, "a", "b", "c")
    sapi.ok("/channel/blacklist_add", {"channel_id": c, "channel_type": 1, "uids": [a]})
    body = {"from_uid": a, "subscribers": [b, c], "payload": b64(b"hi")}
    assert sapi.ok("/message/sendbatch", body) == {"fail_uids": [c], "reason": [4]}
    assert head(sapi, person_channel_id(a, b), 1) == 1
    assert head(sapi, person_channel_id(a, c), 1) == 0


@pytest.mark.parametrize(
    ("body", "msg"),
    [
        ({"subscribers": ["u1"], "payload": "eA=="}, "from_uid is required"),
        ({"from_uid": "u0", "subscribers": [], "payload": "eA=="}, "subscribers must not be empty"),
        ({"from_uid": "u0", "payload": "eA=="}, "subscribers is required"),
        ({"from_uid": "u0", "subscribers": ["u1"]}, "payload is required"),
        (
            {"from_uid": "u0", "subscribers": ["u1"], "payload": b64(b"z" * (12 * 1024 + 1))},
            "payload is larger than",
        ),
        (
            {"from_uid": "u0", "subscribers": [f"u{i}" for i in range(1001)], "payload": "eA=="},
            "subscribers lists more than 1000",
        ),
    ],
)
def test_sendbatch_bad_input_is_400(sapi: Api, body: dict[str, Any], msg: str) -> None:
    resp = sapi.post("/message/sendbatch", body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["msg"].startswith(msg)
