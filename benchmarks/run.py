"""`make bench`: sendmap's profile kernel against pyFAI's integrate1d on the same frames, in one run.

Prints time per pattern and the ratio. The frames are those of the demo sample (data_samples/demo,
24 × 36 Merlin frames of 128²). sendmap bins every frame around its own centre, with a 1.5 % ellipse,
3×3 supersampling and 72 azimuthal sectors (mean, SEM, dispersion, spot statistics); pyFAI uses one
fixed centre and computes the mean only (CSR, bbox splitting), so it does less work per pattern.
py4DSTEM pins numpy<2 and is not installed in sendmap's environment: it is not measured here.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sendmap.io import open_dataset
from sendmap.science.polar import PolarGeometry, polar_sums, radial_statistics

ROOT = Path(__file__).resolve().parents[1]


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ds = open_dataset(ROOT / "data_samples/demo/synth.mib", "mib", (24, 36))
    frames = np.asarray(ds.data.compute()).reshape(-1, 128, 128).astype(np.uint16)
    n = len(frames)
    centres = np.full((n, 2), 63.5) + np.random.default_rng(0).normal(0, 1, (n, 2))
    mask = np.ones((128, 128), bool)
    geom = PolarGeometry(0.0125, 0.0125, 90, 72, 1.015, 30.0, 3)
    polar_sums(frames[:2], centres[:2], mask, geom)  # compile
    t_sm = best_of(lambda: radial_statistics(polar_sums(frames, centres, mask, geom))) / n
    print(f"sendmap profiles (own centre per frame, ellipse, 3x3 supersampling): {t_sm * 1e3:.3f} ms/pattern")
    try:
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    except ImportError:
        print("pyFAI not installed: pip install -e '.[bench]'")
        return 0
    pix = 55e-6
    ai = AzimuthalIntegrator(dist=0.1, poni1=64 * pix, poni2=64 * pix, pixel1=pix, pixel2=pix)
    kw = dict(unit="r_mm", radial_range=(0, 90 * pix * 1e3), method=("bbox", "csr", "cython"),
              correctSolidAngle=False, polarization_factor=None)
    ai.integrate1d(frames[0], 90, **kw)  # builds the CSR matrix once
    t_fai = best_of(lambda: [ai.integrate1d(f, 90, **kw) for f in frames]) / n
    print(f"pyFAI integrate1d csr (one fixed centre, mean only):                 {t_fai * 1e3:.3f} ms/pattern")
    print(f"ratio pyFAI / sendmap: {t_fai / t_sm:.2f}x  ({n} patterns of 128x128, best of 3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
