"""The ``chat`` workload: users on WKProto sessions (and some HTTP calls) sending to person and
group channels, receivers recording every RECV, readers syncing channels by seq, users reading
their conversation list (read floor, unread, head per channel) and now and then marking a
conversation read, and at the end final reads of every channel from every node plus each
replica's digest.

Everything a client asks or sees goes to the history (:mod:`chaos.history`). A send whose
outcome is unknown (timeout, lost connection, a "retry" reason code) is retried with the same
``client_msg_no``; each attempt is its own operation, so the checkers see both the doubt and
the retry. A few sends that did succeed are sent again on purpose, as a client that missed its
SENDACK would: the server must answer with the original seq and store nothing new.
"""

from __future__ import annotations

import base64
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from client.errors import ClientError
from client.wkproto import ReceivedMessage, WKClient, open_client
from launcher.devcluster import TCP_PORT
from proto.wkproto import ChannelType, HeaderFlag
from proto.wkproto.channels import person_channel_id

from .cluster import ChaosCluster
from .history import (
    ChannelDigest,
    DigestValue,
    FloorValue,
    ReadMessage,
    ReadValue,
    Recorder,
    RecvValue,
    SendValue,
    channel_key,
    classify_send_reason,
    payload_hash,
)
from .http import HttpError

HASH_SLOTS = 256
DEVICE_WEB = 1
"""Sessions log in as WEB devices (up to 10 per uid), so a reconnect never has to kick its
predecessor on a node that may be unreachable."""
SYNC_PAGE = 500


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    users: int = 12
    group_channels: int = 4
    group_size: int = 5
    person_channels: int = 6
    send_gap_s: float = 0.5
    """Mean pause between two sends of one user (exponentially distributed)."""
    http_fraction: float = 0.15
    resend_fraction: float = 0.05
    max_attempts: int = 4
    send_timeout_s: float = 12.0
    """Longer than the server's own bound on a send (10 s): the server should answer first."""
    readers: int = 2
    read_gap_s: float = 1.0
    floor_gap_s: float = 4.0
    """Mean pause between two conversation-list reads of one user (``/conversation/sync``)."""
    clear_fraction: float = 0.5
    """How often a conversation-list read is followed by marking one conversation read."""


@dataclass(frozen=True, slots=True)
class Channel:
    type: int
    canonical: str
    members: tuple[str, ...]
    group: int | None = None

    @property
    def key(self) -> str:
        return channel_key(self.type, self.canonical)

    def address_for(self, uid: str) -> str:
        """The id ``uid`` names the channel by (a person channel: the other party)."""
        if self.type != ChannelType.PERSON:
            return self.canonical
        a, b = self.members
        return b if uid == a else a


@dataclass
class _User:
    uid: str
    token: str
    channels: list[Channel] = field(default_factory=list)
    client: WKClient | None = None
    client_node: int | None = None
    sessions: int = 0
    scope: trio.CancelScope | None = None
    """Cancelled to make the session loop drop a session that stopped answering."""


class ChatWorkload:
    def __init__(
        self,
        cluster: ChaosCluster,
        recorder: Recorder,
        cfg: WorkloadConfig,
        rng: random.Random,
    ) -> None:
        self.cluster = cluster
        self.rec = recorder
        self.cfg = cfg
        self.rng = rng
        self.users = {
            f"u{i}": _User(f"u{i}", f"t{i}-{rng.getrandbits(32):x}") for i in range(cfg.users)
        }
        self.channels: list[Channel] = []
        self._msg_no = 0
        self.acked_heads: dict[str, int] = {}
        """The highest acked seq per channel: readers start their tail reads near it."""
        self.stopping = False
        self._stopped = trio.Event()
        self.in_flight = 0

    # --- setup -----------------------------------------------------------------------------

    async def setup(self) -> None:
        """Tokens and group channels over HTTP, retried until the cluster takes them."""
        uids = sorted(self.users)
        slot_table = await self._slot_table()
        groups = [
            Channel(
                ChannelType.GROUP,
                f"g{i}",
                tuple(self.rng.sample(uids, min(self.cfg.group_size, len(uids)))),
            )
            for i in range(self.cfg.group_channels)
        ]
        persons = []
        pairs = [(a, b) for i, a in enumerate(uids) for b in uids[i + 1 :]]
        for a, b in self.rng.sample(pairs, min(self.cfg.person_channels, len(pairs))):
            persons.append(Channel(ChannelType.PERSON, person_channel_id(a, b), (a, b)))
        for ch in [*groups, *persons]:
            slot = zlib.crc32(ch.canonical.encode()) % HASH_SLOTS
            group = int(slot_table[slot]) if slot_table else None
            self.channels.append(Channel(ch.type, ch.canonical, ch.members, group))
        for ch in self.channels:
            for uid in ch.members:
                self.users[uid].channels.append(ch)
        for u in self.users.values():
            await self._setup_call(
                "/user/token", {"uid": u.uid, "token": u.token, "device_flag": DEVICE_WEB}
            )
        for ch in self.channels:
            if ch.type == ChannelType.GROUP:
                body = {"channel_id": ch.canonical, "channel_type": ch.type}
                await self._setup_call("/channel", {**body, "subscribers": list(ch.members)})

    async def _slot_table(self) -> list[int]:
        st = await self.cluster.newest_status()
        return [] if st is None else [int(g) for g in st["slot_table"]]

    async def _setup_call(self, path: str, body: dict[str, Any]) -> None:
        await setup_call(self.cluster, self.rng, path, body)

    # --- the run ---------------------------------------------------------------------------

    async def run(self, nursery: trio.Nursery) -> None:
        """Start every client task in ``nursery``; they end once :meth:`stop` is called."""
        for u in self.users.values():
            nursery.start_soon(self._session_loop, u)
            if u.channels:
                nursery.start_soon(self._sender, u)
                nursery.start_soon(self._floor_reader, u)
        for i in range(self.cfg.readers):
            nursery.start_soon(self._reader, f"r{i}")

    def stop(self) -> None:
        self.stopping = True
        self._stopped.set()
        for u in self.users.values():
            if u.scope is not None:
                u.scope.cancel()

    async def _pause(self, mean_s: float) -> None:
        """Wait about ``mean_s``, or until :meth:`stop`: a long pause must not hold up the end."""
        with trio.move_on_after(min(self.rng.expovariate(1.0 / mean_s), 5 * mean_s)):
            await self._stopped.wait()

    def _pick_node(self, prefer: int | None = None) -> int | None:
        serving = self.cluster.serving()
        if not serving:
            return None
        if prefer in serving and self.rng.random() < 0.7:
            return prefer
        return self.rng.choice(serving)

    # --- sessions and RECVs ---------------------------------------------------------------

    async def _session_loop(self, u: _User) -> None:
        home = 1 + int(u.uid[1:]) % max(len(self.cluster.members()), 1)
        while not self.stopping:
            node = self._pick_node(home)
            if node is None:
                await trio.sleep(0.5)
                continue
            u.sessions += 1
            session = f"{u.uid}/{u.sessions}"
            # The scope exists before connecting, so that stop() also ends a session that is
            # still logging in (which would otherwise wait out the server's idle timeout).
            with trio.CancelScope() as scope:
                u.scope = scope
                if self.stopping:
                    scope.cancel()
                try:
                    async with open_client(
                        self.cluster.hosts[node],
                        TCP_PORT,
                        uid=u.uid,
                        token=u.token,
                        device_flag=DEVICE_WEB,
                        connect_timeout_s=5.0,
                    ) as client:
                        u.client, u.client_node = client, node
                        await self._receive(u, client, session, node)
                except* (ClientError, OSError, trio.TooSlowError, trio.BrokenResourceError):
                    pass  # the session ended: reconnect, possibly to another node
                finally:
                    u.client = u.client_node = u.scope = None
            if not self.stopping:
                await trio.sleep(0.2 + self.rng.random() * 0.5)

    async def _receive(self, u: _User, client: WKClient, session: str, node: int) -> None:
        while True:
            try:
                m = await client.recv(timeout_s=3600.0)
            except trio.TooSlowError:
                continue
            self._record_recv(u, m, session, node)

    def _record_recv(self, u: _User, m: ReceivedMessage, session: str, node: int) -> None:
        if not is_stored(m):
            return  # an online-only command (unreadClear): no seq, not part of any log
        canonical = (
            person_channel_id(u.uid, m.channel_id)
            if m.channel_type == ChannelType.PERSON
            else m.channel_id
        )
        self.rec.observe(
            "recv",
            f"{u.uid}:recv",
            RecvValue(
                session=session,
                seq=m.message_seq,
                message_id=m.message_id,
                client_msg_no=m.client_msg_no,
                from_uid=m.from_uid,
                payload_hash=payload_hash(m.payload),
                uid=u.uid,
            ),
            channel=channel_key(m.channel_type, canonical),
            node=node,
        )

    # --- sends -----------------------------------------------------------------------------

    async def _sender(self, u: _User) -> None:
        while not self.stopping:
            await self._pause(self.cfg.send_gap_s)
            if self.stopping:
                return
            ch = self.rng.choice(u.channels)
            self._msg_no += 1
            cmn = f"{u.uid}-{self._msg_no}"
            payload = f"{cmn}:{self.rng.getrandbits(64):x}".encode()
            over_http = self.rng.random() < self.cfg.http_fraction
            outcome = "info"
            attempt = 0
            while outcome == "info" and attempt < self.cfg.max_attempts:
                attempt += 1
                outcome = await self._attempt(u, ch, cmn, payload, attempt, over_http)
                if outcome == "info":
                    await trio.sleep(0.3 + self.rng.random() * attempt)
            if outcome == "ok" and self.rng.random() < self.cfg.resend_fraction:
                await self._attempt(u, ch, cmn, payload, attempt + 1, over_http)

    async def _attempt(
        self, u: _User, ch: Channel, cmn: str, payload: bytes, attempt: int, over_http: bool
    ) -> str:
        client, node, scope = u.client, u.client_node, u.scope
        if not over_http and (client is None or node is None):
            # No session right now: go through HTTP rather than stall the sender.
            over_http = True
        if over_http:
            node = self._pick_node()
            if node is None:
                await trio.sleep(0.5)
                return "info"
        assert node is not None
        value = SendValue(
            client_msg_no=cmn,
            from_uid=u.uid,
            payload_hash=payload_hash(payload),
            attempt=attempt,
            group=ch.group,
            transport="http" if over_http else "tcp",
        )
        op = self.rec.invoke("send", u.uid, value, channel=ch.key, node=node)
        self.in_flight += 1
        try:
            if over_http:
                return await self._send_http(op, node, u, ch, cmn, payload)
            assert client is not None
            return await self._send_tcp(op, client, scope, u, ch, cmn, payload)
        finally:
            self.in_flight -= 1

    async def _send_tcp(
        self,
        op: Any,
        client: WKClient,
        scope: trio.CancelScope | None,
        u: _User,
        ch: Channel,
        cmn: str,
        payload: bytes,
    ) -> str:
        try:
            r = await client.send(
                ch.address_for(u.uid),
                ch.type,
                payload,
                client_msg_no=cmn,
                timeout_s=self.cfg.send_timeout_s,
            )
        except trio.TooSlowError:
            op.info(error="timeout")
            if scope is not None:
                scope.cancel()  # as an SDK whose pings go unanswered: reconnect elsewhere
            return "info"
        except (ClientError, OSError, trio.BrokenResourceError) as e:
            op.info(error=f"closed: {type(e).__name__}")
            return "info"
        outcome = classify_send_reason(r.reason_code)
        if outcome == "ok":
            op.ok(message_id=r.message_id, message_seq=r.message_seq, reason=r.reason_code)
            self._acked(ch, r.message_seq)
        elif outcome == "fail":
            op.fail(reason=r.reason_code)
        else:
            op.info(reason=r.reason_code)
        return outcome

    def _acked(self, ch: Channel, seq: int) -> None:
        self.acked_heads[ch.key] = max(self.acked_heads.get(ch.key, 0), seq)

    async def _send_http(
        self, op: Any, node: int, u: _User, ch: Channel, cmn: str, payload: bytes
    ) -> str:
        body = {
            "from_uid": u.uid,
            "channel_id": ch.address_for(u.uid),
            "channel_type": ch.type,
            "payload": base64.b64encode(payload).decode(),
            "client_msg_no": cmn,
        }
        try:
            code, answer = await self.cluster.call(
                node, "POST", "/message/send", body, timeout_s=self.cfg.send_timeout_s
            )
        except HttpError as e:
            op.info(error=str(e)[:120])
            return "info"
        answer = answer if isinstance(answer, dict) else {}
        reason = answer.get("reason")
        if code == 200:
            seq = int(answer["message_seq"])
            op.ok(message_id=int(answer["message_id"]), message_seq=seq)
            self._acked(ch, seq)
            return "ok"
        code_reason = reason if isinstance(reason, int) else None
        # 400 is refused before anything is proposed; otherwise the reason code decides, as
        # for a SENDACK (403/404 carry one); anything else may have committed.
        outcome = "fail" if code == 400 else "info"
        if code_reason is not None:
            outcome = classify_send_reason(code_reason)
        if outcome == "fail":
            op.fail(reason=code_reason, error=f"http {code}")
        else:
            op.info(reason=code_reason, error=f"http {code}")
            outcome = "info"
        return outcome

    # --- reads -----------------------------------------------------------------------------

    async def _reader(self, process: str) -> None:
        while not self.stopping:
            await self._pause(self.cfg.read_gap_s)
            if self.stopping or not self.channels:
                return
            ch = self.rng.choice(self.channels)
            node = self._pick_node()
            if node is None:
                continue
            start = max(1, self._acked_head(ch) - self.rng.randint(0, 30))
            await self.read(process, "read", ch, node, start)

    def _acked_head(self, ch: Channel) -> int:
        return self.acked_heads.get(ch.key, 0)

    async def read(self, process: str, f: str, ch: Channel, node: int, start: int = 1) -> bool:
        """One sync of ``ch`` from ``start`` to the head, paged; recorded as one op."""
        uid = ch.members[0]
        op = self.rec.invoke(
            f, process, ReadValue(start_seq=start, uid=uid), channel=ch.key, node=node
        )
        messages: list[ReadMessage] = []
        cursor = start
        try:
            while True:
                code, answer = await self.cluster.call(
                    node,
                    "POST",
                    "/channel/messagesync",
                    {
                        "login_uid": uid,
                        "channel_id": ch.address_for(uid),
                        "channel_type": ch.type,
                        "start_message_seq": cursor,
                        "end_message_seq": 0,
                        "limit": SYNC_PAGE,
                        "pull_mode": 1,
                    },
                    timeout_s=10.0,
                )
                if code != 200 or not isinstance(answer, dict):
                    op.fail()  # a read changes nothing: failing it is always safe
                    return False
                page = answer.get("messages") or []
                for m in page:
                    messages.append(
                        ReadMessage(
                            seq=int(m["message_seq"]),
                            message_id=int(m["message_id"]),
                            client_msg_no=str(m["client_msg_no"]),
                            from_uid=str(m["from_uid"]),
                            payload_hash=payload_hash(base64.b64decode(m["payload"])),
                        )
                    )
                more = bool(answer.get("more"))
                if not more or not page:
                    break
                cursor = int(page[-1]["message_seq"]) + 1
        except (HttpError, KeyError, ValueError):
            op.fail()
            return False
        # Complete only when the server said nothing more remains (not on an empty page
        # that still claimed more).
        op.ok(messages=tuple(messages), complete=not more)
        return True

    # --- read floors and unread counts -----------------------------------------------------

    async def _floor_reader(self, u: _User) -> None:
        while not self.stopping:
            await self._pause(self.cfg.floor_gap_s)
            node = self._pick_node()
            if self.stopping or node is None:
                continue
            seen = await self.read_floors(u, node)
            if self.rng.random() < self.cfg.clear_fraction:
                target = clear_target(seen, self.rng)
                if target is not None:
                    await self.clear_unread(u, self._pick_node() or node, *target)

    async def read_floors(self, u: _User, node: int) -> dict[str, FloorValue]:
        """One ``/conversation/sync`` of ``u``, recorded as one ``read_floor`` op per channel of
        the user, all invoked before the request and completed after the answer (so that
        real-time order holds for each). A channel the answer lacks (no message yet) and any
        failed request complete with ``fail``: nothing was observed."""
        process = f"{u.uid}:floor"
        ops = {
            ch.key: self.rec.invoke(
                "read_floor", process, FloorValue(u.uid), channel=ch.key, node=node
            )
            for ch in u.channels
        }
        seen: dict[str, FloorValue] = {}
        try:
            code, answer = await self.cluster.call(
                node, "POST", "/conversation/sync", {"uid": u.uid, "msg_count": 0}, timeout_s=10.0
            )
            if code == 200:
                seen = floor_observations(u.uid, answer, set(ops))
        except (HttpError, ValueError):
            seen = {}
        for key, op in ops.items():
            v = seen.get(key)
            if v is None:
                op.fail()
            else:
                op.ok(floor=v.floor, unread=v.unread, head=v.head)
        return seen

    async def clear_unread(self, u: _User, node: int, channel: str, seq: int) -> str:
        """``/conversations/clearUnread`` up to ``seq``, recorded as a ``clear_unread`` op: once
        ok, the floor of (u, channel) is at least ``seq``."""
        ch = next(c for c in u.channels if c.key == channel)
        value = FloorValue(u.uid, floor=seq)
        op = self.rec.invoke("clear_unread", f"{u.uid}:floor", value, channel=channel, node=node)
        body = {
            "uid": u.uid,
            "channel_id": ch.address_for(u.uid),
            "channel_type": ch.type,
            "message_seq": seq,
        }
        try:
            code, _ = await self.cluster.call(
                node, "POST", "/conversations/clearUnread", body, timeout_s=10.0
            )
        except HttpError:
            op.info()  # it may still have committed
            return "info"
        if code == 200:
            op.ok()
            return "ok"
        if 400 <= code < 500:
            op.fail()  # refused before anything was proposed
            return "fail"
        op.info()
        return "info"

    # --- the end of a run ------------------------------------------------------------------

    async def final_reads(self, nodes: Sequence[int]) -> int:
        """Read every channel from every node; returns how many reads failed after retries. A
        node that keeps failing is skipped for the remaining channels (its failures still
        count), so a dead node costs one channel's retries, not all of them."""
        failed = 0
        given_up: set[int] = set()
        for ch in self.channels:
            for node in nodes:
                if node in given_up:
                    failed += 1
                    continue
                for attempt in range(3):
                    if await self.read("final", "final_read", ch, node):
                        break
                    await trio.sleep(1.0 + attempt)
                else:
                    failed += 1
                    given_up.add(node)
        return failed

    async def digests(self, nodes: Sequence[int], timeout_s: float = 60.0) -> bool:
        return await record_digests(self.cluster, self.rec, nodes, timeout_s)


async def setup_call(
    cluster: ChaosCluster, rng: random.Random, path: str, body: dict[str, Any]
) -> None:
    """One setup request (a token, a channel), retried on random nodes until the cluster takes
    it."""
    for attempt in range(60):
        node = rng.choice(cluster.serving())
        try:
            code, answer = await cluster.call(node, "POST", path, body)
        except HttpError:
            code, answer = 0, None
        if code == 200:
            return
        await trio.sleep(0.25 * min(attempt + 1, 4))
    raise RuntimeError(f"setup {path} {body} kept failing: {code} {answer}")


async def record_digests(
    cluster: ChaosCluster, rec: Recorder, nodes: Sequence[int], timeout_s: float = 60.0
) -> bool:
    """Record each replica's digest once every replica the cluster map lists for a group
    has answered with the same applied index (a lagging follower is not divergence, and a
    replica that does not answer cannot be vouched for). Returns False, recording nothing,
    if that never happened: the run then cannot claim the replicas agree."""
    deadline = trio.current_time() + timeout_s
    while True:
        replicas = await _replica_sets(cluster, nodes)
        views: dict[int, dict[str, Any]] = {}
        for n in nodes:
            try:
                code, body = await cluster.call(n, "GET", "/cluster/digest")
            except HttpError:
                continue
            if code == 200 and isinstance(body, dict):
                views[n] = body
        if replicas and _converged(views, replicas):
            break
        if trio.current_time() > deadline:
            return False
        await trio.sleep(1.0)
    for n, body in sorted(views.items()):
        for g in body.get("groups", []):
            if n not in replicas.get(int(g["group"]), set()):
                continue  # a copy already moved away, not yet dropped
            channels = {
                name: ChannelDigest(int(pair[0]), str(pair[1]))
                for name, pair in g.get("channels", {}).items()
            }
            op = rec.invoke(
                "replica_digest",
                "digest",
                DigestValue(node=n, group=int(g["group"]), channels={}),
                node=n,
            )
            op.ok(channels=channels)
    return True


async def _replica_sets(cluster: ChaosCluster, nodes: Sequence[int]) -> dict[int, set[int]]:
    """Slot group -> its replicas, from the newest cluster map among ``nodes``."""
    best = await cluster.newest_status(nodes)
    if best is None:
        return {}
    return {
        int(g["group"]): {int(r) for r in g["replicas"]}
        for g in best.get("groups", [])
        if int(g["group"]) > 0
    }


def is_stored(m: ReceivedMessage) -> bool:
    """Whether a RECV carries a stored message. Online-only pushes (the ``unreadClear`` command
    after a conversation is marked read) have seq 0 and belong to no channel's log: recording
    them would read as repeated seqs and as messages nobody sent."""
    return not m.flags & HeaderFlag.NO_PERSIST and m.message_seq > 0


def _count(row: dict[str, Any], name: str) -> int:
    v = row.get(name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"conversation row field {name!r} is {v!r}, not an integer")
    return v


def floor_observations(uid: str, answer: Any, wanted: set[str]) -> dict[str, FloorValue]:
    """The (floor, unread, head) of each channel in ``wanted`` (history channel keys) that a
    ``/conversation/sync`` answer for ``uid`` lists. Person conversations are named by the
    peer's uid and mapped to the canonical ``a@b`` key. Raises ValueError on an answer that is
    not a list of rows with integer fields, or that lists one conversation twice: a reader
    that cannot trust the answer must not record it."""
    if not isinstance(answer, list):
        raise ValueError("the conversation list is not a JSON array")
    out: dict[str, FloorValue] = {}
    for row in answer:
        if not isinstance(row, dict):
            raise ValueError(f"conversation row {row!r} is not an object")
        ctype, cid = _count(row, "channel_type"), row.get("channel_id")
        if not isinstance(cid, str):
            raise ValueError(f"conversation row channel_id {cid!r} is not a string")
        canonical = person_channel_id(uid, cid) if ctype == ChannelType.PERSON else cid
        key = channel_key(ctype, canonical)
        if key not in wanted:
            continue
        if key in out:
            raise ValueError(f"conversation {key} listed twice")
        out[key] = FloorValue(
            uid,
            floor=_count(row, "readed_to_msg_seq"),
            unread=_count(row, "unread"),
            head=_count(row, "last_msg_seq"),
        )
    return out


def clear_target(seen: dict[str, FloorValue], rng: random.Random) -> tuple[str, int] | None:
    """A conversation with unread messages and a seq to mark it read up to: any seq above the
    floor up to the head seen (the server honours a partial clear). Only a seen head is asked
    for, so the server's clamp to its head never lowers the floor the history expects."""
    open_ = sorted(
        key
        for key, v in seen.items()
        if v.floor is not None and v.head is not None and v.head > v.floor
    )
    if not open_:
        return None
    key = rng.choice(open_)
    v = seen[key]
    assert v.floor is not None and v.head is not None
    return key, rng.randint(v.floor + 1, v.head)


def _converged(views: dict[int, dict[str, Any]], replicas: dict[int, set[int]]) -> bool:
    applied: dict[int, dict[int, int]] = {}
    for n, body in views.items():
        for g in body.get("groups", []):
            applied.setdefault(int(g["group"]), {})[n] = int(g["applied"])
    for group, members in replicas.items():
        seen = applied.get(group, {})
        if not members <= set(seen) or len({seen[m] for m in members}) != 1:
            return False
    return True
