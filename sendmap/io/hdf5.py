"""HDF5 4D-STEM files: DECTRIS Arina/EIGER (NeXus) acquisitions and py4DSTEM / EMD files.

Readers follow the contract of :mod:`sendmap.io._common`: a lazy (Ry, Rx, Qy, Qx) dask array in native
byte order, chunks from :func:`~sendmap.io._common.scan_chunks` (consecutive frames, whole scan rows),
built with ``dask.array.map_blocks`` of a module-level loader that takes plain picklable parameters
(file path, HDF5 path inside the file, frame counts) and opens the file read-only by itself (h5py, with
:mod:`hdf5plugin` imported so bitshuffle-LZ4 decodes), reading only its frames. Bad input raises
:class:`~sendmap.errors.SendmapInputError` naming the file and the HDF5 path inside it.

DECTRIS Arina / EIGER (SIMPLON, NeXus NXmx)
-------------------------------------------
An acquisition ``<stem>`` is a master file and one or more data files beside it::

    <stem>_master.h5
      /entry                          NX_class=NXentry
        /data                         NX_class=NXdata
          data_000001 -> external link to <stem>_data_000001.h5:/entry/data/data
          data_000002 -> external link to <stem>_data_000002.h5:/entry/data/data ...
        /instrument/detector          NX_class=NXdetector: count_time (s), frame_time (s),
                                      x_pixel_size (m), detector_distance (m), bit_depth_image,
                                      saturation_value, countrate_correction_applied, description,
                                      detector_number, ... (scalar datasets, ``units`` attributes)
          /detectorSpecific           nimages, ntrigger, photon_energy (eV), compression ("bslz4"),
                                      pixel_mask (Qy, Qx) uint32, NONZERO where a pixel is bad, ...
    <stem>_data_NNNNNN.h5
      /entry/data/data                (n, Qy, Qx) unsigned integers, chunks of one frame, bitshuffle-LZ4
                                      (HDF5 filter 32008); attributes image_nr_low / image_nr_high
                                      (1-based numbers of its first and last frame)

Frames are in acquisition (scan) order, concatenated over the data files in the order of their numbers.
The Arina acquisition software may also write ``<stem>.h5``, a group ``STEM Metadata`` whose attributes
give the scan (``NumPixelsX``, ``NumPixelsY``, ``Pixel Size`` in nm, ``High Tension`` in V, ``Camera
Length`` in m...). rosettasciio's arina reader reads only the scan pixel size from it and takes a square
scan; :func:`read_arina_dask` takes the scan shape from ``scan_shape``, else NumPixelsY x NumPixelsX of
that file where they make the frame count, else a square scan where the frame count is a perfect square,
else (1, N). Unlike rosettasciio (which converts uint32 to uint16 by default) the pixel type is kept.

py4DSTEM / emdfile / EMD
------------------------
* **emdfile** (py4DSTEM >= 0.14; py4DSTEM 0.13 is the same tree with integer group tags): file attributes
  ``emd_group_type="file"``, ``version_major=1``, ``version_minor=0``, ``UUID``, ``authoring_program``;
  a root group (``emd_group_type="root"``, e.g. ``/datacube_root``) holding ``metadatabundle/calibration``
  (``emd_group_type="metadata"``, ``python_class="Calibration"``; datasets ``Q_pixel_size``,
  ``Q_pixel_units``, ``R_pixel_size``, ``R_pixel_units``) and the datacube group (``emd_group_type="array"``
  (0.13: ``1``), ``python_class="DataCube"``) with datasets ``data`` (Rx, Ry, Qx, Qy) and ``dim0`` ..
  ``dim3`` (calibration vectors, two values where linear; attributes ``name`` Rx/Ry/Qx/Qy and ``units``).
* **py4DSTEM 0.12** (and 0.10-0.11): top group ``4DSTEM_experiment`` (``emd_group_type=2``,
  ``version_major=0``, ``version_minor=12``) with ``data/datacubes/<name>`` EMD type-1 groups.
* **EMD 1.0 / Berkeley EMD** (emdatasets.com, ``version_major``/``version_minor`` on the file): groups
  with ``emd_group_type=1`` holding ``data`` and ``dim1`` .. ``dimN`` (1-based; ``name`` and ``units``
  attributes, units like ``[n_m]``).

Axis order: py4DSTEM indexes ``datacube.data[rx, ry, qx, qy]`` and calls its first axis x, but its x is the
array's first (row) index, not the horizontal one: its raw-file readers reshape frames in acquisition order
with a C-order reshape whose first axis is the slow scan axis (e.g. ``read_arina``:
``array_3D.reshape(scan_width, scan_height, Qx, Qy)``), its ``DataCube.R_Nx`` is ``data.shape[0]``, and its
``show`` draws virtual images and diffraction patterns with ``imshow`` (first axis = displayed rows). So
py4DSTEM's (Rx, Ry, Qx, Qy) is sendmap's (Ry, Rx, Qy, Qx) axis for axis: no transposition. EMD type-1 ``data``
in these files is read the same way (rosettasciio's EMD reader, in contrast, reverses all axes of ``data``
datasets that have 1-based dims, following HyperSpy's axis order).
"""
from __future__ import annotations

import math
import os
import posixpath
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

import dask.array as da
import h5py
import hdf5plugin
import numpy as np

from sendmap import __version__
from sendmap.errors import SendmapInputError
from sendmap.io._common import check_scan_shape, frame_range, scan_chunks

_DATA_ENTRY = re.compile(r"data_(\d+)")
"""Name of a master file's link to one data file under /entry/data (DECTRIS: six digits from 000001)."""
_DATA_FILE = re.compile(r"(.+)_data_(\d+)\.h5")
_MASTER_SUFFIX = "_master.h5"
_PIXEL_MASK_PATHS = ("entry/instrument/detector/detectorSpecific/pixel_mask",
                     "entry/instrument/detector/pixel_mask")
_SMALL_VALUE = 16
"""Detector datasets of at most this many elements go into metadata as values; larger ones by shape."""
_WRITE_BLOCK_BYTES = 16 * 2**20
"""Input frames read and written per step by the writers."""
_EMD_ARRAY_TAGS = (1, "array")
"""``emd_group_type`` of an array group: 1 (EMD 1.0, py4DSTEM <= 0.13) or "array" (emdfile)."""
_LAYOUTS = ("emdfile", "emd1", "py4dstem012")


# --- detection ----------------------------------------------------------------------------------------

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


# --- DECTRIS Arina / EIGER ----------------------------------------------------------------------------

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


# --- py4DSTEM / emdfile / EMD -------------------------------------------------------------------------

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


def _emd_candidates(f: h5py.File) -> list[tuple[str, tuple[int, ...]]]:
    """(HDF5 path, shape) of every 4D ``data`` dataset whose group is an EMD array group."""
    found = []

    def visit(name: str, obj) -> None:
        if (isinstance(obj, h5py.Dataset) and obj.ndim == 4 and posixpath.basename(name) == "data"
                and _attr(obj.parent, "emd_group_type") in _EMD_ARRAY_TAGS):
            found.append((obj.name, obj.shape))

    f.visititems(visit)
    return found


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


# --- writers (tests, examples) ------------------------------------------------------------------------

def write_arina(stem_path, data, *, frames_per_file: int = 1000, compression: str | None = "bslz4",
                pixel_mask=None, count_time_s: float = 1e-4, photon_energy_eV: float = 300e3,
                scan_pixel_size_nm: float | None = None, write_stem_metadata: bool = True) -> Path:
    """Write frames as a DECTRIS Arina acquisition: ``<stem>_master.h5`` and ``<stem>_data_NNNNNN.h5``.

    ``stem_path``: ``<stem>`` (a trailing ``_master.h5`` is dropped). ``data``: (Ry, Rx, Qy, Qx) or (N, Qy, Qx)
    unsigned integers (uint8/16/32; numpy, dask, h5py or any sliceable array), stored as they are.
    ``frames_per_file``: frames per data file (DECTRIS ``nimages_per_file``). ``compression``: "bslz4"
    (bitshuffle-LZ4 via hdf5plugin, as the detector writes) or None. ``pixel_mask``: (Qy, Qx) DECTRIS flags,
    nonzero where bad (default: all zero). ``count_time_s``: exposure per frame (s); ``photon_energy_eV``:
    beam energy (eV). A 4D input also gets ``<stem>.h5`` (``STEM Metadata``: NumPixelsX/Y, ``Pixel Size`` in
    nm where ``scan_pixel_size_nm`` is given) unless ``write_stem_metadata`` is False. Data is written a block
    of frames at a time into hidden temporary files that replace the final names only when all are complete
    (data files first, the master last). Returns the master's path.
    """
    stem = Path(stem_path)
    if stem.name.endswith(_MASTER_SUFFIX):
        stem = stem.with_name(stem.name[:-len(_MASTER_SUFFIX)])
    shape = tuple(int(n) for n in data.shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"data must be (Ry, Rx, Qy, Qx) or (N, Qy, Qx), not shape {shape}")
    dtype = np.dtype(data.dtype)
    if dtype.kind != "u" or dtype.itemsize not in (1, 2, 4):
        raise ValueError(f"data must be uint8, uint16 or uint32 (detector counts), not {dtype}")
    if not isinstance(frames_per_file, (int, np.integer)) or frames_per_file < 1:
        raise ValueError(f"frames_per_file must be a positive integer, not {frames_per_file!r}")
    filters = _compression_kwargs(compression)
    n_frames, frame_shape = int(np.prod(shape[:-2])), shape[-2:]
    if n_frames == 0:
        raise ValueError("no frames to write")
    mask = np.zeros(frame_shape, np.uint32) if pixel_mask is None else np.asarray(pixel_mask, np.uint32)
    if mask.shape != frame_shape:
        raise ValueError(f"pixel_mask must have the frame shape {frame_shape}, not {mask.shape}")
    starts = list(range(0, n_frames, frames_per_file))
    finals = [stem.with_name(f"{stem.name}_data_{i + 1:06d}.h5") for i in range(len(starts))]
    master = stem.with_name(stem.name + _MASTER_SUFFIX)
    stem_file = stem.with_name(stem.name + ".h5")
    temps = {final: _temp_name(final) for final in [*finals, master, stem_file]}
    try:
        for start, final in zip(starts, finals):
            stop = min(n_frames, start + frames_per_file)
            _write_arina_data_file(temps[final], data, start, stop, frame_shape, dtype, filters)
        _write_arina_master(temps[master], [f.name for f in finals], n_frames, frame_shape, dtype, mask,
                            compression, count_time_s, photon_energy_eV)
        if write_stem_metadata and len(shape) == 4:
            _write_stem_metadata(temps[stem_file], shape[:2], scan_pixel_size_nm, photon_energy_eV)
        for final in finals:
            os.replace(temps[final], final)
        if temps[stem_file].exists():
            os.replace(temps[stem_file], stem_file)
        os.replace(temps[master], master)
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    return master


def _write_arina_data_file(path: Path, data, start: int, stop: int, frame_shape, dtype: np.dtype,
                           filters: dict) -> None:
    with h5py.File(path, "x") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = np.bytes_(b"NXentry")
        group = entry.create_group("data")
        group.attrs["NX_class"] = np.bytes_(b"NXdata")
        dset = group.create_dataset("data", shape=(stop - start, *frame_shape), dtype=dtype,
                                    chunks=(1, *frame_shape), **filters)
        dset.attrs["image_nr_low"] = np.uint64(start + 1)
        dset.attrs["image_nr_high"] = np.uint64(stop)
        position = 0
        for block in _frame_blocks(data, start, stop):
            dset[position:position + len(block)] = block.astype(dtype, copy=False)
            position += len(block)


def _write_arina_master(path: Path, data_names: list[str], n_frames: int, frame_shape, dtype: np.dtype,
                        mask: np.ndarray, compression: str | None, count_time_s: float,
                        photon_energy_eV: float) -> None:
    bits = 8 * dtype.itemsize
    readout_s = 1e-7
    with h5py.File(path, "x") as f:
        f.attrs["default"] = np.bytes_(b"entry")
        entry = _nx_group(f, "entry", "NXentry")
        entry.attrs["default"] = np.bytes_(b"data")
        definition = entry.create_dataset("definition", data=np.bytes_(b"NXmx"))
        definition.attrs["version"] = np.bytes_(b"1.4")
        group = _nx_group(entry, "data", "NXdata")
        group.attrs["signal"] = np.bytes_(b"data_000001")
        for i, name in enumerate(data_names):
            group[f"data_{i + 1:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
        instrument = _nx_group(entry, "instrument", "NXinstrument")
        _nx_group(instrument, "beam", "NXbeam")
        det = _nx_group(instrument, "detector", "NXdetector")
        qy, qx = frame_shape
        for name, value, units in (
                ("beam_center_x", qx / 2, "pixel"), ("beam_center_y", qy / 2, "pixel"),
                ("bit_depth_image", np.uint16(bits), None), ("bit_depth_readout", np.uint16(8), None),
                ("count_time", float(count_time_s), "s"), ("countrate_correction_applied", np.int8(1), None),
                ("description", np.bytes_(b"Dectris ARINA CZT (sendmap synthetic)"), None),
                ("detector_distance", 0.0, "m"), ("detector_number", np.bytes_(b"sendmap-synthetic"), None),
                ("detector_readout_time", readout_s, "s"), ("flatfield_correction_applied", np.int8(0), None),
                ("frame_time", float(count_time_s) + readout_s, "s"), ("pixel_mask_applied", np.int8(1), None),
                ("saturation_value", np.int64(2**bits - 1), None), ("sensor_material", np.bytes_(b"CZT"), None),
                ("sensor_thickness", 0.0015, "m"), ("threshold_energy", 17500.0, "eV"),
                ("type", np.bytes_(b"HPC"), None), ("x_pixel_size", 1e-4, "m"), ("y_pixel_size", 1e-4, "m")):
            _scalar_dataset(det, name, value, units)
        spec = _nx_group(det, "detectorSpecific", "NXcollection")
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        for name, value, units in (
                ("compression", np.bytes_((compression or "none").encode()), None),
                ("data_collection_date", np.bytes_(stamp.encode()), None),
                ("frame_count_time", float(count_time_s), "s"), ("frame_period", float(count_time_s), "s"),
                ("nimages", np.uint64(1), None), ("ntrigger", np.uint64(n_frames), None),
                ("number_of_excluded_pixels", np.uint32(np.count_nonzero(mask)), None),
                ("photon_energy", float(photon_energy_eV), "eV"),
                ("software_version", np.bytes_(f"sendmap {__version__}".encode()), None),
                ("trigger_mode", np.bytes_(b"exts"), None),
                ("x_pixels_in_detector", np.uint64(qx), None), ("y_pixels_in_detector", np.uint64(qy), None)):
            _scalar_dataset(spec, name, value, units)
        spec.create_dataset("pixel_mask", data=mask.astype(np.uint32))
        _nx_group(entry, "sample", "NXsample")


def _write_stem_metadata(path: Path, scan_shape, pixel_size_nm: float | None, high_tension_v: float) -> None:
    """``<stem>.h5`` as the Arina acquisition software writes it (attributes of group ``STEM Metadata``)."""
    with h5py.File(path, "x") as f:
        group = f.create_group("STEM Metadata")
        group.attrs["NumPixelsY"] = np.int64(scan_shape[0])
        group.attrs["NumPixelsX"] = np.int64(scan_shape[1])
        group.attrs["NumPixelsPrescan"] = np.array([0], np.uint32)
        group.attrs["High Tension"] = np.array([float(high_tension_v)])
        group.attrs["IsPixelSizeCalibrated"] = np.array([int(pixel_size_nm is not None)], np.uint8)
        if pixel_size_nm is not None:
            group.attrs["Pixel Size"] = np.array([float(pixel_size_nm)])


def write_py4dstem(path, data, *, layout: str = "emdfile", q_pixel_size: float | None = None,
                   r_pixel_size_nm: float | None = None, name: str = "datacube",
                   compression: str | None = None) -> Path:
    """Write a (Ry, Rx, Qy, Qx) datacube as a py4DSTEM / EMD file of ``layout``; returns ``path``.

    ``layout``: "emdfile" (py4DSTEM >= 0.14 via emdfile: ``/<name>_root/<name>/data`` with ``dim0..dim3`` and
    ``metadatabundle/calibration``), "emd1" (Berkeley EMD: ``/data/<name>/data`` with ``dim1..dim4``, units
    like ``[n_m]``) or "py4dstem012" (``/4DSTEM_experiment/data/datacubes/<name>/data``). The array is stored
    as py4DSTEM's (Rx, Ry, Qx, Qy), i.e. the same axis order (module docstring). ``q_pixel_size``: detector
    pixel in A^-1 (written as A^-1 in emdfile calibration, as nm^-1 in EMD dims); ``r_pixel_size_nm``: scan step
    (nm); None means uncalibrated (size 1, units "pixels"). ``compression``: None (contiguous, as py4DSTEM
    writes), "gzip", "lzf" or "bslz4" (chunked by scan row pieces). Written a block of frames at a time into a
    hidden temporary file that replaces ``path`` only when complete.
    """
    path = Path(path)
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(_LAYOUTS)}, not {layout!r}")
    shape = tuple(int(n) for n in data.shape)
    if len(shape) != 4:
        raise ValueError(f"data must be 4D (Ry, Rx, Qy, Qx), not shape {shape}")
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "iuf":
        raise ValueError(f"data must be integers or floats, not {dtype}")
    temp = _temp_name(path)
    try:
        with h5py.File(temp, "x") as f:
            group = _PY4DSTEM_WRITERS[layout](f, name, shape, q_pixel_size, r_pixel_size_nm)
            dset = group.create_dataset("data", shape=shape, dtype=dtype, **_datacube_storage(shape, dtype,
                                                                                              compression))
            if layout == "emdfile":
                dset.attrs["units"] = "pixel intensity"
            rx = shape[1]
            position = 0
            for block in _frame_blocks(data, 0, shape[0] * shape[1]):
                row, col = divmod(position, rx)
                dset[row, col:col + len(block)] = block.astype(dtype, copy=False)
                position += len(block)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def _write_emdfile_tree(f: h5py.File, name: str, shape, q_pixel_size, r_pixel_size_nm) -> h5py.Group:
    f.attrs["emd_group_type"] = "file"
    f.attrs["version_major"] = 1
    f.attrs["version_minor"] = 0
    f.attrs["UUID"] = str(uuid.uuid4())
    f.attrs["authoring_program"] = f"sendmap {__version__}"
    f.attrs["authoring_user"] = os.environ.get("USER", "")
    root = _tagged_group(f, f"{name}_root", "root", "Root")
    bundle = root.create_group("metadatabundle")
    bundle.attrs["emd_group_type"] = "metadatabundle"
    calibration = _tagged_group(bundle, "calibration", "metadata", "Calibration")
    r_size, r_units = (1, "pixels") if r_pixel_size_nm is None else (float(r_pixel_size_nm), "nm")
    q_size, q_units = (1, "pixels") if q_pixel_size is None else (float(q_pixel_size), "A^-1")
    for key, value in (("Q_pixel_size", q_size), ("R_pixel_size", r_size), ("Q_pixel_units", q_units),
                       ("R_pixel_units", r_units)):
        if isinstance(value, str):
            calibration.create_dataset(key, data=value.encode()).attrs["type"] = b"string"
        else:
            calibration.create_dataset(key, data=value).attrs["type"] = b"number"
    cube = _tagged_group(root, name, "array", "DataCube")
    for axis, (dim_name, size, units) in enumerate((("Rx", r_size, r_units), ("Ry", r_size, r_units),
                                                   ("Qx", q_size, q_units), ("Qy", q_size, q_units))):
        dim = cube.create_dataset(f"dim{axis}", data=np.array([0, size]))
        dim.attrs["name"] = dim_name
        dim.attrs["units"] = units
    return cube


def _write_emd1_tree(f: h5py.File, name: str, shape, q_pixel_size, r_pixel_size_nm) -> h5py.Group:
    f.attrs["version_major"] = 0
    f.attrs["version_minor"] = 2
    for group_name in ("microscope", "sample", "user", "comments"):
        f.create_group(group_name)
    cube = f.create_group("data").create_group(name)
    cube.attrs["emd_group_type"] = np.int32(1)
    _write_dims_1based(cube, shape, q_pixel_size, r_pixel_size_nm, ("Rx", "Ry", "Qx", "Qy"))
    return cube


def _write_py4dstem012_tree(f: h5py.File, name: str, shape, q_pixel_size, r_pixel_size_nm) -> h5py.Group:
    top = f.create_group("4DSTEM_experiment")
    top.attrs["emd_group_type"] = 2
    top.attrs["version_major"] = 0
    top.attrs["version_minor"] = 12
    top.attrs["version_release"] = 0
    data = top.create_group("data")
    for group_name in ("datacubes", "counted_datacubes", "diffractionslices", "realslices", "pointlists",
                       "pointlistarrays", "coordinates"):
        data.create_group(group_name)
    metadata = top.create_group("metadata")
    for group_name in ("microscope", "sample", "user", "calibration", "comments"):
        metadata.create_group(group_name)
    cube = data["datacubes"].create_group(name)
    cube.attrs["emd_group_type"] = 1
    cube.attrs["metadata"] = -1
    _write_dims_1based(cube, shape, q_pixel_size, r_pixel_size_nm, ("R_x", "R_y", "Q_x", "Q_y"))
    return cube


_PY4DSTEM_WRITERS = {"emdfile": _write_emdfile_tree, "emd1": _write_emd1_tree,
                     "py4dstem012": _write_py4dstem012_tree}


def _write_dims_1based(cube: h5py.Group, shape, q_pixel_size, r_pixel_size_nm, names) -> None:
    """EMD 1.0 ``dim1..dim4``: full-length calibration vectors, units in EMD notation ([n_m], [n_m^-1])."""
    r_size, r_units = (1.0, "[pix]") if r_pixel_size_nm is None else (float(r_pixel_size_nm), "[n_m]")
    q_size, q_units = (1.0, "[pix]") if q_pixel_size is None else (10 * float(q_pixel_size), "[n_m^-1]")
    for axis, (size, units) in enumerate(((r_size, r_units), (r_size, r_units), (q_size, q_units),
                                          (q_size, q_units))):
        dim = cube.create_dataset(f"dim{axis + 1}", data=np.arange(shape[axis]) * size)
        dim.attrs["name"] = names[axis]
        dim.attrs["units"] = units


# --- shared helpers -----------------------------------------------------------------------------------

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


def _compression_kwargs(compression: str | None) -> dict:
    if compression is None:
        return {}
    if compression == "bslz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if compression in ("gzip", "lzf"):
        return {"compression": compression}
    raise ValueError(f"compression must be 'bslz4', 'gzip', 'lzf' or None, not {compression!r}")


def _datacube_storage(shape, dtype: np.dtype, compression: str | None) -> dict:
    """h5py storage options of a 4D datacube: contiguous, or chunks of scan-row pieces when compressed."""
    if compression is None:
        return {}
    frame_bytes = shape[2] * shape[3] * dtype.itemsize
    cols = max(1, min(shape[1], 2**20 // frame_bytes))
    return {"chunks": (1, cols, shape[2], shape[3]), **_compression_kwargs(compression)}


def _frame_blocks(data, start: int, stop: int):
    """numpy blocks of frames ``start:stop`` of (N, Qy, Qx) or (Ry, Rx, Qy, Qx) ``data``, in scan order.

    Blocks stay within one scan row of a 4D input and hold at most about 16 MiB of float64 frames.
    """
    shape = tuple(data.shape)
    per_block = max(1, _WRITE_BLOCK_BYTES // (8 * shape[-1] * shape[-2]))
    row = stop if len(shape) == 3 else shape[1]
    k = start
    while k < stop:
        r, c = divmod(k, row)
        end = min(stop, k + per_block, (r + 1) * row)
        yield np.asarray(data[k:end] if len(shape) == 3 else data[r, c:c + end - k])
        k = end


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")


def _nx_group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs["NX_class"] = np.bytes_(nx_class.encode())
    return group


def _tagged_group(parent: h5py.Group, name: str, emd_type: str, python_class: str) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs["emd_group_type"] = emd_type
    group.attrs["python_class"] = python_class
    return group


def _scalar_dataset(group: h5py.Group, name: str, value, units: str | None) -> None:
    dset = group.create_dataset(name, data=value)
    if units is not None:
        dset.attrs["units"] = np.bytes_(units.encode())
