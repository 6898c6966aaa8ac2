"""The HTTP server's connection caps: per client address (IPv6 per /64) and in total."""

from __future__ import annotations

from node.http.admission import Admission, client_key


def test_per_address_cap_then_total_cap() -> None:
    a = Admission(max_total=3, max_per_client=2)
    assert a.admit("10.0.0.1") is None
    assert a.admit("10.0.0.1") is None
    why = a.admit("10.0.0.1")
    assert why is not None and "10.0.0.1" in why and "2 open" in why
    assert a.admit("10.0.0.2") is None  # another address still gets in
    why = a.admit("10.0.0.3")
    assert why is not None and "connection limit (3)" in why
    assert a.total == 3


def test_release_gives_the_slot_back() -> None:
    a = Admission(max_total=2, max_per_client=1)
    assert a.admit("x") is None
    assert a.admit("x") is not None  # a refusal takes no slot
    a.release("x")
    assert a.total == 0 and a.open_from("x") == 0
    assert a.admit("x") is None and a.admit("y") is None


def test_client_keys() -> None:
    assert client_key("127.0.0.5") == "127.0.0.5"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9")
    assert client_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert client_key("not-an-ip") == "not-an-ip"
