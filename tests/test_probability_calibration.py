"""Calibration of the class probabilities (issue 18) on small scans of the scenario matrix at development seeds.

Two 32 × 48 cells of ``benchmarks/scenario_matrix.py`` (the all-axes cell at 2 × 10⁴ e⁻ and the published
spreads at 5 × 10³: the cells whose classes overlap most), at seeds 541 and 542: development seeds (the reporting
seeds are 1000–1031), and not among those the posterior temperature and the crystal rule's false-alarm rate were
measured on (511–536, ``sendmap.science.probability``). Run with ``classify.method=probabilistic``.

Asserted with proper scoring rules, against stated references (every (position, class) pair one forecast):

* the Brier score of ``maps/class_probability`` beats that of its own most probable class given as a certainty
  (the probabilities carry information the class map lacks); measured 0.107 against 0.132 (summed over the
  four classes, per position; session 20, the class spreads corrected for the rules' Q cuts and T = 1.25: 0.097
  against 0.118);
* its log loss beats that of the same posterior without the temperature (T = 1, recovered exactly as
  ``temper(p, 1 / T)``): the temperature fitted on other seeds helps on these; measured 0.376 against 0.430 nats
  (session 20: 0.354 against 0.379; a further T = 1.75 on top would give 0.341 on these two overlapping cells,
  which is what the speckle3 cells of the matrix do not want: README, session 20);
* in each tenth of probability holding ≥ ``CALIBRATION_MIN_PER_BIN`` pairs once the two cells are pooled, the
  observed frequency within ``CALIBRATION_TOLERANCE`` (0.07) of the mean probability; measured: 4 tenths
  (0.0–0.2, 0.8–1.0) hold enough, largest deviation 0.011 (session 20: 2 tenths, 0.026).

~45 s of CPU (two cells synthesised and run); a few minutes on a loaded two-core machine.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import scenario_matrix_module

from sendmap import CLASS_NAMES
from sendmap.cli import main
from sendmap.evaluate import CALIBRATION_TOLERANCE, calibration_table, pool_calibration
from sendmap.science.probability import POSTERIOR_TEMPERATURE, PROB_CLASSES, temper

CELLS = (("all", 2e4, 541), ("spread", 5e3, 542))


@pytest.fixture(scope="module")
def forecasts(tmp_path_factory):
    import zarr

    from sendmap.engine.store import STORE_NAME

    m = scenario_matrix_module()
    out = tmp_path_factory.mktemp("calib")
    res = []
    for cell, dose, seed in CELLS:
        d = out / cell
        synth, run = m.commands({"cell": cell, "dose": dose, "detector": 128, "seed": seed}, d, (32, 48),
                                ["classify.method=probabilistic"])
        assert main(synth) == 0 and main(run) == 0
        g = zarr.open_group(str(d / "results" / STORE_NAME), mode="r")
        p = np.asarray(g["maps/class_probability"], dtype=np.float64)
        assert g["maps/class_probability"].attrs["temperature"] == POSTERIOR_TEMPERATURE
        t = np.load(d / "truth.npz")
        names = [str(n) for n in t["class_names"]]
        true = np.array([CLASS_NAMES.index(n) for n in names])[t["class_map"].astype(int)]
        ok = np.isfinite(p).all(-1)
        res.append((p[ok], true[ok]))
    return res


def _scores(pairs):
    brier = logloss = n = 0.0
    for p, true in pairs:
        onehot = true[:, None] == np.arange(len(PROB_CLASSES))[None, :]  # a true class outside them: all 0
        brier += float(((p - onehot) ** 2).sum())
        pt = np.where(true < len(PROB_CLASSES), np.take_along_axis(p, np.minimum(true, 3)[:, None], 1)[:, 0], 0.0)
        logloss += float(-np.log(np.clip(pt, 1e-12, 1)).sum())
        n += p.shape[0]
    return brier / n, logloss / n


def test_probabilities_beat_certainty_and_the_untempered_posterior(forecasts):
    brier, logloss = _scores(forecasts)
    hard = [(np.eye(len(PROB_CLASSES))[p.argmax(-1)], t) for p, t in forecasts]
    brier_hard, _ = _scores(hard)
    untempered = [(temper(p, 1.0 / POSTERIOR_TEMPERATURE), t) for p, t in forecasts]
    _, logloss_t1 = _scores(untempered)
    assert brier < brier_hard, (brier, brier_hard)
    assert logloss < logloss_t1, (logloss, logloss_t1)


def test_pooled_tenths_are_calibrated_where_measurable(forecasts):
    tabs = []
    for p, t in forecasts:
        full = np.zeros((p.shape[0], len(CLASS_NAMES)))
        full[:, :len(PROB_CLASSES)] = p
        tabs.append(calibration_table(full, t))
    pooled = pool_calibration(tabs)
    assert pooled["bins_measured"] >= 2, pooled
    assert pooled["max_abs_dev"] <= CALIBRATION_TOLERANCE, pooled
