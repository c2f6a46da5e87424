"""py4DSTEM reference: ``PolarDatacube.calculate_radial_statistics`` on the first N frames of a Merlin file.

Runs in its own virtualenv (``.venv-py4dstem``: py4DSTEM pins numpy<2, so it never enters sendmap's
``.venv``); reads the ``.mib`` with numpy (benchmarks/mibread.py), not with sendmap.

Setup (not timed): the first ``--frames`` frames are read into memory as a (1, N, Qx, Qy) ``DataCube``;
calibration: Q pixel size, the origin of every position (sendmap synth's ground-truth centres
``truth.npz``, i.e. a per-pattern centre as sendmap uses; else ``--centre``/the detector centre for all),
the ellipse (``truth.json``: ratio and major-axis angle, converted to py4DSTEM's (a, b, θ) with x = detector
rows); ``PolarDatacube(datacube, qmin=0, qmax=nq, qstep=1, n_annular=72, ellipse=True)`` (1-pixel radial
bins to sendmap's q range, as many azimuthal bins as sendmap's sectors).

Timed: ``polar.calculate_radial_statistics(progress_bar=False)``. Per pattern, py4DSTEM computes the
elliptical polar transform of the frame (bilinear splitting of every pixel onto 4 (r, θ) bins with
``np.bincount``, a Gaussian KDE along θ at small radii) and of the mask for normalisation, then the
azimuthal mean and standard deviation per radius — the polar transform is evaluated twice per pattern
(once for the mean, once for the std) — and at the end the mean/variance/normalised variance over
positions. NumPy, single-threaded. ``--repeat`` runs take the best.

    .venv-py4dstem/bin/python benchmarks/ref_py4dstem.py bench_data/merlin_3g --frames 256 --json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mibread import Mib, profile_bins, resolve, truth  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path", help=".mib file or a folder holding one (and sendmap synth's truth)")
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--nq", type=int, default=0, help="radial bins of 1 px (0: sendmap's default)")
    p.add_argument("--n-annular", type=int, default=72)
    p.add_argument("--centre", type=float, nargs=2, metavar=("CY", "CX"), help="fixed centre (y, x) px if no truth")
    p.add_argument("--q-pixel-size", type=float, default=0.0, help="1/Å per pixel (default: truth.json, else 1)")
    p.add_argument("--no-ellipse", action="store_true")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    warnings.filterwarnings("ignore")
    import py4DSTEM

    mib_path, folder = resolve(args.path)
    mib = Mib(mib_path)
    t = truth(folder)
    n = min(args.frames, mib.n_frames)
    frames = mib.frames(0, n)
    if "centre" in t and not args.centre:
        cyx = t["centre"].reshape(-1, 2)[:n]
        origin_src = "truth.npz, per pattern"
    else:
        c = args.centre or ((mib.frame_shape[0] - 1) / 2, (mib.frame_shape[1] - 1) / 2)
        cyx = np.tile(np.asarray(c, float), (n, 1))
        origin_src = "--centre" if args.centre else "detector centre"
    mean_c = np.nanmean(t["centre"].reshape(-1, 2), axis=0) if "centre" in t else cyx.mean(axis=0)
    nq = args.nq or profile_bins(mean_c, mib.frame_shape)

    # py4DSTEM: data (Rx, Ry, Qx, Qy); x is the first detector axis (rows), origin (qx0, qy0) = (row, col).
    dc = py4DSTEM.DataCube(data=frames.astype(np.float32).reshape(1, n, *mib.frame_shape))
    dc.calibration.set_Q_pixel_size(args.q_pixel_size or t.get("q_pixel_size", 1.0))
    dc.calibration.set_Q_pixel_units("A^-1")
    dc.calibration.set_origin((cyx[:, 0].reshape(1, n), cyx[:, 1].reshape(1, n)))
    ellipse = None
    if "ellipse" in t and not args.no_ellipse:
        # sendmap: major axis at angle_deg from +x (columns) towards +y (rows); in py4DSTEM's (x=row, y=col)
        # that direction is θ = 90° − angle; a (semi-axis along θ) / b (perpendicular) = ratio.
        ratio, ang = t["ellipse"]["ratio"], t["ellipse"]["angle_deg"]
        ellipse = (math.sqrt(ratio), 1 / math.sqrt(ratio), math.radians(90.0 - ang))
        dc.calibration.set_ellipse(ellipse)
    polar = py4DSTEM.process.polar.PolarDatacube(dc, qmin=0.0, qmax=float(nq), qstep=1.0, n_annular=args.n_annular,
                                                 ellipse=ellipse is not None)
    best = math.inf
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        polar.calculate_radial_statistics(progress_bar=False)
        best = min(best, time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(min(n, 32)):
        polar.data[0, i]
    t_transform = (time.perf_counter() - t0) / min(n, 32)

    res = {
        "tool": "py4DSTEM", "version": py4DSTEM.__version__, "numpy": np.__version__, "file": str(mib_path),
        "frames": n, "frame_shape": list(mib.frame_shape), "nq": nq, "n_annular": args.n_annular,
        "origin": origin_src, "ellipse_abtheta": ellipse,
        "api": "py4DSTEM.process.polar.PolarDatacube(...).calculate_radial_statistics(progress_bar=False)",
        "seconds": best, "ms_per_pattern": best / n * 1e3, "repeats": args.repeat,
        "polar_transform_ms": t_transform * 1e3,
        "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "used": "1 (numpy bincount loop)"},
        "per_pattern": "elliptical polar transform (bilinear, 4 bincounts, KDE along θ) of frame and mask, "
                       "twice; azimuthal mean and std per radius",
        "radial_mean_head": [round(float(v), 4) for v in polar.radial_mean[:3]],
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(f"py4DSTEM {res['version']}: {n} frames, {res['ms_per_pattern']:.2f} ms/pattern "
              f"({best:.1f} s; one polar transform {res['polar_transform_ms']:.2f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
