"""kernel_frames: blocks of other types reach the compiled kernels' types only where every value is kept exactly."""
import numpy as np
import pytest

from sendmap.science.frames import KERNEL_DTYPES, kernel_frames


@pytest.mark.parametrize("values, dtype, expect", [
    ([0, 1, 65535], np.int64, np.uint16),
    ([0, 1, 65536], np.int64, np.uint32),
    ([0, 1, 2 ** 32 - 1], np.int64, np.uint32),
    ([0, 1, 2 ** 32], np.int64, np.int64),        # beyond uint32: kept
    ([-1, 0, 5], np.int32, np.int32),             # negative (e.g. dark-subtracted): kept
    ([0, 7, 3], np.int8, np.uint16),
    ([True, False, True], np.bool_, np.uint16),
    ([0.0, 3.0, 2.0 ** 24], np.float64, np.float32),
    ([0.0, 2.5, 2.0 ** 100], np.float64, np.float32),  # float32 holds these exactly
    ([0.0, 0.1, 3.0], np.float64, np.float64),    # 0.1 is not a float32: kept
    ([0.0, np.nan, 3.0], np.float64, np.float64),  # non-finite: kept (the stages report them)
    ([0.0, 2.0 ** 24 + 1, 3.0], np.float64, np.float64),
    ([0.0, 1.5, 3.0], np.float16, np.float32),
])
def test_kernel_frames_exact(values, dtype, expect):
    frames = np.array(values, dtype=dtype).reshape(1, 1, 3)
    out = kernel_frames(frames)
    assert out.dtype == np.dtype(expect)
    np.testing.assert_array_equal(out.astype(np.float64), frames.astype(np.float64))
    if out.dtype != frames.dtype:
        assert out.dtype in KERNEL_DTYPES


def test_kernel_frames_keeps_compiled_types_as_they_are():
    for dt in KERNEL_DTYPES:
        frames = np.arange(12, dtype=dt).reshape(1, 3, 4)
        assert kernel_frames(frames) is frames


def test_profile_block_same_numbers_for_every_compiled_type():
    """The premise of the conversion: the profile kernel reads each count as float64, so the same counts given as
    int64 (converted to uint16), uint32 and float32 (three compiled kernels) give the same statistics bit for bit."""
    from sendmap.science.polar import PolarGeometry
    from sendmap.science.polar_tables import PolarTables, profile_block
    rng = np.random.default_rng(3)
    frames = rng.poisson(2.0, size=(3, 41, 41))
    t = PolarTables(PolarGeometry(q_pixel_size=0.01, bin_width=0.01, nq=20, n_phi=8, supersample=2))
    centres = np.array([[20.0, 20.0], [20.5, 19.25], [19.0, 21.0]])
    mask = np.ones((41, 41), bool)
    ref = profile_block(frames, centres, mask, t, disk_radius_q=0.03)
    for dt in (np.uint32, np.float32):
        other = profile_block(frames.astype(dt), centres, mask, t, disk_radius_q=0.03)
        for k in ref:
            np.testing.assert_array_equal(ref[k], other[k], err_msg=f"{k} ({np.dtype(dt)})")
