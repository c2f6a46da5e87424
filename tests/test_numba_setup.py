"""numba's BLAS check without the scipy.linalg package (sendmap.science.numba_blas_check_without_scipy_linalg)."""
from __future__ import annotations

import subprocess
import sys

CODE = r"""
import sys
import numpy as np
import numba
from sendmap.science.spatial import label_8_connected

labels, n = label_8_connected(np.eye(3, dtype=bool))  # numba's first use (a cached or compiled kernel)
assert n == 1 and labels.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
assert "numba.np.arraymath" in sys.modules and "scipy.linalg.cython_blas" in sys.modules
print("without-linalg", "scipy.linalg" not in sys.modules)


@numba.njit
def dot(a, b):
    return np.dot(a, b)  # a kernel that calls BLAS through scipy.linalg.cython_blas


a = np.arange(12.0).reshape(3, 4)
assert np.allclose(dot(a, a.T), a @ a.T)
import scipy.linalg  # the package still imports, and its solver works
from scipy.linalg import cython_blas
assert cython_blas is sys.modules["scipy.linalg.cython_blas"]
m = np.array([[3.0, 1.0], [1.0, 2.0]])
assert np.allclose(scipy.linalg.solve(m, [9.0, 8.0]), [2.0, 3.0])
print("ok")
"""


def test_numba_first_use_without_scipy_linalg(tmp_path):
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["without-linalg", "True", "ok"]
