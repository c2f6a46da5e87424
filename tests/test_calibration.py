"""Centres, descan plane, hot/dead mask and ellipse against synthetic truth."""
import math

import numpy as np

from sendmap.science.centre import brightest_disk_guess, disk_centres, fit_descan_plane
from sendmap.science.ellipse import fit_ellipse_from_scales, phi_centres, sector_scale_factors
from sendmap.science.mask import hot_dead_mask
from sendmap.science.polar import PolarGeometry, polar_sums

N = 128


def _disk_pattern(cy, cx, r=6.4, level=120.0, bg=0.5, ss=8):
    """Expected counts: an anti-aliased disk (sub-sampled coverage) on a flat background."""
    off = (np.arange(ss) + 0.5) / ss - 0.5
    yy, xx = np.mgrid[:N, :N].astype(float)
    cov = np.zeros((N, N))
    for oy in off:
        for ox in off:
            cov += ((yy + oy - cy) ** 2 + (xx + ox - cx) ** 2) < r * r
    return bg + level * cov / ss**2


def test_disk_centre_within_005_px_with_drift_and_noise():
    rng = np.random.default_rng(0)
    ry, rx = 10, 14
    yy, xx = np.mgrid[:ry, :rx]
    truth = np.stack([62.3 + 0.21 * yy, 65.1 - 0.17 * xx], axis=-1)
    frames = np.stack([rng.poisson(_disk_pattern(*truth[i, j])) for i in range(ry) for j in range(rx)])
    guess = brightest_disk_guess(frames.mean(axis=0), 6.4)
    measured = disk_centres(frames, guess, np.ones((N, N), bool), 1.5 * 6.4).reshape(ry, rx, 2)
    fitted, info = fit_descan_plane(measured)
    assert np.abs(fitted - truth).max() < 0.05
    assert abs(info["per_step_ry_yx"][0] - 0.21) < 0.005 and abs(info["per_step_rx_yx"][1] + 0.17) < 0.005


def test_centre_is_robust_to_masked_hot_pixel():
    img = _disk_pattern(60.2, 66.7)
    img[53, 67] = 5e4  # a hot pixel inside the centre-of-mass window, outside the disk
    s = img * 100
    m = hot_dead_mask(s, img)
    assert m["hot"][53, 67] and m["hot"].sum() == 1
    c = disk_centres(img[None], np.array([60.0, 66.0]), m["mask"], 9.6)[0]
    assert np.hypot(c[0] - 60.2, c[1] - 66.7) < 0.01


def test_mask_does_not_flag_disk_edges_and_finds_dead():
    img = _disk_pattern(64.0, 64.0, level=1e4, bg=50.0)
    mx = img.copy()
    img[30, 90] = 0.0
    mx[30, 90] = 0.0
    m = hot_dead_mask(img, mx)
    assert m["hot"].sum() == 0
    assert m["dead"][30, 90] and m["dead"].sum() == 1


def test_ellipse_ratio_and_angle_from_ring():
    """A ring distorted by 1.5 % at 30°: ratio within 0.002, angle within 3°."""
    ratio_true, angle_true = 1.015, 30.0
    th = math.radians(angle_true)
    a, b = math.sqrt(ratio_true), 1 / math.sqrt(ratio_true)
    yy, xx = np.mgrid[:N, :N].astype(float)
    dy, dx = yy - 63.6, xx - 64.3
    u = dx * math.cos(th) + dy * math.sin(th)
    v = -dx * math.sin(th) + dy * math.cos(th)
    q = np.sqrt((u / a) ** 2 + (v / b) ** 2) * 0.0125
    img = 200 * np.exp(-0.5 * ((q - 0.31) / 0.035) ** 2) + 40 * np.exp(-q / 0.2)
    frames = np.random.default_rng(2).poisson(np.broadcast_to(img, (40, N, N))).astype(np.uint16)
    g = PolarGeometry(0.0125, 0.0125, 40, 72, supersample=3)
    ps = polar_sums(frames, np.full((40, 2), [63.6, 64.3]), np.ones((N, N), bool), g)
    s, w = ps.s.sum(axis=0), ps.w.sum(axis=0)
    pm = np.divide(s, w, out=np.full_like(s, np.nan), where=w > 0)  # NaN in bins no pixel reaches
    r = fit_ellipse_from_scales(sector_scale_factors(pm, g.q_centres, (0.2, 0.42)), phi_centres(72))
    assert abs(r["ratio"] - ratio_true) < 0.002, r
    assert abs(((r["angle_deg"] - angle_true + 90) % 180) - 90) < 3, r
