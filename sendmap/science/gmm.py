"""Gaussian mixture (full covariances) and k-means of a few standardised features, for ``classify.method`` gmm and
kmeans: the project's own kernels in place of scikit-learn's ``GaussianMixture`` / ``KMeans``, whose import alone
(≈ 1.7 s of CPU: it imports scipy.stats and pandas) was the largest single cost of a re-run after ``--set
classify.method=gmm`` on 2 cores.

The algorithms are the textbook ones scikit-learn also implements, with its defaults (its documentation: "Gaussian
mixture models", "K-means"), so that the two fit the same mixture of the same data:

* k-means: greedy k-means++ seeding (Arthur & Vassilvitskii 2007, with 2 + ⌊ln k⌋ candidates per centre as in
  scikit-learn), then Lloyd iterations until the centres move less than :data:`KMEANS_TOL` × the mean feature
  variance (squared shift summed over the centres) or :data:`KMEANS_MAX_ITER` iterations; the best of ``n_init``
  seedings by inertia.
* Gaussian mixture: initial responsibilities from one k-means run (one-hot), then EM (Dempster, Laird & Rubin
  1977) on full covariances with :data:`REG_COVAR` added to their diagonals, until the mean log-likelihood per
  sample changes by less than :data:`GMM_TOL` or :data:`GMM_MAX_ITER` iterations; the best of ``n_init`` starts by
  that likelihood; each row's label is the component of largest posterior.

The random draws differ from scikit-learn's (numpy's ``default_rng(seed)``), so a start can begin elsewhere; where
the data have one best mixture, both converge to it (``tests/test_gmm.py`` compares the labels with scikit-learn's
on the same input). Pure functions; the kernels are serial and release the GIL.
"""
from __future__ import annotations

import math

import numba
import numpy as np

GMM_TOL = 1e-3
"""EM stops when the mean log-likelihood per sample changes by less than this (scikit-learn's default ``tol``)."""
GMM_MAX_ITER = 100
"""Most EM iterations per start (scikit-learn's default ``max_iter``)."""
REG_COVAR = 1e-6
"""Added to each covariance's diagonal, in the standardised features' units² (scikit-learn's ``reg_covar``): keeps a
component that collapses onto repeated values (e.g. a vote of exactly 0) positive definite."""
KMEANS_TOL = 1e-4
"""Lloyd iterations stop when the squared centre shift summed over the centres is at most this × the mean feature
variance (scikit-learn's default ``tol`` and its scaling)."""
KMEANS_MAX_ITER = 300
"""Most Lloyd iterations per seeding (scikit-learn's default ``max_iter``)."""


@numba.njit(cache=True, nogil=True, inline="always")
def _nearest(x, i, centres):  # pragma: no cover - numba
    """(squared distance, index) of the centre (k, d) nearest to row ``i`` of ``x``; the first on ties."""
    best, arg = np.inf, 0
    for c in range(centres.shape[0]):
        s = 0.0
        for j in range(x.shape[1]):
            t = x[i, j] - centres[c, j]
            s += t * t
        if s < best:
            best, arg = s, c
    return best, arg


@numba.njit(cache=True, nogil=True)
def _lloyd(x, centres, labels, max_iter, tol):  # pragma: no cover - numba
    """Lloyd iterations in place on ``centres`` (k, d); ``labels`` (n,) filled. Returns the inertia (sum of squared
    distances to the assigned centres) of the final assignment. An empty cluster keeps its centre."""
    n, d = x.shape
    k = centres.shape[0]
    sums = np.zeros((k, d))
    counts = np.zeros(k)
    for _ in range(max_iter):
        sums[:] = 0.0
        counts[:] = 0.0
        for i in range(n):
            arg = _nearest(x, i, centres)[1]
            labels[i] = arg
            counts[arg] += 1.0
            for j in range(d):
                sums[arg, j] += x[i, j]
        shift = 0.0
        for c in range(k):
            if counts[c] > 0:
                for j in range(d):
                    v = sums[c, j] / counts[c]
                    shift += (v - centres[c, j]) ** 2
                    centres[c, j] = v
        if shift <= tol:
            break
    inertia = 0.0
    for i in range(n):  # the final assignment (to the final centres)
        best, arg = _nearest(x, i, centres)
        labels[i] = arg
        inertia += best
    return inertia


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding: (k, d) initial centres drawn from the rows of ``x``."""
    n = len(x)
    trials = 2 + int(math.log(k))
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    closest = ((x - centres[0]) ** 2).sum(axis=1)
    for c in range(1, k):
        pot = closest.sum()
        if not pot > 0:  # every row on a centre already: any row will do
            centres[c] = x[rng.integers(n)]
            continue
        cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * pot)
        cand = np.minimum(cand, n - 1)
        dist = ((x[None, :, :] - x[cand][:, None, :]) ** 2).sum(axis=2)  # (trials, n)
        new = np.minimum(closest[None, :], dist)
        best = int(np.argmin(new.sum(axis=1)))
        centres[c] = x[cand[best]]
        closest = new[best]
    return centres


def _kmeans_once(x: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    centres = _kmeans_pp(x, k, rng)
    labels = np.empty(len(x), np.int64)
    tol = KMEANS_TOL * float(np.mean(np.var(x, axis=0)))
    inertia = _lloyd(x, centres, labels, KMEANS_MAX_ITER, tol)
    return labels, inertia


def kmeans_labels(x: np.ndarray, k: int, seed: int, n_init: int = 10) -> np.ndarray:
    """Cluster index (n,) of each row of ``x`` (n, d): the best of ``n_init`` k-means runs (module docstring).

    >>> x = np.r_[np.zeros((5, 2)), np.ones((4, 2)) * 10]
    >>> lab = kmeans_labels(x, 2, 0)
    >>> bool((lab[:5] == lab[0]).all() and (lab[5:] == lab[5]).all() and lab[0] != lab[5])
    True
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        labels, inertia = _kmeans_once(x, k, rng)
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


@numba.njit(cache=True, nogil=True)
def _m_step(x, resp, w, mu, cov, reg):  # pragma: no cover - numba
    """Weights, means and full covariances (+ ``reg`` on the diagonal) from responsibilities ``resp`` (n, k)."""
    n, d = x.shape
    k = resp.shape[1]
    for c in range(k):
        nk = 1e-300
        m = np.zeros(d)
        for i in range(n):
            r = resp[i, c]
            nk += r
            for j in range(d):
                m[j] += r * x[i, j]
        for j in range(d):
            m[j] /= nk
        s = np.zeros((d, d))
        for i in range(n):
            r = resp[i, c]
            for a in range(d):
                da = x[i, a] - m[a]
                for b in range(a + 1):
                    s[a, b] += r * da * (x[i, b] - m[b])
        for a in range(d):
            for b in range(a + 1):
                v = s[a, b] / nk
                cov[c, a, b] = v
                cov[c, b, a] = v
            cov[c, a, a] += reg
            mu[c, a] = m[a]
        w[c] = nk / n


@numba.njit(cache=True, nogil=True)
def _cholesky(a, out):  # pragma: no cover - numba
    """Lower Cholesky factor of the small symmetric positive definite ``a`` (d, d) into ``out``; False if ``a`` is
    not positive definite."""
    d = a.shape[0]
    for i in range(d):
        for j in range(i + 1):
            s = a[i, j]
            for p in range(j):
                s -= out[i, p] * out[j, p]
            if i == j:
                if not s > 0:
                    return False
                out[i, i] = math.sqrt(s)
            else:
                out[i, j] = s / out[j, j]
        for j in range(i + 1, d):
            out[i, j] = 0.0
    return True


@numba.njit(cache=True, nogil=True)
def _e_step(x, w, mu, cov, resp):  # pragma: no cover - numba
    """Responsibilities into ``resp`` (n, k) (posterior of each component per row); returns the mean log-likelihood
    per row, or NaN if a covariance is not positive definite."""
    n, d = x.shape
    k = mu.shape[0]
    chol = np.empty((k, d, d))
    const = np.empty(k)
    for c in range(k):
        if not _cholesky(cov[c], chol[c]):
            return np.nan
        logdet = 0.0
        for j in range(d):
            logdet += math.log(chol[c, j, j])
        const[c] = math.log(w[c]) - 0.5 * d * math.log(2.0 * math.pi) - logdet
    y = np.empty(d)
    logp = np.empty(k)
    total = 0.0
    for i in range(n):
        best = -np.inf
        for c in range(k):
            q = 0.0
            for a in range(d):  # forward substitution L y = x - mu
                s = x[i, a] - mu[c, a]
                for b in range(a):
                    s -= chol[c, a, b] * y[b]
                y[a] = s / chol[c, a, a]
                q += y[a] * y[a]
            logp[c] = const[c] - 0.5 * q
            if logp[c] > best:
                best = logp[c]
        s = 0.0
        for c in range(k):
            logp[c] = math.exp(logp[c] - best)
            s += logp[c]
        total += best + math.log(s)
        for c in range(k):
            resp[i, c] = logp[c] / s
    return total / n


GMM_THREADS = 2
"""Threads the gmm's starts run on (this machine's and the benchmark's 2 cores; the results do not depend on it)."""


def _gmm_start(x: np.ndarray, centres: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], float]:
    """((weights, means, covariances), mean log-likelihood per sample) of one EM start of :func:`gmm_labels` from
    the k-means++ ``centres`` (k, d): Lloyd iterations, one-hot responsibilities, then EM."""
    n, d = x.shape
    k = len(centres)
    labels = np.empty(n, np.int64)
    _lloyd(x, centres, labels, KMEANS_MAX_ITER, KMEANS_TOL * float(np.mean(np.var(x, axis=0))))
    resp = np.zeros((n, k))
    resp[np.arange(n), labels] = 1.0
    w, mu, cov = np.empty(k), np.empty((k, d)), np.empty((k, d, d))
    _m_step(x, resp, w, mu, cov, REG_COVAR)
    ll, ll_old = -np.inf, -np.inf
    for _it in range(GMM_MAX_ITER):
        ll = _e_step(x, w, mu, cov, resp)
        if not np.isfinite(ll):
            break
        _m_step(x, resp, w, mu, cov, REG_COVAR)
        if abs(ll - ll_old) < GMM_TOL:
            break
        ll_old = ll
    return (w, mu, cov), ll


def gmm_labels(x: np.ndarray, k: int, seed: int, n_init: int = 3) -> np.ndarray:
    """Component index (n,) of each row of ``x`` (n, d) under the full-covariance Gaussian mixture of ``k``
    components fitted by EM, the best of ``n_init`` k-means-initialised starts (module docstring).

    >>> rng = np.random.default_rng(0)
    >>> x = np.r_[rng.normal(0, 1, (300, 2)), rng.normal(8, 1, (200, 2))]
    >>> lab = gmm_labels(x, 2, 0)
    >>> sorted(np.bincount(lab).tolist())
    [200, 300]
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    n, d = x.shape
    k = max(1, min(int(k), n))
    rng = np.random.default_rng(seed)
    # the seedings draw from rng in the starts' order; the rest of a start draws nothing, so the starts run on
    # GMM_THREADS threads (their kernels release the GIL) with the same results as one after another
    seeds = [_kmeans_pp(x, k, rng) for _ in range(n_init)]
    if n_init > 1 and GMM_THREADS > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(GMM_THREADS, n_init)) as pool:
            fits = list(pool.map(lambda c: _gmm_start(x, c), seeds))
    else:
        fits = [_gmm_start(x, c) for c in seeds]
    best, best_ll = None, -np.inf
    for params, ll in fits:  # (in the starts' order: the first of equal likelihoods wins, as before)
        if np.isfinite(ll) and (best is None or ll > best_ll):
            best, best_ll = params, ll
    resp = np.empty((n, k))
    if best is None:  # no start gave positive definite covariances (cannot happen with REG_COVAR > 0 on finite x)
        raise ValueError("the Gaussian mixture fit failed: a covariance is not positive definite")
    _e_step(x, *best, resp)  # (the best start's posteriors, as its parameters stand after its last M-step)
    return resp.argmax(axis=1)
