"""Deconvolved Gaussian mixtures of peak positions and the Potts mean-field class probabilities (issue 18's
building blocks: the study's two-/three-Gaussian histogram fits, and spatial context)."""
import numpy as np
import pytest

from sendmap.science.mixture import best_mixture, fit_deconvolved_mixture
from sendmap.science.spatial import potts_mean_field


def _draw(rng, means, sigmas, counts, err_lo=0.004, err_hi=0.012):
    true = np.concatenate([rng.normal(m, s, n) for m, s, n in zip(means, sigmas, counts)])
    err = rng.uniform(err_lo, err_hi, true.size)
    return true + rng.normal(0, err), err


def test_two_components_intrinsic_spreads_and_calibrated_errors():
    """Electrolyte (0.285) and SEI Type 1 (0.33) with published-size spreads (0.012, 0.019 1/Å) measured with
    0.004-0.012 errors: the deconvolved means and spreads are unbiased and their 1-σ cover 60-80 % of 120
    draws (seeds 0..119; the tolerance is the binomial spread of 120 draws around 68 %)."""
    rng = np.random.default_rng(0)
    est, cover_m, cover_s = [], [], []
    for _ in range(120):
        x, e = _draw(rng, (0.285, 0.33), (0.012, 0.019), (500, 500))
        r = fit_deconvolved_mixture(x, e, 2)
        est.append(np.r_[r["mean"], r["sigma"]])
        cover_m.append(np.abs(r["mean"] - [0.285, 0.33]) < r["mean_err"])
        cover_s.append(np.abs(r["sigma"] - [0.012, 0.019]) < r["sigma_err"])
    est = np.array(est)
    assert np.allclose(est.mean(axis=0), [0.285, 0.33, 0.012, 0.019], atol=0.001)
    assert np.all((np.mean(cover_m, axis=0) > 0.6) & (np.mean(cover_m, axis=0) < 0.8))
    assert np.all((np.mean(cover_s, axis=0) > 0.6) & (np.mean(cover_s, axis=0) < 0.8))


def test_a_histogram_fit_without_deconvolution_would_overstate_the_spread():
    rng = np.random.default_rng(5)
    x, e = _draw(rng, (0.33,), (0.010,), (2000,), 0.012, 0.012)
    r = fit_deconvolved_mixture(x, e, 1)
    assert abs(r["sigma"][0] - 0.010) < 0.001 and np.std(x) > 0.015  # measured spread √(0.010² + 0.012²)


@pytest.mark.parametrize("seed, sigma, err_lo, err_hi, n_iter", [
    (0, 0.010, 0.004, 0.012, 500),   # spread resolved: converges in tens of iterations
    (1, 0.003, 0.008, 0.012, 500),   # spread well below the errors: slow EM steps, up to n_iter
    (2, 0.0, 0.01, 0.01, 500),       # no spread at all: the variance floor min_var
    (3, 0.002, 0.008, 0.012, 7),     # stopped by n_iter before converging
])
def test_one_component_kernel_equals_the_general_one_bit_for_bit(seed, sigma, err_lo, err_hi, n_iter):
    """The one-component EM kernel (class models of every classification, statistics' single Gaussians) makes the
    general kernel's numbers exactly, including where and whether it stops."""
    from sendmap.science.mixture import _em_kernel, _em_one_kernel

    x, e = _draw(np.random.default_rng(seed), (0.30,), (sigma,), (3000,), err_lo, err_hi)
    s2 = e ** 2
    out = []
    for kernel in (_em_kernel, _em_one_kernel):
        w, mu, var = np.ones(1), np.array([np.median(x)]), np.array([max(np.var(x) - np.median(s2), 1e-10)])
        converged = kernel(x, s2, w, mu, var, n_iter, 1e-9, 1e-10)
        out.append((converged, w[0], mu[0], var[0]))
    assert out[0] == out[1]
    assert not (n_iter == 7 and out[0][0])  # (the last case stops unconverged)


def test_bic_picks_the_number_of_components():
    rng = np.random.default_rng(2)
    x, e = _draw(rng, (0.33,), (0.015,), (800,))
    assert len(best_mixture(x, e)["mean"]) == 1
    x, e = _draw(rng, (0.285, 0.34), (0.01, 0.01), (400, 400))
    assert len(best_mixture(x, e)["mean"]) == 2
    with pytest.raises(ValueError):
        fit_deconvolved_mixture([0.3, np.nan, 0.31], [0.01, 0.01, np.nan], 2)


def test_potts_mean_field_cleans_label_noise_and_keeps_boundaries():
    """Two layers; each position's evidence points the wrong way with probability 0.2 (likelihood ratio 3):
    independent decisions err at 20 %, the Potts posterior (β = 0.7) at < 3 %, and the boundary stays put."""
    rng = np.random.default_rng(3)
    truth = np.zeros((40, 60), int)
    truth[:, 30:] = 1
    flip = rng.random(truth.shape) < 0.2
    seen = np.where(flip, 1 - truth, truth)
    ll = np.log(np.where(seen[..., None] == np.arange(2), 0.75, 0.25))
    assert abs((np.argmax(ll, -1) != truth).mean() - 0.2) < 0.02
    p = potts_mean_field(ll, beta=0.7)
    assert np.allclose(p.sum(-1), 1.0)
    assert (np.argmax(p, -1) != truth).mean() < 0.03
    assert np.array_equal(np.argmax(p, -1)[:, 28], truth[:, 28]) and np.array_equal(np.argmax(p, -1)[:, 31],
                                                                                        truth[:, 31])
    same = potts_mean_field(ll, beta=0.0)
    assert np.allclose(same, np.exp(ll) / np.exp(ll).sum(-1, keepdims=True))
    valid = np.ones(truth.shape, bool)
    valid[0, 0] = False
    assert np.all(np.isnan(potts_mean_field(ll, 0.7, valid=valid)[0, 0]))



@pytest.mark.parametrize("seed, density", [(0, 0.3), (1, 0.5), (2, 0.62), (3, 0.8), (4, 0.0), (5, 1.0)])
def test_label_8_connected_gives_scipys_labels(seed, density):
    """The regions of the statistics stage without importing scipy.ndimage: the labels and count of
    scipy.ndimage.label with the 8-neighbourhood, on random masks around the percolation threshold, empty and full,
    and on a non-square scan."""
    from scipy.ndimage import label

    from sendmap.science.spatial import amorphous_regions, label_8_connected

    rng = np.random.default_rng(seed)
    for shape in ((1, 1), (1, 17), (23, 1), (41, 67), (120, 90)):
        mask = rng.random(shape) < density
        ours, n = label_8_connected(mask)
        ref, n_ref = label(mask, structure=np.ones((3, 3), int))
        assert n == n_ref and ours.dtype == np.int32 and np.array_equal(ours, ref)
    cls = rng.integers(0, 4, (60, 80))
    regions = amorphous_regions(cls, (1, 2, 3), 5)
    lab, _ = label(np.isin(cls, (1, 2, 3)), structure=np.ones((3, 3), int))
    sizes = np.bincount(lab.ravel())[1:]
    assert regions.max() + 1 == int(np.sum(sizes >= 5))
    assert np.array_equal(regions >= 0, np.isin(lab, np.flatnonzero(sizes >= 5) + 1))


@pytest.mark.parametrize("shape,threads", [((60, 50, 4), 2), ((31, 40, 5), 3), ((3, 200, 3), 2)])
def test_potts_mean_field_on_threads_equals_one_thread_bit_for_bit(shape, threads, monkeypatch):
    """Synchronous updates: rows shared among threads give the same probabilities, bit for bit, as the serial
    kernel (with impossible classes, invalid positions, and fewer rows than a thread's share)."""
    from sendmap.science import spatial

    rng = np.random.default_rng(sum(shape))
    ll = np.log(rng.dirichlet(np.ones(shape[2]), shape[:2]))
    ll[rng.random(shape[:2]) < 0.05, 0] = -1e6
    valid = rng.random(shape[:2]) > 0.1
    monkeypatch.setattr(spatial, "MEAN_FIELD_THREADED_MIN", 1)
    for beta in (0.4, 1.5):
        monkeypatch.setattr(spatial, "MEAN_FIELD_THREADS", 1)
        one = potts_mean_field(ll, beta, valid=valid)
        monkeypatch.setattr(spatial, "MEAN_FIELD_THREADS", threads)
        assert np.array_equal(potts_mean_field(ll, beta, valid=valid), one, equal_nan=True)
        assert np.isnan(one[~valid]).all() and np.isfinite(one[valid]).all()
