"""Spatial context of Bragg spots: a grain spans many scan positions with one orientation, so its spots repeat at
the neighbouring positions (the same g within their position errors); LiF nanocrystals of SEI Type 2 (a few nm,
an orientation of their own at every position) and the speckle of amorphous scattering (independent between
positions a probe step apart) do not.

Pure functions over the spot lists of the profile stage (``spots/position``, ``spots/values``;
:func:`sendmap.science.indexing.spot_block`). Conventions: Q = 1/d in 1/Å, azimuth φ in rad (the polar kernel's),
g = (Q cos φ, Q sin φ).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .indexing import N_SIGMA, spot_position_sigma

SHARED_MIN_NEIGHBOURS = 3
"""Default of ``classify.definitions.grain_shared_neighbours``: a spot is a grain's (``shared``) when at least 3 of
the 8 scan neighbours list a spot at the same g: a position at a grain's corner has 3 neighbours inside a (convex)
grain, at its edge 5. By chance (speckle, LiF nanocrystals: a neighbour's random spot within 3σ of g) 0.9 % of
the SEI Type 1 and 0.1 % of the electrolyte positions reach it on the development scan ``sendmap synth --scenario
matrix:all --scan-shape 48 64 --seed 501`` (2 × 10⁴ e⁻, speckle M = 10), none on ``matrix:lif-dominant --seed 511``,
and they keep their SRO peak (which the crystal rule asks to be absent, :func:`sendmap.science.classify.
grain_evidence`); SEI Type 2 or Type 1 positions with it are mostly boundary patterns that hold a grain's minority
share (the mixed cells)."""


def dense_spots(position: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(Ry, Rx, K, 4) float32 spot array (NaN-padded, K the most spots of one position, ≥ 1) from the stored lists:
    ``position`` (N,) flat scan index iy·Rx + ix, ``values`` (N, 4) (Q, azimuth, intensity, z), in position order
    (strongest first within one)."""
    position = np.asarray(position, dtype=np.int64)
    values = np.asarray(values, dtype=np.float32).reshape(-1, 4)
    npos = int(shape[0]) * int(shape[1])
    counts = np.bincount(position, minlength=npos)[:npos] if position.size else np.zeros(npos, np.int64)
    k = max(1, int(counts.max()) if counts.size else 1)
    out = np.full((npos, k, 4), np.nan, np.float32)
    if position.size:
        order, p, rank = _dense_index(position)
        out[p, rank] = values[order]
    return out.reshape(int(shape[0]), int(shape[1]), k, 4)


def _dense_index(position: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each stored spot goes in :func:`dense_spots`' layout: (order, flat position, rank within it) of the
    spots taken in ``order`` (by position, stable)."""
    order = np.argsort(position, kind="stable")
    p = position[order]
    return order, p, np.arange(p.size) - np.searchsorted(p, p, side="left")


def _grain_ring(sp: np.ndarray, disk_radius_q: float, bin_width: float, q_rel_err: float, n_sigma: float,
                grain_phases: tuple[str, ...]) -> np.ndarray:
    """(..., K) bool: the spot lies on a ring of ``grain_phases`` within the calibrated Q uncertainty
    (:func:`sendmap.science.indexing.index_spots`)."""
    from .indexing import index_library, index_spots

    lib = index_library()
    ev = index_spots(sp, disk_radius_q, bin_width, q_rel_err, lib, n_sigma)
    gi = [lib.phase_ids.index(p) for p in grain_phases if p in lib.phase_ids]
    return ev["match"][..., gi].any(axis=-1) if gi else np.zeros(sp.shape[:-1], bool)


@numba.njit(parallel=True, cache=True)
def _shared_list_kernel(start, gx, gy, sg, ry, rx, nsig, out):
    """out[a]: the 8 scan neighbours of spot a's position with a spot within nsig combined σ of it, for spots listed
    by position (position p's spots are ``start[p]:start[p + 1]``, p = y·rx + x; ``gx``, ``gy``, ``sg`` (N,) each
    spot's g and 1σ position error); spots with a NaN g count 0.

    A neighbour's spot b is tested (hypot against nsig·√(σa² + σb²)) only where both |Δgx| and |Δgy| are within
    nsig·√(σa² + σmax²), σmax the largest σ of the neighbour's spots: a bound on every b's threshold, and
    hypot ≥ max(|Δgx|, |Δgy|), so the skipped spots are those the test rejects (the same counts, ~3× fewer
    square roots)."""
    npos = ry * rx
    sg_max = np.zeros(npos)
    for p in numba.prange(npos):
        m = 0.0
        for b in range(start[p], start[p + 1]):
            if gx[b] == gx[b] and sg[b] > m:
                m = sg[b]
        sg_max[p] = m
    for y in numba.prange(ry):
        for x in range(rx):
            for a in range(start[y * rx + x], start[y * rx + x + 1]):
                out[a] = 0
                ga = gx[a]
                if ga != ga:
                    continue
                ha = gy[a]
                sa2 = sg[a] ** 2
                n = 0
                for dy in range(-1, 2):
                    for dx in range(-1, 2):
                        if dy == 0 and dx == 0:
                            continue
                        yy = y + dy
                        xx = x + dx
                        if yy < 0 or yy >= ry or xx < 0 or xx >= rx:
                            continue
                        q = yy * rx + xx
                        lim = nsig * math.sqrt(sa2 + sg_max[q] ** 2)
                        for b in range(start[q], start[q + 1]):
                            gb = gx[b]
                            if gb != gb:
                                continue
                            ddx = ga - gb
                            ddy = ha - gy[b]
                            if abs(ddx) > lim or abs(ddy) > lim:
                                continue
                            d = math.hypot(ddx, ddy)
                            if d <= nsig * math.sqrt(sa2 + sg[b] ** 2):
                                n += 1
                                break
                out[a] = n


def shared_neighbours_listed(position: np.ndarray, values: np.ndarray, shape: tuple[int, int], disk_radius_q: float,
                             bin_width: float, n_sigma: float = N_SIGMA) -> np.ndarray:
    """(N,) int8 :func:`shared_neighbours` of the stored spot lists themselves (``position`` (N,) flat scan index in
    ascending order, ``values`` (N, 4)), without their dense (Ry, Rx, K) layout: the same counts, from g and σ
    computed for the N listed spots only (the dense layout pads every position to the most spots of one: 3.6× the
    work on the 128² bench scan).

    >>> v = np.tile(np.array([[0.48, 0.3, 100.0, 30.0]], np.float32), (3, 1))
    >>> shared_neighbours_listed(np.array([0, 1, 2]), v, (1, 3), 0.08, 0.0125).tolist()
    [1, 2, 1]
    """
    position = np.asarray(position, dtype=np.int64)
    values = np.asarray(values, dtype=np.float32).reshape(-1, 4)
    out = np.zeros(position.size, np.int8)
    if position.size == 0:
        return out
    if np.any(position[1:] < position[:-1]):
        raise ValueError("shared_neighbours_listed: positions must be in ascending order")
    npos = int(shape[0]) * int(shape[1])
    start = np.zeros(npos + 1, np.int64)
    np.cumsum(np.bincount(position, minlength=npos)[:npos], out=start[1:])
    # the same float64 numbers as shared_neighbours' dense arrays, element for element
    sp = values.astype(np.float64)
    q, phi = sp[:, 0], sp[:, 1]
    gx = q * np.cos(phi)
    gy = q * np.sin(phi)
    sg = np.ascontiguousarray(spot_position_sigma(sp[:, 3], disk_radius_q, bin_width))
    _shared_list_kernel(start, gx, gy, sg, int(shape[0]), int(shape[1]), float(n_sigma), out)
    return out


def shared_neighbours(spots: np.ndarray, disk_radius_q: float, bin_width: float,
                      n_sigma: float = N_SIGMA) -> np.ndarray:
    """(Ry, Rx, K) int8: for each spot of ``spots`` (Ry, Rx, K, 4), the number of the 8 scan neighbours that list a
    spot at the same g within ``n_sigma`` of their combined position errors
    (:func:`sendmap.science.indexing.spot_position_sigma`); 0 for empty rows.

    >>> s = np.full((1, 3, 1, 4), np.nan, np.float32)
    >>> s[0, :, 0] = [0.48, 0.3, 100.0, 30.0]
    >>> shared_neighbours(s, 0.08, 0.0125)[0, :, 0].tolist()
    [1, 2, 1]
    """
    sp = np.asarray(spots, dtype=np.float32)
    if sp.size == 0:
        return np.zeros(sp.shape[:-1], np.int8)
    ry, rx, k = sp.shape[:3]
    # every row a listed spot of its position (the NaN padding counts 0 and matches nothing)
    position = np.repeat(np.arange(ry * rx), k)
    return shared_neighbours_listed(position, sp.reshape(-1, 4), (ry, rx), disk_radius_q, bin_width,
                                    n_sigma).reshape(ry, rx, k)


def shared_spot_table(position: np.ndarray, values: np.ndarray, shape: tuple[int, int], disk_radius_q: float,
                      bin_width: float, q_rel_err: float, n_sigma: float = N_SIGMA,
                      grain_phases: tuple[str, ...] = ("li", "cu"),
                      grain_ring: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For every stored spot (``spots/position``, ``spots/values`` in position order): how many of its 8 scan
    neighbours list a spot at the same g (:func:`shared_neighbours`, (N,) int8) and whether it lies on a ring of
    ``grain_phases`` within the calibrated Q uncertainty (:func:`sendmap.science.indexing.index_spots`, (N,) bool).
    Neither depends on the classification's settings, so the profile stage stores them once
    (``spots/shared_neighbours``, ``spots/grain_ring``) and the classify stage counts (:func:`shared_counts`).
    ``grain_ring`` (N,) bool: the ring flags where the caller has them already (the profile worker's indexing of
    the same spots with the same errors gives the same flags), returned as they are instead of indexed again."""
    position = np.asarray(position, dtype=np.int64)
    if position.size == 0:
        return np.zeros(0, np.int8), np.zeros(0, bool)
    if grain_ring is not None and not np.any(position[1:] < position[:-1]):  # (the stored order: no dense layout)
        return (shared_neighbours_listed(position, values, shape, disk_radius_q, bin_width, n_sigma),
                np.asarray(grain_ring, dtype=bool).reshape(position.size))
    sp = dense_spots(position, values, shape)
    nb = shared_neighbours(sp, disk_radius_q, bin_width, n_sigma)
    # back to the stored order (dense_spots' layout: position, then rank within it)
    order, p, rank = _dense_index(position)
    iy, ix = np.divmod(p, int(shape[1]))
    nb_out = np.empty(position.size, np.int8)
    nb_out[order] = nb[iy, ix, rank]
    if grain_ring is not None:
        return nb_out, np.asarray(grain_ring, dtype=bool).reshape(position.size)
    on_grain = _grain_ring(sp, disk_radius_q, bin_width, q_rel_err, n_sigma, grain_phases)
    og_out = np.empty(position.size, bool)
    og_out[order] = on_grain[iy, ix, rank]
    return nb_out, og_out


def shared_counts(position: np.ndarray, shared_nb: np.ndarray, grain_ring: np.ndarray, shape: tuple[int, int],
                  min_neighbours: int = SHARED_MIN_NEIGHBOURS) -> dict[str, np.ndarray]:
    """``n_shared`` and ``n_shared_grain`` (Ry, Rx) int16 of :func:`shared_grain_evidence` from the per-spot table
    of :func:`shared_spot_table`."""
    npos = int(shape[0]) * int(shape[1])
    position = np.asarray(position, dtype=np.int64)
    shared = np.asarray(shared_nb) >= min_neighbours
    n_sh = np.bincount(position, weights=shared, minlength=npos)[:npos] if position.size else np.zeros(npos)
    n_sg = (np.bincount(position, weights=shared & np.asarray(grain_ring, bool), minlength=npos)[:npos]
            if position.size else np.zeros(npos))
    return {"n_shared": n_sh.astype(np.int16).reshape(shape), "n_shared_grain": n_sg.astype(np.int16).reshape(shape)}


def shared_grain_evidence(spots: np.ndarray, disk_radius_q: float, bin_width: float, q_rel_err: float,
                          min_neighbours: int = SHARED_MIN_NEIGHBOURS, n_sigma: float = N_SIGMA,
                          grain_phases: tuple[str, ...] = ("li", "cu")) -> dict[str, np.ndarray]:
    """Per position (Ry, Rx): ``n_shared`` the spots that ``min_neighbours`` or more of the 8 neighbours list too
    (:func:`shared_neighbours`), ``n_shared_grain`` those of them on a ring of ``grain_phases`` within the calibrated
    Q uncertainty (:func:`sendmap.science.indexing.index_spots`), and ``shared_grain_z`` the largest significance
    (σ) of such a spot (0 none): a grain's reflection that repeats over the grain, whatever its strength or the
    share of isotropic scattering around it (an off-axis grain's single Friedel pair or systematic row)."""
    sp = np.asarray(spots, dtype=np.float32)
    nb = shared_neighbours(sp, disk_radius_q, bin_width, n_sigma)
    valid = np.isfinite(sp[..., 0])
    shared = valid & (nb >= min_neighbours)
    sg = shared & _grain_ring(sp, disk_radius_q, bin_width, q_rel_err, n_sigma, grain_phases)
    z = np.where(sg, np.nan_to_num(sp[..., 3], nan=0.0), 0.0)
    return {"n_shared": shared.sum(axis=-1).astype(np.int16), "n_shared_grain": sg.sum(axis=-1).astype(np.int16),
            "shared_grain_z": z.max(axis=-1) if z.shape[-1] else np.zeros(valid.shape[:-1])}


def spot_covered_bins(position: np.ndarray, spot_q: np.ndarray, n_positions: int, q: np.ndarray,
                      radius: float) -> np.ndarray:
    """(n_positions, nq) bool: the Q bins (centres ``q``, 1/Å) of each scan position that one of its listed spots
    covers: within ``radius`` (the Bragg disk's radius α/λ in 1/Å, the extent in Q of a reflection's disk) of a
    spot's Q. ``position``: (N,) flat scan index of each spot; ``spot_q``: (N,) its Q (``spots/values[:, 0]``).

    >>> import numpy as np
    >>> spot_covered_bins(np.array([1]), np.array([0.5]), 2, np.arange(0.3, 0.71, 0.1), 0.1).astype(int)
    array([[0, 0, 0, 0, 0],
           [0, 1, 1, 1, 0]])
    """
    q = np.asarray(q, float)
    pos = np.asarray(position, np.int64)
    sq = np.asarray(spot_q, float)
    ok = np.isfinite(sq) & (pos >= 0) & (pos < n_positions)
    pos, sq = pos[ok], sq[ok]
    diff = np.zeros((n_positions, q.size + 1), np.int32)
    eps = 1e-9 * max(1.0, float(radius))  # a bin centre exactly a radius away is covered (the disk's edge)
    np.add.at(diff, (pos, np.searchsorted(q, sq - radius - eps, side="left")), 1)
    np.add.at(diff, (pos, np.searchsorted(q, sq + radius + eps, side="right")), -1)
    return np.cumsum(diff[:, :-1], axis=1) > 0
