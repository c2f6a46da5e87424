"""What the peak's Q allows where layers mix: an oracle on a scenario-matrix cell's truth (``truth.npz`` only).

    python benchmarks/boundary_oracle.py CELL_DIR [CELL_DIR ...]

Per cell, from the true (noise-free) peak Q of each position's pattern (``peak_q``: the mixed pattern's own, where
two layers meet), the true classes and the minority class of the mixed positions (``mix_class``, ``mix_fraction``):

* nearest mean: each amorphous position gets the amorphous class whose true mean (over the cell) is nearest its
  true peak; its Type 1 recall and amorphous accuracy;
* Type 1 nearer Type 2: the Type 1 positions whose true peak lies nearer the Type 2 mean than their own;
* boundary oracle: a mixed amorphous position (minority another amorphous class) picks between its majority and
  minority class by the nearer true mean; the mixed positions it gets wrong (all and Type 1), and the Type 1
  recall it leaves with every unmixed position right.

Session 20 (README "Thin layers and mixed boundaries: session 20"). Reads the truth only: a limit of the evidence,
not of the pipeline.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

AMORPHOUS = (1, 2, 3)  # sei_type1, sei_type2, electrolyte in sendmap.CLASS_NAMES order


def oracle(truth: dict) -> dict:
    """The oracle numbers of one cell (see the module docstring) from its truth arrays."""
    tc, tq = np.asarray(truth["class_map"]), np.asarray(truth["peak_q"], dtype=np.float64)
    mc, mf = np.asarray(truth["mix_class"]), np.asarray(truth["mix_fraction"], dtype=np.float64)
    am = np.isin(tc, AMORPHOUS) & np.isfinite(tq)
    mu = {k: float(np.mean(tq[(tc == k) & am])) for k in AMORPHOUS}
    ks = np.array(AMORPHOUS)
    near = ks[np.argmin(np.abs(np.nan_to_num(tq)[..., None] - np.array([mu[k] for k in ks])), axis=-1)]
    t1 = (tc == 1) & am
    mixed = am & (mf > 0) & np.isin(mc, AMORPHOUS) & (mc != tc)
    own = np.vectorize(lambda k: mu.get(int(k), np.nan))(tc)
    other = np.vectorize(lambda k: mu.get(int(k), np.nan))(mc)
    wrong = mixed & (np.abs(tq - other) < np.abs(tq - own))
    return {"means": mu, "nearest_accuracy": float((near == tc)[am].mean()),
            "nearest_t1_recall": float(((near == 1) & t1).sum() / t1.sum()),
            "t1_nearer_t2": int(((np.abs(tq - mu[2]) < np.abs(tq - mu[1])) & t1).sum()), "t1": int(t1.sum()),
            "mixed": int(mixed.sum()), "mixed_wrong": int(wrong.sum()), "mixed_t1": int((mixed & (tc == 1)).sum()),
            "mixed_t1_wrong": int((wrong & (tc == 1)).sum()),
            "t1_recall_allowed": float(1.0 - (wrong & (tc == 1)).sum() / t1.sum()),
            "accuracy_allowed": float(1.0 - wrong.sum() / tc.size)}


def main(argv=None) -> int:
    cells = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    print("| cell | true means T1 / T2 / elec | nearest mean: acc (amorphous), T1 recall | T1 nearer the T2 mean | "
          "boundary oracle wrong (mixed; T1) | T1 recall / accuracy it allows |")
    print("|---|---|---|---|---|---|")
    for c in cells:
        r = oracle(dict(np.load(c / "truth.npz")))
        m = r["means"]
        print(f"| {c.name} | {m[1]:.3f} / {m[2]:.3f} / {m[3]:.3f} | {r['nearest_accuracy']:.2f}, "
              f"{r['nearest_t1_recall']:.2f} | {r['t1_nearer_t2']} of {r['t1']} | {r['mixed_wrong']} of {r['mixed']}; "
              f"{r['mixed_t1_wrong']} of {r['mixed_t1']} | {r['t1_recall_allowed']:.3f} / {r['accuracy_allowed']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
