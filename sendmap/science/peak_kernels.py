"""Compiled per-position work of the first SRO peak fit (:func:`sendmap.science.peaks.fit_peaks`).

:func:`sendmap.science.peaks.fit_peaks` states the method: gather the fit range around each first estimate, a
weighted least-squares polynomial, its maximum by Newton steps, the delta-method variance (χ²-scaled where the
model fits significantly worse than the noise), the statuses, the prominence over the smoothed profile, the width
at half prominence and its delta-method error. Its NumPy form (``engine="numpy"``, kept as the reference) runs these
as array expressions over a block of positions: ~20 temporaries of (N, m, d+1) or (N, 401) per step, which hold
the GIL between them (two threads gained nothing on it), 21 µs of CPU a position and plain fit on the 128² bench
scan's profiles (one thread; the 401-point width grid and the per-position 6 × 6 inverses the largest parts). Here
the same sums run in two loops per position, serial and without the GIL, 6.4 µs (the peaks stage maps blocks of
:data:`~sendmap.science.peaks.FIT_BLOCK` positions over its threads):

1. :func:`normal_equations_kernel`: the fit range, weights, normal equations, their inverse (LU with partial
   pivoting; the pseudo-inverse where singular or ill-conditioned, as ``peaks._inverse``) and the coefficients;
2. the covariance propagation (correlated errors or a denoising operator) in between stays where it is
   (``fit_covariance.correlated_covariance_kernel``, or NumPy for the operators);
3. :func:`peak_summary_kernel`: everything after the covariance.

The numbers are the NumPy form's to rounding (``tests/test_peak_kernels.py``: 1e-10 relative, the same statuses);
the Gaussian smoothing stays scipy's (``ndimage.gaussian_filter1d``, once per block for both the first estimate and
the prominence), so the first estimates are identical.
"""
from __future__ import annotations

import math

import numba
import numpy as np

OK, NO_MAXIMUM, TOO_FEW, FIT_FAILED = 0, 1, 2, 4
"""The :data:`sendmap.science.peaks.PEAK_STATUS` codes set here (asserted against the names in the tests)."""

COND_LIMIT = 1e12
"""Condition number (1-norm estimate ‖A‖₁‖A⁻¹‖₁) of the normal matrix from which the pseudo-inverse replaces the
inverse (``peaks._inverse``: the same limit)."""


@numba.njit(nogil=True, cache=True)
def _lu_inverse(a, inv, lu, perm):
    """inv = a⁻¹ by LU with partial pivoting (a (k, k)); False where a pivot is exactly zero (singular)."""
    k = a.shape[0]
    for i in range(k):
        for j in range(k):
            lu[i, j] = a[i, j]
        perm[i] = i
    for c in range(k):
        piv = c
        big = abs(lu[c, c])
        for r in range(c + 1, k):
            if abs(lu[r, c]) > big:
                big = abs(lu[r, c])
                piv = r
        if not big > 0.0:
            return False
        if piv != c:
            for j in range(k):
                t = lu[c, j]
                lu[c, j] = lu[piv, j]
                lu[piv, j] = t
            t2 = perm[c]
            perm[c] = perm[piv]
            perm[piv] = t2
        for r in range(c + 1, k):
            f = lu[r, c] / lu[c, c]
            lu[r, c] = f
            for j in range(c + 1, k):
                lu[r, j] -= f * lu[c, j]
    for col in range(k):  # solve L U x = P e_col
        for i in range(k):
            v = 1.0 if perm[i] == col else 0.0
            for j in range(i):
                v -= lu[i, j] * inv[j, col]
            inv[i, col] = v
        for i in range(k - 1, -1, -1):
            v = inv[i, col]
            for j in range(i + 1, k):
                v -= lu[i, j] * inv[j, col]
            inv[i, col] = v / lu[i, i]
    return True


@numba.njit(nogil=True, cache=True)
def _norm1(a):
    """The matrix 1-norm (largest column sum of |a|)."""
    best = 0.0
    for j in range(a.shape[1]):
        s = 0.0
        for i in range(a.shape[0]):
            s += abs(a[i, j])
        if s > best or s != s:
            best = s
    return best


@numba.njit(nogil=True, cache=True)
def normal_equations_kernel(profiles, sem, idx0, q, hl, hr, sym, scale, degree,
                            cols, xp, wgt, y, q_mid, ok, coef, m_inv, singular, a_out, b_out):
    """Per position p of profiles, sem (N, nq) with first estimate idx0[p] (−1: none): the fit range's bins
    ``cols`` (N, m = hl + hr + 1; clipped to the profile), its local coordinate's powers ``xp`` (N, m, d+1), weights
    1/sem² ``wgt`` (0 where the bin is not finite or sem ≤ 0), values ``y`` (NaN → 0), the range's middle ``q_mid``,
    ``ok`` (a first estimate and more valid bins than d + 2 − 1), and where ok the coefficients ``coef`` (N, d+1)
    and (XᵀWX)⁻¹ ``m_inv`` (N, d+1, d+1) (NaN elsewhere). Where XᵀWX is singular or ill-conditioned (condition
    number ≥ :data:`COND_LIMIT`) ``singular`` is set and its XᵀWX and XᵀWy are left in ``a_out`` (N, d+1, d+1)
    and ``b_out`` (N, d+1) for the caller's pseudo-inverse (NumPy's, as in ``peaks._inverse``; LAPACK inside a
    kernel would cost ~0.4 s of loading per process)."""
    n, nq = profiles.shape
    m = hl + hr + 1
    d1 = degree + 1
    a = np.empty((d1, d1))
    b = np.empty(d1)
    inv = np.empty((d1, d1))
    lu = np.empty((d1, d1))
    perm = np.empty(d1, np.int64)
    xpw = np.empty((m, d1))
    big = np.finfo(np.float64).max
    for p in range(n):
        start = min(max(idx0[p] - hl, 0), nq - 1 - (hl + hr))
        qm = q[start + hl] if sym else 0.5 * (q[start] + q[start + hl + hr])
        q_mid[p] = qm
        nval = 0
        for j in range(m):
            c = start + j
            cols[p, j] = c
            yy = profiles[p, c]
            ss = sem[p, c]
            w = 0.0
            if np.isfinite(yy) and np.isfinite(ss) and ss > 0:
                w = 1.0 / ss ** 2
                if not np.isfinite(w):
                    w = 0.0
            if w > 0:
                nval += 1
            wgt[p, j] = w
            y[p, j] = 0.0 if yy != yy else (big if yy > big else (-big if yy < -big else yy))
            x = (q[c] - qm) / scale
            for k in range(d1):
                v = math.pow(x, k)
                xp[p, j, k] = v
                xpw[j, k] = v * w
        ok[p] = idx0[p] >= 0 and nval > degree + 1
        singular[p] = False
        for k in range(d1):
            coef[p, k] = np.nan
            for l2 in range(d1):
                m_inv[p, k, l2] = np.nan
        if not ok[p]:
            continue
        for k in range(d1):
            acc = 0.0
            for j in range(m):
                acc += xpw[j, k] * y[p, j]
            b[k] = acc
            for l2 in range(d1):
                acc = 0.0
                for j in range(m):
                    acc += xpw[j, k] * xp[p, j, l2]
                a[k, l2] = acc
        good = _lu_inverse(a, inv, lu, perm)
        if good:
            cond = _norm1(a) * _norm1(inv)
            good = np.isfinite(cond) and cond < COND_LIMIT
        if not good:
            singular[p] = True
            for k in range(d1):
                b_out[p, k] = b[k]
                for l2 in range(d1):
                    a_out[p, k, l2] = a[k, l2]
            continue
        for k in range(d1):
            acc = 0.0
            for l2 in range(d1):
                m_inv[p, k, l2] = inv[k, l2]
                acc += inv[k, l2] * b[l2]
            coef[p, k] = acc


@numba.njit(nogil=True, cache=True, inline="always")
def _poly(coef, p, x):
    """Σ_k coef[p, k] x^k."""
    acc = 0.0
    for k in range(coef.shape[1]):
        acc += coef[p, k] * math.pow(x, k)
    return acc


@numba.njit(nogil=True, cache=True, inline="always")
def _slope(coef, p, x):
    """p'(x) = Σ_k k coef[p, k] x^(k−1)."""
    acc = 0.0
    for k in range(1, coef.shape[1]):
        acc += coef[p, k] * float(k) * math.pow(x, k - 1)
    return acc


@numba.njit(nogil=True, cache=True, inline="always")
def _curvature(coef, p, x):
    """p''(x)."""
    acc = 0.0
    for k in range(2, coef.shape[1]):
        acc += coef[p, k] * (k * (k - 1.0)) * math.pow(x, k - 2)
    return acc


@numba.njit(nogil=True, cache=True, inline="always")
def _quad(v, cov, p, scale_c):
    """vᵀ C v · scale_c for C = cov[p]."""
    d1 = v.size
    acc = 0.0
    for a in range(d1):
        t = 0.0
        for b in range(d1):
            t += cov[p, a, b] * v[b]
        acc += v[a] * t
    return acc * scale_c


@numba.njit(nogil=True, cache=True)
def peak_summary_kernel(coef, cov, xp, wgt, y, q_mid, ok, idx0, from_estimate, q, smoothed, profiles, inside,
                        win_first, win_last, w_lo, w_hi, scale, independent, width_error, grid, grid_pow,
                        wgrid, wgrid_pow,
                        q_peak, q_err, height, height_err, prominence, fwhm, fwhm_err, status, xs_out, infl_out):
    """Everything of the fit after the coefficients and their covariance ``cov`` (N, d+1, d+1), per position: the
    polynomial's maximum (densest value on ``grid`` (201,), or with ``from_estimate`` its local maximum nearest
    the range's middle; then 8 Newton steps), delta-method variances, χ² inflation, status, prominence (over the
    ``smoothed`` profiles inside the window), width at half prominence (on ``wgrid`` (401,)) and its error.
    ``grid_pow``/``wgrid_pow``: the grids' powers (G, d+1), as NumPy computes them. Writes the (N,) outputs, and
    ``xs_out`` (the maximum in the local coordinate) and ``infl_out`` (the χ² factor of the covariance) for the
    flat-top test."""
    n, d1 = coef.shape
    m = xp.shape[1]
    nq = q.size
    ng = grid.size
    nw = wgrid.size
    bw = q[1] - q[0]
    g = np.empty(d1)
    xv = np.empty(d1)
    gw = np.empty(d1)
    for p in range(n):
        i0 = idx0[p]
        # the prominence first (it needs only the height): lowest smoothed values left and right inside the window
        left = np.inf
        right = np.inf
        jl = 0
        jr = 0
        for j in range(nq):
            if inside[j]:
                v = smoothed[p, j]
                if j <= i0 and v < left:
                    left = v
                    jl = j
                if j >= i0 and v < right:
                    right = v
                    jr = j
        base = max(left, right)
        base_q = q[jl] if left >= right else q[jr]
        q_peak[p] = np.nan
        q_err[p] = np.nan
        height[p] = np.nan
        height_err[p] = np.nan
        prominence[p] = np.nan
        fwhm[p] = np.nan
        fwhm_err[p] = np.nan
        xs_out[p] = np.nan
        infl_out[p] = 1.0
        if not ok[p]:
            status[p] = TOO_FEW
            continue
        # the maximum: dense evaluation, then Newton steps on p'(x) = 0
        best = -np.inf
        ib = 0
        near = np.inf
        inear = -1
        prev2 = 0.0
        prev1 = 0.0
        for gi in range(ng):
            v = 0.0
            for k in range(d1):
                v += grid_pow[gi, k] * coef[p, k]
            if v > best or (v != v and best == best):
                best = v
                ib = gi
            if from_estimate and gi >= 2:
                # the grid point gi − 1 is a local maximum
                if prev1 > prev2 and prev1 >= v and abs(grid[gi - 1]) < near:
                    near = abs(grid[gi - 1])
                    inear = gi - 1
            prev2 = prev1
            prev1 = v
        xs = grid[inear] if from_estimate and inear >= 0 else grid[ib]
        for _ in range(8):
            p1 = _slope(coef, p, xs)
            p2 = _curvature(coef, p, xs)
            step = p1 / p2 if p2 < 0 else 0.0
            xs = min(max(xs - step, -1.0), 1.0)
        p2 = _curvature(coef, p, xs)
        xs_out[p] = xs
        # delta-method error, scaled by the reduced χ² where the model fits significantly worse than the noise
        den = p2 if p2 < 0 else -1.0
        g[0] = 0.0
        for k in range(1, d1):
            g[k] = -(k * math.pow(xs, k - 1)) / den
        var_x = _quad(g, cov, p, 1.0)
        nval = 0
        chi = 0.0
        for j in range(m):
            mod = 0.0
            for k in range(d1):
                c = coef[p, k]
                mod += xp[p, j, k] * (0.0 if c != c else c)
            chi += wgt[p, j] * (y[p, j] - mod) ** 2
            if wgt[p, j] > 0:
                nval += 1
        dof = max(nval - d1, 1)
        chi2_red = chi / dof
        significant = independent and chi2_red > 1.0 + 2.0 * math.sqrt(2.0 / dof)
        infl = chi2_red if significant else 1.0
        infl_out[p] = infl
        var_x *= infl
        q_fit = q_mid[p] + xs * scale
        h = 0.0
        for k in range(d1):
            xv[k] = math.pow(xs, k)
            h += coef[p, k] * xv[k]
        h_var = _quad(xv, cov, p, 1.0) * infl
        interior = (abs(xs) < 0.95 and p2 < 0 and np.isfinite(q_fit) and np.isfinite(var_x)
                    and np.isfinite(h))
        code = OK if interior else FIT_FAILED
        if not from_estimate:
            if i0 == win_first or i0 == win_last or (interior and (q_fit < w_lo or q_fit > w_hi)):
                code = NO_MAXIMUM
        status[p] = code
        if code == OK:
            q_peak[p] = q_fit
            q_err[p] = math.sqrt(max(var_x, 0.0)) * scale
            height[p] = h
            height_err[p] = math.sqrt(max(h_var, 0.0))
        elif code == FIT_FAILED:
            q_peak[p] = q[max(i0, 0)]
            q_err[p] = bw
            height[p] = profiles[p, max(i0, 0)]
        if i0 >= 0:
            prominence[p] = height[p] - base
        if code != OK:
            continue
        # the width at half prominence of the fitted polynomial: the level's crossings nearest the maximum
        level = height[p] - 0.5 * prominence[p]
        if not np.isfinite(level):
            continue
        s0 = 0  # searchsorted(wgrid, xs), clipped to [1, nw − 1]
        while s0 < nw and wgrid[s0] < xs:
            s0 += 1
        s0 = min(max(s0, 1), nw - 1)
        r = s0
        vr = 0.0
        while r < nw:
            vr = 0.0
            for k in range(d1):
                vr += wgrid_pow[r, k] * coef[p, k]
            if vr < level:
                break
            r += 1
        lft = s0 - 1
        vl = 0.0
        while lft >= 0:
            vl = 0.0
            for k in range(d1):
                vl += wgrid_pow[lft, k] * coef[p, k]
            if vl < level:
                break
            lft -= 1
        if r >= nw or lft < 0:
            continue
        v0 = 0.0
        for k in range(d1):
            v0 += wgrid_pow[r - 1, k] * coef[p, k]
        f = (level - v0) / (vr - v0) if vr != v0 else 0.0
        xr = wgrid[r - 1] + f * (wgrid[r] - wgrid[r - 1])
        v1 = 0.0
        for k in range(d1):
            v1 += wgrid_pow[lft + 1, k] * coef[p, k]
        f = (level - vl) / (v1 - vl) if v1 != vl else 0.0
        xl = wgrid[lft] + f * (wgrid[lft + 1] - wgrid[lft])
        wid = (xr - xl) * scale
        fwhm[p] = wid
        if not (width_error and np.isfinite(wid)):
            continue
        # delta method: x_r − x_l with p(x) = level = (height + base)/2 at both; the base moves with the
        # polynomial only where it lies inside the fit range
        xb = (base_q - q_mid[p]) / scale
        inr = 1.0 if abs(xb) <= 1.0 else 0.0
        xbc = min(max(xb, -1.0), 1.0)
        sr = _slope(coef, p, xr)
        sl = _slope(coef, p, xl)
        for k in range(d1):
            dlev = 0.5 * (math.pow(xs, k) + inr * math.pow(xbc, k))
            gw[k] = (dlev - math.pow(xr, k)) / sr - (dlev - math.pow(xl, k)) / sl
        acc = 0.0
        for a in range(d1):
            t = 0.0
            for b in range(d1):
                c = cov[p, a, b]
                t += (0.0 if c != c else c) * infl * gw[b]
            acc += gw[a] * t
        fwhm_err[p] = math.sqrt(max(acc, 0.0)) * scale


@numba.njit(nogil=True, cache=True)
def _speckle_errors_kernel(sem, mean, fem_own, fem_pooled, share, gfac, present, spk_out, sem_out):
    """Per bin: own = √(m²·V⁺·ρ̄(0)·G) of the position's own V, spk the same of the pooled V (0 where not
    ``present``), sem_out = √(max(sem² − own², 0) + spk²); m = the mean with NaN → 0, V⁺ = V where finite and ≠ 0,
    clipped at 0."""
    n, nq = sem.shape
    big = np.finfo(np.float64).max
    for p in range(n):
        for j in range(nq):
            m = mean[p, j]
            m = 0.0 if m != m else (big if m > big else (-big if m < -big else m))
            m2 = m ** 2
            v = fem_own[p, j]
            v = v if (np.isfinite(v) and v != 0) else 0.0
            if v < 0.0:
                v = 0.0
            own = math.sqrt(m2 * v * share[j] * gfac[j])
            s = 0.0
            if present:
                v = fem_pooled[p, j]
                v = v if (np.isfinite(v) and v != 0) else 0.0
                if v < 0.0:
                    v = 0.0
                s = math.sqrt(m2 * v * share[j] * gfac[j])
            spk_out[p, j] = s
            d = sem[p, j] ** 2 - own ** 2
            if d < 0.0:
                d = 0.0
            sem_out[p, j] = math.sqrt(d + s ** 2)


def speckle_errors(sem: np.ndarray, mean: np.ndarray, fem_own: np.ndarray, fem_pooled: np.ndarray,
                   speckle_factor: np.ndarray, sector_share: np.ndarray, present: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The peaks stage's speckle errors (:func:`sendmap.stages.peaks.speckle_fit_errors`) in one pass: the speckle
    standard error ``spk`` of :func:`sendmap.science.polar.speckle_fit_sem` (``half_bins`` 0, ``factor`` 2) on the
    pooled V ``fem_pooled`` (zero where not ``present``), and the fit's error with the profile's own speckle part
    (the same on the position's own V ``fem_own``) replaced by it, √(max(sem² − own², 0) + spk²). All (..., nq),
    I·Q^n units for ``sem``/``mean``; ``speckle_factor`` G and ``sector_share`` ρ̄(0) (nq,). The same numbers as
    those NumPy expressions, bit for bit where compiled fresh, to a few ulp from some compilations loaded from
    numba's cache (tests/test_peak_kernels.py), without their ~10 temporaries of the scan's size (~0.8 s each at 86 400 × 80
    bins). Returns (spk, sem)."""
    shape = np.shape(sem)
    nq = shape[-1]

    def rows(a):
        return np.ascontiguousarray(np.asarray(a, dtype=np.float64).reshape(-1, nq))

    spk, out = np.empty(shape), np.empty(shape)
    _speckle_errors_kernel(rows(sem), rows(mean), rows(fem_own), rows(fem_pooled),
                           np.ascontiguousarray(sector_share, dtype=np.float64).reshape(nq),
                           np.ascontiguousarray(speckle_factor, dtype=np.float64).reshape(nq), bool(present),
                           spk.reshape(-1, nq), out.reshape(-1, nq))
    return spk, out


@numba.njit(nogil=True, cache=True)
def highest_local_maximum(p, inside):
    """Per row of ``p`` (N, nq): the index of the highest strict-left local maximum (p[j] > p[j−1], p[j] ≥ p[j+1],
    0 < j < nq − 1) with ``inside`` [j], the first of equals; −1 where there is none with a finite value. The
    numbers of ``np.argmax(np.where(local & inside, p, −inf), axis=1)`` (−1 where no candidate is finite) of
    :func:`sendmap.science.peaks.fit_second_peak`, without its five (N, nq) temporaries."""
    n, nq = p.shape
    out = np.empty(n, np.int64)
    for i in range(n):
        best = -np.inf
        idx = 0
        any_finite = False
        for j in range(1, nq - 1):
            v = p[i, j]
            if inside[j] and v > p[i, j - 1] and v >= p[i, j + 1]:
                if np.isfinite(v):
                    any_finite = True
                if v > best:
                    best = v
                    idx = j
        out[i] = idx if any_finite else -1
    return out
