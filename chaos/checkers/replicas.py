"""P10, NATS "persistent split-brain": once faults heal, every replica of a slot group holds
the same log for each of its channels."""

from __future__ import annotations

from collections import defaultdict

from chaos.history import ChannelDigest, DigestValue, History, NemesisValue, Op

from .base import CheckResult, Examples, HistoryLike, op_ref


def heal_mono(h: History) -> float:
    """When the last fault was healed: the latest completion of a nemesis ``stop`` (its invoke
    if it never completed). -inf if the history has no nemesis stop."""
    heal = -float("inf")
    for op in h.ops_of("nemesis"):
        v = op.value
        if isinstance(v, NemesisValue) and v.action == "stop":
            end = op.complete_mono if op.completion is not None else op.invoke_mono
            heal = max(heal, end)
    return heal


def check_replica_divergence(history: HistoryLike) -> CheckResult:
    """Compares ``replica_digest`` ops invoked after the last heal. For each (group, node) the
    latest such digest stands for the replica; for each channel any replica of the group
    reports, all replicas must report the same (head, hash). A channel one replica lacks while
    another holds messages is divergence too (head 0 counts as absent).

    Digests taken before the heal are ignored (a lagging follower is not a split brain); the
    runner must let replicas catch up before it asks. With no group compared (no digests after
    the heal, or one replica per group, as in a single-node run) the result is "no data"."""
    h = History.of(history)
    healed = heal_mono(h)
    latest: dict[int, dict[int, tuple[Op, DigestValue]]] = defaultdict(dict)
    digests = 0
    for op in h.ops_of("replica_digest"):
        v = op.value
        if op.type != "ok" or not isinstance(v, DigestValue) or op.invoke_mono < healed:
            continue
        digests += 1
        latest[v.group][v.node] = (op, v)  # history order: later wins
    ex = Examples()
    compared_groups = compared_channels = 0
    for group, nodes in sorted(latest.items()):
        if len(nodes) < 2:
            continue
        compared_groups += 1
        channels = {c for _, v in nodes.values() for c, d in v.channels.items() if d.head > 0}
        for channel in sorted(channels):
            compared_channels += 1
            views: dict[int, ChannelDigest | None] = {}
            for node, (_, v) in nodes.items():
                d = v.channels.get(channel)
                views[node] = d if d is not None and d.head > 0 else None
            distinct = set(views.values())
            if len(distinct) < 2:
                continue
            if None in distinct:
                kind = "missing"
            elif len({d.head for d in distinct if d is not None}) > 1:
                kind = "head"
            else:
                kind = "hash"
            ex.add(
                kind,
                group=group,
                channel=channel,
                replicas={
                    str(n): None if d is None else {"head": d.head, "hash": d.hash}
                    for n, d in sorted(views.items())
                },
                digests=[op_ref(op) for op, _ in nodes.values()][:5],
            )
    divergent = sum(ex.counts.values())
    return CheckResult(
        name="replica_divergence",
        valid=divergent == 0,
        counts={
            "digests_after_heal": digests,
            "groups_compared": compared_groups,
            "channels_compared": compared_channels,
            "divergent_channels": divergent,
            "head_differs": ex.counts["head"],
            "hash_differs": ex.counts["hash"],
            "missing_on_replica": ex.counts["missing"],
        },
        examples=ex.take(),
        no_data=compared_groups == 0,
    )
