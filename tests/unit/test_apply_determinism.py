"""Every replica must apply a command to the same state: code that runs in a slot group's apply
never reads the wall clock or a random source. The command carries its own time
(``ApplyContext.time_ms``), chosen once by the leader.

The check reads the source: it starts from everything in ``node/groups/machine.py`` and the
``META`` tables of the domain modules, follows calls and references to module-level functions
within ``node/groups`` (as ``module.name`` or through ``from .module import name``) and fails on
any use of ``time``, ``datetime``, ``random``, ``secrets``, ``uuid`` or ``os.urandom`` in a
function it reaches. Every module of ``node/groups`` is read, new ones included. Queries (which
run on the reading leader, not in apply) may use the clock."""

from __future__ import annotations

import ast
from pathlib import Path

GROUPS = Path(__file__).resolve().parents[2] / "node" / "groups"
BANNED_MODULES = frozenset({"time", "datetime", "random", "secrets", "uuid"})
BANNED_ATTRIBUTES = frozenset({("os", "urandom")})

Function = tuple[str, str]  # (module, function or Class.method)


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in GROUPS.glob("*.py")}


def _definitions(tree: ast.Module) -> dict[str, ast.AST]:
    """Module-level functions, methods (``Class.method``) and module-level names bound to a
    value (dispatch tables such as ``_KINDS``: following one follows what it lists)."""
    out: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node.value
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out[f"{node.name}.{item.name}"] = item
    return out


def _imported_names(tree: ast.Module, defs: dict[str, dict[str, ast.AST]]) -> dict[str, Function]:
    """Names bound by ``from .module import name`` (anywhere in the module, function-local
    imports included) to the ``node/groups`` definition they stand for."""
    out: dict[str, Function] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module in defs:
            for alias in node.names:
                if alias.name in defs[node.module]:
                    out[alias.asname or alias.name] = (node.module, alias.name)
    return out


def _references(
    node: ast.AST,
    module: str,
    defs: dict[str, dict[str, ast.AST]],
    imported: dict[str, dict[str, Function]],
) -> set[Function]:
    """Module-level functions of ``node/groups`` that ``node`` calls or names."""
    out: set[Function] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in defs[module]:
            out.add((module, sub.id))
        elif isinstance(sub, ast.Name) and sub.id in imported[module]:
            out.add(imported[module][sub.id])
        elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
            owner = sub.value.id
            if owner in defs and sub.attr in defs[owner]:
                out.add((owner, sub.attr))
            elif owner == "self" and module == "machine":
                out |= {(module, n) for n in defs[module] if n.endswith(f".{sub.attr}")}
    return out


def _banned_uses(node: ast.AST, banned_names: set[str]) -> list[str]:
    found = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
            if sub.value.id in BANNED_MODULES or (sub.value.id, sub.attr) in BANNED_ATTRIBUTES:
                found.append(f"{sub.value.id}.{sub.attr} (line {sub.lineno})")
        elif isinstance(sub, ast.Name) and sub.id in banned_names:
            found.append(f"{sub.id} (line {sub.lineno})")
    return found


def _imported_from_banned(tree: ast.Module) -> set[str]:
    """Names bound by ``from time import monotonic`` and the like."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
            BANNED_MODULES
        ):
            names |= {a.asname or a.name for a in node.names}
    return names


def _apply_roots(defs: dict[str, dict[str, ast.AST]]) -> set[Function]:
    """All of ``machine.py`` (the apply itself) and each domain module's ``META`` table."""
    roots = {("machine", name) for name in defs["machine"]}
    return roots | {(module, "META") for module, names in defs.items() if "META" in names}


def reachable_from_apply() -> tuple[set[Function], dict[str, ast.Module], dict]:
    trees = _modules()
    defs = {module: _definitions(tree) for module, tree in trees.items()}
    imported = {module: _imported_names(tree, defs) for module, tree in trees.items()}
    seen: set[Function] = set()
    todo = list(_apply_roots(defs))
    while todo:
        fn = todo.pop()
        if fn in seen:
            continue
        seen.add(fn)
        todo.extend(_references(defs[fn[0]][fn[1]], fn[0], defs, imported) - seen)
    return seen, trees, defs


def test_apply_code_reads_no_clock_and_no_randomness() -> None:
    reached, trees, defs = reachable_from_apply()
    problems = []
    for module, name in sorted(reached):
        banned = _banned_uses(defs[module][name], _imported_from_banned(trees[module]))
        problems += [f"node/groups/{module}.py {name}: {use}" for use in banned]
    assert not problems, "apply must be deterministic:\n" + "\n".join(problems)


def test_the_check_reaches_the_domain_modules_and_not_their_queries() -> None:
    """The check means something only if it follows apply into the modules (a walk that found
    nothing would pass any code), and stops where apply stops."""
    reached, _, _ = reachable_from_apply()
    assert ("conversations", "on_message") in reached
    assert ("message_ops", "on_message") in reached
    assert ("command_sync", "enqueue") in reached
    assert ("message_ops", "_revoke") in reached  # through the _KINDS dispatch table
    assert ("streams", "_apply") in reached
    assert ("views", "is_gone") in reached  # the shared leaf, from streams and message_ops
    assert ("channel_state", "in_list") in reached  # through ``from .channel_state import``
    assert ("conversation_reads", "_now_ms") not in reached  # a query's clock
    assert ("streams", "QUERIES") not in reached
    # The read modules are queries through and through: apply never enters them.
    entered = {module for module, _ in reached}
    assert not entered & {"reads", "message_reads", "conversation_reads"}


def test_the_check_finds_a_clock_in_apply() -> None:
    tree = ast.parse("def f(ctx):\n    return time.time() + random.random()\n")
    assert len(_banned_uses(tree, set())) == 2
    tree = ast.parse("from time import monotonic\ndef f():\n    return monotonic()\n")
    assert _banned_uses(tree.body[1], _imported_from_banned(tree)) == ["monotonic (line 3)"]
