"""The spot list's significance map kept between frames (:func:`sendmap.science.indexing.spot_scratch`: NaN on entry
and on return, only the noted windows set and cleared) and the spot-masked profile with the block's sector
directions (:func:`sendmap.science.spot_mask.masked_profile_dirs`): the same numbers as the forms they replace (a
map reset for every frame; the directions made per frame), for frames that alternate between the noted windows and
scoring the map again (an overflowing candidate buffer)."""
from __future__ import annotations

import numba
import numpy as np

from sendmap.science import indexing as I
from sendmap.science.polar import _frame_stats, spot_area_scratch, spot_areas, stats_scratch
from sendmap.science.polar_tables import PolarTables, profile_block
from sendmap.science.ring_sectors import sector_directions
from sendmap.science.spot_mask import PIXEL_HALF_DIAGONAL, masked_profile, masked_profile_dirs

from _render import CENTRE, GEOM, MASK, N, QPX, R_Q
from test_indexing import AMORPHOUS, BACKGROUND, P, lif_crystallites, render, zone_spots


@numba.njit
def _list_frames(s, w, q_c, r, n_cap, shared, out, totals, zmaps_clean):
    """Each frame's spots through one shared map (``shared``) or a fresh map per frame (the old form); the noted
    candidates buffer holds ``n_cap[f]`` windows (fewer than the frame has: scored again)."""
    nb, nq, nphi = s.shape
    cosk, sink, hw = I.spot_geometry(q_c, r, nphi)
    zmap, widths = I.spot_scratch(q_c, r, nphi)
    o = np.empty((6, nq))
    rs = np.empty(nq)
    rob = np.empty(nq)
    for f in range(nb):
        scratch, work, zf = stats_scratch(nq, nphi)
        ik = np.empty(n_cap[f], np.int32)
        cz = np.empty(n_cap[f])
        a_win, a_band, a_width, a_whole = spot_area_scratch(nq, nphi)
        spot_areas(w[f], q_c, r, a_win, a_band, a_width, a_whole, scratch)
        nc = _frame_stats(s[f], w[f], np.ones(nq), np.ones(nq), q_c, r, 4.0, np.zeros(nq), o[0], o[1], o[2], o[3],
                          o[4], o[5], scratch, work, zf, I.SPOT_Z_MIN, ik, cz, a_win, a_band, a_width, a_whole)
        I.row_sums(s[f], rs)
        if not shared:
            zmap = np.empty((nq, nphi))  # the old form: any content; the map is reset below, as it was per frame
            zmap[:, :] = np.nan
            widths = np.zeros(nq, np.int64)
            I.noted_widths(q_c, r, nphi, widths)
        totals[f] = I._frame_spots(s[f], w[f], q_c, r, I.SPOT_Z_MIN, out[f], zmap, widths, scratch, work, zf, rob,
                                   ik, cz, nc, cosk, sink, hw, rs)
        ref_w = np.zeros(nq, np.int64)
        I.noted_widths(q_c, r, nphi, ref_w)
        zmaps_clean[f] = np.all(np.isnan(zmap)) and np.all(widths == ref_w)


def test_shared_spot_map_gives_the_spots_of_a_fresh_map_and_is_left_clean():
    rng = np.random.default_rng(11)
    imgs = [rng.poisson(render(BACKGROUND, zone_spots("cu", (0, 1, 1), 30.0, 0.7))) for _ in range(2)]
    imgs += [rng.poisson(render(AMORPHOUS, lif_crystallites(rng, 3, 0.25))) for _ in range(3)]
    imgs += [rng.poisson(render(AMORPHOUS, None, speckle=P.speckle_field((N, N), R_Q / QPX, 3, rng, CENTRE)))]
    imgs = np.asarray(imgs, float)
    out = profile_block(imgs, np.tile(CENTRE, (len(imgs), 1)), MASK, PolarTables(GEOM), R_Q, keep_sums=True)
    s, w = out["s"], out["w"]
    q_c = GEOM.q_centres
    n_cap = np.array([4096, 2, 4096, 2, 2, 4096])  # noted, scored again, noted, … (2: overflow)
    res = {}
    for shared in (False, True):
        sp = np.empty((len(imgs), I.MAX_SPOTS, 4))
        tot = np.empty(len(imgs))
        clean = np.zeros(len(imgs), np.bool_)
        _list_frames(s, w, q_c, R_Q, n_cap, shared, sp, tot, clean)
        res[shared] = (sp, tot)
        assert clean.all()  # NaN map and the noted widths after every frame, either path
    assert np.isfinite(res[True][0][:, :, 0]).sum(axis=1)[:5].min() >= 1  # the grains and LiF frames have spots
    np.testing.assert_array_equal(res[True][0], res[False][0])
    np.testing.assert_array_equal(res[True][1], res[False][1])
    # and the spot-masked profile with the block's directions is the per-frame form's, bit for bit
    cosk, sink = sector_directions(GEOM.n_phi)
    w2 = np.ones(GEOM.nq)
    for f in range(len(imgs)):
        mean = s[f].sum(axis=1) / w[f].sum(axis=1)
        sem = np.sqrt(mean)
        a = (np.empty(GEOM.nq), np.empty(GEOM.nq))
        b = (np.empty(GEOM.nq), np.empty(GEOM.nq))
        margin = QPX * PIXEL_HALF_DIAGONAL
        na = masked_profile(s[f], w[f], w2, mean, sem, q_c, res[True][0][f], R_Q, margin, *a)
        nb = masked_profile_dirs(s[f], w[f], w2, mean, sem, q_c, res[True][0][f], R_Q, margin, *b, True, cosk, sink)
        assert na == nb
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
