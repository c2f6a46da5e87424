"""Radial profiles: analytic rings, Poisson errors, dispersion, spot significance, and pyFAI as a peer."""

import numpy as np
import pytest

from sendmap.science.polar import PolarGeometry, polar_sums, radial_statistics, spot_significance_profile
from sendmap.science.polar_tables import PolarTables, profile_block
from sendmap.synth.patterns import detector_q

N = 128
QPX = 0.0125


def _ring(q, q0=0.33, s=0.06):
    return 100.0 * np.exp(-0.5 * ((q - q0) / s) ** 2) + 10.0


def _analytic_pattern(centre, ratio=1.0, angle_deg=0.0):
    """Pixel values = the analytic ring at each pixel centre (in elliptical coordinates, synth's convention)."""
    return _ring(detector_q((N, N), centre, QPX, ratio, angle_deg))


def _bin_average(q_lo, q_hi):
    """Exact average of the ring function over an annulus [q_lo, q_hi): ∫ f q dq / ∫ q dq."""
    q = np.linspace(q_lo, q_hi, 2001)
    return np.trapezoid(_ring(q) * q, q) / np.trapezoid(q, q)


@pytest.mark.parametrize("ratio,angle", [(1.0, 0.0), (1.03, 35.0)])
def test_analytic_ring_within_half_percent(ratio, angle):
    """Supersampling (3×3 sub-pixels) against the exact annulus average of a ring of σ = 4 px.

    The residual is the pixel-area smear of splitting, ≈ ∇²f/24 px² (0.45 % at the peak of this ring).
    """
    centre = (63.37, 64.81)
    img = _analytic_pattern(centre, ratio, angle)
    g = PolarGeometry(QPX, QPX, 60, 72, ratio, angle, supersample=3)
    q = g.q_centres
    sel = (q > 0.1) & (q < 0.72)
    exact = np.array([_bin_average(i * QPX, (i + 1) * QPX) for i in range(60)])
    direct = radial_statistics(polar_sums(img[None], np.array([centre]), np.ones((N, N), bool), g))["mean"][0]
    # the pipeline's kernel: precomputed tables, the centre rounded to 1/16 px
    # (float32, as a float detector records: float64 would compile the kernel once more for the tests alone)
    fast = profile_block(img[None].astype(np.float32), np.array([centre]), np.ones((N, N), bool), PolarTables(g), 0.08)["mean"][0]
    for name, mean in (("direct", direct), ("tables", fast)):
        rel = np.abs(mean / exact - 1)[sel]
        assert rel.max() < 0.005, (name, rel.max())


def test_poisson_sem_and_dispersion_calibrated():
    rng = np.random.default_rng(3)
    frames = rng.poisson(4.0, (300, 96, 96)).astype(np.uint16)
    g = PolarGeometry(QPX, QPX, 45, 72, supersample=3)
    st = radial_statistics(polar_sums(frames, np.full((300, 2), 47.6), np.ones((96, 96), bool), g))
    for b in (10, 25, 40):
        predicted = np.nanmean(st["sem"][:, b])
        observed = np.std(st["mean"][:, b])
        assert abs(predicted / observed - 1) < 0.12, (b, predicted, observed)
    assert abs(np.nanmean(st["dispersion"][:, 5:40]) - 1) < 0.03


def test_mask_excludes_pixels():
    img = np.full((64, 64), 5.0)
    img[10, 10] = 1e6
    mask = np.ones((64, 64), bool)
    mask[10, 10] = False
    g = PolarGeometry(QPX, QPX, 30, 36, supersample=2)
    st = radial_statistics(polar_sums(img[None], np.array([[32.0, 32.0]]), mask, g))
    assert np.allclose(st["mean"][0][np.isfinite(st["mean"][0])], 5.0)


def test_spot_significance_finds_bragg_disk():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:N, :N]
    base = np.full((N, N), 0.5)
    spot = base.copy()
    # a probe-sized disk (0.08 1/Å, ~129 px) at Q = 0.5 1/Å holding ~129 counts over a 0.5 counts/px background:
    # a sliding window of ~180 px expects ~90 counts (σ ≈ 9.5), so the disk scores ≈ 13 σ
    r_disk = 0.08 / QPX
    dy, dx = 0.5 / QPX * np.sin(0.7), 0.5 / QPX * np.cos(0.7)
    spot[np.hypot(yy - 64 - dy, xx - 64 - dx) < r_disk] += 1.0
    frames = rng.poisson(np.stack([base] * 20 + [spot] * 20)).astype(np.uint16)
    g = PolarGeometry(QPX, QPX, 60, 72, supersample=2)
    ps = polar_sums(frames, np.full((40, 2), 64.0), np.ones((N, N), bool), g)
    z = spot_significance_profile(ps, g.q_centres, 0.08)
    at = np.argmin(np.abs(g.q_centres - 0.5))
    assert np.nanmax(z[:20, at]) < 5.0  # isotropic Poisson: no spot
    # a weak disk stands out in every frame; measured against the windows' own scatter (speckle-aware, issue 17),
    # whose scale is estimated from 72 windows (±~20 %, floored at Poisson), it scores a little less than the ≈ 13 σ
    # of a pure Poisson test: median ≈ 12, the lowest of 20 ≈ 7
    assert np.nanmin(z[20:, at]) > 6.0
    assert np.nanmedian(z[20:, at]) > 10.0


def test_profile_matches_pyfai_integrate1d():
    pytest.importorskip("pyFAI", reason="pyFAI (test extra) is the peer reference")
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    centre = (63.37, 64.81)
    img = _analytic_pattern(centre)
    pix = 55e-6
    ai = AzimuthalIntegrator(dist=0.1, poni1=(centre[0] + 0.5) * pix, poni2=(centre[1] + 0.5) * pix,
                             pixel1=pix, pixel2=pix)
    nb = 50
    res = ai.integrate1d(img, nb, unit="r_mm", radial_range=(0, nb * pix * 1e3), method=("full", "csr", "cython"),
                         correctSolidAngle=False, polarization_factor=None)
    g = PolarGeometry(QPX, QPX, nb, 72, supersample=3)
    st = radial_statistics(polar_sums(img[None], np.array([centre]), np.ones((N, N), bool), g))
    sel = slice(6, nb)
    rel = np.abs(st["mean"][0][sel] / res.intensity[sel] - 1)
    assert rel.max() < 0.01, rel.max()
