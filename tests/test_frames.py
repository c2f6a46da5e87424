"""Ingest's whole-block reductions (sendmap.science.frames.frame_statistics) against numpy, for every integer
path (the 32-bit kernel of ≤ 16-bit unsigned counts, the int64 kernel) and the float kernel with NaNs."""
import numpy as np
import pytest

from sendmap.science.frames import frame_statistics


def _numpy_reference(frames, bf, adf):
    f = frames.astype(np.float64)
    fin = np.isfinite(f)
    f0 = np.where(fin, f, 0.0)
    return {"sum": f0.sum(axis=0), "max": np.where(fin, f, -np.inf).max(axis=0), "total": f0.sum(axis=(1, 2)),
            "bf": (f0 * bf).sum(axis=(1, 2)), "adf": (f0 * adf).sum(axis=(1, 2)),
            "nonfinite": (~fin).sum(axis=0)}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int16, np.int64, np.float32])
def test_frame_statistics_equal_numpy(dtype):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    hi = min(int(info.max), 70000) if info is not None else 1000
    lo = max(int(info.min), -500) if info is not None else -5
    frames = rng.integers(lo, hi, size=(37, 24, 40), endpoint=True).astype(dtype)
    frames[rng.random(frames.shape) < 0.8] = 0  # sparse, as low-dose frames are
    if info is not None:  # the largest count of ≤ 16-bit types in every frame: no overflow of the narrow sums
        frames[:, 3, 5] = info.max if info.bits <= 16 else 2 ** 24
    else:
        frames[2, 4, 6] = np.nan
        frames[5, 0, 0] = np.inf
    bf = np.zeros(frames.shape[1:], bool)
    bf[8:16, 15:25] = True
    adf = ~bf
    adf[:2] = False
    got = frame_statistics(frames, bf, adf)
    ref = _numpy_reference(frames, bf, adf)
    for k, v in ref.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
        assert got[k].dtype == (np.int64 if k == "nonfinite" else np.float64), k


def test_frame_statistics_u16_full_scale_block():
    """A block of 256 frames whose pixels all hold the largest uint16 count: the 32-bit sums are exact."""
    frames = np.full((256, 8, 300), np.iinfo(np.uint16).max, np.uint16)
    bf = np.zeros((8, 300), bool)
    bf[2:4] = True
    st = frame_statistics(frames, bf, ~bf)
    assert st["sum"][0, 0] == 256 * 65535.0
    assert st["total"][0] == 8 * 300 * 65535.0
    assert st["bf"][0] == 2 * 300 * 65535.0 and st["adf"][0] == 6 * 300 * 65535.0


def test_frame_statistics_empty_block():
    st = frame_statistics(np.zeros((0, 4, 4), np.uint16), np.ones((4, 4), bool), np.zeros((4, 4), bool))
    assert np.all(st["max"] == -np.inf) and np.all(st["sum"] == 0) and st["total"].shape == (0,)
