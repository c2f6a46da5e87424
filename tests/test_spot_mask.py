"""The spot-masked mean (issue 18, :mod:`sendmap.science.spot_mask`): an isotropic SRO ring with a grain's Bragg
disks on and near it. The masked profile's maximum stays at the ring's; the plain mean's is pulled towards the
disks; frames without listed spots keep the mean bit for bit; the masked sem is larger (fewer pixels).

Patterns as in ``tests/test_indexing.py`` (the generator's renderer, 128² at 0.0125 1/Å, 2 mrad at 200 kV): an SEI
Type 1-like ring at 0.335 1/Å (σ 0.06, the probe-convolved ring the peaks stage fits) on the generator's diffuse
background, and a Li [111] grain: its six (110) disks at 0.403 1/Å, whose edges (r ≈ 0.08) reach into the SRO
window, as in the scenario matrix's `mixed` cells (a Li grain minority along the beam).
"""
from __future__ import annotations

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
