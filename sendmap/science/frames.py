"""Whole-block reductions of raw frames, computed once while the data are streamed in (ingest).

The kernel is serial and releases the GIL: ingest runs one block per core in threads, which overlaps
reading, reducing and compressing better than one parallel kernel per block.

Pure functions: arrays in, arrays out. :func:`frame_statistics` reads every pixel of a block of frames
exactly once and returns the sum and maximum pattern of the block, the total counts, virtual
bright-field and annular dark-field signal of every frame and the number of non-finite values per
detector pixel. :func:`bin_block` sums neighbouring probe positions and detector pixels.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _frame_stats_kernel(frames, bf_w, adf_w, s, m, row_tot, row_bf, row_adf, bad):  # pragma: no cover - numba
    n, qy, qx = frames.shape
    for y in range(qy):
        for b in range(n):
            t = 0.0
            tb = 0.0
            ta = 0.0
            for x in range(qx):
                v = np.float64(frames[b, y, x])
                if not np.isfinite(v):
                    bad[y, x] += 1
                    continue
                s[y, x] += v
                if v > m[y, x]:
                    m[y, x] = v
                t += v
                tb += v * bf_w[y, x]
                ta += v * adf_w[y, x]
            row_tot[b, y] = t
            row_bf[b, y] = tb
            row_adf[b, y] = ta


def frame_statistics(frames: np.ndarray, bf_mask: np.ndarray, adf_mask: np.ndarray) -> dict:
    """Sum, maximum, totals and virtual detector signals of a block of frames, in one pass.

    Parameters
    ----------
    frames : (N, Qy, Qx) array of counts (any integer or float type).
    bf_mask, adf_mask : (Qy, Qx) bool, the virtual bright-field disk and annular dark-field annulus.

    Returns a dict of ``sum`` (Qy, Qx) float64 counts summed over the block, ``max`` (Qy, Qx) float64
    (−inf where every value was non-finite), ``total``, ``bf`` and ``adf`` (N,) float64 counts per frame,
    and ``nonfinite`` (Qy, Qx) int64: NaN/inf values per pixel, which are left out of every other output.

    >>> f = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    >>> bf = np.zeros((3, 4), bool); bf[1, 1] = True
    >>> st = frame_statistics(f, bf, ~bf)
    >>> st["total"].tolist(), st["bf"].tolist(), float(st["sum"][0, 0])
    ([66.0, 210.0], [5.0, 17.0], 12.0)
    """
    frames = np.ascontiguousarray(frames)
    n, qy, qx = frames.shape
    s = np.zeros((qy, qx))
    m = np.full((qy, qx), -np.inf)
    row_tot = np.zeros((n, qy))
    row_bf = np.zeros((n, qy))
    row_adf = np.zeros((n, qy))
    bad = np.zeros((qy, qx), np.int64)
    _frame_stats_kernel(frames, bf_mask.astype(np.float64), adf_mask.astype(np.float64), s, m, row_tot, row_bf,
                        row_adf, bad)
    return {"sum": s, "max": m, "total": row_tot.sum(axis=1), "bf": row_bf.sum(axis=1),
            "adf": row_adf.sum(axis=1), "nonfinite": bad}


def binned_dtype(dtype: np.dtype, factor: int) -> np.dtype:
    """The narrowest type of the same kind that holds a sum of ``factor`` values of ``dtype`` exactly.

    >>> binned_dtype(np.dtype(np.uint8), 4), binned_dtype(np.dtype(np.uint16), 1), binned_dtype(np.dtype(np.float16), 4)
    (dtype('uint16'), dtype('uint16'), dtype('float32'))
    """
    dtype = np.dtype(dtype)
    if factor == 1:
        return dtype
    if dtype.kind == "f":
        return np.dtype(np.float64) if dtype.itemsize >= 8 else np.dtype(np.float32) if dtype.itemsize < 8 else dtype
    info = np.iinfo(dtype)
    for cand in ((np.uint16, np.uint32, np.uint64) if dtype.kind == "u" else (np.int16, np.int32, np.int64)):
        c = np.iinfo(cand)
        if np.dtype(cand).itemsize >= dtype.itemsize and c.max >= info.max * factor and c.min <= info.min * factor:
            return np.dtype(cand)
    return np.dtype(np.uint64 if dtype.kind == "u" else np.int64)


def bin_block(block: np.ndarray, bin_r: int, bin_q: int, dtype: np.dtype | None = None) -> np.ndarray:
    """Sum ``bin_r`` × ``bin_r`` probe positions and ``bin_q`` × ``bin_q`` detector pixels.

    ``block`` is (Ry, Rx, Qy, Qx) with every axis a multiple of its bin factor. Sums (not means) keep
    counts as counts, so Poisson statistics stay valid. ``dtype``: of the result (default
    :func:`binned_dtype`, exact).

    >>> b = np.ones((2, 4, 6, 6), np.uint8)
    >>> out = bin_block(b, 2, 3); out.shape, out.dtype, int(out[0, 0, 0, 0])
    ((1, 2, 2, 2), dtype('uint16'), 36)
    """
    if bin_r == 1 and bin_q == 1:
        return block if dtype is None else block.astype(dtype, copy=False)
    ry, rx, qy, qx = block.shape
    if ry % bin_r or rx % bin_r or qy % bin_q or qx % bin_q:
        raise ValueError(f"block shape {block.shape} is not a multiple of the bins ({bin_r}, {bin_q})")
    dtype = binned_dtype(block.dtype, bin_r * bin_r * bin_q * bin_q) if dtype is None else np.dtype(dtype)
    v = block.reshape(ry // bin_r, bin_r, rx // bin_r, bin_r, qy // bin_q, bin_q, qx // bin_q, bin_q)
    return v.sum(axis=(1, 3, 5, 7), dtype=dtype)
