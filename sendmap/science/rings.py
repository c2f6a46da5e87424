"""Detector calibration from the rings of a polycrystalline standard (e.g. gold): Q per pixel, pattern
centre and elliptical distortion, with each ring's residual.  Pure functions, arrays in, arrays out.

The pieces: :mod:`sendmap.science.ring_geometry` (ellipse convention, symmetry centre, ellipse fit to points)
and :mod:`sendmap.science.ring_profile` (profiles, ring detection and indexing, Gaussian ring fits); this module
has the calibration that runs them.

Conventions (those of :mod:`sendmap.science.ring_geometry`):

* pixel (iy, ix) has its centre at (y=iy, x=ix); centres are (y, x) in those coordinates (pixels);
* ellipse: ``ratio`` ≥ 1 (major/minor), major axis at ``angle_deg`` θ from +x towards +y, folded into
  [0, 180); a = sqrt(ratio), b = 1/sqrt(ratio) (area preserving).  A detector offset (dy, dx) from the
  centre has the undistorted radius ρ = sqrt((u/a)² + (v/b)²) px with u = dx·cosθ + dy·sinθ,
  v = −dx·sinθ + dy·cosθ, and Q = ρ · q_pixel_size (1/Å, Q = 1/d, no 2π);
* ρ² = dᵀ M d with d = (dx, dy) and M = exp(S), S = −ln(ratio)·[[cos 2θ, sin 2θ], [sin 2θ, −cos 2θ]]:
  the fit uses (p, q) = −ln(ratio)·(cos 2θ, sin 2θ), which is smooth through ratio = 1 (no angle
  degeneracy), det M = 1;
* a ring's *residual* is (q_pixel_size · ρ_ring − Q_hkl) / Q_hkl (relative, dimensionless).

Method (:func:`calibrate_rings`):

1. rough centre from the point symmetry of the pattern (:func:`symmetry_centre`);
2. azimuthal profile; ring-like features found on the curvature of the log-profile (peaks and shoulders,
   :func:`find_profile_peaks`) and indexed by their radius ratios, which do not depend on Q per pixel
   (:func:`index_rings`);
3. every reflection of the standard in reach is fitted as a Gaussian ring on a background polynomial in
   1/r (:func:`fit_ring_group`); rings closer than ``BLEND_SIGMAS`` widths form a *blend* with radii tied
   by the ratio of their Q.  A ring is *used* (measures a radius) when it is found (S/N ≥ 5), forms a
   peak of its own (not a shoulder of a stronger neighbour), has the common width, and, in a blend,
   dominates it; the others are reported with their status;
4. in each of ``n_sectors`` azimuthal sectors the same model gives the radius of each used ring; the
   sector radii, turned into detector points, are fitted by ellipses sharing centre, ratio and angle,
   one mean radius per ring and, optionally, ring centres drifting as c + k·r² (:func:`fit_ring_geometry`),
   outlier sectors rejected; steps 3-4 are repeated around the new geometry until it settles;
5. the final azimuthal profile in undistorted radius gives each ring's radius; Q per pixel is the
   weighted least-squares scale of Q_hkl = q_pixel_size · ρ_hkl over the used rings (a ring more than
   3 σ off is rejected as an outlier), and the residuals follow.

No code is taken from pyFAI, py4DSTEM or pyxem.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from .ring_geometry import ellipse_matrix, ellipse_params, fit_ring_geometry, symmetry_centre
from .ring_profile import find_profile_peaks, fit_ring_group, index_rings, radial_profiles, sector_centres_rad

__all__ = [
    "calibrate_rings",
]


#: Rings whose expected radii are closer than this many Gaussian σ are fitted with tied radii.
BLEND_SIGMAS = 2.0
#: Rings closer than this many σ are fitted together, in one window.
GROUP_SIGMAS = 5.0
#: A group's window reaches this many σ beyond its first and last ring.
WINDOW_SIGMAS = 3.0
#: A blend measures a radius (is used) only when one ring carries this share of its expected height.
BLEND_DOMINANCE = 0.7
#: A used ring enters the centre/ellipse fit when its S/N per azimuthal sector (1-D S/N / sqrt(n_sectors)) ≥ this.
GEOMETRY_SECTOR_SNR = 4.0
#: Rings expected lower than this fraction of the highest ring in reach are not fitted ...
MIN_RELATIVE_HEIGHT = 0.01
#: ... and those lower than this are in the model (their intensity is there) but measure no radius.
USE_RELATIVE_HEIGHT = 0.03
#: A ring is used only when its fitted width σ is within this range × the width of the clearest rings.
WIDTH_RANGE = (0.6, 1.8)


def _layout(radii: np.ndarray, sigma: float, max_blends_per_group: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Tie subsets (rings closer than BLEND_SIGMAS·σ: one radial scale) and fit groups (tie subsets closer
    than GROUP_SIGMAS·σ: one window, at most ``max_blends_per_group`` of them: at high Q the rings of a
    lattice are dense, and the next group's rings enter a window as nuisance rings), as integer labels
    increasing with radius."""
    order = np.argsort(radii)
    tie = np.empty(len(radii), int)
    grp = np.empty(len(radii), int)
    t = g = -1
    last = -np.inf
    n_in_group = 0
    for i in order:
        new_tie = radii[i] - last >= BLEND_SIGMAS * sigma
        if new_tie:
            t += 1
        if radii[i] - last >= GROUP_SIGMAS * sigma or (new_tie and n_in_group >= max_blends_per_group):
            g += 1
            n_in_group = 0
        n_in_group += int(new_tie)
        tie[i], grp[i] = t, g
        last = radii[i]
    return tie, grp


def _profile_weight(mean: np.ndarray, npix: np.ndarray) -> np.ndarray:
    """1/variance up to a constant for a Poisson-like profile: pixels per bin / local mean level (the mean
    smoothed over ~9 bins, so that a bin that happens to be empty in a low-dose profile is not trusted
    infinitely)."""
    fin = np.isfinite(mean)
    pos = fin & (mean > 0)
    level = float(np.median(mean[pos])) if pos.any() else 1.0
    filled = np.where(fin, mean, level)
    local = ndimage.uniform_filter1d(filled, 9, mode="nearest")
    return npix / np.maximum(local, 0.05 * level)


def _fit_groups(r, mean, npix, radii, tie, grp, tie_weights, sigma, max_shift_px, sigma_starts=(1.0, 0.6, 1.6),
                groups=None) -> dict[str, np.ndarray]:
    """Fit every group of rings of one profile (:func:`fit_ring_group`) with non-negative amplitudes.

    A blend fitted with a negative amplitude is removed and its group refitted (an active-set solution of
    the constraint A ≥ 0).  Returns per-ring arrays: ``radius``, ``radius_err`` (px), ``amplitude``,
    ``amplitude_err``, ``sigma`` (px), ``scale``, ``scale_err`` (of the ring's blend), ``ok`` (fitted,
    amplitude > 0) and ``resolved`` (the sum of the group's fitted rings has a local maximum at the ring's
    blend: a peak, not a shoulder of a stronger neighbour).  ``groups``: fit only these groups.
    """
    m = len(radii)
    out = {k: np.full(m, np.nan) for k in ("radius", "radius_err", "amplitude", "amplitude_err", "sigma",
                                            "scale", "scale_err")}
    out["ok"] = np.zeros(m, bool)
    out["resolved"] = np.zeros(m, bool)
    weight = _profile_weight(mean, npix)
    have = np.isfinite(mean) & (npix > 0)
    for g in np.unique(grp) if groups is None else groups:
        sel = np.flatnonzero(grp == g)
        lo = radii[sel].min() - WINDOW_SIGMAS * sigma
        hi = radii[sel].max() + WINDOW_SIGMAS * sigma
        span = (r >= lo) & (r <= hi)
        win = span & have
        if win.sum() < max(12, 0.8 * span.sum()):
            continue
        others = np.flatnonzero(grp != g)
        nuis = others[(radii[others] > lo - 2 * sigma) & (radii[others] < hi + 2 * sigma)]
        active = sel.copy()
        while True:
            f = fit_ring_group(r[win], mean[win], weight[win], radii[active], tie[active], sigma,
                               max_shift_px=max_shift_px, fixed_radii=radii[nuis], tie_weights=tie_weights[active],
                               free_amplitude=_dominated(tie[active], tie_weights[active]),
                               sigma_starts=sigma_starts)
            neg = np.flatnonzero(np.isfinite(f.amplitude) & (f.amplitude <= 0))
            if len(neg) == 0 or len(active) == 1:
                break
            worst = neg[np.argmin(f.amplitude[neg] / np.maximum(f.amplitude_err[neg], 1e-12 * np.abs(f.amplitude[neg])
                                                                + 1e-300))]
            active = np.delete(active, worst)
        _, tie_idx = np.unique(tie[active], return_inverse=True)
        out["radius"][active] = f.radius
        out["radius_err"][active] = f.radius_err
        out["amplitude"][active] = f.amplitude
        out["amplitude_err"][active] = f.amplitude_err
        out["sigma"][active] = f.sigma
        out["scale"][active] = f.scale[tie_idx]
        out["scale_err"][active] = f.scale_err[tie_idx]
        out["ok"][active] = f.ok & (f.amplitude > 0)
        if f.ok:
            grid = np.linspace(lo, hi, int((hi - lo) / 0.02) + 1)
            rings = np.exp(-0.5 * ((grid[:, None] - f.radius[None, :]) / f.sigma) ** 2) @ f.amplitude
            imax, _ = signal.find_peaks(rings)
            for t in np.unique(tie[active]):
                mem = tie[active] == t
                a, b = f.radius[mem].min() - 0.5 * f.sigma, f.radius[mem].max() + 0.5 * f.sigma
                out["resolved"][active[mem]] = np.any((grid[imax] >= a) & (grid[imax] <= b))
    return out


def _dominated(tie: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """True for the rings of a blend dominated by one ring (≥ BLEND_DOMINANCE of its expected height) and
    for single rings: their amplitudes are fitted freely; comparable blends share one (fixed split)."""
    out = np.ones(len(tie), bool)
    for t in np.unique(tie):
        mem = tie == t
        if mem.sum() > 1 and heights[mem].max() < BLEND_DOMINANCE * heights[mem].sum():
            out[mem] = False
    return out


def _initial_sigma(r, prof, npix, radii, default: float = 2.0) -> float:
    """Width σ (px) of the rings: median of single-ring fits at the (up to 3) innermost indexed features."""
    sig = []
    w = _profile_weight(prof, npix)
    for rad in np.sort(np.asarray(radii, float))[:3]:
        half = max(6.0, 0.12 * rad)
        win = (r >= rad - half) & (r <= rad + half) & np.isfinite(prof) & (npix > 0)
        if win.sum() < 16:
            continue
        f = fit_ring_group(r[win], prof[win], w[win], np.array([rad]), np.array([0]), default,
                           max_shift_px=0.5 * half, sigma_starts=(0.3, 0.6, 1.0, 2.0))
        if f.ok and f.amplitude[0] > 0:
            sig.append(f.sigma)
    return float(np.median(sig)) if sig else default


def _coverage(shape, mask, centre, ratio, angle_deg, radius, n=180) -> float:
    """Fraction of a ring of undistorted radius ``radius`` (px) that lies on used detector pixels."""
    phi = np.linspace(-np.pi, np.pi, n, endpoint=False)
    mm = ellipse_matrix(*ellipse_params(ratio, angle_deg))
    d = np.stack([np.cos(phi), np.sin(phi)])  # (x, y)
    t = radius / np.sqrt(np.einsum("in,ij,jn->n", d, mm, d))
    iy = np.round(centre[0] + t * d[1]).astype(int)
    ix = np.round(centre[1] + t * d[0]).astype(int)
    inside = (iy >= 0) & (iy < shape[0]) & (ix >= 0) & (ix < shape[1])
    on = np.zeros(n, bool)
    on[inside] = mask[iy[inside], ix[inside]]
    return float(on.mean())


def _scale_fit(radius, q, radius_err, tie, z_max: float = 3.0, floor: float = 2e-3
               ) -> tuple[float, float, np.ndarray]:
    """Q per pixel from ring radii: q_px minimising Σ w (q_px·ρ/Q − 1)², one vote per blend,
    w = 1/(σ_rel² + floor²); the blend with the largest |z| = |q_px·ρ/Q − 1|·sqrt(w) beyond ``z_max`` is
    rejected and the fit repeated (while more than two blends remain).  Returns (q_px, 1-σ, kept mask)."""
    radius, q, radius_err, tie = (np.asarray(a) for a in (radius, q, radius_err, tie))
    x = radius / q
    rel_err = np.where(np.isfinite(radius_err), radius_err / radius, np.inf)
    w0 = 1.0 / (rel_err**2 + floor**2)
    kept = np.isfinite(x)
    while True:
        w = np.where(kept, w0, 0.0)
        for t in np.unique(tie[kept]):
            w[kept & (tie == t)] /= np.sum(kept & (tie == t))
        qpx = float(np.sum(w * x) / np.sum(w * x * x))
        z = np.abs(qpx * x - 1) * np.sqrt(w0)
        n_votes = len(np.unique(tie[kept]))
        worst = int(np.argmax(np.where(kept, z, -1.0)))
        if n_votes <= 2 or z[worst] <= z_max:
            break
        kept &= tie != tie[worst]
    chi2_red = float(np.sum(w * (qpx * x - 1) ** 2) / (n_votes - 1)) if n_votes > 1 else 1.0
    return qpx, float(math.sqrt(max(chi2_red, 1.0) / np.sum(w * x * x))), kept


@dataclass
class _ProfileRings:
    sel: np.ndarray  # indices (into the used reflections) of the rings in reach
    fit: dict
    tie: np.ndarray
    grp: np.ndarray
    found: np.ndarray  # fitted with S/N ≥ min_snr (or blended with such a ring)
    used: np.ndarray  # found, a peak (not a shoulder), not a blend of comparable rings, not an outlier
    snr: np.ndarray
    status: np.ndarray  # per ring: "used", "shoulder", "blend", "outlier" or "not found"


def _apply_scale_fit(pr: _ProfileRings, q_s: np.ndarray) -> tuple[float, float]:
    """Q per pixel from the used rings of a profile fit; outliers are marked in ``pr`` (used → False)."""
    use = np.flatnonzero(pr.used)
    fit = pr.fit
    qpx, err, kept = _scale_fit(fit["radius"][use], q_s[pr.sel][use], fit["radius_err"][use], pr.tie[use])
    pr.used[use[~kept]] = False
    pr.status[use[~kept]] = "outlier"
    return qpx, err


def _profile_rings(r, prof, npix, radii, heights, sigma, min_snr) -> _ProfileRings:
    """Fit the given rings (start radii, px; relative heights) in a 1-D profile and classify them; rings
    whose fitted width is off the expected σ by more than WIDTH_RANGE are not used (a noise spike or a
    ring of something else)."""
    sel = np.arange(len(radii))
    tie, grp = _layout(radii, sigma)
    fit = _fit_groups(r, prof, npix, radii, tie, grp, heights, sigma,
                      max_shift_px=max(3.0, 1.5 * sigma, 0.03 * radii.max(initial=0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = fit["amplitude"] / fit["amplitude_err"]
    found = fit["ok"] & (snr >= min_snr)
    for t in np.unique(tie[found]):
        found |= (tie == t) & fit["ok"]
    dominated = _dominated(tie, heights)  # a blend of comparable rings measures no radius
    width_ok = (fit["sigma"] >= WIDTH_RANGE[0] * sigma) & (fit["sigma"] <= WIDTH_RANGE[1] * sigma)
    weak = heights < USE_RELATIVE_HEIGHT * heights.max(initial=0.0)
    used = found & fit["resolved"] & dominated & width_ok & ~weak
    status = np.select([~found, ~dominated, ~fit["resolved"], ~width_ok, weak],
                       ["not found", "blend", "shoulder", "width", "weak"], "used").astype(object)
    for t in np.unique(tie[used]):  # a dominated blend votes once, through its strongest ring
        mem = np.flatnonzero(tie == t)
        if len(mem) > 1:
            minor = mem[mem != mem[np.argmax(heights[mem])]]
            used[minor] = False
            status[minor] = "tied"
    return _ProfileRings(sel, fit, tie, grp, found, used, snr, status)


def calibrate_rings(image: np.ndarray, q_ref: np.ndarray, intensity: np.ndarray, mask: np.ndarray | None = None,
                    q_guess: float | None = None, n_sectors: int = 36, min_intensity: float = 5.0,
                    min_snr: float = 5.0, min_coverage: float = 0.5, max_iter: int = 6,
                    bin_px: float = 0.25, fit_ellipse: bool = True, fit_drift: bool = True) -> dict:
    """Q per pixel, centre and ellipse from the rings of a polycrystalline standard (see the module docstring).

    image: (Qy, Qx) pattern (a single one or a dataset's mean); q_ref, intensity: (m,) Q = 1/d (1/Å) and
    kinematic intensity (0-100) of the standard's reflections (those below ``min_intensity`` are not
    used); mask: (Qy, Qx) bool, True where a pixel is used (default: every finite pixel); q_guess:
    optional first Q per pixel (1/Å/px); rings are fitted where at least ``min_coverage`` of their
    circumference is on used pixels.  ``fit_drift``: ring centres may drift with radius, c + k·R²
    (:func:`fit_ring_geometry`); the reported centre is then the one at zero radius.

    Rings are *found* when fitted with amplitude ≥ ``min_snr`` × its error (or blended with such a
    ring) and *used* (for Q per pixel and the geometry) when, besides, they form a peak of their own (not a
    shoulder of a stronger neighbour), have the common width (``WIDTH_RANGE``), are expected at least
    ``USE_RELATIVE_HEIGHT`` of the highest ring and, if blended, carry ≥ ``BLEND_DOMINANCE`` of the
    blend's expected height (the blend's other rings are then *tied* to it); a used ring more than 3 σ
    off the Q-per-pixel fit is an *outlier*.  ``ring_status`` says which: "used", "tied", "shoulder",
    "blend", "width", "weak", "outlier".

    Returns a dict of numbers and arrays: ``q_pixel_size`` (1/Å/px) and ``q_pixel_size_err``, ``centre``
    (y, x) px and ``centre_err``, ``ratio``, ``ratio_err``, ``angle_deg``, ``angle_err_deg``, ``drift_yx``
    (px⁻¹), ``drift_err`` and ``drift_fitted``; per found ring: ``ring_index`` (into q_ref), ``ring_radius_px`` (mean
    undistorted radius), ``ring_radius_err_px``, ``ring_residual`` (relative), ``ring_used``, ``ring_status``,
    ``ring_n_sectors`` (sectors used in the last geometry fit), ``ring_tie`` (equal values: one blend),
    ``ring_snr``, ``ring_sigma_px``; plus ``rms_sector_px`` (RMS radial residual of the used sector radii),
    ``iterations``, ``history`` and the sector points (``sector_points_yx``, ``sector_ring_index``,
    ``sector_used``).  Raises ValueError, with a message, when no rings of the standard are found.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D pattern, got shape {img.shape}")
    good = np.isfinite(img) if mask is None else (np.asarray(mask, bool) & np.isfinite(img))
    if good.sum() < 100:
        raise ValueError("fewer than 100 usable pixels")
    q_ref = np.asarray(q_ref, float)
    intensity = np.asarray(intensity, float)
    strong = np.flatnonzero(intensity >= min_intensity)
    q_s, i_s = q_ref[strong], intensity[strong]
    heights = i_s / q_s**2  # azimuthal-average ring height ∝ intensity · d² (for equal widths)

    # 1-2. rough centre, ring features, indexing ----------------------------------------------------
    centre = symmetry_centre(img, good)
    ratio, angle = 1.0, 0.0
    r, prof, npix = radial_profiles(img, good, centre, bin_px=1.0, supersample=1)  # independent bins
    peaks = find_profile_peaks(r, prof[:, 0], min_snr=min_snr)
    idx = index_rings(peaks["radius"], q_s, i_s, q_guess=q_guess,
                      weights=np.clip(peaks["snr"] / (4 * min_snr), 0.25, 1.0))
    if idx["q_pixel_size"] is None:
        if q_guess is None:
            raise ValueError(f"no rings of the standard found: {len(peaks['radius'])} ring-like feature(s) in the "
                             "azimuthal profile, and fewer than two of them match the ratios of the standard's "
                             "ring radii")
        qpx = float(q_guess)
    else:
        qpx = float(idx["q_pixel_size"])
    r_reach = float(r[np.isfinite(prof[:, 0])].max())
    r, prof, npix = radial_profiles(img, good, centre, bin_px=bin_px)
    sigma = _initial_sigma(r, prof[:, 0], npix[:, 0], peaks["radius"][[i for i, _ in idx["pairs"]]])

    def rings_in_reach():
        rad = q_s / qpx
        sel = np.flatnonzero([3 * sigma < x < r_reach - 2 and
                              _coverage(img.shape, good, centre, ratio, angle, x) >= min_coverage for x in rad])
        return sel[heights[sel] >= MIN_RELATIVE_HEIGHT * heights[sel].max(initial=0.0)]

    def fit_profile():
        sel = rings_in_reach()
        r, prof, npix = radial_profiles(img, good, centre, ratio, angle, bin_px=bin_px)
        pr = _profile_rings(r, prof[:, 0], npix[:, 0], q_s[sel] / qpx, heights[sel], sigma, min_snr)
        pr.sel = sel
        return pr

    # 3-4. iterate: profile fit -> sector radii -> geometry -----------------------------------------
    # If a later iteration fails (too few rings or sector radii at its geometry), the previous geometry stands.
    it, history, states = 0, [], []
    current = None  # the geometry fit that gave the current (centre, ratio, angle), and its sector points

    def n_used_blends(pr):
        return len(np.unique(pr.tie[pr.used]))

    for it in range(1, max_iter + 1):
        pr = fit_profile()
        if n_used_blends(pr) < 2:
            if states:
                break
            raise ValueError(f"no rings of the standard could be fitted: {n_used_blends(pr)} resolved ring(s) found "
                             f"at {qpx:.5g} 1/Å per pixel, at least two are needed")
        if current is not None:
            states.append({"centre": centre, "ratio": ratio, "angle": angle, "qpx": qpx, "sigma": sigma,
                           "current": current})
        fit, use = pr.fit, pr.used
        clear_rings = use & (pr.snr >= 0.5 * pr.snr[use].max())
        sigma = float(np.median(fit["sigma"][clear_rings]))  # the width of the clearest rings
        qpx = _apply_scale_fit(pr, q_s)[0]
        use = pr.used
        # sector radii of the used blends, around the current geometry (every found ring is in the model)
        f_idx = np.flatnonzero(pr.found)
        radii, tie_f, hts = fit["radius"][f_idx], pr.tie[f_idx], heights[pr.sel][f_idx]
        grp_f = _layout(radii, sigma)[1]
        # the geometry uses the blends clear enough in one sector (S/N ≥ GEOMETRY_SECTOR_SNR there), at least one
        clear = use & (pr.snr / math.sqrt(n_sectors) >= GEOMETRY_SECTOR_SNR)
        if not clear.any():
            clear = use & (pr.snr == pr.snr[use].max())
        blends = np.unique(pr.tie[clear])
        groups_used = np.unique(grp_f[np.isin(tie_f, blends)])
        ref_radius = np.array([radii[tie_f == t].mean() for t in blends])
        r, sec, nsec = radial_profiles(img, good, centre, ratio, angle, n_sectors=n_sectors,
                                       bin_px=max(bin_px, min(0.5, sigma / 4)))  # sectors: coarser bins, faster fits
        mm = ellipse_matrix(*ellipse_params(ratio, angle))
        pts, which, sig_pts = [], [], []
        for k, phi in enumerate(sector_centres_rad(n_sectors)):
            f = _fit_groups(r, sec[:, k], nsec[:, k], radii, tie_f, grp_f, hts, sigma,
                            max_shift_px=max(2.0, 1.5 * sigma), sigma_starts=(1.0,), groups=groups_used)
            d = np.array([math.cos(phi), math.sin(phi)])
            stretch = 1.0 / math.sqrt(d @ mm @ d)  # detector px per px of undistorted radius along φ
            for bi, t in enumerate(blends):
                mem = np.flatnonzero((tie_f == t) & f["ok"])
                if len(mem) == 0:
                    continue
                rho = f["scale"][mem[0]] * ref_radius[bi]
                pts.append([centre[0] + rho * stretch * d[1], centre[1] + rho * stretch * d[0]])
                which.append(bi)
                sig_pts.append(max(f["scale_err"][mem[0]] * ref_radius[bi], 0.005))
        if len(pts) < 12:
            if states:
                break
            raise ValueError(f"too few sector measurements of the rings ({len(pts)}) to fit the centre and ellipse; "
                             "is this a polycrystalline ring pattern of the standard?")
        pts, which = np.array(pts), np.array(which)
        try:
            geo = fit_ring_geometry(pts, which, np.array(sig_pts), centre, ratio, angle, fit_ellipse=fit_ellipse,
                                    fit_drift=fit_drift, min_points=max(6, n_sectors // 3))
        except ValueError:
            if states:
                break
            raise
        n_used = np.bincount(which[geo["used"]], minlength=len(blends))
        current = {"geo": geo, "pts": pts, "which": which,
                   "ring_of_blend": np.array([strong[pr.sel][np.flatnonzero(pr.tie == t)[0]] for t in blends]),
                   "n_used_by_ring": {int(strong[pr.sel][j]): int(n_used[np.searchsorted(blends, pr.tie[j])])
                                      for j in range(len(pr.sel)) if pr.tie[j] in blends and pr.found[j]}}
        history.append({"centre": [float(v) for v in geo["centre"]], "ratio": float(geo["ratio"]),
                        "angle_deg": float(geo["angle_deg"]), "q_pixel_size": qpx, "n_points": int(geo["used"].sum()),
                        "rms_px": float(geo["rms_px"])})
        moved = float(np.hypot(*(geo["centre"] - centre)))
        d_ratio = abs(geo["ratio"] - ratio)
        centre, ratio, angle = np.asarray(geo["centre"], float), float(geo["ratio"]), float(geo["angle_deg"])
        # converged when the last step is within the statistical error (re-binning around a new centre
        # re-samples the noise, so the steps do not shrink below that)
        if moved < max(0.002, 1.5 * float(np.max(geo["centre_err"]))) and d_ratio < max(1e-5, 1.5 * geo["ratio_err"]):
            break

    # 5. final profile in undistorted radius: each ring's radius, Q per pixel, residuals ---------
    pr = fit_profile()
    if n_used_blends(pr) < 2 and states:  # the last geometry lost the rings: back to the previous one
        last = states[-1]
        centre, ratio, angle, qpx, sigma = last["centre"], last["ratio"], last["angle"], last["qpx"], last["sigma"]
        current = last["current"]
        pr = fit_profile()
    if n_used_blends(pr) < 2:
        raise ValueError("fewer than two resolved rings of the standard remain after refinement")
    geo, pts, which = current["geo"], current["pts"], current["which"]
    ring_of_blend, n_used_by_ring = current["ring_of_blend"], current["n_used_by_ring"]
    q_fit, q_err = _apply_scale_fit(pr, q_s)
    fit, use, found = pr.fit, pr.used, pr.found
    qh = q_s[pr.sel]
    ring_index = strong[pr.sel][found]
    rad = fit["radius"][found]
    return {
        "q_pixel_size": q_fit, "q_pixel_size_err": q_err,
        "centre": centre, "centre_err": np.asarray(geo["centre_err"], float),
        "ratio": ratio, "ratio_err": float(geo["ratio_err"]),
        "angle_deg": angle, "angle_err_deg": float(geo["angle_err_deg"]),
        "drift_yx": np.asarray(geo["drift_yx"], float), "drift_err": np.asarray(geo["drift_err"], float),
        "drift_fitted": bool(geo["drift_fitted"]), "ring_index": ring_index, "ring_radius_px": rad, "ring_radius_err_px": fit["radius_err"][found],
        "ring_residual": (q_fit * rad - qh[found]) / qh[found], "ring_used": use[found],
        "ring_status": pr.status[found],
        "ring_n_sectors": np.array([n_used_by_ring.get(int(j), 0) for j in ring_index], int),
        "ring_tie": pr.tie[found], "ring_snr": pr.snr[found], "ring_sigma_px": fit["sigma"][found],
        "rms_sector_px": float(geo["rms_px"]), "iterations": it, "n_sectors": int(n_sectors), "history": history,
        "features_px": peaks["radius"], "index_pairs": idx["pairs"],
        "sector_points_yx": pts, "sector_ring_index": ring_of_blend[which], "sector_used": geo["used"],
    }
