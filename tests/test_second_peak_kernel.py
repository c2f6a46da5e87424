"""The second peak's first estimate (sendmap.science.peak_kernels.highest_local_maximum) against its NumPy form."""
import numpy as np
import pytest

from sendmap.science.peak_kernels import highest_local_maximum


def _numpy_form(p, inside):
    local = np.zeros_like(p, dtype=bool)
    local[:, 1:-1] = (p[:, 1:-1] > p[:, :-2]) & (p[:, 1:-1] >= p[:, 2:])
    cand = np.where(local & inside[None, :], p, -np.inf)
    return np.where(np.isfinite(cand).any(axis=1), np.argmax(cand, axis=1), -1)


@pytest.mark.parametrize("nq", [1, 2, 3, 5, 30])
def test_highest_local_maximum_is_the_numpy_forms(nq):
    rng = np.random.default_rng(nq)
    p = np.round(rng.normal(size=(2000, nq)), 1)  # ties: plateaus and equal maxima
    p[rng.random(p.shape) < 0.02] = np.inf
    p[rng.random(p.shape) < 0.02] = -np.inf
    inside = rng.random(nq) < 0.7
    assert np.array_equal(highest_local_maximum(p, inside), _numpy_form(p, inside))


def test_highest_local_maximum_analytic():
    q = np.linspace(0.0, 1.0, 11)
    p = np.array([[0, 1, 0, 0, 3, 2, 0, 5, 5, 4, 9],     # maxima at 1, 4, 7 (left edge of the 5-5 plateau); 10 is the edge
                  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], float)  # rising: none
    inside = (q >= 0.3) & (q <= 0.8)
    assert highest_local_maximum(p, inside).tolist() == [7, -1]
    assert highest_local_maximum(p, (q >= 0.3) & (q <= 0.5)).tolist() == [4, -1]
