"""Synthetic SEND dataset generator: geometry conventions, exact probe convolution, ground truth, output.

Small sizes (8 × 24 scan, 64² detector at 0.02 1/Å per pixel, reaching Q ≈ 0.64) keep it fast.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import yaml
from scipy import interpolate, optimize, signal

from sendmap import CLASS_NAMES
from sendmap.errors import SendmapInputError
from sendmap.physics import probe_radius_inv_angstrom
from sendmap.synth import make as M
from sendmap.synth import patterns as P
from sendmap.synth import phantom as PH

SMALL = dict(scan_shape=(8, 24), detector_shape=(64, 64), q_pixel_size=0.02)
CI = {n: i for i, n in enumerate(CLASS_NAMES)}


@pytest.fixture(scope="module")
def model() -> M.SynthModel:
    return M.SynthModel(M.SynthParams(**SMALL))


@pytest.fixture(scope="module")
def npy_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_npy")
    paths = M.make_dataset(out, fmt="npy", **SMALL)
    return paths, np.load(paths["data"]), np.load(paths["truth_npz"]), json.loads(paths["truth_json"].read_text())


# ---------------------------------------------------------------------------------------------------
# detector geometry convention
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("angle", [0.0, 30.0, -75.0, 90.0])
def test_detector_q_major_and_minor_axis(angle):
    ratio, qpix, q_true = 1.03, 0.0125, 0.33
    a = math.sqrt(ratio)
    th = math.radians(angle)
    # forward map of a true vector along the major axis lands at a·q/qpix along the major axis
    yx = P.q_to_detector(np.array([q_true * math.sin(th), q_true * math.cos(th)]), (0.0, 0.0), qpix, ratio, angle)
    assert np.hypot(*yx) == pytest.approx(a * q_true / qpix, rel=1e-12)
    assert math.atan2(yx[0], yx[1]) == pytest.approx(math.atan2(math.sin(th), math.cos(th)), abs=1e-12)
    # detector_q at that detector offset gives back the true q (1×1 detector whose pixel sits at the offset)
    assert P.detector_q((1, 1), (-yx[0], -yx[1]), qpix, ratio, angle)[0, 0] == pytest.approx(q_true, rel=1e-12)
    # along the minor axis a true q lands at b·q/qpix
    dy, dx = (q_true / qpix / a) * math.cos(th), -(q_true / qpix / a) * math.sin(th)
    assert P.detector_q((1, 1), (-dy, -dx), qpix, ratio, angle)[0, 0] == pytest.approx(q_true, rel=1e-12)


def test_detector_q_round_trip_and_supersampling():
    rng = np.random.default_rng(1)
    shape, centre, qpix, ratio, angle = (40, 50), (19.3, 26.8), 0.015, 1.02, 30.0
    qy, qx = P.detector_qvec(shape, centre, qpix, ratio, angle)
    iy, ix = rng.integers(0, 40, 20), rng.integers(0, 50, 20)
    back = P.q_to_detector(np.stack([qy[iy, ix], qx[iy, ix]], -1), centre, qpix, ratio, angle)
    np.testing.assert_allclose(back, np.stack([iy, ix], -1), atol=1e-10)
    # no distortion: plain Euclidean radius; the middle of 3×3 sub-pixels is the pixel centre
    q1 = P.detector_q(shape, centre, qpix)
    yy, xx = np.mgrid[:40, :50]
    np.testing.assert_allclose(q1, qpix * np.hypot(yy - centre[0], xx - centre[1]), rtol=1e-12)
    q3 = P.detector_q(shape, centre, qpix, ratio, angle, supersample=3)
    np.testing.assert_allclose(q3[1::3, 1::3], P.detector_q(shape, centre, qpix, ratio, angle), rtol=1e-12)


# ---------------------------------------------------------------------------------------------------
# exact 2-D convolution of a radial function with the probe disk
# ---------------------------------------------------------------------------------------------------


def test_disk_convolution_matches_brute_force_2d():
    a = probe_radius_inv_angstrom(2.0, 200.0)  # 0.0797 1/Å
    q = P.fine_q_grid(0.7)
    f = P.gaussian_ring(q, 0.30, 0.01)  # narrow ring (delta-like next to the 0.16-wide disk)
    K = P.disk_convolution_matrix(q, a)
    conv = K @ f
    # brute force: the same ring sampled on a 2-D grid, FFT-convolved with a (5×5 super-sampled) disk
    h = 0.002
    ax = np.arange(-250, 251) * h  # symmetric about 0
    Y, X = np.meshgrid(ax, ax, indexing="ij")
    img = P.gaussian_ring(np.hypot(Y, X), 0.30, 0.01)
    sub = ((np.arange(5) + 0.5) / 5 - 0.5) * h
    m = int(np.ceil(a / h)) + 2
    kx = np.arange(-m, m + 1) * h  # odd length, centred on 0
    KY, KX = np.meshgrid(kx, kx, indexing="ij")
    disk = np.zeros_like(KY)
    for sy in sub:
        for sx in sub:
            disk += np.hypot(KY + sy, KX + sx) <= a
    disk /= disk.sum() * h * h  # unit integral
    brute = signal.fftconvolve(img, disk, mode="same") * h * h
    rho = np.hypot(Y, X)
    ring = (rho > 0.05) & (rho < 0.45)
    expect = np.interp(rho[ring], q, conv)
    assert np.max(np.abs(brute[ring] - expect)) < 0.01 * conv.max()
    # intensity is conserved: ∫ (f ⊛ D) 2πρ dρ = ∫ f 2πr dr for the unit-integral disk
    assert P.radial_integral(q, conv) == pytest.approx(P.radial_integral(q, f), rel=1e-4)


def test_disk_convolution_of_central_delta_is_the_disk():
    a = 0.08
    q = P.fine_q_grid(0.3)
    # (a point at q = 0 has zero weight on a radial grid, r·θ = 0): a thin ring at r = 5 dq instead
    f = P.delta_rings(q, [5 * P.FINE_DQ], [1.0])
    conv = P.disk_convolution_matrix(q, a) @ f
    inside = q < a - 10 * P.FINE_DQ
    np.testing.assert_allclose(conv[inside], 1.0 / (math.pi * a * a), rtol=1e-6)
    assert conv[q > a + 10 * P.FINE_DQ].max() == 0.0


def test_peak_position_parabolic_refinement():
    q = P.fine_q_grid(1.0)
    y = np.exp(-((q - 0.31234) / 0.05) ** 2)
    assert P.peak_position(q, y, (0.22, 0.42))[0] == pytest.approx(0.31234, abs=1e-6)


# ---------------------------------------------------------------------------------------------------
# crystallography
# ---------------------------------------------------------------------------------------------------


def test_zone_axis_reflections():
    hkl, g = P.cubic_zone_g_vectors(*P.PHASES["li"], (0, 0, 1), 0.6)
    mags = np.sort(np.round(np.hypot(*g.T), 3))
    np.testing.assert_allclose(mags, [0.403] * 4 + [0.570] * 4, atol=1e-3)  # {110} ×4, {200} ×4
    hkl, g = P.cubic_zone_g_vectors(*P.PHASES["cu"], (0, 1, 1), 0.8)
    fam = sorted(P._family(h) for h in hkl)
    assert fam.count((1, 1, 1)) == 4 and fam.count((2, 0, 0)) == 2 and fam.count((2, 2, 0)) == 2
    assert {round(float(m), 3) for m in np.hypot(*g.T)} == {0.479, 0.553, 0.782}
    hkl, g = P.cubic_zone_g_vectors(*P.PHASES["lif"], (1, 1, 1), 0.75)
    assert len(hkl) == 6 and np.allclose(np.hypot(*g.T), 0.7023, atol=1e-3)  # {220} only
    assert np.all(hkl @ np.array([1, 1, 1]) == 0)
    # rotations keep magnitudes; kinematic table: LiF (111) weak next to (200)
    r = P.rotate_2d(g, 37.0)
    np.testing.assert_allclose(np.hypot(*r.T), np.hypot(*g.T))
    assert P.kinematic_f2("lif", (1, 1, 1)) < 0.2 * P.kinematic_f2("lif", (2, 0, 0))
    assert P.kinematic_f2("cu", (3, 3, 1)) < P.kinematic_f2("cu", (2, 2, 2))  # extrapolated, falling


# ---------------------------------------------------------------------------------------------------
# phantom
# ---------------------------------------------------------------------------------------------------


def test_layer_order_and_thickness():
    rng = np.random.default_rng(3)
    ph = PH.make_phantom((60, 90), 4.0, rng)
    expected = [CI["electrolyte"], CI["sei_type1"], CI["crystal"], CI["sei_type1"], CI["sei_type2"], CI["crystal"]]
    for row_layers, row_classes in zip(ph.layer_map, ph.class_map):
        assert np.all(np.diff(row_layers) >= 0)  # layers appear in order along x (the fast axis)
        runs = row_classes[np.r_[True, np.diff(row_layers) != 0]]
        assert list(runs) == expected
    widths = PH.mean_layer_width_nm(ph.boundaries_nm, 360.0)
    assert sum(ph.layer_thickness_nm.values()) == pytest.approx(360.0)
    assert widths["sei1_cu_side"] == pytest.approx(15.0, abs=1.5)
    assert widths["sei2"] == pytest.approx(35.0, abs=1.5)
    assert widths["sei1_electrolyte_side"] == pytest.approx(20.0, abs=1.5)
    assert np.all(ph.grain_map[ph.class_map == CI["crystal"]] >= 0)
    assert np.all(ph.grain_map[ph.class_map != CI["crystal"]] == -1)
    assert len({g for g in ph.grain_map.ravel() if g >= 1}) >= 2  # 2–3 Cu grains
    for name, (lo, hi) in PH.PEAK_RANGES.items():
        t = ph.target_peak_q[ph.class_map == CI[name]]
        assert t.min() >= lo and t.max() <= hi
        assert t.max() - t.min() > 0.3 * (hi - lo)  # targets really vary in space
    assert np.all(np.isnan(ph.target_peak_q[ph.class_map == CI["crystal"]]))
    # Type 1 peak higher next to Li than away from it (SCIENCE.md: drifts from ≈ 0.34 at Li outwards)
    t1 = (ph.class_map == CI["sei_type1"]) & (ph.layer_map == 1)
    near, far = t1 & (ph.depth < 0.3), t1 & (ph.depth > 0.7)
    assert ph.target_peak_q[near].mean() > ph.target_peak_q[far].mean()


def test_descan_plane():
    d = PH.make_descan((10, 20), (64, 64), (3.0, -2.0), (1.0, 1.5), np.random.default_rng(0))
    c = d.centres((10, 20))
    np.testing.assert_allclose(c[0, -1] - c[0, 0], [3.0, -2.0])
    np.testing.assert_allclose(c[-1, 0] - c[0, 0], [1.0, 1.5])
    np.testing.assert_allclose(c[-1, -1] - c[0, 0], [4.0, -0.5])
    assert np.abs(c.mean((0, 1)) - 31.5).max() <= 0.5


# ---------------------------------------------------------------------------------------------------
# ground truth and noise-free patterns
# ---------------------------------------------------------------------------------------------------


def test_truth_is_max_of_noise_free_profile(model):
    p = model.params
    checked = 0
    for ry in (0, 5):
        st = model.row_structure(ry)
        for j in range(p.scan_shape[1]):
            cls = model.phantom.class_map[ry, j]
            if cls == CI["crystal"]:
                assert np.isnan(st["peak_q"][j])
                continue
            y = st["F_tot"][:, j] * model.q ** p.n
            # independent refinement: cubic spline + bounded scalar maximisation around the grid argmax
            win = (model.q >= 0.22) & (model.q <= 0.42)
            i = np.nonzero(win)[0][np.argmax(y[win])]
            spl = interpolate.CubicSpline(model.q[i - 20:i + 21], y[i - 20:i + 21])
            res = optimize.minimize_scalar(lambda x: -spl(x), bounds=(model.q[i - 1], model.q[i + 1]),
                                           method="bounded", options={"xatol": 1e-9})
            assert st["peak_q"][j] == pytest.approx(res.x, abs=1e-5)
            assert y[win].max() <= st["peak_iqn"][j] * (1 + 1e-9)
            # the lookup puts the maximum on the phantom's target; targets lie in the published ranges
            assert st["peak_q"][j] == pytest.approx(model.phantom.target_peak_q[ry, j], abs=2e-4)
            lo, hi = PH.PEAK_RANGES[CLASS_NAMES[cls]]
            assert lo <= st["peak_q"][j] <= hi
            # the falling background moves the maximum away from the kinematic ring centre
            assert st["peak_q"][j] != pytest.approx(st["ring_centre"][j], abs=1e-4)
            checked += 1
    assert checked > 10


def test_rendered_pattern_matches_the_radial_profile(model):
    """The 2-D pattern (sub-pixel sampled, ellipse-free) equals the 1-D truth profile at each pixel's q."""
    p = model.params
    ry = 3
    st = model.row_structure(ry)
    j = int(np.nonzero(model.phantom.class_map[ry] == CI["sei_type1"])[0][0])
    centre = model.centres[ry, j]
    img, scale = P.render_pattern(p.detector_shape, centre, p.q_pixel_size, probe_radius=model.probe_radius,
                                  radial_profile=st["F_iso"][:, j], central_fraction=p.central_fraction,
                                  electrons=p.electrons_per_pattern, dq=model.dq, return_scale=True)
    assert img.sum() == pytest.approx(p.electrons_per_pattern, rel=1e-12)
    qd = P.detector_q(p.detector_shape, centre, p.q_pixel_size)
    prof = scale * st["F_tot"][:, j] * p.q_pixel_size ** 2
    sel = (qd > model.probe_radius + 2 * p.q_pixel_size) & (qd < 0.6)
    np.testing.assert_allclose(img[sel], np.interp(qd[sel], model.q, prof), rtol=0.01)
    # central disk: uniform inside, the right share of the electrons
    inner = qd < model.probe_radius - 2 * p.q_pixel_size
    disk_level = p.central_fraction * p.electrons_per_pattern * p.q_pixel_size ** 2 / (math.pi * model.probe_radius ** 2)
    np.testing.assert_allclose(img[inner], disk_level + np.interp(qd[inner], model.q, prof), rtol=0.02)


def test_centre_is_centre_of_mass_of_the_central_disk(model):
    p = model.params
    for ry, rx in [(0, 0), (7, 23), (4, 11)]:
        st = model.row_structure(ry)
        expected, scales = model.expected_row(ry, st)
        centre = model.centres[ry, rx]
        scat = scales[rx] * (
            P.render_radial(p.detector_shape, centre, p.q_pixel_size, st["F_iso"][:, rx], model.dq,
                            p.ellipse_ratio, p.ellipse_angle_deg, p.supersample)
            + P.render_disks(p.detector_shape, centre, p.q_pixel_size, st["spots"][rx], model.probe_radius,
                             p.ellipse_ratio, p.ellipse_angle_deg, p.supersample))
        disk = expected[rx] - scat
        assert disk.sum() == pytest.approx(p.central_fraction * p.electrons_per_pattern, rel=1e-9)
        yy, xx = np.mgrid[: p.detector_shape[0], : p.detector_shape[1]]
        com = np.array([(disk * yy).sum(), (disk * xx).sum()]) / disk.sum()
        assert np.abs(com - centre).max() < 0.05


def test_type2_has_lif_spots_crystals_have_bragg_disks(model):
    ph = model.phantom
    seen_t2 = seen_cr = False
    for ry in range(model.params.scan_shape[0]):
        st = model.row_structure(ry)
        for j in range(model.params.scan_shape[1]):
            g = np.hypot(st["spots"][j][:, 0], st["spots"][j][:, 1])
            if ph.class_map[ry, j] == CI["sei_type2"]:
                seen_t2 = True
                assert 1 <= st["n_lif"][j] <= 3 and len(g) >= 2
                assert np.all(np.isin(np.round(g, 3), [0.430, 0.497, 0.702]))
                assert 0.0 < st["spots"][j][:, 2].sum() < 0.35
            elif ph.class_map[ry, j] == CI["crystal"]:
                seen_cr = True
                assert len(g) >= 4 and st["spots"][j][:, 2].sum() > 0.3
            else:
                assert len(g) == 0
    assert seen_t2 and seen_cr
    # new azimuths at every Type 2 position
    st = model.row_structure(2)
    t2 = np.nonzero(ph.class_map[2] == CI["sei_type2"])[0]
    assert len({tuple(np.round(st["spots"][j][0, :2], 6)) for j in t2}) == len(t2)


# ---------------------------------------------------------------------------------------------------
# the written dataset
# ---------------------------------------------------------------------------------------------------


def test_written_truth_and_config(npy_dataset):
    paths, data, truth, meta = npy_dataset
    ry, rx = SMALL["scan_shape"]
    assert data.shape == (ry, rx, 64, 64) and data.dtype == np.uint16
    assert truth["class_map"].dtype == np.int8 and truth["class_map"].shape == (ry, rx)
    assert list(truth["class_names"]) == list(CLASS_NAMES)
    assert truth["centre"].shape == (ry, rx, 2) and truth["peak_q"].dtype == np.float64
    cm, pk = truth["class_map"], truth["peak_q"]
    assert np.all(np.isnan(pk[cm == CI["crystal"]])) and np.all(np.isfinite(pk[cm != CI["crystal"]]))
    for name, (lo, hi) in PH.PEAK_RANGES.items():
        v = pk[cm == CI[name]]
        assert v.size and v.min() >= lo and v.max() <= hi
    counts = meta["class_counts"]
    assert sum(counts.values()) == ry * rx and counts["crystal"] == int((cm == 0).sum())
    assert meta["dose_e_per_A2"] == pytest.approx(2e4 / 40.0 ** 2)
    assert meta["q_pixel_size"] == 0.02 and meta["ellipse"] == {"ratio": 1.015, "angle_deg": 30.0}
    cfg = yaml.safe_load(paths["config"].read_text())
    assert cfg["input"] == {"path": "synth.npy", "format": "npy", "scan_shape": [ry, rx]}
    assert cfg["calibration"] == {"q_pixel_size": 0.02, "scan_step_nm": 4.0, "beam_energy_kv": 200,
                                  "convergence_mrad": 2.0}
    assert cfg["dose"] == {"electrons_per_pattern": 20000} and cfg["profiles"] == {"n": 1}
    assert cfg["peaks"] == {"window": [0.22, 0.42]} and cfg["classify"] == {"method": "probabilistic"}
    # class-mean noise-free profiles: Type 1 I·Q maximum at its class's mean truth
    q, iqn = truth["profile_q"], truth["class_mean_iqn"][CI["sei_type1"]]
    qmax = P.peak_position(q, iqn, (0.22, 0.42))[0]
    assert qmax == pytest.approx(pk[cm == CI["sei_type1"]].mean(), abs=0.003)
    assert not any(p.name.endswith(".part") for p in paths["data"].parent.iterdir())


def test_counts_are_poisson_around_electrons_per_pattern(npy_dataset, model):
    paths, data, truth, meta = npy_dataset
    defects = np.zeros((64, 64), bool)
    defects[tuple(truth["hot_pixels"].T)] = True
    defects[tuple(truth["dead_pixels"].T)] = True
    z = []
    for ry in (1, 6):
        expected, _ = model.expected_row(ry)
        assert np.allclose(expected.sum((1, 2)), 2e4)
        mu = expected[:, ~defects].sum(1)
        n = data[ry][:, ~defects].sum(1).astype(float)
        z.extend((n - mu) / np.sqrt(mu))
    z = np.array(z)
    assert np.abs(z).max() < 5 and abs(z.mean()) < 5 / math.sqrt(len(z)) and 0.5 < z.std() < 1.5
    # pixel-level Poisson: variance = mean over many pixels of one noise-free level (the disk interior)
    expected, _ = model.expected_row(2)
    inner = expected[0] > 0.9 * expected[0].max()
    frames = data[2][:, inner].astype(float) / expected[:, inner]
    assert frames.mean() == pytest.approx(1.0, abs=0.02)


def test_hot_and_dead_pixels(npy_dataset):
    paths, data, truth, meta = npy_dataset
    hot, vals, dead = truth["hot_pixels"], truth["hot_values"], truth["dead_pixels"]
    assert len(hot) == 5 and len(dead) == 5
    for (y, x), v in zip(hot, vals):
        assert np.all(data[:, :, y, x] == v) and v >= 200
    for y, x in dead:
        assert np.all(data[:, :, y, x] == 0)
    r_px = meta["probe_radius_px"]
    c = truth["centre"].reshape(-1, 2)
    for y, x in np.vstack([hot, dead]):
        assert np.hypot(c[:, 0] - y, c[:, 1] - x).min() > r_px + 1


def test_determinism(tmp_path, npy_dataset):
    paths, data, truth, meta = npy_dataset
    again = M.make_dataset(tmp_path / "a", fmt="npy", **SMALL)
    np.testing.assert_array_equal(np.load(again["data"]), data)
    t2 = np.load(again["truth_npz"])
    for k in truth.files:
        np.testing.assert_array_equal(t2[k], truth[k])
    other = M.make_dataset(tmp_path / "b", fmt="npy", seed=1, **SMALL)
    assert not np.array_equal(np.load(other["data"]), data)


def test_mib_output_matches_npy(tmp_path, npy_dataset):
    mib = pytest.importorskip("sendmap.io.mib")
    paths, data, truth, meta = npy_dataset
    out = M.make_dataset(tmp_path, fmt="mib", **SMALL)
    assert out["data"].name == "synth.mib" and out["hdr"].exists()
    arr, info = mib.read_mib_dask(out["data"], scan_shape=SMALL["scan_shape"])
    np.testing.assert_array_equal(np.asarray(arr), data)
    assert info.metadata.get("frames_per_trigger") == SMALL["scan_shape"][1]  # scan row length in the .hdr
    assert yaml.safe_load(out["config"].read_text())["input"]["format"] == "mib"


def test_rows_generated_once_in_order(model):
    calls = []
    src = M._RowSource(model, "u2", lambda ry, st, sc: calls.append(ry))
    a = src[0, 0:5]
    b = src[0, 5:24]
    assert a.shape == (5, 64, 64) and b.shape == (19, 64, 64)
    src[1, 0:3]
    assert calls == [0, 1]
    with pytest.raises(RuntimeError):
        src[5, 0:1]


def test_cli_arguments(tmp_path):
    parser = M.add_synth_arguments(argparse.ArgumentParser())
    args = parser.parse_args([str(tmp_path / "cli"), "--scan-shape", "4", "12", "--detector", "64",
                              "--q-pixel-size", "0.02", "--dose", "5e3", "--format", "npy", "--seed", "3",
                              "--ellipse", "1.02", "45", "--quiet"])
    assert M.synth_main(args) == 0
    meta = json.loads((tmp_path / "cli" / "truth.json").read_text())
    assert meta["electrons_per_pattern"] == 5000 and meta["seed"] == 3 and meta["ellipse"]["ratio"] == 1.02
    assert np.load(tmp_path / "cli" / "synth.npy").shape == (4, 12, 64, 64)


def test_u1_output_clips_and_counts_saturation(tmp_path):
    out = M.make_dataset(tmp_path, fmt="npy", dtype="u1", electrons_per_pattern=1e5, scan_shape=(2, 6),
                         detector_shape=(64, 64), q_pixel_size=0.02)
    data, meta = np.load(out["data"]), json.loads(out["truth_json"].read_text())
    truth = np.load(out["truth_npz"])
    assert data.dtype == np.uint8 and meta["n_saturated"] > 0  # the central disk holds ~1500 counts/px
    assert np.all(truth["hot_values"] <= 255)
    hy, hx = truth["hot_pixels"].T
    np.testing.assert_array_equal(data[:, :, hy, hx], np.broadcast_to(truth["hot_values"], (2, 6, 5)))


def test_bad_parameters_are_input_errors(tmp_path):
    with pytest.raises(SendmapInputError, match="central_fraction"):
        M.make_dataset(tmp_path, fmt="npy", central_fraction=1.2, **SMALL)
    with pytest.raises(SendmapInputError, match="format"):
        M.make_dataset(tmp_path, fmt="tiff", **SMALL)
    with pytest.raises(SendmapInputError, match="n = 0"):
        M.make_dataset(tmp_path, fmt="npy", n=0, **SMALL)
