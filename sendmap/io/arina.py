"""DECTRIS Arina / EIGER (SIMPLON, NeXus NXmx) acquisitions: lazy reader of the frames and the detector's pixel mask.
The file layout and the reader contract are described in :mod:`sendmap.io.hdf5`."""
from __future__ import annotations

import math
import re
from pathlib import Path

import dask.array as da
import h5py
import numpy as np

from sendmap.errors import SendmapInputError
from sendmap.io._common import check_scan_shape, frame_range, scan_chunks

from ._hdf5_common import _DATA_ENTRY, _DATA_FILE, _MASTER_SUFFIX, _arina_kind, _attr, _filters, _jsonable, _open_h5


_PIXEL_MASK_PATHS = ("entry/instrument/detector/detectorSpecific/pixel_mask",
                     "entry/instrument/detector/pixel_mask")
_SMALL_VALUE = 16
"""Detector datasets of at most this many elements go into metadata as values; larger ones by shape."""


def read_arina_dask(path, scan_shape: tuple[int, int] | None = None,
                    frames_per_chunk: int | None = None) -> tuple[da.Array, dict]:
    """Lazy (Ry, Rx, Qy, Qx) array of a DECTRIS Arina/EIGER acquisition and its metadata.

    ``path``: the ``*_master.h5`` file, or one of its ``*_data_NNNNNN.h5`` files; a data file whose master is
    beside it is read through the master (the whole acquisition), one without a master is read alone
    (its own frames, no detector metadata). Frames run over the data files in order; a chunk may span two
    files. ``scan_shape`` (Ry, Rx) defaults as described in the module docstring. ``frames_per_chunk``:
    at most this many frames per chunk (default: 64 MiB).

    Metadata (JSON-able): ``format`` ("arina"), ``master`` (path or None), ``opened_as`` ("master",
    "data file via its master" or "data file without master"), ``data_files``, ``data_paths`` (HDF5 path in
    each), ``frames_per_file``, ``image_nr_ranges`` ([low, high] per file, from its attributes, or None),
    ``n_frames``, ``frame_shape`` [Qy, Qx], ``dtype``, ``scan_shape`` [Ry, Rx], ``scan_shape_source``
    ("argument", "stem_metadata", "square" or "single_row"), ``hdf5_filters`` of the first data file,
    ``detector`` (scalars of /entry/instrument/detector, its detectorSpecific and /entry/instrument/beam,
    named with their units: ``count_time_s``, ``frame_time_s``, ``x_pixel_size_m``,
    ``detector_distance_m``, ``photon_energy_eV``, ``bit_depth_image``, ``saturation_value``, ...;
    larger arrays as ``<name>_shape``), ``pixel_mask_present``, ``stem_metadata`` (attributes of the
    ``<stem>.h5`` ``STEM Metadata`` group, or None) and ``scan_pixel_size_nm`` (its ``Pixel Size``, or None).
    SendmapInputError (naming the file and HDF5 path) for a file that is neither a master nor a data file,
    a missing data file (broken external link), data files of different frame shapes or types, or a
    ``scan_shape`` that does not make the frame count.
    """
    path = Path(path)
    source = _arina_source(path)
    parts = source.pop("parts")
    n_frames = sum(n for _, _, n in parts)
    stem_md = _read_stem_metadata(source["stem"])
    shape, shape_source = _arina_scan_shape(scan_shape, n_frames, stem_md, path)
    frame_shape, native = source.pop("frame_shape"), source.pop("dtype")
    chunks = scan_chunks(shape, frame_shape, native.itemsize, frames_per_chunk)
    data = da.map_blocks(_load_arina_block, chunks=chunks, dtype=native, meta=np.empty((0, 0, 0, 0), native),
                         parts=tuple(parts), frame_shape=frame_shape, pixel_dtype=native.str,
                         row_length=shape[1])
    pixel_size = None if stem_md is None else stem_md.get("Pixel Size")
    metadata = {
        "format": "arina",
        "master": None if source["master"] is None else str(source["master"]),
        "opened_as": source["opened_as"],
        "data_files": [file for file, _, _ in parts],
        "data_paths": [dset for _, dset, _ in parts],
        "frames_per_file": [n for _, _, n in parts],
        "image_nr_ranges": source["image_nr_ranges"],
        "n_frames": n_frames,
        "frame_shape": list(frame_shape),
        "dtype": str(native),
        "scan_shape": list(shape),
        "scan_shape_source": shape_source,
        "hdf5_filters": source["hdf5_filters"],
        "detector": source["detector"],
        "pixel_mask_present": source["pixel_mask_present"],
        "stem_metadata": stem_md,
        "scan_pixel_size_nm": pixel_size if isinstance(pixel_size, (int, float)) else None,
    }
    return data, metadata


def read_arina_pixel_mask(path) -> np.ndarray | None:
    """(Qy, Qx) bool mask of usable pixels from the master's ``pixel_mask``, or None where there is none.

    DECTRIS masks are bit flags, NONZERO where a pixel is bad (gap, dead, noisy...); this returns True where
    the flag is zero. ``path``: master or data file (the master is looked up beside it; a data file without
    a master gives None).
    """
    path = Path(path)
    master, _ = _find_master(path)
    if master is None:
        return None
    with _open_h5(master) as f:
        for mask_path in _PIXEL_MASK_PATHS:
            mask = f.get(mask_path)
            if isinstance(mask, h5py.Dataset):
                if mask.ndim != 2:
                    raise SendmapInputError(f"{master}: /{mask_path} has shape {mask.shape}, expected (Qy, Qx)")
                return np.asarray(mask[()]) == 0
    return None


def _find_master(path: Path) -> tuple[Path | None, str]:
    """The master file of ``path`` (itself, the ``<stem>_master.h5`` beside a data file, or None) and how."""
    with _open_h5(path) as f:
        kind = _arina_kind(f)
    if kind == "master":
        return path, "master"
    if kind is None:
        raise SendmapInputError(
            f"{path}: not a DECTRIS master or data file: found neither /entry/data/data_NNNNNN links with "
            "/entry/instrument/detector nor a 3D /entry/data/data dataset")
    match = _DATA_FILE.fullmatch(path.name)
    if match:
        master = path.with_name(match[1] + _MASTER_SUFFIX)
        if master.is_file():
            return master, "data file via its master"
    return None, "data file without master"


def _arina_source(path: Path) -> dict:
    """Data files, frame geometry and detector metadata of the acquisition that ``path`` belongs to."""
    master, opened_as = _find_master(path)
    if master is None:
        parts = [_data_part(path, "/entry/data/data", path, "/entry/data/data")]
        detector, mask_present, stem = {}, False, _stem_of(path)
    else:
        with _open_h5(master) as f:
            links = _master_links(f, master)
            detector = _detector_metadata(f)
            mask_present = any(isinstance(f.get(p), h5py.Dataset) for p in _PIXEL_MASK_PATHS)
        parts = [_data_part(file, dset, master, entry) for entry, file, dset in links]
        stem = _stem_of(master)
    first = parts[0]
    for part in parts[1:]:
        if (part["frame_shape"], part["dtype"]) != (first["frame_shape"], first["dtype"]):
            raise SendmapInputError(
                f"{part['file']}: {part['path']} holds {part['frame_shape']} frames of {part['dtype']}, but "
                f"{first['file']}:{first['path']} holds {first['frame_shape']} frames of {first['dtype']}")
    ranges = [p["image_nr"] for p in parts]
    return {
        "master": master, "opened_as": opened_as, "stem": stem,
        "parts": [(str(p["file"]), p["path"], p["n"]) for p in parts],
        "frame_shape": first["frame_shape"], "dtype": first["dtype"].newbyteorder("="),
        "image_nr_ranges": ranges if all(r is not None for r in ranges) else None,
        "hdf5_filters": first["filters"], "detector": detector, "pixel_mask_present": mask_present,
    }


def _stem_of(path: Path) -> Path:
    """``<stem>`` of ``<stem>_master.h5`` or ``<stem>_data_NNNNNN.h5`` (the file's own stem otherwise)."""
    if path.name.endswith(_MASTER_SUFFIX):
        return path.with_name(path.name[:-len(_MASTER_SUFFIX)])
    match = _DATA_FILE.fullmatch(path.name)
    return path.with_name(match[1]) if match else path.with_suffix("")


def _master_links(f: h5py.File, master: Path) -> list[tuple[str, Path, str]]:
    """(entry name, data file, HDF5 path in it) of each ``/entry/data/data_NNNNNN``, in number order."""
    group = f["entry/data"]
    names = sorted((n for n in group if _DATA_ENTRY.fullmatch(n)), key=lambda n: int(n[5:]))
    if not names:
        raise SendmapInputError(f"{master}: /entry/data holds no data_NNNNNN entries (found {list(group)})")
    links = []
    for name in names:
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            file = Path(link.filename)
            links.append((name, file if file.is_absolute() else master.parent / file, link.path))
        elif isinstance(link, h5py.SoftLink):
            links.append((name, master, link.path))
        else:
            links.append((name, master, f"/entry/data/{name}"))
    return links


def _data_part(file: Path, dset_path: str, master: Path, entry: str) -> dict:
    """Frame count, frame shape, dtype, image numbers and HDF5 filters of one data file's stack."""
    where = "" if file == master and entry == dset_path else f" (linked from {master}:/entry/data/{entry})"
    if not file.is_file():
        raise SendmapInputError(f"{file}: data file missing{where}")
    with _open_h5(file) as f:
        dset = f.get(dset_path)
        if not isinstance(dset, h5py.Dataset) or dset.ndim != 3:
            found = "nothing" if dset is None else (
                f"a dataset of shape {dset.shape}" if isinstance(dset, h5py.Dataset) else "a group")
            raise SendmapInputError(f"{file}: expected an (n, Qy, Qx) frame stack at {dset_path}{where}, "
                                    f"found {found}")
        if dset.dtype.kind not in "iuf":
            raise SendmapInputError(f"{file}: {dset_path} holds {dset.dtype}, not numbers")
        low, high = dset.attrs.get("image_nr_low"), dset.attrs.get("image_nr_high")
        return {"file": file, "path": dset_path, "n": int(dset.shape[0]), "frame_shape": tuple(dset.shape[1:]),
                "dtype": dset.dtype, "filters": _filters(dset),
                "image_nr": None if low is None or high is None else [int(low), int(high)]}


def _arina_scan_shape(scan_shape, n_frames: int, stem_md: dict | None, path: Path) -> tuple[tuple[int, int], str]:
    if scan_shape is not None:
        return check_scan_shape(scan_shape, n_frames, path), "argument"
    if stem_md is not None:
        ny, nx = stem_md.get("NumPixelsY"), stem_md.get("NumPixelsX")
        if isinstance(ny, int) and isinstance(nx, int) and ny > 0 and nx > 0 and ny * nx == n_frames:
            return (ny, nx), "stem_metadata"
    side = math.isqrt(n_frames)
    if side * side == n_frames:
        return (side, side), "square"
    return (1, n_frames), "single_row"


def _read_stem_metadata(stem: Path) -> dict | None:
    """Attributes of the ``STEM Metadata`` group of ``<stem>.h5`` (JSON-able), or None where absent."""
    file = stem.with_name(stem.name + ".h5")
    if not file.is_file():
        return None
    try:
        with h5py.File(file, "r") as f:
            group = f.get("STEM Metadata")
            if not isinstance(group, h5py.Group):
                return None
            return {key: _jsonable(value, squeeze=True) for key, value in group.attrs.items()}
    except OSError:
        return None


def _detector_metadata(f: h5py.File) -> dict:
    """Scalars of /entry/instrument/detector, its detectorSpecific and /entry/instrument/beam, unit-named."""
    metadata: dict = {}
    for group_path in ("entry/instrument/detector", "entry/instrument/detector/detectorSpecific",
                       "entry/instrument/beam"):
        group = f.get(group_path)
        if isinstance(group, h5py.Group):
            _collect_values(group, metadata)
    return metadata


def _collect_values(group: h5py.Group, out: dict) -> None:
    """Add ``<name>[_<units>]: value`` for the group's small datasets and ``<name>_shape`` for large ones."""
    for name in group:
        if not isinstance(group.get(name, getlink=True), h5py.HardLink):
            continue
        dset = group[name]
        if not isinstance(dset, h5py.Dataset):
            continue
        units = _attr(dset, "units")
        key = f"{name}_{re.sub(r'[^0-9A-Za-z]+', '_', units).strip('_')}" if isinstance(units, str) and units else name
        if dset.size > _SMALL_VALUE:
            key = f"{name}_shape"
            value = list(dset.shape)
        else:
            value = _jsonable(dset[()])
        out.setdefault(key, value)


def _load_arina_block(parts: tuple[tuple[str, str, int], ...], frame_shape: tuple[int, int],
                      pixel_dtype: str, row_length: int, block_info=None) -> np.ndarray:
    """Frames of one chunk, read from the data file(s) holding them (a chunk may span several)."""
    frames, shape = frame_range(block_info, row_length)
    out = np.empty((frames.stop - frames.start, *frame_shape), dtype=np.dtype(pixel_dtype))
    first = 0
    for file, dset_path, n in parts:
        lo, hi = max(frames.start, first), min(frames.stop, first + n)
        if lo < hi:
            with _open_h5(Path(file)) as f:
                dset = f.get(dset_path)
                if not isinstance(dset, h5py.Dataset):
                    raise SendmapInputError(f"{file}: no frame stack at {dset_path} any more")
                out[lo - frames.start:hi - frames.start] = dset[lo - first:hi - first]
        first += n
        if first >= frames.stop:
            break
    return out.reshape(*shape, *frame_shape)
