"""Accuracy of a result store against the ground truth of a synthetic dataset (``sendmap synth``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import CLASS_NAMES
from .engine.store import STORE_NAME


def evaluate(out_dir: Path, truth_dir: Path) -> dict:
    """Class accuracy, SRO peak error statistics and uncertainty calibration, overall and per class.

    Peak errors are over positions that are amorphous in truth and have a reported peak; ``coverage``
    is the fraction of true errors inside the reported ±1σ.
    """
    import zarr

    g = zarr.open_group(str(Path(out_dir) / STORE_NAME), mode="r")
    t = np.load(Path(truth_dir) / "truth.npz", allow_pickle=False)
    true_cls = t["class_map"].astype(int)
    true_names = [str(n) for n in t["class_names"]] if "class_names" in t else list(CLASS_NAMES)
    remap = np.array([CLASS_NAMES.index(n) for n in true_names])
    true_cls = remap[true_cls]
    cls = np.asarray(g["maps/class"]).astype(int)
    peak = np.asarray(g["maps/peak_q"])
    err = np.asarray(g["maps/peak_q_err"])
    true_peak = t["peak_q"]
    amorphous = true_cls != CLASS_NAMES.index("crystal")
    have = amorphous & np.isfinite(peak) & np.isfinite(true_peak)
    d = peak[have] - true_peak[have]
    res = {"class_accuracy": float(np.mean(cls == true_cls)),
           "peak_mae": float(np.mean(np.abs(d))), "peak_bias": float(np.mean(d)),
           "peak_rmse": float(np.sqrt(np.mean(d ** 2))),
           "peak_coverage_1sigma": float(np.mean(np.abs(d) <= err[have])),
           "n_amorphous": int(amorphous.sum()), "n_with_peak": int(have.sum()),
           "crystal_with_peak": int(np.sum(~amorphous & np.isfinite(peak))), "per_class": {}}
    confusion = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), int)
    np.add.at(confusion, (true_cls.ravel(), cls.ravel()), 1)
    res["confusion"] = {"rows_true_cols_predicted": list(CLASS_NAMES), "counts": confusion.tolist()}
    for k, name in enumerate(CLASS_NAMES):
        sel = true_cls == k
        if not sel.any():
            continue
        entry = {"count": int(sel.sum()), "recall": float(np.mean(cls[sel] == k))}
        hk = sel & have
        if hk.any():
            entry.update(true_mean=float(np.mean(true_peak[hk])), measured_mean=float(np.mean(peak[hk])),
                         mean_error=float(np.mean(peak[hk]) - np.mean(true_peak[hk])),
                         mae=float(np.mean(np.abs(peak[hk] - true_peak[hk]))),
                         coverage_1sigma=float(np.mean(np.abs(peak[hk] - true_peak[hk]) <= err[hk])))
        res["per_class"][name] = entry
    return res


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="compare a sendmap result folder with a synthetic ground truth")
    p.add_argument("out_dir")
    p.add_argument("truth_dir")
    p.add_argument("--brief", action="store_true", help="one line: accuracy, peak MAE, bias, 1-sigma coverage")
    a = p.parse_args(argv)
    r = evaluate(Path(a.out_dir), Path(a.truth_dir))
    if a.brief:
        print(f"{a.out_dir}: class accuracy {r['class_accuracy']:.3f}, peak MAE {r['peak_mae']:.4f} 1/Å, "
              f"bias {r['peak_bias']:+.4f} 1/Å, ±1σ coverage {r['peak_coverage_1sigma']:.2f}, "
              f"per-class mean error " + ", ".join(f"{k} {v['mean_error']:+.4f}" for k, v in r["per_class"].items()
                                                   if "mean_error" in v))
    else:
        print(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
