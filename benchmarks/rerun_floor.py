"""The least wall time a re-run after a classification change can take on this machine, however it is run.

``python benchmarks/rerun_floor.py CONFIG OUT_DIR SETTING`` (the ``rerun`` section of :mod:`run` runs it after its
own runs; OUT_DIR must hold a complete store of CONFIG). In this one process, with everything imported and warmed
up first, it measures the CPU time of the work such a re-run must do, and nothing else: no interpreter start,
no import, no first use of the fonts. Then it prints one JSON line.

The work measured:

* **pipeline**: :func:`sendmap.pipeline.run_pipeline` switching from CONFIG to CONFIG + ``SETTING`` with
  ``output.figures=false``. This covers the config, the store's keys, the classify and statistics stages and
  the tables. It runs twice as a warm-up, then once measured.
* **specs**: reading the figures' inputs from the store and digesting them (:func:`figure_specs`,
  :func:`figure_digests`).
* **figures**: building and saving (PNG, PDF, into memory) each figure whose inputs the change altered.

The floor on ``cores`` cores is the classify and statistics wall time, which the figures must wait for, plus
the rest of the CPU time shared evenly by all cores. A real run also pays its start-up and cannot share the
figures perfectly, so it can only be slower.
"""
from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path


def _cpu(func, *args, **kwargs):
    t0 = time.process_time()  # every thread of this process (numba's and dask's too)
    out = func(*args, **kwargs)
    return out, time.process_time() - t0


def main(argv=None) -> int:
    config, out_dir, setting = (argv or sys.argv[1:])[:3]
    from sendmap.config import load_config
    from sendmap.pipeline import run_pipeline
    from sendmap.report import build
    from sendmap.report import figures as F

    import zarr

    base = [f"output.dir={out_dir}", "output.figures=false"]
    before, after = load_config(config, base), load_config(config, [*base, setting])
    store = str(Path(out_dir) / "sendmap.zarr")
    quiet = lambda _msg: None  # noqa: E731

    def specs_of(cfg):
        group = zarr.open_group(store, mode="r")
        return build.figure_specs(group, cfg.profiles.n, cfg.peaks.window), tuple(cfg.output.formats)

    run_pipeline(before, log=quiet)
    specs_before, formats = specs_of(before)
    old = build.figure_digests(specs_before, formats)
    run_pipeline(after, log=quiet)  # warm-up: every module imported, every numba cache loaded
    run_pipeline(before, log=quiet)
    summary, cpu_pipeline = _cpu(run_pipeline, after, log=quiet)
    serial = summary["timing_s"]["classify"] + summary["timing_s"]["statistics"]
    (specs, _), cpu_specs = _cpu(specs_of, after)
    new, cpu_digest = _cpu(build.figure_digests, specs, formats)
    build._warm_up()
    figures = {}
    for name, func, args, kwargs in specs:
        if new[name] == old[name]:
            continue
        t0 = time.process_time()
        fig = getattr(F, func)(*args, **kwargs)
        for fmt in formats:
            F.write_figure(fig, io.BytesIO(), fmt, "floor")
        figures[name] = time.process_time() - t0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    total = cpu_pipeline + cpu_specs + cpu_digest + sum(figures.values())
    floor = serial + max(total - serial, 0.0) / cores
    print(json.dumps({"cpu_pipeline_s": cpu_pipeline, "cpu_figure_inputs_s": cpu_specs + cpu_digest,
                      "cpu_figures_s": figures, "cpu_total_s": total, "classify_statistics_wall_s": serial,
                      "cores": cores, "floor_s": floor}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
