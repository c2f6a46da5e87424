"""Gaussian mixtures of measured peak positions with the measurement error deconvolved.

The published SEI study fits its per-region histograms of SRO peak positions with two or three Gaussians. A
histogram of *measured* positions is the intrinsic distribution convolved with each position's measurement error;
where the errors are known (the peaks stage's 1-σ per position) the intrinsic means and spreads follow from the
"extreme deconvolution" EM algorithm (Bovy, Hogg & Roweis 2011, Ann. Appl. Stat. 5, 1657), here in one dimension:
position i, measured x_i with error σ_i, belongs to component k with probability π_k and then
x_i ~ N(μ_k, V_k + σ_i²), V_k the intrinsic variance.
"""
from __future__ import annotations

import math

import numba
import numpy as np

LOG_2PI = math.log(2.0 * math.pi)


@numba.njit(cache=True, nogil=True)
def _em_kernel(x, s2, w, mu, var, n_iter, tol, min_var):  # pragma: no cover - numba
    """The EM iterations of :func:`fit_deconvolved_mixture` (the updates of its former NumPy form, one pass over the
    values for the responsibilities and means, one for the variances; one exp and one log per value and component,
    divisions as products by reciprocals: the same numbers to ~1e-15 relative per step): updates ``w``, ``mu``,
    ``var`` in place, returns whether it converged."""
    n, k = x.size, mu.size
    r = np.empty((n, k))
    b = np.empty((n, k))
    bb = np.empty((n, k))
    logp = np.empty(k)
    logw = np.empty(k)
    ll_old = -np.inf
    for _ in range(n_iter):
        ll = 0.0
        nk = np.full(k, 1e-300)
        rb = np.zeros(k)
        for c in range(k):
            logw[c] = math.log(w[c])
        for i in range(n):
            best = -np.inf
            for c in range(k):
                tot = var[c] + s2[i]
                inv = 1.0 / tot
                d = x[i] - mu[c]
                logp[c] = logw[c] - 0.5 * (math.log(2.0 * math.pi * tot) + d * d * inv)
                if logp[c] > best:
                    best = logp[c]
                b[i, c] = mu[c] + var[c] * inv * d
                bb[i, c] = var[c] - var[c] ** 2 * inv
            s = 0.0
            for c in range(k):
                logp[c] = math.exp(logp[c] - best)  # (now the unnormalised responsibility)
                s += logp[c]
            ll += best + math.log(s)
            inv_s = 1.0 / s
            for c in range(k):
                rc = logp[c] * inv_s
                r[i, c] = rc
                nk[c] += rc
                rb[c] += rc * b[i, c]
        new_mu = rb / nk
        acc = np.zeros(k)
        for i in range(n):
            for c in range(k):
                acc[c] += r[i, c] * ((new_mu[c] - b[i, c]) ** 2 + bb[i, c])
        for c in range(k):
            mu[c] = new_mu[c]
            var[c] = max(acc[c] / nk[c], min_var)
            w[c] = nk[c] / n
        if abs(ll - ll_old) < tol * max(1.0, abs(ll)):
            return True
        ll_old = ll
    return False


@numba.njit(cache=True, nogil=True)
def _em_one_kernel(x, s2, w, mu, var, n_iter, tol, min_var):  # pragma: no cover - numba
    """:func:`_em_kernel` for one component, the same numbers bit for bit in about half the time: every
    responsibility is exp(0) / 1 = 1 exactly, so the exponentials, the log of their sum (log 1 = 0) and the
    products by them are left out; each remaining operation is the general kernel's, in its order (one log per
    value for the log-likelihood that decides convergence, and the same two passes). For finite values and
    errors (as :func:`fit_deconvolved_mixture` passes them; var ≥ min_var > 0, so every total variance is
    positive)."""
    n = x.size
    b = np.empty(n)
    bb = np.empty(n)
    ll_old = -np.inf
    for _ in range(n_iter):
        ll = 0.0
        nk = 1e-300
        rb = 0.0
        logw = math.log(w[0])
        m, v = mu[0], var[0]
        for i in range(n):
            tot = v + s2[i]
            inv = 1.0 / tot
            d = x[i] - m
            ll += logw - 0.5 * (math.log(2.0 * math.pi * tot) + d * d * inv)
            b[i] = m + v * inv * d
            bb[i] = v - v ** 2 * inv
            nk += 1.0
            rb += b[i]
        new_mu = rb / nk
        acc = 0.0
        for i in range(n):
            acc += (new_mu - b[i]) ** 2 + bb[i]
        mu[0] = new_mu
        var[0] = max(acc / nk, min_var)
        w[0] = nk / n
        if abs(ll - ll_old) < tol * max(1.0, abs(ll)):
            return True
        ll_old = ll
    return False


@numba.njit(cache=True, nogil=True)
def _loglik_kernel(x, s2, logw, mu, sig):  # pragma: no cover - numba
    """Marginal log-likelihood Σ_i log Σ_k w_k N(x_i; μ_k, σ_k² + s2_i) (``logw``: log weights)."""
    n, k = x.size, mu.size
    logp = np.empty(k)
    total = 0.0
    for i in range(n):
        best = -np.inf
        for c in range(k):
            tot = sig[c] * sig[c] + s2[i]
            d = x[i] - mu[c]
            logp[c] = logw[c] - 0.5 * (math.log(2.0 * math.pi * tot) + d * d / tot)
            if logp[c] > best:
                best = logp[c]
        s = 0.0
        for c in range(k):
            s += math.exp(logp[c] - best)
        total += best + math.log(s)
    return total


def _log_norm(x: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    return -0.5 * (np.log(2 * np.pi * var) + (x - mu) ** 2 / var)


def _e_step(x, s2, w, mu, var):
    """(total variances (N, K), responsibilities (N, K), log-likelihood) at the given parameters."""
    tot = var[None, :] + s2[:, None]
    logp = np.log(w)[None, :] + _log_norm(x[:, None], mu[None, :], tot)
    m = logp.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logp - m).sum(axis=1))
    return tot, np.exp(logp - lse[:, None]), float(lse.sum())


def fit_deconvolved_mixture(x: np.ndarray, sigma: np.ndarray, n_components: int, n_iter: int = 500,
                            tol: float = 1e-9, min_var: float = 1e-10, init_means: np.ndarray | None = None,
                            seed: int = 0, errors: bool = True) -> dict:
    """Fit a 1-D Gaussian mixture to values ``x`` with known 1-σ errors ``sigma`` (same units), deconvolving them.

    Returns ``{"weight", "mean", "sigma", "mean_err", "sigma_err"}`` ((K,) arrays, sorted by mean; ``sigma`` is
    the intrinsic spread √V_k, 0 where the data do not resolve one), ``log_likelihood``, ``bic``
    (−2 log L + (3K − 1) ln N), ``responsibility`` (N, K), ``converged`` and ``n``. Errors (``errors``: else NaN) of the means and
    spreads: 1-σ from the inverse of the observed information of the marginal likelihood in all parameters
    (means, spreads and weights together, by finite differences: overlapping components share their
    uncertainty); NaN for a spread the data do not resolve.

    Non-finite values or errors are left out. Raises ValueError with fewer than ``2 × n_components`` values.

    >>> rng = np.random.default_rng(1)
    >>> true = np.r_[rng.normal(0.285, 0.010, 600), rng.normal(0.330, 0.012, 400)]
    >>> err = np.full(true.size, 0.008)
    >>> r = fit_deconvolved_mixture(true + rng.normal(0, err), err, 2)
    >>> np.round(r["mean"], 3).tolist(), np.round(r["sigma"], 3).tolist()
    ([0.285, 0.33], [0.01, 0.013])
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    s2 = np.asarray(sigma, dtype=np.float64).ravel() ** 2
    ok = np.isfinite(x) & np.isfinite(s2)
    x, s2 = x[ok], s2[ok]
    n, k = x.size, int(n_components)
    if n < 2 * k:
        raise ValueError(f"{n} values cannot determine a mixture of {k} components")
    if init_means is None:
        init_means = np.quantile(x, (np.arange(k) + 0.5) / k)
    mu = np.asarray(init_means, dtype=np.float64).copy()
    spread = np.var(x) / k ** 2
    var = np.full(k, max(spread - np.median(s2), min_var))
    w = np.full(k, 1.0 / k)
    # the EM updates (numba: ~10x the former NumPy form's speed, the same numbers to rounding; tests/test_mixture_spatial.py)
    # (one component: its own kernel, the same numbers in about half the time)
    kernel = _em_one_kernel if k == 1 else _em_kernel
    converged = bool(kernel(x, s2, w, mu, var, int(n_iter), float(tol), float(min_var)))
    _, r, ll = _e_step(x, s2, w, mu, var)
    mean_err, sig_err = (_marginal_errors(x, s2, w, mu, var, min_var) if errors  # (the costly part)
                         else (np.full(k, np.nan), np.full(k, np.nan)))
    order = np.argsort(mu)
    sig = np.where(var > min_var, np.sqrt(var), 0.0)
    return {"weight": w[order], "mean": mu[order], "sigma": sig[order], "mean_err": mean_err[order],
            "sigma_err": sig_err[order], "log_likelihood": ll, "bic": -2 * ll + (3 * k - 1) * math.log(n),
            "responsibility": r[:, order], "converged": converged, "n": int(n)}


def _mixture_loglik(theta: np.ndarray, x: np.ndarray, s2: np.ndarray, k: int) -> float:
    """Marginal log-likelihood at θ = (μ_1..K, σ_1..K, logits_2..K)."""
    mu, sig = theta[:k], theta[k:2 * k]
    logits = np.r_[0.0, theta[2 * k:]]
    logw = logits - np.log(np.exp(logits).sum())
    return float(_loglik_kernel(x, s2, logw, np.ascontiguousarray(mu), np.ascontiguousarray(sig)))


def _marginal_errors(x, s2, w, mu, var, min_var):
    """1-σ of the means and intrinsic spreads from the numerical Hessian of the marginal log-likelihood."""
    k = mu.size
    resolved = var > 100 * min_var
    sig = np.sqrt(np.where(resolved, var, 0.0))
    theta = np.r_[mu, sig, np.log(w[1:] / w[0])]
    scale = float(np.std(x)) or 1.0
    h = np.r_[np.full(k, 1e-3 * scale), np.where(resolved, 1e-3 * np.maximum(sig, 1e-3 * scale), 0.0),
              np.full(k - 1, 1e-3)]
    free = np.flatnonzero(h > 0)
    f0 = _mixture_loglik(theta, x, s2, k)
    hess = np.zeros((free.size, free.size))
    for a, i in enumerate(free):
        for c, j in enumerate(free[a:], start=a):
            def f(di, dj):
                t = theta.copy()
                t[i] += di
                t[j] += dj
                return _mixture_loglik(t, x, s2, k)
            if i == j:
                v = (f(h[i], 0) - 2 * f0 + f(-h[i], 0)) / h[i] ** 2
            else:
                v = (f(h[i], h[j]) - f(h[i], -h[j]) - f(-h[i], h[j]) + f(-h[i], -h[j])) / (4 * h[i] * h[j])
            hess[a, c] = hess[c, a] = v
    mean_err, sig_err = np.full(k, np.nan), np.full(k, np.nan)
    try:
        cov = np.linalg.inv(-hess)
    except np.linalg.LinAlgError:
        return mean_err, sig_err
    d = np.diag(cov)
    for a, i in enumerate(free):
        if d[a] > 0:
            if i < k:
                mean_err[i] = math.sqrt(d[a])
            elif i < 2 * k:
                sig_err[i - k] = math.sqrt(d[a])
    return mean_err, sig_err


def best_mixture(x: np.ndarray, sigma: np.ndarray, components=(1, 2, 3), **kw) -> dict:
    """:func:`fit_deconvolved_mixture` for each number of ``components`` that the data allow; the one of least
    BIC, with ``bic_by_components`` (K → BIC) added."""
    fits = {}
    for k in components:
        try:
            fits[k] = fit_deconvolved_mixture(x, sigma, k, errors=False, **kw)
        except ValueError:
            continue
    if not fits:
        raise ValueError("too few values for any mixture")
    best = min(fits, key=lambda k: fits[k]["bic"])
    # the errors of the chosen one only (the numerical Hessian is most of a fit's cost): refitted from its solution
    fit = fit_deconvolved_mixture(x, sigma, best, init_means=fits[best]["mean"], **kw)
    return dict(fit, bic_by_components={k: f["bic"] for k, f in fits.items()})
