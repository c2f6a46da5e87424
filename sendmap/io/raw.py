"""Generic raw binary 4D-STEM files, described by the config rather than by the file.

File layout
-----------
A file header, then the frames in scan order (row after row of the scan), each frame an optional header,
the Qy x Qx pixels row after row, and an optional footer::

    [file header: header_bytes]
    [frame header: frame_header_bytes][pixels: Qy * Qx * itemsize][frame footer: frame_footer_bytes]
    [frame header][pixels][frame footer] ...

Pixels are one numpy integer or float type (``uint16``, ``u2``, ``float32``...) in ``byte_order``: ``<``
little-endian, ``>`` big-endian, ``=`` the machine's own. The file holds nothing else: its size must be
exactly ``header_bytes + n_frames * frame_stride_bytes``. Nothing in the file gives the scan shape, the frame
shape or the pixel type; they come from the caller (``input.*`` in the config).

:func:`read_raw_dask` reads such a file lazily (reader contract of :mod:`sendmap.io._common`);
:func:`write_raw` writes one. :mod:`sendmap.io.empad` reuses the frame loader (EMPAD files are raw files
with a 1024-byte frame footer).
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import numpy as np

from sendmap.errors import SendmapInputError
from sendmap.io._common import check_scan_shape, frame_range, scan_chunks

BYTE_ORDERS = {"<": "little-endian", ">": "big-endian", "=": "native"}
"""Accepted ``byte_order`` values and their meaning."""
_MAX_ITEMSIZE = 8
"""Widest pixel type accepted (bytes): int64/uint64/float64; float128 is platform dependent."""
_WRITE_BLOCK_BYTES = 16 * 2**20
"""Input frames converted and written per step by the writers (bytes on disk, about)."""


def read_raw_dask(path, *, scan_shape: tuple[int, int] | None, frame_shape: tuple[int, int], dtype,
                  header_bytes: int = 0, frame_header_bytes: int = 0, frame_footer_bytes: int = 0,
                  byte_order: str = "<", frames_per_chunk: int | None = None) -> tuple[da.Array, dict]:
    """Lazy (Ry, Rx, Qy, Qx) array of a raw binary file (layout in the module doc), in native byte order.

    ``scan_shape``: (Ry, Rx) probe positions, or None for (1, N) with N the number of frames in the file.
    ``frame_shape``: (Qy, Qx) pixels. ``dtype``: numpy integer or float type name without a byte-order
    prefix (``"uint16"``, ``"u2"``, ``"float32"``...); ``byte_order``: ``"<"``, ``">"`` or ``"="``.
    ``header_bytes``, ``frame_header_bytes``, ``frame_footer_bytes``: bytes skipped at the start of the
    file and before/after every frame's pixels. Chunks are whole scan rows of at most ``frames_per_chunk``
    frames (default: 64 MiB), each memory-mapping the file read-only by itself.

    Returns the array and a JSON-able dict of the layout: ``format`` ("raw"), ``scan_shape``,
    ``frame_shape``, ``n_frames``, ``dtype`` (on disk, e.g. ``">u2"``), ``byte_order``, ``header_bytes``,
    ``frame_header_bytes``, ``frame_footer_bytes``, ``frame_stride_bytes``, ``file_bytes``.

    SendmapInputError, naming the file, for a missing file, a size that is not the header plus whole
    frames (too small, cut, or trailing bytes; with the expected and actual sizes and the byte offset where
    the file stops matching), a scan shape that does not make the number of frames, an invalid
    ``dtype``/``byte_order``/``frame_shape``, or negative offsets.
    """
    path = Path(path)
    disk = pixel_dtype(dtype, byte_order, path)
    frame_shape = _frame_shape(frame_shape, path)
    offsets = {name: _offset(value, name, path) for name, value in
               (("header_bytes", header_bytes), ("frame_header_bytes", frame_header_bytes),
                ("frame_footer_bytes", frame_footer_bytes))}
    stride = offsets["frame_header_bytes"] + _frame_bytes(frame_shape, disk) + offsets["frame_footer_bytes"]
    size = _file_size(path)
    n_expected = _n_positions(scan_shape, path)
    n_frames = _count_frames(path, size, offsets["header_bytes"], stride, n_expected,
                             f"{offsets['frame_header_bytes']}-byte frame header + {frame_shape[0]}x{frame_shape[1]} "
                             f"{disk.name} pixels + {offsets['frame_footer_bytes']}-byte frame footer")
    scan_shape = check_scan_shape((1, n_frames) if scan_shape is None else scan_shape, n_frames, path)
    data = frames_dask(path, scan_shape, frame_shape, disk, offsets["header_bytes"],
                       offsets["frame_header_bytes"], stride, frames_per_chunk)
    metadata = {
        "format": "raw",
        "scan_shape": list(scan_shape),
        "frame_shape": list(frame_shape),
        "n_frames": n_frames,
        "dtype": disk.str,
        "byte_order": byte_order,
        **offsets,
        "frame_stride_bytes": stride,
        "file_bytes": size,
    }
    return data, metadata


def write_raw(path, data, *, dtype=None, byte_order: str = "<", header: bytes | int = b"",
              frame_header_bytes: bytes | int = 0, frame_footer_bytes: bytes | int = 0) -> Path:
    """Write frames as a raw binary file with the layout of the module doc; returns ``path``.

    ``data``: (Ry, Rx, Qy, Qx) or (N, Qy, Qx) numbers (numpy, dask or any array with ``shape`` and
    slicing), written in scan order. ``dtype``: pixel type on disk, without byte-order prefix (default: the
    data's); integer types need integer values within their range (ValueError otherwise), floats are
    rounded to the type. ``byte_order``: ``"<"``, ``">"`` or ``"="``. ``header``: file header, given bytes or
    a number of zero bytes; ``frame_header_bytes`` / ``frame_footer_bytes``: the same for every frame's
    header and footer (given bytes repeated, or that many zero bytes). Data is converted and written a
    block of frames (about 16 MiB) at a time into a hidden temporary file in the same folder, which
    replaces ``path`` (``os.replace``) only once complete.
    """
    path = Path(path)
    shape = _data_shape(data)
    disk = pixel_dtype(_source_dtype(data) if dtype is None else dtype, byte_order, path)
    head, frame_head, frame_foot = (_padding(value, name) for value, name in
                                    ((header, "header"), (frame_header_bytes, "frame_header_bytes"),
                                     (frame_footer_bytes, "frame_footer_bytes")))
    with atomic_output(path) as f:
        f.write(head)
        for block in frame_blocks(data, shape, disk.itemsize):
            write_frames(f, cast_frames(block, disk), frame_head, frame_foot)
    return path


# --- shared with sendmap.io.empad ------------------------------------------------------------------------

def pixel_dtype(dtype, byte_order: str, path: Path) -> np.dtype:
    """The pixel type on disk: ``dtype`` (integer or float, no byte-order prefix) in ``byte_order``.

    SendmapInputError naming ``path`` for an unknown byte order, an invalid type name, a byte-order
    prefix in the name (give ``byte_order`` instead) or a type that is not an integer or float of at most
    8 bytes.
    """
    if byte_order not in BYTE_ORDERS:
        raise SendmapInputError(
            f"{path}: byte_order must be one of {', '.join(map(repr, BYTE_ORDERS))} "
            f"({', '.join(BYTE_ORDERS.values())}), not {byte_order!r}")
    if isinstance(dtype, str) and dtype[:1] in "<>=|!":
        raise SendmapInputError(
            f"{path}: dtype {dtype!r} has a byte-order prefix; give the type alone (e.g. {dtype[1:]!r}) and the "
            "order as byte_order")
    try:
        parsed = np.dtype(dtype)
    except (TypeError, ValueError):
        raise SendmapInputError(f"{path}: dtype {dtype!r} is not a numpy type name (e.g. 'uint16', 'float32')") from None
    if parsed.kind not in "iuf" or parsed.itemsize > _MAX_ITEMSIZE:
        raise SendmapInputError(
            f"{path}: dtype {dtype!r} ({parsed}) is not an integer or float type of at most {_MAX_ITEMSIZE} bytes")
    return parsed.newbyteorder(byte_order)


def frames_dask(path: Path, scan_shape: tuple[int, int], frame_shape: tuple[int, int], disk: np.dtype,
                first_frame_offset: int, pixel_offset: int, stride: int,
                frames_per_chunk: int | None) -> da.Array:
    """Lazy (Ry, Rx, Qy, Qx) native-order array of frames at ``first_frame_offset + i * stride`` (bytes),
    pixels ``pixel_offset`` bytes into each frame record, chunked by :func:`scan_chunks`."""
    native = disk.newbyteorder("=")
    chunks = scan_chunks(scan_shape, frame_shape, native.itemsize, frames_per_chunk)
    return da.map_blocks(_load_raw_block, chunks=chunks, dtype=native, meta=np.empty((0, 0, 0, 0), native),
                         path=str(path), row_length=scan_shape[1], frame_shape=tuple(frame_shape),
                         disk_dtype=disk.str, first_frame_offset=first_frame_offset, pixel_offset=pixel_offset,
                         stride=stride)


def load_frames(path, first: int, count: int, frame_shape: tuple[int, int], dtype: str,
                first_frame_offset: int, pixel_offset: int, stride: int) -> np.ndarray:
    """``count`` frames from frame ``first`` (counting from 0) as a native-order (count, Qy, Qx) array.

    Memory-maps only those frame records of the file, read-only, and copies their pixels out.
    """
    disk = np.dtype(dtype)
    record = np.dtype({"names": ["px"], "formats": [(disk, tuple(frame_shape))], "offsets": [pixel_offset],
                       "itemsize": stride})
    mapped = np.memmap(path, dtype=record, mode="r", offset=first_frame_offset + first * stride, shape=(count,))
    return np.array(mapped["px"], dtype=disk.newbyteorder("="))  # a copy: the map closes with ``mapped``


def frame_blocks(data, shape: tuple[int, ...], itemsize: int) -> Iterator[np.ndarray]:
    """(k, Qy, Qx) numpy blocks of the frames of ``data`` (shape ``shape``, 3D or 4D) in scan order.

    A block holds about 16 MiB of ``itemsize``-byte pixels: whole scan rows, or part of one where a row is
    longer; a dask array computes only the slices needed for each block.
    """
    qy, qx = shape[-2:]
    per_block = max(1, _WRITE_BLOCK_BYTES // max(1, qy * qx * itemsize))
    if len(shape) == 3:
        for i in range(0, shape[0], per_block):
            yield np.asarray(data[i:i + per_block])
        return
    ry, rx = shape[:2]
    if per_block >= rx:
        rows = per_block // rx
        for r in range(0, ry, rows):
            yield np.asarray(data[r:r + rows]).reshape(-1, qy, qx)
        return
    for r in range(ry):
        for c in range(0, rx, per_block):
            yield np.asarray(data[r, c:c + per_block])


def cast_frames(block: np.ndarray, disk: np.dtype) -> np.ndarray:
    """``block`` as ``disk`` (byte order included); ValueError where integer pixels cannot hold its values."""
    if block.dtype.kind not in "biuf":
        raise ValueError(f"frames must be integers or floats, not {block.dtype}")
    if disk.kind in "iu" and block.size:
        info = np.iinfo(disk)
        if block.dtype.kind == "f" and not np.all(np.isfinite(block) & (block == np.trunc(block))):
            raise ValueError(f"frames hold non-integer values; cannot write them as {disk.name}")
        lo, hi = block.min(), block.max()
        if lo < info.min or hi > info.max:
            raise ValueError(f"values {lo}..{hi} do not fit {disk.name} ({info.min}..{info.max})")
    return np.ascontiguousarray(block, dtype=disk)


def write_frames(f, frames: np.ndarray, frame_header: bytes, frame_footer: bytes) -> None:
    """Write (k, Qy, Qx) ``frames`` (already in the disk type) to ``f``, each as header + pixels + footer."""
    if not frame_header and not frame_footer:
        f.write(frames.tobytes())
        return
    n = len(frames)
    pixels = frames.reshape(n, -1).view(np.uint8)
    records = np.empty((n, len(frame_header) + pixels.shape[1] + len(frame_footer)), dtype=np.uint8)
    records[:, :len(frame_header)] = np.frombuffer(frame_header, dtype=np.uint8)
    records[:, len(frame_header):len(frame_header) + pixels.shape[1]] = pixels
    records[:, len(frame_header) + pixels.shape[1]:] = np.frombuffer(frame_footer, dtype=np.uint8)
    f.write(records.tobytes())


class atomic_output:
    """``with atomic_output(path) as f``: a binary file written under a hidden temporary name in the same
    folder, renamed to ``path`` (``os.replace``) when the block ends without an exception, else removed."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.part")

    def __enter__(self):
        self.file = open(self.tmp, "xb")
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        self.file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


# --- private helpers -------------------------------------------------------------------------------------

def _load_raw_block(path: str, row_length: int, frame_shape: tuple[int, int], disk_dtype: str,
                    first_frame_offset: int, pixel_offset: int, stride: int, block_info=None) -> np.ndarray:
    frames, shape = frame_range(block_info, row_length)
    block = load_frames(path, frames.start, frames.stop - frames.start, frame_shape, disk_dtype,
                        first_frame_offset, pixel_offset, stride)
    return block.reshape(*shape, *frame_shape)


def _count_frames(path: Path, size: int, header: int, stride: int, n_expected: int | None,
                  frame_text: str) -> int:
    """Number of whole frames after the header, or SendmapInputError if the size is not header + frames."""
    expected = None if n_expected is None else header + n_expected * stride
    expected_text = "" if expected is None else f"expected {expected} bytes ({n_expected} frames), "
    if size < header + stride:
        raise SendmapInputError(
            f"{path}: file too small: {expected_text}found {size} bytes, less than the {header}-byte file header "
            f"plus one {stride}-byte frame ({frame_text}); the file stops at byte offset {size}")
    n_frames, rest = divmod(size - header, stride)
    if rest == 0:
        return n_frames
    last_end = header + n_frames * stride
    if expected is not None and size < expected:
        raise SendmapInputError(
            f"{path}: truncated: {expected_text}found {size} bytes; frame {n_frames + 1} (of {stride} bytes: "
            f"{frame_text}) is cut at byte offset {size}, the last complete frame ends at byte offset {last_end}")
    raise SendmapInputError(
        f"{path}: {rest} trailing bytes are not a whole {stride}-byte frame ({frame_text}): "
        f"{expected_text or f'expected {last_end} bytes, '}found {size} bytes; the last complete frame ends at "
        f"byte offset {last_end}")


def _n_positions(scan_shape, path: Path) -> int | None:
    """Ry * Rx of a well-formed ``scan_shape`` (None if it is None or malformed: check_scan_shape reports)."""
    if scan_shape is None:
        return None
    try:
        ry, rx = (int(v) for v in scan_shape)
    except (TypeError, ValueError):
        check_scan_shape(scan_shape, 0, path)  # raises, naming the bad value
    return ry * rx if ry > 0 and rx > 0 else None


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise SendmapInputError(f"{path}: cannot read the raw file ({exc.strerror or exc})") from None


def _frame_shape(frame_shape, path: Path) -> tuple[int, int]:
    try:
        qy, qx = (_positive_int(v) for v in frame_shape)
    except (TypeError, ValueError):
        raise SendmapInputError(f"{path}: frame_shape must be two positive integers (Qy, Qx), not {frame_shape!r}") from None
    return qy, qx


def _positive_int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(value)
    return int(value)


def _offset(value, name: str, path: Path) -> int:
    """A byte count >= 0, or SendmapInputError naming the file and the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise SendmapInputError(f"{path}: {name} must be a non-negative integer number of bytes, not {value!r}")
    return int(value)


def _frame_bytes(frame_shape: tuple[int, int], disk: np.dtype) -> int:
    return frame_shape[0] * frame_shape[1] * disk.itemsize


def _data_shape(data) -> tuple[int, ...]:
    shape = tuple(int(n) for n in getattr(data, "shape", ()))
    if len(shape) not in (3, 4) or 0 in shape:
        raise ValueError(f"data must be a non-empty (Ry, Rx, Qy, Qx) or (N, Qy, Qx) array, not shape {shape}")
    return shape


def _source_dtype(data) -> np.dtype:
    dtype = np.dtype(getattr(data, "dtype", np.float64))
    return dtype.newbyteorder("=")


def _padding(value: bytes | int, name: str) -> bytes:
    """Given bytes, or ``value`` zero bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be bytes or a non-negative number of zero bytes, not {value!r}")
    return bytes(int(value))
