"""The spot-masked mean (issue 18, :mod:`sendmap.science.spot_mask`): an isotropic SRO ring with a grain's Bragg
disks on and near it. The masked profile's maximum stays at the ring's; the plain mean's is pulled towards the
disks; frames without listed spots keep the mean bit for bit; the masked sem is larger (fewer pixels).

Patterns as in ``tests/test_indexing.py`` (the generator's renderer, 128² at 0.0125 1/Å, 2 mrad at 200 kV): an SEI
Type 1-like ring at 0.335 1/Å (σ 0.06, the probe-convolved ring the peaks stage fits) on the generator's diffuse
background, and a Li [111] grain: its six (110) disks at 0.403 1/Å, whose edges (r ≈ 0.08) reach into the SRO
window, as in the scenario matrix's `mixed` cells (a Li grain minority along the beam).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from sendmap.science import indexing as I
from sendmap.science import polar_tables as PT
from sendmap.science.phases import get_phase
from sendmap.synth import patterns as P
from sendmap.synth.make import BACKGROUND_Q0

from _render import CENTRE, GEOM, MASK, N, Q_FINE, QPX, R_Q, _K

RING_Q = 0.335
RING = _K @ (0.6 * P.unit_area(Q_FINE, P.lorentzian(Q_FINE, BACKGROUND_Q0))
             + 0.4 * P.unit_area(Q_FINE, P.gaussian_ring(Q_FINE, RING_Q, 0.06)))


def li110_disks(share: float, rotation_deg: float = 11.0) -> np.ndarray:
    """(6, 3) [q_y, q_x, weight]: the Li (110) disks of a [111] grain (0.403 1/Å), ``share`` of the intensity."""
    g = get_phase("li").g_vectors((1, 1, 1), 0.45)
    g = g[np.abs(np.hypot(g[:, 0], g[:, 1]) - 0.403) < 0.01]
    assert len(g) == 6
    t = np.radians(rotation_deg)
    x = g[:, 0] * np.cos(t) - g[:, 1] * np.sin(t)
    y = g[:, 0] * np.sin(t) + g[:, 1] * np.cos(t)
    return np.column_stack([y, x, np.full(len(g), share / len(g))])


def render(spots, electrons=2e5):
    w = 0.0 if spots is None else float(spots[:, 2].sum())
    return P.render_pattern((N, N), CENTRE, QPX, probe_radius=R_Q, radial_profile=RING * (1.0 - w), spots=spots,
                            electrons=electrons, supersample=2)


def window_peak(q, iqn, lo=0.22, hi=0.42):
    """Q (1/Å) of the maximum of I·Q inside the SRO window."""
    sel = (q >= lo) & (q <= hi)
    return q[sel][np.argmax(iqn[sel])]


def test_masked_profile_keeps_the_ring_maximum_and_spot_free_frames_unchanged():
    rng = np.random.default_rng(18)
    frames = np.asarray([rng.poisson(render(None)), rng.poisson(render(li110_disks(0.3))),
                         rng.poisson(render(li110_disks(0.3, 37.0)))], float)
    out = PT.profile_block(frames, np.tile(CENTRE, (3, 1)), MASK, PT.PolarTables(GEOM), R_Q,
                           keep_z=np.full(GEOM.nq, I.SPOT_Z_MIN))
    q = GEOM.q_centres
    qn = q  # (profiles.n: 1, the default)
    assert not out["kept"][0] and out["kept"][1:].all()
    # the spot-free frame: the mean and sem, bit for bit
    np.testing.assert_array_equal(out["masked_mean"][0], out["mean"][0])
    np.testing.assert_array_equal(out["masked_sem"][0], out["sem"][0])
    truth = window_peak(q, out["mean"][0] * qn)
    assert abs(truth - RING_Q) <= 0.03  # the convolved ring on its background: I·Q peaks near the ring
    for f in (1, 2):
        sq = out["spots"][f - 1, :, 0]
        assert (np.abs(sq - 0.403) < 0.01).sum() == 6  # the six disks are listed
        plain = window_peak(q, out["mean"][f] * qn)
        masked = window_peak(q, out["masked_mean"][f] * qn)
        assert plain - truth >= 1.5 * QPX, (plain, truth)  # the disks pull the mean's maximum up (≥ 2 bins)
        assert abs(masked - truth) <= 1.01 * QPX, (masked, truth)  # (one bin: the kept cells' own noise)
        assert abs(masked - truth) < plain - truth
        # where the disks are, fewer pixels: a larger Poisson error for the same rate (the Poisson sem, no
        # speckle_factor: sem² = I·ΣW_p²/W², so sem/√I grows as 1/√(kept share)); far from them, untouched
        near = np.abs(q - 0.403) < R_Q
        m, s, mm, ms = out["mean"][f], out["sem"][f], out["masked_mean"][f], out["masked_sem"][f]
        assert (ms[near] / np.sqrt(mm[near]) > 1.05 * s[near] / np.sqrt(m[near])).all()
        far = np.abs(q - 0.403) > R_Q + 3 * QPX
        far &= np.abs(q - 0.570) > R_Q + 3 * QPX  # (no (200) disks in [111]; kept generic)
        np.testing.assert_array_equal(out["masked_mean"][f][far & (q < 0.25)], out["mean"][f][far & (q < 0.25)])


def test_friedel_mate_of_a_listed_spot_is_masked_and_the_error_grows_as_the_kept_area_shrinks():
    """Polar sums of a flat ring (1 count per unit area in every cell) with a disk's excess in the cells of one
    spot's Friedel mate (−g) only: the spot is listed, its mate is not. The masked mean is the flat level
    exactly (both disks' cells left out); without the mate it keeps the excess. The Poisson sem (no speckle
    part) grows as 1/√(kept share) at a fixed rate."""
    from sendmap.science.spot_mask import masked_profile

    nq, nphi = 40, 72
    bw = 0.0125
    q = (np.arange(nq) + 0.5) * bw
    w = np.tile(q[:, None] / q[-1], (1, nphi))  # areas ∝ Q (an annulus' sectors)
    w2 = (w ** 2).sum(axis=1) / 9.0  # 3 × 3 sub-pixels per pixel: Σw² per bin (any positive value will do)
    s = w.copy()
    phi = -np.pi + (np.arange(nphi) + 0.5) * 2 * np.pi / nphi
    qs, ps = 0.30, 0.4
    mate_x, mate_y = -qs * np.cos(ps), -qs * np.sin(ps)
    d = np.hypot(q[:, None] * np.cos(phi)[None] - mate_x, q[:, None] * np.sin(phi)[None] - mate_y)
    s[d < R_Q] += 5.0 * w[d < R_Q]
    mean = s.sum(axis=1) / w.sum(axis=1)
    sem = np.sqrt(mean * w2 / w.sum(axis=1) ** 2)
    spots = np.full((4, 4), np.nan)
    spots[0] = (qs, ps, 100.0, 10.0)
    m_out, s_out = np.empty(nq), np.empty(nq)
    n = masked_profile(s, w, w2, mean, sem, q, spots, R_Q, QPX * 0.7071, m_out, s_out)
    assert n > 0
    np.testing.assert_allclose(m_out, 1.0, rtol=1e-12)
    assert (mean[np.abs(q - qs) < 0.5 * R_Q] > 1.2).all()  # the unmasked mean carries the mate's excess
    changed = m_out != mean
    # sem/√I = √(ΣW_p²)/W: × 1/√(kept share) where cells were dropped
    ratio = (s_out[changed] / np.sqrt(m_out[changed])) / (sem[changed] / np.sqrt(mean[changed]))
    assert (ratio > 1.0).all() and ratio.max() < 2.0
    m2 = np.empty(nq)
    masked_profile(s, w, w2, mean, sem, q, spots, R_Q, QPX * 0.7071, m2, np.empty(nq), False)
    assert (m2[np.abs(q - qs) < 0.5 * R_Q] > 1.2).all()  # without the mate: the excess stays


@numba.njit(cache=True)
def _masked_old(s, w, w2, mean, sem, q_c, spots, disk_r_q, pixel_margin_q, out_mean, out_sem, friedel=True):
    """masked_profile as it was before its cells were found by walking from each spot (every cell tested against
    every spot within reach of its bin, every bin summed alone)."""
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


def test_masked_profile_equals_every_cell_tested():
    """The cells found by walking along the ring from each spot's sector (and the bins summed four at a time) are
    those the test of every cell against every spot finds: the same masked mean and sem, bit for bit, as the form
    it replaced, for random spots (low Q, the ring's edge, azimuths at ±π and on sector edges, Friedel mates on and
    off) on random sums with masked cells."""
    from sendmap.science.spot_mask import PIXEL_HALF_DIAGONAL, masked_profile

    rng = np.random.default_rng(3021)
    nq, nphi = 89, 72
    q = (np.arange(nq) + 0.5) * QPX
    sector = 2 * np.pi / nphi
    changed = 0
    for trial in range(16):
        w = rng.uniform(0.5, 1.5, (nq, nphi)) * q[:, None]
        w[rng.uniform(size=w.shape) < 0.05] = 0.0  # masked cells
        s = rng.poisson(3.0 * w * 9.0) / 9.0
        w2 = (w ** 2).sum(axis=1) / 9.0
        mean = s.sum(axis=1) / w.sum(axis=1)
        sem = np.sqrt(mean * w2) / w.sum(axis=1) * rng.uniform(1.0, 1.5, nq)
        n = rng.integers(0, 16)
        spots = np.full((16, 4), np.nan)
        spots[:n, 0] = rng.uniform(0.0 if trial % 3 == 0 else R_Q, q[-1] + 0.1, n)
        if trial % 4 == 1:  # at ±π, and on the edges and centres of sectors
            spots[:n, 1] = rng.choice([np.pi, -np.pi, np.pi - 1e-12, 0.0], n)
        elif trial % 4 == 2:
            spots[:n, 1] = -np.pi + rng.integers(0, 2 * nphi, n) * sector / 2
        else:
            spots[:n, 1] = rng.uniform(-np.pi, np.pi, n)
        margin = QPX * PIXEL_HALF_DIAGONAL
        for friedel in (True, False):
            m_out, s_out = np.empty(nq), np.empty(nq)
            m_ref, s_ref = np.empty(nq), np.empty(nq)
            n_out = masked_profile(s, w, w2, mean, sem, q, spots, R_Q, margin, m_out, s_out, friedel)
            n_ref = _masked_old(s, w, w2, mean, sem, q, spots, R_Q, margin, m_ref, s_ref, friedel)
            np.testing.assert_array_equal(m_out, m_ref)
            np.testing.assert_array_equal(s_out, s_ref)
            assert n_out == n_ref
            changed += n_ref
    assert changed > 500  # (bins with covered cells: the comparison sees them)
