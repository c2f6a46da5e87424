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


def disk_profile(q: np.ndarray, q_spot: float, disk_radius_q: float) -> np.ndarray:
    """(nq,) shape of one Bragg disk (uniform, radius ``disk_radius_q`` = α/λ, 1/Å, centred at ``q_spot``) in an
    I·Q¹ azimuthal-mean profile on the bins ``q``: the ring of radius Q crosses the disk along a chord of length
    2√(r² − (Q − Q_s)²) (for r ≪ Q_s), the mean divides it by 2πQ and the profile multiplies by Q, so the shape is
    √(r² − (Q − Q_s)²), scaled to 1 at its centre; 0 beyond the disk.

    >>> disk_profile(np.array([0.30, 0.40, 0.45, 0.50]), 0.40, 0.08).round(3).tolist()
    [0.0, 1.0, 0.781, 0.0]
    """
    q = np.asarray(q, dtype=float)
    r = float(disk_radius_q)
    return np.sqrt(np.clip(r * r - (q - float(q_spot)) ** 2, 0.0, None)) / r


def disk_amplitude_map(q: np.ndarray, sem: np.ndarray, centre_q: float, half_width, degree: int,
                       shapes: np.ndarray) -> np.ndarray:
    """(K, nq) linear maps c_k of the amplitudes â_k = c_k·y of the disks ``shapes`` (K, nq) in a weighted (1/``sem``)
    least-squares fit of a polynomial of ``degree`` in (Q − ``centre_q``) plus the K shapes over [centre_q − left,
    centre_q + right] (``half_width`` a number or (left, right), 1/Å); zero where the range holds too few bins."""
    q = np.asarray(q, dtype=float)
    shapes = np.atleast_2d(np.asarray(shapes, dtype=float))
    left, right = (half_width, half_width) if np.isscalar(half_width) else half_width
    sem = np.asarray(sem, dtype=float)
    m = (q >= centre_q - left - 1e-9) & (q <= centre_q + right + 1e-9) & np.isfinite(sem) & (sem > 0)
    c = np.zeros((len(shapes), q.size))
    if m.sum() < degree + 1 + len(shapes) + 1:
        return c
    x = (q[m] - centre_q) / max(left, right)
    a = np.column_stack([np.vander(x, degree + 1, increasing=True), shapes[:, m].T]) / sem[m][:, None]
    c[:, m] = np.linalg.pinv(a)[degree + 1:] / sem[m][None, :]
    return c


def disk_removal_operator(q: np.ndarray, sem: np.ndarray, centre_q: float, half_width, degree: int,
                          shapes: np.ndarray) -> np.ndarray:
    """(nq, nq) linear map L = I − Σ_k d_k c_kᵀ that removes from a profile the disks ``shapes`` (K, nq) (e.g.
    :func:`disk_profile` of a neighbouring grain's reflections) by their amplitudes â_k = c_kᵀ y from a weighted
    (1/``sem``) least-squares fit of a polynomial of ``degree`` in (Q − ``centre_q``) plus the K shapes over
    [centre_q − left, centre_q + right] (``half_width`` a number or (left, right), 1/Å). The polynomial part of
    L·y is then that joint fit's polynomial over the range, so a peak fitted to L·y with the same range and degree
    is the joint fit's, and passing L as the fit's ``operator`` (:func:`sendmap.science.peaks.fit_peaks`) carries
    the amplitudes' uncertainty into its error.

    >>> q = np.arange(0.1, 0.6, 0.0125); d = disk_profile(q, 0.40, 0.08)
    >>> y = 1.0 - (q - 0.33) ** 2 * 20 + 0.3 * d
    >>> L = disk_removal_operator(q, np.ones_like(q), 0.33, 0.14, 6, d[None])
    >>> bool(np.allclose((L @ y)[np.abs(q - 0.33) <= 0.14], (1.0 - (q - 0.33) ** 2 * 20)[np.abs(q - 0.33) <= 0.14]))
    True
    """
    shapes = np.atleast_2d(np.asarray(shapes, dtype=float))
    return np.eye(np.asarray(q).size) - shapes.T @ disk_amplitude_map(q, sem, centre_q, half_width, degree, shapes)


GRAIN_DISK_Z = 2.326
"""σ: a neighbouring grain's disk is fitted away (:func:`grain_disk_refit`) where its fitted amplitude exceeds this
many of its own errors: a 1 % one-sided false-alarm rate per position and reflection where there is no disk.
Fitting the disk everywhere beside a grain moved the SEI Type 1 peaks beside the legacy scans' Li layer, which hold
no disk, by −0.0027 1/Å on average (the disk's shape takes up part of the SRO peak's flank)."""


def grain_reflections_beside(position: np.ndarray, grain_ring: np.ndarray, spot_q: np.ndarray, crystal: np.ndarray,
                             reach: int, bin_width: float) -> dict[int, list[float]]:
    """{flat position: [Q, 1/Å]}: for each non-crystalline position within ``reach`` scan steps (Chebyshev) of a
    grain-like position (``crystal`` (Ry, Rx)), the distinct Q of the Li/Cu-ring spots (``grain_ring``) listed at
    those grain positions (spot lists ``position`` flat index, ``spot_q``; spots closer than two bins
    ``bin_width`` are one reflection, its median Q)."""
    crystal = np.asarray(crystal, bool)
    if reach < 1 or not crystal.any():
        return {}
    ry, rx = crystal.shape
    pos = np.asarray(position, np.int64)
    sq = np.asarray(spot_q, dtype=float)
    keep = np.asarray(grain_ring, bool) & np.isfinite(sq) & (pos >= 0) & (pos < ry * rx)
    keep &= crystal.ravel()[np.clip(pos, 0, ry * rx - 1)]
    by_pos: dict[int, list[float]] = {}
    for p_, v in zip(pos[keep].tolist(), sq[keep].tolist()):
        by_pos.setdefault(p_, []).append(v)
    out = {}
    for iy, ix in zip(*np.nonzero(~crystal)):
        vals = [v for jy in range(max(0, iy - reach), min(ry, iy + reach + 1))
                for jx in range(max(0, ix - reach), min(rx, ix + reach + 1)) for v in by_pos.get(jy * rx + jx, ())]
        if vals:
            v = np.sort(np.asarray(vals))
            out[int(iy * rx + ix)] = [float(np.median(gr)) for gr in
                                      np.split(v, np.flatnonzero(np.diff(v) > 2 * bin_width) + 1)]
    return out


def bin_covariance(sem: np.ndarray, corr, row: int) -> np.ndarray:
    """(nq, nq) covariance of one profile's bins: diag(sem²), or under the speckle error model (``corr`` = (spk,
    correlation, poisson_correlation) as :func:`sendmap.science.peaks.fit_peaks` takes it) diag(p)·K_P·diag(p) +
    diag(spk)·K·diag(spk), p = √(sem² − spk²), K(i, j) = correlation[|i − j|] (0 beyond its end)."""
    s = np.nan_to_num(np.asarray(sem, dtype=float))
    if corr is None:
        return np.diag(s ** 2)
    spk = np.nan_to_num(np.asarray(corr[0][row], dtype=float))
    lag = np.abs(np.subtract.outer(np.arange(s.size), np.arange(s.size)))

    def toeplitz(c):
        c = np.asarray(c, dtype=float)
        return np.where(lag < c.size, c[np.minimum(lag, c.size - 1)], 0.0)

    p = np.sqrt(np.clip(s ** 2 - spk ** 2, 0.0, None))
    kp = toeplitz(corr[2]) if len(corr) > 2 and corr[2] is not None else np.eye(s.size)
    return p[:, None] * kp * p[None, :] + spk[:, None] * toeplitz(corr[1]) * spk[None, :]


def refit_beside_grains(q, y, s, operator, res: dict, beside: dict, disk_radius_q: float, fit_args, corr, flat_z,
                        half_width: tuple[float, float], degree: int) -> int:
    """Refit, in place in ``res`` (the peak fit's arrays, (N,) each), the SRO peak of the positions ``beside``
    (:func:`grain_reflections_beside`) with the disks of the neighbouring grain's reflections (:func:`disk_profile`,
    radius ``disk_radius_q``; those reaching the inner half of the range) fitted beside the polynomial
    (:func:`disk_removal_operator`, through the denoising ``operator`` where given: a disk's imprint on the denoised
    profile ``y`` is its projection) over the range of the first fit, where a disk's fitted amplitude exceeds
    :data:`GRAIN_DISK_Z` of its error (bins' covariance :func:`bin_covariance`). The error is propagated through the
    fit's operator. ``fit_args``, ``corr``, ``flat_z``: as the stage passes them to
    :func:`sendmap.science.peaks.fit_peaks`. Returns the number of positions refitted."""
    from .peaks import fit_peaks

    lo_hw, hi_hw = half_width
    dense = None if operator is None else np.asarray(operator)
    n_done = 0
    for i, qs in beside.items():
        if not np.isfinite(res["q_peak"][i]):
            continue
        b = int(np.argmin(np.abs(q - res["q_peak"][i])))  # the range of the first fit, centred on its maximum
        # the disks that reach the inner half of the range (those at its edge barely move the maximum, and fitting
        # them there, beside the polynomial's own freedom, only adds noise)
        inner = (q >= q[b] - lo_hw / 2 - 1e-9) & (q <= q[b] + hi_hw / 2 + 1e-9)
        shapes = [d for d in (disk_profile(q, v, disk_radius_q) for v in qs) if np.count_nonzero(d[inner])]
        if not shapes:
            continue
        shapes = np.array(shapes)
        if dense is not None:  # a disk's imprint on the denoised profile is its projection (the map is linear)
            shapes = shapes @ dense.T
        # only the disks the profile shows: amplitude above GRAIN_DISK_Z of its own error
        c = disk_amplitude_map(q, s[i], float(q[b]), half_width, degree, shapes)
        ca = c if dense is None else c @ dense
        amp_err = np.sqrt(np.einsum("kj,jl,kl->k", ca, bin_covariance(s[i], corr, i), ca))
        seen = (amp_err > 0) & (c @ np.nan_to_num(y[i]) > GRAIN_DISK_Z * amp_err)
        if not seen.any():
            continue
        L = disk_removal_operator(q, s[i], float(q[b]), half_width, degree, shapes[seen])
        new = fit_peaks(q, (L @ y[i])[None], s[i:i + 1], *fit_args, operator=L if dense is None else L @ dense,
                        first_estimate=np.array([b]), flat_top_z=flat_z,
                        correlated=None if corr is None else (corr[0][i:i + 1], *corr[1:]))
        for key in res:
            if key in new:
                res[key][i] = new[key][0]
        n_done += 1
    return n_done
