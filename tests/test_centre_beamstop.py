"""Centres from the point symmetry of the rings where a beam stop hides the central disk."""
import numpy as np
import pytest

from sendmap.science.centre import disk_centres, fit_descan_plane, symmetry_centres
from sendmap.science.mask import hot_dead_mask
from sendmap.science.shadows import shadow_masks
from sendmap.synth.make import SynthModel, SynthParams

SCAN = (12, 16)
DISK_PX = 6.38  # α/λ / q_pixel_size for 2 mrad, 200 kV, 0.0125 1/Å per px
R_MIN, R_MAX = 1.5 * DISK_PX, 0.45 * 128  # the annulus holding the rings and the diffuse background


def test_symmetry_centres_clean_patterns_within_01_px():
    """Noise-free patterns of every class (amorphous rings, LiF spots, Cu/Li Bragg disks), ellipse 1.5 %,
    centres at all sub-pixel offsets, guess 2–3 px off: within 0.1 px (no beam stop, no mask)."""
    model = SynthModel(SynthParams(scan_shape=SCAN, seed=2))
    rows = range(0, SCAN[0], 3)
    frames = np.concatenate([model.expected_row(ry)[0] for ry in rows])
    truth = model.centres[list(rows)].reshape(-1, 2)
    assert len(np.unique(model.phantom.class_map[list(rows)])) == 4
    frac = truth % 1.0
    assert frac.min() < 0.15 and frac.max() > 0.85  # sub-pixel offsets all over the pixel
    guess = truth.mean(axis=0) + np.array([2.3, -1.7])
    got = symmetry_centres(frames, guess, np.ones((128, 128), bool), R_MIN, R_MAX)
    err = np.abs(got - truth)
    assert err.max() < 0.1, err.max()
    # also including the central disk (r_min = 0), and without smoothing
    got0 = symmetry_centres(frames, guess, np.ones((128, 128), bool), 0.0, R_MAX, smooth_px=0.0)
    assert np.abs(got0 - truth).max() < 0.1


def test_symmetry_ignores_masked_pixels_and_their_mirrors():
    model = SynthModel(SynthParams(scan_shape=(2, 3), seed=3))
    frame, truth = model.expected_row(0)[0][1], model.centres[0, 1]
    bad = frame.copy()
    bad[20:30, 90:100] += 50.0  # a bright, asymmetric artefact
    mask = np.ones((128, 128), bool)
    mask[20:30, 90:100] = False
    c_masked = symmetry_centres(bad[None], truth + 1.0, mask, R_MIN, R_MAX)[0]
    c_unmasked = symmetry_centres(bad[None], truth + 1.0, np.ones((128, 128), bool), R_MIN, R_MAX)[0]
    assert np.hypot(*(c_masked - truth)) < 0.05
    assert np.hypot(*(c_unmasked - truth)) > 0.3  # the mask is what protects the centre
    # nothing usable: NaN, not a number made up
    c, score = symmetry_centres(frame[None], truth, np.zeros((128, 128), bool), R_MIN, R_MAX, return_score=True)
    assert np.all(np.isnan(c)) and np.isnan(score[0])


@pytest.mark.parametrize("geometry", [dict(seed=0), dict(seed=1, beam_stop_width_px=8.0, beam_stop_angle_deg=200.0)],
                         ids=["finger", "narrow arm"])
def test_centres_under_beam_stop_within_half_pixel(geometry):
    """A 12×16 scan at 2e4 electrons per pattern, drift 3/−2 px (fast) and 1/1.5 px (slow), the central
    disk hidden by a beam stop at every position, no mask given: the shadow is found from the mean
    pattern, the centres from the symmetry of each frame, and the descan plane through them is within
    0.5 px of the true centre at every position."""
    model = SynthModel(SynthParams(scan_shape=SCAN, beam_stop=True, **geometry))
    frames = np.concatenate([model.counts_row(ry)[0] for ry in range(SCAN[0])])
    truth = model.centres
    s = frames.sum(axis=0, dtype=np.float64)
    hd = hot_dead_mask(s, frames.max(axis=0))
    sh = shadow_masks(s / len(frames), mask=hd["mask"], disk_radius_px=DISK_PX)
    assert sh["info"]["beam_stop"]["found"] and sh["info"]["beam_stop"]["centre_covered_fraction"] == 1.0
    mask = hd["mask"] & sh["mask"]
    assert not (model.beam_stop_mask & mask).any()

    # the central disk is really hidden: its centre of mass is meaningless here
    com = disk_centres(frames, np.array(sh["info"]["centre_yx"]), mask, 1.5 * DISK_PX)
    assert np.nanmax(np.hypot(*(com - truth.reshape(-1, 2)).T)) > 2.0

    per_frame = symmetry_centres(frames, sh["info"]["centre_yx"], mask, R_MIN, R_MAX)
    e1 = per_frame - truth.reshape(-1, 2)
    assert np.all(np.isfinite(per_frame))
    assert np.abs(e1.mean(axis=0)).max() < 0.1  # unbiased
    assert np.sqrt(np.mean(e1 ** 2)) < 0.8  # per axis, single frames
    fitted, info = fit_descan_plane(per_frame.reshape(*SCAN, 2))
    err = np.hypot(*(fitted - truth).reshape(-1, 2).T)
    assert err.max() < 0.5, err.max()
    assert np.sqrt(np.mean(err ** 2)) < 0.25
