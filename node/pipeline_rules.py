"""Rules a send must pass, as pure functions: field limits and the send permissions.

The gateway and the HTTP API call ``request_problem`` first to answer precisely; the slot
group's state machine applies both again at commit, where they are authoritative.
"""

from __future__ import annotations

from proto.wkproto import ChannelType, ReasonCode

from .channels import MAX_ID_BYTES
from .storage import ChannelInfo

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


def send_permission(
    *,
    channel_type: int,
    from_uid: str,
    trusted: bool,
    info: ChannelInfo | None,
    is_subscriber: bool,
) -> ReasonCode:
    """The first-issue subset of WuKongIM's send checks (the full set is issue 5)."""
    if channel_type == ChannelType.PERSON:
        return ReasonCode.SUCCESS
    if channel_type not in (ChannelType.GROUP, ChannelType.LIVE):  # live: member-only, like groups
        return ReasonCode.NOT_SUPPORT_CHANNEL_TYPE
    if info is None and trusted:
        return ReasonCode.CHANNEL_NOT_EXIST
    if info is not None and info.ban and from_uid != SYSTEM_UID:
        return ReasonCode.BAN
    if info is not None and info.disband:
        return ReasonCode.DISBAND
    if trusted or from_uid == SYSTEM_UID:
        return ReasonCode.SUCCESS
    if not is_subscriber:
        # WuKongIM answers a send to a group that was never created the same way.
        return ReasonCode.SUBSCRIBER_NOT_EXIST
    return ReasonCode.SUCCESS
