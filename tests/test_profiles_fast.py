"""The table-driven profile kernel (sendmap.science.polar_tables) against the direct reference kernel."""
import math
import pickle

import numpy as np
import pytest

from sendmap.science.polar import PolarGeometry, frame_statistics, polar_sums
from sendmap.science.polar_tables import PolarTables, profile_block
from sendmap.synth.patterns import detector_q

N = 96
QPX = 0.0125


def _ring(q, q0=0.33, s=0.05):
    return 100.0 * np.exp(-0.5 * ((q - q0) / s) ** 2) + 10.0


def _analytic(centre, ratio=1.0, angle_deg=0.0, n=N):
    return _ring(detector_q((n, n), centre, QPX, ratio, angle_deg))


@pytest.mark.parametrize("ss,step", [(3, 0.125), (2, 0.25), (1, 0.5)])
def test_equals_direct_kernel_for_centres_on_the_grid(ss, step):
    """Same sums and statistics as the reference kernel, with a mask, an ellipse, centres whose circles leave
    the detector (off-detector offsets are subtracted from the table totals) and a fixed number of bins."""
    rng = np.random.default_rng(1)
    frames = rng.poisson(0.4, (40, N, N)).astype(np.uint16)
    frames[:, 44:52, 44:52] += 30
    centres = np.round((np.array([47.3, 48.1]) + rng.normal(0, 3, (40, 2))) / step) * step
    centres[0] = [20.0, 80.5]  # far off the middle: large parts of the circle fall off the detector
    mask = np.ones((N, N), bool)
    mask[5, 7] = False
    mask[70:80, 0:30] = False
    g = PolarGeometry(QPX, QPX, 50, 36, 1.02, 25.0, ss)
    r = profile_block(frames, centres, mask, PolarTables(g, step), 0.08, (0.16, 0.6), keep_sums=True)
    ps = polar_sums(frames, centres, mask, g)
    ref = frame_statistics(ps, g.q_centres, 0.08)
    np.testing.assert_allclose(r["s"], ps.s, atol=1e-9)
    np.testing.assert_allclose(r["w"], ps.w, atol=1e-9)
    for k in ("mean", "sem", "dispersion", "robust", "spot_z", "fem_variance"):
        np.testing.assert_array_equal(np.isnan(r[k]), np.isnan(ref[k]), err_msg=k)
        # spot_z's last step (observed − expected)/sqrt(expected) runs in float32: 1 ulp there is 6e-8
        tol = 1e-6 if k == "spot_z" else 1e-9
        np.testing.assert_allclose(r[k], ref[k], rtol=tol, atol=tol, err_msg=k)
    s_tot = ps.s.sum(axis=2)
    q = g.q_centres
    np.testing.assert_allclose(r["bf"], s_tot[:, q < 0.08].sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(r["adf"], s_tot[:, (q >= 0.16) & (q < 0.6)].sum(axis=1), rtol=1e-12)


def test_rounding_the_centre_stays_within_the_supersampling_error():
    """Centres off the 1/8-px grid are rounded (≤ 1/16 px). The azimuthal mean is insensitive to a centre
    shift at first order; what changes is which sub-pixels fall in which bin, the same discretisation the
    3×3 supersampling makes anyway: the rounded profile differs from the exact-centre one by < 0.25 %,
    and its error against the analytic annulus average stays within 0.15 % of the exact-centre kernel's
    (≈ 0.5 % on this narrow ring, σ = 4 px: the pixel-area smear ∇²f/24)."""
    g = PolarGeometry(QPX, QPX, 45, 72, 1.015, 30.0, 3)
    tables = PolarTables(g, 0.125)
    q = np.linspace(0, 45 * QPX, 45 * 400 + 1)
    w = _ring(q) * q
    exact_bins = np.array([np.trapezoid(w[i * 400:(i + 1) * 400 + 1], q[i * 400:(i + 1) * 400 + 1])
                           / np.trapezoid(q[i * 400:(i + 1) * 400 + 1], q[i * 400:(i + 1) * 400 + 1]) for i in range(45)])
    sel = g.q_centres > 0.1
    worst_rounding = worst_truth = worst_exact = 0.0
    for centre in [(47.0 + 1 / 16, 48.0 - 1 / 16), (46.53, 48.47), (47.3, 47.71)]:
        img = _analytic(centre, 1.015, 30.0)[None]
        exact = frame_statistics(polar_sums(img, np.array([centre]), np.ones((N, N), bool), g), g.q_centres, 0.0)
        # (float32, as a float detector records: float64 would compile the kernel once more for the tests alone)
        fast = profile_block(img.astype(np.float32), np.array([centre]), np.ones((N, N), bool), tables, 0.0)
        worst_rounding = max(worst_rounding, float(np.max(np.abs(fast["mean"][0][sel] / exact["mean"][0][sel] - 1))))
        worst_truth = max(worst_truth, float(np.max(np.abs(fast["mean"][0][sel] / exact_bins[sel] - 1))))
        worst_exact = max(worst_exact, float(np.max(np.abs(exact["mean"][0][sel] / exact_bins[sel] - 1))))
    assert worst_rounding < 2.5e-3, worst_rounding
    assert worst_truth < worst_exact + 1.5e-3, (worst_truth, worst_exact)


def test_robust_mean_rejects_bragg_spots_and_is_unbiased_without_them():
    rng = np.random.default_rng(4)
    g = PolarGeometry(QPX, QPX, 45, 72, supersample=2)
    tables = PolarTables(g)
    lam = _analytic((47.5, 47.5)) / 100.0  # ≈ 0.1–1.1 counts per pixel
    yy, xx = np.mgrid[:N, :N]
    spot = lam.copy()
    q_spot = 0.45
    sy, sx = 47.5 + q_spot / QPX * math.sin(1.0), 47.5 + q_spot / QPX * math.cos(1.0)
    spot[np.hypot(yy - sy, xx - sx) < 3.0] += 40.0  # a Bragg disk far brighter than the ring
    iso = rng.poisson(np.stack([lam] * 200)).astype(np.uint16)
    spotty = rng.poisson(np.stack([spot] * 200)).astype(np.uint16)
    c = np.full((200, 2), 47.5)
    r_iso = profile_block(iso, c, np.ones((N, N), bool), tables, 0.08)
    r_spot = profile_block(spotty, c, np.ones((N, N), bool), tables, 0.08)
    k = int(q_spot / QPX)
    truth = np.mean(r_iso["mean"][:, k])
    assert np.mean(r_spot["mean"][:, k]) > 1.5 * truth  # the plain mean is pulled up by the spot
    assert abs(np.mean(r_spot["robust"][:, k]) / truth - 1) < 0.03
    sel = slice(10, 40)
    bias = np.mean(r_iso["robust"][:, sel]) / np.mean(r_iso["mean"][:, sel]) - 1
    assert abs(bias) < 0.003, bias  # isotropic Poisson rings: the clipping removes (almost) nothing


def test_tables_pickle_without_their_arrays_and_rebuild():
    g = PolarGeometry(QPX, QPX, 30, 36, supersample=2)
    t = PolarTables(g)
    img = _analytic((47.25, 48.5))[None].astype(np.float32)
    a = profile_block(img, np.array([[47.25, 48.5]]), np.ones((N, N), bool), t, 0.08)
    blob = pickle.dumps(t)
    assert len(blob) < 10_000
    b = profile_block(img, np.array([[47.25, 48.5]]), np.ones((N, N), bool), pickle.loads(blob), 0.08)
    np.testing.assert_array_equal(a["mean"], b["mean"])


def test_centre_step_must_be_one_over_n():
    with pytest.raises(ValueError, match="1/n"):
        PolarTables(PolarGeometry(QPX, QPX, 10), 0.3)


def test_tables_limited_to_the_detector_give_the_same_profiles():
    """Tables cut to the offsets a detector pixel can have (frame shape + range of centres) give exactly the
    profiles of the full square box, also for bins reaching the detector corners."""
    rng = np.random.default_rng(2)
    frames = rng.poisson(0.5, (30, N, N)).astype(np.uint16)
    centres = np.array([47.3, 48.1]) + rng.uniform(-2, 2, (30, 2))
    g = PolarGeometry(QPX, QPX, 66, 36, 1.02, 25.0, 3)  # up to the corners: 66 px
    full = PolarTables(g)
    cut = PolarTables(g, frame_shape=(N, N), centre_range_yx=[[45.3, 49.3], [46.1, 50.1]])
    assert cut.box[0] * cut.box[1] < 0.6 * full.box[0] * full.box[1]
    mask = np.ones((N, N), bool)
    mask[3:9, 60:70] = False
    a = profile_block(frames, centres, mask, full, 0.08, (0.16, 0.8))
    b = profile_block(frames, centres, mask, cut, 0.08, (0.16, 0.8))
    for k in ("mean", "sem", "dispersion", "robust", "spot_z", "bf", "adf"):
        np.testing.assert_allclose(b[k], a[k], rtol=1e-9, atol=1e-9, err_msg=k)


def test_geometry_cache_gives_the_same_areas_for_any_mask_and_block():
    """The per-process cache of pixel areas is keyed by the mask too: a second mask on the same tables gives
    what fresh tables give; a block with more distinct centres than the cache holds uses a private array."""
    rng = np.random.default_rng(5)
    frames = rng.poisson(0.5, (120, N, N)).astype(np.uint16)
    centres = np.array([47.0, 48.0]) + rng.uniform(-6, 6, (120, 2))  # ~100 distinct centres on the 1/8 grid
    g = PolarGeometry(QPX, QPX, 40, 24, 1.02, 25.0, 2)
    mask_a = np.ones((N, N), bool)
    mask_b = mask_a.copy()
    mask_b[10:30, 60:90] = False
    shared = PolarTables(g, 0.125)
    shared._geo_cap = 0  # force the private-array path once
    shared._geo_free = []
    ra_private = profile_block(frames, centres, mask_a, shared, 0.08, keep_sums=True)
    shared._alloc_geometry_cache()
    ra = profile_block(frames[:40], centres[:40], mask_a, shared, 0.08, keep_sums=True)
    rb = profile_block(frames[:40], centres[:40], mask_b, shared, 0.08, keep_sums=True)
    ra2 = profile_block(frames[:40], centres[:40], mask_a, shared, 0.08, keep_sums=True)  # from the cache
    fresh_b = profile_block(frames[:40], centres[:40], mask_b, PolarTables(g, 0.125), 0.08, keep_sums=True)
    np.testing.assert_array_equal(rb["w"], fresh_b["w"])
    np.testing.assert_array_equal(ra["w"], ra2["w"])
    np.testing.assert_array_equal(ra["w"], ra_private["w"][:40])
    assert not np.array_equal(ra["w"], rb["w"])
    np.testing.assert_array_equal(np.isnan(rb["mean"]), np.isnan(fresh_b["mean"]))
    np.testing.assert_allclose(rb["mean"], fresh_b["mean"], rtol=1e-12)
    assert (shared._geo_pins == 0).all()  # every block released its slots


def test_compact_records_give_the_same_sums_bit_for_bit():
    """4-byte records (pixels reaching ≤ 2 bins) and the general byte records accumulate identically."""
    rng = np.random.default_rng(7)
    frames = rng.poisson(0.7, (30, N, N)).astype(np.uint16)
    centres = np.array([47.0, 48.0]) + rng.uniform(-3, 3, (30, 2))
    mask = np.ones((N, N), bool)
    mask[3:9, 40:70] = False
    g = PolarGeometry(QPX, QPX, 50, 36, 1.02, 25.0, 3)
    compact = PolarTables(g, 0.125)
    general = PolarTables(g, 0.125)
    general.compact = False
    assert compact.compact and compact.kmax == 2
    a = profile_block(frames, centres, mask, compact, 0.08, (0.16, 0.6), keep_sums=True)
    b = profile_block(frames, centres, mask, general, 0.08, (0.16, 0.6), keep_sums=True)
    for k in ("s", "w", "mean", "sem", "dispersion", "robust", "spot_z", "bf", "adf"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # half-pixel bins reach three bins: the general records are used
    assert not PolarTables(PolarGeometry(QPX, QPX / 2, 100, 36, 1.02, 25.0, 3), 0.125).compact


def test_tables_built_together_match_the_numpy_packing():
    """The parallel table builder's 4-byte records equal the numpy packing of its byte records, and its area
    totals (Σw per bin) equal the sub-pixel counts of the records / ss²."""
    from sendmap.science.polar import PolarGeometry
    from sendmap.science.polar_tables import PolarTables

    def _pack_compact(rec):  # COMPACT_LAYOUT in numpy: bits 0-11 first bin + 1, 12-19 sector, 20-25/26-31 sub-pixels
        r = rec.astype(np.uint32)
        return ((r[..., 0] | (r[..., 1] << 8)) | ((r[..., 2] | (r[..., 3] << 8)) << 12) | (r[..., 4] << 20)
                | (r[..., 5] << 26)).astype(np.uint32)

    geom = PolarGeometry(0.01, 0.01, 40, 36, 1.02, 25.0, 3)
    t = PolarTables(geom, 0.25, (64, 64), [[30.0, 33.0], [30.0, 33.0]])
    t.ensure(range(16))
    assert t.compact and t.built.all()
    for k in range(16):
        np.testing.assert_array_equal(t.crec[k], _pack_compact(t.rec[k]))
        rec = t.rec[k].astype(np.int64)
        first = (rec[..., 0] | (rec[..., 1] << 8)) - 1  # -1: no bin
        total = np.zeros(geom.nq + 2)
        for j in range(2):
            np.add.at(total, (first + j)[first >= 0], rec[..., 4 + j][first >= 0] / 9.0)
        np.testing.assert_allclose(t.w_full[k].sum(axis=1), total[:geom.nq], rtol=1e-12)
        assert total[geom.nq:].sum() == 0


def test_stored_profiles_equal_the_numpy_products():
    """stored_profiles (one pass) gives the float32 arrays the worker made with numpy before, bit for bit:
    (a · Q^n).astype(float32), (fem · scale).astype(float32) and the plain conversions, NaN where NaN."""
    from sendmap.science.polar_tables import stored_profiles

    rng = np.random.default_rng(3031)
    nb, nq = 37, 89
    a = [rng.lognormal(0.0, 3.0, (nb, nq)) for _ in range(8)]
    for x in a:
        x[rng.uniform(size=x.shape) < 0.05] = np.nan
    mean, sem, disp, rob, spz, fem, mm, ms = a
    qn = rng.uniform(0.01, 1.2, nq) ** 1.0
    scale = rng.uniform(0.5, 3.0, nq)
    out = np.empty((11, nb, nq), np.float32)
    stored_profiles(mean, sem, disp, rob, spz, fem, scale, mm, ms, qn, out)
    want = [mean, sem, disp, rob, mean * qn, sem * qn, rob * qn, mm * qn, ms * qn, spz, fem * scale]
    for got, ref in zip(out, want):
        np.testing.assert_array_equal(got, ref.astype(np.float32))
    assert not np.array_equal(out[4], (mean.astype(np.float32) * qn.astype(np.float32)))  # (the order matters)


def test_stored_bragg_equals_the_numpy_bragg_fraction():
    """stored_bragg (one pass over the float32 profiles) gives features.bragg_fraction's numbers bit for bit,
    NaN where a frame has no counts in the range, for blocks of ≥ 2 frames, several Q ranges and bin counts
    (numpy sums the boolean selection bin after bin for each frame: the order matters, a pairwise sum differs)."""
    from sendmap.science.features import bragg_fraction
    from sendmap.science.polar_tables import stored_bragg

    rng = np.random.default_rng(2020)
    n_differ_pairwise = 0
    for nb in (2, 7, 720):
        for nq in (5, 89, 180):
            q = np.linspace(0.01, 1.2, nq)
            for q_range in ((0.15, 1.2), (0.3, 0.5), (2.0, 3.0)):
                mean = (rng.gamma(2.0, 1.0, (nb, nq)) * 10 ** rng.uniform(-2, 2, (nb, 1))).astype(np.float32)
                rob = (mean * rng.uniform(0.7, 1.0, mean.shape)).astype(np.float32)
                mean[rng.uniform(size=mean.shape) < 0.05] = np.nan
                rob[np.isnan(mean)] = np.nan
                mean[0] = 0.0  # no counts: NaN
                want = bragg_fraction(q, mean.astype(np.float64), rob.astype(np.float64), q_range)
                sel = np.flatnonzero((q >= q_range[0]) & (q <= q_range[1]))
                got = np.empty(nb)
                stored_bragg(mean, rob, sel, np.ascontiguousarray(q[sel]), got)
                np.testing.assert_array_equal(got, want)
                assert np.isnan(got[0])
                m = np.nan_to_num(mean.astype(np.float64)[:, sel]) * q[sel]
                n_differ_pairwise += int((np.sum(np.ascontiguousarray(m), axis=-1) != m.sum(axis=-1)).sum())
    assert n_differ_pairwise > 0  # (a contiguous pairwise sum would not have matched)
