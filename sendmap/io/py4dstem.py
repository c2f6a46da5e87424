"""py4DSTEM / emdfile / EMD 1.0 files: lazy reader of the 4D datacube with its calibration. The layouts, and why
py4DSTEM's (Rx, Ry, Qx, Qy) is sendmap's (Ry, Rx, Qy, Qx), are described in :mod:`sendmap.io.hdf5`."""
from __future__ import annotations

import re
from pathlib import Path

import dask.array as da
import h5py
import numpy as np

from sendmap.errors import SendmapInputError
from sendmap.io._common import check_scan_shape, scan_chunks

from ._hdf5_common import _EMD_ARRAY_TAGS, _attr, _emd_candidates, _filters, _jsonable, _open_h5


def read_py4dstem_dask(path, scan_shape: tuple[int, int] | None = None, frames_per_chunk: int | None = None,
                       dataset: str | None = None) -> tuple[da.Array, dict]:
    """Lazy (Ry, Rx, Qy, Qx) array of the 4D datacube of a py4DSTEM / emdfile / EMD file, and its metadata.

    The file's (Rx, Ry, Qx, Qy) axes map to (Ry, Rx, Qy, Qx) without transposition (see the module
    docstring). ``dataset``: HDF5 path of the 4D dataset to read (any 4D numeric dataset); by default the
    largest 4D ``data`` dataset of an EMD array group, the others being listed in the metadata.
    ``scan_shape``, if given, must equal the file's first two axes. ``frames_per_chunk``: at most this many
    frames per chunk (default: 64 MiB); each chunk reads its scan rows by h5py slicing.

    Metadata (JSON-able): ``format`` ("py4dstem"), ``layout`` ("emdfile", "emd1", "py4dstem012" or "hdf5"
    for an explicit dataset outside EMD groups), ``dataset``, ``other_candidates`` ([{dataset, shape}]),
    ``shape_on_disk``, ``dtype``, ``scan_shape``, ``frame_shape``, ``dims`` ([{dim, name, units, offset,
    scale, length}] of the dim datasets, empty without them), ``q_pixel_size`` / ``q_pixel_units`` (detector
    pixel, e.g. A^-1 or nm^-1), ``r_pixel_size`` / ``r_pixel_units`` (scan step, e.g. nm), each None where
    unknown, ``calibration_source`` ("calibration metadata", "dims" or None), ``hdf5_chunks``,
    ``compression``, ``compression_opts``, ``hdf5_filters`` and the file's ``emd_version``,
    ``authoring_program`` and ``py4dstem_version`` where present.
    SendmapInputError (naming the file and HDF5 path) where there is no 4D dataset (saying what was found),
    ``dataset`` is not a 4D numeric dataset, or ``scan_shape`` disagrees with the file.
    """
    path = Path(path)
    with _open_h5(path) as f:
        if dataset is not None:
            chosen, others = _explicit_dataset(f, dataset, path), []
        else:
            candidates = _emd_candidates(f)
            if not candidates:
                raise SendmapInputError(
                    f"{path}: no 4D 'data' dataset in an EMD / py4DSTEM array group; found {_inventory(f)}")
            candidates.sort(key=lambda c: -int(np.prod(c[1], dtype=np.int64)))
            chosen, others = candidates[0][0], candidates[1:]
        dset = f[chosen]
        if dset.dtype.kind not in "iuf":
            raise SendmapInputError(f"{path}: {chosen} holds {dset.dtype}, not numbers")
        metadata = _py4dstem_metadata(f, dset)
    metadata["other_candidates"] = [{"dataset": name, "shape": list(shape)} for name, shape in others]
    shape = tuple(metadata["shape_on_disk"])
    if scan_shape is not None:
        wanted = check_scan_shape(scan_shape, shape[0] * shape[1], path)
        if wanted != shape[:2]:
            raise SendmapInputError(
                f"{path}: scan_shape {wanted} does not match the scan axes {shape[:2]} of {chosen}")
    native = np.dtype(metadata["dtype"])
    chunks = scan_chunks(shape[:2], shape[2:], native.itemsize, frames_per_chunk)
    data = da.map_blocks(_load_h5_4d_block, chunks=chunks, dtype=native, meta=np.empty((0, 0, 0, 0), native),
                         path=str(path), dataset=chosen)
    return data, metadata


def _explicit_dataset(f: h5py.File, dataset: str, path: Path) -> str:
    obj = f.get(dataset)
    if not isinstance(obj, h5py.Dataset):
        found = "nothing" if obj is None else "a group"
        raise SendmapInputError(f"{path}: expected a 4D dataset at HDF5 path {dataset}, found {found}")
    if obj.ndim != 4:
        raise SendmapInputError(f"{path}: {obj.name} has shape {obj.shape}, not a 4D (Ry, Rx, Qy, Qx) datacube")
    return obj.name


def _inventory(f: h5py.File, limit: int = 8) -> str:
    """Short description of the datasets in a file, for error messages."""
    items = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            items.append(f"/{name} {obj.shape} {obj.dtype}")

    f.visititems(visit)
    if not items:
        return "no datasets at all (groups: " + (", ".join(f"/{k}" for k in f) or "none") + ")"
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} dataset(s): " + "; ".join(items[:limit]) + more


def _py4dstem_metadata(f: h5py.File, dset: h5py.Dataset) -> dict:
    group = dset.parent
    dims = _read_dims(group, dset)
    calibration = _find_calibration(group)
    md = {
        "format": "py4dstem",
        "layout": _layout(f, dset),
        "dataset": dset.name,
        "shape_on_disk": list(dset.shape),
        "dtype": str(dset.dtype.newbyteorder("=")),
        "scan_shape": list(dset.shape[:2]),
        "frame_shape": list(dset.shape[2:]),
        "dims": dims,
        "hdf5_chunks": None if dset.chunks is None else list(dset.chunks),
        "compression": dset.compression,
        "compression_opts": _jsonable(dset.compression_opts),
        "hdf5_filters": _filters(dset),
    }
    if calibration is not None:
        md.update(calibration)
        md["calibration_source"] = "calibration metadata"
    elif len(dims) == 4:
        md.update(r_pixel_size=dims[0]["scale"], r_pixel_units=_clean_units(dims[0]["units"]),
                  q_pixel_size=dims[2]["scale"], q_pixel_units=_clean_units(dims[2]["units"]))
        md["calibration_source"] = "dims"
    else:
        md.update(r_pixel_size=None, r_pixel_units=None, q_pixel_size=None, q_pixel_units=None,
                  calibration_source=None)
    top = f[dset.name.split("/")[1]] if dset.name.count("/") > 1 else f
    for holder in (f, top):
        major, minor = _attr(holder, "version_major"), _attr(holder, "version_minor")
        if major is not None and minor is not None:
            md["emd_version"] = f"{major}.{minor}"
            if _attr(holder, "emd_group_type") == 2:
                release = _attr(holder, "version_release")
                md["py4dstem_version"] = f"{major}.{minor}" + ("" if release is None else f".{release}")
            break
    if (program := _attr(f, "authoring_program")) is not None:
        md["authoring_program"] = program
    return md


def _layout(f: h5py.File, dset: h5py.Dataset) -> str:
    group = dset.parent
    tag = _attr(group, "emd_group_type")
    if tag not in _EMD_ARRAY_TAGS:
        return "hdf5"
    if tag == "array" or _attr(f, "emd_group_type") == "file" or "dim0" in group:
        return "emdfile"
    top = f[dset.name.split("/")[1]]
    if "/data/datacubes/" in dset.name and _attr(top, "emd_group_type") == 2:
        return "py4dstem012"
    return "emd1"


def _read_dims(group: h5py.Group, dset: h5py.Dataset) -> list[dict]:
    """Calibration of each axis from ``dim0..dim3`` (emdfile) or ``dim1..dim4`` (EMD 1.0); [] without."""
    base = 0 if "dim0" in group else 1
    dims = []
    for axis in range(dset.ndim):
        name = f"dim{axis + base}"
        dim = group.get(name)
        if not isinstance(dim, h5py.Dataset):
            return []
        values = np.asarray(dim[()]).ravel()
        numeric = values.dtype.kind in "iuf" and values.size >= 1
        dims.append({
            "dim": name,
            "name": _attr(dim, "name"),
            "units": _attr(dim, "units"),
            "offset": float(values[0]) if numeric else None,
            "scale": float(values[1] - values[0]) if numeric and values.size >= 2 else None,
            "length": int(values.size),
        })
    return dims


def _find_calibration(group: h5py.Group) -> dict | None:
    """py4DSTEM calibration (``Q_pixel_size`` ...) from a ``calibration`` group of the datacube's ancestors."""
    node = group
    while True:
        for sub in ("metadatabundle/calibration", "metadata/calibration", "calibration"):
            cal = node.get(sub)
            if isinstance(cal, h5py.Group) and "Q_pixel_size" in cal:
                return {
                    "q_pixel_size": _scalar(cal, "Q_pixel_size"), "q_pixel_units": _scalar(cal, "Q_pixel_units"),
                    "r_pixel_size": _scalar(cal, "R_pixel_size"), "r_pixel_units": _scalar(cal, "R_pixel_units"),
                }
        if node.name == "/":
            return None
        node = node.parent


def _scalar(group: h5py.Group, name: str):
    dset = group.get(name)
    if not isinstance(dset, h5py.Dataset):
        return None
    value = _jsonable(dset[()], squeeze=True)
    return None if value == "_None" else value


def _clean_units(units) -> str | None:
    """``[n_m]`` -> ``nm``, ``[n_m^-1]`` -> ``nm^-1`` (EMD 1.0 notation); other strings unchanged."""
    if not isinstance(units, str):
        return None
    bracketed = re.findall(r"\[(.+?)\]", units)
    return " ".join(u.replace("_", "") for u in bracketed) if bracketed else units


def _load_h5_4d_block(path: str, dataset: str, block_info=None) -> np.ndarray:
    """Scan rows r0:r1, columns c0:c1 of a 4D dataset, in native byte order."""
    (r0, r1), (c0, c1) = block_info[None]["array-location"][:2]
    with _open_h5(Path(path)) as f:
        dset = f.get(dataset)
        if not isinstance(dset, h5py.Dataset):
            raise SendmapInputError(f"{path}: no dataset at {dataset} any more")
        block = dset[r0:r1, c0:c1]
    return np.asarray(block, dtype=block.dtype.newbyteorder("="))
