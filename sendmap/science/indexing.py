"""Crystal versus LiF by indexing: per-position Bragg-spot lists, their indexing against the phase library, and
the evidence a classifier can use (issue 18).

Three layers, each pure (arrays in, arrays out):

1. **Spot list** (:func:`spot_block`, numba per block of frames): from the polar sums the profile stage already
   accumulates (:func:`sendmap.science.polar_tables.profile_block` with ``keep_sums``; no extra pass over the
   data), the Bragg-disk-sized spots of each pattern with (Q in 1/Å, azimuth in rad, integrated intensity in
   counts, significance z in σ), at most :data:`MAX_SPOTS` per position, NaN-padded: a fixed-size
   (B, K, 4) array. The significance is *the same* as ``features/spot_z``
   (:func:`sendmap.science.polar.frame_statistics`): counts in a sliding azimuthal window one disk diameter wide
   over a radial band one disk diameter wide, a Poisson score against the band's mean rate, measured against a
   normal null located and scaled from the 5 % and 25 % points of the band's window scores (speckle-aware);
   ``spot_z`` is its maximum over azimuth, the spot list keeps its local maxima over Q and azimuth.
2. **Indexing evidence** (:func:`index_spots`): each spot against the rings of the library phases
   (:mod:`sendmap.science.phases`) within the calibrated Q uncertainty (:func:`q_tolerance`); Friedel pairs
   (g + g' ≈ 0); the best 2-D lattice (two short non-collinear spots generating the others with integer
   indices) and whether it is consistent with one phase's zone (both basis spots on that phase's rings and the
   angle between them one of its interplanar angles, :meth:`sendmap.science.phases.Phase.interplanar_angles`);
   unindexed spots are counted.
3. **Decision** (:func:`crystal_evidence`): per position a crystal (Li/Cu grain) score, a LiF score, the share of
   the scattered intensity that is isotropic (amorphous) and a category (:data:`CATEGORY_NAMES`). No input to the
   decision scales with the dose: spot strength only decides whether a spot is detected.

Conventions: Q = 1/d in 1/Å; azimuth φ = atan2(dy, dx) of the detector offset from the pattern centre (the polar
kernel's convention, :mod:`sendmap.science.polar`), in (−π, π]; g = (Q cos φ, Q sin φ).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np

from .polar import SPOT_NULL_EVERY, SPOT_QUANTILE_STEPS, SPOT_QUANTILE_Z, SPOT_QUANTILES, ROBUST_MAX_ITER, \
    ROBUST_Z_CLIP, STATS_FASTMATH, _clipped_rate, _quantile_pair

# ------------------------------------------------------------------------------------------------ constants

SPOT_FIELDS = ("q", "azimuth", "intensity", "z")
"""The last axis of a spot array: Q (1/Å), azimuth (rad), integrated intensity (counts above the local isotropic
level), significance (σ, the definition of ``features/spot_z``)."""

MAX_SPOTS = 32
"""K, spots kept per position (the strongest by z). The zero-order Laue zone of Li, Cu or LiF in the low-index
zones [001], [011], [111] holds at most 28 reflections with Q ≤ 1.13 1/Å (the corner of a 128² detector at 0.0125
1/Å per pixel; ``tests/test_indexing.py::test_max_spots_holds_a_zone``), and indexing needs only the shortest few:
32 keeps every one of them, and stores as 512 bytes (float32) per position."""

SPOT_Z_MIN = 5.0
"""Spots below 5 σ are not listed: :data:`sendmap.science.dose.MIN_CRYSTAL_Z`, a one-sided Gaussian false-alarm
rate of 2.9 × 10⁻⁷ per cell, < 10⁻³ false spots per pattern for ~10³ independent (Q, azimuth) cells. Under
partially developed speckle the null has a heavier tail; the false rate measured on speckled amorphous patterns
is in ``tests/test_indexing.py`` (and the report)."""

SPOT_EXCLUSION_RADII = 2.0
"""Two local maxima closer than 2 probe-disk radii (one disk diameter) are one spot: two disks that close overlap
and are not resolved, and the window score of one disk is non-zero out to that distance."""

SPOT_REFINE_RADII = 1.5
"""A spot's centroid and intensity are taken over the polar cells within 1.5 disk radii of it: the whole disk
(radius 1) when the starting cell is within half a radius of its centre, which a local maximum of the window
score on a grid of one bin × one sector always is at 2 mrad (disk radius 6 bins, ≥ 1.7 sectors at Q ≤ 1)."""

SPOT_MIN_COVERAGE = 0.9
"""A spot whose refinement region is less than 90 % on the detector (edge, beam stop, chip gap, masked pixels) is
not listed: its centroid is pulled inwards (a disk half off the edge moves by ~0.4 radius, 2-3 bins)."""

SPOT_REFINE_ITER = 2
"""Centroid passes (each re-centres the region on the previous centroid; the second moves it < 0.1 bin)."""

Q_CALIBRATION_REL = 0.005
"""Default relative (1σ) uncertainty of the Q scale (Q per pixel) when the calibration gives none: 0.5 %. A
camera constant measured on a gold standard by ``sendmap calibrate`` is good to ~0.1 % on the standard itself
(its q_pixel_size_err); the standard and the specimen are rarely at the same height and lens excitation, which
moves the camera length by a few 0.1 %. Pass the calibrant's own error when it is larger."""

SPOT_POSITION_SIGMA_BINS = 0.25
"""1σ error of a spot centre, per Cartesian component, in radial bins (one bin = one pixel by default): the
scatter of the centroids of 5-50 σ Cu and LiF disks on Poisson patterns at 5 × 10³-2 × 10⁴ e⁻ is below 0.2 bin
(``tests/test_indexing.py::test_spot_positions_are_accurate``, measured 0.11-0.19); 0.25 bounds it."""

N_SIGMA = 3.0
"""Every match (spot on a ring, Friedel pair, lattice point, interplanar angle) is accepted within 3σ of its
combined error: a true match is missed with probability 0.3 % (1-D) to 1.1 % (2-D, Rayleigh)."""

MAX_ORDER = 4
"""Lattice points are indexed with |m|, |n| ≤ 4 on the basis: the ZOLZ of the library phases within the detector
(Q ≤ 1.2 1/Å) needs at most 3 on a basis of two of its shortest spots."""

N_BASIS = 6
"""Lattice bases are tried from pairs of the 6 shortest spots (15 pairs): a basis from the shortest two
non-collinear spots is a reduced basis of a 2-D lattice; trying the next ones survives a false (speckle) spot
among the shortest."""

INDEX_PHASES = ("li", "cu", "lif", "li2o")
"""Phases spots are indexed against: Li and Cu (the grains), LiF (SEI Type 2 nanocrystals), Li2O (the beam-damage
product of the SEI, SCIENCE.md). Phases with dense rings (Li2CO3, the Li3PO4 forms: tens of rings below 1 1/Å)
would match any spot by chance within the Q tolerance and are left out by default."""

GRAIN_PHASES = ("li", "cu")
"""Phases whose lattice is a Li/Cu grain (the ``crystal`` class)."""

RING_MIN_INTENSITY = 1.0
"""Rings weaker than 1 % of the phase's strongest are not indexed on (Li2O (200) at 0.02 %: kinematically
absent in practice)."""

AMORPHOUS_GRAIN_MAX = 0.4
AMORPHOUS_LIF_MIN = 0.6
"""Isotropic share of the scattered intensity (beyond two disk radii) below which a spot that indexes on both a
grain phase and LiF counts as a grain's, and above which as LiF's (linear in between). LiF nanocrystals carry
1-40 % of the scattered intensity of SEI Type 2 (issue 18's scenario range), so its isotropic share is ≥ 0.6; a
Li/Cu grain at a zone axis puts ~70 % of it into Bragg disks (``sendmap.synth.make.CRYSTAL_BRAGG_FRACTION``, a
model value, flagged as such), so ≤ 0.4 for a grain whose disks are detected."""

CATEGORY_NAMES = ("no_spots", "grain", "lif", "ambiguous", "unindexed", "other_phase")
"""Categories of :func:`crystal_evidence`: no spot detected; Li/Cu grain; LiF crystallites; spots that index on a
grain phase and on LiF with nothing to decide; spots on no library ring; spots of another library phase."""
NO_SPOTS, GRAIN, LIF, AMBIGUOUS, UNINDEXED, OTHER_PHASE = range(len(CATEGORY_NAMES))


# ------------------------------------------------------------------------------------------------ spot list

@numba.njit(cache=True, fastmath=STATS_FASTMATH)
def _frame_spot_map(s, w, q_c, disk_r_q, zmap, widths, scratch, work, zf):
    """Spot significance of every sliding window: zmap[i, k] for the window of ``widths[i]`` sectors starting at
    sector k, centred at Q bin i (NaN where not scored). The computation of
    :func:`sendmap.science.polar._frame_stats` (its ``spot_z`` is max_k zmap[i, k]), kept instead of reduced."""
    nq, nphi = s.shape
    tiny = 1e-9
    nan = np.nan
    wtot = work[:nq]
    cw = work[nq:2 * nq + 1]
    for i in range(nq):
        ww = 0.0
        for k in range(nphi):
            ww += w[i, k]
        wtot[i] = ww
        widths[i] = 0
        for k in range(nphi):
            zmap[i, k] = nan
    half = 0
    if nq > 1:
        half = max(0, int(round(max(disk_r_q, 0.0) / (q_c[1] - q_c[0]))))
    cw[0] = 0.0
    for i in range(nq):
        cw[i + 1] = cw[i] + (wtot[i] if wtot[i] > tiny else 0.0)
    band_s = scratch[0]
    band_w = scratch[1]
    win_s = scratch[2]
    win_w = scratch[3]
    for k in range(nphi):
        band_s[k] = 0.0
        band_w[k] = 0.0
    b_lo = 0
    b_hi = 0
    sector = 2.0 * math.pi / nphi
    n_done = 0
    centre = 0.0
    sig = 1.0
    for i in range(nq):
        if q_c[i] < 1.5 * disk_r_q:
            continue
        lo = max(0, i - half)
        hi = min(nq, i + half + 1)
        if cw[hi] - cw[lo] <= tiny:
            continue
        while b_hi < hi:
            for k in range(nphi):
                band_s[k] += s[b_hi, k]
                band_w[k] += w[b_hi, k]
            b_hi += 1
        while b_lo < lo:
            for k in range(nphi):
                band_s[k] -= s[b_lo, k]
                band_w[k] -= w[b_lo, k]
            b_lo += 1
        q_mid = max(q_c[i], disk_r_q)
        width = int(min(nphi, max(1, round(2.0 * disk_r_q / q_mid / sector))))
        bs = 0.0
        bwt = 0.0
        for k in range(nphi):
            bs += band_s[k]
            bwt += band_w[k]
        rate = bs / bwt
        for k in range(width):
            band_s[nphi + k] = band_s[k]
            band_w[nphi + k] = band_w[k]
        for k in range(nphi):
            win_s[k] = 0.0
            win_w[k] = 0.0
        for j in range(width):
            for k in range(nphi):
                win_s[k] += band_s[k + j]
                win_w[k] += band_w[k + j]
        n_ok = 0
        for k in range(nphi):
            e = np.float32(rate * win_w[k])
            z = np.float32(win_s[k] - e) / np.float32(math.sqrt(max(e, np.float32(1.0))))
            ok = win_w[k] > tiny
            zf[n_ok] = z
            n_ok += np.int64(ok)
            zmap[i, k] = z if ok else nan
        if n_ok < 4:
            for k in range(nphi):
                zmap[i, k] = nan
            continue
        if n_done % SPOT_NULL_EVERY == 0:
            qa, qb = _quantile_pair(zf, n_ok, SPOT_QUANTILES[0], SPOT_QUANTILES[1], SPOT_QUANTILE_STEPS)
            sig = (qb - qa) / (SPOT_QUANTILE_Z[1] - SPOT_QUANTILE_Z[0])
            centre = qb - SPOT_QUANTILE_Z[1] * sig
        n_done += 1
        widths[i] = width
        scale = max(sig, 1.0)
        for k in range(nphi):
            zmap[i, k] = (zmap[i, k] - centre) / scale


@numba.njit(cache=True)
def _frame_spots(s, w, q_c, disk_r_q, z_min, out, zmap, widths, scratch, work, zf, rob):
    """Spots of one frame into ``out`` (K, 4) (NaN-padded); returns the counts beyond 2 disk radii."""
    nq, nphi = s.shape
    kmax = out.shape[0]
    for a in range(kmax):
        for b in range(4):
            out[a, b] = np.nan
    _frame_spot_map(s, w, q_c, disk_r_q, zmap, widths, scratch, work, zf)
    sector = 2.0 * math.pi / nphi
    # candidates: every scored window at or above z_min, strongest first
    n_c = 0
    for i in range(nq):
        for k in range(nphi):
            if zmap[i, k] >= z_min:
                n_c += 1
    total = 0.0
    for i in range(nq):
        if q_c[i] >= 2.0 * disk_r_q:
            for k in range(nphi):
                total += s[i, k]
    if n_c == 0:
        return total
    cz = np.empty(n_c)
    cx = np.empty(n_c)
    cy = np.empty(n_c)
    n_c = 0
    for i in range(nq):
        for k in range(nphi):
            if zmap[i, k] >= z_min:
                phi = -math.pi + (k + 0.5 * widths[i]) * sector
                cz[n_c] = zmap[i, k]
                cx[n_c] = q_c[i] * math.cos(phi)
                cy[n_c] = q_c[i] * math.sin(phi)
                n_c += 1
    order = np.argsort(-cz)
    # the isotropic level of each bin: its spot-clipped azimuthal mean rate (counts per pixel area)
    z2 = ROBUST_Z_CLIP * ROBUST_Z_CLIP
    # a whole sector's pixel area in each bin: an annulus' area grows as Q, and the bins whose ring is whole (the
    # largest area / Q) give the constant
    wmax = np.zeros(nq)
    area_per_q = 0.0
    for i in range(nq):
        ww = 0.0
        for k in range(nphi):
            ww += w[i, k]
        if q_c[i] > 0.0:
            area_per_q = max(area_per_q, ww / q_c[i])
    for i in range(nq):
        wmax[i] = area_per_q * q_c[i] / nphi
    for i in range(nq):
        ss = 0.0
        ww = 0.0
        for k in range(nphi):
            ss += s[i, k]
            ww += w[i, k]
        rob[i] = _clipped_rate(s[i], w[i], ss / ww, z2, ROBUST_MAX_ITER) if ww > 1e-9 else 0.0
    excl2 = (SPOT_EXCLUSION_RADII * disk_r_q) ** 2
    reg2 = (SPOT_REFINE_RADII * disk_r_q) ** 2
    bw = q_c[1] - q_c[0] if nq > 1 else 1.0
    reach = int(SPOT_REFINE_RADII * disk_r_q / bw) + 2
    n_acc = 0
    acc_x = np.empty(kmax)
    acc_y = np.empty(kmax)
    for c in order:
        if n_acc >= kmax:
            break
        x0 = cx[c]
        y0 = cy[c]
        near = False
        for a in range(n_acc):
            if (acc_x[a] - x0) ** 2 + (acc_y[a] - y0) ** 2 < excl2:
                near = True
                break
        if near:
            continue
        # centroid of the counts above the isotropic level within SPOT_REFINE_RADII disk radii, re-centred
        xs, ys, tot, cover, full = x0, y0, 0.0, 0.0, 0.0
        for _ in range(SPOT_REFINE_ITER):
            q0 = math.sqrt(xs * xs + ys * ys)
            i0 = int(q0 / bw)
            sx = 0.0
            sy = 0.0
            st = 0.0
            cover = 0.0
            full = 0.0
            for i in range(max(0, i0 - reach), min(nq, i0 + reach + 1)):
                for k in range(nphi):
                    phi = -math.pi + (k + 0.5) * sector
                    px = q_c[i] * math.cos(phi)
                    py = q_c[i] * math.sin(phi)
                    if (px - xs) ** 2 + (py - ys) ** 2 > reg2:
                        continue
                    full += wmax[i]
                    cover += w[i, k]
                    if w[i, k] <= 1e-9:
                        continue
                    e = s[i, k] - rob[i] * w[i, k]
                    sx += e * px
                    sy += e * py
                    st += e
            tot = st
            if st > 0.0:
                xs = sx / st
                ys = sy / st
            else:
                break
        if cover < SPOT_MIN_COVERAGE * full:
            continue  # the disk is cut by the detector edge or the mask: its centroid would be biased
        near = False
        for a in range(n_acc):
            if (acc_x[a] - xs) ** 2 + (acc_y[a] - ys) ** 2 < excl2:
                near = True  # the flank of a stronger spot, pulled onto it by the centroid
                break
        if near:
            continue
        acc_x[n_acc] = xs
        acc_y[n_acc] = ys
        out[n_acc, 0] = math.sqrt(xs * xs + ys * ys)
        out[n_acc, 1] = math.atan2(ys, xs)
        out[n_acc, 2] = max(tot, 0.0)
        out[n_acc, 3] = cz[c]
        n_acc += 1
    return total


@numba.njit(parallel=True, cache=True)
def _spot_kernel(s, w, q_c, disk_r_q, z_min, out, totals):
    nb, nq, nphi = s.shape
    for f in numba.prange(nb):
        zmap = np.empty((nq, nphi))
        widths = np.zeros(nq, np.int64)
        scratch = np.empty((4, 2 * nphi))
        work = np.empty(2 * nq + 1)
        zf = np.empty(nphi, np.float32)
        rob = np.empty(nq)
        totals[f] = _frame_spots(s[f], w[f], q_c, disk_r_q, z_min, out[f], zmap, widths, scratch, work, zf, rob)


def spot_block(s: np.ndarray, w: np.ndarray, q_centres: np.ndarray, disk_radius_q: float,
               z_min: float = SPOT_Z_MIN, max_spots: int = MAX_SPOTS) -> tuple[np.ndarray, np.ndarray]:
    """The Bragg-disk-sized spots of a block of patterns from their polar sums.

    s, w: (B, nq, n_phi) polar sums and pixel areas (:func:`sendmap.science.polar_tables.profile_block` with
    ``keep_sums=True``, or :func:`sendmap.science.polar.polar_sums`); q_centres (nq,) 1/Å (uniform bins);
    disk_radius_q: probe-disk radius (1/Å).

    Returns ``spots`` (B, max_spots, 4) float32 with columns :data:`SPOT_FIELDS` — Q (1/Å, the centroid),
    azimuth (rad), intensity (counts above the bin's spot-clipped azimuthal mean within
    :data:`SPOT_REFINE_RADII` disk radii), z (σ, local maximum of the ``spot_z`` window significance, ≥ ``z_min``)
    — strongest first, NaN-padded; and ``scattered`` (B,) the counts at Q ≥ 2 disk radii (the denominator of
    the isotropic share, :func:`crystal_evidence`).

    Spots are local maxima of the window significance over Q and azimuth, accepted strongest first unless
    within :data:`SPOT_EXCLUSION_RADII` disk radii of a stronger one.
    """
    s = np.ascontiguousarray(s, dtype=np.float64)
    w = np.ascontiguousarray(w, dtype=np.float64)
    if s.ndim != 3 or s.shape != w.shape:
        raise ValueError(f"s and w must be (B, nq, n_phi) of one shape, got {s.shape} and {w.shape}")
    q_c = np.ascontiguousarray(q_centres, dtype=np.float64)
    if q_c.shape != (s.shape[1],):
        raise ValueError(f"q_centres must have one value per radial bin ({s.shape[1]}), got {q_c.shape}")
    if max_spots < 1:
        raise ValueError(f"max_spots must be >= 1, got {max_spots}")
    out = np.empty((s.shape[0], int(max_spots), 4))
    totals = np.empty(s.shape[0])
    _spot_kernel(s, w, q_c, float(disk_radius_q), float(z_min), out, totals)
    return out.astype(np.float32), totals


def spots_from_frames(frames: np.ndarray, centres_yx: np.ndarray, mask: np.ndarray, geom, disk_radius_q: float,
                      z_min: float = SPOT_Z_MIN, max_spots: int = MAX_SPOTS) -> tuple[np.ndarray, np.ndarray]:
    """:func:`spot_block` of frames (B, Qy, Qx) through the profile stage's own polar accumulation
    (:func:`sendmap.science.polar_tables.profile_block`, geometry ``geom``: a
    :class:`sendmap.science.polar.PolarGeometry`). For tests and one-off use; the profile stage calls
    :func:`spot_block` on the sums it already has."""
    from .polar_tables import PolarTables, profile_block

    res = profile_block(np.asarray(frames), np.asarray(centres_yx, dtype=float), mask, PolarTables(geom),
                        disk_radius_q, keep_sums=True)
    return spot_block(res["s"], res["w"], geom.q_centres, disk_radius_q, z_min, max_spots)


# ------------------------------------------------------------------------------------------------ library

@dataclass(frozen=True)
class IndexLibrary:
    """The rings spots are indexed on. ring_* (R,): Q (1/Å), phase (index into ``phase_ids``), representative
    hkl (R, 3), intensity (0-100 within its phase); ``angles`` (R, R, A) the interplanar angles (degrees) two
    spots on rings r1 and r2 of one phase can make, NaN-padded (and all NaN between rings of different phases)."""

    phase_ids: tuple[str, ...]
    ring_q: np.ndarray
    ring_phase: np.ndarray
    ring_hkl: np.ndarray
    ring_intensity: np.ndarray
    angles: np.ndarray

    def chance_coverage(self, q_range: tuple[float, float], tol_abs: float) -> dict[str, float]:
        """Share of ``q_range`` (1/Å) within ± ``tol_abs`` of some ring of each phase: the probability that a spot
        at a random Q indexes on it by chance."""
        fine = np.linspace(q_range[0], q_range[1], 4001)
        out = {}
        for i, pid in enumerate(self.phase_ids):
            v = self.ring_q[self.ring_phase == i]
            out[pid] = float(np.mean(np.min(np.abs(fine[:, None] - v[None, :]), axis=1) <= tol_abs)) if v.size else 0.0
        return out


@functools.lru_cache(maxsize=16)
def index_library(phase_ids: tuple[str, ...] = INDEX_PHASES, q_max: float = 1.3,
                  min_intensity: float = RING_MIN_INTENSITY) -> IndexLibrary:
    """Rings (Q ≤ ``q_max`` 1/Å, intensity ≥ ``min_intensity`` of the phase's strongest) and interplanar angles of
    ``phase_ids``, computed by :mod:`sendmap.science.phases`."""
    from .phases import get_phase

    q, ph, hkl, inten, forms = [], [], [], [], []
    for i, pid in enumerate(phase_ids):
        p = get_phase(pid)
        for r in p.reflections(q_max, min_intensity=min_intensity):
            q.append(r.q_inv_angstrom)
            ph.append(i)
            hkl.append(r.hkl)
            inten.append(r.intensity)
            forms.append((r.hkl,) + tuple(r.overlaps))
    n = len(q)
    table: dict[tuple[int, int], np.ndarray] = {}
    for a in range(n):
        for b in range(n):
            if ph[a] != ph[b]:
                continue
            p = get_phase(phase_ids[ph[a]])
            table[a, b] = np.unique(np.concatenate([p.interplanar_angles(f1, f2) for f1 in forms[a] for f2 in forms[b]]))
    width = max((v.size for v in table.values()), default=1)
    angles = np.full((n, n, width), np.nan)
    for (a, b), v in table.items():
        angles[a, b, :v.size] = v
    return IndexLibrary(tuple(phase_ids), np.array(q, float), np.array(ph, np.int64),
                        np.array(hkl, np.int64).reshape(-1, 3), np.array(inten, float), angles)


def q_tolerance(bin_width: float, q_rel_err: float = Q_CALIBRATION_REL,
                position_sigma_bins: float = SPOT_POSITION_SIGMA_BINS) -> tuple[float, float]:
    """(relative Q-scale error, absolute spot-position error in 1/Å), both 1σ: what :func:`index_spots` combines
    into the tolerance of a ring match, √((Q·rel)² + pos²) × :data:`N_SIGMA`. ``bin_width``: the radial bin (1/Å);
    ``q_rel_err``: the calibration's relative error (q_pixel_size_err / q_pixel_size of a calibrant, or
    :data:`Q_CALIBRATION_REL`)."""
    return float(q_rel_err), float(position_sigma_bins * bin_width)


# ------------------------------------------------------------------------------------------------ indexing

@numba.njit(cache=True)
def _index_one(qs, gx, gy, ring_q, ring_phase, angles, n_phase, rel, pos, nsig, match, lat_member, res):
    """Indexing of one position's n valid spots (sorted by Q). match (n, n_phase) bool out; lat_member (n,) out;
    res: [n_friedel, n_lattice, n_lattice_2d, lattice_phase, n_lattice_indexed, q1, q2, angle_deg]."""
    n = qs.size
    nr = ring_q.size
    # ring matches: |Q − Q_ring| ≤ nsig·√((Q_ring·rel)² + pos²)
    for k in range(n):
        for p in range(n_phase):
            match[k, p] = False
        for r in range(nr):
            tol = nsig * math.sqrt((ring_q[r] * rel) ** 2 + pos * pos)
            if abs(qs[k] - ring_q[r]) <= tol:
                match[k, ring_phase[r]] = True
    # Friedel pairs: |g + g'| ≤ nsig·√2·pos
    n_fr = 0
    tol_f = nsig * math.sqrt(2.0) * pos
    for k in range(n):
        for m in range(k + 1, n):
            if math.hypot(gx[k] + gx[m], gy[k] + gy[m]) <= tol_f:
                n_fr += 1
    res[0] = n_fr
    for k in range(n):
        lat_member[k] = False
    res[1] = 0
    res[2] = 0
    res[3] = -1
    res[4] = 0
    res[5] = np.nan
    res[6] = np.nan
    res[7] = np.nan
    nb = min(n, 6)
    best = (-1, -1, -1, -1)
    member = np.zeros(n, np.bool_)
    for i in range(nb):
        for j in range(i + 1, nb):
            ax, ay, bx, by = gx[i], gy[i], gx[j], gy[j]
            cross = ax * by - ay * bx
            # non-collinear: b's distance from the line of a beyond the tolerance of a lattice point
            if abs(cross) / qs[i] <= nsig * math.sqrt(3.0) * pos:
                continue
            n_ex = 0
            n_2d = 0
            for k in range(n):
                mm = (gx[k] * by - gy[k] * bx) / cross
                nn = (ax * gy[k] - ay * gx[k]) / cross
                mi = round(mm)
                ni = round(nn)
                member[k] = False
                if abs(mi) > 4 or abs(ni) > 4:
                    continue
                rx = gx[k] - mi * ax - ni * bx
                ry = gy[k] - mi * ay - ni * by
                if math.hypot(rx, ry) <= nsig * pos * math.sqrt(1.0 + mi * mi + ni * ni):
                    member[k] = True
                    n_ex += 1
                    if mi != 0 and ni != 0:
                        n_2d += 1
            # zone consistency: a and b on rings r1, r2 of one phase, at one of its interplanar angles
            ang = math.degrees(math.acos(min(1.0, max(-1.0, (ax * bx + ay * by) / (qs[i] * qs[j])))))
            dang = math.degrees(nsig * pos * math.sqrt(1.0 / qs[i] ** 2 + 1.0 / qs[j] ** 2))
            zone_phase = -1
            n_idx = 0
            for r1 in range(nr):
                t1 = nsig * math.sqrt((ring_q[r1] * rel) ** 2 + pos * pos)
                if abs(qs[i] - ring_q[r1]) > t1:
                    continue
                for r2 in range(nr):
                    if ring_phase[r2] != ring_phase[r1]:
                        continue
                    t2 = nsig * math.sqrt((ring_q[r2] * rel) ** 2 + pos * pos)
                    if abs(qs[j] - ring_q[r2]) > t2:
                        continue
                    for a in range(angles.shape[2]):
                        v = angles[r1, r2, a]
                        if v == v and abs(v - ang) <= dang:
                            p = ring_phase[r1]
                            cnt = 0
                            for k in range(n):
                                if member[k] and match[k, p]:
                                    cnt += 1
                            if cnt > n_idx:
                                n_idx = cnt
                                zone_phase = p
                            break
            key = (1 if zone_phase >= 0 else 0, n_idx, n_ex, n_2d)
            if key > best:
                best = key
                res[1] = n_ex
                res[2] = n_2d
                res[3] = zone_phase
                res[4] = n_idx
                res[5] = qs[i]
                res[6] = qs[j]
                res[7] = ang
                for k in range(n):
                    lat_member[k] = member[k]


@numba.njit(parallel=True, cache=True)
def _index_kernel(spots, ring_q, ring_phase, angles, n_phase, rel, pos, nsig, match_out, lat_out, res_out):
    npos, kmax, _ = spots.shape
    for t in numba.prange(npos):
        idx = np.empty(kmax, np.int64)
        n = 0
        for k in range(kmax):
            if spots[t, k, 0] == spots[t, k, 0]:
                idx[n] = k
                n += 1
        for k in range(kmax):
            for p in range(n_phase):
                match_out[t, k, p] = False
            lat_out[t, k] = False
        res = np.empty(8)
        if n == 0:
            res_out[t, 0] = 0
            res_out[t, 1] = 0
            res_out[t, 2] = 0
            res_out[t, 3] = -1
            res_out[t, 4] = 0
            for c in range(5, 8):
                res_out[t, c] = np.nan
            continue
        qv = np.empty(n)
        for a in range(n):
            qv[a] = spots[t, idx[a], 0]
        o = np.argsort(qv)
        qs = np.empty(n)
        gx = np.empty(n)
        gy = np.empty(n)
        for a in range(n):
            k = idx[o[a]]
            qs[a] = spots[t, k, 0]
            gx[a] = qs[a] * math.cos(spots[t, k, 1])
            gy[a] = qs[a] * math.sin(spots[t, k, 1])
        match = np.zeros((n, n_phase), np.bool_)
        member = np.zeros(n, np.bool_)
        _index_one(qs, gx, gy, ring_q, ring_phase, angles, n_phase, rel, pos, nsig, match, member, res)
        for a in range(n):
            k = idx[o[a]]
            lat_out[t, k] = member[a]
            for p in range(n_phase):
                match_out[t, k, p] = match[a, p]
        for c in range(8):
            res_out[t, c] = res[c]


def index_spots(spots: np.ndarray, q_rel_err: float, position_sigma: float,
                library: IndexLibrary | None = None, n_sigma: float = N_SIGMA) -> dict[str, np.ndarray]:
    """Indexing evidence per position from spot arrays (..., K, 4) (:func:`spot_block`; NaN rows are empty).

    q_rel_err, position_sigma: the 1σ relative Q-scale error and absolute spot-position error (1/Å) of
    :func:`q_tolerance`. Returns, over the leading axes (...):

    * ``match`` (..., K, P) bool: spot k lies within ``n_sigma`` σ of a ring of phase p (``library.phase_ids``);
    * ``n_spots``, ``n_indexed`` (on some ring), ``n_unindexed``, ``n_friedel`` (pairs with g + g' ≈ 0);
    * the best lattice: ``lattice_member`` (..., K) bool, ``n_lattice`` (spots that are integer combinations
      m·a + n·b, |m|, |n| ≤ :data:`MAX_ORDER`, of a basis a, b of two of the :data:`N_BASIS` shortest spots),
      ``n_lattice_2d`` (of those, with m ≠ 0 and n ≠ 0: a net, not two rows), ``lattice_phase`` (the phase whose
      rings hold both basis spots at one of its interplanar angles, -1 none: the zone check),
      ``n_lattice_indexed`` (lattice spots on that phase's rings), ``lattice_q1``, ``lattice_q2`` (1/Å) and
      ``lattice_angle`` (degrees) of the basis;
    * ``has_lattice`` bool: a zone-consistent net, ≥ 3 lattice spots of which ≥ 1 off the basis rows.

    Bases are ranked by (zone-consistent, lattice spots indexed on the zone's phase, lattice spots, net spots).
    """
    lib = library if library is not None else index_library()
    sp = np.asarray(spots, dtype=np.float64)
    lead = sp.shape[:-2]
    k = sp.shape[-2]
    flat = np.ascontiguousarray(sp.reshape(-1, k, sp.shape[-1]))
    npos = flat.shape[0]
    n_phase = len(lib.phase_ids)
    match = np.zeros((npos, k, n_phase), np.bool_)
    lat = np.zeros((npos, k), np.bool_)
    res = np.zeros((npos, 8))
    _index_kernel(flat, lib.ring_q, lib.ring_phase, np.ascontiguousarray(lib.angles), n_phase, float(q_rel_err),
                  float(position_sigma), float(n_sigma), match, lat, res)
    valid = np.isfinite(flat[..., 0])
    indexed = match.any(axis=-1) & valid
    out = {
        "match": match.reshape(*lead, k, n_phase),
        "lattice_member": lat.reshape(*lead, k),
        "n_spots": valid.sum(axis=-1).reshape(lead),
        "n_indexed": indexed.sum(axis=-1).reshape(lead),
        "n_unindexed": (valid & ~indexed).sum(axis=-1).reshape(lead),
        "n_friedel": res[:, 0].astype(np.int64).reshape(lead),
        "n_lattice": res[:, 1].astype(np.int64).reshape(lead),
        "n_lattice_2d": res[:, 2].astype(np.int64).reshape(lead),
        "lattice_phase": res[:, 3].astype(np.int64).reshape(lead),
        "n_lattice_indexed": res[:, 4].astype(np.int64).reshape(lead),
        "lattice_q1": res[:, 5].reshape(lead),
        "lattice_q2": res[:, 6].reshape(lead),
        "lattice_angle": res[:, 7].reshape(lead),
    }
    out["has_lattice"] = (out["lattice_phase"] >= 0) & (out["n_lattice_indexed"] >= 3) & (out["n_lattice_2d"] >= 1)
    return out


# ------------------------------------------------------------------------------------------------ decision

def crystal_evidence(spots: np.ndarray, scattered: np.ndarray, disk_radius_q: float, q_rel_err: float,
                     position_sigma: float, library: IndexLibrary | None = None, n_sigma: float = N_SIGMA,
                     grain_phases: tuple[str, ...] = GRAIN_PHASES, lif_phase: str = "lif",
                     amorphous_grain_max: float = AMORPHOUS_GRAIN_MAX,
                     amorphous_lif_min: float = AMORPHOUS_LIF_MIN) -> dict[str, np.ndarray]:
    """Crystal (Li/Cu grain) versus LiF crystallites per position, from spots and indexing; everything of
    :func:`index_spots` plus:

    * ``amorphous_share``: 1 − (intensity of the spots at Q ≥ 2 disk radii) / ``scattered`` (the counts there,
      :func:`spot_block`): the isotropic share of the scattered intensity (≈ 0.3 for a grain at a zone axis,
      ≥ 0.6 for SEI Type 2, 1 for an isotropic pattern);
    * ``phase_share`` (..., P): the share of the spots' intensity each phase explains. A spot on one phase's
      rings goes to it; a member of a zone-consistent lattice goes to the lattice's phase; a spot on the rings of
      a grain phase and of LiF (LiF (220) 0.702 / Li (211) 0.698; LiF (200) 0.497 / Cu (111) 0.479 when the Q
      tolerance exceeds their 0.018 1/Å) is split by the amorphous share: to the grain below
      ``amorphous_grain_max``, to LiF above ``amorphous_lif_min``, linearly between; otherwise equally;
    * ``crystal_score`` = the grain phases' share (1 with a zone-consistent grain lattice), ``lif_score`` = LiF's
      share (1 with a LiF lattice), ``unindexed_share``;
    * ``lif_z``, ``crystal_z``: the largest significance of a spot given (mostly) to LiF, to a grain phase
      (0 where none): the strength of the evidence, for a classifier's noise model;
    * ``category`` (int8, :data:`CATEGORY_NAMES`): no_spots; a zone lattice names its phase (grain / lif /
      other_phase); else the phase group holding more than half of the intensity (grain, lif, unindexed,
      other_phase); else ambiguous.

    None of these scales with the dose (shares and geometry only): a weak grain and a strong one, a faint LiF
    crystallite and a dominant one, get the same category once their spots are detected.
    """
    lib = library if library is not None else index_library()
    sp = np.asarray(spots, dtype=np.float64)
    ev = index_spots(sp, q_rel_err, position_sigma, lib, n_sigma)
    q, inten, z = sp[..., 0], np.nan_to_num(sp[..., 2], nan=0.0), np.nan_to_num(sp[..., 3], nan=0.0)
    valid = np.isfinite(q)
    inten = np.where(valid, np.clip(inten, 0.0, None), 0.0)
    far = valid & (q >= 2.0 * disk_radius_q)
    scat = np.asarray(scattered, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        amorph = np.where(scat > 0, np.clip(1.0 - (inten * far).sum(axis=-1) / np.where(scat > 0, scat, 1.0), 0.0, 1.0),
                          np.nan)
    ids = lib.phase_ids
    grain_idx = [ids.index(p) for p in grain_phases if p in ids]
    lif_idx = ids.index(lif_phase) if lif_phase in ids else -1
    match = ev["match"].astype(np.float64)
    is_grain = np.zeros(len(ids), bool)
    is_grain[grain_idx] = True
    # a lattice member goes to the lattice's phase
    lp = ev["lattice_phase"]
    has_zone = lp >= 0
    onehot = np.zeros(match.shape)
    np.put_along_axis(onehot, np.clip(lp, 0, None)[..., None, None].repeat(match.shape[-2], axis=-2), 1.0, axis=-1)
    member = ev["lattice_member"] & has_zone[..., None] & (np.take_along_axis(
        ev["match"], np.clip(lp, 0, None)[..., None, None].repeat(match.shape[-2], axis=-2), axis=-1)[..., 0])
    weights = np.where(member[..., None], onehot, match)
    # grain-or-LiF spots: split by the isotropic share
    if lif_idx >= 0 and grain_idx:
        g_any = (weights[..., grain_idx] > 0).any(axis=-1)
        l_any = weights[..., lif_idx] > 0
        both = g_any & l_any & ~member
        span = max(amorphous_lif_min - amorphous_grain_max, 1e-9)
        to_lif = np.clip((np.nan_to_num(amorph, nan=1.0) - amorphous_grain_max) / span, 0.0, 1.0)[..., None]
        n_g = np.maximum((weights[..., grain_idx] > 0).sum(axis=-1), 1)[..., None]  # (..., K, 1)
        split = np.zeros(weights.shape)
        split[..., lif_idx] = to_lif
        for gi in grain_idx:
            split[..., gi] = (weights[..., gi] > 0) * (1.0 - to_lif) / n_g[..., 0]
        weights = np.where(both[..., None], split, weights)
    rows = weights.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = np.where(rows > 0, weights / np.where(rows > 0, rows, 1.0), 0.0)
    total = inten.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total[..., None] > 0, (weights * inten[..., None]).sum(axis=-2)
                         / np.where(total > 0, total, 1.0)[..., None], 0.0)
        unindexed = np.where(total > 0, (inten * (valid & (rows[..., 0] == 0))).sum(axis=-1)
                             / np.where(total > 0, total, 1.0), 0.0)
    crystal_score = share[..., grain_idx].sum(axis=-1) if grain_idx else np.zeros(total.shape)
    lif_score = share[..., lif_idx] if lif_idx >= 0 else np.zeros(total.shape)
    other_idx = [i for i in range(len(ids)) if not is_grain[i] and i != lif_idx]
    other_score = share[..., other_idx].sum(axis=-1) if other_idx else np.zeros(total.shape)
    lattice = ev["has_lattice"]
    lat_grain = lattice & np.isin(lp, grain_idx)
    lat_lif = lattice & (lp == lif_idx)
    crystal_score = np.where(lat_grain, 1.0, np.where(lat_lif, 0.0, crystal_score))
    lif_score = np.where(lat_lif, 1.0, np.where(lat_grain, 0.0, lif_score))
    # the strongest spot given mostly to each group
    gw = weights[..., grain_idx].sum(axis=-1) if grain_idx else np.zeros(z.shape)
    lw = weights[..., lif_idx] if lif_idx >= 0 else np.zeros(z.shape)
    crystal_z = np.where(valid & (gw > 0.5), z, 0.0).max(axis=-1)
    lif_z = np.where(valid & (lw > 0.5), z, 0.0).max(axis=-1)
    n = ev["n_spots"]
    cat = np.full(n.shape, AMBIGUOUS, np.int8)
    cat[crystal_score > 0.5] = GRAIN
    cat[lif_score > 0.5] = LIF
    cat[unindexed > 0.5] = UNINDEXED
    cat[other_score > 0.5] = OTHER_PHASE
    cat[lattice & has_zone & ~lat_grain & ~lat_lif] = OTHER_PHASE
    cat[lat_grain] = GRAIN
    cat[lat_lif] = LIF
    cat[n == 0] = NO_SPOTS
    ev.update(amorphous_share=amorph, phase_share=share, crystal_score=crystal_score, lif_score=lif_score,
              unindexed_share=unindexed, crystal_z=crystal_z, lif_z=lif_z, category=cat)
    return ev
