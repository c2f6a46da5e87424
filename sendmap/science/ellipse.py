"""Elliptical distortion of the detector, measured from the amorphous ring of the centred mean pattern."""
from __future__ import annotations

import math

import numpy as np


def sector_scale_factors(polar_mean: np.ndarray, q_centres: np.ndarray, window: tuple[float, float],
                         max_scale: float = 0.05, n_grid: int = 401) -> np.ndarray:
    """Radial scale s_k of every azimuthal sector's profile relative to the all-sector mean profile.

    polar_mean: (nq, n_phi) mean counts per pixel of a centred (not ellipse-corrected) pattern;
    q_centres: (nq,) in 1/Å; window: the Q range (1/Å) holding the ring. For each sector k the model
    p_k(q) = A_k · P(q / s_k) is fitted on a grid of s (± ``max_scale``) with A_k free, then refined by a
    parabola through the best three grid points. Returns s (n_phi,) (NaN where a sector has no data).
    """
    sel = (q_centres >= window[0]) & (q_centres <= window[1])
    q = q_centres[sel]
    prof = np.nanmean(polar_mean, axis=1)
    ok = np.isfinite(prof)
    scales = np.linspace(1 - max_scale, 1 + max_scale, n_grid)
    # P(q / s) for every trial scale: (n_grid, n_q_window)
    model = np.interp(q[None, :] / scales[:, None], q_centres[ok], prof[ok])
    out = np.full(polar_mean.shape[1], np.nan)
    for k in range(polar_mean.shape[1]):
        p = polar_mean[sel, k]
        good = np.isfinite(p)
        if good.sum() < 5:
            continue
        m = model[:, good]
        amp = (m @ p[good]) / np.einsum("ij,ij->i", m, m)
        chi = np.sum((p[good][None, :] - amp[:, None] * m) ** 2, axis=1)
        i = int(np.argmin(chi))
        if 0 < i < n_grid - 1:
            y0, y1, y2 = chi[i - 1], chi[i], chi[i + 1]
            den = y0 - 2 * y1 + y2
            shift = 0.5 * (y0 - y2) / den if den > 0 else 0.0
            out[k] = scales[i] + shift * (scales[1] - scales[0])
        else:
            out[k] = scales[i]
    return out


def fit_ellipse_from_scales(scales: np.ndarray, phi_centres_rad: np.ndarray, n_sigma: float = 3.0) -> dict:
    """Fit s(φ) = c0 + c1·cos 2φ + c2·sin 2φ robustly (sectors holding Bragg spots are rejected).

    Returns ``{"ratio", "angle_deg", "scale", "residual_rms", "n_used"}``: ratio = (1+e)/(1−e) with
    e = hypot(c1, c2)/c0, and the major-axis angle θ = ½·atan2(c2, c1) in degrees from +x towards +y,
    folded into [0, 180).

    >>> import numpy as np
    >>> phi = np.linspace(-np.pi, np.pi, 72, endpoint=False)
    >>> s = 1 + 0.0075 * np.cos(2 * (phi - np.radians(30)))
    >>> r = fit_ellipse_from_scales(s, phi)
    >>> round(r["ratio"], 4), round(r["angle_deg"], 1)
    (1.0151, 30.0)
    """
    good = np.isfinite(scales)
    design = np.stack([np.ones_like(phi_centres_rad), np.cos(2 * phi_centres_rad), np.sin(2 * phi_centres_rad)], axis=1)
    coef = np.array([1.0, 0.0, 0.0])
    for _ in range(6):
        if good.sum() < 6:
            break
        coef, *_ = np.linalg.lstsq(design[good], scales[good], rcond=None)
        resid = scales - design @ coef
        mad = np.nanmedian(np.abs(resid[good] - np.nanmedian(resid[good])))
        new_good = np.isfinite(resid) & (np.abs(resid) <= n_sigma * max(1.4826 * mad, 1e-5))
        if np.array_equal(new_good, good):
            break
        good = new_good
    e = math.hypot(coef[1], coef[2]) / coef[0]
    angle = math.degrees(0.5 * math.atan2(coef[2], coef[1])) % 180.0
    resid = scales - design @ coef
    n_used = int(good.sum())
    rms = float(np.sqrt(np.sum(resid[good] ** 2) / max(n_used - 3, 1))) if n_used > 3 else float("nan")
    # 1-σ errors from the scatter of the sector scales: σ(c1) ≈ σ(c2) ≈ rms·sqrt(2/n) for evenly spread
    # sectors; ratio ≈ 1 + 2e, so σ(ratio) ≈ 2σ(c)/c0, and σ(θ) ≈ σ(c)/(2·e·c0) rad.
    sig_c = rms * math.sqrt(2.0 / max(n_used, 1))
    return {"ratio": float((1 + e) / (1 - e)), "angle_deg": float(angle), "scale": float(coef[0]),
            "ratio_err": float(2 * sig_c / coef[0]),
            "angle_err_deg": float(math.degrees(sig_c / (2 * max(e, 1e-12) * coef[0]))),
            "residual_rms": rms, "n_used": n_used}


def phi_centres(n_phi: int) -> np.ndarray:
    """Azimuth (rad) at the centre of each sector of ``sendmap.science.polar`` (sector k: [k, k+1)·2π/n − π)."""
    return (np.arange(n_phi) + 0.5) * (2 * np.pi / n_phi) - np.pi
