"""No import cycles between our modules, none at all.

Runtime imports only (function-local ones included); imports under ``TYPE_CHECKING`` are type
annotations and do not count. The graph comes from grimp, the library behind import-linter
(whose contracts, in pyproject.toml, check the layers)."""

from __future__ import annotations

import grimp

PACKAGES = ("proto", "cluster", "node", "client", "chaos", "bench", "launcher")


def import_graph() -> dict[str, list[str]]:
    """Each of our modules and the modules of ours it imports at run time."""
    graph = grimp.build_graph(
        *PACKAGES, include_external_packages=False, exclude_type_checking_imports=True
    )
    return {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def cycles(edges: dict[str, list[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
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


def test_no_import_cycle() -> None:
    found = [sorted(c) for c in cycles(import_graph())]
    assert not found, f"import cycles: {found}"


def test_the_graph_holds_function_local_imports() -> None:
    """The check means something only if grimp sees the imports a cycle would hide in: one
    inside a function (``node/cli.py`` imports the chaos tools when the subcommand runs)."""
    edges = import_graph()
    assert "node.groups.conversations" in edges["node.groups.message_ops"]
    assert any(m.startswith("chaos") for m in edges["node.cli"])


def test_the_cycle_finder_finds_one() -> None:
    edges = {
        "a": ["b"],
        "b": ["c"],
        "c": ["a", "d"],
        "d": [],
        "e": ["a", "f"],
        "f": ["e"],
        "g": ["g"],
    }
    assert sorted(sorted(c) for c in cycles(edges)) == [["a", "b", "c"], ["e", "f"]]
