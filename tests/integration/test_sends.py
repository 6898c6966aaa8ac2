"""Issue 5 sends on one real node: payload limit, rate limit, online-only sends, live channels,
explicit-subscriber and system sends, command messages and their sync, batch sends."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from client.wkproto import open_client
from node.devcluster import NodeProcess
from proto.wkproto import ReasonCode
from tests.conftest import Api, start_node

RATE = 5
"""The node's per-channel rate limit: low, so that a test can exceed it in a moment."""

_ids = itertools.count(1)


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


@pytest.fixture(scope="module")
def snode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = start_node(tmp_path_factory.mktemp("sends"), messages__group_rate_limit=RATE)
    yield proc
    proc.stop()


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
    # Another channel has its own budget, and person channels have none.
    other = make_group(sapi, [a])
    assert (
        sapi.post(
            "/message/send", send_body(from_uid=a, channel_id=other, channel_type=2)
        ).status_code
        == 200
    )
    (b,) = users(sapi, "b")
    for _ in range(RATE * 3):
        sapi.ok("/message/send", send_body(from_uid=a, channel_id=b, channel_type=1))


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
