"""Rules a send must pass, as pure functions: field limits.

Admission (``send_admission.py``, for the gateway and the HTTP API) calls ``request_problem``
first to answer precisely; the slot group's state machine applies it again at commit, where it
is authoritative. The send permissions are in ``groups/permissions.py`` (apply) and
``send_checks.py`` (proposing node).
"""

from __future__ import annotations

from proto.wkproto import ChannelType

from .channels import MAX_ID_BYTES, id_problem

SYSTEM_UID = "____system"
"""The sender of HTTP sends without ``from_uid``; recipients see an empty ``from_uid``."""

MAX_CLIENT_MSG_NO_BYTES = 128
MAX_TOPIC_BYTES = 255
MAX_STREAM_NO_BYTES = 128


def request_problem(
    client_msg_no: str, topic: str, stream_no: str, channel_id: str, from_uid: str, expire: int = 0
) -> str | None:
    """Why a send cannot be stored as given, or ``None``."""
    for name, value, limit in (
        ("client_msg_no", client_msg_no, MAX_CLIENT_MSG_NO_BYTES),
        ("topic", topic, MAX_TOPIC_BYTES),
        ("stream_no", stream_no, MAX_STREAM_NO_BYTES),
        ("channel_id", channel_id, 2 * MAX_ID_BYTES + 1),
        ("from_uid", from_uid, MAX_ID_BYTES),
    ):
        if len(value.encode()) > limit:
            return f"{name} is longer than {limit} bytes"
    if not 0 <= expire <= 0xFFFFFFFF:
        return "expire must fit 32 bits"
    return None


def person_channel_problem(channel_id: str, channel_type: int, from_uid: str) -> str | None:
    """Why a send cannot be stored in this person channel: the id must name two valid uids,
    the sender one of them or the API's own system sender (a revoke notice, say). Entry nodes
    only propose canonical such ids; apply checks the shape again, so that nothing downstream
    (conversations, delivery) meets another."""
    if channel_type != ChannelType.PERSON:
        return None
    a, sep, b = channel_id.partition("@")
    if not sep:
        return "a person channel id is uid@uid"
    for party in (a, b):
        problem = id_problem(party, "person channel party")
        if problem is not None:
            return problem
    if from_uid not in (a, b, SYSTEM_UID):
        return "the sender is not a party of this person channel"
    return None
