"""Detector geometry of ring patterns: the elliptical-distortion convention, the pattern's centre of symmetry, and
the fit of ellipses (shared centre, ratio, angle; optional centre drift with radius) to points on rings. Pure
functions, arrays in, arrays out.

Conventions (the same as :mod:`sendmap.science.polar` and :mod:`sendmap.synth.patterns`):

* pixel (iy, ix) has its centre at (y=iy, x=ix); centres are (y, x) in those coordinates (pixels);
* ellipse: ``ratio`` ≥ 1 (major/minor), major axis at ``angle_deg`` θ from +x towards +y, folded into
  [0, 180); a = sqrt(ratio), b = 1/sqrt(ratio) (area preserving).  A detector offset (dy, dx) from the
  centre has the undistorted radius ρ = sqrt((u/a)² + (v/b)²) px with u = dx·cosθ + dy·sinθ,
  v = −dx·sinθ + dy·cosθ, and Q = ρ · q_pixel_size (1/Å, Q = 1/d, no 2π);
* ρ² = dᵀ M d with d = (dx, dy) and M = exp(S), S = −ln(ratio)·[[cos 2θ, sin 2θ], [sin 2θ, −cos 2θ]]:
  the fit uses (p, q) = −ln(ratio)·(cos 2θ, sin 2θ), which is smooth through ratio = 1 (no angle
  degeneracy), det M = 1.

No code is taken from pyFAI, py4DSTEM or pyxem.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, optimize

__all__ = [
    "ellipse_from_params",
    "ellipse_matrix",
    "ellipse_params",
    "fit_ring_geometry",
    "symmetry_centre",
    "undistorted_radius",
]


def ellipse_params(ratio: float, angle_deg: float) -> tuple[float, float]:
    """(p, q) = −ln(ratio)·(cos 2θ, sin 2θ): the smooth parameters of the distortion used in the fits.

    >>> p, q = ellipse_params(1.02, 30.0)
    >>> [round(v, 6) for v in (p, q)]
    [-0.009901, -0.01715]
    """
    lam = math.log(ratio)
    th2 = 2.0 * math.radians(angle_deg)
    return -lam * math.cos(th2), -lam * math.sin(th2)


def ellipse_from_params(p: float, q: float) -> tuple[float, float]:
    """Inverse of :func:`ellipse_params`: (ratio ≥ 1, angle_deg in [0, 180)).

    >>> r, a = ellipse_from_params(*ellipse_params(1.02, 30.0))
    >>> round(r, 6), round(a, 6)
    (1.02, 30.0)
    """
    lam = math.hypot(p, q)
    angle = math.degrees(0.5 * math.atan2(-q, -p)) % 180.0 if lam > 0 else 0.0
    return math.exp(lam), angle


def ellipse_matrix(p: float, q: float) -> np.ndarray:
    """M = exp(S) (2 × 2, acting on (dx, dy)) such that ρ² = dᵀ M d; det M = 1."""
    lam = math.hypot(p, q)
    ch = math.cosh(lam)
    sh = math.sinh(lam) / lam if lam > 1e-12 else 1.0
    return np.array([[ch + sh * p, sh * q], [sh * q, ch - sh * p]])


def undistorted_radius(dy, dx, ratio: float = 1.0, angle_deg: float = 0.0) -> np.ndarray:
    """Undistorted radius ρ (px) of detector offsets (dy, dx) (px) from the centre (module convention).

    >>> float(undistorted_radius(0.0, 10.0 * math.sqrt(1.21), 1.21, 0.0))  # on the major axis: a = 1.1
    10.0
    """
    dy = np.asarray(dy, dtype=float)
    dx = np.asarray(dx, dtype=float)
    m = ellipse_matrix(*ellipse_params(ratio, angle_deg))
    return np.sqrt(m[0, 0] * dx * dx + 2 * m[0, 1] * dx * dy + m[1, 1] * dy * dy)


def symmetry_centre(image: np.ndarray, mask: np.ndarray | None = None, highpass_sigma_px: float = 4.0,
                    smooth_sigma_px: float = 1.0) -> np.ndarray:
    """Centre (y, x) in pixels from the point symmetry of the pattern (powder rings are centrosymmetric).

    The band-passed pattern (a Gaussian-smoothed copy of σ = ``smooth_sigma_px`` minus one of σ =
    ``highpass_sigma_px``, masked pixels excluded by normalised convolution, then clipped at the 99th
    percentile of its magnitude so that neither a direct beam nor a hot pixel dominates) is convolved with
    itself: I(c + d) = I(c − d) makes the convolution peak at 2c.  The convolution is normalised by the
    overlap of the masks (so the detector edge does not pull the peak towards the middle), searched where
    the overlap is at least 30 % of its maximum, and the peak refined to sub-pixel by a parabola on each
    axis.  Accurate to a fraction of a pixel; :func:`fit_ring_geometry` does the rest.

    >>> yy, xx = np.mgrid[:96, :96]
    >>> img = np.exp(-0.5 * ((np.hypot(yy - 45.3, xx - 50.8) - 20) / 1.5) ** 2)
    >>> np.round(symmetry_centre(img), 1)
    array([45.3, 50.8])
    """
    img = np.asarray(image, dtype=np.float64)
    good = np.isfinite(img) if mask is None else (np.asarray(mask, bool) & np.isfinite(img))
    w = good.astype(np.float64)
    x = np.where(good, img, 0.0)

    def smooth(sig):
        return ndimage.gaussian_filter(x, sig) / np.maximum(ndimage.gaussian_filter(w, sig), 1e-12)

    hp = np.where(good, smooth(smooth_sigma_px) - smooth(highpass_sigma_px), 0.0)
    vals = np.abs(hp[good])
    level = float(np.percentile(vals, 99.0)) if vals.size else 0.0
    if level > 0:
        hp = np.clip(hp, -level, level)
    ny, nx = img.shape
    shape = (2 * ny, 2 * nx)
    conv = np.fft.irfft2(np.fft.rfft2(hp, s=shape) ** 2, s=shape)
    overlap = np.fft.irfft2(np.fft.rfft2(w, s=shape) ** 2, s=shape)
    big = overlap >= 0.3 * overlap.max()
    norm = np.where(big, conv / np.maximum(overlap, 1e-12), -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(norm)), norm.shape)

    def vertex(f0, f1, f2):
        d = f0 - 2 * f1 + f2
        return 0.5 * (f0 - f2) / d if np.isfinite(d) and d < 0 else 0.0

    dy = vertex(norm[iy - 1, ix], norm[iy, ix], norm[(iy + 1) % shape[0], ix])
    dx = vertex(norm[iy, ix - 1], norm[iy, ix], norm[iy, (ix + 1) % shape[1]])
    return np.array([(iy + dy) / 2.0, (ix + dx) / 2.0])


def fit_ring_geometry(points_yx: np.ndarray, group: np.ndarray, sigma_px: np.ndarray, centre0_yx,
                      ratio0: float = 1.0, angle0_deg: float = 0.0, n_sigma: float = 4.0,
                      max_iter: int = 10, fit_ellipse: bool = True, fit_drift: bool = False,
                      min_points: int = 6) -> dict:
    """Ellipses sharing centre, ratio and angle, one mean undistorted radius per ring group, fitted to points.

    Minimises Σ ((ρ_i − R_g(i)) / σ_i)² over (cy, cx, p, q, R_1..R_G), ρ_i the undistorted radius of
    point i about its ring's centre (module convention; (p, q) as in :func:`ellipse_params`, kept at
    ``ratio0``/``angle0_deg`` when ``fit_ellipse`` is False).  With ``fit_drift`` the centre of ring g
    is c + k·R_g² with k = (k_y, k_x) fitted too (px⁻¹): the ring centres drift with radius as on a tilted
    detector (a tilt τ gives |k| ≈ tan τ / L, L the camera length in px) or with a projector distortion of
    that symmetry; c is then the centre at zero radius, where the direct beam is.  Each group's σ_i are
    rescaled by the robust scatter (1.4826·MAD) of its normalised residuals, so that a ring whose sector
    radii scatter more than their statistical errors (texture, spotty rings) weighs less; points beyond
    ``n_sigma`` such standard deviations are rejected and the fit repeated; a group left with fewer than
    ``min_points`` points is dropped.

    points_yx: (N, 2) detector points (px); group: (N,) ring-group index 0..G−1; sigma_px: (N,) 1-σ of
    each point's radius.  Returns ``centre`` [y, x], ``ratio``, ``angle_deg``, ``drift_yx`` [k_y, k_x]
    (zeros without ``fit_drift`` or with a single ring group), ``radius`` (G,) (NaN for a dropped group)
    and their 1-σ errors (``centre_err``, ``ratio_err``, ``angle_err_deg``, ``drift_err``, ``radius_err``; scaled by
    sqrt(χ²_red)), ``used`` (N,) bool and ``rms_px`` (RMS radial residual of the used points).

    >>> phi = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    >>> pts = []
    >>> for rho in (40.0, 70.0):
    ...     u, v = math.sqrt(1.03) * rho * np.cos(phi), rho * np.sin(phi) / math.sqrt(1.03)
    ...     th = math.radians(25.0)
    ...     y, x = 60.2 + u * math.sin(th) + v * math.cos(th), 58.7 + u * math.cos(th) - v * math.sin(th)
    ...     pts.append(np.stack([y, x], 1))
    >>> g = fit_ring_geometry(np.concatenate(pts), np.repeat([0, 1], 36), np.full(72, 0.1), (60, 60))
    >>> np.round(g["centre"], 4), round(g["ratio"], 5), round(g["angle_deg"], 3), np.round(g["radius"], 4)
    (array([60.2, 58.7]), 1.03, 25.0, array([40., 70.]))
    """
    pts = np.asarray(points_yx, float)
    group = np.asarray(group, int)
    sig = np.asarray(sigma_px, float)
    n_g = int(group.max()) + 1 if len(group) else 0
    p0, q0 = ellipse_params(max(ratio0, 1.0), angle0_deg)
    n_e = 2 if fit_ellipse else 0
    used = np.isfinite(pts).all(axis=1) & np.isfinite(sig) & (sig > 0)
    fit_drift = fit_drift and sum(np.sum(used & (group == g)) >= min_points for g in range(n_g)) >= 2
    n_d = 2 if fit_drift else 0  # one ring cannot tell a drift from the centre
    n_h = 2 + n_e + n_d  # global parameters: cy, cx, [p, q], [k_y, k_x]

    def split(th):
        p, q = (th[2], th[3]) if fit_ellipse else (p0, q0)
        ky, kx = (th[2 + n_e], th[3 + n_e]) if fit_drift else (0.0, 0.0)
        return th[0], th[1], p, q, ky, kx, th[n_h:]

    def rho(th, pp, rad_of_point):
        cy, cx, p, q, ky, kx, _ = split(th)
        mm = ellipse_matrix(p, q)
        r2 = rad_of_point**2
        dx = pp[:, 1] - (cx + kx * r2)
        dy = pp[:, 0] - (cy + ky * r2)
        return np.sqrt(mm[0, 0] * dx * dx + 2 * mm[0, 1] * dx * dy + mm[1, 1] * dy * dy)

    glob = np.array([centre0_yx[0], centre0_yx[1], p0, q0][:2 + n_e] + [0.0] * n_d, float)
    th_start = np.concatenate([glob, np.zeros(n_g)])
    r_all = rho(th_start, pts, np.zeros(len(pts)))
    radius = np.array([np.median(r_all[used & (group == g)]) if np.any(used & (group == g)) else np.nan
                       for g in range(n_g)])
    sol, present = None, None
    fac = np.ones(max(n_g, 1))  # per-group rescaling of σ_i
    for _ in range(max_iter):
        present = np.array([np.sum(used & (group == g)) >= min_points for g in range(n_g)], bool)
        used &= present[group]
        if used.sum() < n_h + present.sum() + 2:
            raise ValueError(f"too few points ({int(used.sum())}) for the ring-geometry fit")
        slot = np.cumsum(present) - 1  # group -> parameter slot
        pp, gg, ss = pts[used], slot[group[used]], (sig * fac[group])[used]
        th0 = np.concatenate([glob, np.where(np.isfinite(radius[present]), radius[present], 1.0)])

        def resid(th):
            rad = th[n_h:][gg]
            return (rho(th, pp, rad) - rad) / ss

        scale = np.concatenate([[0.1, 0.1], [1e-3] * n_e, [1e-6] * n_d, [0.1] * int(present.sum())])
        sol = optimize.least_squares(resid, th0, method="lm", x_scale=scale)
        glob = sol.x[:n_h]
        radius = np.full(n_g, np.nan)
        radius[present] = sol.x[n_h:]
        rad_pt = np.where(present[group], radius[group], np.nan)
        raw = (rho(sol.x, pts, rad_pt) - rad_pt) / sig
        new_fac = fac.copy()
        for g in np.flatnonzero(present):
            z = raw[used & (group == g)]
            new_fac[g] = max(1.4826 * np.median(np.abs(z - np.median(z))), 1e-6)
        new_used = np.isfinite(raw) & (np.abs(raw) <= n_sigma * new_fac[group])
        stable = np.array_equal(new_used, used) and np.allclose(new_fac, fac, rtol=0.02)
        fac = new_fac
        used = new_used & present[group]
        if stable:
            break
    cy, cx, p, q, ky, kx, _ = split(sol.x)
    rad_pt = radius[group[used]]
    res = (rho(sol.x, pts[used], rad_pt) - rad_pt) / (sig * fac[group])[used]
    dof = max(int(used.sum()) - len(sol.x), 1)
    chi2_red = float(res @ res / dof)
    cov = np.linalg.pinv(sol.jac.T @ sol.jac) * chi2_red
    ratio, angle = ellipse_from_params(p, q)
    lam = math.log(ratio)
    if fit_ellipse and lam > 1e-12:  # ratio = exp(hypot(p, q)); θ = ½ atan2(−q, −p)
        g_lam = np.array([p / lam, q / lam])
        g_th = 0.5 * np.array([q, -p]) / lam**2
        cpq = cov[2:4, 2:4]
        ratio_err = ratio * math.sqrt(max(g_lam @ cpq @ g_lam, 0.0))
        angle_err = math.degrees(math.sqrt(max(g_th @ cpq @ g_th, 0.0)))
    elif fit_ellipse:
        ratio_err, angle_err = float(math.sqrt(max(cov[2, 2] + cov[3, 3], 0.0))), float("nan")
    else:
        ratio_err, angle_err = 0.0, 0.0
    var = np.maximum(np.diag(cov), 0.0)
    radius_err = np.full(n_g, np.nan)
    radius_err[present] = np.sqrt(var[n_h:])
    drift_err = np.sqrt(var[2 + n_e:n_h]) if fit_drift else np.zeros(2)
    rr = res * (sig * fac[group])[used]
    return {"centre": np.array([cy, cx]), "centre_err": np.sqrt(var[:2]),
            "ratio": ratio, "ratio_err": ratio_err, "angle_deg": angle, "angle_err_deg": angle_err,
            "drift_yx": np.array([ky, kx]), "drift_err": drift_err, "drift_fitted": bool(fit_drift),
            "radius": radius, "radius_err": radius_err, "used": used,
            "rms_px": float(np.sqrt(np.mean(rr**2))) if len(rr) else float("nan"), "chi2_red": chi2_red}
