"""Per-position classification features from the profile stage's arrays.

All functions take arrays whose last axis is Q (bin centres ``q`` in 1/Å) and return arrays over the
leading (position) axes; none loops over positions.

* anisotropy in Q bands: the largest Bragg-disk spot significance (σ, ``features/spot_z``) inside each
  band, for fixed bands or for the reflections of library phases (Li, Li2O, LiF, Cu, ...);
* Bragg fraction: the share of the scattered intensity that sits in azimuthal sectors holding Bragg spots
  (mean − robust mean, weighted by the annulus' size), ≈ 0.6–0.8 for a grain in a zone axis, a few % for
  nanocrystals in an amorphous film, 0 for an isotropic pattern;
* phase naming: which library phase's reflections the significant spots of a pattern fall on, scored
  as the share of the spot significance it explains minus the share its rings would catch by chance.
"""
from __future__ import annotations

import numpy as np

SEI_PHASES = ("li", "li2o", "lif", "lih", "li2co3", "lioh", "li3n", "cu", "cu2o", "li3po4_beta", "li3po4_gamma")
"""Library phases that may appear at a Li-metal / SEI / Cu interface (SCIENCE.md), in display order."""

FEATURE_PHASES = ("lif", "li", "li2o", "cu")
"""Phases whose reflection bands are stored as anisotropy features (the issue's LiF, Li, Li2O, Cu)."""


def zero_nan(a: np.ndarray) -> np.ndarray:
    """``a`` with NaN set to 0 (``np.nan_to_num`` without its ±inf passes: half the time on a scan's spot_z).

    >>> zero_nan(np.array([1.0, np.nan])).tolist()
    [1.0, 0.0]
    """
    a = np.asarray(a)
    return np.where(np.isnan(a), a.dtype.type(0), a)


def phase_lines(phase_ids, q_range: tuple[float, float], min_intensity: float = 10.0) -> dict[str, np.ndarray]:
    """Ring positions Q (1/Å) of each library phase inside ``q_range`` with intensity ≥ ``min_intensity``
    (of 100 for the phase's strongest ring), computed by :mod:`sendmap.science.phases`."""
    from .phases import get_phase

    out = {}
    for pid in phase_ids:
        refl = get_phase(pid).reflections(q_range[1], min_intensity=min_intensity)
        out[pid] = np.array([r.q_inv_angstrom for r in refl if r.q_inv_angstrom >= q_range[0]])
    return out


def band_anisotropy(q: np.ndarray, spot_z: np.ndarray, centres, half_width: float) -> np.ndarray:
    """Largest spot significance (σ) within ± ``half_width`` (1/Å) of any of ``centres`` (1/Å).

    spot_z: (..., nq). Returns (...,); 0 where no bin falls in a band.

    >>> import numpy as np
    >>> q = np.arange(10) * 0.1
    >>> band_anisotropy(q, np.arange(10.0)[None], [0.3], 0.05)
    array([3.])
    """
    sel = np.zeros(q.shape, bool)
    for c in np.atleast_1d(centres):
        sel |= np.abs(q - c) <= half_width
    if not sel.any():
        return np.zeros(spot_z.shape[:-1])
    return zero_nan(spot_z[..., sel]).max(axis=-1)  # the band's bins only (a few of ~180)


def phase_anisotropy(q: np.ndarray, spot_z: np.ndarray, lines: dict[str, np.ndarray], half_width: float) -> np.ndarray:
    """:func:`band_anisotropy` for every phase of ``lines`` (:func:`phase_lines`): (..., n_phases)."""
    return np.stack([band_anisotropy(q, spot_z, v, half_width) for v in lines.values()], axis=-1)


def bragg_fraction(q: np.ndarray, mean: np.ndarray, robust: np.ndarray, q_range: tuple[float, float]) -> np.ndarray:
    """Share of the scattered intensity in sectors holding Bragg spots, over ``q_range`` (1/Å).

    mean, robust: (..., nq) azimuthal mean and spot-clipped robust mean (counts per pixel). Each bin is
    weighted by Q (an annulus' area), so the result is (counts in spots) / (all counts) in the range.
    Dimensionless, in [0, 1]; NaN where there are no counts. Bragg disks that the clipping does not find
    (faint spots at low dose) are not counted, so it is a lower bound.
    """
    sel = (q >= q_range[0]) & (q <= q_range[1])
    w = q[sel]
    m = np.nan_to_num(mean[..., sel])
    r = np.nan_to_num(robust[..., sel])
    tot = np.sum(m * w, axis=-1)
    spots = np.sum(np.clip(m - r, 0, None) * w, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, spots / tot, np.nan)


def spot_maxima(spot_z: np.ndarray, z_min: float) -> np.ndarray:
    """(..., nq) bool: bins where the spot significance is a local maximum along Q and ≥ ``z_min`` σ (a spot
    is a disk: its significance peaks at the disk's own Q and falls off over ± one disk radius).

    >>> spot_maxima(np.array([0.0, 7.0, 3.0, 9.0, 9.0, 2.0]), 5.0).tolist()
    [False, True, False, False, True, False]
    """
    return _local_maxima(zero_nan(spot_z), z_min)


def _local_maxima(z: np.ndarray, z_min: float) -> np.ndarray:
    """:func:`spot_maxima` of a significance without NaN."""
    m = z >= z_min
    m[..., 1:] &= z[..., 1:] >= z[..., :-1]  # ≥ the bin before (a plateau's last bin is its maximum)
    m[..., :-1] &= z[..., :-1] > z[..., 1:]  # > the bin after
    m[..., -1] &= z[..., -1] > -np.inf
    return m


def spot_list(q: np.ndarray, spot_z: np.ndarray, z_min: float):
    """Every spot of :func:`spot_maxima` as lists: (position index into the flattened leading axes, Q bin,
    Q (1/Å) refined by a parabola through the significance at the maximum and its two neighbours, significance
    σ), in position order.

    >>> pos, b, qs, z = spot_list(np.arange(5) * 0.1, np.array([[0.0, 6.0, 8.0, 6.0, 0.0]]), 5.0)
    >>> pos.tolist(), b.tolist(), qs.round(6).tolist(), z.tolist()
    ([0], [2], [0.2], [8.0])
    """
    z = zero_nan(spot_z).reshape(-1, spot_z.shape[-1])
    pos, b = np.nonzero(_local_maxima(z, z_min))
    zc = z[pos, b]
    zl = z[pos, np.maximum(b - 1, 0)]  # the edge bins are their own neighbour
    zr = z[pos, np.minimum(b + 1, z.shape[-1] - 1)]
    curv = zl - 2 * zc + zr
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = np.where(curv < 0, 0.5 * (zl - zr) / np.where(curv < 0, curv, -1.0), 0.0)
    return pos, b, q[b] + np.clip(delta, -0.5, 0.5) * float(q[1] - q[0]), zc


def name_phases(q: np.ndarray, spot_z: np.ndarray, lines: dict[str, np.ndarray], z_min: float, tolerance: float,
                q_range: tuple[float, float], min_score: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which phase's reflections the significant spots of each pattern fall on.

    Spots: local maxima of ``spot_z`` along Q above ``z_min`` σ inside ``q_range``, at their refined Q
    (:func:`spot_list`). For each phase, the explained share = Σ z of spots within ``tolerance`` (1/Å) of one
    of its rings / Σ z of all spots, minus the share of ``q_range`` its rings cover (what spots at random Q
    would hit by chance: a phase with dense rings is not favoured). Returns (best phase index into
    ``lines`` or −1 where there is no spot or the best excess < ``min_score``, its excess score, the
    runner-up's score), each (...,).

    Phases whose rings lie within the tolerance of each other (LiF and LiH differ by 1.3 %, less than
    a 0.0125 1/Å bin at 0.5 1/Å) cannot be told apart this way; a runner-up score close to the best says so.
    """
    # the spots only (a few per pattern), not every bin × every ring: memory and time scale with the spots
    pos, b, q_spot, z_spot = spot_list(q, spot_z, z_min)
    inside = (q_spot >= q_range[0]) & (q_spot <= q_range[1])
    pos, b, q_spot, z_spot = pos[inside], b[inside], q_spot[inside], z_spot[inside]
    z = np.zeros(spot_z.shape, dtype=z_spot.dtype)  # (summed as an array: the same sums, bit for bit, as before)
    z.reshape(-1, z.shape[-1])[pos, b] = z_spot
    total = z.sum(axis=-1)
    fine = np.linspace(q_range[0], q_range[1], 2001)
    scores = []
    for v in lines.values():
        v = np.sort(np.asarray(v, dtype=float))
        if v.size == 0:
            scores.append(np.zeros(total.shape))
            continue
        j = np.searchsorted(v, q_spot)
        dist = np.minimum(np.abs(q_spot - v[np.clip(j - 1, 0, v.size - 1)]), np.abs(q_spot - v[np.clip(j, 0, v.size - 1)]))
        explained = np.bincount(pos, weights=z_spot * (dist <= tolerance), minlength=total.size).reshape(total.shape)
        chance = float(np.mean(np.min(np.abs(fine[:, None] - v[None, :]), axis=1) <= tolerance))
        with np.errstate(invalid="ignore", divide="ignore"):
            scores.append(np.where(total > 0, explained / np.where(total > 0, total, 1.0), 0.0) - chance)
    s = np.stack(scores, axis=-1)
    order = np.argsort(-s, axis=-1, kind="stable")
    best = np.take_along_axis(s, order[..., :1], axis=-1)[..., 0]
    second = np.take_along_axis(s, order[..., 1:2], axis=-1)[..., 0] if s.shape[-1] > 1 else np.zeros_like(best)
    idx = np.where((total > 0) & (best >= min_score), order[..., 0], -1)
    return idx.astype(np.int8), best, second
