"""Helpers shared by tests that compare result stores."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr


def store_arrays(store: Path) -> dict[str, np.ndarray]:
    """Every array of a zarr group and its subgroups, by path ("profiles/mean")."""
    g = zarr.open_group(str(store), mode="r")
    out = {}

    def walk(grp, prefix):
        for name, arr in grp.arrays():
            out[prefix + name] = np.asarray(arr)
        for name, sub in grp.groups():
            walk(sub, prefix + name + "/")

    walk(g, "")
    return out


KERNEL_RTOL = 1e-5
"""Relative tolerance of float arrays between runs whose numba kernels came from different places: the profile
stage's statistics kernels may reorder sums (fastmath ``reassoc``, 25 % of the worker's CPU), and a kernel compiled
in one process and the same kernel loaded from numba's cache by another (a subprocess, a dask worker) differ in
``features/fem_variance`` and ``profiles/sem`` by ≤ 3.3 × 10⁻⁶ relative, which reaches the peak errors at ~10⁻¹⁰
(session 18; README "Profile stage: its CPU measured inside the kernel"). Integers, booleans and every float array's
NaN pattern must still agree exactly."""


def assert_same_arrays(x: dict[str, np.ndarray], y: dict[str, np.ndarray], keys=None) -> None:
    """Every array of ``keys`` (default: all of ``x``) the same in ``x`` and ``y``: dtype, shape, NaN pattern and
    integer values exactly, float values within :data:`KERNEL_RTOL`."""
    for k in (x if keys is None else keys):
        a, b = np.asarray(x[k]), np.asarray(y[k])
        assert a.dtype == b.dtype and a.shape == b.shape, k
        if a.dtype.kind in "fc":
            assert np.array_equal(np.isnan(a), np.isnan(b)), k
            assert np.allclose(a, b, rtol=KERNEL_RTOL, atol=0.0, equal_nan=True), k
        else:
            assert np.array_equal(a, b), k
