"""Singular values and right singular vectors of tall matrices (many profiles × few Q bins), fast.

The low-rank denoising of the peaks stage (:func:`sendmap.science.peaks.lowrank_denoise`) and its noise edges
(:func:`sendmap.pipeline.speckle_components`, :func:`sendmap.science.polar.correlated_noise_top_singular_value`)
need the singular values of an N × m matrix (N up to ~10⁵ scan positions, m ≲ 200 Q bins) and at most its right
singular vectors, never the N × m left ones. LAPACK's SVD (``np.linalg.svd``) forms those anyway: 3-4 s per call on
86 400 × ~100 profiles on this machine. The same numbers come from the m × m Gram matrix XᵀX = V Σ² Vᵀ: one
matrix product (BLAS, O(N m²)) and a symmetric eigen-decomposition of m × m (O(m³), negligible), ~30× faster.

Accuracy: σᵢ² carries an absolute rounding error of ~ε·σ₁² (ε = 2.2 × 10⁻¹⁶), so σᵢ is exact to ~1e-8·σ₁ — far
below any noise edge (the smallest singular values compared are the noise bulk, within ~10³ of σ₁). The vectors
of singular values separated by a gap g have an error ~ε·σ₁²/g², the same order of ill-conditioning as the SVD's
(the subspace of nearly equal singular values is what either method determines, not each vector). Signs of the
vectors are arbitrary in both (only projections VₖVₖᵀ are used).
"""
from __future__ import annotations

import numpy as np


def blas_threads(n: int = 1):
    """Context manager: at most ``n`` BLAS threads inside (threadpoolctl). For the small products here
    (~0.1 s on one core) a second OpenBLAS thread gains little on a quiet machine and, on a busy one, its
    spin-waiting threads make the same product ~20-30× slower (x.T @ x for 60 000 × 110: 0.07 s on one thread,
    2.4 s on two, with other processes using both cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(n, user_api="blas")


def gram_svd(x: np.ndarray, vectors: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Singular values (descending, (min(N, m),)) and, with ``vectors``, the right singular vectors as rows
    ((min(N, m), m), orthonormal) of ``x`` (N, m), from the eigen-decomposition of xᵀx. Equals
    ``np.linalg.svd(x, full_matrices=False)[1:]`` to rounding (see the module docstring), for N ≥ m the fast way;
    for N < m it calls the SVD itself.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(500, 6))
    >>> sv, vt = gram_svd(x)
    >>> ref = np.linalg.svd(x, full_matrices=False)
    >>> bool(np.allclose(sv, ref[1], rtol=1e-10)), bool(np.allclose(np.abs(vt @ ref[2].T), np.eye(6), atol=1e-8))
    (True, True)
    """
    x = np.asarray(x, dtype=np.float64)
    n, m = x.shape
    if n < m or m == 0:
        if vectors:
            _, sv, vt = np.linalg.svd(x, full_matrices=False)
            return sv, vt
        return np.linalg.svd(x, compute_uv=False), None
    with blas_threads(1):
        w, v = np.linalg.eigh(x.T @ x)
    order = np.argsort(w)[::-1]
    sv = np.sqrt(np.clip(w[order], 0.0, None))
    return sv, (v[:, order].T if vectors else None)
