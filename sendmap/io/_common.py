"""Helpers every reader shares: the scan shape check and the chunk plan.

Reader contract (every ``sendmap.io.<format>`` module)
------------------------------------------------------
A reader returns a lazy dask array (Ry, Rx, Qy, Qx) in native byte order, built with
``dask.array.map_blocks`` from a module-level loader function and plain picklable parameters (path,
offsets, dtype...). Chunks come from :func:`scan_chunks`: runs of consecutive frames, whole scan rows
where a row fits in :data:`CHUNK_BYTES`. Each chunk opens the file read-only by itself and closes it,
so the graph pickles and runs on threads, processes or a cluster, and never holds the whole dataset.
Bad input raises :class:`sendmap.errors.SendmapInputError` naming the file (and byte offset where
there is one).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sendmap.errors import SendmapInputError

CHUNK_BYTES = 64 * 2**20
"""Largest default chunk (native bytes); chunks are whole scan rows, so 32-64 MiB where a row fits."""



def check_scan_shape(scan_shape, n_frames: int, path: Path) -> tuple[int, int]:
    """``scan_shape`` as (Ry, Rx) ints, or SendmapInputError if it is not two positive ints making n_frames."""
    try:
        ry, rx = (int(v) for v in scan_shape)
    except (TypeError, ValueError):
        raise SendmapInputError(f"{path}: scan_shape must be two integers (Ry, Rx), not {scan_shape!r}") from None
    if ry < 1 or rx < 1 or ry * rx != n_frames:
        raise SendmapInputError(
            f"{path}: scan_shape {ry} x {rx} = {ry * rx} probe positions does not match the {n_frames} frames "
            "in the file")
    return ry, rx


def stack_scan_shape(scan_shape, n_frames: int, path: Path, required: bool = True) -> tuple[int, int]:
    """The scan shape of a stack of ``n_frames`` frames that does not record one: ``scan_shape`` checked, else
    1 × 1 for a single frame; more frames without ``scan_shape`` are refused (``required``: a stack could be any
    scan, and a silent 1 × N line would mislabel every position) or read as a 1 × N line (``required=False``,
    for ``sendmap info``)."""
    if scan_shape is None:
        if n_frames > 1 and required:
            raise SendmapInputError(
                f"{path}: a stack of {n_frames} frames that does not record its scan shape; set input.scan_shape: "
                f"[Ry, Rx] with Ry x Rx = {n_frames} (e.g. [1, {n_frames}] for a line or a series of patterns)")
        scan_shape = (1, n_frames)
    return check_scan_shape(scan_shape, n_frames, path)


def scan_chunks(scan_shape: tuple[int, int], frame_shape: tuple[int, int], itemsize: int,
                 frames_per_chunk: int | None) -> tuple[tuple[int, ...], ...]:
    """Dask chunks of a (Ry, Rx, Qy, Qx) array, each a run of consecutive frames (whole rows or part of one)."""
    ry, rx = scan_shape
    if frames_per_chunk is None:
        frames_per_chunk = max(1, CHUNK_BYTES // (frame_shape[0] * frame_shape[1] * itemsize))
    elif not isinstance(frames_per_chunk, (int, np.integer)) or frames_per_chunk < 1:
        raise SendmapInputError(f"frames_per_chunk must be a positive integer, not {frames_per_chunk!r}")
    rows, cols = (frames_per_chunk // rx, rx) if frames_per_chunk >= rx else (1, frames_per_chunk)
    from dask.array.core import normalize_chunks  # here, not at import: a re-run that reuses ingest needs no dask

    return normalize_chunks((rows, cols, -1, -1), shape=(ry, rx, *frame_shape))


def frame_range(block_info: dict, row_length: int) -> tuple[slice, tuple[int, int]]:
    """Frames of the chunk described by dask's ``block_info`` (consecutive, see scan_chunks) and its scan shape."""
    (r0, r1), (c0, c1) = block_info[None]["array-location"][:2]
    return slice(r0 * row_length + c0, (r1 - 1) * row_length + c1), (r1 - r0, c1 - c0)


def chunk_groups(scan_shape: tuple[int, int], chunk_yx: tuple[int, int], frame_bytes: int,
                 target_bytes: float) -> tuple[int, int]:
    """(rows, columns) of a group of whole stored chunks of ``chunk_yx`` positions, about ``target_bytes``:
    k chunk-rows where chunks hold whole scan rows, else k chunks along one chunk-row."""
    ry, rx = scan_shape
    cy, cx = chunk_yx
    k = max(1, int(target_bytes // max(1, cy * cx * frame_bytes)))
    return (cy * k, rx) if cx >= rx else (cy, min(rx, cx * k))
