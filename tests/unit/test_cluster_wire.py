"""Raft frame authentication (``cluster/raft/wire.py``): what a node accepts before unpickling."""

from __future__ import annotations

import pytest

from cluster.raft.wire import FrameAuthError, authenticator_for


def test_a_signed_frame_gives_back_its_data_and_timestamp() -> None:
    auth = authenticator_for("secret")
    token = auth.encrypt_at_time(b"pickled raft message", 1234)
    receiver = authenticator_for("secret")
    assert receiver.extract_timestamp(token) == 1234
    assert receiver.decrypt(token) == b"pickled raft message"


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: authenticator_for("other").encrypt_at_time(b"pickled raft message", 1234),
        lambda t: t[:-1] + bytes([t[-1] ^ 1]),  # MAC altered
        lambda t: t[:12] + bytes([t[12] ^ 1]) + t[13:],  # data altered
        lambda t: t[:1] + (4321).to_bytes(8, "big") + t[9:],  # timestamp altered
        lambda t: bytes([2]) + t[1:],  # unknown version
        lambda t: t[:40],  # too short for a MAC
        lambda t: b"",
    ],
)
def test_frames_not_signed_with_the_cluster_password_are_refused(forge: object) -> None:
    token = authenticator_for("secret").encrypt_at_time(b"pickled raft message", 1234)
    forged = forge(token)  # type: ignore[operator]
    receiver = authenticator_for("secret")
    with pytest.raises(FrameAuthError):
        receiver.extract_timestamp(forged)
    with pytest.raises(FrameAuthError):
        receiver.decrypt(forged)
