"""The SRO peak as one Newton step from a reference (``peaks.one_step_pool``; issue 18, session 20).

Under strong speckle (M = 3) a single profile's polynomial maximum is a nonlinear function of its noise, and for a
skewed SRO peak a lopsided one: the estimate runs further along the slower flank than back (SEI Type 1's class mean
0.0015-0.004 1/Å low on the speckle3 scenario cells, the electrolyte's high). One Newton step on the position's own
polynomial from a reference maximum whose noise is a fraction of its own (the mean profile of its scan neighbours)
is linear in the position's noise. Units: Q in 1/Å, profiles in I·Q^n units.
"""
from __future__ import annotations

import numpy as np

from .denoise_residual import neighbour_residual_mean
from .peaks import _inverse, _propagate, _quad, fit_peaks, status_code


def local_derivatives(q: np.ndarray, profiles: np.ndarray, sem: np.ndarray, centre: np.ndarray, q_at: np.ndarray,
                      half_width: float = 0.14, degree: int = 6, operator=None,
                      correlated: tuple | None = None) -> dict[str, np.ndarray]:
    """Slope and curvature at ``q_at`` of each profile's weighted polynomial fit over a given range.

    q (nq,) 1/Å, uniform; profiles, sem (N, nq) (I·Q^n and its standard error, weights 1/sem²); centre (N,) the
    fit range's centre bin (−1: none), ± ``half_width`` 1/Å (at least degree // 2 + 1 bins each side, as
    :func:`sendmap.science.peaks.fit_peaks`); q_at (N,) 1/Å. ``operator``/``correlated`` as in :func:`sendmap.science.peaks.fit_peaks`: the slope's variance is
    propagated through them. Returns ``slope`` (profile units per 1/Å), ``slope_var`` (its variance),
    ``curvature`` (profile units per (1/Å)²), NaN where no fit. Linear in the profiles (for a fixed range and
    weights): the building block of :func:`one_step_peaks`.
    """
    q = np.asarray(q, float)
    profiles = np.asarray(profiles, float).reshape(len(profiles), -1)
    sem = np.asarray(sem, float).reshape(profiles.shape)
    n, nq = profiles.shape
    out = {k: np.full(n, np.nan) for k in ("slope", "slope_var", "curvature")}
    bw = float(q[1] - q[0])
    h = max(degree // 2 + 1, int(round(half_width / bw)))
    if 2 * h > nq - 1:
        h = (nq - 1) // 2
    centre = np.asarray(centre, int)
    have = (centre >= 0) & np.isfinite(q_at)
    if not have.any():
        return out
    start = np.clip(centre - h, 0, nq - 1 - 2 * h)
    cols = start[:, None] + np.arange(2 * h + 1)[None, :]
    q_mid = q[start + h]
    scale = h * bw
    rows = np.arange(n)[:, None]
    y = profiles[rows, cols]
    sg = sem[rows, cols]
    x = (q[cols] - q_mid[:, None]) / scale
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        wgt = np.where(np.isfinite(y) & np.isfinite(sg) & (sg > 0), 1.0 / np.where(sg > 0, sg, 1.0) ** 2, 0.0)
    wgt = np.where(np.isfinite(wgt), wgt, 0.0)
    y = np.nan_to_num(y)
    powers = np.arange(degree + 1)
    xp = x[..., None] ** powers
    xpw = xp * wgt[..., None]
    a = np.swapaxes(xpw, 1, 2) @ xp
    b = (np.swapaxes(xpw, 1, 2) @ y[..., None])[..., 0]
    ok = have & (np.sum(wgt > 0, axis=1) > degree + 1)
    if not ok.any():
        return out
    cov = np.full_like(a, np.nan)
    cov[ok] = _inverse(a[ok])
    coef = np.full((n, degree + 1), np.nan)
    coef[ok] = (cov[ok] @ b[ok][..., None])[..., 0]
    if operator is not None or correlated is not None:
        _propagate(cov, ok, xp, wgt, cols, operator, sem, correlated)
    xa = (np.nan_to_num(np.asarray(q_at, float)) - q_mid) / scale
    d1 = np.zeros((n, degree + 1))
    d1[:, 1:] = powers[1:] * xa[:, None] ** (powers[1:] - 1)
    d2 = np.zeros((n, degree + 1))
    d2[:, 2:] = powers[2:] * (powers[2:] - 1.0) * xa[:, None] ** (powers[2:] - 2)
    out["slope"] = np.where(ok, np.sum(coef * d1, axis=1) / scale, np.nan)
    out["slope_var"] = np.where(ok, _quad(d1, np.nan_to_num(cov)) / scale ** 2, np.nan)
    out["curvature"] = np.where(ok, np.sum(coef * d2, axis=1) / scale ** 2, np.nan)
    return out


def one_step_peaks(q: np.ndarray, profiles: np.ndarray, sem: np.ndarray, q_ref: np.ndarray, curvature_ref: np.ndarray,
                   half_width: float = 0.14, degree: int = 6, operator=None, correlated: tuple | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The peak as one Newton step from a reference: q̂ = q_ref − p'(q_ref) / p''_ref, and its 1-σ error.

    p' is the slope at ``q_ref`` (N,) 1/Å of each profile's own polynomial over the range centred on q_ref's bin
    (:func:`local_derivatives`), ``curvature_ref`` (N,) the curvature p'' of a reference profile there (e.g. the mean
    of the position's scan neighbours, whose noise is a fraction of its own); σ = √Var(p') / |p''_ref|
    (Var(p') propagated through ``operator``/``correlated``). Units: 1/Å. Why: the own polynomial's maximum
    is a nonlinear function of the noise, and for a skewed peak the noise's effect is lopsided (the estimate runs
    further along the slower flank: on SEI Type 1 at speckle M = 3 a class mean 0.0015-0.004 1/Å low), whereas the
    one step is linear in the profile (fixed range and reference): the noise's effect averages out. To first order
    the estimate does not depend on q_ref (q̂ − q₀ = (q_ref − q₀)(1 − p''/p''_ref) + O((q_ref − q₀)²)), so the
    reference's noise, shared by neighbours, enters only through the curvatures' difference. NaN where the
    reference has no maximum (p''_ref ≥ 0) or the position no fit.

    >>> import numpy as np
    >>> q = (np.arange(80) + 0.5) * 0.0125
    >>> p = np.exp(-0.5 * ((q - 0.331) / 0.04) ** 2)[None, :] + 0.1
    >>> ref = fit_peaks(q, p, np.full_like(p, 0.01), (0.22, 0.42), degree=6)["q_peak"]  # a noise-free reference
    >>> c = np.rint((ref - q[0]) / 0.0125).astype(int)
    >>> curv = local_derivatives(q, p, np.full_like(p, 0.01), c, ref)["curvature"]
    >>> noisy = p * (1 + 0.05 * (q - 0.331))  # a tilt moves the maximum by 0.05 σ² ≈ 0.0001 1/Å
    >>> qh, e = one_step_peaks(q, noisy, np.full_like(p, 0.01), ref, curv)
    >>> round(float(qh[0] - ref[0]), 4)
    0.0001
    """
    q = np.asarray(q, float)
    bw = float(q[1] - q[0])
    q_ref = np.asarray(q_ref, float)
    c = np.where(np.isfinite(q_ref), np.clip(np.rint((np.nan_to_num(q_ref) - q[0]) / bw), 0, q.size - 1), -1)
    d = local_derivatives(q, profiles, sem, c.astype(int), q_ref, half_width, degree, operator, correlated)
    cr = np.asarray(curvature_ref, float)
    good = np.isfinite(d["slope"]) & np.isfinite(cr) & (cr < 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        qh = np.where(good, q_ref - d["slope"] / np.where(good, cr, -1.0), np.nan)
        err = np.where(good, np.sqrt(np.maximum(d["slope_var"], 0)) / np.abs(np.where(good, cr, -1.0)), np.nan)
    return qh, err


def one_step_from_neighbours(q, y, s, res, rows, scan_shape, k, fit_args, half_widths, degree, operator, corr,
                             recentre, beta, fit_map=None) -> int:
    """``peaks.one_step_pool`` (the peaks stage, under strong speckle): replace ``res``'s q_peak / q_err (in place) at the ``rows`` with a fitted peak by one
    Newton step from the maximum of the mean profile of the other ``rows`` of the k × k scan neighbourhood
    (:func:`one_step_peaks`; the reference fitted as the positions are, its curvature by
    :func:`local_derivatives`). Kept only where the step stays within a quarter of the fit
    range (the linearisation's reach); elsewhere the position's own maximum stays. Returns how many were replaced."""

    ry, rx = scan_shape
    nq = q.size
    valid = np.isfinite(y) & rows[:, None]
    ref = neighbour_residual_mean(np.where(valid, y, 0.0).reshape(ry, rx, nq), valid.reshape(ry, rx, nq),
                                  k).reshape(-1, nq)
    n_nb = max(k * k - 1, 1)
    sel = np.flatnonzero(rows & (res["status"] == status_code("ok")))
    if not sel.size:
        return 0
    s_ref = s[sel] / np.sqrt(n_nb)  # (weights of the reference's fit: its noise is ~1/(k² − 1) of one profile's)
    r = fit_peaks(q, ref[sel], s_ref, *fit_args, width_error=False, map_blocks=fit_map, recentre=recentre,
                  feedback=beta)
    q_ref = np.where(r["status"] == status_code("ok"), r["q_peak"], np.nan)
    hw = 0.5 * (half_widths[0] + half_widths[1])
    bw = float(q[1] - q[0])
    c = np.where(np.isfinite(q_ref), np.clip(np.rint((np.nan_to_num(q_ref) - q[0]) / bw), 0, nq - 1), -1).astype(int)
    curv = local_derivatives(q, ref[sel], s_ref, c, q_ref, hw, degree)["curvature"]
    corr_sel = None if corr is None else (np.asarray(corr[0]).reshape(-1, nq)[sel], *corr[1:])
    qh, err = one_step_peaks(q, y[sel], s[sel], q_ref, curv, hw, degree, operator, corr_sel)
    keep = np.isfinite(qh) & np.isfinite(err) & (np.abs(qh - q_ref) <= 0.25 * hw)
    res["q_peak"][sel[keep]] = qh[keep]
    res["q_err"][sel[keep]] = err[keep]
    return int(keep.sum())
