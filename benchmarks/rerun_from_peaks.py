"""Re-run the peaks, classify and statistics stages of a scenario-matrix cell's kept store with config overrides
(the detector file is not needed), score it against the truth, and print one row: accuracy, recalls, the class
means (labelled, as the matrix scores them, and per true class), MAE, ±1σ coverage, calibration, verdict.

    python benchmarks/rerun_from_peaks.py CELL_DIR [--tag T] [--set peaks.denoise_residual_pool=1 ...] [--classify-only]

CELL_DIR holds results/sendmap.zarr, config.yaml and truth.npz (a ``benchmarks/scenario_matrix.py`` cell); the
store is copied to ``--work``/<cell>_<tag>/ first (the cell is only read). Used for the A/B tables of session 17
(issue 18, speckle3: ``peaks.denoise_residual_pool`` on and off on the same stores). ``--classify-only`` re-runs
the classify stage alone (its inputs as stored; the detector data are not copied): the session-20 calibration
tables, classify revision 13 against 14 on the matrix's stores.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cell", type=Path)
    ap.add_argument("--tag", default="rerun")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--work", type=Path, default=Path("results/rerun_from_peaks"))
    ap.add_argument("--classify-only", action="store_true", help="re-run the classify stage alone")
    a = ap.parse_args(argv)
    import zarr

    from sendmap.config import load_config
    from sendmap.engine.context import Context
    from sendmap.evaluate import evaluate
    from sendmap.stages.classify import stage_classify
    from sendmap.stages.peaks import stage_peaks
    from sendmap.stages.statistics import stage_statistics

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scenario_matrix import score

    work = a.work / f"{a.cell.name}_{a.tag}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(a.cell / "results" / "sendmap.zarr", work / "sendmap.zarr",
                    ignore=shutil.ignore_patterns("data_sparse") if a.classify_only else None)
    cfg = load_config(a.cell / "config.yaml", a.set)
    g = zarr.open_group(str(work / "sendmap.zarr"), mode="r+")
    ctx = Context(cfg, work, g, None, {}, log=lambda s: None)
    for stage in (stage_classify,) if a.classify_only else (stage_peaks, stage_classify, stage_statistics):
        stage(ctx)
    r = evaluate(work, a.cell)
    verdict = score(r, float(cfg.dose.electrons_per_pattern))
    amorph = ("sei_type1", "sei_type2", "electrolyte")
    pc = r["per_class"]
    labelled = " / ".join(f"{pc.get(n, {}).get('class_mean_error', float('nan')):+.4f}" for n in amorph)
    rec = " / ".join(f"{pc[n]['recall']:.2f}" for n in ("crystal",) + amorph if n in pc)
    t = np.load(a.cell / "truth.npz")
    names = [str(n) for n in t["class_names"]]
    d = np.asarray(g["peaks/q_peak"]) - t["peak_q"]
    ok = np.asarray(g["peaks/status"]) == 0
    true_cls = " / ".join(f"{np.mean(d[(t['class_map'] == names.index(n)) & ok]):+.4f}" for n in amorph)
    cal = r.get("calibration", {}).get("max_abs_dev")
    print(f"| {a.cell.name} {a.tag} | acc {r['class_accuracy']:.3f} | recall {rec} | labelled {labelled} | "
          f"true class {true_cls} | MAE {r.get('peak_mae', float('nan')):.4f} | "
          f"coverage {r.get('peak_coverage_1sigma', float('nan')):.3f} | calib {cal} | "
          f"{'pass' if verdict['pass'] else 'FAIL: ' + ', '.join(verdict['fails'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
