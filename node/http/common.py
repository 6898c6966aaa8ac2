"""What the HTTP route modules share: the context, field checks, envelopes and the way a
request reaches its slot group."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cluster.raft.conf import MAX_COMMAND_BYTES
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, HeaderFlag, ReasonCode

from ..admin import Admin
from ..backup_checkpoints import BackupCheckpoints
from ..channels import canonical_channel_id, channel_id_problem, id_problem, view_channel_id
from ..client_routes import ClientRoutes
from ..config import Config
from ..metrics import NodeMetrics
from ..pipeline_rules import SYSTEM_UID
from ..router import ClusterUnavailable, Router
from ..send_checks import SendRules
from ..sessions import SessionRegistry
from ..userfacts import UserFacts
from ..usertokens import TokenKeys
from .fields import get_int, get_str, get_str_list
from .server import ApiError, Handler, Request, Response, bad_request

if TYPE_CHECKING:
    from ..webhooks import Webhooks  # imports this module (message_resp)

CHANNEL_TYPES = {int(t) for t in ChannelType}
OK = {"status": 200}

MESSAGE_EXTRAS = ("revoke", "revoker", "edited", "edited_at", "event_meta")
"""Fields a presented message may carry beyond WuKongIM's ``MessageResp``."""

ContextHandler = Callable[["ApiContext", Request], Awaitable[Response]]
"""A route's handler: it gets the node's context with each request."""

RouteTable = Sequence[tuple[str, str, ContextHandler]]
"""A route module's ``ROUTES``: (method, path, handler); ``api.build_router`` serves them."""


@dataclass
class ApiContext:
    config: Config
    registry: SessionRegistry
    router: Router
    admin: Admin
    facts: UserFacts
    rules: SendRules
    webhooks: Webhooks | None = None
    client_routes: ClientRoutes | None = None
    token_keys: TokenKeys | None = None
    """Seals user tokens before they are proposed (``node/usertokens.py``)."""
    metrics: NodeMetrics | None = None
    """``/metrics``, ``/varz`` and ``/connz``; None in unit tests without a node."""
    backups: BackupCheckpoints | None = None
    """The checkpoints ``/cluster/backup/*`` hands out; None in unit tests without a node."""


def check_id(value: str, what: str) -> str:
    problem = id_problem(value, what)
    if problem is not None:
        raise bad_request(problem)
    return value


def uid_list(body: dict[str, Any], *, required: bool) -> list[str]:
    """The ``uids`` of a request body, each checked as a uid."""
    uids = get_str_list(body, "uids", required=required)
    for uid in uids:
        check_id(uid, "uids entry")
    return uids


def unavailable(e: ClusterUnavailable) -> ApiError:
    return ApiError(503, f"cluster cannot serve this now, retry: {e}", reason=int(e.reason))


def guard(handler: Handler) -> Handler:
    """Turn a cluster that cannot answer in time into HTTP 503 with the reason code."""

    async def wrapped(req: Request) -> Response:
        try:
            return await handler(req)
        except ClusterUnavailable as e:
            raise unavailable(e) from None

    return wrapped


def message_resp(m: dict[str, Any], login_uid: str) -> dict[str, Any]:
    """A stored message as WuKongIM's ``MessageResp``, with the channel id in the reader's
    view (a person channel appears under the peer's uid)."""
    flags = m["flags"]
    resp = {
        "header": {
            "no_persist": flags & HeaderFlag.NO_PERSIST and 1,
            "red_dot": 1 if flags & HeaderFlag.RED_DOT else 0,
            "sync_once": 1 if flags & HeaderFlag.SYNC_ONCE else 0,
        },
        "setting": m["setting"],
        "message_id": m["message_id"],
        "message_idstr": str(m["message_id"]),
        "client_msg_no": m["client_msg_no"],
        "message_seq": m["message_seq"],
        "from_uid": "" if m["from_uid"] == SYSTEM_UID else m["from_uid"],
        "channel_id": view_channel_id(m["channel_id"], m["channel_type"], login_uid),
        "channel_type": m["channel_type"],
        "topic": m["topic"],
        "expire": m["expire"],
        "timestamp": m["timestamp_ms"] // 1000,
        "payload": m["payload"],
    }
    # Message operations (groups/message_reads.present): tombstones and edits.
    for name in MESSAGE_EXTRAS:
        if name in m:
            resp[name] = m[name]
    return resp


def check_command_size(op: pb.MetaOp) -> None:
    """413 for a change that would not fit one Raft command."""
    size = op.ByteSize()
    if size > MAX_COMMAND_BYTES:
        raise ApiError(
            413,
            f"the change is too large for one request ({size} bytes, at most "
            f"{MAX_COMMAND_BYTES}): split it into several",
        )


async def meta(ctx: ApiContext, key: str, op: pb.MetaOp) -> pb.MetaResult:
    """Commit a metadata change in the slot group owning ``key``; errors become HTTP errors."""
    check_command_size(op)
    result = await ctx.router.meta(key, op)
    if result.reason == ReasonCode.CHANNEL_NOT_EXIST:
        raise ApiError(404, result.detail or "channel does not exist", reason=result.reason)
    if result.reason != ReasonCode.SUCCESS:
        raise ApiError(500, result.detail or "metadata change failed", reason=result.reason)
    return result


def person_or_channel(body: dict[str, Any], uid_field: str) -> tuple[str, str, int]:
    """(the requester's uid, canonical channel id, channel type) of a request body."""
    uid = get_str(body, uid_field)
    channel_id = get_str(body, "channel_id", required=True)
    channel_type = get_int(body, "channel_type", required=True, choices=CHANNEL_TYPES)
    try:
        problem = channel_id_problem(channel_id, channel_type)
        if problem is not None:
            raise bad_request(problem)
        if channel_type == ChannelType.PERSON and not uid:
            raise bad_request(f"{uid_field} is required for a person channel")
        canonical = canonical_channel_id(uid, channel_id, channel_type)
    except ValueError as e:
        raise bad_request(f"channel_id: {e}") from None
    return uid, canonical, channel_type
