"""Detector calibration from the rings of a polycrystalline standard (e.g. gold): Q per pixel, pattern
centre and elliptical distortion, with each ring's residual.  Pure functions, arrays in, arrays out.

Conventions (the same as :mod:`sendmap.science.polar` and :mod:`sendmap.synth.patterns`):

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
from scipy import ndimage, optimize, signal

from .polar import PolarGeometry, polar_sums

__all__ = [
    "RingFit",
    "calibrate_rings",
    "ellipse_from_params",
    "ellipse_matrix",
    "ellipse_params",
    "find_profile_peaks",
    "fit_ring_geometry",
    "fit_ring_group",
    "index_rings",
    "radial_profiles",
    "symmetry_centre",
    "undistorted_radius",
]

#: Relative tolerance of ring indexing (|q·r − Q| / Q) before any refinement.
INDEX_TOLERANCE = 0.02
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


# ----------------------------------------------------------------------------------------------------
# ellipse geometry
# ----------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------
# centre and profiles
# ----------------------------------------------------------------------------------------------------
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


def radial_profiles(image: np.ndarray, mask: np.ndarray, centre_yx, ratio: float = 1.0, angle_deg: float = 0.0,
                    bin_px: float = 0.25, n_sectors: int = 1, r_max_px: float | None = None,
                    supersample: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean intensity per undistorted-radius bin and azimuthal sector (the kernel of ``science.polar``).

    Returns ``(r, mean, npix)``: bin centres r (px, undistorted radius), ``mean`` (nr, n_sectors) mean
    value per pixel (NaN where a bin has no pixel) and ``npix`` (nr, n_sectors) the pixel area in each bin.
    Sector k covers detector azimuths atan2(dy, dx) in [k, k+1)·2π/n − π (as in ``science.polar``).
    """
    img = np.asarray(image, dtype=np.float64)
    good = np.asarray(mask, bool) & np.isfinite(img)
    if r_max_px is None:
        ny, nx = img.shape
        cy, cx = float(centre_yx[0]), float(centre_yx[1])
        far = max(math.hypot(y - cy, x - cx) for y in (-0.5, ny - 0.5) for x in (-0.5, nx - 0.5))
        r_max_px = far * math.sqrt(max(ratio, 1.0)) + 1.0
    nr = int(math.ceil(r_max_px / bin_px))
    geom = PolarGeometry(q_pixel_size=1.0, bin_width=bin_px, nq=nr, n_phi=int(n_sectors), ratio=float(ratio),
                         angle_deg=float(angle_deg), supersample=int(supersample))
    ps = polar_sums(np.where(good, img, 0.0)[None], np.asarray(centre_yx, dtype=np.float64).reshape(1, 2), good, geom)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = ps.s[0] / ps.w[0]
    mean[ps.w[0] <= 0] = np.nan
    return geom.q_centres, mean, ps.w[0]


def sector_centres_rad(n_sectors: int) -> np.ndarray:
    """Detector azimuth (rad) at the middle of each sector of :func:`radial_profiles`."""
    return (np.arange(n_sectors) + 0.5) * (2 * np.pi / n_sectors) - np.pi


# ----------------------------------------------------------------------------------------------------
# ring detection and indexing
# ----------------------------------------------------------------------------------------------------
def find_profile_peaks(r: np.ndarray, profile: np.ndarray, smooth_px: float = 1.0, min_snr: float = 5.0,
                       min_contrast: float = 0.02, r_min_px: float = 3.0) -> dict[str, np.ndarray]:
    """Ring-like features of an azimuthal profile: maxima of the curvature −d²(ln I)/dr².

    The log makes a ring's signature independent of the steeply falling background, and the curvature
    finds shoulders (a weak ring beside a strong one) as well as peaks.  A feature must be significant
    (its curvature and its prominence above the neighbouring curvature > ``min_snr`` × the noise; the
    noise is measured from the bin-to-bin scatter of ln I, so the bins should hold independent pixels:
    1-px bins, no supersampling) and strong (a Gaussian ring of relative height h over the background
    and width σ has curvature ≈ h/σ²: curvature and prominence must exceed ``min_contrast`` /
    (σ_s² + 4 px²), σ_s = ``smooth_px``).  The prominence test rejects the smooth positive curvature of
    a background's core.

    r: (n,) bin centres, px (uniform); profile: (n,) mean intensity (NaN where empty).
    Returns ``{"radius", "curvature", "snr"}`` arrays (px, px⁻², σ), sorted by radius.

    >>> r = np.arange(0, 120, 1.0)
    >>> prof = 100 / (1 + (r / 10) ** 2) * (1 + 0.3 * np.exp(-0.5 * ((r - 40) / 2) ** 2))
    >>> np.round(find_profile_peaks(r, prof)["radius"], 1)
    array([40.])
    """
    r = np.asarray(r, dtype=float)
    prof = np.asarray(profile, dtype=float)
    dr = float(r[1] - r[0])
    ok = np.isfinite(prof) & (prof > 0)
    empty = {"radius": np.zeros(0), "curvature": np.zeros(0), "snr": np.zeros(0)}
    if ok.sum() < 16:
        return empty
    y = np.full(r.shape, np.nan)
    y[ok] = np.log(prof[ok])
    y = np.interp(r, r[ok], y[ok])  # fill gaps (masked bins) linearly
    s = max(smooth_px / dr, 1.0)
    curv = -ndimage.gaussian_filter1d(y, s, order=2, mode="nearest") / dr**2
    # noise of ln I per bin from second differences (robust, local, blind to the background's slope; the bins
    # must hold independent pixels, e.g. 1-px bins without supersampling), and the filter's noise gain
    d2 = np.abs(np.convolve(y, [1.0, -2.0, 1.0], mode="same"))
    d2[[0, -1]] = np.median(d2)
    noise = 1.4826 * ndimage.median_filter(d2, size=int(max(41, 20 * s)) | 1, mode="nearest") / math.sqrt(6)
    impulse = np.zeros(int(12 * s) | 1)
    impulse[len(impulse) // 2] = 1.0
    gain = float(np.sqrt(np.sum(ndimage.gaussian_filter1d(impulse, s, order=2, mode="constant") ** 2))) / dr**2
    snr = curv / np.maximum(noise * gain, 1e-300)
    min_curv = min_contrast / (smooth_px**2 + 4.0)
    idx, props = signal.find_peaks(curv, prominence=0.0)
    prom = props["prominences"]
    keep = ((prom / np.maximum(noise[idx] * gain, 1e-300) > min_snr) & (curv[idx] > min_curv) & (prom > min_curv)
            & (r[idx] >= r_min_px) & ok[idx])
    idx = idx[keep]
    if len(idx) == 0:
        return empty
    # sub-bin vertex of the curvature maximum
    rad = []
    for i in idx:
        if 0 < i < len(curv) - 1:
            f0, f1, f2 = curv[i - 1], curv[i], curv[i + 1]
            d = f0 - 2 * f1 + f2
            rad.append(r[i] + (0.5 * (f0 - f2) / d * dr if d < 0 else 0.0))
        else:
            rad.append(r[i])
    return {"radius": np.array(rad), "curvature": curv[idx], "snr": snr[idx]}


def index_rings(radii_px: np.ndarray, q_ref: np.ndarray, intensity: np.ndarray, q_guess: float | None = None,
                tolerance: float = INDEX_TOLERANCE, guess_range: float = 0.15, weights: np.ndarray | None = None,
                n_low: int = 8, min_intensity: float = 10.0) -> dict:
    """Assign ring-like features to reflections by their radius ratios; returns the Q per pixel.

    Only the ``n_low`` lowest-Q reflections with intensity ≥ ``min_intensity`` take part: at higher Q
    the reflections of any lattice are so dense that random features match them.  Every (feature,
    reflection) pair proposes q = Q / r; the proposal is refined on the features it matches
    (|q·r − Q| ≤ ``tolerance``·Q) and scored over the features inside the radial range of those
    reflections: +w per matched feature, −w/4 per unmatched one (spurious features are tolerated), and
    −intensity/100 for every reflection expected between the innermost and outermost feature that no
    feature explains (this rejects q·2, q·3, ..., which match every feature of a cubic lattice too but
    predict rings that are not there); missing weak rings cost little.  w = ``weights`` (e.g. the
    features' significance, scaled to ≤ 1; default 1).  With ``q_guess`` (1/Å/px), only proposals within
    ± ``guess_range`` of it are considered.

    radii_px: (n,) feature radii; q_ref, intensity: (m,) reflections' Q (1/Å) and intensity (0-100).
    Returns ``{"q_pixel_size", "pairs": [(feature index, reflection index into q_ref), ...], "score"}``,
    or ``q_pixel_size`` None when fewer than two features can be matched.

    >>> q_au = np.array([0.4247, 0.4904, 0.6936, 0.8133, 0.8495, 0.9809])
    >>> i_au = np.array([100, 61, 64, 88, 26, 13])
    >>> res = index_rings(np.array([6.0, 42.47, 69.36, 81.33]), q_au, i_au)
    >>> round(res["q_pixel_size"], 5), res["pairs"]
    (0.01, [(1, 0), (2, 2), (3, 3)])
    """
    radii = np.asarray(radii_px, dtype=float)
    w_feat = np.ones(len(radii)) if weights is None else np.asarray(weights, dtype=float)
    q_all = np.asarray(q_ref, dtype=float)
    low = np.flatnonzero(np.asarray(intensity, dtype=float) >= min_intensity)
    low = low[np.argsort(q_all[low])][:n_low]
    q_low = q_all[low]
    inten = np.asarray(intensity, dtype=float)[low]
    none = {"q_pixel_size": None, "pairs": [], "score": -np.inf}
    if len(radii) == 0 or len(q_low) == 0:
        return none
    cands = (q_low[None, :] / radii[:, None]).ravel()
    if q_guess is not None:
        cands = cands[np.abs(cands / q_guess - 1.0) <= guess_range]
    best = none
    for q0 in np.unique(np.round(cands, 9)):
        q = q0
        pairs: dict[int, int] = {}
        for _ in range(3):  # match, refine q on the matches, re-match
            r_max = q_low.max() / q * (1 + tolerance)
            qr = q * radii
            j = np.argmin(np.abs(qr[:, None] - q_low[None, :]) / q_low[None, :], axis=1)
            rel = np.abs(qr - q_low[j]) / q_low[j]
            matched = (rel <= tolerance) & (radii <= r_max)
            pairs = {}
            for i in np.flatnonzero(matched):  # one feature per reflection: the closest
                if j[i] not in pairs or rel[i] < rel[pairs[j[i]]]:
                    pairs[j[i]] = i
            if len(pairs) < 2:
                break
            ii = np.array(list(pairs.values()))
            jj = np.array(list(pairs.keys()))
            q = float(np.sum(radii[ii] * q_low[jj] / q_low[jj] ** 2) / np.sum(radii[ii] ** 2 / q_low[jj] ** 2))
        if len(pairs) < 2 or (q_guess is not None and abs(q / q_guess - 1.0) > guess_range):
            continue
        in_range = radii <= q_low.max() / q * (1 + tolerance)
        ii = np.array(list(pairs.values()))
        unmatched = in_range.copy()
        unmatched[ii] = False
        # expected reflections between the innermost and outermost features in range that none explains
        r_exp = q_low / q
        lo, hi = radii[in_range].min(), radii[in_range].max()
        inside = (r_exp >= lo * (1 - tolerance)) & (r_exp <= hi * (1 + tolerance))
        explained = np.any(np.abs(r_exp[:, None] - radii[None, in_range])
                           <= np.maximum(tolerance * r_exp[:, None], 1.5), axis=1)
        missing = float(np.sum(inten[inside & ~explained])) / 100.0
        misfit = float(np.mean([abs(q * radii[i] - q_low[k]) / q_low[k] for k, i in pairs.items()]))
        score = float(w_feat[ii].sum() - 0.25 * w_feat[unmatched].sum() - missing - misfit)
        if score > best["score"] + 1e-9:
            best = {"q_pixel_size": q, "pairs": sorted((int(i), int(low[k])) for k, i in pairs.items()),
                    "score": score}
    return best


# ----------------------------------------------------------------------------------------------------
# ring profile model
# ----------------------------------------------------------------------------------------------------
@dataclass
class _LMResult:
    x: np.ndarray
    fun: np.ndarray
    cost: float
    success: bool


def _levenberg_marquardt(resid, jac, x0, max_iter: int = 300, xtol: float = 1e-5, ftol: float = 1e-7) -> _LMResult:
    """Minimise ½|resid(x)|² by Levenberg-Marquardt (Marquardt's diagonal scaling) with an analytic
    Jacobian: a lean loop for the many small ring fits (scipy's least_squares costs more per call than
    these fits need).  Converged when a step changes every parameter by < xtol relative (absolute for
    |x| < 1) or the cost by < ftol relative."""
    x = np.asarray(x0, float).copy()
    f = resid(x)
    cost = 0.5 * float(f @ f)
    lam = 1e-3
    success = False
    for _ in range(max_iter):
        j = jac(x)
        g = j.T @ f
        h = j.T @ j
        d = np.maximum(np.diag(h), 1e-300)
        while True:
            try:
                step = np.linalg.solve(h + lam * np.diag(d), -g)
            except np.linalg.LinAlgError:
                step = np.full_like(x, np.nan)
            x_new = x + step
            f_new = resid(x_new) if np.all(np.isfinite(step)) else None
            cost_new = 0.5 * float(f_new @ f_new) if f_new is not None and np.all(np.isfinite(f_new)) else np.inf
            if cost_new <= cost:
                break
            lam *= 4.0
            if lam > 1e12:
                return _LMResult(x, f, cost, success)
        small_step = np.all(np.abs(step) <= xtol * np.maximum(np.abs(x), 1.0))
        small_gain = cost - cost_new <= ftol * max(cost, 1e-300)
        x, f, cost = x_new, f_new, cost_new
        lam = max(lam / 3.0, 1e-9)
        if small_step or small_gain:
            success = True
            break
    return _LMResult(x, f, cost, success)


# ----------------------------------------------------------------------------------------------------
# ring profile fit
# ----------------------------------------------------------------------------------------------------
@dataclass
class RingFit:
    """Result of :func:`fit_ring_group` (radii and widths in px, amplitudes in profile units)."""

    radius: np.ndarray  # (n_rings,) fitted radius of each ring
    radius_err: np.ndarray  # (n_rings,) 1-σ
    amplitude: np.ndarray  # (n_rings,) Gaussian peak height above the background
    amplitude_err: np.ndarray
    sigma: float  # Gaussian σ shared by the group (px)
    scale: np.ndarray  # (n_tied,) the free scale of each tied subset (radius = scale · radius0)
    scale_err: np.ndarray
    chi2_red: float
    ok: bool


def fit_ring_group(r: np.ndarray, y: np.ndarray, weight: np.ndarray, radius0: np.ndarray, tie: np.ndarray,
                   sigma0: float, max_shift_px: float = 3.0, bg_degree: int = 2,
                   fixed_radii: np.ndarray | None = None, tie_weights: np.ndarray | None = None,
                   free_amplitude: np.ndarray | None = None,
                   sigma_starts: tuple[float, ...] = (1.0, 0.6, 1.6)) -> RingFit:
    """Fit Gaussian rings on a polynomial background to one window of a radial profile.

    Model: y(r) = Σ_t A_t Σ_{j∈t} w_j exp(−(r − s_t·ρ0_j)² / 2σ²) + Σ_k b_k τ^k, τ the window's 1/r
    mapped onto [−1, 1] (a background polynomial in 1/r: diffuse scattering and beam tails fall as
    powers of r).
    Rings j sharing a value of ``tie`` form one *blend* t: one radial scale s_t (they keep the ratio of
    their Q) and one amplitude A_t, split between them by the fixed relative heights ``tie_weights`` w_j
    (default 1; for powder rings of one phase, the azimuthal-average heights ∝ intensity·d²): the split of
    a blend of comparable rings cannot be fitted, it trades off against the scale.  Rings flagged in
    ``free_amplitude`` (m,) bool get an amplitude of their own instead (a strong ring with a weak shoulder
    is well determined).  σ is shared by the group.  ``fixed_radii``: neighbouring rings whose tails
    reach into the window, added as Gaussians of the same σ at fixed radii with free amplitudes.  Weighted least squares (``weight``: 1/variance up to
    a constant; the errors are scaled by the reduced χ²), Levenberg-Marquardt with an analytic Jacobian
    from each start σ0 × ``sigma_starts`` (amplitudes and background start from the linear
    least-squares solution at the start radii).

    r, y, weight: (n,) the window (px, profile units); radius0: (m,) start radii (px); tie: (m,) ints.
    Returns a :class:`RingFit` (per ring: radius, its error, amplitude A_t·w_j and its error; per blend:
    scale and error); ``ok`` is False when the fit fails or a radius moves by more than ``max_shift_px``.

    >>> r = np.arange(30, 60, 0.25)
    >>> y = 3 + 100 / r + 2 * np.exp(-0.5 * ((r - 42.3) / 2) ** 2) + np.exp(-0.5 * ((r - 48.9) / 2) ** 2)
    >>> f = fit_ring_group(r, y, np.ones_like(r), np.array([42.0, 49.0]), np.array([0, 1]), 1.5)
    >>> np.round(f.radius, 3), np.round(f.amplitude, 3), round(f.sigma, 3), f.ok
    (array([42.3, 48.9]), array([2., 1.]), 2.0, True)
    """
    r = np.asarray(r, float)
    y = np.asarray(y, float)
    sw = np.sqrt(np.asarray(weight, float))
    radius0 = np.asarray(radius0, float)
    fixed = np.zeros(0) if fixed_radii is None else np.asarray(fixed_radii, float).ravel()
    _, tie_idx = np.unique(np.asarray(tie), return_inverse=True)
    n_t, m, n_f, n_b = int(tie_idx.max()) + 1, len(radius0), len(fixed), bg_degree + 1
    wj = np.ones(m) if tie_weights is None else np.asarray(tie_weights, float)
    free = np.zeros(m, bool) if free_amplitude is None else np.asarray(free_amplitude, bool)
    # amplitude parameters: one per blend, or one per ring flagged free
    _, amp_idx = np.unique(np.where(free, -1 - np.arange(m), tie_idx), return_inverse=True)
    n_a = int(amp_idx.max()) + 1
    split = np.zeros((m, n_a))
    split[np.arange(m), amp_idx] = np.where(free, 1.0, wj)
    n = len(r)
    nan = np.full(m, np.nan)
    fail = RingFit(nan, nan, nan, nan, float("nan"), np.full(n_t, np.nan), np.full(n_t, np.nan), float("nan"), False)
    n_par = n_t + 1 + n_a + n_f + n_b  # s (n_t), ln σ, A (n_a), A_fixed (n_f), b (n_b)
    if n <= n_par + 2:
        return fail
    # background: a polynomial in 1/r (diffuse scattering and the direct beam's tails fall as powers of r)
    inv = 1.0 / np.maximum(r, 1e-6)
    t = (inv - 0.5 * (inv[0] + inv[-1])) / max(0.5 * abs(inv[0] - inv[-1]), 1e-12)
    bg = np.vander(t, n_b, increasing=True)
    ys = y * sw
    i_amp, i_fix, i_bg = n_t + 1, n_t + 1 + n_a, n_t + 1 + n_a + n_f

    def parts(th):
        sig = math.exp(min(max(th[n_t], -1.5), 6.0))  # σ kept in [0.22, 400] px: no overflow in a wild step
        rad = radius0 * th[:n_t][tie_idx]
        z = np.clip((r[:, None] - np.concatenate([rad, fixed])[None, :]) / sig, -50.0, 50.0)
        g = np.exp(-0.5 * z * z)
        return sig, rad, z, g

    def amplitudes(th):  # per ring (m) then fixed (n_f)
        return np.concatenate([split @ th[i_amp:i_fix], th[i_fix:i_bg]])

    def resid(th):
        g = parts(th)[3]
        return (g @ amplitudes(th) + bg @ th[i_bg:]) * sw - ys

    def jac(th):
        sig, _, z, g = parts(th)
        ag = g * amplitudes(th)[None, :]
        j = np.empty((n, n_par))
        dpos = ag[:, :m] * z[:, :m] / sig  # ∂/∂r_j
        for k in range(n_t):
            sel = tie_idx == k
            j[:, k] = dpos[:, sel] @ radius0[sel]
        j[:, n_t] = np.sum(ag * z * z, axis=1)  # ∂/∂ln σ
        j[:, i_amp:i_fix] = g[:, :m] @ split
        j[:, i_fix:i_bg] = g[:, m:]
        j[:, i_bg:] = bg
        return j * sw[:, None]

    best = None
    for fs in sigma_starts:
        th = np.concatenate([np.ones(n_t), [math.log(max(sigma0 * fs, 0.35))], np.zeros(n_a + n_f + n_b)])
        g = parts(th)[3]
        x = np.concatenate([g[:, :m] @ split, g[:, m:], bg], axis=1) * sw[:, None]
        th[i_amp:], *_ = np.linalg.lstsq(x, ys, rcond=None)
        sol = _levenberg_marquardt(resid, jac, th)
        if np.all(np.isfinite(sol.x)) and (best is None or sol.cost < best.cost):
            best = sol
    if best is None:
        return fail
    sig, rad, _, _ = parts(best.x)
    s = best.x[:n_t]
    res = best.fun
    chi2_red = float(res @ res / (n - n_par))
    jj = jac(best.x)
    if not (np.all(np.isfinite(jj)) and np.isfinite(chi2_red)):
        return fail
    try:
        cov = np.linalg.pinv(jj.T @ jj) * chi2_red
    except np.linalg.LinAlgError:
        return fail
    var = np.maximum(np.diag(cov), 0.0)
    s_err = np.sqrt(var[:n_t])
    amp = split @ best.x[i_amp:i_fix]
    amp_err = split.sum(axis=1) * np.sqrt(var[i_amp:i_fix])[amp_idx]
    ok = (bool(best.success) and np.all(np.abs(rad - radius0) <= max_shift_px) and np.all(np.isfinite(s_err))
          and 0.3 <= sig <= max(4 * sigma0, 0.25 * (r[-1] - r[0])))
    return RingFit(rad, radius0 * s_err[tie_idx], amp, amp_err, float(sig), s, s_err, chi2_red, bool(ok))


# ----------------------------------------------------------------------------------------------------
# geometry fit
# ----------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------
# the whole calibration
# ----------------------------------------------------------------------------------------------------
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
