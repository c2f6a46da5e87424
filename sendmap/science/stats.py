"""Statistics per class: histogram Gaussian fits, intrinsic spread, class-mean profiles, layer thickness.

Least squares: the one fit here (:func:`fit_gaussian`, three parameters) is a short Levenberg-Marquardt of its own,
not :func:`scipy.optimize.curve_fit`, for a measured reason (issue 19, kept where the ring fits of
:mod:`sendmap.science.ring_profile` moved to scipy): nothing else a re-run after a classification or statistics
change runs imports ``scipy.optimize``, and importing it costs 0.67-0.91 s (3 runs; after every module of
``sendmap.engine.execute.LATER_STAGE_MODULES`` is loaded, on the shared 2-core machine), while the whole re-run of the
demo with a new ``statistics.bin_width`` takes 2.3 s wall (2.9 s with ``scipy.optimize`` imported first).
It gives curve_fit's minimum and covariance (``tests/test_peaks.py::test_gaussian_fit_matches_scipy_curve_fit``
checks 40 histograms against curve_fit).
"""
from __future__ import annotations


import numba
import numpy as np


def fit_gaussian(x: np.ndarray, y: np.ndarray, y_err: np.ndarray, p0, max_iter: int = 200,
                 rtol: float = 1.49012e-8) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares fit of ``amp · exp(−(x − mu)² / 2 sigma²)`` to ``y`` ± ``y_err``.

    Levenberg–Marquardt with the analytic Jacobian; returns (popt = [amp, mu, sigma], pcov), pcov being the
    covariance of the parameters with ``y_err`` taken as absolute 1-σ errors (``absolute_sigma=True``), ±inf where
    the Jacobian is singular. Raises RuntimeError where it does not converge in ``max_iter`` steps. The same
    minimum and covariance as ``scipy.optimize.curve_fit(..., absolute_sigma=True)`` (tested to 10⁻⁷): written out
    because importing ``scipy.optimize`` costs ~0.7 s, a quarter of a re-run after a classification change (see
    the module's docstring), for these few three-parameter fits.

    >>> x = np.linspace(-3, 3, 13)
    >>> popt, pcov = fit_gaussian(x, 5 * np.exp(-0.5 * ((x - 0.2) / 0.8) ** 2), np.ones(13), [4.0, 0.0, 1.0])
    >>> np.round(popt, 6).tolist()
    [5.0, 0.2, 0.8]
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    w = 1.0 / np.asarray(y_err, dtype=float)

    def model(p):
        """Weighted residuals and Jacobian (of the model, weighted) at p."""
        amp, mu, sig = p
        u = (x - mu) / sig
        e = np.exp(-0.5 * u * u)
        jac = np.stack([e, amp * e * u / sig, amp * e * u * u / sig], axis=1) * w[:, None]
        return (y - amp * e) * w, jac

    p = np.asarray(p0, dtype=float).copy()
    r, jac = model(p)
    chi2, lam = float(r @ r), 1e-3
    for _ in range(max_iter):
        a, g = jac.T @ jac, jac.T @ r
        step_ok = False
        while lam < 1e16:
            try:
                dp = np.linalg.solve(a + lam * np.diag(np.diag(a)), g)
            except np.linalg.LinAlgError:
                lam *= 10.0
                continue
            r_new, jac_new = model(p + dp)
            chi2_new = float(r_new @ r_new)
            if np.isfinite(chi2_new) and chi2_new <= chi2:
                step_ok = True
                break
            lam *= 10.0
        if not step_ok:  # no step lowers χ²: at the minimum (to rounding)
            break
        p, r, jac = p + dp, r_new, jac_new
        small_step = np.all(np.abs(dp) <= rtol * (np.abs(p) + rtol))
        small_gain = chi2 - chi2_new <= rtol * chi2
        chi2, lam = chi2_new, max(lam / 10.0, 1e-12)
        if small_step or small_gain:
            break
    else:
        raise RuntimeError(f"Gaussian fit did not converge in {max_iter} steps")
    try:
        pcov = np.linalg.inv(jac.T @ jac)
    except np.linalg.LinAlgError:
        pcov = np.full((3, 3), np.inf)
    return p, pcov


def gaussian_histogram_fit(values: np.ndarray, bin_width: float, errors: np.ndarray | None = None) -> dict:
    """Histogram of finite ``values`` (1/Å) with a least-squares Gaussian fit.

    Returns count, mean, std (sample), fit ``mu``, ``sigma`` and ``amplitude`` (counts per bin), their
    1-σ fit errors, the bin edges and counts, and — if per-value 1-σ ``errors`` are given — the
    ``intrinsic_sigma`` = sqrt(σ² − mean(err²)): the spread once the measurement noise is removed
    (0 where the noise explains all of it). Falls back to the moments (mean, sample standard deviation, no
    errors) where the fit fails or cannot be made (fewer than 5 values, fewer than 3 bins, no finite values);
    ``fit_method`` says which, and why.

    >>> import numpy as np
    >>> v = np.random.default_rng(0).normal(0.331, 0.006, 4000)
    >>> r = gaussian_histogram_fit(v, 0.0025)
    >>> round(r["mu"], 3), round(r["sigma"], 3)
    (0.331, 0.006)
    """
    v = np.asarray(values, dtype=float).ravel()
    fin = np.isfinite(v)
    v = v[fin]
    res = {"count": int(v.size)}
    if v.size == 0:
        res["fit_method"] = "none: no finite values"
        return res
    mean, std = float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
    res.update(mean=mean, std=std)
    if not (np.isfinite(bin_width) and bin_width > 0) or (v.max() - v.min()) / bin_width > 1e5:
        # no sensible histogram (a bad bin width, or values spread over > 10⁵ bins): the moments only
        res.update(mu=mean, sigma=std, amplitude=float("nan"), mu_err=float("nan"), sigma_err=float("nan"),
                   fit_converged=False, fit_method="moments (mean, standard deviation): no usable histogram",
                   bin_edges=[], bin_counts=[])
        return res
    lo = np.floor(v.min() / bin_width) * bin_width
    hi = np.ceil(v.max() / bin_width) * bin_width + bin_width
    edges = np.arange(lo, hi + 0.5 * bin_width, bin_width)
    counts, edges = np.histogram(v, bins=edges)
    centres = 0.5 * (edges[1:] + edges[:-1])
    # (the fit starts from a width of at least half a bin; where it cannot be made, the moments are reported as
    # such: the sample standard deviation, however far below a bin it is)
    mu, sigma, amp = mean, std, float(counts.max())
    mu_err = sigma_err = float("nan")
    fit_ok = False
    why = f"{v.size} values (< 5)" if v.size < 5 else f"{len(centres)} histogram bins (< 3)"
    if v.size >= 5 and len(centres) >= 3:
        why = "the least-squares fit did not converge, or its centre fell outside the histogram"
        try:
            with np.errstate(all="ignore"):
                popt, pcov = fit_gaussian(centres, counts, np.sqrt(np.maximum(counts, 1.0)),
                                          [amp, mu, max(sigma, bin_width / 2)])
            # (a Gaussian centred outside the histogram fits a slope of the background, not the class's peak)
            if (np.all(np.isfinite(popt)) and popt[2] != 0 and np.all(np.isfinite(pcov))
                    and edges[0] <= popt[1] <= edges[-1]):
                amp, mu, sigma = float(popt[0]), float(popt[1]), abs(float(popt[2]))
                mu_err, sigma_err = float(np.sqrt(max(pcov[1, 1], 0.0))), float(np.sqrt(max(pcov[2, 2], 0.0)))
                fit_ok = True
        except (RuntimeError, ValueError, FloatingPointError, np.linalg.LinAlgError):
            pass
    if not fit_ok and sigma > 0:
        # the moments' Gaussian as counts per bin, as a fitted one: its area is the count (the tallest bin is not
        # its height where the values are narrower than a bin: a real film's 192 positions spread by 0.0002 1/Å in
        # one 0.0025 bin drew a curve of σ 0.0002 only 192 high, against ~1000 for the same data's mixture curve)
        amp = v.size * bin_width / (sigma * np.sqrt(2 * np.pi))
    res.update(mu=mu, sigma=sigma, amplitude=amp, mu_err=mu_err, sigma_err=sigma_err, fit_converged=fit_ok,
               fit_method="least-squares Gaussian" if fit_ok else f"moments (mean, standard deviation): {why}",
               bin_edges=edges.tolist(), bin_counts=counts.tolist())
    if errors is not None:
        e = np.asarray(errors, dtype=float).ravel()[fin]
        e = e[np.isfinite(e)]
        noise2 = float(np.mean(e ** 2)) if e.size else float("nan")
        res["measurement_sigma"] = float(np.sqrt(noise2))
        res["intrinsic_sigma"] = float(np.sqrt(max(sigma ** 2 - noise2, 0.0)))
    return res


@numba.njit(cache=True, nogil=True)
def _class_sums(flat, cls, n_classes, total, n_fin, rows):  # pragma: no cover - numba
    """Per class: the sum of the finite values of each Q bin over its positions in scan order, their count, and
    the positions (class index outside 0..n_classes-1: none)."""
    n, nq = flat.shape
    for i in range(n):
        k = cls[i]
        if k < 0 or k >= n_classes:
            continue
        rows[k] += 1
        for j in range(nq):
            v = flat[i, j]
            if np.isfinite(v):
                total[k, j] += v
                n_fin[k, j] += 1


@numba.njit(cache=True, nogil=True)
def _class_squares(flat, cls, mean, acc):  # pragma: no cover - numba
    """Per class and Q bin: the sum over its positions, in scan order, of the squared deviation of each finite value
    from ``mean``."""
    n, nq = flat.shape
    n_classes = mean.shape[0]
    for i in range(n):
        k = cls[i]
        if k < 0 or k >= n_classes:
            continue
        for j in range(nq):
            v = flat[i, j]
            if np.isfinite(v):
                d = v - mean[k, j]
                acc[k, j] += d * d


def class_mean_profiles(profiles: np.ndarray, class_map: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean profile of each class, its standard error over positions, and counts.

    profiles: (Ry, Rx, nq); class_map: (Ry, Rx) int. Returns (n_classes, nq) mean, (n_classes, nq)
    sem (NaN where a class has < 2 positions) and (n_classes,) counts. The mean and the variance (about that mean,
    ``n − 1``) of each Q bin are over the class's finite values; the standard error divides the standard deviation by
    the square root of the class's positions. Two passes over the profiles in numba kernels (sums in scan order,
    the numbers of the former NumPy form bit for bit; 0.56 s of NumPy masks and copies before, on the 86 400
    positions of the 128² bench scan).

    >>> p = np.array([[[1.0, np.nan], [3.0, 2.0], [5.0, 4.0]]])
    >>> m, s, c = class_mean_profiles(p, np.array([[0, 0, 1]]), 2)
    >>> m.tolist(), c.tolist(), bool(np.isnan(s[0, 1]) and np.isnan(s[1]).all())
    ([[2.0, 2.0], [5.0, 4.0]], [2, 1], True)
    """
    flat = np.ascontiguousarray(profiles.reshape(-1, profiles.shape[-1]), dtype=np.float64)
    cls = np.ascontiguousarray(class_map.ravel(), dtype=np.int64)
    nq = flat.shape[1]
    total = np.zeros((n_classes, nq))
    n_fin = np.zeros((n_classes, nq), np.int64)
    rows = np.zeros(n_classes, np.int64)
    _class_sums(flat, cls, n_classes, total, n_fin, rows)
    counts = np.bincount(class_map.ravel(), minlength=n_classes)[:n_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where((rows > 0)[:, None] & (n_fin > 0), total / np.maximum(n_fin, 1), np.nan)
        acc = np.zeros((n_classes, nq))
        _class_squares(flat, cls, mean, acc)
        var = acc / np.maximum(n_fin - 1, 1)
        sem = np.where((rows > 1)[:, None] & (n_fin > 1), np.sqrt(var) / np.sqrt(rows)[:, None], np.nan)
    return mean, sem, counts


def layer_thickness(class_map: np.ndarray, step_nm: float, axis: int = 1) -> dict[str, dict]:
    """Thickness of each class's layers across an interface, from the class map.

    The interface normal is taken along ``axis`` (default: the fast scan axis x). In every scan line
    across the interface, each run of consecutive positions of one class is a layer crossing of
    length run × step_nm. Layers are grouped by their order along the line (the k-th run of class c),
    and for each group the mean, standard deviation and count of crossings along the interface are
    returned (nm), with the share of lines that cross it (a layer seen in a few lines only is a patch,
    not a layer). A run of one position between two runs of one class is classification noise: it is
    given to that class (so it neither splits the layer nor counts as one); other one-position runs are
    ignored.

    >>> import numpy as np
    >>> cm = np.array([[3, 3, 1, 1, 1, 0, 0]] * 4)
    >>> layer_thickness(cm, 4.0)["1#1"]["mean_nm"]
    12.0
    """
    from .. import CLASS_NAMES

    cm = np.moveaxis(class_map, axis, 1)
    runs: dict[str, list[float]] = {}
    for line in cm:
        line = _absorb_single_positions(line)
        change = np.flatnonzero(np.diff(line)) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [len(line)]])
        seen: dict[int, int] = {}
        for s, e in zip(starts, ends):
            c = int(line[s])
            if e - s < 2:
                continue
            seen[c] = seen.get(c, 0) + 1
            runs.setdefault(f"{c}#{seen[c]}", []).append((e - s) * step_nm)
    out = {}
    for key, vals in sorted(runs.items()):
        c = int(key.split("#")[0])
        arr = np.asarray(vals)
        out[key] = {"class": CLASS_NAMES[c] if c < len(CLASS_NAMES) else str(c), "layer": int(key.split("#")[1]),
                    "mean_nm": float(arr.mean()), "std_nm": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
                    "n_lines": int(arr.size), "fraction_of_lines": float(arr.size / max(len(cm), 1))}
    return out


def _absorb_single_positions(line: np.ndarray) -> np.ndarray:
    """A one-position run flanked by one class on both sides takes that class (1-D class line)."""
    out = np.array(line, copy=True)
    if out.size >= 3:
        lone = (out[1:-1] != out[:-2]) & (out[1:-1] != out[2:]) & (out[:-2] == out[2:])
        idx = np.flatnonzero(lone) + 1
        out[idx] = out[idx - 1]
    return out
