"""Digests of sendmap's own source code, so that no cached result outlives the code that made it.

Two caches use them:

* the stage cache (:func:`sendmap.engine.runner.stage_keys`): a stage's key includes :func:`stage_code_digest`, the
  SHA-256 of the stage's module (``sendmap/stages/NAME.py``) and of every sendmap module the stage's code can reach:
  the modules its function imports (at the top of its module or inside the function), those imported by the
  helpers it calls, and, transitively and name by name, the modules of every definition those use
  (:func:`stage_modules`; a module imported whole counts whole). An edit of a science function therefore
  recomputes the stages that can call it (and, through the chained keys, the stages after them), nothing before
  them;
* numba's on-disk cache (:func:`numba_cache_dir`): numba checks only the time stamp of the file a kernel is
  defined in, not of the helpers it inlines from other files. sendmap's kernels are cached in a folder named by
  the digest of the whole package, so an edit anywhere compiles afresh instead of loading a stale kernel.

The digests read the ``.py`` files (about 1 MB, a few ms) and are computed once per process.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""The sendmap package folder (this module lives in its engine/)."""


def _module_file(name: str) -> Path | None:
    """The source file of sendmap module ``name`` ('sendmap.science.peaks'), or None if it is not one."""
    parts = name.split(".")
    if parts[0] != "sendmap":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _resolve(current: str, is_package: bool, level: int, module: str | None) -> str:
    """Absolute name of a (relative) import ``from {'.' * level}{module} import ...`` in module ``current``."""
    if level == 0:
        return module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


@functools.lru_cache(maxsize=None)
def _parsed(name: str) -> tuple[ast.Module, bytes]:
    f = _module_file(name)
    src = f.read_bytes()
    return ast.parse(src), src


def _digest(modules) -> str:
    h = hashlib.sha256()
    for name in sorted(modules):
        h.update(name.encode() + b"\0" + _parsed(name)[1] + b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _module_table(name: str):
    """(top-level definitions: name → node, top-level import bindings: name → (module, attribute or None)) of a
    sendmap module."""
    tree, _ = _parsed(name)
    is_pkg = _module_file(name).name == "__init__.py"
    defs: dict[str, list] = {}
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            defs.setdefault(n.name, []).append(n)
        elif isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                for tn in ast.walk(t):
                    if isinstance(tn, ast.Name):
                        defs.setdefault(tn.id, []).append(n)
    binds = {}
    for n in tree.body:
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            binds.update(_bindings(n, name, is_pkg))
    return defs, binds, is_pkg


def _bindings(node: ast.AST, current: str, is_package: bool) -> dict[str, tuple[str, str | None]]:
    """Sendmap imports under ``node``: bound name → (module, name imported from it, or None for the module)."""
    out: dict[str, tuple[str, str | None]] = {}
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            for a in n.names:
                if a.name.split(".")[0] == "sendmap":
                    out[a.asname or a.name] = (a.name, None)
        elif isinstance(n, ast.ImportFrom):
            mod = _resolve(current, is_package, n.level, n.module)
            if not mod.startswith("sendmap"):
                continue
            for a in n.names:
                sub = f"{mod}.{a.name}"
                out[a.asname or a.name] = (sub, None) if _module_file(sub) else (mod, a.name)
    return out


@functools.lru_cache(maxsize=None)
def stage_modules(function_name: str, module: str) -> frozenset[str]:
    """The sendmap modules whose code the top-level function ``function_name`` of ``module`` can run.

    Followed by name: the top-level functions, classes and constants a reached definition uses (in its own
    module, or imported from another by ``from M import name``), and the imports inside it; a module imported
    whole (``import M``, ``from . import M``) counts with everything in it. Each reached module counts with its
    package ``__init__`` files. Code reached through strings (``importlib.import_module``) is not followed:
    sendmap uses that only to import modules ahead of time."""
    todo: list[tuple[str, str | None]] = [(module, function_name)]
    seen: set = set()
    mods: set[str] = set()
    while todo:
        item = todo.pop()
        mod, name = item
        if item in seen or _module_file(mod) is None:
            continue
        seen.add(item)
        parts = mod.split(".")
        mods.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        defs, binds, is_pkg = _module_table(mod)
        if name is None:  # the whole module
            nodes = [n for ns in defs.values() for n in ns]
            todo.extend(binds.values())
        elif name in defs:
            nodes = defs[name]
        elif name in binds:  # re-exported: follow it to where it is defined
            todo.append(binds[name])
            continue
        else:
            nodes = []
        for node in nodes:
            todo.extend(_bindings(node, mod, is_pkg).values())
            for n in ast.walk(node):
                if isinstance(n, ast.Name):
                    if n.id in defs:
                        todo.append((mod, n.id))
                    elif n.id in binds:
                        todo.append(binds[n.id])
                elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in binds:
                    target = binds[n.value.id]
                    if target[1] is None:  # M.attr of a module imported whole: that attribute of it
                        todo.append((target[0], n.attr))
    return frozenset(mods)


def stage_code_digest(function_name: str, module: str) -> str:
    """SHA-256 (hex) of the sources of :func:`stage_modules` of a stage function.

    Following the names costs ~0.5 s of AST walking, so the digests are kept per package digest in
    ``stage_code.json`` beside the numba cache of this source (:func:`numba_cache_dir`): computed once after
    any edit, read (a few ms) by every later run."""
    key = f"{module}:{function_name}"
    memo = _stage_digest_memo()
    if key not in memo:
        memo[key] = _digest(stage_modules(function_name, module))
        _save_stage_digests(memo)
    return memo[key]


@functools.lru_cache(maxsize=1)
def _stage_digest_memo() -> dict:
    import json

    try:
        data = json.loads((_digest_file()).read_text(encoding="utf-8"))
        return dict(data) if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _digest_file() -> Path:
    import os

    root = os.environ.get("SENDMAP_NUMBA_CACHE_ROOT") or None
    return numba_cache_dir(Path(root) if root else None, keep=0) / "stage_code.json"


def _save_stage_digests(memo: dict) -> None:
    import json
    import os

    try:
        f = _digest_file()
        tmp = f.with_name(f".{f.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(memo, sort_keys=True), encoding="utf-8")
        os.replace(tmp, f)
    except OSError:  # a read-only cache: computed again next time
        pass


@functools.lru_cache(maxsize=1)
def package_digest() -> str:
    """SHA-256 (hex) of every ``.py`` file of the package (names and contents)."""
    h = hashlib.sha256()
    for f in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(str(f.relative_to(PACKAGE_DIR)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def numba_cache_dir(root: Path | None = None, keep: int = 4) -> Path:
    """The folder for numba's on-disk cache of this exact source: ``<root>/<package digest[:16]>`` (root:
    ``$XDG_CACHE_HOME/sendmap/numba``, by default ``~/.cache/sendmap/numba``). Older folders beyond the
    ``keep`` most recently used are removed (``keep`` 0: none)."""
    import os
    import shutil

    if root is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = Path(base) / "sendmap" / "numba"
    d = Path(root) / package_digest()[:16]
    if keep <= 0 and d.is_dir():  # a look-up, not a use: no clean-up
        return d
    try:
        d.mkdir(parents=True, exist_ok=True)
        os.utime(d)
        if keep <= 0:
            return d
        old = sorted((p for p in Path(root).iterdir() if p.is_dir() and p != d),
                     key=lambda p: p.stat().st_mtime, reverse=True)[keep - 1:]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
    except OSError:  # a read-only home: numba then falls back to its own locations
        pass
    return d
