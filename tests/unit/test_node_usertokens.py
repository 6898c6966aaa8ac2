"""User tokens at rest (``node/usertokens.py``): sealed by the proposing node, checked by the
gateway node under the key they were sealed with, never stored or sent in the clear."""

from __future__ import annotations

import itertools
import json

from node.storage import DeviceRecord
from node.usertokens import Checked, TokenKey, TokenKeys, Verdict, record_of, still_the_same

NOW = 1_800_000_000_000


def stored(keys: TokenKeys, token: str, expires_at_ms: int = 0) -> dict[str, object]:
    """What the auth read gives the gateway node for a token set through ``keys``."""
    return record_of(keys.seal("u", 0, token, 1, expires_at_ms)).to_json()


def test_the_token_is_in_neither_the_change_nor_the_record() -> None:
    keys = TokenKeys(["pw"])
    token = "the-user-token-0123456789"
    op = keys.seal("u", 0, token, 1)
    assert op.token == "" and token.encode() not in op.SerializeToString()
    record = record_of(op)
    assert token.encode() not in record.encode()
    assert DeviceRecord.decode(record.encode()) == record
    # A random salt per seal: equal tokens give unrelated hashes.
    assert keys.seal("u", 0, token, 1).token_mac != op.token_mac


def test_keys_are_derived_from_the_secret_and_named_by_an_id() -> None:
    a, b = TokenKey.derive("password-a"), TokenKey.derive("password-b")
    assert a == TokenKey.derive("password-a")  # every node derives the same
    assert a.key_id != b.key_id and a.key != b.key
    assert "password" not in repr(a) and a.key.hex() not in repr(a)


def test_a_token_logs_in_under_its_key_and_is_resealed_when_that_key_is_old() -> None:
    old = TokenKeys(["old-pw"])
    rotating = TokenKeys(["new-pw", "old-pw"])
    after = TokenKeys(["new-pw"])
    device = stored(old, "t1")
    assert rotating.check(device, "t1", NOW) == Checked(Verdict.OK, rehash=True)
    assert rotating.check(device, "t2", NOW).verdict is Verdict.WRONG
    # Once the old password is gone, its hashes no longer log in (the app sets them again).
    assert after.check(device, "t1", NOW) == Checked(Verdict.WRONG, unknown_key=True)
    assert rotating.check(stored(rotating, "t1"), "t1", NOW) == Checked(Verdict.OK)


def test_expiry_is_checked_on_the_gateway_clock() -> None:
    keys = TokenKeys(["pw"])
    device = stored(keys, "t1", expires_at_ms=NOW + 1000)
    assert keys.check(device, "t1", NOW + 999) == Checked(Verdict.OK)
    assert keys.check(device, "t1", NOW + 1000).verdict is Verdict.EXPIRED
    assert keys.check(device, "wrong", NOW + 5000).verdict is Verdict.WRONG
    assert keys.check(stored(keys, "t1"), "t1", 2**62) == Checked(Verdict.OK)  # 0: never


def test_records_without_a_hash_are_plain_text_from_before_hashes() -> None:
    keys = TokenKeys(["pw"])
    legacy = DeviceRecord.decode(json.dumps({"token": "plain", "device_level": 0}).encode())
    assert legacy.mac == "" and legacy.expires_at_ms == 0
    assert keys.check(legacy.to_json(), "plain", NOW) == Checked(Verdict.OK, rehash=True)
    assert keys.check(legacy.to_json(), "plai", NOW).verdict is Verdict.WRONG
    # A blanked token (device quit) and a missing record never log in, not even with "".
    blank = DeviceRecord("", 1).to_json()
    assert keys.check(blank, "", NOW).verdict is Verdict.WRONG
    assert keys.check(None, "", NOW).verdict is Verdict.WRONG
    assert keys.seal("u", 0, "", 1).token_mac == b""


def test_a_damaged_record_does_not_log_in() -> None:
    keys = TokenKeys(["pw"])
    device = stored(keys, "t1")
    for broken in ({"salt": "zz"}, {"mac": "not hex"}, {"salt": None}):
        assert keys.check({**device, **broken}, "t1", NOW).verdict is Verdict.WRONG


def test_the_rehash_condition_needs_no_key() -> None:
    counter = itertools.count()
    keys = TokenKeys(["pw"], random_bytes=lambda n: bytes([next(counter) % 256]) * n)
    sealed = record_of(keys.seal("u", 0, "t1", 1))
    op = keys.rehash("u", 0, sealed.to_json(), "t1")
    assert still_the_same(sealed, op.replaces)
    assert not still_the_same(record_of(keys.seal("u", 0, "t1", 1)), op.replaces)
    assert not still_the_same(None, op.replaces)
    plain = DeviceRecord("legacy", 0)
    op = keys.rehash("u", 0, plain.to_json(), "legacy")
    assert b"legacy" not in op.replaces  # a salted digest, not the token
    assert still_the_same(plain, op.replaces)
    assert not still_the_same(DeviceRecord("other", 0), op.replaces)
    assert not still_the_same(plain, b"plain:short")
