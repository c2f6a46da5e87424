"""Polar (Q, azimuth) accumulation of a block of diffraction patterns: the one numba kernel every
radial statistic is derived from.

Each pattern is binned around its own centre, in elliptical coordinates, into ``nq`` radial bins of
``bin_width`` 1/Å and ``n_phi`` azimuthal sectors. Sub-pixel accuracy comes from **supersampling**:
each pixel is split into ``ss × ss`` sub-pixels, each carrying 1/ss² of the pixel's counts and
assigned to the bin of its own centre (the bin-assignment error of a pixel is then at most
1/(2·ss) px instead of 1/2 px; see ``tests/test_profiles.py`` for the error against an analytic ring).

Conventions (shared with ``sendmap.synth``):

* pixel (iy, ix) has its centre at (y=iy, x=ix); centres are (y, x) in those coordinates;
* ellipse: ``ratio`` ≥ 1 (major/minor) with the major axis at ``angle_deg`` from +x towards +y;
  a = sqrt(ratio), b = 1/sqrt(ratio) (area preserving). A detector offset (dy, dx) has the
  undistorted radius ρ = sqrt((u/a)² + (v/b)²) with u = dx·cosθ + dy·sinθ, v = −dx·sinθ + dy·cosθ;
* Q = ρ · q_pixel_size (1/Å, Q = 1/d); radial bin i covers [i·w, (i+1)·w);
* azimuth φ = atan2(dy, dx) of the pixel centre, sector k covers [k, k+1)·2π/n_phi − π.

Size: the reference polar kernel and the per-frame statistics that both profile paths (this kernel and
:mod:`sendmap.science.polar_tables`) share, as numba functions that call each other. The speckle noise model
(from ``speckle_mean_factor`` on, ~180 lines) is a natural module of its own; left here while this file is being
tuned for speed in parallel (issue 19).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np


@dataclass(frozen=True)
class PolarGeometry:
    """Everything the kernel needs besides the frames and their centres.

    q_pixel_size: 1/Å per pixel; bin_width: 1/Å; ratio, angle_deg: the ellipse.
    """

    q_pixel_size: float
    bin_width: float
    nq: int
    n_phi: int = 72
    ratio: float = 1.0
    angle_deg: float = 0.0
    supersample: int = 3

    @property
    def q_centres(self) -> np.ndarray:
        """Bin centres in 1/Å, shape (nq,)."""
        return (np.arange(self.nq) + 0.5) * self.bin_width

    def kernel_args(self) -> tuple:
        th = math.radians(self.angle_deg)
        a = math.sqrt(self.ratio)
        return (self.q_pixel_size, self.bin_width, self.nq, self.n_phi, a, 1.0 / a, math.cos(th), math.sin(th),
                self.supersample)


@numba.njit(cache=True, inline="always")
def _fast_atan2(y, x):
    """atan2 to ≤ 1e-5 rad (Hastings' minimax polynomial for atan on [0, 1] with octant reduction).

    Only the azimuthal sector of a pixel depends on it, so a 1e-5 rad error moves no pixel of a 5° sector
    except within 1e-5 rad of a boundary; it is ~4× cheaper than math.atan2, the kernel's largest cost.
    """
    ax = abs(x)
    ay = abs(y)
    if ax == 0.0 and ay == 0.0:
        return 0.0
    swap = ay > ax
    z = ax / ay if swap else ay / ax
    z2 = z * z
    r = z * (0.99997726 + z2 * (-0.33262347 + z2 * (0.19354346 + z2 * (-0.11643287 + z2 * (0.05265332
                                                                                        - z2 * 0.01172120)))))
    if swap:
        r = 0.5 * math.pi - r
    if x < 0.0:
        r = math.pi - r
    if y < 0.0:
        r = -r
    return r


@numba.njit(cache=True, inline="always")
def pixel_bins(dy0, dx0, off, ia, ib, ct, st, scale, nq, nphi, idx):
    """The geometry of one pixel at offset (dy0, dx0) px from the centre: its azimuthal sector, and the radial
    bin of each of its ss × ss sub-pixels (offsets ``off`` from the pixel centre) that falls below ``nq``,
    written to ``idx``. Returns (sector, number of sub-pixels in range). ia, ib: 1/a, 1/b of the ellipse;
    ct, st: cos and sin of its angle; scale: q_pixel_size / bin_width. Shared by the direct kernel and the
    tables of :mod:`sendmap.science.polar_tables`, so both bin alike."""
    phi = _fast_atan2(dy0, dx0) + math.pi
    kp = int(phi / (2.0 * math.pi) * nphi)
    if kp >= nphi:
        kp = nphi - 1
    u0 = dx0 * ct + dy0 * st
    v0 = -dx0 * st + dy0 * ct
    n_in = 0
    for sy in range(off.size):
        du_y = off[sy] * st
        dv_y = off[sy] * ct
        for sx in range(off.size):
            u = (u0 + off[sx] * ct + du_y) * ia
            v = (v0 - off[sx] * st + dv_y) * ib
            iq = int(math.sqrt(u * u + v * v) * scale)
            if iq < nq:
                idx[n_in] = iq
                n_in += 1
    return kp, n_in


@numba.njit(cache=True, inline="always")
def subpixel_offsets(ss):
    """Offsets (px) of ss sub-pixel centres from their pixel's centre along one axis."""
    off = np.empty(ss)
    for k in range(ss):
        off[k] = (k + 0.5) / ss - 0.5
    return off


@numba.njit(cache=True, inline="always")
def bin_counts(idx, n_in, cnt):
    """Sub-pixels per radial bin of one pixel, from the bins ``idx[:n_in]`` of :func:`pixel_bins`: they fall in
    a few consecutive bins; ``cnt[k]`` = how many in bin lo + k. Returns (lo, span); cnt needs ≥ span entries."""
    lo = idx[0]
    hi = idx[0]
    for i in range(1, n_in):
        lo = min(lo, idx[i])
        hi = max(hi, idx[i])
    span = hi - lo + 1
    for k in range(span):
        cnt[k] = 0
    for i in range(n_in):
        cnt[idx[i] - lo] += 1
    return lo, span


@numba.njit(parallel=True, cache=True, fastmath=False)
def _polar_kernel(frames, centres, mask, qpx, bw, nq, nphi, a, b, ct, st, ss, out_s, out_w, out_w2, out_c2):
    nb, ny, nx = frames.shape
    inv_ss = 1.0 / ss
    w_sub = inv_ss * inv_ss
    ia = 1.0 / a
    ib = 1.0 / b
    scale = qpx / bw  # pixels of undistorted radius -> radial bin index
    # radial bins one pixel can touch: its diagonal (√2 px) stretched by the ellipse, in bins, plus the ends
    max_span = int(1.5 * max(ia, ib) * scale) + 3
    off = subpixel_offsets(ss)
    for f in numba.prange(nb):
        cy = centres[f, 0]
        cx = centres[f, 1]
        idx = np.empty(ss * ss, np.int64)
        cnt = np.empty(max_span, np.int64)
        for iy in range(ny):
            dy0 = iy - cy
            for ix in range(nx):
                if not mask[iy, ix]:
                    continue
                c = np.float64(frames[f, iy, ix])
                kp, n_in = pixel_bins(dy0, ix - cx, off, ia, ib, ct, st, scale, nq, nphi, idx)
                for i in range(n_in):
                    out_s[f, idx[i], kp] += w_sub * c
                    out_w[f, idx[i], kp] += w_sub
                # per-pixel weight per radial bin (for the Poisson variance sum W_p^2 and the pixel variance):
                # the sub-pixels of one pixel fall in a few consecutive bins, counted from the lowest one
                if n_in == 0:
                    continue
                lo, span = bin_counts(idx, n_in, cnt)
                for k in range(span):
                    if cnt[k] > 0:
                        wp = cnt[k] * w_sub
                        out_w2[f, lo + k] += wp * wp
                        out_c2[f, lo + k] += wp * c * c


@dataclass
class PolarSums:
    """Per-frame polar sums of a block.

    s: (B, nq, n_phi) Σ w·c — weighted counts; w: (B, nq, n_phi) Σ w — pixel area (in pixels);
    w2: (B, nq) Σ_p W_p² — squared per-pixel weights (for the Poisson variance of the bin mean);
    c2: (B, nq) Σ_p W_p·c_p² — for the azimuthal (pixel-to-pixel) variance.
    """

    s: np.ndarray
    w: np.ndarray
    w2: np.ndarray
    c2: np.ndarray


def polar_sums(frames: np.ndarray, centres_yx: np.ndarray, mask: np.ndarray, geom: PolarGeometry) -> PolarSums:
    """Accumulate a block of patterns into polar sums around each pattern's own centre.

    frames: (B, Qy, Qx) counts (any real dtype); centres_yx: (B, 2) pixel coordinates;
    mask: (Qy, Qx) bool, True where a pixel is used.

    >>> import numpy as np
    >>> g = PolarGeometry(q_pixel_size=0.01, bin_width=0.01, nq=20, n_phi=8, supersample=2)
    >>> ps = polar_sums(np.ones((1, 41, 41)), np.array([[20.0, 20.0]]), np.ones((41, 41), bool), g)
    >>> bool(np.allclose(ps.s.sum(axis=2) / ps.w.sum(axis=2), 1.0))
    True
    """
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (B, Qy, Qx), got shape {frames.shape}")
    nb = frames.shape[0]
    out_s = np.zeros((nb, geom.nq, geom.n_phi))
    out_w = np.zeros((nb, geom.nq, geom.n_phi))
    out_w2 = np.zeros((nb, geom.nq))
    out_c2 = np.zeros((nb, geom.nq))
    _polar_kernel(frames, np.ascontiguousarray(centres_yx, dtype=np.float64), np.ascontiguousarray(mask, dtype=np.bool_),
                  *geom.kernel_args(), out_s, out_w, out_w2, out_c2)
    return PolarSums(out_s, out_w, out_w2, out_c2)


ROBUST_Z_CLIP = 4.0
"""One-sided clip (σ) of the robust mean: a sector whose counts exceed the bin's mean by more than
4·sqrt(expected) + 1 is rejected (P < 10⁻³ per sector for Poisson noise at any rate; a Bragg spot far more)."""


STATS_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
"""LLVM may reorder sums (so loops over sectors vectorise) but keeps NaN and infinity semantics."""

ROBUST_MAX_ITER = 4
"""Clipping passes of the robust mean (a Bragg spot is rejected in the first; convergence takes 1–3)."""


@numba.njit(cache=True, inline="always")
def stats_scratch(nq, nphi):
    """Work arrays of :func:`_frame_stats` (scratch, work, z), allocated once per thread rather than per frame."""
    return np.empty((4, 2 * nphi)), np.empty(4 * nq + 1), np.empty(nphi, np.float32)


SPOT_QUANTILE_STEPS = 8
"""Bisection steps of the spot statistic's quantiles (SPOT_QUANTILES of the window scores): each step halves the
bracket [min, max], so they are exact to (max − min)/256: ≤ 0.04 σ for amorphous patterns (scores within
−3…+6), below their own sampling noise (~20 effectively independent windows: ~15 %)."""

SPOT_QUANTILES = (0.05, 0.25)
"""The window scores' null is located and scaled from these two low quantiles, Φ(−1.645) and Φ(−0.674) of a
normal null: σ = (q25 − q05)/0.971, centre = q25 + 0.674·σ. Both on the low side, which Bragg spots (they only
add counts) do not reach: up to 75 % of the windows of a band may hold spots (a crystal's six-fold ring of
disks one disk wide each covers ~60 % of its sliding windows)."""

SPOT_QUANTILE_Z = (-1.6449, -0.6745)
"""Standard normal quantiles of SPOT_QUANTILES."""

SPOT_NULL_EVERY = 4
"""The null's centre and scale are estimated at every 4th Q bin and kept for the next three: the band (13 bins at
2 mrad, 0.0125 1/Å bins) moves by one bin per step, so they change little, and the quantiles were half the cost of
the profile statistics (64 × 64 scan of 256² frames: 0.13 of 0.34 s)."""


@numba.njit(cache=True, inline="always", fastmath=STATS_FASTMATH)
def _quantile_pair(z, n, f_lo, f_hi, steps):
    """Values below which fractions ``f_lo`` and ``f_hi`` of z[:n] lie, by bisection on the value (each step one
    branch-free counting pass: no sort)."""
    lo = z[0]
    hi = z[0]
    for k in range(n):
        lo = min(lo, z[k])
        hi = max(hi, z[k])
    a_lo, b_lo, a_hi, b_hi = lo, hi, lo, hi
    t_lo = f_lo * n
    t_hi = f_hi * n
    for _ in range(steps):
        m_lo = np.float32(0.5) * (a_lo + b_lo)
        m_hi = np.float32(0.5) * (a_hi + b_hi)
        c_lo = np.float32(0.0)  # float32 counts (exact below 2²⁴): 8 lanes per vector
        c_hi = np.float32(0.0)
        for k in range(n):
            c_lo += np.float32(z[k] <= m_lo)
            c_hi += np.float32(z[k] <= m_hi)
        if c_lo >= t_lo:
            b_lo = m_lo
        else:
            a_lo = m_lo
        if c_hi >= t_hi:
            b_hi = m_hi
        else:
            a_hi = m_hi
    return 0.5 * (a_lo + b_lo), 0.5 * (a_hi + b_hi)


@numba.njit(cache=True, inline="always", fastmath=STATS_FASTMATH)
def _clipped_rate(s, w, rate, z2, max_iter):
    """One-sided sigma clipping of sectors: the rate Σs/Σw over the sectors k whose counts s[k] do not exceed
    the expectation e = rate·w[k] by more than sqrt(z2·e) + 1, iterated from ``rate`` until the clipped set
    stops growing (it only grows: a lower rate clips more). Branch-free over the sectors, so it vectorises."""
    n_prev = 0
    for _ in range(max_iter):
        sk = 0.0
        wk = 0.0
        n_keep = 0.0
        for k in range(s.size):
            e = rate * w[k]
            d = s[k] - e - 1.0
            keep = np.float64((d <= 0.0) or (d * d <= z2 * e))  # a number, not a branch: this loop vectorises
            sk += s[k] * keep
            wk += w[k] * keep
            n_keep += keep
        n_clip = s.size - int(n_keep)
        if n_clip == n_prev:
            break
        n_prev = n_clip
        if wk > 1e-9:
            rate = sk / wk
    return rate


@numba.njit(cache=True, inline="always")
def _window_width(disk_r_q, q_mid, sector, nphi):
    """The spot statistic's azimuthal window at radius ``q_mid`` (1/Å): one disk diameter, in sectors of
    ``sector`` rad (1 to n_phi)."""
    return int(min(nphi, max(1, round(2.0 * disk_r_q / q_mid / sector))))


@numba.njit(cache=True, inline="always", fastmath=STATS_FASTMATH)
def _band_window_sums(i, s, w, half, disk_r_q, q_mid, sector, band_s, band_w, win_s, win_w, b_lo, b_hi):
    """Slide the spot statistic's radial band to Q bin ``i`` (bins i ± ``half``; it holds bins [b_lo, b_hi), both
    ends only moving up, so each bin is added and removed once) and sum its sectors into the circular azimuthal
    windows one disk diameter wide: win_s/win_w[k] = counts/area of the window starting at sector k. Returns (the
    band's counts, its area, the window width in sectors, the new b_lo, b_hi)."""
    nq, nphi = s.shape
    lo = max(0, i - half)
    hi = min(nq, i + half + 1)
    while b_hi < hi:
        for k in range(nphi):
            band_s[k] += s[b_hi, k]
            band_w[k] += w[b_hi, k]
        b_hi += 1
    while b_lo < lo:
        for k in range(nphi):
            band_s[k] -= s[b_lo, k]
            band_w[k] -= w[b_lo, k]
        b_lo += 1
    width = _window_width(disk_r_q, q_mid, sector, nphi)
    bs = 0.0
    bwt = 0.0
    for k in range(nphi):
        bs += band_s[k]
        bwt += band_w[k]
    for k in range(width):
        band_s[nphi + k] = band_s[k]
        band_w[nphi + k] = band_w[k]
    for k in range(nphi):
        win_s[k] = 0.0
        win_w[k] = 0.0
    for j in range(width):  # window sums: no serial dependency between windows, so it vectorises
        for k in range(nphi):
            win_s[k] += band_s[k + j]
            win_w[k] += band_w[k + j]
    return bs, bwt, width, b_lo, b_hi


@numba.njit(cache=True, inline="always", fastmath=STATS_FASTMATH)
def _band_windows(i, s, w, half, disk_r_q, q_mid, sector, band_s, band_w, win_s, win_w, b_lo, b_hi):
    """:func:`_band_window_sums`, returning (the band's mean rate, the window width in sectors, the new b_lo,
    b_hi), for :func:`sendmap.science.indexing._frame_spot_map`, whose significance must be the same as
    :func:`_frame_stats`'s (there from :func:`spot_areas` and :func:`_band_count_windows`: the same sums)."""
    bs, bwt, width, b_lo, b_hi = _band_window_sums(i, s, w, half, disk_r_q, q_mid, sector, band_s, band_w, win_s,
                                                   win_w, b_lo, b_hi)
    return bs / bwt, width, b_lo, b_hi


@numba.njit(cache=True, inline="always", fastmath=STATS_FASTMATH)
def _band_count_windows(i, s, half, width, band_s, win_s, b_lo, b_hi):
    """One half of :func:`_band_window_sums`, for one per-sector array ``s`` (the counts per frame, or the areas
    once per centre in :func:`spot_areas`): the band's sum, the new b_lo, b_hi; win_s as there."""
    nq, nphi = s.shape
    lo = max(0, i - half)
    hi = min(nq, i + half + 1)
    while b_hi < hi:
        for k in range(nphi):
            band_s[k] += s[b_hi, k]
        b_hi += 1
    while b_lo < lo:
        for k in range(nphi):
            band_s[k] -= s[b_lo, k]
        b_lo += 1
    bs = 0.0
    for k in range(nphi):
        bs += band_s[k]
    for k in range(width):
        band_s[nphi + k] = band_s[k]
    for k in range(nphi):
        win_s[k] = 0.0
    for j in range(width):
        for k in range(nphi):
            win_s[k] += band_s[k + j]
    return bs, b_lo, b_hi


@numba.njit(cache=True, inline="always")
def spot_area_scratch(nq, nphi):
    """Work arrays of :func:`spot_areas` for one centre: window areas (nq, n_phi), band areas (nq,), window
    widths (nq,; 0: the bin is not scored), whether every window of a bin has pixels (nq,)."""
    return np.empty((nq, nphi)), np.empty(nq), np.zeros(nq, np.int64), np.zeros(nq, np.bool_)


@numba.njit(cache=True, fastmath=STATS_FASTMATH)
def spot_areas(w, q_c, disk_r_q, win_w, band_w, width, whole, scratch):
    """The pixel-area half of the spot statistic for one centre's areas ``w`` (nq, n_phi): it depends on the
    centre (and mask) only, so the profile kernel computes it once per distinct centre of a block, not per frame
    (~41 of a 720-frame block of the 128² bench scan). Into win_w[i] the area of each azimuthal window of bin i's
    band, band_w[i] the band's area, width[i] the window width (sectors; 0 where the bin is not scored: within
    1.5 disk radii of the centre or a band without pixels), whole[i] whether every window of the bin has pixels.
    The same sums in the same order as :func:`_band_windows` makes them per frame. ``scratch`` (≥ 1, 2·n_phi): its
    first row is used."""
    nq, nphi = w.shape
    tiny = 1e-9
    for i in range(nq):
        width[i] = 0
        whole[i] = False
    if disk_r_q <= 0.0:
        return
    half = 0
    if nq > 1:
        half = max(0, int(round(max(disk_r_q, 0.0) / (q_c[1] - q_c[0]))))
    cw = np.empty(nq + 1)  # cumulative pixel area, to skip empty bands (as _frame_stats did per frame)
    cw[0] = 0.0
    for i in range(nq):
        wt = 0.0
        for k in range(nphi):
            wt += w[i, k]
        cw[i + 1] = cw[i] + (wt if wt > tiny else 0.0)
    sector = 2.0 * math.pi / nphi
    band_a = scratch[0]
    for k in range(nphi):
        band_a[k] = 0.0
    b_lo = 0
    b_hi = 0
    for i in range(nq):
        if q_c[i] < 1.5 * disk_r_q:
            continue  # inside or next to the central disk: no spots to find
        if cw[min(nq, i + half + 1)] - cw[max(0, i - half)] <= tiny:
            continue
        wd = _window_width(disk_r_q, max(q_c[i], disk_r_q), sector, nphi)
        bwt, b_lo, b_hi = _band_count_windows(i, w, half, wd, band_a, win_w[i], b_lo, b_hi)
        width[i] = wd
        band_w[i] = bwt
        ok = True
        for k in range(nphi):
            ok = ok and win_w[i, k] > tiny
        whole[i] = ok


@numba.njit(cache=True, inline="always", fastmath=STATS_FASTMATH)
def _window_scores(rate, win_s, win_w, zf, n):
    """Poisson score of every azimuthal window against the band's mean ``rate``, (observed − expected) /
    sqrt(max(expected, 1)), in float32, of windows 0 … n − 1 into zf[:n]. A loop of its own, with no data-dependent store, so that it
    vectorises (sqrt and division 8 lanes at a time: ~6 % of the profile stage at 128² frames); its float32
    rounding then differs from the one-at-a-time loop it replaced by ~1e-7 relative (spot_z by ≤ ~1e-4 σ, or by up
    to one step of the quantile bisection, :data:`SPOT_QUANTILE_STEPS`, where a score crosses a bracket)."""
    for k in range(n):
        e = np.float32(rate * win_w[k])
        zf[k] = np.float32(win_s[k] - e) / np.float32(math.sqrt(max(e, np.float32(1.0))))


@numba.njit(cache=True, inline="always", fastmath=STATS_FASTMATH)
def _spot_null(zf, n_ok):
    """(centre, scale) of the window scores' normal null from two low quantiles (:data:`SPOT_QUANTILES`, which
    Bragg spots, adding counts, do not reach)."""
    qa, qb = _quantile_pair(zf, n_ok, SPOT_QUANTILES[0], SPOT_QUANTILES[1], SPOT_QUANTILE_STEPS)
    sig = (qb - qa) / (SPOT_QUANTILE_Z[1] - SPOT_QUANTILE_Z[0])
    return qb - SPOT_QUANTILE_Z[1] * sig, sig


@numba.njit(cache=True, fastmath=STATS_FASTMATH)
def _frame_stats(s, w, w2, c2, q_c, disk_r_q, z_clip, g_c, o_mean, o_sem, o_disp, o_rob, o_spot, o_var, scratch,
                 work, zf, cand_min, cand_ik, cand_z, a_win, a_band, a_width, a_whole):
    """Radial statistics of one frame from its polar sums (see :func:`frame_statistics`); scratch, work from
    :func:`stats_scratch`; ``g_c`` (nq,) the speckle mean factor of each bin (:func:`speckle_mean_factor`; zeros:
    Poisson SEM); ``a_win``, ``a_band``, ``a_width``, ``a_whole``: :func:`spot_areas` of ``w`` (the spot
    statistic's pixel areas, the same for every frame of a centre). The spot windows whose significance reaches ``cand_min`` (σ; +inf: none) go to ``cand_ik``
    (flat index i·n_phi + k of the window starting at sector k, centred at bin i) and ``cand_z`` (σ), in (i, k)
    order, as many as they hold (the spot list's candidates, :func:`sendmap.science.indexing.spots_of_frames`,
    which then need not score the windows again); returns how many there are (more than they hold: overflow). Every loop over the sectors is branch-free (selects, not jumps), so LLVM vectorises it: the
    statistics cost about as much as the accumulation that feeds them."""
    nq, nphi = s.shape
    tiny = 1e-9
    nan = np.nan
    z2 = z_clip * z_clip
    vnum = work[2 * nq + 1:3 * nq + 1]  # V's numerator and denominator per bin (0 where undefined), pooled over
    vden = work[3 * nq + 1:]  # ± one disk radius in Q below
    for i in range(nq):
        S = 0.0
        W = 0.0
        ss2 = 0.0
        n_sec = 0.0
        for k in range(nphi):
            S += s[i, k]
            W += w[i, k]
            has = w[i, k] > tiny
            ss2 += s[i, k] * s[i, k] / max(w[i, k], tiny) * np.float64(has)
            n_sec += np.float64(has)
        vnum[i] = 0.0
        vden[i] = 0.0
        if W <= tiny:
            o_mean[i] = nan
            o_sem[i] = nan
            o_disp[i] = nan
            o_rob[i] = nan
            o_var[i] = nan
            continue
        m = S / W
        o_mean[i] = m
        o_sem[i] = m * w2[i] / (W * W)  # Poisson variance of the mean; the speckle part is added below
        o_disp[i] = (c2[i] / W - m * m) / m if m > 0 else nan
        o_rob[i] = _clipped_rate(s[i], w[i], m, z2, ROBUST_MAX_ITER)
        o_var[i] = nan
        if m > 0 and n_sec > 1:
            # Σ_k w_k (I_k − m)² minus its Poisson expectation (n − 1)·m·ΣW_p²/W, over W·m² minus its Poisson part
            # m·ΣW_p²/W (E[S²/W] = λ²W + λΣW_p²/W): both unbiased for Poisson counts; their ratio is taken on sums
            # over ± one disk radius in Q (the speckle's own correlation length), so a low-dose bin's few counts do
            # not bias it
            vnum[i] = (ss2 - S * m) - (n_sec - 1.0) * m * w2[i] / W
            vden[i] = S * m - m * w2[i] / W
    half = 0
    if nq > 1:
        half = max(0, int(round(max(disk_r_q, 0.0) / (q_c[1] - q_c[0]))))
    # V pooled over ± one disk radius in Q, and the honest SEM: Poisson + speckle, Var(mean)_speckle = m²·V·G/(1 − G)
    # (V estimates σ²(1 − G) around the mean)
    acc = 0.0
    den = 0.0
    j_lo = 0
    j_hi = 0
    for i in range(nq):
        lo = max(0, i - half)
        hi = min(nq, i + half + 1)
        while j_hi < hi:
            acc += vnum[j_hi]
            den += vden[j_hi]
            j_hi += 1
        while j_lo < lo:
            acc -= vnum[j_lo]
            den -= vden[j_lo]
            j_lo += 1
        var = o_sem[i]
        if var == var:  # not NaN
            vb = acc / den if den > tiny else 0.0
            if o_mean[i] > 0 and vden[i] != 0.0:
                o_var[i] = vb
            g = g_c[i]
            extra = o_mean[i] * o_mean[i] * vb * g / (1.0 - g) if g > 0.0 and g < 1.0 else 0.0
            o_sem[i] = math.sqrt(var + max(extra, 0.0))
    if disk_r_q <= 0.0:  # no spot statistic asked for
        for i in range(nq):
            o_spot[i] = nan
        return 0
    # spot significance: radial bands one disk diameter wide, sliding azimuthal windows one disk wide; the windows'
    # pixel areas (win_w), the bands' (band_w) and which bins are scored (width > 0) come from spot_areas
    band_s = scratch[0]  # the band's sector sums, the first `width` repeated at the end (circular)
    win_s = scratch[2]
    for k in range(nphi):
        band_s[k] = 0.0
    b_lo = 0  # the band holds bins [b_lo, b_hi)
    b_hi = 0
    n_done = 0  # bins scored so far: the null is re-estimated at every SPOT_NULL_EVERY-th
    n_cand = 0
    centre = 0.0
    sig = 1.0
    for i in range(nq):
        o_spot[i] = nan
        width = a_width[i]
        if width == 0:
            continue  # within 1.5 disk radii of the centre (no spots to find) or a band without pixels
        bs, b_lo, b_hi = _band_count_windows(i, s, half, width, band_s, win_s, b_lo, b_hi)
        rate = bs / a_band[i]
        win_w = a_win[i]
        # Poisson score of each window against the band's mean rate, (observed − expected)/sqrt(max(expected, 1)),
        # in float32 (8 lanes; ~1e-7 relative); windows without pixels are left out
        _window_scores(rate, win_s, win_w, zf, nphi)
        whole = a_whole[i]
        best = np.float32(-np.inf)
        if whole:  # every window has pixels (most bins): zf stays as it is
            n_ok = nphi
            for k in range(nphi):
                best = max(best, zf[k])
        else:
            n_ok = 0
            for k in range(nphi):  # the windows with pixels, in order, to the front (cheap: no arithmetic)
                z = zf[k]
                ok = win_w[k] > tiny
                zf[n_ok] = z
                n_ok += np.int64(ok)
                best = max(best, z if ok else np.float32(-np.inf))
        if n_ok < 4:
            continue
        # against the local scatter of the scores at this Q (speckle and Poisson): centre and scale of a normal
        # null from two low quantiles (SPOT_QUANTILES: the side spots do not reach), the scale at least 1 (Poisson)
        if n_done % SPOT_NULL_EVERY == 0:
            centre, sig = _spot_null(zf, n_ok)
        n_done += 1
        o_spot[i] = (best - centre) / max(sig, 1.0)
        if o_spot[i] >= cand_min:  # the bin's windows (again where zf was compacted), the same numbers as the map's
            scale = max(sig, 1.0)
            if not whole:
                _window_scores(rate, win_s, win_w, zf, nphi)
            for k in range(nphi):
                if win_w[k] > tiny:
                    z = (zf[k] - centre) / scale
                    if z >= cand_min:
                        if n_cand < cand_ik.size:
                            cand_ik[n_cand] = i * nphi + k
                            cand_z[n_cand] = z
                        n_cand += 1
    return n_cand


@numba.njit(parallel=True, cache=True)
def _stats_kernel(s, w, w2, c2, q_c, disk_r_q, z_clip, g_c, o_mean, o_sem, o_disp, o_rob, o_spot, o_var):
    nb, nq, nphi = s.shape
    no_ik = np.zeros(0, np.int32)  # no candidate windows noted
    no_z = np.zeros(0)
    for f in numba.prange(nb):
        scratch, work, zf = stats_scratch(nq, nphi)
        a_win, a_band, a_width, a_whole = spot_area_scratch(nq, nphi)
        spot_areas(w[f], q_c, disk_r_q, a_win, a_band, a_width, a_whole, scratch)
        _frame_stats(s[f], w[f], w2[f], c2[f], q_c, disk_r_q, z_clip, g_c, o_mean[f], o_sem[f], o_disp[f], o_rob[f],
                     o_spot[f], o_var[f], scratch, work, zf, np.inf, no_ik, no_z, a_win, a_band, a_width, a_whole)


def speckle_mean_factor(q_centres: np.ndarray, n_phi: int, grain_radius_q: float, bin_width: float,
                        friedel: bool = True, sub: int = 4, return_sector_share: bool = False):
    """G(Q) (nq,): the variance of a full ring's azimuthal mean over the variance of one sector's mean, for
    speckle whose intensity autocorrelation is :func:`sendmap.physics.speckle_grain_correlation` with grains
    of the probe disk ``grain_radius_q`` (1/Å), 0 < G ≤ 1.

    G = (1/n) Σ_j ρ̄(j)/ρ̄(0), ρ̄(j) the grain correlation averaged over ``sub`` × 2 points of sector 0 and of
    sector j (their angular and radial extent); ``friedel``: each point is also correlated with the point
    opposite (centrosymmetric speckle of thin weak-phase films, I(q) = I(−q)), which doubles the variance of the
    mean of a ring many grains round. 0 where no grain radius is given (Poisson error model).

    With ``return_sector_share`` also returns ρ̄(0) (nq,): one sector's speckle variance over the pixel-scale
    (point) variance; the kernel's sector-scale V then estimates (point variance)·ρ̄(0)·(1 − G), so
    V / (ρ̄(0)·(1 − G)) is the pixel-scale normalised variance, ≈ 1/M (:func:`fem_variance_scale`)."""
    from ..physics import speckle_grain_correlation

    q = np.asarray(q_centres, dtype=float)
    if not grain_radius_q > 0:
        return (np.zeros(q.shape), np.ones(q.shape)) if return_sector_share else np.zeros(q.shape)
    dphi = 2 * np.pi / n_phi
    phis = (np.arange(sub) + 0.5) / sub * dphi  # within a sector
    dr = (np.array([-0.25, 0.25]) * bin_width)
    lags = np.arange(n_phi) * dphi
    # points of sector 0 of every bin, (nq, P): (radius, angle); all bins and lags at once (Q bin × lag × point of
    # sector 0 × point of sector j), one array operation each instead of a loop over bins and lags (0.3 s serial
    # before the stage's blocks on 45 bins × 36 sectors; the same numbers, bit for bit)
    r = np.maximum(q[:, None] + dr[None, :], 1e-9)
    r0 = np.repeat(r, sub, axis=1)[:, None, :]  # (nq, 1, P), radius-major as meshgrid(r, phis, indexing="ij")
    p0 = np.tile(phis, dr.size)[None, None, :]  # (1, 1, P)
    x0, y0 = r0 * np.cos(p0), r0 * np.sin(p0)
    ang = p0 + lags[None, :, None]  # (1, n_phi, P)
    x1, y1 = r0 * np.cos(ang), r0 * np.sin(ang)  # (nq, n_phi, P)
    x0, y0 = x0[..., :, None], y0[..., :, None]  # (nq, 1, P, 1)
    x1, y1 = x1[..., None, :], y1[..., None, :]  # (nq, n_phi, 1, P)
    c = speckle_grain_correlation(np.hypot(x0 - x1, y0 - y1), grain_radius_q)
    if friedel:
        c = c + speckle_grain_correlation(np.hypot(x0 + x1, y0 + y1), grain_radius_q)
    rho = c.reshape(*c.shape[:2], -1).mean(axis=-1)  # (nq, n_phi)
    out = np.clip(rho.sum(axis=1) / rho[:, 0] / n_phi, 0.0, 1.0)
    share = rho[:, 0]
    return (out, np.clip(share, 1e-6, None)) if return_sector_share else out


def fem_variance_scale(q_centres: np.ndarray, n_phi: int, grain_radius_q: float, bin_width: float) -> np.ndarray:
    """(nq,) factor 1/(ρ̄(0)·(1 − G)) turning the kernel's sector-scale, mean-subtracted V into the pixel-scale
    normalised variance of the speckle (≈ 1/M for M independent volumes; :func:`speckle_mean_factor`). Ones
    where no grain radius is given."""
    g, share = speckle_mean_factor(q_centres, n_phi, grain_radius_q, bin_width, return_sector_share=True)
    return 1.0 / (share * (1.0 - np.minimum(g, 0.999)))


def frame_statistics(ps: PolarSums, q_centres: np.ndarray, disk_radius_q: float,
                     z_clip: float = ROBUST_Z_CLIP, speckle_factor: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Radial statistics per frame and Q bin from polar sums; arrays of shape (B, nq).

    * ``mean``: azimuthal mean counts per pixel I(Q);
    * ``fem_variance``: the normalised azimuthal variance V(Q) of the pattern (fluctuation electron microscopy:
      the ring variance of one pattern, Daulton, Bond & Voyles, Ultramicroscopy 110 (2010) 1279, whose average
      over positions is their "ring ensemble" V; not the "annular mean of the variance image", which needs all
      positions at once), at the scale of one azimuthal sector and one bin, minus its Poisson part:
      V = Σ_band [Σ_k w_k (I_k − I)² − (n − 1)·I·ΣW_p²/W] / Σ_band [W·I² − I·ΣW_p²/W] over the n sectors k with
      pixels (sector means I_k, areas w_k, W = Σ w_k) and the bins within ± one disk radius (the speckle's own
      correlation length in Q: sums, not a mean of ratios, so a low-dose bin's few counts do not bias it).
      Unbiased for Poisson noise: ≈ 0 ± noise for a smooth ring; ≈ 1/M (after :func:`fem_variance_scale`) for
      partially developed speckle of M volumes with grains larger than a sector (the probe disk: 0.08 1/Å at
      2 mrad, 200 kV; a 5° sector at 0.5 1/Å is 0.044 wide);
    * ``sem``: standard error of the mean. Poisson, sqrt(I·ΣW_p²)/ΣW_p (the mean is the Poisson rate
      estimate, so empty bins of a low-dose pattern do not get a zero error), plus, where ``speckle_factor``
      G(Q) is given (:func:`speckle_mean_factor`; the "azimuthal" error model), the speckle part
      I²·V·G/(1 − G), floored at 0, so the SEM is never below the Poisson one;
    * ``dispersion``: pixel variance / mean, ≈ 1 for an isotropic Poisson ring, ≫ 1 where Bragg spots sit;
    * ``robust``: sigma-clipped mean over the azimuthal sectors: sectors whose counts exceed the
      current mean's expectation by more than ``z_clip``·sqrt(expected) + 1 (one-sided: Bragg spots
      only add counts) are dropped, iterated to convergence; equals ``mean`` on an isotropic ring;
    * ``spot_z``: significance of the brightest Bragg-disk-sized spot centred at each Q, against the local
      azimuthal scatter at that Q (speckle-aware). Counts are summed over a radial band one disk diameter
      (2 × ``disk_radius_q``) wide and a sliding azimuthal window one disk diameter wide at that radius; each
      window gets a Poisson score (observed − expected)/sqrt(expected) against the band's mean rate; the
      statistic is (largest score − centre) / max(1, scale), centre and scale those of a normal through the
      5 % and 25 % points of the scores (:data:`SPOT_QUANTILES`, re-estimated every :data:`SPOT_NULL_EVERY`
      bins). For Poisson noise the scale is ≈ 1 and this is the familiar (observed − expected)/sqrt(expected);
      where speckle widens the scatter of the windows, a grain is measured against that scatter, not against
      Poisson. Only the low side sets the null, which spots (they add counts) do not reach: up to 75 % of a
      band's windows may hold spots. NaN within 1.5 disk radii of the centre.

    Bins without any pixel are NaN.
    """
    s = np.ascontiguousarray(ps.s, dtype=np.float64)
    nb, nq, _ = s.shape
    out = {k: np.empty((nb, nq)) for k in ("mean", "sem", "dispersion", "robust", "spot_z", "fem_variance")}
    g = np.zeros(nq) if speckle_factor is None else np.ascontiguousarray(speckle_factor, dtype=np.float64)
    _stats_kernel(s, np.ascontiguousarray(ps.w, dtype=np.float64), np.ascontiguousarray(ps.w2, dtype=np.float64),
                  np.ascontiguousarray(ps.c2, dtype=np.float64), np.asarray(q_centres, dtype=np.float64),
                  float(disk_radius_q), float(z_clip), g, out["mean"], out["sem"], out["dispersion"], out["robust"],
                  out["spot_z"], out["fem_variance"])
    return out


def radial_statistics(ps: PolarSums) -> dict[str, np.ndarray]:
    """``mean``, ``sem``, ``dispersion`` and ``robust`` of :func:`frame_statistics` (B, nq)."""
    nq = ps.s.shape[1]
    st = frame_statistics(ps, np.arange(nq, dtype=np.float64), 0.0)  # disk radius 0: no spot statistic
    return {k: st[k] for k in ("mean", "sem", "dispersion", "robust")}


def spot_significance_profile(ps: PolarSums, q_centres: np.ndarray, disk_radius_q: float) -> np.ndarray:
    """``spot_z`` of :func:`frame_statistics`: Bragg-spot significance (σ) per frame and Q bin, (B, nq)."""
    return frame_statistics(ps, q_centres, disk_radius_q)["spot_z"]



def speckle_radial_correlation(grain_radius_q: float, bin_width: float) -> np.ndarray:
    """K(l)/K(0) for radial-bin lags l = 0, 1, …, ⌈2·radius/bin_width⌉: the correlation of the speckle errors of
    two azimuthal means l bins apart. K(Δ) = ∫ |γ|²(sqrt(Δ² + s²)) ds is the covariance of the means of two rings Δ
    apart, each many grains round, for grains of the probe disk (:func:`sendmap.physics.speckle_grain_correlation`).
    """
    from ..physics import speckle_grain_correlation

    s = np.linspace(-2 * grain_radius_q, 2 * grain_radius_q, 801)
    lags = np.arange(int(np.ceil(2 * grain_radius_q / bin_width)) + 1) * bin_width
    k = np.array([np.trapezoid(speckle_grain_correlation(np.hypot(d, s), grain_radius_q), s) for d in lags])
    return k / k[0]


def peak_slope_variance_factor(bin_width: float, half_width: float, degree: int, correlation: np.ndarray) -> float:
    """Var(slope at the centre of a degree-``degree`` least-squares polynomial over ± ``half_width``) for errors with
    the radial ``correlation`` (:func:`speckle_radial_correlation`) over the same for independent errors of the same
    size: aᵀKa / aᵀa, a the fit's linear map to the slope. A peak's position moves by −(error slope)/curvature, so
    this is the factor by which a fit that treats the bins as independent understates a speckle-limited peak
    position's variance."""
    n = int(round(half_width / bin_width))
    x = np.arange(-n, n + 1) * bin_width / max(half_width, 1e-12)
    xm = np.vander(x, degree + 1, increasing=True)
    a = np.linalg.pinv(xm)[1]  # coefficient of x¹: the slope at the centre
    lag = np.abs(np.arange(x.size)[:, None] - np.arange(x.size)[None, :])
    kmat = np.where(lag < correlation.size, correlation[np.minimum(lag, correlation.size - 1)], 0.0)
    return float(a @ kmat @ a / (a @ a))


def speckle_fit_sem(sem: np.ndarray, mean: np.ndarray, fem_variance: np.ndarray, speckle_factor: np.ndarray,
                    sector_share: np.ndarray, half_bins: int, factor: float) -> np.ndarray:
    """Errors for a fit that treats a profile's bins as independent: the speckle part of the variance,
    mean²·V̄·ρ̄(0)·G (V̄ the pixel-scale ``fem_variance`` averaged over ± ``half_bins`` as in
    :func:`frame_statistics`; G, ρ̄(0) from :func:`speckle_mean_factor`), scaled by ``factor``
    (:func:`peak_slope_variance_factor`), the rest (Poisson) unchanged. sem, mean, fem_variance: (..., nq), mean and
    sem in the same units (both × Q^n alike). Returns (..., nq)."""
    ok = np.isfinite(fem_variance) & (fem_variance != 0)
    v = np.where(ok, fem_variance, 0.0)
    h = int(half_bins)
    if h == 0:  # no pooling (the peaks stage's case: features/fem_variance is pooled already): V̄ = V exactly (the
        # cumulative sums below give it to ~1e-15 of the row's sum, their rounding)
        vbar = v
    else:
        cs = np.cumsum(np.pad(v, [(0, 0)] * (v.ndim - 1) + [(h + 1, h)]), axis=-1)
        cn = np.cumsum(np.pad(ok.astype(float), [(0, 0)] * (v.ndim - 1) + [(h + 1, h)]), axis=-1)
        k = 2 * h + 1
        vs = cs[..., k:] - cs[..., :-k]
        ns = cn[..., k:] - cn[..., :-k]
        vbar = np.where(ns > 0, vs / np.where(ns > 0, ns, 1.0), 0.0)
    spk2 = np.nan_to_num(mean) ** 2 * np.clip(vbar, 0.0, None) * np.asarray(sector_share) * np.asarray(speckle_factor)
    return np.sqrt(np.asarray(sem, float) ** 2 + max(float(factor) - 1.0, 0.0) * spk2)


def correlated_noise_top_singular_value(white: np.ndarray, speckle: np.ndarray, correlation: np.ndarray,
                                        n_rows: int, seed: int = 0) -> float:
    """Largest singular value (per sqrt(n_rows)) of an n_rows × m matrix of centred noise whose rows have the
    covariance diag(white²) + diag(speckle)·K·diag(speckle), K the radial speckle ``correlation`` of consecutive
    bins (:func:`speckle_radial_correlation`): the noise edge a low-rank denoising must clear when speckle errors,
    correlated over ± one disk diameter in Q, dominate (the Marchenko–Pastur edge assumes independent bins and
    lets their correlated modes pass as signal). white, speckle: (m,) per-bin standard deviations in the
    whitened units of the denoising. One draw (seed): its top value scatters by ~1 %."""
    m = int(np.size(white))
    lag = np.abs(np.arange(m)[:, None] - np.arange(m)[None, :])
    k = np.where(lag < correlation.size, correlation[np.minimum(lag, correlation.size - 1)], 0.0)
    c = np.diag(np.asarray(white, float) ** 2) + np.asarray(speckle, float)[:, None] * k * np.asarray(speckle, float)[None, :]
    w, v = np.linalg.eigh(c)
    root = v * np.sqrt(np.clip(w, 0.0, None))[None, :]
    z = np.random.default_rng(seed).standard_normal((max(int(n_rows), 2), m)) @ root.T
    z -= z.mean(axis=0)
    from .lowrank import gram_svd

    return float(gram_svd(z, vectors=False)[0][0] / np.sqrt(max(int(n_rows), 1)))


def poisson_bin_correlation(q_pixel_size: float, bin_width: float, supersample: int, q_range: tuple[float, float],
                            ratio: float = 1.0, max_lag: int = 3, centre_fractions=(0.0, 0.25, 0.5)) -> np.ndarray:
    """Correlation of the Poisson errors of an azimuthal-mean profile's radial bins at lags 0, 1, …, ``max_lag``
    (1 at lag 0), from the pixel splitting alone: a pixel's ``supersample``² sub-pixels can fall into two (or
    three) neighbouring bins (:func:`pixel_bins`), so those bins share its counts. For a bin mean
    I_i = Σ_p w_pi c_p / W_i (w_pi the pixel's share in bin i) and counts of a locally uniform rate,
    corr(i, i + l) = Σ_p w_pi w_p,i+l / √(Σ_p w_pi² · Σ_p w_p,i+l²), averaged over the bins whose centres lie in
    ``q_range`` (1/Å) and over pattern centres at the pixel ``centre_fractions``. At one pixel per bin and 3 × 3
    sub-pixels it is 0.21 at lag 1, ≈ 0 beyond (what 1000 Poisson patterns of a synthetic ring show, 0.21): the
    Poisson-only fit error is then ~12 % too small if the bins are taken as independent. ``ratio``: the
    ellipse's axis ratio (its angle does not change the average)."""
    scale = q_pixel_size / bin_width
    n_hi = int(np.ceil(q_range[1] / bin_width)) + max_lag + 2
    r_px = int(np.ceil(n_hi / scale * max(ratio, 1.0 / ratio) ** 0.5)) + 2
    off = (np.arange(supersample) + 0.5) / supersample - 0.5
    a = np.sqrt(ratio)
    lo_bin = max(int(np.floor(q_range[0] / bin_width)), 0)
    acc = np.zeros(max_lag + 1)
    n_acc = 0
    for f in centre_fractions:
        yy, xx = np.mgrid[-r_px:r_px + 1, -r_px:r_px + 1].astype(float)
        yy, xx = (yy - f).ravel(), (xx - f).ravel()
        sy = yy[:, None, None] + off[None, :, None]
        sx = xx[:, None, None] + off[None, None, :]
        iq = np.floor(np.hypot(sx / a, sy * a) * scale).astype(int).reshape(len(yy), -1)  # (pixels, ss²)
        base = iq.min(axis=1)
        keep = (iq.max(axis=1) >= lo_bin - max_lag) & (base <= n_hi)
        iq, base = iq[keep], base[keep]
        span = int((iq.max(axis=1) - base).max()) + 1
        w = np.stack([(iq - base[:, None] == k).mean(axis=1) for k in range(span)], axis=1)  # (pixels, span)
        s2 = np.zeros(n_hi + span + 1)
        np.add.at(s2, np.clip(base[:, None] + np.arange(span), 0, n_hi + span), w ** 2)
        for lag in range(max_lag + 1):
            x = np.zeros(n_hi + span + 1)
            if lag < span:
                np.add.at(x, np.clip(base[:, None] + np.arange(span - lag), 0, n_hi + span),
                          w[:, :span - lag] * w[:, lag:])
            bins = np.arange(lo_bin, n_hi - max_lag)
            centres = (bins + 0.5) * bin_width
            bins = bins[(centres >= q_range[0]) & (centres <= q_range[1])]
            with np.errstate(invalid="ignore", divide="ignore"):
                c = x[bins] / np.sqrt(s2[bins] * s2[bins + lag])
            acc[lag] += np.nanmean(c) if bins.size else (1.0 if lag == 0 else 0.0)
        n_acc += 1
    return acc / n_acc
