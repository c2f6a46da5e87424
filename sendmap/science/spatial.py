"""Spatial context for class maps: neighbouring probe positions tend to share a class.

A Potts Markov random field on the scan grid (8-neighbourhood) turns per-position class likelihoods into
posterior class probabilities: p(c_i | data) ∝ L_i(c_i) · exp(β · Σ_j∈N(i) w_ij [c_j = c_i]) in the mean-field
approximation (Zhang 1992, IEEE Trans. Signal Process. 40, 2570; Geman & Geman 1984), each position's
neighbours entering through their current probabilities. β = 0 leaves the evidence alone; the default
coupling of :func:`potts_mean_field` is chosen where it is used, with its source there.
"""
from __future__ import annotations

import math

import numba
import numpy as np

NEIGHBOUR_WEIGHTS = np.array([[1 / np.sqrt(2), 1.0, 1 / np.sqrt(2)],
                              [1.0, 0.0, 1.0],
                              [1 / np.sqrt(2), 1.0, 1 / np.sqrt(2)]])
"""8-neighbourhood, diagonal neighbours weighted by 1/distance (the centre does not vote for itself)."""


MEAN_FIELD_THREADS = 2
"""Threads sharing the rows of each mean-field iteration (the benchmark machine's 2 cores; results do not depend
on it)."""
MEAN_FIELD_THREADED_MIN = 16384
"""Fewest positions for which the mean field runs on threads: an iteration costs ≈ 0.1 µs per position (0.12 s CPU
for 30 iterations on 240 × 180 positions, 4 classes), handing it to the threads ≈ 0.1 ms; at 16 384 positions that is
~1/16 of the iteration, and smaller scans take a few ms in all."""


def _neighbour_sum(p: np.ndarray, weights: np.ndarray = NEIGHBOUR_WEIGHTS) -> np.ndarray:
    """Σ_j w_ij p_j(c) over the 8 neighbours of every position, (Ry, Rx, K); edges see fewer neighbours."""
    ry, rx, _ = p.shape
    pad = np.pad(p, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros_like(p)
    for dy in range(3):
        for dx in range(3):
            w = weights[dy, dx]
            if w:
                out += w * pad[dy:dy + ry, dx:dx + rx]
    return out


def potts_mean_field(log_likelihood: np.ndarray, beta: float, n_iter: int = 30, tol: float = 1e-6,
                     valid: np.ndarray | None = None) -> np.ndarray:
    """Posterior class probabilities (Ry, Rx, K) under a Potts prior of coupling ``beta``, by mean field.

    log_likelihood: (Ry, Rx, K) log p(data_i | class k) up to a per-position constant (−inf: impossible);
    beta: coupling per unit neighbour weight (0: independent positions); valid: (Ry, Rx) bool, positions that
    take part (others neither vote nor get a probability: NaN). Iterated synchronously with damping ½ until
    the largest change is below ``tol``.

    >>> ll = np.log(np.full((3, 3, 2), 0.5))
    >>> ll[1, 1] = np.log([0.4, 0.6])          # weak evidence for class 1 in the middle
    >>> ll[np.arange(3) != 1, :, :] = np.log([0.9, 0.1])
    >>> ll[1, 0] = ll[1, 2] = np.log([0.9, 0.1])
    >>> p = potts_mean_field(ll, beta=1.0)
    >>> bool(p[1, 1, 0] > 0.5)                 # its neighbours outvote it
    True
    """
    ll = np.asarray(log_likelihood, dtype=np.float64)
    ry, rx, k = ll.shape
    valid = np.ones((ry, rx), bool) if valid is None else np.asarray(valid, bool)
    ll = np.ascontiguousarray(np.where(valid[..., None], ll, 0.0))
    # (numba: the NumPy form's iterations, ~10x faster on 86 400 positions; equal to it to ~1e-16)
    threads = MEAN_FIELD_THREADS if ry * rx >= MEAN_FIELD_THREADED_MIN else 1
    return _mean_field(ll, np.ascontiguousarray(valid), float(beta), int(n_iter), float(tol),
                       np.ascontiguousarray(NEIGHBOUR_WEIGHTS), threads)


@numba.njit(cache=True, nogil=True)
def _softmax_into(a, out):  # pragma: no cover - numba
    m = a[0]
    for c in range(1, a.size):
        m = max(m, a[c])
    s = 0.0
    for c in range(a.size):
        out[c] = math.exp(a[c] - m)
        s += out[c]
    for c in range(a.size):
        out[c] /= s


@numba.njit(cache=True, nogil=True)
def _mean_field_start(ll, valid):  # pragma: no cover - numba
    """The mean field's first probabilities: the softmax of each valid position's ``ll``, 0 elsewhere."""
    ry, rx, k = ll.shape
    p = np.zeros((ry, rx, k))
    for y in range(ry):
        for x in range(rx):
            if valid[y, x]:
                _softmax_into(ll[y, x], p[y, x])
    return p


@numba.njit(cache=True, nogil=True)
def _mean_field_rows(ll, valid, beta, weights, p, new, y0, y1):  # pragma: no cover - numba
    """One synchronous damped iteration of :func:`potts_mean_field` for rows ``y0``..``y1`` − 1: ``new`` from
    ``p`` (read only); the largest change."""
    ry, rx, k = ll.shape
    a = np.empty(k)
    e = np.empty(k)
    acc = np.empty(k)
    change = 0.0
    for y in range(y0, y1):
        for x in range(rx):
            if not valid[y, x]:
                continue
            acc[:] = 0.0
            for dy in range(3):  # (the order of the NumPy form's sum, neighbour by neighbour)
                yy = y + dy - 1
                for dx in range(3):
                    xx = x + dx - 1
                    w = weights[dy, dx]
                    if w != 0.0 and 0 <= yy < ry and 0 <= xx < rx:
                        for c in range(k):
                            acc[c] += w * p[yy, xx, c]
            for c in range(k):
                a[c] = ll[y, x, c] + beta * acc[c]
            _softmax_into(a, e)
            for c in range(k):
                v = 0.5 * (e[c] + p[y, x, c])
                change = max(change, abs(v - p[y, x, c]))
                new[y, x, c] = v
    return change


@numba.njit(cache=True, nogil=True)
def _invalid_nan(p, valid):  # pragma: no cover - numba
    for y in range(p.shape[0]):
        for x in range(p.shape[1]):
            if not valid[y, x]:
                for c in range(p.shape[2]):
                    p[y, x, c] = np.nan


def _mean_field(ll, valid, beta, n_iter, tol, weights, threads: int) -> np.ndarray:
    """:func:`potts_mean_field`'s synchronous damped iterations (``ll`` already 0 at invalid positions), each
    iteration's rows shared among ``threads`` threads where more than one (the row kernel releases the GIL; the
    updates are synchronous, so the result is the same, bit for bit)."""
    from concurrent.futures import ThreadPoolExecutor

    ry = ll.shape[0]
    threads = max(1, min(int(threads), ry))
    bounds = np.linspace(0, ry, threads + 1).astype(int)
    p = _mean_field_start(ll, valid)
    new = np.zeros(ll.shape)
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        for _ in range(n_iter):
            if pool is None:
                change = _mean_field_rows(ll, valid, beta, weights, p, new, 0, ry)
            else:
                parts = [pool.submit(_mean_field_rows, ll, valid, beta, weights, p, new, int(y0), int(y1))
                         for y0, y1 in zip(bounds[:-1], bounds[1:])]
                change = max(f.result() for f in parts)
            p, new = new, p
            if change < tol:
                break
    finally:
        if pool is not None:
            pool.shutdown()
    _invalid_nan(p, valid)
    return p


def label_8_connected(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels (Ry, Rx) int32, count) of the 8-connected groups of True positions of ``mask``, numbered 1, 2, …
    in the order of their first position in row-major order, 0 elsewhere: the numbers of
    ``scipy.ndimage.label(mask, structure=np.ones((3, 3)))`` (tests/test_mixture_spatial.py).

    >>> label_8_connected(np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 0, 0]], bool))[0].tolist()
    [[1, 0, 0, 2], [0, 1, 0, 2], [0, 0, 0, 0], [3, 3, 0, 0]]
    """
    m = np.ascontiguousarray(np.asarray(mask, bool))
    if m.ndim != 2:
        raise ValueError(f"label_8_connected needs a 2-D mask, not {m.ndim}-D")
    return _label_8_kernel(m)


@numba.njit(cache=True, nogil=True)
def _label_8_kernel(mask):  # pragma: no cover - numba
    """Flood fill from each unlabelled True position in row-major order (an explicit stack: each position is pushed
    once, when it is labelled)."""
    ry, rx = mask.shape
    lab = np.zeros((ry, rx), np.int32)
    stack = np.empty(ry * rx, np.int64)
    n = 0
    for y0 in range(ry):
        for x0 in range(rx):
            if not mask[y0, x0] or lab[y0, x0] != 0:
                continue
            n += 1
            lab[y0, x0] = n
            top = 0
            stack[top] = y0 * rx + x0
            top += 1
            while top > 0:
                top -= 1
                y, x = stack[top] // rx, stack[top] % rx
                for yy in range(max(y - 1, 0), min(y + 2, ry)):
                    for xx in range(max(x - 1, 0), min(x + 2, rx)):
                        if mask[yy, xx] and lab[yy, xx] == 0:
                            lab[yy, xx] = n
                            stack[top] = yy * rx + xx
                            top += 1
    return lab, n


def amorphous_regions(class_map: np.ndarray, amorphous_classes, min_positions: int) -> np.ndarray:
    """Regions of a class map to describe apart (e.g. the two interfaces of a Li grain): the 8-connected groups of
    positions whose class is one of ``amorphous_classes`` (indices), numbered 0, 1, … by decreasing size; -1 for
    every other position and for groups of fewer than ``min_positions``. Crystalline grains (and unassigned
    positions) separate the regions.

    >>> cls = np.array([[1, 1, 0, 2, 2, 2], [1, 3, 0, 2, 2, 2]])
    >>> amorphous_regions(cls, (1, 2, 3), 2).tolist()
    [[1, 1, -1, 0, 0, 0], [1, 1, -1, 0, 0, 0]]
    """
    mask = np.isin(np.asarray(class_map), list(amorphous_classes))
    # (scipy.ndimage.label(mask, np.ones((3, 3)))'s labels, without importing scipy.ndimage: ~0.3-0.5 s of a re-run)
    lab, n = label_8_connected(mask)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    order = [i + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_positions]
    out = np.full(lab.shape, -1, dtype=np.int32)
    for new, old in enumerate(order):
        out[lab == old] = new
    return out
