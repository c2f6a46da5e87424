"""`make bench`: sendmap against its peers on the same data, in one run; prints times and ratios.

Sections (``--only NAME`` runs one):

* ``profiles``: sendmap's profile kernel against pyFAI's integrate1d on the same frames.
* ``ingest``: a ≥ 2 GB Merlin ``.mib`` (128 × 128 positions of 256² uint16, made once by
  ``sendmap synth`` into ``bench_data/``), ingested by sendmap (``sendmap run --until ingest``,
  ``timing_s.ingest``) and by rosettasciio's lazy reader written to zarr with dask
  (benchmarks/ref_rsciio_ingest.py); then the whole ``sendmap run`` on it, with the peak anonymous
  memory (RssAnon) of each.

Profiles: prints time per pattern and the ratio. The frames are those of the demo sample (data_samples/demo,
24 × 36 Merlin frames of 128²). sendmap bins every frame around its own centre, with a 1.5 % ellipse,
3×3 supersampling and 72 azimuthal sectors (mean, SEM, dispersion, spot statistics); pyFAI uses one
fixed centre and computes the mean only (CSR, bbox splitting), so it does less work per pattern.
py4DSTEM pins numpy<2 and is not installed in sendmap's environment: it is not measured here.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
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


def bench_profiles() -> None:
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
        return
    pix = 55e-6
    ai = AzimuthalIntegrator(dist=0.1, poni1=64 * pix, poni2=64 * pix, pixel1=pix, pixel2=pix)
    kw = dict(unit="r_mm", radial_range=(0, 90 * pix * 1e3), method=("bbox", "csr", "cython"),
              correctSolidAngle=False, polarization_factor=None)
    ai.integrate1d(frames[0], 90, **kw)  # builds the CSR matrix once
    t_fai = best_of(lambda: [ai.integrate1d(f, 90, **kw) for f in frames]) / n
    print(f"pyFAI integrate1d csr (one fixed centre, mean only):                 {t_fai * 1e3:.3f} ms/pattern")
    print(f"ratio pyFAI / sendmap: {t_fai / t_sm:.2f}x  ({n} patterns of 128x128, best of 3)")


INGEST_SCAN = (128, 128)
INGEST_DETECTOR = 256
"""128 × 128 positions of 256² uint16 frames: 2.15 GB of .mib (the issue asks for ≥ 2 GB)."""


def _ingest_data(folder: Path) -> Path:
    mib = folder / "synth.mib"
    if not mib.exists():
        print(f"writing the ingest benchmark file {mib} (once; about 2 minutes) ...", flush=True)
        from sendmap.cli import main as sendmap_main

        sendmap_main(["synth", str(folder), "--scan-shape", *map(str, INGEST_SCAN), "--detector",
                      str(INGEST_DETECTOR), "--q-pixel-size", "0.00625", "--dtype", "u2", "--quiet"])
    return mib


def bench_ingest(folder: Path) -> None:
    from measure import run_measured

    mib = _ingest_data(folder)
    size_mb = mib.stat().st_size / 1e6
    sendmap = [sys.executable, "-m", "sendmap.cli"]
    cfg = folder / "config.yaml"
    out = folder / "results"
    ref_out = folder / "rsciio.zarr"
    os.sync()
    print(f"\ningest of {mib} ({size_mb:.0f} MB, {INGEST_SCAN[0]}x{INGEST_SCAN[1]} x {INGEST_DETECTOR}^2 uint16), "
          f"page cache warm for both:")
    rows = []
    ref = run_measured([sys.executable, str(Path(__file__).with_name("ref_rsciio_ingest.py")), str(mib), str(ref_out),
                        *map(str, INGEST_SCAN)])
    rows.append(("rosettasciio lazy -> dask.to_zarr", ref["wall_s"], ref["peak_rss_anon_mib"]))
    shutil.rmtree(ref_out, ignore_errors=True)
    ing = run_measured(sendmap + ["run", str(cfg), "--set", f"output.dir={out}", "--until", "ingest", "--force",
                                  "--no-progress"])
    t_ingest = json.loads((out / "sendmap.zarr" / "zarr.json").read_text())["attributes"]["stages"]["ingest"]["seconds"]
    rows.append(("sendmap ingest stage (timing_s.ingest)", t_ingest, ing["peak_rss_anon_mib"]))
    rows.append(("sendmap run --until ingest (whole process)", ing["wall_s"], ing["peak_rss_anon_mib"]))
    full = run_measured(sendmap + ["run", str(cfg), "--set", f"output.dir={out}", "--force", "--no-progress"])
    summary = json.loads((out / "summary.json").read_text())
    rows.append(("sendmap run, whole job (ingest to figures)", full["wall_s"], full["peak_rss_anon_mib"]))
    for name, t, rss in rows:
        print(f"  {name:44s} {t:7.1f} s  {size_mb / t:6.0f} MB/s  peak RssAnon {rss:6.0f} MiB")
    print(f"  ratio rosettasciio / sendmap ingest: {ref['wall_s'] / t_ingest:.1f}x stage, "
          f"{ref['wall_s'] / ing['wall_s']:.1f}x whole process incl. start-up (target >= 5x); "
          f"whole-run RssAnon {full['peak_rss_anon_mib']:.0f} MiB (target <= 1536 MiB)")
    print(f"  whole-run stage times (s): {summary['timing_s']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["profiles", "ingest"], default=None)
    p.add_argument("--data", default=str(ROOT / "bench_data" / "merlin_2g"), help="folder of the ingest benchmark file")
    args = p.parse_args(argv)
    if args.only in (None, "profiles"):
        bench_profiles()
    if args.only in (None, "ingest"):
        bench_ingest(Path(args.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
