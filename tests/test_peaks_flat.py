"""The flat-top test (peak status ``no_clear_maximum``) and its honest error, on analytic profiles with known truth.

A flat-topped halo (a plateau with soft edges) must be flagged and get an error that spans the plateau; a clear
peak (the synthetic scenarios' Gaussian SRO peak) must not be flagged beyond the stated false-alarm rate, and its
q_peak / q_err must be exactly those of the fit without the test.
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf

from sendmap.science.peaks import (
    FLAT_TOP_Z,
    PEAK_STATUS,
    fit_peaks,
    flat_top_errors,
    stationary_point_set,
    status_code,
)

WINDOW = (0.22, 0.42)
N = 400  # noisy draws per case: a rate of 1 % is 4 ± 2 of them


def _q(bw):
    return (np.arange(int(0.8 / bw)) + 0.5) * bw


def _plateau(q, lo=0.26, hi=0.37, edge=0.012):
    """I·Q of a flat-topped halo: 1 on [lo, hi], erf edges of width ``edge`` 1/Å, on a 0.4 background."""
    return 0.4 + 0.6 * 0.5 * (erf((q - lo) / edge) - erf((q - hi) / edge))


def _gauss(q, mu=0.33, sigma=0.045):
    return 0.4 + 0.6 * np.exp(-0.5 * ((q - mu) / sigma) ** 2)


def _fit(q, truth, rel_noise, half_width, seed):
    rng = np.random.default_rng(seed)
    sem = np.full((N, q.size), rel_noise)
    prof = truth[None, :] + rng.normal(0.0, rel_noise, (N, q.size))
    r = fit_peaks(q, prof, sem, WINDOW, half_width, flat_top_z=FLAT_TOP_Z)
    return prof, sem, flat_top_errors(q, prof, r, WINDOW, half_width)


def test_status_is_appended():
    """Stored codes keep their meaning (../shared/CONTRACT.md): the new status is the last one."""
    assert PEAK_STATUS[:6] == ("ok", "no_maximum_in_window", "too_few_counts", "window_outside_data", "fit_failed",
                               "crystal")
    assert status_code("no_clear_maximum") == 6


def test_stationary_set_is_the_delta_method_for_a_parabola():
    """At z = 1, the set of a locally quadratic maximum is x0 ± σ_delta (σ_x = sd(p'(x0)) / |p''|)."""
    coef = np.array([[1.0, 0.1, -2.0, 0.0]])  # p' = 0.1 − 4x: x0 = 0.025
    cov = np.diag([0.0, 0.01, 0.0, 0.0])[None]  # sd(p') = 0.1 everywhere: σ_x = 0.1 / 4 = 0.025
    lo, hi, el, er = stationary_point_set(coef, cov, np.array([0.025]), 1.0)
    assert abs(lo[0] - 0.0) < 1e-3 and abs(hi[0] - 0.05) < 1e-3 and not (el[0] or er[0])
    # a flat polynomial: the set is the whole range
    lo, hi, el, er = stationary_point_set(np.array([[1.0, 0.0, 0.0, 0.0]]), cov, np.array([0.0]), 1.0)
    assert el[0] and er[0] and lo[0] == -1.0 and hi[0] == 1.0


def test_flat_top_fires_and_its_error_spans_the_plateau():
    """A plateau over 0.26-0.37 1/Å (noise 1 % of the top per bin of 0.0033 1/Å, the matched ± 0.04 range the real
    scan got): reported as a clear peak (ok) in ≤ 25 % of draws (measured 19 %: noise bumps the local data do
    bound; the rest no_clear_maximum, 54 %, or fit_failed, 27 %: no interior maximum, no peak in the maps either);
    the reported interval covers the plateau's
    centre and the error is of the plateau's size, where the plain fit's maxima scatter over the whole plateau
    with errors < 0.01."""
    q = _q(0.0033)
    _, _, r = _fit(q, _plateau(q), 0.01, 0.04, seed=1)
    flat = r["status"] == status_code("no_clear_maximum")
    assert np.mean(r["status"] == status_code("ok")) <= 0.25 and flat.mean() >= 0.5, np.bincount(r["status"])
    plain = fit_peaks(q, *_fit(q, _plateau(q), 0.01, 0.04, seed=1)[:2], WINDOW, 0.04)
    spread = np.nanstd(plain["q_peak"])
    assert spread > 0.015 and np.nanmedian(plain["q_err"]) < 0.005  # the failure it guards against
    top = q[_plateau(q) >= _plateau(q).max() - 0.01]  # the truth's top: within one bin's noise of its maximum
    centre, half = 0.5 * (top[0] + top[-1]), 0.5 * (top[-1] - top[0])  # 0.315, 0.036
    f = np.flatnonzero(flat)
    assert np.mean((r["q_max_lo"][f] <= centre) & (r["q_max_hi"][f] >= centre)) >= 0.9
    assert 0.6 * half <= np.median(r["q_err"][f]) <= 1.5 * half, (np.median(r["q_err"][f]), half)
    assert np.median(r["q_err"][f]) >= spread  # the error covers the spread of the plain fit's maxima
    assert np.mean(np.abs(r["q_peak"][f] - centre) <= r["q_err"][f]) >= 0.9


def test_two_equal_maxima_are_no_clear_maximum():
    """Two equal Gaussian bumps 0.08 1/Å apart: the fit takes either (a rival of the same height within the noise)."""
    q = _q(0.0033)
    truth = 0.4 + 0.5 * (np.exp(-0.5 * ((q - 0.28) / 0.025) ** 2) + np.exp(-0.5 * ((q - 0.36) / 0.025) ** 2))
    _, _, r = _fit(q, truth, 0.01, 0.04, seed=2)
    flat = r["status"] == status_code("no_clear_maximum")
    assert flat.mean() >= 0.9, flat.mean()
    f = np.flatnonzero(flat)
    assert np.mean((r["q_max_lo"][f] <= 0.29) & (r["q_max_hi"][f] >= 0.35)) >= 0.9


def test_clear_peak_is_not_flagged_and_keeps_its_numbers():
    """The synthetic scenarios' peak (Gaussian σ 0.045 at 0.33, ± 0.14 range, bins of 0.0125 1/Å) at 1 % and at 3 %
    noise per bin (≈ 5 × 10³ e⁻): flagged in ≤ 1 % of draws; q_peak and q_err of the others are those of the fit
    without the test, bit for bit."""
    q = _q(0.0125)
    for noise, seed in ((0.01, 3), (0.03, 4)):
        prof, sem, r = _fit(q, _gauss(q), noise, 0.14, seed)
        ref = fit_peaks(q, prof, sem, WINDOW, 0.14)
        flat = r["status"] == status_code("no_clear_maximum")
        assert flat.mean() <= 0.01, (noise, flat.mean())
        ok = r["status"] == status_code("ok")
        assert np.array_equal(r["q_peak"][ok], ref["q_peak"][ok]) and np.array_equal(r["q_err"][ok], ref["q_err"][ok])
        # the 1-σ set is the delta method's ± σ (a locally quadratic top)
        half = 0.5 * (r["q_max_hi"][ok] - r["q_max_lo"][ok])
        assert np.allclose(np.median(half / r["q_err"][ok]), 1.0, atol=0.1)


# --- real data: a small scan from the real summed metallic-glass pattern (../shared/data/real/amorphous_sum) ---

def _real_scan_fit(real_data_dir, centre_error_yx, n=64, seed=7):
    """Fit results and classes of ``n`` patterns Poisson-resampled at 2 × 10⁴ e⁻ from sum1.npy, each shifted by
    up to ± 2 px, binned around the true centre plus ``centre_error_yx`` (px), as the peaks stage does (fit range
    from the mean profile, flat-top test, honest errors; the rules' classes with undetermined_by_q)."""
    from test_peaks_real import _sum1_centre

    from sendmap.config import ClassDefinitions
    from sendmap.science.classify import classify_rules, undetermined_by_q
    from sendmap.science.peaks import resolve_auto_fit_range
    from sendmap.science.polar import PolarGeometry
    from sendmap.science.polar_tables import PolarTables, profile_block

    img = np.clip(np.load(real_data_dir / "amorphous_sum" / "sum1.npy").astype(float), 0, None)
    stop = np.zeros(img.shape, bool)  # the beam stop, by eye (as tests/test_peaks_real.py)
    stop[108:182, :182] = True
    stop[134:158, :218] = True
    cy, cx = _sum1_centre(img, stop)
    lam = img * 2e4 / img.sum()
    rng = np.random.default_rng(seed)
    shifts = rng.integers(-2, 3, (n, 2))
    frames = np.stack([rng.poisson(np.roll(lam, tuple(s), axis=(0, 1))) for s in shifts]).astype(np.uint16)
    masks = [np.roll(~stop, tuple(s), axis=(0, 1)) for s in shifts]
    mask = np.logical_and.reduce(masks)  # the stop moves with the pattern here: mask its union
    geom = PolarGeometry(q_pixel_size=0.0033, bin_width=0.0033, nq=150, n_phi=36, supersample=2)
    q = geom.q_centres
    centres = np.array([cy, cx])[None] + shifts + np.asarray(centre_error_yx, float)[None]
    r = profile_block(frames, centres, mask, PolarTables(geom), disk_radius_q=0.04)
    prof, sem = r["mean"] * q, r["sem"] * q
    window = (0.22, 0.42)
    hw, _ = resolve_auto_fit_range(q, prof, sem, np.ones(n, bool), window, 0.14)
    res = fit_peaks(q, prof, sem, window, hw, flat_top_z=FLAT_TOP_Z)
    plain = {k: v.copy() for k, v in res.items()}
    flat_top_errors(q, prof, res, window, hw)
    d = ClassDefinitions()
    rules = {"crystal_spot_z": 25.0, "lif_spot_z": 6.0, "electrolyte_max_q": d.electrolyte_max_q,
             "sei_type1_range": d.sei_type1_range, "sei_type2_range": d.sei_type2_range,
             "electrolyte_range": d.electrolyte_range}
    zero = np.zeros(n)
    cls = classify_rules(res["q_peak"], zero, zero, **rules)
    flat = res["status"] == status_code("no_clear_maximum")
    ends = [classify_rules(np.where(flat, res[k], res["q_peak"]), zero, zero, **rules) for k in ("q_max_lo", "q_max_hi")]
    return res, plain, undetermined_by_q(cls, *ends, flat)


def _coverage(res):
    ok = np.isfinite(res["q_peak"]) & np.isfinite(res["q_err"])
    return float(np.mean(np.abs(res["q_peak"][ok] - np.median(res["q_peak"][ok])) <= res["q_err"][ok]))


def test_real_halo_smeared_by_a_wrong_centre_is_one_population(real_data_dir):
    """Issue 18's real case: the halo of sum1.npy binned around centres 19 px off (where the calibration put them
    when it took the pattern's brightest blob, not the hidden direct beam, for the disk: (−18, +7) px) is
    level over ~0.1 1/Å. The plain fit's maxima then scatter over the plateau with errors that cover few of them;
    with the flat-top test none is a clear maximum, the no_clear_maximum ones (≥ 60 %; the rest fit_failed, which
    keep the fallback class from their smoothed maximum as before) are one population (unassigned: the Q range
    straddles the electrolyte / Type 1 split), and their errors cover the spread. (Through the pipeline, with
    the denoising, 181 of the 12 × 16 scan's 192 positions are no_clear_maximum and unassigned, the other 11 ok
    electrolyte.)"""
    res, plain, cls = _real_scan_fit(real_data_dir, (-18.0, 7.0))
    # none a clear maximum: no_clear_maximum (75 %) or fit_failed (no interior maximum at all, 25 %)
    assert np.mean(res["status"] == status_code("ok")) <= 0.05, np.bincount(res["status"])
    assert np.mean(res["status"] == status_code("no_clear_maximum")) >= 0.6, np.bincount(res["status"])
    assert _coverage(plain) < 0.5  # the failure: σ of the local fit far below the spread of the maxima
    f = res["status"] == status_code("no_clear_maximum")
    values, counts = np.unique(cls[f], return_counts=True)
    assert counts.max() >= 0.9 * f.sum(), dict(zip(values, counts))
    assert np.median(res["q_err"][f]) >= np.nanstd(plain["q_peak"])
    assert 0.68 <= _coverage(res) <= 1.0


def test_real_halo_well_centred_is_one_clear_population(real_data_dir):
    """The same scan binned around the right centres: a clear maximum (the test does not fire), one class, and
    the delta-method errors cover the scatter of the maxima as a 1-σ error should."""
    res, _plain, cls = _real_scan_fit(real_data_dir, (0.0, 0.0))
    assert np.mean(res["status"] == status_code("ok")) >= 0.95, np.bincount(res["status"])
    values, counts = np.unique(cls, return_counts=True)
    assert counts.max() >= 0.9 * len(cls), dict(zip(values, counts))
    assert 0.5 <= _coverage(res) <= 0.9, _coverage(res)
    assert abs(np.median(res["q_peak"]) - 0.297) < 0.005  # where the noise-free halo's I·Q peaks (≈ 0.298)


def test_the_test_is_off_by_default_and_on_when_asked():
    """``peaks.flat_top_test`` (default false: it misfires at low dose with speckle, see its description): the Python
    API follows the config, so an analytic plateau is fitted as before unless the test is asked for."""
    import sendmap

    q = _q(0.0033)
    prof, sem, _ = _fit(q, _plateau(q), 0.01, 0.04, seed=2)  # the case above: flagged in about half the draws
    off = sendmap.fit_peaks(prof, q, sem, window=WINDOW, half_width=0.04)
    on = sendmap.fit_peaks(prof, q, sem, window=WINDOW, half_width=0.04, flat_top_z=FLAT_TOP_Z)
    assert not np.any(off["status"] == status_code("no_clear_maximum")) and "q_max_lo" not in off
    assert np.mean(on["status"] == status_code("no_clear_maximum")) >= 0.4
