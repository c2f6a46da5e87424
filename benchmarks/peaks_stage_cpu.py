"""CPU time of the peaks stage alone, on a copy of a finished store, and where it goes.

``python benchmarks/peaks_stage_cpu.py FOLDER [--set KEY=VALUE ...] [--reps N] [--profile] [--save FILE.npz]
[--work DIR]``

FOLDER holds a ``config.yaml`` and the ``results/sendmap.zarr`` of a run that has finished the profile stage (a
bench folder after its first run). The store is copied to ``--work`` (default ``results/peaks_stage_cpu``) without
the detector data (``data_sparse``: the peaks stage does not read it; FOLDER is only read), then the stage is run
``1 + N`` times in this process, rewriting its outputs: the first run pays numba's first use (the kernels loaded
from the cache, or compiled) and the imports, the others do not. Per run it prints ``time.process_time`` (every
thread of the process) and the wall time; on a machine shared with other jobs compare CPU, alternating the
versions. ``--profile``: cProfile of the last run, per function, timed by ``time.thread_time`` (the main thread's
CPU; with ``--set compute.scheduler=synchronous`` the fits run in the main thread too and every numba kernel is
listed with its own time). ``--save``: every array of the ``peaks`` group and the ``peaks`` attribute (as JSON)
after the last run, for comparing two versions' results bit for bit (``--compare A.npz B.npz``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def compare(a_path: Path, b_path: Path) -> int:
    """Print the arrays that differ between two ``--save`` files (NaN equal to NaN); returns how many."""
    a, b = np.load(a_path), np.load(b_path)
    bad = 0
    for k in sorted(set(a.files) | set(b.files)):
        if k not in a.files or k not in b.files:
            print(f"only in one file: {k}")
            bad += 1
            continue
        x, y = a[k], b[k]
        same = x.shape == y.shape and x.dtype == y.dtype and np.array_equal(
            x, y, equal_nan=x.dtype.kind in "fc")
        if not same:
            print(f"differs: {k}")
            bad += 1
    print(f"{len(a.files)} arrays, {bad} differ")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, nargs="?")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--save", type=Path)
    ap.add_argument("--work", type=Path, default=Path("results/peaks_stage_cpu"))
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = ap.parse_args()
    if args.compare:
        return 1 if compare(*args.compare) else 0
    if args.folder is None:
        ap.error("FOLDER is needed (or --compare A B)")

    import cProfile
    import pstats

    import zarr

    from sendmap.config import load_config
    from sendmap.engine.context import Context
    from sendmap.stages.peaks import stage_peaks

    work = args.work / args.folder.resolve().name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(args.folder / "results" / "sendmap.zarr", work / "sendmap.zarr",
                    ignore=shutil.ignore_patterns("data_sparse"))
    cfg = load_config(args.folder / "config.yaml", args.set)
    cfg.compute.progress = False
    g = zarr.open_group(str(work / "sendmap.zarr"), mode="r+")
    ctx = Context(cfg, work, g, None, {}, log=lambda s: None)
    n = int(g["profiles/iqn"].shape[0] * g["profiles/iqn"].shape[1])
    cpu = []
    for rep in range(1 + args.reps):
        prof = cProfile.Profile(time.thread_time) if args.profile and rep == args.reps else None
        c0, w0 = time.process_time(), time.perf_counter()
        if prof:
            prof.enable()
        stage_peaks(ctx)
        if prof:
            prof.disable()
        c, w = time.process_time() - c0, time.perf_counter() - w0
        cpu.append(c)
        print(f"run {rep}{' (first use)' if rep == 0 else ''}: cpu {c:.3f} s ({1e6 * c / n:.1f} µs per position), "
              f"wall {w:.3f} s")
    if len(cpu) > 1:
        print(f"best of runs 1-{args.reps}: cpu {min(cpu[1:]):.3f} s ({1e6 * min(cpu[1:]) / n:.1f} µs per position, "
              f"{n} positions)")
    if args.profile:
        st = pstats.Stats(prof, stream=sys.stdout)
        st.sort_stats("tottime").print_stats(25)
    if args.save:
        out = {name: np.asarray(arr) for name, arr in g["peaks"].arrays()}
        out["__attrs__"] = np.array(json.dumps(dict(g.attrs["peaks"]), sort_keys=True))
        np.savez(args.save, **out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
