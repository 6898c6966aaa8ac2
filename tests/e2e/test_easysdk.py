"""WuKongIM's EasySDK for Python (PyPI wukong-easy-sdk 0.1.0, unmodified) against a real node
over JSON-RPC: it follows the JS EasySDK 2.0.4 on the wire (text messages, base64 payloads,
UUID ids, ``ping`` requests, a ``recvack`` with ``header`` for every ``recv``) and checks the
server's answers strictly (an int ``reasonCode`` of 1, a ``result`` member in every response, a
``header`` object in every ``recv``). The JS EasySDK itself is not on the npm registry here.

Each test runs the SDK on its own asyncio loop; the node is a separate process.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from wukong_easy_sdk import (
    WKIM,
    AuthOptions,
    WKIMChannelType,
    WKIMDeviceFlag,
    WKIMError,
    WKIMEvent,
    WKIMOptions,
)

from launcher.devcluster import NodeProcess
from tests.conftest import Api, running_node

pytestmark = pytest.mark.e2e

# Heartbeats every 0.2 s, each to be answered within 0.5 s, so that a test sees several.
OPTIONS = WKIMOptions(ping_interval=0.2, pong_timeout=0.5, max_reconnect_attempts=0)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for the module's tests on defaults: each has users and channels of its own."""
    yield from running_node(tmp_path_factory.mktemp("easysdk"))


def sdk(node: NodeProcess, uid: str, flag: WKIMDeviceFlag = WKIMDeviceFlag.WEB) -> WKIM:
    return WKIM(node.endpoints["ws"], AuthOptions(uid, f"tok-{uid}", device_flag=flag), OPTIONS)


class Inbox:
    def __init__(self, im: WKIM) -> None:
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.errors: list[WKIMError] = []
        im.on(WKIMEvent.MESSAGE, self.messages.put_nowait)
        im.on(WKIMEvent.ERROR, self.errors.append)

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.messages.get(), 10)


def test_easysdk_users_message_each_other(node: NodeProcess, api: Api) -> None:
    api.token("ann", "tok-ann", device_flag=WKIMDeviceFlag.WEB)
    api.token("ben", "tok-ben", device_flag=WKIMDeviceFlag.DESKTOP)
    api.ok("/channel", {"channel_id": "club", "channel_type": 2, "subscribers": ["ann", "ben"]})

    async def main() -> None:
        async with sdk(node, "ann") as ann, sdk(node, "ben", WKIMDeviceFlag.DESKTOP) as ben:
            ann_in, ben_in = Inbox(ann), Inbox(ben)
            assert ann.is_connected and ben.is_connected
            to_ben = await ann.send("ben", WKIMChannelType.PERSON, {"type": 1, "content": "hi"})
            got = await ben_in.next()
            assert got["payload"] == {"type": 1, "content": "hi"}
            assert (got["fromUid"], got["channelId"], got["channelType"]) == ("ann", "ann", 1)
            assert got["messageId"] == to_ben["messageId"]
            assert got["messageSeq"] == to_ben["messageSeq"] == 1
            to_club = await ben.send("club", WKIMChannelType.GROUP, {"type": 1, "content": "all"})
            got = await ann_in.next()
            assert (got["channelId"], got["fromUid"]) == ("club", "ben")
            assert got["payload"] == {"type": 1, "content": "all"}
            assert got["messageId"] == to_club["messageId"]
            await ann.ping()
            await asyncio.sleep(1.5)  # heartbeats, each answered within its 0.5 s
            assert ann.is_connected and ben.is_connected
            assert not ann_in.errors and not ben_in.errors

    asyncio.run(main())
    # The SDK sent the payload as base64 of JSON text; the server stored the text itself.
    page = api.ok(
        "/channel/messagesync",
        {"login_uid": "ann", "channel_id": "club", "channel_type": 2, "limit": 10},
    )
    stored = base64.b64decode(page["messages"][0]["payload"])
    assert json.loads(stored) == {"type": 1, "content": "all"}


def test_easysdk_bad_token_is_refused_with_its_reason_code(node: NodeProcess, api: Api) -> None:
    api.token("cal", "the-real-one", device_flag=WKIMDeviceFlag.WEB)

    async def main() -> None:
        im = WKIM(
            node.endpoints["ws"],
            AuthOptions("cal", "wrong", device_flag=WKIMDeviceFlag.WEB),
            OPTIONS,
        )
        with pytest.raises(WKIMError) as info:
            await im.connect()
        assert info.value.code == 2  # AuthFail, passed through from WKProto
        await im.destroy()

    asyncio.run(main())
