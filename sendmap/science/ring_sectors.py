"""The azimuthal sectors of a polar grid near a spot: one walk along the ring shared by the spot list's isotropic
level (:mod:`sendmap.science.indexing`) and the spot-masked profile (:mod:`sendmap.science.spot_mask`).

A polar grid has n_phi sectors per Q bin; sector k's centre lies at azimuth −π + (k + ½)·2π/n_phi (rad). Along a
ring of radius q the distance from a spot at (px, py) grows with the azimuth away from the spot's, so the sectors
within a radius of the spot are its own sector, the two beside it (the centres within ±1.5 sectors: the nearest of
them may be either) and, on either side, the next ones up to the first out of reach (each farther than the last by
≥ 2·q·q_spot·(1 − cos sector), far beyond rounding): :func:`mark_sectors_within` tests only those, with the same
Cartesian test as on every sector.
"""
from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def wrap(x, n):
    """x % n for n > 0 (the Python modulo) for an x within a few n of [0, n): a compare and an add instead of an
    integer division (~30 cycles), in the loops over sectors."""
    while x < 0:
        x += n
    while x >= n:
        x -= n
    return x


@numba.njit(cache=True)
def sector_directions(nphi):
    """cos and sin (n_phi,) of each sector centre's azimuth, −π + (k + ½)·2π/n_phi."""
    sector = 2.0 * math.pi / nphi
    cosk = np.empty(nphi)
    sink = np.empty(nphi)
    for k in range(nphi):
        cosk[k] = math.cos(-math.pi + (k + 0.5) * sector)
        sink[k] = math.sin(-math.pi + (k + 0.5) * sector)
    return cosk, sink


@numba.njit(cache=True, inline="always")
def sector_of(x, y, nphi):
    """The sector (0 … n_phi − 1) holding the azimuth of the point (x, y)."""
    sector = 2.0 * math.pi / nphi
    return min(nphi - 1, max(0, int(math.floor((math.atan2(y, x) + math.pi) / sector))))


@numba.njit(cache=True, inline="always")
def mark_sectors_within(q, px, py, k0, r2, inclusive, cosk, sink, covered):
    """Set ``covered[k]`` for the sectors of the ring of radius q (1/Å) whose centres lie within √r2 of the point
    (px, py) (``inclusive``: distance² ≤ r2, else < r2), walking both ways from ``k0``, the point's own sector (see
    the module docstring). Returns how many sectors were newly covered."""
    nphi = cosk.size
    n_new = 0
    for side in range(2):
        step = 1 if side == 0 else -1
        k = k0 if side == 0 else k0 - 1
        for m in range(nphi):
            kk = wrap(k, nphi)
            d2 = (px - q * cosk[kk]) ** 2 + (py - q * sink[kk]) ** 2
            hit = d2 <= r2 if inclusive else d2 < r2
            if hit:
                if not covered[kk]:
                    covered[kk] = True
                    n_new += 1
            elif m >= 1:
                break  # (m = 0: the sector beside the point's may be out of reach and the next one not)
            k += step
    return n_new
