"""The peaks stage: the first SRO peak of every I·Q^n profile (position, 1-σ error, height, prominence, width,
status) and the second peak; optional spatial binning and low-rank denoising; speckle-aware fit errors.

Size: one stage's orchestration (binning, denoising with its strong-speckle options, the fits, the grain-like rows'
own status, the second peak, the stored arrays and attributes) read top to bottom; the science is in sendmap.science.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..engine.context import Context
from ..engine.store import set_attrs, write_array
from ..errors import SendmapInputError
from .crystalline import crystal_key_sections, crystal_rows, grain_disk_refit, grain_edge_profiles


AUTO_FIT_HALF_WIDTH_FALLBACK = 0.14
"""1/Å, the fixed fit half range that ``peaks.fit_half_width: auto`` keeps unless the mean profile shows it biased
(:func:`sendmap.science.peaks.choose_fit_range`): the earlier default, ≈ 1.1 × the FWHM of probe-convolved synthetic
SRO peaks."""


PEAK_STATUS_WARN_SHARE = 0.10
"""Share of non-crystalline positions without an SRO peak (``peaks/status`` not ok) above which the peaks stage
warns: on the synthetic Li/SEI/Cu scenarios (seed 0) at 5 × 10³ and 2 × 10⁴ e⁻ it is 0 of 2685, so a tenth means the window, the
calibration or the dose does not suit the data."""


def peak_window_check(q: np.ndarray, window: tuple[float, float], log: Callable, total_counts=None,
                      centre_yx=None, frame_shape=None) -> list[str]:
    """Compare ``peaks.window`` (1/Å) with the profiles' Q range (bin edges): a SendmapInputError where it lies
    entirely outside (or holds fewer than 3 bins), a logged warning (returned in a list) where it lies partly
    outside. ``total_counts`` (per frame) and ``centre_yx`` (the beam centre found, px) only make the error's
    message name the likelier cause: frames without counts, or a centre at the detector's edge."""
    bw = float(q[1] - q[0]) if q.size > 1 else 0.0
    lo, hi = (max(round(float(q[0]) - bw / 2, 12), 0.0), float(q[-1]) + bw / 2) if q.size else (0.0, 0.0)
    n_in = int(np.sum((q >= window[0]) & (q <= window[1])))
    if n_in < 3:
        cause = ""
        if total_counts is not None and not np.any(np.asarray(total_counts) > 0):
            cause = (" Every frame of the input sums to zero or less (no counts): there is nothing to measure; check "
                     "input.path / input.dataset and the detector's file.")
        elif centre_yx is not None and frame_shape is not None and min(
                centre_yx[0], centre_yx[1], frame_shape[0] - 1 - centre_yx[0], frame_shape[1] - 1 - centre_yx[1]) < 2:
            cause = (f" The beam centre was found at (y, x) = ({centre_yx[0]:.1f}, {centre_yx[1]:.1f}) px, at the edge "
                     f"of the {frame_shape[0]} × {frame_shape[1]} px detector, and the profiles reach only to the "
                     "nearest detector corner from it: no direct beam was found (frames with too few counts, or a "
                     "mask, calibration.mask_file, hiding it).")
        raise SendmapInputError(
            f"peaks.window {list(window)} 1/Å lies outside the profiles' Q range [{lo:.4g}, {hi:.4g}] 1/Å "
            f"({n_in} bins inside, need ≥ 3): no SRO peak can be sought. The Q range is set by the detector size and "
            "calibration.q_pixel_size (and limited by profiles.q_max and calibration.crop_q): check that "
            "calibration.q_pixel_size is right for this camera length, or move peaks.window." + cause)
    if window[0] < lo or window[1] > hi:
        msg = (f"peaks.window {list(window)} 1/Å lies partly outside the profiles' Q range [{lo:.4g}, {hi:.4g}] 1/Å: "
               "maxima at the profile's edge are not peaks (status no_maximum_in_window); check "
               "calibration.q_pixel_size and peaks.window")
        log(f"[sendmap] peaks: warning: {msg}")
        return [msg]
    return []


def read_float64(g, name: str) -> np.ndarray:
    """The stored array ``name`` of group ``g`` as float64: ``np.asarray(g[name], dtype=np.float64)``'s numbers,
    without its second conversion (zarr's ``__array__`` converts twice: 0.36 s instead of 0.04 s for the 128² bench
    scan's 240 × 360 × 89 float32 profiles)."""
    return g[name][...].astype(np.float64, copy=False)


def speckle_fit_errors(ctx: Context, iqn: np.ndarray, sem: np.ndarray,
                       amorphous: np.ndarray | None = None) -> np.ndarray:
    """The peak fit's error model under the "azimuthal" error model: ``profiles/sem`` (Poisson + speckle, the fit's
    weights; its speckle part with V(Q) averaged over the :data:`~sendmap.science.peaks.SPECKLE_POOL_POSITIONS`²
    non-crystalline neighbours, :func:`~sendmap.science.peaks.pooled_position_mean`) and that speckle part, whose
    errors are correlated over ± one probe-disk diameter in Q (the same
    grains fall into neighbouring bins); the fit propagates their covariance exactly
    (``fit_peaks(..., correlated=(spk, correlation))``, :func:`sendmap.science.peaks._correlated_covariance`).

    Returns (errors for the fit's weights, = ``sem``; speckle dict: ``spk`` the speckle standard error per position
    and bin, ``sem``, ``correlation`` the radial correlation of the speckle errors at lags of 0, 1, … bins,
    ``poisson_correlation`` that of the rest, the Poisson errors, which neighbouring bins share through the
    pixels split between them (:func:`~sendmap.science.polar.poisson_bin_correlation`, 0.22 at lag 1 for one
    pixel per bin and 3 × 3 sub-pixels), for ``fit_peaks`` and :func:`speckle_components`). ``amorphous`` (Ry, Rx)
    bool: the non-crystalline positions, ``~crystal_rows(ctx)`` (computed here when None)."""
    from ..science.peaks import SPECKLE_POOL_POSITIONS, pooled_position_mean
    from ..science.peak_kernels import speckle_errors
    from ..science.polar import poisson_bin_correlation, speckle_mean_factor, speckle_radial_correlation

    g = ctx.group
    calib = dict(g.attrs["calibration"])
    r_q = float(calib["disk_radius_px"]) * float(calib["q_pixel_size"])
    q = np.asarray(g["profiles/q"])
    bw = float(q[1] - q[0])
    n_phi = int(dict(g.attrs["profiles"])["n_azimuth"])
    gfac, share = speckle_mean_factor(q, n_phi, r_q, bw, return_sector_share=True)
    fem = read_float64(g, "features/fem_variance")
    # (features/fem_variance is already pooled over ± one disk radius in Q: speckle_fit_sem's half_bins 0)
    amorphous = ~crystal_rows(ctx) if amorphous is None else np.asarray(amorphous, bool).reshape(fem.shape[:2])
    present = speckle_presence(fem, amorphous & (np.asarray(g["ingest/total_counts"]) > 0), q, ctx.cfg.peaks.window)
    # V averaged over the k × k non-crystalline neighbours (one pattern's V has ~10 grains' worth of scatter)
    pooled = pooled_position_mean(fem, amorphous, SPECKLE_POOL_POSITIONS)
    # the profile's own speckle part (speckle_fit_sem, factor 2: the speckle part once) replaced by the pooled one:
    # Poisson + the pooled speckle part, in one compiled pass (the NumPy expressions' numbers, bit for bit)
    spk, sem = speckle_errors(sem, iqn, fem, pooled, gfac, share, present["present"])
    corr = speckle_radial_correlation(r_q, bw)
    prof = dict(g.attrs["profiles"])
    win = ctx.cfg.peaks.window
    ratio = float(dict(calib.get("ellipse") or {}).get("ratio", 1.0) or 1.0)
    # over the window ± the widest fit range (≈ 0.14 1/Å each side); the correlation barely changes with Q
    pcorr = poisson_bin_correlation(float(calib["q_pixel_size"]), bw, int(prof.get("supersample", 3)),
                                    (max(win[0] - 0.14, bw), win[1] + 0.14), ratio)
    return sem, {"spk": spk, "sem": sem, "correlation": corr, "poisson_correlation": pcorr, "speckle_test": present}


SPECKLE_PRESENCE_Z = 3.0
"""The scan's mean V over the peak window must exceed this many standard errors (from the scatter of the positions'
own V) for the fit's errors to carry a speckle part (:func:`speckle_presence`): a one-sided normal false-alarm rate
of 0.13 % for a scan without speckle."""


def speckle_presence(fem: np.ndarray, rows: np.ndarray, q: np.ndarray, window: tuple[float, float]) -> dict:
    """Whether the scan shows speckle at all: the mean over ``rows`` (Ry, Rx) bool of each position's own V
    (``features/fem_variance``, Poisson-unbiased, (Ry, Rx, nq)) over the bins of ``window`` (1/Å), against its
    standard error from the scatter between positions (their V are independent): present where the mean exceeds
    :data:`SPECKLE_PRESENCE_Z` standard errors, or where fewer than 2 positions decide it.

    Why a test for the scan and not a V per position only: the speckle part of a position's error is
    mean²·V̄·ρ̄(0)·G with V̄ its 5 × 5 neighbours' mean, floored at 0 (a variance); where the film has no speckle
    V̄ is 0 ± noise and the floor keeps its positive half, ~0.4 of its noise, in the error, fully correlated over
    a probe-disk diameter in Q, which a peak position feels most: on speckle-free synthetic scans (seed 46,
    2 × 10⁴ e⁻) it made σ 1.27 × too wide (a mean of 3 % of the bins' variance). Returns {"present", "v_mean",
    "v_se", "n"}."""
    sel = (q >= window[0]) & (q <= window[1])
    v = np.asarray(fem, dtype=float)[np.asarray(rows, bool)][:, sel] if sel.any() else np.zeros((0, 1))
    with np.errstate(invalid="ignore"):
        fin = np.isfinite(v)
        per = np.where(fin.any(axis=1), np.where(fin, v, 0.0).sum(axis=1) / np.maximum(fin.sum(axis=1), 1), np.nan)
    per = per[np.isfinite(per)]
    if per.size < 2:
        return {"present": True, "v_mean": None, "v_se": None, "n": int(per.size)}
    m, se = float(per.mean()), float(per.std(ddof=1) / np.sqrt(per.size))
    return {"present": bool(m > SPECKLE_PRESENCE_Z * se), "v_mean": m, "v_se": se, "n": int(per.size)}


SPECKLE_EDGE_SHARE = 0.03
"""Share of the profile's variance (median over the denoised bins of the non-crystalline positions) above which the
denoising's number of components comes from the correlated-noise edge (:func:`speckle_components`): below it the
errors are mostly Poisson, independent between bins, and the Marchenko–Pastur edge of ``lowrank_denoise`` holds."""


SPECKLE_EDGE_MARGIN = 1.2
"""Components kept: singular values above this × the top singular value of modelled noise (the margin of
``lowrank_denoise``'s own edge), plus one."""


def speckle_components(y: np.ndarray, s_fit: np.ndarray, speckle: dict, rows: np.ndarray, q_sel: np.ndarray):
    """Number of low-rank components for speckle-dominated profiles, or (None, None) where speckle is a minor part.

    The denoising whitens each bin by the median fit error ``s_fit`` of ``rows``; in those units the noise of one
    profile has the covariance diag(Poisson²) + diag(speckle)·K·diag(speckle) (K the speckle's radial correlation),
    whose correlated modes clear the Marchenko–Pastur edge for independent bins: on speckled synthetic scans
    (M = 10, 2 × 10⁴ e⁻) it keeps 12 + 3 components, ~10 of them speckle, and the peak MAE stays at the speckle
    floor of single patterns (0.0097 1/Å), while the singular values beyond the third follow the modelled noise's
    (2.5, 2.1, 1.9, 1.8, ... vs 2.5, 2.2, 1.9, 1.6, ...). Components are counted above
    ``SPECKLE_EDGE_MARGIN`` × the modelled noise's top singular value, plus one (MAE 0.0047-0.0049 with 3-4)."""
    from ..science.lowrank import gram_svd
    from ..science.polar import correlated_noise_top_singular_value

    from ..science.denoise_kernels import column_medians, gather_scaled

    sem, spk = speckle["sem"].reshape(y.shape), speckle["spk"].reshape(y.shape)
    if rows.sum() < 8:
        return None, None
    # (nanmedian's numbers over the rows, in one gathering pass each; a column without a finite value has no
    # median: left out, unwarned)
    cols = np.flatnonzero(q_sel)
    ref, n_fin = column_medians(s_fit, rows, cols, return_finite=True)
    keep = (n_fin > 0) & np.isfinite(ref) & (ref > 0)
    cols, ref = cols[keep], ref[keep]
    s_med, s_fin = column_medians(spk, rows, cols, return_finite=True)
    p_med, p_fin = column_medians(sem, rows, cols, return_finite=True)
    keep = (s_fin > 0) & (p_fin > 0)
    cols, r, s_ref, p_med = cols[keep], ref[keep], s_med[keep], p_med[keep]
    if cols.size < 4:
        return None, None
    p_ref = np.sqrt(np.clip(p_med ** 2 - s_ref ** 2, 0.0, None))
    share = float(np.median(s_ref ** 2 / np.maximum(s_ref ** 2 + p_ref ** 2, 1e-300)))
    if not share >= SPECKLE_EDGE_SHARE:
        return None, None
    x = gather_scaled(y, rows, cols, r)  # nan_to_num(y[rows][:, cols]) / r, its layout too
    x -= x.mean(axis=0)
    sv = gram_svd(x, vectors=False)[0] / np.sqrt(len(x))
    top = correlated_noise_top_singular_value(p_ref / r, s_ref / r, speckle["correlation"], len(x))
    n = max(2, int(np.sum(sv > SPECKLE_EDGE_MARGIN * top))) + 1
    return n, {"speckle_share": share, "noise_top_singular_value": top, "n_components": n}


OWN_STATUS_MEANING = (
    "peak status of the fit on the position's own (not denoised) profile where it is grain-like "
    "(sendmap.stages.crystalline.crystal_rows) and the profiles were denoised; elsewhere peaks/status. The "
    "denoising's components are learned on the amorphous profiles, so a grain's profile, which they do not span, "
    "comes out of the projection as the amorphous mean plus a little: an off-axis grain with one Cu (111) pair on its "
    "diffuse background (a profile falling through the whole SRO window) got an SRO maximum at 0.30 1/Å with status "
    "ok, which kept the classify stage's shared-spot grain rule from calling it a grain (matrix:offaxis, 5 × 10³ e⁻, "
    "development seed 911: 284 of the grain's 326 positions SEI Type 2). The reported peak stays the denoised fit's: "
    "on a boundary pattern beside a grain the own profile's maximum is pulled up by the grain's Bragg disks "
    "(+0.04 1/Å on SEI Type 1 beside Li grains, matrix:all, seed 925)")

PLAIN_FIT_SAMPLE = 4096
"""With binning or denoising, the plain fit (for the diagnostics: the options' effect on the reported error) runs
on at most this many non-crystalline positions, drawn at random (seed 0): medians to ~2 %."""


def stage_peaks(ctx: Context) -> None:
    """First SRO peak of every I·Q^n profile: position, 1-σ error, height, prominence, width; second peak.

    Optional, each off by default: k × k spatial binning, then low-rank (PCA/NMF) denoising whose
    components come from the non-crystalline positions. The error is propagated through both (binning:
    the SEM of the average; denoising: through the projection, :func:`sendmap.science.peaks.fit_peaks`).
    The plain fit of the unbinned, undenoised profiles is always made too; the median reported σ of
    both (non-crystalline positions) is stored in the ``peaks`` attribute as the options' effect.

    ``peaks/status`` (codes and names in its ``flag_values``/``flag_meanings``, :data:`sendmap.science.peaks.
    PEAK_STATUS`) says per position whether there is a peak and, if not, why; positions without counts are
    ``too_few_counts``. The window is checked against the profiles' Q range first (an input error where it lies
    outside, a warning where partly). The ``peaks`` attribute records the fit range used (``fit_range``; with
    ``fit_half_width: auto`` measured on the mean non-crystalline profile), ``status_counts`` and ``warnings``
    (also logged: more than :data:`PEAK_STATUS_WARN_SHARE` of the non-crystalline positions without a peak).

    Under the "azimuthal" (speckle) error model the errors are :func:`speckle_fit_errors` (speckle only where
    :func:`speckle_presence` finds it in the scan; Poisson correlated between neighbouring bins by the pixel
    splitting) and the fit range is re-centred on each fitted maximum, its feedback β on the estimate (measured
    on the mean non-crystalline profile, ``window_feedback`` in the attribute) in the error
    (:func:`sendmap.science.peaks._recentred`): ±1σ coverage 0.62–0.75 on speckled and speckle-free synthetic
    scans (README), where the range following the smoothed maximum gave up to 0.79.
    """

    from ..engine.execute import local_map
    from ..science.denoise_residual import neighbourhood_mean, residual_added, residual_pool_error
    from ..science.peaks import (FLAT_TOP_Z, PEAK_STATUS, bin_similar_neighbours, fit_peaks, fit_peaks_reported,
                                fit_second_peak, gap_filled_sem, lowrank_denoise,
                                resolve_auto_fit_range, status_attrs, status_code, window_feedback)

    cfg, g = ctx.cfg, ctx.group
    pk = cfg.peaks
    fit_map = local_map(cfg.compute)
    q = np.asarray(g["profiles/q"])
    iqn = read_float64(g, {"robust": "profiles/iqn_robust", "masked": "profiles/iqn_masked"}.get(pk.profile,
                                                                                                 "profiles/iqn"))
    # (the masked profile has its own, larger errors: fewer pixels)
    sem = read_float64(g, "profiles/iqn_masked_sem" if pk.profile == "masked" else "profiles/iqn_sem")
    speckle = None
    crystal = crystal_rows(ctx)
    sem_stored = sem  # (peaks.grain_edge_mask_nm: the stored errors, against which the masked ones are scaled)
    if g["profiles/iqn_sem"].attrs.get("error_model") == "azimuthal" and "features/fem_variance" in g:
        sem, speckle = speckle_fit_errors(ctx, iqn, sem, ~crystal)
    ry, rx, nq = iqn.shape
    counts = read_float64(g, "ingest/total_counts").ravel()
    centre = dict(g.attrs.get("calibration", {})).get("centre_guess_yx")
    frame_shape = dict(g.attrs.get("ingest", {})).get("frame_shape")
    warnings_ = peak_window_check(q, pk.window, lambda _: None, counts, centre, frame_shape)
    for msg in warnings_:
        ctx.warn(msg, "peak_window_partly_outside_data")
    amorphous = ~crystal.ravel()
    # the fit range: the configured number, or matched to the peak's half widths on the mean profile of the
    # non-crystalline positions that have counts
    fit_range = {"mode": "fixed", "half_width": [float(pk.fit_half_width)] * 2} if pk.fit_half_width != "auto" else None
    half_width = pk.fit_half_width
    if fit_range is None:
        half_width, fit_range = resolve_auto_fit_range(q, iqn.reshape(-1, nq), sem.reshape(-1, nq),
                                                       amorphous & (counts > 0), pk.window,
                                                       AUTO_FIT_HALF_WIDTH_FALLBACK, pk.smooth_sigma_bins, pk.degree)
        ctx.log(f"[sendmap] peaks: fit range ({fit_range['mode']}) -{fit_range['half_width'][0]:.3f} "
                f"+{fit_range['half_width'][1]:.3f} 1/Å: {fit_range['reason']}")
    hw_l, hw_r = fit_range["half_width"]
    degree = fit_degree(pk.degree, pk.fixed_range_degree, fit_range)
    fit_args = (pk.window, half_width, pk.smooth_sigma_bins, degree)
    plain_in = (iqn.reshape(-1, nq), sem.reshape(-1, nq))
    corr_plain = corr = None if speckle is None else (speckle["spk"].reshape(-1, nq), speckle["correlation"],
                                                      speckle["poisson_correlation"])
    k = pk.spatial_binning
    compare = (q >= pk.window[0] - hw_l) & (q <= pk.window[1] + hw_r)
    n_binned = np.ones((ry, rx), int)
    if k > 1:
        sem_raw = sem
        iqn, sem, n_binned = bin_similar_neighbours(iqn, sem_raw, k, compare)
        if corr is not None:  # the average's speckle error: the members' share of it kept
            with np.errstate(invalid="ignore", divide="ignore"):
                corr = (np.nan_to_num(corr[0] * (sem / sem_raw).reshape(-1, nq)), *corr[1:])
    y, s = iqn.reshape(-1, nq), sem.reshape(-1, nq)
    y_in, s_in = y, s  # (the denoising's input: the plain estimator again where denoise_learn_pool acts)
    operator, info, pool_n = None, {"method": "none"}, None
    speckle_info = None  # set where the denoising's components are counted above the speckle noise's edge
    if pk.denoise != "none":
        lo, hi = pk.denoise_q_range or (pk.window[0] - hw_l, (float(q[-1]) if q.size else 0.0) + 1.0)
        n_comp = pk.denoise_components
        if n_comp is None and speckle is not None and k == 1:
            n_comp, speckle_info = speckle_components(y, s, speckle, amorphous, (q >= lo) & (q <= hi))
        spot_bins = listed_spot_bins(g, q, ry * rx) if pk.denoise_exclude_spots else None
        if spot_bins is not None and k > 1:  # a binned profile holds the spots of the neighbours it averages
            from scipy.ndimage import maximum_filter
            spot_bins = maximum_filter(spot_bins.reshape(ry, rx, nq), size=(k, k, 1), mode="nearest").reshape(-1, nq)
        learn = None  # (peaks.denoise_learn_pool) components from the neighbourhood means, under strong speckle
        if speckle_info and pk.denoise_learn_pool > 1 and pk.denoise == "pca" and spot_bins is None:
            learn = neighbourhood_mean(y, amorphous & (counts > 0), (ry, rx), pk.denoise_learn_pool)
        y, operator, info = lowrank_denoise(y, s, amorphous, (q >= lo) & (q <= hi), pk.denoise,
                                            n_comp, pk.denoise_guard, exclude=spot_bins, learn=learn)
        if learn is not None and info["method"] != "none":
            info["learn_pool"] = int(pk.denoise_learn_pool)
        if speckle_info:
            info["speckle_edge"] = speckle_info
            if pk.denoise_residual_pool > 1 and info["method"] != "none":  # the truncation bias, from the neighbours
                y, pool_n = residual_added(plain_in[0], y, amorphous & (counts > 0), spot_bins, (ry, rx),
                                           pk.denoise_residual_pool)
                info["residual_pool"] = int(pk.denoise_residual_pool)
        if info["method"] == "none":
            operator = None
            ctx.log(f"[sendmap] peaks: denoising skipped ({info['skipped']})")
        elif spot_bins is not None and info.get("gappy_rows"):  # the spots' bins now hold the model's values
            s = gap_filled_sem(s, spot_bins & ((q >= lo) & (q <= hi))[None, :], amorphous)
    # the fit range follows each fitted maximum; its feedback on the estimate (β), measured on the mean of the
    # non-crystalline positions' fit input, enters the error (sendmap.science.peaks._recentred)
    # (under the speckle error model, whose correlations the error models: Poisson's from the pixel splitting too)
    recentre = speckle is not None
    with_counts = amorphous & (counts > 0)
    flat_z = FLAT_TOP_Z if pk.flat_top_test else None  # the flat-top test (status no_clear_maximum), when asked for
    none = {"beta": None, "centre_q": None}
    feedback = window_feedback(q, y, s, with_counts, *fit_args) if recentre else none
    feedback_plain = (feedback if (k == 1 and operator is None) or not recentre
                      else window_feedback(q, *plain_in, with_counts, *fit_args))
    if k == 1 and operator is None:
        res = plain = fit_peaks_reported(q, *plain_in, *fit_args, map_blocks=fit_map, correlated=corr_plain,
                                         recentre=recentre, feedback=feedback["beta"], flat_top_z=flat_z)
    else:  # the plain fit only for the diagnostics, on a sample of the non-crystalline positions
        res = fit_peaks_reported(q, y, s, *fit_args, operator=operator, map_blocks=fit_map, correlated=corr,
                                 recentre=recentre, feedback=feedback["beta"], flat_top_z=flat_z)
        sample = np.flatnonzero(amorphous)
        if sample.size > PLAIN_FIT_SAMPLE:
            sample = np.random.default_rng(0).choice(sample, PLAIN_FIT_SAMPLE, replace=False)
        plain = {kk: np.full(ry * rx, np.nan) for kk in ("q_peak", "q_err")}
        part = fit_peaks(q, plain_in[0][sample], plain_in[1][sample], *fit_args, width_error=False,
                         map_blocks=fit_map, recentre=recentre, feedback=feedback_plain["beta"],
                         correlated=None if corr_plain is None else (corr_plain[0][sample], *corr_plain[1:]))
        for kk in plain:
            plain[kk][sample] = part[kk]
        if pool_n is not None:  # the neighbours' residual's own noise (residual_added) into the error
            res["q_err"] = residual_pool_error(res["q_err"], plain["q_err"], pool_n, amorphous)
    one_step = (pk.one_step_pool > 1 and speckle_info and operator is not None  # strong speckle, the fixed ±
                and fit_range["mode"] == "auto: fixed")  # ± 0.14 range: one step from the neighbours' peak
    learned = operator is not None and "learn_pool" in info
    feature = None  # the peak without the two strong-speckle options, for classify (peaks.classify_feature)
    if pk.classify_feature == "plain" and (one_step or learned):
        feature = {kk: np.array(res[kk], copy=True) for kk in ("q_peak", "q_err", "status")}
        if learned:
            feature = plain_peak(q, y_in, s_in, amorphous, spot_bins, (lo, hi), n_comp, pk, fit_args,
                                             corr, recentre, with_counts, flat_z, fit_map)
    if one_step:
        from ..science.peak_one_step import one_step_from_neighbours

        n_one_step = one_step_from_neighbours(q, y, s, res, amorphous & (counts > 0), (ry, rx), pk.one_step_pool,
                                              fit_args, (hw_l, hw_r), degree, operator, corr, recentre,
                                              feedback["beta"], fit_map)
        info["one_step"] = {"pool": int(pk.one_step_pool), "replaced": n_one_step}
    n_edge_masked = 0
    if pk.grain_edge_mask_nm and pk.profile == "mean" and k == 1:
        # a grain's disks at the layer edge beside it, masked where they reach the inner half of the first fit's
        # range above its maximum (refit_beside_grains' rule), and those rows refitted through the scan's own
        # choices (fit range, components, feedback: made on the stored profiles, so every other position keeps its
        # result bit for bit)
        rows, ym, sm = grain_edge_profiles(ctx, plain_in[0].reshape(ry, rx, nq), sem_stored, crystal,
                                           np.asarray(res["q_peak"]) + hw_r / 2)
        if rows.size:
            s_st = sem_stored.reshape(-1, nq)[rows]
            ratio = np.nan_to_num(np.where(s_st > 0, sm / np.where(s_st > 0, s_st, 1.0), 1.0), nan=1.0)
            y_in = ym if operator is None else y[rows] + (ym - plain_in[0][rows]) @ np.asarray(operator).T
            s_in = s[rows] * ratio
            c_in = None if corr is None else (corr[0][rows] * ratio, *corr[1:])
            new = fit_peaks_reported(q, y_in, s_in, *fit_args, operator=operator, map_blocks=fit_map,
                                     correlated=c_in, recentre=recentre, feedback=feedback["beta"], flat_top_z=flat_z)
            for key in res:
                if key in new:
                    res[key][rows] = new[key]
            y[rows], s[rows] = y_in, s_in
            n_edge_masked = int(rows.size)
    # (off by default) beside a grain: its disks, too faint to be listed there, fitted away (grain_disk_refit)
    n_disk_refit = grain_disk_refit(ctx, q, y, s, operator, res, crystal, fit_args, corr, flat_z, (hw_l, hw_r),
                                    degree) if pk.grain_disk_reach_nm and k == 1 else 0
    # the grain-like rows' own profiles: is there an SRO maximum without the denoising (grain_rows_own_status)?
    own_status = np.asarray(res["status"]).copy()
    own = crystal.ravel() if operator is not None else np.zeros(ry * rx, bool)
    if own.any():
        own_status[own] = fit_peaks(q, plain_in[0][own], plain_in[1][own], *fit_args, width_error=False,
                                    map_blocks=fit_map, recentre=recentre, feedback=feedback_plain["beta"],
                                    correlated=None if corr_plain is None else (corr_plain[0][own], *corr_plain[1:]),
                                    flat_top_z=flat_z)["status"]
    # the second peak on the robust mean (sectors holding Bragg spots clipped): LiF (220) spots at 0.70 1/Å
    # would otherwise pose as a second SRO peak in SEI Type 2
    y2, op2 = y, operator
    if pk.profile == "mean":
        rob = read_float64(g, "profiles/iqn_robust")
        if k > 1:
            rob = bin_similar_neighbours(rob, sem_raw, k, compare)[0]
        y2, op2 = rob.reshape(-1, nq), None
        if operator is not None:
            y2, op2, info2 = lowrank_denoise(y2, s, amorphous, (q >= lo) & (q <= hi), pk.denoise,
                                             pk.denoise_components, pk.denoise_guard, exclude=spot_bins)
            op2 = None if info2["method"] == "none" else op2
    second = fit_second_peak(q, y2, s, pk.second_window, pk.second_half_width, pk.smooth_sigma_bins,
                             operator=op2, map_blocks=fit_map, correlated=corr)
    # positions without counts have no peak, whatever their (zero) profile looks like
    empty = ~(counts > 0)
    status = np.asarray(res["status"]).copy()
    status[empty] = status_code("too_few_counts")
    for key in res:
        if key != "status":
            res[key] = np.where(empty, np.nan, res[key])
    res["status"] = status
    own_status[empty] = status_code("too_few_counts")
    write_array(g, "peaks/status_own_profile", own_status.reshape(ry, rx).astype(np.int8), status_attrs() | {
        "meaning": OWN_STATUS_MEANING})
    second["present"] = second["present"] & ~empty
    for key in second:
        if key != "present":
            second[key] = np.where(empty, np.nan, second[key])
    for key, val in res.items():
        if key == "status":
            write_array(g, "peaks/status", val.reshape(ry, rx).astype(np.int8), status_attrs())
            continue
        write_array(g, f"peaks/{key}", val.reshape(ry, rx), {"units": "1/Å"} if key.startswith(("q", "fwhm")) else None)
    if flat_z is None:  # (the flat-top test's ranges of an earlier run with it on would be stale)
        for key in ("q_max_lo", "q_max_hi"):
            if f"peaks/{key}" in g:
                del g[f"peaks/{key}"]
    write_classify_feature(g, feature, empty, (ry, rx))
    for key, val in second.items():
        name = "second_present" if key == "present" else f"second_{key}"
        write_array(g, f"peaks/{name}", val.reshape(ry, rx),
                    {"units": "1/Å"} if key.startswith(("q", "fwhm")) else None)
    if operator is not None:
        write_array(g, "peaks/denoised_iqn", y.reshape(ry, rx, nq).astype(np.float32),
                    {"meaning": f"profiles after {pk.denoise} denoising (fit input)" + (
                        ", plus the neighbours' mean residual (peaks.denoise_residual_pool)" if pool_n is not None
                        else ""), "n_components": info["n_components"]})

    in_plain = np.isfinite(plain["q_err"])  # the positions the plain fit covers (all, or the sample)

    def med(a):
        v = a[amorphous & in_plain & np.isfinite(a)]
        return float(np.median(v)) if v.size else None

    diagnostics = {"n_amorphous_positions": int(amorphous.sum()), "n_plain_fit": int((amorphous & in_plain).sum()),
                   "median_q_err_plain": med(plain["q_err"]), "median_q_err": med(res["q_err"]),
                   "median_q_err_ratio": (med(res["q_err"]) / med(plain["q_err"])
                                          if med(plain["q_err"]) and med(res["q_err"]) else None),
                   "median_abs_shift_vs_plain": med(np.abs(res["q_peak"] - plain["q_peak"])),
                   "second_peak_fraction": float(np.mean(second["present"][amorphous])) if amorphous.any() else 0.0,
                   "median_positions_binned": float(np.median(n_binned.ravel()[amorphous])) if amorphous.any() else 1.0,
                   "grain_disk_refit_positions": int(n_disk_refit),
                   "grain_edge_masked_positions": int(n_edge_masked)}
    status_counts = {name: int(np.sum(status == c)) for c, name in enumerate(PEAK_STATUS) if np.any(status == c)}
    if status_counts.get("fit_failed"):
        ctx.log(f"[sendmap] peaks: {status_counts['fit_failed']} positions: the polynomial has no interior maximum; "
                "peaks/q_peak holds the smoothed maximum (± one bin) there, status fit_failed, no peak in maps/peak_q")
    n_am = int(amorphous.sum())
    flat = amorphous & (status == status_code("no_clear_maximum"))
    if n_am and flat.sum() > PEAK_STATUS_WARN_SHARE * n_am:
        msg = (f"{100 * flat.sum() / n_am:.0f} % of the {n_am} non-crystalline positions have an SRO peak without a "
               f"clear maximum (status no_clear_maximum: a flat top, or two maxima as high within the noise); their "
               f"peaks/q_peak is the centre of the Q range consistent with the maximum (peaks/q_max_lo – q_max_hi, "
               f"median half width {np.nanmedian(res['q_err'][flat]):.3f} 1/Å) and they are not classed by it")
        warnings_.append(msg)
        ctx.warn(msg, "peaks_without_clear_maximum")
    not_ok = amorphous & (status != status_code("ok")) & (status != status_code("no_clear_maximum"))
    if n_am and not_ok.sum() > PEAK_STATUS_WARN_SHARE * n_am:
        parts = ", ".join(f"{PEAK_STATUS[c]} {int(np.sum(not_ok & (status == c)))}" for c in range(1, len(PEAK_STATUS))
                          if np.any(not_ok & (status == c)))
        msg = (f"{100 * not_ok.sum() / n_am:.0f} % of the {n_am} non-crystalline positions have no SRO peak ({parts}); "
               "see peaks/status")
        if np.sum(not_ok & (status == status_code("no_maximum_in_window"))) > 0.5 * not_ok.sum():
            msg += ": mostly no maximum inside peaks.window (check it and calibration.q_pixel_size)"
        elif np.sum(not_ok & (status == status_code("too_few_counts"))) > 0.5 * not_ok.sum():
            msg += (": mostly too few counts or valid profile bins around the window (check the dose, the mask, and "
                    "peaks.window against the detector's Q range set by calibration.q_pixel_size)")
        warnings_.append(msg)
        ctx.warn(msg, "positions_without_peak")
    set_attrs(g, peaks={"fit_half_width": pk.fit_half_width, "fit_range": fit_range, "degree": degree,
                        "profile": pk.profile, "status_counts": status_counts, "warnings": warnings_,
                        "spatial_binning": k, "denoise": info, "diagnostics": diagnostics,
                        "window_feedback": {"recentred": recentre, "beta": _finite(feedback["beta"]),
                                            "beta_plain": _finite(feedback_plain["beta"]),
                                            "centre_q": feedback["centre_q"]},
                        "speckle_test": None if speckle is None else speckle["speckle_test"],
                        "poisson_correlation": (None if speckle is None
                                                else [float(v) for v in speckle["poisson_correlation"]]),
                        "method": "weighted polynomial fit over a range centred on its own maximum, maximum by "
                                  "Newton, delta-method error with the range's feedback"
                                  + (" propagated through the denoising projection" if operator is not None else "")})


def plain_peak(q, y, s, amorphous, spot_bins, q_range, n_comp, pk, fit_args, corr, recentre,
                           with_counts, flat_z, fit_map) -> dict:
    """The peak (q_peak, q_err, status) of the plain estimator where ``peaks.denoise_learn_pool`` acts: the
    components learned from the single profiles (no neighbourhood means), no one step. The same inputs, fit range,
    speckle correlation and range feedback as the reported fit (``peaks.classify_feature``)."""
    from ..science.peaks import fit_peaks_reported, lowrank_denoise, window_feedback

    lo, hi = q_range
    yd, op, info = lowrank_denoise(y, s, amorphous, (q >= lo) & (q <= hi), pk.denoise, n_comp, pk.denoise_guard,
                                   exclude=spot_bins)
    op = None if info["method"] == "none" else op
    beta = window_feedback(q, yd, s, with_counts, *fit_args)["beta"] if recentre else None
    r = fit_peaks_reported(q, yd, s, *fit_args, operator=op, map_blocks=fit_map, correlated=corr,
                           recentre=recentre, feedback=beta, flat_top_z=flat_z)
    return {kk: np.asarray(r[kk]) for kk in ("q_peak", "q_err", "status")}


def write_classify_feature(g, feature: dict | None, empty: np.ndarray, shape: tuple) -> None:
    """Store ``peaks/q_peak_classify``, ``q_err_classify`` (1/Å) and ``status_classify``: the plain estimator's
    peak and status, read by the classify stage, where the reported peak (``peaks/q_peak``) came from the
    strong-speckle options. Without a feature, stale arrays of an earlier run are removed (classify then reads
    peaks/q_peak and peaks/status)."""
    from ..science.peaks import status_attrs, status_code

    names = ("q_peak_classify", "q_err_classify", "status_classify")
    if feature is None:
        for name in names:
            if f"peaks/{name}" in g:
                del g[f"peaks/{name}"]
        return
    meaning = ("the SRO peak without peaks.denoise_learn_pool / one_step_pool (the plain estimator): the classify "
               "stage's feature (peaks.classify_feature); peaks/q_peak is the reported peak")
    for key, name in zip(("q_peak", "q_err"), names):
        write_array(g, f"peaks/{name}", np.where(empty, np.nan, feature[key]).reshape(shape),
                    {"units": "1/Å", "meaning": meaning})
    status = np.where(empty, status_code("too_few_counts"), feature["status"]).astype(np.int8)
    write_array(g, "peaks/status_classify", status.reshape(shape), status_attrs() | {"meaning": meaning})


def listed_spot_bins(g, q: np.ndarray, n_positions: int) -> np.ndarray | None:
    """(N, nq) bool: the Q bins each position's listed Bragg spots cover (``spots/position``, ``spots/values``;
    within the probe disk's radius ``disk_radius_q`` of ``features/spot_category``,
    :func:`sendmap.science.spot_context.spot_covered_bins`), for ``peaks.denoise_exclude_spots``; None for a store
    without spot lists or without a spot."""
    from ..science.spot_context import spot_covered_bins

    if "spots/position" not in g or "spots/values" not in g or "features/spot_category" not in g:
        return None
    radius = float(g["features/spot_category"].attrs.get("disk_radius_q", 0.0))
    pos = np.asarray(g["spots/position"])
    if radius <= 0 or pos.size == 0:
        return None
    return spot_covered_bins(pos, np.asarray(g["spots/values"])[:, 0], n_positions, q, radius)


def _finite(v):
    """A float for the store's JSON attributes, None where not finite."""
    return float(v) if v is not None and np.isfinite(v) else None


def fit_degree(degree: int, fixed_range_degree: int | None, fit_range: dict) -> int:
    """The polynomial's degree for the chosen fit range: ``fixed_range_degree`` (``peaks.fixed_range_degree``)
    where ``fit_half_width: auto`` kept the fixed range (mode ``auto: fixed``; its config description has the
    measurements), else ``degree`` (``peaks.degree``: the matched range, or a range given as a number, as in
    earlier versions).

    >>> [fit_degree(5, d, {"mode": m}) for d, m in ((6, "auto: fixed"), (6, "auto: matched"), (None, "auto: fixed"))]
    [6, 5, 5]
    """
    if fit_range.get("mode") == "auto: fixed" and fixed_range_degree is not None:
        return int(fixed_range_degree)
    return int(degree)


def key_sections(cfg, sections: dict) -> dict:
    """The peaks key adds which positions are crystalline (the rows that define the denoising components; the
    threshold scales with the dose; the spots' indexing, ``classify.definitions.indexing``, decides too)."""
    d = cfg.classify.definitions
    sections["classify.definitions"] = crystal_key_sections(cfg) | {"indexing": d.indexing,
                                                                    "grain_shared_neighbours": d.grain_shared_neighbours}
    sections["dose"] = cfg.section("dose")
    return sections
