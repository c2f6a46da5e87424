"""`sendmap calibrate`: Q per pixel, centre and ellipse from the rings of a polycrystalline standard."""
import doctest
import json
import math

import numpy as np
import pytest

import sendmap.calibrant as calibrant_mod
import sendmap.science.ring_geometry as ring_geometry_mod
import sendmap.science.ring_profile as ring_profile_mod
import sendmap.science.rings as rings_mod
from sendmap.calibrant import calibrate_file, calibrate_pattern, format_report
from sendmap.cli import main
from sendmap.errors import SendmapInputError
from sendmap.science.phases import get_phase
from sendmap.science.ring_geometry import (
    ellipse_from_params,
    ellipse_params,
    fit_ring_geometry,
    symmetry_centre,
    undistorted_radius,
)
from sendmap.science.ring_profile import index_rings

AU = get_phase("au")
REAL_GOLD = "au_rings/au_xgrating_20cm.tif"


def _gold_pattern(shape, centre, q_pixel_size, ratio, angle_deg, sigma_px=1.8, peak=400.0, bg=800.0, seed=0,
                  supersample=4):
    """Poisson counts of a gold ring pattern: every Au reflection as a Gaussian ring (σ in px of undistorted
    radius, height ∝ intensity·d², 111 = ``peak``) on a Lorentzian background, through the elliptical
    distortion of sendmap's convention, written out here independently of the code under test:
    u = dx·cosθ + dy·sinθ, v = −dx·sinθ + dy·cosθ, ρ = sqrt((u/a)² + (v/b)²), a = sqrt(ratio) = 1/b.
    """
    ss = supersample
    off = (np.arange(ss) + 0.5) / ss - 0.5
    y = (np.arange(shape[0])[:, None] + off[None, :]).ravel() - centre[0]
    x = (np.arange(shape[1])[:, None] + off[None, :]).ravel() - centre[1]
    dy, dx = np.meshgrid(y, x, indexing="ij")
    th = math.radians(angle_deg)
    a = math.sqrt(ratio)
    u = dx * math.cos(th) + dy * math.sin(th)
    v = -dx * math.sin(th) + dy * math.cos(th)
    rho = np.hypot(u / a, v * a)
    img = bg / (1 + (rho / 15.0) ** 2) + 5.0
    for r in AU.reflections(2.0):
        h = peak * r.intensity / 100 * (0.4247 / r.q_inv_angstrom) ** 2
        img += h * np.exp(-0.5 * ((rho - r.q_inv_angstrom / q_pixel_size) / sigma_px) ** 2)
    img = img.reshape(shape[0], ss, shape[1], ss).mean(axis=(1, 3))
    return np.random.default_rng(seed).poisson(img).astype(np.float64)


# a small, low-dose pattern for the file-format tests (fast)
SMALL = dict(shape=(160, 160), centre=(78.6, 81.3), q_pixel_size=0.0135, ratio=1.015, angle_deg=120.0,
             sigma_px=1.5, peak=60.0, bg=200.0)


# ----------------------------------------------------------------------------------------------------
# science pieces
# ----------------------------------------------------------------------------------------------------
def test_doctests():
    for mod in (rings_mod, ring_geometry_mod, ring_profile_mod, calibrant_mod):
        result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, mod.__name__


def test_gold_reflections():
    q = {r.label: r.q_inv_angstrom for r in AU.reflections(0.9)}
    for hkl, ref in {"111": 0.4247, "200": 0.4905, "220": 0.6936, "311": 0.8133}.items():
        assert abs(q[hkl] - ref) < 2e-4, hkl


def test_gold_matches_pyfai_calibrant():
    """The library's gold rings are pyFAI's Au calibrant (a = 4.0782 Å there, 4.078 Å here)."""
    calibrant = pytest.importorskip("pyFAI.calibrant")
    au = calibrant.get_calibrant("Au")
    d_pyfai = np.asarray(au.dspacing if hasattr(au, "dspacing") else au.get_dSpacing(), float)[:6]
    d_ours = np.array([r.d_angstrom for r in AU.reflections(1.1)])[:6]
    assert np.allclose(d_ours, d_pyfai, rtol=1e-4)


def test_ellipse_convention_matches_synth():
    """undistorted_radius and the (p, q) parameters follow sendmap.synth's detector geometry."""
    from sendmap.synth.patterns import detector_q

    ratio, angle, qpx = 1.03, 37.0, 0.01
    q = detector_q((40, 50), (18.3, 26.1), qpx, ratio, angle)
    yy, xx = np.mgrid[:40, :50]
    rho = undistorted_radius(yy - 18.3, xx - 26.1, ratio, angle)
    assert np.allclose(rho * qpx, q, rtol=1e-12, atol=1e-12)
    r2, a2 = ellipse_from_params(*ellipse_params(ratio, angle))
    assert abs(r2 - ratio) < 1e-12 and abs(a2 - angle) < 1e-9
    # the major axis is at angle_deg: a point on it at detector distance t has ρ = t / sqrt(ratio)
    t = 20.0
    assert math.isclose(float(undistorted_radius(t * math.sin(math.radians(angle)), t * math.cos(math.radians(angle)),
                                                 ratio, angle)), t / math.sqrt(ratio))


def test_index_rings_ratio_matching():
    refl = AU.reflections(1.5)
    q = np.array([r.q_inv_angstrom for r in refl])
    inten = np.array([r.intensity for r in refl])
    qpx = 0.0112
    # 111, 220, 311, 331+420 blend as seen, 200 missing, a spurious feature at the direct-beam edge
    feats = np.array([4.0, q[0] / qpx, q[2] / qpx, q[3] / qpx * 1.003, 0.5 * (q[6] + q[7]) / qpx])
    res = index_rings(feats, q, inten)
    assert abs(res["q_pixel_size"] / qpx - 1) < 0.005
    assert (1, 0) in res["pairs"] and (2, 2) in res["pairs"]
    # q·2 maps every feature onto an allowed fcc reflection (hkl → 2h 2k 2l) but predicts many missing rings
    assert abs(res["q_pixel_size"] / (2 * qpx) - 1) > 0.1
    # a guess restricts the search
    res_g = index_rings(feats, q, inten, q_guess=0.0115)
    assert abs(res_g["q_pixel_size"] / qpx - 1) < 0.005
    assert index_rings(np.array([10.0]), q, inten)["q_pixel_size"] is None


def test_symmetry_centre_with_mask():
    img = _gold_pattern((128, 128), (61.4, 66.7), 0.016, 1.0, 0.0, peak=200.0)
    mask = np.ones(img.shape, bool)
    mask[:, :20] = False  # a masked band, filled with garbage
    img[:, :20] = 1e5
    c = symmetry_centre(img, mask)
    assert np.hypot(c[0] - 61.4, c[1] - 66.7) < 0.5


def test_fit_ring_geometry_drift():
    """Ring centres c + k·R² (tilted-detector-like) are recovered, and c is the zero-radius centre."""
    rng = np.random.default_rng(1)
    phi = np.linspace(-np.pi, np.pi, 48, endpoint=False)
    k = np.array([6e-5, -3e-5])
    c0 = np.array([100.3, 98.8])
    pts, grp = [], []
    for g, rho in enumerate((35.0, 60.0, 90.0)):
        cg = c0 + k * rho**2
        u, v = math.sqrt(1.02) * rho * np.cos(phi), rho * np.sin(phi) / math.sqrt(1.02)
        th = math.radians(70.0)
        pts.append(np.stack([cg[0] + u * math.sin(th) + v * math.cos(th),
                             cg[1] + u * math.cos(th) - v * math.sin(th)], 1) + rng.normal(0, 0.02, (48, 2)))
        grp.append(np.full(48, g))
    pts, grp = np.concatenate(pts), np.concatenate(grp)
    g = fit_ring_geometry(pts, grp, np.full(len(pts), 0.02), (100, 100), fit_drift=True)
    assert np.abs(g["centre"] - c0).max() < 0.03
    assert np.abs(g["drift_yx"] - k).max() < 3e-6
    assert abs(g["ratio"] - 1.02) < 5e-4 and abs(g["angle_deg"] - 70.0) < 1.0
    assert np.allclose(g["radius"], [35, 60, 90], atol=0.02)
    # without the drift term the centre is pulled towards the outer rings' centres
    g0 = fit_ring_geometry(pts, grp, np.full(len(pts), 0.02), (100, 100), fit_drift=False)
    assert np.abs(g0["centre"] - c0).max() > 0.1 and g0["rms_px"] > 3 * g["rms_px"]


# ----------------------------------------------------------------------------------------------------
# the whole calibration
# ----------------------------------------------------------------------------------------------------
def test_synthetic_gold_recovers_geometry():
    truth = dict(centre=(130.37, 126.82), q_pixel_size=0.0100, ratio=1.02, angle_deg=30.0)
    img = _gold_pattern((256, 256), **truth)
    res = calibrate_pattern(img, "au", detector_pixel_um=55.0)
    assert abs(res["q_pixel_size"] / truth["q_pixel_size"] - 1) < 0.002
    assert np.hypot(res["centre"][0] - truth["centre"][0], res["centre"][1] - truth["centre"][1]) < 0.1
    assert abs(res["ellipse"]["ratio"] - truth["ratio"]) < 0.002
    assert abs(res["ellipse"]["angle_deg"] - truth["angle_deg"]) < 3.0
    used = [r for r in res["rings"] if r["used"]]
    assert {"111", "220", "311"} <= {r["hkl"] for r in used} and len(used) >= 4
    for r in res["rings"]:  # every ring found, used or not, sits where gold puts it
        assert abs(r["residual"]) < 0.005, r
    # errors are honest: the truth is within 4 σ
    assert abs(res["q_pixel_size"] - truth["q_pixel_size"]) < 4 * res["q_pixel_size_err"] + 1e-6
    assert abs(res["ellipse"]["ratio"] - truth["ratio"]) < 4 * res["ellipse"]["ratio_err"] + 1e-4
    # camera length L = p / (q_px·λ) at 200 kV
    lam = 0.0250793
    assert abs(res["camera_length_mm"] - 55e-3 / (res["q_pixel_size"] * lam)) < 0.05
    cfg = res["config"]["calibration"]
    assert cfg["q_pixel_size"] == pytest.approx(res["q_pixel_size"], rel=1e-5)
    assert cfg["ellipse"] == [pytest.approx(res["ellipse"]["ratio"], abs=1e-4),
                              pytest.approx(res["ellipse"]["angle_deg"], abs=0.05)]
    json.dumps(res)  # JSON-serialisable as it is


def test_real_gold_file(real_data_dir, capsys):
    """The real gold cross-grating pattern: `sendmap calibrate FILE --json` gives the contract's object."""
    path = real_data_dir / REAL_GOLD
    if not path.exists():
        pytest.skip(f"{path} not found")
    assert main(["calibrate", str(path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("q_pixel_size", "centre", "ellipse", "rings"):
        assert key in res
    assert set(res["ellipse"]) >= {"ratio", "angle_deg"} and len(res["centre"]) == 2
    for r in res["rings"]:
        assert set(r) >= {"hkl", "q", "radius_px", "residual"}
    used = [r for r in res["rings"] if r["used"]]
    assert len(used) >= 3 and {"111", "220", "311"} <= {r["hkl"] for r in used}
    assert all(abs(r["residual"]) < 0.005 for r in used), used
    assert np.hypot(res["centre"][0] - 127.6, res["centre"][1] - 127.4) < 0.5
    # the 111 ring sits at ~42.4 px: Q per pixel ≈ 0.4247 / 42.4
    assert 0.0099 < res["q_pixel_size"] < 0.0101
    assert 1.0 <= res["ellipse"]["ratio"] < 1.06
    text = format_report(res)
    assert "Q per pixel" in text and "111" in text and "calibration:" in text


def test_4d_dataset_gives_the_mean_patterns_answer(tmp_path):
    """A 4-D dataset (.npy and Merlin .mib) is calibrated on its mean pattern: the same answer."""
    from sendmap.io.mib import write_mib

    frames = np.stack([_gold_pattern(seed=s, **SMALL) for s in range(4)]).reshape(2, 2, *SMALL["shape"])
    frames = frames.astype(np.uint16)
    np.save(tmp_path / "d4.npy", frames)
    mib = write_mib(tmp_path / "d4.mib", frames, dtype="u2")
    np.save(tmp_path / "mean.npy", frames.astype(np.float64).mean(axis=(0, 1)))
    ref = calibrate_file(tmp_path / "mean.npy")
    assert ref["input"]["frames_averaged"] == 1
    assert abs(ref["q_pixel_size"] / SMALL["q_pixel_size"] - 1) < 0.003
    assert np.hypot(ref["centre"][0] - SMALL["centre"][0], ref["centre"][1] - SMALL["centre"][1]) < 0.25
    for path in (tmp_path / "d4.npy", mib):
        res = calibrate_file(path)
        assert res["input"]["frames_averaged"] == 4
        assert res["q_pixel_size"] == pytest.approx(ref["q_pixel_size"], rel=1e-6)
        assert res["centre"] == pytest.approx(ref["centre"], abs=1e-3)
        assert res["ellipse"]["ratio"] == pytest.approx(ref["ellipse"]["ratio"], abs=1e-5)
        assert [r["residual"] for r in res["rings"]] == pytest.approx([r["residual"] for r in ref["rings"]], abs=1e-5)


def test_mask_file_excludes_garbage(tmp_path, capsys):
    img = _gold_pattern(seed=7, **SMALL)
    img[70:90, 100:] = 5e4  # a saturated streak across the rings, masked by the user
    m = np.zeros(img.shape, np.uint8)
    m[70:90, 100:] = 1
    np.save(tmp_path / "p.npy", img)
    np.save(tmp_path / "m.npy", m)
    assert main(["calibrate", str(tmp_path / "p.npy"), "--mask", str(tmp_path / "m.npy"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert abs(res["q_pixel_size"] / SMALL["q_pixel_size"] - 1) < 0.003
    assert np.hypot(res["centre"][0] - SMALL["centre"][0], res["centre"][1] - SMALL["centre"][1]) < 0.25
    assert res["input"]["mask_file"].endswith("m.npy")
    # a mask of the wrong shape is bad input
    np.save(tmp_path / "m_bad.npy", m[:-1])
    assert main(["calibrate", str(tmp_path / "p.npy"), "--mask", str(tmp_path / "m_bad.npy")]) == 2
    assert "shape" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# bad input: exit code 2 and a message
# ----------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path, capsys):
    assert main(["calibrate", str(tmp_path / "nowhere.tif")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "nowhere.tif" in err


def test_pattern_without_rings(tmp_path, capsys):
    yy, xx = np.mgrid[:128, :128]
    smooth = 500.0 / (1 + (np.hypot(yy - 63.2, xx - 64.9) / 12.0) ** 2) + 3.0
    np.save(tmp_path / "norings.npy", np.random.default_rng(3).poisson(smooth).astype(np.float32))
    assert main(["calibrate", str(tmp_path / "norings.npy")]) == 2
    assert "no rings" in capsys.readouterr().err


@pytest.mark.parametrize("make,needle", [
    (lambda p: np.save(p / "x.npy", np.zeros(16)), "expected"),
    (lambda p: np.save(p / "x.npy", np.zeros((2, 2, 2, 2, 2))), "expected"),
    (lambda p: (p / "x.tif").write_bytes(b"not a tiff at all"), "TIFF"),
    (lambda p: np.save(p / "x.npy", np.zeros((32, 32))), "constant"),
])
def test_unreadable_or_wrong_shape(tmp_path, capsys, make, needle):
    make(tmp_path)
    path = next(tmp_path.glob("x.*"))
    assert main(["calibrate", str(path)]) == 2
    assert needle in capsys.readouterr().err


def test_unknown_phase(tmp_path, capsys):
    np.save(tmp_path / "p.npy", _gold_pattern(**SMALL))
    assert main(["calibrate", str(tmp_path / "p.npy"), "--phase", "unobtainium"]) == 2
    assert "unknown phase" in capsys.readouterr().err
    with pytest.raises(SendmapInputError):
        calibrate_pattern(np.ones((8, 8, 8)))
