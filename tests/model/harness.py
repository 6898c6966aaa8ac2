"""The hypothesis state machine over the simulated cluster of ``sim.py``: its rules are the
things that happen to a cluster (sends, retries, deliveries, drops, partitions, crashes,
elections, time), its invariant is ``checks.check`` after every step, and teardown heals the
cluster, lets it settle and checks again.

``RAFTCHAT_MODEL_EXAMPLES`` / ``RAFTCHAT_MODEL_STEPS`` run a longer search locally, and
``RAFTCHAT_MODEL_RANDOM=1`` a different one each time (CI runs the same derandomized search).
"""

from __future__ import annotations

import collections
import functools
import os
from collections.abc import Callable
from typing import Any, ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from node.groups.machine import GroupMachine
from proto.wkproto import ReasonCode

from . import sim
from .checks import check, check_settled
from .sim import CHANNELS, LEADER, NODE_IDS, PLACEMENT, UIDS, MachineFactory, StorePool, World

EXAMPLES = int(os.environ.get("RAFTCHAT_MODEL_EXAMPLES", "150"))
STEPS = int(os.environ.get("RAFTCHAT_MODEL_STEPS", "40"))
RANDOM = os.environ.get("RAFTCHAT_MODEL_RANDOM", "") not in ("", "0")

MODEL_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def step(fn: Callable[..., None]) -> Callable[..., None]:
    """Every rule: log the step (the shrunk schedule is read back) and remember a failure, so
    that teardown does not mask it with a follow-up one."""

    @functools.wraps(fn)
    def run(self: ClusterModel, **kwargs: Any) -> None:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        self.steps.append(f"{fn.__name__}({args})")
        try:
            fn(self, **kwargs)
        except BaseException:
            self.failed = True
            raise

    return run


class ClusterModel(RuleBasedStateMachine):
    pool: ClassVar[StorePool | None] = None
    machine_factory: ClassVar[MachineFactory] = GroupMachine
    last_steps: ClassVar[list[str]] = []
    stats: ClassVar[collections.Counter[str]] = collections.Counter()

    def __init__(self) -> None:
        super().__init__()
        assert self.pool is not None, "use the store_pool fixture"
        self.world = World(self.pool, type(self).machine_factory)
        self.steps: list[str] = []
        type(self).last_steps = self.steps
        self.failed = False
        self.numbers = 0

    def _client_msg_no(self) -> str:
        self.numbers += 1
        return f"m{self.numbers}"

    # --- clients

    @rule(
        node=st.sampled_from(NODE_IDS),
        channels=st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=3),
        uid=st.sampled_from(UIDS),
        lag=st.booleans(),
    )
    @step
    def send(self, node: int, channels: list[tuple[int, str]], uid: str, lag: bool) -> None:
        """New messages from one client, at once (one batch per group). ``lag``: the group's
        Raft drivers take commands from their queues only at the next ``advance`` or
        ``deliver_all``, after the messages delivered meanwhile (a leader can lose its office
        with the command still queued)."""
        for channel in channels:
            attempt = self.world.submit(node, channel, uid, self._client_msg_no())
            if attempt is not None and lag:
                self.world.hold(attempt.group)
        self.world.pump()

    @precondition(lambda self: self.world.attempts)
    @rule(
        node=st.sampled_from(NODE_IDS),
        pick=st.integers(0, 63),
        twice=st.booleans(),
        lag=st.booleans(),
    )
    @step
    def retry(self, node: int, pick: int, twice: bool, lag: bool) -> None:
        """Resend an earlier send's client_msg_no (whatever its outcome), maybe twice at once
        (one batch), to any node."""
        earlier = self.world.attempts[-1 - pick % len(self.world.attempts)]
        channel = (earlier.channel_type, earlier.channel_id)
        for _ in range(2 if twice else 1):
            attempt = self.world.submit(node, channel, earlier.from_uid, earlier.client_msg_no)
            if attempt is not None and lag:
                self.world.hold(attempt.group)
        self.world.pump()

    # --- network

    @precondition(lambda self: self.world.net)
    @rule(pick=st.integers(0, 63), count=st.integers(1, 8))
    @step
    def deliver(self, pick: int, count: int) -> None:
        """Deliver ``count`` messages from some point of the queue (out of order)."""
        for _ in range(count):
            if not self.world.net:
                return
            self.world.deliver(pick % len(self.world.net))

    @precondition(lambda self: self.world.net)
    @rule(pick=st.integers(0, 63))
    @step
    def drop(self, pick: int) -> None:
        self.world.drop(pick % len(self.world.net))

    @rule()
    @step
    def deliver_all(self) -> None:
        """Every message arrives; then stalled Raft drivers take their commands (pysyncobj's
        tick handles received messages first), and what that sends arrives too."""
        self.world.deliver_all()
        self.world.release()
        self.world.deliver_all()

    @rule(island=st.sets(st.sampled_from(NODE_IDS), min_size=1, max_size=2))
    @step
    def partition(self, island: set[int]) -> None:
        self.world.partition(island)

    @rule()
    @step
    def heal(self) -> None:
        self.world.heal()

    # --- nodes and time

    @precondition(lambda self: sum(not n.up for n in self.world.nodes.values()) < 2)
    @rule(node=st.sampled_from(NODE_IDS))
    @step
    def crash(self, node: int) -> None:
        if self.world.nodes[node].up:
            self.world.crash(node)

    @rule(node=st.sampled_from(NODE_IDS))
    @step
    def restart(self, node: int) -> None:
        if not self.world.nodes[node].up:
            self.world.restart(node)

    @rule(node=st.sampled_from(NODE_IDS), group=st.sampled_from(sorted(PLACEMENT.groups)))
    @step
    def campaign(self, node: int, group: int) -> None:
        """The node's election timeout fires now."""
        replica = self.world.nodes[node].replicas.get(group)
        if replica is not None and replica.role != LEADER:
            replica.campaign()
            self.world.pump()

    @rule(ms=st.sampled_from([20, 100, 300, 700, 1500, 3500, 8000]), deliver=st.booleans())
    @step
    def advance(self, ms: int, deliver: bool) -> None:
        """Time passes; with ``deliver`` the network works meanwhile, else it holds everything."""
        self.world.release()
        self.world.advance(ms, deliver=deliver)

    # --- properties

    @invariant()
    def safe(self) -> None:
        try:
            check(self.world)
        except BaseException:
            self.failed = True
            raise

    def teardown(self) -> None:
        if self.failed:
            return  # report the step's failure, not a follow-up one
        self.world.settle()
        check_settled(self.world)
        self._count()

    def _count(self) -> None:
        w, s = self.world, type(self).stats
        s["examples"] += 1
        s["steps"] += len(self.steps)
        s["attempts"] += len(w.attempts)
        s["acks"] += sum(a.reason == ReasonCode.SUCCESS for a in w.attempts)
        s["duplicate acks"] += sum(a.duplicate for a in w.attempts)
        s["definite failures"] += sum(a.reason in sim.DEFINITE_FAILURES for a in w.attempts)
        s["retry codes"] += sum(a.reason in (10, 18) for a in w.attempts)
        s["node match errors"] += sum(a.reason == ReasonCode.NODE_MATCH_ERROR for a in w.attempts)
        s["lost answers"] += sum(a.lost for a in w.attempts)
        s["elections"] += len(w.leaders) - len(PLACEMENT.groups)
        s.update(w.counts)


Schedule = list[tuple[str, dict[str, Any]]]


def play(model: type[ClusterModel], schedule: Schedule) -> ClusterModel:
    """Run one schedule by hand, as hypothesis would (invariant after every step, teardown)."""
    machine = model()
    machine.safe()
    for name, kwargs in schedule:
        getattr(machine, name)(**kwargs)
        machine.safe()
    machine.teardown()
    return machine
