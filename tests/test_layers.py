"""The package layers import one way: core → data → priors, modules → simulate, export → training →
evaluation, synthetic → the demo (and cli.py on top). Parses every module's imports (module level and
inside functions) and fails on an import of a higher layer, of a sibling package of the same layer, or
on a cycle between modules at module level; a function-level import of a cameo_eqx module must say why in
a comment."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "cameo_eqx"

LAYERS: dict[str, int] = {
    # core: the data structure, topology, units, geometry, files and the energy-model contracts
    "graph": 0, "topology": 0, "units": 0, "energy": 0, "geometry": 0, "fileio": 0, "neighbors": 0,
    "_types": 0, "precision": 0, "": 0,  # "" is the package itself (`cameo_eqx/__init__.py`, lazy exports only)
    "config": 0,
    "data": 1,
    "priors": 2, "modules": 2,
    "simulate": 3, "export": 3,
    "training": 4,  # validates by simulation
    "evaluation": 5, "synthetic": 5,
    "demo": 6,
}  # fmt: skip
"""Layer of every top-level module or subpackage of `cameo_eqx`."""

KNOWN: set[tuple[str, str]] = {
    # lazy public API: `cameo_eqx.__getattr__` imports any layer on first use
    ("", "*"),
}
"""(importer, imported) unit pairs allowed for now; each one is a known debt, not a rule."""


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _modules():
    """(module name, its path components as a package base, is a package?, path) of every module."""
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        yield ".".join(parts), parts, is_pkg, path


def _targets(node: ast.AST, parts: list[str], is_pkg: bool) -> list[str]:
    """The `cameo_eqx` modules an import statement names ([] for other imports or other nodes)."""
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = parts if is_pkg else parts[:-1]
            base = base[: len(base) - (node.level - 1)]
            targets = [".".join(base + ([node.module] if node.module else []))]
            if not node.module:  # `from . import x`: x may be a submodule
                targets = [f"{targets[0]}.{a.name}" for a in node.names]
        else:
            targets = [node.module or ""]
    elif isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    else:
        return []
    return [t for t in targets if t == "cameo_eqx" or t.startswith("cameo_eqx.")]


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """module → [(imported cameo_eqx module, at module level?)]."""
    out: dict[str, list[tuple[str, bool]]] = collections.defaultdict(list)
    for module, parts, is_pkg, path in _modules():
        tree = ast.parse(path.read_text(), str(path))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            for t in _targets(node, parts, is_pkg):
                out[module].append((t, id(node) in top))
    return out


UNCOMMENTED_LAZY: set[str] = set()
"""Modules whose function-level project imports need no comment for now; each one is a known debt."""


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PKG.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}  # fmt: skip
    units = {"" if u == "__init__" else u for u in units}
    assert units <= set(LAYERS), f"give these a layer in LAYERS: {sorted(units - set(LAYERS))}"


def test_imports_go_one_way():
    bad = []
    for module, imported in _imports().items():
        a = _unit(module)
        for target, _ in imported:
            b = _unit(target)
            if a == b or (a, b) in KNOWN or (a, "*") in KNOWN or LAYERS[a] == LAYERS[b] == 0:
                continue  # core modules may use each other (the cycle test still applies)
            if LAYERS[b] >= LAYERS[a]:
                kind = "upward" if LAYERS[b] > LAYERS[a] else "sideways"
                bad.append(f"{module} imports {target} ({kind}: layer {LAYERS[a]} → {LAYERS[b]})")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(set(bad)))


def test_no_module_level_import_cycle():
    graph = {m: {t for t, top in imp if top} for m, imp in _imports().items()}
    nodes = set(graph) | {t for ts in graph.values() for t in ts}

    def deps(m):  # importing a.b.c runs a/__init__, a/b/__init__ first
        return {t for t in graph.get(m, ()) if t in nodes and t != m}

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in deps(m):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                # a package importing its own submodules is how packages work, not a cycle
                if not all(c.startswith(cycle[0]) or cycle[0].startswith(c) for c in cycle):
                    pytest.fail("module-level import cycle: " + " → ".join(cycle))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(nodes):
        if m not in state:
            visit(m)


def test_no_private_name_crosses_packages():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        bad.append(f"{path.relative_to(PKG.parent)}: from {'.' * node.level}{node.module} "
                                   f"import {a.name}")  # fmt: skip
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)


def test_lazy_project_imports_say_why():
    """A `cameo_eqx` import inside a function (a lazy import) has a comment on its line or the line above
    saying why it cannot sit at the top of the module (an import cycle, the layering, import time)."""
    bad = []
    for module, parts, is_pkg, path in _modules():
        if module in UNCOMMENTED_LAZY:
            continue
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not _targets(node, parts, is_pkg):
                    continue
                here = "".join(lines[node.lineno - 1 : node.end_lineno])
                above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
                if "#" not in here and not above.startswith("#"):
                    bad.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not bad, ("function-level imports of cameo_eqx modules without a comment saying why (move them to "
                     "the top of the module, or say why not):\n" + "\n".join(sorted(set(bad))))  # fmt: skip
