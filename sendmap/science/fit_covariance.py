"""The covariance of the SRO peak fit's polynomial coefficients under correlated bin errors, one position at a time.

:func:`sendmap.science.peaks._correlated_covariance` states the model: c = M y' with M = (XᵀWX)⁻¹XᵀW over each
position's fit range, y' = L y (L the identity or a low-rank denoising diag(pass) + A B), and the bins of y with
covariance Σ = diag(p)·K_P·diag(p) + diag(spk)·K·diag(spk), p = √(sem² − spk²), K and K_P Toeplitz (the speckle's
and the split pixels' correlation between bins at lags 0, 1, …). So C = G Σ Gᵀ with G = M L_R.

Its NumPy form builds the (m × m) Toeplitz matrices and multiplies through them, as batched products of small
matrices that NumPy runs one position at a time (~75 µs a position for 6 coefficients over 89 bins: the largest
part of the peaks stage). Here the same sums run in one compiled loop per position, using that K is banded (its
lags end where the correlation does): O((d+1)·nq·L) instead of O((d+1)·nq²). The numbers are the NumPy form's to
rounding (``tests/test_peaks.py``). The Toeplitz products run along the rows of (bins, coefficients) arrays, one
contiguous loop per lag and side with non-negative offsets, and the sums over the bins fill a square of accumulators
(the lower triangle discarded): the same terms in the same order as the earlier per-coefficient loops, bit for bit,
in 16.4 instead of 29 µs a position on the 256² bench scan's denoised fits (180 bins, 26 speckle lags; 7.7 instead
of 10.9 µs on the 128² scan's 89 bins; session 21).
"""
from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _banded(h, corr, out, w, d1):
    """out[i, a] = Σ_j K[i, j]·h[j, a] for the symmetric Toeplitz K(i, j) = corr[|i − j|] (0 beyond its end), over
    the first ``w`` rows of h and out ((≥ w, d1), C order), each element's terms in the order c₀, then lag 1 from
    above and below, lag 2, …: one contiguous loop over the flattened rows per lag and side."""
    nl = min(corr.size, w)
    c0 = corr[0] if nl > 0 else 0.0
    hf = h.reshape(h.size)
    of = out.reshape(out.size)
    for i in range(w * d1):
        of[i] = c0 * hf[i]
    for lag in range(1, nl):
        c = corr[lag]
        n = (w - lag) * d1
        sh = lag * d1
        lo = of[:n]
        xs = hf[sh:sh + n]
        for i in range(n):
            lo[i] += c * xs[i]
        hi = of[sh:sh + n]
        xl = hf[:n]
        for i in range(n):
            hi[i] += c * xl[i]


@numba.njit(nogil=True, cache=True, inline="always")
def _finite(v):
    """``np.nan_to_num``'s number for one float: NaN → 0, ±inf → ± the largest float."""
    big = np.finfo(np.float64).max
    return 0.0 if v != v else (big if v > big else (-big if v < -big else v))


@numba.njit(nogil=True, cache=True)
def correlated_covariance_kernel(m_inv, xp, wgt, cols, low_rank, passed, op_a, op_b, sem, spk, corr, pcorr, out,
                                 rows):
    """C (N, d+1, d+1) into ``out`` at the ``rows`` (int64 indices; ``out`` may be ``m_inv`` itself: each row's
    m_inv is read before its C is written); m_inv (N, d+1, d+1), xp (N, m, d+1), wgt (N, m), cols (N, m) int64;
    ``low_rank``: L = diag(passed) + op_a @ op_b ((nq,) bool, (nq, k), (k, nq)), else L is the identity and only
    the fit range's bins enter; sem, spk (N, nq) (NaN and ±inf read as ``np.nan_to_num`` makes them); corr,
    pcorr: the correlations by lag (pcorr of size ≤ 1: the Poisson part independent between bins). Serial and
    without the GIL: the peaks stage runs blocks of positions on its threads."""
    m, d1 = xp.shape[1], xp.shape[2]
    nq = sem.shape[1]
    k = op_b.shape[0]
    use_p = pcorr.size > 1
    w = nq if low_rank else m
    mm = np.zeros((d1, m))  # the fit's linear map M over the fit range
    g_full = np.zeros((d1, nq))
    t = np.zeros((d1, k))
    s2 = np.empty(w)
    sp = np.empty(w)
    # (bins, coefficients) layout: the Toeplitz products run along contiguous rows, the sums over the bins keep
    # all the coefficient pairs' accumulators going at once
    h = np.empty((w, d1))  # (G·diag(spk))ᵀ (the correlated part, never more than the whole)
    rest = np.empty((w, d1))  # (G·diag(p))ᵀ with the Poisson correlation, else (G·diag(sem² − spk²))ᵀ
    hk = np.empty((w, d1))
    rk = np.empty((w, d1))
    cacc = np.empty((d1, d1))
    for p_ in range(rows.size):
        p = rows[p_]
        for a in range(d1):
            for j in range(m):
                acc = 0.0
                for c in range(d1):
                    acc += m_inv[p, a, c] * xp[p, j, c]
                mm[a, j] = acc * wgt[p, j]
        if low_rank:
            g = g_full
            g[:, :] = 0.0
            t[:, :] = 0.0
            for a in range(d1):
                for j in range(m):
                    v = mm[a, j]
                    if v != 0.0:
                        for r in range(k):
                            t[a, r] += v * op_a[cols[p, j], r]
                for r in range(k):
                    v = t[a, r]
                    if v != 0.0:
                        for i in range(nq):
                            g[a, i] += v * op_b[r, i]
                for j in range(m):
                    if passed[cols[p, j]]:
                        g[a, cols[p, j]] += mm[a, j]
            for i in range(nq):
                s2[i] = _finite(sem[p, i]) ** 2
                sp[i] = _finite(spk[p, i])
        else:
            g = mm
            for j in range(m):
                s2[j] = _finite(sem[p, cols[p, j]]) ** 2
                sp[j] = _finite(spk[p, cols[p, j]])
        has_spk = False  # a position without a speckle part (every spk 0: a scan without speckle) skips its terms
        for i in range(w):
            spi = min(sp[i], math.sqrt(s2[i]))
            if spi != 0.0:
                has_spk = True
            r2 = s2[i] - spi * spi
            rf = math.sqrt(max(r2, 0.0)) if use_p else r2
            for a in range(d1):
                h[i, a] = g[a, i] * spi
                rest[i, a] = g[a, i] * rf
        if has_spk:
            _banded(h, corr, hk, w, d1)
        if use_p:
            _banded(rest, pcorr, rk, w, d1)
        cacc[:, :] = 0.0
        # C is symmetric: one triangle, mirrored; each element's sum over the bins in order
        # (without speckle, hk·h is ±0: leaving it out changes at most the sign of an exact zero)
        if use_p and has_spk:
            for i in range(w):
                for a in range(d1):
                    ra = rk[i, a]
                    ha = hk[i, a]
                    for b in range(d1):
                        cacc[a, b] += ra * rest[i, b] + ha * h[i, b]
        elif use_p:
            for i in range(w):
                for a in range(d1):
                    ra = rk[i, a]
                    for b in range(d1):
                        cacc[a, b] += ra * rest[i, b]
        elif has_spk:
            for i in range(w):
                for a in range(d1):
                    ra = rest[i, a]
                    ha = hk[i, a]
                    for b in range(d1):
                        cacc[a, b] += ra * g[b, i] + ha * h[i, b]
        else:
            for i in range(w):
                for a in range(d1):
                    ra = rest[i, a]
                    for b in range(d1):
                        cacc[a, b] += ra * g[b, i]
        for a in range(d1):
            for b in range(a, d1):
                out[p, a, b] = cacc[a, b]
                out[p, b, a] = cacc[a, b]
