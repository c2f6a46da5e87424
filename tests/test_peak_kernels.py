"""The compiled first-peak fit (sendmap.science.peak_kernels, ``fit_peaks``' default engine) against its NumPy form
(``engine="numpy"``, the reference): the same statuses and the same numbers to rounding, on profiles that reach
every branch of the fit."""
from __future__ import annotations

import numpy as np
import pytest

from sendmap.science import peak_kernels
from sendmap.science.peaks import LowRankOperator, fit_peaks, fit_second_peak, lowrank_denoise, status_code

Q = (np.arange(80) + 0.5) * 0.0125  # 1/Å, the bench scan's bins
WINDOW = (0.22, 0.42)


def _profiles(seed: int = 3, n: int = 600):
    """Gaussian SRO peaks (σ 0.045 1/Å, centres 0.26–0.38) on a sloping background at 2 % noise, and rows that
    reach the fit's other branches: flat with noise, monotonic (maximum at the window's edge), a peak outside the
    window, NaN bins inside the fit range, zero errors, all-NaN rows, near-empty rows, a Bragg spike (a crystal
    row), very noisy rows and a narrow, low peak."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0.26, 0.38, n)
    prof = np.exp(-0.5 * ((Q[None] - centre[:, None]) / 0.045) ** 2) + 0.2 + 0.3 * Q[None]
    sem = np.full_like(prof, 0.02) * rng.uniform(0.5, 2.0, (n, 1))
    prof += rng.normal(size=prof.shape) * sem
    prof[0:30] = 1.0 + rng.normal(size=(30, Q.size)) * 0.02  # flat
    prof[30:60] = 3 * Q + rng.normal(size=(30, Q.size)) * 0.02  # monotonic: the maximum at the window's edge
    prof[60:80] = np.exp(-0.5 * ((Q - 0.5) / 0.05) ** 2) + rng.normal(size=(20, Q.size)) * 0.02  # peak beyond
    prof[80:100, 22:30] = np.nan  # masked bins inside the fit range
    sem[100:120, 20:31] = 0.0  # zero errors: bins without weight
    prof[120:130] = np.nan  # no profile at all
    prof[130:140, :] = np.nan
    prof[130:140, 25:28] = 1.0  # too few valid bins
    prof[140:160, 30] += 5.0  # a Bragg spike on the halo (a crystal row)
    sem[160:200] *= 20.0  # very noisy
    prof[200:220] = 0.2 + 0.3 * Q + 0.05 * np.exp(-0.5 * ((Q - 0.3) / 0.02) ** 2) + rng.normal(size=(20, Q.size)) * 0.01
    return prof, sem


def _assert_same(ref: dict, got: dict, rtol: float = 1e-10):
    assert set(ref) == set(got)
    np.testing.assert_array_equal(got["status"], ref["status"])
    assert got["status"].dtype == ref["status"].dtype
    for k in ref:
        if k == "status":
            continue
        np.testing.assert_array_equal(np.isnan(got[k]), np.isnan(ref[k]), err_msg=k)
        f = np.isfinite(ref[k])
        np.testing.assert_allclose(got[k][f], ref[k][f], rtol=rtol, atol=0, err_msg=k)


def test_status_codes_are_the_named_ones():
    assert (peak_kernels.OK, peak_kernels.NO_MAXIMUM, peak_kernels.TOO_FEW, peak_kernels.FIT_FAILED) == tuple(
        status_code(s) for s in ("ok", "no_maximum_in_window", "too_few_counts", "fit_failed"))


@pytest.mark.parametrize("kw", [
    {},
    {"half_width": (0.09, 0.17)},  # an asymmetric (matched) range
    {"half_width": 0.05, "degree": 4, "smooth_sigma_bins": 0.0},
    {"width_error": False},
    {"flat_top_z": 2.0},
    {"recentre": True},
    {"recentre": True, "feedback": -0.2, "flat_top_z": 2.0},
], ids=["plain", "asymmetric", "narrow-deg4-unsmoothed", "no-width-error", "flat-top", "recentred", "recentred-flat"])
def test_compiled_fit_is_the_numpy_fit(kw):
    prof, sem = _profiles()
    ref = fit_peaks(Q, prof, sem, WINDOW, **kw, engine="numpy")
    got = fit_peaks(Q, prof, sem, WINDOW, **kw)
    _assert_same(ref, got)
    # every branch is reached: a peak, no maximum in the window, too few counts, and (here) a failed fit
    codes = set(np.unique(ref["status"]).tolist())
    assert {status_code("ok"), status_code("no_maximum_in_window"), status_code("too_few_counts")} <= codes
    assert np.isfinite(ref["fwhm"]).sum() > 300


def test_compiled_fit_from_first_estimates_is_the_numpy_fit():
    """The fit from given first estimates (the second peak's and the re-centring's path: the polynomial's local
    maximum nearest the estimate), with estimates off by up to 4 bins and −1 (none)."""
    prof, sem = _profiles(7)
    rng = np.random.default_rng(2)
    est = np.clip(np.round((0.32 - Q[0]) / 0.0125).astype(int) + rng.integers(-4, 5, len(prof)), 0, Q.size - 1)
    est[::17] = -1
    # (exactly constant profiles are left out: there the fitted polynomial is flat to rounding and its "maximum"
    # is rounding noise in either form)
    ref = fit_peaks(Q, prof, sem, WINDOW, first_estimate=est, engine="numpy")
    got = fit_peaks(Q, prof, sem, WINDOW, first_estimate=est)
    _assert_same(ref, got)
    assert status_code("fit_failed") in ref["status"]
    second_ref = fit_second_peak(Q, prof, sem, (0.45, 0.7))  # runs through the compiled path (smoke: finite)
    assert np.isfinite(second_ref["q_peak"][second_ref["present"]]).all()


def _correlation():
    return np.exp(-np.arange(14) / 4.0), np.array([1.0, 0.22])


def test_compiled_fit_with_correlated_errors_and_denoising_is_the_numpy_fit():
    """Speckle-correlated errors (lags 0…13, split pixels at lag 1), a low-rank (PCA) denoising operator, and
    both: the covariance propagation is shared, the rest compiled; the same numbers as the NumPy form."""
    prof, sem = _profiles(5, 900)
    corr, pcorr = _correlation()
    spk = 0.6 * sem
    rows = np.isfinite(prof).all(axis=1)
    y, op, info = lowrank_denoise(prof, sem, rows, (Q >= 0.1) & (Q <= 0.9))
    assert isinstance(op, LowRankOperator) and info["method"] == "pca"
    dense = op.dense()
    cases = [dict(correlated=(spk, corr, pcorr)), dict(correlated=(spk, corr)),
             dict(operator=op, profiles=y), dict(operator=dense, profiles=y),
             dict(operator=op, profiles=y, correlated=(spk, corr, pcorr), recentre=True)]
    for case in cases:
        p = case.pop("profiles", prof)
        ref = fit_peaks(Q, p, sem, WINDOW, **case, engine="numpy")
        got = fit_peaks(Q, p, sem, WINDOW, **case)
        _assert_same(ref, got)


def test_compiled_fit_blocks_and_threads_do_not_change_it():
    """More than FIT_BLOCK positions, mapped over threads: the same numbers as one serial NumPy pass."""
    from concurrent.futures import ThreadPoolExecutor

    from sendmap.science.peaks import FIT_BLOCK

    prof, sem = _profiles(9, 300)
    prof = np.tile(prof, (FIT_BLOCK // 300 + 2, 1))
    sem = np.tile(sem, (FIT_BLOCK // 300 + 2, 1))
    with ThreadPoolExecutor(2) as pool:
        got = fit_peaks(Q, prof, sem, WINDOW, map_blocks=pool.map)
    _assert_same(fit_peaks(Q, prof, sem, WINDOW, engine="numpy"), got)


def test_compiled_fit_of_ill_conditioned_normal_equations_takes_the_pseudo_inverse(monkeypatch):
    """Four bins weighted 10¹⁴ × the rest: XᵀWX has a condition number beyond 1e12, and both forms take NumPy's
    pseudo-inverse there (the compiled one hands those rows back). Their XᵀWX differ by rounding (another order of
    the sums), which such a condition number amplifies to ~1e-5 relative in the maximum and ~1e-4 in the height: compared to 1e-3."""
    import sendmap.science.peaks as peaks

    prof, sem = _profiles(4, 300)
    prof, sem = prof[220:280], sem[220:280]  # plain peaks
    sem[:, 23:27] = 1e-9
    calls = []
    pinv = np.linalg.pinv
    monkeypatch.setattr(peaks.np.linalg, "pinv", lambda a: calls.append(len(a)) or pinv(a))
    got = fit_peaks(Q, prof, sem, WINDOW)
    assert calls and calls[0] >= 50
    ref = fit_peaks(Q, prof, sem, WINDOW, engine="numpy")
    np.testing.assert_array_equal(got["status"], ref["status"])
    assert (ref["status"] == status_code("ok")).sum() >= 5
    for k in ("q_peak", "height"):
        np.testing.assert_array_equal(np.isnan(got[k]), np.isnan(ref[k]))
        f = np.isfinite(ref[k])
        np.testing.assert_allclose(got[k][f], ref[k][f], rtol=1e-3)


def test_compiled_speckle_errors_are_the_numpy_expressions_bit_for_bit():
    """The peaks stage's speckle errors (sendmap.stages.peaks.speckle_fit_errors) in one compiled pass: the same
    numbers as speckle_fit_sem and the NumPy combination they replace, including NaN, infinite, zero and negative
    V, NaN means and NaN errors; with and without speckle present. The speckle part bit for bit; the combined
    error √(max(sem² − own², 0) + spk²) to 1e-12 relative: a compilation of the kernel loaded from numba's on-disk
    cache, written by another process of the test suite, gave results up to 5 ulp from a fresh compilation (where
    sem² − own² cancels; same signature, source and CPU key; seen in session 15, cause not found), so bit identity
    across compilations is not promised."""
    from sendmap.science.peak_kernels import speckle_errors
    from sendmap.science.polar import speckle_fit_sem

    rng = np.random.default_rng(4)
    shape = (7, 9, 40)
    mean = rng.uniform(0.5, 2.0, shape)
    sem = rng.uniform(0.01, 0.1, shape)
    fem = rng.normal(0.02, 0.03, shape)  # some negative (Poisson-unbiased estimates scatter below 0)
    pooled = rng.normal(0.02, 0.01, shape)
    fem[0, 0, :5], fem[1, 1, 5:8], fem[2, 2, 9] = np.nan, 0.0, np.inf
    pooled[3, 3, :4] = np.nan
    mean[4, 4, :3], mean[5, 5, 3] = np.nan, np.inf
    sem[6, 6, :2] = np.nan
    sem[6, 7, :] = 1e-4  # below the own speckle part: clipped to 0 before the pooled part is added
    gfac, share = rng.uniform(0.2, 1.0, 40), rng.uniform(0.5, 1.0, 40)
    for present in (True, False):
        with np.errstate(invalid="ignore", over="ignore"):
            own = speckle_fit_sem(np.zeros_like(sem), mean, fem, gfac, share, 0, 2.0)
            spk = speckle_fit_sem(np.zeros_like(sem), mean, pooled, gfac, share, 0, 2.0)
            if not present:
                spk = np.zeros_like(spk)
            ref = np.sqrt(np.clip(sem ** 2 - own ** 2, 0.0, None) + spk ** 2)
        got_spk, got = speckle_errors(sem, mean, fem, pooled, gfac, share, present)
        np.testing.assert_array_equal(got_spk, spk)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        fin = np.isfinite(ref)
        np.testing.assert_array_equal(got[~fin & ~np.isnan(ref)], ref[~fin & ~np.isnan(ref)])
        np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-12, atol=0)
        assert (got[6, 7] < sem[6, 7]).any() or not present


@pytest.mark.parametrize("engine", ["compiled", "numpy"])
def test_first_estimates_handed_to_the_recentring_are_the_smoothed_maxima(engine):
    """``fit_peaks(..., first_estimate_out=)`` (the re-centring's first range centres, so it need not smooth the
    profiles again): exactly :func:`smoothed_argmax`'s bins (−1 for the all-NaN rows), over several blocks too."""
    from sendmap.science.peaks import FIT_BLOCK, smoothed_argmax

    prof, sem = _profiles(5, 300)
    prof = np.tile(prof, (FIT_BLOCK // 300 + 2, 1))
    sem = np.tile(sem, (FIT_BLOCK // 300 + 2, 1))
    got = np.full(len(prof), -7, np.int64)
    fit_peaks(Q, prof, sem, WINDOW, engine=engine, first_estimate_out=got)
    ref = smoothed_argmax(Q, prof, WINDOW, 3.0)
    assert (ref == -1).any() and (ref > 0).sum() > 0.8 * len(ref)
    np.testing.assert_array_equal(got, ref)
