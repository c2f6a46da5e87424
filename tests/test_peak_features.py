"""Low-rank denoising with propagated errors, peak width, second peak, classification features, clustering."""
from __future__ import annotations

import doctest

import numpy as np
import pytest

from sendmap import CLASS_NAMES
from sendmap.science import classify, features, peaks
from sendmap.science.classify import classify_gmm, classify_rules, crystal_neighbour_count, spot_vote
from sendmap.science.features import band_anisotropy, bragg_fraction, name_phases, phase_lines
from sendmap.science.peaks import fit_peaks, fit_second_peak, lowrank_denoise

Q = (np.arange(90) + 0.5) * 0.0125
WIN = (0.22, 0.42)


def _profile(q0, q):
    """I·Q of an SRO ring (σ 0.055, FWHM 0.13) and its second ring at 1.8 q0 on a falling background."""
    ring = 30 * np.exp(-0.5 * ((q - q0) / 0.055) ** 2) + 12 * np.exp(-0.5 * ((q - 1.8 * q0) / 0.07) ** 2)
    return (ring + 60 * np.exp(-q / 0.15)) * q


def _true_max(q0):
    qq = np.linspace(*WIN, 20001)
    return qq[np.argmax(_profile(q0, qq))]


@pytest.mark.parametrize("mod", [peaks, features, classify])
def test_doctests(mod):
    assert doctest.testmod(mod).failed == 0


@pytest.mark.parametrize("method", ["pca", "nmf"])
def test_denoising_halves_error_and_keeps_it_calibrated(method):
    rng = np.random.default_rng(1)
    n = 1500
    q0 = rng.uniform(0.28, 0.345, n)
    clean = np.stack([_profile(v, Q) for v in q0])
    sem = 0.25 * np.sqrt(clean)  # Poisson-like, ~4 % at the peak: a low-dose profile
    noisy = clean + rng.normal(size=clean.shape) * sem
    truth = np.array([_true_max(v) for v in q0])
    plain = fit_peaks(Q, noisy, sem, WIN)
    den, op, info = lowrank_denoise(noisy, sem, np.ones(n, bool), Q >= 0.08, method)
    assert info["method"] == method and 2 <= info["n_components"] <= 10
    r = fit_peaks(Q, den, sem, WIN, operator=op)
    e_plain = np.abs(plain["q_peak"] - truth)
    e = np.abs(r["q_peak"] - truth)
    assert np.mean(e) < 0.6 * np.mean(e_plain), (np.mean(e), np.mean(e_plain))
    assert abs(np.mean(r["q_peak"] - truth)) < 0.001
    cover = np.mean(e <= r["q_err"])
    assert 0.6 <= cover <= 0.8, cover
    # the reported error shrinks with the true one (the operator is propagated, not ignored)
    assert np.median(r["q_err"]) < 0.75 * np.median(plain["q_err"])


def test_denoising_skipped_with_too_few_profiles():
    prof = np.stack([_profile(0.3, Q)] * 10)
    out, op, info = lowrank_denoise(prof, np.ones_like(prof), np.ones(10, bool), Q > 0.1)
    assert info["method"] == "none" and np.array_equal(out, prof) and np.array_equal(op, np.eye(Q.size))


def test_width_at_half_prominence():
    # a Gaussian (σ 0.05) on a flat base: the window edges at ±2σ sit at exp(-2) of the height, so half the
    # prominence is reached at ±σ·sqrt(2 ln(1/(1 − (1 − e⁻²)/2)))
    prof = (np.exp(-0.5 * ((Q - 0.32) / 0.05) ** 2) + 0.1)[None, :]
    r = fit_peaks(Q, prof, np.full_like(prof, 1e-3), WIN)
    level = 1 - 0.5 * (1 - np.exp(-2.0))
    expected = 2 * 0.05 * np.sqrt(2 * np.log(1 / level))
    assert r["fwhm"][0] == pytest.approx(expected, rel=0.05)
    # the reported width error matches the scatter of the widths of one SRO profile under counting noise
    clean = _profile(0.31, Q)
    sem = 0.12 * np.sqrt(clean)
    noisy = clean + np.random.default_rng(0).normal(size=(600, Q.size)) * sem
    rn = fit_peaks(Q, noisy, np.broadcast_to(sem, noisy.shape), WIN)
    # (as well as the position's error does: both carry the fit's χ² inflation where the model misfits)
    ratio_w = np.nanmedian(rn["fwhm_err"]) / np.nanstd(rn["fwhm"])
    ratio_q = np.nanmedian(rn["q_err"]) / np.nanstd(rn["q_peak"])
    assert 0.7 < ratio_w < 1.6 and ratio_w == pytest.approx(ratio_q, rel=0.25), (ratio_w, ratio_q)


def test_second_peak_found_where_present_and_not_on_a_shoulder():
    prof = np.stack([_profile(0.33, Q), _profile(0.33, Q) - 12 * Q * np.exp(-0.5 * ((Q - 0.594) / 0.07) ** 2)])
    r = fit_second_peak(Q, prof, np.full_like(prof, 0.01), (0.45, 0.75))
    assert r["present"].tolist() == [True, False]
    assert 0.57 < r["q_peak"][0] < 0.62 and np.isnan(r["q_peak"][1])


def test_spot_vote_marks_a_layer_not_a_lone_spot():
    z = np.full((9, 12), 3.0)
    z[:, 5:9] = 5.0  # a Type 2 layer of weak spots (each below the 6 σ of certainty)
    z[4, 1] = 6.5  # a lone noise excursion in an isotropic region
    v = spot_vote(z, np.zeros(z.shape, bool), 3.5, 6.0)
    assert (v[:, 6:8] >= 0.5).all() and (v[:, [5, 8]] > 0.4).all()  # the layer's edges get less support
    assert v[4, 1] < 0.5 and (v[:, :5] < 0.5).all()
    cz = np.zeros((9, 12))
    cz[:, 9:] = 100
    cz[4, 2] = 100  # one strong nanocrystal reflection
    nb = crystal_neighbour_count(cz, 25)
    cls = classify_rules(np.full(z.shape, 0.30), cz, z, crystal_spot_z=25, lif_spot_z=6, electrolyte_max_q=0.307,
                         sei_type1_range=(0.307, 0.37), sei_type2_range=(0.27, 0.33), electrolyte_range=(0.26, 0.307),
                         lif_vote=v, crystal_neighbours=nb, crystal_min_neighbours=4)
    assert (cls[:, 9:] == 0).all() and cls[4, 2] != 0
    assert (cls[:, 6:8] == 2).all() and (cls[:, :5][np.arange(9) != 4] == 3).all()


def test_phase_naming_from_spot_positions():
    lines = phase_lines(["li", "cu", "lif", "li2co3"], (0.16, 1.0))
    z = np.full((3, Q.size), 2.0)
    for row, qs in ((0, (0.479, 0.553, 0.782)), (1, (0.403, 0.570, 0.806)), (2, ())):
        for v in qs:  # Bragg-disk significance falls off over ± one disk radius
            z[row] = np.maximum(z[row], 40 * np.exp(-0.5 * ((Q - v) / 0.03) ** 2))
    idx, best, second = name_phases(Q, z, lines, 6.0, 0.0075, (0.16, 1.0))
    names = list(lines)
    assert names[idx[0]] == "cu" and names[idx[1]] == "li" and idx[2] == -1
    assert best[0] > second[0]
    aniso = band_anisotropy(Q, z, lines["cu"], 0.0125)
    assert aniso[0] > 35 and aniso[2] == pytest.approx(2.0)


def test_binning_keeps_boundaries():
    from sendmap.science.peaks import bin_similar_neighbours

    rng = np.random.default_rng(3)
    prof = np.empty((12, 16, Q.size))
    prof[:, :8] = _profile(0.286, Q)  # electrolyte | SEI Type 1
    prof[:, 8:] = _profile(0.334, Q)
    sem = 0.08 * np.sqrt(prof)
    noisy = prof + rng.normal(size=prof.shape) * sem
    avg, err, n = bin_similar_neighbours(noisy, sem, 3, (Q > 0.08) & (Q < 0.56))
    # inside a layer nearly every neighbour agrees (a few % fail the 3σ χ² test by chance) ...
    assert n[1:-1, 1:6].mean() > 8.7 and n[1:-1, 9:15].mean() > 8.7
    assert (n[1:-1, [7, 8]] <= 6).all()  # ... and the columns at the boundary do not take in the other side
    r = fit_peaks(Q, avg.reshape(-1, Q.size), err.reshape(-1, Q.size), WIN)
    qp = r["q_peak"].reshape(12, 16)
    assert abs(np.mean(qp[:, 7]) - _true_max(0.286)) < 0.003 and abs(np.mean(qp[:, 8]) - _true_max(0.334)) < 0.003


def test_bragg_fraction():
    mean = np.ones((2, Q.size))
    robust = mean.copy()
    robust[1, (Q > 0.4) & (Q < 0.6)] = 0.5
    f = bragg_fraction(Q, mean, robust, (0.2, 1.0))
    assert f[0] == 0 and 0.05 < f[1] < 0.3


def test_gmm_and_kmeans_name_clusters_by_the_definitions():
    rng = np.random.default_rng(0)
    shape = (40, 60)
    truth = np.zeros(shape, int)
    truth[:, :20], truth[:, 20:30], truth[:, 30:40], truth[:, 40:] = 3, 1, 2, 0
    centre = {3: 0.286, 1: 0.334, 2: 0.300}
    peak = np.where(truth == 0, np.nan, np.vectorize(lambda c: centre.get(c, 0.3))(truth) + rng.normal(0, 0.004, shape))
    lif = np.where(truth == 2, 8.0, 3.0) + rng.normal(0, 0.7, shape)
    cz = np.where(truth == 0, 100.0, 3.0)
    d = dict(crystal_spot_z=25, lif_spot_z=6, electrolyte_max_q=0.307, sei_type1_range=(0.307, 0.37),
             sei_type2_range=(0.27, 0.33), electrolyte_range=(0.26, 0.307))
    d.update(lif_vote=spot_vote(lif, cz > 25, 3.5, 6.0), crystal_neighbours=crystal_neighbour_count(cz, 25),
             crystal_min_neighbours=4)
    for method in ("gmm", "kmeans"):
        cls = classify_gmm(peak, cz, lif, 4, 0, method=method, **d)
        assert np.mean(cls == truth) > 0.97, method
        assert set(np.unique(cls)) <= set(range(len(CLASS_NAMES)))


@pytest.mark.parametrize("shape", [(7, 9), (1, 5), (5, 1), (2, 2)])
def test_window_sum_equals_ndimage_convolve_nearest(shape):
    """classify's neighbourhood sums (crystal neighbours, LiF vote) avoid scipy.ndimage; same numbers."""
    from scipy import ndimage

    from sendmap.science.classify import window_sum

    a = np.random.default_rng(1).random(shape)
    for k in (np.ones((3, 3)), np.array([[1, 1, 1], [1, 2, 1], [1, 1, 1.0]]), np.ones((5, 5))):
        np.testing.assert_allclose(window_sum(a, k), ndimage.convolve(a, k, mode="nearest"), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["pca", "nmf"])
def test_lowrank_operator_gives_the_dense_covariance(method):
    """The factorised operator's error propagation equals the dense matrix's (to rounding)."""
    rng = np.random.default_rng(3)
    n = 400
    clean = np.stack([_profile(v, Q) for v in rng.uniform(0.28, 0.345, n)])
    sem = 0.25 * np.sqrt(clean)
    den, op, info = lowrank_denoise(clean + rng.normal(size=clean.shape) * sem, sem, np.ones(n, bool), Q >= 0.08,
                                    method)
    assert isinstance(op, peaks.LowRankOperator) and op.shape == (Q.size, Q.size)
    fast = fit_peaks(Q, den, sem, WIN, operator=op)
    dense = fit_peaks(Q, den, sem, WIN, operator=np.asarray(op))
    for key in ("q_err", "height_err", "fwhm_err"):
        np.testing.assert_allclose(fast[key], dense[key], rtol=1e-9, equal_nan=True)
