"""Crystal versus LiF by indexing: per-position Bragg-spot lists, their indexing against the phase library, and
the evidence a classifier can use (issue 18).

Size: three layers that share one spot model (the spot list, its indexing, the decision); the spot list (numba,
:func:`spot_block` and its helpers) is the piece to move out if it grows. The profile stage lists the spots of the
frames that have one (:func:`_frame_spots`, called inside :func:`sendmap.science.polar_tables.profile_block`
with ``keep_z``, right after each frame's statistics) and stores :func:`crystal_evidence` per position (:mod:`sendmap.compute.profiles`).

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

from .polar import (ROBUST_MAX_ITER, ROBUST_Z_CLIP, SPOT_NULL_EVERY, STATS_FASTMATH, _band_windows, _clipped_rate,
                    _spot_null, _window_scores)
from .ring_sectors import mark_sectors_within, sector_directions, sector_of
from .ring_sectors import wrap as _wrap

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

SPOT_REFINE_ITER = 3
"""Centroid passes: the first over SPOT_REFINE_RADII (it also gives the intensity), the next two over
SPOT_CENTROID_RADII around the previous centroid."""

SPOT_CENTROID_RADII = 1.2
"""After the first pass the centroid is within ~0.2 disk radii of the disk centre, so a region of 1.2 radii still
holds the whole disk and takes in (1.2/1.5)² of the isotropic background whose noise limits a weak spot's centroid."""

Q_CALIBRATION_REL = 0.005
"""Default relative (1σ) uncertainty of the Q scale (Q per pixel) when the calibration gives none: 0.5 %. A
camera constant measured on a gold standard by ``sendmap calibrate`` is good to ~0.1 % on the standard itself
(its q_pixel_size_err); the standard and the specimen are rarely at the same height and lens excitation, which
moves the camera length by a few 0.1 %. Pass the calibrant's own error when it is larger."""

SPOT_POSITION_C = 1.45
SPOT_POSITION_FLOOR_BINS = 0.15
"""1σ error of a spot centre per Cartesian component (radial and tangential alike), 1/Å:
√((1.45·r/z)² + (0.15·bin)²) for a disk of radius r detected at z σ (:func:`spot_position_sigma`). Measured on
Poisson patterns of Cu [001] grains (5-70 % of the scattered intensity in disks) and LiF [001] crystallites
(5-40 %, on an amorphous ring) at 5 × 10³ and 2 × 10⁴ e⁻, 128² detector, 0.0125 1/Å bins, 2 mrad: rms error ×
z / r = 1.2-1.5 in every z band from 5 to 50 σ (a centroid's error is the disk radius over its signal-to-noise),
flattening to ~0.2 bin for the strongest spots (the 5° sectors of the polar grid); 1.45 and 0.15 bound them.
(``/tmp``-free re-measurement: ``tests/test_indexing.py::test_spot_positions_are_accurate``.)"""

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

GRAIN_Z_ISOTROPIC = 22.0
"""σ: a Cu (111) spot (0.479 1/Å) excludes LiF (200) (0.497) at 3σ when 3·√((0.49·Q_CALIBRATION_REL)² + σ_pos²) <
0.018, i.e. σ_pos < 0.0053 1/Å, i.e. z > 1.45·0.0797/0.0053 ≈ 22 (:func:`spot_position_sigma`, 2 mrad at 200 kV).
Without a lattice and on a pattern whose scattering is mostly isotropic, only a grain-indexed spot this strong
makes the position a grain (an off-axis grain's strong pair or row); weaker ones are ``ambiguous``: the chance
spots of speckle (5-10 σ) and LiF spots that Q cannot place fall there."""

CATEGORY_NAMES = ("no_spots", "grain", "lif", "ambiguous", "unindexed", "other_phase")
"""Categories of :func:`crystal_evidence`: no spot detected; Li/Cu grain; LiF crystallites; spots that index on a
grain phase and on LiF with nothing to decide; spots on no library ring; spots of another library phase."""
NO_SPOTS, GRAIN, LIF, AMBIGUOUS, UNINDEXED, OTHER_PHASE = range(len(CATEGORY_NAMES))


# ------------------------------------------------------------------------------------------------ spot list

@numba.njit(cache=True, inline="always")
def row_sums(a, out):
    """out[i] = Σ_k a[i, k], each row summed in column order from 0.0 (so the same value as the one-row loop), four
    rows at a time: four independent sums keep the adder busy where one waits ~4 cycles per add."""
    nr, nc = a.shape
    i = 0
    while i + 4 <= nr:
        r0 = 0.0
        r1 = 0.0
        r2 = 0.0
        r3 = 0.0
        for k in range(nc):
            r0 += a[i, k]
            r1 += a[i + 1, k]
            r2 += a[i + 2, k]
            r3 += a[i + 3, k]
        out[i] = r0
        out[i + 1] = r1
        out[i + 2] = r2
        out[i + 3] = r3
        i += 4
    while i < nr:
        r0 = 0.0
        for k in range(nc):
            r0 += a[i, k]
        out[i] = r0
        i += 1


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
    b_lo = 0  # the band holds bins [b_lo, b_hi)
    b_hi = 0
    sector = 2.0 * math.pi / nphi
    n_done = 0
    centre = 0.0
    sig = 1.0
    for i in range(nq):
        if q_c[i] < 1.5 * disk_r_q:
            continue
        if cw[min(nq, i + half + 1)] - cw[max(0, i - half)] <= tiny:
            continue
        rate, width, b_lo, b_hi = _band_windows(i, s, w, half, disk_r_q, max(q_c[i], disk_r_q), sector, band_s,
                                                band_w, win_s, win_w, b_lo, b_hi)
        _window_scores(rate, win_s, win_w, zf, nphi)  # (as _frame_stats)
        n_ok = 0
        for k in range(nphi):
            z = zf[k]
            ok = win_w[k] > tiny
            zf[n_ok] = z
            n_ok += np.int64(ok)
            zmap[i, k] = z if ok else nan
        if n_ok < 4:
            for k in range(nphi):
                zmap[i, k] = nan
            continue
        if n_done % SPOT_NULL_EVERY == 0:
            centre, sig = _spot_null(zf, n_ok)
        n_done += 1
        widths[i] = width
        scale = max(sig, 1.0)
        for k in range(nphi):
            zmap[i, k] = (zmap[i, k] - centre) / scale


@numba.njit(cache=True, inline="always")
def _is_local_max(zmap, widths, i, k):
    """Whether window (i, k) of :func:`_frame_spot_map` is a local maximum of the significance: not below its two
    azimuthal neighbours in bin i nor the three windows of bins i ± 1 whose centres are nearest its own (windows
    start at sector k and span widths[i] sectors, so a neighbouring bin's window with the same centre starts half
    the width difference earlier). Unscored neighbours (NaN) do not count."""
    nq, nphi = zmap.shape
    z = zmap[i, k]
    if zmap[i, _wrap(k + 1, nphi)] > z or zmap[i, _wrap(k - 1, nphi)] > z:
        return False
    return _is_radial_max(zmap, widths, i, k, z)


@numba.njit(cache=True, inline="always")
def _is_radial_max(zmap, widths, i, k, z):
    """The radial half of :func:`_is_local_max`: window (i, k), of significance z, not below the three windows of
    bins i ± 1 whose centres are nearest its own."""
    nq, nphi = zmap.shape
    for j in (i - 1, i + 1):
        if j < 0 or j >= nq or widths[j] == 0:
            continue
        kc = k + (widths[i] - widths[j]) // 2
        for dk in (-1, 0, 1):
            if zmap[j, _wrap(kc + dk, nphi)] > z:
                return False
    return True


@numba.njit(cache=True, inline="always")
def _isotropic_level(i, s, w, q_c, q_pre, kc_pre, pcx, pcy, excl2, cosk, sink, covered, z2):
    """The isotropic level of Q bin i (counts per pixel area) for the spot list: the mean rate of its sectors
    farther than the exclusion radius (√excl2) from every spot found (at (pcx, pcy), Q q_pre, in sector kc_pre);
    a clipped mean keeps the partly covered sectors at a disk's edge and sits too high beside strong disks. Where
    fewer than a quarter of the sectors are left, the clipped mean. ``covered`` (n_phi,) bool scratch."""
    nphi = s.shape[1]
    for k in range(nphi):
        covered[k] = False
    # the sectors of this bin within the exclusion radius of a spot (the walk from the spot's sector:
    # sendmap.science.ring_sectors)
    excl = math.sqrt(excl2)
    q = q_c[i]
    for a in range(q_pre.size):
        if abs(q_pre[a] - q) >= excl:
            continue
        mark_sectors_within(q, pcx[a], pcy[a], kc_pre[a], excl2, False, cosk, sink, covered)
    fs = 0.0
    fw = 0.0
    n_free = 0
    for k in range(nphi):
        if not covered[k] and w[i, k] > 1e-9:
            fs += s[i, k]
            fw += w[i, k]
            n_free += 1
    if n_free * 4 >= nphi and fw > 1e-9:
        return fs / fw
    ss = 0.0  # the whole bin's sums, summed only here where they are needed
    ww = 0.0
    for k in range(nphi):
        ss += s[i, k]
        ww += w[i, k]
    return _clipped_rate(s[i], w[i], ss / ww, z2, ROBUST_MAX_ITER) if ww > 1e-9 else 0.0


@numba.njit(cache=True)
def spot_geometry(q_c, disk_r_q, nphi):
    """What :func:`_frame_spots` needs of the geometry alone, computed once per block rather than per frame:
    cos and sin of each sector's centre azimuth (n_phi,), and the angular half-width (rad) of the centroid region
    at each Q bin (2, nq), row 0 for the first pass (SPOT_REFINE_RADII disk radii), row 1 for the others
    (SPOT_CENTROID_RADII), NaN where the region holds the origin; the same expressions as they were inside the
    frame's loop, so the same values."""
    nq = q_c.size
    sector = 2.0 * math.pi / nphi
    cosk, sink = sector_directions(nphi)
    hw = np.empty((2, nq))
    for it in range(2):
        reg2 = (SPOT_REFINE_RADII if it == 0 else SPOT_CENTROID_RADII) ** 2 * disk_r_q * disk_r_q
        rad = math.sqrt(reg2)
        for i in range(nq):
            hw[it, i] = math.asin(min(1.0, rad / q_c[i])) + sector if q_c[i] > rad else np.nan
    return cosk, sink, hw


@numba.njit(cache=True)
def noted_widths(q_c, disk_r_q, nphi, widths):
    """The window width (sectors) of each Q bin, as :func:`sendmap.science.polar._band_windows` sets it, into
    ``widths`` (nq,): the widths :func:`_frame_spots` uses with noted candidate windows (geometry only)."""
    sector = 2.0 * math.pi / nphi
    for i in range(q_c.size):
        widths[i] = int(min(nphi, max(1, round(2.0 * disk_r_q / max(q_c[i], disk_r_q) / sector))))


@numba.njit(cache=True)
def spot_scratch(q_c, disk_r_q, nphi):
    """The significance map and widths :func:`_frame_spots` expects on entry (and leaves so): (nq, n_phi) NaN,
    and :func:`noted_widths`. Made once per thread, not per frame."""
    zmap = np.full((q_c.size, nphi), np.nan)
    widths = np.zeros(q_c.size, np.int64)
    noted_widths(q_c, disk_r_q, nphi, widths)
    return zmap, widths


@numba.njit(cache=True)
def _frame_spots(s, w, q_c, disk_r_q, z_min, out, zmap, widths, scratch, work, zf, rob, cand_ik, cand_z, n_cand,
                 cosk, sink, hw, row_s):
    """Spots of one frame into ``out`` (K, 4) (NaN-padded); returns the counts beyond 2 disk radii. ``cand_ik``,
    ``cand_z``: the windows at or above ``z_min`` the profile kernel noted (:func:`sendmap.science.polar.
    _frame_stats`), ``n_cand`` of them (< 0: none noted; more than they hold: overflow): the significance map is
    then not scored again. ``cosk``, ``sink``, ``hw``: :func:`spot_geometry` of q_c, disk_r_q and n_phi; ``row_s``
    (nq,) each bin's counts (:func:`row_sums` of s), whose sum over the bins beyond 2 disk radii is returned.
    ``zmap`` (nq, n_phi) and ``widths`` (nq,): as :func:`spot_scratch` makes them, and left so (only the noted
    windows are set, and cleared again: the map is not reset per frame, 6 of its 9 µs per listed 128² frame)."""
    nq, nphi = s.shape
    noted = 0 <= n_cand <= cand_ik.size
    total = _frame_spots_in(s, w, q_c, disk_r_q, z_min, out, zmap, widths, scratch, work, zf, rob, cand_ik, cand_z,
                            n_cand, cosk, sink, hw, row_s)
    if noted:
        zflat = zmap.reshape(nq * nphi)
        for c in range(n_cand):
            zflat[cand_ik[c]] = np.nan
    else:  # (_frame_spot_map wrote the whole map and its own widths)
        zmap[:, :] = np.nan
        noted_widths(q_c, disk_r_q, nphi, widths)
    return total


@numba.njit(cache=True)
def _frame_spots_in(s, w, q_c, disk_r_q, z_min, out, zmap, widths, scratch, work, zf, rob, cand_ik, cand_z, n_cand,
                    cosk, sink, hw, row_s):
    """:func:`_frame_spots` before its map is cleared again."""
    nq, nphi = s.shape
    kmax = out.shape[0]
    for a in range(kmax):
        for b in range(4):
            out[a, b] = np.nan
    sector = 2.0 * math.pi / nphi
    noted = 0 <= n_cand <= cand_ik.size
    if not noted:
        _frame_spot_map(s, w, q_c, disk_r_q, zmap, widths, scratch, work, zf)
    else:  # the noted windows only: the others are below z_min (NaN in the map on entry), which is all the
        # candidates below ask of them
        zflat = zmap.reshape(nq * nphi)  # (flat index i·n_phi + k)
        for c in range(n_cand):
            zflat[cand_ik[c]] = cand_z[c]
    total = 0.0  # (the bins' sums, which the caller has: one chain of additions over every cell took ~8 µs)
    for i in range(nq):
        if q_c[i] >= 2.0 * disk_r_q:
            total += row_s[i]
    # candidates: the local maxima of the significance at or above z_min, strongest first (room for every window
    # at or above z_min; each is tested once)
    # (where the windows at or above z_min were noted, in (i, k) order, only they are visited: the same windows in
    # the same order as the scan of the whole map)
    n_c = 0
    if noted:
        zflat = zmap.reshape(nq * nphi)
        for c in range(n_cand):
            if zflat[cand_ik[c]] >= z_min:
                n_c += 1
    else:
        for i in range(nq):
            for k in range(nphi):
                if zmap[i, k] >= z_min:
                    n_c += 1
    if n_c == 0:
        return total
    cz = np.empty(n_c)
    cx = np.empty(n_c)
    cy = np.empty(n_c)
    n_c = 0
    i = 0  # the flat indices ik = i·n_phi + k ascend: i follows them without a division
    row0 = 0
    if noted:
        # the noted windows' azimuthal test first, without branches (~half of them fail it, unpredictably), the
        # survivors kept in order; then the radial test of those: the same maxima in the same order
        zflat = zmap.reshape(nq * nphi)
        s_ik = np.empty(n_cand, np.int64)
        s_row = np.empty(n_cand, np.int64)
        n_s = 0
        for c in range(n_cand):
            ik = np.int64(cand_ik[c])
            while ik >= row0 + nphi:
                i += 1
                row0 += nphi
            k = ik - row0
            z = zflat[ik]
            kp = k + 1 - nphi * np.int64(k + 1 == nphi)
            km = k - 1 + nphi * np.int64(k == 0)
            ok = np.int64(z >= z_min) * (1 - np.int64(zflat[row0 + kp] > z)) * (1 - np.int64(zflat[row0 + km] > z))
            s_ik[n_s] = ik
            s_row[n_s] = i
            n_s += ok
        for a in range(n_s):
            i = s_row[a]
            k = s_ik[a] - i * nphi
            if _is_radial_max(zmap, widths, i, k, zmap[i, k]):
                phi = -math.pi + (k + 0.5 * widths[i]) * sector
                cz[n_c] = zmap[i, k]
                cx[n_c] = q_c[i] * math.cos(phi)
                cy[n_c] = q_c[i] * math.sin(phi)
                n_c += 1
    else:
        for c in range(nq * nphi):
            while c >= row0 + nphi:
                i += 1
                row0 += nphi
            k = c - row0
            if zmap[i, k] >= z_min and _is_local_max(zmap, widths, i, k):
                phi = -math.pi + (k + 0.5 * widths[i]) * sector
                cz[n_c] = zmap[i, k]
                cx[n_c] = q_c[i] * math.cos(phi)
                cy[n_c] = q_c[i] * math.sin(phi)
                n_c += 1
    if n_c == 0:
        return total
    cz = cz[:n_c]
    cx = cx[:n_c]
    cy = cy[:n_c]
    order = np.argsort(-cz)
    # a whole sector's pixel area in each bin: an annulus' area grows as Q, and the bins whose ring is whole (the
    # largest area / Q) give the constant
    wmax = np.zeros(nq)
    area_per_q = 0.0
    row_sums(w, wmax)  # (wmax holds the bins' areas until it is overwritten below)
    for i in range(nq):
        if q_c[i] > 0.0:
            area_per_q = max(area_per_q, wmax[i] / q_c[i])
    for i in range(nq):
        wmax[i] = area_per_q * q_c[i] / nphi
    excl2 = (SPOT_EXCLUSION_RADII * disk_r_q) ** 2
    bw = q_c[1] - q_c[0] if nq > 1 else 1.0
    reach = int(SPOT_REFINE_RADII * disk_r_q / bw) + 2
    # first pass: the local maxima (strongest first, none within the exclusion radius of a stronger one), up to
    # twice K (some are dropped below)
    n_pre = 0
    pre = np.empty(2 * kmax, np.int64)
    for c in order:
        if n_pre >= 2 * kmax:
            break
        near = False
        for a in range(n_pre):
            if (cx[pre[a]] - cx[c]) ** 2 + (cy[pre[a]] - cy[c]) ** 2 < excl2:
                near = True
                break
        if not near:
            pre[n_pre] = c
            n_pre += 1
    # the isotropic level of each bin (_isotropic_level) against the spots found
    z2 = ROBUST_Z_CLIP * ROBUST_Z_CLIP
    q_pre = np.empty(n_pre)
    kc_pre = np.empty(n_pre, np.int64)  # the sector holding each spot's azimuth
    for a in range(n_pre):
        q_pre[a] = math.sqrt(cx[pre[a]] ** 2 + cy[pre[a]] ** 2)
        kc_pre[a] = sector_of(cx[pre[a]], cy[pre[a]], nphi)
    pcx = np.empty(n_pre)
    pcy = np.empty(n_pre)
    for a in range(n_pre):
        pcx[a] = cx[pre[a]]
        pcy[a] = cy[pre[a]]
    covered = np.zeros(nphi, np.bool_)
    rob_ok = np.zeros(nq, np.bool_)  # the level of a bin is computed where a centroid region first needs it
    n_acc = 0
    acc_x = np.empty(kmax)
    acc_y = np.empty(kmax)
    for a_pre in range(n_pre):
        if n_acc >= kmax:
            break
        c = pre[a_pre]
        x0 = cx[c]
        y0 = cy[c]
        # centroid of the counts above the isotropic level within SPOT_REFINE_RADII disk radii, re-centred
        xs, ys, tot, cover, full = x0, y0, 0.0, 0.0, 0.0
        for it in range(SPOT_REFINE_ITER):
            reg2 = (SPOT_REFINE_RADII if it == 0 else SPOT_CENTROID_RADII) ** 2 * disk_r_q * disk_r_q
            q0 = math.sqrt(xs * xs + ys * ys)
            i0 = int(q0 / bw)
            sx = 0.0
            sy = 0.0
            st = 0.0
            cover = 0.0
            full = 0.0
            phi0 = math.atan2(ys, xs)
            rad = math.sqrt(reg2)
            for i in range(max(0, i0 - reach), min(nq, i0 + reach + 1)):
                dq = q_c[i] - q0
                if dq * dq > reg2:
                    continue  # (no cell of this bin is within the region)
                # the sectors within the region's angular half-width at this Q (all of them near the centre)
                if q_c[i] > rad:
                    h = hw[0 if it == 0 else 1, i]  # (spot_geometry)
                    k_lo = int(math.floor((phi0 - h + math.pi) / sector))
                    k_hi = int(math.floor((phi0 + h + math.pi) / sector))
                else:
                    k_lo = 0
                    k_hi = nphi - 1
                if k_hi - k_lo >= nphi:
                    k_lo = 0
                    k_hi = nphi - 1
                if not rob_ok[i]:
                    rob[i] = _isotropic_level(i, s, w, q_c, q_pre, kc_pre, pcx, pcy, excl2, cosk, sink, covered, z2)
                    rob_ok[i] = True
                ri = rob[i]
                k_next = _wrap(k_lo, nphi)
                for _ in range(k_lo, k_hi + 1):  # sectors k_lo … k_hi, modulo n_phi
                    k = k_next
                    k_next = k + 1 if k + 1 < nphi else 0
                    px = q_c[i] * cosk[k]
                    py = q_c[i] * sink[k]
                    if (px - xs) ** 2 + (py - ys) ** 2 > reg2:
                        continue
                    full += wmax[i]
                    wk = w[i, k]
                    cover += wk
                    if wk <= 1e-9:
                        continue
                    e = s[i, k] - ri * wk
                    sx += e * px
                    sy += e * py
                    st += e
            if it == 0:
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
def _spot_kernel(s, w, w_slot, frames, q_c, disk_r_q, z_min, out, totals, cand_ik, cand_z, n_cand):
    """Spots of the frames ``frames`` (indices into ``s``; their pixel areas are ``w[w_slot[f]]``) into out[j],
    totals[j] for the j-th of them; ``cand_ik[f]``, ``cand_z[f]``, ``n_cand[f]``: their noted candidate windows
    (n_cand of size 0: none noted)."""
    nq, nphi = s.shape[1], s.shape[2]
    noted = n_cand.size > 0
    cosk, sink, hw = spot_geometry(q_c, disk_r_q, nphi)
    for j in numba.prange(frames.size):
        f = frames[j]
        zmap, widths = spot_scratch(q_c, disk_r_q, nphi)
        scratch = np.empty((4, 2 * nphi))
        work = np.empty(2 * nq + 1)
        zf = np.empty(nphi, np.float32)
        rob = np.empty(nq)
        rs = np.empty(nq)
        row_sums(s[f], rs)
        row = f if noted else 0
        totals[j] = _frame_spots(s[f], w[w_slot[f]], q_c, disk_r_q, z_min, out[j], zmap, widths, scratch, work, zf,
                                 rob, cand_ik[row], cand_z[row], n_cand[f] if noted else -1, cosk, sink, hw, rs)


def spots_of_frames(s: np.ndarray, w: np.ndarray, w_slot: np.ndarray, frames: np.ndarray, q_centres: np.ndarray,
                    disk_radius_q: float, z_min: float = SPOT_Z_MIN,
                    max_spots: int = MAX_SPOTS, candidates: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`spot_block` of the frames ``frames`` of polar sums ``s`` (B, nq, n_phi) float64 whose pixel areas are
    ``w[w_slot[f]]`` (the profile kernel's per-centre areas, not copied per frame): for the profile stage, which
    lists the spots of a few candidate frames while their sums are in memory. ``candidates``: (cand_ik (B, C)
    int32, cand_z (B, C) float64, n_cand (B,)), the windows at or above ``z_min`` the profile kernel noted
    (:func:`sendmap.science.polar_tables.profile_block`): the same spots, without scoring the windows again."""
    frames = np.ascontiguousarray(frames, dtype=np.int64)
    out = np.empty((frames.size, int(max_spots), 4))
    totals = np.empty(frames.size)
    if candidates is None:
        candidates = (np.zeros((1, 0), np.int32), np.zeros((1, 0)), np.zeros(0, np.int64))
    if frames.size:
        _spot_kernel(s, w, np.ascontiguousarray(w_slot, dtype=np.int64), frames,
                     np.ascontiguousarray(q_centres, dtype=np.float64), float(disk_radius_q), float(z_min), out, totals,
                     *candidates)
    return out.astype(np.float32), totals


@numba.njit(parallel=True, cache=True)
def _map_kernel(s, w, q_c, disk_r_q, zmap, widths):
    nb, nq, nphi = s.shape
    for f in numba.prange(nb):
        scratch = np.empty((4, 2 * nphi))
        work = np.empty(2 * nq + 1)
        zf = np.empty(nphi, np.float32)
        _frame_spot_map(s[f], w[f], q_c, disk_r_q, zmap[f], widths[f], scratch, work, zf)


def spot_significance_map(s: np.ndarray, w: np.ndarray, q_centres: np.ndarray, disk_radius_q: float):
    """The window significance (σ) behind the spot list: (B, nq, n_phi) for the window centred at Q bin i that
    starts at sector k and spans ``widths`` (B, nq) sectors (NaN where not scored). Its maximum over the sectors is
    ``features/spot_z`` (:func:`sendmap.science.polar.frame_statistics`)."""
    s = np.ascontiguousarray(s, dtype=np.float64)
    zmap = np.empty(s.shape)
    widths = np.zeros(s.shape[:2], np.int64)
    _map_kernel(s, np.ascontiguousarray(w, dtype=np.float64), np.ascontiguousarray(q_centres, dtype=np.float64),
                float(disk_radius_q), zmap, widths)
    return zmap, widths


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
    every = np.arange(s.shape[0], dtype=np.int64)
    return spots_of_frames(s, w, every, every, q_c, disk_radius_q, z_min, max_spots)


SPOTS_ATTRS = {"fields": list(SPOT_FIELDS),
               "units": ["1/Å (Q = 1/d)", "rad, atan2(dy, dx) of the detector offset", "counts", "sigma"],
               "meaning": "Bragg-disk-sized spots per position, strongest first, NaN-padded "
                          "(sendmap.science.indexing.spot_block)",
               "z_min": SPOT_Z_MIN, "max_spots": MAX_SPOTS}
"""Attributes of a stored spot array (Ry, Rx, K, 4)."""


def profile_block_spots(out: dict, q_centres: np.ndarray, disk_radius_q: float, z_min: float = SPOT_Z_MIN,
                        max_spots: int = MAX_SPOTS) -> dict:
    """For the profile stage: :func:`spot_block` on the polar sums a ``profile_block(..., keep_sums=True)`` result
    ``out`` holds; pops them (``s``, ``w``: not stored) and adds ``spots`` (B, K, 4) float32 and
    ``spot_scattered`` (B,) to ``out``, which it returns."""
    sp, scat = spot_block(out.pop("s"), out.pop("w"), q_centres, disk_radius_q, z_min, max_spots)
    out["spots"] = sp
    out["spot_scattered"] = scat
    return out


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
def index_rings(phase_ids: tuple[str, ...] = INDEX_PHASES, q_max: float = 1.3,
                min_intensity: float = RING_MIN_INTENSITY) -> tuple[np.ndarray, np.ndarray, list]:
    """The rings of :func:`index_library` without its interplanar angles (half its ~0.1 s of CPU: the classify
    stage asks only which phase each ring's Q belongs to): (ring_q (R,) in 1/Å, ring_phase (R,) index into
    ``phase_ids``, [(hkl, intensity, forms)] per ring: its representative hkl, intensity (0-100 within its phase)
    and the hkl of every form on it)."""
    from .phases import get_phase

    q, ph, rest = [], [], []
    for i, pid in enumerate(phase_ids):
        for r in get_phase(pid).reflections(q_max, min_intensity=min_intensity):
            q.append(r.q_inv_angstrom)
            ph.append(i)
            rest.append((r.hkl, r.intensity, (r.hkl,) + tuple(r.overlaps)))
    ring_q, ring_phase = np.array(q, float), np.array(ph, np.int64)
    ring_q.flags.writeable = ring_phase.flags.writeable = False  # (cached: shared by every caller)
    return ring_q, ring_phase, rest


@functools.lru_cache(maxsize=16)
def index_library(phase_ids: tuple[str, ...] = INDEX_PHASES, q_max: float = 1.3,
                  min_intensity: float = RING_MIN_INTENSITY) -> IndexLibrary:
    """Rings (Q ≤ ``q_max`` 1/Å, intensity ≥ ``min_intensity`` of the phase's strongest: :func:`index_rings`) and
    interplanar angles of ``phase_ids``, computed by :mod:`sendmap.science.phases`."""
    from .phases import get_phase

    ring_q, ring_phase, rest = index_rings(phase_ids, q_max, min_intensity)
    ph = ring_phase.tolist()
    hkl = [r[0] for r in rest]
    inten = [r[1] for r in rest]
    forms = [r[2] for r in rest]
    n = len(ph)
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
    return IndexLibrary(tuple(phase_ids), ring_q.copy(), ring_phase.copy(),
                        np.array(hkl, np.int64).reshape(-1, 3), np.array(inten, float), angles)


def spot_position_sigma(z: np.ndarray, disk_radius_q: float, bin_width: float) -> np.ndarray:
    """1σ position error (1/Å, per Cartesian component) of spots detected at significance ``z`` (σ):
    √((:data:`SPOT_POSITION_C`·r/z)² + (:data:`SPOT_POSITION_FLOOR_BINS`·bin_width)²).

    >>> round(float(spot_position_sigma(np.array(29.0), 0.08, 0.0125)), 4)
    0.0044
    """
    zz = np.maximum(np.nan_to_num(np.asarray(z, dtype=np.float64), nan=1.0), 1.0)
    return np.hypot(SPOT_POSITION_C * disk_radius_q / zz, SPOT_POSITION_FLOOR_BINS * bin_width)


# ------------------------------------------------------------------------------------------------ indexing

@numba.njit(cache=True)
def _index_one(qs, gx, gy, sg, ring_q, ring_phase, angles, n_phase, rel, nsig, max_order, n_basis, match, lat_member,
               res):
    """Indexing of one position's n valid spots (sorted by Q; sg their 1σ position errors, 1/Å). match (n, n_phase)
    out: |Q − Q_ring|/σ of the nearest ring of each phase within nsig σ, inf elsewhere; lat_member (n,) out;
    res: [n_friedel, n_lattice, n_lattice_2d, lattice_phase, n_lattice_indexed, q1, q2, angle_deg]."""
    n = qs.size
    nr = ring_q.size
    inf = np.inf
    # ring matches: |Q − Q_ring| ≤ nsig·√((Q_ring·rel)² + σ²)
    for k in range(n):
        for p in range(n_phase):
            match[k, p] = inf
        for r in range(nr):
            d = abs(qs[k] - ring_q[r]) / math.sqrt((ring_q[r] * rel) ** 2 + sg[k] * sg[k])
            if d <= nsig and d < match[k, ring_phase[r]]:
                match[k, ring_phase[r]] = d
    # Friedel pairs: |g + g'| ≤ nsig·√(σ² + σ'²)
    n_fr = 0
    for k in range(n):
        for m in range(k + 1, n):
            if math.hypot(gx[k] + gx[m], gy[k] + gy[m]) <= nsig * math.sqrt(sg[k] ** 2 + sg[m] ** 2):
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
    nb = min(n, n_basis)
    best = (-1.0, -1.0, -1.0, -1.0, -np.inf)
    member = np.zeros(n, np.bool_)
    # whether each basis candidate lies on each ring (the zone check below asks it of every pair: once per spot and
    # ring here, not once per pair)
    on_ring = np.empty((nb, nr), np.bool_)
    for k in range(nb):
        for r in range(nr):
            on_ring[k, r] = not (abs(qs[k] - ring_q[r]) > nsig * math.sqrt((ring_q[r] * rel) ** 2 + sg[k] ** 2))
    for i in range(nb):
        for j in range(i + 1, nb):
            ax, ay, bx, by = gx[i], gy[i], gx[j], gy[j]
            cross = ax * by - ay * bx
            # non-collinear: b's distance from the line of a beyond its error
            if abs(cross) / qs[i] <= nsig * math.sqrt(sg[i] ** 2 + sg[j] ** 2):
                continue
            n_ex = 0
            n_2d = 0
            for k in range(n):
                mm = (gx[k] * by - gy[k] * bx) / cross
                nn = (ax * gy[k] - ay * gx[k]) / cross
                mi = round(mm)
                ni = round(nn)
                member[k] = False
                if abs(mi) > max_order or abs(ni) > max_order:
                    continue
                rx = gx[k] - mi * ax - ni * bx
                ry = gy[k] - mi * ay - ni * by
                tol = nsig * math.sqrt(sg[k] ** 2 + (mi * sg[i]) ** 2 + (ni * sg[j]) ** 2)
                if k == i or k == j or math.hypot(rx, ry) <= tol:
                    member[k] = True
                    n_ex += 1
                    if mi != 0 and ni != 0:
                        n_2d += 1
            # zone consistency: a and b on rings r1, r2 of one phase, at one of its interplanar angles
            ang = math.degrees(math.acos(min(1.0, max(-1.0, (ax * bx + ay * by) / (qs[i] * qs[j])))))
            dang = math.degrees(nsig * math.sqrt((sg[i] / qs[i]) ** 2 + (sg[j] / qs[j]) ** 2))
            zone_phase = -1
            n_idx = 0
            chi2 = np.inf
            for r1 in range(nr):
                if not on_ring[i, r1]:
                    continue
                for r2 in range(nr):
                    if ring_phase[r2] != ring_phase[r1]:
                        continue
                    if not on_ring[j, r2]:
                        continue
                    for a in range(angles.shape[2]):
                        v = angles[r1, r2, a]
                        if v == v and abs(v - ang) <= dang:
                            p = ring_phase[r1]
                            cnt = 0
                            c2 = 0.0
                            for k in range(n):
                                if member[k] and match[k, p] <= nsig:
                                    cnt += 1
                                    c2 += match[k, p] ** 2
                            # the phase indexing most lattice spots, then the one closest to their rings
                            if cnt > n_idx or (cnt == n_idx and c2 < chi2):
                                n_idx = cnt
                                chi2 = c2
                                zone_phase = p
                            break
            key = (1.0 if zone_phase >= 0 else 0.0, float(n_idx), float(n_ex), float(n_2d), -chi2)
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
def _index_kernel(spots, sigma, ring_q, ring_phase, angles, n_phase, rel, nsig, max_order, n_basis, match_out,
                  lat_out, res_out):
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
                match_out[t, k, p] = np.inf
            lat_out[t, k] = False
        res = np.empty(8)
        res[0] = 0
        res[1] = 0
        res[2] = 0
        res[3] = -1
        res[4] = 0
        for c in range(5, 8):
            res[c] = np.nan
        if n > 0:
            qv = np.empty(n)
            for a in range(n):
                qv[a] = spots[t, idx[a], 0]
            o = np.argsort(qv)
            qs = np.empty(n)
            gx = np.empty(n)
            gy = np.empty(n)
            sg = np.empty(n)
            for a in range(n):
                k = idx[o[a]]
                qs[a] = spots[t, k, 0]
                gx[a] = qs[a] * math.cos(spots[t, k, 1])
                gy[a] = qs[a] * math.sin(spots[t, k, 1])
                sg[a] = sigma[t, k]
            match = np.empty((n, n_phase))
            member = np.zeros(n, np.bool_)
            _index_one(qs, gx, gy, sg, ring_q, ring_phase, angles, n_phase, rel, nsig, max_order, n_basis, match,
                       member, res)
            for a in range(n):
                k = idx[o[a]]
                lat_out[t, k] = member[a]
                for p in range(n_phase):
                    match_out[t, k, p] = match[a, p]
        for c in range(8):
            res_out[t, c] = res[c]


def index_spots(spots: np.ndarray, disk_radius_q: float, bin_width: float, q_rel_err: float = Q_CALIBRATION_REL,
                library: IndexLibrary | None = None, n_sigma: float = N_SIGMA) -> dict[str, np.ndarray]:
    """Indexing evidence per position from spot arrays (..., K, 4) (:func:`spot_block`; NaN rows are empty).

    Errors: each spot's position error (:func:`spot_position_sigma` of its z, for the probe-disk radius
    ``disk_radius_q`` and the radial ``bin_width``, 1/Å) and the relative Q-scale error ``q_rel_err`` of the
    calibration (its q_pixel_size_err / q_pixel_size where measured, else :data:`Q_CALIBRATION_REL`); every match
    is within ``n_sigma`` of their combination. Returns, over the leading axes (...):

    * ``match_sigma`` (..., K, P): |Q − Q_ring|/σ of the nearest ring of phase p (``library.phase_ids``) where
      ≤ ``n_sigma``, inf elsewhere; ``match`` (..., K, P) bool: finite;
    * ``n_spots``, ``n_indexed`` (on some ring), ``n_unindexed``, ``n_friedel`` (pairs with g + g' ≈ 0);
    * the best lattice: ``lattice_member`` (..., K) bool, ``n_lattice`` (spots that are integer combinations
      m·a + n·b, |m|, |n| ≤ :data:`MAX_ORDER`, of a basis a, b of two of the :data:`N_BASIS` shortest spots),
      ``n_lattice_2d`` (of those, with m ≠ 0 and n ≠ 0: a net, not two rows), ``lattice_phase`` (the phase whose
      rings hold both basis spots at one of its interplanar angles, -1 none: the zone check),
      ``n_lattice_indexed`` (lattice spots on that phase's rings), ``lattice_q1``, ``lattice_q2`` (1/Å) and
      ``lattice_angle`` (degrees) of the basis;
    * ``lattice_two_rings``: the lattice spots lie on at least two rings (|g| differing by more than their error);
    * ``has_lattice`` bool: a zone-consistent net, ≥ 3 lattice spots on the zone's phase, ≥ 1 off the basis rows,
      on ≥ 2 rings (a net on one ring can be the chance arrangement of several crystallites' spots).

    Bases are ranked by (zone-consistent, lattice spots indexed on the zone's phase, lattice spots, net spots).
    """
    lib = library if library is not None else index_library()
    sp = np.asarray(spots, dtype=np.float64)
    if sp.ndim < 2 or sp.shape[-1] != len(SPOT_FIELDS):
        raise ValueError(f"spots must be (..., K, {len(SPOT_FIELDS)}) with columns {SPOT_FIELDS}, got {sp.shape}")
    lead = sp.shape[:-2]
    k = sp.shape[-2]
    flat = np.ascontiguousarray(sp.reshape(-1, k, sp.shape[-1]))
    sigma = np.ascontiguousarray(spot_position_sigma(flat[..., 3], disk_radius_q, bin_width))
    npos = flat.shape[0]
    n_phase = len(lib.phase_ids)
    match = np.zeros((npos, k, n_phase))
    lat = np.zeros((npos, k), np.bool_)
    res = np.zeros((npos, 8))
    _index_kernel(flat, sigma, lib.ring_q, lib.ring_phase, np.ascontiguousarray(lib.angles), n_phase, float(q_rel_err),
                  float(n_sigma), MAX_ORDER, N_BASIS, match, lat, res)
    valid = np.isfinite(flat[..., 0])
    indexed = np.isfinite(match).any(axis=-1) & valid
    out = {
        "match_sigma": match.reshape(*lead, k, n_phase),
        "match": np.isfinite(match).reshape(*lead, k, n_phase),
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
    # a net on one ring is no zone: the spots of several crystallites on one ring (LiF (220) of SEI Type 2) can
    # close a chance net; a zone shows reflections of two orders or families (|g| apart by more than their error)
    mem = lat & valid
    qm = np.where(mem, flat[..., 0], np.nan)
    with np.errstate(invalid="ignore"):
        i_hi = np.argmax(np.where(mem, qm, -np.inf), axis=-1)
        i_lo = np.argmin(np.where(mem, qm, np.inf), axis=-1)
    ar = np.arange(npos)
    spread = flat[ar, i_hi, 0] - flat[ar, i_lo, 0]
    two_rings = mem.any(axis=-1) & (spread > n_sigma * np.hypot(sigma[ar, i_hi], sigma[ar, i_lo]))
    out["lattice_two_rings"] = two_rings.reshape(lead)
    out["has_lattice"] = ((out["lattice_phase"] >= 0) & (out["n_lattice_indexed"] >= 3) & (out["n_lattice_2d"] >= 1)
                          & out["lattice_two_rings"])
    return out


# ------------------------------------------------------------------------------------------------ decision

def crystal_evidence(spots: np.ndarray, scattered: np.ndarray, disk_radius_q: float, bin_width: float,
                     q_rel_err: float = Q_CALIBRATION_REL, library: IndexLibrary | None = None,
                     n_sigma: float = N_SIGMA, grain_phases: tuple[str, ...] = GRAIN_PHASES, lif_phase: str = "lif",
                     amorphous_grain_max: float = AMORPHOUS_GRAIN_MAX,
                     amorphous_lif_min: float = AMORPHOUS_LIF_MIN) -> dict[str, np.ndarray]:
    """Crystal (Li/Cu grain) versus LiF crystallites per position, from spots (..., K, 4) (:func:`spot_block`) and
    the counts at Q ≥ 2 disk radii ``scattered`` (...,); everything of :func:`index_spots` plus:

    * ``amorphous_share``: 1 − (intensity of the spots at Q ≥ 2 disk radii) / ``scattered``: the isotropic share
      of the scattered intensity (≈ 0.3 for a grain at a zone axis, ≥ 0.6 for SEI Type 2, 1 for an isotropic
      pattern);
    * ``phase_share`` (..., P): the share of the spots' intensity each phase explains. A spot's weight goes to the
      phases whose rings it lies on in proportion to the Gaussian likelihood exp(−d²/2) of its distance d (in σ)
      from their nearest ring; a member of a zone net (``has_lattice``) goes wholly to the lattice's phase; the part
      of a spot that could be a grain phase's or LiF's (LiF (220) 0.702 / Li (211) 0.698; LiF (200) 0.497 /
      Cu (111) 0.479 when the spot's Q error exceeds ~1/3 of their 0.018 1/Å, i.e. below ~25 σ) is split by Bayes'
      rule: the two likelihoods times a prior from the amorphous share, LiF's prior 0 below
      ``amorphous_grain_max``, 1 above ``amorphous_lif_min``, linear between (:data:`AMORPHOUS_GRAIN_MAX`). So a
      weak spot that Q cannot place goes to the grain on a pattern dominated by Bragg disks and to LiF on one
      dominated by isotropic scattering — including a weak off-axis grain's lone pair on a bare diffuse background
      (a limit of this position's evidence: the neighbours must decide there);
    * ``crystal_score`` = the grain phases' share (1 with a zone-consistent grain lattice, 0 with a LiF one),
      ``lif_score`` = LiF's share (1 with a LiF lattice, 0 with a grain one), ``other_score``,
      ``unindexed_share``;
    * ``crystal_z``, ``lif_z``: the largest significance of a spot given mostly to a grain phase, to LiF (0 where
      none): how sure the detection is, for a classifier's noise model;
    * ``category`` (int8, :data:`CATEGORY_NAMES`): no_spots; a zone lattice names its phase (grain / lif /
      other_phase); else the group holding more than half of the spots' intensity (lif, unindexed, other_phase;
      grain only where the amorphous share is below ``amorphous_lif_min`` or a grain spot reaches
      :data:`GRAIN_Z_ISOTROPIC`); else ambiguous.

    No input of the decision scales with the dose (shares, Q and geometry): a weak grain and a strong one, a faint
    LiF crystallite and a dominant one, get the same category once their spots are detected; only the Q
    tolerance of a spot narrows as its significance grows.
    """
    lib = library if library is not None else index_library()
    sp = np.asarray(spots, dtype=np.float64)
    ev = index_spots(sp, disk_radius_q, bin_width, q_rel_err, lib, n_sigma)
    # (NaN → a value by np.where, not np.nan_to_num, which also tests for infinities: ~0.1 µs per pattern each; spot
    # fields and shares are finite or NaN)
    q, z = sp[..., 0], np.where(np.isnan(sp[..., 3]), 0.0, sp[..., 3])
    valid = np.isfinite(q)
    inten = np.where(valid, np.clip(np.where(np.isnan(sp[..., 2]), 0.0, sp[..., 2]), 0.0, None), 0.0)
    far = valid & (q >= 2.0 * disk_radius_q)
    scat = np.asarray(scattered, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        amorph = np.where(scat > 0, np.clip(1.0 - (inten * far).sum(axis=-1) / np.where(scat > 0, scat, 1.0), 0.0,
                                            1.0), np.nan)
    amorph_or_1 = np.where(np.isnan(amorph), 1.0, amorph)
    ids = lib.phase_ids
    grain_idx = [ids.index(p) for p in grain_phases if p in ids]
    lif_idx = ids.index(lif_phase) if lif_phase in ids else -1
    other_idx = [i for i in range(len(ids)) if i not in grain_idx and i != lif_idx]
    weights = np.exp(-0.5 * np.minimum(ev["match_sigma"], 1e3) ** 2) * ev["match"]
    # a lattice member goes wholly to the lattice's phase
    lp = ev["lattice_phase"]
    lp_k = np.broadcast_to(np.clip(lp, 0, None)[..., None, None], weights.shape[:-1] + (1,))
    member = (ev["lattice_member"] & ev["has_lattice"][..., None]
              & np.take_along_axis(ev["match"], lp_k, axis=-1)[..., 0])
    onehot = np.zeros(weights.shape)
    np.put_along_axis(onehot, lp_k, 1.0, axis=-1)
    weights = np.where(member[..., None], onehot, weights)
    # the grain-or-LiF part of a spot: split by the isotropic share
    if lif_idx >= 0 and grain_idx:
        wg = weights[..., grain_idx]
        g_sum = wg.sum(axis=-1)
        both = (g_sum > 0) & (weights[..., lif_idx] > 0) & ~member
        span = max(amorphous_lif_min - amorphous_grain_max, 1e-9)
        to_lif = np.clip((amorph_or_1 - amorphous_grain_max) / span, 0.0, 1.0)[..., None]
        # Bayes: the likelihoods of the rings times the prior (LiF: to_lif, grain: 1 − to_lif)
        post_l = weights[..., lif_idx] * to_lif
        post_g = wg * (1.0 - to_lif)[..., None]
        norm = post_l + post_g.sum(axis=-1)
        pool = g_sum + weights[..., lif_idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.where(norm > 0, pool / np.where(norm > 0, norm, 1.0), 0.0)
        weights[..., lif_idx] = np.where(both, post_l * f, weights[..., lif_idx])
        weights[..., grain_idx] = np.where(both[..., None], post_g * f[..., None], wg)
    rows = weights.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = np.where(rows > 0, weights / np.where(rows > 0, rows, 1.0), 0.0)
    total = inten.sum(axis=-1)
    safe = np.where(total > 0, total, 1.0)
    share = np.where(total[..., None] > 0, (weights * inten[..., None]).sum(axis=-2) / safe[..., None], 0.0)
    unindexed = np.where(total > 0, (inten * (valid & (rows[..., 0] == 0))).sum(axis=-1) / safe, 0.0)
    crystal_score = share[..., grain_idx].sum(axis=-1) if grain_idx else np.zeros(total.shape)
    lif_score = share[..., lif_idx] if lif_idx >= 0 else np.zeros(total.shape)
    other_score = share[..., other_idx].sum(axis=-1) if other_idx else np.zeros(total.shape)
    lattice = ev["has_lattice"]
    lat_grain = lattice & np.logical_or.reduce([lp == g for g in grain_idx] + [np.zeros(lp.shape, bool)])
    lat_lif = lattice & (lp == lif_idx)
    lat_other = lattice & ~lat_grain & ~lat_lif
    crystal_score = np.where(lat_grain, 1.0, np.where(lattice, 0.0, crystal_score))
    lif_score = np.where(lat_lif, 1.0, np.where(lattice, 0.0, lif_score))
    other_score = np.where(lat_other, 1.0, np.where(lattice, 0.0, other_score))
    gw = weights[..., grain_idx].sum(axis=-1) if grain_idx else np.zeros(z.shape)
    lw = weights[..., lif_idx] if lif_idx >= 0 else np.zeros(z.shape)
    crystal_z = np.where(valid & (gw > 0.5), z, 0.0).max(axis=-1)
    lif_z = np.where(valid & (lw > 0.5), z, 0.0).max(axis=-1)
    n = ev["n_spots"]
    cat = np.full(n.shape, AMBIGUOUS, np.int8)
    # a grain (lattice or not) on a pattern dominated by isotropic scattering needs a spot strong enough that its
    # Q alone excludes LiF (GRAIN_Z_ISOTROPIC): weak spots there, even in a net, are as likely speckle (Friedel-
    # symmetric, so it forms pairs and chance nets) or LiF
    bragg_dominated = amorph_or_1 < amorphous_lif_min
    cat[(crystal_score > 0.5) & (bragg_dominated | (crystal_z >= GRAIN_Z_ISOTROPIC))] = GRAIN
    cat[lif_score > 0.5] = LIF
    cat[other_score > 0.5] = OTHER_PHASE
    cat[unindexed > 0.5] = UNINDEXED
    cat[n == 0] = NO_SPOTS
    ev.update(amorphous_share=amorph, phase_share=share, crystal_score=crystal_score, lif_score=lif_score,
              other_score=other_score, unindexed_share=unindexed, crystal_z=crystal_z, lif_z=lif_z, category=cat)
    return ev
