"""Plain NumPy ``.npy`` 4D-STEM files: (Ry, Rx, Qy, Qx), (N, Qy, Qx) frames in scan order, or one (Qy, Qx)
pattern (a 1 × 1 scan)."""
from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np

from sendmap.errors import SendmapInputError
from sendmap.io._common import check_scan_shape, frame_range, scan_chunks, stack_scan_shape


def read_npy_dask(path, scan_shape: tuple[int, int] | None = None,
                  frames_per_chunk: int | None = None, *, required: bool = True) -> da.Array:
    """Lazy (Ry, Rx, Qy, Qx) array of a ``.npy`` file of integers or floats, in native byte order.

    A 4D file gives its own scan shape (``scan_shape``, if given, must equal its first two axes); a 3D
    (N, Qy, Qx) file is reshaped to ``scan_shape``, which is required unless N = 1 (a 2D file is one pattern,
    a 1 × 1 scan; see
    :func:`sendmap.io._common.stack_scan_shape`; ``required=False``: a 1 × N line). Chunked like
    :func:`sendmap.io.mib.read_mib_dask`: whole scan rows of at most ``frames_per_chunk`` frames (default:
    64 MiB), each chunk memory-mapping the file read-only by itself. SendmapInputError (naming the file)
    for a file that is not a valid ``.npy``, of the wrong number of dimensions, or not matching
    ``scan_shape``.
    """
    path = Path(path)
    array = _open(path)
    if array.ndim not in (2, 3, 4) or array.dtype.kind not in "iuf":
        raise SendmapInputError(
            f"{path}: expected a (Ry, Rx, Qy, Qx) or (N, Qy, Qx) array of numbers, or one (Qy, Qx) pattern, found "
            f"shape {array.shape} of {array.dtype}")
    if array.ndim == 2:
        scan_shape = check_scan_shape(scan_shape or (1, 1), 1, path)
    elif array.ndim == 4:
        if scan_shape is not None and tuple(scan_shape) != array.shape[:2]:
            raise SendmapInputError(
                f"{path}: scan_shape {tuple(scan_shape)} does not match the file's scan axes {array.shape[:2]}")
        scan_shape = array.shape[:2]
    else:
        scan_shape = stack_scan_shape(scan_shape, array.shape[0], path, required)
    frame_shape = array.shape[-2:]
    native = array.dtype.newbyteorder("=")
    chunks = scan_chunks(scan_shape, frame_shape, native.itemsize, frames_per_chunk)
    return da.map_blocks(_load_npy_block, chunks=chunks, dtype=native, meta=np.empty((0, 0, 0, 0), native),
                         path=path, row_length=scan_shape[1])


def _open(path: Path) -> np.ndarray:
    """Read-only memory map of a ``.npy`` file, or SendmapInputError naming the file."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise SendmapInputError(f"{path}: not a readable .npy file ({exc})") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise SendmapInputError(f"{path}: not a .npy file (a .npz archive?)")
    return array


def _load_npy_block(path: Path, row_length: int, block_info=None) -> np.ndarray:
    array = _open(path)
    native = array.dtype.newbyteorder("=")
    if array.ndim == 2:
        return np.array(array, dtype=native)[None, None]
    if array.ndim == 4:
        (r0, r1), (c0, c1) = block_info[None]["array-location"][:2]
        return np.array(array[r0:r1, c0:c1], dtype=native)
    frames, shape = frame_range(block_info, row_length)
    return np.array(array[frames], dtype=native).reshape(*shape, *array.shape[1:])
