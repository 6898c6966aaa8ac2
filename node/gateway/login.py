"""Whether a CONNECT may log in: the uid and device, then the user's token, read fresh from
the uid's slot group leader (so that a token set a moment ago counts), and a ban.

A ban is told only to whoever proved to be the user: it is checked after the token, so a
stranger cannot learn who is banned.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import Connect, DeviceFlag, ReasonCode

from ..channels import id_problem
from ..log import get_logger
from ..router import ClusterUnavailable
from ..usertokens import TokenKeys, Verdict

if TYPE_CHECKING:
    from .session import GatewayContext

log = get_logger("gateway")

CLIENT_DEVICE_FLAGS = {DeviceFlag.APP, DeviceFlag.WEB, DeviceFlag.PC}


@dataclass(frozen=True)
class Login:
    reason: ReasonCode
    level: int = 0
    """The device's level (master or slave) when admitted."""
    why: str = ""
    """For the log, when a token was refused."""


async def authenticate(
    ctx: GatewayContext, c: Connect, encrypts: bool, fields: dict[str, Any]
) -> Login:
    """The answer to CONNECT ``c`` (``fields``: the session's, for the log)."""
    problem = id_problem(c.uid)
    if problem is not None:
        log.info("bad uid in CONNECT", conn=fields.get("conn"), problem=problem)
        return Login(ReasonCode.AUTH_FAIL)
    if c.device_flag not in CLIENT_DEVICE_FLAGS:
        return Login(ReasonCode.AUTH_FAIL)
    if encrypts and not c.client_key:
        return Login(ReasonCode.CLIENT_KEY_IS_EMPTY)
    try:
        auth = await ctx.router.read(
            c.uid, {"q": "auth", "uid": c.uid, "device_flag": c.device_flag}
        )
    except ClusterUnavailable as e:
        log.warning("cannot check the token now", **fields, error=str(e))
        return Login(ReasonCode.SYSTEM_ERROR)
    banned = bool(auth["ban"])
    device = auth["device"]
    level = int(device["device_level"]) if device is not None else 0
    if not ctx.config.auth.token_auth:
        return _admitted(banned, level)
    keys = ctx.token_keys
    if keys is None:
        stored = (device or {}).get("token") or ""
        if not stored or not hmac.compare_digest(stored.encode(), c.token.encode()):
            return Login(ReasonCode.AUTH_FAIL)
        return _admitted(banned, level)
    checked = keys.check(device, c.token, int(time.time() * 1000))
    if checked.verdict is not Verdict.OK:
        why = checked.verdict.value
        if checked.unknown_key:
            why = "token sealed under a key this node lacks (old password?)"
        return Login(ReasonCode.AUTH_FAIL, why=why)
    if checked.rehash:
        ctx.nursery.start_soon(_rehash, ctx, keys, c, device)
    return _admitted(banned, level)


async def _rehash(ctx: GatewayContext, keys: TokenKeys, c: Connect, device: Any) -> None:
    """Seal a token that logged in under an old key (or from before hashes) under the current
    one. Best effort: the next login tries again."""
    op = pb.MetaOp(set_device=keys.rehash(c.uid, c.device_flag, device, c.token))
    try:
        await ctx.router.meta(c.uid, op)
    except Exception as e:
        log.info("could not re-seal a token under the current key", uid=c.uid, error=str(e))
    else:
        log.info("token re-sealed under the current key", uid=c.uid)


def _admitted(banned: bool, level: int) -> Login:
    """The answer to a CONNECT whose token checked out."""
    return Login(ReasonCode.BAN) if banned else Login(ReasonCode.SUCCESS, level)
