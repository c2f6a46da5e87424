"""The project's own Gaussian mixture and k-means (sendmap.science.gmm) for classify.method gmm / kmeans: the
labels scikit-learn's GaussianMixture / KMeans give on the same input, and a gmm re-run through the CLI that never
imports scikit-learn (issue 20: its import was the largest single cost of such a re-run)."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sendmap.cli import main
from sendmap.science.classify import classify_gmm, fit_cluster_labels
from sendmap.science.gmm import gmm_labels, kmeans_labels

ROOT = Path(__file__).resolve().parents[1]


def _features(seed: int, n: int):
    """Standardised (SRO peak Q, LiF vote) of three overlapping classes (weights 0.45, 0.35, 0.20), as classify_gmm
    clusters them: Type 1/electrolyte peaks 0.045 1/Å apart with 0.010-0.012 spreads, Type 2 by its LiF vote."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(3, n, p=[0.45, 0.35, 0.20])
    means = np.array([[0.285, 0.05], [0.330, 0.05], [0.345, 0.80]])
    sds = np.array([[0.010, 0.08], [0.012, 0.08], [0.010, 0.15]])
    x = means[truth] + sds[truth] * rng.standard_normal((n, 2))
    return (x - x.mean(axis=0)) / x.std(axis=0), truth


def _agreement(a, b, k=3):
    """Share of rows with the same cluster under the best matching of the cluster indices."""
    return max(float((np.asarray(p)[a] == b).mean()) for p in itertools.permutations(range(k)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gmm_labels_as_scikit_learn(seed):
    """On 40 000 overlapping positions, ≥ 99.9 % get the cluster scikit-learn's full-covariance GaussianMixture
    (n_init = 3) gives them (measured: 1 in 60 000 differs; the classes' overlap misassigns ~1 %, so a different
    mixture would move hundreds)."""
    from sklearn.mixture import GaussianMixture

    x, truth = _features(seed, 40_000)
    ours = gmm_labels(x, 3, seed)
    theirs = GaussianMixture(3, covariance_type="full", n_init=3, random_state=seed).fit_predict(x)
    assert _agreement(ours, theirs) >= 0.999
    assert 0.97 <= _agreement(ours, truth) <= 0.999  # (the overlap: neither fit can be perfect)


@pytest.mark.parametrize("seed", [0, 1])
def test_kmeans_labels_as_scikit_learn(seed):
    from sklearn.cluster import KMeans

    x, _ = _features(seed, 20_000)
    ours = kmeans_labels(x, 3, seed)
    theirs = KMeans(n_clusters=3, random_state=seed, n_init=10).fit_predict(x)
    assert _agreement(ours, theirs) >= 0.999


def test_gmm_recovers_a_known_mixture():
    """Two well separated Gaussians with different full covariances: every point labelled by its component."""
    rng = np.random.default_rng(4)
    a = rng.multivariate_normal([0, 0], [[1.0, 0.8], [0.8, 1.0]], 3000)
    b = rng.multivariate_normal([6, -6], [[0.3, 0.0], [0.0, 2.0]], 1000)
    lab = gmm_labels(np.r_[a, b], 2, 0)
    assert _agreement(lab, np.r_[np.zeros(3000, int), np.ones(1000, int)], k=2) == 1.0


def test_degenerate_inputs():
    """Repeated rows (a component collapses: REG_COVAR keeps it positive definite), fewer rows than clusters."""
    x = np.r_[np.zeros((50, 2)), np.ones((30, 2))]
    lab = gmm_labels(x, 3, 0)
    assert len(set(lab[:50].tolist())) == 1 and len(set(lab[50:].tolist())) == 1 and lab[0] != lab[50]
    assert gmm_labels(np.zeros((1, 2)), 3, 0).tolist() == [0]
    assert kmeans_labels(np.zeros((2, 2)), 3, 0).shape == (2,)


def test_fit_cluster_labels_is_seeded():
    x, _ = _features(7, 5000)
    np.testing.assert_array_equal(fit_cluster_labels(x, 3, 1), fit_cluster_labels(x, 3, 1))
    np.testing.assert_array_equal(fit_cluster_labels(x, 3, 1, "kmeans"), fit_cluster_labels(x, 3, 1, "kmeans"))


def test_classify_gmm_names_clusters_as_before():
    """classify_gmm with the own mixture: the class map of scikit-learn's mixture in the same function, ≥ 99.9 %."""
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(11)
    n = 20_000
    truth = rng.choice(3, n, p=[0.45, 0.35, 0.20])  # electrolyte, Type 1, Type 2 (by the LiF vote), as _features
    peak_q = np.array([0.285, 0.330, 0.345])[truth] + np.array([0.010, 0.012, 0.010])[truth] * rng.standard_normal(n)
    vote = np.clip(np.array([0.05, 0.05, 0.80])[truth] + np.array([0.08, 0.08, 0.15])[truth] * rng.standard_normal(n),
                   0, 1)
    crystal_z = rng.normal(0, 1, n)
    lif_z = rng.normal(0, 1, n)
    kw = dict(crystal_spot_z=25.0, lif_spot_z=6.0, electrolyte_max_q=0.307, sei_type1_range=(0.307, 0.37),
              sei_type2_range=(0.27, 0.37), electrolyte_range=(0.26, 0.307), lif_vote=vote, lif_vote_min=0.5)
    ours = classify_gmm(peak_q, crystal_z, lif_z, 4, 0, **kw)
    sk = classify_gmm(peak_q, crystal_z, lif_z, 4, 0, **kw, fit_labels=lambda f, k, s, m: GaussianMixture(
        k, covariance_type="full", n_init=3, random_state=s).fit_predict(f))
    assert float((ours == sk).mean()) >= 0.999
    assert len(np.unique(ours)) == 3  # (all three classes named)


def test_gmm_rerun_never_imports_scikit_learn(tmp_path):
    """A re-run after --set classify.method=gmm through the CLI: no scikit-learn, no scipy.ndimage (~0.3-0.5 s:
    the peaks module imports it on first use, the regions are labelled without it) in the process, and no helper."""
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


def _gmm_labels_one_start_after_another(x, k, seed, n_init=3):
    """The fit as it ran before its starts shared threads: one rng, each start seeded and fitted in turn."""
    from sendmap.science import gmm

    x = np.ascontiguousarray(x, dtype=np.float64)
    n, d = x.shape
    rng = np.random.default_rng(seed)
    resp = np.empty((n, k))
    best, best_ll = None, -np.inf
    for _ in range(n_init):
        labels, _ = gmm._kmeans_once(x, k, rng)
        resp[:] = 0.0
        resp[np.arange(n), labels] = 1.0
        w, mu, cov = np.empty(k), np.empty((k, d)), np.empty((k, d, d))
        gmm._m_step(x, resp, w, mu, cov, gmm.REG_COVAR)
        ll_old = -np.inf
        for _it in range(gmm.GMM_MAX_ITER):
            ll = gmm._e_step(x, w, mu, cov, resp)
            if not np.isfinite(ll):
                break
            gmm._m_step(x, resp, w, mu, cov, gmm.REG_COVAR)
            if abs(ll - ll_old) < gmm.GMM_TOL:
                break
            ll_old = ll
        if np.isfinite(ll) and (best is None or ll > best_ll):
            best, best_ll = (w.copy(), mu.copy(), cov.copy()), ll
    gmm._e_step(x, *best, resp)
    return resp.argmax(axis=1)


@pytest.mark.parametrize("seed,k,threads", [(0, 3, 2), (1, 4, 2), (2, 2, 3), (3, 4, 1)])
def test_gmm_starts_on_threads_give_the_same_labels(seed, k, threads, monkeypatch):
    """The starts' seedings are drawn in order before the starts run on threads: the labels are those of the
    starts run one after another, element for element, on overlapping clusters where the starts differ."""
    from sendmap.science import gmm

    rng = np.random.default_rng(seed)
    x = np.r_[rng.normal(0, 1, (3000, 3)), rng.normal(1.5, 1.2, (2000, 3)), rng.normal([3, 0, 1], 1, (1000, 3))]
    monkeypatch.setattr(gmm, "GMM_THREADS", threads)
    assert np.array_equal(gmm_labels(x, k, seed), _gmm_labels_one_start_after_another(x, k, seed))
