"""The multi-device policy across a three-node cluster: a login on any node evicts the uid's
older sessions per policy wherever they live, and a node that cannot answer never holds up a
login (node/presence.py).

One cluster serves the module: each test has a uid of its own, and the one that pauses a node
comes last and resumes it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager

import pytest
import trio

from client.wkproto import WKClient, open_client
from proto.wkproto import ReasonCode
from tests.conftest import Cluster

TOKEN = "tok"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("presence"), 3, devices__web_limit=2)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def login(
    cluster: Cluster, node: int, uid: str, *, device_flag: int = 0, device_id: str | None = None
) -> AbstractAsyncContextManager[WKClient]:
    host, port = cluster.tcp(node)
    return open_client(
        host, port, uid=uid, token=TOKEN, device_flag=device_flag, device_id=device_id
    )


async def still_open(client: WKClient) -> None:
    await client.ping()
    assert not client.closed.is_set()


def test_a_second_app_login_on_another_node_kicks_the_first(cluster: Cluster) -> None:
    api = cluster.api(1)
    api.token("ann", TOKEN, device_flag=0)
    api.token("ann", TOKEN, device_flag=1)

    async def main() -> None:
        async with (
            login(cluster, 1, "ann", device_id="phone1") as phone1,
            login(cluster, 2, "ann", device_id="phone2") as phone2,
        ):
            await phone1.wait_closed(timeout_s=10)
            assert phone1.disconnect is not None
            assert phone1.disconnect.reason_code == ReasonCode.CONNECT_KICK
            await still_open(phone2)
            # The same device reconnecting through another node replaces its old session
            # quietly (a dead socket of a client that moved), with no DISCONNECT.
            async with login(cluster, 3, "ann", device_id="phone2") as again:
                await phone2.wait_closed(timeout_s=10)
                assert phone2.disconnect is None
                await still_open(again)

    trio.run(main)


def test_the_web_limit_counts_sessions_on_every_node(cluster: Cluster) -> None:
    api = cluster.api(1)
    api.token("bea", TOKEN, device_flag=1)

    async def main() -> None:
        # The limit is 2 here: a third browser, on the third node, kicks the oldest only.
        async with (
            login(cluster, 1, "bea", device_flag=1) as web1,
            login(cluster, 2, "bea", device_flag=1) as web2,
            login(cluster, 3, "bea", device_flag=1) as web3,
        ):
            await web1.wait_closed(timeout_s=10)
            assert web1.disconnect is not None
            assert web1.disconnect.reason_code == ReasonCode.CONNECT_KICK
            await still_open(web2)
            await still_open(web3)

    trio.run(main)


def test_a_node_that_cannot_answer_does_not_hold_up_a_login(cluster: Cluster) -> None:
    api = cluster.api(1)
    api.token("cy", TOKEN, device_flag=0)
    # Pause a node that does not lead the uid's slot group: the token check of a login reads
    # from that leader, which is another matter than this policy.
    leader = cluster.leader_of_key("cy", via=1)
    paused = next(n for n in (3, 2, 1) if n != leader)
    old_node, new_node = (n for n in (1, 2, 3) if n != paused)

    async def main() -> None:
        async with login(cluster, old_node, "cy", device_id="old") as old:
            cluster.nodes[paused].pause()  # it can answer neither the session query nor a kick
            try:
                async with login(cluster, new_node, "cy", device_id="new") as new:
                    # The kick on the old node goes out once the paused node's answer has
                    # timed out; the login itself never waited for it.
                    await old.wait_closed(timeout_s=10)
                    assert old.disconnect is not None
                    assert old.disconnect.reason_code == ReasonCode.CONNECT_KICK
                    await still_open(new)
            finally:
                cluster.nodes[paused].resume()

    trio.run(main)
