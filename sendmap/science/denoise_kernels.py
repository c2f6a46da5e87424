"""Compiled scan-wide passes of the peaks stage over the scan's (N, nq) profiles: the low-rank denoising's
preparation (:func:`sendmap.science.peaks.lowrank_denoise`, :func:`sendmap.stages.peaks.speckle_components`) and
the mean profile of the non-crystalline positions (:func:`masked_column_means`).

Their NumPy forms (``np.nan_to_num`` of a copy; ``np.nanmedian`` or ``np.median`` of ``a[rows][:, cols]`` and its
contiguous transpose) made three to five temporaries of the scan's size per call, ~0.5 s of the ~1 s each
denoising took on the 128² bench scan (86 400 × 89), most of it first-touch page faults of fresh arrays. The same
numbers come from one pass each: a median is an order statistic (the middle value, or for an even count the
middle two's (a + b) / 2, as NumPy's mean of the two computes it), whatever algorithm selects it, so the medians
are NumPy's bit for bit (``tests/test_denoise_kernels.py``).
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _finite_copy_kernel(a, out):
    for i in range(a.size):
        v = a[i]
        out[i] = v if np.isfinite(v) else 0.0


def finite_copy(a: np.ndarray) -> np.ndarray:
    """A float64 copy of ``a`` with NaN and ±inf set to 0: ``np.nan_to_num(a, nan=0, posinf=0, neginf=0)`` in one
    pass."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    out = np.empty(a.shape)
    _finite_copy_kernel(a.reshape(-1), out.reshape(-1))
    return out


@numba.njit(nogil=True, cache=True)
def _gather_columns_kernel(a, rows, cols, buf, cnt, n_finite):
    """buf[j, :cnt[j]] = the non-NaN values of a[rows, cols[j]]; n_finite[j] the finite ones among them."""
    nc = cols.size
    for j in range(nc):
        cnt[j] = 0
        n_finite[j] = 0
    for i in range(rows.size):
        r = rows[i]
        for j in range(nc):
            v = a[r, cols[j]]
            if not np.isnan(v):
                buf[j, cnt[j]] = v
                cnt[j] += 1
                if np.isfinite(v):
                    n_finite[j] += 1


def _indices(rows):
    rows = np.asarray(rows)
    return np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)


def column_medians(a: np.ndarray, rows: np.ndarray, cols: np.ndarray | None = None, return_finite: bool = False):
    """Median over the rows ``rows`` (bool (N,) or indices) of each column ``cols`` (indices; None: all) of ``a``
    (N, m), NaNs left out (NaN where a column holds nothing else): ``np.nanmedian(a[rows][:, cols], axis=0)``
    without its warning, bit for bit, in one gathering pass. With ``return_finite`` also the number of finite
    values per column."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    rows = _indices(rows)
    cols = np.arange(a.shape[1]) if cols is None else np.asarray(cols, np.int64)
    buf = np.empty((cols.size, rows.size))
    cnt, n_finite = np.zeros(cols.size, np.int64), np.zeros(cols.size, np.int64)
    _gather_columns_kernel(a, rows, cols, buf, cnt, n_finite)
    out = np.full(cols.size, np.nan)
    for j in range(cols.size):  # NumPy's selection (faster than a compiled quickselect), in place on the gathered
        n, h = int(cnt[j]), int(cnt[j]) // 2  # values; np.median's mean of the middle two where the count is even
        if n:
            b = buf[j, :n]
            b.partition([h - 1, h] if n % 2 == 0 else h)
            out[j] = (b[h - 1] + b[h]) / 2 if n % 2 == 0 else b[h]
    return (out, n_finite) if return_finite else out


@numba.njit(nogil=True, cache=True)
def _gather_scaled_kernel(a, rows, cols, scale, out_t):
    big = np.finfo(np.float64).max
    for i in range(rows.size):
        r = rows[i]
        for j in range(cols.size):
            v = a[r, cols[j]]
            if np.isnan(v):
                v = 0.0
            elif v == np.inf:
                v = big
            elif v == -np.inf:
                v = -big
            out_t[j, i] = v / scale[j]


def gather_scaled(a: np.ndarray, rows: np.ndarray, cols: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``np.nan_to_num(a[rows][:, cols]) / scale`` (NaN → 0, ±inf → ± the largest float; ``scale`` (len(cols),))
    in one pass, with the same memory layout (Fortran order, as NumPy's indexing gives it: the layout decides how
    BLAS rounds the products taken of it)."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    rows = _indices(rows)
    cols = np.asarray(cols, np.int64)
    out_t = np.empty((cols.size, rows.size))
    _gather_scaled_kernel(a, rows, cols, np.ascontiguousarray(scale, dtype=np.float64), out_t)
    return out_t.T


@numba.njit(nogil=True, cache=True)
def _masked_column_means_kernel(p, s, rows, total, total_sq, n_fin):
    n, nq = p.shape
    n_rows = 0
    for i in range(n):
        if not rows[i]:
            continue
        any_p = False
        for j in range(nq):
            v, e = p[i, j], s[i, j]
            if np.isfinite(v):
                any_p = True
                if np.isfinite(e):
                    total[j] += v
                    total_sq[j] += e * e
                    n_fin[j] += 1
        if any_p:
            n_rows += 1
    return n_rows


def masked_column_means(profiles: np.ndarray, sem: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The mean profile of the ``rows`` (N,) bool of ``profiles`` (N, nq) and its standard error √Σσ² / n per bin
    (``sem``), each bin over the rows where both are finite (NaN where none is), and the number of those rows with
    any finite profile value. The NumPy expressions' numbers (``np.where(fin, p[rows], 0).sum(axis=0) / n``: a
    sum over the rows in row order, as NumPy reduces a C-ordered array's first axis) in one pass, without their
    ~8 temporaries of the scan's size (:func:`sendmap.science.peaks.resolve_auto_fit_range`,
    :func:`sendmap.science.peaks.window_feedback`)."""
    p = np.ascontiguousarray(profiles, dtype=np.float64)
    nq = p.shape[-1] if p.ndim else 0
    p = p.reshape(-1, nq)
    s = np.ascontiguousarray(sem, dtype=np.float64).reshape(p.shape)
    sel = np.ascontiguousarray(np.broadcast_to(np.asarray(rows, bool).reshape(-1), (len(p),)))
    total, total_sq, n_fin = np.zeros(nq), np.zeros(nq), np.zeros(nq, np.int64)
    n_rows = _masked_column_means_kernel(p, s, sel, total, total_sq, n_fin)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.where(n_fin > 0, n_fin, np.nan)
        return total / n, np.sqrt(total_sq) / n, int(n_rows)
