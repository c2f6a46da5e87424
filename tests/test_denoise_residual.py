"""The low-rank denoising's truncation bias and its correction from the neighbours' residuals
(sendmap.science.denoise_residual; peaks.denoise_residual_pool)."""
from __future__ import annotations

import numpy as np
import pytest

from sendmap.science.denoise_residual import neighbour_residual_mean, residual_added, residual_pool_error
from sendmap.science.peaks import fit_peaks, lowrank_denoise

Q = (np.arange(89) + 0.5) * 0.0125
WINDOW = (0.22, 0.42)


def _profile(centre, width_left, width_right, height=1.0):
    """A skewed SRO-like peak on a falling background (I·Q units, arbitrary)."""
    w = np.where(Q < centre, width_left, width_right)
    return height * np.exp(-0.5 * ((Q - centre) / w) ** 2) + 0.3 * np.exp(-Q / 0.3)


def _scan(seed, noise=0.04):
    """48 × 40 positions in three layers: A (rows 0-21), B (22-33), C (34-47); independent noise per position and
    bin, multiplicative and smooth along Q over ± 3 bins as speckle is, plus a white part."""
    rng = np.random.default_rng(seed)
    cls = np.zeros((48, 40), int)
    cls[22:34] = 1
    cls[34:] = 2
    # A and C differ in height (the scan's main variation, the one component kept below), B in position
    shapes = np.stack([_profile(0.285, 0.055, 0.045), _profile(0.315, 0.055, 0.045, 1.2),
                       _profile(0.285, 0.055, 0.045, 1.8)])
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 3.0) ** 2)
    smooth = np.apply_along_axis(np.convolve, -1, rng.standard_normal((48, 40, Q.size + 12)), kernel, "valid")
    smooth /= np.sqrt((kernel ** 2).sum())
    y = shapes[cls] * (1.0 + noise * smooth) + 0.5 * noise * rng.standard_normal((48, 40, Q.size)) * shapes[cls]
    sem = np.full_like(y, noise)  # the same weights everywhere: only the profiles differ
    return cls, shapes, y, sem


def _peaks(y, sem):
    r = fit_peaks(Q, y.reshape(-1, Q.size), sem.reshape(-1, Q.size), WINDOW, 0.14, 3.0, 5, width_error=False)
    return r["q_peak"].reshape(y.shape[:2]), r["status"].reshape(y.shape[:2])


def test_truncation_bias_removed_by_neighbour_residuals():
    """Known answer: the peak of layer B's noise-free profile (the estimator's own answer on it, so that only the
    denoising is tested). Kept to one component (the A–C direction), the projection moves B's peaks towards the
    population's; with the mean residual of the 5 × 5 neighbours added back, B's interior positions (their whole
    neighbourhood in B) come out unbiased within 3 standard errors of their mean."""
    cls, shapes, y, sem = _scan(7)
    truth = fit_peaks(Q, shapes[1][None], sem[0, :1], WINDOW, 0.14, 3.0, 5,
                      width_error=False)["q_peak"][0]
    rows = np.ones(y.shape[0] * y.shape[1], bool)
    flat, sflat = y.reshape(-1, Q.size), sem.reshape(-1, Q.size)
    den, _, info = lowrank_denoise(flat, sflat, rows, (Q >= 0.08) & (Q <= 0.8), "pca", 1)
    assert info["n_components"] == 1
    added, n_pool = residual_added(flat, den, rows, None, y.shape[:2], 5)
    interior = np.zeros(cls.shape, bool)
    interior[24:32, 2:-2] = True  # the 5 × 5 neighbourhood inside layer B
    assert np.all(n_pool.reshape(cls.shape)[interior] == 24)
    q_den, st_den = _peaks(den.reshape(y.shape), sem)
    q_add, st_add = _peaks(added.reshape(y.shape), sem)
    d_den = q_den[interior & (st_den == 0)] - truth
    d_add = q_add[interior & (st_add == 0)] - truth
    se_den = d_den.std(ddof=1) / np.sqrt(d_den.size)
    se_add = d_add.std(ddof=1) / np.sqrt(d_add.size)
    assert d_den.size > 200 and d_add.size > 200
    assert abs(d_den.mean()) > 10 * se_den, (d_den.mean(), se_den)  # the truncation bias is there
    assert abs(d_add.mean()) < 3 * se_add, (d_add.mean(), se_add)  # and gone
    assert d_add.std() < 2.0 * d_den.std() + 0.002  # at the price of a little noise, not the raw profiles'


def test_neighbour_residual_mean_leaves_out_the_position_and_invalid_bins():
    r = np.arange(5 * 5 * 2, dtype=float).reshape(5, 5, 2)
    valid = np.ones_like(r, bool)
    valid[2, 3, 1] = False  # a spot's bin of one neighbour
    m = neighbour_residual_mean(r, valid, 3)
    nb = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2), (3, 3)]
    assert m[2, 2, 0] == pytest.approx(np.mean([r[a, b, 0] for a, b in nb]))
    assert m[2, 2, 1] == pytest.approx(np.mean([r[a, b, 1] for a, b in nb if (a, b) != (2, 3)]))
    with pytest.raises(ValueError):
        neighbour_residual_mean(r, valid, 4)


def test_residual_pool_error_adds_the_mean_residual_variance():
    q_err = np.array([0.010, 0.010, 0.010, np.nan])
    plain = np.array([0.020, 0.020, np.nan, 0.02])  # the plain fit's sample: rows 0, 1
    out = residual_pool_error(q_err, plain, np.array([24, 0, 8, 24]), np.ones(4, bool))
    v = 0.020 ** 2 - 0.010 ** 2
    assert out[0] == pytest.approx(np.sqrt(0.010 ** 2 + v / 24))
    assert out[1] == pytest.approx(0.010)  # no neighbour averaged
    assert out[2] == pytest.approx(np.sqrt(0.010 ** 2 + v / 8))
    assert np.isnan(out[3])


def test_config_pool_must_be_odd():
    from sendmap.config import config_from_dict
    from sendmap.errors import SendmapInputError

    base = {"input": {"path": "x.mib", "format": "mib", "scan_shape": [2, 2]},
            "calibration": {"q_pixel_size": 0.0125}}
    assert config_from_dict(base).peaks.denoise_residual_pool == 1  # off by default
    with pytest.raises((SendmapInputError, ValueError)):
        config_from_dict(base | {"peaks": {"denoise_residual_pool": 4}})
