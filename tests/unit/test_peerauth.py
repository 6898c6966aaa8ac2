"""The per-call peer credential (``cluster/peerauth.py``) on a fake clock: what passes, what is
refused and why, and how the nonce memory stays bounded."""

from __future__ import annotations

import pytest

from cluster.peerauth import (
    NonceMemory,
    PeerKeys,
    PeerVerifier,
    body_digest,
    parse,
    peer_key,
    recipient_of,
    sign,
)

KEYS = PeerKeys.of("cluster-secret")
DELIVER = "/raftchat.peer.v1.Peer/Deliver"
BODY = b"\x0a\x03abc"
ME = "10.0.0.1"
"""The node under test: calls to it name this recipient."""


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(clock: Clock, keys: PeerKeys = KEYS, **kw: int) -> PeerVerifier:
    """A verifier of node ``ME`` that started an hour before ``clock``'s time."""
    started = clock.now - 3600
    return PeerVerifier(keys, names=[ME], clock=clock, not_before=started, **kw)  # type: ignore[arg-type]


def test_a_signed_call_passes_once() -> None:
    clock = Clock()
    v = verifier(clock)
    value = sign(KEYS, DELIVER, BODY, to=ME, now=clock.now)
    assert v.verify(DELIVER, value, body_digest(BODY)) is None
    # The same metadata again, a second later: a replay within the window.
    clock.now += 1
    assert v.verify(DELIVER, value, body_digest(BODY)) == "replayed call (nonce already seen)"
    # Bytes as gRPC hands them over pass too.
    fresh = sign(KEYS, DELIVER, BODY, to=ME, now=clock.now)
    assert v.verify(DELIVER, fresh.encode(), body_digest(BODY)) is None


@pytest.mark.parametrize("skew", [-30.001, 30.001, -3600.0, 86_400.0])
def test_a_call_outside_the_window_is_refused_and_remembers_nothing(skew: float) -> None:
    clock = Clock()
    v = verifier(clock)
    value = sign(KEYS, DELIVER, BODY, to=ME, now=clock.now + skew)
    problem = v.verify(DELIVER, value, body_digest(BODY))
    assert problem is not None and "window" in problem
    assert ("ahead of" in problem) == (skew > 0)
    assert len(v.nonces) == 0


@pytest.mark.parametrize("skew", [-30.0, -29.9, 0.0, 29.9, 30.0])
def test_a_call_within_the_window_passes(skew: float) -> None:
    clock = Clock()
    assert (
        verifier(clock).verify(
            DELIVER, sign(KEYS, DELIVER, BODY, to=ME, now=clock.now + skew), body_digest(BODY)
        )
        is None
    )


def test_a_replay_after_the_window_is_refused_as_stale() -> None:
    """The nonce is forgotten once its call's time has left the window; the time check then
    refuses the replay."""
    clock = Clock()
    v = verifier(clock)
    value = sign(KEYS, DELIVER, BODY, to=ME, now=clock.now)
    assert v.verify(DELIVER, value, body_digest(BODY)) is None
    clock.now += 31
    # Another call sweeps the memory: the first nonce is gone from it.
    assert (
        v.verify(DELIVER, sign(KEYS, DELIVER, BODY, to=ME, now=clock.now), body_digest(BODY))
        is None
    )
    assert len(v.nonces) == 1
    problem = v.verify(DELIVER, value, body_digest(BODY))
    assert problem is not None and "31.0 s behind" in problem


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("/raftchat.peer.v1.Peer/Kick", BODY),  # another method
        (DELIVER, BODY + b"\x00"),  # a byte more
        (DELIVER, b"\x0a\x03abd"),  # a byte changed
        (DELIVER, b""),
    ],
)
def test_another_method_or_body_fails_the_mac(method: str, body: bytes) -> None:
    clock = Clock()
    v = verifier(clock)
    value = sign(KEYS, DELIVER, BODY, to=ME, now=clock.now)
    problem = v.verify(method, value, body_digest(body))
    assert problem is not None and problem.startswith("wrong peer credential")
    assert len(v.nonces) == 0  # nothing unauthenticated is remembered
    assert v.verify(DELIVER, value, body_digest(BODY)) is None  # the original still passes


def test_altered_time_or_nonce_fails_the_mac() -> None:
    clock = Clock()
    v = verifier(clock)
    version, t, nonce, tag, to = sign(KEYS, DELIVER, BODY, to=ME, now=clock.now).split(".", 4)
    other_nonce = ("0" if nonce[0] != "0" else "1") + nonce[1:]
    for forged in (
        f"{version}.{int(t) + 1}.{nonce}.{tag}.{to}",
        f"{version}.{t}.{other_nonce}.{tag}.{to}",
        f"{version}.{t}.{nonce}.{tag}.10.0.0.2",  # the recipient changed
    ):
        problem = v.verify(DELIVER, forged, body_digest(BODY))
        assert problem is not None and problem.startswith("wrong peer credential")


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "v1",
        "v2.1.00112233445566778899aabbccddeeff." + "0" * 64 + ".10.0.0.1",
        "v1.-1.00112233445566778899aabbccddeeff." + "0" * 64 + ".10.0.0.1",
        "v1.1.0011." + "0" * 64 + ".10.0.0.1",
        "v1.1.zz112233445566778899aabbccddeeff." + "0" * 64 + ".10.0.0.1",
        "v1.1.00112233445566778899aabbccddeeff." + "0" * 63 + ".10.0.0.1",
        "v1.1.00112233445566778899aabbccddeeff." + "g" * 64 + ".10.0.0.1",
        "v1.１.00112233445566778899aabbccddeeff." + "0" * 64 + ".10.0.0.1",  # a non-ASCII digit
        "v1." + "9" * 400 + ".00112233445566778899aabbccddeeff." + "0" * 64 + ".10.0.0.1",
        # No recipient; an empty one; one not ASCII, not printable, too long.
        "v1.1.00112233445566778899aabbccddeeff." + "0" * 64,
        "v1.1.00112233445566778899aabbccddeeff." + "0" * 64 + ".",
        "v1.1.00112233445566778899aabbccddeeff." + "0" * 64 + ".nöde",
        "v1.1.00112233445566778899aabbccddeeff." + "0" * 64 + ".a\nb",
        "v1.1.00112233445566778899aabbccddeeff." + "0" * 64 + "." + "a" * 256,
        b"\xff\xfe",
        # The static token of earlier versions (an HMAC of the password, 64 hex digits).
        "5" * 64,
    ],
)
def test_malformed_credentials_are_refused(value: str | bytes | None) -> None:
    problem = verifier(Clock()).verify(DELIVER, value, body_digest(BODY))
    assert problem in ("no peer credential", "malformed peer credential")


def test_the_accepted_password_passes_but_never_signs() -> None:
    """While the password changes, a node signs with ``password`` and accepts both."""
    clock = Clock()
    old, new = PeerKeys.of("old-secret"), PeerKeys.of("new-secret")
    changing = PeerKeys.of("new-secret", ["old-secret"])
    v = verifier(clock, changing)
    for keys in (old, new, changing):
        assert (
            v.verify(DELIVER, sign(keys, DELIVER, BODY, to=ME, now=clock.now), body_digest(BODY))
            is None
        )
    # It signs with the new one: a node that has only the old one refuses it.
    value = sign(changing, DELIVER, BODY, to=ME, now=clock.now)
    assert verifier(clock, old).verify(DELIVER, value, body_digest(BODY)) is not None
    assert verifier(clock, new).verify(DELIVER, value, body_digest(BODY)) is None
    other = PeerKeys.of("another-secret")
    assert (
        v.verify(DELIVER, sign(other, DELIVER, BODY, to=ME, now=clock.now), body_digest(BODY))
        is not None
    )


def test_a_call_addressed_to_another_node_is_refused_and_remembers_nothing() -> None:
    """A call captured on its way to node 10.0.0.2 and played to this node, which has never
    seen its nonce: the recipient is not this node. The MAC covers the recipient, so it
    cannot be rewritten either (``test_altered_time_or_nonce_fails_the_mac``)."""
    clock = Clock()
    v = verifier(clock)
    value = sign(KEYS, DELIVER, BODY, to="10.0.0.2", now=clock.now)
    assert v.verify(DELIVER, value, body_digest(BODY)) == (
        "call addressed to 10.0.0.2, not this node (10.0.0.1)"
    )
    assert len(v.nonces) == 0
    # A node may answer to several names; a wildcard-bound one (no names) to any.
    both = PeerVerifier(KEYS, names=["10.0.0.2", "Node1.Example"], clock=clock)
    assert both.verify(DELIVER, value, body_digest(BODY)) is None
    named = sign(KEYS, DELIVER, BODY, to="node1.example", now=clock.now)
    assert both.verify(DELIVER, named, body_digest(BODY)) is None
    anyone = PeerVerifier(KEYS, clock=clock)
    assert (
        anyone.verify(DELIVER, sign(KEYS, DELIVER, BODY, to="x", now=clock.now), body_digest(BODY))
        is None
    )


@pytest.mark.parametrize(
    ("to", "passes"),
    [("127.0.0.1", True), ("127.0.3.104", True), ("::1", True), ("10.0.0.1", False)],
)
def test_on_loopback_any_loopback_recipient_matches(to: str, passes: bool) -> None:
    """Nodes on one machine (``raftchat dev``, the tests) reach each other over loopback,
    which no network attacker sees; there, a loopback recipient matches any loopback name."""
    clock = Clock()
    v = PeerVerifier(KEYS, names=["127.0.3.101"], clock=clock)
    problem = v.verify(DELIVER, sign(KEYS, DELIVER, BODY, to=to, now=clock.now), body_digest(BODY))
    assert (problem is None) == passes, problem


@pytest.mark.parametrize(
    ("target", "recipient"),
    [
        ("10.0.0.1:11110", "10.0.0.1"),
        ("Node1.Example:11110", "node1.example"),
        ("[fd00::1]:11110", "fd00::1"),
        ("127.0.0.1:0", "127.0.0.1"),
    ],
)
def test_the_recipient_of_a_target_is_its_host(target: str, recipient: str) -> None:
    assert recipient_of(target) == recipient


@pytest.mark.parametrize("to", ["", "a b\n", "nöde", "a" * 256])
def test_sign_refuses_what_is_not_a_recipient(to: str) -> None:
    with pytest.raises(ValueError):
        sign(KEYS, DELIVER, BODY, to=to)


def test_a_call_stamped_before_the_node_started_is_refused() -> None:
    """A call accepted just before a restart, played to the restarted node (whose nonce
    memory is empty) within the window: refused for its time, not its nonce."""
    clock = Clock()
    before_restart = sign(KEYS, DELIVER, BODY, to=ME, now=clock.now)
    clock.now += 5
    restarted = PeerVerifier(KEYS, names=[ME], clock=clock)  # made at the start, as the node's
    problem = restarted.verify(DELIVER, before_restart, body_digest(BODY))
    assert problem is not None and "stamped before this node started" in problem
    assert len(restarted.nonces) == 0
    fresh = sign(KEYS, DELIVER, BODY, to=ME, now=clock.now)
    assert restarted.verify(DELIVER, fresh, body_digest(BODY)) is None


def test_keys_are_distinct_per_password_and_not_the_password() -> None:
    assert peer_key("a") != peer_key("b") and len(peer_key("a")) == 32
    assert PeerKeys.of("a", ["a", ""]).keys == (peer_key("a"),)
    with pytest.raises(ValueError):
        PeerKeys.of("")


def test_sign_carries_time_and_a_fresh_nonce() -> None:
    a = parse(sign(KEYS, DELIVER, BODY, to=ME, now=12.3456))
    b = parse(sign(KEYS, DELIVER, BODY, to=ME, now=12.3456))
    assert a is not None and b is not None
    assert a.time_ms == 12345 and a.nonce != b.nonce and len(a.nonce) == 16


# ---- the nonce memory -------------------------------------------------------------------------


def nonce(i: int) -> bytes:
    return i.to_bytes(16, "big")


def test_nonces_expire_with_their_calls_time() -> None:
    memory = NonceMemory(window_ms=30_000, limit=100)
    assert memory.remember(nonce(1), 1_000, now_ms=1_000) is None
    assert memory.remember(nonce(2), 20_000, now_ms=20_000) is None
    assert memory.remember(nonce(1), 1_000, now_ms=25_000) is not None  # still remembered
    # 1 ms after its time has left the window, the next insertion sweeps it out.
    assert memory.remember(nonce(3), 31_001, now_ms=31_001) is None
    assert len(memory) == 2
    assert memory.horizon_ms == 1_000  # what expired is not taken again


def test_a_forgotten_call_stays_refused_when_the_clock_steps_back() -> None:
    """Expired nonces are dropped; should the clock then step back (an NTP correction), the
    dropped call is within the window again, but not new: it is refused."""
    memory = NonceMemory(window_ms=30_000, limit=100)
    assert memory.remember(nonce(1), 1_000, now_ms=1_000) is None
    assert memory.remember(nonce(2), 40_000, now_ms=40_000) is None  # sweeps nonce 1 out
    assert len(memory) == 1
    problem = memory.remember(nonce(1), 1_000, now_ms=20_000)  # the clock went back 20 s
    assert problem is not None


def test_a_full_memory_forgets_its_oldest_and_refuses_calls_it_could_not_tell_apart() -> None:
    """A flood of genuine calls: the memory stays at its limit, and the window honoured shrinks
    to what it remembers, so a replay of a forgotten call is still refused."""
    memory = NonceMemory(window_ms=30_000, limit=1000)
    for i in range(5000):  # 5,000 calls within one second
        assert memory.remember(nonce(i), 1_000_000 + i // 5, now_ms=1_000_000 + i // 5) is None
        assert len(memory) <= 1000
    assert len(memory) == 1000
    # Call 0 was forgotten early: its replay, fresh as it still is, cannot pass.
    problem = memory.remember(nonce(0), 1_000_000, now_ms=1_000_999)
    assert problem is not None and "too old" in problem
    # The forgotten calls are exactly those at or before the horizon.
    assert memory.horizon_ms == 1_000_000 + 3999 // 5
    # A call stamped after the horizon passes.
    assert memory.remember(nonce(10_000), memory.horizon_ms + 1, now_ms=1_001_000) is None


def test_memory_per_nonce_is_bounded() -> None:
    """What ``MAX_NONCES`` costs: about 125 bytes per remembered nonce (measured with
    tracemalloc: 262,144 nonces took 32.8 MB)."""
    import tracemalloc

    tracemalloc.start()
    try:
        memory = NonceMemory(window_ms=30_000, limit=1 << 14)
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1 << 14):
            memory.remember(nonce(i), 1_000 + i, now_ms=1_000 + i)
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / len(memory)
    finally:
        tracemalloc.stop()
    assert per_entry < 200


def test_a_reply_mac_is_bound_to_its_call_and_body() -> None:
    from cluster.peerauth import reply_matches, sign_reply

    nonce_hex = "ab" * 16
    tag = sign_reply(KEYS, DELIVER, nonce_hex, BODY)
    assert reply_matches(KEYS, DELIVER, nonce_hex, BODY, tag)
    assert not reply_matches(KEYS, DELIVER, "cd" * 16, BODY, tag)  # another call's reply
    assert not reply_matches(KEYS, "/raftchat.peer.v1.Peer/Kick", nonce_hex, BODY, tag)
    assert not reply_matches(KEYS, DELIVER, nonce_hex, BODY + b"x", tag)
    assert not reply_matches(KEYS, DELIVER, nonce_hex, BODY, None)
    assert not reply_matches(PeerKeys.of("another"), DELIVER, nonce_hex, BODY, tag)
    # During a password change the accepted key checks replies too.
    changing = PeerKeys.of("another", ["cluster-secret"])
    assert reply_matches(changing, DELIVER, nonce_hex, BODY, tag)
    # A request's MAC never passes for a reply: their first lines differ.
    request = parse(sign(KEYS, DELIVER, BODY, to=ME, nonce=bytes.fromhex(nonce_hex)))
    assert request is not None
    assert not reply_matches(KEYS, DELIVER, nonce_hex, BODY, request.tag)
