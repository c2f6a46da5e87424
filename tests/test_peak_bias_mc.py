"""Monte-Carlo harness: the SRO peak estimator's bias on single patterns (issue 18, speckle3).

One isotropic amorphous pattern, the generator's SEI Type 1 (its SRO peak skewed: the low-Q flank falls more slowly,
half widths at 80 % of the maximum 0.064 / 0.055 1/Å), × partially developed speckle of M
volumes (:func:`sendmap.synth.patterns.speckle_field`, grains of the 2 mrad probe disk) × Poisson at 2 × 10⁴ e⁻,
binned by the profile stage's own kernel (:func:`sendmap.science.polar.polar_sums`, ``frame_statistics``) and fitted
by :func:`sendmap.science.peaks.fit_peaks` with the peaks stage's polynomial over the fixed ± 0.14 1/Å range
(``peaks.fixed_range_degree``, a sextic since session 19; the quintic's model bias is measured noise-free below).
Known answer: the same fit of the noise-free pattern binned the same way, so only the noise's effect is measured (no
classification, no denoising). Bias = mean over draws − that, judged against its standard error.
"""
from __future__ import annotations

import numpy as np
import pytest

from sendmap.config import PeaksConfig
from sendmap.science.peaks import fit_peaks, window_feedback
from sendmap.science.polar import PolarGeometry, frame_statistics, polar_sums, speckle_mean_factor

N_DET, QPX, DISK_PX = 128, 0.0125, 6.38  # 128² detector, 1/Å per pixel, probe disk radius (2 mrad at 200 kV)
WINDOW = (0.22, 0.42)
ARGS = (WINDOW, 0.14, 3.0, PeaksConfig().fixed_range_degree)


def _expected(cname: str = "sei_type1", target: float = 0.3345):
    """Expected counts per pixel of the scattered ring: the generator's own probe-convolved profile of class
    ``cname`` (:class:`sendmap.synth.make.SynthModel`, its peak of I·Q at ``target`` 1/Å) on the detector, its
    scattered part carrying 0.25 × 2 × 10⁴ electrons as in ``sendmap synth`` (the central disk lies below the window:
    left out)."""
    from sendmap.synth.make import AMORPHOUS_MODELS, SynthModel, SynthParams

    model = SynthModel(SynthParams(scan_shape=(4, 4)))
    centre = model.ring_centre_for(cname, np.array([target]))
    radial = (model.K @ model._ring_columns(AMORPHOUS_MODELS[cname], centre))[:, 0]
    c = (N_DET - 1) / 2.0
    yy, xx = np.mgrid[:N_DET, :N_DET]
    prof = np.interp(np.hypot(yy - c, xx - c) * QPX, model.q, radial)
    return prof * (5000.0 / prof.sum()), c


def _fits(m: int, n: int, seed: int, recentre: bool):
    from sendmap.synth.patterns import speckle_field

    expect, c = _expected()
    geom = PolarGeometry(q_pixel_size=QPX, bin_width=0.0125, nq=89, n_phi=72, supersample=3)
    q = geom.q_centres
    g = speckle_mean_factor(q, 72, DISK_PX * QPX, 0.0125) if m else None
    rng = np.random.default_rng(seed)
    frames = np.empty((n, N_DET, N_DET))
    for k in range(n):
        sp = speckle_field((N_DET, N_DET), DISK_PX, m, rng, centre_yx=(c, c)) if m else 1.0
        frames[k] = rng.poisson(expect * sp)
    mask = np.ones((N_DET, N_DET), bool)
    st = frame_statistics(polar_sums(frames, np.full((n, 2), c), mask, geom), q, DISK_PX * QPX, speckle_factor=g)
    st0 = frame_statistics(polar_sums(expect[None], np.array([[c, c]]), mask, geom), q, DISK_PX * QPX)
    iqn, sem = st["mean"] * q, st["sem"] * q
    beta = window_feedback(q, iqn, sem, None, *ARGS)["beta"] if recentre else None
    truth = fit_peaks(q, st0["mean"] * q, np.nanmedian(sem, axis=0)[None], *ARGS, width_error=False,
                      recentre=recentre, feedback=beta)["q_peak"][0]
    r = fit_peaks(q, iqn, sem, *ARGS, width_error=False, recentre=recentre, feedback=beta)
    d = r["q_peak"][r["status"] == 0] - truth
    return d, d.std(ddof=1) / np.sqrt(d.size)


def test_fixed_range_fit_unbiased_without_speckle():
    """Poisson only, the fit range centred on the smoothed maximum (the default of fit_peaks): unbiased within 3
    standard errors (−0.0003 ± 0.0003 1/Å)."""
    d, se = _fits(0, 600, 1, recentre=False)
    assert d.size > 580
    assert abs(d.mean()) < 3 * se + 1e-5, (d.mean(), se)


def test_recentred_fit_unbiased_without_speckle():
    """The fit range re-centred on the fitted maximum (the peaks stage's estimator under the speckle error model),
    Poisson only. With the quintic it was −0.0010 ± 0.0002 1/Å (median −0.0004): the quintic's maximum moves with
    the range (β = −0.19), so the noise-free reference sat on a bin-rounding step 0.0006 above the estimator's
    continuous fixed point; the sextic (β = −0.02) has no such step."""
    d, se = _fits(0, 600, 1, recentre=True)
    assert d.size > 580
    assert abs(d.mean()) < 3 * se + 1e-5, (d.mean(), se)


@pytest.mark.parametrize("cname, targets", [("sei_type1", (0.325, 0.341)), ("sei_type2", (0.295, 0.312)),
                                            ("electrolyte", (0.278, 0.291))])
def test_noise_free_fixed_range_maximum_under_both_error_models(cname, targets):
    """Model bias: the re-centred fit of the noise-free binned profile against the generator's maximum of I·Q
    (``target``), with Poisson weights (sem ∝ √counts) and the speckle error model's (sem ∝ counts). The stage's
    sextic is −0.0001 to −0.0005 1/Å off under both; the quintic of sessions ≤ 18 was +0.0000 to −0.0024 (the most
    negative under the speckle weights), depending also on where the peak falls between bins: its maximum moves
    with the range (β ≈ −0.2), so the re-centring's rounding to a bin shows."""
    from sendmap.science.polar import PolarGeometry, frame_statistics, polar_sums

    geom = PolarGeometry(q_pixel_size=QPX, bin_width=0.0125, nq=89, n_phi=72, supersample=3)
    q = geom.q_centres
    for target in targets:
        expect, c = _expected(cname, target)
        st0 = frame_statistics(polar_sums(expect[None], np.array([[c, c]]), np.ones((N_DET, N_DET), bool), geom), q,
                               DISK_PX * QPX)
        iq = (st0["mean"][0] * q)[None]
        for sem in (np.sqrt(st0["mean"][0]) * q, st0["mean"][0] * q):
            found = {}
            for degree in (5, ARGS[3]):
                args = ARGS[:3] + (degree,)
                beta = window_feedback(q, iq, sem[None], None, *args)["beta"]
                found[degree] = fit_peaks(q, iq, sem[None], *args, width_error=False, recentre=True,
                                          feedback=beta)["q_peak"][0] - target
            assert abs(found[ARGS[3]]) <= 0.0006, (cname, target, found)


@pytest.mark.xfail(strict=True, reason="known, not fixed (issue 18, sessions 17-19): under M = 3 speckle a single "
                   "pattern's maximum has a heavy tail towards the slower, low-Q flank (a few % of the fits 0.04-0.1 "
                   "1/Å low): mean −0.0032 ± 0.0006 1/Å here with the quintic, −0.0026 ± 0.0006 with the sextic, "
                   "median −0.0004; the remaining SEI Type 1 class-mean bias of −0.002 to −0.003 "
                   "1/Å on speckle3 (also after the denoising, whose truncation bias the neighbours' residual removes); the "
                   "peaks stage's one-step estimator (peaks.one_step_pool, default since session 22, test_one_step_from_a_neighbours_mean_...) is unbiased here")
def test_single_pattern_fit_unbiased_under_strong_speckle():
    d, se = _fits(3, 1200, 2, recentre=True)
    assert abs(d.mean()) < 3 * se + 1e-5, (d.mean(), se)


def _draws(m: int, n: int, seed: int, cname: str = "sei_type1", target: float = 0.3345):
    """n single patterns of class ``cname`` under speckle of M volumes × Poisson, binned as in :func:`_fits`:
    (q, I·Q, its standard error, the noise-free binned I·Q)."""
    from sendmap.synth.patterns import speckle_field

    expect, c = _expected(cname, target)
    geom = PolarGeometry(q_pixel_size=QPX, bin_width=0.0125, nq=89, n_phi=72, supersample=3)
    q = geom.q_centres
    g = speckle_mean_factor(q, 72, DISK_PX * QPX, 0.0125)
    rng = np.random.default_rng(seed)
    frames = np.empty((n, N_DET, N_DET))
    for k in range(n):
        frames[k] = rng.poisson(expect * speckle_field((N_DET, N_DET), DISK_PX, m, rng, centre_yx=(c, c)))
    mask = np.ones((N_DET, N_DET), bool)
    st = frame_statistics(polar_sums(frames, np.full((n, 2), c), mask, geom), q, DISK_PX * QPX, speckle_factor=g)
    st0 = frame_statistics(polar_sums(expect[None], np.array([[c, c]]), mask, geom), q, DISK_PX * QPX)
    return q, st["mean"] * q, st["sem"] * q, st0["mean"][0] * q


def test_one_step_from_a_neighbours_mean_unbiased_under_strong_speckle():
    """The peaks stage's estimator under strong speckle (``peaks.one_step_pool``,
    :func:`sendmap.science.peaks.one_step_peaks`): one Newton step on the pattern's own sextic from the maximum of
    the mean of 24 other patterns (a 5 × 5 neighbourhood). Linear in the pattern's noise, it has no lopsided tail:
    on the same M = 3 draws as the strict xfail below the polynomial's maximum is −0.0023 ± 0.0005 1/Å off (2000
    draws, seed 2, median +0.0004), the one step −0.0001 ± 0.0004. (On single SEI Type 2 and electrolyte patterns,
    whose noise is twice a denoised profile's, the step is +0.0012 and +0.0026 off: the reference's own noise,
    through its curvature; in the stage, on denoised profiles, the electrolyte class means are within ±0.0006.)"""
    from sendmap.science.peak_one_step import local_derivatives, one_step_peaks

    q, y, s, tr = _draws(3, 1200, 2)
    beta = window_feedback(q, y, s, None, *ARGS)["beta"]
    truth = fit_peaks(q, tr[None], np.nanmedian(s, axis=0)[None], *ARGS, width_error=False, recentre=True,
                      feedback=beta)["q_peak"][0]
    rng = np.random.default_rng(0)
    others = np.array([rng.choice(np.delete(np.arange(len(y)), i), 24, replace=False) for i in range(len(y))])
    ref, s_ref = y[others].mean(axis=1), s / np.sqrt(24)
    r = fit_peaks(q, ref, s_ref, *ARGS, width_error=False, recentre=True, feedback=beta)
    q_ref = np.where(r["status"] == 0, r["q_peak"], np.nan)
    centre = np.where(np.isfinite(q_ref), np.rint((np.nan_to_num(q_ref) - q[0]) / (q[1] - q[0])), -1).astype(int)
    curv = local_derivatives(q, ref, s_ref, centre, q_ref, ARGS[1], ARGS[3])["curvature"]
    qh, err = one_step_peaks(q, y, s, q_ref, curv, ARGS[1], ARGS[3])
    d = qh[np.isfinite(qh)] - truth
    assert d.size > 1150
    se = d.std(ddof=1) / np.sqrt(d.size)
    assert abs(d.mean()) < 3 * se + 1e-5, (d.mean(), se)
    poly = fit_peaks(q, y, s, *ARGS, width_error=False, recentre=True, feedback=beta)
    dp = poly["q_peak"][poly["status"] == 0] - truth
    assert d.std() < dp.std()  # and no noisier than the maximum (0.018 against 0.021 1/Å)
