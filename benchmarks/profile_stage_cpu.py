"""CPU per pattern of the whole profile stage, by part, in one process: the workers' ``ProfileBlock`` calls, their
reads, the main thread (set-up, writes, the spot table after the blocks) and every other thread; and the stage's
serial parts on a timeline (set-up before the blocks, the blocks, the evidence and spot table after them).

``python benchmarks/profile_stage_cpu.py CONFIG [--set KEY=VALUE ...] [--reps N]``

CONFIG's ``output.dir`` holds a store that has finished calibrate (``sendmap run CONFIG --until calibrate``, with
the same ``--set``: a crop such as ``input.crop_r=[0,60,0,360]`` is enough). The stage is run ``1 + N`` times in
this process on the configured scheduler (threads: one block per core), rewriting its outputs; the first run
pays numba's first use (its kernels loaded from the cache, or compiled), the others do not. Per run it prints the
wall time and ``time.process_time`` per pattern and their split: ``time.thread_time`` of the worker calls and the
reads, of the main thread, and the rest (numba's pool threads of the main thread's parallel kernels, zarr's I/O
loop, the spot table's thread); the workers' calls split into the profile kernel
(``polar_tables._profile_block_kernel``), the indexing (``indexing.crystal_evidence``) and the rest (the Python
around them, the float32 outputs). On a machine shared with other jobs wall times follow the load; compare CPU, alternating the versions.
"""
from __future__ import annotations

import argparse
import collections
import threading
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()

    import zarr

    import sendmap.engine.execute as execute
    import sendmap.science.indexing as indexing
    import sendmap.science.polar_tables as polar_tables
    import sendmap.stages.profiles as stage
    from sendmap.compute.profiles import ProfileBlock
    from sendmap.config import load_config
    from sendmap.engine.context import Context

    cfg = load_config(args.config, [*args.set, "compute.progress=false"])
    out_dir = Path(cfg.output.dir)
    acc: dict = collections.defaultdict(float)
    marks: dict = {}
    lock = threading.Lock()
    read0, call0, blocks0, evidence0 = (stage.read_store_block, ProfileBlock.__call__, execute.run_blocks,
                                        stage.write_evidence)

    def read(item):
        t = time.thread_time()
        r = read0(item)
        with lock:
            acc["read"] += time.thread_time() - t
        return r

    def call(self, loaded):
        t = time.thread_time()
        r = call0(self, loaded)
        with lock:
            acc["worker"] += time.thread_time() - t
            acc["n"] += len(loaded[2])
        return r

    def part(mod, name, key):
        func = getattr(mod, name)

        def run(*a, **k):
            t = time.thread_time()
            r = func(*a, **k)
            with lock:
                acc[key] += time.thread_time() - t
            return r
        setattr(mod, name, run)

    part(polar_tables, "_profile_block_kernel", "kernel")
    part(indexing, "crystal_evidence", "indexing")

    def timed(name, func):
        def run(*a, **k):
            marks[name + " start"] = (time.perf_counter(), time.process_time())
            r = func(*a, **k)
            marks[name + " end"] = (time.perf_counter(), time.process_time())
            return r
        return run

    stage.read_store_block, ProfileBlock.__call__ = read, call
    execute.run_blocks = timed("blocks", blocks0)
    stage.write_evidence = timed("evidence", evidence0)
    for rep in range(1 + args.reps):
        g = zarr.open_group(str(out_dir / "sendmap.zarr"), mode="r+")
        ctx = Context(cfg, out_dir, g, None, {}, lambda s: None)
        ctx.stage_key, ctx.resume, ctx.stage = "profile_stage_cpu", False, "profiles"
        acc.clear()
        marks.clear()
        w0, p0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
        stage.stage_profiles(ctx)
        w1, p1, m1 = time.perf_counter(), time.process_time(), time.thread_time()
        n = acc["n"]

        def us(s):
            return 1e6 * s / n

        other = (p1 - p0) - (m1 - m0) - acc["worker"] - acc["read"]
        print(f"run {rep}{' (first use)' if rep == 0 else ''}: {int(n)} patterns; per pattern: wall {us(w1 - w0):.1f} µs,"
              f" CPU {us(p1 - p0):.1f} µs = workers' calls {us(acc['worker']):.1f} + their reads {us(acc['read']):.1f}"
              f" + main thread {us(m1 - m0):.1f} + other threads {us(other):.1f}; the calls: kernel {us(acc['kernel']):.1f}"
              f" + indexing {us(acc['indexing']):.1f} + rest {us(acc['worker'] - acc['kernel'] - acc['indexing']):.1f}")
        pts = [("start", (w0, p0)), *sorted(marks.items(), key=lambda kv: kv[1][0]), ("end", (w1, p1))]
        print("  wall s (CPU s): " + ", ".join(f"{a} → {b} {tb[0] - ta[0]:.2f} ({tb[1] - ta[1]:.2f})"
                                            for (a, ta), (b, tb) in zip(pts, pts[1:])))


if __name__ == "__main__":
    main()
