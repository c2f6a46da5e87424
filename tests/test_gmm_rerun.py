"""The re-run after ``--set classify.method=gmm`` (issue 20): the mixture fitted on a seeded subset of the positions
labels them as the fit on all does, and scikit-learn is imported by a helper process started ahead
(sendmap.engine.fit_helper), whose labels are those of the same call in the main process."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from sendmap.cli import main
from sendmap.engine import fit_helper
from sendmap.science.classify import GMM_FIT_POSITIONS, fit_cluster_labels

ROOT = Path(__file__).resolve().parents[1]


def _features(seed: int, n: int):
    """Standardised (SRO peak Q, LiF vote) of three overlapping classes (weights 0.45, 0.35, 0.20), as classify_gmm
    clusters them."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(3, n, p=[0.45, 0.35, 0.20])
    means = np.array([[0.285, 0.05], [0.330, 0.05], [0.345, 0.80]])
    sds = np.array([[0.010, 0.08], [0.012, 0.08], [0.010, 0.15]])
    x = means[truth] + sds[truth] * rng.standard_normal((n, 2))
    return (x - x.mean(axis=0)) / x.std(axis=0)


def _agreement(a, b, k=3):
    return max(float((np.asarray(p)[a] == b).mean()) for p in itertools.permutations(range(k)))


def test_subset_fit_labels_as_the_fit_on_all_positions(seed=0):
    """On 3 × GMM_FIT_POSITIONS positions, the fit on a seeded subset gives ≥ 99.5 % of them the cluster of the
    fit on all (on the 128² bench scan: ≤ 7 of 86 400 differ, see GMM_FIT_POSITIONS)."""
    from sklearn.mixture import GaussianMixture

    x = _features(seed, 3 * GMM_FIT_POSITIONS)
    sub = fit_cluster_labels(x, 3, seed)
    full = GaussianMixture(3, covariance_type="full", n_init=3, random_state=seed).fit_predict(x)
    assert _agreement(sub, full) >= 0.995
    # at most GMM_FIT_POSITIONS positions: the fit on all of them, as before the subset
    small = x[:5000]
    np.testing.assert_array_equal(
        fit_cluster_labels(small, 3, seed),
        GaussianMixture(3, covariance_type="full", n_init=3, random_state=seed).fit_predict(small))


def test_fit_helper_gives_the_labels_of_the_main_process():
    x = _features(3, 4000)
    helper = fit_helper.FitHelper("gmm")
    np.testing.assert_array_equal(helper.fit_labels(x, 3, 0, "gmm"), fit_cluster_labels(x, 3, 0, "gmm"))
    dead = fit_helper.FitHelper("gmm")  # a helper that died: the labels are made here
    dead.proc.kill()
    dead.proc.wait()
    np.testing.assert_array_equal(dead.fit_labels(x, 3, 0, "gmm"), fit_cluster_labels(x, 3, 0, "gmm"))


def test_pending_helper_is_taken_once_and_only_for_its_method():
    class Cfg:  # (the two config sections fit_helper.start reads)
        class classify:
            method = "gmm"

        class compute:
            scheduler = "threads"

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: no helper is started")
    helper = fit_helper.start(Cfg)
    assert helper is not None
    assert fit_helper.take("kmeans") is None and helper.proc is None  # another method: ended, not used
    fit_helper.start(Cfg)
    assert fit_helper.take("gmm") is not None and fit_helper.take("gmm") is None
    Cfg.classify.method = "rules"
    assert fit_helper.start(Cfg) is None


def test_gmm_rerun_imports_scikit_learn_only_in_the_helper(tmp_path):
    """A re-run after --set classify.method=gmm through the CLI: the main process never imports scikit-learn
    (the helper did) nor scipy.ndimage (~0.3-0.5 s: the peaks module imports it on first use, the regions are
    labelled without it), and the class map is the one the main process makes without a helper."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: no helper is started")
    assert main(["synth", str(tmp_path), "--scan-shape", "12", "16", "--seed", "5", "--quiet"]) == 0
    cfg = str(tmp_path / "config.yaml")
    base = ["run", cfg, "--no-progress", "--set", "output.figures=false"]
    assert main(base) == 0
    code = ("import sys\nfrom sendmap.cli import main\n"
            f"rc = main({[*base, '--set', 'classify.method=gmm']!r})\n"
            "print(rc, 'sklearn' in sys.modules, 'scipy.ndimage' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "0 False False"
    store = zarr.open_group(str(tmp_path / "results" / "sendmap.zarr"), mode="r")
    via_helper = np.asarray(store["maps/class"])
    assert store["maps/class"].attrs["method"] == "gmm"
    assert main(base) == 0  # back to rules, then gmm in this process without a helper
    assert main([*base, "--set", "classify.method=gmm", "--set", "compute.scheduler=synchronous"]) == 0
    store = zarr.open_group(str(tmp_path / "results" / "sendmap.zarr"), mode="r")
    np.testing.assert_array_equal(np.asarray(store["maps/class"]), via_helper)
