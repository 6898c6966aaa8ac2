"""Numbers fixed by the WKProto wire protocol (WuKongIM GoProto), kept by value."""

from __future__ import annotations

from enum import IntEnum, IntFlag

LATEST_VERSION = 6
"""Highest protocol version we speak; sessions run at ``min(client_version, LATEST_VERSION)``."""

MAX_REMAINING_LENGTH = 1 << 20
"""A frame body above 1 MiB is refused, as in GoProto's ``MaxRemaingLength``."""

MAX_STRING_LENGTH = 0x7FFF
"""Strings carry a signed 16-bit length on the wire, so 32 767 bytes is the most a string holds."""


class FrameType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    SEND = 3
    SENDACK = 4
    RECV = 5
    RECVACK = 6
    PING = 7
    PONG = 8
    DISCONNECT = 9
    SUB = 10
    SUBACK = 11
    EVENT = 12


class HeaderFlag(IntFlag):
    """Low nibble of the first byte. CONNACK reuses bit 0 as HAS_SERVER_VERSION."""

    NONE = 0
    NO_PERSIST = 0x01
    RED_DOT = 0x02
    SYNC_ONCE = 0x04
    DUP = 0x08


HAS_SERVER_VERSION = 0x01


class Setting(IntFlag):
    """The setting byte of SEND, RECV and SUB."""

    NONE = 0
    STREAM = 0x02
    TOPIC = 0x08
    NO_ENCRYPT = 0x10
    SIGNAL = 0x20
    RECEIPT = 0x80


class ReasonCode(IntEnum):
    UNKNOWN = 0
    SUCCESS = 1
    AUTH_FAIL = 2
    SUBSCRIBER_NOT_EXIST = 3
    IN_BLACKLIST = 4
    CHANNEL_NOT_EXIST = 5
    USER_NOT_ON_NODE = 6
    SENDER_OFFLINE = 7
    MSG_KEY_ERROR = 8
    PAYLOAD_DECODE_ERROR = 9
    FORWARD_SEND_PACKET_ERROR = 10
    NOT_ALLOW_SEND = 11
    CONNECT_KICK = 12
    NOT_IN_WHITELIST = 13
    QUERY_TOKEN_ERROR = 14
    SYSTEM_ERROR = 15
    CHANNEL_ID_ERROR = 16
    NODE_MATCH_ERROR = 17
    NODE_NOT_MATCH = 18
    BAN = 19
    NOT_SUPPORT_HEADER = 20
    CLIENT_KEY_IS_EMPTY = 21
    RATE_LIMIT = 22
    NOT_SUPPORT_CHANNEL_TYPE = 23
    DISBAND = 24
    SEND_BAN = 25
    CHANNEL_DELETING = 26
    PROTOCOL_UPGRADE_REQUIRED = 27
    IDEMPOTENCY_CONFLICT = 28
    MESSAGE_SEQ_EXHAUSTED = 29


class DeviceFlag(IntEnum):
    APP = 0
    WEB = 1
    PC = 2
    SYSTEM = 99


class DeviceLevel(IntEnum):
    SLAVE = 0
    MASTER = 1


class ChannelType(IntEnum):
    PERSON = 1
    GROUP = 2
    CUSTOMER_SERVICE = 3
    COMMUNITY = 4
    COMMUNITY_TOPIC = 5
    INFO = 6
    DATA = 7
    TEMP = 8
    LIVE = 9
    VISITORS = 10
    AGENT = 11
    AGENT_GROUP = 12
