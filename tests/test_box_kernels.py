"""The compiled k × k box mean (sendmap.science.box_kernels) against its NumPy/scipy form, bit for bit."""
import numpy as np
import pytest
from scipy import ndimage

from sendmap.science.box_kernels import pooled_mean
from sendmap.science.peaks import pooled_position_mean


def _scipy_form(values, valid, k):
    """pooled_position_mean's former NumPy form (scipy uniform_filter of masked values over that of the mask)."""
    v = np.asarray(values, dtype=float)
    fin = np.isfinite(v) & np.asarray(valid, bool)[..., None]
    size = (k, k, 1)
    tot = ndimage.uniform_filter(np.where(fin, v, 0.0), size, mode="constant")
    cnt = ndimage.uniform_filter(fin.astype(float), size, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = tot / cnt
    return np.where(cnt > 0.5 / k ** 2, mean, v)


@pytest.mark.parametrize("shape", [(3, 3, 1), (7, 9, 5), (2, 11, 3), (1, 1, 4), (30, 40, 17), (4, 3, 2)])
@pytest.mark.parametrize("k", [2, 3, 5, 7, 10])
def test_pooled_mean_is_scipys_bit_for_bit(shape, k):
    rng = np.random.default_rng(k * 100 + len(shape))
    v = rng.lognormal(0, 3, shape) * rng.choice([-1.0, 1.0], shape)  # values over 10 decades, both signs
    v[rng.random(shape) < 0.1] = np.nan
    v[rng.random(shape) < 0.02] = np.inf
    ok = rng.random(shape[:2]) < 0.7
    ref = _scipy_form(v, ok, k)
    assert np.array_equal(pooled_mean(v, ok, k), ref, equal_nan=True)
    assert np.array_equal(pooled_position_mean(v, ok, k), ref, equal_nan=True)


def test_pooled_mean_analytic():
    """A constant field: every mean is the constant (to the running sums' rounding); a position with no valid
    neighbour keeps its own value."""
    v = np.full((6, 8, 3), 2.5)
    ok = np.zeros((6, 8), bool)
    ok[:2] = True
    out = pooled_mean(v, ok, 3)
    assert np.allclose(out, 2.5, rtol=1e-14, atol=0)
    v[5, 7] = 9.0  # no valid position within ±1 of (5, 7): its own value, not a neighbour's
    assert np.all(pooled_mean(v, ok, 3)[5, 7] == 9.0)
    v2 = np.arange(9.0).reshape(3, 3, 1)
    ok2 = np.ones((3, 3), bool)
    ok2[0, 0] = False
    p = pooled_mean(v2, ok2, 3)
    assert p[1, 1, 0] == pytest.approx(4.5, rel=1e-15) and p[0, 0, 0] == pytest.approx(8 / 3, rel=1e-15)
