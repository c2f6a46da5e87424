"""What a low-rank denoising leaves out, put back from the neighbourhood: the truncation bias of few components.

A denoised profile is m + P(y − m) (:func:`sendmap.science.peaks.lowrank_denoise`: m the mean of the non-crystalline
profiles, P the projection onto the kept components). For a position whose noise-free profile is s its expectation
is m + P(s − m): the part (I − P)(s − m) of its own signal outside the kept components is lost, a bias towards the
population's profile that the propagated error does not include. Under strong speckle the components are counted
above the edge of the correlated speckle noise (:func:`sendmap.stages.peaks.speckle_components`, 4 of them at
M = 3), and a class whose shape differs from the rest only in directions below that edge loses them: on synthetic
scans with speckle M = 3 (development seeds 920, 921 and the matrix seed 1020) the peak of the class-mean SEI
Type 2 profile moves by −0.005 to −0.006 1/Å through the projection (−0.004 with 8 components, 0.000 with 20,
whose noise, though, doubles the scatter of single positions: 0.011 → 0.021 1/Å).

The lost part is a property of the film's structure, which is spatially coherent (a layer spans many probe
positions), while the speckle is independent between positions (each probe position illuminates its own
volume). So the residual r = y − ŷ of the neighbours estimates it: averaged over the k × k neighbourhood
(without the position itself, so that its own noise does not come back), its noise falls as 1/√(k² − 1) while its
signal, where the neighbourhood lies in one layer, stays. :func:`neighbour_residual_mean` computes that average;
the peaks stage adds it to the denoised profiles (``peaks.denoise_residual_pool``).
"""
from __future__ import annotations

import numpy as np


def _box_sum(a: np.ndarray, k: int) -> np.ndarray:
    """Sum of ``a`` (Ry, Rx, ...) over the k × k neighbourhood of every position (centred, odd k; positions outside
    the scan count as 0), by cumulative sums along the two scan axes."""
    h = k // 2
    pad = [(h + 1, h), (h + 1, h)] + [(0, 0)] * (a.ndim - 2)
    c = np.cumsum(np.cumsum(np.pad(a, pad), axis=0), axis=1)
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]


def neighbour_residual_mean(residual: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """Mean of ``residual`` (Ry, Rx, nq) over the other positions of each position's k × k neighbourhood (odd k ≥ 3)
    where ``valid`` (Ry, Rx, nq) bool (e.g. the non-crystalline positions with counts, a bin of theirs left out
    where it holds a listed Bragg spot); 0 where no neighbour is valid in a bin. Units those of ``residual``.

    >>> import numpy as np
    >>> r = np.zeros((3, 3, 1)); r[1, 1] = 9.0; r[0, 0] = 2.0
    >>> m = neighbour_residual_mean(r, np.ones((3, 3, 1), bool), 3)
    >>> float(m[1, 1, 0]), float(m[0, 1, 0])
    (0.25, 2.2)
    """
    k = int(k)
    if k < 3 or k % 2 == 0:
        raise ValueError(f"neighbour_residual_mean: k must be odd and >= 3, got {k}")
    v = np.asarray(valid, bool)
    r = np.where(v, np.nan_to_num(np.asarray(residual, dtype=float)), 0.0)
    w = v.astype(float)
    total = _box_sum(r, k) - r  # the position itself left out
    count = _box_sum(w, k) - w
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0.5, total / np.where(count > 0.5, count, 1.0), 0.0)


def neighbourhood_mean(profiles: np.ndarray, rows: np.ndarray, scan_shape: tuple[int, int], k: int) -> np.ndarray:
    """Mean of ``profiles`` (N, nq; any units, returned in the same) over the ``rows`` (N,) bool of each position's
    k × k scan neighbourhood (odd k, the position itself included; non-finite bins left out; the position's own
    profile where no row is there), for learning denoising components (:func:`sendmap.science.peaks.lowrank_denoise`'s
    ``learn``; ``peaks.denoise_learn_pool``). :func:`neighbour_residual_mean` is the same box mean without the position.

    >>> import numpy as np
    >>> m = neighbourhood_mean(np.arange(9.0)[:, None], np.ones(9, bool), (3, 3), 3)
    >>> float(m[4, 0]), float(m[0, 0])
    (4.0, 2.0)
    """
    ry, rx = scan_shape
    nq = profiles.shape[1]
    valid = np.isfinite(profiles) & np.asarray(rows, bool)[:, None]
    v = np.where(valid, profiles, 0.0).reshape(ry, rx, nq)
    tot, cnt = _box_sum(v, int(k)), _box_sum(valid.reshape(ry, rx, nq).astype(float), int(k))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(cnt > 0.5, tot / np.where(cnt > 0.5, cnt, 1.0), profiles.reshape(ry, rx, nq))
    return out.reshape(-1, nq)


def residual_added(raw: np.ndarray, denoised: np.ndarray, rows: np.ndarray, spot_bins: np.ndarray | None,
                   scan_shape: tuple[int, int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The denoised profiles (N, nq) of the ``rows`` (N,) bool plus the mean residual (``raw`` − ``denoised``) of the
    other ``rows`` of their k × k neighbourhood (:func:`neighbour_residual_mean`;
    bins holding a position's listed Bragg spots, ``spot_bins``, and non-finite raw bins left out); the other rows
    as they are. Returns (profiles, the number of positions averaged per row (N,)), the latter for
    :func:`residual_pool_error`."""
    ry, rx = scan_shape
    nq = denoised.shape[1]
    valid = np.isfinite(raw) & np.asarray(rows, bool)[:, None]
    if spot_bins is not None:
        valid &= ~np.asarray(spot_bins, bool)
    add = neighbour_residual_mean((np.where(valid, raw, 0.0) - denoised).reshape(ry, rx, nq),
                                  valid.reshape(ry, rx, nq), k).reshape(-1, nq)
    n_pos = _pool_count(np.asarray(rows, bool).reshape(ry, rx), k).reshape(-1)
    return np.where(np.asarray(rows, bool)[:, None], denoised + add, denoised), n_pos


def _pool_count(rows: np.ndarray, k: int) -> np.ndarray:
    """(Ry, Rx, 1) the number of other ``rows`` positions in each position's k × k neighbourhood."""
    r = rows.astype(float)[..., None]
    return _box_sum(r, k) - r


def residual_pool_error(q_err: np.ndarray, plain_err: np.ndarray, n_pool: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``q_err`` (N,) of the denoised fit with the neighbours' mean residual's noise added (:func:`residual_added`):
    the residual is what the projection takes out of a profile, so its noise moves the peak by about as much as
    the plain fit's variance exceeds the denoised fit's, σ_r² = median over the sampled ``rows`` of
    (``plain_err``² − ``q_err``²) (NaN where not sampled); a mean of n independent neighbours' residuals has
    1/n of it: σ = √(q_err² + σ_r²/n). Where no neighbour is averaged (n = 0) or σ_r is unknown: ``q_err``."""
    with np.errstate(invalid="ignore"):
        d = np.asarray(plain_err, float) ** 2 - np.asarray(q_err, float) ** 2
    d = d[np.asarray(rows, bool) & np.isfinite(d)]
    if not d.size:
        return q_err
    v = max(float(np.median(d)), 0.0)
    n = np.asarray(n_pool, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0.5, np.sqrt(np.asarray(q_err, float) ** 2 + v / np.where(n > 0.5, n, 1.0)), q_err)
