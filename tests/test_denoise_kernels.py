"""The compiled passes of the denoising's preparation (sendmap.science.denoise_kernels) against NumPy, bit for bit."""
import warnings

import numpy as np
import pytest

from sendmap.science.denoise_kernels import column_medians, finite_copy, gather_scaled


def test_finite_copy_is_nan_to_num():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(50, 7)) * 1e3
    a[rng.random(a.shape) < 0.1] = np.nan
    a[0, 0], a[1, 1], a[2, 2] = np.inf, -np.inf, -0.0
    before = a.copy()
    out = finite_copy(a)
    ref = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    assert out is not a and np.array_equal(out, ref) and np.array_equal(np.signbit(out), np.signbit(ref))
    assert np.array_equal(a, before, equal_nan=True)  # the input is left as it was


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_column_medians_are_numpys(n):
    """Odd and even counts (the middle value, or the middle two's mean), NaNs left out, ±inf kept as values, an
    all-NaN column NaN, a column subset and a row subset (bool and indices)."""
    rng = np.random.default_rng(n)
    a = rng.lognormal(0, 2, (n, 9))
    a[rng.random(a.shape) < 0.2] = np.nan
    a[:, 3] = np.nan
    a[0, 4], a[-1, 5] = np.inf, -np.inf
    a[:, 6] = np.round(a[:, 6])  # ties
    rows = rng.random(n) < 0.8
    rows[0] = True
    cols = np.array([0, 2, 3, 4, 5, 6, 8])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nanmedian(a[rows][:, cols], axis=0)
        ref_all = np.nanmedian(a, axis=0)
    assert np.array_equal(column_medians(a, rows, cols), ref, equal_nan=True)
    assert np.array_equal(column_medians(a, np.flatnonzero(rows), cols), ref, equal_nan=True)
    assert np.array_equal(column_medians(a, np.ones(n, bool)), ref_all, equal_nan=True)
    fin = np.nan_to_num(a[:, [0, 1]], nan=1.0)
    assert np.array_equal(column_medians(fin, rows), np.median(fin[rows], axis=0))


def test_column_medians_analytic():
    a = np.array([[1.0, 5.0], [3.0, np.nan], [2.0, 7.0], [10.0, np.nan]])
    assert column_medians(a, np.ones(4, bool)).tolist() == [2.5, 6.0]


def test_gather_scaled_is_numpys_with_its_layout():
    """nan_to_num(a[rows][:, cols]) / scale: the same numbers and the same (Fortran) layout, so that the Gram
    product of its centred columns (gram_svd) is NumPy's bit for bit."""
    from sendmap.science.lowrank import gram_svd

    rng = np.random.default_rng(5)
    a = rng.normal(size=(3000, 40)) * 10
    a[rng.random(a.shape) < 0.05] = np.nan
    a[3, 4], a[5, 6] = np.inf, -np.inf
    rows = rng.random(3000) < 0.7
    cols = np.arange(5, 37)
    scale = rng.uniform(0.5, 2.0, cols.size)
    ref = np.nan_to_num(a[rows][:, cols]) / scale
    out = gather_scaled(a, rows, cols, scale)
    assert np.array_equal(out, ref) and out.flags.f_contiguous == ref.flags.f_contiguous
    ok = np.isfinite(a[:, cols]).all(axis=1) & rows  # (the ±largest floats would overflow the Gram matrix)
    ref2 = np.nan_to_num(a[ok][:, cols]) / scale
    out2 = gather_scaled(a, ok, cols, scale)
    out2 -= out2.mean(axis=0)
    assert np.array_equal(gram_svd(out2, vectors=False)[0], gram_svd(ref2 - ref2.mean(axis=0), vectors=False)[0])


@pytest.mark.parametrize("n, nq", [(1, 3), (7, 5), (100, 17), (3000, 89)])
def test_masked_column_means_are_numpys(n, nq):
    """The mean profile of the rows (bins over the rows where profile and error are finite) and its √Σσ²/n error,
    as resolve_auto_fit_range computed them in NumPy, bit for bit; an all-NaN bin NaN."""
    from sendmap.science.denoise_kernels import masked_column_means

    rng = np.random.default_rng(n + nq)
    p = rng.lognormal(0, 3, (n, nq))
    s = rng.lognormal(0, 1, (n, nq))
    p[rng.random(p.shape) < 0.1] = np.nan
    s[rng.random(s.shape) < 0.05] = np.inf
    p[:, 0] = np.nan
    sel = rng.random(n) < 0.8
    sel[0] = True
    with np.errstate(invalid="ignore", divide="ignore"):
        fin = np.isfinite(p[sel]) & np.isfinite(s[sel])
        n_fin = fin.sum(axis=0)
        ref = np.where(fin, p[sel], 0.0).sum(axis=0) / np.where(n_fin > 0, n_fin, np.nan)
        ref_s = np.sqrt(np.where(fin, s[sel] ** 2, 0.0).sum(axis=0)) / np.where(n_fin > 0, n_fin, np.nan)
    mean, mean_s, n_rows = masked_column_means(p, s, sel)
    assert np.array_equal(mean, ref, equal_nan=True) and np.array_equal(mean_s, ref_s, equal_nan=True)
    assert np.isnan(mean[0]) and n_rows == int((sel & np.isfinite(p).any(axis=1)).sum())
