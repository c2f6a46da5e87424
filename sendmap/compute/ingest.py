"""Per-block compute of the ingest stage, as workers run it: :class:`IngestLoad` reads one stored block's input frames,
:class:`IngestBlock` bins, checks, writes and reduces them (both picklable, for every scheduler).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.data import SPARSE_CHUNK_LEN, SPARSE_GROUP
from ..engine.store import write_region_direct
from ..errors import SendmapInputError
from ..io import Dataset, open_dataset
from ..science.frames import bin_block, frame_statistics
from ..science.sparse import to_sparse


@dataclass(frozen=True)
class IngestLoad:
    """load(): the input frames of one stored block (a picklable callable for every scheduler)."""

    path: str
    fmt: str
    scan_shape: tuple | None
    dataset: str | None
    raw: dict | None
    frames_per_chunk: int | None

    def __call__(self, item):
        plan, block = item[0], item[1]
        y0, y1, x0, x1 = plan.input_region(block)
        qy0, qy1, qx0, qx1 = plan.crop_q
        ds = _open_cached(self)
        if ds.read_region is not None:  # straight from the file: no dask graph per block
            part = ds.read_region((y0, y1, x0, x1))
            if (qy0, qy1, qx0, qx1) != (0, part.shape[2], 0, part.shape[3]):
                part = np.ascontiguousarray(part[:, :, qy0:qy1, qx0:qx1])
            return item, part
        part = ds.data[y0:y1, x0:x1, qy0:qy1, qx0:qx1]
        return item, np.asarray(part.compute(scheduler="synchronous"))


_OPEN: dict = {}


def _open_cached(load: IngestLoad) -> Dataset:
    """The dataset, opened once per process (the header parse of a large file is not repeated per block)."""
    ds = _OPEN.get(load)
    if ds is None:
        _OPEN.clear()
        ds = _OPEN[load] = open_dataset(load.path, load.fmt, load.scan_shape, dataset=load.dataset, raw=load.raw,
                                        frames_per_chunk=load.frames_per_chunk)
    return ds


@dataclass(frozen=True)
class IngestBlock:
    """process(): bin, check, write and reduce one block."""

    bf_mask: np.ndarray
    adf_mask: np.ndarray
    nonfinite: str
    target: tuple | None
    """(store path, array path) to write into, or None where the data are used in place."""

    def __call__(self, loaded):
        (plan, block, _), frames = loaded
        y0, y1, x0, x1 = block
        data = bin_block(frames, plan.bin_r, plan.bin_q, plan.dtype)
        flat = data.reshape(-1, *data.shape[2:])
        st = frame_statistics(flat, self.bf_mask, self.adf_mask)
        n_bad = int(st["nonfinite"].sum())
        if n_bad and self.nonfinite == "error":
            iy, ix, qy, qx = np.argwhere(~np.isfinite(data))[0]
            raise SendmapInputError(
                f"the input holds NaN or infinite values: first at stored scan position ({y0 + iy}, {x0 + ix}), "
                f"detector pixel ({qy}, {qx}); {n_bad} such values in that block. Set input.nonfinite: mask to "
                "set them to 0 and mask their detector pixels")
        shape = (y1 - y0, x1 - x0)
        out = {"sum": st["sum"], "max": st["max"], "nonfinite": st["nonfinite"], "total": st["total"].reshape(shape),
               "bf": st["bf"].reshape(shape), "adf": st["adf"].reshape(shape)}
        if self.target is not None:  # (used in place: the reduction left them out, calibrate masks their pixels)
            if n_bad:
                data = np.where(np.isfinite(data), data, 0).astype(data.dtype)
            store, name = self.target
            if plan.sparse:  # this block's row (its index in the plan) of the index and value arrays
                sp = to_sparse(data.reshape(-1, *data.shape[2:]))
                row = loaded[0][2]
                for part, values in (("index", sp.index), ("value", sp.value)):
                    write_region_direct(Path(store, SPARSE_GROUP, part), (1, SPARSE_CHUNK_LEN), (row, 0), values[None])
                out["nnz"] = np.diff(sp.offsets).reshape(shape)
            else:
                write_region_direct(Path(store, name), (*plan.chunks, *plan.frame_shape), (y0, x0, 0, 0), data)
        return block, out
