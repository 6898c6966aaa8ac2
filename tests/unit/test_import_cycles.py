"""No import cycles between our modules, except the one listed here, which may only shrink.

Runtime imports only (function-local ones included); imports under ``TYPE_CHECKING`` are type
annotations and do not count. The graph comes from grimp, the library behind import-linter
(whose contracts, in pyproject.toml, check the layers)."""

from __future__ import annotations

import grimp

PACKAGES = ("proto", "cluster", "node", "client", "chaos", "bench", "launcher")

KNOWN_CYCLES = [
    # The slot group's domain modules call each other's apply and read functions: splitting
    # their reads from their writes, with a leaf module of shared views, is what removes it.
    {
        "node.groups.channel_state",
        "node.groups.command_sync",
        "node.groups.conversations",
        "node.groups.message_ops",
        "node.groups.msgindex",
        "node.groups.reads",
        "node.groups.streams",
    },
]


def import_cycles() -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    graph = grimp.build_graph(
        *PACKAGES, include_external_packages=False, exclude_type_checking_imports=True
    )
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                nxt = edges[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:  # back in the caller: pass the low link up
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_no_import_cycle_but_the_known_ones() -> None:
    found = import_cycles()
    new = [sorted(c) for c in found if c not in KNOWN_CYCLES]
    assert not new, f"import cycles: {new}"
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in found]
    assert not gone, f"a known cycle changed or went away: update KNOWN_CYCLES ({gone})"


def test_the_cycle_finder_finds_one() -> None:
    """Through the real graph: the finder must see a cycle when there is one."""
    assert any("node.groups.conversations" in c for c in import_cycles())
