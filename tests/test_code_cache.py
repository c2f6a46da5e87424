"""The stage cache cannot outlive the code that made it: a stage's key holds the digest of the sendmap code it can
run (:mod:`sendmap.engine.codehash`), and numba's on-disk cache lives in a folder named by the package's digest."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sendmap.cli import main
from sendmap.engine.codehash import package_digest, stage_modules
from sendmap.pipeline import STAGES

PACKAGE = Path(__file__).resolve().parents[1] / "sendmap"


def _copy_package(dest: Path) -> Path:
    shutil.copytree(PACKAGE, dest / "sendmap", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _run_copy(root: Path, *args, cache_root: Path):
    env = dict(os.environ, PYTHONPATH=str(root), SENDMAP_NUMBA_CACHE_ROOT=str(cache_root))
    env.pop("NUMBA_CACHE_DIR", None)
    return subprocess.run([sys.executable, "-m", "sendmap.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=root)


def test_stage_modules_follow_what_each_stage_runs():
    mods = {st.name: stage_modules(st.run.__name__, st.run.__module__) for st in STAGES}
    assert "sendmap.science.peaks" in mods["peaks"] and "sendmap.science.peaks" not in mods["profiles"]
    assert "sendmap.science.stats" in mods["statistics"] and "sendmap.science.stats" not in mods["classify"]
    assert "sendmap.science.polar_tables" in mods["profiles"] and "sendmap.science.sparse" in mods["profiles"]
    assert "sendmap.report.figures" in mods["report"] and "sendmap.report.figures" not in mods["ingest"]
    assert "sendmap.compute.ingest" in mods["ingest"] and "sendmap.io.mib" in mods["ingest"]
    assert "sendmap.compute.profiles" in mods["profiles"] and "sendmap.compute.profiles" not in mods["peaks"]
    assert all(f"sendmap.stages.{name}" in m for name, m in mods.items())


def test_edited_science_function_reruns_exactly_the_stages_that_use_it(tmp_path):
    """A copy of the package with the same sources reuses every stage of a store made by this checkout (the
    digests hash contents, not paths); after an edit of ``science/stats.py`` in the copy only statistics and
    report (after it) are recomputed; numba's cache folder follows the edit too."""
    assert main(["synth", str(tmp_path / "s"), "--scan-shape", "6", "8", "--detector", "64", "--quiet"]) == 0
    cfg = tmp_path / "s" / "config.yaml"
    common = ["--no-progress", "--set", "output.figures=false"]
    assert main(["run", str(cfg), *common]) == 0
    root = _copy_package(tmp_path / "copy")
    cache = tmp_path / "numba"
    r = _run_copy(root, "run", cfg, *common, cache_root=cache)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "s" / "results" / "summary.json").read_text())
    assert summary["reused_stages"] == [st.name for st in STAGES]
    dirs_before = {p.name for p in cache.iterdir()}
    stats = root / "sendmap" / "science" / "stats.py"
    src = stats.read_text()
    assert "def fit_gaussian(" in src
    stats.write_text(src.replace("def fit_gaussian(", "def fit_gaussian(  # edited\n        ", 1))
    r = _run_copy(root, "run", cfg, *common, cache_root=cache)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "s" / "results" / "summary.json").read_text())
    assert summary["reused_stages"] == ["ingest", "calibrate", "profiles", "peaks", "classify"]
    assert {p.name for p in cache.iterdir()} - dirs_before  # a new numba cache folder for the edited source


def test_package_digest_is_the_numba_cache_folder(monkeypatch, tmp_path):
    from sendmap.engine.codehash import numba_cache_dir

    d = numba_cache_dir(tmp_path)
    assert d.name == package_digest()[:16] and d.is_dir()
    for i in range(6):
        (tmp_path / f"old{i}").mkdir()
    numba_cache_dir(tmp_path, keep=3)
    assert len(list(tmp_path.iterdir())) == 3 and d.is_dir()


def test_input_fingerprint_sees_size_and_modification_time_and_says_what_it_read(tmp_path):
    from sendmap.io import fingerprint

    f = tmp_path / "d.bin"
    f.write_bytes(bytes(range(256)) * 40000)  # 10 MB: sampled, not read in full
    a = fingerprint(f)
    os.utime(f, ns=(a["mtime_ns"] + 10**9, a["mtime_ns"] + 10**9))  # same bytes, rewritten later
    b = fingerprint(f)
    assert a["sha256_sampled"] != b["sha256_sampled"] and b["mtime_ns"] == a["mtime_ns"] + 10**9
    assert "modification time" in a["sampled"] and "first, middle and last 1 MiB" in a["sampled"]
    small = tmp_path / "s.bin"
    small.write_bytes(b"x" * 100)
    assert fingerprint(small)["sampled"] == "every byte"
