"""Spatial context for class maps: neighbouring probe positions tend to share a class.

A Potts Markov random field on the scan grid (8-neighbourhood) turns per-position class likelihoods into
posterior class probabilities: p(c_i | data) ∝ L_i(c_i) · exp(β · Σ_j∈N(i) w_ij [c_j = c_i]) in the mean-field
approximation (Zhang 1992, IEEE Trans. Signal Process. 40, 2570; Geman & Geman 1984), each position's
neighbours entering through their current probabilities. β = 0 leaves the evidence alone; the default
coupling of :func:`potts_mean_field` is chosen where it is used, with its source there.
"""
from __future__ import annotations

import numpy as np

NEIGHBOUR_WEIGHTS = np.array([[1 / np.sqrt(2), 1.0, 1 / np.sqrt(2)],
                              [1.0, 0.0, 1.0],
                              [1 / np.sqrt(2), 1.0, 1 / np.sqrt(2)]])
"""8-neighbourhood, diagonal neighbours weighted by 1/distance (the centre does not vote for itself)."""


def _neighbour_sum(p: np.ndarray) -> np.ndarray:
    """Σ_j w_ij p_j(c) over the 8 neighbours of every position, (Ry, Rx, K); edges see fewer neighbours."""
    ry, rx, _ = p.shape
    pad = np.pad(p, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros_like(p)
    for dy in range(3):
        for dx in range(3):
            w = NEIGHBOUR_WEIGHTS[dy, dx]
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
    ll = np.where(valid[..., None], ll, 0.0)

    def softmax(a):
        a = a - np.max(a, axis=-1, keepdims=True)
        e = np.exp(a)
        return e / e.sum(axis=-1, keepdims=True)

    p = softmax(ll)
    p[~valid] = 0.0
    for _ in range(n_iter):
        new = softmax(ll + beta * _neighbour_sum(p))
        new[~valid] = 0.0
        new = 0.5 * (new + p)
        done = np.max(np.abs(new - p)) < tol
        p = new
        if done:
            break
    p[~valid] = np.nan
    return p


def amorphous_regions(class_map: np.ndarray, amorphous_classes, min_positions: int) -> np.ndarray:
    """Regions of a class map to describe apart (e.g. the two interfaces of a Li grain): the 8-connected groups of
    positions whose class is one of ``amorphous_classes`` (indices), numbered 0, 1, … by decreasing size; -1 for
    every other position and for groups of fewer than ``min_positions``. Crystalline grains (and unassigned
    positions) separate the regions.

    >>> cls = np.array([[1, 1, 0, 2, 2, 2], [1, 3, 0, 2, 2, 2]])
    >>> amorphous_regions(cls, (1, 2, 3), 2).tolist()
    [[1, 1, -1, 0, 0, 0], [1, 1, -1, 0, 0, 0]]
    """
    from scipy.ndimage import label

    mask = np.isin(np.asarray(class_map), list(amorphous_classes))
    lab, n = label(mask, structure=np.ones((3, 3), int))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    order = [i + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_positions]
    out = np.full(lab.shape, -1, dtype=np.int32)
    for new, old in enumerate(order):
        out[lab == old] = new
    return out
