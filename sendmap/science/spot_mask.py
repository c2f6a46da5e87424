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

PIXEL_HALF_DIAGONAL = math.sqrt(2.0) / 2.0
"""Half a detector pixel's diagonal, in pixels: how far outside a disk's edge a sub-pixel can carry its counts
(the counts of a pixel the edge crosses are spread over all of its sub-pixels, :mod:`sendmap.science.polar`)."""


@numba.njit(cache=True, nogil=True)
def masked_profile(s, w, w2, mean, sem, q_c, spots, disk_r_q, pixel_margin_q, out_mean, out_sem, friedel=True):
    """Spot-masked mean and its sem of one frame into ``out_mean``, ``out_sem`` (nq,).

    s, w: (nq, n_phi) polar sums (counts/ss², pixel areas) of the frame; w2 (nq,) Σw² per bin; mean, sem (nq,)
    its azimuthal mean and sem (counts per pixel; :func:`sendmap.science.polar._frame_stats`); q_c (nq,) bin
    centres (1/Å, Q = 1/d, uniform bins); spots (K, ≥ 2) the frame's listed spots (Q 1/Å, azimuth rad, …), NaN
    rows unused; disk_r_q: probe-disk radius (1/Å); pixel_margin_q: the pixel margin (1/Å, q_pixel_size ·
    :data:`PIXEL_HALF_DIAGONAL`); friedel: also mask each spot's Friedel mate (−g). See the module docstring for
    the cover rule and the error. Returns the number of bins that changed."""
    nq, nphi = s.shape
    tiny = 1e-9
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
    cosk = np.empty(nphi)  # sector centres' azimuth: −π + (k + ½)·2π/n_phi
    sink = np.empty(nphi)
    for k in range(nphi):
        cosk[k] = math.cos(-math.pi + (k + 0.5) * sector)
        sink[k] = math.sin(-math.pi + (k + 0.5) * sector)
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
        S = 0.0
        W = 0.0
        Wk = 0.0
        r2 = reach * reach
        for k in range(nphi):
            W += w[i, k]
            cx = q * cosk[k]
            cy = q * sink[k]
            cov = False
            for b in range(n_near):
                a = near[b]
                if (cx - sx[a]) ** 2 + (cy - sy[a]) ** 2 <= r2:
                    cov = True
                    break
            if not cov:
                S += s[i, k]
                Wk += w[i, k]
        if Wk <= tiny or W <= tiny or Wk >= W * (1.0 - 1e-12):
            continue  # every cell covered (plain mean kept), an empty bin, or no cell covered
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
        changed += 1
    return changed
