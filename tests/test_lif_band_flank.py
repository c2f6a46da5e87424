"""The LiF-band significance without another phase's spot beside the band (``sendmap.science.classify.band_spot_z``).

``features/spot_z`` at Q scores a window one disk diameter wide centred at Q, so a Bragg disk up to two disk radii
away raises it: a Li grain the minority along the beam beside SEI Type 1 (its (110) pair at 0.403 1/Å, 0.062
below the LiF (200) band 0.465-0.53) had full LiF evidence and became SEI Type 2 (matrix:all, seed 1031: Type 1
recall 0.27). Patterns rendered as in ``tests/test_indexing.py`` (128², 0.0125 1/Å per pixel, 2 × 10⁴ e⁻); the
known answer is what each pattern holds: a Li (110) pair and no LiF, LiF crystallites, or neither. Seeds 3200+.
"""
from __future__ import annotations

import numpy as np

from sendmap.config import ClassDefinitions
from sendmap.science import indexing as I
from sendmap.science.classify import band_max, band_spot_z, in_bands
from test_classify_indexing import _li_row, evidence_of
from test_indexing import AMORPHOUS, GEOM, R_Q, lif_crystallites, render

DEFS = ClassDefinitions()
FLOOR = DEFS.lif_spot_z_noise  # the chance level at 2 × 10⁴ e⁻ (no dose scaling)


def _lif_band(imgs):
    """(band_max, band_spot_z, spot Q per frame) of the LiF bands for rendered frames, as the classify stage."""
    out, _ = evidence_of(imgs)
    kept = np.flatnonzero(out["kept"])
    valid = np.isfinite(out["spots"][..., 0])
    pos = np.repeat(kept, valid.sum(axis=1))
    sq = out["spots"][..., 0][valid]
    lib = I.index_library()
    own = (lib.ring_phase == lib.phase_ids.index("lif")) | in_bands(lib.ring_q, DEFS.lif_bands)
    old = band_max(out["spot_z"], GEOM.q_centres, DEFS.lif_bands)
    new = band_spot_z(out["spot_z"], GEOM.q_centres, DEFS.lif_bands, pos, sq, R_Q, lib.ring_q, own, I.SPOT_Z_MIN,
                      FLOOR)
    return old, new, [sq[pos == i] for i in range(len(imgs))]


def test_li_110_pair_beside_the_band_is_not_lif_evidence():
    """An SRO ring with a Li (110) pair carrying 3-6 % of the scattered intensity (a grain the minority along the
    beam): the pair raises the LiF band above the LiF threshold (lif_spot_z, 10.5 σ) on most frames by its flank
    alone; without the flank the band is at the chance level on every frame that lists the pair."""
    rng = np.random.default_rng(3201)
    imgs = [rng.poisson(render(AMORPHOUS, _li_row(rng, float(rng.uniform(0, 180))) * [1, 1, s / 0.06]))
            for s in rng.uniform(0.03, 0.06, 8)]
    old, new, qs = _lif_band(imgs)
    assert np.mean(old >= DEFS.lif_spot_z) >= 0.5  # the flank alone: LiF evidence
    listed = np.array([np.any(np.abs(q - 0.403) < 0.02) for q in qs])
    assert listed.mean() >= 0.75
    np.testing.assert_array_equal(new[listed], FLOOR)
    assert np.all(new <= old)


def test_lif_crystallites_keep_their_band_significance():
    """SEI Type 2-like patterns with LiF crystallites (10-30 % of the scattered intensity): every frame with a listed
    LiF spot keeps the band's significance ((111) at 0.431 raises it through its flank as Li (110) does, and is
    LiF's); frames without spots are unchanged."""
    rng = np.random.default_rng(3202)
    imgs = [rng.poisson(render(AMORPHOUS, lif_crystallites(rng, int(rng.integers(1, 4)), s)))
            for s in rng.uniform(0.1, 0.3, 10)]
    imgs += [rng.poisson(render(AMORPHOUS, None)) for _ in range(4)]
    old, new, qs = _lif_band(imgs)
    np.testing.assert_array_equal(new, old)
    assert np.mean(old[:10] >= DEFS.lif_spot_z) >= 0.7


def test_nearest_ring_search_in_slices_equals_one_table():
    """The nearest ring of each spot, searched a slice of spots at a time (``slice_spots``), gives what one
    (spots, rings) table gives (``np.argmin``: the first of equally near rings), including spots halfway between two
    rings and rings listed twice; the reference below is the table written out."""
    rng = np.random.default_rng(3301)
    rings = np.array([0.403, 0.431, 0.498, 0.498, 0.52, 0.61, 0.70])
    is_band = np.array([False, True, True, False, False, False, True])
    n_pos, n_q = 50, 31
    q = np.linspace(0.3, 0.8, n_q)
    z = rng.uniform(0.0, 12.0, (n_pos, n_q))
    sq = np.concatenate([rng.uniform(0.35, 0.8, 40), [0.417, 0.464, 0.509, 0.655]])  # the last: halfway
    pos = rng.integers(0, n_pos, sq.size)
    bands, r_q, z_listed, floor = [(0.465, 0.53), (0.67, 0.735)], 0.03, 5.0, 3.0
    got = band_spot_z(z, q, bands, pos, sq, r_q, rings, is_band, z_listed, floor, slice_spots=7)
    # the reference: every spot's nearest ring from one table
    own = is_band[np.argmin(np.abs(sq[:, None] - rings[None, :]), axis=1)]
    inside = in_bands(sq, bands)
    near = in_bands(sq, [(lo - 2 * r_q, hi + 2 * r_q) for lo, hi in bands])
    band_spot, other_spot = np.zeros(n_pos, bool), np.zeros(n_pos, bool)
    band_spot[pos[near & (inside | own)]] = True
    other_spot[pos[near & ~inside & ~own]] = True
    want = band_max(z, q, bands)
    want[other_spot & ~band_spot & (want >= z_listed)] = floor
    assert np.array_equal(got, want)
    assert 0 < int((got == floor).sum()) < n_pos  # some positions are flank, not all
