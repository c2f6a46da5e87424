"""A grain's faint disks at a layer edge, masked where its neighbour says they are (issue 18, session 22).

Across an inclined layer boundary the beam crosses both layers (``--mix-width``), so an amorphous position one or two
scan steps from a Li/Cu grain holds a share of that grain, and with it the grain's Bragg disks at the grain's own
orientation: the same g as the disks listed at the grain positions beside it. Too faint to be listed at the edge
position itself (mix fractions 0.02–0.17), the Li (110) disk (0.403 1/Å, radius ≈ 0.08 1/Å) still pulls the
azimuthal mean's SRO maximum up (matrix:mixed at 5 × 10³ e⁻: SEI Type 1 +0.004 1/Å, README "A grain's faint disks
beside it").

:func:`neighbour_grain_spots` lists, for each non-crystalline position within ``reach`` scan steps of a grain-like
position, the distinct reflections (Q, azimuth) of the Li/Cu-ring spots listed at those grain positions; the
profile is then rebuilt from the position's own polar sums with those disks and their Friedel mates masked
(:func:`sendmap.science.spot_mask.masked_profile`). No test decides whether a disk is there: the masked cells are
chosen from the neighbours' spots, without looking at this frame's counts, so for an isotropic ring (with or without
speckle) the masked mean is unbiased wherever no disk is, and only its error grows (the kept area's share); where a
disk is, its counts are gone. (A per-position presence test would select on the frame's own noise: the masked
profile of session 15 masked the frame's brightest cells, and biased speckled patterns low.)

Whether to mask at all is decided once per scan (:func:`disks_at_edges`): without inclined layer boundaries no edge
position holds a grain minority and the mask only adds noise (session 22, second round: lif-range 5 × 10³, seed
1009, Type 2 class mean −0.0028 → −0.0030 from 226 refitted positions none of which had a minority). The test pools
the positions one step from a grain, each one's excess under the mask (:func:`disk_excess`) against that under the
same disks turned by 30° (:func:`control_spots`), so one frame's noise does not choose its own mask.
"""
from __future__ import annotations

import numpy as np

from .boundaries import SAME_G_TOLERANCE


def neighbour_grain_spots(position: np.ndarray, values: np.ndarray, grain_ring: np.ndarray, crystal: np.ndarray,
                          reach: int, disk_radius_q: float, q_max: float) -> dict[int, np.ndarray]:
    """{flat position: (K, 2) float64 [Q 1/Å, azimuth rad]}: for each non-crystalline position within ``reach`` scan
    steps (Chebyshev) of a grain-like position (``crystal`` (Ry, Rx) bool), the distinct reflections of the Li/Cu-ring
    spots (``grain_ring`` (N,) bool) listed at those grain positions (``position`` (N,) flat scan index, ``values``
    (N, ≥ 2) Q, azimuth as ``spots/values``) whose disk reaches below ``q_max`` (Q − ``disk_radius_q`` < q_max: the
    top of the peak fit range). Spots whose g = Q (cos φ, sin φ) lie within :data:`sendmap.science.boundaries.
    SAME_G_TOLERANCE` disk radii of one already kept are the same reflection (kept once).

    >>> c = np.zeros((1, 4), bool); c[0, 0] = True
    >>> v = np.array([[0.403, 0.5], [0.404, 0.51], [0.70, 1.0]])
    >>> out = neighbour_grain_spots(np.array([0, 0, 0]), v, np.array([True, True, True]), c, 2, 0.08, 0.47)
    >>> sorted(out), out[1].round(3).tolist()
    ([1, 2], [[0.403, 0.5]])
    """
    crystal = np.asarray(crystal, bool)
    if reach < 1 or not crystal.any():
        return {}
    ry, rx = crystal.shape
    pos = np.asarray(position, np.int64)
    v = np.asarray(values, dtype=np.float64)
    keep = np.asarray(grain_ring, bool) & np.isfinite(v[:, 0]) & (pos >= 0) & (pos < ry * rx)
    keep &= crystal.ravel()[np.clip(pos, 0, ry * rx - 1)]
    keep &= v[:, 0] - float(disk_radius_q) < float(q_max)
    by_pos: dict[int, list[np.ndarray]] = {}
    for p_, row in zip(pos[keep].tolist(), v[keep, :2]):
        by_pos.setdefault(p_, []).append(row)
    tol2 = (SAME_G_TOLERANCE * float(disk_radius_q)) ** 2
    out: dict[int, np.ndarray] = {}
    for iy, ix in zip(*np.nonzero(~crystal)):
        rows = [r for jy in range(max(0, iy - reach), min(ry, iy + reach + 1))
                for jx in range(max(0, ix - reach), min(rx, ix + reach + 1)) for r in by_pos.get(jy * rx + jx, ())]
        if not rows:
            continue
        kept: list[np.ndarray] = []
        for r in rows:
            gx, gy = r[0] * np.cos(r[1]), r[0] * np.sin(r[1])
            if all((gx - k[0] * np.cos(k[1])) ** 2 + (gy - k[0] * np.sin(k[1])) ** 2 >= tol2 for k in kept):
                kept.append(r)
        out[int(iy * rx + ix)] = np.ascontiguousarray(np.array(kept, dtype=np.float64).reshape(-1, 2))
    return out


def masked_edge_profiles(s: np.ndarray, w: np.ndarray, w2: np.ndarray, mean: np.ndarray, sem: np.ndarray,
                         q_c: np.ndarray, spot_lists: list, disk_radius_q: float, pixel_margin_q: float):
    """(B, nq) mean and sem of B frames over the polar cells that their neighbour grain's disks (``spot_lists``: one
    (K, ≥ 2) [Q 1/Å, azimuth rad] array per frame, :func:`neighbour_grain_spots`) and the disks' Friedel mates do not
    reach (:func:`sendmap.science.spot_mask.masked_profile`). s, w: (B, nq, n_phi) polar sums and pixel areas; w2
    (B, nq) Σw² per bin; mean, sem (B, nq) the frames' azimuthal mean and its error (counts per pixel)."""
    from .spot_mask import masked_profile

    nb, nq = mean.shape
    out_m, out_s = np.empty((nb, nq)), np.empty((nb, nq))
    for f in range(nb):
        sp = np.ascontiguousarray(np.asarray(spot_lists[f], dtype=np.float64).reshape(-1, 2))
        masked_profile(np.ascontiguousarray(s[f]), np.ascontiguousarray(w[f]), np.ascontiguousarray(w2[f], dtype=np.float64),
                       np.ascontiguousarray(mean[f]), np.ascontiguousarray(sem[f]), np.asarray(q_c, dtype=np.float64),
                       sp, float(disk_radius_q), float(pixel_margin_q), out_m[f], out_s[f], True)
    return out_m, out_s


def masked_frame_profiles(frames: np.ndarray, centres: np.ndarray, mask: np.ndarray, tables, disk_radius_q: float,
                          spot_lists: list, pixel_margin_q: float, speckle_factor=None):
    """(B, nq) mean and sem (counts per pixel) of B frames (B, qy, qx) about their ``centres`` (B, 2) px, over the
    polar cells their neighbour grain's disks (``spot_lists``, as in :func:`masked_edge_profiles`) do not reach:
    the profile kernel's polar sums (:func:`sendmap.science.polar_tables.profile_block` with ``tables``, a
    ``PolarTables``, and the detector ``mask``) masked by :func:`masked_edge_profiles`."""
    from .polar_tables import profile_block

    out = profile_block(frames, centres, mask, tables, disk_radius_q, keep_sums=True, speckle_factor=speckle_factor)
    iyc, ixc, tix = tables.split_centres(centres)
    uix, _, w2_u, release = tables.geometry(mask, iyc, ixc, tix)
    try:
        w2 = np.array(w2_u[uix])
    finally:
        release()
    return masked_edge_profiles(out["s"], out["w"], w2, out["mean"], out["sem"], tables.geom.q_centres, spot_lists,
                                disk_radius_q, pixel_margin_q)


#: one-sided 1 % false-alarm rate of a standard normal statistic (the sign test's, below): 2.33
EDGE_DISK_Z = 2.326


def disk_excess(full: np.ndarray, full_sem: np.ndarray, kept: np.ndarray, kept_sem: np.ndarray) -> np.ndarray:
    """(M,) the excess of each profile's masked cells over the rest, in units of its counting error: Σ_b (full −
    kept) / √Σ_b (kept_sem² − full_sem²) over the bins where the mask took cells (kept_sem > full_sem). ``full``,
    ``kept`` (M, nb) the azimuthal mean over all cells and over the unmasked ones (any common scale, e.g. I·Q^n),
    ``*_sem`` their errors. Without a disk under the mask its expectation is 0 (an isotropic ring's cells are
    exchangeable); a disk under the mask makes it positive. NaN where the mask took no cells.

    >>> disk_excess(np.array([[1.0, 2.0], [1.0, 1.0]]), np.full((2, 2), 0.1), np.array([[1.0, 1.0], [1.0, 1.1]]),
    ...             np.array([[0.1, 0.5], [0.1, 0.1]])).round(3).tolist()
    [2.041, nan]
    """
    d = np.asarray(full, float) - np.asarray(kept, float)
    v = np.asarray(kept_sem, float) ** 2 - np.asarray(full_sem, float) ** 2
    took = np.isfinite(d) & np.isfinite(v) & (v > 0)
    var = np.where(took, v, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, np.where(took, d, 0.0).sum(axis=1) / np.sqrt(var), np.nan)


#: rad: the control mask's turn about the pattern centre: half the 60° spacing of a six-fold disk set (Li [111]'s
#: (110) disks), so that the control lies between the listed disks (radius 0.08 1/Å at 0.40 1/Å: ± 11.5°)
CONTROL_TURN_RAD = np.pi / 6


def control_spots(spots: np.ndarray, turn: float = CONTROL_TURN_RAD) -> np.ndarray:
    """(K, 2) the listed disks [Q 1/Å, azimuth rad] turned by ``turn`` about the centre: a mask of the same cells' Q
    and number where the grain has no disk, whose :func:`disk_excess` is the null's (the masked cells of a speckled
    ring have a right-skewed mean, so an excess is compared with its control, not with 0).

    >>> control_spots(np.array([[0.4, 0.0]])).round(4).tolist()
    [[0.4, 0.5236]]
    """
    sp = np.array(spots, dtype=np.float64).reshape(-1, 2)
    sp[:, 1] = np.mod(sp[:, 1] + turn + np.pi, 2 * np.pi) - np.pi
    return sp


def one_step_from(crystal: np.ndarray) -> np.ndarray:
    """(Ry, Rx) bool: the non-crystalline positions one scan step (Chebyshev) from a ``crystal`` (Ry, Rx) one.

    >>> one_step_from(np.array([[True, False, False]])).tolist()
    [[False, True, False]]
    """
    c = np.asarray(crystal, bool)
    p = np.pad(c, 1)
    ry, rx = c.shape
    near = np.zeros_like(c)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            near |= p[dy:dy + ry, dx:dx + rx]
    return near & ~c


def disks_at_edges(excess: np.ndarray, z_crit: float = EDGE_DISK_Z) -> tuple[bool, float]:
    """(the neighbouring grains' disks show at the layer edges of this scan, the sign test's z): a one-sided sign
    test over the edge positions that their ``excess`` (:func:`disk_excess` at the listed disks minus that at their
    :func:`control_spots`) scatters about 0, i.e. no position holds a share of its neighbouring grain (the layer
    boundaries are not inclined along the beam): z = (#(excess > 0) − N/2) / √(N/4) > ``z_crit`` (1 % false
    alarms). The test pools the scan's edge positions, so the choice to mask does not depend on one frame's noise,
    and a sign test is robust to a few positions whose own spots (e.g. LiF (111) at 0.43 1/Å) sit under a mask.

    >>> disks_at_edges(np.r_[np.full(60, 1.0), np.full(40, -1.0)])
    (False, 2.0)
    >>> disks_at_edges(np.r_[np.full(70, 1.0), np.full(30, -1.0), np.nan])[0]
    True
    """
    e = np.asarray(excess, float)
    e = e[np.isfinite(e)]
    n = e.size
    if n == 0:
        return False, float("nan")
    z = float((np.count_nonzero(e > 0) - n / 2) / np.sqrt(n / 4))
    return bool(z > z_crit), z
