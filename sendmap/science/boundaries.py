"""Mixed boundaries (issue 18): where the beam crosses an inclined layer boundary, a pattern holds two phases and
its truth is the majority one. ``classify.definitions.grain_majority_size`` (7 by default since session 18)
finds grain-like positions where the grain is the minority of the material along the beam from the intensity of each of the position's grain reflections against the same reflection (the same g) deeper in the grain
(:func:`same_reflection_share`); :func:`grain_disk_beside_grain` finds amorphous positions beside a grain whose SRO
maximum a grain reflection in the fit range pulls (session 18).
"""
from __future__ import annotations

import numba
import numpy as np


SAME_G_TOLERANCE = 0.5
"""Two listed spots are the same reflection of one grain where their g (Q cos φ, Q sin φ) lie within this share of
the probe-disk radius in Q: a grain's distinct reflections are a reciprocal-lattice spacing apart (≥ 0.2 1/Å for Li
and Cu, 2.5 disk radii at 2 mrad and 200 kV), while the same reflection at neighbouring positions differs only by
the spot position errors and the descan left after the centres (a few hundredths of a disk radius)."""

INTERIOR_QUANTILE = 0.75
"""Quantile of the same reflection's intensities within the window that stands for the grain's interior: the upper
quartile, not the maximum: the maximum of noisy intensities is biased high (development seeds 918, 919, 924, 925:
the maximum demoted 17 more grain positions at 5 × 10³ e⁻ than the upper quartile, session 15)."""


def same_reflection_share(position: np.ndarray, values: np.ndarray, on_grain_ring: np.ndarray,
                          shape: tuple[int, int], size: int, disk_radius_q: float,
                          where: np.ndarray | None = None) -> np.ndarray:
    """(Ry, Rx) the grain's share of the material along the beam at each position with listed spots on Li/Cu rings,
    relative to the grain's interior: the median over the position's grain-ring spots of the spot's intensity over
    the upper quartile (:data:`INTERIOR_QUANTILE`) of the intensities of the same reflection (g within
    :data:`SAME_G_TOLERANCE` disk radii) at the positions of the ``size`` × ``size`` window around it (itself
    included); NaN where the position lists no grain-ring spot, or lies outside ``where`` ((Ry, Rx) bool: the
    positions whose share is wanted; None: all. The window's spots count wherever they are).

    Kinematic intensities of the layers a beam crosses add up, so across an inclined boundary a reflection's
    intensity falls from its value in the grain's interior in proportion to the grain's share of the path. Comparing
    the same reflection (one grain, one orientation and excitation) keeps a neighbouring, more strongly excited grain
    out of the reference: its reflections lie at other g. (Sessions 15-17 compared the summed intensity of all ring
    spots with that of every grain-like position in the window, and demoted pure grains beside a brighter grain.)

    position: (N,) flat scan index of each listed spot (``spots/position``); values: (N, ≥ 3) Q (1/Å), azimuth
    (rad), intensity (counts) (``spots/values``); on_grain_ring: (N,) bool (``spots/grain_ring``).

    >>> pos = np.array([0, 1, 2, 2]); v = np.array([[0.4, 0.0, 100.0], [0.4, 0.0, 90.0], [0.4, 0.0, 30.0],
    ...                                            [0.4, 1.0, 50.0]])
    >>> same_reflection_share(pos, v, np.array([True, True, True, True]), (1, 3), 5, 0.08).round(2).tolist()
    [[1.05, 0.95, 0.66]]
    """
    ry, rx = int(shape[0]), int(shape[1])
    pos = np.asarray(position, dtype=np.int64)
    on = np.asarray(on_grain_ring, bool)
    v = np.asarray(values, dtype=np.float64)
    sel = on & (pos >= 0) & (pos < ry * rx)
    p, v = pos[sel], v[sel]
    order = np.argsort(p, kind="stable")
    p, v = p[order], v[order]
    gx = np.ascontiguousarray(v[:, 0] * np.cos(v[:, 1]))
    gy = np.ascontiguousarray(v[:, 0] * np.sin(v[:, 1]))
    inten = np.ascontiguousarray(v[:, 2])
    start = np.searchsorted(p, np.arange(ry * rx + 1))
    want = np.ones((ry, rx), np.bool_) if where is None else np.ascontiguousarray(np.asarray(where, bool).reshape(ry, rx))
    return _same_reflection_kernel(gx, gy, inten, start, ry, rx, max(1, int(size)) // 2,
                                   SAME_G_TOLERANCE * float(disk_radius_q), INTERIOR_QUANTILE, want)


@numba.njit(cache=True, nogil=True)
def _same_reflection_kernel(gx, gy, inten, start, ry, rx, r, tol, quantile, want):  # pragma: no cover - numba
    """:func:`same_reflection_share` over the spots sorted by position (``start``: first spot of each position), at
    the positions ``want`` (bool (Ry, Rx))."""
    out = np.full((ry, rx), np.nan)
    buf = np.empty((2 * r + 1) ** 2 * 64)
    for y in range(ry):
        for x in range(rx):
            p = y * rx + x
            n_own = start[p + 1] - start[p]
            if n_own == 0 or not want[y, x]:
                continue
            ratios = np.empty(n_own)
            for a in range(n_own):
                i = start[p] + a
                m = 0
                for yy in range(max(0, y - r), min(ry, y + r + 1)):
                    for xx in range(max(0, x - r), min(rx, x + r + 1)):
                        q_ = yy * rx + xx
                        for j in range(start[q_], start[q_ + 1]):
                            if (gx[j] - gx[i]) ** 2 + (gy[j] - gy[i]) ** 2 < tol * tol and m < buf.size:
                                buf[m] = inten[j]
                                m += 1
                ref = np.quantile(buf[:m], quantile)
                ratios[a] = inten[i] / ref if ref > 0 else np.nan
            out[y, x] = np.nanmedian(ratios)
    return out


GRAIN_LINE_FALSE_ALARM = 0.01
"""Share of amorphous positions away from grains whose spot significance at a grain reflection in their fit range
exceeds the chance level of :func:`grain_disk_beside_grain`: its definition (the 99th percentile), the rate
``classify.definitions.lif_spot_z`` is defined by for the LiF bands."""

MIN_CHANCE_POSITIONS = 100
"""Fewest reference positions (amorphous, with a peak, no crystal neighbour) from which the chance level is
measured: the 99th percentile of 100 values is their largest but one; with fewer the rule is off."""


def grain_line_z(q: np.ndarray, spot_z: np.ndarray, peak_q: np.ndarray, lines, fit_half_width,
                 disk_radius_q: float) -> np.ndarray:
    """(Ry, Rx, n_lines) largest spot significance (σ, ``spot_z`` (Ry, Rx, nq) on the bins ``q``) within one bin of
    each grain reflection (``lines``, 1/Å: e.g. Li (110) 0.403, Cu (111) 0.479) whose disk (radius ``disk_radius_q``,
    1/Å) reaches into the position's fit range [peak_q − left, peak_q + right] (``fit_half_width`` = (left, right),
    1/Å); NaN where it does not or there is no peak.

    >>> q = np.arange(0.2, 0.5, 0.01); z = np.zeros((1, 2, q.size)); z[..., 20] = 6.0   # q[20] = 0.40
    >>> grain_line_z(q, z, np.array([[0.33, 0.15]]), [0.403], (0.14, 0.14), 0.08)[..., 0].tolist()  # 0.323 > 0.29
    [[6.0, nan]]
    """
    q = np.asarray(q, dtype=float)
    z = np.asarray(spot_z)  # (NaN → 0 on the few bins near each line only: the whole array is ~60 MB on 86 400 positions)
    pk = np.asarray(peak_q, dtype=float)
    fin = np.isfinite(pk)
    p0 = np.where(fin, pk, 0.0)
    bw = float(q[1] - q[0]) if q.size > 1 else 0.0
    out = np.full(pk.shape + (len(lines),), np.nan)
    for k, line in enumerate(lines):
        near = np.abs(q - float(line)) <= bw
        if not near.any():
            continue
        inside = fin & (float(line) + disk_radius_q >= p0 - fit_half_width[0]) \
            & (float(line) - disk_radius_q <= p0 + fit_half_width[1])
        zk = np.nan_to_num(np.asarray(z[..., near], dtype=float), nan=0.0).max(axis=-1)
        out[..., k] = np.where(inside, zk, np.nan)
    return out


def grain_disk_beside_grain(line_z: np.ndarray, crystal: np.ndarray, amorphous: np.ndarray) -> np.ndarray:
    """(Ry, Rx) bool: amorphous positions with an SRO peak (``amorphous``) that have a crystal among their 8 scan
    neighbours (``crystal``: the class map's) and a spot at a grain reflection in their fit range (``line_z``,
    :func:`grain_line_z`: (Ry, Rx, n_lines), or (Ry, Rx) for one line) above the scan's own chance level for that
    reflection: the 1 − :data:`GRAIN_LINE_FALSE_ALARM` / n_lines quantile of its significance over the amorphous
    positions with no crystal neighbour (speckle and LiF included; a reflection with fewer such positions than
    :data:`MIN_CHANCE_POSITIONS` is not tested).

    Across an inclined grain boundary the beam crosses both phases (issue 18's mixed patterns), so an amorphous
    position beside a grain holds the grain as a minority: its disks, too faint or too few for the crystal rule, are
    in the fit range (Li (110) at 0.403 1/Å lies 0.07 above SEI Type 1's 0.33; Cu (111)'s disk at 0.479 reaches down
    to 0.40) and pull the SRO maximum towards them.
    Such a peak is not the amorphous phase's: its class stands (the class probabilities' neighbours), the peak is not
    reported (``maps/peak_status`` ``bragg_disk_in_fit_range``). Measured on development seeds 1418/1419 (``sendmap
    synth --scenario matrix:mixed``, 48 × 64, 128², 2 × 10⁴ / 5 × 10³ e⁻): 38 / 56 positions, 95–100 % of them with a
    grain minority, whose peaks lay +0.013 / +0.014 1/Å above the truth; SEI Type 1's class mean +0.0012 → −0.0012
    and +0.0035 → +0.0003 1/Å.

    >>> lz = np.zeros((12, 12)); lz[0, 1] = 9.0; lz[5, 5] = 9.0
    >>> cr = np.zeros((12, 12), bool); cr[0, 0] = True
    >>> grain_disk_beside_grain(lz, cr, ~cr).nonzero()          # (5, 5) is away from the grain: chance, not a disk
    (array([0]), array([1]))
    """
    crystal = np.asarray(crystal, bool)
    amorphous = np.asarray(amorphous, bool) & ~crystal
    pad = np.pad(crystal, 1)
    ry, rx = crystal.shape
    beside = np.zeros_like(crystal)
    for dy in range(3):
        for dx in range(3):
            if dy != 1 or dx != 1:
                beside |= pad[dy:dy + ry, dx:dx + rx]
    z = np.asarray(line_z, dtype=float)
    z = z[..., None] if z.ndim == 2 else z
    ref = amorphous & ~beside
    out = np.zeros_like(crystal)
    tested = [k for k in range(z.shape[-1]) if (ref & np.isfinite(z[..., k])).sum() >= MIN_CHANCE_POSITIONS]
    alpha = GRAIN_LINE_FALSE_ALARM / max(len(tested), 1)  # (Bonferroni: the 1 % over the lines tested together)
    for k in tested:
        zk = z[..., k]
        r = ref & np.isfinite(zk)
        chance = float(np.percentile(zk[r], 100.0 * (1.0 - alpha)))
        out |= amorphous & beside & (np.nan_to_num(zk, nan=-np.inf) > chance)
    return out
