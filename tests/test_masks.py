"""Detector mask: saturated pixels, beam-stop and aperture shadows found from the mean pattern, user
mask files; and the synthetic beam stop / aperture that test them."""
import argparse
import json

import numpy as np
import pytest
from scipy import ndimage

from sendmap.errors import SendmapInputError
from sendmap.science.mask import hot_dead_mask, load_user_mask, saturated_mask, saturation_level
from sendmap.science.shadows import shadow_masks
from sendmap.synth import patterns as P
from sendmap.synth.make import SynthModel, SynthParams, add_synth_arguments, make_dataset, synth_main

SCAN = (12, 16)
DISK_PX = 6.38  # α/λ / q_pixel_size for 2 mrad, 200 kV, 0.0125 1/Å per px


def _frames(model: SynthModel) -> np.ndarray:
    return np.concatenate([model.counts_row(ry)[0] for ry in range(model.params.scan_shape[0])])


def _mean_and_mask(frames):
    s = frames.sum(axis=0, dtype=np.float64)
    return s / len(frames), hot_dead_mask(s, frames.max(axis=0))["mask"]


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


# ------------------------------------------------------------------------------------------ saturation


def test_saturation_level():
    assert saturation_level("u1", 6) == 63  # the Merlin 6-bit file: bytes on disk, counters saturate at 63
    assert saturation_level(">u2", 12) == 4095
    assert saturation_level(np.uint8) == 255 and saturation_level(">u2") == 65535
    assert saturation_level("u4", 24) == 2**24 - 1
    assert saturation_level("float32") is None
    with pytest.raises(ValueError):
        saturation_level("u1", 0)


def test_saturated_pixels_found_exactly():
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 60, size=(40, 32, 32)).astype(np.uint8)  # a 6-bit counter, never saturated
    sat = [(3, 4), (10, 20), (31, 0), (16, 16)]
    for k, (y, x) in enumerate(sat):
        frames[rng.integers(40), y, x] = 63  # saturated in one frame only
    frames[5, 7, 7] = 62  # one count below saturation: not flagged
    got = saturated_mask(frames.max(axis=0), saturation_level("u1", 6))
    truth = np.zeros((32, 32), bool)
    truth[tuple(np.array(sat).T)] = True
    np.testing.assert_array_equal(got, truth)
    # the byte's own maximum (8 bits) is never reached: nothing flagged; no saturation level: nothing
    assert not saturated_mask(frames.max(axis=0), saturation_level("u1")).any()
    assert not saturated_mask(frames.max(axis=0), None).any()
    # combined with the hot/dead mask, the saturated pixels are not used
    s = frames.sum(axis=0, dtype=np.float64)
    used = hot_dead_mask(s, frames.max(axis=0))["mask"] & ~got
    assert not used[tuple(np.array(sat).T)].any() and used.sum() == 32 * 32 - len(sat)


# ------------------------------------------------------------------------------------------ shadows

SHADOW_CASES = {
    # default beam stop: a finger (round tip over the disk) from the bottom edge
    "finger": dict(seed=1, beam_stop=True),
    "narrow arm": dict(seed=2, beam_stop=True, beam_stop_width_px=8.0, beam_stop_angle_deg=70.0),
    "arm + aperture": dict(seed=4, beam_stop=True, beam_stop_width_px=10.0, beam_stop_angle_deg=315.0,
                           aperture_radius_px=70.0),
    "aperture": dict(seed=1, aperture_radius_px=56.0),
}


@pytest.fixture(scope="module", params=list(SHADOW_CASES))
def shadow_case(request):
    model = SynthModel(SynthParams(scan_shape=SCAN, **SHADOW_CASES[request.param]))
    mean, used = _mean_and_mask(_frames(model))
    return request.param, model, mean, used


def _half_truth(model):
    """Pixels more than half shadowed (the shadow at pixel resolution), per shadow."""
    p = model.params
    bs = ap = np.zeros(p.detector_shape, bool)
    if model.beam_stop is not None:
        b = model.beam_stop
        bs = P.beam_stop_transmission(p.detector_shape, b["tip_yx"], b["tip_radius_px"], b["width_px"],
                                      b["angle_deg"]) < 0.5
    if model.aperture is not None:
        a = model.aperture
        ap = P.aperture_transmission(p.detector_shape, a["centre_yx"], a["radius_px"]) < 0.5
    return bs, ap


def test_shadows_found_on_synthetic_mean_pattern(shadow_case):
    name, model, mean, used = shadow_case
    sh = shadow_masks(mean, mask=used, disk_radius_px=DISK_PX)
    core = shadow_masks(mean, mask=used, disk_radius_px=DISK_PX, margin_px=0)
    info = sh["info"]
    bs_half, ap_half = _half_truth(model)
    any_shadow = model.transmission < 1.0

    # every truly shadowed pixel (any part of it) is masked once the 2-px margin is added ...
    assert not (any_shadow & sh["mask"]).any(), f"{name}: {(any_shadow & sh['mask']).sum()} shadowed pixels used"
    # ... and the margin adds little: nothing masked more than 3.5 px from a shadowed pixel
    far = ndimage.distance_transform_edt(~any_shadow) > 3.5
    assert (~sh["mask"] & far).sum() <= 0.01 * any_shadow.sum()
    # the shadows as found (no margin) match the truth at pixel resolution
    assert abs(info["centre_yx"][0] - model.centres[..., 0].mean()) < 0.5
    assert abs(info["centre_yx"][1] - model.centres[..., 1].mean()) < 0.5
    if model.beam_stop is not None:
        b = model.beam_stop
        outside_ap = ~ap_half  # where the aperture shadow is, the arm under it is the aperture's
        assert info["beam_stop"]["found"]
        # (0.88: in "arm + aperture" the arm's edge pixels in the corners beyond the largest full circle, at
        # 0.07 counts per pixel in the mean of 192 frames, are below a single pixel's 5 σ; IoU 0.89)
        assert _iou(core["beam_stop"] & outside_ap, bs_half & outside_ap) > 0.88
        assert abs((info["beam_stop"]["angle_deg"] - b["angle_deg"] + 180) % 360 - 180) < 2.0
        assert abs(info["beam_stop"]["width_px"] - b["width_px"]) < 1.5
        assert info["beam_stop"]["centre_covered_fraction"] == 1.0
    else:
        assert not info["beam_stop"]["found"] and not sh["beam_stop"].any()
    if model.aperture is not None:
        a = model.aperture
        assert info["aperture"]["found"]
        assert _iou(core["aperture"], ap_half) > 0.9
        assert abs(info["aperture"]["radius_px"] - a["radius_px"]) < 1.0
        assert np.hypot(*np.subtract(info["aperture"]["centre_yx"], a["centre_yx"])) < 1.0
    else:
        assert not info["aperture"]["found"] and not sh["aperture"].any()


def test_beam_stop_found_at_low_dose():
    """2e3 electrons per pattern: the mean of 192 frames holds ~10 counts per outer pixel."""
    model = SynthModel(SynthParams(scan_shape=SCAN, seed=3, beam_stop=True, beam_stop_angle_deg=20.0,
                                   electrons_per_pattern=2e3))
    mean, used = _mean_and_mask(_frames(model))
    sh = shadow_masks(mean, mask=used, disk_radius_px=DISK_PX)
    core = shadow_masks(mean, mask=used, disk_radius_px=DISK_PX, margin_px=0)
    bs_half, _ = _half_truth(model)
    assert sh["info"]["beam_stop"]["found"] and not sh["info"]["aperture"]["found"]
    assert _iou(core["beam_stop"], bs_half) > 0.85
    assert not (model.beam_stop_mask & sh["mask"]).any()


def test_no_shadow_on_normal_pattern_with_unmasked_defects():
    """A normal scan (amorphous and crystalline positions): nothing found, even when its dead pixels,
    a dead block on the detector edge and a dark speck are not masked beforehand."""
    model = SynthModel(SynthParams(scan_shape=SCAN, seed=5, n_dead=8))
    mean, used = _mean_and_mask(_frames(model))
    for m in (used, None):
        sh = shadow_masks(mean, mask=m, disk_radius_px=DISK_PX)
        assert not sh["beam_stop"].any() and not sh["aperture"].any() and sh["mask"].all()
        assert np.hypot(*np.subtract(sh["info"]["centre_yx"], model.centres.reshape(-1, 2).mean(0))) < 0.3
    bad = mean.copy()
    bad[0:4, 40:44] = 0.0  # a dead 4×4 block on the detector edge
    bad[90:94, 30:33] = 0.0  # a dark speck inside
    sh = shadow_masks(bad, disk_radius_px=DISK_PX)
    assert not sh["beam_stop"].any() and not sh["aperture"].any()
    # without the centre guess the disk is found and the answer is the same
    sh2 = shadow_masks(bad, centre_guess_yx=None)
    assert not sh2["beam_stop"].any() and not sh2["aperture"].any()


def test_hot_pixel_clusters_are_found_and_disks_are_not():
    """Two or three adjacent hot pixels (each the other's brightest neighbour) are hot; the central disk and Li/Cu
    Bragg disks of a grain's summed pattern (strong, steep-edged) are not. The generator's pair (724 and 224 counts
    per frame, diagonal) missed before put a false crystal spot into every pattern of seed 561's scan."""
    model = SynthModel(SynthParams(scan_shape=SCAN, seed=2, n_cu_grains=8))
    p = model.params
    rng = np.random.default_rng(4)
    spots = model.grain_spots[0]
    img = P.render_pattern(p.detector_shape, (63.7, 64.2), p.q_pixel_size, probe_radius=model.probe_radius,
                           radial_profile=0.3 * model.K_background, spots=spots, central_fraction=0.75,
                           electrons=2e4, dq=model.dq)
    s = rng.poisson(img * 3000).astype(float)  # a 3000-frame sum
    defects = {(86, 54): 724, (85, 53): 224, (20, 30): 500, (20, 31): 480, (100, 100): 300, (101, 100): 280,
               (100, 101): 260, (40, 90): 900}  # a diagonal pair, a row pair, an L of three, a single
    for (y, x), v in defects.items():
        s[y, x] += v * 3000
    r = hot_dead_mask(s, np.ones_like(s))
    found = set(zip(*np.nonzero(r["hot"])))
    assert found == set(defects)
    # without the defects nothing is hot: the disks are never flagged
    clean = rng.poisson(img * 3000).astype(float)
    assert not hot_dead_mask(clean, np.ones_like(clean))["hot"].any()


@pytest.mark.parametrize("n_frames", [0, 20])
def test_no_shadow_on_bragg_patterns(n_frames):
    """Strong Bragg disks of Li and Cu grains in zone axes (single-grain mean patterns, noise free and
    20 frames at 2e4 electrons), centred or off-centre: no beam stop, no aperture."""
    model = SynthModel(SynthParams(scan_shape=SCAN, seed=2, n_cu_grains=8))
    p = model.params
    rng = np.random.default_rng(1)
    zones = {}
    for g, sp in zip(model.phantom.grains, model.grain_spots):
        zones.setdefault((g.phase, tuple(g.zone)), sp)
    assert len(zones) >= 3
    for (phase, zone), spots in zones.items():
        for centre in ((63.7, 64.2), (50.3, 75.6)):
            img = P.render_pattern(p.detector_shape, centre, p.q_pixel_size, probe_radius=model.probe_radius,
                                   radial_profile=0.3 * model.K_background, spots=spots, central_fraction=0.75,
                                   electrons=2e4, dq=model.dq, ratio=1.015, angle_deg=30.0)
            if n_frames:
                img = rng.poisson(img * n_frames) / n_frames
            sh = shadow_masks(img, disk_radius_px=DISK_PX)
            assert not sh["beam_stop"].any() and not sh["aperture"].any(), (phase, zone, centre)
            assert np.hypot(*np.subtract(sh["info"]["centre_yx"], centre)) < 0.1


# ------------------------------------------------------------------------------------------ synth option


def test_synth_beam_stop_and_aperture_option(tmp_path):
    kw = dict(scan_shape=(3, 4), detector_shape=64, q_pixel_size=0.025, fmt="npy", seed=7,
              drift_px=(1.0, -1.0), drift_slow_px=(0.5, 0.5))
    plain = make_dataset(tmp_path / "plain", **kw)
    shaded = make_dataset(tmp_path / "shaded", **kw, beam_stop=True, beam_stop_width_px=6.0,
                          beam_stop_angle_deg=0.0, aperture_radius_px=28.0)
    t_plain = np.load(plain["truth_npz"])
    t = np.load(shaded["truth_npz"])
    assert not {"beam_stop_mask", "aperture_mask", "transmission"} & set(t_plain.files)
    assert "beam_stop" not in json.loads(plain["truth_json"].read_text())
    meta = json.loads(shaded["truth_json"].read_text())
    bs, ap = meta["beam_stop"], meta["aperture"]
    assert bs["width_px"] == 6.0 and bs["angle_deg"] == 0.0 and bs["covers_central_disk"]
    assert ap["radius_px"] == 28.0
    # the tip covers the central disk at every position
    r_disk = meta["probe_radius_px"] * np.sqrt(meta["ellipse"]["ratio"])
    d = np.hypot(*(t["centre"].reshape(-1, 2) - np.array(bs["tip_yx"])).T)
    assert np.all(d + r_disk <= bs["tip_radius_px"])
    a = np.load(plain["data"]).astype(np.int64)
    b = np.load(shaded["data"]).astype(np.int64)
    opaque = t["transmission"] == 0.0
    hot = np.zeros(opaque.shape, bool)
    hot[tuple(t["hot_pixels"].T)] = True
    assert opaque[32, 60] and opaque[32, 40] and opaque[0, 0]  # arm to the right edge; a corner beyond the aperture
    assert np.all(b[..., opaque & ~hot] == 0) and a[..., opaque & ~hot].sum() > 1000
    # the unshadowed pixels hold exactly the data of the plain dataset where nothing is shadowed
    clear = (t["transmission"] == 1.0)
    np.testing.assert_array_equal(t["beam_stop_mask"] | t["aperture_mask"], ~clear)
    assert b[..., clear].sum() == pytest.approx(a[..., clear].sum(), rel=0.02)


def test_synth_cli_beam_stop_flags(tmp_path):
    parser = add_synth_arguments(argparse.ArgumentParser())
    args = parser.parse_args([str(tmp_path / "cli"), "--scan-shape", "2", "3", "--detector", "64",
                              "--q-pixel-size", "0.025", "--format", "npy", "--quiet", "--drift", "1", "1",
                              "--drift-slow", "0", "0", "--beam-stop", "--beam-stop-angle", "45",
                              "--beam-stop-width", "5", "--aperture-radius-px", "30"])
    assert synth_main(args) == 0
    meta = json.loads((tmp_path / "cli" / "truth.json").read_text())
    assert meta["beam_stop"]["angle_deg"] == 45.0 and meta["beam_stop"]["width_px"] == 5.0
    assert meta["aperture"]["radius_px"] == 30.0
    defaults = parser.parse_args([str(tmp_path / "x")])
    assert defaults.beam_stop is False and defaults.aperture_radius_px is None


# ------------------------------------------------------------------------------------------ user mask file


def _user_mask():
    m = np.zeros((24, 32), np.uint8)
    m[3, 5] = 1
    m[10:14, 20:30] = 255
    return m


def test_user_mask_npy_and_tif_round_trip(tmp_path):
    import tifffile

    m = _user_mask()
    np.save(tmp_path / "m.npy", m.astype(bool))
    tifffile.imwrite(tmp_path / "m.tif", m)
    tifffile.imwrite(tmp_path / "m3.tiff", m.astype(np.float32)[None])  # a one-page stack
    for name in ("m.npy", "m.tif", "m3.tiff"):
        used = load_user_mask(tmp_path / name, (24, 32))
        assert used.dtype == bool and used.shape == (24, 32)
        np.testing.assert_array_equal(used, m == 0)  # nonzero = excluded


def test_user_mask_png_and_nan(tmp_path):
    from PIL import Image

    m = _user_mask()
    Image.fromarray(m).save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_user_mask(tmp_path / "m.png", (24, 32)), m == 0)
    f = np.zeros((24, 32))
    f[0, 0] = np.nan
    np.save(tmp_path / "f.npy", f)
    used = load_user_mask(tmp_path / "f.npy", (24, 32))
    assert not used[0, 0] and used.sum() == 24 * 32 - 1


def test_user_mask_errors_name_the_file(tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((32, 24), np.uint8))
    with pytest.raises(SendmapInputError, match=r"wrong\.npy.*\(32, 24\).*\(24, 32\)"):
        load_user_mask(tmp_path / "wrong.npy", (24, 32))
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(SendmapInputError, match=r"broken\.tif"):
        load_user_mask(tmp_path / "broken.tif", (24, 32))
    with pytest.raises(SendmapInputError, match=r"missing\.npy.*not found"):
        load_user_mask(tmp_path / "missing.npy", (24, 32))
    with pytest.raises(SendmapInputError, match=r"mask\.edf.*unknown type"):
        load_user_mask(tmp_path / "mask.edf", (24, 32))
