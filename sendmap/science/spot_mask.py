"""The spot-masked azimuthal mean: a frame's radial profile without the polar cells its listed Bragg disks cover.

A grain (Li, Cu) or LiF crystallite in a pattern puts Bragg disks of the probe's radius r on its rings; those near
the amorphous SRO ring (Li (110) at 0.403 1/Å reaches down to 0.32 with r ≈ 0.08) pull the azimuthal mean's
maximum towards them. The profile kernel already lists each frame's disks (:mod:`sendmap.science.indexing`: Q,
azimuth, intensity, z) from its polar sums ``s`` (nq, n_phi); :func:`masked_profile` averages, per radial bin, only
the (bin, sector) cells no listed disk reaches, weighted by their pixel areas as the mean is, from the same sums
(no second pass over the pixels). Each listed disk's Friedel mate (−g) is masked too (Friedel's law: a grain in a
zone axis scatters into g and −g alike, so the mate of a disk listed just above the threshold is there, often just
below it).

A cell (bin i, sector k: centre at Q = q_c[i], azimuth −π + (k + ½)·2π/n_phi, the convention of the spot list's
azimuth, atan2(dy, dx)) is covered by a spot at (Q_s, φ_s) where the distance between the cell's centre and the
spot's centre in the detector plane is at most r + the cell's half diagonal (√((Δq/2)² + (Q·Δφ/2)²): a cell any
part of which may overlap the disk) + half a detector pixel's diagonal (q_pixel·√2/2: a pixel straddling the disk
edge spreads its counts over all of its sub-pixels, up to that far outside the edge). The rule is therefore
conservative: it drops every cell that can hold disk counts, so the masked mean is the isotropic ring's mean
(unbiased for an isotropic ring: the kept cells are a subset chosen without looking at their counts) with fewer
pixels.

Its standard error: the mean's, with both parts scaled to the kept area share f = W_kept / W: the Poisson variance
I·ΣW_p²/W² becomes I_m·ΣW_p²/(W²·f) (pixels of equal weight in every sector, so ΣW_p² scales with the area) and
the speckle part (sem² − Poisson) × (I_m / I)² / f (fewer independent speckle volumes in the kept part of the
ring; exact where the ring holds many speckles, G ≪ 1). Where every cell of a bin is covered the bin keeps the
plain mean and its sem (no better estimate exists there; such bins are rare: the 6 Li disks of a [111] grain on
the 0.40 1/Å ring cover about half of it). Bins no spot reaches keep the mean and its sem bit for bit.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .ring_sectors import mark_sectors_within, sector_directions, sector_of

PIXEL_HALF_DIAGONAL = math.sqrt(2.0) / 2.0
"""Half a detector pixel's diagonal, in pixels: how far outside a disk's edge a sub-pixel can carry its counts
(the counts of a pixel the edge crosses are spread over all of its sub-pixels, :mod:`sendmap.science.polar`)."""


@numba.njit(cache=True, inline="always")
def _masked_bin(i, S, W, Wk, w2, mean, sem, out_mean, out_sem):
    """Bin i's masked mean and sem into out_mean[i], out_sem[i] from its kept cells' counts S and area Wk and its
    whole area W (:func:`masked_profile`); returns 1 if they changed, 0 where the plain ones stay (every cell
    covered, an empty bin, or none covered)."""
    if Wk <= 1e-9 or W <= 1e-9 or Wk >= W * (1.0 - 1e-12):
        return 0
    m = S / Wk
    f = Wk / W
    var = m * w2[i] / (W * W * f)
    m0 = mean[i]
    if m0 > 0.0 and sem[i] == sem[i]:
        extra = sem[i] * sem[i] - m0 * w2[i] / (W * W)
        if extra > 0.0:
            var += extra * (m / m0) ** 2 / f
    out_mean[i] = m
    out_sem[i] = math.sqrt(max(var, 0.0))
    return 1


@numba.njit(cache=True, nogil=True)
def masked_profile(s, w, w2, mean, sem, q_c, spots, disk_r_q, pixel_margin_q, out_mean, out_sem, friedel=True):
    """Spot-masked mean and its sem of one frame (:func:`masked_profile_dirs` with the sector directions of
    :func:`sendmap.science.ring_sectors.sector_directions` made here)."""
    cosk, sink = sector_directions(s.shape[1])
    return masked_profile_dirs(s, w, w2, mean, sem, q_c, spots, disk_r_q, pixel_margin_q, out_mean, out_sem, friedel,
                               cosk, sink)


@numba.njit(cache=True, nogil=True)
def masked_profile_dirs(s, w, w2, mean, sem, q_c, spots, disk_r_q, pixel_margin_q, out_mean, out_sem, friedel, cosk,
                        sink):
    """Spot-masked mean and its sem of one frame into ``out_mean``, ``out_sem`` (nq,).

    s, w: (nq, n_phi) polar sums (counts/ss², pixel areas) of the frame; w2 (nq,) Σw² per bin; mean, sem (nq,)
    its azimuthal mean and sem (counts per pixel; :func:`sendmap.science.polar._frame_stats`); q_c (nq,) bin
    centres (1/Å, Q = 1/d, uniform bins); spots (K, ≥ 2) the frame's listed spots (Q 1/Å, azimuth rad, …), NaN
    rows unused; disk_r_q: probe-disk radius (1/Å); pixel_margin_q: the pixel margin (1/Å, q_pixel_size ·
    :data:`PIXEL_HALF_DIAGONAL`); friedel: also mask each spot's Friedel mate (−g). See the module docstring for
    the cover rule and the error. ``cosk``, ``sink`` (n_phi,): :func:`sendmap.science.ring_sectors.
    sector_directions` (made once per block by the profile kernel, not per frame: 144 cos and sin, ~3 µs per listed
    frame). Returns the number of bins that changed."""
    nq, nphi = s.shape
    sector = 2.0 * math.pi / nphi
    bw = q_c[1] - q_c[0] if nq > 1 else 1.0
    n_sp = 0
    for a in range(spots.shape[0]):
        if spots[a, 0] == spots[a, 0]:  # not NaN
            n_sp += 1
    # each listed spot and, by Friedel's law, its mate at −g (kinematic |F(g)| = |F(−g)|: a grain in a zone puts a
    # disk at both; the mate of a weak listed disk is often just below the listing threshold)
    n_all = 2 * n_sp if friedel else n_sp
    sx = np.empty(n_all)
    sy = np.empty(n_all)
    sq = np.empty(n_all)
    j = 0
    for a in range(spots.shape[0]):
        if spots[a, 0] == spots[a, 0]:
            sq[j] = spots[a, 0]
            sx[j] = spots[a, 0] * math.cos(spots[a, 1])
            sy[j] = spots[a, 0] * math.sin(spots[a, 1])
            if friedel:
                sq[j + n_sp] = sq[j]
                sx[j + n_sp] = -sx[j]
                sy[j + n_sp] = -sy[j]
            j += 1
    n_sp = n_all
    near = np.empty(n_sp, np.int64)
    kc = np.empty(n_sp, np.int64)  # the sector holding each (mate's) azimuth
    for a in range(n_sp):
        kc[a] = sector_of(sx[a], sy[a], nphi)
    covered = np.empty((nq, nphi), np.bool_)  # rows of the bins in ``todo``: their cells within reach of a spot
    todo = np.empty(nq, np.int64)  # the bins with such a cell
    n_todo = 0
    changed = 0
    if n_sp == 0:
        out_mean[:] = mean
        out_sem[:] = sem
        return 0
    for i in range(nq):
        out_mean[i] = mean[i]
        out_sem[i] = sem[i]
        q = q_c[i]
        reach = disk_r_q + math.sqrt((0.5 * bw) ** 2 + (0.5 * q * sector) ** 2) + pixel_margin_q
        n_near = 0  # the spots within reach of this bin's ring
        for a in range(n_sp):
            if abs(q - sq[a]) <= reach:
                near[n_near] = a
                n_near += 1
        if n_near == 0:
            continue
        r2 = reach * reach
        # a cell is left out where its centre is within reach of a spot (the walk from the spot's sector:
        # sendmap.science.ring_sectors)
        cov = covered[n_todo]
        for k in range(nphi):
            cov[k] = False
        n_cov = 0
        for b in range(n_near):
            a = near[b]
            n_cov += mark_sectors_within(q, sx[a], sy[a], kc[a], r2, True, cosk, sink, cov)
        if n_cov == 0:
            continue  # no cell covered: the plain mean and sem (as set above)
        todo[n_todo] = i
        n_todo += 1
    # the kept cells' sums of those bins, each in sector order from 0.0, four bins at a time (four independent
    # chains of additions: one alone waits for each sum before the next add)
    j = 0
    while j + 4 <= n_todo:
        i0, i1, i2, i3 = todo[j], todo[j + 1], todo[j + 2], todo[j + 3]
        c0, c1, c2, c3 = covered[j], covered[j + 1], covered[j + 2], covered[j + 3]
        S0 = W0 = K0 = 0.0
        S1 = W1 = K1 = 0.0
        S2 = W2 = K2 = 0.0
        S3 = W3 = K3 = 0.0
        for k in range(nphi):
            W0 += w[i0, k]
            W1 += w[i1, k]
            W2 += w[i2, k]
            W3 += w[i3, k]
            if not c0[k]:
                S0 += s[i0, k]
                K0 += w[i0, k]
            if not c1[k]:
                S1 += s[i1, k]
                K1 += w[i1, k]
            if not c2[k]:
                S2 += s[i2, k]
                K2 += w[i2, k]
            if not c3[k]:
                S3 += s[i3, k]
                K3 += w[i3, k]
        changed += _masked_bin(i0, S0, W0, K0, w2, mean, sem, out_mean, out_sem)
        changed += _masked_bin(i1, S1, W1, K1, w2, mean, sem, out_mean, out_sem)
        changed += _masked_bin(i2, S2, W2, K2, w2, mean, sem, out_mean, out_sem)
        changed += _masked_bin(i3, S3, W3, K3, w2, mean, sem, out_mean, out_sem)
        j += 4
    while j < n_todo:
        i = todo[j]
        cov = covered[j]
        S = 0.0
        W = 0.0
        Wk = 0.0
        for k in range(nphi):
            W += w[i, k]
            if not cov[k]:
                S += s[i, k]
                Wk += w[i, k]
        changed += _masked_bin(i, S, W, Wk, w2, mean, sem, out_mean, out_sem)
        j += 1
    return changed
