"""The WKProto gateway end to end: a real node process, the project's own client over TCP and
WebSocket, protocol versions 4 to 6, with and without payload encryption."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from client.errors import ConnectRefused
from client.wkproto import open_client
from launcher.devcluster import NodeProcess
from proto.wkproto import ReasonCode, Send, Setting
from tests.conftest import Api, start_node

_uids = itertools.count(1)


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_uids)}"


@pytest.fixture(scope="module")
def enc_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = start_node(tmp_path_factory.mktemp("enc"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def plain_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = start_node(tmp_path_factory.mktemp("plain"), gateway__encryption=False)
    yield proc
    proc.stop()


def addr(node: NodeProcess, kind: str = "tcp") -> tuple[str, int]:
    if kind == "ws":
        host, port = node.endpoints["ws"].removeprefix("ws://").rsplit(":", 1)
    else:
        host, port = node.endpoints["tcp"].rsplit(":", 1)
    return host, int(port)


def users(node: NodeProcess, *prefixes: str, device_flag: int = 0) -> list[str]:
    api = Api(node.endpoints["http"])
    out = []
    for p in prefixes:
        uid = fresh(p)
        api.token(uid, f"tok-{uid}", device_flag=device_flag)
        out.append(uid)
    return out


def group(node: NodeProcess, members: list[str]) -> str:
    gid = fresh("g")
    Api(node.endpoints["http"]).ok(
        "/channel", {"channel_id": gid, "channel_type": 2, "subscribers": members}
    )
    return gid


async def _person_and_group(node: NodeProcess, version: int, encrypt: bool, transport: str) -> None:
    a, b = users(node, "a", "b")
    gid = group(node, [a, b])
    host, port = addr(node, transport)
    kw = {"version": version, "encrypt": encrypt, "transport": transport}
    async with (
        open_client(host, port, uid=a, token=f"tok-{a}", **kw) as ca,  # type: ignore[arg-type]
        open_client(host, port, uid=b, token=f"tok-{b}", **kw) as cb,  # type: ignore[arg-type]
    ):
        assert ca.version == version
        to_b = await ca.send(b, 1, b'{"type":1,"content":"hi bob"}')
        to_g = await ca.send(gid, 2, b'{"type":1,"content":"hi group"}')
        assert to_b.ok and to_g.ok
        assert to_b.message_seq == 1 and to_g.message_seq == 1
        got = [await cb.recv(), await cb.recv()]
        by_no = {m.client_msg_no: m for m in got}
        m1, m2 = by_no[to_b.client_msg_no], by_no[to_g.client_msg_no]
        assert (m1.channel_id, m1.channel_type, m1.from_uid) == (a, 1, a)
        assert m1.payload == b'{"type":1,"content":"hi bob"}'
        assert (m1.message_id, m1.message_seq) == (to_b.message_id, to_b.message_seq)
        assert (m2.channel_id, m2.channel_type) == (gid, 2)
        assert m2.payload == b'{"type":1,"content":"hi group"}'
        assert cb.bad_msg_keys == 0


@pytest.mark.parametrize("version", [4, 5, 6])
def test_encrypted_tcp(enc_node: NodeProcess, version: int) -> None:
    trio.run(_person_and_group, enc_node, version, True, "tcp")


@pytest.mark.parametrize("version", [4, 5, 6])
def test_unencrypted_server_tcp(plain_node: NodeProcess, version: int) -> None:
    trio.run(_person_and_group, plain_node, version, False, "tcp")


@pytest.mark.parametrize("version", [2, 6])
def test_encrypted_websocket(enc_node: NodeProcess, version: int) -> None:
    trio.run(_person_and_group, enc_node, version, True, "ws")


def test_no_encrypt_setting_is_honoured(enc_node: NodeProcess) -> None:
    """A SEND with SettingNoEncrypt carries a clear payload and no msgKey; the recipient still
    gets it encrypted for its own session (the official SDK drops clear RECVs)."""
    a, b = users(enc_node, "a", "b")
    host, port = addr(enc_node)

    async def main() -> None:
        async with (
            open_client(host, port, uid=a, token=f"tok-{a}") as ca,
            open_client(host, port, uid=b, token=f"tok-{b}") as cb,
        ):
            res = await ca.send(b, 1, b"clear text", setting=Setting.NO_ENCRYPT)
            assert res.ok
            msg = await cb.recv()
            assert msg.payload == b"clear text"
            assert msg.recv.msg_key and not msg.recv.setting & Setting.NO_ENCRYPT

    trio.run(main)


def test_sender_other_devices_get_the_message(enc_node: NodeProcess) -> None:
    a, b = users(enc_node, "a", "b")
    Api(enc_node.endpoints["http"]).token(a, f"tok-{a}", device_flag=1)
    host, port = addr(enc_node)

    async def main() -> None:
        async with (
            open_client(host, port, uid=a, token=f"tok-{a}", device_flag=0) as phone,
            open_client(host, port, uid=a, token=f"tok-{a}", device_flag=1) as web,
        ):
            res = await phone.send(b, 1, b"from my phone")
            assert res.ok
            echo = await web.recv()
            # The sender's other device sees the person channel under the peer's uid.
            assert (echo.channel_id, echo.from_uid, echo.payload) == (b, a, b"from my phone")
            assert not echo.flags & 0x02  # no red dot for one's own message
            with pytest.raises(trio.TooSlowError):
                await phone.recv(timeout_s=0.3)  # the sending connection gets no RECV

    trio.run(main)


def test_retried_client_msg_no_keeps_its_ids(enc_node: NodeProcess) -> None:
    a, b = users(enc_node, "a", "b")
    host, port = addr(enc_node)

    async def main() -> None:
        async with open_client(host, port, uid=a, token=f"tok-{a}") as ca:
            first = await ca.send(b, 1, b"once", client_msg_no="dup-1")
            again = await ca.send(b, 1, b"once", client_msg_no="dup-1")
            other = await ca.send(b, 1, b"twice", client_msg_no="dup-2")
            assert (again.message_id, again.message_seq) == (first.message_id, first.message_seq)
            assert other.message_seq == first.message_seq + 1

    trio.run(main)


@pytest.mark.parametrize(
    ("token", "encrypt", "expected"),
    [
        ("wrong", True, ReasonCode.AUTH_FAIL),
        ("", True, ReasonCode.AUTH_FAIL),
        (None, False, ReasonCode.CLIENT_KEY_IS_EMPTY),
    ],
)
def test_refused_connect_gets_connack_with_reason(
    enc_node: NodeProcess, token: str | None, encrypt: bool, expected: ReasonCode
) -> None:
    (a,) = users(enc_node, "a")
    host, port = addr(enc_node)

    async def main() -> None:
        with pytest.raises(ConnectRefused) as info:
            async with open_client(
                host, port, uid=a, token=f"tok-{a}" if token is None else token, encrypt=encrypt
            ):
                pass
        assert info.value.reason_code == expected

    trio.run(main)


def test_banned_user_gets_ban(enc_node: NodeProcess) -> None:
    (a,) = users(enc_node, "a")
    Api(enc_node.endpoints["http"]).ok(
        "/channel/info", {"channel_id": a, "channel_type": 1, "ban": 1}
    )
    host, port = addr(enc_node)

    async def main() -> None:
        with pytest.raises(ConnectRefused) as info:
            async with open_client(host, port, uid=a, token=f"tok-{a}"):
                pass
        assert info.value.reason_code == ReasonCode.BAN
        # Without the user's token nobody learns of the ban: a wrong token is a wrong token.
        with pytest.raises(ConnectRefused) as info:
            async with open_client(host, port, uid=a, token="not-the-token"):
                pass
        assert info.value.reason_code == ReasonCode.AUTH_FAIL

    trio.run(main)


def test_bad_msg_key_is_refused_and_session_survives(enc_node: NodeProcess) -> None:
    a, b = users(enc_node, "a", "b")
    host, port = addr(enc_node)

    async def main() -> None:
        async with open_client(host, port, uid=a, token=f"tok-{a}") as ca:
            forged = Send(
                setting=0,
                client_seq=900,
                client_msg_no="forged",
                channel_id=b,
                channel_type=1,
                payload=b"bm90IGVuY3J5cHRlZA==",
                msg_key="0" * 32,
            )
            await ca.send_frame(forged)
            ack = await ca.wait_sendack(900)
            assert ack.reason_code == ReasonCode.MSG_KEY_ERROR and ack.message_seq == 0
            assert (await ca.send(b, 1, b"still here")).ok

    trio.run(main)


def test_oversized_fields_are_refused_precisely(enc_node: NodeProcess) -> None:
    a, b = users(enc_node, "a", "b")
    host, port = addr(enc_node)

    async def main() -> None:
        async with open_client(host, port, uid=a, token=f"tok-{a}") as ca:
            res = await ca.send(b, 1, b"x", client_msg_no="n" * 20_000)
            assert res.reason_code == ReasonCode.PAYLOAD_DECODE_ERROR
            res = await ca.send("c" * 100, 2, b"x")
            assert res.reason_code == ReasonCode.CHANNEL_ID_ERROR
            assert (await ca.send(b, 1, b"fine")).message_seq == 1

    trio.run(main)


async def _other_client_still_works(node: NodeProcess) -> None:
    a, b = users(node, "a", "b")
    host, port = addr(node)
    async with open_client(host, port, uid=a, token=f"tok-{a}") as ca:
        assert (await ca.send(b, 1, b"alive")).ok
        await ca.ping()


async def _raw_exchange(node: NodeProcess, data: bytes) -> bytes:
    """Send raw bytes on a fresh TCP connection and return everything until the server closes."""
    host, port = addr(node)
    stream = await trio.open_tcp_stream(host, port)
    received = b""
    with trio.fail_after(10):
        await stream.send_all(data)
        while chunk := await stream.receive_some(65536):
            received += chunk
    await stream.aclose()
    return received


def test_garbage_bytes_close_the_connection(enc_node: NodeProcess) -> None:
    async def main() -> None:
        assert await _raw_exchange(enc_node, bytes(range(0xF0, 0x100)) * 4) == b""
        await _other_client_still_works(enc_node)

    trio.run(main)


def test_first_frame_must_be_connect(enc_node: NodeProcess) -> None:
    async def main() -> None:
        assert await _raw_exchange(enc_node, b"\x70") == b""  # a PING before CONNECT
        await _other_client_still_works(enc_node)

    trio.run(main)


def test_oversized_frame_closes_only_that_connection(enc_node: NodeProcess) -> None:
    a, b = users(enc_node, "a", "b")
    host, port = addr(enc_node)

    async def main() -> None:
        async with open_client(host, port, uid=b, token=f"tok-{b}") as bystander:
            async with open_client(host, port, uid=a, token=f"tok-{a}") as ca:
                # SEND header announcing 1 MiB + 1 byte of body: refused before the body comes.
                await ca.send_bytes(bytes([0x30, 0x81, 0x80, 0x40]))
                await ca.wait_closed(timeout_s=10)
            await bystander.ping()
        await _other_client_still_works(enc_node)

    trio.run(main)


def test_garbage_after_connect_closes_and_node_keeps_serving(enc_node: NodeProcess) -> None:
    (a,) = users(enc_node, "a")
    host, port = addr(enc_node)

    async def main() -> None:
        async with open_client(host, port, uid=a, token=f"tok-{a}") as ca:
            await ca.send_bytes(b"\x00\x01garbage")
            await ca.wait_closed(timeout_s=10)
        await _other_client_still_works(enc_node)

    trio.run(main)


def test_ping_pong_and_version_negotiation(enc_node: NodeProcess) -> None:
    (a,) = users(enc_node, "a")
    host, port = addr(enc_node)

    async def main() -> None:
        async with open_client(host, port, uid=a, token=f"tok-{a}", version=9) as ca:
            assert ca.connack.server_version == 6 and ca.version == 6
            assert ca.connack.node_id == 1
            await ca.ping()
        async with open_client(host, port, uid=a, token=f"tok-{a}", version=3) as old:
            # No HasServerVersion byte and no node id below version 4.
            assert old.connack.server_version == 0 and old.connack.node_id == 0
            await old.ping()

    trio.run(main)


def test_timeouts_close_silent_connections(tmp_path: Path) -> None:
    # The idle timeout is four ping periods, so that a stalled process on a loaded machine does
    # not look like a silent client.
    node = start_node(tmp_path, gateway__auth_timeout_s=0.5, gateway__idle_timeout_s=2.0)
    try:
        (a,) = users(node, "a")
        host, port = addr(node)

        async def main() -> None:
            # Unauthenticated: never sends CONNECT, the server hangs up.
            assert await _raw_exchange(node, b"") == b""
            async with open_client(host, port, uid=a, token=f"tok-{a}") as idle:
                await idle.wait_closed(timeout_s=10)
                assert idle.disconnect is None
            # A client that keeps pinging outlives several idle periods.
            async with open_client(host, port, uid=a, token=f"tok-{a}") as busy:
                for _ in range(10):
                    await busy.ping()
                    with trio.move_on_after(0.5):
                        await busy.closed.wait()
                    assert not busy.closed.is_set()

        trio.run(main)
    finally:
        node.stop()


def test_multi_device_policy(tmp_path: Path) -> None:
    node = start_node(tmp_path, devices__web_limit=2)
    try:
        api = Api(node.endpoints["http"])
        (a,) = users(node, "a")
        api.token(a, f"tok-{a}", device_flag=1)
        host, port = addr(node)

        async def main() -> None:
            async with (
                open_client(host, port, uid=a, token=f"tok-{a}", device_id="p1") as app1,
                open_client(host, port, uid=a, token=f"tok-{a}", device_flag=1) as web1,
                open_client(host, port, uid=a, token=f"tok-{a}", device_flag=1) as web2,
            ):
                # APP allows one session: a second phone kicks the first with ConnectKick.
                async with open_client(host, port, uid=a, token=f"tok-{a}", device_id="p2") as app2:
                    await app1.wait_closed(timeout_s=10)
                    assert app1.disconnect is not None
                    assert app1.disconnect.reason_code == ReasonCode.CONNECT_KICK
                    # WEB allows two here: a third kicks the oldest only.
                    async with open_client(
                        host, port, uid=a, token=f"tok-{a}", device_flag=1
                    ) as web3:
                        await web1.wait_closed(timeout_s=10)
                        assert web1.disconnect is not None
                        await web2.ping()
                        await web3.ping()
                        await app2.ping()
                        status = api.ok("/user/onlinestatus", [a])
                        assert sorted(s["device_flag"] for s in status) == [0, 1]
                    # device_quit kicks the APP session and blanks its token.
                    api.ok("/user/device_quit", {"uid": a, "device_flag": 0})
                    await app2.wait_closed(timeout_s=10)
                    assert app2.disconnect is not None
                with pytest.raises(ConnectRefused) as info:
                    async with open_client(host, port, uid=a, token=f"tok-{a}"):
                        pass
                assert info.value.reason_code == ReasonCode.AUTH_FAIL

        trio.run(main)
    finally:
        node.stop()


def test_logs_are_structured_and_carry_connection_and_uid(tmp_path: Path) -> None:
    node = start_node(tmp_path, log__format="json")
    try:
        (a,) = users(node, "a")
        host, port = addr(node)

        async def main() -> None:
            async with open_client(host, port, uid=a, token=f"tok-{a}") as ca:
                await ca.ping()

        trio.run(main)
    finally:
        node.stop()
    lines = [json.loads(x) for x in node.log_path.read_text().splitlines() if x.startswith("{")]
    opened = [x for x in lines if x["msg"] == "session open"]
    assert opened and opened[0]["uid"] == a and opened[0]["node"] == 1 and opened[0]["conn"] > 0
