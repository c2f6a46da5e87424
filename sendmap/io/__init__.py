"""Detector formats: one ``open_dataset`` that detects the format and returns a lazy 4D array.

Every reader gives a dask array (Ry, Rx, Qy, Qx) in native byte order whose chunks are runs of whole
scan rows, each chunk opening the file read-only by itself (so the graph runs on threads, processes or
a cluster); see :mod:`sendmap.io._common` for the contract. Input files are never opened for writing.

=========  ==========================================================  ==============================
format     files                                                       reader
=========  ==========================================================  ==============================
mib        Quantum Detectors Merlin ``.mib`` (+ ``.hdr``)              :mod:`sendmap.io.mib` (own; tested
                                                                       against rosettasciio)
dm4        Gatan DigitalMicrograph ``.dm4`` / ``.dm3`` 3D/4D stacks    :mod:`sendmap.io.dm` (tags parsed by
                                                                       rosettasciio; data memory-mapped)
empad      EMPAD ``.raw`` (128 × 130 float32 frames) + ``.xml``        :mod:`sendmap.io.empad`
arina      DECTRIS Arina/EIGER ``*_master.h5`` + ``*_data_*.h5``       :mod:`sendmap.io.hdf5` (h5py +
                                                                       hdf5plugin)
py4dstem   py4DSTEM / emdfile / EMD 1.0 ``.h5`` ``.emd``               :mod:`sendmap.io.hdf5`
npy        NumPy ``.npy`` (4D, or 3D frames)                           :mod:`sendmap.io.npy`
zarr       an existing zarr array or group (v2 or v3)                  :mod:`sendmap.io.zarrarray`
raw        headerless or fixed-header binary, layout from the config   :mod:`sendmap.io.raw`
blockfile  NanoMegas/ASTAR ``.blo``; also ``tvips``, ``mrc``, ``velox``    :mod:`sendmap.io.generic`
           (``.emd``), ``hspy``, ``zspy``                                (rosettasciio's lazy readers)
=========  ==========================================================  ==============================

Only regular files (and zarr folders) are read: a FIFO, socket or device, or a symbolic link loop, is
refused with a SendmapInputError (a pipe could never be seeked in or fingerprinted; reading one would hang).
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import SendmapInputError

GENERIC = ("blockfile", "tvips", "mrc", "velox", "hspy", "zspy")
"""Formats read through rosettasciio (:mod:`sendmap.io.generic`)."""
SUPPORTED = ("mib", "dm4", "empad", "arina", "py4dstem", "npy", "zarr", "raw", *GENERIC)
"""Names accepted by ``input.format`` (besides ``auto``); ``dm3`` is read as ``dm4``."""

_MAGIC = {b"MQ1,": "mib", b"\x93NUMPY": "npy", b"\x89HDF\r\n\x1a\n": "hdf5",
          b"\x00\x00\x00\x03": "dm4", b"\x00\x00\x00\x04": "dm4"}
"""Leading bytes of each format (DM files start with their version, 3 or 4, as a big-endian int32)."""
_EXTENSIONS = {".mib": "mib", ".npy": "npy", ".dm4": "dm4", ".dm3": "dm4", ".raw": "raw", ".h5": "hdf5",
               ".hdf5": "hdf5", ".emd": "hdf5", ".hspy": "hdf5", ".zarr": "zarr", ".zspy": "zarr", ".bin": "raw",
               ".blo": "blockfile", ".tvips": "tvips", ".mrc": "mrc"}


_NOT_READ = {".seq": "a Direct Electron / StreamPix .seq sequence: not read (rosettasciio 0.15, which sendmap uses "
                    "for such formats, has no reader for it); save the frames from the DE software as an MRC "
                    "(.mrc, read with input.format: mrc) or HDF5 file"}
"""Extensions of formats sendmap knows it cannot read, with what to do instead."""


@dataclass
class Dataset:
    """A lazily opened 4D-STEM dataset: shape, dtype and metadata at once, the dask array when first asked for.

    Building the dask array needs dask itself (~0.5 s to import); a re-run that reuses ingest never does, so
    readers that know the shape from the header alone (mib) build it on first access of :attr:`data`.
    """

    shape: tuple[int, int, int, int]
    """(Ry, Rx, Qy, Qx)."""
    dtype: np.dtype
    """Pixel type in native byte order (the dask array's dtype)."""
    path: Path
    format: str
    metadata: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    """Every file the dataset is made of (fingerprinted together): e.g. ``.mib`` + ``.hdr``, master + data."""
    read_region: object = None
    """Optional ``read_region((y0, y1, x0, x1)) -> ndarray`` (y1-y0, x1-x0, Qy, Qx), equal to ``data``'s region
    but read directly (no dask graph per block: ~30 ms per block of 148 frames saved), where a reader has one."""
    make_data: Callable[[], Any] | None = field(default=None, repr=False)
    """Builds the dask array (called once, on first access of :attr:`data`)."""
    _data: Any = field(default=None, repr=False)

    @classmethod
    def from_array(cls, data, path: Path, format: str, metadata: dict | None = None, files=None,
                   read_region=None) -> "Dataset":
        """A dataset around an already built (dask) array."""
        return cls(tuple(data.shape), np.dtype(data.dtype), Path(path), format, dict(metadata or {}),
                   list(files or []), read_region, None, data)

    @property
    def data(self):
        """The lazy (Ry, Rx, Qy, Qx) dask array."""
        if self._data is None:
            self._data = self.make_data()
        return self._data

    @property
    def scan_shape(self) -> tuple[int, int]:
        return tuple(self.shape[:2])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.shape[2:])


def detect_format(path: Path) -> str:
    """Format of a file from its first bytes, then its extension: a name of :data:`SUPPORTED` or "unknown".

    HDF5 files are told apart by their groups (DECTRIS master/data files → ``arina``, py4DSTEM/EMD →
    ``py4dstem``); a ``.raw`` whose size is a whole number of EMPAD frames and that has an EMPAD XML or
    an ``_x<Rx>_y<Ry>`` name is ``empad``, any other ``.raw`` needs its layout in ``input.raw``.
    """
    path = Path(path)
    check_readable(path)
    if path.is_dir():
        markers = ("zarr.json", ".zarray", ".zgroup")
        if not any((path / m).exists() for m in markers):
            return "unknown"
        return "zspy" if _is_hyperspy_zarr(path) else "zarr"
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise SendmapInputError(f"cannot read input file {path}: {exc.strerror}") from None
    fmt = next((f for magic, f in _MAGIC.items() if head.startswith(magic)), None)
    if fmt == "dm4" and path.suffix.lower() not in (".dm3", ".dm4"):
        fmt = None  # four bytes 00 00 00 0[34] alone are too common to trust without the extension
    fmt = fmt or _EXTENSIONS.get(path.suffix.lower(), "unknown")
    if fmt == "hdf5":
        from .hdf5 import hdf5_flavour

        return hdf5_flavour(path) or _hdf5_generic_flavour(path) or "hdf5"
    if fmt == "unknown" and head.startswith(b"IMGBLO"):
        return "blockfile"
    if fmt == "raw" and _looks_empad(path):
        return "empad"
    return fmt


def check_readable(path: Path) -> None:
    """SendmapInputError unless ``path`` is a regular file or a folder: a missing file, a symbolic link loop,
    or a FIFO, socket or device (reading a pipe would wait forever for a writer) is refused, naming it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SendmapInputError(f"input {path}: a loop of symbolic links (it points back to itself); set "
                                    "input.path to the data file itself") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise SendmapInputError(f"input file not found: {path}") from None
        raise SendmapInputError(f"cannot read input {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    raise SendmapInputError(f"input {path} is {kind}: sendmap reads regular files only (it seeks in them and "
                            "fingerprints them); save the data to a file and set input.path to it")


def _hdf5_generic_flavour(path: Path) -> str | None:
    """``"hspy"`` (a HyperSpy file: root attribute file_format = HyperSpy) or ``"velox"`` (Thermo Fisher Velox
    EMD: root ``Data`` group and ``Version``) for an HDF5 file no own reader claims, else None."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("file_format")
            if isinstance(fmt, bytes):
                fmt = fmt.decode("latin-1")
            if str(fmt) == "HyperSpy":
                return "hspy"
            if "Data" in f and "Version" in f:
                return "velox"
    except (OSError, ValueError):
        return None
    return None


def _is_hyperspy_zarr(path: Path) -> bool:
    """A zarr group folder written by HyperSpy/rosettasciio (``.zspy``): root attribute file_format = ZSpy."""
    import json

    for name, pick in ((".zattrs", lambda d: d), ("zarr.json", lambda d: d.get("attributes", {}))):
        try:
            attrs = pick(json.loads((path / name).read_text()))
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(attrs, dict) and attrs.get("file_format") in ("HyperSpy", "ZSpy"):
            return True
    return False


def _looks_empad(path: Path) -> bool:
    from .empad import FRAME_BYTES, find_empad_xml, scan_shape_from_name

    size = path.stat().st_size
    if size == 0 or size % FRAME_BYTES:
        return False
    return find_empad_xml(path) is not None or scan_shape_from_name(path) is not None


def open_dataset(path, fmt: str = "auto", scan_shape: tuple[int, int] | None = None, *,
                 dataset: str | None = None, raw: dict | None = None,
                 frames_per_chunk: int | None = None, scan_shape_required: bool = True) -> Dataset:
    """Open a detector file lazily; SendmapInputError (exit 2) for a missing file or unknown format.

    ``dataset``: the HDF5/zarr path of the array inside the file (default: found). ``raw``: the byte
    layout for ``fmt="raw"`` (keys of ``config.RawLayout``). ``frames_per_chunk``: dask chunk size
    (default: about 64 MiB of whole scan rows; zarr arrays keep their own chunk grid).
    ``scan_shape_required``: a stack of several frames that records no scan shape (a 3D ``.npy``/zarr/
    rosettasciio signal, a ``.mib`` without ``.hdr``) needs ``scan_shape`` (SendmapInputError naming
    ``input.scan_shape``); False reads it as a 1 × N line (``sendmap info``, which then says so).

    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "d.npy"); np.save(p, np.zeros((2, 3, 8, 8), np.uint16))
    >>> open_dataset(p).data.shape
    (2, 3, 8, 8)
    """
    path = Path(path)
    check_readable(path)
    detected = detect_format(path)
    fmt = "dm4" if fmt == "dm3" else fmt
    if fmt == "auto":
        fmt = detected
        if fmt == "raw" and raw is None:
            raise SendmapInputError(
                f"{path}: a raw binary file whose layout is unknown; set input.format: raw and input.raw "
                "{dtype, frame_shape, header_bytes, frame_header_bytes, frame_footer_bytes} (or, for EMPAD, put "
                "its .xml beside it)")
        if fmt == "unknown" and path.suffix.lower() in _NOT_READ:
            raise SendmapInputError(f"{path}: {_NOT_READ[path.suffix.lower()]}")
        if fmt in ("unknown", "hdf5"):
            what = ("an HDF5 file that is neither a DECTRIS Arina/EIGER, a py4DSTEM/EMD, a HyperSpy nor a Velox "
                    "file") if fmt == "hdf5" else "its first bytes and extension match no known format"
            raise SendmapInputError(
                f"cannot tell the format of {path}: {what}; set input.format to one of {', '.join(SUPPORTED)}")
    elif not _compatible(detected, fmt):
        raise SendmapInputError(f"{path} looks like a {detected} file, but input.format says {fmt}")
    kw = {"scan_shape": scan_shape, "frames_per_chunk": frames_per_chunk}
    files = [path]
    if fmt == "mib":
        import functools

        from .mib import mib_dask_array, mib_scan_shape, read_mib_info, read_mib_region

        info = read_mib_info(path)
        scan = mib_scan_shape(info, scan_shape, required=scan_shape_required)
        meta = {k: v for k, v in info.metadata.items() if k != "hdr"}
        meta.update(header_bytes=info.header_bytes, counter_depth=info.counter_depth,
                    dtype_on_disk="R64" if info.raw is not None else info.dtype.str)
        files += [p for p in (path.with_suffix(".hdr"),) if p.exists()]
        return Dataset((*scan, *info.frame_shape), info.dtype.newbyteorder("="), path, fmt, meta, files,
                       read_region=functools.partial(read_mib_region, info, scan[1]),
                       make_data=lambda: mib_dask_array(info, scan, frames_per_chunk))
    if fmt in GENERIC:
        from .generic import read_generic

        shape, dtype, meta, read_region, make_data = read_generic(path, fmt, scan_shape, frames_per_chunk,
                                                                  required=scan_shape_required)
        return Dataset(shape, dtype, path, fmt, meta, files, read_region=read_region, make_data=make_data)
    if fmt == "npy":
        from .npy import read_npy_dask

        data, meta = read_npy_dask(path, **kw, required=scan_shape_required), {}
    elif fmt == "dm4":
        from .dm import read_dm_dask

        data, meta = read_dm_dask(path, **kw, required=scan_shape_required)
    elif fmt == "empad":
        from .empad import read_empad_dask

        data, meta = read_empad_dask(path, **kw)
        files += [Path(meta["xml_path"])] if meta.get("xml_path") else []
    elif fmt == "arina":
        from .hdf5 import read_arina_dask

        data, meta = read_arina_dask(path, **kw)
        master = Path(meta.get("master") or path)
        stem_file = master.with_name(master.name.replace("_master.h5", ".h5"))  # "STEM Metadata" beside it
        files = [master, *map(Path, meta.get("data_files", []))] + ([stem_file] if stem_file.exists() else [])
    elif fmt == "py4dstem":
        from .hdf5 import read_py4dstem_dask

        data, meta = read_py4dstem_dask(path, dataset=dataset, **kw)
    elif fmt == "zarr":
        from .zarrarray import read_zarr_dask

        data, meta = read_zarr_dask(path, dataset=dataset, **kw, required=scan_shape_required)
    elif fmt == "raw":
        from .raw import read_raw_dask

        if not raw:
            raise SendmapInputError(f"{path}: input.format is raw but input.raw (the byte layout) is not given")
        layout = dict(raw)
        data, meta = read_raw_dask(path, dtype=layout.pop("dtype"), frame_shape=tuple(layout.pop("frame_shape")),
                                   **layout, **kw)
    else:
        raise SendmapInputError(f"{path}: unknown input.format {fmt!r}; known: {', '.join(SUPPORTED)}")
    return Dataset.from_array(data, path, fmt, meta, files)


def _compatible(detected: str, fmt: str) -> bool:
    """Whether a user-set ``input.format`` may override what the content says."""
    if detected in ("unknown", fmt):
        return True
    hdf5_family = ("hdf5", "arina", "py4dstem", "hspy", "velox")
    if detected in hdf5_family and fmt in hdf5_family and fmt != "hdf5":
        return detected == "hdf5" or {detected, fmt} <= {"py4dstem", "velox", "hspy"}
    if {detected, fmt} == {"zarr", "zspy"}:  # a .zspy is a zarr group: either reader may take it
        return True
    if fmt == "raw":  # any file can be described byte by byte
        return True
    return detected == "raw" and fmt == "empad"


def fingerprint(path, sample_bytes: int = 1 << 20, files: list | None = None) -> dict:
    """A cheap, content-based identity of an input (its files, or every file of a folder).

    SHA-256 over each file's name, size, modification time (ns) and three samples of ``sample_bytes``
    (start, middle, end): a changed byte count, header, first/last frames or a rewrite (a new modification
    time) changes it, while a multi-GB file is not read in full. In a folder (a zarr store) every file's name and size count, metadata files (``*.json``,
    ``.z*``) are read in full and chunk files are sampled at most 64 of them, evenly spread. ``files``:
    the files of a multi-file dataset (default ``[path]``). Returns ``{"sha256_sampled": hex,
    "bytes": total size, "files": n}``.
    """
    path = Path(path)
    if path.is_dir():
        members = sorted(p for p in path.rglob("*") if p.is_file())
        meta = [p for p in members if p.suffix == ".json" or p.name.startswith(".z")]
        chunks = [p for p in members if p not in set(meta)]
        step = max(1, len(chunks) // 64)
        sampled = set(meta) | set(chunks[::step]) | set(chunks[-1:])
    else:
        members = [Path(f) for f in (files or [path])]
        sampled = set(members)
    h = hashlib.sha256()
    total = 0
    newest = 0
    for f in members:
        st = f.stat()
        size = st.st_size
        total += size
        newest = max(newest, st.st_mtime_ns)
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{size}:{st.st_mtime_ns}".encode())
        if f not in sampled:
            continue
        with open(f, "rb") as fh:
            for offset in sorted({0, max(0, size // 2 - sample_bytes // 2), max(0, size - sample_bytes)}):
                fh.seek(offset)
                h.update(fh.read(sample_bytes))
    n_sampled = len(sampled)
    whole = all(f.stat().st_size <= 3 * sample_bytes for f in sampled)
    how = ("every byte" if whole and n_sampled == len(members) else
           f"name, size and modification time of {len(members)} file(s); the first, middle and last "
           f"{sample_bytes // (1 << 20) or sample_bytes} {'MiB' if sample_bytes >= 1 << 20 else 'bytes'} of "
           f"{n_sampled} of them")
    return {"sha256_sampled": h.hexdigest(), "bytes": total, "files": len(members), "mtime_ns": newest,
            "sampled": how}
