"""The package's layout rules (issue 19), checked statically on the source (nothing is imported, so this is fast and
sees every module, including those whose dependencies are optional):

* no import cycle among ``sendmap`` modules;
* every import of a ``sendmap`` module names a module (and, for ``from X import name``, a name) that exists, also
  inside functions, where a stale import only fails when the function runs;
* no module over :data:`MAX_LINES` lines unless its docstring has a line starting ``Size:`` that gives the reason.

What counts as an edge of the import graph: the imports that run when a module is imported, i.e. those at module
level (also inside ``try``/``if`` blocks and class bodies) and those inside a function the module calls at its top
level (``sendmap/__init__.py`` calls one). Imports under ``if TYPE_CHECKING:`` never run and are left out. Imports
inside other functions run later, when the function is called, after every module involved has finished importing:
they are how a cycle is broken, so they are not edges of the cycle check; :func:`deferred_edges` lists those that
break one (shown by ``pytest -rP`` and by running this file as a script).
``from pkg import name`` is an edge to ``pkg.name`` where that is a module, else to ``pkg``; the implicit import of
the parent packages of a submodule is not counted (a package's ``__init__`` would otherwise sit in every cycle).
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "sendmap"
MAX_LINES = 500
"""The module size rule of issue 19: larger modules say why at their top (a docstring line starting "Size:")."""


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported sendmap module
    names: tuple  # for ``from target import a, b``: the names; () for ``import target`` or a submodule import
    line: int
    module_level: bool


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _walk_imports(body, in_function: bool, out: list, functions: dict) -> None:
    """(node, runs at import time) of every import in ``body``; records top-level function bodies in ``functions``."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append((node, not in_function))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not in_function:
                functions[node.name] = node
            _walk_imports(node.body, True, out, functions)
        elif isinstance(node, ast.If) and _is_type_checking(node):
            continue
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                sub = getattr(node, field, None)
                if isinstance(sub, list):
                    _walk_imports(sub, in_function, out, functions)
            if isinstance(node, ast.Match):
                for case in node.cases:
                    _walk_imports(case.body, in_function, out, functions)


def _called_at_top_level(tree: ast.Module) -> set[str]:
    """Names of functions called by a bare statement at the module's top level (``f()``)."""
    return {n.value.func.id for n in tree.body
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Name)}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, modules: dict) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found, functions = [], {}
    _walk_imports(tree.body, False, found, functions)
    at_import = set()
    for fname in _called_at_top_level(tree):
        if fname in functions:
            at_import |= {id(n) for n in ast.walk(functions[fname]) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node, module_level in found:
        module_level = module_level or id(node) in at_import
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "sendmap" or alias.name.startswith("sendmap."):
                    out.append(Import(name, alias.name, (), node.lineno, module_level))
            continue
        target = _resolve(name, path.name == "__init__.py", node)
        if not (target == "sendmap" or target.startswith("sendmap.")):
            continue
        plain = tuple(a.name for a in node.names if f"{target}.{a.name}" not in modules)
        for alias in node.names:
            if f"{target}.{alias.name}" in modules:  # from pkg import submodule
                out.append(Import(name, f"{target}.{alias.name}", (), node.lineno, module_level))
        if plain:
            out.append(Import(name, target, plain, node.lineno, module_level))
    return out


def import_graph() -> tuple[dict[str, Path], list[Import]]:
    modules = all_modules()
    edges = [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]
    return modules, edges


def cycles(nodes, edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph = {n: sorted({e.target for e in edges if e.source == n and e.target != n}) for n in nodes}
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):  # recursive: the graph is shallow (tens of modules)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def deferred_edges(edges: list[Import]) -> list[Import]:
    """The function-level imports that break a cycle: one that, made a module-level import, would close a cycle
    of module-level imports, or one of two modules importing each other inside functions (e.g. ingest and
    pipeline)."""
    module_level = [e for e in edges if e.module_level]
    nodes = {e.source for e in edges} | {e.target for e in edges}
    deferred = {(e.source, e.target) for e in edges if not e.module_level}
    out = []
    for e in edges:
        if e.module_level or e.source == e.target:
            continue
        if (e.target, e.source) in deferred or any(
                e.source in c and e.target in c for c in cycles(nodes, module_level + [e])):
            out.append(e)
    return out


def _top_level_names(path: Path) -> set[str] | None:
    """Names a module defines at its top level (None: it has a module ``__getattr__`` or a star import, so any
    name may exist)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "__getattr__" \
                and node in tree.body:
            return None
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                if a.name == "*":
                    return None
                names.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                sub = getattr(node, field, None)
                if isinstance(sub, list):
                    stack.extend(sub)
    return names


def test_no_import_cycle():
    modules, edges = import_graph()
    assert len(modules) > 50 and any(e.module_level for e in edges)  # the walk found the package
    found = cycles(modules, [e for e in edges if e.module_level])
    for e in deferred_edges(edges):  # shown with pytest -rP: the function-level imports that break a cycle
        print(f"deferred: {e.source}:{e.line} imports {e.target} inside a function")
    detail = []
    for comp in found:
        detail.append(" <-> ".join(comp) + ":\n" + "\n".join(
            f"    {e.source}:{e.line} imports {e.target}" for e in edges
            if e.module_level and e.source in comp and e.target in comp and e.source != e.target))
    assert not found, "module-level import cycles:\n" + "\n".join(detail)


def test_imports_of_sendmap_modules_exist():
    """Every ``sendmap`` import, module-level or inside a function, names an existing module and names it defines."""
    modules, edges = import_graph()
    defined = {}
    bad = []
    for e in edges:
        if e.target not in modules:
            bad.append(f"{e.source}:{e.line}: no module {e.target}")
            continue
        if e.names:
            if e.target not in defined:
                defined[e.target] = _top_level_names(modules[e.target])
            names = defined[e.target]
            missing = [n for n in e.names if names is not None and n not in names]
            if missing:
                bad.append(f"{e.source}:{e.line}: {e.target} defines no {', '.join(missing)}")
    assert not bad, "\n".join(bad)


def _size_reason(path: Path) -> str | None:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    for line in doc.splitlines():
        if line.strip().startswith("Size:") and len(line.strip()) > len("Size:") + 10:
            return line.strip()
    return None


def test_module_size():
    """No module over MAX_LINES lines without a reason ("Size: ...", a line of its docstring)."""
    too_big = []
    for name, path in all_modules().items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES and _size_reason(path) is None:
            too_big.append(f"{name} ({path.relative_to(PACKAGE_DIR.parent)}): {n} lines")
    assert not too_big, (f"modules over {MAX_LINES} lines without a 'Size:' line in their docstring:\n  "
                         + "\n  ".join(too_big))


@pytest.mark.parametrize("source, expect_cycle", [
    ("a: from . import b\nb: from . import a", True),
    ("a: from . import b\nb: def f():\n    from . import a", False),
    ("a: from .b import x\nb: import sendmap.a", True),
    ("a: from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import b\nb: from . import a", False),
    ("a: def g():\n    from . import b\ng()\nb: from . import a", True),
])
def test_the_checks_see_cycles(tmp_path, monkeypatch, source, expect_cycle):
    """The graph on a made-up package: a cycle is found where the imports run at import time, and only there."""
    pkg = tmp_path / "sendmap"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    files, current = {}, None
    for line in source.split("\n"):
        if line[:2] in ("a:", "b:"):
            current = line[0]
            files[current] = [line[3:]]
        else:
            files[current].append(line)
    for name, lines in files.items():
        (pkg / f"{name}.py").write_text("\n".join(lines) + "\nx = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE_DIR", pkg)
    modules, edges = import_graph()
    found = cycles(modules, [e for e in edges if e.module_level])
    assert bool(found) == expect_cycle, (found, edges)
    if not expect_cycle and "def f" in source:
        assert [(e.source, e.target) for e in deferred_edges(edges)] == [("sendmap.b", "sendmap.a")]


if __name__ == "__main__":  # print the deferred imports that break cycles
    _, _edges = import_graph()
    for _e in deferred_edges(_edges):
        print(f"{_e.source}:{_e.line} imports {_e.target} inside a function (it breaks a cycle)")
