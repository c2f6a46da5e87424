"""Quantum Detectors Merlin ``.mib`` / ``.hdr`` reader and writer.

File layout
-----------
A ``.mib`` file is a plain sequence of frames; every frame is a fixed-size ASCII header followed by the
pixels, big-endian unsigned integers, row after row::

    [header: header_bytes][pixels: Qy * Qx * itemsize][header][pixels] ...

The header is comma-separated ASCII padded with NUL bytes to its size ("data offset": 384 bytes for one
chip, 768 for a quad), e.g. (one line here, wrapped)::

    MQ1,000001,00384,01,0256,0256,U08,   1x1,01,2021-05-07 18:51:10.905800,0.100000,0,0,0,
    <8 thresholds, keV>,3RX,<27 DAC values>,MQ1A,2021-05-07T16:51:10.905800928Z,100000000ns,6,

Fields: magic ``MQ1``, frame number (counting from 1), header size in bytes, number of chips, frame width
Qx, frame height Qy, pixel depth (``U08``/``U16``/``U32``: big-endian uint8/16/32; ``R64``: raw counter
words), sensor layout, chip select, local time stamp, shutter time (s), counter, colour mode, gain mode,
eight thresholds (keV), DAC format and DAC values; the ``MQ1A`` extension adds the UTC time stamp (ns),
the exposure (ns) and the counter depth (bits). The ``.hdr`` file beside the ``.mib`` describes the whole
acquisition: CRLF lines ``key:<TAB>value`` between ``HDR,`` and ``End``, space-padded to 2048 bytes.

Raw counter mode (pixel depth ``R64``): the chips' counter words as read out, in 64-bit words whose 8 bytes
are stored in reverse order. After reversing each 8-byte group the pixels follow in order: 1-bit counters as
single bits, least significant bit first; 6-bit counters one byte each; 12-bit counters little-endian 16-bit
words; a 24-bit frame is two such 12-bit frames, the first holding the high 12 bits. The header's width and
height give the raw grid: a single chip is 256 × 256 (24 bit: 512 wide, the two halves), a quad (``2x2``)
is 1024 × 256, each raw row holding one row of each chip in the order bottom-right, bottom-left, top-right,
top-left, the bottom two rotated by 180°. :func:`decode_raw_frames` turns raw frames into the same
(Qy, Qx) layout as the ``U08/U16/U32`` files (rows as stored; a quad becomes 512 × 512 without a gap).
A 24-bit quad raw frame is refused: no recording of one was available to check its layout. The layout
is that of the Medipix3 readout as documented by Quantum Detectors and decoded the same way by LiberTEM
(``libertem.io.dataset.mib``); rosettasciio 0.15 refuses R64 files.

Orientation: as in rosettasciio/HyperSpy and pyxem (pyxem issue #385), the first row on disk is the bottom
row of the diffraction pattern, so :func:`read_mib_dask` flips Qy and :func:`write_mib` flips it back;
:func:`mib_memmap` gives the rows as stored.

Size: one file format: header parsing, the raw (R64) counter-mode codec, the lazy reader and the writer share the
header fields and the frame stride; the writer (``write_mib``, used by ``sendmap synth`` and the tests) is the
piece to move out if the module grows.
"""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sendmap import __version__
from sendmap.errors import SendmapInputError
from sendmap.io._common import check_scan_shape, frame_range, scan_chunks

_MAGIC = b"MQ1"
_DTYPES = {"U08": np.dtype(">u1"), "U16": np.dtype(">u2"), "U32": np.dtype(">u4")}
_GEOMETRY_FIELDS = (2, 4, 5, 6)
"""Header fields that fix the frame stride: data offset, width, height, pixel depth."""
_WRITE_BLOCK_BYTES = 16 * 2**20
"""Input read per step by :func:`write_mib`."""

# Detector settings written by write_mib, those of the real single-chip recording in data/real/merlin_4x2.
_HEADER_BYTES = 384
_LAYOUTS = {"1x1": (1, 384), "2x2": (4, 768)}
"""Sensor layout → (number of chips, frame header bytes): the quad's header lists DACs of all 4 chips."""
_THRESHOLDS_KEV = (40.0, 511.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
_DACS = ("068,511,000,000,000,000,000,000,100,255,100,125,100,100,080,100,090,030,128,004,255,126,128,"
         "174,172,511,511")
_HDR_BYTES = 2048


@dataclass(frozen=True)
class MibInfo:
    """Geometry and metadata of a ``.mib`` file, from its first frame header and its ``.hdr``."""

    path: Path
    header_bytes: int
    """Per-frame header size (bytes), the header's "data offset" field."""
    frame_shape: tuple[int, int]
    """(Qy, Qx) pixels."""
    dtype: np.dtype
    """Pixel type on disk, big-endian: ``>u1``, ``>u2`` or ``>u4``."""
    n_frames: int
    counter_depth: int
    """Counter depth (bits): header ``MQ1A`` field, else the ``.hdr``, else the pixel type's width."""
    metadata: dict
    """``exposure_ms``, ``timestamp`` (local), ``timestamp_utc``, ``n_chips``, ``sensor_layout``,
    ``pixel_depth``, ``gain_mode``, ``colour_mode``, ``counter``, ``thresholds_keV``,
    ``frames_per_trigger`` (scan row length, from the ``.hdr``; may be absent) and ``hdr`` (the ``.hdr``
    as a dict of strings, empty where there is none)."""

    raw: tuple[int, int, int] | None = None
    """Raw counter mode (``R64``): (raw height, raw width, chips across: 1 or 2) of the header's grid; None
    for ``U08/U16/U32`` pixels. ``dtype`` and ``frame_shape`` are then those of the decoded frames."""

    @property
    def pixel_bytes(self) -> int:
        """Bytes of one frame's pixels on disk."""
        if self.raw is not None:
            h, w, _ = self.raw
            return h * w * _RAW_BITS_ON_DISK[self.counter_depth] // 8
        return self.frame_shape[0] * self.frame_shape[1] * self.dtype.itemsize

    @property
    def frame_stride_bytes(self) -> int:
        """Bytes from one frame header to the next: header plus pixels."""
        return self.header_bytes + self.pixel_bytes


def read_mib_info(path) -> MibInfo:
    """Parse and validate a ``.mib`` file's first and last frame headers (and its ``.hdr`` if present).

    Raises :class:`SendmapInputError` (naming the file and byte offset) for a file that is not a Merlin
    file, an unsupported pixel depth, a size that is not a whole number of frames (truncated), or a last
    frame header that is corrupt or disagrees with the first.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            fields = _header_fields(f.read(_HEADER_BYTES), path, 0)
            header_bytes = _int_field(fields, 2, "data offset", path, 0)
            if header_bytes <= 0:
                raise SendmapInputError(
                    f"{path}: frame header at byte offset 0 gives a data offset of {header_bytes} bytes")
            if header_bytes > _HEADER_BYTES:
                f.seek(0)
                fields = _header_fields(f.read(header_bytes), path, 0)
            qx = _int_field(fields, 4, "frame width", path, 0)
            qy = _int_field(fields, 5, "frame height", path, 0)
            depth = fields[6].strip()
            raw = None
            if depth == "R64":
                raw, (qy, qx), dtype, counter_depth = _raw_geometry(fields, path, qy, qx)
                stride = header_bytes + raw[0] * raw[1] * _RAW_BITS_ON_DISK[counter_depth] // 8
            elif depth not in _DTYPES:
                raise SendmapInputError(
                    f"{path}: pixel depth {depth!r} (frame header at byte offset 0) is not supported; readable "
                    f"depths are {', '.join(_DTYPES)} and R64 (raw counter mode)")
            else:
                dtype = _DTYPES[depth]
                stride = header_bytes + qy * qx * dtype.itemsize
            n_frames, rest = divmod(size, stride)
            if rest or n_frames == 0:
                raise SendmapInputError(
                    f"{path}: truncated: file has {size} bytes, expected a multiple of {stride} "
                    f"({header_bytes}-byte header + {qy}x{qx} {depth} pixels per frame); last complete frame ends "
                    f"at byte offset {n_frames * stride}")
            last_offset = (n_frames - 1) * stride
            f.seek(last_offset)
            last = _header_fields(f.read(header_bytes), path, last_offset)
    except OSError as exc:
        raise SendmapInputError(f"{path}: cannot read the MIB file ({exc.strerror or exc})") from None
    if [last[i].strip() for i in _GEOMETRY_FIELDS] != [fields[i].strip() for i in _GEOMETRY_FIELDS]:
        raise SendmapInputError(
            f"{path}: frame header at byte offset {last_offset} (frame {n_frames}) describes different frames "
            f"than the first header: {','.join(last[:7])!r} vs {','.join(fields[:7])!r}")
    hdr = _read_hdr(path.with_suffix(".hdr"))
    metadata = _header_metadata(fields)
    metadata["hdr"] = hdr
    fpt = hdr.get("Frames per Trigger (Number)", "")
    if fpt.isdigit():
        metadata["frames_per_trigger"] = int(fpt)
    header_depth = metadata.pop("counter_depth")
    if raw is None:
        counter_depth = header_depth or _int_or_none(hdr.get("Counter Depth (number)", "")) or 8 * dtype.itemsize
    else:
        metadata["raw_counter_mode"] = True
    return MibInfo(path=path, header_bytes=header_bytes, frame_shape=(qy, qx), dtype=dtype, n_frames=n_frames,
                   counter_depth=counter_depth, metadata=metadata, raw=raw)


_RAW_BITS_ON_DISK = {1: 1, 6: 8, 12: 16, 24: 16}
"""Bits each pixel of the raw grid (the header's width x height) takes, by counter depth (24 bit: the grid is twice
as wide as the frame, two 12-bit frames of 16-bit words)."""
_RAW_DTYPES = {1: np.dtype(">u1"), 6: np.dtype(">u1"), 12: np.dtype(">u2"), 24: np.dtype(">u4")}
"""Decoded pixel type by counter depth (big-endian like the U08/U16/U32 pixels, for one code path)."""


def _raw_geometry(fields: list[str], path: Path, qy: int, qx: int):
    """(raw (h, w, chips across), decoded (Qy, Qx), decoded dtype, counter depth) of an R64 frame header."""
    ext = fields[fields.index("MQ1A") + 1:] if "MQ1A" in fields else []
    depth = _int_or_none(ext[2]) if len(ext) > 2 else None
    if depth is None:
        hdr = _read_hdr(path.with_suffix(".hdr"))
        depth = _int_or_none(hdr.get("Counter Depth (number)", ""))
    if depth not in _RAW_BITS_ON_DISK:
        raise SendmapInputError(
            f"{path}: raw counter mode (R64) file whose counter depth is {'unknown' if depth is None else depth}: "
            "neither the frame header's MQ1A extension nor the .hdr gives 1, 6, 12 or 24 bits, so its pixels "
            "cannot be decoded")
    layout = fields[7].strip()
    n_chips = _int_or_none(fields[3]) or 1
    if layout.startswith("2x2") and n_chips == 4:
        if depth == 24:
            raise SendmapInputError(
                f"{path}: a 24-bit raw counter mode (R64) quad file: this layout is not supported (no recording "
                "of one was available to check it); record in 12-bit or 24-bit non-raw mode (U16/U32)")
        if qx % 4 or qx // 4 != qy:
            raise SendmapInputError(f"{path}: a quad raw (R64) frame of {qx} x {qy} raw pixels: expected four "
                                    "square chips side by side (e.g. 1024 x 256)")
        return (qy, qx, 2), (2 * qy, qx // 2), _RAW_DTYPES[depth], depth
    if n_chips != 1:
        raise SendmapInputError(f"{path}: raw counter mode (R64) with sensor layout {layout!r} and {n_chips} chips is "
                                "not supported (single chip 1x1 and quad 2x2 are)")
    if depth == 24:
        if qx % 2:
            raise SendmapInputError(f"{path}: a 24-bit raw (R64) frame of odd raw width {qx}")
        return (qy, qx, 1), (qy, qx // 2), _RAW_DTYPES[depth], depth
    return (qy, qx, 1), (qy, qx), _RAW_DTYPES[depth], depth


def decode_raw_frames(raw_bytes: np.ndarray, raw: tuple[int, int, int], counter_depth: int) -> np.ndarray:
    """Decode raw counter mode (R64) frames: ``raw_bytes`` (k, nbytes) uint8 → (k, Qy, Qx) native unsigned ints,
    rows as stored (see the module doc for the layout). ``raw`` is :attr:`MibInfo.raw`."""
    h, w, across = raw
    k = raw_bytes.shape[0]
    # every 64-bit word is stored with its bytes reversed: undo that, then the pixels follow in order
    words = np.ascontiguousarray(raw_bytes.reshape(k, -1, 8)[:, :, ::-1]).reshape(k, -1)
    if counter_depth == 1:
        grid = np.unpackbits(words, axis=1, bitorder="little").reshape(k, h, w)
    elif counter_depth == 6:
        grid = words.reshape(k, h, w)
    elif counter_depth == 12:
        grid = words.view("<u2").reshape(k, h, w).astype(np.uint16)
    else:  # 24: two 12-bit frames (high, low) of h x w/2
        halves = words.view("<u2").reshape(k, 2, h, w // 2).astype(np.uint32)
        grid = (halves[:, 0] << 12) | halves[:, 1]
    if across == 1:
        return grid
    cw = w // 4  # chip width; the raw row holds [bottom-right | bottom-left | top-right | top-left]
    top = np.concatenate([grid[:, :, 3 * cw:], grid[:, :, 2 * cw:3 * cw]], axis=2)
    bottom = grid[:, ::-1, 2 * cw - 1::-1]  # the first two chips, rotated by 180 degrees
    return np.concatenate([top, bottom], axis=1)


def encode_raw_frames(frames: np.ndarray, counter_depth: int, quad: bool = False) -> np.ndarray:
    """The inverse of :func:`decode_raw_frames`: (k, Qy, Qx) counts → (k, nbytes) uint8 raw counter words (for
    tests and synthetic files)."""
    frames = np.asarray(frames)
    k, qy, qx = frames.shape
    if quad:
        cw = qx // 2
        top, bottom = frames[:, :qy // 2], frames[:, qy // 2:]
        rot = bottom[:, ::-1, ::-1]
        grid = np.concatenate([rot, top[:, :, cw:], top[:, :, :cw]], axis=2)
    else:
        grid = frames
    h, w = grid.shape[1:]
    if counter_depth == 1:
        words = np.packbits(grid.reshape(k, -1).astype(np.uint8) & 1, axis=1, bitorder="little")
    elif counter_depth == 6:
        words = grid.reshape(k, -1).astype(np.uint8)
    elif counter_depth == 12:
        words = grid.reshape(k, -1).astype("<u2").view(np.uint8)
    else:
        g = grid.astype(np.uint32)
        words = np.concatenate([(g >> 12).astype("<u2"), (g & 0xFFF).astype("<u2")], axis=1).reshape(k, -1)
        words = words.view(np.uint8)
    return np.ascontiguousarray(words.reshape(k, -1, 8)[:, :, ::-1]).reshape(k, -1)


def mib_memmap(info: MibInfo) -> np.ndarray:
    """Read-only memory map of all frames, shape (n_frames,), fields ``hdr`` and ``px``.

    ``memmap["px"]`` is (n_frames, Qy, Qx) in the big-endian pixel type, rows as stored on disk (not
    flipped), without copying; ``memmap["hdr"]`` holds the raw frame headers.
    """
    if info.raw is not None:  # raw counter words: one uint8 run per frame (decode_raw_frames decodes them)
        frame = np.dtype([("hdr", f"V{info.header_bytes}"), ("px", np.uint8, (info.pixel_bytes,))])
    else:
        frame = np.dtype([("hdr", f"V{info.header_bytes}"), ("px", info.dtype, info.frame_shape)])
    return np.memmap(info.path, dtype=frame, mode="r", shape=(info.n_frames,))


def _decoded(info: MibInfo, px) -> np.ndarray:
    """(k, Qy, Qx) frames in native byte order, Qy flipped, from ``px`` = rows of :func:`mib_memmap`'s ``px``."""
    if info.raw is not None:
        return decode_raw_frames(np.asarray(px), info.raw, info.counter_depth)[:, ::-1]
    return np.asarray(px[:, ::-1], dtype=info.dtype.newbyteorder("="))


def read_mib_dask(path, scan_shape: tuple[int, int] | None = None,
                  frames_per_chunk: int | None = None) -> tuple["da.Array", MibInfo]:
    """Lazy (Ry, Rx, Qy, Qx) array of a ``.mib`` file in native byte order, Qy flipped (see module doc).

    ``scan_shape`` (Ry, Rx) defaults to (n_frames / row, row) where the ``.hdr`` gives more than one frame
    per trigger (a scan row), else (1, n_frames). Chunks are whole scan rows of at most
    ``frames_per_chunk`` frames (default: as many as fit in 64 MiB), or pieces of one row where a row is
    longer; each chunk maps the file read-only by itself, so the graph pickles and runs on threads or
    processes. Returns the array and the file's :class:`MibInfo`.
    """
    info = read_mib_info(path)
    return mib_dask_array(info, mib_scan_shape(info, scan_shape), frames_per_chunk), info


def mib_dask_array(info: MibInfo, scan_shape: tuple[int, int], frames_per_chunk: int | None = None) -> "da.Array":
    """The lazy array of :func:`read_mib_dask` from a parsed header and a checked scan shape."""
    import dask.array as da

    native = info.dtype.newbyteorder("=")
    chunks = scan_chunks(scan_shape, info.frame_shape, native.itemsize, frames_per_chunk)
    return da.map_blocks(_load_mib_block, chunks=chunks, dtype=native, meta=np.empty((0, 0, 0, 0), native),
                         info=info, row_length=scan_shape[1])


def write_mib(path, data, *, dtype: str = "u2", write_hdr: bool = True, exposure_ms: float = 1.0,
              counter_depth: int | None = None, layout: str = "1x1") -> Path:
    """Write frames as a Merlin ``.mib`` (and ``.hdr``), returning the ``.mib`` path.

    ``layout``: ``"1x1"`` single chip (384-byte frame headers) or ``"2x2"`` quad (768-byte headers, the
    DAC block repeated for each of the 4 chips, as the Merlin software writes it; frames are then
    typically 512² or 514² with the inter-chip gap).

    ``data``: (Ry, Rx, Qy, Qx) or (N, Qy, Qx) non-negative integers (numpy, dask or any array with
    ``shape``), or an iterable of (k, Qy, Qx) / (Qy, Qx) blocks. ``dtype``: ``u1``, ``u2`` or ``u4``
    (``U08``/``U16``/``U32`` on disk). ``exposure_ms``: per-frame exposure (ms); frame time stamps step
    by it from now. ``counter_depth`` (bits, default: the dtype's width) goes into the headers; values
    above ``2**counter_depth - 1`` raise ValueError. A 4D input records its row length Rx as the ``.hdr``'s
    "Frames per Trigger", so readers recover the scan shape. Data is read and written a block of frames at
    a time, into a hidden temporary file in the same folder that replaces ``path`` only when complete.
    """
    path = Path(path)
    disk = np.dtype(dtype).newbyteorder(">")
    depth_names = {1: "U08", 2: "U16", 4: "U32"}
    if disk.kind != "u" or disk.itemsize not in depth_names:
        raise ValueError(f"dtype must be u1, u2 or u4, not {dtype!r}")
    bits = 8 * disk.itemsize
    counter_depth = bits if counter_depth is None else counter_depth
    if not 1 <= counter_depth <= bits:
        raise ValueError(f"counter_depth must be 1..{bits} bits for dtype {dtype}, not {counter_depth}")
    exposure_ns = round(exposure_ms * 1e6)
    if exposure_ns <= 0:
        raise ValueError(f"exposure_ms must be positive, not {exposure_ms}")
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(_LAYOUTS)}, not {layout!r}")
    blocks, row_length = _frame_blocks(data)
    vmax = 2**counter_depth - 1
    t0_ns = time.time_ns()
    hdr_path = path.with_suffix(".hdr")
    tmp_mib = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    tmp_hdr = hdr_path.with_name(f".{hdr_path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        n = 0
        with open(tmp_mib, "xb") as f:
            for block in blocks:
                _check_block(block, vmax, n, counter_depth)
                pixels = block[:, ::-1].astype(disk)
                for frame in pixels:
                    n += 1
                    f.write(_frame_header(n, frame.shape, depth_names[disk.itemsize],
                                          t0_ns + (n - 1) * exposure_ns, exposure_ns, counter_depth, layout))
                    f.write(frame.tobytes())
        if n == 0:
            raise ValueError("no frames to write")
        if write_hdr:
            with open(tmp_hdr, "xb") as f:
                f.write(_hdr_text(n, row_length, counter_depth, t0_ns))
            os.replace(tmp_hdr, hdr_path)
        os.replace(tmp_mib, path)
    finally:
        tmp_mib.unlink(missing_ok=True)
        tmp_hdr.unlink(missing_ok=True)
    return path


# --- private helpers -----------------------------------------------------------------------------------

def read_mib_region(info: MibInfo, row_length: int, region: tuple[int, int, int, int]) -> np.ndarray:
    """Frames of scan rows y0:y1, columns x0:x1 (``region``) as (y1-y0, x1-x0, Qy, Qx) in native byte order, Qy
    flipped: the same values as :func:`read_mib_dask`'s array, straight from the file mapping (the byte swap
    happens in the one copy)."""
    y0, y1, x0, x1 = region
    px = mib_memmap(info)["px"]
    out = np.empty((y1 - y0, x1 - x0, *info.frame_shape), info.dtype.newbyteorder("="))
    for y in range(y0, y1):
        s = y * row_length
        if info.raw is not None:
            out[y - y0] = _decoded(info, px[s + x0:s + x1])
        else:
            np.copyto(out[y - y0], px[s + x0:s + x1, ::-1])
    return out


def _load_mib_block(info: MibInfo, row_length: int, block_info=None) -> np.ndarray:
    frames, shape = frame_range(block_info, row_length)
    if info.raw is not None:
        return _decoded(info, mib_memmap(info)["px"][frames]).reshape(*shape, *info.frame_shape)
    px = mib_memmap(info)["px"][frames, ::-1]
    return np.array(px, dtype=info.dtype.newbyteorder("=")).reshape(*shape, *info.frame_shape)


def mib_scan_shape(info: MibInfo, scan_shape: tuple[int, int] | None = None, *,
                   required: bool = True) -> tuple[int, int]:
    """The scan shape (Ry, Rx) of a file: ``scan_shape`` checked against the frame count, or the default of
    :func:`read_mib_dask`; SendmapInputError if it does not fit.

    Without ``scan_shape`` and without a ``.hdr`` (the frame headers do not record the scan), one frame is a
    1 × 1 scan and more frames are refused (``required``; else read as a 1 × N line, for ``sendmap info``)."""
    if scan_shape is None:
        if not info.metadata.get("hdr") and info.n_frames > 1 and required:
            raise SendmapInputError(
                f"{info.path}: {info.n_frames} frames and no .hdr file beside it, so the scan shape is unknown (the "
                f"frame headers do not record it); set input.scan_shape: [Ry, Rx] with Ry x Rx = {info.n_frames} "
                f"(e.g. [1, {info.n_frames}] for a line or a stack of patterns)")
        scan_shape = _default_scan_shape(info)
    return check_scan_shape(scan_shape, info.n_frames, info.path)


def _default_scan_shape(info: MibInfo) -> tuple[int, int]:
    row = info.metadata.get("frames_per_trigger", 1)
    if row > 1 and info.n_frames % row == 0:
        return info.n_frames // row, row
    return 1, info.n_frames


def _header_fields(raw: bytes, path: Path, offset: int) -> list[str]:
    """Comma-separated fields of the frame header ``raw`` found at byte ``offset``."""
    if not raw.startswith(_MAGIC):
        raise SendmapInputError(
            f"{path}: no Merlin frame header at byte offset {offset}: expected {_MAGIC!r}, found {raw[:16]!r}")
    text = raw.split(b"\0", 1)[0]
    try:
        fields = text.decode("ascii").split(",")
    except UnicodeDecodeError as exc:
        raise SendmapInputError(
            f"{path}: frame header at byte offset {offset} has a non-ASCII byte at byte offset "
            f"{offset + exc.start}") from None
    if len(fields) < 9:
        raise SendmapInputError(f"{path}: frame header at byte offset {offset} has only {len(fields)} fields: {text!r}")
    return fields


def _int_field(fields: list[str], index: int, name: str, path: Path, offset: int) -> int:
    value = _int_or_none(fields[index])
    if value is None:
        raise SendmapInputError(
            f"{path}: corrupt Merlin frame header at byte offset {offset}: field {index} ({name}) is "
            f"{fields[index]!r}, not an integer, so the frames cannot be located; the file is damaged (or not "
            "written by the Merlin software)")
    return value


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _header_metadata(fields: list[str]) -> dict:
    """Metadata of a frame header; ``counter_depth`` is None without the ``MQ1A`` extension."""
    field = fields + [""] * 22
    shutter_s = _float_or_none(field[10])
    meta = {
        "n_chips": _int_or_none(field[3]),
        "pixel_depth": field[6].strip(),
        "sensor_layout": field[7].strip(),
        "timestamp": field[9],
        "exposure_ms": None if shutter_s is None else shutter_s * 1e3,
        "counter": field[11],
        "colour_mode": field[12],
        "gain_mode": field[13],
        "thresholds_keV": [_float_or_none(v) for v in field[14:22]],
        "timestamp_utc": None,
        "counter_depth": None,
    }
    if "MQ1A" in fields:
        ext = fields[fields.index("MQ1A") + 1:] + ["", "", ""]
        meta["timestamp_utc"] = ext[0]
        if (ns := _float_or_none(ext[1].removesuffix("ns"))) is not None:
            meta["exposure_ms"] = ns / 1e6
        meta["counter_depth"] = _int_or_none(ext[2])
    return meta


def _read_hdr(hdr_path: Path) -> dict[str, str]:
    """``key: value`` lines of a Merlin ``.hdr`` file (empty dict where there is none)."""
    if not hdr_path.is_file():
        return {}
    hdr = {}
    for line in hdr_path.read_text(encoding="ascii", errors="replace").splitlines():
        key, tab, value = line.partition("\t")
        key = key.strip().removesuffix(":")
        if tab and key not in ("HDR,", "End"):
            hdr[key] = value.strip()
    return hdr


def _frame_blocks(data) -> tuple[Iterator[np.ndarray], int]:
    """(N, Qy, Qx)-shaped numpy blocks of the input frames, in scan order, and the scan row length."""
    if not hasattr(data, "shape"):
        return _iterable_blocks(data), 1
    if len(data.shape) not in (3, 4):
        raise ValueError(f"data must be (Ry, Rx, Qy, Qx) or (N, Qy, Qx), not shape {tuple(data.shape)}")
    frame_shape = tuple(data.shape[-2:])
    per_block = max(1, _WRITE_BLOCK_BYTES // (8 * frame_shape[0] * frame_shape[1]))
    if len(data.shape) == 3:
        blocks = (np.asarray(data[i:i + per_block]) for i in range(0, data.shape[0], per_block))
        return blocks, 1
    ry, rx = data.shape[:2]
    blocks = (np.asarray(data[r, c:c + per_block]) for r in range(ry) for c in range(0, rx, per_block))
    return blocks, rx


def _iterable_blocks(blocks: Iterable) -> Iterator[np.ndarray]:
    frame_shape = None
    for block in blocks:
        block = np.asarray(block)
        block = block[None] if block.ndim == 2 else block
        if block.ndim != 3 or frame_shape not in (None, block.shape[1:]):
            raise ValueError(f"frame blocks must be (k, Qy, Qx) or (Qy, Qx) of one frame shape; got {block.shape}")
        frame_shape = block.shape[1:]
        yield block


def _check_block(block: np.ndarray, vmax: int, first: int, counter_depth: int) -> None:
    """ValueError unless ``block`` (frames ``first``... counting from 0) holds integers in 0..vmax and its
    frames fit a Merlin header."""
    if block.dtype.kind not in "biuf" or (block.dtype.kind == "f" and not np.all(block == np.trunc(block))):
        raise ValueError(f"frames {first}..{first + len(block) - 1}: values must be integers ({block.dtype} given)")
    if block.size and (block.min() < 0 or block.max() > vmax):
        raise ValueError(f"frames {first}..{first + len(block) - 1}: values {block.min()}..{block.max()} do not fit "
                         f"0..{vmax} ({counter_depth}-bit counter)")
    if max(block.shape[1:]) > 9999:
        raise ValueError(f"frame shape {block.shape[1:]} too large for a Merlin header (at most 9999 pixels a side)")


def _sci(value: float) -> str:
    """Merlin's float format: 4.000000E+1."""
    mantissa, exponent = f"{value:.6E}".split("E")
    return f"{mantissa}E{int(exponent):+d}"


def _frame_header(number: int, frame_shape: tuple[int, int], pixel_depth: str, t_ns: int, exposure_ns: int,
                  counter_depth: int, layout: str = "1x1") -> bytes:
    """Frame header (384 bytes single chip, 768 quad), field for field as the Merlin software writes it."""
    n_chips, size = _LAYOUTS[layout]
    seconds, ns = divmod(t_ns, 10**9)
    utc = datetime.fromtimestamp(seconds, timezone.utc)
    fields = ["MQ1", f"{number:06d}", f"{size:05d}", f"{n_chips:02d}", f"{frame_shape[1]:04d}", f"{frame_shape[0]:04d}",
              pixel_depth, f"{layout:>6s}", "0F" if n_chips == 4 else "01",
              f"{utc.astimezone():%Y-%m-%d %H:%M:%S}.{ns // 1000:06d}",
              f"{exposure_ns / 1e9:.6f}", "0", "0", "0", *map(_sci, _THRESHOLDS_KEV), "3RX", *([_DACS] * n_chips),
              "MQ1A", f"{utc:%Y-%m-%dT%H:%M:%S}.{ns:09d}Z", f"{exposure_ns}ns", str(counter_depth), ""]
    return ",".join(fields).encode("ascii").ljust(size, b"\0")


def _hdr_text(n_frames: int, frames_per_trigger: int, counter_depth: int, t0_ns: int) -> bytes:
    """The acquisition ``.hdr`` file, with the keys and layout of the Merlin software's."""
    start = datetime.fromtimestamp(t0_ns // 10**9, timezone.utc).astimezone()
    entries = [
        ("Time and Date Stamp (day, mnth, yr, hr, min, s)", f"{start:%d/%m/%Y %H:%M:%S}"),
        ("Chip ID", "sendmap, - , - , - "),
        ("Chip Type (Medipix 3.0, Medipix 3.1, Medipix 3RX)", "Medipix 3RX"),
        ("Assembly Size (NX1, 2X2)", "   1x1"),
        ("Chip Mode  (SPM, CSM, CM, CSCM)", "SPM"),
        ("Counter Depth (number)", str(counter_depth)),
        ("Gain", "SLGM"),
        ("Active Counters", "Counter 0"),
        ("Thresholds (keV)", ",".join(map(_sci, _THRESHOLDS_KEV))),
        ("DACs", f"{_DACS}; ; ; "),
        ("bpc File", "None"),
        ("DAC File", "None"),
        ("Gap Fill Mode", "None"),
        ("Flat Field File", "None"),
        ("Dead Time File", "None"),
        ("Acquisition Type (Normal, Th_scan, Config)", "Normal"),
        ("Frames in Acquisition (Number)", str(n_frames)),
        ("Frames per Trigger (Number)", str(frames_per_trigger)),
        ("Trigger Start (Positive, Negative, Internal)", "Internal"),
        ("Trigger Stop (Positive, Negative, Internal)", "Internal"),
        ("Sensor Bias (V)", "120 V"),
        ("Sensor Polarity (Positive, Negative)", "Positive"),
        ("Temperature (C)", "Board Temp 0.000000 Deg C"),
        ("Humidity (%)", "Board Humidity 0.000000 "),
        ("Medipix Clock (MHz)", "160MHz"),
        ("Readout System", "Merlin Quad"),
        ("Software Version", f"sendmap {__version__}"),
    ]
    text = "HDR,\t\r\n" + "".join(f"{key}:\t{value}\r\n" for key, value in entries) + "End\t"
    return text.encode("ascii").ljust(_HDR_BYTES, b" ")
