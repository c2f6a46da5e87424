"""Issue 18's reduced scenario matrix in CI time: the three cells of ``benchmarks/scenario_matrix.py --reduced``
(the all-axes cell and the LiF-dominant cell at 2 × 10⁴ e⁻, the published class spreads at 5 × 10³; 32 × 48
positions, seeds 1024, 1006, 1003 of the full sweep, never used to choose a threshold), each run with the default
classifier (``probabilistic``, since session 17) and re-classified with ``rules``, scored against the truth.

Asserted: the issue's targets where they are met today (LiF-dominant: accuracy ≥ 0.95 for both methods, Type 2
recall ≥ 0.90 with the probabilities (0.87 with the rules, held at ≥ 0.80); published spreads at 5 × 10³ with the probabilities: accuracy ≥ 0.90, every counted recall ≥ 0.85;
calibration ±0.07 in every tenth of probability that holds ≥ 196 pairs once the cells of a dose are pooled), and,
for the all-axes cell that still fails the targets (accuracy 0.95; class means 0.003), no fall below what it reaches
now (probabilistic accuracy 0.887, crystal recall 0.98; README "Crystal versus LiF by indexing"): a floor that keeps
the progress, not a target met.
"""
from __future__ import annotations

import pytest

from conftest import scenario_matrix_module

from sendmap.cli import main
from sendmap.evaluate import CALIBRATION_TOLERANCE, evaluate, pool_calibration


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    m = scenario_matrix_module()
    out = tmp_path_factory.mktemp("matrix")
    res = {}
    for c in m.reduced_matrix():
        d = out / c["cell"]
        synth, run = m.commands(c, d, (32, 48))
        assert main(synth) == 0
        assert main(run) == 0
        probabilistic = evaluate(d / "results", d)
        assert main([*run, "--set", "classify.method=rules"]) == 0
        res[c["cell"]] = {"dose": c["dose"], "rules": evaluate(d / "results", d), "probabilistic": probabilistic}
    return res


def test_lif_dominant_cell_meets_the_targets(scored):
    """With the probabilities, the targets; with the rules, the accuracy target, and Type 2 recall held where it is
    (0.87 on this 32 × 48 cell; 0.07 before the indexing)."""
    for method in ("rules", "probabilistic"):
        r = scored["lif-dominant"][method]
        assert r["class_accuracy"] >= 0.95, (method, r["class_accuracy"])
    assert scored["lif-dominant"]["probabilistic"]["per_class"]["sei_type2"]["recall"] >= 0.90
    assert scored["lif-dominant"]["rules"]["per_class"]["sei_type2"]["recall"] >= 0.80


def test_published_spreads_at_low_dose_meet_the_targets_with_probabilities(scored):
    r = scored["spread"]["probabilistic"]
    assert r["class_accuracy"] >= 0.90
    for name, e in r["per_class"].items():
        if e.get("counted"):
            assert e["recall"] >= 0.85, (name, e)


def test_all_axes_cell_keeps_its_progress(scored):
    r = scored["all"]["probabilistic"]
    assert r["class_accuracy"] >= 0.86, r["class_accuracy"]
    assert r["per_class"]["crystal"]["recall"] >= 0.95, r["per_class"]["crystal"]
    assert scored["all"]["rules"]["class_accuracy"] >= 0.78, scored["all"]["rules"]["class_accuracy"]


def test_pooled_probabilities_are_calibrated_where_measurable(scored):
    for dose in {v["dose"] for v in scored.values()}:
        pooled = pool_calibration([v["probabilistic"]["calibration"] for v in scored.values() if v["dose"] == dose])
        assert pooled["bins_measured"] >= 2, (dose, pooled)
        assert pooled["max_abs_dev"] <= CALIBRATION_TOLERANCE, (dose, pooled)
