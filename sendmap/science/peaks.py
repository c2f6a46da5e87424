"""First short-range-order (SRO) peak of I(Q)·Q^n profiles: position, 1-σ uncertainty, height, prominence.

Size: the first-peak fit and what the second-peak fit and the low-rank denoising share (fit ranges, covariance
propagation, speckle-correlated errors); lowrank_denoise and bin_similar_neighbours (~130 lines) are the piece to
move out next (beside sendmap.science.lowrank).

Method, for a block of profiles at once (no Python loop over positions):

1. first estimate: the maximum of the profile smoothed by a Gaussian of ``smooth_sigma_bins`` inside
   the search window;
2. a weighted least-squares fit of a degree-``degree`` polynomial over ± ``half_width`` 1/Å around it,
   weights 1/sem²; the peak is the polynomial's maximum (Newton refinement of p'(q) = 0);
3. the uncertainty propagates the fit covariance to the root of p'(q): σ_q² = gᵀ C g with
   g_j = −j·x^{j−1} / p''(x) (delta method), scaled by sqrt(χ²_red) where the model fits significantly
   worse than the noise predicts.

The fit range may be asymmetric, (left, right) 1/Å, matched to the peak's own half widths at half prominence
(:func:`peak_half_widths`, :func:`auto_fit_range`): real SRO peaks are asymmetric with shoulders, and a fixed
symmetric ± 0.14 1/Å range pulls the polynomial's maximum towards the heavier flank (+0.008 1/Å on the real
Ta2O5 halo, see tests/test_peaks_real.py). Every position gets a :data:`PEAK_STATUS` code; no input (empty Q
range, all-NaN or all-zero profiles, zero errors) raises.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import numpy as np

PEAK_STATUS = ("ok", "no_maximum_in_window", "too_few_counts", "window_outside_data", "fit_failed", "crystal",
               "no_clear_maximum", "bragg_disk_in_fit_range", "above_class_ranges")
"""Meaning of each ``peaks/status`` code (the index): ``ok`` an interior maximum of the fitted polynomial inside
the window; ``no_maximum_in_window`` the smoothed profile's highest point in the window is at the window's edge
(a monotonic profile, or the peak lies outside the window) or the fitted maximum lies outside the window;
``too_few_counts`` fewer valid bins (finite, standard error > 0) in the fit range than the polynomial has
coefficients + 1, or no counts at all; ``window_outside_data`` the window holds fewer than 3 of the profile's
bins; ``fit_failed`` the polynomial has no interior maximum near a clear smoothed maximum (q_peak then holds the
smoothed maximum with a one-bin error: the documented fallback, not a fit); ``crystal`` set by the classify stage
(``maps/peak_status``) for crystalline positions; ``no_clear_maximum`` (appended, code 6) the fitted polynomial has an
interior maximum, but the profile is flat around it: the confidence set of the maximum's location at
:data:`FLAT_TOP_Z` σ (:func:`stationary_point_set`) reaches an edge of the fit range, so the data in the range do
not bound it, or another maximum in the window is as high within the noise (:func:`flat_top_errors`; q_peak then
holds the centre of the Q range consistent with the maximum, ``peaks/q_max_lo`` – ``q_max_hi``, and q_err its half
width; such positions are not split into classes by their peak Q); ``bragg_disk_in_fit_range`` (appended, code 7, set by the
classify stage in ``maps/peak_status``) an SEI Type 1 position whose LiF-band evidence is a Li/Cu reflection
(:func:`sendmap.science.classify.grain_reflection_type1`): that grain's disks (Li (110) at 0.403 1/Å) lie in the fit
range and pull the maximum up (+0.028 1/Å on matrix seed 1018), so the class stands but no peak is reported; also
(session 18) an amorphous position beside a grain (a crystal among its 8 neighbours) with a spot at a Li/Cu reflection
in its fit range above the scan's own chance level (:func:`sendmap.science.boundaries.grain_disk_beside_grain`: the
grain a minority along the beam, its disks too faint for the crystal rule);
``above_class_ranges`` (appended, code 8, set by the classify stage in ``maps/peak_status``) a position given an
amorphous class (by the class probabilities' spatial prior, ``classify.method: probabilistic``) whose maximum lies
above every class's range (above ``sei_type1_range``'s upper end, SEI Type 1's published mean + 2 spreads): no class
of SCIENCE.md has its SRO peak there, so the maximum is not that class's (on the scenario matrix: Type 1 positions
beside a grain whose Bragg disk in the fit range pulls the maximum to 0.35–0.40 1/Å, and noise excursions of thin
films); it is no evidence for a class (the class comes from the neighbours) and is not reported. Refer to them by
name (:func:`status_code`)."""


def _gaussian_filter1d(*args, **kwargs):
    """``scipy.ndimage.gaussian_filter1d``, imported on first use: scipy.ndimage costs ~0.3-0.5 s to import, which a
    re-run after a classification change (whose classify stage imports this module for the status codes) need not
    pay."""
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(*args, **kwargs)



def status_code(name: str) -> int:
    """The ``peaks/status`` code of a :data:`PEAK_STATUS` name."""
    return PEAK_STATUS.index(name)


def status_attrs() -> dict:
    """CF-style attributes describing a status array (``flag_values``, ``flag_meanings``)."""
    return {"flag_values": list(range(len(PEAK_STATUS))), "flag_meanings": " ".join(PEAK_STATUS),
            "meaning": "first SRO peak status per position; q_peak is NaN in maps/ wherever it is neither ok nor "
                       "no_clear_maximum"}


AUTO_RANGE_FACTOR = 1.4
"""Fit range each side of the maximum, in units of that side's half width at half prominence
(:func:`auto_fit_range`, measured with 1 bin of smoothing). Chosen on the noise-free real halos of
tests/test_peaks_real.py (Ta2O5 I(q), a Ceta SAED azimuthal average, in bins of 0.0125 1/Å) and the synthetic
Gaussian-on-background peaks of tests/test_peaks.py (σ 0.045 and 0.055 1/Å, maxima 0.285–0.345): with 1.4 the
degree-5 polynomial's maximum is within 0.0013 1/Å of the true maximum of every one of them (1.2: 0.0023,
1.6: 0.0027, 2.0: 0.0068), where the fixed ± 0.14 1/Å range is off by 0.008 on the asymmetric Ta2O5 halo."""

MIN_AUTO_HALF_WIDTH = 0.04
"""1/Å, the narrowest automatic fit half range: ≈ 3 bins of 0.0125 1/Å each side, so that a degree-5
polynomial over the range is determined (at least 7 bins)."""


def peak_half_widths(q: np.ndarray, profile: np.ndarray, window: tuple[float, float],
                     sigma_bins: float = 3.0) -> tuple[float, float] | None:
    """Half widths (left, right) 1/Å of the highest maximum inside ``window`` of a (smoothed) 1-D profile, at
    half its prominence; None where there is no such maximum (too few bins, all NaN, the maximum at the
    window's edge, or a flank that does not fall to the level).

    The prominence is the height above the higher of the two valleys that flank the maximum (the lowest
    points reached walking downhill each way until the profile rises again or ends): the peak's own
    topographic prominence, independent of the window.

    >>> q = (np.arange(80) + 0.5) * 0.0125
    >>> hl, hr = peak_half_widths(q, np.exp(-0.5 * ((q - 0.33) / 0.05) ** 2), (0.22, 0.42), sigma_bins=0)
    >>> round(hl + hr, 3)  # a Gaussian's FWHM, 2.3548 σ (each side is measured from the highest bin)
    0.118
    """
    q = np.asarray(q, float)
    y = np.asarray(profile, float)
    fin = np.isfinite(y)
    if q.size < 3 or fin.sum() < 3:
        return None
    s = _gaussian_filter1d(np.where(fin, y, np.interp(q, q[fin], y[fin])), max(sigma_bins, 1e-6),
                                  mode="nearest")
    inside = np.flatnonzero((q >= window[0]) & (q <= window[1]))
    if inside.size < 3:
        return None
    i = int(inside[np.argmax(s[inside])])
    if i in (inside[0], inside[-1]):
        return None
    left = i
    while left > 0 and s[left - 1] <= s[left]:
        left -= 1
    right = i
    while right < q.size - 1 and s[right + 1] <= s[right]:
        right += 1
    top = s[i]
    level = top - 0.5 * (top - max(s[left], s[right]))
    if not top > level:
        return None
    jl = i - int(np.argmax(s[i::-1] <= level))  # first bin at/below the level, walking left
    jr = i + int(np.argmax(s[i:] <= level))
    if s[jl] > level or s[jr] > level:
        return None
    ql = q[jl] + (level - s[jl]) / (s[jl + 1] - s[jl]) * (q[jl + 1] - q[jl])
    qr = q[jr - 1] + (level - s[jr - 1]) / (s[jr] - s[jr - 1]) * (q[jr] - q[jr - 1])
    return float(q[i] - ql), float(qr - q[i])


def auto_fit_range(q: np.ndarray, profile: np.ndarray, window: tuple[float, float], sigma_bins: float = 1.0,
                   factor: float = AUTO_RANGE_FACTOR) -> tuple[float, float] | None:
    """The fit range (left, right) 1/Å matched to a peak: ``factor`` × each side's half width at half prominence
    (:func:`peak_half_widths`), at least :data:`MIN_AUTO_HALF_WIDTH`; None where the profile has no maximum
    inside the window. Meant for a scan's mean (non-crystalline) profile, one range for every position: a mean
    over many positions needs little smoothing (``sigma_bins`` 1 bin), which would otherwise widen the peak."""
    hw = peak_half_widths(q, profile, window, sigma_bins)
    if hw is None:
        return None
    return tuple(max(factor * h, MIN_AUTO_HALF_WIDTH) for h in hw)


class LowRankOperator:
    """The linear map of a low-rank denoising, y' = L y with L = diag(pass) + A B (nq × nq), kept factorised.

    ``passed``: (nq,) bool, the bins returned unchanged (identity); ``a``: (nq, k), ``b``: (k, nq), both zero
    outside the denoised bins (rows of ``a``, columns of ``b`` where ``passed``). Factorised, the covariance
    of a fit through L costs O(k²) per position instead of O(nq²) (:func:`_propagated_covariance_lowrank`).
    ``np.asarray(op)`` gives the dense matrix.
    """

    def __init__(self, passed: np.ndarray, a: np.ndarray, b: np.ndarray):
        self.passed, self.a, self.b = np.asarray(passed, bool), np.asarray(a, float), np.asarray(b, float)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.passed.size, self.passed.size)

    def dense(self) -> np.ndarray:
        return np.diag(self.passed.astype(float)) + self.a @ self.b

    def __array__(self, dtype=None, copy=None):
        d = self.dense()
        return d if dtype is None else d.astype(dtype)


AUTO_SHIFT_TOLERANCE = 0.003
"""1/Å: where the scan's mean profile puts the maximum this much apart with the fixed and with the matched fit range,
the fixed range is biased by the peak's shape and :func:`choose_fit_range` takes the matched one (issue 17's bound
on the estimator's bias on real peak shapes)."""


def resolve_auto_fit_range(q: np.ndarray, profiles: np.ndarray, sem: np.ndarray, rows: np.ndarray,
                           window: tuple[float, float], fixed: float = 0.14, smooth_sigma_bins: float = 3.0,
                           degree: int = 5) -> tuple[float | tuple[float, float], dict]:
    """``peaks.fit_half_width: auto`` for a set of profiles: :func:`choose_fit_range` on the mean of the
    ``rows`` (N,) bool (e.g. the non-crystalline positions with counts) of ``profiles`` / ``sem`` (N, nq); its
    error is the mean's (√Σσ² / n per bin, NaN bins left out). With no such row: the fixed range."""
    sel = np.asarray(rows, bool)
    if not sel.any():
        return fixed, {"mode": "auto: fixed", "half_width": [float(fixed)] * 2,
                       "reason": "no non-crystalline position with counts"}
    from .denoise_kernels import masked_column_means

    mean_prof, mean_sem, _ = masked_column_means(profiles, sem, sel)  # (one compiled pass, the same numbers)
    return choose_fit_range(q, mean_prof, mean_sem, window, fixed, smooth_sigma_bins, degree)


def choose_fit_range(q: np.ndarray, mean_profile: np.ndarray, mean_sem: np.ndarray, window: tuple[float, float],
                     fixed: float = 0.14, smooth_sigma_bins: float = 3.0, degree: int = 5,
                     tolerance: float = AUTO_SHIFT_TOLERANCE) -> tuple[float | tuple[float, float], dict]:
    """The fit range for ``peaks.fit_half_width: auto``, from a scan's mean (non-crystalline) profile (1/Å).

    The fixed symmetric range ± ``fixed`` has the smaller variance and, on near-symmetric peaks, errors that
    cover; on asymmetric peaks with shoulders it pulls the polynomial's maximum towards the heavier flank (0.008
    1/Å on the real Ta2O5 halo, 0.014 on a real metallic-glass pattern: tests/test_peaks_real.py). So: fit the
    mean profile with both, the fixed and the matched range (:func:`auto_fit_range`); where their maxima differ
    by more than ``tolerance`` the fixed range is biased for this data and the matched one is returned, else the
    fixed one. Returns (half_width for :func:`fit_peaks`, a record of the choice: ``mode``, ``half_width`` [left,
    right], ``shift`` (fixed − matched, 1/Å), ``reason``).
    """
    matched = auto_fit_range(q, mean_profile, window)
    rec = {"half_width": [float(fixed)] * 2, "tolerance": tolerance}
    if matched is None:
        return fixed, rec | {"mode": "auto: fixed", "shift": None,
                             "reason": "the mean profile has no maximum inside the window"}
    prof = np.asarray(mean_profile, float)[None]
    sem = np.asarray(mean_sem, float)[None]
    a = fit_peaks(q, prof, sem, window, matched, smooth_sigma_bins, degree, width_error=False)
    b = fit_peaks(q, prof, sem, window, fixed, smooth_sigma_bins, degree, width_error=False)
    rec["matched_half_width"] = [float(v) for v in matched]
    if a["status"][0] != 0 or b["status"][0] != 0:
        return fixed, rec | {"mode": "auto: fixed", "shift": None,
                             "reason": "a fit of the mean profile found no maximum inside the window"}
    shift = float(b["q_peak"][0] - a["q_peak"][0])
    rec["shift"] = shift
    if abs(shift) > tolerance:
        return matched, rec | {"mode": "auto: matched", "half_width": [float(v) for v in matched],
                               "reason": f"the fixed range moves the mean profile's maximum by {shift:+.4f} 1/Å "
                                         f"(> {tolerance}): an asymmetric peak"}
    return fixed, rec | {"mode": "auto: fixed", "reason": f"the fixed range moves the mean profile's maximum by "
                                                           f"{shift:+.4f} 1/Å (≤ {tolerance})"}


def smoothed_argmax(q: np.ndarray, profiles: np.ndarray, window: tuple[float, float], sigma_bins: float) -> np.ndarray:
    """Index of the maximum of each Gaussian-smoothed profile inside ``window`` (1/Å); -1 where all NaN.

    profiles: (N, nq). Smoothing runs along Q only; NaN bins are treated as 0 after smoothing.
    """
    p = np.nan_to_num(profiles, nan=0.0)
    if sigma_bins > 0 and p.shape[1] > 0:
        p = _gaussian_filter1d(p, sigma_bins, axis=1, mode="nearest")
    inside = (q >= window[0]) & (q <= window[1])
    if not inside.any():
        return np.full(len(p), -1)
    p = np.where(inside[None, :], p, -np.inf)
    idx = np.argmax(p, axis=1)
    idx[~np.isfinite(profiles).any(axis=1)] = -1
    return idx


FLAT_TOP_Z = 2.0
"""σ level of the flat-top test (status ``no_clear_maximum``, :func:`stationary_point_set`): a maximum is clear
where, on each side of it inside the fit range, the fitted slope differs from zero by more than this many standard
errors somewhere, i.e. the profile is shown to fall on both sides (each side a two-sided 4.6 % test). On a peak
whose flanks at the range's edges are ≥ 5 standard errors steep it fires with probability Φ(2 − 5) ≈ 0.1 % per side
(the synthetic scenarios' peaks are 20-200 σ steep there); on an exactly flat top, with slope 0 ± noise everywhere,
the set stays unbounded on a side unless noise alone makes the slope 2 σ somewhere along it (measured on an
analytic flat top, tests/test_peaks_flat.py)."""


def stationary_point_set(coef: np.ndarray, cov: np.ndarray, x0: np.ndarray, z: float,
                         n_grid: int = 201) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The confidence set of the location of a polynomial's maximum, by inverting the test of p'(x) = 0 (Fieller's
    theorem, Fieller 1954, for the root of p' = 0): the connected set of x around the fitted maximum ``x0`` where
    |p'(x)| ≤ z · sd(p'(x)), sd from the coefficients' covariance ``cov`` (N, d+1, d+1); ``coef`` (N, d+1) in
    the fit's local coordinate x ∈ [-1, 1]. Near a maximum with curvature c, p'(x) ≈ c (x − x0) and the set is
    x0 ± z·sd(p')/|c|: at z = 1 exactly the delta method's ± σ; where the top is flat (c ≈ 0 within noise) it
    widens to the plateau the data cannot tell apart, and reaches the range's edge where the profile is not shown
    to fall inside it.

    Returns (left, right) bounds (N,) in x (linear interpolation between ``n_grid`` points) and (reaches_left,
    reaches_right) (N,) bool: the set runs to x = ∓1 (the data in the range do not bound it on that side).

    >>> c = np.array([[1.0, 0.0, -1.0]])  # 1 − x²: p' = −2x
    >>> cv = np.zeros((1, 3, 3)); cv[0, 1, 1] = 0.04  # sd(p') = 0.2
    >>> lo, hi, el, er = stationary_point_set(c, cv, np.array([0.0]), 1.0)
    >>> round(float(lo[0]), 3), round(float(hi[0]), 3), bool(el[0] or er[0])
    (-0.1, 0.1, False)
    """
    coef = np.nan_to_num(np.asarray(coef, float))
    cov = np.nan_to_num(np.asarray(cov, float))
    x0 = np.nan_to_num(np.asarray(x0, float))
    n, k = coef.shape
    powers = np.arange(k)
    grid = np.linspace(-1.0, 1.0, n_grid)
    dmat = np.zeros((n_grid, k))  # d p'(x) / d c_j = j x^(j-1)
    dmat[:, 1:] = powers[1:] * grid[:, None] ** (powers[1:] - 1)
    slope = coef @ dmat.T  # (N, G)
    var = np.einsum("gj,njk,gk->ng", dmat, cov, dmat, optimize=True)
    f = np.abs(slope) - z * np.sqrt(np.clip(var, 0.0, None))  # > 0: outside the set
    outside = f > 0
    gi = np.arange(n_grid)[None, :]
    left_of = grid[None, :] < x0[:, None]
    jl = np.where(outside & left_of, gi, -1).max(axis=1)  # the last point outside, left of x0
    jr = np.where(outside & ~left_of, gi, n_grid).min(axis=1)  # the first point outside, right of x0
    rows = np.arange(n)
    reach_l, reach_r = jl < 0, jr >= n_grid

    d0 = np.zeros((n, k))
    d0[:, 1:] = powers[1:] * x0[:, None] ** (powers[1:] - 1)
    f0 = np.abs(np.sum(coef * d0, axis=1)) - z * np.sqrt(np.clip(np.einsum("nj,njk,nk->n", d0, cov, d0), 0.0, None))

    def cross(j_out, j_in):  # f = 0 by linear interpolation between a point outside and the next one towards x0
        jo, ji = np.clip(j_out, 0, n_grid - 1), np.clip(j_in, 0, n_grid - 1)
        past = (grid[ji] - x0) * (grid[jo] - x0) <= 0  # the next grid point lies at or beyond x0: use x0 itself
        xi = np.where(past, x0, grid[ji])
        fo, fi = f[rows, jo], np.minimum(np.where(past, f0, f[rows, ji]), 0.0)
        t = np.where(fo - fi > 0, fo / np.where(fo - fi > 0, fo - fi, 1.0), 0.0)
        return grid[jo] + t * (xi - grid[jo])

    left = np.where(reach_l, -1.0, cross(jl, jl + 1))
    right = np.where(reach_r, 1.0, cross(jr, jr - 1))
    return np.minimum(left, x0), np.maximum(right, x0), reach_l, reach_r


FIT_BLOCK = 2048
"""Positions fitted at once by :func:`fit_peaks` (results do not depend on it)."""


def fit_peaks(q: np.ndarray, profiles: np.ndarray, sem: np.ndarray, window: tuple[float, float],
              half_width: float | tuple[float, float] = 0.14, smooth_sigma_bins: float = 3.0, degree: int = 5,
              operator: np.ndarray | None = None, width_error: bool = True,
              first_estimate: np.ndarray | None = None, map_blocks: Callable | None = None,
              correlated: tuple[np.ndarray, np.ndarray] | None = None, recentre: bool = False,
              feedback: float | None = None, flat_top_z: float | None = None,
              engine: str = "compiled", first_estimate_out: np.ndarray | None = None,
              smoothed: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Fit the first SRO peak of every profile.

    q: (nq,) bin centres, 1/Å (uniform spacing); profiles, sem: (N, nq) I·Q^n and its standard error.
    ``operator``: (nq, nq) linear map L that made ``profiles`` from profiles whose independent errors
    are ``sem`` (a low-rank denoising, :func:`lowrank_denoise`): the fit's covariance is then propagated
    through it (C = M L diag(sem²) Lᵀ Mᵀ for the fit's linear map M) instead of assuming independent
    bins, and no χ² inflation is applied (the residuals of a denoised profile are correlated).
    Returns arrays of shape (N,): ``q_peak`` and ``q_err`` (1/Å; NaN where no interior maximum was
    found), ``height`` and ``height_err`` (profile units), ``prominence`` (height above the higher of the two minima of
    the smoothed profile inside the window), ``fwhm`` and ``fwhm_err`` (1/Å: full width of the fitted
    peak at half its prominence, NaN where a side does not reach that level inside the fit range; with
    ``width_error`` its 1-σ error by the delta method from the fit covariance, the level moving with the
    height and with the base where the base lies inside the fit range) and ``status`` (codes of
    :data:`PEAK_STATUS`: 0 ok; 1 no maximum in the window: the smoothed maximum at the window's edge or the
    fitted one outside the window, NaN; 2 too few counts (valid bins) for the fit, NaN; 3 the window holds
    fewer than 3 bins of ``q``, NaN; 4 fit failed: the polynomial has no interior maximum, the smoothed
    maximum is reported with a bin-width error). ``first_estimate``: (N,) bin indices to start from instead
    of the smoothed maximum (−1: no peak); with it, the window-edge test is left to the caller.
    ``half_width``: 1/Å each side of the first estimate, or (left, right) for an asymmetric range
    (:func:`auto_fit_range`); a number gives the symmetric fit of earlier versions, bit for bit.
    ``correlated``: (spk, correlation[, poisson_correlation]), spk (N, nq) the part of ``sem`` whose errors are
    correlated between bins
    (speckle: the same grains fall into bins up to a disk diameter apart), ``correlation`` (L,) their correlation
    at bin lags 0, 1, …, L − 1 (:func:`sendmap.science.polar.speckle_radial_correlation`, 1 at lag 0): the bins'
    covariance is then diag(sem² − spk²) + diag(spk)·K·diag(spk), and the fit's covariance is propagated from it
    exactly (:func:`_correlated_covariance`, through ``operator`` where given; the weights stay 1/sem²), instead
    of treating the bins as independent. No χ² inflation then either: the residuals are correlated.

    ``recentre`` (without ``first_estimate``): the fit range is centred on the bin nearest the fitted maximum
    itself, not on the smoothed profile's maximum, and the error includes the range's feedback β on the estimate
    (:func:`_recentred`, :data:`RECENTRE_ITERATIONS`); ``feedback``: that β, by default measured on the mean of
    the given profiles (:func:`window_feedback`; the peaks stage measures it on the non-crystalline positions and
    records it). False (the default): one fit, centred on the smoothed maximum (earlier versions; the peaks stage
    re-centres under the speckle error model, where the error's correlations are modelled, ``speckle_fit_errors``).

    ``flat_top_z`` (e.g. :data:`FLAT_TOP_Z`; None, the default: no test, as in earlier versions): the flat-top
    test. Also returned then: ``q_max_lo``, ``q_max_hi`` (1/Å), the 1-σ confidence set of the maximum's location
    (:func:`stationary_point_set` at z = 1: ± the delta-method σ for a locally quadratic top, the plateau for a
    flat one; NaN where no maximum), and status ``no_clear_maximum`` where the set at ``flat_top_z`` σ reaches an
    edge of the fit range (q_peak, q_err then still those of the fit: :func:`flat_top_errors` gives the honest ones).

    More than :data:`FIT_BLOCK` profiles are fitted in blocks of that many, through ``map_blocks(func, starts)``
    (the built-in ``map`` by default; e.g. :func:`sendmap.engine.execute.thread_map`), which must return the
    results in order; they do not depend on it.

    ``engine``: "compiled" (the default) runs the per-position work in numba kernels
    (:mod:`sendmap.science.peak_kernels`, ~10× faster); "numpy" the NumPy array form, the reference it equals to
    rounding (tests/test_peak_kernels.py).

    ``first_estimate_out`` (N,) int64, for :func:`_recentred` (one block, without ``first_estimate`` or
    ``recentre``): filled with the first estimates the fit started from (the smoothed maximum's bin, −1 where
    none; :func:`smoothed_argmax`'s numbers where ``smooth_sigma_bins`` > 0), so the re-centring need not smooth
    the profiles again; left as it is where no fit is made (the window off the profile).

    ``smoothed`` (N, nq): the profiles as the fit smooths them (:func:`smoothed_profiles`), where the caller has
    them already (the re-centring's refits, the second peak's first estimates): not smoothed again, the same
    numbers (the filter runs along each profile on its own). Used by the compiled engine.

    >>> import numpy as np
    >>> q = (np.arange(80) + 0.5) * 0.0125
    >>> prof = np.exp(-0.5 * ((q - 0.331) / 0.04) ** 2)[None, :] + 0.1
    >>> r = fit_peaks(q, prof, np.full_like(prof, 0.01), (0.22, 0.42))
    >>> round(float(r["q_peak"][0]), 3)
    0.331
    """
    n = len(profiles)
    if recentre and first_estimate is None and feedback is None:
        feedback = window_feedback(q, profiles, sem, None, window, half_width, smooth_sigma_bins, degree)["beta"]
    if n > FIT_BLOCK:  # blocks of positions: the temporaries (N × 401 grids) stay small and in cache
        def block(i):
            return fit_peaks(q, profiles[i:i + FIT_BLOCK], sem[i:i + FIT_BLOCK], window, half_width,
                             smooth_sigma_bins, degree, operator, width_error,
                             None if first_estimate is None else np.asarray(first_estimate)[i:i + FIT_BLOCK],
                             correlated=None if correlated is None else (correlated[0][i:i + FIT_BLOCK],
                                                                         *correlated[1:]), recentre=recentre,
                             feedback=feedback, flat_top_z=flat_top_z, engine=engine,
                             first_estimate_out=None if first_estimate_out is None
                             else first_estimate_out[i:i + FIT_BLOCK],
                             smoothed=None if smoothed is None else smoothed[i:i + FIT_BLOCK])

        parts = list((map_blocks or map)(block, range(0, n, FIT_BLOCK)))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if recentre and first_estimate is None:
        return _recentred(q, profiles, sem, window, half_width, smooth_sigma_bins, degree, operator, width_error,
                          correlated, feedback, flat_top_z=flat_top_z, engine=engine, smoothed=smoothed)
    profiles = np.asarray(profiles, dtype=float).reshape(len(profiles), -1)
    sem = np.asarray(sem, dtype=float).reshape(profiles.shape)
    q = np.asarray(q, dtype=float)
    n, nq = profiles.shape
    keys = ("q_peak", "q_err", "height", "height_err", "prominence", "fwhm", "fwhm_err")
    out = {k: np.full(n, np.nan) for k in keys + (("q_max_lo", "q_max_hi") if flat_top_z is not None else ())}
    inside = (q >= window[0]) & (q <= window[1])
    if nq < degree + 2 or inside.sum() < 3:  # the window (nearly) off the profile: no fit anywhere
        out["status"] = np.full(n, status_code("window_outside_data"), dtype=np.int8)
        return out
    bw = float(q[1] - q[0])
    if np.ndim(half_width) == 0:
        hl = hr = max(degree // 2 + 1, int(round(half_width / bw)))
    else:
        hl, hr = (max(2, int(round(float(v) / bw))) for v in half_width)
        if hl + hr < degree + 2:
            hl = hr = degree // 2 + 1
    if hl + hr > nq - 1:  # a range wider than the profile: shrink it (symmetrically in bins) to fit
        hl, hr = (nq - 1) // 2, (nq - 1) - (nq - 1) // 2
    sym = hl == hr
    h = hl
    half = (hl + hr) / 2
    scale = h * bw if sym else half * bw
    if engine not in ("compiled", "numpy"):
        raise ValueError(f"fit_peaks: engine must be 'compiled' or 'numpy', not {engine!r}")
    if engine == "compiled":
        return _fit_compiled(q, profiles, sem, window, (hl, hr, sym, scale), smooth_sigma_bins, degree, operator,
                             width_error, first_estimate, correlated, flat_top_z, out, first_estimate_out, smoothed)
    idx0 = smoothed_argmax(q, profiles, window, smooth_sigma_bins) if first_estimate is None else np.asarray(first_estimate)
    if first_estimate_out is not None:
        first_estimate_out[:] = idx0
    status = np.full(n, status_code("too_few_counts"), dtype=np.int8)
    have = idx0 >= 0
    if not have.any():
        out["status"] = status
        return out
    # gather the fit range around each first estimate (clipped to the profile)
    start = np.clip(idx0 - hl, 0, nq - 1 - (hl + hr))
    centre = start + hl  # the first estimate's bin where not clipped
    cols = start[:, None] + np.arange(hl + hr + 1)[None, :]  # (N, hl+hr+1)
    q_mid = q[centre] if sym else 0.5 * (q[start] + q[start + hl + hr])  # the middle of the fit range
    rows = np.arange(n)[:, None]
    y = profiles[rows, cols]
    s = sem[rows, cols]
    x = (q[cols] - q_mid[:, None]) / scale  # local coordinate in [-1, 1]
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        wgt = np.where(np.isfinite(y) & np.isfinite(s) & (s > 0), 1.0 / np.where(s > 0, s, 1.0) ** 2, 0.0)
    wgt = np.where(np.isfinite(wgt), wgt, 0.0)
    y = np.nan_to_num(y)
    powers = np.arange(degree + 1)
    xp = x[..., None] ** powers  # (N, m, d+1)
    xpw = xp * wgt[..., None]  # batched matrix products, not einsum: numpy runs 3-operand einsums naively
    a = np.swapaxes(xpw, 1, 2) @ xp
    b = (np.swapaxes(xpw, 1, 2) @ y[..., None])[..., 0]
    ok = have & (np.sum(wgt > 0, axis=1) > degree + 1)
    cov = np.full_like(a, np.nan)
    coef = np.full((n, degree + 1), np.nan)
    if ok.any():
        cov[ok] = _inverse(a[ok])
        coef[ok] = (cov[ok] @ b[ok][..., None])[..., 0]
        _propagate(cov, ok, xp, wgt, cols, operator, sem, correlated)
    # the maximum of the polynomial: dense evaluation, then Newton steps on p'(x) = 0
    grid = np.linspace(-1, 1, 201)
    vals = (grid[:, None] ** powers) @ coef.T  # (201, N)
    vals[:, ~ok] = -np.inf
    if first_estimate is None:
        xs = grid[np.argmax(vals, axis=0)]
    else:  # the polynomial's local maximum nearest the first estimate (x = 0), not a higher value at an edge
        loc = np.zeros_like(vals, dtype=bool)
        loc[1:-1] = (vals[1:-1] > vals[:-2]) & (vals[1:-1] >= vals[2:])
        dist = np.where(loc, np.abs(grid)[:, None], np.inf)
        xs = np.where(np.isfinite(dist).any(axis=0), grid[np.argmin(dist, axis=0)], grid[np.argmax(vals, axis=0)])
    d1 = powers[1:] * 1.0
    d2 = powers[2:] * (powers[2:] - 1.0)
    for _ in range(8):
        p1 = np.sum(coef[:, 1:] * d1 * xs[:, None] ** (powers[1:] - 1), axis=1)
        p2 = np.sum(coef[:, 2:] * d2 * xs[:, None] ** (powers[2:] - 2), axis=1)
        step = np.where(p2 < 0, p1 / np.where(p2 < 0, p2, -1.0), 0.0)
        xs = np.clip(xs - step, -1.0, 1.0)
    p2 = np.sum(coef[:, 2:] * d2 * xs[:, None] ** (powers[2:] - 2), axis=1)
    interior = ok & (np.abs(xs) < 0.95) & (p2 < 0)
    # delta-method error, scaled by the reduced chi-square where the model fits worse than the noise
    g = np.zeros((n, degree + 1))
    g[:, 1:] = -(d1 * xs[:, None] ** (powers[1:] - 1)) / np.where(p2 < 0, p2, -1.0)[:, None]
    var_x = _quad(g, cov)
    model = (xp @ np.nan_to_num(coef)[..., None])[..., 0]
    dof = np.maximum(np.sum(wgt > 0, axis=1) - (degree + 1), 1)
    chi2_red = np.sum(wgt * (y - model) ** 2, axis=1) / dof
    # inflate only where the misfit is significant (beyond 2σ of the χ² distribution), not for noise
    significant = chi2_red > 1.0 + 2.0 * np.sqrt(2.0 / dof)
    independent = operator is None and correlated is None  # χ² of correlated residuals is no test of the model
    significant &= independent
    if independent:
        var_x *= np.where(significant, chi2_red, 1.0)
    q_fit = q_mid + xs * scale
    height = np.sum(coef * xs[:, None] ** powers, axis=1)
    xv = xs[:, None] ** powers
    height_var = _quad(xv, cov) * np.where(significant, chi2_red, 1.0)
    interior &= np.isfinite(q_fit) & np.isfinite(var_x) & np.isfinite(height)
    # statuses: too few valid bins; a window-edge first estimate or a fitted maximum outside the window is no
    # peak in the window; otherwise a polynomial without an interior maximum is a failed fit (fallback below)
    code = np.where(interior, status_code("ok"), status_code("fit_failed"))
    if first_estimate is None:
        in_win = np.flatnonzero(inside)
        at_edge = (idx0 == in_win[0]) | (idx0 == in_win[-1])
        outside = interior & ((q_fit < window[0]) | (q_fit > window[1]))
        code = np.where(at_edge | outside, status_code("no_maximum_in_window"), code)
    code = np.where(ok, code, status_code("too_few_counts"))
    status[have] = code[have]
    good = status == status_code("ok")
    fallback = status == status_code("fit_failed")
    interior &= good
    out["q_peak"] = np.where(good, q_fit, np.where(fallback, q[np.maximum(idx0, 0)], np.nan))
    out["q_err"] = np.where(good, np.sqrt(np.maximum(var_x, 0)) * scale, np.where(fallback, bw, np.nan))
    out["height"] = np.where(good, height, np.where(fallback, profiles[np.arange(n), np.maximum(idx0, 0)], np.nan))
    out["height_err"] = np.where(good, np.sqrt(np.maximum(height_var, 0)), np.nan)
    out["status"] = status
    out["prominence"], base_q = _prominence(q, profiles, window, smooth_sigma_bins, idx0, out["height"], True)
    # width at half prominence of the fitted polynomial, and its spread over draws of the coefficients
    level = out["height"] - 0.5 * out["prominence"]
    wid_x, xl, xr = _half_level_width(coef, xs, level, interior, crossings=True)
    wid = wid_x * scale
    out["fwhm"] = wid
    if width_error and interior.any():
        # delta method, as for the position: width = x_r − x_l with p(x) = level at both, level = (height + base)/2;
        # d x/d c_j = (d level/d c_j − x^j) / p'(x); the height moves by xs^j (p'(xs) = 0), the base by xb^j
        # where it lies inside the fit range (outside, it comes from the smoothed profile, not the polynomial)
        sel = np.flatnonzero(interior & np.isfinite(wid))
        c_sel = np.nan_to_num(cov[sel]) * np.where(significant[sel], chi2_red[sel], 1.0)[:, None, None]
        xb = (base_q[sel] - q_mid[sel]) / scale
        dlev = 0.5 * (xs[sel, None] ** powers + np.where(np.abs(xb) <= 1.0, 1.0, 0.0)[:, None]
                      * np.clip(xb, -1, 1)[:, None] ** powers)

        def slope(x):
            return np.sum(coef[sel, 1:] * d1 * x[:, None] ** (powers[1:] - 1), axis=1)

        gr = (dlev - xr[sel, None] ** powers) / slope(xr[sel])[:, None]
        gl = (dlev - xl[sel, None] ** powers) / slope(xl[sel])[:, None]
        gw = gr - gl
        err = np.full(n, np.nan)
        err[sel] = np.sqrt(np.maximum(_quad(gw, c_sel), 0)) * scale
        out["fwhm_err"] = err
    if flat_top_z is not None and good.any():
        _flat_top(out, status, np.flatnonzero(good), coef, cov, np.where(significant, chi2_red, 1.0), xs, q_mid, scale,
                  flat_top_z)
    return out


def fit_peaks_reported(q: np.ndarray, profiles: np.ndarray, sem: np.ndarray, window: tuple[float, float],
                       half_width: float | tuple[float, float] = 0.14, smooth_sigma_bins: float = 3.0, *args,
                       flat_top_z: float | None = None, **kwargs) -> dict[str, np.ndarray]:
    """What the peaks stage and ``sendmap.fit_peaks`` report: :func:`fit_peaks` and, with the flat-top test
    (``flat_top_z`` not None), :func:`flat_top_errors` on the same profiles (the plateau's honest error)."""
    res = fit_peaks(q, profiles, sem, window, half_width, smooth_sigma_bins, *args, flat_top_z=flat_top_z, **kwargs)
    if flat_top_z is not None:
        flat_top_errors(q, profiles, res, window, half_width, smooth_sigma_bins)
    return res


def _flat_top(out, status, sel, coef, cov, infl, xs, q_mid, scale, flat_top_z):
    """Fieller's confidence set of the maximum of the rows ``sel`` (``cov`` scaled by ``infl``): its 1-σ ends into
    ``out["q_max_lo"]``/``["q_max_hi"]``, and ``status`` no_clear_maximum where the ``flat_top_z`` set reaches the fit
    range's edge (:func:`stationary_point_set`); for both engines of :func:`fit_peaks`."""
    c_eff = np.nan_to_num(cov[sel]) * infl[sel][:, None, None]
    lo, hi = stationary_point_set(coef[sel], c_eff, xs[sel], 1.0)[:2]
    reach_l, reach_r = stationary_point_set(coef[sel], c_eff, xs[sel], flat_top_z)[2:]
    out["q_max_lo"][sel] = q_mid[sel] + lo * scale
    out["q_max_hi"][sel] = q_mid[sel] + hi * scale
    status[sel[reach_l | reach_r]] = status_code("no_clear_maximum")


def _propagate(cov, ok, xp, wgt, cols, operator, sem, correlated):
    """The fit's covariance through ``correlated`` errors or a denoising ``operator`` (:func:`fit_peaks`), in
    place in ``cov`` (N, d+1, d+1; (XᵀWX)⁻¹ on entry) at the ``ok`` rows."""
    if correlated is not None and (operator is None or isinstance(operator, LowRankOperator)):
        # the compiled form of _correlated_covariance on the ok rows in place: no gathered copies of the rows
        # (nor of sem and spk with NaN → 0: the kernel reads them so), the same numbers
        _correlated_covariance(cov, xp, wgt, cols, operator, sem, np.asarray(correlated[0], dtype=float).reshape(
            sem.shape), np.asarray(correlated[1], dtype=float), None if len(correlated) < 3
            else np.asarray(correlated[2], dtype=float), rows=np.flatnonzero(ok), out=cov)
    elif correlated is not None:
        spk = np.nan_to_num(np.asarray(correlated[0], dtype=float).reshape(sem.shape)[ok])
        cov[ok] = _correlated_covariance(cov[ok], xp[ok], wgt[ok], cols[ok], operator, np.nan_to_num(sem[ok]),
                                         spk, np.asarray(correlated[1], dtype=float),
                                         None if len(correlated) < 3 else np.asarray(correlated[2], dtype=float))
    elif isinstance(operator, LowRankOperator):
        cov[ok] = _propagated_covariance_lowrank(cov[ok], xp[ok], wgt[ok], cols[ok], operator,
                                                 np.nan_to_num(sem[ok]))
    elif operator is not None:
        cov[ok] = _propagated_covariance(cov[ok], xp[ok], wgt[ok], cols[ok], np.asarray(operator, float),
                                         np.nan_to_num(sem[ok]))


def smoothed_profiles(profiles: np.ndarray, smooth_sigma_bins: float) -> np.ndarray:
    """The profiles (N, nq) as the compiled fit smooths them for its first estimates and prominences: NaN and ±inf
    as ``np.nan_to_num`` makes them, then a Gaussian of ``smooth_sigma_bins`` bins along Q (edges repeated)."""
    return _gaussian_filter1d(np.nan_to_num(profiles), max(smooth_sigma_bins, 1e-6), axis=1, mode="nearest")


def _fit_compiled(q, profiles, sem, window, fit_range, smooth_sigma_bins, degree, operator, width_error,
                  first_estimate, correlated, flat_top_z, out, first_estimate_out=None, smoothed=None):
    """The body of :func:`fit_peaks` (one block, its arguments prepared; ``fit_range`` = (hl, hr, sym, scale)) in
    the compiled kernels of :mod:`sendmap.science.peak_kernels`; fills and returns ``out``."""
    from .peak_kernels import normal_equations_kernel, peak_summary_kernel

    hl, hr, sym, scale = fit_range
    n, nq = profiles.shape
    d1, m = degree + 1, hl + hr + 1
    inside = (q >= window[0]) & (q <= window[1])
    # one smoothing for the first estimate (smoothed_argmax) and the prominence (_prominence): the same numbers
    # (the caller's, where given: fit_peaks' ``smoothed``)
    smoothed = smoothed_profiles(profiles, smooth_sigma_bins) if smoothed is None else smoothed
    if first_estimate is None:
        idx0 = np.argmax(np.where(inside[None, :], smoothed, -np.inf), axis=1)
        idx0[~np.isfinite(profiles).any(axis=1)] = -1
    else:
        idx0 = np.asarray(first_estimate)
    idx0 = np.ascontiguousarray(idx0, dtype=np.int64)
    if first_estimate_out is not None:
        first_estimate_out[:] = idx0
    cols, xp, wgt, y = np.empty((n, m), np.int64), np.empty((n, m, d1)), np.empty((n, m)), np.empty((n, m))
    q_mid, ok, coef, cov = np.empty(n), np.empty(n, bool), np.empty((n, d1)), np.empty((n, d1, d1))
    sem = np.ascontiguousarray(sem, dtype=float)
    singular, a_mat, b_vec = np.empty(n, bool), np.empty((n, d1, d1)), np.empty((n, d1))
    normal_equations_kernel(np.ascontiguousarray(profiles, dtype=float), sem, idx0, q, hl, hr, sym, float(scale),
                            degree, cols, xp, wgt, y, q_mid, ok, coef, cov, singular, a_mat, b_vec)
    if singular.any():  # the pseudo-inverse where XᵀWX is singular or ill-conditioned (as _inverse)
        cov[singular] = np.linalg.pinv(a_mat[singular])
        coef[singular] = (cov[singular] @ b_vec[singular][..., None])[..., 0]
    if ok.any():
        _propagate(cov, ok, xp, wgt, cols, operator, sem, correlated)
    grid, grid_pow, wgrid, wgrid_pow = _max_grids(degree)
    in_win = np.flatnonzero(inside)
    res = {k: np.empty(n) for k in ("q_peak", "q_err", "height", "height_err", "prominence", "fwhm", "fwhm_err",
                                    "xs", "infl")}
    status = np.empty(n, np.int8)
    peak_summary_kernel(coef, cov, xp, wgt, y, q_mid, ok, idx0, first_estimate is not None, q, smoothed,
                        np.ascontiguousarray(profiles, dtype=float), inside, int(in_win[0]), int(in_win[-1]),
                        float(window[0]), float(window[1]), float(scale), operator is None and correlated is None,
                        bool(width_error), grid, grid_pow, wgrid, wgrid_pow, res["q_peak"], res["q_err"],
                        res["height"], res["height_err"], res["prominence"], res["fwhm"], res["fwhm_err"], status,
                        res["xs"], res["infl"])
    xs, infl = res.pop("xs"), res.pop("infl")
    out.update(res)
    out["status"] = status
    if flat_top_z is not None and (status == status_code("ok")).any():
        _flat_top(out, status, np.flatnonzero(status == status_code("ok")), coef, cov, infl, xs, q_mid, scale,
                  flat_top_z)
    return out


@functools.lru_cache(maxsize=8)
def _max_grids(degree: int):
    """The grids of :func:`fit_peaks` (201 points for the maximum, 401 for the width, on [-1, 1]) and their powers
    0 … ``degree`` (G, d+1), computed as the NumPy form computes them."""
    powers = np.arange(degree + 1)
    grid, wgrid = np.linspace(-1, 1, 201), np.linspace(-1.0, 1.0, 401)
    return (grid, np.ascontiguousarray(grid[:, None] ** powers), wgrid,
            np.ascontiguousarray((wgrid[None, :] ** powers[:, None]).T))


RIVAL_Z = 3.0
"""Test (2) of :func:`flat_top_errors`: a rival is a local maximum of the smoothed profile in the window, beyond the
peak's fit range, within this many σ of a difference of two levels (√2 × the fitted height's error) of its highest
value there. One more than :data:`FLAT_TOP_Z`: the top is the highest of many noisy points, so on a flat top it
exceeds the rest by the selection alone. On a clear peak the profile beyond the fit range is far below (a Gaussian
σ 0.045 1/Å is down to 67 % of its height 0.04 1/Å away, 1 % beyond the default ± 0.14 range): on the reduced
matrix's all-axes cell it fired at 20 of 1536 positions (noisy, low-contrast peaks with a narrow matched range). On
the analytic plateau of tests/test_peaks_flat.py it flags what the local test leaves but 19 % of the draws (noise
bumps that the data around them do bound)."""


def flat_top_errors(q: np.ndarray, profiles: np.ndarray, result: dict, window: tuple[float, float],
                    half_width: float | tuple[float, float] = 0.14, smooth_sigma_bins: float = 3.0) -> dict:
    """The flat-top test at the scale of the window, and the honest error where a peak has no clear maximum; in
    place in ``result`` (from :func:`fit_peaks` with ``flat_top_z`` on the same ``profiles`` (N, nq), fit range
    ``half_width`` and smoothing; the levels' errors are its ``height_err``, which carry the fit's error model)
    and returned.

    Two ways a top is not a clear maximum: (1) flat across the fit range: the local test of :func:`fit_peaks`
    (status already ``no_clear_maximum``); (2) a rival: somewhere in ``window`` (1/Å) beyond the peak's fit range
    (``half_width``, as fitted) the profile smoothed by ``smooth_sigma_bins`` comes within :data:`RIVAL_Z` σ of a
    difference (√2 × ``height_err``) of its highest value inside the window at a local maximum inside the window
    (:func:`_top_reach`; a profile rising into the window's edge is a flank, no rival): another maximum as high
    within the noise, farther away than the fit could see. (Also calling a top that merely stays in that band
    beyond the fit range a rival flagged 45 of 1536 positions of the reduced matrix's all-axes cell, 25 of them
    classed right before, mostly SEI Type 2 with LiF at 2 × 10⁴ e⁻: rules accuracy 0.792 → 0.779; as now 20,
    0.787. A top flat across the fit range is test (1)'s.) A real halo can hold both: in the
    scan of tests/test_peaks_flat.py built from the real metallic-glass pattern (whose centres the calibration
    put 19 px off, smearing the halo), the I·Q top is level within 1 % over 0.255–0.37 1/Å with two shallow
    bumps, and per position the noise decides which one the fit takes: maxima 0.07 1/Å apart with errors of
    0.005. Positions whose fit failed (status ``fit_failed``, no interior maximum: often a flat top too) keep that
    status: they have no peak in the maps either.

    Their error: the fit range does not bound the maximum's location, so it comes from the profile across the
    window: the plateau, every Q in ``window`` where the smoothed profile (``smooth_sigma_bins``) reaches its highest
    value there within :data:`FLAT_TOP_Z` σ of a difference of two levels (connected to the peak, or at a local
    maximum; √2 × ``height_err``; the top is the
    highest of many noisy points, biased up by the selection: a 1-σ band left a third of the analytic plateau of
    tests/test_peaks_flat.py out, test (2)'s 3 σ made the set 1.5 × wider than the spread of the fitted maxima on
    the real scan), joined with the peak's own 1-σ set
    (:func:`stationary_point_set`): ``q_max_lo``, ``q_max_hi``. ``q_peak`` becomes its centre and
    ``q_err`` its half width, (hi − lo)/2 (or the fit's own σ where larger): the same definition as for a clear
    maximum, whose 1-σ set is q̂ ± the delta method's σ. The fitted maximum itself is no estimate there: the noise
    puts it anywhere on the plateau, mostly near one of its ends (on the real scan: two modes 0.1 1/Å apart).
    """
    q = np.asarray(q, dtype=float)
    profiles = np.asarray(profiles, dtype=float).reshape(-1, q.size)
    status = np.asarray(result["status"])
    inside = (q >= window[0]) & (q <= window[1])
    if q.size < 3 or inside.sum() < 3:
        return result
    hl, hr = (half_width, half_width) if np.ndim(half_width) == 0 else half_width

    # (2) a rival: the top continues beyond the peak's fit range, or another maximum there is as high within noise
    cand = np.flatnonzero(status == status_code("ok"))
    lo = np.array(result["q_max_lo"], dtype=float)
    hi = np.array(result["q_max_hi"], dtype=float)
    if cand.size:
        p = _gaussian_filter1d(np.nan_to_num(profiles[cand]), max(smooth_sigma_bins, 1e-6), axis=1,
                                      mode="nearest")
        qp = result["q_peak"][cand]
        with np.errstate(invalid="ignore"):
            band = np.where(inside[None, :], p, -np.inf).max(axis=1) - RIVAL_Z * np.sqrt(2.0) * result["height_err"][cand]
        (c_lo, c_hi), (m_lo, m_hi) = _top_reach(q, p, band, qp, inside)
        rival = (m_lo < qp - hl) | (m_hi > qp + hr)
        status[cand[rival]] = status_code("no_clear_maximum")
    flat = np.flatnonzero(status == status_code("no_clear_maximum"))
    if flat.size:
        # the plateau: every Q in the window where the smoothed profile is as high as its top within FLAT_TOP_Z σ
        # of a difference of two levels (√2 × the height's error), joined with the fit's own 1-σ set
        p = _gaussian_filter1d(np.nan_to_num(profiles[flat]), max(smooth_sigma_bins, 1e-6), axis=1,
                                      mode="nearest")
        with np.errstate(invalid="ignore"):
            top = np.where(inside[None, :], p, -np.inf).max(axis=1)  # (the smoothed profile's own top, not the
            level = top - FLAT_TOP_Z * np.sqrt(2.0) * np.nan_to_num(result["height_err"][flat])  # polynomial's)
        (c_lo, c_hi), (m_lo, m_hi) = _top_reach(q, p, level, result["q_peak"][flat], inside)
        lo[flat] = np.fmin(np.fmin(lo[flat], np.fmin(c_lo, m_lo)), result["q_peak"][flat])
        hi[flat] = np.fmax(np.fmax(hi[flat], np.fmax(c_hi, m_hi)), result["q_peak"][flat])
        # the set's centre and half width, as for a clear maximum (where the half width is the delta method's σ)
        result["q_peak"][flat] = 0.5 * (lo[flat] + hi[flat])
        result["q_err"][flat] = np.fmax(result["q_err"][flat], 0.5 * (hi[flat] - lo[flat]))
    result["q_max_lo"], result["q_max_hi"], result["status"] = lo, hi, status
    return result


def _top_reach(q, p, level, q0, inside):
    """Where smoothed profiles ``p`` (N, nq) stay at or above ``level`` (N,): the connected run of bins inside the
    window (``inside``) around the bin nearest ``q0`` (N,) — (lo, hi) 1/Å, NaN where that bin is below the level —
    and the outermost interior local maxima (not at the window's edge: a profile rising into the edge is a flank,
    not a maximum) at or above it — (lo, hi), NaN where none."""
    n, nq = p.shape
    gi = np.arange(nq)[None, :]
    j0 = np.clip(np.searchsorted(q, np.nan_to_num(q0, nan=q[0])), 0, nq - 1)
    above = (p >= np.asarray(level, float)[:, None]) & inside[None, :]
    left = np.where(~above & (gi < j0[:, None]), gi, -1).max(axis=1) + 1  # the run's first bin
    right = np.where(~above & (gi > j0[:, None]), gi, nq).min(axis=1) - 1  # its last
    has = above[np.arange(n), j0]
    c_lo = np.where(has, q[np.clip(left, 0, nq - 1)], np.nan)
    c_hi = np.where(has, q[np.clip(right, 0, nq - 1)], np.nan)
    interior = inside.copy()
    idx = np.flatnonzero(inside)
    interior[idx[0]] = interior[idx[-1]] = False
    local = np.zeros_like(above)
    local[:, 1:-1] = (p[:, 1:-1] > p[:, :-2]) & (p[:, 1:-1] >= p[:, 2:])
    peaks = local & above & interior[None, :]
    anyp = peaks.any(axis=1)
    m_lo = np.where(anyp, q[np.argmax(peaks, axis=1)], np.nan)
    m_hi = np.where(anyp, q[nq - 1 - np.argmax(peaks[:, ::-1], axis=1)], np.nan)
    return (c_lo, c_hi), (m_lo, m_hi)


RECENTRE_ITERATIONS = 3
"""Re-centrings of the fit range on the fitted maximum (:func:`_recentred`): on synthetic profiles (M = 3, 10, 30
and no speckle, 5 × 10³ and 2 × 10⁴ e⁻, 1000 patterns each of dev seed 41) the first refits 33-46 % of them at the
next bin, the second ≤ 4.3 %, the third ≤ 0.7 % (ranges alternating between two bins are settled without a
refit); a range that would move on after the third stays where it is."""


def _recentred(q, profiles, sem, window, half_width, smooth_sigma_bins, degree, operator, width_error, correlated,
               beta, return_centre=False, flat_top_z=None, engine="compiled", smoothed=None):
    """:func:`fit_peaks` with the fit range centred on the fitted maximum, and the error of that estimator.

    Estimator. The range is first centred on the smoothed profile's maximum (bin c₀); then, up to
    :data:`RECENTRE_ITERATIONS` times, on the bin nearest the fitted maximum, refitting where that bin differs
    (the refit is kept where it has an interior maximum inside the window). So the range's centre c is the bin
    nearest the estimate q̂ itself, a definite function of the estimate rather than of a second, smoothed one.
    Where the fits alternate between two bins (each range's maximum nearer the other's centre: the continuous
    fixed point lies between them), q̂ is that fixed point, F interpolated linearly between the two ranges; left
    to the iteration's parity instead, it would move the scan's mean by ~0.0005 1/Å.

    Error. A polynomial is not the peak's shape: its maximum moves when the range moves, by β = ∂q̂/∂c (≈ −0.2
    for degree-5 fits over ± 0.14 1/Å of probe-convolved synthetic SRO peaks: moving the range right by a bin
    moves the maximum left by a fifth of one, as the range's far flank pulls it back). The delta-method σ is
    that of a fixed range, q̂ = F(y; c). With c = q̂ + u (u the rounding to a bin, uniform over ± half a bin) the
    estimate solves q̂ = F(y; q̂ + u), and to first order (implicit differentiation) q̂ − q₀ = (F(y; c₀) − q₀ + β u)
    / (1 − β): the range's feedback scales the noise's effect by 1/(1 − β) (β < 0: the estimate is steadier than
    a fixed range's, whose σ then over-covers: ±1σ coverage 0.72–0.79 on speckled scans at 2 × 10⁴ e⁻ before),
    and the rounding adds β²·bw²/12: σ = √(σ_F² + β² bw²/12) / (1 − β) where the noise moves the range over
    many bins; where it moves it much less than a bin the range stays put and σ → σ_F: :func:`recentred_error` has
    the whole curve (already at σ_F ≈ ¼ bin it is within 3 % of the first). The model takes one noise common to the
    ranges one bin apart: true for wide ranges (± 0.14 1/Å, 23 bins, the synthetic scans where it was checked), not
    for narrow matched ones: on the real Ta2O5 halo (7 and 9 bins, β = +0.13) the re-centred error is 1.1 × too
    wide, coverage 0.79 at 2 × 10⁴ e⁻, which is why :func:`fit_peaks` does not re-centre by default. β is a
    property of the peak's shape and the polynomial, not of one profile's noise: ``beta`` comes from a mean profile (:func:`window_feedback`).
    Measured per position instead, its noise (interquartile range −0.32 to −0.11 at M = 10, 2 × 10⁴ e⁻) scatters
    the σ and the coverage falls to 0.56–0.65. Where β is undefined (no mean peak) or β ≥ 1 (the fixed point is
    not stable: the estimate would run with the range), σ_F is kept. With ``return_centre`` also the range's centre
    bin per profile (−1 where no peak)."""
    q = np.asarray(q, dtype=float)
    profiles = np.asarray(profiles, dtype=float).reshape(len(profiles), -1)
    sem = np.asarray(sem, dtype=float).reshape(profiles.shape)
    args = (window, half_width, smooth_sigma_bins, degree)
    # the first fit's starting bins are the smoothed maxima, the range's first centre below (one smoothing for both)
    first = np.full(len(profiles), -1, np.int64) if smooth_sigma_bins > 0 else None
    # (one smoothing for the first fit and the refits: each refit's rows are the same rows of it)
    if smoothed is None and engine == "compiled":
        smoothed = smoothed_profiles(profiles, smooth_sigma_bins)
    out = fit_peaks(q, profiles, sem, *args, operator, width_error, correlated=correlated, recentre=False,
                    flat_top_z=flat_top_z, engine=engine, first_estimate_out=first, smoothed=smoothed)
    nq = q.size
    ok = _has_maximum(out["status"])
    if nq < 2 or not ok.any():
        return (out, np.full(len(profiles), -1)) if return_centre else out
    bw = float(q[1] - q[0])

    def nearest(qp):
        return np.clip(np.rint((np.nan_to_num(qp) - q[0]) / bw), 0, nq - 1).astype(int)

    centre = first if first is not None else smoothed_argmax(q, profiles, window, smooth_sigma_bins)
    prev_c, prev_q = np.full(len(profiles), -1), np.full(len(profiles), np.nan)
    settled = ~ok
    for _ in range(RECENTRE_ITERATIONS):
        new = nearest(out["q_peak"])
        # a 2-cycle (the fit at c points to c', the fit at c' back to c): the range's centre lies between the bins;
        # the fixed point q = F(q) of the fitted maximum F interpolated linearly between the two ranges
        cyc = np.flatnonzero(~settled & (new != centre) & (new == prev_c))
        if cyc.size:
            qa, qb = out["q_peak"][cyc], prev_q[cyc]
            ca, cb = q[centre[cyc]], q[prev_c[cyc]]
            slope = (qb - qa) / (cb - ca)
            with np.errstate(invalid="ignore", divide="ignore"):
                fixed = (qa - slope * ca) / (1.0 - slope)
            good = np.isfinite(fixed) & (slope < 1.0)
            out["q_peak"][cyc[good]] = fixed[good]
            settled[cyc] = True
        settled |= ok & (new == centre)
        move = np.flatnonzero(~settled & (new != centre))
        if not move.size:
            break
        corr = None if correlated is None else (np.asarray(correlated[0], dtype=float).reshape(profiles.shape)[move],
                                                *correlated[1:])
        r = fit_peaks(q, profiles[move], sem[move], *args, operator, width_error, first_estimate=new[move],
                      correlated=corr, recentre=False, flat_top_z=flat_top_z, engine=engine,
                      smoothed=None if smoothed is None else smoothed[move])
        keep = _has_maximum(r["status"]) & (r["q_peak"] >= window[0]) & (r["q_peak"] <= window[1])
        take = move[keep]
        settled[move[~keep]] = True  # the range stays where it is
        prev_c[take], prev_q[take] = centre[take], out["q_peak"][take]
        for k in out:
            out[k][take] = r[k][keep]
        centre[take] = new[take]
    ok = out["status"] == status_code("ok")
    beta = np.nan if beta is None else float(beta)
    if np.isfinite(beta) and beta < 1.0:
        out["q_err"] = np.where(ok, recentred_error(out["q_err"], beta, bw), out["q_err"])
    return (out, np.where(_has_maximum(out["status"]), centre, -1)) if return_centre else out


def _has_maximum(status: np.ndarray) -> np.ndarray:
    """Where the fit found an interior maximum (status ok or no_clear_maximum): the re-centring follows both."""
    return (status == status_code("ok")) | (status == status_code("no_clear_maximum"))


def recentred_error(sigma: np.ndarray, beta: float, bin_width: float, n_offsets: int = 64,
                    n_noise: int = 161) -> np.ndarray:
    """The 1-σ error of the re-centred estimator (:func:`_recentred`) from σ_F, the fixed range's (1/Å, any shape).

    In bins, with F(c) = x + β c the fitted maximum of the range centred on bin c (x = a + ε: a its noise-free value
    at c = 0, ε ~ N(0, σ_F²)), the estimator settles on the bin c = round(x / (1 − β)) where |x − (1 − β) c| ≤ ½,
    q̂ = x + β c, and between such bins (β < 0 leaves gaps of −β bins) takes the interpolated fixed point
    x / (1 − β). The continuous fixed point a / (1 − β) is the noise-free estimate, so the error is
    e = q̂ − a / (1 − β), and σ² = E_a E_ε e² with a uniform over one period (1 − β). Where σ_F ≫ a bin this is
    σ_F / (1 − β) (the feedback, implicit differentiation); where σ_F ≪ a bin the range does not move with
    the noise and it is σ_F (plus the staircase's own ≤ |β|/2-bin offset): the feedback applies only as far as
    the noise moves the range. Computed on a grid of σ_F / bin (0.01 to 30) and interpolated (the grid's factors
    once per β: :func:`_recentred_factor`)."""
    sig = np.asarray(sigma, dtype=float)
    grid, factor = _recentred_factor(float(beta), int(n_offsets), int(n_noise))
    s_bins = sig / bin_width
    with np.errstate(invalid="ignore"):
        f = np.interp(np.log(np.clip(s_bins, grid[0], grid[-1])), np.log(grid), factor)
        # beyond the grid: the limits (σ_F ≫ a bin: 1/(1 − β); ≪: the staircase offset in quadrature)
        return np.where(np.isfinite(sig), sig * f, sig)


@functools.lru_cache(maxsize=16)
def _recentred_factor(beta: float, n_offsets: int, n_noise: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`recentred_error`'s σ / σ_F on its grid of σ_F / bin, for one β (the same for every block of a scan's
    positions; ~0.1 s to compute, so kept). Returns (grid, factor), both read-only."""
    grid = np.geomspace(0.01, 30.0, 48)
    a = (np.arange(n_offsets) + 0.5) / n_offsets * (1.0 - beta)
    z = np.linspace(-5.0, 5.0, n_noise)
    w = np.exp(-0.5 * z ** 2)
    w /= w.sum()
    x = a[None, :, None] + grid[:, None, None] * z[None, None, :]  # (grid, offsets, noise)
    c = np.rint(x / (1.0 - beta))
    settled = np.abs(x - (1.0 - beta) * c) <= 0.5
    qh = np.where(settled, x + beta * c, x / (1.0 - beta))
    e2 = ((qh - a[None, :, None] / (1.0 - beta)) ** 2 * w).sum(axis=2).mean(axis=1)
    factor = np.sqrt(e2) / grid
    grid.flags.writeable = False
    factor.flags.writeable = False
    return grid, factor


def window_feedback(q: np.ndarray, profiles: np.ndarray, sem: np.ndarray, rows: np.ndarray | None,
                    window: tuple[float, float], half_width: float | tuple[float, float] = 0.14,
                    smooth_sigma_bins: float = 3.0, degree: int = 5) -> dict:
    """β = ∂q̂/∂c, how far the fitted maximum moves per 1/Å the fit range moves (:func:`_recentred`), on the mean
    of the ``rows`` (N,) bool (None: all) of ``profiles`` / ``sem`` (N, nq): the re-centred fit of that mean with
    the range one bin either side of its centre, (q̂(c + 1) − q̂(c − 1)) / (2 bw). Returns {"beta": β (NaN where
    the mean has no peak in the window), "centre_q": the range's centre (1/Å)}."""
    q = np.asarray(q, dtype=float)
    p = np.asarray(profiles, dtype=float).reshape(-1, q.size)
    s = np.asarray(sem, dtype=float).reshape(p.shape)
    from .denoise_kernels import masked_column_means

    sel = np.ones(len(p), bool) if rows is None else np.asarray(rows, bool).reshape(-1)
    none = {"beta": float("nan"), "centre_q": None}
    # the mean over the rows with any finite value (one compiled pass, the NumPy expressions' numbers)
    mean, mean_s, n_rows = masked_column_means(p, s, sel)
    if q.size < 2 or not n_rows:
        return none
    args = (window, half_width, smooth_sigma_bins, degree)
    c = int(_recentred(q, mean[None], mean_s[None], *args, None, False, None, None, return_centre=True)[1][0])
    if c < 0:
        return none
    bw = float(q[1] - q[0])
    qs = [fit_peaks(q, mean[None], mean_s[None], *args, width_error=False, first_estimate=np.array([c + k]),
                    recentre=False)["q_peak"][0] for k in (1, -1)]
    beta = (qs[0] - qs[1]) / (2 * bw)
    return {"beta": float(beta) if np.isfinite(beta) else float("nan"), "centre_q": float(q[c])}


def _inverse(a: np.ndarray) -> np.ndarray:
    """Inverses of a stack of normal matrices XᵀWX (N, k, k): LU (≈ 3× faster than the SVD of ``pinv``), the
    pseudo-inverse for those that are singular or ill-conditioned (condition number ≥ 1e12)."""
    try:
        inv = np.linalg.inv(a)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(a)
    # ‖A‖₁‖A⁻¹‖₁ estimates the condition number; rows beyond 1e12 get the pseudo-inverse
    cond = np.abs(a).sum(axis=1).max(axis=1) * np.abs(inv).sum(axis=1).max(axis=1)
    bad = ~np.isfinite(cond) | (cond >= 1e12)
    if bad.any():
        inv[bad] = np.linalg.pinv(a[bad])
    return inv


def _quad(v: np.ndarray, m: np.ndarray) -> np.ndarray:
    """vᵀ M v per row: v (N, k), M (N, k, k) → (N,)."""
    return np.sum(v * (m @ v[..., None])[..., 0], axis=-1)


def _propagated_covariance(m_inv: np.ndarray, xp: np.ndarray, wgt: np.ndarray, cols: np.ndarray,
                           operator: np.ndarray, sem: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Covariance of polynomial coefficients fitted to y' = L y (y with independent errors ``sem``).

    The fit is c = M y' with M = (XᵀWX)⁻¹XᵀW (``m_inv`` = (XᵀWX)⁻¹, (N, d+1, d+1)); so
    C = (M L_cols) diag(sem²) (M L_cols)ᵀ, L_cols the operator's rows of each position's fit range.
    Computed in chunks of positions to bound memory ((chunk, d+1, nq) at a time).
    """
    out = np.empty_like(m_inv)
    for s in range(0, len(m_inv), chunk):
        e = s + chunk
        mm = m_inv[s:e] @ np.swapaxes(xp[s:e] * wgt[s:e, :, None], 1, 2)  # (B, d+1, m)
        gmat = mm @ operator[cols[s:e]]  # (B, d+1, nq)
        out[s:e] = (gmat * sem[s:e, None, :] ** 2) @ np.swapaxes(gmat, 1, 2)
    return out


def _propagated_covariance_lowrank(m_inv: np.ndarray, xp: np.ndarray, wgt: np.ndarray, cols: np.ndarray,
                                   operator: LowRankOperator, sem: np.ndarray) -> np.ndarray:
    """:func:`_propagated_covariance` for L = diag(pass) + A B: the same C, in O(k²) per position.

    With S = diag(sem²) and R the fit range's rows, L_R S L_Rᵀ = diag_R(pass · sem²) + A_R (B S Bᵀ) A_Rᵀ (the
    cross terms vanish: B is zero on the passed bins), so C = M diag_R(pass · sem²) Mᵀ + (M A_R) K (M A_R)ᵀ with
    K = B S Bᵀ, one (N, nq) × (nq, k²) product for all positions.
    """
    n, k = len(m_inv), operator.b.shape[0]
    s2 = sem ** 2
    kmat = (s2 @ (operator.b[:, None, :] * operator.b[None, :, :]).reshape(k * k, -1).T).reshape(n, k, k)
    mm = m_inv @ np.swapaxes(xp * wgt[..., None], 1, 2)  # (N, d+1, m): the fit's linear map M
    ma = mm @ operator.a[cols]  # (N, d+1, k)
    d = np.take_along_axis(s2, cols, axis=1) * operator.passed[cols]  # (N, m)
    return (mm * d[:, None, :]) @ np.swapaxes(mm, 1, 2) + ma @ kmat @ np.swapaxes(ma, 1, 2)


def _correlated_covariance(m_inv: np.ndarray, xp: np.ndarray, wgt: np.ndarray, cols: np.ndarray, operator,
                           sem: np.ndarray, spk: np.ndarray, correlation: np.ndarray,
                           poisson_correlation: np.ndarray | None = None, rows: np.ndarray | None = None,
                           out: np.ndarray | None = None) -> np.ndarray:
    """Covariance of polynomial coefficients fitted (weights ``wgt``) to y' = L y, where y's bins have the
    covariance Σ = diag(sem² − spk²) + diag(spk)·K·diag(spk), K(i, j) = correlation[|i − j|] (0 beyond its end).

    c = M y' with M = (XᵀWX)⁻¹XᵀW over the fit range R; G = M L_R (L the identity without ``operator``; a dense
    (nq, nq) array or a :class:`LowRankOperator`), so C = G Σ Gᵀ = G diag(sem² − spk²) Gᵀ
    + (G s) K (G s)ᵀ, (G s) = G·diag(spk), K the (m, m) Toeplitz matrix of the bins in use: O((d+1)·m²) per position
    as one matrix product over all positions. sem, spk: (N, nq); m_inv, xp, wgt, cols as in :func:`_propagated_covariance`.
    ``poisson_correlation`` (lags 0, 1, …; :func:`sendmap.science.polar.poisson_bin_correlation`): the rest (Poisson)
    is correlated between neighbouring bins too (pixels split between them), Σ's first part then
    diag(p)·K_P·diag(p), p = √(sem² − spk²).

    ``rows``, ``out`` (without a dense ``operator``): only those rows are computed, into ``out`` (which may be
    ``m_inv``, contiguous float64, in place; the other rows are left as they are); NaN and ±inf in sem and spk
    count as ``np.nan_to_num`` makes them."""
    n, nq = sem.shape
    if operator is None or isinstance(operator, LowRankOperator):  # the same sums, compiled, per position
        from .fit_covariance import correlated_covariance_kernel

        low = operator is not None
        out = np.empty_like(m_inv, dtype=float) if out is None else out
        pc = np.zeros(0) if poisson_correlation is None else _trim_lags(poisson_correlation)
        nq_ = sem.shape[1]
        correlated_covariance_kernel(
            np.ascontiguousarray(m_inv, float), np.ascontiguousarray(xp, float), np.ascontiguousarray(wgt, float),
            np.ascontiguousarray(cols, np.int64), low,
            operator.passed if low else np.zeros(nq_, bool),
            np.ascontiguousarray(operator.a if low else np.zeros((nq_, 0))),
            np.ascontiguousarray(operator.b if low else np.zeros((0, nq_))),
            np.ascontiguousarray(sem, float), np.ascontiguousarray(spk, float), _trim_lags(correlation), pc, out,
            np.arange(n, dtype=np.int64) if rows is None else np.ascontiguousarray(rows, np.int64))
        return out
    return _correlated_covariance_numpy(m_inv, xp, wgt, cols, operator, sem, spk, correlation, poisson_correlation)


def _trim_lags(correlation) -> np.ndarray:
    """A correlation by lag without its trailing zero lags (they add exact zeros; the Poisson correlation of
    :func:`sendmap.science.polar.poisson_bin_correlation` is [1, 0.22, 0, 0]), at least 2 lags kept where given."""
    c = np.asarray(correlation, float)
    nz = np.flatnonzero(c)
    return c[:max(int(nz[-1]) + 1 if nz.size else 1, min(c.size, 2))]


def _correlated_covariance_numpy(m_inv, xp, wgt, cols, operator, sem, spk, correlation, poisson_correlation=None):
    """:func:`_correlated_covariance` as NumPy products (the dense-operator case, and the reference of the compiled
    form in the tests)."""
    n, nq = sem.shape
    mm = m_inv @ np.swapaxes(xp * wgt[..., None], 1, 2)  # (N, d+1, m): the fit's linear map M
    rows = np.arange(n)[:, None]
    if operator is None:  # only the fit range's bins enter: work on them
        gmat = mm
        s2 = np.take_along_axis(sem, cols, axis=1) ** 2
        sp = np.take_along_axis(spk, cols, axis=1)
    else:
        if isinstance(operator, LowRankOperator):
            gmat = (mm @ operator.a[cols]) @ operator.b  # (N, d+1, nq)
            gt = np.swapaxes(gmat, 1, 2)  # a view: the identity part of the passed bins added in place
            gt[rows, cols] += np.swapaxes(mm * operator.passed[cols][:, None, :], 1, 2)
        else:
            gmat = mm @ np.asarray(operator, float)[cols]
        s2, sp = sem ** 2, spk
    sp = np.minimum(sp, np.sqrt(s2))  # the correlated part is part of the variance, never more
    h = gmat * sp[:, None, :]
    m = gmat.shape[2]
    corr = np.asarray(correlation, float)[:m]
    toeplitz = np.zeros((m, m))  # K over the bins in use (one (N·(d+1), m) @ (m, m) product, not one per lag)
    for lag, k in enumerate(corr):
        i = np.arange(m - lag)
        toeplitz[i, i + lag] = toeplitz[i + lag, i] = k
    hk = (h.reshape(-1, m) @ toeplitz).reshape(h.shape)
    # G diag(sem² − spk²) Gᵀ + (G s) K (G s)ᵀ as one batched product over the two parts side by side
    if poisson_correlation is not None and len(poisson_correlation) > 1:
        hp = gmat * np.sqrt(np.clip(s2 - sp ** 2, 0.0, None))[:, None, :]
        kp = np.zeros((m, m))
        for lag, k in enumerate(np.asarray(poisson_correlation, float)[:m]):
            i = np.arange(m - lag)
            kp[i, i + lag] = kp[i + lag, i] = k
        left = np.concatenate([(hp.reshape(-1, m) @ kp).reshape(hp.shape), hk], axis=2)
        right = np.concatenate([hp, h], axis=2)
    else:
        left = np.concatenate([gmat * (s2 - sp ** 2)[:, None, :], hk], axis=2)
        right = np.concatenate([gmat, h], axis=2)
    return left @ np.swapaxes(right, 1, 2)


def _half_level_width(coef: np.ndarray, x0: np.ndarray, level: np.ndarray, valid: np.ndarray,
                      n_grid: int = 401, crossings: bool = False):
    """Distance between the crossings of polynomial(s) ``coef`` (N, d+1) through ``level`` nearest to the
    maximum at ``x0`` on each side, in the polynomial's local coordinate [-1, 1]; NaN where a side does
    not cross inside [-1, 1] (linear interpolation on an ``n_grid`` grid). With ``crossings``, also the left
    and right crossings themselves."""
    n = len(coef)
    grid = np.linspace(-1.0, 1.0, n_grid)
    vals = np.nan_to_num(coef) @ (grid[None, :] ** np.arange(coef.shape[1])[:, None])  # (N, G)
    below = vals < level[:, None]
    gi = np.arange(n_grid)[None, :]
    i0 = np.clip(np.searchsorted(grid, x0), 1, n_grid - 1)[:, None]
    # right: first grid point at/after the maximum below the level; left: last before it
    r = np.where(below & (gi >= i0), gi, n_grid).min(axis=1)
    lft = np.where(below & (gi < i0), gi, -1).max(axis=1)
    rows = np.arange(n)

    def cross(j_lo, j_hi):
        v0, v1 = vals[rows, j_lo], vals[rows, j_hi]
        f = np.where(v1 != v0, (level - v0) / np.where(v1 != v0, v1 - v0, 1.0), 0.0)
        return grid[j_lo] + f * (grid[j_hi] - grid[j_lo])

    ok = valid & (r < n_grid) & (lft >= 0) & np.isfinite(level)
    xr = cross(np.clip(r - 1, 0, n_grid - 1), np.clip(r, 0, n_grid - 1))
    xl = cross(np.clip(lft, 0, n_grid - 1), np.clip(lft + 1, 0, n_grid - 1))
    with np.errstate(invalid="ignore"):
        width = np.where(ok, xr - xl, np.nan)
    if crossings:
        return width, np.where(ok, xl, np.nan), np.where(ok, xr, np.nan)
    return width


def _prominence(q, profiles, window, sigma_bins, idx0, height, return_base_q: bool = False):
    """Height above the higher of the lowest smoothed values left and right of the peak inside the window
    (and, if asked, the Q of that base)."""
    p = _gaussian_filter1d(np.nan_to_num(profiles), max(sigma_bins, 1e-6), axis=1, mode="nearest")
    inside = (q >= window[0]) & (q <= window[1])
    j = np.arange(q.size)[None, :]
    lv = np.where(inside[None, :] & (j <= idx0[:, None]), p, np.inf)
    rv = np.where(inside[None, :] & (j >= idx0[:, None]), p, np.inf)
    left, right = lv.min(axis=1), rv.min(axis=1)
    base = np.maximum(left, right)
    prom = np.where(idx0 >= 0, height - base, np.nan)
    if not return_base_q:
        return prom
    base_q = np.where(left >= right, q[np.argmin(lv, axis=1)], q[np.argmin(rv, axis=1)])
    return prom, base_q


def fit_second_peak(q: np.ndarray, profiles: np.ndarray, sem: np.ndarray, window: tuple[float, float],
                    half_width: float = 0.16, smooth_sigma_bins: float = 3.0, degree: int = 4,
                    operator: np.ndarray | None = None, min_prominence_sigma: float = 3.0,
                    map_blocks: Callable | None = None,
                    correlated: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The second SRO peak (≈ 1.75–1.8 × the first in amorphous solids) where present.

    Same fit as :func:`fit_peaks` inside ``window`` (1/Å), started from the highest local maximum of the
    smoothed profile inside the window (a falling shoulder is no peak); "present" where there is one, the
    fitted maximum is interior (status 0) and inside the window, and stands above the higher of its two flanking minima by more than
    ``min_prominence_sigma`` × the profile's standard error at the peak. Returns ``q_peak``, ``q_err``,
    ``height``, ``prominence``, ``fwhm``, ``fwhm_err`` (NaN where absent) and ``present`` (bool).
    ``map_blocks``, ``correlated``: as in :func:`fit_peaks`.
    """
    profiles = np.asarray(profiles, dtype=float).reshape(len(profiles), -1)
    if profiles.shape[1] < degree + 2:  # no profile to speak of (an empty Q range): nothing present
        out = {k: np.full(len(profiles), np.nan) for k in ("q_peak", "q_err", "height", "height_err", "prominence",
                                                            "fwhm", "fwhm_err")}
        out["present"] = np.zeros(len(profiles), bool)
        return out
    # first estimate: the highest local maximum of the smoothed profile strictly inside the window (the
    # plain maximum would often be the window's low edge, on the first peak's falling flank)
    p = smoothed_profiles(profiles, smooth_sigma_bins)  # (also the fit's, for its prominences: not smoothed again)
    from .peak_kernels import highest_local_maximum

    inside = (q >= window[0]) & (q <= window[1])
    idx0 = highest_local_maximum(p, inside)
    r = fit_peaks(q, profiles, sem, window, half_width, smooth_sigma_bins, degree, operator=operator, width_error=False,
                  first_estimate=idx0, map_blocks=map_blocks, correlated=correlated, smoothed=p)
    present = ((idx0 >= 0) & (r["status"] == 0)
               & (r["prominence"] > min_prominence_sigma * np.sqrt(2.0) * r["height_err"])
               & (r["q_peak"] >= window[0]) & (r["q_peak"] <= window[1]))
    out = {k: np.where(present, v, np.nan) for k, v in r.items() if k != "status"}
    out["present"] = present
    return out


SPECKLE_POOL_POSITIONS = 5
"""k × k scan positions over which the speckle's normalised variance V(Q) is averaged for the peak fit's errors
(:func:`pooled_position_mean`). One pattern's V comes from the ~10 independent speckle grains its ring holds (a
ring of radius Q, grains a probe disk 2·r wide, Friedel pairs alike: πQ/(2r) ≈ 6 at 0.3 1/Å and 2 mrad), plus
Poisson noise: its relative scatter between positions of a uniform synthetic film is 0.31 (M = 3), 0.45 (M = 10)
and 1.0 (M = 30) at 2 × 10⁴ e⁻ (dev seeds 41-43). An error built on it scatters by half that, and intervals of
± a scattered σ̂ cover less than ± the true σ (as Student's t intervals with few degrees of freedom do: ~0.58
instead of 0.68 where σ̂ scatters by ~30 %). V is a property of the material under the beam, not of one
pattern's grains, so the fit takes the mean over 5 × 5 neighbours: 25 patterns, a relative scatter of
0.06-0.2, σ̂ to 3-10 %."""


def pooled_position_mean(values: np.ndarray, valid: np.ndarray, k: int = SPECKLE_POOL_POSITIONS) -> np.ndarray:
    """Mean of ``values`` (Ry, Rx, nq) over the k × k neighbourhood of every position (centred, odd k; scan
    edges use the neighbours they have), counting only positions where ``valid`` (Ry, Rx) and the value is
    finite, per bin. Where a neighbourhood holds none, the position's own value is kept (NaN stays NaN).

    >>> v = np.arange(9.0).reshape(3, 3, 1); ok = np.ones((3, 3), bool); ok[0, 0] = False
    >>> p = pooled_position_mean(v, ok, 3)  # (1, 1): the mean of 1..8; (0, 0): of 1, 3 and 4 (itself left out)
    >>> float(p[1, 1, 0]), round(float(p[0, 0, 0]), 3)
    (4.5, 2.667)
    """
    from .box_kernels import pooled_mean

    if k <= 1:
        return np.array(values, dtype=float)
    # compiled: scipy's uniform_filter (mode "constant") of the masked values over that of the mask, kept where the
    # mask's mean exceeds 0.5 / k², bit for bit, in one pass without the scan-sized temporaries (0.9 s → 0.1 s)
    return pooled_mean(values, valid, k)


MIN_DENOISE_ROWS = 40
"""Fewest non-crystalline profiles from which :func:`lowrank_denoise` learns components."""


def lowrank_denoise(profiles: np.ndarray, sem: np.ndarray, fit_rows: np.ndarray, q_sel: np.ndarray,
                    method: str = "pca", n_components: int | None = None, guard: int = 3, seed: int = 0,
                    exclude: np.ndarray | None = None, learn: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Low-rank (PCA or NMF) denoising of profiles, with the linear map that propagates their errors.

    profiles, sem: (N, nq); fit_rows: (N,) bool, the profiles that define the components (e.g. the
    non-crystalline positions: Bragg disks would dominate them); q_sel: (nq,) bool, the Q bins denoised
    (others are returned unchanged). Each bin is whitened by the median standard error of the fit rows,
    so that components are ranked against the counting noise. ``n_components`` None: the number of
    singular values of the whitened, centred fit rows above the noise edge (1 + sqrt(m/N)) × 1.2 × their
    median (Marchenko–Pastur edge with a margin; m bins, N rows), at least 2, plus ``guard`` components:
    components just below the edge still carry some signal, and dropping them biases the peak (a bias
    the propagated error does not include), while keeping them only adds variance (which it does). On
    synthetic Li/Cu scans three guard components bring the ±1σ coverage from 0.58 to 0.64 at 2 × 10⁴ e⁻.
    NMF gets one more (it has no mean to subtract).

    Returns (denoised (N, nq), operator L (nq, nq; a :class:`LowRankOperator` where denoised), info). The denoised profile of every row is
    y' = m + L (y − m) for PCA (m the mean of the fit rows); for NMF, L is the least-squares projection onto
    the span of the components (exact where no non-negativity constraint is active). ``info``: method,
    n_components, singular values (whitened, per √N) and the noise edge.

    ``exclude`` (N, nq) bool (PCA only): bins of each row that hold something the components must not be fitted
    to (a Bragg spot of that position, :func:`sendmap.science.spot_context.spot_covered_bins`). Such a row's
    coefficients are the least-squares fit of the components to its other denoised bins (gappy PCA), and its
    excluded bins are the model's values there; the components are learned with those bins filled the same way
    (:data:`GAPPY_ITERATIONS` rounds). Without it, one position's spot excess (LiF (220) at 0.70 1/Å, ten times
    the amorphous level there) enters all its coefficients, and LiF (111)/(200) spots (disks reaching down to
    0.35 1/Å) raise the SRO window's upper edge: on SEI Type 2 with ≥ 20 % LiF at 5 × 10³ e⁻ (development seed
    600, lif-dominant) 98 of 255 positions have no maximum inside the window without it, none with it (bias
    +0.0028 → +0.0004, rms 0.019 → 0.010 1/Å); ``peaks.denoise_exclude_spots``. The returned operator is the full
    projection: the fit's error is propagated through it, not through each row's gappy projection (an
    approximation for the rows with excluded bins, whose spot bins carry their large azimuthal errors into it).

    ``learn`` (N, nq), same units as ``profiles`` (PCA, without ``exclude``): the profiles whose ``fit_rows`` define
    the mean and the components, e.g. each position's k × k neighbourhood mean (:func:`sendmap.science.denoise_residual.neighbourhood_mean`), while
    every row of ``profiles`` is projected (the operator is the same projection; each denoised profile still
    depends on its own measurement only). The number of components is as without it (``n_components`` or the edge
    of ``profiles``' own singular values).
    """
    from .denoise_kernels import column_medians, finite_copy, gather_scaled
    from .lowrank import blas_threads, gram_svd

    n, nq = profiles.shape
    y = finite_copy(profiles)  # (NaN, ±inf → 0: nan_to_num's numbers in one pass; y is this call's own array)
    fit_rows = np.asarray(fit_rows, bool)
    q_sel = np.asarray(q_sel, bool)

    def skipped(why):
        return y, np.eye(nq), {"method": "none", "skipped": why, "fit_rows": int(fit_rows.sum())}

    if not fit_rows.any() or not q_sel.any():
        return skipped("no non-crystalline positions" if not fit_rows.any() else "no Q bins in the denoised range")
    # nanmedian's numbers over the fit rows, in one gathering pass and only for the denoised bins (all-NaN bins,
    # no counts there, are NaN and dropped below)
    ref = np.full(nq, np.nan)
    ref[q_sel] = column_medians(sem, fit_rows, np.flatnonzero(q_sel))
    cols = np.flatnonzero(q_sel & np.isfinite(ref) & (ref > 0))
    if cols.size < 3:
        return skipped(f"{cols.size} Q bins with a non-zero standard error in the denoised range (< 3)")
    if fit_rows.sum() < MIN_DENOISE_ROWS:
        return skipped(f"{int(fit_rows.sum())} non-crystalline positions (< {MIN_DENOISE_ROWS})")
    r = ref[cols]
    x = gather_scaled(y, np.ones(n, bool), cols, r)  # y[:, cols] / r in one pass, in NumPy's (Fortran) layout
    gap = None
    if exclude is not None and method == "pca":
        gap = np.asarray(exclude, bool)[:, cols]
        gap = gap if gap.any() else None
    xf = x[fit_rows]
    xl = None
    if learn is not None and method == "pca" and gap is None:
        xl = gather_scaled(finite_copy(learn), fit_rows, cols, r)
    if gap is not None:  # the excluded bins first filled with the bin's mean over the rows that keep it
        gap_f = gap[fit_rows]
        keep = (~gap_f).sum(axis=0)
        col_mean = np.where(keep > 0, np.where(gap_f, 0.0, xf).sum(axis=0) / np.maximum(keep, 1), xf.mean(axis=0))
        xf = np.where(gap_f, col_mean, xf)
    mean = xf.mean(axis=0)
    try:
        # the principal axes: PCA without scikit-learn (via the m × m Gram matrix); xf centred in place where it is
        # not needed after (the same numbers, one temporary fewer)
        sv, vt = gram_svd(np.subtract(xf, mean, out=xf) if gap is None and method == "pca" else xf - mean)
    except np.linalg.LinAlgError as exc:
        return skipped(f"singular value decomposition failed ({exc})")
    sv = sv / np.sqrt(max(len(xf), 1))
    edge = float(np.median(sv) * (1.0 + np.sqrt(len(cols) / max(len(xf), 1))) * 1.2)
    k_auto = max(2, int(np.sum(sv > edge)))
    k = int(n_components) if n_components else k_auto + guard + (1 if method == "nmf" else 0)
    k = max(1, min(k, len(cols) - 1, len(xf) - 1))
    if xl is not None:  # the components of the learning profiles (the count stays that of the profiles' own)
        mean = xl.mean(axis=0)
        try:
            vt = gram_svd(xl - mean)[1]
        except np.linalg.LinAlgError as exc:
            return skipped(f"singular value decomposition failed ({exc})")
    if len(xf) < max(MIN_DENOISE_ROWS, 4 * k):  # too few profiles to learn components from: leave them as they are
        return y, np.eye(nq), {"method": "none", "skipped": f"{len(xf)} non-crystalline positions (< {max(MIN_DENOISE_ROWS, 4 * k)})",
                               "fit_rows": int(fit_rows.sum())}
    n_gappy = 0
    if gap is not None:  # learn the components with each row's excluded bins filled by the model (EM-style rounds)
        coef_sd = sv[:k]
        for _ in range(GAPPY_ITERATIONS):
            xf = np.where(gap_f, _gappy_fit(xf, gap_f, mean, vt[:k], coef_sd), xf)
            mean = xf.mean(axis=0)
            try:
                sv_f, vt = gram_svd(xf - mean)
            except np.linalg.LinAlgError as exc:
                return skipped(f"singular value decomposition failed ({exc})")
            coef_sd = sv_f[:k] / np.sqrt(max(len(xf), 1))
        n_gappy = int(gap.any(axis=1).sum())
    if method == "pca":
        v = vt[:k]  # (k, m), orthonormal rows
        with blas_threads(1):  # (see sendmap.science.lowrank.blas_threads)
            # mean + (x − mean) Vᵀ V with x centred in place and the mean added in place: the same products
            # (into a new array: BLAS rounds differently into x's own, F-ordered buffer), two temporaries fewer
            rows = gap.any(axis=1) if gap is not None else None
            x_gap = x[rows] if gap is not None else None
            np.subtract(x, mean, out=x)
            xd = x @ v.T @ v
            xd += mean
            if gap is not None:
                xd[rows] = _gappy_fit(x_gap, gap[rows], mean, v, coef_sd)
        left, right = v.T, v  # the projection P = left @ right (symmetric)
    elif method == "nmf":
        from sklearn.decomposition import NMF

        model = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=1000).fit(np.clip(xf, 0, None))
        hmat = model.components_  # (k, m)
        xd = model.transform(np.clip(x, 0, None)) @ hmat
        left, right = hmat.T, np.linalg.pinv(hmat @ hmat.T) @ hmat  # P = Hᵀ (HHᵀ)⁺ H (symmetric)
    else:
        raise ValueError(f"unknown denoising method {method!r}")
    xd *= r
    out = y
    out[:, cols] = xd
    # y' = diag(r) Pᵀ diag(1/r) y on the columns, P = Pᵀ = left @ right; the other bins pass unchanged
    a = np.zeros((nq, left.shape[1]))
    b = np.zeros((left.shape[1], nq))
    a[cols] = r[:, None] * left
    b[:, cols] = right / r[None, :]
    passed = np.ones(nq, bool)
    passed[cols] = False
    op = LowRankOperator(passed, a, b)
    info = {"method": method, "n_components": k, "n_components_auto": k_auto, "noise_edge": edge, "gappy_rows": n_gappy,
            "singular_values": [float(v) for v in sv[:min(12, sv.size)]], "q_range": [int(cols[0]), int(cols[-1])],
            "fit_rows": int(fit_rows.sum())}
    return out, op, info


GAPPY_ITERATIONS = 3
"""Rounds of learning the components with the excluded bins filled by the model (:func:`lowrank_denoise`): the
filled values change by < 1 % of the noise after the second on development seed 600 (lif-dominant, 5 × 10³ e⁻)."""


def gap_filled_sem(sem: np.ndarray, exclude: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The fit's standard errors (N, nq) after :func:`lowrank_denoise` with ``exclude`` (N, nq) bool: an excluded
    bin holds the model's value, not the measurement whose azimuthal scatter (a spot's) made its error large, so it
    takes the bin's median error over ``rows`` (N,) bool where not excluded. Kept at the spot's error, the fit would
    lean on one flank of the peak (the other's bins down-weighted; +0.003 1/Å with LiF (111) spots at 0.43 1/Å in
    tests/test_denoise_spots.py)."""
    sem = np.asarray(sem, float)
    ex = np.asarray(exclude, bool)
    with warnings.catch_warnings():  # bins excluded in every row keep their own errors
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nanmedian(np.where(ex | ~np.asarray(rows, bool)[:, None], np.nan, sem), axis=0)
    return np.where(ex & np.isfinite(ref), ref, sem)


def _gappy_fit(x: np.ndarray, gap: np.ndarray, mean: np.ndarray, v: np.ndarray, coef_sd: np.ndarray) -> np.ndarray:
    """Rows ``x`` (n, m; whitened: unit noise per bin) modelled as ``mean`` + c·``v`` (v: (k, m) orthonormal rows),
    c fitted over each row's bins outside ``gap`` (n, m) bool; returns the model rows (n, m). The fit is the
    posterior mean under the components' own spread as prior, c ~ N(0, diag(``coef_sd``²)) (``coef_sd``: the
    singular values per √N, the scatter of each coefficient over the fit rows): c = (VᵀWV + Λ⁻¹)⁻¹ VᵀW(x − m).
    Without it the weak components, which the full projection keeps small, take the gap's place with noise."""
    w = (~gap).astype(float)
    gmat = np.einsum("nm,km,lm->nkl", w, v, v)  # Vᵀ W V per row
    gmat += np.diag(1.0 / np.maximum(np.asarray(coef_sd, float), 1e-6) ** 2)
    rhs = ((x - mean) * w) @ v.T
    c = np.linalg.solve(gmat, rhs[..., None])[..., 0]
    return mean + c @ v


def bin_similar_neighbours(profiles: np.ndarray, sem: np.ndarray, k: int, q_sel: np.ndarray,
                           z_max: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spatial k × k binning that averages only the neighbours whose profile agrees with the centre's.

    profiles, sem: (Ry, Rx, nq); q_sel: (nq,) bool, the bins compared. A neighbour joins the average when
    the χ² of its difference from the centre over the compared bins, per bin, is below 1 + z_max·sqrt(2/m)
    (m bins: consistent within counting noise at z_max σ of the χ² distribution), so a layer boundary or a
    crystal is not smeared into its neighbours. Positions outside the scan are not used (no padding).
    The neighbourhood is centred for odd k; for even k it reaches one further forward than back.
    Returns the average (Ry, Rx, nq), its standard error (the members' errors are independent), and the
    number of positions averaged (Ry, Rx).

    >>> import numpy as np
    >>> p = np.ones((3, 4, 5)); p[:, 2:] = 3.0
    >>> avg, err, n = bin_similar_neighbours(p, np.full_like(p, 0.1), 3, np.ones(5, bool))
    >>> n[1].tolist(), float(avg[1, 1, 0]), round(float(err[1, 1, 0]), 4)
    ([6, 6, 6, 6], 1.0, 0.0408)
    """
    ry, rx, nq = profiles.shape
    y = np.nan_to_num(np.asarray(profiles, float))
    s2 = np.nan_to_num(np.asarray(sem, float) ** 2, nan=np.inf)
    q_sel = np.asarray(q_sel, bool)
    if k <= 1 or not q_sel.any():  # nothing to compare the neighbours on: each position on its own
        return y, np.sqrt(s2), np.ones((ry, rx), int)
    m = max(int(q_sel.sum()), 1)
    limit = 1.0 + z_max * np.sqrt(2.0 / m)
    total = np.zeros_like(y)
    var = np.zeros_like(y)
    count = np.zeros((ry, rx), int)
    lo = -(k - 1) // 2
    for dy in range(lo, lo + k):
        for dx in range(lo, lo + k):
            ys, yd = slice(max(dy, 0), ry + min(dy, 0)), slice(max(-dy, 0), ry - max(dy, 0))
            xs, xd = slice(max(dx, 0), rx + min(dx, 0)), slice(max(-dx, 0), rx - max(dx, 0))
            nb, nb2 = y[ys, xs], s2[ys, xs]
            c, c2 = y[yd, xd], s2[yd, xd]
            with np.errstate(invalid="ignore", divide="ignore"):
                chi2 = np.mean(((nb - c) ** 2 / (nb2 + c2))[..., q_sel], axis=-1)
            ok = (chi2 <= limit) | ((dy == 0) & (dx == 0))
            total[yd, xd] += np.where(ok[..., None], nb, 0.0)
            var[yd, xd] += np.where(ok[..., None], nb2, 0.0)
            count[yd, xd] += ok
    n = np.maximum(count, 1)[..., None]
    return total / n, np.sqrt(var) / n, count
