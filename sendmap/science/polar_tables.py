"""Radial profiles of a block of patterns at memory speed: precomputed pixel→bin tables, sparse counts.

The geometry of the polar binning (which radial bins and azimuthal sector each pixel's sub-pixels fall
in) depends only on where the pixel sits relative to the pattern centre. It is computed once per
*fractional* centre position and reused for every frame whose centre has that fractional part: a
table is indexed by the pixel's offset from the centre's integer part, so one table serves every integer
shift of the centre. The centre is rounded to a grid of ``centre_step_px`` (1/8 px: at most 1/16 px
away; ``tests/test_profiles_fast.py`` bounds the effect on I(Q) of an analytic ring: < 0.25 %, the size of
the supersampling's own discretisation jitter).

Per frame only the **non-zero pixels** are visited (a low-dose counting detector records zero in most
pixels: 93 % at 2 × 10⁴ e⁻ on 256²), each adding its counts to its 1–3 radial bins with the
supersampling weights of :mod:`sendmap.science.polar`, so results equal that module's kernel for a
centre on the grid. The per-bin pixel areas (Σw, Σw²) do not depend on the counts: they are the table's
totals minus the masked pixels and the offsets that fall outside the detector, computed once per
distinct centre of a block.

Everything a profile needs comes out of one pass over each frame: mean I(Q), its SEM (Poisson, or Poisson +
speckle), index of dispersion, the normalised azimuthal variance V(Q) (fluctuation electron microscopy), the
sigma-clipped robust mean, the speckle-aware Bragg-spot significance and the virtual BF/ADF counts
(:func:`profile_block`). The statistics themselves are :func:`sendmap.science.polar.frame_statistics`,
shared with the reference kernel.

Size: one fast path: the table builder, the dense and sparse accumulation kernels and :class:`PolarTables` share
the layout of the table records (``rec``/``crec`` arrays, indexed by centre offset), which a split would spread
over modules.
"""
from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict

import numba
import numpy as np

from .indexing import MAX_SPOTS, SPOT_Z_MIN, _frame_spots, row_sums, spot_block, spot_geometry, spot_scratch
from .frames import kernel_frames
from .polar import (PolarGeometry, _frame_stats, bin_counts, pixel_bins, spot_area_scratch, spot_areas, stats_scratch,
                    subpixel_offsets)
from .sparse import SparseFrames, list_nonzero
from .spot_mask import PIXEL_HALF_DIAGONAL, masked_profile_dirs

DEFAULT_CENTRE_STEP_PX = 0.125
"""Grid the per-frame centre is rounded to for the tables (px): at most 1/16 px off, up to 64 tables."""

COMPACT_LAYOUT = "bits 0-11: first radial bin + 1 (0: none); 12-19: sector; 20-25, 26-31: sub-pixels in it and the next"
"""4-byte records, used where every pixel reaches at most two radial bins (bins ≥ one pixel, the default), fewer
than 4095 bins, 256 sectors and 63 sub-pixels; else the general byte records."""

GEOMETRY_CACHE_BYTES = 64e6
"""Per-process cache of the pixel areas of recently used centres (:meth:`PolarTables.geometry`): 600 centres at
180 bins × 72 sectors; a drifting 148-position scan row uses ~40."""


@numba.njit(cache=True)
def _fill_table(fy, fx, oy0, ox0, qpx, bw, nq, nphi, a, b, ct, st, ss, kmax, rec):
    """Fill one table: for every offset (oy, ox) of the box, its record (see :class:`PolarTables`); returns the
    sub-pixels that fell beyond ``kmax`` bins (0 unless kmax is too small)."""
    ia = 1.0 / a
    ib = 1.0 / b
    scale = qpx / bw
    off = subpixel_offsets(ss)
    max_span = int(1.5 * max(ia, ib) * scale) + 3  # as in the direct kernel: ≥ the bins a pixel can touch
    overflow = 0
    idx = np.empty(ss * ss, np.int64)
    cnt = np.empty(max_span, np.int64)
    for oy in range(rec.shape[0]):
        dy0 = oy - oy0 - fy
        for ox in range(rec.shape[1]):
            dx0 = ox - ox0 - fx
            for j in range(rec.shape[2]):
                rec[oy, ox, j] = 0
            kp, n_in = pixel_bins(dy0, dx0, off, ia, ib, ct, st, scale, nq, nphi, idx)
            if n_in == 0:
                continue
            lo, span = bin_counts(idx, n_in, cnt)
            for j in range(span):
                if j < kmax:
                    rec[oy, ox, 4 + j] = cnt[j]
                else:
                    overflow += cnt[j]
            rec[oy, ox, 0] = (lo + 1) & 0xFF
            rec[oy, ox, 1] = (lo + 1) >> 8
            rec[oy, ox, 2] = kp & 0xFF
            rec[oy, ox, 3] = kp >> 8
    return overflow


@numba.njit(parallel=True, cache=True)
def _build_tables(todo, n_sub, oy0, ox0, qpx, bw, nq, nphi, a, b, ct, st, ss, kmax, inv_ss2, rec, w_full, w2_full,
                  crec, compact):
    """Build the tables ``todo`` (indices into rec, w_full, w2_full, crec), one per thread at a time: records,
    their area totals and, if ``compact``, the 4-byte records. Returns the overflow of each (see _fill_table)."""
    overflow = np.zeros(todo.size, np.int64)
    for i in numba.prange(todo.size):
        t = todo[i]
        jy, jx = divmod(t, n_sub)
        overflow[i] = _fill_table(jy / n_sub, jx / n_sub, oy0, ox0, qpx, bw, nq, nphi, a, b, ct, st, ss, kmax, rec[t])
        w_full[t] = 0.0
        w2_full[t] = 0.0
        _table_totals(rec[t], inv_ss2, w_full[t], w2_full[t])
        if compact:
            r = rec[t]
            for oy in range(r.shape[0]):
                for ox in range(r.shape[1]):
                    crec[t, oy, ox] = ((np.uint32(r[oy, ox, 0]) | (np.uint32(r[oy, ox, 1]) << 8))
                                       | ((np.uint32(r[oy, ox, 2]) | (np.uint32(r[oy, ox, 3]) << 8)) << 12)
                                       | (np.uint32(r[oy, ox, 4]) << 20) | (np.uint32(r[oy, ox, 5]) << 26))
    return overflow


@numba.njit(inline="always")
def _first_bin(r):
    """First radial bin of a record r (uint8[4 + K]), −1 where the offset reaches no bin."""
    return (np.int64(r[0]) | (np.int64(r[1]) << 8)) - 1


@numba.njit(inline="always")
def _sector(r):
    return np.int64(r[2]) | (np.int64(r[3]) << 8)


@numba.njit(cache=True)
def _table_totals(rec, inv_ss2, w_out, w2_out):
    """Σw per (bin, sector) and Σw² per bin over the whole box of one table."""
    ny, nx, nr = rec.shape
    for oy in range(ny):
        for ox in range(nx):
            r = rec[oy, ox]
            i0 = _first_bin(r)
            if i0 < 0:
                continue
            k = _sector(r)
            for j in range(nr - 4):
                n = r[4 + j]
                if n:
                    wgt = n * inv_ss2
                    w_out[i0 + j, k] += wgt
                    w2_out[i0 + j] += wgt * wgt


@numba.njit(inline="always")
def _subtract(rec, t, oy, ox, inv_ss2, w, w2):
    r = rec[t, oy, ox]
    i0 = _first_bin(r)
    if i0 < 0:
        return
    k = _sector(r)
    for j in range(rec.shape[3] - 4):
        n = r[4 + j]
        if n:
            wgt = n * inv_ss2
            w[i0 + j, k] -= wgt
            w2[i0 + j] -= wgt * wgt


@numba.njit(parallel=True, cache=True)
def _unique_geometry(uy, ux, ut, slot, ny, nx, masked_y, masked_x, rec, w_full, w2_full, oy0, ox0, inv_ss2, w_out,
                     w2_out):
    """Pixel areas per (bin, sector) for each distinct centre u, into w_out[slot[u]]: table totals − masked −
    off-detector offsets."""
    nbox_y = rec.shape[1]
    nbox_x = rec.shape[2]
    for u in numba.prange(uy.size):
        t = ut[u]
        w = w_out[slot[u]]
        w2 = w2_out[slot[u]]
        w[:, :] = w_full[t]
        w2[:] = w2_full[t]
        by = oy0 - uy[u]  # offset index = pixel index + by
        bx = ox0 - ux[u]
        for oy in range(nbox_y):
            iy = oy - by
            if iy < 0 or iy >= ny:
                for ox in range(nbox_x):
                    _subtract(rec, t, oy, ox, inv_ss2, w, w2)
            else:
                for ox in range(0, min(nbox_x, bx)):  # ix < 0
                    _subtract(rec, t, oy, ox, inv_ss2, w, w2)
                for ox in range(max(0, nx + bx), nbox_x):  # ix >= nx
                    _subtract(rec, t, oy, ox, inv_ss2, w, w2)
        for m in range(masked_y.size):
            oy = masked_y[m] + by
            ox = masked_x[m] + bx
            if 0 <= oy < nbox_y and 0 <= ox < nbox_x:
                _subtract(rec, t, oy, ox, inv_ss2, w, w2)


@numba.njit(inline="always")
def _frame_window(frame_shape, box, by, bx):
    """Rows y0:y1 and columns x0:x1 of a frame whose offsets (pixel + (by, bx)) fall inside a table's box."""
    ny, nx = frame_shape
    return max(0, -by), min(ny, box[0] - by), max(0, -bx), min(nx, box[1] - bx)


@numba.njit(inline="always")
def _add_general(r, kmax, cf, cc, s, c2):
    """Add one pixel (counts/ss² ``cf``, × counts ``cc``) to its bins by its general record r (uint8[4 + K])."""
    i0 = _first_bin(r)
    if i0 < 0:
        return
    k = _sector(r)
    for j in range(kmax):  # branch-free: s and c2 have kmax spare bins at the end
        n = np.float64(r[4 + j])
        s[i0 + j, k] += n * cf
        c2[i0 + j] += n * cc


@numba.njit(inline="always")
def _add_compact(r, cf, cc, s, c2):
    """Add one pixel to its bins by its 4-byte record r (:data:`COMPACT_LAYOUT`)."""
    i0 = (r & 0xFFF) - 1
    if i0 < 0:
        return
    k = (r >> 12) & 0xFF
    n0 = np.float64((r >> 20) & 0x3F)
    n1 = np.float64(r >> 26)  # s and c2 have a spare bin at the end for n1 of the last bin
    s[i0, k] += n0 * cf
    s[i0 + 1, k] += n1 * cf
    c2[i0] += n0 * cc
    c2[i0 + 1] += n1 * cc


@numba.njit(inline="always")
def _accumulate_frame(frame, mask, rec, kmax, t, by, bx, inv_ss2, s, c2, idx):
    """Add the non-zero, unmasked pixels of one frame to its polar sums s (nq + kmax, nphi) and c2 (nq + kmax):
    the kmax spare bins at the end take the (zero) weights a branch-free loop adds past the last bin.
    ``idx``: work array of length ≥ Qx for :func:`list_nonzero`."""
    y0, y1, x0, x1 = _frame_window(frame.shape, rec.shape[1:3], by, bx)
    for iy in range(y0, y1):
        oy = iy + by
        row = frame[iy]
        n_nz = list_nonzero(row, x0, x1, idx)
        for m in range(n_nz):
            ix = idx[m]
            if not mask[iy, ix]:
                continue
            c = np.float64(row[ix])
            cf = c * inv_ss2
            _add_general(rec[t, oy, ix + bx], kmax, cf, cf * c, s, c2)


@numba.njit(inline="always")
def _accumulate_frame_compact(frame, mask, crec, t, by, bx, inv_ss2, s, c2, idx):
    """:func:`_accumulate_frame` for tables of 4-byte records (:data:`COMPACT_LAYOUT`, pixels reaching at most two
    radial bins): half the bytes to fetch per pixel, ~25 % faster on 256² frames; the same sums, bit for bit."""
    y0, y1, x0, x1 = _frame_window(frame.shape, crec.shape[1:3], by, bx)
    for iy in range(y0, y1):
        row = frame[iy]
        mrow = mask[iy]
        rrow = crec[t, iy + by]
        n_nz = list_nonzero(row, x0, x1, idx)
        for m in range(n_nz):
            ix = idx[m]
            if not mrow[ix]:
                continue
            c = np.float64(row[ix])
            cf = c * inv_ss2
            _add_compact(np.int64(rrow[ix + bx]), cf, cf * c, s, c2)


@numba.njit(inline="always")
def _accumulate_sparse_compact(pix, val, nx, mask, ct, by, bx, inv_ss2, s, c2):
    """:func:`_accumulate_sparse` for compact records (``ct``: the frame's table, crec[t]), its own loop (the
    ``compact`` test out of it) with unsigned indices where they are known to be in range (no wrap-around of
    negative indices per access): the same additions in the same order."""
    bh, bwid = ct.shape
    one = np.uint64(1)
    nxu = np.uint64(nx)
    iy = np.uint64(0)
    row0 = np.uint64(0)
    row_end = np.uint64(0)
    oyu = np.uint64(0)
    row_ok = False
    for m in range(pix.size):
        p = np.uint64(pix[m])
        if p >= row_end:
            iy = p // nxu
            row0 = iy * nxu
            row_end = row0 + nxu
            oy = np.int64(iy) + by
            row_ok = 0 <= oy < bh
            oyu = np.uint64(max(oy, 0))
        if not row_ok:
            continue
        ix = p - row0
        ox = np.int64(ix) + bx
        if ox < 0 or ox >= bwid or not mask[iy, ix]:
            continue
        c = np.float64(val[m])
        cf = c * inv_ss2
        cc = cf * c
        r = np.uint64(ct[oyu, np.uint64(ox)])
        i0 = r & np.uint64(0xFFF)
        if i0 == 0:
            continue
        i0 -= one
        k = (r >> np.uint64(12)) & np.uint64(0xFF)
        n0 = np.float64((r >> np.uint64(20)) & np.uint64(0x3F))
        n1 = np.float64(r >> np.uint64(26))  # s and c2 have a spare bin at the end for n1 of the last bin
        s[i0, k] += n0 * cf
        s[i0 + one, k] += n1 * cf
        c2[i0] += n0 * cc
        c2[i0 + one] += n1 * cc


@numba.njit(inline="always")
def _accumulate_sparse(pix, val, nx, mask, rec, crec, compact, kmax, t, by, bx, inv_ss2, s, c2):
    """:func:`_accumulate_frame` (``compact``: :func:`_accumulate_frame_compact`) for one frame given as its
    non-zero pixels: flat indices ``pix`` (ascending, iy·nx + ix) and counts ``val``. The same sums in the same
    order, bit for bit, without decoding or scanning the zeros. The row is followed as the indices grow (no
    integer division per pixel)."""
    if compact:
        _accumulate_sparse_compact(pix, val, nx, mask, crec[t], by, bx, inv_ss2, s, c2)
        return
    bh, bwid = rec.shape[1], rec.shape[2]
    iy = -1
    row_end = 0
    oy = 0
    row_ok = False
    for m in range(pix.size):
        p = np.int64(pix[m])
        if p >= row_end:
            iy = p // nx
            row_end = (iy + 1) * nx
            oy = iy + by
            row_ok = 0 <= oy < bh
        if not row_ok:
            continue
        ix = p - (row_end - nx)
        ox = ix + bx
        if ox < 0 or ox >= bwid or not mask[iy, ix]:
            continue
        c = np.float64(val[m])
        cf = c * inv_ss2
        _add_general(rec[t, oy, ox], kmax, cf, cf * c, s, c2)


@numba.njit(parallel=True, cache=True)
def _profile_block_kernel(frames, sp_off, sp_pix, sp_val, sparse, order, iyc, ixc, tix, uix, uniq, ujx, w_u, w2_u, mask, rec,
                          crec, compact, kmax, oy0, ox0, inv_ss2, q_c, disk_r_q, z_clip, g_c, bf_hi, adf_lo, adf_hi,
                          n_chunks, keep_sums, select, keep_z, out_mean, out_sem, out_disp, out_robust, out_spot,
                          out_var, out_bf, out_adf, out_s, kept, cand_min, n_cand_max, out_spots, out_scattered,
                          out_mmean, out_msem, pix_margin_q):
    """The polar sums of each frame (sparse or dense), its statistics (:func:`_frame_stats`), virtual BF/ADF and,
    with ``keep_sums``, its sums into out_s; with ``select``, the spot list (:func:`sendmap.science.indexing.
    _frame_spots`, into out_spots[f] and out_scattered[f]) of each frame whose spot_z reaches keep_z somewhere
    (kept[f]), made right after its statistics while its sums are in cache, from the windows at or above
    ``cand_min`` σ that :func:`_frame_stats` noted (up to ``n_cand_max``; more: scored again), and its spot-masked
    mean and sem (:func:`sendmap.science.spot_mask.masked_profile`, into out_mmean[f], out_msem[f]; the mean and
    sem where no spot is listed). ``uniq``: the distinct slots of ``uix``, ``ujx`` each frame's index into them:
    the spot statistic's pixel areas (:func:`sendmap.science.polar.spot_areas`) are computed once per slot."""
    nb = order.shape[0]
    nx = mask.shape[1]
    nq, nphi = w_u.shape[1], w_u.shape[2]
    cosk, sink, hw = spot_geometry(q_c, disk_r_q, nphi)
    n_u = uniq.size
    a_win = np.empty((n_u, nq, nphi))
    a_band = np.empty((n_u, nq))
    a_width = np.zeros((n_u, nq), np.int64)
    a_whole = np.zeros((n_u, nq), np.bool_)
    for j in numba.prange(n_u):
        sc = np.empty((4, 2 * nphi))
        spot_areas(w_u[uniq[j]], q_c, disk_r_q, a_win[j], a_band[j], a_width[j], a_whole[j], sc)
    for ch in numba.prange(n_chunks):
        f0 = ch * nb // n_chunks
        f1 = (ch + 1) * nb // n_chunks
        s_pad = np.empty((nq + kmax, nphi))  # kmax spare bins: see _accumulate_frame
        c2_pad = np.empty(nq + kmax)
        s = s_pad[:nq]
        c2 = c2_pad[:nq]
        scratch, work, zf = stats_scratch(nq, nphi)
        idx = np.empty(nx, np.int64)
        # the spot list's work arrays and this frame's noted candidate windows (one frame at a time)
        cand_ik = np.empty(n_cand_max if select else 0, np.int32)
        cand_z = np.empty(n_cand_max if select else 0)
        zmap, widths = spot_scratch(q_c if select else q_c[:0], disk_r_q, nphi)  # (NaN; _frame_spots keeps it so)
        rob = np.empty(nq)
        rs = np.empty(nq)
        for i in range(f0, f1):
            f = order[i]  # frames sharing a table in a row: it stays in cache
            s_pad[:, :] = 0.0
            c2_pad[:] = 0.0
            if sparse:
                a, z = sp_off[f], sp_off[f + 1]
                _accumulate_sparse(sp_pix[a:z], sp_val[a:z], nx, mask, rec, crec, compact, kmax, tix[f],
                                   oy0 - iyc[f], ox0 - ixc[f], inv_ss2, s_pad, c2_pad)
            elif compact:
                _accumulate_frame_compact(frames[f], mask, crec, tix[f], oy0 - iyc[f], ox0 - ixc[f], inv_ss2, s_pad, c2_pad,
                                          idx)
            else:
                _accumulate_frame(frames[f], mask, rec, kmax, tix[f], oy0 - iyc[f], ox0 - ixc[f], inv_ss2, s_pad,
                                  c2_pad, idx)
            u = uix[f]
            nc = _frame_stats(s, w_u[u], w2_u[u], c2, q_c, disk_r_q, z_clip, g_c, out_mean[f], out_sem[f],
                              out_disp[f], out_robust[f], out_spot[f], out_var[f], scratch, work, zf, cand_min,
                              cand_ik, cand_z, a_win[ujx[f]], a_band[ujx[f]], a_width[ujx[f]], a_whole[ujx[f]])
            bf = 0.0
            adf = 0.0
            row_sums(s, rs)  # (each bin's counts: several bins at a time, each summed in sector order)
            for iq in range(nq):
                if q_c[iq] < bf_hi:
                    bf += rs[iq]
                if adf_lo <= q_c[iq] < adf_hi:
                    adf += rs[iq]
            out_bf[f] = bf
            out_adf[f] = adf
            if select:  # only frames with a spot at or above keep_z at some Q (NaN: not scored, no)
                keep = False
                for iq in range(nq):
                    if out_spot[f, iq] >= keep_z[iq]:
                        keep = True
                        break
                kept[f] = keep
                if keep:  # (scratch, work and zf are free again: the statistics are done)
                    out_scattered[f] = _frame_spots(s, w_u[u], q_c, disk_r_q, cand_min, out_spots[f], zmap, widths,
                                                    scratch, work, zf, rob, cand_ik, cand_z, nc, cosk, sink, hw, rs)
                    masked_profile_dirs(s, w_u[u], w2_u[u], out_mean[f], out_sem[f], q_c, out_spots[f], disk_r_q,
                                        pix_margin_q, out_mmean[f], out_msem[f], True, cosk, sink)
                else:
                    out_mmean[f] = out_mean[f]
                    out_msem[f] = out_sem[f]
            elif keep_sums:
                kept[f] = True
                out_s[f] = s


class PolarTables:
    """Pixel → (radial bin, sector) tables of a :class:`PolarGeometry`, built lazily per fractional centre.

    ``centre_step_px``: the grid (px) centres are rounded to (1 / an integer). ``frame_shape`` and
    ``centre_range_yx`` ((cy_min, cy_max), (cx_min, cx_max), px) limit the tables to the offsets a detector
    pixel can have (else a square box of the largest radius). A table holds, for each offset of the box, one record of 4 + K bytes read with a
    single cache line: first radial bin + 1 (uint16, 0 = none), sector (uint16), and the number of
    sub-pixels in each of K consecutive bins (uint8). ≈ 0.55 MB per table for 256² frames, at most
    1/centre_step_px² tables. Thread-safe; pickles without its tables (rebuilt where used).
    """

    def __init__(self, geom: PolarGeometry, centre_step_px: float = DEFAULT_CENTRE_STEP_PX,
                 frame_shape: tuple[int, int] | None = None, centre_range_yx=None):
        n_sub = int(round(1.0 / centre_step_px))
        if n_sub < 1 or abs(n_sub * centre_step_px - 1.0) > 1e-9:
            raise ValueError(f"centre_step_px must be 1/n for an integer n, got {centre_step_px}")
        self.geom = geom
        self.n_sub = n_sub
        self.frame_shape = tuple(frame_shape) if frame_shape is not None else None
        self.centre_range_yx = np.asarray(centre_range_yx, float).tolist() if centre_range_yx is not None else None
        a = math.sqrt(geom.ratio)  # the largest detector distance of an undistorted radius ρ is a·ρ
        rho_max = geom.nq * geom.bin_width / geom.q_pixel_size
        h = int(math.ceil(a * rho_max + 1.5))
        # offsets (pixel − integer part of the centre) the box covers: within the largest radius and, where the
        # frame shape and the range of centres are known, only those a detector pixel can have
        lo_y = lo_x = -h
        hi_y = hi_x = h
        if self.frame_shape is not None and self.centre_range_yx is not None:
            (cy0, cy1), (cx0, cx1) = self.centre_range_yx
            lo_y, hi_y = max(lo_y, -(math.floor(cy1) + 1)), min(hi_y, self.frame_shape[0] - 1 - (math.floor(cy0) - 1))
            lo_x, hi_x = max(lo_x, -(math.floor(cx1) + 1)), min(hi_x, self.frame_shape[1] - 1 - (math.floor(cx0) - 1))
        self.oy0, self.ox0 = -lo_y, -lo_x
        self.box = (max(1, hi_y - lo_y + 1), max(1, hi_x - lo_x + 1))
        # bins one pixel's sub-pixels can reach: their centres span at most √2·(ss−1)/ss px, × a in ρ
        ss = geom.supersample
        self.kmax = int(math.floor(math.sqrt(2) * (ss - 1) / ss * a * geom.q_pixel_size / geom.bin_width + 1e-9)) + 2
        self.rec_bytes = -(-(4 + self.kmax) // 4) * 4  # records padded to a multiple of 4 bytes
        self.inv_ss2 = 1.0 / geom.supersample ** 2
        self._lock = threading.Lock()  # the geometry cache
        self._alloc()
        self._alloc_geometry_cache()

    def _alloc(self):
        nt = self.n_sub ** 2
        g = self.geom
        if g.nq >= 65535 or g.n_phi >= 65536:
            raise ValueError("polar tables hold at most 65534 radial bins and 65535 sectors")
        # np.empty does not touch memory: only tables that get built cost RAM
        self.rec = np.empty((nt, *self.box, self.rec_bytes), np.uint8)
        ss2 = g.supersample ** 2
        self.compact = self.kmax <= 2 and g.nq < 0xFFF and g.n_phi <= 0x100 and ss2 <= 0x3F
        self.crec = np.empty((nt, *self.box) if self.compact else (1, 1, 1), np.uint32)
        self.w_full = np.zeros((nt, g.nq, g.n_phi))
        self.w2_full = np.zeros((nt, g.nq))
        self.built = np.zeros(nt, bool)
        self._table_locks = [threading.Lock() for _ in range(nt)]  # threads build different tables at once

    def _alloc_geometry_cache(self):
        g = self.geom
        self._geo_cap = max(64, int(GEOMETRY_CACHE_BYTES // (8 * g.nq * (g.n_phi + 1))))
        # np.empty does not touch memory: only slots that get used cost RAM
        self._geo_w = np.empty((self._geo_cap, g.nq, g.n_phi))
        self._geo_w2 = np.empty((self._geo_cap, g.nq))
        self._geo_slot: OrderedDict = OrderedDict()  # (mask digest, iy, ix, table) -> slot, least recent first
        self._geo_pins = np.zeros(self._geo_cap, np.int64)  # blocks in flight using each slot
        self._geo_free = list(range(self._geo_cap - 1, -1, -1))
        self._mask_cache = None  # (mask, digest, rows, columns): _mask_info

    def _mask_info(self, mask: np.ndarray):
        """(digest, masked rows, masked columns) of a mask: computed once for the mask every block of a stage passes
        (a 256² mask's np.nonzero, packbits and hash took ~1 ms per block, ~10 µs per pattern of 148-frame blocks),
        and again for a mask of other content (compared with a private copy: ~20 µs)."""
        cached = self._mask_cache
        if cached is not None and cached[0].shape == mask.shape and np.array_equal(cached[0], mask):
            return cached[1:]
        my, mx = np.nonzero(~mask)
        digest = hashlib.blake2b(np.packbits(mask).tobytes() + bytes(str(mask.shape), "ascii"), digest_size=16).digest()
        self._mask_cache = (mask.copy(), digest, my, mx)
        return digest, my, mx

    def geometry(self, mask: np.ndarray, iyc: np.ndarray, ixc: np.ndarray, tix: np.ndarray):
        """Pixel areas (Σw per bin and sector, Σw² per bin) of each frame's centre, from a per-process cache.

        Returns (slot per frame, w (S, nq, n_phi), w2 (S, nq), release): frame f's areas are w[slot[f]]. Areas
        depend on the centre's integer part, its table and the mask; neighbouring scan rows share most of
        them, so each is computed once while it stays among the ~``GEOMETRY_CACHE_BYTES`` most recently used.
        The slots stay valid until ``release()`` is called (after the kernel that reads them)."""
        g = self.geom
        ny, nx = mask.shape
        # the distinct (iy, ix, table) in lexicographic order (np.unique(..., axis=0)'s), found as one integer key
        # each: np.unique over rows sorts a structured view, ~0.6 µs per pattern of 720-frame blocks
        y0, x0 = int(iyc.min()), int(ixc.min())
        nxk = int(ixc.max()) - x0 + 1
        ntab = self.n_sub * self.n_sub
        ukey, uix = np.unique(((iyc - y0) * nxk + (ixc - x0)) * ntab + tix, return_inverse=True)
        ukeys = np.stack([ukey // (nxk * ntab) + y0, ukey // ntab % nxk + x0, ukey % ntab], axis=1)
        uix = uix.reshape(-1).astype(np.int64)
        digest, my, mx = self._mask_info(mask)
        with self._lock:
            if len(ukeys) > len(self._geo_free) + sum(1 for s in self._geo_slot.values() if self._geo_pins[s] == 0):
                cached = None  # more distinct centres than free slots: a private array for this block
                w = np.empty((len(ukeys), g.nq, g.n_phi))
                w2 = np.empty((len(ukeys), g.nq))
                slots = np.arange(len(ukeys))
                missing = slots
            else:
                cached = np.empty(len(ukeys), np.int64)
                w, w2 = self._geo_w, self._geo_w2
                missing = []
                for j, k in enumerate(ukeys.tolist()):
                    key = (digest, *k)
                    slot = self._geo_slot.get(key)
                    if slot is None:
                        if not self._geo_free:  # evict the least recently used slot no block is using
                            old = next(kk for kk, ss in self._geo_slot.items() if self._geo_pins[ss] == 0)
                            self._geo_free.append(self._geo_slot.pop(old))
                        slot = self._geo_free.pop()
                        self._geo_slot[key] = slot
                        missing.append(j)
                    else:
                        self._geo_slot.move_to_end(key)
                    cached[j] = slot
                    self._geo_pins[slot] += 1
                slots = cached
                missing = np.asarray(missing, np.int64)
            if len(missing):  # filled under the lock: no other block can read a slot before it is complete
                _unique_geometry(ukeys[missing, 0].copy(), ukeys[missing, 1].copy(), ukeys[missing, 2].copy(),
                                 slots[missing].copy(), ny, nx, my.astype(np.int64), mx.astype(np.int64), self.rec,
                                 self.w_full, self.w2_full, self.oy0, self.ox0, self.inv_ss2, w, w2)
        if cached is None:
            return uix, w, w2, lambda: None

        def release():
            with self._lock:
                self._geo_pins[cached] -= 1

        return cached[uix], self._geo_w, self._geo_w2, release

    def __getstate__(self):
        return {"geom": self.geom, "n_sub": self.n_sub, "frame_shape": self.frame_shape,
                "centre_range_yx": self.centre_range_yx}

    def __setstate__(self, state):
        self.__init__(state["geom"], 1.0 / state["n_sub"], state.get("frame_shape"), state.get("centre_range_yx"))

    @property
    def centre_step_px(self) -> float:
        return 1.0 / self.n_sub

    def split_centres(self, centres_yx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Integer parts (iy, ix) and table index of centres rounded to the grid; builds missing tables."""
        q = np.rint(np.asarray(centres_yx, dtype=np.float64) * self.n_sub).astype(np.int64)
        ip = np.floor_divide(q, self.n_sub)
        frac = q - ip * self.n_sub
        t = frac[:, 0] * self.n_sub + frac[:, 1]
        self.ensure(np.unique(t))
        return ip[:, 0].copy(), ip[:, 1].copy(), t

    def ensure(self, tables) -> None:
        """Build the tables ``tables`` not built yet, several at once (one per core: each is serial inside)."""
        todo = [int(t) for t in tables if not self.built[int(t)]]
        if not todo:
            return
        locks = [self._table_locks[t] for t in sorted(todo)]  # in order: two threads cannot deadlock
        for lk in locks:
            lk.acquire()
        try:
            todo = np.asarray([t for t in sorted(todo) if not self.built[t]], np.int64)
            if todo.size:
                g = self.geom
                over = _build_tables(todo, self.n_sub, self.oy0, self.ox0, *g.kernel_args(), self.kmax, self.inv_ss2,
                                     self.rec, self.w_full, self.w2_full, self.crec, self.compact)
                if over.any():
                    raise RuntimeError(f"polar table overflow ({int(over.sum())} sub-pixels beyond {self.kmax} bins)")
                self.built[todo] = True
        finally:
            for lk in locks:
                lk.release()


CAND_PER_FRAME = 2048
"""Spot-window candidates (windows at or above the listing threshold) noted per frame by the profile kernel for the
spot list: 3.5 × the 577 per listed frame of the 128² bench scan (largest 934 of its 6408 windows); a frame with
more (a pattern full of spots) has its windows scored again by the spot list, with the same result. 24 kB per
thread: the kernel lists a frame's spots right after its statistics, so one frame's candidates are held at a
time."""


_NO_OFFSETS = np.zeros(1, np.int64)
_NO_INDEX = np.zeros(0, np.uint16)


def profile_block(frames: "np.ndarray | SparseFrames", centres_yx: np.ndarray, mask: np.ndarray, tables: PolarTables,
                  disk_radius_q: float, adf_range_q: tuple[float, float] = (0.0, 0.0), z_clip: float = 4.0,
                  keep_sums: bool = False, bf_max_q: float | None = None,
                  speckle_factor: np.ndarray | None = None, keep_z: np.ndarray | None = None,
                  spot_z_min: float | None = None) -> dict[str, np.ndarray]:
    """All radial statistics of a block of frames, each around its own centre, in one pass.

    frames: (B, Qy, Qx) counts (any integer or float dtype; :func:`sendmap.science.frames.kernel_frames` gives it a
    compiled type where that is exact), or the block's non-zero pixels
    (:class:`sendmap.science.sparse.SparseFrames`: the same results, bit for bit, without visiting the zeros);
    centres_yx: (B, 2) px; mask: (Qy, Qx) bool, True where a pixel is used; disk_radius_q: probe-disk radius (1/Å),
    the size of a Bragg disk for the spot statistic and (unless ``bf_max_q`` is given) the bright-field range;
    adf_range_q: (lo, hi) 1/Å for the virtual ADF. The virtual images sum whole radial bins: those whose centre lies
    inside the range.
    speckle_factor: (nq,) G(Q) of :func:`sendmap.science.polar.speckle_mean_factor` for the "azimuthal" error
    model (Poisson + speckle SEM), None for the Poisson SEM.

    Returns (B, nq) float64 arrays ``mean`` (counts per pixel), ``sem``, ``dispersion``, ``robust``,
    ``fem_variance`` and ``spot_z`` (see :func:`sendmap.science.polar.frame_statistics`), (B,) ``bf`` and ``adf``
    (counts), and with ``keep_sums`` the per-frame polar sums ``s`` (B, nq, n_phi) and pixel areas
    ``w`` (B, nq, n_phi). ``keep_z`` (nq,) σ: list the Bragg spots (:func:`sendmap.science.indexing.spot_block`)
    of the frames whose spot significance reaches ``keep_z`` at some Q bin (+inf: never at that bin) while their
    sums are in memory, the others have none: ``kept`` (B,) bool says which, ``spots`` (C, K, 4) float32 and
    ``spot_scattered`` (C,) are theirs (``keep_sums`` is then ignored: no sums are returned), and (B, nq)
    ``masked_mean``, ``masked_sem`` the spot-masked mean and its sem (:mod:`sendmap.science.spot_mask`; = mean and
    sem, bit for bit, where no spot reaches a bin); ``spot_z_min`` σ is the list's own threshold (default
    :data:`sendmap.science.indexing.SPOT_Z_MIN`).

    >>> import numpy as np
    >>> from sendmap.science.polar import PolarGeometry
    >>> t = PolarTables(PolarGeometry(q_pixel_size=0.01, bin_width=0.01, nq=20, n_phi=8, supersample=2))
    >>> r = profile_block(np.ones((2, 41, 41), np.uint16), np.array([[20.0, 20.0], [20.5, 19.25]]),
    ...                   np.ones((41, 41), bool), t, disk_radius_q=0.03)
    >>> bool(np.allclose(r["mean"], 1.0))
    True
    """
    sparse = isinstance(frames, SparseFrames)
    if sparse:
        sp_off, sp_pix, sp_val = frames.offsets, frames.index, frames.value
        nb, ny, nx = frames.shape
        frames = np.zeros((1, 1, 1), sp_val.dtype)  # not read
    else:
        frames = kernel_frames(np.ascontiguousarray(frames))
        if frames.ndim != 3:
            raise ValueError(f"frames must be (B, Qy, Qx), got shape {frames.shape}")
        nb, ny, nx = frames.shape
        # not read; their types are the common sparse ones, so the dense kernel shares their compilation
        sp_off, sp_pix, sp_val = _NO_OFFSETS, _NO_INDEX, np.zeros(0, frames.dtype)
    g = tables.geom
    iyc, ixc, tix = tables.split_centres(centres_yx)
    mask = np.ascontiguousarray(mask, dtype=np.bool_)
    if mask.shape != (ny, nx):
        raise ValueError(f"mask shape {mask.shape} is not the frames' {(ny, nx)}")
    uix, w_u, w2_u, release = tables.geometry(mask, iyc, ixc, tix)
    out = {k: np.empty((nb, g.nq)) for k in ("mean", "sem", "dispersion", "robust", "spot_z", "fem_variance")}
    g_c = np.zeros(g.nq) if speckle_factor is None else np.ascontiguousarray(speckle_factor, dtype=np.float64)
    if g_c.shape != (g.nq,):
        raise ValueError(f"speckle_factor must have one value per radial bin ({g.nq}), got shape {g_c.shape}")
    bf = np.empty(nb)
    adf = np.empty(nb)
    select = keep_z is not None
    keep_sums = keep_sums and not select  # (with keep_z the spots are listed in the kernel: no sums are kept)
    kz = np.zeros(g.nq) if keep_z is None else np.ascontiguousarray(keep_z, dtype=np.float64)
    if kz.shape != (g.nq,):
        raise ValueError(f"keep_z must have one value per radial bin ({g.nq}), got shape {kz.shape}")
    s = np.empty((nb, g.nq, g.n_phi)) if keep_sums else np.empty((1, g.nq, g.n_phi))
    kept = np.zeros(nb if (keep_sums or select) else 1, np.bool_)
    # the spot lists of the kept frames (float64, as spots_of_frames makes them), and their scattered counts
    spots = np.empty((nb if select else 0, MAX_SPOTS, 4))
    scattered = np.empty(nb if select else 0)
    mmean = np.empty((nb if select else 0, g.nq))  # the spot-masked mean and sem (with the spot lists)
    msem = np.empty((nb if select else 0, g.nq))
    if select and spot_z_min is None:
        from .indexing import SPOT_Z_MIN as spot_z_min
    spot_z_min = float(np.inf if spot_z_min is None else spot_z_min)
    n_chunks = max(1, min(nb, 4 * numba.get_num_threads()))
    order = np.argsort(tix, kind="stable")
    uniq, ujx = np.unique(uix, return_inverse=True)  # (the distinct centres' slots: spot_areas once for each)
    ujx = ujx.reshape(-1).astype(np.int64)
    try:
        _profile_block_kernel(frames, sp_off, sp_pix, sp_val, sparse, order, iyc, ixc, tix, uix, uniq, ujx, w_u, w2_u, mask, tables.rec, tables.crec,
                              tables.compact, tables.kmax,
                              tables.oy0, tables.ox0, tables.inv_ss2, g.q_centres, float(disk_radius_q),
                              float(z_clip), g_c, float(disk_radius_q if bf_max_q is None else bf_max_q),
                              float(adf_range_q[0]), float(adf_range_q[1]), n_chunks, keep_sums, select, kz,
                              out["mean"], out["sem"], out["dispersion"], out["robust"], out["spot_z"],
                              out["fem_variance"], bf, adf, s, kept, spot_z_min if select else np.inf,
                              int(CAND_PER_FRAME), spots, scattered, mmean, msem,
                              float(g.q_pixel_size * PIXEL_HALF_DIAGONAL))
        out["bf"] = bf
        out["adf"] = adf
        if select:
            out["kept"] = kept
            sel = np.flatnonzero(kept)
            out["spots"] = spots[sel].astype(np.float32)
            out["spot_scattered"] = scattered[sel]
            out["masked_mean"] = mmean
            out["masked_sem"] = msem
        elif keep_sums:
            out["s"] = s
            out["w"] = w_u[uix]  # a copy: the cache's slots may be reused once released
    finally:
        release()
    return out


@numba.njit(cache=True, nogil=True)
def stored_profiles(mean, sem, disp, robust, spot_z, fem, fem_scale, mmean, msem, qn, out):
    """The float32 profiles of a block as the profile stage stores them, in one pass (B, nq each, float64 in):
    out[0 … 10] = mean, sem, dispersion, robust mean, I·Q^n of mean, sem, robust and the spot-masked mean and sem
    (× ``qn`` (nq,) = Q^n), spot_z, fem × ``fem_scale`` (nq,); each product made in float64 and rounded once to
    float32, as numpy's ``(a * b).astype(np.float32)``, so the same numbers in a tenth of the passes."""
    nb, nq = mean.shape
    for f in range(nb):
        for i in range(nq):
            out[0, f, i] = np.float32(mean[f, i])
            out[1, f, i] = np.float32(sem[f, i])
            out[2, f, i] = np.float32(disp[f, i])
            out[3, f, i] = np.float32(robust[f, i])
            out[4, f, i] = np.float32(mean[f, i] * qn[i])
            out[5, f, i] = np.float32(sem[f, i] * qn[i])
            out[6, f, i] = np.float32(robust[f, i] * qn[i])
            out[7, f, i] = np.float32(mmean[f, i] * qn[i])
            out[8, f, i] = np.float32(msem[f, i] * qn[i])
            out[9, f, i] = np.float32(spot_z[f, i])
            out[10, f, i] = np.float32(fem[f, i] * fem_scale[i])



@numba.njit(cache=True, nogil=True)
def stored_bragg(mean32, robust32, sel, wq, out):
    """:func:`sendmap.science.features.bragg_fraction` of the stored (float32) mean and robust mean (B ≥ 2, nq) over
    the bins ``sel`` (their Q ``wq``), into out (B,), in one pass instead of its ten array passes per block (~1 µs per
    128² pattern). The same numbers, bit for bit: numpy sums the (B, n) products of its boolean selection, laid out
    column by column, bin after bin for each frame (a sum from 0 in bin order, not its pairwise sum; for B = 1 it
    would be pairwise, so callers use bragg_fraction there)."""
    for f in range(mean32.shape[0]):
        tot = 0.0
        spots = 0.0
        for j in range(sel.size):
            a = np.float64(mean32[f, sel[j]])
            b = np.float64(robust32[f, sel[j]])
            a = 0.0 if a != a else a  # (np.nan_to_num: the stored profiles hold no infinities)
            b = 0.0 if b != b else b
            e = a - b
            tot += a * wq[j]
            spots += (e if e > 0.0 else 0.0) * wq[j]
        out[f] = spots / tot if tot > 0 else np.nan

def spots_from_frames(frames: np.ndarray, centres_yx: np.ndarray, mask: np.ndarray, geom, disk_radius_q: float,
                      z_min: float = SPOT_Z_MIN, max_spots: int = MAX_SPOTS) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~sendmap.science.indexing.spot_block` of frames (B, Qy, Qx) through the profile stage's own polar
    accumulation (:func:`profile_block`, geometry ``geom``: a :class:`sendmap.science.polar.PolarGeometry`). For
    tests and one-off use; the profile stage calls :func:`~sendmap.science.indexing.spot_block` on the sums it
    already has."""
    res = profile_block(np.asarray(frames), np.asarray(centres_yx, dtype=float), mask, PolarTables(geom),
                        disk_radius_q, keep_sums=True)
    return spot_block(res["s"], res["w"], geom.q_centres, disk_radius_q, z_min, max_spots)
