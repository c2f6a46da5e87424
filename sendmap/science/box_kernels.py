"""Compiled k × k box mean over the valid neighbours of every scan position
(:func:`sendmap.science.peaks.pooled_position_mean`).

The NumPy form (two ``scipy.ndimage.uniform_filter`` passes, on the masked values and on the 0/1 mask, plus the
``np.where``/``isfinite``/``astype`` temporaries, each of the scan's size) took 0.9 s on the 128² bench scan
(240 × 360 positions × 89 bins). Here one pass builds the masked values and counts, and the running sums are
scipy's own: along each axis (scan rows, then scan columns), per line, the sum of the first k zero-padded values
(``mode="constant"``, cval 0; ``k // 2`` zeros before the line, ``k - k // 2 - 1`` after), then ``tmp += new − old``
per step, each output ``tmp / k`` (scipy's ``NI_UniformFilter1D``). The same operations in the same order give the
same numbers bit for bit (``tests/test_box_kernels.py`` against scipy), without the GIL and without any array of
the scan's size besides the result (the rows' running sums advance one scan row at a time): 0.1 s.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _running_mean_axis0(a, k, out, tmp):
    """out = scipy's ``uniform_filter1d(a, k, axis=0, mode="constant")`` of ``a`` (n, m) float64, bit for bit
    (its running sum, per line in the same order; a padding zero adds or subtracts exactly nothing, so the steps
    where one side lies in the padding add the other alone); ``tmp`` (m,) scratch."""
    n, m = a.shape
    s1 = k // 2
    for c in range(m):
        tmp[c] = 0.0
    for j in range(k):
        i = j - s1
        if 0 <= i < n:
            for c in range(m):
                tmp[c] += a[i, c]
        else:
            for c in range(m):
                tmp[c] += 0.0
    for c in range(m):
        out[0, c] = tmp[c] / k
    for ll in range(1, n):
        i_new, i_old = ll + k - 1 - s1, ll - 1 - s1
        new_in, old_in = 0 <= i_new < n, 0 <= i_old < n
        if new_in and old_in:
            for c in range(m):
                tmp[c] += a[i_new, c] - a[i_old, c]
                out[ll, c] = tmp[c] / k
        elif new_in:
            for c in range(m):
                tmp[c] += a[i_new, c] - 0.0
                out[ll, c] = tmp[c] / k
        elif old_in:
            for c in range(m):
                tmp[c] += 0.0 - a[i_old, c]
                out[ll, c] = tmp[c] / k
        else:
            for c in range(m):
                tmp[c] += 0.0
                out[ll, c] = tmp[c] / k


@numba.njit(nogil=True, cache=True)
def _add_masked_row(v, valid, i, tot, cnt):
    """tot += row i of the masked values, cnt += its 0/1 mask; i outside the scan: += 0 (the padding)."""
    ry, rx, nq = v.shape
    if 0 <= i < ry:
        for x in range(rx):
            ok = valid[i, x]
            for b in range(nq):
                val = v[i, x, b]
                c = x * nq + b
                if ok and np.isfinite(val):
                    tot[c] += val
                    cnt[c] += 1.0
                else:
                    tot[c] += 0.0
                    cnt[c] += 0.0
    else:
        for c in range(rx * nq):
            tot[c] += 0.0
            cnt[c] += 0.0


@numba.njit(nogil=True, cache=True)
def _step_masked_rows(v, valid, i_new, i_old, tot, cnt):
    """tot += new − old of the masked values' rows i_new and i_old (cnt: of the mask), as scipy's running sum
    takes the difference first; a row outside the scan (the padding) is 0."""
    ry, rx, nq = v.shape
    new_in, old_in = 0 <= i_new < ry, 0 <= i_old < ry
    for x in range(rx):
        ok_new = new_in and valid[i_new, x]
        ok_old = old_in and valid[i_old, x]
        for b in range(nq):
            c = x * nq + b
            a_new, c_new, a_old, c_old = 0.0, 0.0, 0.0, 0.0
            if ok_new:
                val = v[i_new, x, b]
                if np.isfinite(val):
                    a_new, c_new = val, 1.0
            if ok_old:
                val = v[i_old, x, b]
                if np.isfinite(val):
                    a_old, c_old = val, 1.0
            tot[c] += a_new - a_old
            cnt[c] += c_new - c_old


@numba.njit(nogil=True, cache=True)
def _pooled_mean_kernel(v, valid, k, out):
    """:func:`pooled_mean` on ``v`` (ry, rx, nq) float64 C-contiguous, ``valid`` (ry, rx) bool; into ``out``. The
    running sums along the scan rows (scipy's first axis) advance one row at a time, each finished row is filtered
    along the scan columns at once: no array of the scan's size besides ``out``."""
    ry, rx, nq = v.shape
    m = rx * nq
    s1 = k // 2
    tot, cnt = np.zeros(m), np.zeros(m)
    row_t, row_c = np.empty((rx, nq)), np.empty((rx, nq))
    t1, c1, tmp1 = np.empty((rx, nq)), np.empty((rx, nq)), np.empty(nq)
    thr = 0.5 / (k * k)
    for j in range(k):  # the first window: the sum of the first k zero-padded rows, in order
        _add_masked_row(v, valid, j - s1, tot, cnt)
    for ll in range(ry):
        if ll > 0:
            _step_masked_rows(v, valid, ll + k - 1 - s1, ll - 1 - s1, tot, cnt)
        for x in range(rx):
            for b in range(nq):
                row_t[x, b] = tot[x * nq + b] / k
                row_c[x, b] = cnt[x * nq + b] / k
        _running_mean_axis0(row_t, k, t1, tmp1)  # along the scan columns
        _running_mean_axis0(row_c, k, c1, tmp1)
        for x in range(rx):
            for b in range(nq):
                c = c1[x, b]
                out[ll, x, b] = t1[x, b] / c if c > thr else v[ll, x, b]


def pooled_mean(values: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """Mean of ``values`` (Ry, Rx, nq) over the k × k neighbourhood of every position (k ≥ 2), counting only
    positions where ``valid`` (Ry, Rx) and the value is finite, per bin; the position's own value where the
    neighbourhood holds none. The numbers of :func:`sendmap.science.peaks.pooled_position_mean`'s NumPy form
    (``scipy.ndimage.uniform_filter`` of the masked values over that of the mask, kept where the mask's mean
    exceeds 0.5 / k²), bit for bit."""
    v = np.ascontiguousarray(values, dtype=np.float64)
    ok = np.ascontiguousarray(np.broadcast_to(np.asarray(valid, bool), v.shape[:2]))
    out = np.empty(v.shape)
    if v.size:
        _pooled_mean_kernel(v, ok, int(k), out)
    return out
