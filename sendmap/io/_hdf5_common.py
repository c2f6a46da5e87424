"""What the HDF5 readers and writers share: the detection of a file's flavour (:func:`hdf5_flavour`), names of the
DECTRIS and EMD layouts, and small h5py helpers. The layouts are described in :mod:`sendmap.io.hdf5`."""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - registers the HDF5 filters (bitshuffle-LZ4) with h5py, for every reader
import numpy as np

from sendmap.errors import SendmapInputError


_DATA_ENTRY = re.compile(r"data_(\d+)")
"""Name of a master file's link to one data file under /entry/data (DECTRIS: six digits from 000001)."""
_DATA_FILE = re.compile(r"(.+)_data_(\d+)\.h5")
_MASTER_SUFFIX = "_master.h5"
_EMD_ARRAY_TAGS = (1, "array")
"""``emd_group_type`` of an array group: 1 (EMD 1.0, py4DSTEM <= 0.13) or "array" (emdfile)."""


def hdf5_flavour(path) -> str | None:
    """``"arina"``, ``"py4dstem"`` or None for the HDF5 file ``path`` (looks at groups and attributes only).

    ``"arina"``: a DECTRIS master file (``/entry/data/data_NNNNNN`` links and ``/entry/instrument/detector``)
    or one of its data files (a 3D ``/entry/data/data``). ``"py4dstem"``: a py4DSTEM, emdfile or EMD 1.0 file
    holding a 4D ``data`` dataset in an EMD array group. None for any other file, HDF5 or not.
    SendmapInputError if ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise SendmapInputError(f"{path}: no such file")
    try:
        if not h5py.is_hdf5(path):
            return None
        with h5py.File(path, "r") as f:
            if _arina_kind(f) is not None:
                return "arina"
            if _emd_candidates(f):
                return "py4dstem"
    except OSError:
        return None
    return None


def _arina_kind(f: h5py.File) -> str | None:
    """"master", "data" (a DECTRIS data file) or None."""
    group = f.get("entry/data")
    if not isinstance(group, h5py.Group):
        return None
    if "entry/instrument/detector" in f and any(_DATA_ENTRY.fullmatch(name) for name in group):
        return "master"
    if isinstance(group.get("data", getlink=True), h5py.HardLink):
        data = group["data"]
        if isinstance(data, h5py.Dataset) and data.ndim == 3:
            return "data"
    return None


def _emd_candidates(f: h5py.File) -> list[tuple[str, tuple[int, ...]]]:
    """(HDF5 path, shape) of every 4D ``data`` dataset whose group is an EMD array group."""
    found = []

    def visit(name: str, obj) -> None:
        if (isinstance(obj, h5py.Dataset) and obj.ndim == 4 and posixpath.basename(name) == "data"
                and _attr(obj.parent, "emd_group_type") in _EMD_ARRAY_TAGS):
            found.append((obj.name, obj.shape))

    f.visititems(visit)
    return found


def _open_h5(path: Path) -> h5py.File:
    """``path`` opened read-only, or SendmapInputError naming it."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise SendmapInputError(f"{path}: no such file") from None
    except OSError as exc:
        raise SendmapInputError(f"{path}: not a readable HDF5 file ({exc})") from None


def _attr(obj, key: str):
    """Attribute ``key`` as a plain Python value (bytes decoded), or None."""
    value = obj.attrs.get(key)
    return None if value is None else _jsonable(value, squeeze=True)


def _jsonable(value, squeeze: bool = False):
    """Plain Python (JSON-able) form of an HDF5 value; ``squeeze``: one-element arrays become scalars."""
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if squeeze and value.size == 1:
            return _jsonable(value.reshape(()).item())
        if value.dtype.kind in "SO":
            return [_jsonable(v) for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def _filters(dset: h5py.Dataset) -> list[dict]:
    """HDF5 filter pipeline of a dataset: [{id, name}] (32008 is bitshuffle, with LZ4 in DECTRIS files)."""
    plist = dset.id.get_create_plist()
    filters = []
    for i in range(plist.get_nfilters()):
        code, _, _, name = plist.get_filter(i)
        filters.append({"id": int(code), "name": name.decode("ascii", "replace")})
    return filters
