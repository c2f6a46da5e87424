"""Writers of DECTRIS Arina / EIGER acquisitions and py4DSTEM / EMD files (tests, examples), in the layouts described
in :mod:`sendmap.io.hdf5`; each file is written under a temporary name and moved into place."""
from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from sendmap import __version__

from ._hdf5_common import _MASTER_SUFFIX


_WRITE_BLOCK_BYTES = 16 * 2**20
"""Input frames read and written per step by the writers."""
_LAYOUTS = ("emdfile", "emd1", "py4dstem012")


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
