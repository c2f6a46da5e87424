"""The electron dose measured from the detector counts: which counts are electrons, and how many the mask hides.

Pure functions (arrays in, numbers out). Conventions as in :mod:`sendmap.science.mask` (mask True = used pixel).
"""
from __future__ import annotations


import numpy as np

MIN_RING_COVERAGE = 0.25
"""A masked pixel's counts are estimated from the azimuthal median of the used pixels at its radius only where at
least this share of that 1-px ring is used; where less (a beam stop's tip over the whole central disk), the counts
under the mask are not known and the dose from the counts is a lower bound."""


def integrating_camera_reason(dtype, sum_pattern: np.ndarray, max_pattern: np.ndarray,
                              saturation_count: float | None = None) -> str | None:
    """Why the data do not look like electron counts (an integrating camera, or processed data), or None.

    Evidence, any of: negative values (a background-subtracted or dark-corrected image: a counter cannot count
    below zero); a float dtype holding non-integer values (gain-corrected or integrating); a pixel above the
    counter's saturation count (``saturation_count`` = 2^depth − 1 where the detector reports its depth).
    ``sum_pattern``/``max_pattern``: the per-pixel sum and maximum over the scan.

    >>> integrating_camera_reason("uint16", np.array([[3, 4]]), np.array([[1, 2]])) is None
    True
    >>> integrating_camera_reason("float32", np.array([[3.5, 4]]), np.array([[1.5, 2]]))
    'float values that are not whole numbers (dtype float32)'
    """
    s = np.asarray(sum_pattern, dtype=np.float64)
    mx = np.asarray(max_pattern, dtype=np.float64)
    fin = np.isfinite(s)
    if np.any(s[fin] < 0):
        return f"negative values (sum pattern down to {float(s[fin].min()):.3g}: background-subtracted or dark-corrected)"
    if np.dtype(dtype).kind == "f":
        if np.any(np.abs(mx[np.isfinite(mx)] - np.rint(mx[np.isfinite(mx)])) > 1e-6) or \
                np.any(np.abs(s[fin] - np.rint(s[fin])) > 1e-3):
            return f"float values that are not whole numbers (dtype {np.dtype(dtype)})"
    if saturation_count is not None and np.any(mx[np.isfinite(mx)] > saturation_count):
        return f"counts up to {float(np.nanmax(mx)):.0f}, above the counter's {saturation_count:.0f}"
    return None


def counts_per_pattern(sum_pattern: np.ndarray, used: np.ndarray, centre_yx, n_patterns: int) -> dict:
    """Mean detector counts per pattern, masked pixels (hot, dead, saturated, beam stop, aperture) left out and
    filled in with what the pattern holds at their radius.

    sum_pattern: (Qy, Qx) counts summed over ``n_patterns`` patterns; used: (Qy, Qx) bool, True = used pixel;
    centre_yx: the pattern centre (px). A masked pixel is given the median of the used pixels in its 1-px ring about
    the centre (the pattern's level there: a hot pixel's 4000 counts become its ring's level) where at least
    :data:`MIN_RING_COVERAGE` of the ring is used; else it is left out and ``lower_bound`` is True. Returns
    ``{"counts_per_pattern", "used_counts_per_pattern", "filled_counts_per_pattern", "all_counts_per_pattern"
    (every pixel, as recorded), "masked_fraction", "lower_bound", "unfilled_pixels"}``.

    >>> s = np.full((32, 32), 10.0); s[3, 4] = 4000.0
    >>> used = np.ones((32, 32), bool); used[3, 4] = False
    >>> r = counts_per_pattern(s, used, (15.5, 15.5), 1)
    >>> r["counts_per_pattern"], r["lower_bound"]
    (10240.0, False)
    """
    s = np.nan_to_num(np.asarray(sum_pattern, dtype=np.float64))
    used = np.asarray(used, bool)
    n = max(int(n_patterns), 1)
    yy, xx = np.indices(s.shape, dtype=np.float64)
    rb = np.rint(np.hypot(yy - float(centre_yx[0]), xx - float(centre_yx[1]))).astype(np.int64) \
        if np.all(np.isfinite(centre_yx)) else np.zeros(s.shape, np.int64)
    nb = int(rb.max()) + 1
    n_all = np.bincount(rb.ravel(), minlength=nb)
    n_used = np.bincount(rb[used], minlength=nb)
    level = np.zeros(nb)
    if used.any():
        from scipy import ndimage

        lab = np.where(used, rb + 1, 0)
        level = np.asarray(ndimage.median(s, labels=lab, index=np.arange(1, nb + 1)), dtype=np.float64)
        level = np.where(n_used > 0, level, 0.0)
    fillable = n_used >= MIN_RING_COVERAGE * np.maximum(n_all, 1)
    masked = ~used
    fill_px = masked & fillable[rb]
    unfilled = masked & ~fillable[rb]
    used_c = float(s[used].sum()) / n
    filled_c = float(level[rb][fill_px].sum()) / n
    return {"counts_per_pattern": used_c + filled_c, "used_counts_per_pattern": used_c,
            "filled_counts_per_pattern": filled_c, "all_counts_per_pattern": float(s.sum()) / n,
            "masked_fraction": float(masked.mean()), "lower_bound": bool(unfilled.any()),
            "unfilled_pixels": int(unfilled.sum())}


MIN_CRYSTAL_Z = 5.0
"""The least Bragg-disk significance (σ) that can tell a crystal from noise: one-sided Gaussian false-alarm rate
2.9 × 10⁻⁷ per test, and a pattern is tested in ~10³ (Q bin, sector) cells of the crystal bands, so < 10⁻³ false
crystals per pattern. Below it, a class map is noise."""


def min_electrons_for_classes(crystal_spot_z: float, crystal_spot_z_electrons: float | None) -> float | None:
    """Electrons per (stored) pattern below which the dose-scaled crystal threshold, ``crystal_spot_z`` ×
    √(N / ``crystal_spot_z_electrons``) (see ``sendmap.stages.crystalline.crystal_spot_threshold``), falls under
    :data:`MIN_CRYSTAL_Z`: N_min = crystal_spot_z_electrons · (MIN_CRYSTAL_Z / crystal_spot_z)². None where the
    threshold is not dose-scaled. Defaults (25 σ at 2 × 10⁴ e⁻): 800 e⁻, the low end of the realistic range
    (10³–10⁵ e⁻ per pattern, SCIENCE.md).

    >>> round(min_electrons_for_classes(25.0, 2e4), 6)
    800.0
    """
    if not crystal_spot_z_electrons:
        return None
    return float(crystal_spot_z_electrons) * (MIN_CRYSTAL_Z / float(crystal_spot_z)) ** 2
