"""Detector formats: one ``open_dataset`` that detects the format and returns a lazy 4D array.

Every reader returns a dask array (Ry, Rx, Qy, Qx) in native byte order whose chunks are whole scan
rows, each chunk opening the file read-only by itself (so the graph runs on threads, processes or a
cluster). Input files are never opened for writing.
"""
from __future__ import annotations

import hashlib

from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da

from ..errors import SendmapInputError

SUPPORTED = ("mib", "npy")
"""Formats read today; ``input.format`` also accepts the names of formats still to come (issue 3),
which end with a clear error rather than a guess."""

_MAGIC = {b"MQ1,": "mib", b"\x93NUMPY": "npy", b"\x89HDF": "hdf5"}
_EXTENSIONS = {".mib": "mib", ".npy": "npy", ".dm4": "dm4", ".dm3": "dm4", ".raw": "empad", ".h5": "hdf5",
               ".hdf5": "hdf5", ".emd": "py4dstem", ".zarr": "zarr"}


@dataclass
class Dataset:
    """A lazily opened 4D-STEM dataset."""

    data: da.Array
    path: Path
    format: str
    metadata: dict = field(default_factory=dict)

    @property
    def scan_shape(self) -> tuple[int, int]:
        return tuple(self.data.shape[:2])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.data.shape[2:])


def detect_format(path: Path) -> str:
    """Format of a file from its first bytes, then its extension.

    Returns a name of ``config.FORMATS`` (or ``hdf5`` for an HDF5 file whose flavour is not yet known).
    """
    path = Path(path)
    if path.is_dir():
        return "zarr" if (path / "zarr.json").exists() or (path / ".zarray").exists() else "unknown"
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise SendmapInputError(f"cannot read input file {path}: {exc.strerror}") from None
    for magic, fmt in _MAGIC.items():
        if head.startswith(magic):
            return fmt
    return _EXTENSIONS.get(path.suffix.lower(), "unknown")


def open_dataset(path, fmt: str = "auto", scan_shape: tuple[int, int] | None = None) -> Dataset:
    """Open a detector file lazily; SendmapInputError (exit 2) for a missing file or unknown format.

    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "d.npy"); np.save(p, np.zeros((2, 3, 8, 8), np.uint16))
    >>> open_dataset(p).data.shape
    (2, 3, 8, 8)
    """
    path = Path(path)
    if not path.exists():
        raise SendmapInputError(f"input file not found: {path}")
    detected = detect_format(path)
    if fmt == "auto":
        fmt = detected
        if fmt == "unknown":
            raise SendmapInputError(
                f"cannot tell the format of {path}: its first bytes and extension match none of "
                f"{', '.join(SUPPORTED)}; set input.format")
    elif detected not in ("unknown", fmt) and not (detected == "hdf5" and fmt in ("arina", "py4dstem")):
        raise SendmapInputError(f"{path} looks like a {detected} file, but input.format says {fmt}")
    if fmt == "mib":
        from .mib import read_mib_dask

        data, info = read_mib_dask(path, scan_shape=scan_shape)
        meta = {k: v for k, v in info.metadata.items() if k != "hdr"}
        meta.update(header_bytes=info.header_bytes, counter_depth=info.counter_depth, dtype_on_disk=info.dtype.str)
        return Dataset(data, path, "mib", meta)
    if fmt == "npy":
        from .npy import read_npy_dask

        return Dataset(read_npy_dask(path, scan_shape=scan_shape), path, "npy", {})
    raise SendmapInputError(
        f"{path}: the {fmt} format is not supported yet (supported: {', '.join(SUPPORTED)}); convert it to .npy "
        f"or .mib for now")


def fingerprint(path, sample_bytes: int = 1 << 20) -> dict:
    """A cheap, content-based identity of an input file (or of every file of a folder).

    SHA-256 over the size and three samples of ``sample_bytes`` (start, middle, end) of each file: a
    changed byte count, header, or first/last frames changes it, while a multi-GB file is not read in
    full. Returns ``{"sha256_sampled": hex, "bytes": total size, "files": n}``.
    """
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for side in (path.with_suffix(".hdr"),):
        if path.suffix.lower() == ".mib" and side.exists():
            files.append(side)
    h = hashlib.sha256()
    total = 0
    for f in files:
        size = f.stat().st_size
        total += size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            for offset in sorted({0, max(0, size // 2 - sample_bytes // 2), max(0, size - sample_bytes)}):
                fh.seek(offset)
                h.update(fh.read(sample_bytes))
    return {"sha256_sampled": h.hexdigest(), "bytes": total, "files": len(files)}


