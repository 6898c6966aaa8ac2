"""The webhook sender's pure parts, and its retry behaviour on trio's virtual clock with a fake
receiver (the real-socket behaviour is in tests/integration/test_webhooks.py)."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest
import trio
import trio.testing

from node.config_sections import WebhookSection
from node.sessions import DeviceLimits, SessionRegistry
from node.webhook_http import Target
from node.webhooks import (
    EVENT_ID_HEADER,
    BoundedQueue,
    Webhooks,
    backoff_delay,
    most_requests_within,
    nominal_delay,
    onlinestatus_line,
)


def test_nominal_delay_doubles_up_to_the_cap() -> None:
    assert [nominal_delay(n, 0.5, 30.0) for n in range(1, 9)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
    ]
    assert nominal_delay(10_000, 0.5, 30.0) == 30.0  # no overflow after a long outage


def test_backoff_jitter_stays_between_half_and_the_whole_nominal_delay() -> None:
    rng = random.Random(7)
    for failures in range(1, 12):
        nominal = nominal_delay(failures, 0.1, 5.0)
        samples = [backoff_delay(failures, 0.1, 5.0, rng) for _ in range(200)]
        assert all(nominal / 2 <= d <= nominal for d in samples)
        assert max(samples) - min(samples) > nominal / 4  # really jittered


def test_most_requests_within_follows_the_lower_bound_of_the_schedule() -> None:
    # Waits are at least 0.25, 0.5, 1, 2, 2, ... for base 0.5, cap 4.
    assert most_requests_within(0.0, 0.5, 4.0) == 1
    assert most_requests_within(0.25, 0.5, 4.0) == 2
    assert most_requests_within(1.74, 0.5, 4.0) == 3
    assert most_requests_within(1.75, 0.5, 4.0) == 4
    assert most_requests_within(1.75 + 2 * 10, 0.5, 4.0) == 14


def test_bounded_queue_drops_the_oldest_and_counts() -> None:
    q: BoundedQueue[int] = BoundedQueue(3)
    assert [q.push(i) for i in range(5)] == [False, False, False, True, True]
    assert q.dropped == 2 and len(q) == 3
    assert q.take(10) == [2, 3, 4]
    assert len(q) == 0 and q.take(1) == []


def test_onlinestatus_line_is_the_v2_format() -> None:
    assert onlinestatus_line("bob", 1, True, 42, 1, 3) == "bob-1-1-42-1-3"
    assert onlinestatus_line("bob", 0, False, 42, 0, 0) == "bob-0-0-42-0-0"


class FakeSession:
    def __init__(self, conn_id: int, uid: str, device_flag: int) -> None:
        self.conn_id = conn_id
        self.uid = uid
        self.device_flag = device_flag
        self.device_id = f"d{conn_id}"
        self.device_level = 0
        self.connected_at = float(conn_id)

    def push(self, msg: Any) -> None: ...
    def kick(self, reason_code: Any, reason: str) -> None: ...
    def close(self) -> None: ...


class Receiver:
    """A fake receiver: answers 500 to the first ``fail`` requests (all when None)."""

    def __init__(self, fail: int | None) -> None:
        self.fail = fail
        self.requests: list[tuple[float, str, dict[str, str], Any]] = []

    async def __call__(
        self,
        _target: Target,
        params: dict[str, str],
        body: bytes,
        headers: dict[str, str],
        _: float,
    ) -> int:
        self.requests.append((trio.current_time(), params["event"], headers, json.loads(body)))
        if self.fail is None or len(self.requests) <= self.fail:
            return 500
        return 200


def make(receiver: Receiver, **overrides: Any) -> tuple[Webhooks, SessionRegistry]:
    settings = WebhookSection(url="http://127.0.0.1:1/hook", backoff_base_s=1.0, backoff_cap_s=8.0)
    for k, v in overrides.items():
        setattr(settings, k, v)
    registry = SessionRegistry(DeviceLimits(app=5))

    async def nobody_online(uids: list[str]) -> set[str]:
        return set()

    hooks = Webhooks(settings, 1, registry, nobody_online, poster=receiver, rng=random.Random(3))
    registry.listeners.append(hooks.on_session)
    return hooks, registry


def run_virtual(main: Any) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_onlinestatus_batches_and_retries_with_the_same_event_id() -> None:
    receiver = Receiver(fail=3)

    async def main() -> None:
        hooks, registry = make(receiver)
        a, b = FakeSession(1, "bob", 0), FakeSession(2, "bob", 1)
        registry.add(a)
        registry.add(b)
        registry.remove(a)
        async with trio.open_nursery() as nursery:
            await nursery.start(hooks.run)
            while hooks.counters["user.onlinestatus"].sent_events == 0:
                await trio.sleep(0.5)
            nursery.cancel_scope.cancel()

    run_virtual(main)
    assert len(receiver.requests) == 4
    ids = {headers[EVENT_ID_HEADER] for _, _, headers, _ in receiver.requests}
    assert len(ids) == 1  # one event, four attempts, one id
    assert [h["X-Raftchat-Attempt"] for _, _, h, _ in receiver.requests] == ["1", "2", "3", "4"]
    # All three changes queued before the first attempt travel together.
    assert receiver.requests[-1][3] == ["bob-0-1-1-1-1", "bob-1-1-2-1-2", "bob-0-0-1-0-1"]
    # Waits between attempts follow the schedule (1, 2, 4 nominal, jittered down to half).
    times = [t for t, *_ in receiver.requests]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for n, gap in enumerate(gaps, start=1):
        assert nominal_delay(n, 1.0, 8.0) / 2 <= gap <= nominal_delay(n, 1.0, 8.0)


def test_a_failing_receiver_sees_one_request_at_a_time_backing_off_as_a_whole() -> None:
    receiver = Receiver(fail=None)

    async def main() -> None:
        hooks, registry = make(receiver, max_attempts=3, batch_size=1)
        for conn in range(1, 41):  # 40 events' worth of logins, one line per event
            registry.add(FakeSession(conn, f"u{conn}", 0))
        async with trio.open_nursery() as nursery:
            await nursery.start(hooks.run)
            await trio.sleep(120)
            nursery.cancel_scope.cancel()
        c = hooks.counters["user.onlinestatus"]
        assert c.failed_attempts == len(receiver.requests)
        assert c.dropped_events == len(receiver.requests) // 3
        assert c.sent_events == 0

    run_virtual(main)
    # Not 40 events x 3 attempts at once: the sender as a whole follows the backoff.
    elapsed = receiver.requests[-1][0] - receiver.requests[0][0]
    assert len(receiver.requests) <= most_requests_within(elapsed, 1.0, 8.0)
    assert len(receiver.requests) <= 2 + 120 / 4  # after the ramp, one per >= cap/2


def test_a_full_queue_drops_the_oldest_items() -> None:
    receiver = Receiver(fail=None)

    async def main() -> None:
        hooks, registry = make(receiver, queue_size=4)
        for conn in range(1, 11):
            registry.add(FakeSession(conn, f"u{conn}", 0))
        status = hooks.status()["events"]["user.onlinestatus"]
        assert status["queued"] == 4 and status["dropped_items"] == 6

    run_virtual(main)


def test_config_refuses_bad_webhook_settings() -> None:
    assert WebhookSection().problems() == []
    assert WebhookSection(url="ftp://x").problems() == [
        "webhook.url must start with http:// or https://"
    ]
    assert "unknown event 'msg.typo'" in " ".join(WebhookSection(events="msg.typo").problems())
    assert WebhookSection(backoff_base_s=2, backoff_cap_s=1).problems()
    assert WebhookSection(max_attempts=0).problems()


def test_target_keeps_the_urls_own_query() -> None:
    t = Target.parse("http://127.0.0.1:8080/hooks/im?key=abc")
    assert (t.host, t.port, t.https) == ("127.0.0.1", 8080, False)
    assert t.with_params(event="msg.notify") == "/hooks/im?key=abc&event=msg.notify"
    assert Target.parse("https://example.com").with_params(event="x") == "/?event=x"
    with pytest.raises(ValueError):
        Target.parse("not a url")


def test_a_raising_poster_is_a_failed_attempt_not_a_crash() -> None:
    calls: list[str] = []

    async def flaky(
        _target: Target, _p: dict[str, str], _b: bytes, headers: dict[str, str], _t: float
    ) -> int:
        calls.append(headers[EVENT_ID_HEADER])
        if len(calls) == 1:
            raise RuntimeError("a bug in the client")
        return 204

    async def main() -> None:
        hooks, registry = make(Receiver(fail=0))
        hooks._post = flaky
        registry.add(FakeSession(1, "bob", 0))
        async with trio.open_nursery() as nursery:
            await nursery.start(hooks.run)
            while hooks.counters["user.onlinestatus"].sent_events == 0:
                await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        assert hooks.counters["user.onlinestatus"].failed_attempts == 1

    run_virtual(main)
    assert len(calls) == 2 and calls[0] == calls[1]


def test_registry_listeners_see_logins_logouts_and_evictions_once() -> None:
    registry = SessionRegistry(DeviceLimits(app=1))
    seen: list[tuple[int, bool]] = []
    registry.listeners.append(lambda s, online: seen.append((s.conn_id, online)))
    old, new = FakeSession(1, "bob", 0), FakeSession(2, "bob", 0)
    registry.add(old)
    registry.add(new)  # over the APP limit: the old one is evicted
    registry.remove(old)  # its own close later finds it gone: no second logout
    registry.remove(new)
    assert seen == [(1, True), (1, False), (2, True), (2, False)]


def test_the_logged_url_carries_no_user_info_or_query() -> None:
    from node.webhooks import _shown

    url = "https://hook:s3cret@backend.example:8443/im/hook?key=s3cret#x"
    assert _shown(url) == "https://backend.example:8443/im/hook"
    assert _shown("http://10.0.0.5/hook") == "http://10.0.0.5/hook"
