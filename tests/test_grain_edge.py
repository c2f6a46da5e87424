"""A grain's faint disks at a layer edge, masked at the neighbouring grain's listed azimuths (issue 18, session 22,
:mod:`sendmap.science.grain_edge`).

Rendered patterns (the generator's renderer, ``tests/_render.py``): an SEI Type 1-like ring at 0.335 1/Å with a Li
[111] grain minority (its six (110) disks at 0.403 1/Å, 8 % of the scattered intensity: the matrix's mix fractions are
0.02–0.17), too faint for the spot list at the position itself, whose orientation the grain position beside it
lists. Known answers: the spot-free frame's peak (noise-free). The plain mean's SRO maximum is pulled up by the disks
(what the peaks stage fitted before); the profile masked at the neighbour's azimuths recovers the spot-free peak
within its error; on spot-free speckled frames (M = 3) the same mask moves nothing beyond the noise (cells chosen
without looking at the frame's counts).
"""
from __future__ import annotations

import numpy as np

from sendmap.science import polar_tables as PT
from sendmap.science.grain_edge import (control_spots, disk_excess, disks_at_edges, masked_frame_profiles,
                                        neighbour_grain_spots)
from sendmap.science.peaks import fit_peaks
from sendmap.science.spot_mask import PIXEL_HALF_DIAGONAL
from sendmap.synth import patterns as P

from _render import CENTRE, GEOM, MASK, N, QPX, R_Q
from test_spot_mask import li110_disks, render

WINDOW = (0.22, 0.42)
N_REAL = 24
ELECTRONS = 2e4


def _profiles(frames, spot_list):
    """(plain (q_peak, q_err), masked (q_peak, q_err)) of each frame: the peaks stage's fit (± 0.14 1/Å, sextic)
    of I·Q from the azimuthal mean and from the mean masked at ``spot_list``."""
    tables = PT.PolarTables(GEOM)
    centres = np.tile(CENTRE, (len(frames), 1))
    out = PT.profile_block(np.asarray(frames, float), centres, MASK, tables, R_Q)
    q = GEOM.q_centres
    mm, ms = masked_frame_profiles(np.asarray(frames, float), centres, MASK, tables, R_Q, [spot_list] * len(frames),
                                   QPX * PIXEL_HALF_DIAGONAL)
    fits = []
    for m, s in ((out["mean"], out["sem"]), (mm, ms)):
        r = fit_peaks(q, m * q, s * q, WINDOW, 0.14, 3.0, 6)
        fits.append((np.asarray(r["q_peak"]), np.asarray(r["q_err"])))
    return fits


def _truth():
    """The spot-free pattern's peak, noise-free (its expected counts as a frame; the errors only weight the fit)."""
    exp = render(None, ELECTRONS)
    (qp, _), _ = _profiles([exp * 1e3], np.zeros((0, 2)))
    return float(qp[0])


def _grain_spot_list(disks):
    """The neighbouring grain position's listed spots [Q, azimuth] (azimuth atan2(q_y, q_x), as spots/values)."""
    return np.column_stack([np.hypot(disks[:, 0], disks[:, 1]), np.arctan2(disks[:, 0], disks[:, 1])])


def test_neighbour_grain_spots_lists_the_grain_reflections_once_within_reach():
    disks = li110_disks(0.3)
    listed = _grain_spot_list(disks)
    crystal = np.zeros((3, 6), bool)
    crystal[:, 0] = True  # a grain column; its positions list the same six disks (to within spot position errors)
    pos = np.concatenate([np.full(6, y * 6) for y in range(3)])
    vals = np.concatenate([listed + 0.002 * y for y in range(3)])
    out = neighbour_grain_spots(pos, vals, np.ones(len(pos), bool), crystal, 2, R_Q, 0.47)
    assert sorted(out) == [y * 6 + x for y in range(3) for x in (1, 2)]  # two steps out, not three
    for p, sp in out.items():
        assert sp.shape == (6, 2)  # one entry per reflection
    # a reflection whose disk cannot reach the fit range (Q − r above its top) is not masked
    far = neighbour_grain_spots(pos, np.column_stack([vals[:, 0] + 0.5, vals[:, 1]]), np.ones(len(pos), bool),
                                crystal, 2, R_Q, 0.47)
    assert far == {}


def test_masked_at_the_neighbours_azimuths_recovers_the_peak_under_a_faint_grain_disk():
    rng = np.random.default_rng(22)
    truth = _truth()
    disks = li110_disks(0.08, 23.0)
    exp = render(disks, ELECTRONS)
    frames = [rng.poisson(exp) for _ in range(N_REAL)]
    (qp, ep), (qm, em) = _profiles(frames, _grain_spot_list(disks))
    ok = np.isfinite(qp) & np.isfinite(qm)
    assert ok.sum() >= N_REAL - 2
    se_p = np.std(qp[ok]) / np.sqrt(ok.sum())
    se_m = np.std(qm[ok]) / np.sqrt(ok.sum())
    # the plain mean (the old profile) is pulled up by the disks beyond its noise
    assert np.mean(qp[ok]) - truth > 3 * se_p + 0.0005, (np.mean(qp[ok]), truth)
    # masked at the neighbour's azimuths: the spot-free peak within 3 standard errors (+ 0.0005 for the estimator's
    # own bias at this signal)
    assert abs(np.mean(qm[ok]) - truth) <= 3 * se_m + 0.0005, (np.mean(qm[ok]), truth, se_m)
    # its reported error covers it about as a 1σ error should
    cover = np.mean(np.abs(qm[ok] - truth) <= em[ok])
    assert 0.45 <= cover <= 0.95, cover
    # and the masked fit is worse in precision only modestly (fewer pixels)
    assert np.median(em[ok]) < 1.5 * np.median(ep[ok])


def test_mask_moves_nothing_on_spot_free_speckled_frames():
    rng = np.random.default_rng(2218)
    listed = _grain_spot_list(li110_disks(0.08, 23.0))
    frames = []
    for _ in range(N_REAL):
        sp = P.speckle_field((N, N), R_Q / QPX, 3, rng, CENTRE)
        frames.append(rng.poisson(P.render_pattern((N, N), CENTRE, QPX, probe_radius=R_Q,
                                                   radial_profile=render.__globals__["RING"], electrons=ELECTRONS,
                                                   supersample=2, speckle=sp)))
    (qp, _), (qm, em) = _profiles(frames, listed)
    ok = np.isfinite(qp) & np.isfinite(qm)
    d = qm[ok] - qp[ok]
    # the masked cells are chosen without looking at the frame: the change is noise (mean within 3 standard errors
    # + 0.0005), never a selection on bright speckle (the brightest-cell mask of session 15 biased M = 3 low)
    assert abs(np.mean(d)) <= 3 * np.std(d) / np.sqrt(d.size) + 0.0005, (np.mean(d), np.std(d))


def _excess(frames, spot_list):
    """:func:`disk_excess` of each frame at ``spot_list`` minus that at its :func:`control_spots` (I·Q)."""
    tables = PT.PolarTables(GEOM)
    centres = np.tile(CENTRE, (len(frames), 1))
    out = PT.profile_block(np.asarray(frames, float), centres, MASK, tables, R_Q)
    mm, ms = masked_frame_profiles(np.asarray(frames, float), centres, MASK, tables, R_Q, [spot_list] * len(frames),
                                   QPX * PIXEL_HALF_DIAGONAL)
    cm, cs = masked_frame_profiles(np.asarray(frames, float), centres, MASK, tables, R_Q,
                                   [control_spots(spot_list)] * len(frames), QPX * PIXEL_HALF_DIAGONAL)
    q = GEOM.q_centres
    return (disk_excess(out["mean"] * q, out["sem"] * q, mm * q, ms * q)
            - disk_excess(out["mean"] * q, out["sem"] * q, cm * q, cs * q))


def test_sign_test_finds_a_grain_minority_and_not_a_spot_free_speckled_ring():
    """Known answers: 24 frames holding the neighbour's (110) disks at 8 % (the matrix's mix fractions 0.02–0.17)
    are found (z = √24 ≈ 4.9 when every excess is positive); 24 spot-free frames under M = 3 speckle are not (their
    excesses, each against its control, scatter about 0)."""
    rng = np.random.default_rng(2219)
    disks = li110_disks(0.08, 23.0)
    listed = _grain_spot_list(disks)
    exp = render(disks, ELECTRONS)
    present, z = disks_at_edges(_excess([rng.poisson(exp) for _ in range(N_REAL)], listed))
    assert present and z > 4.0, z
    frames = []
    for _ in range(N_REAL):
        sp = P.speckle_field((N, N), R_Q / QPX, 3, rng, CENTRE)
        frames.append(rng.poisson(P.render_pattern((N, N), CENTRE, QPX, probe_radius=R_Q,
                                                   radial_profile=render.__globals__["RING"], electrons=ELECTRONS,
                                                   supersample=2, speckle=sp)))
    present, z = disks_at_edges(_excess(frames, listed))
    assert not present, z
