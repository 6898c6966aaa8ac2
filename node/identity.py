"""Which cluster and which node a data directory belongs to (ADR "data directory identity").

``<data_dir>/identity.json`` (0600, replaced atomically) records the node id, the cluster's id,
whether the cluster has ever had more than one member, its slot group count, and a keyed
fingerprint of the cluster password (never the password). Before anything is opened, the node
compares it with its configuration and refuses, in one line and with exit code 2, to start

* as another node id;
* as a lone node (no ``cluster.nodes``, no ``cluster.join``) on a directory of a multi-node
  cluster: with a password of its own it cannot reach the members, so it would elect itself and
  commit writes that the cluster's replicas never see;
* as an initial member of a cluster (``cluster.nodes``) whose members or password differ from
  those of the cluster that created the directory;
* through ``cluster.join`` on a directory that holds a lone cluster, or whose cluster password
  is not ``cluster.password``;
* with a ``cluster.groups`` other than its cluster's (channels hash onto that count).

Cluster ids: the initial members of a multi-node cluster derive one from ``cluster.nodes`` and
the password, so they agree without talking; a node that joins learns it from the member that
admits it; a lone node draws a random one, which the nodes that later join it then share.

The cluster password may change on a running cluster (``cluster.password_accepted`` holds the
other one meanwhile, ``docs/operations.md``): a directory is accepted under either password,
and records the fingerprint of ``cluster.password`` (and an initial member its members, since
its cluster id, derived from the first password, can no longer be recomputed).
"""

from __future__ import annotations

import enum
import errno
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from .config import Config
from .log import get_logger
from .startup import check_group_count, refused, unavailable

log = get_logger("datadir")

IDENTITY_FILE = "identity.json"
LOCK_FILE = "raftchat.lock"
SECRET_FILE = "node.secret"
"""A lone node's own secret (0600): its Raft password and the key of its user tokens, when
``cluster.password`` is not set. Kept, so that tokens stay valid across restarts."""
FORMAT = 1


class Mode(enum.Enum):
    LONE = "lone"
    INITIAL = "initial member"
    JOIN = "joining"


def mode_of(config: Config) -> Mode:
    if config.cluster.join:
        return Mode.JOIN
    return Mode.INITIAL if len(config.cluster_nodes()) > 1 else Mode.LONE


@dataclass(frozen=True)
class Identity:
    node_id: int
    cluster_id: str | None
    """None only while a node that joins through ``cluster.join`` waits to be admitted."""
    multi_node: bool
    """The cluster has, or had, more than one member."""
    password_check: str | None
    """``password_check(cluster.password, cluster_id)``; None without a configured password."""
    members: str | None = None
    """An initial member's ``cluster.nodes``, canonical (``members_text``); else None."""
    slot_groups: int | None = None
    """The cluster's slot groups (fixed when it is created); None until a joining node is
    admitted, and in files written before it was recorded."""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "node_id": self.node_id,
            "cluster_id": self.cluster_id,
            "multi_node": self.multi_node,
            "password_check": self.password_check,
            "members": self.members,
            "slot_groups": self.slot_groups,
        }

    @classmethod
    def from_json(cls, data: Any) -> Identity:
        if not isinstance(data, dict) or not isinstance(data.get("format"), int):
            raise ValueError("not an identity file")
        if data["format"] > FORMAT:
            raise ValueError(f"format {data['format']} is newer than this raftchat's ({FORMAT})")
        node_id, cluster_id = data.get("node_id"), data.get("cluster_id")
        multi, check = data.get("multi_node"), data.get("password_check")
        members, groups = data.get("members"), data.get("slot_groups")
        if not (
            isinstance(node_id, int)
            and not isinstance(node_id, bool)
            and isinstance(cluster_id, str | None)
            and isinstance(multi, bool)
            and isinstance(check, str | None)
            and isinstance(members, str | None)
            and (groups is None or (isinstance(groups, int) and not isinstance(groups, bool)))
        ):
            raise ValueError("a field is missing or of the wrong type")
        return cls(node_id, cluster_id, multi, check, members, groups)

    def describe(self) -> str:
        if self.cluster_id is None:
            return f"node {self.node_id}, which has not finished joining a cluster"
        size = "a multi-node" if self.multi_node else "a lone"
        return f"node {self.node_id} of {size} cluster (id {self.cluster_id})"


def members_text(config: Config) -> str:
    """``cluster.nodes``, canonical: sorted by id, zones included (they place the first map)."""
    return ",".join(str(n) for n in sorted(config.cluster_nodes(), key=lambda n: n.node_id))


def _zones_differ(recorded: str, members: str) -> bool:
    """Whether two canonical ``cluster.nodes`` differ in their zones only."""

    def without_zones(text: str) -> list[str]:
        return [entry.partition("#")[0] for entry in text.split(",")]

    return recorded != members and without_zones(recorded) == without_zones(members)


def genesis_cluster_id(config: Config, password: str | None = None) -> str:
    """The id every initial member computes alike: its members and (keyed) its password
    (``cluster.password`` unless another is given)."""
    secret = config.cluster.password if password is None else password
    key = hmac.new(secret.encode(), b"raftchat cluster id", "sha256")
    text = f"raftchat cluster v1\n{members_text(config)}\n{key.hexdigest()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _passwords(config: Config) -> list[str]:
    """The passwords a directory may have been recorded under: the cluster's, and the other
    one accepted while it changes."""
    c = config.cluster
    return [p for p in (c.password, c.password_accepted) if p]


def password_check(password: str, cluster_id: str) -> str | None:
    if not password:
        return None
    mac = hmac.new(password.encode(), f"raftchat data directory\n{cluster_id}".encode(), "sha256")
    return mac.hexdigest()[:32]


def fresh_identity(config: Config) -> Identity:
    """The identity of a new, empty data directory."""
    me, mode, groups = config.node.id, mode_of(config), config.cluster.groups
    if mode is Mode.JOIN:
        return Identity(me, None, False, None)  # the admitting member tells the cluster id
    if mode is Mode.INITIAL:
        cluster_id = genesis_cluster_id(config)
        check = password_check(config.cluster.password, cluster_id)
        return Identity(me, cluster_id, True, check, members_text(config), groups)
    cluster_id = secrets.token_hex(8)
    check = password_check(config.cluster.password, cluster_id)
    return Identity(me, cluster_id, False, check, None, groups)


def adopted_identity(config: Config, where: Path, members: dict[int, str] | None) -> Identity:
    """The identity of a directory with data but no identity file (written by a raftchat
    from before identity files). ``members`` are the node ids of its stored cluster map, if it
    has one (a cluster whose map never changed keeps none and recomputes it at every start)."""
    me, mode = config.node.id, mode_of(config)
    if members is not None and me not in members:
        listed = ", ".join(str(n) for n in sorted(members))
        raise refused(
            f"data directory {where} holds a cluster whose map lists nodes {listed}, "
            f"not node {me}; refusing to start"
        )
    multi = members is not None and len(members) > 1
    if mode is Mode.LONE and multi:
        assert members is not None
        raise refused(
            f"data directory {where} holds node {me} of a {len(members)}-node cluster; "
            "refusing to start it as a lone node (cluster.nodes and cluster.join are empty)"
        )
    if mode is Mode.INITIAL:
        return fresh_identity(config)
    if mode is Mode.JOIN and members is None:
        return Identity(me, None, False, None)  # no map yet: the node joins as if new
    cluster_id = secrets.token_hex(8)  # not learnable offline; it matters only to this node
    return Identity(me, cluster_id, multi, password_check(config.cluster.password, cluster_id))


def check(found: Identity, config: Config, where: Path) -> Identity:
    """Refuse to start when ``found`` is another node's or another cluster's; otherwise the
    identity to keep (a lone node's password may change: nothing else uses it)."""
    me, mode, password = config.node.id, mode_of(config), config.cluster.password
    whose = f"data directory {where} belongs to {found.describe()}"
    if found.node_id != me:
        raise refused(f"{whose}; refusing to start it as node {me}")
    if mode is Mode.LONE:
        if found.multi_node:
            raise refused(
                f"{whose}; refusing to start it as a lone node "
                "(cluster.nodes and cluster.join are empty)"
            )
        cluster_id = found.cluster_id or secrets.token_hex(8)  # a join given up on
        return replace(
            found, cluster_id=cluster_id, password_check=password_check(password, cluster_id)
        )
    candidates = _passwords(config)
    if mode is Mode.INITIAL:
        members = members_text(config)
        initial_id = found.cluster_id
        created = any(initial_id == genesis_cluster_id(config, p) for p in candidates)
        # After a password change the id is the old password's: the members recorded then,
        # and the fingerprint of a password in use, identify the cluster instead.
        changed = (
            initial_id is not None
            and found.members == members
            and found.password_check in {password_check(p, initial_id) for p in candidates}
        )
        if initial_id is None or not (created or changed):
            if found.members is not None and _zones_differ(found.members, members):
                # The first map is placed by these zones, and a map that never changed is
                # placed again from them at every start: they cannot change.
                raise refused(
                    f"{whose}, created with cluster.nodes = {found.members}: the zones there "
                    "place the first cluster map and cannot change (node.zone alone changes "
                    "a member's zone); refusing to start"
                )
            expected = genesis_cluster_id(config)
            raise refused(
                f"{whose}, but cluster.nodes and cluster.password describe another cluster "
                f"(id {expected}; changing the password? cluster.password_accepted must "
                "hold the old one meanwhile); refusing to start"
            )
        checked = password_check(password, initial_id)
        return replace(found, members=members, password_check=checked)
    if found.cluster_id is None:
        return found  # admission still pending: the node asks again
    if not found.multi_node:
        raise refused(f"{whose}; cluster.join applies to a new data directory only; refusing")
    stored_check = found.password_check
    if stored_check is None:
        return found
    if stored_check not in {password_check(p, found.cluster_id) for p in candidates}:
        raise refused(f"{whose}, whose password is not cluster.password; refusing to start")
    return replace(found, password_check=password_check(password, found.cluster_id))


StoredMembers = Callable[[Path], dict[int, str] | None]


class DataDir:
    """An opened data directory: locked against a second node process, identity checked."""

    def __init__(self, path: Path, identity: Identity, lock: IO[bytes]) -> None:
        self.path = path
        self.identity = identity
        self._lock = lock

    @classmethod
    def open(cls, config: Config, stored_members: StoredMembers | None = None) -> DataDir:
        """Create or check ``node.data_dir``. Raises StartupError: refused (another node's or
        cluster's directory) or unavailable (cannot be created, written, or is in use)."""
        where = config.node.data_path()
        try:
            where.mkdir(parents=True, exist_ok=True, mode=0o700)
            _private(where)
            lock = open(where / LOCK_FILE, "ab")  # noqa: SIM115 - held for the process's life
        except OSError as e:
            reason = "not a directory" if isinstance(e, FileExistsError) else _reason(e)
            raise unavailable(f"data directory {where} is not usable: {reason}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise unavailable(
                f"data directory {where} is in use by another raftchat node process"
            ) from None
        try:
            found = _read(where)
            if found is None and _has_data(where):
                try:
                    members = (stored_members or _stored_members)(where)
                except Exception as e:
                    raise unavailable(
                        f"data directory {where}: cannot read its cluster map: {e}"
                    ) from None
                found = adopted_identity(config, where, members)
                log.warning(
                    "adopting a data directory without an identity file",
                    data_dir=str(where),
                    cluster_id=found.cluster_id,
                    multi_node=found.multi_node,
                )
            identity = check(found, config, where) if found else fresh_identity(config)
            identity = _check_slot_groups(identity, config, where)
            opened = cls(where, identity, lock)
            opened._write()
        except BaseException:
            lock.close()
            raise
        return opened

    def local_secret(self, *, create: bool) -> str | None:
        """The directory's own secret (``SECRET_FILE``), made now if ``create`` and missing;
        None when missing and not made. Never logged."""
        path = self.path / SECRET_FILE
        try:
            return path.read_text().strip() or None
        except FileNotFoundError:
            if not create:
                return None
        except OSError as e:
            raise unavailable(f"secret file {path} cannot be read: {_reason(e)}") from None
        secret = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secret.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise unavailable(f"data directory {self.path} is not writable: {_reason(e)}") from None
        return secret

    def joined(self, cluster_id: str, password: str, slot_groups: int) -> None:
        """Admitted to a cluster through ``cluster.join``."""
        self.identity = replace(
            self.identity,
            cluster_id=cluster_id,
            multi_node=True,
            password_check=password_check(password, cluster_id),
            slot_groups=slot_groups,
        )
        self._write()

    def slot_groups_known(self, count: int) -> None:
        """The stored cluster map, which matched ``cluster.groups``, has ``count`` slot groups:
        recorded in a file written before the count was."""
        if self.identity.slot_groups is None and self.identity.cluster_id is not None:
            self.identity = replace(self.identity, slot_groups=count)
            self._write()

    def grew(self) -> None:
        """The cluster map has more than one member: from now on this directory refuses to run
        as a lone node."""
        if not self.identity.multi_node:
            self.identity = replace(self.identity, multi_node=True)
            self._write()

    def _write(self) -> None:
        final = self.path / IDENTITY_FILE
        tmp = self.path / (IDENTITY_FILE + ".tmp")
        data = (json.dumps(self.identity.to_json(), indent=1) + "\n").encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # a stale temporary file may have had another mode
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            dir_fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise unavailable(f"data directory {self.path} is not writable: {_reason(e)}") from None


def _read(where: Path) -> Identity | None:
    path = where / IDENTITY_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise unavailable(f"identity file {path} cannot be read: {_reason(e)}") from None
    try:
        return Identity.from_json(json.loads(raw))
    except ValueError as e:
        raise refused(
            f"identity file {path} is damaged ({e}); restore it, or remove it to have the "
            "directory adopted from the configuration"
        ) from None


def _stored_members(where: Path) -> dict[int, str] | None:
    from .controller import stored_members  # RocksDB: imported only to adopt a directory

    return stored_members(where)


def _private(where: Path) -> None:
    """Make the directory 0700: it holds the node's secret, its Raft journals and its stores,
    none of which is anyone else's business. Files inside are made 0600 by the process's
    umask (``node/private_files.py``); a directory from an older raftchat is closed here at
    once, and then nothing inside it is reachable for others whatever the files' own modes."""
    mode = stat.S_IMODE(os.stat(where).st_mode)
    if mode & 0o077:
        try:
            os.chmod(where, mode & 0o700)
        except OSError as e:
            if e.errno == errno.EROFS:
                raise  # nothing can be written there: the caller names it in one line
            log.warning(
                "cannot make the data directory private",
                data_dir=str(where),
                mode=oct(mode),
                error=_reason(e),
            )
        else:
            log.info("data directory made private", data_dir=str(where), was=oct(mode))


def _check_slot_groups(identity: Identity, config: Config, where: Path) -> Identity:
    """Refuse a directory of a cluster with another slot group count than ``cluster.groups``
    (``startup.check_group_count`` says why). A file written before the count was recorded is
    judged by the groups it holds replicas of: one beyond ``cluster.groups`` proves a larger
    count (a smaller one it cannot prove, so nothing is recorded here: the node records the
    count of its stored cluster map once that map passed the same check, ``slot_groups_known``).
    """
    if identity.slot_groups is not None:
        check_group_count(identity.slot_groups, config, f"the cluster of data directory {where}")
        return identity
    held = [int(d.name[1:]) for d in (where / "groups").glob("g*") if d.name[1:].isdigit()]
    if held and max(held) > config.cluster.groups:
        raise refused(
            f"data directory {where} holds slot group {max(held)} and this node's "
            f"cluster.groups is {config.cluster.groups}: set cluster.groups to the count the "
            "cluster was created with (8 by default before it became 3)"
        )
    return identity


def _has_data(where: Path) -> bool:
    return (where / "controller").exists() or (where / "groups").exists()


def _reason(e: OSError) -> str:
    return e.strerror or str(e)
