"""A SEND frame read into the admission path's ``Draft``, and its SENDACK.

What is WKProto's own stays here: the payload of an encrypted session is checked against its
``msgKey`` and decrypted before any other check (``send_admission.py`` runs those).
"""

from __future__ import annotations

import hmac

from proto.wkproto import CryptoError, ReasonCode, Send, Sendack, Setting
from proto.wkproto.crypto import SessionCipher, send_sign

from ..send_admission import Draft, Refusal


def open_payload(s: Send, cipher: SessionCipher | None) -> bytes | Refusal:
    """The SEND's payload in clear: as sent, or decrypted for an encrypted session (unless the
    frame says ``NO_ENCRYPT``) once its ``msgKey`` matched."""
    if cipher is None or s.setting & Setting.NO_ENCRYPT:
        return s.payload
    sign = send_sign(s.client_seq, s.client_msg_no, s.channel_id, s.channel_type, s.payload)
    if not hmac.compare_digest(cipher.msg_key(sign).encode(), s.msg_key.encode()):
        return Refusal(ReasonCode.MSG_KEY_ERROR, "SEND with a bad msgKey", malformed=True)
    try:
        return cipher.decrypt(s.payload)
    except CryptoError as e:
        message = f"SEND payload does not decrypt: {e}"
        return Refusal(ReasonCode.PAYLOAD_DECODE_ERROR, message, malformed=True)


def draft_of(s: Send, uid: str, conn_id: int, payload: bytes) -> Draft:
    return Draft(
        from_uid=uid,
        channel_id=s.channel_id,
        channel_type=s.channel_type,
        payload=payload,
        client_msg_no=s.client_msg_no,
        setting=s.setting & ~Setting.NO_ENCRYPT,  # the stored message is in clear
        flags=s.flags,
        expire=s.expire,
        topic=s.topic,
        stream_no=s.stream_no,
        origin_conn=conn_id,
    )


def sendack(s: Send, reason: int, message_id: int = 0, message_seq: int = 0) -> Sendack:
    return Sendack(
        message_id=message_id,
        client_seq=s.client_seq,
        message_seq=message_seq,
        reason_code=reason,
        client_msg_no=s.client_msg_no,
        flags=s.flags,
    )
