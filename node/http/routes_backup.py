"""``/cluster/backup/*``: a replica's checkpoint, taken on the group's leader and read in
chunks by ``raftchat backup`` (``node/backup_checkpoints.py``; admin token, like every
``/cluster/*`` route).

* ``POST /cluster/backup/checkpoint`` {group}: read barrier, then a checkpoint at the applied
  index; answers its id, index, term and files (name, size, SHA-256);
* ``GET /cluster/backup/file?id=&name=&offset=``: at most ``CHUNK_BYTES`` of one of its files;
* ``POST /cluster/backup/release`` {id}: delete it.
"""

from __future__ import annotations

import trio

from cluster.placement import to_json

from ..backup_checkpoints import CHUNK_BYTES, BackupCheckpoints, BackupRefused, read_chunk
from ..groups.local import ProposalError
from .common import ApiContext, RouteTable
from .fields import get_int, get_str
from .server import ApiError, Request, Response, bad_request

_MAX_OFFSET_DIGITS = 18


def _checkpoints(ctx: ApiContext) -> BackupCheckpoints:
    if ctx.backups is None:
        raise ApiError(503, "this node takes no backup checkpoints")
    return ctx.backups


async def backup_checkpoint(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    group = get_int(body, "group", required=True, minimum=0, maximum=ctx.config.cluster.groups)
    local = ctx.router.local.get(group)
    if local is None or not local.is_leader():
        where = "has no replica of" if local is None else "does not lead"
        leader = ctx.router.leader_of(group)
        raise ApiError(
            409,
            f"node {ctx.config.node.id} {where} group {group}: take its checkpoint on "
            "the group's leader",
            leader=leader,
        )
    registry = _checkpoints(ctx)
    try:
        backup_id = registry.reserve()
    except BackupRefused as e:
        raise ApiError(e.status, str(e)) from None
    try:
        # Everything committed before this request is applied here, and this node led
        # the group when it was: the checkpoint below holds it.
        await local.read_barrier(ctx.config.cluster.proposal_timeout_s)
        term = local.view.term
        taken = await trio.to_thread.run_sync(registry.take, backup_id, group, term, local.store)
    except ProposalError as e:
        registry.abandon(backup_id)
        raise ApiError(503, f"group {group} could not confirm its leader here: {e}") from None
    except BackupRefused as e:
        raise ApiError(e.status, str(e)) from None
    except BaseException:
        registry.abandon(backup_id)
        if ctx.router.local.get(group) is not local:  # dropped here (its store closed)
            raise ApiError(503, f"this node's replica of group {group} is gone") from None
        raise
    answer = {
        "status": 200,
        "id": taken.id,
        "group": group,
        "index": taken.index,
        "term": taken.term,
        "node_id": ctx.config.node.id,
        "cluster_id": registry.cluster_id,
        "chunk_bytes": CHUNK_BYTES,
        "files": [e.to_json() for e in taken.files.values()],
    }
    if group == 0:
        answer["placement"] = to_json(ctx.router.placement)
    return Response(200, answer)


async def backup_file(ctx: ApiContext, req: Request) -> Response:
    backup_id = req.query.get("id", "")
    name = req.query.get("name", "")
    raw_offset = req.query.get("offset", "0")
    if not raw_offset.isdigit() or len(raw_offset) > _MAX_OFFSET_DIGITS:
        raise bad_request("offset must be a non-negative integer of at most 18 digits")
    try:
        path, entry = _checkpoints(ctx).find(backup_id, name)
        data = await trio.to_thread.run_sync(read_chunk, path, entry, int(raw_offset))
    except BackupRefused as e:
        raise ApiError(e.status, str(e)) from None
    except FileNotFoundError:
        raise ApiError(404, f"checkpoint {backup_id} was released meanwhile") from None
    headers = [("x-raftchat-file-size", str(entry.size))]
    return Response(200, data, headers, content_type="application/octet-stream")


async def backup_release(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    backup_id = get_str(body, "id", required=True)
    try:
        # Unlinking a large checkpoint's files is no job for the event loop.
        released = await trio.to_thread.run_sync(_checkpoints(ctx).release, backup_id)
    except BackupRefused as e:
        raise ApiError(e.status, str(e)) from None
    return Response(200, {"status": 200, "released": released})


ROUTES: RouteTable = (
    ("POST", "/cluster/backup/checkpoint", backup_checkpoint),
    ("GET", "/cluster/backup/file", backup_file),
    ("POST", "/cluster/backup/release", backup_release),
)
