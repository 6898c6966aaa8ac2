"""A committed message as the RECV frame one session sees; pure."""

from __future__ import annotations

from proto.wkproto import HeaderFlag, Recv, Setting
from proto.wkproto.crypto import SessionCipher, recv_sign

from ..channels import view_channel_id
from ..pipeline_rules import SYSTEM_UID
from ..storage import MessageRecord


def recv_frame(msg: MessageRecord, uid: str, cipher: SessionCipher | None) -> Recv:
    """``msg`` in the view of ``uid``'s session, encrypted with ``cipher`` when it has one."""
    channel_id = view_channel_id(msg.channel_id, msg.channel_type, uid)
    from_uid = "" if msg.from_uid == SYSTEM_UID else msg.from_uid
    flags = msg.flags
    if msg.from_uid == uid:
        flags &= ~HeaderFlag.RED_DOT  # the sender's own devices show no badge for it
    setting = msg.setting
    if not msg.stream_no:
        # Stream fields follow this bit on 2 <= version < 5, and SDK 1.0.4 reads a different
        # bit for them: never announce fields that carry nothing.
        setting &= ~Setting.STREAM
    payload = msg.payload
    msg_key = ""
    if cipher is not None:
        # Every RECV is encrypted for an encrypted session, whatever the sender's setting:
        # the official JS SDK drops clear RECVs as illegal.
        payload = cipher.encrypt(payload)
        msg_key = cipher.msg_key(
            recv_sign(
                msg.message_id,
                msg.message_seq,
                msg.client_msg_no,
                msg.timestamp_s,
                from_uid,
                channel_id,
                msg.channel_type,
                payload,
            )
        )
    return Recv(
        setting=setting,
        msg_key=msg_key,
        from_uid=from_uid,
        channel_id=channel_id,
        channel_type=msg.channel_type,
        client_msg_no=msg.client_msg_no,
        message_id=msg.message_id,
        message_seq=msg.message_seq,
        timestamp=msg.timestamp_s,
        payload=payload,
        expire=msg.expire,
        topic=msg.topic,
        stream_no=msg.stream_no,
        flags=flags,
    )
