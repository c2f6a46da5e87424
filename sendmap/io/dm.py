"""Gatan DigitalMicrograph ``.dm4`` / ``.dm3`` 4D-STEM stacks: lazy reader and minimal writer.

File layout
-----------
A DM file is a header followed by one tree of tags and 8 NUL bytes. Header (big-endian)::

    version      int32          3 or 4
    root length  int32 / int64  (DM3 / DM4) informational: file size - 16 (DM3) or - 24 (DM4)
    byte order   int32          1: tag *data* little-endian (PC), 0: big-endian

A tag group is ``sorted`` (1 byte), ``open`` (1 byte), the number of tags (int32 in DM3, int64 in DM4)
and the tags. Each tag starts with its kind (1 byte: 20 = group, 21 = data), its name length (2 bytes)
and name; DM4 then gives the tag's length in bytes (int64, not in DM3). A data tag continues with
``%%%%``, the length n of its type description (int32/int64) and n type words (int32/int64), then the
value in the file's byte order. Type words: 2 short, 3 long, 4 ushort, 5 ulong, 6 float, 7 double,
8 bool, 9 char, 10 octet, 11 long long, 12 ulong long, 15 struct, 18 string, 20 array; a simple value is
``[type]``, an array ``[20, element type, count]`` (strings are usually arrays of ushort, UTF-16).

The images live in ``ImageList``, one unnamed group per image (item 0 is usually an RGBA thumbnail,
listed in the root ``Thumbnails`` group). The pixels of an image are ``ImageData/Data``, an array of
the pixel type written in place in the tag tree; ``ImageData/DataType`` is the DM image type (1 int16,
2 float32, 6 uint8, 7 int32, 9 int8, 10 uint16, 11 uint32, 12 float64; 3/13/27/28 complex, 8/23 RGB),
``ImageData/Dimensions`` the sizes, fastest first, and ``ImageData/Calibrations/Dimension`` one group
per dimension (same order) with ``Scale``, ``Origin`` (pixels) and ``Units``.

Axis order: as rosettasciio (``rsciio.digitalmicrograph``) reads it, the array is the ``Data`` bytes in C
order with the Dimensions reversed, so a file of Dimensions (Qx, Qy, Rx, Ry) is the (Ry, Rx, Qy, Qx)
array of sendmap, and a 3D file of Dimensions (Qx, Qy, N) is (N, Qy, Qx) frames in scan order.

The tags are parsed by rosettasciio's DigitalMicrograph reader (it skips over the pixel array and
records its byte offset); the pixels are then memory-mapped a chunk of frames at a time.

Size: one file format: its layout (this docstring), the tag-tree constants shared by the reader and the writer,
the lazy reader, its metadata and a minimal writer (tests, examples). The writer (~175 lines, from ``write_dm4``)
is the piece to move out if the module grows.
"""
from __future__ import annotations

import math
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
from rsciio.exceptions import (ByteOrderError, DM3DataTypeError, DM3FileVersionError, DM3TagError,
                               DM3TagIDError, DM3TagTypeError)

from sendmap.errors import SendmapInputError
from sendmap.io._common import check_scan_shape, frame_range, scan_chunks, stack_scan_shape

# --- format constants -------------------------------------------------------------------------------

_TAG_GROUP, _TAG_DATA = 20, 21
"""Tag kinds (first byte of a tag)."""
_DATA_MARK = b"%%%%"
"""Opens every data tag."""
_LITTLE_ENDIAN_FLAG = 1
"""Header byte-order word for little-endian tag data (the writer always writes little-endian)."""
_END_OF_FILE = b"\0" * 8
"""DM files end with 8 NUL bytes."""
_ROOT_LENGTH_SLACK = {3: 16, 4: 24}
"""Header "root length" = file size minus this (bytes), per DM version."""

# Tag value types (type words of a data tag).
_T_LONG, _T_USHORT, _T_ULONG, _T_FLOAT, _T_DOUBLE, _T_BOOL, _T_LONGLONG, _T_ARRAY = 3, 4, 5, 6, 7, 8, 11, 20

_IMAGE_TYPES = {
    # numpy dtype: (DM image DataType, tag element type of the Data array)
    np.dtype("int8"): (9, 9),       # char
    np.dtype("uint8"): (6, 10),     # octet
    np.dtype("int16"): (1, 2),      # short
    np.dtype("uint16"): (10, 4),    # ushort
    np.dtype("int32"): (7, 3),      # long
    np.dtype("uint32"): (11, 5),    # ulong
    np.dtype("float32"): (2, 6),    # float
    np.dtype("float64"): (12, 7),   # double
}
"""Pixel types the writer writes and the reader returns."""
_COMPLEX_TYPES = {3: "complex64", 5: "packed complex64", 13: "complex128", 27: "packed complex64",
                  28: "packed complex128"}
_RGB_TYPES = {8: "RGB", 23: "RGBA"}
_THUMBNAIL_TYPE, _THUMBNAIL_ELEMENT, _THUMBNAIL_SIDE = 23, _T_ULONG, 8
"""The writer's thumbnail: an 8 x 8 RGBA image (4 bytes per pixel, stored as ulong) of zeros."""
_DM3_MAX_BYTES = 2**31 - 1
"""DM3 lengths are signed 32-bit: largest pixel array (and file) it can describe."""
_WRITE_BLOCK_BYTES = 16 * 2**20
"""Input read per step by the writers."""

# Units of the calibrations: factor from the file's unit to sendmap's.
_INV_LENGTH_TO_INV_ANGSTROM = {"1/nm": 0.1, "nm^-1": 0.1, "nm-1": 0.1, "1/Å": 1.0, "1/A": 1.0, "1/angstrom": 1.0,
                               "1/pm": 100.0, "1/µm": 1e-4, "1/μm": 1e-4, "1/um": 1e-4, "1/m": 1e-10}
_LENGTH_TO_NM = {"nm": 1.0, "Å": 0.1, "A": 0.1, "angstrom": 0.1, "pm": 1e-3, "µm": 1e3, "μm": 1e3, "um": 1e3,
                 "mm": 1e6, "m": 1e9}
_ANGLE_TO_MRAD = {"mrad": 1.0, "rad": 1e3, "µrad": 1e-3, "μrad": 1e-3, "urad": 1e-3}
_V_PER_KV, _MS_PER_S = 1e3, 1e3

_PARSE_ERRORS = (NotImplementedError, ByteOrderError, DM3DataTypeError, DM3FileVersionError, DM3TagError,
                 DM3TagIDError, DM3TagTypeError, OSError, struct.error, KeyError, ValueError, IndexError,
                 TypeError, OverflowError, MemoryError)
"""What rosettasciio's tag parser raises on a file that is not DM, corrupt or truncated."""


@dataclass(frozen=True)
class _Image:
    """One ``ImageList`` entry, as plain values (axes in rosettasciio / C order, slowest first)."""

    index: int
    name: str
    data_type: int
    """DM image DataType code."""
    dtype: np.dtype | None
    """Pixel type on disk with its byte order; None where sendmap cannot read it (complex, RGB...)."""
    shape: tuple[int, ...]
    data_offset: int
    """Byte offset of the first pixel in the file."""
    data_bytes: int
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    """Calibrated value of pixel 0 (= -Origin * Scale), in ``units``."""
    units: tuple[str, ...]
    byte_order: str
    """``little`` or ``big``: the file's tag-data byte order."""
    tags: dict
    """``ImageTags`` (microscope, acquisition...), as parsed."""


# --- reader ------------------------------------------------------------------------------------------

def read_dm_dask(path, scan_shape: tuple[int, int] | None = None,
                 frames_per_chunk: int | None = None, *, required: bool = True) -> tuple[da.Array, dict]:
    """Lazy (Ry, Rx, Qy, Qx) array of a DM3/DM4 4D-STEM file in native byte order, and its metadata.

    The image read is the largest 3D/4D image of the file's ``ImageList`` that is not listed as a
    thumbnail (else its largest 2D image: one pattern, a 1 × 1 scan). A 4D image gives its own scan shape
    (``scan_shape``, if given, must equal it); a 3D (N, Qy, Qx) stack is reshaped to ``scan_shape``, which
    it needs unless N = 1 (:func:`sendmap.io._common.stack_scan_shape`; ``required=False``: a 1 × N line). Chunks are whole scan rows of at
    most ``frames_per_chunk`` frames (default: 64 MiB), each memory-mapping the file read-only by itself.
    The metadata dict is JSON-able; see :func:`read_dm_metadata`.

    Raises SendmapInputError naming the file for a file that is not DM3/DM4, is truncated or corrupt,
    holds no 3D/4D image, has complex or RGB pixels, or does not match ``scan_shape``.
    """
    path = Path(path)
    image, version, file_bytes = _open(path)
    if len(image.shape) == 4:
        n_frames = image.shape[0] * image.shape[1]
        if scan_shape is not None and check_scan_shape(scan_shape, n_frames, path) != image.shape[:2]:
            raise SendmapInputError(
                f"{path}: scan_shape {tuple(scan_shape)} does not match the file's scan axes {image.shape[:2]}")
        scan_shape = image.shape[:2]
    elif len(image.shape) == 3:
        scan_shape = stack_scan_shape(scan_shape, image.shape[0], path, required)
    else:  # one pattern
        scan_shape = check_scan_shape(scan_shape or (1, 1), 1, path)
    frame_shape = image.shape[-2:]
    native = image.dtype.newbyteorder("=")
    chunks = scan_chunks(scan_shape, frame_shape, native.itemsize, frames_per_chunk)
    data = da.map_blocks(_load_dm_block, chunks=chunks, dtype=native, meta=np.empty((0, 0, 0, 0), native),
                         path=str(path), data_offset=image.data_offset, dtype_on_disk=image.dtype.str,
                         frame_shape=frame_shape, row_length=scan_shape[1])
    return data, _metadata(image, version, file_bytes)


def read_dm_metadata(path) -> dict:
    """Metadata of the image :func:`read_dm_dask` reads, without building the array.

    Keys: ``format`` (``dm3``/``dm4``), ``dm_version``, ``byte_order``, ``dtype_on_disk`` (numpy string with
    byte order, e.g. ``<u2``), ``data_offset`` and ``data_bytes`` (bytes), ``file_bytes``, ``image_index``
    (in ``ImageList``), ``image_name``, ``dm_data_type``, ``shape_on_disk`` (the image's shape, rosettasciio
    order), ``axes`` (per axis of ``shape_on_disk``: ``name``, ``size``, ``scale`` and ``offset`` (calibrated
    value of pixel 0) in ``units`` as in the file), ``q_units_on_disk``, ``q_scale_inv_angstrom`` (one
    value where both diffraction axes agree, else None), ``q_scale_inv_angstrom_yx``,
    ``q_offset_inv_angstrom_yx``, ``q_scale_mrad_yx`` (angle-calibrated patterns), ``scan_step_nm`` and
    ``scan_step_nm_yx`` (4D files with length-calibrated scan axes), ``voltage_kV``, ``camera_length_mm``,
    ``exposure_ms`` and ``dwell_time_us`` (from ``ImageTags``). Absent values are None.
    """
    path = Path(path)
    image, version, file_bytes = _open(path)
    return _metadata(image, version, file_bytes)


def _load_dm_block(path: str, data_offset: int, dtype_on_disk: str, frame_shape: tuple[int, int],
                   row_length: int, block_info=None) -> np.ndarray:
    """The chunk's frames, copied out of a read-only memory map of the file, in native byte order."""
    frames, shape = frame_range(block_info, row_length)
    disk = np.dtype(dtype_on_disk)
    frame_bytes = disk.itemsize * frame_shape[0] * frame_shape[1]
    pixels = np.memmap(path, dtype=disk, mode="r", offset=data_offset + frames.start * frame_bytes,
                       shape=(frames.stop - frames.start, *frame_shape))
    block = np.array(pixels, dtype=disk.newbyteorder("="))
    del pixels  # closes the map
    return block.reshape(*shape, *frame_shape)


def _open(path: Path) -> tuple[_Image, int, int]:
    """The image to read, the DM version and the file size; SendmapInputError for anything unreadable."""
    try:
        with open(path, "rb") as f:
            file_bytes = os.fstat(f.fileno()).st_size
            head = f.read(4)
            version, tags, error, stop = _rsciio_parse(f)
    except OSError as exc:
        raise SendmapInputError(f"{path}: cannot read the DM file ({exc.strerror or exc})") from None
    if version not in (3, 4):
        raise SendmapInputError(
            f"{path}: not a DigitalMicrograph DM3/DM4 file: it starts with {head!r}, not the version number "
            "3 or 4 (big-endian int32)")
    if error is not None:
        _raise_truncated(path, tags, file_bytes)
        if stop >= file_bytes:
            raise SendmapInputError(
                f"{path}: truncated DM{version} file: its {file_bytes} bytes end inside the tag tree (reading "
                f"the tags reached byte offset {stop})")
        kind = "struct.error" if isinstance(error, struct.error) else type(error).__name__
        raise SendmapInputError(
            f"{path}: corrupt DM{version} file: reading the tags failed at byte offset {stop} of {file_bytes} "
            f"bytes ({kind}: {error})")
    _raise_truncated(path, tags, file_bytes)
    image = _choose_image(path, _images(path, tags))
    _check_image(path, image)
    return image, version, file_bytes


def _rsciio_parse(f) -> tuple[int | None, dict, Exception | None, int]:
    """Parse the tag tree with rosettasciio: (DM version, tags, parse error or None, file position).

    Uses the private ``rsciio.digitalmicrograph._api.DigitalMicrographReader`` (no public API gives the
    pixel offset); it and :func:`_rsciio_image` are the only places that touch rosettasciio's internals.
    On an error the tags parsed so far are returned, to tell a truncated pixel array from a corrupt file.
    """
    from rsciio.digitalmicrograph._api import DigitalMicrographReader

    reader = DigitalMicrographReader(f)
    try:
        reader.parse_file()
    except _PARSE_ERRORS as exc:
        return reader.dm_version, reader.tags_dict or {}, exc, f.tell()
    return reader.dm_version, reader.tags_dict, None, f.tell()


def _rsciio_image(imdict: dict) -> tuple[tuple[int, ...], tuple, tuple, tuple, str | None]:
    """(shape, scales, offsets, units, numpy dtype name or None) of an image, from rosettasciio's ImageObject.

    Private rosettasciio class (see :func:`_rsciio_parse`); shape and calibrations in its axis order.
    """
    from rsciio.digitalmicrograph._api import ImageObject

    image = ImageObject(imdict, None)
    try:
        dtype = image.dtype
    except (NotImplementedError, KeyError):  # obsolete type 4 or a code rsciio does not know
        dtype = None
    return (tuple(int(n) for n in image.shape), tuple(float(s) for s in image.scales),
            tuple(float(o) + 0.0 for o in image.offsets),  # + 0.0: no -0.0 for uncalibrated axes
            tuple(str(u) for u in image.units),
            dtype if isinstance(dtype, str) else None)


def _pixel_arrays(tags: dict):
    """(ImageList index, image dict, skipped ``Data`` record) of every image whose pixel array was reached."""
    image_list = tags.get("ImageList")
    if not isinstance(image_list, dict):
        return
    for index, imdict in enumerate(image_list.values()):  # the position is what Thumbnails/ImageIndex counts
        data = imdict.get("ImageData", {}).get("Data") if isinstance(imdict, dict) else None
        if isinstance(data, dict) and "offset" in data and "size_bytes" in data:
            yield index, imdict, data


def _raise_truncated(path: Path, tags: dict, file_bytes: int) -> None:
    """SendmapInputError if any pixel array found runs past the end of the file."""
    for index, _, data in _pixel_arrays(tags):
        end = data["offset"] + data["size_bytes"]
        if end > file_bytes:
            raise SendmapInputError(
                f"{path}: truncated DM file: image {index} of the ImageList needs {data['size_bytes']} bytes of "
                f"pixels from byte offset {data['offset']} (to byte {end}), but the file has only {file_bytes} "
                f"bytes ({end - file_bytes} missing)")


def _images(path: Path, tags: dict) -> list[_Image]:
    """Every image of the ImageList that is not listed as a thumbnail."""
    thumbnails = {t.get("ImageIndex") for t in tags.get("Thumbnails", {}).values() if isinstance(t, dict)}
    images = []
    for index, imdict, data in _pixel_arrays(tags):
        if index in thumbnails:
            continue
        try:
            shape, scales, offsets, units, dtype_name = _rsciio_image(imdict)
            data_type = int(imdict["ImageData"]["DataType"])
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            raise SendmapInputError(
                f"{path}: image {index} of the ImageList lacks its DataType, Dimensions or Calibrations tags "
                f"({type(exc).__name__}: {exc})") from None
        dtype = None
        if dtype_name is not None and np.dtype(dtype_name) in _IMAGE_TYPES:
            dtype = np.dtype(dtype_name).newbyteorder("<" if data["endian"] == "little" else ">")
        images.append(_Image(index=index, name=str(imdict.get("Name") or ""),
                             data_type=data_type, dtype=dtype, shape=shape,
                             data_offset=int(data["offset"]), data_bytes=int(data["size_bytes"]), scales=scales,
                             offsets=offsets, units=units, byte_order=data["endian"],
                             tags=imdict.get("ImageTags") or {}))
    return images


def _choose_image(path: Path, images: list[_Image]) -> _Image:
    """The largest 3D/4D image (else the largest image, which :func:`_check_image` then rejects)."""
    if not images:
        raise SendmapInputError(f"{path}: the DM file holds no image (its ImageList is empty or only thumbnails)")
    return max(images, key=lambda im: (len(im.shape) in (3, 4), im.data_bytes))


def _check_image(path: Path, image: _Image) -> None:
    where = f"image {image.index} of the ImageList (pixels at byte offset {image.data_offset})"
    if image.data_type in _COMPLEX_TYPES or image.data_type in _RGB_TYPES:
        kind = _COMPLEX_TYPES.get(image.data_type) or _RGB_TYPES[image.data_type]
        raise SendmapInputError(
            f"{path}: {where} has {kind} pixels (DM DataType {image.data_type}); sendmap reads real-valued "
            "integer or float 4D-STEM data only")
    if image.dtype is None:
        raise SendmapInputError(f"{path}: {where} has DM DataType {image.data_type}, which sendmap cannot read")
    if len(image.shape) not in (2, 3, 4):
        raise SendmapInputError(
            f"{path}: {where} is {len(image.shape)}D, shape {image.shape}; a 4D-STEM file holds a 4D "
            "(Ry, Rx, Qy, Qx) or 3D (N, Qy, Qx) image, or one 2D pattern")
    expected = math.prod(image.shape) * image.dtype.itemsize
    if expected != image.data_bytes:
        raise SendmapInputError(
            f"{path}: {where}: its Dimensions {image.shape} of {image.dtype.name} need {expected} bytes, but its "
            f"Data array holds {image.data_bytes} bytes")


# --- metadata ----------------------------------------------------------------------------------------

def _metadata(image: _Image, version: int, file_bytes: int) -> dict:
    ndim = len(image.shape)
    names = ("Ry", "Rx", "Qy", "Qx")[4 - ndim:] if ndim != 3 else ("N", "Qy", "Qx")
    axes = [{"name": name, "size": size, "scale": scale, "offset": offset, "units": units}
            for name, size, scale, offset, units in zip(names, image.shape, image.scales, image.offsets, image.units)]
    meta = {
        "format": f"dm{version}",
        "dm_version": version,
        "byte_order": image.byte_order,
        "dtype_on_disk": image.dtype.str,
        "data_offset": image.data_offset,
        "data_bytes": image.data_bytes,
        "file_bytes": file_bytes,
        "image_index": image.index,
        "image_name": image.name,
        "dm_data_type": image.data_type,
        "shape_on_disk": list(image.shape),
        "axes": axes,
    }
    meta.update(_q_calibration(axes[-2:]))
    meta.update(_scan_calibration(axes[:2] if ndim == 4 else []))
    meta.update(_microscope(image.tags))
    return meta


def _q_calibration(q_axes: list[dict]) -> dict:
    """Diffraction-axis scales in 1/Å (or mrad), (Qy, Qx) order."""
    units = q_axes[0]["units"] if q_axes[0]["units"] == q_axes[1]["units"] else None
    meta = {"q_units_on_disk": units, "q_scale_inv_angstrom": None, "q_scale_inv_angstrom_yx": None,
            "q_offset_inv_angstrom_yx": None, "q_scale_mrad_yx": None}
    if units in _INV_LENGTH_TO_INV_ANGSTROM:
        factor = _INV_LENGTH_TO_INV_ANGSTROM[units]
        scales = [ax["scale"] * factor for ax in q_axes]
        meta["q_scale_inv_angstrom_yx"] = scales
        meta["q_offset_inv_angstrom_yx"] = [ax["offset"] * factor for ax in q_axes]
        meta["q_scale_inv_angstrom"] = scales[0] if math.isclose(*scales, rel_tol=1e-6) else None
    elif units in _ANGLE_TO_MRAD:
        meta["q_scale_mrad_yx"] = [ax["scale"] * _ANGLE_TO_MRAD[units] for ax in q_axes]
    return meta


def _scan_calibration(scan_axes: list[dict]) -> dict:
    """Scan step in nm, (Ry, Rx) order, where both scan axes are calibrated in a length unit."""
    if len(scan_axes) != 2 or any(ax["units"] not in _LENGTH_TO_NM for ax in scan_axes):
        return {"scan_step_nm": None, "scan_step_nm_yx": None}
    steps = [ax["scale"] * _LENGTH_TO_NM[ax["units"]] for ax in scan_axes]
    return {"scan_step_nm": steps[0] if math.isclose(*steps, rel_tol=1e-6) else None, "scan_step_nm_yx": steps}


def _microscope(image_tags: dict) -> dict:
    """Voltage (kV), camera length (mm), exposure (ms) and dwell time (µs) from the usual GMS tags."""
    voltage_v = _tag(image_tags, "Microscope Info", "Voltage")
    exposure_s = (_tag(image_tags, "Acquisition", "Parameters", "High Level", "Exposure (s)")
                  or _tag(image_tags, "Acquisition", "Parameters", "Detector", "exposure (s)"))
    return {
        "voltage_kV": None if voltage_v is None else voltage_v / _V_PER_KV,
        "camera_length_mm": _tag(image_tags, "Microscope Info", "STEM Camera Length"),
        "exposure_ms": None if exposure_s is None else exposure_s * _MS_PER_S,
        "dwell_time_us": _tag(image_tags, "DigiScan", "Sample Time"),
    }


def _tag(tags: dict, *keys: str) -> float | None:
    """A positive number at ``tags[k0][k1]...`` (rosettasciio drops '.' from tag names), else None."""
    for key in keys:
        if not isinstance(tags, dict):
            return None
        tags = tags.get(key.replace(".", ""))
    if isinstance(tags, bool) or not isinstance(tags, (int, float)) or not tags > 0:
        return None
    return float(tags)


# --- writer ------------------------------------------------------------------------------------------

def write_dm4(path, data, *, q_scale: float | None = None, q_units: str = "1/nm",
              scan_step_nm: float | None = None, image_tags: dict | None = None) -> Path:
    """Write a (Ry, Rx, Qy, Qx) or (N, Qy, Qx) array as a minimal DM4 file; returns the path.

    ``data``: numpy, dask or any array with ``shape``/``dtype`` and slicing, of int8, uint8, int16, uint16,
    int32, uint32, float32 or float64, written as is (little-endian). ``q_scale``: diffraction pixel size in
    ``q_units`` (e.g. ``1/nm`` or ``1/Å``) on both Qy and Qx; ``scan_step_nm``: probe step (nm) on both scan
    axes (4D only). ``image_tags``: nested dict of str / bool / int / float written under ``ImageTags``,
    e.g. ``{"Microscope Info": {"Voltage": 300000.0}}`` (V). The file has an 8 x 8 RGBA thumbnail as
    image 0 and the data as image 1; data is written a block of frames at a time into a temporary file in
    the same folder that replaces ``path`` only when complete.
    """
    return _write_dm(path, data, 4, q_scale=q_scale, q_units=q_units, scan_step_nm=scan_step_nm,
                     image_tags=image_tags, ndims=(3, 4))


def write_dm3(path, data, *, q_scale: float | None = None, q_units: str = "1/nm",
              scan_step_nm: float | None = None, image_tags: dict | None = None) -> Path:
    """As :func:`write_dm4`, in the older DM3 layout (32-bit lengths: pixel data below 2 GiB)."""
    return _write_dm(path, data, 3, q_scale=q_scale, q_units=q_units, scan_step_nm=scan_step_nm,
                     image_tags=image_tags, ndims=(3, 4))


@dataclass(frozen=True)
class _Pixels:
    """The image's pixel array inside the tag tree, streamed from ``data`` when the file is written."""

    data: object
    disk: np.dtype
    element_type: int

    @property
    def count(self) -> int:
        return math.prod(self.data.shape)

    @property
    def nbytes(self) -> int:
        return self.count * self.disk.itemsize


def _write_dm(path, data, version: int, *, q_scale=None, q_units="1/nm", scan_step_nm=None, image_tags=None,
              ndims=(2, 3, 4)) -> Path:
    """Write ``data`` (ndim in ``ndims``) as DM ``version`` 3 or 4; see :func:`write_dm4`."""
    path = Path(path)
    shape = tuple(int(n) for n in data.shape)
    dtype = np.dtype(data.dtype).newbyteorder("=")  # any byte order in, little-endian out
    if len(shape) not in ndims:
        raise ValueError(f"data must be (Ry, Rx, Qy, Qx) or (N, Qy, Qx), not shape {shape}")
    if dtype not in _IMAGE_TYPES:
        raise ValueError(f"cannot write {dtype} pixels; supported: {', '.join(t.name for t in _IMAGE_TYPES)}")
    if scan_step_nm is not None and len(shape) != 4:
        raise ValueError("scan_step_nm needs a 4D (Ry, Rx, Qy, Qx) array")
    data_type, element_type = _IMAGE_TYPES[dtype]
    pixels = _Pixels(data, dtype.newbyteorder("<"), element_type)
    if version == 3 and pixels.nbytes > _DM3_MAX_BYTES:
        raise ValueError(f"{pixels.nbytes} bytes of pixels do not fit a DM3 file (max {_DM3_MAX_BYTES}); use DM4")
    calibrations = _calibrations(shape, q_scale, q_units, scan_step_nm)
    image = {"ImageData": {"Calibrations": calibrations, "Data": pixels, "DataType": data_type,
                           "Dimensions": [np.uint32(n) for n in shape[::-1]], "PixelDepth": dtype.itemsize},
             "ImageTags": image_tags or {}, "Name": path.stem}
    root = {"ImageList": [_thumbnail(), image], "Thumbnails": [{"ImageIndex": 0}]}
    pieces = _group_body(root, version)
    file_bytes = 4 + 2 * _length_bytes(version) + _size(pieces) + len(_END_OF_FILE)
    header = struct.pack(">l", version) + _pack_length(file_bytes - _ROOT_LENGTH_SLACK[version], version)
    header += struct.pack(">l", _LITTLE_ENDIAN_FLAG)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(tmp, "xb") as f:
            for piece in [header, *pieces, _END_OF_FILE]:
                if isinstance(piece, _Pixels):
                    _write_pixels(f, piece)
                else:
                    f.write(piece)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _calibrations(shape: tuple[int, ...], q_scale, q_units: str, scan_step_nm) -> dict:
    """``ImageData/Calibrations``: one Dimension group per axis, fastest (Qx) first."""
    axes = [(1.0, "")] * len(shape)
    if q_scale is not None:
        axes[-2:] = [(float(q_scale), q_units)] * 2
    if scan_step_nm is not None:
        axes[:2] = [(float(scan_step_nm), "nm")] * 2
    dimension = [{"Origin": np.float32(0.0), "Scale": np.float32(scale), "Units": units}
                 for scale, units in reversed(axes)]
    return {"Brightness": {"Origin": np.float32(0.0), "Scale": np.float32(1.0), "Units": ""},
            "Dimension": dimension, "DisplayCalibratedUnits": True}


def _thumbnail() -> dict:
    side = _THUMBNAIL_SIDE
    pixels = _Pixels(np.zeros((side, side), np.uint32), np.dtype("<u4"), _THUMBNAIL_ELEMENT)
    calibration = {"Origin": np.float32(0.0), "Scale": np.float32(1.0), "Units": ""}
    return {"ImageData": {"Calibrations": {"Brightness": dict(calibration), "Dimension": [calibration] * 2},
                          "Data": pixels, "DataType": _THUMBNAIL_TYPE, "Dimensions": [np.uint32(side)] * 2,
                          "PixelDepth": 4},  # bytes per RGBA pixel
            "ImageTags": {}, "Name": "thumbnail"}


def _write_pixels(f, pixels: _Pixels) -> None:
    """Stream the pixel array in C order, a block of frames (or rows, for 2D images) at a time."""
    data, shape = pixels.data, pixels.data.shape
    row_bytes = pixels.disk.itemsize * math.prod(shape[-2:] if len(shape) > 2 else shape[-1:])
    per_block = max(1, _WRITE_BLOCK_BYTES // row_bytes)
    if len(shape) == 4:
        blocks = (data[r, c:c + per_block] for r in range(shape[0]) for c in range(0, shape[1], per_block))
    else:
        blocks = (data[i:i + per_block] for i in range(0, shape[0], per_block))
    for block in blocks:
        f.write(np.ascontiguousarray(np.asarray(block), dtype=pixels.disk).tobytes())


# Tag tree serialisation: a list of bytes and _Pixels pieces, so the pixels are streamed, not held.

def _length_bytes(version: int) -> int:
    """Size of the length / count words: 4 bytes in DM3, 8 in DM4."""
    return 8 if version == 4 else 4


def _pack_length(value: int, version: int) -> bytes:
    return struct.pack(">q" if version == 4 else ">l", value)


def _size(pieces: list) -> int:
    return sum(p.nbytes if isinstance(p, _Pixels) else len(p) for p in pieces)


def _group_body(items, version: int) -> list:
    """A tag group: sorted flag, open flag, tag count, tags. ``items``: dict (named) or list (unnamed tags)."""
    named = items.items() if isinstance(items, dict) else (("", value) for value in items)
    pieces = [struct.pack(">BB", 1, 0), _pack_length(len(items), version)]  # sorted, not open
    for name, value in named:
        pieces += _tag_pieces(name, value, version)
    return pieces


def _tag_pieces(name: str, value, version: int) -> list:
    """One tag: kind, name, (DM4: length), then a group or a data tag."""
    label = name.encode("latin-1")
    if isinstance(value, (dict, list)):
        kind, body = _TAG_GROUP, _group_body(value, version)
    else:
        kind, body = _TAG_DATA, _data_body(value, version)
    head = struct.pack(">BH", kind, len(label)) + label
    if version == 4:
        head += _pack_length(_size(body), version)
    return [head, *body]


def _data_body(value, version: int) -> list:
    """``%%%%``, the type description (big-endian) and the value (little-endian)."""
    if isinstance(value, _Pixels):
        info, payload = (_T_ARRAY, value.element_type, value.count), value
    elif isinstance(value, str):
        text = value.encode("utf-16-le")  # array of ushort characters
        info, payload = (_T_ARRAY, _T_USHORT, len(text) // 2), text
    elif isinstance(value, (bool, np.bool_)):
        info, payload = (_T_BOOL,), struct.pack("<B", bool(value))
    elif isinstance(value, np.uint32):
        info, payload = (_T_ULONG,), struct.pack("<L", int(value))
    elif isinstance(value, np.float32):
        info, payload = (_T_FLOAT,), value.astype("<f4").tobytes()
    elif isinstance(value, (int, np.integer)):
        info, payload = ((_T_LONG,), struct.pack("<l", value)) if -2**31 <= value < 2**31 else \
            ((_T_LONGLONG,), struct.pack("<q", value))
    elif isinstance(value, (float, np.floating)):
        info, payload = (_T_DOUBLE,), struct.pack("<d", value)
    else:
        raise ValueError(f"cannot write a DM tag of type {type(value).__name__}: {value!r}")
    head = _DATA_MARK + _pack_length(len(info), version) + b"".join(_pack_length(v, version) for v in info)
    return [head, payload]
