"""The calibrate stage end to end on synthetic scans: centres (disk and beam stop), masks from every cause."""
import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

from sendmap.cli import main as sendmap_main


def _synth(folder, *extra):
    assert sendmap_main(["synth", str(folder), "--scan-shape", "12", "16", "--detector", "128", "--seed", "1",
                         "--quiet", *extra]) == 0
    return folder / "config.yaml", np.load(folder / "truth.npz")


def _calibrate(cfg, out, *sets):
    args = ["run", str(cfg), "--until", "calibrate", "--no-progress", "--set", f"output.dir={out}"]
    for s in sets:
        args += ["--set", s]
    assert sendmap_main(args) == 0
    return zarr.open_group(str(out / "sendmap.zarr"), mode="r")


def test_centres_with_drift_within_005_px(tmp_path):
    cfg, truth = _synth(tmp_path / "d")
    g = _calibrate(cfg, tmp_path / "o")
    err = np.abs(np.asarray(g["calibration/origin"]) - truth["centre"])
    assert err.max() < 0.05, err.max()
    assert g.attrs["calibration"]["centre_method"] == "disk"
    assert not np.asarray(g["calibration/beam_stop"]).any()
    # hot pixels found and excluded
    mask = np.asarray(g["calibration/mask"])
    assert not mask[tuple(truth["hot_pixels"].T)].any()


def test_beam_stop_over_the_central_disk_found_and_centres_within_half_a_pixel(tmp_path):
    cfg, truth = _synth(tmp_path / "d", "--beam-stop")
    g = _calibrate(cfg, tmp_path / "o")  # no mask given: the beam stop is found
    cal = g.attrs["calibration"]
    assert cal["centre_method"] == "symmetry"
    found = np.asarray(g["calibration/beam_stop"])
    true = truth["beam_stop_mask"]
    assert (found & true).sum() / (found | true).sum() > 0.8
    assert not np.asarray(g["calibration/mask"])[true].any()  # every shadowed pixel is excluded
    err = np.abs(np.asarray(g["calibration/origin"]) - truth["centre"])
    assert err.max() < 0.5, err.max()


def test_user_mask_file_is_added_and_a_wrong_shape_is_exit_2(tmp_path):
    cfg, _ = _synth(tmp_path / "d")
    user = np.zeros((128, 128), np.uint8)
    user[100:104, 10:30] = 1  # nonzero = excluded
    np.save(tmp_path / "d" / "mine.npy", user)
    g = _calibrate(cfg, tmp_path / "o", "calibration.mask_file=mine.npy")  # relative to the config's folder
    mask = np.asarray(g["calibration/mask"])
    assert not mask[100:104, 10:30].any()
    np.testing.assert_array_equal(np.asarray(g["calibration/user_mask"]), user.astype(bool))
    np.save(tmp_path / "d" / "bad.npy", np.zeros((64, 64)))
    r = subprocess.run([sys.executable, "-m", "sendmap.cli", "run", str(cfg), "--until", "calibrate", "--no-progress",
                        "--set", f"output.dir={tmp_path / 'o2'}", "--set", "calibration.mask_file=bad.npy"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "bad.npy" in r.stderr and "128" in r.stderr


def test_saturated_pixels_are_masked_and_not_searched_when_binned(tmp_path):
    cfg, _ = _synth(tmp_path / "d")
    g = _calibrate(cfg, tmp_path / "o", "calibration.saturation_count=40")
    sat = np.asarray(g["calibration/saturated_pixels"])
    mx = np.asarray(g["ingest/max_pattern"])
    np.testing.assert_array_equal(sat, mx >= 40)
    assert not np.asarray(g["calibration/mask"])[sat].any()
    # the central disk saturates here, but its centre is still found (saturated pixels are kept for centres)
    assert g.attrs["calibration"]["centre_method"] == "disk"
    g2 = _calibrate(cfg, tmp_path / "o2", "input.bin_q=2", "calibration.saturation_count=40")
    assert not np.asarray(g2["calibration/saturated_pixels"]).any()
    assert "binned" in json.dumps(g2.attrs["calibration"]["mask_info"])


def test_editing_the_mask_file_recomputes_calibrate(tmp_path):
    cfg, _ = _synth(tmp_path / "d")
    user = np.zeros((128, 128), np.uint8)
    np.save(tmp_path / "d" / "mine.npy", user)
    _calibrate(cfg, tmp_path / "o", "calibration.mask_file=mine.npy")
    user[5, 5] = 1
    np.save(tmp_path / "d" / "mine.npy", user)
    g = _calibrate(cfg, tmp_path / "o", "calibration.mask_file=mine.npy")
    assert not np.asarray(g["calibration/mask"])[5, 5]


def test_q_pixel_size_and_ellipse_from_a_calibrate_json(tmp_path):
    cfg, _ = _synth(tmp_path / "d")
    rec = {"q_pixel_size": 0.0125, "centre": [64.0, 64.0], "ellipse": {"ratio": 1.015, "angle_deg": 30.0},
           "rings": []}
    (tmp_path / "d" / "au.json").write_text(json.dumps(rec))
    text = cfg.read_text().replace("q_pixel_size: 0.0125,", "calibrant: au.json, ellipse: calibrant,")
    assert "calibrant" in text
    (tmp_path / "d" / "cal.yaml").write_text(text)
    g = _calibrate(tmp_path / "d" / "cal.yaml", tmp_path / "o")
    cal = g.attrs["calibration"]
    assert cal["q_pixel_size"] == 0.0125 and "au.json" in cal["q_pixel_size_source"]
    assert cal["ellipse"]["ratio"] == 1.015 and "au.json" in cal["ellipse"]["source"]
    (tmp_path / "d" / "au.json").write_text("{}")
    r = subprocess.run([sys.executable, "-m", "sendmap.cli", "run", str(tmp_path / "d" / "cal.yaml"), "--no-progress",
                        "--set", f"output.dir={tmp_path / 'o3'}"], capture_output=True, text=True)
    assert r.returncode == 2 and "au.json" in r.stderr


def test_crystal_threshold_scales_with_the_square_root_of_the_dose():
    from sendmap.config import config_from_dict
    from sendmap.stages.crystalline import crystal_spot_threshold

    counts = np.zeros((2, 2))
    for epp, want in ((20000, 25.0), (5000, 12.5), (80000, 50.0)):
        cfg = config_from_dict({"input": {"path": "x.npy"}, "dose": {"electrons_per_pattern": epp}})
        assert crystal_spot_threshold(cfg, counts) == pytest.approx(want)
    cfg = config_from_dict({"input": {"path": "x.npy"}, "dose": {"electrons_per_pattern": 5000},
                            "classify": {"definitions": {"crystal_spot_z_electrons": None}}})
    assert crystal_spot_threshold(cfg, counts) == 25.0


def test_ellipse_sample_spreads_whole_blocks_over_the_scan():
    from sendmap.stages.calibrate import ellipse_sample

    blocks = [(y, y + 1, 0, 148) for y in range(148)]
    picked = sorted(ellipse_sample(blocks, 4096))
    frames = sum((b[1] - b[0]) * (b[3] - b[2]) for b in picked)
    assert 4096 <= frames < 4096 + 2 * 148
    assert picked[0][0] == 0 and picked[-1][0] == 147  # first and last rows: spread, not the top of the scan
    assert np.diff([b[0] for b in picked]).max() <= 6
    assert len(ellipse_sample(blocks, 0)) == 148 and len(ellipse_sample(blocks[:10], 4096)) == 10


def test_ellipse_from_a_sample_of_frames_agrees_within_its_error(tmp_path):
    """A 1.5 % ellipse fitted on 64 of 192 frames: within 3σ of the truth, with a larger reported error than
    from all of them, and the count of frames used recorded."""
    cfg, truth = _synth(tmp_path / "d")
    cal_all = _calibrate(cfg, tmp_path / "all").attrs["calibration"]["ellipse"]
    cal_few = _calibrate(cfg, tmp_path / "few", "calibration.ellipse_max_frames=64", "compute.block_mb=0.6",
                         "compute.chunk_mb=0.6").attrs["calibration"]["ellipse"]
    assert cal_all["frames_used"] > cal_few["frames_used"] >= 24  # crystalline frames are left out
    for e in (cal_all, cal_few):
        assert abs(e["ratio"] - 1.015) < 3 * e["ratio_err"] + 1e-3, e
    assert cal_few["ratio_err"] > cal_all["ratio_err"]


def test_crystal_threshold_never_below_five_sigma():
    """At 10 e⁻ per pattern the scaled threshold (0.56 σ) called 110 of 192 synthetic positions crystal (issue 21)."""
    from sendmap.config import config_from_dict
    from sendmap.stages.crystalline import crystal_spot_threshold

    cfg = config_from_dict({"input": {"path": "x.npy"}, "dose": {"electrons_per_pattern": 10}})
    assert crystal_spot_threshold(cfg, np.zeros((2, 2))) == 5.0
    cfg = config_from_dict({"input": {"path": "x.npy"}, "dose": {"electrons_per_pattern": 10},
                            "classify": {"definitions": {"crystal_spot_z": 3.0}}})
    assert crystal_spot_threshold(cfg, np.zeros((2, 2))) == 3.0  # a threshold set lower stands
