"""pysyncobj's internals are reached from one module, ``cluster/raft/pysyncobj_seam.py``, which
is written against one pysyncobj version and refuses any other.

The check reads the source of every module under ``cluster/`` and ``node/``: none but the seam
may name a name-mangled attribute of pysyncobj's classes (not even in a comment), a private
member or a racy state read of a ``SyncObj``, a private name of a pysyncobj module, or import a
pysyncobj module as an object (the way to replace its names process-wide). And outside
``cluster/raft`` (the driver thread's code) a group is reached only through its published view
and pysyncobj's thread-safe calls."""

from __future__ import annotations

import ast
import importlib.metadata
import pkgutil
import re
from pathlib import Path

import pysyncobj
import pytest

from cluster.raft import pysyncobj_seam

ROOT = Path(__file__).resolve().parents[2]
SEAM = ROOT / "cluster" / "raft" / "pysyncobj_seam.py"
PACKAGES = ("cluster", "node")

MANGLED = ("_SyncObj__", "_TcpConnection__", "_TcpServer__", "_Transport__", "_Poller__")
"""Name-mangled attributes of pysyncobj's classes: searched in the text, comments included."""

SYNCOBJ_INTERNALS = frozenset(
    {
        # private members
        "_isLeader",
        "_getLeader",
        "_isReady",
        "_getTerm",
        "_getRaftLogSize",
        "_getConf",
        "_applyCommand",
        "_doDestroy",
        "_onTick",
        # reads of Raft state that another thread would see change under it (a group's view
        # has them, as of the driver's last tick)
        "raftCommitIndex",
        "raftLastApplied",
        "raftCurrentTerm",
        "hasQuorum",
        "getStatus",
        "isReady",
        "_getStatus",
        # module-level names that pysyncobj's code looks up at run time
        "createPoller",
        "getEncryptor",
    }
)

SUBMODULES = frozenset(m.name for m in pkgutil.iter_modules(pysyncobj.__path__))

GROUP_CALLS_OUTSIDE_RAFT = frozenset(
    {
        "view",  # the published GroupView
        "on_leader_news",  # a callback the driver thread calls
        "apply",  # pysyncobj queues the command (thread-safe)
        "addNodeToCluster",  # likewise, a membership command
        "removeNodeFromCluster",
        "transferLeadership",  # reads Raft state: only inside driver.call (node/admin.py)
    }
)
"""What code outside ``cluster/raft`` may use of a ``ReplicatedGroup`` (``<x>.raft.<name>``)."""


def reaches(source: str, filename: str = "<source>") -> list[str]:
    """Where ``source`` reaches pysyncobj's internals, one line each."""
    found = [
        f"{filename}:{source.count(chr(10), 0, m.start()) + 1}: {m.group()}"
        for m in re.finditer("|".join(re.escape(p) + r"\w*" for p in MANGLED), source)
    ]
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and node.attr in SYNCOBJ_INTERNALS:
            found.append(f"{where}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in SYNCOBJ_INTERNALS:
            found.append(f"{where}: {node.id}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
            node.name in SYNCOBJ_INTERNALS
        ):
            found.append(f"{where}: def {node.name} (an override)")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pysyncobj."):
                    found.append(f"{where}: import {alias.name} (the module as an object)")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pysyncobj":
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{where}: from {node.module} import {alias.name}")
                elif node.module == "pysyncobj" and alias.name in SUBMODULES:
                    found.append(f"{where}: from pysyncobj import {alias.name} (a module)")
    return found


def group_uses(source: str, filename: str = "<source>") -> list[str]:
    """``<x>.raft.<name>`` in ``source`` for a name a thread other than the driver's may not
    use."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "raft"
            and node.attr not in GROUP_CALLS_OUTSIDE_RAFT
        ):
            found.append(f"{filename}:{node.lineno}: .raft.{node.attr}")
    return found


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_only_the_seam_reaches_pysyncobj_internals() -> None:
    found = [
        line
        for path in _sources()
        if path != SEAM
        for line in reaches(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not found, "pysyncobj internals outside cluster/raft/pysyncobj_seam.py:\n" + "\n".join(
        found
    )


def test_the_check_sees_what_the_seam_does() -> None:
    """Through the real seam: each kind of reach is found there."""
    found = "\n".join(reaches(SEAM.read_text()))
    assert "_SyncObj__raftCommitIndex" in found
    assert "_TcpConnection__processRead" in found
    assert "def _onTick" in found
    assert "._doDestroy" in found
    assert ".hasQuorum" in found
    assert ".createPoller" in found
    assert "import pysyncobj.syncobj (the module as an object)" in found
    assert "import _RAFT_STATE" in found


def test_threads_outside_the_driver_reach_a_group_through_its_view() -> None:
    found = [
        line
        for path in _sources()
        if not path.is_relative_to(ROOT / "cluster" / "raft")
        for line in group_uses(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not found, "a group's pysyncobj state read outside the driver:\n" + "\n".join(found)
    assert group_uses("def f(local):\n    return local.raft.raftCommitIndex\n")


def test_the_seam_names_the_version_it_was_written_for() -> None:
    pinned = re.search(r'"pysyncobj==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned is not None
    assert pinned.group(1) == pysyncobj_seam.PYSYNCOBJ_VERSION
    assert importlib.metadata.version("pysyncobj") == pysyncobj_seam.PYSYNCOBJ_VERSION
    pysyncobj_seam.check_version(pysyncobj_seam.PYSYNCOBJ_VERSION)


def test_another_pysyncobj_is_refused_naming_both_versions() -> None:
    with pytest.raises(ImportError) as refused:
        pysyncobj_seam.check_version("0.3.18")
    message = str(refused.value)
    assert "pysyncobj 0.3.18 is installed" in message
    assert f"pysyncobj {pysyncobj_seam.PYSYNCOBJ_VERSION} internals" in message
