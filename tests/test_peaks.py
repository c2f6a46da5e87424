"""SRO peak fits against known maxima, with calibrated uncertainties; histogram fits; layers; classes."""
import numpy as np
import pytest

from sendmap.science.classify import classify_rules
from sendmap.science.peaks import fit_peaks
from sendmap.science.stats import class_mean_profiles, gaussian_histogram_fit, layer_thickness

Q = (np.arange(64) + 0.5) * 0.0125


# σ = 0.055 1/Å: FWHM 0.13, the width of an SRO ring (FWHM ≈ 0.08) convolved with a 2 mrad probe disk
WIDTH = 0.055


def _profile(q0, width=WIDTH):
    """A peak on a falling background, times Q (n = 1): its maximum is not at q0."""
    return (30 * np.exp(-0.5 * ((Q - q0) / width) ** 2) + 60 * np.exp(-Q / 0.15)) * Q


def _true_max(q0):
    qq = np.linspace(0.22, 0.42, 200001)
    f = (30 * np.exp(-0.5 * ((qq - q0) / WIDTH) ** 2) + 60 * np.exp(-qq / 0.15)) * qq
    return qq[np.argmax(f)]


def test_noise_free_peak_is_exact():
    prof = np.stack([_profile(q0) for q0 in (0.285, 0.30, 0.33, 0.345)])
    r = fit_peaks(Q, prof, np.full_like(prof, 0.01), (0.22, 0.42))
    truth = np.array([_true_max(q0) for q0 in (0.285, 0.30, 0.33, 0.345)])
    assert np.abs(r["q_peak"] - truth).max() < 0.0016
    assert (r["status"] == 0).all()


def test_fit_range_must_follow_peak_width():
    """Model bias of the polynomial: small when the fit range is ≈ 1.1 × FWHM, larger when too wide."""
    q0s = np.linspace(0.285, 0.345, 7)
    qq = np.linspace(0.2, 0.45, 250001)
    for width, hw, bound in ((0.055, 0.14, 0.0016), (0.045, 0.10, 0.0011)):
        f = lambda v, x: (30 * np.exp(-0.5 * ((x - v) / width) ** 2) + 60 * np.exp(-x / 0.15)) * x  # noqa: E731
        prof = np.stack([f(v, Q) for v in q0s])
        truth = np.array([qq[np.argmax(f(v, qq))] for v in q0s])
        r = fit_peaks(Q, prof, np.full_like(prof, 0.01), (0.22, 0.42), hw)
        assert np.abs(r["q_peak"] - truth).max() < bound, (width, hw)


def test_noisy_peaks_unbiased_with_calibrated_errors():
    rng = np.random.default_rng(4)
    n = 3000
    q0 = rng.uniform(0.28, 0.345, n)
    clean = np.stack([_profile(v) for v in q0])
    sem = 0.12 * np.sqrt(clean)  # Poisson-like (≈2 % of the peak per bin, as at 2e4 e⁻): error grows with the signal
    noisy = clean + rng.normal(size=clean.shape) * sem
    r = fit_peaks(Q, noisy, sem, (0.22, 0.42))
    truth = np.array([_true_max(v) for v in q0])
    err = r["q_peak"] - truth
    assert abs(np.mean(err)) < 0.001
    inside = np.mean(np.abs(err) <= r["q_err"])
    # the root of a noisy polynomial has heavier tails than a normal; the 60-76 % calibration band is
    # asserted on synthetic SEND data in test_end_to_end.py
    assert 0.6 <= inside <= 0.85, inside


def test_blocks_on_threads_give_the_fit_of_all_at_once(monkeypatch):
    """More than FIT_BLOCK profiles are fitted block by block through ``map_blocks``: on threads
    (execute.thread_map, as the pipeline does), serially, or all at once, every number is the same."""
    from types import SimpleNamespace

    from sendmap.engine.execute import local_map, thread_map
    from sendmap.science import peaks

    rng = np.random.default_rng(7)
    clean = np.stack([_profile(v) for v in rng.uniform(0.28, 0.345, 500)])
    sem = 0.12 * np.sqrt(clean)
    noisy = clean + rng.normal(size=clean.shape) * sem
    whole = fit_peaks(Q, noisy, sem, (0.22, 0.42))
    monkeypatch.setattr(peaks, "FIT_BLOCK", 64)  # 8 blocks, the last one short
    calls = []

    def counting_map(func, items):
        calls.append(list(items))
        return thread_map(func, calls[-1], n_threads=2)

    for map_blocks in (None, counting_map, local_map(SimpleNamespace(scheduler="synchronous", n_workers=None))):
        r = fit_peaks(Q, noisy, sem, (0.22, 0.42), map_blocks=map_blocks)
        for key, value in whole.items():
            np.testing.assert_array_equal(r[key], value, err_msg=key)
    assert calls == [list(range(0, 500, 64))]
    assert local_map(SimpleNamespace(scheduler="synchronous", n_workers=None)) is map


def test_no_data_gives_nan():
    r = fit_peaks(Q, np.full((2, 64), np.nan), np.full((2, 64), np.nan), (0.22, 0.42))
    assert np.isnan(r["q_peak"]).all() and (r["status"] == 2).all()


def test_histogram_fit_and_intrinsic_spread():
    rng = np.random.default_rng(1)
    true_vals = rng.normal(0.33, 0.006, 5000)
    meas_err = np.full(5000, 0.008)
    measured = true_vals + rng.normal(size=5000) * meas_err
    r = gaussian_histogram_fit(measured, 0.0025, meas_err)
    assert abs(r["mu"] - 0.33) < 0.0005
    assert abs(r["sigma"] - 0.01) < 0.0005  # sqrt(0.006² + 0.008²)
    assert abs(r["intrinsic_sigma"] - 0.006) < 0.001


def test_gaussian_fit_matches_scipy_curve_fit():
    """sendmap's own Levenberg-Marquardt (no scipy.optimize import) against curve_fit(absolute_sigma=True) on
    histograms of 3 x 10 to 2 x 10^4 values: the same minimum to 10^-3 of each parameter's 1-sigma error and the
    same errors to 10^-4."""
    from scipy.optimize import curve_fit

    from sendmap.science.stats import fit_gaussian

    def gauss(x, amp, mu, sigma):
        return amp * np.exp(-0.5 * ((x - mu) / sigma) ** 2)

    rng = np.random.default_rng(7)
    for _ in range(40):
        n, mu, sd, bw = int(rng.integers(30, 20000)), rng.uniform(0.2, 0.4), rng.uniform(0.002, 0.03), 0.0025
        v = rng.normal(mu, sd, n)
        counts, edges = np.histogram(v, bins=np.arange(np.floor(v.min() / bw) * bw, v.max() + 2 * bw, bw))
        c, s = 0.5 * (edges[1:] + edges[:-1]), np.sqrt(np.maximum(counts, 1.0))
        p0 = [counts.max(), v.mean(), max(v.std(ddof=1), bw / 2)]
        ref, ref_cov = curve_fit(gauss, c, counts, p0=p0, sigma=s, absolute_sigma=True, maxfev=5000)
        got, cov = fit_gaussian(c, counts, s, p0)
        ref_err, err = np.sqrt(np.diag(ref_cov)), np.sqrt(np.diag(cov))
        assert np.all(np.abs(np.abs(got) - np.abs(ref)) <= 1e-3 * ref_err), (got, ref, ref_err)
        assert np.allclose(err, ref_err, rtol=1e-4, atol=0)


def test_histogram_fit_rejects_a_gaussian_outside_the_histogram():
    """A narrow peak at the edge of a flat background: a fit that runs off to describe the background's slope
    (centre outside the binned range) is not the peak's; the moments are reported, flagged as not fitted."""
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.normal(0.398, 0.00215, 744), rng.uniform(0.2, 0.4, 148)])
    r = gaussian_histogram_fit(v, 0.0025)
    assert r["bin_edges"][0] <= r["mu"] <= r["bin_edges"][-1]
    if not r["fit_converged"]:
        assert r["mu"] == r["mean"]


def test_class_mean_profiles_and_layers():
    cm = np.array([[3, 3, 3, 1, 1, 0, 0, 0]] * 3 + [[3, 3, 1, 1, 1, 1, 0, 0]] * 3)
    prof = np.repeat(cm[..., None].astype(float), 5, axis=-1)
    mean, sem, counts = class_mean_profiles(prof, cm, 5)
    assert np.allclose(mean[3], 3) and counts[1] == 18
    lay = layer_thickness(cm, 4.0)
    assert lay["1#1"]["mean_nm"] == 12.0 and lay["1#1"]["std_nm"] > 0


def test_rules_follow_definitions():
    defs = dict(crystal_spot_z=25, lif_spot_z=6, electrolyte_max_q=0.307, sei_type1_range=(0.307, 0.37),
                sei_type2_range=(0.27, 0.33), electrolyte_range=(0.26, 0.307))
    c = classify_rules(np.array([0.33, 0.29, 0.30, 0.33, 0.50, np.nan]), np.array([2, 2, 2, 60, 2, 2.0]),
                       np.array([1, 1, 9, 1, 1, 1.0]), **defs)
    assert c.tolist() == [1, 3, 2, 0, 4, 4]


def test_compiled_correlated_covariance_is_the_numpy_products():
    """The fit's coefficient covariance under correlated bin errors (speckle at lags 0…13, split pixels at lag 1),
    through a low-rank denoising and through the identity: the compiled per-position loop gives the NumPy form's
    numbers to rounding (~1e-15 relative), also for positions without a speckle part (whose speckle terms it skips)."""
    from sendmap.science.peaks import LowRankOperator, _correlated_covariance, _correlated_covariance_numpy

    rng = np.random.default_rng(11)
    n, nq, m, d1, k = 300, 89, 23, 6, 7
    a_inv = rng.normal(size=(n, d1, d1))
    m_inv = a_inv @ np.swapaxes(a_inv, 1, 2)
    start = rng.integers(0, nq - m, n)
    cols = start[:, None] + np.arange(m)
    xp = np.linspace(-1, 1, m)[None, :, None] ** np.arange(d1) * np.ones((n, 1, 1))
    wgt = rng.uniform(0.5, 2.0, (n, m))
    sem = rng.uniform(0.1, 1.0, (n, nq))
    spk = sem * rng.uniform(0.0, 1.2, (n, nq))  # some above sem: clipped to it by both
    spk[::3] = 0.0  # positions without a speckle part (a scan without speckle): the kernel skips its terms
    spk[1::3, :40] = 0.0  # and positions with speckle in some bins only
    passed = np.zeros(nq, bool)
    passed[:6] = True
    op = LowRankOperator(passed, np.where(passed[:, None], 0.0, rng.normal(size=(nq, k))),
                         np.where(passed[None, :], 0.0, rng.normal(size=(k, nq))))
    corr = np.exp(-np.arange(14) / 4.0)
    for operator in (op, None):
        for pc in (np.array([1.0, 0.22]), None):
            ref = _correlated_covariance_numpy(m_inv, xp, wgt, cols, operator, sem, spk, corr, pc)
            got = _correlated_covariance(m_inv, xp, wgt, cols, operator, sem, spk, corr, pc)
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
            # some rows only, in place over m_inv, with NaN bins read as nan_to_num makes them (as fit_peaks uses it)
            rows = np.flatnonzero(rng.random(n) < 0.5)
            inplace, sem_nan = m_inv.copy(), sem.copy()
            sem_nan[rows[:20], 40:44] = np.nan
            _correlated_covariance(inplace, xp, wgt, cols, operator, sem_nan, spk, corr, pc, rows=rows, out=inplace)
            whole = _correlated_covariance(m_inv, xp, wgt, cols, operator, np.nan_to_num(sem_nan), spk, corr, pc)
            assert np.array_equal(inplace[rows], whole[rows])
            left = np.setdiff1d(np.arange(n), rows)
            assert np.array_equal(inplace[left], m_inv[left])


def test_histogram_fallback_reports_the_sample_moments():
    """Values spread over less than a bin (one real film measured to ±0.0002 1/Å, bins of 0.0025): no Gaussian fit
    (< 3 bins), and the reported sigma is the sample standard deviation it says it is, not half a bin."""
    rng = np.random.default_rng(5)
    v = 0.296 + 0.0002 * rng.standard_normal(192)
    r = gaussian_histogram_fit(v, 0.0025)
    assert not r["fit_converged"] and r["fit_method"].startswith("moments")
    assert r["sigma"] == pytest.approx(np.std(v, ddof=1), rel=1e-12)
    assert r["mu"] == pytest.approx(v.mean(), rel=1e-12)
    # its amplitude is that Gaussian's, counts per bin (its area is the 192 values), not the tallest bin (192)
    assert r["amplitude"] == pytest.approx(192 * 0.0025 / (r["sigma"] * np.sqrt(2 * np.pi)), rel=1e-12)
    assert r["amplitude"] > 3 * max(r["bin_counts"])


def test_histogram_figure_resolves_a_distribution_narrower_than_a_bin():
    """The same film in the figure: drawn in bins of 1/20 of the values' range or finer (named on the y axis), and
    the moments' curve and the mixture's, each of area n, rise to the tallest drawn bar's order, not 5 x above it."""
    import matplotlib

    matplotlib.use("Agg")
    from sendmap.report.histograms import display_bin_width, plot_histograms

    rng = np.random.default_rng(5)
    v = 0.296 + 0.0002 * rng.standard_normal(192)
    r = gaussian_histogram_fit(v, 0.0025)
    bw = display_bin_width([v], 0.0025)
    assert bw <= (v.max() - v.min()) / 20 and 0.0025 / bw == round(0.0025 / bw)
    fits = {"electrolyte": {"mu": r["mu"], "sigma": r["sigma"], "count": 192, "amplitude": r["amplitude"]}}
    mix = [{"region": 0, "n": 192, "weight": [1.0], "mean": [r["mu"]], "sigma": [r["sigma"]], "err_median": 0.0}]
    fig = plot_histograms(v.reshape(12, 16), np.full((12, 16), 3), ["crystal", "sei_type1", "sei_type2",
                                                                    "electrolyte"], fits, "test", mixtures=mix)
    ax = fig.axes[0]
    assert "per bin of" in ax.get_ylabel()
    bars = max(np.histogram(v, bins=np.arange(v.min() - bw, v.max() + 2 * bw, bw))[0])
    peaks = [line.get_ydata().max() for line in ax.get_lines() if len(line.get_ydata()) == 600]  # the curves
    assert len(peaks) == 2 and all(0.5 * bars < p < 2.0 * bars for p in peaks), (peaks, bars)


def test_fit_peaks_with_the_callers_smoothed_profiles_is_the_same_fit():
    """``fit_peaks(smoothed=...)`` (the re-centring's refits and the second peak pass the profiles they smoothed
    already): the fit's numbers bit for bit, over blocks and re-centred, since the filter runs along each profile
    on its own; and the smoothed profiles given are the ones used (a shifted copy moves the first estimates)."""
    from sendmap.science.peak_kernels import highest_local_maximum
    from sendmap.science.peaks import FIT_BLOCK, fit_peaks, fit_second_peak, smoothed_profiles

    rng = np.random.default_rng(5)
    q = (np.arange(80) + 0.5) * 0.0125
    n = FIT_BLOCK + 300  # two blocks
    centre = rng.uniform(0.27, 0.36, n)
    prof = (np.exp(-0.5 * ((q[None, :] - centre[:, None]) / 0.045) ** 2) + 0.3
            + 0.25 * np.exp(-0.5 * ((q[None, :] - 1.75 * centre[:, None]) / 0.06) ** 2))
    sem = np.full_like(prof, 0.02)
    prof = prof + sem * rng.normal(size=prof.shape)
    prof[7, 30:33] = np.nan
    sm = smoothed_profiles(prof, 3.0)
    for kw in ({"recentre": True, "feedback": -0.2}, {"recentre": False}):
        a = fit_peaks(q, prof, sem, (0.22, 0.42), 0.14, 3.0, 5, **kw)
        b = fit_peaks(q, prof, sem, (0.22, 0.42), 0.14, 3.0, 5, smoothed=sm, **kw)
        for key in a:
            assert np.array_equal(a[key], b[key], equal_nan=True), key
        shifted = fit_peaks(q, prof, sem, (0.22, 0.42), 0.14, 3.0, 5, smoothed=np.roll(sm, 4, axis=1), **kw)
        assert not np.array_equal(a["q_peak"], shifted["q_peak"], equal_nan=True)
    # the second peak (its first estimates' smoothing passed on to its fit): the fit of those estimates as before
    second = fit_second_peak(q, prof, sem, (0.45, 0.75), 0.16, 3.0, 4)
    ref = fit_peaks(q, prof, sem, (0.45, 0.75), 0.16, 3.0, 4, width_error=False,
                    first_estimate=highest_local_maximum(sm, (q >= 0.45) & (q <= 0.75)))
    present = second["present"]
    assert present.sum() > n // 2
    for key in ("q_peak", "q_err", "height", "prominence", "fwhm"):
        assert np.array_equal(second[key][present], ref[key][present]), key
