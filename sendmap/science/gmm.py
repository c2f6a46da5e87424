"""Gaussian mixture clustering (full covariances) of a few features per position, by EM in numba kernels.

``classify.method: gmm`` clusters the non-crystalline positions on two standardised features
(:func:`sendmap.science.classify.classify_gmm`). This is the textbook model and algorithm of scikit-learn's
``GaussianMixture(covariance_type="full")`` with its defaults — k-means initialisation (k-means++ seeding, Lloyd
iterations), EM until the mean log-likelihood per position changes by less than ``tol`` = 1e-3 (at most 100
iterations), ``reg_covar`` = 1e-6 added to the covariances' diagonals, ``n_init`` starts of which the one of
largest likelihood is kept, labels from a last E step — written for N positions × D ≤ a few features, one pass
over the positions per E and M step, so that a re-run after a classification change imports neither
scikit-learn nor scipy.stats (~1.2 s of CPU) and fits in ~0.1 s instead of ~1.2 s on 43 000 positions.

The random numbers differ from scikit-learn's (numpy's ``default_rng(seed)`` here), so the k-means starts, and
hence where EM stops within its tolerance, differ: converged tightly both give the same labels; at the default
tolerance a few boundary points may differ, no more than scikit-learn's own seeds move (tests/test_rerun_speed.py).
On the two bench scans (86 400 and 21 904 positions, issue 20) ``classify.method: gmm`` gives scikit-learn's
class map at every position, for seeds 0, 1 and 2 of each.
"""
from __future__ import annotations

import math

import numba
import numpy as np

LOG_2PI = math.log(2.0 * math.pi)


@numba.njit(cache=True, nogil=True)
def _cholesky(a: np.ndarray) -> np.ndarray:  # pragma: no cover - numba
    """Lower Cholesky factor of a small symmetric positive-definite matrix (NaN if it is not)."""
    d = a.shape[0]
    low = np.zeros((d, d))
    for i in range(d):
        for j in range(i + 1):
            s = a[i, j]
            for m in range(j):
                s -= low[i, m] * low[j, m]
            if i == j:
                low[i, i] = math.sqrt(s) if s > 0 else np.nan
            else:
                low[i, j] = s / low[j, j]
    return low


@numba.njit(cache=True, nogil=True)
def _e_step(x, log_w, mu, cov, resp):  # pragma: no cover - numba
    """Responsibilities into ``resp`` (N, K); returns the mean log-likelihood per position."""
    n, d = x.shape
    k = mu.shape[0]
    chol = np.empty((k, d, d))
    logdet = np.empty(k)
    for c in range(k):
        chol[c] = _cholesky(cov[c])
        s = 0.0
        for i in range(d):
            s += math.log(chol[c, i, i])
        logdet[c] = 2.0 * s
    y = np.empty(d)
    logp = np.empty(k)
    total = 0.0
    for p in range(n):
        best = -np.inf
        for c in range(k):
            q = 0.0
            for i in range(d):  # forward substitution L y = x - mu
                s = x[p, i] - mu[c, i]
                for m in range(i):
                    s -= chol[c, i, m] * y[m]
                y[i] = s / chol[c, i, i]
                q += y[i] * y[i]
            logp[c] = log_w[c] - 0.5 * (d * LOG_2PI + logdet[c] + q)
            if logp[c] > best:
                best = logp[c]
        s = 0.0
        for c in range(k):
            s += math.exp(logp[c] - best)
        lse = best + math.log(s)
        total += lse
        for c in range(k):
            resp[p, c] = math.exp(logp[c] - lse)
    return total / n


@numba.njit(cache=True, nogil=True)
def _m_step(x, resp, reg):  # pragma: no cover - numba
    """(log weights (K,), means (K, D), covariances (K, D, D)) from the responsibilities (two passes: the means,
    then the scatter about them), ``reg`` added to each covariance's diagonal."""
    n, d = x.shape
    k = resp.shape[1]
    nk = np.full(k, 10.0 * np.finfo(np.float64).eps)  # (as scikit-learn: an empty component stays finite)
    mu = np.zeros((k, d))
    for p in range(n):
        for c in range(k):
            r = resp[p, c]
            nk[c] += r
            for i in range(d):
                mu[c, i] += r * x[p, i]
    for c in range(k):
        for i in range(d):
            mu[c, i] /= nk[c]
    cov = np.zeros((k, d, d))
    diff = np.empty(d)
    for p in range(n):
        for c in range(k):
            r = resp[p, c]
            for i in range(d):
                diff[i] = x[p, i] - mu[c, i]
            for i in range(d):
                for j in range(i + 1):
                    cov[c, i, j] += r * diff[i] * diff[j]
    for c in range(k):
        for i in range(d):
            for j in range(i + 1):
                cov[c, i, j] /= nk[c]
                cov[c, j, i] = cov[c, i, j]
            cov[c, i, i] += reg
    return np.log(nk / n), mu, cov


@numba.njit(cache=True, nogil=True)
def _em(x, resp, max_iter, tol, reg):  # pragma: no cover - numba
    """EM from initial responsibilities ``resp`` (updated in place): (log weights, means, covariances, mean
    log-likelihood per position, converged); the responsibilities are those of the returned parameters."""
    log_w, mu, cov = _m_step(x, resp, reg)
    lower = -np.inf
    converged = False
    for _ in range(max_iter):
        prev = lower
        lower = _e_step(x, log_w, mu, cov, resp)
        log_w, mu, cov = _m_step(x, resp, reg)
        if abs(lower - prev) < tol:
            converged = True
            break
    lower = _e_step(x, log_w, mu, cov, resp)  # (the labels and likelihood of the final parameters)
    return log_w, mu, cov, lower, converged


@numba.njit(cache=True, nogil=True)
def _lloyd(x, centres, max_iter):  # pragma: no cover - numba
    """k-means (Lloyd) from ``centres`` (K, D) until no label changes: the labels (N,)."""
    n, d = x.shape
    k = centres.shape[0]
    labels = np.full(n, -1, np.int64)
    for _ in range(max_iter):
        changed = 0
        for p in range(n):
            best, arg = np.inf, 0
            for c in range(k):
                s = 0.0
                for i in range(d):
                    t = x[p, i] - centres[c, i]
                    s += t * t
                if s < best:
                    best, arg = s, c
            if labels[p] != arg:
                labels[p] = arg
                changed += 1
        if changed == 0:
            break
        sums = np.zeros((k, d))
        cnt = np.zeros(k)
        for p in range(n):
            cnt[labels[p]] += 1.0
            for i in range(d):
                sums[labels[p], i] += x[p, i]
        for c in range(k):
            if cnt[c] > 0:  # (an emptied centre stays where it was)
                for i in range(d):
                    centres[c, i] = sums[c, i] / cnt[c]
    return labels


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first centre at random, each next one drawn with
    probability ∝ the squared distance to the nearest centre so far; (K, D) centres."""
    n = x.shape[0]
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for c in range(1, k):
        total = d2.sum()
        j = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        centres[c] = x[j]
        d2 = np.minimum(d2, ((x - centres[c]) ** 2).sum(axis=1))
    return centres


def gmm_fit_predict(x: np.ndarray, n_components: int, seed: int = 0, n_init: int = 3, tol: float = 1e-3,
                    max_iter: int = 100, reg_covar: float = 1e-6, kmeans_iter: int = 300) -> dict:
    """Fit a Gaussian mixture with full covariances to ``x`` (N, D) and label every row.

    ``n_init`` starts, each from k-means (k-means++ seeding from ``np.random.default_rng(seed)``, then Lloyd
    iterations) and EM until the mean log-likelihood per row changes by less than ``tol`` (at most ``max_iter``
    iterations); the start of largest final likelihood is kept. Returns ``labels`` (N,) int (most responsible
    component), ``weight`` (K,), ``mean`` (K, D), ``covariance`` (K, D, D), ``log_likelihood`` (mean per row) and
    ``converged``.

    >>> rng = np.random.default_rng(3)
    >>> x = np.r_[rng.normal(0, 0.3, (300, 2)), rng.normal(3, 0.3, (200, 2))]
    >>> r = gmm_fit_predict(x, 2)
    >>> sorted(np.bincount(r["labels"]).tolist()), np.round(np.sort(r["mean"][:, 0]), 1).tolist()
    ([200, 300], [0.0, 3.0])
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    n = x.shape[0]
    k = int(n_components)
    if x.ndim != 2 or n < k or k < 1:
        raise ValueError(f"{n} rows cannot be split into {k} components")
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(max(1, int(n_init))):
        labels = _lloyd(x, kmeans_plus_plus(x, k, rng), kmeans_iter)
        resp = np.zeros((n, k))
        resp[np.arange(n), labels] = 1.0
        log_w, mu, cov, lower, conv = _em(x, resp, max_iter, tol, reg_covar)
        if best is None or lower > best[3]:
            best = (log_w, mu, cov, lower, conv, resp)
    log_w, mu, cov, lower, conv, resp = best
    return {"labels": resp.argmax(axis=1), "weight": np.exp(log_w), "mean": mu, "covariance": cov,
            "log_likelihood": float(lower), "converged": bool(conv)}
