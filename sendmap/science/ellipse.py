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
    polar_mean = np.asarray(polar_mean, dtype=np.float64)
    n_fin = np.sum(np.isfinite(polar_mean), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prof = np.where(n_fin > 0, np.nansum(polar_mean, axis=1) / np.maximum(n_fin, 1), np.nan)
    ok = np.isfinite(prof)
    out = np.full(polar_mean.shape[1], np.nan)
    if ok.sum() < 2 or q.size < 5:  # no mean profile to scale, or no window: nothing to fit (NaN everywhere)
        return out
    scales = np.linspace(1 - max_scale, 1 + max_scale, n_grid)
    # P(q / s) for every trial scale: (n_grid, n_q_window)
    model = np.interp(q[None, :] / scales[:, None], q_centres[ok], prof[ok])
    for k in range(polar_mean.shape[1]):
        p = polar_mean[sel, k]
        good = np.isfinite(p)
        if good.sum() < 5:
            continue
        m = model[:, good]
        norm = np.einsum("ij,ij->i", m, m)
        if not np.all(norm > 0) or not np.any(p[good] != 0):  # an empty (all-zero) ring: no scale
            continue
        amp = (m @ p[good]) / norm
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


MIN_FOLDED_COVERAGE = 0.5
"""The cos 2φ / sin 2φ terms are fitted only when the usable sectors cover at least half of the 180° period (sector
k and k + n/2 see the same ellipse axis): with less, c1 and c2 are not separable from c0 and the fit is not a fit."""

MIN_WINDOW_BINS = 5
"""Q bins with data the ellipse window needs (the per-sector scale fit has 3 parameters: amplitude, scale, and the
curvature the parabola needs)."""


def ellipse_from_polar_mean(polar_mean, q_centres: np.ndarray, window: tuple[float, float], frames_used: int,
                            n_sigma: float = 3.0) -> dict:
    """The elliptical distortion from the centred mean polar pattern, or no correction with the reason why.

    polar_mean: (nq, n_phi) mean counts per pixel (NaN where a bin has no used pixel; may be a scalar NaN when no
    frame was summed); q_centres (nq,) 1/Å; window (lo, hi) 1/Å holding the ring; frames_used: frames in the sum.
    Fits on the sectors it has (masked ones are NaN and left out). Where it cannot — no frame, the window holds
    fewer than :data:`MIN_WINDOW_BINS` Q bins with data, the usable sectors cover less than
    :data:`MIN_FOLDED_COVERAGE` of the 180° period, or the robust fit keeps fewer than 6 — it returns ratio 1,
    angle 0 and ``source`` = ``"not fitted: <why>"`` (the pipeline logs it). Else ``source`` = ``"fitted to the
    amorphous ring of the centred mean pattern"`` and the keys of :func:`fit_ellipse_from_scales`, plus
    ``n_sectors`` (usable sectors).

    >>> ellipse_from_polar_mean(np.nan, np.linspace(0.01, 0.5, 40), (0.15, 0.45), 0)["source"]
    'not fitted: no non-crystalline frame was summed for the fit'
    """
    q_centres = np.asarray(q_centres, dtype=np.float64)
    n_phi = np.ndim(polar_mean) == 2 and np.shape(polar_mean)[1] or 36
    none = {"ratio": 1.0, "angle_deg": 0.0, "scale": 1.0, "ratio_err": float("nan"), "angle_err_deg": float("nan"),
            "frames_used": int(frames_used), "fitted": False}
    lo, hi = float(window[0]), float(window[1])
    if frames_used <= 0 or np.ndim(polar_mean) != 2:
        return none | {"source": "not fitted: no non-crystalline frame was summed for the fit"}
    pm = np.asarray(polar_mean, dtype=np.float64)
    sel = (q_centres >= lo) & (q_centres <= hi)
    with_data = sel & np.any(np.isfinite(pm) & (pm != 0), axis=1)
    if with_data.sum() < MIN_WINDOW_BINS:
        return none | {"source": f"not fitted: the window {lo:g}–{hi:g} 1/Å (calibration.ellipse_window) holds "
                                 f"{int(with_data.sum())} Q bins with counts (needs {MIN_WINDOW_BINS}); the data "
                                 f"reach {float(q_centres[-1]):.3g} 1/Å in bins of {float(q_centres[1] - q_centres[0]):.3g}"}
    scales = sector_scale_factors(pm, q_centres, (lo, hi))
    phi = phi_centres(n_phi)
    good = np.isfinite(scales)
    folded = np.unique(np.arange(n_phi)[good] % max(n_phi // 2, 1)).size / max(n_phi // 2, 1)
    if folded < MIN_FOLDED_COVERAGE:
        return none | {"source": f"not fitted: only {int(good.sum())} of {n_phi} sectors hold the ring (the mask "
                                 f"hides the rest); they cover {100 * folded:.0f} % of the 180° period, "
                                 f"{100 * MIN_FOLDED_COVERAGE:.0f} % needed", "n_sectors": int(good.sum())}
    fit = fit_ellipse_from_scales(scales, phi, n_sigma)
    if fit["n_used"] < 6 or not (np.isfinite(fit["ratio"]) and fit["ratio"] >= 1.0):
        return none | {"source": f"not fitted: the robust fit kept {fit['n_used']} sectors (6 needed)",
                       "n_sectors": int(good.sum())}
    return fit | {"source": "fitted to the amorphous ring of the centred mean pattern", "frames_used": int(frames_used),
                  "n_sectors": int(good.sum()), "fitted": True}
