"""The model's safety properties, read from the replicas' real RocksDB stores.

``check`` holds after every step of any schedule; ``check_settled`` adds what must hold once the
cluster healed and every replica applied the whole log.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from node.storage import Store
from proto.wkproto import ReasonCode

from .sim import CHANNELS_OF_GROUP, DEFINITE_FAILURES, PLACEMENT, Attempt, World

Logged = tuple[int, int, str, str, bytes]
"""(seq, message id, from_uid, client_msg_no, payload) of one stored message."""


@dataclass
class ReplicaView:
    node: int
    applied: int
    store: Store
    logs: dict[tuple[int, str], list[Logged]]
    _dump: dict[str, list[tuple[bytes, bytes]]] | None = None

    def dump(self) -> dict[str, list[tuple[bytes, bytes]]]:
        """Every key and value of every column family: byte-for-byte state comparison."""
        if self._dump is None:
            self._dump = {
                name: [(bytes(k), bytes(v)) for k, v in cf.items()]
                for name, cf in self.store._cf.items()
            }
        return self._dump


def _scan(store: Store, node: int, group: int) -> ReplicaView:
    """A replica's channel logs, checked on their own: seqs 1..head, unique ids that increase
    with the seqs, one seq per client_msg_no and the dedupe record that says so."""
    applied = store.applied_index()
    where = f"node {node} group {group} (applied {applied})"
    logs: dict[tuple[int, str], list[Logged]] = {}
    ids: set[int] = set()
    for ctype, cid in CHANNELS_OF_GROUP[group]:
        msgs = store.messages(ctype, cid, 0, 0, 1_000_000)
        head = store.head_seq(ctype, cid)
        seqs = [m.message_seq for m in msgs]
        assert seqs == list(range(1, head + 1)), f"{where}: {cid} seqs {seqs}, head {head}"
        mids = [m.message_id for m in msgs]
        assert mids == sorted(set(mids)), f"{where}: {cid} ids do not increase with seqs: {mids}"
        first_seq: dict[tuple[str, str], int] = {}
        for m in msgs:
            assert m.message_id not in ids, f"{where}: message id {m.message_id} twice"
            ids.add(m.message_id)
            key = (m.from_uid, m.client_msg_no)
            assert key not in first_seq, (
                f"{where}: client_msg_no {m.client_msg_no!r} of {m.from_uid} in {cid} at seqs "
                f"{first_seq.get(key)} and {m.message_seq}"
            )
            first_seq[key] = m.message_seq
            assert store.get_dedupe(ctype, cid, *key) == (m.message_id, m.message_seq), (
                f"{where}: dedupe record of {key} does not match seq {m.message_seq}"
            )
        logs[(ctype, cid)] = [
            (m.message_seq, m.message_id, m.from_uid, m.client_msg_no, m.payload) for m in msgs
        ]
    return ReplicaView(node, applied, store, logs)


def _view(world: World, node: int, group: int) -> ReplicaView:
    """``_scan``, again only once the replica applied more (every apply writes its index)."""
    store = world.disks[(node, group)].store
    cached = world.check_cache.get((node, group))
    if cached is None or cached.applied != store.applied_index():
        cached = world.check_cache[(node, group)] = _scan(store, node, group)
    return cached


def _check_origins(view: ReplicaView, group: int, origins: dict[bytes, Attempt]) -> None:
    """Every stored message is one a client sent (its payload names the attempt), and none
    was answered with a failure that promises nothing was committed."""
    where = f"node {view.node} group {group} (applied {view.applied})"
    for (ctype, cid), log in view.logs.items():
        for seq, _, from_uid, client_msg_no, payload in log:
            origin = origins.get(payload)
            assert origin is not None and origin.key == (ctype, cid, from_uid, client_msg_no), (
                f"{where}: {cid} seq {seq} holds {payload!r}, sent as "
                f"{origin.key if origin else 'nothing'}"
            )
            assert origin.reason not in DEFINITE_FAILURES, (
                f"{where}: attempt {origin.id} was answered {origin.reason} (nothing committed) "
                f"but is in {cid} at seq {seq}"
            )


def check(world: World) -> None:
    origins = {a.payload: a for a in world.attempts}
    # One client_msg_no, one seq: every success for it (first or retried, through any leader)
    # carries the same ids.
    acked: dict[tuple[int, str, str, str], tuple[int, int, int]] = {}
    for a in world.attempts:
        if a.reason != ReasonCode.SUCCESS:
            continue
        assert a.message_seq > 0 and a.message_id > 0, f"attempt {a.id} acked without ids"
        first = acked.setdefault(a.key, (a.message_seq, a.message_id, a.id))
        assert first[:2] == (a.message_seq, a.message_id), (
            f"client_msg_no {a.client_msg_no!r} of {a.from_uid} in {a.channel_id} acked at seq "
            f"{first[0]} (attempt {first[2]}) and seq {a.message_seq} (attempt {a.id})"
        )
    for group, members in PLACEMENT.groups.items():
        views = [_view(world, n, group) for n in members]
        for view in views:
            _check_origins(view, group, origins)
        # No acked loss: a replica that applied past the acknowledging apply has the message
        # at the acknowledged seq.
        for a in world.attempts:
            if a.reason != ReasonCode.SUCCESS or a.group != group:
                continue
            for v in views:
                if v.applied < a.ack_floor:
                    continue
                log = v.logs[(a.channel_type, a.channel_id)]
                got = log[a.message_seq - 1][:4] if len(log) >= a.message_seq else None
                assert got == (a.message_seq, a.message_id, a.from_uid, a.client_msg_no), (
                    f"attempt {a.id} acked at {a.channel_id} seq {a.message_seq} (id "
                    f"{a.message_id}); node {v.node} applied {v.applied} has {got}"
                )
        # Replicas agree: a replica's channel logs are a prefix of those of any replica that
        # applied more, and equal applied indexes mean byte-identical stores.
        views.sort(key=lambda v: (v.applied, v.node))
        for lo, hi in itertools.pairwise(views):
            for channel, log in lo.logs.items():
                assert hi.logs[channel][: len(log)] == log, (
                    f"group {group}: {channel[1]} on node {lo.node} (applied {lo.applied}) is not "
                    f"a prefix of node {hi.node}'s (applied {hi.applied})"
                )
            if lo.applied == hi.applied:
                assert lo.dump() == hi.dump(), (
                    f"group {group}: nodes {lo.node} and {hi.node} applied {lo.applied} but differ"
                )


def check_settled(world: World) -> None:
    check(world)
    for group, members in PLACEMENT.groups.items():
        applied = {n: world.disks[(n, group)].store.applied_index() for n in members}
        assert len(set(applied.values())) == 1, f"group {group} applied {applied} after settling"
    for a in world.attempts:
        assert a.reason is not None or a.lost, f"attempt {a.id} never answered"
