"""pyFAI reference: ``AzimuthalIntegrator.integrate1d`` over the frames of a Merlin ``.mib`` file.

What pyFAI does per pattern here: one fixed centre for every frame (the mean centre: ``--centre``, else
the mean of ``truth.npz`` beside the file, else the detector centre), 1-pixel radial bins from 0 to
``--nq`` pixels (default: sendmap's default, the distance from that centre to the nearest detector
corner), ``correctSolidAngle=False``, no polarization, no mask, no error model: the azimuthal mean only.
The geometry uses a 1 mm pixel and ``unit="r_mm"`` so that radius in mm = radius in pixels.

Two timings over the same frames (the first ``--frames`` frames, default all), read ``--chunk`` frames
(default one scan row) at a time from the file:

* ``integrate``: the integrate1d calls alone (frames already in memory), ms/pattern;
* ``with_read``: the whole loop, reading each chunk from the file (numpy memmap, big-endian → native,
  rows flipped; or sendmap's reader with ``--reader sendmap``) and integrating it — "pyFAI alone over the
  same frames", what a whole ``sendmap run`` is compared with. The page cache is as the caller left it.

Before that, a survey times every OpenCL-free 1-D method listed (``--methods``) on the first
``--survey`` frames in memory (best of 3), the cython engines both at the default OpenMP thread count
(all cores unless OMP_NUM_THREADS says otherwise) and limited to 1 thread (``@1``; threadpoolctl): on a
busy 2-core machine OpenMP's two threads can be several times slower than one. The full pass uses
``--method`` (default: the fastest CSR variant of the survey, with its thread count); the OpenMP threads
actually in force are reported.

    python benchmarks/ref_pyfai.py bench_data/merlin_3g --json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mibread import Mib, profile_bins, resolve, truth  # noqa: E402

CANDIDATES = ("bbox,csr,cython", "no,csr,cython", "no,csr,python", "bbox,csr,python", "no,csc,cython",
              "bbox,lut,cython", "no,histogram,cython", "bbox,histogram,cython")
PIX = 1e-3


def _threads() -> dict:
    info = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count()}
    try:
        from threadpoolctl import threadpool_info

        omp = [p for p in threadpool_info() if p.get("user_api") == "openmp"]
        info["openmp"] = [{"lib": Path(p["filepath"]).name, "num_threads": p["num_threads"]} for p in omp]
    except Exception as exc:  # threadpoolctl missing or failing: report, don't fail
        info["openmp"] = f"unknown ({exc})"
    return info


def available_methods() -> list[str]:
    from pyFAI.method_registry import IntegrationMethod

    return sorted({f"{m.split_lower},{m.algo_lower},{m.impl_lower}" + (f",{m.target}" if m.target else "")
                   for m in IntegrationMethod.select_method(dim=1)})


def make_integrator(centre_yx, nq: int):
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    cy, cx = centre_yx
    # pyFAI: pixel i spans [i, i+1) * pixel size, its centre at (i + 0.5); sendmap's pixel i is centred at i.
    ai = AzimuthalIntegrator(dist=0.1, poni1=(cy + 0.5) * PIX, poni2=(cx + 0.5) * PIX, pixel1=PIX, pixel2=PIX)

    def integrate(frame, method):
        return ai.integrate1d(frame, nq, unit="r_mm", radial_range=(0.0, nq * PIX * 1e3), method=method,
                              correctSolidAngle=False, polarization_factor=None)

    return ai, integrate


def _limit(threads: int | None):
    """Context limiting OpenMP threads (pyFAI's cython engines) to ``threads``; None: no limit."""
    import contextlib

    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="openmp")


def _variant(key: str) -> tuple[tuple, int | None]:
    """'split,algo,impl[@threads]' → (method tuple, OpenMP thread limit or None for the default)."""
    m, _, th = key.partition("@")
    return tuple(m.split(",")), (int(th) if th else None)


def survey(frames, integrate, methods) -> dict:
    """ms/pattern (best of 3) of every method; cython engines at the default OpenMP threads and at 1
    thread (on a loaded 2-core machine one thread can be much faster than two)."""
    keys = []
    for m in methods:
        keys.append(m)
        if m.endswith(",cython") and (os.cpu_count() or 1) > 1:
            keys.append(f"{m}@1")
    out = {}
    for key in keys:
        method, threads = _variant(key)
        try:
            with _limit(threads):
                integrate(frames[0], method)  # builds the sparse matrix / LUT once
                best = np.inf
                for _ in range(3):
                    t0 = time.perf_counter()
                    for f in frames:
                        integrate(f, method)
                    best = min(best, time.perf_counter() - t0)
        except Exception as exc:
            out[key] = f"failed: {type(exc).__name__}: {exc}"[:200]
            continue
        out[key] = best / len(frames) * 1e3
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path", help=".mib file or a folder holding one (and optionally sendmap synth's truth)")
    p.add_argument("--frames", type=int, default=0, help="first N frames (0: all)")
    p.add_argument("--chunk", type=int, default=0, help="frames read per step (0: one scan row, else 128)")
    p.add_argument("--survey", type=int, default=512, help="frames for the method survey (0: no survey)")
    p.add_argument("--methods", default=";".join(CANDIDATES), help="';'-separated split,algo,impl methods")
    p.add_argument("--method", default="best",
                   help="method of the full pass: split,algo,impl[@omp_threads]; 'best': the fastest CSR variant "
                        "of the survey; 'fastest': the fastest of any algorithm")
    p.add_argument("--centre", type=float, nargs=2, metavar=("CY", "CX"), help="fixed centre (y, x) px")
    p.add_argument("--nq", type=int, default=0, help="radial bins of 1 px (0: sendmap's default)")
    p.add_argument("--reader", choices=["memmap", "sendmap"], default="memmap")
    p.add_argument("--json", action="store_true", help="print one JSON object (else a summary line)")
    args = p.parse_args(argv)

    warnings.filterwarnings("ignore")
    import pyFAI

    mib_path, folder = resolve(args.path)
    mib = Mib(mib_path)
    t = truth(folder)
    n = min(args.frames or mib.n_frames, mib.n_frames)
    if args.centre:
        centre, centre_src = tuple(args.centre), "--centre"
    elif "centre" in t:
        centre, centre_src = tuple(np.nanmean(t["centre"].reshape(-1, 2), axis=0)), "mean of truth.npz centre"
    else:
        centre, centre_src = ((mib.frame_shape[0] - 1) / 2, (mib.frame_shape[1] - 1) / 2), "detector centre"
    nq = args.nq or profile_bins(centre, mib.frame_shape)
    row = int(t["scan_shape"][1]) if "scan_shape" in t else 0
    chunk = args.chunk or row or 128

    if args.reader == "sendmap":
        from sendmap.io import open_dataset

        scan = tuple(t["scan_shape"]) if "scan_shape" in t else (1, mib.n_frames)
        flat = open_dataset(mib_path, "mib", scan).data.reshape(-1, *mib.frame_shape)

        def read(i0, i1):
            return np.asarray(flat[i0:i1].compute())
    else:
        read = mib.frames

    ai, integrate = make_integrator(centre, nq)
    methods = [m for m in args.methods.split(";") if m]
    surv = survey(read(0, min(args.survey, n)), integrate, methods) if args.survey else {}
    timed = {m: v for m, v in surv.items() if isinstance(v, float)}
    if args.method == "best":
        csr = {m: v for m, v in timed.items() if ",csr," in m}
        method = min(csr, key=csr.get) if csr else "bbox,csr,cython"
    elif args.method == "fastest":
        method = min(timed, key=timed.get) if timed else "bbox,csr,cython"
    else:
        method = args.method
    meth, limit = _variant(method)
    with _limit(limit):
        threads = _threads()
        integrate(read(0, 1)[0], meth)  # sparse matrix built outside the timed pass
        t_int = 0.0
        t0 = time.perf_counter()
        for i0 in range(0, n, chunk):
            block = read(i0, min(i0 + chunk, n))
            t1 = time.perf_counter()
            for f in block:
                integrate(f, meth)
            t_int += time.perf_counter() - t1
        t_all = time.perf_counter() - t0

    res = {
        "tool": "pyFAI", "version": pyFAI.version, "file": str(mib_path), "frames": n,
        "frame_shape": list(mib.frame_shape), "chunk_frames": chunk, "reader": args.reader,
        "centre_yx": [round(float(c), 3) for c in centre], "centre_source": centre_src, "nq": nq,
        "method": method, "integrate_s": t_int, "integrate_ms_per_pattern": t_int / n * 1e3,
        "with_read_s": t_all, "with_read_ms_per_pattern": t_all / n * 1e3,
        "survey_frames": min(args.survey, n) if args.survey else 0, "survey_ms_per_pattern": surv,
        "available_methods_1d": available_methods(), "threads": threads,
        "per_pattern": "integrate1d: one fixed centre, 1-px bins, mean only (no variance/error model, "
                       "no solid angle, no polarization, no mask)",
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(f"pyFAI {res['version']} {method}: {n} frames, integrate {res['integrate_ms_per_pattern']:.3f} ms/pattern, "
              f"with reading {res['with_read_ms_per_pattern']:.3f} ms/pattern ({t_all:.1f} s)")
        for m, v in surv.items():
            print(f"  survey {m:24s} " + (f"{v:.3f} ms/pattern" if isinstance(v, float) else v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
