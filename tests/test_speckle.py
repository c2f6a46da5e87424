"""Speckle (issue 17): the generator's partially developed speckle, V(Q) and the honest SEM of the profile kernel,
and the speckle-aware spot significance (false spots on speckled amorphous patterns, LiF spots still found).

Patterns are built directly with ``sendmap.synth.patterns`` on a 96² detector at 0.0125 1/Å per pixel (reaching
0.6 1/Å: the LiF (200) band), 2 mrad at 200 kV (probe disk 0.0797 1/Å = 6.4 px), so every test takes seconds.
"""
from __future__ import annotations

import numpy as np
import pytest

from sendmap.config import ClassDefinitions
from sendmap.physics import probe_radius_inv_angstrom, speckle_grain_correlation
from sendmap.science.polar import PolarGeometry, speckle_mean_factor
from sendmap.science.polar_tables import PolarTables, profile_block
from sendmap.synth import patterns as P

N = 96
QPX = 0.0125
R_Q = probe_radius_inv_angstrom(2.0, 200.0)
R_PX = R_Q / QPX
CENTRE = (47.3, 48.6)
GEOM = PolarGeometry(QPX, QPX, 46, 72, 1.0, 0.0, 3)


def _amorphous_profile():
    """Probe-convolved isotropic scattering (per Å⁻²) on the fine grid: Lorentzian background + an SRO ring at 0.3."""
    q = P.fine_q_grid(1.2)
    f = 0.76 * P.unit_area(q, P.lorentzian(q, 0.1)) + 0.24 * P.unit_area(q, P.gaussian_ring(q, 0.3, 0.08))
    return q, P.disk_convolution_matrix(q, R_Q) @ f


Q_FINE, PROFILE = _amorphous_profile()


def _expected(electrons, spots=None, speckle=None):
    return P.render_pattern((N, N), CENTRE, QPX, probe_radius=R_Q, radial_profile=PROFILE, spots=spots,
                            electrons=electrons, supersample=2, speckle=speckle)


def _profiles(frames, error_model="azimuthal"):
    tables = PolarTables(GEOM)
    g = speckle_mean_factor(GEOM.q_centres, GEOM.n_phi, R_Q, GEOM.bin_width) if error_model == "azimuthal" else None
    # float32, as a float detector records (float64 expectation patterns would compile the profile kernel once
    # more for the tests alone)
    return profile_block(np.asarray(frames, np.float32), np.tile(CENTRE, (len(frames), 1)), np.ones((N, N), bool),
                         tables, R_Q, speckle_factor=g)


# ------------------------------------------------------------------------------------------- generator


@pytest.mark.parametrize("m", [1, 3, 10, 30])
def test_speckle_field_is_gamma_with_variance_one_over_m(m):
    rng = np.random.default_rng(m)
    f = np.stack([P.speckle_field((64, 64), R_PX, m, rng) for _ in range(40)])
    assert f.mean() == pytest.approx(1.0, abs=0.03)
    assert f.var() == pytest.approx(1.0 / m, rel=0.1)
    # gamma(M, 1/M): third central moment 2/M²
    assert ((f - 1) ** 3).mean() == pytest.approx(2.0 / m ** 2, rel=0.35)


def test_speckle_grains_are_the_probe_disk_and_centrosymmetric():
    rng = np.random.default_rng(7)
    f = np.stack([P.speckle_field((128, 128), R_PX, 1, rng, (64, 64)) for _ in range(60)]) - 1.0
    for lag in (2, 4, 6, 9):
        c = 0.5 * ((f * np.roll(f, lag, axis=2)).mean() + (f * np.roll(f, lag, axis=1)).mean()) / (f * f).mean()
        assert c == pytest.approx(float(speckle_grain_correlation(lag, R_PX)), abs=0.05), lag
    # beyond a disk diameter the grains are independent
    assert abs((f * np.roll(f, 16, axis=2)).mean() / (f * f).mean()) < 0.05
    # Friedel: I(c + d) = I(c − d)
    d = np.array([[5, 9], [-13, 4], [20, -17]])
    np.testing.assert_allclose(f[:, 64 + d[:, 0], 64 + d[:, 1]], f[:, 64 - d[:, 0], 64 - d[:, 1]], rtol=1e-12)


def test_synth_speckle_on_the_ring_and_off_by_default():
    from sendmap.synth import make as M

    small = dict(scan_shape=(2, 6), detector_shape=(64, 64), q_pixel_size=0.02)
    plain = M.SynthModel(M.SynthParams(**small))
    spk = M.SynthModel(M.SynthParams(**small, speckle_m=10))
    st = plain.row_structure(0)
    a, sa = plain.expected_row(0, st)
    b, sb = spk.expected_row(0, st)
    np.testing.assert_array_equal(sa, sb)  # the scale (and so the truth) is the speckle-free one
    cls = plain.phantom.class_map[0]
    amorph = cls != 0
    ratio = b[amorph] / a[amorph]
    q = P.detector_q((64, 64), plain.centres[0, 0], 0.02, 1.015, 30.0)
    ring = (q > 0.25) & (q < 0.5)
    v = ratio[:, ring].var(axis=1)
    assert np.median(v) == pytest.approx(0.1, rel=0.25)  # V ≈ 1/M on the ring's azimuthal intensity
    # no speckle: counts identical to a dataset made before speckle existed (its own random stream)
    c1, _ = plain.counts_row(0, st)
    c2, _ = M.SynthModel(M.SynthParams(**small, speckle_m=0)).counts_row(0, st)
    np.testing.assert_array_equal(c1, c2)


# ------------------------------------------------------------------------------------------- kernel: V(Q), SEM


def test_fem_variance_zero_for_smooth_poisson_ring_and_one_over_m_for_speckle():
    from sendmap.science.polar import fem_variance_scale

    rng = np.random.default_rng(3)
    scale = fem_variance_scale(GEOM.q_centres, GEOM.n_phi, R_Q, GEOM.bin_width)
    band = (GEOM.q_centres > 0.2) & (GEOM.q_centres < 0.55)
    smooth = rng.poisson(_expected(2e4), (40, N, N))
    v0 = _profiles(smooth)["fem_variance"][:, band] * scale[band]
    assert abs(np.mean(v0)) < 0.004  # Poisson part removed: unbiased to a few 1e-3 (1/M = 0.1 at M = 10)
    for m in (3, 10, 30):
        # noise-free: 10⁴× the counts, so the Poisson correction (which a noise-free pattern does not need) is negligible
        fr = np.stack([_expected(2e8, speckle=P.speckle_field((N, N), R_PX, m, rng, CENTRE)) for _ in range(40)])
        v = _profiles(fr)["fem_variance"][:, band] * scale[band]
        assert np.mean(v) == pytest.approx(1.0 / m, rel=0.15), m


@pytest.mark.parametrize("m", [None, 3, 10, 30])
def test_sem_matches_the_scatter_of_the_mean_over_draws(m):
    rng = np.random.default_rng(11 if m is None else m)
    frames = []
    for _ in range(150):
        sp = None if m is None else P.speckle_field((N, N), R_PX, m, rng, CENTRE)
        frames.append(rng.poisson(_expected(2e4, speckle=sp)))
    r = _profiles(frames)
    band = (GEOM.q_centres > 0.2) & (GEOM.q_centres < 0.55)
    ratio = np.median(r["sem"][:, band], axis=0) / r["mean"][:, band].std(axis=0, ddof=1)
    assert np.median(ratio) == pytest.approx(1.0, abs=0.15), (m, ratio.round(2))
    if m is not None and m <= 10:  # the Poisson model understates it (at M = 30 and 2e4 e⁻ Poisson is half of it)
        rp = _profiles(frames, "poisson")
        assert np.median(np.median(rp["sem"][:, band], axis=0) / r["mean"][:, band].std(axis=0, ddof=1)) < 0.8


# ------------------------------------------------------------------------------------------- spots vs speckle

DEF = ClassDefinitions()


def _band_max(z, bands):
    q = GEOM.q_centres
    sel = np.zeros(q.shape, bool)
    for lo, hi in bands:
        sel |= (q >= lo) & (q < hi)
    return np.nanmax(z[:, sel], axis=1)


@pytest.mark.parametrize("m,electrons", [(3, 2e4), (30, 2e4), (3, 5e3), (10, 5e3), (3, 1e6), (10, 1e6)])
def test_speckled_amorphous_has_at_most_one_percent_false_spots(m, electrons):
    """Seeds here (1000 + m) are not those the thresholds were chosen on (README: calibration seeds 21-25)."""
    rng = np.random.default_rng(1000 + m)
    fr = [rng.poisson(_expected(electrons, speckle=P.speckle_field((N, N), R_PX, m, rng, CENTRE))) for _ in range(200)]
    z = _profiles(fr)["spot_z"]
    lif = _band_max(z, DEF.lif_bands[:1])  # (200); (220) at 0.70 is beyond this detector
    from sendmap.stages.crystalline import LIF_DOSE_EXPONENT

    thr = DEF.lif_spot_z * (electrons / DEF.lif_spot_z_electrons) ** LIF_DOSE_EXPONENT  # the threshold at this dose
    assert np.mean(lif > thr) <= 0.01, np.sort(lif)[-5:]
    cz = _band_max(z, DEF.crystal_bands[:2])
    assert np.mean(cz > DEF.crystal_spot_z * np.sqrt(electrons / DEF.crystal_spot_z_electrons)) <= 0.01


@pytest.mark.parametrize("m", [3, 10, 30])
def test_lif_spots_with_three_percent_of_the_scattered_intensity_are_found(m):
    rng = np.random.default_rng(2000 + m)
    found = []
    for _ in range(40):
        phi = rng.uniform(0, 2 * np.pi)
        g = 0.497 * np.array([np.sin(phi), np.cos(phi)])
        # a Friedel pair of LiF (200) disks, 3 % of the scattered intensity each
        spots = np.array([[g[0], g[1], 0.03], [-g[0], -g[1], 0.03]])
        fr = rng.poisson(_expected(2e4, spots=spots, speckle=P.speckle_field((N, N), R_PX, m, rng, CENTRE)))
        found.append(_band_max(_profiles([fr])["spot_z"], DEF.lif_bands[:1])[0] > DEF.lif_spot_z)
    assert np.mean(found) >= 0.95


# ------------------------------------------------------------------------------------------- end to end, M = 10


@pytest.fixture(scope="module")
def speckled_scan(tmp_path_factory):
    """A 24 × 36 Li/Cu scan (128², 2 × 10⁴ e⁻) with speckle M = 10, synthesised and run with the default config."""
    from sendmap.cli import main
    from sendmap.evaluate import evaluate

    d = tmp_path_factory.mktemp("speckle_m10")
    assert main(["synth", str(d), "--scan-shape", "24", "36", "--speckle", "10", "--dose", "20000", "--seed", "32",
                 "--quiet"]) == 0
    cfg = (d / "config.yaml").read_text().replace("output: {dir: results}", "output: {dir: results, figures: false}")
    (d / "config.yaml").write_text(cfg)
    assert main(["run", str(d / "config.yaml"), "--no-progress"]) == 0
    return d, evaluate(d / "results", d)


def test_speckled_scan_peak_accuracy(speckled_scan):
    """Issue 17: MAE ≤ 0.006 1/Å and |bias| ≤ 0.002 at 2 × 10⁴ e⁻ with M = 10 (speckle-free: 0.003); the truth is
    the speckle-free expectation."""
    d, r = speckled_scan
    assert r["peak_mae"] <= 0.006, r
    assert abs(r["peak_bias"]) <= 0.002, r
    assert r["class_accuracy"] >= 0.9, r


def test_speckled_scan_coverage(speckled_scan):
    """Issue 17: ±1σ coverage 60-76 % at M = 10 after the denoising (measured 0.70; 0.55-0.59 before the speckle
    covariance was propagated exactly and V pooled over neighbours, 0.79 on the 30 × 45 scan of this seed before the
    fit range was re-centred on the fitted maximum and its feedback put in the error). ~430 positions, spatially
    correlated through the pooling and the denoising: ±0.03 or so between seeds (0.65-0.72 on dev seeds 41-43)."""
    _, r = speckled_scan
    assert 0.60 <= r["peak_coverage_1sigma"] <= 0.76, r


def test_speckled_scan_stores_v_and_the_error_model(speckled_scan):
    import zarr

    d, _ = speckled_scan
    g = zarr.open_group(str(d / "results" / "sendmap.zarr"), mode="r")
    v = np.asarray(g["features/fem_variance"])
    q = np.asarray(g["profiles/q"])
    assert v.shape == (24, 36, q.size)
    cls = np.load(d / "truth.npz")["class_map"]
    ring = (q > 0.25) & (q < 0.45)
    assert np.nanmedian(v[(cls == 1) | (cls == 3)][:, ring]) == pytest.approx(0.1, rel=0.2)  # 1/M
    assert g["profiles/sem"].attrs["error_model"] == "azimuthal"
    assert "speckle_edge" in g.attrs["peaks"]["denoise"]


# ------------------------------------------------------------------------------------------- peak errors, per pattern


def _peak_coverage(m, electrons, n_patterns, seed):
    """±1σ coverage of the SRO peak fitted to ``n_patterns`` independent speckled patterns of one expectation, with
    the peaks stage's estimator and error model (:func:`sendmap.stages.peaks.speckle_fit_errors`: Poisson, correlated
    between neighbouring bins by the pixel splitting, + speckle with V pooled over neighbours where the scan shows
    speckle at all, its covariance between bins propagated exactly; the fit range re-centred on the fitted maximum
    and the range's feedback β, measured on the mean profile, in the error), against the same estimator on the
    noise-free, speckle-free profile. Returns (coverage, mean error, number fitted, reported σ (rms) / actual
    scatter (SD), MAE)."""
    from sendmap.science.peaks import fit_peaks, pooled_position_mean, window_feedback
    from sendmap.science.polar import (fem_variance_scale, poisson_bin_correlation, speckle_fit_sem,
                                       speckle_radial_correlation)
    from sendmap.stages.peaks import speckle_presence

    q = GEOM.q_centres
    win = (0.22, 0.42)
    rng = np.random.default_rng(seed)
    frames = [rng.poisson(_expected(electrons, speckle=None if m is None else
                                    P.speckle_field((N, N), R_PX, m, rng, CENTRE))) for _ in range(n_patterns)]
    r = _profiles(frames)
    iqn, sem = r["mean"] * q, r["sem"] * q
    g, share = speckle_mean_factor(q, GEOM.n_phi, R_Q, GEOM.bin_width, return_sector_share=True)
    fem = r["fem_variance"] * fem_variance_scale(q, GEOM.n_phi, R_Q, GEOM.bin_width)
    own = speckle_fit_sem(np.zeros_like(sem), iqn, fem, g, share, 0, 2.0)
    grid = np.ones((10, n_patterns // 10), bool)  # the patterns as a 10-row scan (5 × 5 pooling as the stage)
    present = speckle_presence(fem.reshape(10, -1, q.size), grid, q, win)["present"]
    pooled = pooled_position_mean(fem.reshape(10, -1, q.size), grid).reshape(fem.shape)
    spk = speckle_fit_sem(np.zeros_like(sem), iqn, pooled, g, share, 0, 2.0) * present
    s_fit = np.sqrt(np.clip(sem ** 2 - own ** 2, 0, None) + spk ** 2)
    corr = (spk, speckle_radial_correlation(R_Q, GEOM.bin_width),
            poisson_bin_correlation(QPX, GEOM.bin_width, GEOM.supersample, (win[0] - 0.14, win[1] + 0.14)))
    beta = window_feedback(q, iqn, s_fit, None, win, 0.14)["beta"]
    res = fit_peaks(q, iqn, s_fit, win, 0.14, correlated=corr, recentre=True, feedback=beta)
    clean = _profiles([_expected(2e9)])
    truth = fit_peaks(q, clean["mean"] * q, clean["sem"] * q, win, 0.14, recentre=True)["q_peak"][0]
    ok = res["status"] == 0
    d = res["q_peak"][ok] - truth
    rms = np.sqrt(np.mean(res["q_err"][ok] ** 2))
    return (float(np.mean(np.abs(d) <= res["q_err"][ok])), float(np.mean(d)), d.size, float(rms / np.std(d)),
            float(np.mean(np.abs(d))))


@pytest.mark.parametrize("m", [None, 3, 10, 30])
def test_peak_errors_cover_under_speckle(m):
    """Issue 17: ±1σ coverage 60-76 % at M = 3, 10, 30 and without speckle (2 × 10⁴ e⁻), per pattern (the plain fit;
    the end-to-end scan below covers the denoised one), and |bias| ≤ 0.002. 1000 patterns per M: the coverage's
    binomial error is ±0.015, the band's edges ≥ 2.5 of them from the values measured here (0.63-0.70). Seeds 5000 + M
    (≥ 1000; the estimator and error model were chosen on synthetic scans of seeds 41-46 and 1000 patterns per M of
    seed 41). The reported σ (rms) is asserted within 0.85-1.15 × the peaks' actual scatter (SD): honest, neither
    wide (0.80-0.91 before the fit range was re-centred and its feedback put in the error: coverage up to 0.79 on
    scans) nor narrow."""
    cov, bias, n, ratio, mae = _peak_coverage(m, 2e4, 1000, 5000 + (m or 0))
    assert n >= 900  # a few patterns without a clear maximum (status not ok) at M = 3
    assert 0.85 <= ratio <= 1.15, (m, ratio, cov)
    assert 0.60 <= cov <= 0.76, (m, cov, bias)
    assert abs(bias) <= 0.002, (m, bias)


# ------------------------------------------------------------------------------------------- error-model parts


def test_poisson_bin_correlation_matches_repeated_patterns():
    """The pixel splitting makes neighbouring bins share counts: the computed lag-1 correlation of the Poisson errors
    (0.22 at one pixel per bin, 3 × 3 sub-pixels) against 400 Poisson patterns of one expectation (seed 1100)."""
    from sendmap.science.polar import poisson_bin_correlation

    rng = np.random.default_rng(1100)
    r = _profiles(rng.poisson(_expected(2e4), (400, N, N)))
    q = GEOM.q_centres
    band = np.flatnonzero((q > 0.1) & (q < 0.5))
    res = r["mean"] - r["mean"].mean(axis=0)
    emp = [np.mean([np.corrcoef(res[:, i], res[:, i + lag])[0, 1] for i in band]) for lag in (1, 2)]
    model = poisson_bin_correlation(QPX, GEOM.bin_width, GEOM.supersample, (0.1, 0.5))
    assert model[0] == 1.0
    assert model[1] == pytest.approx(emp[0], abs=0.04), (model, emp)
    assert abs(model[2]) < 0.02 and abs(emp[1]) < 0.04, (model, emp)


@pytest.mark.parametrize("m", [None, 30])
def test_speckle_presence(m):
    """The scan-level test that decides whether the fit's errors carry a speckle part: not on Poisson-only patterns
    (where the per-position V floored at 0 would widen σ), yes at M = 30 (V ≈ 0.03) at 2 × 10⁴ e⁻. Seed 1200 + M."""
    from sendmap.science.polar import fem_variance_scale
    from sendmap.stages.peaks import speckle_presence

    rng = np.random.default_rng(1200 + (m or 0))
    fr = [rng.poisson(_expected(2e4, speckle=None if m is None else P.speckle_field((N, N), R_PX, m, rng, CENTRE)))
          for _ in range(100)]
    q = GEOM.q_centres
    fem = _profiles(fr)["fem_variance"] * fem_variance_scale(q, GEOM.n_phi, R_Q, GEOM.bin_width)
    res = speckle_presence(fem.reshape(10, 10, -1), np.ones((10, 10), bool), q, (0.22, 0.42))
    assert res["present"] == (m is not None), res
    assert res["n"] == 100


def test_recentred_error_limits():
    """The re-centred estimator's error (:func:`sendmap.science.peaks.recentred_error`): σ_F / (1 − β) where the noise
    moves the range over many bins (implicit differentiation), σ_F where it cannot move it (β = 0)."""
    from sendmap.science.peaks import recentred_error

    bw = 0.0125
    for beta in (-0.2, 0.13):
        big = np.array([5 * bw, 20 * bw])
        np.testing.assert_allclose(recentred_error(big, beta, bw), big / (1 - beta), rtol=0.01)
    s = np.array([0.1, 1.0, 3.0]) * bw
    np.testing.assert_allclose(recentred_error(s, 0.0, bw), s, rtol=0.01)
    assert np.isnan(recentred_error(np.array([np.nan]), -0.2, bw)[0])
