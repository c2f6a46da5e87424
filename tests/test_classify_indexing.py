"""Crystal versus LiF by indexing in the classes (issue 18): the profile stage lists and indexes the spots of the
frames with a candidate spot only, and the crystal rule uses that evidence (``sendmap.science.classify.
grain_evidence``) and the spots a grain shares with its neighbours (``sendmap.science.spot_context``).

Patterns are rendered as in ``tests/test_indexing.py`` (128² detector, 0.0125 1/Å per pixel, 2 mrad at 200 kV,
Poisson at 2 × 10⁴ e⁻): SEI Type 2 = an amorphous SRO ring on the diffuse background with LiF crystallites by the
generator's rules; a grain = its Bragg disks on the diffuse background without an SRO ring. Seeds ≥ 3000 (none of
the scenario matrix's 1000-1030).
"""
from __future__ import annotations

import numpy as np
import pytest

from sendmap.config import ClassDefinitions
from sendmap.science import indexing as I
from sendmap.science.classify import (band_max, bragg_disk_above, crystal_neighbour_count, crystal_positions,
                                      grain_evidence, lif_indexed_positions)
from sendmap.science.phases import get_phase
from sendmap.science.polar_tables import PolarTables, profile_block
from sendmap.science.spot_context import (dense_spots, shared_counts, shared_grain_evidence,
                                          shared_neighbours, shared_neighbours_listed, shared_spot_table)
from test_indexing import AMORPHOUS, BACKGROUND, CENTRE, GEOM, MASK, QPX, R_Q, lif_crystallites, render, zone_spots

DEFS = ClassDefinitions()
THR = DEFS.crystal_spot_z  # the crystal threshold at 2 × 10⁴ e⁻ (the scans' dose: no scaling)


def evidence_of(images):
    """What the profile stage stores for a block of frames: spot_z, the candidate flags, the spot lists and the
    indexing evidence (sendmap.compute.profiles.ProfileBlock)."""
    imgs = np.asarray(images, float)
    out = profile_block(imgs, np.tile(CENTRE, (len(imgs), 1)), MASK, PolarTables(GEOM), R_Q,
                        keep_z=np.full(GEOM.nq, I.SPOT_Z_MIN))
    ev = I.crystal_evidence(out["spots"], out["spot_scattered"], R_Q, QPX)
    return out, ev


def test_profile_block_lists_the_spots_of_candidate_frames_only():
    """keep_z: the frames with spot_z ≥ 5 σ somewhere get the spot list spot_block gives on their full sums; the
    others have no spot ≥ 5 σ (the list of every frame agrees: nothing is lost by listing candidates only)."""
    rng = np.random.default_rng(3001)
    imgs = [rng.poisson(render(AMORPHOUS, None)) for _ in range(3)]
    imgs += [rng.poisson(render(BACKGROUND, zone_spots("cu", (0, 1, 1), 40.0, 0.7)))]
    imgs += [rng.poisson(render(AMORPHOUS, lif_crystallites(rng, 2, 0.2)))]
    imgs = np.asarray(imgs, float)
    out, _ = evidence_of(imgs)
    full = profile_block(imgs, np.tile(CENTRE, (len(imgs), 1)), MASK, PolarTables(GEOM), R_Q, keep_sums=True)
    ref, ref_scat = I.spot_block(full["s"], full["w"], GEOM.q_centres, R_Q)
    kept = out["kept"]
    np.testing.assert_array_equal(kept, np.nanmax(out["spot_z"], axis=1) >= I.SPOT_Z_MIN)
    assert kept[3] and kept[4]  # the grain and the LiF crystallites
    np.testing.assert_array_equal(out["spots"], ref[kept])
    np.testing.assert_allclose(out["spot_scattered"], ref_scat[kept])
    assert not np.isfinite(ref[~kept][..., 0]).any()
    np.testing.assert_array_equal(out["mean"], full["mean"])  # the profiles do not change


def test_lif_dominant_type2_is_lif_evidence_not_crystal():
    """SEI Type 2 whose LiF crystallites carry 30-40 % of the scattered intensity: LiF (200) (0.497 1/Å, inside the
    Cu (111) crystal band) passes the crystal threshold at most positions, and all of a 3 × 4 patch would be
    crystal by the threshold and its neighbours; indexed, the spots are LiF's in an amorphous matrix and no
    position is crystal; those positions count as LiF evidence for SEI Type 2."""
    rng = np.random.default_rng(3002)
    shares = rng.uniform(0.3, 0.4, 12)
    imgs = [rng.poisson(render(AMORPHOUS, lif_crystallites(rng, int(rng.integers(2, 4)), s))) for s in shares]
    out, ev = evidence_of(imgs)
    crystal_z = band_max(out["spot_z"], GEOM.q_centres, DEFS.crystal_bands).reshape(3, 4)
    cat = np.zeros(12, np.int8)
    lz = np.zeros(12)
    cat[out["kept"]], lz[out["kept"]] = ev["category"], ev["lif_z"]
    cat, lz = cat.reshape(3, 4), lz.reshape(3, 4)
    old = crystal_positions(crystal_z, THR, neighbours=crystal_neighbour_count(crystal_z, THR), min_neighbours=4)
    assert bragg_disk_above(crystal_z, THR).mean() >= 0.75 and old.sum() >= 2  # the bands alone: crystal
    like = grain_evidence(crystal_z, THR, cat, lz, np.zeros((3, 4), bool), np.ones((3, 4), bool))
    assert not like.any()
    new = crystal_positions(crystal_z, THR, neighbours=crystal_neighbour_count(crystal_z, THR, like),
                            min_neighbours=4, like=like)
    assert not new.any()
    assert lif_indexed_positions(cat).mean() >= 0.9
    assert not np.any(cat == I.GRAIN)


def _li_row(rng, rotation):
    """Li [001] off its zone axis: the systematic row ±(110), ±(220) (0.403, 0.806 1/Å; the second beyond the
    128² detector's edge), 6 % of the scattered intensity, on the diffuse background (no SRO ring)."""
    g = get_phase("li").g_vectors((0, 0, 1), 1.0)
    hkl = g[:, 3:].astype(int)
    row = (hkl[:, 0] == hkl[:, 1]) & (hkl[:, 2] == 0) & (hkl[:, 0] != 0)
    assert row.sum() >= 2
    return zone_spots("li", (0, 0, 1), rotation, 0.06, 1.0, rows=row)


def test_off_axis_li_grain_with_one_systematic_row_is_crystal():
    """A 4 × 5 patch of one Li grain off its zone axis (one systematic row, the same orientation throughout, a
    fresh Poisson draw per position): its (110) pair (~10-20 σ) is far below the crystal threshold, so the bands
    alone find no crystal; the pair repeats at every neighbour (shared spots on a Li ring) on a pattern without an
    SRO ring, so every position is grain-like and the interior positions, with ≥ 4 grain-like neighbours,
    crystal. Beside it, SEI Type 2 patterns with LiF crystallites of their own orientation share nothing."""
    rng = np.random.default_rng(3003)
    spots = _li_row(rng, 23.0)
    imgs = [rng.poisson(render(BACKGROUND, spots)) for _ in range(20)]
    out, ev = evidence_of(imgs)
    assert out["kept"].all()
    crystal_z = band_max(out["spot_z"], GEOM.q_centres, DEFS.crystal_bands).reshape(4, 5)
    assert not bragg_disk_above(crystal_z, THR).any()
    assert np.all(ev["n_friedel"] >= 1)
    sp = dense_spots(np.repeat(np.arange(20), np.isfinite(out["spots"][..., 0]).sum(axis=1)),
                     out["spots"][np.isfinite(out["spots"][..., 0])], (4, 5))
    sh = shared_grain_evidence(sp, R_Q, QPX, I.Q_CALIBRATION_REL)
    assert np.all(sh["n_shared_grain"] >= 2)  # the pair, at every position (corners: 3 neighbours)
    # the per-spot table the profile stage stores gives the same counts as the dense evaluation
    pos = np.repeat(np.arange(20), np.isfinite(out["spots"][..., 0]).sum(axis=1))
    vals = out["spots"][np.isfinite(out["spots"][..., 0])]
    nb, ring = shared_spot_table(pos, vals, (4, 5), R_Q, QPX, I.Q_CALIBRATION_REL)
    assert nb.shape == ring.shape == (len(pos),) and ring.all()
    for m in (1, 3, 5):
        want = shared_grain_evidence(sp, R_Q, QPX, I.Q_CALIBRATION_REL, m)
        got = shared_counts(pos, nb, ring, (4, 5), m)
        np.testing.assert_array_equal(got["n_shared_grain"], want["n_shared_grain"])
        np.testing.assert_array_equal(got["n_shared"], want["n_shared"])
    like = grain_evidence(crystal_z, THR, ev["category"].reshape(4, 5), ev["lif_z"].reshape(4, 5),
                          sh["n_shared_grain"] > 0, np.zeros((4, 5), bool))
    assert like.all()
    crystal = crystal_positions(crystal_z, THR, neighbours=crystal_neighbour_count(crystal_z, THR, like),
                                min_neighbours=DEFS.crystal_min_neighbours, like=like)
    assert crystal.all()  # (a 4 × 5 patch: every position has ≥ 4 of its neighbours in it, edges repeated)
    # the same row on a pattern with an SRO ring (a boundary where the grain is the minority) is not enough
    assert not grain_evidence(crystal_z, THR, np.zeros((4, 5), np.int8), None, sh["n_shared_grain"] > 0,
                              np.ones((4, 5), bool)).any()
    # LiF crystallites (random orientation per position) are not shared
    lif = [rng.poisson(render(AMORPHOUS, lif_crystallites(rng, 2, 0.2))) for _ in range(20)]
    out2, _ = evidence_of(lif)
    ok = np.isfinite(out2["spots"][..., 0])
    sp2 = dense_spots(np.repeat(np.flatnonzero(out2["kept"]), ok.sum(axis=1)), out2["spots"][ok], (4, 5))
    assert shared_grain_evidence(sp2, R_Q, QPX, I.Q_CALIBRATION_REL)["n_shared_grain"].sum() <= 1


def test_shared_neighbours_counts_matches_within_errors():
    """A spot matched by neighbours within 3σ of the combined position error (σ from its significance), not beyond."""
    s = np.full((3, 3, 1, 4), np.nan, np.float32)
    s[..., 0, :] = [0.48, 0.3, 100.0, 30.0]
    sig = float(I.spot_position_sigma(np.array(30.0), R_Q, QPX))
    s[0, 0, 0, 0] += 5 * sig  # off by 5σ along Q: √2·3σ = 4.2σ combined, so no match
    nb = shared_neighbours(s, R_Q, QPX)
    assert nb[1, 1, 0] == 7 and nb[0, 0, 0] == 0 and nb[0, 1, 0] == 4
    assert shared_neighbours(np.full((2, 2, 1, 4), np.nan, np.float32), R_Q, QPX).sum() == 0


def _shared_reference(spots, nsig=I.N_SIGMA):
    """The neighbour count of every spot by the definition, in Python (the form the kernel's bound replaced)."""
    sp = np.asarray(spots, np.float64)
    ry, rx, k, _ = sp.shape
    gx, gy = sp[..., 0] * np.cos(sp[..., 1]), sp[..., 0] * np.sin(sp[..., 1])
    sg = I.spot_position_sigma(sp[..., 3], R_Q, QPX)
    out = np.zeros((ry, rx, k), np.int8)
    for y, x, a in np.ndindex(ry, rx, k):
        if not np.isfinite(gx[y, x, a]):
            continue
        for yy in range(max(0, y - 1), min(ry, y + 2)):
            for xx in range(max(0, x - 1), min(rx, x + 2)):
                if (yy, xx) != (y, x):
                    d = np.hypot(gx[y, x, a] - gx[yy, xx], gy[y, x, a] - gy[yy, xx])
                    out[y, x, a] += bool(np.any(d <= nsig * np.sqrt(sg[y, x, a] ** 2 + sg[yy, xx] ** 2)))
    return out


def test_shared_neighbours_kernel_equals_the_definition():
    """The kernel's skip (|Δgx| or |Δgy| beyond nsig·√(σa² + σmax²)) drops only pairs the test rejects: the same
    counts as every pair tested, on spots scattered around a few g (half matches, half not, many near the 3σ edge)
    with significances 5-60 σ (σ 3-15 × 10⁻³ 1/Å) and NaN padding."""
    rng = np.random.default_rng(3011)
    ry, rx, k = 6, 7, 5
    s = np.full((ry, rx, k, 4), np.nan, np.float32)
    base = rng.uniform(0.3, 1.0, 4), rng.uniform(-np.pi, np.pi, 4)
    for y, x in np.ndindex(ry, rx):
        n = rng.integers(0, k + 1)
        j = rng.integers(0, 4, n)
        z = rng.uniform(5.0, 60.0, n)
        sig = I.spot_position_sigma(z, R_Q, QPX)
        s[y, x, :n, 0] = base[0][j] + rng.normal(0, 2.5 * sig)
        s[y, x, :n, 1] = base[1][j] + rng.normal(0, 2.5 * sig / base[0][j])
        s[y, x, :n, 2] = 100.0
        s[y, x, :n, 3] = z
    want = _shared_reference(s)
    assert 0 < (want > 0).sum() < np.isfinite(s[..., 0]).sum()  # some spots match, some do not
    np.testing.assert_array_equal(shared_neighbours(s, R_Q, QPX), want)
    # the profile stage's form over the stored lists (no dense layout): the same counts, spot for spot
    ok = np.isfinite(s[..., 0]).reshape(ry * rx, k)
    pos = np.repeat(np.arange(ry * rx), ok.sum(axis=1))
    got = shared_neighbours_listed(pos, s.reshape(ry * rx, k, 4)[ok], (ry, rx), R_Q, QPX)
    np.testing.assert_array_equal(got, want.reshape(ry * rx, k)[ok])


def test_worker_ring_flags_equal_the_stage_indexing():
    """The Li/Cu-ring flags the profile worker keeps from its indexing (ProfileBlock: ``spot_ring``) are those
    shared_spot_table computes by indexing the stored spots again (spots/grain_ring)."""
    from sendmap.compute.profiles import ProfileBlock

    rng = np.random.default_rng(3012)
    imgs = [rng.poisson(render(BACKGROUND, zone_spots("cu", (0, 1, 1), 40.0, 0.7))) for _ in range(2)]
    imgs += [rng.poisson(render(AMORPHOUS, lif_crystallites(rng, 2, 0.2))) for _ in range(2)]
    imgs += [rng.poisson(render(BACKGROUND, _li_row(rng, 23.0))) for _ in range(2)]
    imgs = np.asarray(imgs, np.uint16)
    tables = PolarTables(GEOM)
    worker = ProfileBlock(tables, MASK, R_Q, (0.2, 1.0), R_Q, GEOM.q_centres, (2 * R_Q, 1.0),
                          spot_keep_z=np.full(GEOM.nq, I.SPOT_Z_MIN))
    _, out = worker((("store", (0, 2, 0, 3), None), imgs, np.tile(CENTRE, (len(imgs), 1))))
    ok = np.isfinite(out["spot_list"][..., 0])
    pos = np.repeat(out["spot_index"], ok.sum(axis=1))
    vals = out["spot_list"][ok]
    assert out["spot_ring"].shape == ok.shape and 0 < out["spot_ring"][ok].sum() < ok.sum()
    nb, ring = shared_spot_table(pos, vals, (2, 3), R_Q, QPX, I.Q_CALIBRATION_REL)
    nb2, ring2 = shared_spot_table(pos, vals, (2, 3), R_Q, QPX, I.Q_CALIBRATION_REL,
                                   grain_ring=out["spot_ring"][ok])
    np.testing.assert_array_equal(ring2, ring)
    np.testing.assert_array_equal(nb2, nb)


@pytest.mark.slow
def test_lif_dominant_cell_end_to_end(tmp_path):
    """One fast cell of the scenario matrix's hardest LiF case (sendmap synth --scenario matrix:lif-dominant, 20 × 32
    positions, 2 × 10⁴ e⁻, seed 3010): with the indexing SEI Type 2 recall ≥ 0.8 and crystal recall ≥ 0.95; with
    ``classify.definitions.indexing: false`` (the crystal threshold alone) Type 2 is mostly called crystal (recall
    ≤ 0.4, as 0.07 on the matrix's cell)."""
    from sendmap.cli import main
    from sendmap.evaluate import evaluate

    d = tmp_path / "cell"
    assert main(["synth", str(d), "--scenario", "matrix:lif-dominant", "--scan-shape", "20", "32", "--seed", "3010",
                 "--quiet"]) == 0
    assert main(["run", str(d / "config.yaml"), "--no-progress"]) == 0
    new = evaluate(d / "results", d)["per_class"]
    assert main(["run", str(d / "config.yaml"), "--no-progress", "--set", "classify.definitions.indexing=false"]) == 0
    old = evaluate(d / "results", d)["per_class"]
    assert new["sei_type2"]["recall"] >= 0.8 and new["crystal"]["recall"] >= 0.95, new
    assert old["sei_type2"]["recall"] <= 0.4, old
    # profiles.spot_lists: false lists no spot (and leaves none of the earlier run's), and the crystal rule is the
    # threshold alone: the same classes as indexing: false
    import zarr

    assert main(["run", str(d / "config.yaml"), "--no-progress", "--set", "profiles.spot_lists=false"]) == 0
    g = zarr.open_group(str(d / "results" / "sendmap.zarr"), mode="r")
    assert "spots" not in g and "features/spot_category" not in g and "features/spot_z" in g
    assert evaluate(d / "results", d)["per_class"]["sei_type2"]["recall"] == old["sei_type2"]["recall"]


def test_spot_scattered_is_the_counts_beyond_two_disk_radii():
    """spot_scattered (the amorphous share's denominator) is the frame's counts at Q ≥ 2 disk radii: the sum of the
    bins' sums, equal to the sum over every cell (the form it replaced) within float64 rounding."""
    rng = np.random.default_rng(3051)
    imgs = np.asarray([rng.poisson(render(BACKGROUND, zone_spots("cu", (0, 1, 1), 40.0, 0.7))) for _ in range(2)]
                      + [rng.poisson(render(AMORPHOUS, lif_crystallites(rng, 2, 0.2)))], float)
    out, _ = evidence_of(imgs)
    full = profile_block(imgs, np.tile(CENTRE, (len(imgs), 1)), MASK, PolarTables(GEOM), R_Q, keep_sums=True)
    far = GEOM.q_centres >= 2.0 * R_Q
    want = np.array([sum(float(v) for v in fr[far].ravel()) for fr in full["s"]])  # every cell, in (bin, sector) order
    assert out["kept"].all()
    np.testing.assert_allclose(out["spot_scattered"], want, rtol=1e-12)
    assert np.all(want > 0)
