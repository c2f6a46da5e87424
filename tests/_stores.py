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
