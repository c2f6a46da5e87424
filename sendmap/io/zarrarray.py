"""An existing zarr array (v2 or v3), read lazily and, where it suits, used in place.

A zarr input is either an array folder, or a group folder holding one 4D array (the largest 4D
array is taken, or the one named by ``input.dataset``; a sendmap result store offers ``data``). The
array is (Ry, Rx, Qy, Qx), or (N, Qy, Qx) frames in scan order reshaped to ``scan_shape``. The dask
chunks follow the array's own chunk grid along the scan axes (grouped to about
:data:`sendmap.io._common.CHUNK_BYTES`), so every stored chunk is read once.
"""
from __future__ import annotations

from pathlib import Path

import dask.array as da
from dask.array.core import normalize_chunks
import numpy as np

from sendmap.errors import SendmapInputError
from sendmap.io._common import CHUNK_BYTES, chunk_groups, frame_range, scan_chunks, stack_scan_shape


def open_zarr_array(path, dataset: str | None = None):
    """(zarr.Array, its path inside the store) of a zarr input, read-only; SendmapInputError if none fits."""
    import zarr

    path = Path(path)
    try:
        node = zarr.open(str(path), mode="r", path=dataset) if dataset else zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for missing or corrupt metadata
        raise SendmapInputError(f"{path}: not a readable zarr array or group"
                                f"{f' at {dataset!r}' if dataset else ''} ({exc})") from None
    if isinstance(node, zarr.Array):
        return node, dataset or ""
    found = [(name, arr) for name, arr in node.arrays()] + [
        (f"{gname}/{name}", arr) for gname, grp in node.groups() for name, arr in grp.arrays()]
    candidates = [(name, arr) for name, arr in found if arr.ndim in (3, 4) and arr.dtype.kind in "iuf"]
    if not candidates:
        raise SendmapInputError(
            f"{path}: a zarr group with no 3D/4D numeric array (found: "
            f"{', '.join(f'{n} {a.shape}' for n, a in found) or 'no arrays'}); set input.dataset")
    name, arr = max(candidates, key=lambda c: (c[1].ndim, int(np.prod(c[1].shape))))
    return arr, (f"{dataset}/{name}" if dataset else name)


def read_zarr_dask(path, scan_shape: tuple[int, int] | None = None, dataset: str | None = None,
                   frames_per_chunk: int | None = None, *, required: bool = True) -> tuple[da.Array, dict]:
    """Lazy (Ry, Rx, Qy, Qx) array of a zarr input, with metadata (array path, chunks, codecs, attrs).

    The dask chunks of a 4D array are groups of whole stored chunks of about ``frames_per_chunk`` frames
    (default: :data:`CHUNK_BYTES`).
    """
    path = Path(path)
    arr, name = open_zarr_array(path, dataset)
    if arr.dtype.kind not in "iuf" or arr.ndim not in (3, 4):
        raise SendmapInputError(f"{path}: expected a (Ry, Rx, Qy, Qx) or (N, Qy, Qx) array of numbers, found "
                                f"shape {arr.shape} of {arr.dtype}")
    native = arr.dtype.newbyteorder("=")
    meta = {"array_path": name, "chunks_on_disk": list(arr.chunks), "zarr_format": arr.metadata.zarr_format,
            "dtype_on_disk": arr.dtype.str, "attrs": _small_attrs(dict(arr.attrs))}
    if arr.ndim == 4:
        if scan_shape is not None and tuple(scan_shape) != tuple(arr.shape[:2]):
            raise SendmapInputError(
                f"{path}: scan_shape {tuple(scan_shape)} does not match the array's scan axes {arr.shape[:2]}")
        frame_bytes = arr.shape[2] * arr.shape[3] * native.itemsize
        target = CHUNK_BYTES if frames_per_chunk is None else frames_per_chunk * frame_bytes
        chunks = grouped_chunks(arr.shape, arr.chunks, native.itemsize, target)
        data = da.map_blocks(_load_zarr4d, chunks=chunks, dtype=native, meta=np.empty((0, 0, 0, 0), native),
                             path=str(path), array_path=name)
        return data, meta
    scan_shape = stack_scan_shape(scan_shape, arr.shape[0], path, required)
    chunks = scan_chunks(scan_shape, arr.shape[1:], native.itemsize, frames_per_chunk)
    data = da.map_blocks(_load_zarr3d, chunks=chunks, dtype=native, meta=np.empty((0, 0, 0, 0), native),
                         path=str(path), array_path=name, row_length=scan_shape[1])
    return data, meta


def grouped_chunks(shape, chunks, itemsize: int, target_bytes: int = CHUNK_BYTES) -> tuple:
    """Dask chunks along (Ry, Rx) that are whole multiples of the stored chunks, about ``target_bytes``."""
    rows, cols = chunk_groups(shape[:2], chunks[:2], shape[2] * shape[3] * itemsize, target_bytes)
    return normalize_chunks((rows, cols, *shape[2:]), shape=shape)


def _small_attrs(attrs: dict, limit: int = 4000) -> dict:
    import json

    try:
        text = json.dumps(attrs, default=str)
    except (TypeError, ValueError):
        return {}
    return attrs if len(text) <= limit else {"note": f"{len(text)} characters of attrs, not copied"}


def _open(path: str, array_path: str):
    import zarr

    return zarr.open_array(path, mode="r", path=array_path) if array_path else zarr.open_array(path, mode="r")


def read_checked(arr, selection: tuple, path: str, array_path: str) -> np.ndarray:
    """``arr[selection]`` as numpy; a chunk that cannot be read or decoded (corrupt, truncated, missing codec)
    becomes a SendmapInputError naming the file, the array and the chunk(s), not the codec's own error."""
    try:
        return np.asarray(arr[selection])
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # zarr and numcodecs raise RuntimeError, ValueError, OSError... for a bad chunk
        first_error = exc
    import itertools

    spans = [(s.start or 0, s.stop if s.stop is not None else n) for s, n in zip(selection, arr.shape)]
    grid = [range(a // c, (b - 1) // c + 1) for (a, b), c in zip(spans, arr.chunks)]
    bad, error = None, first_error
    for index in itertools.product(*grid):  # only after a failure: find the chunk that cannot be read
        try:
            arr[tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, arr.chunks))]
        except Exception as exc:  # noqa: BLE001 (as above)
            bad, error = index + (0,) * (arr.ndim - len(index)), exc
            break
    where = f"array {array_path!r} of " if array_path else ""
    chunk = (f"chunk {list(bad)} (grid index; scan positions from {[i * c for i, c in zip(bad, arr.chunks)][:2]})"
             if bad is not None else "one of its chunks")
    raise SendmapInputError(
        f"{path}: cannot read {where}the zarr input: {chunk} is corrupt or truncated "
        f"({type(error).__name__}: {error}); rewrite that chunk or the array") from None


def _load_zarr4d(path: str, array_path: str, block_info=None) -> np.ndarray:
    (r0, r1), (c0, c1) = block_info[None]["array-location"][:2]
    out = read_checked(_open(path, array_path), (slice(r0, r1), slice(c0, c1)), path, array_path)
    return out.astype(out.dtype.newbyteorder("="), copy=False)


def _load_zarr3d(path: str, array_path: str, row_length: int, block_info=None) -> np.ndarray:
    frames, shape = frame_range(block_info, row_length)
    arr = _open(path, array_path)
    out = read_checked(arr, (frames,), path, array_path)
    return out.astype(out.dtype.newbyteorder("="), copy=False).reshape(*shape, *arr.shape[1:])
