"""Webhooks end to end: a real node process POSTs to a real HTTP receiver running in the test
(a threading ``http.server`` on its own 127.1.x.y address)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import trio

from client.wkproto import open_client
from launcher.devcluster import NodeProcess
from node.webhooks import most_requests_within
from tests.conftest import Api, eventually, start_node

RECEIVER_PORT = 18080
_hosts = (f"127.1.{os.getpid() % 200}.{n}" for n in itertools.count(10))
_uids = itertools.count(1)


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_uids)}"


@dataclass
class Hit:
    at: float
    event: str
    event_id: str
    attempt: int
    body: Any
    status: int


class Receiver:
    """Records every POST; answers 500 to the first ``fail_first`` (or to all, ``always_fail``)."""

    def __init__(self, fail_first: int = 0, always_fail: bool = False) -> None:
        self.fail_first = fail_first
        self.always_fail = always_fail
        self.hits: list[Hit] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.changed:
                    failing = receiver.always_fail or len(receiver.hits) < receiver.fail_first
                    status = 500 if failing else 200
                    receiver.hits.append(
                        Hit(
                            at=time.monotonic(),
                            event=parse_qs(urlsplit(self.path).query)["event"][0],
                            event_id=self.headers["X-Raftchat-Event-Id"],
                            attempt=int(self.headers["X-Raftchat-Attempt"]),
                            body=json.loads(raw),
                            status=status,
                        )
                    )
                    receiver.changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.host = next(_hosts)
        self.server = ThreadingHTTPServer((self.host, RECEIVER_PORT), Handler)
        self.url = f"http://{self.host}:{RECEIVER_PORT}/hook?app=test"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, check: Callable[[list[Hit]], Any], timeout_s: float = 15.0) -> Any:
        """Block until ``check(hits)`` is truthy (re-checked on every POST); return its value."""
        with self.changed:
            result = self.changed.wait_for(lambda: check(self.hits), timeout_s)
            assert result, f"receiver did not see what was expected; got {self.hits}"
            return result

    def snapshot(self) -> list[Hit]:
        with self.changed:
            return list(self.hits)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def tcp(node: NodeProcess) -> tuple[str, int]:
    host, port = node.endpoints["tcp"].rsplit(":", 1)
    return host, int(port)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def notified(hits: list[Hit]) -> dict[int, list[tuple[Hit, dict[str, Any]]]]:
    """Successful msg.notify deliveries by message id."""
    out: dict[int, list[tuple[Hit, dict[str, Any]]]] = {}
    for h in hits:
        if h.event == "msg.notify" and h.status == 200:
            for m in h.body:
                out.setdefault(m["message_id"], []).append((h, m))
    return out


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, Receiver]]:
    receiver = Receiver()
    proc = start_node(tmp_path_factory.mktemp("hooked"), webhook__url=receiver.url)
    yield proc, receiver
    proc.stop()
    receiver.close()


def test_msg_notify_for_http_and_wkproto_sends(hooked: tuple[NodeProcess, Receiver]) -> None:
    node, receiver = hooked
    api = Api(node.endpoints["http"])
    alice, bob = fresh("alice"), fresh("bob")
    api.token(alice, "ta")
    api.token(bob, "tb")
    by_http = api.ok(
        "/message/send",
        {"from_uid": alice, "channel_id": bob, "channel_type": 1, "payload": b64(b"via http")},
    )

    async def send_over_wkproto() -> int:
        async with open_client(*tcp(node), uid=alice, token="ta") as client:
            result = await client.send(bob, 1, b"via wkproto")
            assert result.ok
            return result.message_id

    by_wk = trio.run(send_over_wkproto)
    ids = {by_http["message_id"], by_wk}
    found = receiver.wait_for(lambda hits: ids <= notified(hits).keys() and notified(hits))
    payloads = set()
    for message_id in ids:
        ((hit, message),) = found[message_id]  # exactly once
        assert hit.attempt == 1 and message["event_id"] == hit.event_id
        assert all(m["event_id"] == hit.event_id for m in hit.body)  # one id per POST
        assert message["from_uid"] == alice and message["channel_id"] == bob  # sender's view
        assert message["channel_type"] == 1 and message["message_seq"] >= 1
        payloads.add(base64.b64decode(message["payload"]))
    assert payloads == {b"via http", b"via wkproto"}
    event_ids = [h.event_id for h in receiver.snapshot()]
    assert len(event_ids) == len(set(event_ids))  # nothing failed, so no id repeats
    # The receiver records a POST before answering it; the sender counts it once answered.
    eventually(
        lambda: api.http.get("/webhook/status").json()["events"]["msg.notify"]["sent_items"] >= 2,
        what="the sender counting its deliveries",
    )


def test_msg_offline_names_recipients_without_a_master_device_online(
    hooked: tuple[NodeProcess, Receiver],
) -> None:
    node, receiver = hooked
    api = Api(node.endpoints["http"])
    alice, bob, carol, dave = fresh("alice"), fresh("bob"), fresh("carol"), fresh("dave")
    api.token(bob, "tb", device_flag=0, device_level=1)  # master APP, online
    api.token(dave, "td", device_flag=1, device_level=0)  # slave WEB only: offline for this event
    gid = fresh("g")
    api.ok(
        "/channel", {"channel_id": gid, "channel_type": 2, "subscribers": [alice, bob, carol, dave]}
    )

    async def main() -> tuple[int, int]:
        async with (
            open_client(*tcp(node), uid=bob, token="tb"),
            open_client(*tcp(node), uid=dave, token="td", device_flag=1),
        ):
            # HTTP sends answer after the leader ran the commit hooks, and presence lookups run
            # in commit order: when the second message's msg.offline arrives, the first one's
            # would have arrived before it.
            to_bob = await trio.to_thread.run_sync(
                lambda: api.ok(
                    "/message/send",
                    {"from_uid": alice, "channel_id": bob, "channel_type": 1, "payload": b64(b"1")},
                )
            )
            to_group = await trio.to_thread.run_sync(
                lambda: api.ok(
                    "/message/send",
                    {"from_uid": alice, "channel_id": gid, "channel_type": 2, "payload": b64(b"2")},
                )
            )
            await trio.to_thread.run_sync(
                lambda: receiver.wait_for(
                    lambda hits: any(
                        h.event == "msg.offline" and h.body["message_id"] == to_group["message_id"]
                        for h in hits
                    )
                )
            )
            return to_bob["message_id"], to_group["message_id"]

    to_bob_id, to_group_id = trio.run(main)
    offline = [h for h in receiver.snapshot() if h.event == "msg.offline"]
    mine = [h for h in offline if h.body["message_id"] in (to_bob_id, to_group_id)]
    assert len(mine) == 1, mine  # bob's master device was online: no event for the first one
    (hit,) = mine
    assert sorted(hit.body["to_uids"]) == sorted([carol, dave])  # not alice (sender) nor bob
    assert hit.body["event_id"] == hit.event_id
    assert hit.body["channel_id"] == gid and hit.body["from_uid"] == alice


def test_user_onlinestatus_on_connect_and_disconnect(hooked: tuple[NodeProcess, Receiver]) -> None:
    node, receiver = hooked
    api = Api(node.endpoints["http"])
    erin = fresh("erin")
    api.token(erin, "te", device_flag=1)

    def lines(hits: list[Hit]) -> list[list[str]]:
        return [
            line.split("-")
            for h in hits
            if h.event == "user.onlinestatus"
            for line in h.body
            if line.startswith(f"{erin}-")
        ]

    async def main() -> None:
        async with open_client(*tcp(node), uid=erin, token="te", device_flag=1):
            await trio.to_thread.run_sync(lambda: receiver.wait_for(lines))

    trio.run(main)
    found = receiver.wait_for(lambda hits: len(lines(hits)) >= 2 and lines(hits))
    (on_uid, on_flag, on, on_conn, *on_counts), (off_uid, off_flag, off, off_conn, *off_counts) = (
        found
    )
    assert (on_uid, on_flag, on, on_counts) == (erin, "1", "1", ["1", "1"])
    assert (off_uid, off_flag, off, off_counts) == (erin, "1", "0", ["0", "0"])
    assert on_conn == off_conn and int(on_conn) > 0


def test_a_receiver_failing_then_recovering_gets_the_same_event_id(tmp_path: Path) -> None:
    receiver = Receiver(fail_first=3)
    node = start_node(
        tmp_path,
        webhook__url=receiver.url,
        webhook__events="msg.notify",
        webhook__backoff_base_s=0.05,
        webhook__backoff_cap_s=0.2,
    )
    try:
        api = Api(node.endpoints["http"])
        sent = api.ok(
            "/message/send",
            {"from_uid": "u1", "channel_id": "u2", "channel_type": 1, "payload": b64(b"x")},
        )
        receiver.wait_for(lambda hits: any(h.status == 200 for h in hits))
        hits = receiver.snapshot()
        assert [h.status for h in hits] == [500, 500, 500, 200]
        assert [h.attempt for h in hits] == [1, 2, 3, 4]
        assert len({h.event_id for h in hits}) == 1
        assert all(h.body == hits[0].body for h in hits)
        assert [m["message_id"] for m in hits[0].body] == [sent["message_id"]]
        eventually(
            lambda: (
                api.http.get("/webhook/status").json()["events"]["msg.notify"]["sent_events"] == 1
            ),
            what="the sender counting its delivery",
        )
        status = api.http.get("/webhook/status").json()["events"]["msg.notify"]
        assert status["failed_attempts"] == 3 and status["dropped_events"] == 0
        assert status["queued"] == 0
    finally:
        node.stop()
        receiver.close()


def test_an_always_failing_receiver_gets_a_bounded_number_of_attempts(tmp_path: Path) -> None:
    base, cap, max_attempts = 0.05, 0.4, 3
    receiver = Receiver(always_fail=True)
    node = start_node(
        tmp_path,
        webhook__url=receiver.url,
        webhook__backoff_base_s=base,
        webhook__backoff_cap_s=cap,
        webhook__max_attempts=max_attempts,
    )
    try:
        api = Api(node.endpoints["http"])
        for i in range(5):  # msg.notify and msg.offline events for every one (nobody online)
            api.ok(
                "/message/send",
                {"from_uid": "s", "channel_id": f"r{i}", "channel_type": 1, "payload": b64(b"x")},
            )
        receiver.wait_for(lambda hits: len(hits) >= 10)
        hits = receiver.snapshot()
        # Each failure is followed by at least half its nominal backoff, whatever event comes
        # next; 50 ms covers the spread of arrival times against send times on loopback.
        elapsed = hits[-1].at - hits[0].at + 0.05
        assert len(hits) <= most_requests_within(elapsed, base, cap), (len(hits), elapsed)
        assert max(h.attempt for h in hits) <= max_attempts
        status = api.http.get("/webhook/status").json()
        assert status["consecutive_failures"] >= len(hits) - 1
        assert sum(e["dropped_events"] for e in status["events"].values()) >= 2
    finally:
        node.stop()
        receiver.close()
