"""The stored 4-D data as the stages after ingest read them, a block at a time: dense (the store's ``data`` or a zarr
input used in place) or sparse (``data_sparse``: each frame's non-zero pixels).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io._common import chunk_groups
from ..science.sparse import from_counts, index_dtype
from .store import read_row_direct


SPARSE_GROUP = "data_sparse"
"""The store's group of sparse data: ``index`` and ``value`` (n_blocks, cap), one row per ingest block holding the
flat pixel indices and counts of its frames' non-zero pixels in scan order, and ``nnz`` (Ry, Rx), the non-zero
pixels of each frame (see :mod:`sendmap.science.sparse`)."""


SPARSE_CHUNK_LEN = 1 << 20
"""Elements per chunk of a sparse row (2 MB of uint16): a 32 MB block of 2 × 10⁴ e⁻ 256² frames fills about two,
and a row stores only the chunks its non-zero pixels reach (the rest are the fill value, absent on disk)."""


def grid_blocks(scan_shape, chunk_yx, frame_bytes: int, block_mb: float) -> list[tuple[int, int, int, int]]:
    """Regions (y0, y1, x0, x1) made of whole chunks of ``chunk_yx``, about ``block_mb`` MB each."""
    ry, rx = scan_shape
    rows, cols = chunk_groups(scan_shape, chunk_yx, frame_bytes, block_mb * 1e6)
    return [(y, min(ry, y + rows), x, min(rx, x + cols)) for y in range(0, ry, rows) for x in range(0, rx, cols)]


def array_blocks(arr, block_mb: float) -> list[tuple[int, int, int, int]]:
    """Regions of a stored 4D zarr array aligned to its chunk grid, about ``block_mb`` MB each."""
    frame_bytes = arr.shape[2] * arr.shape[3] * arr.dtype.itemsize
    return grid_blocks(arr.shape[:2], arr.chunks[:2], frame_bytes, block_mb)


@dataclass(frozen=True)
class StoredData:
    """The frames of a result store as the later stages read them, a block at a time: dense (the store's ``data``
    or the zarr input used in place) or sparse (``data_sparse``, see :data:`SPARSE_GROUP`)."""

    store_path: str
    shape: tuple[int, int, int, int]
    """(Ry, Rx, Qy, Qx)."""
    dtype: np.dtype
    array: object = None
    """The dense zarr array; None when sparse."""
    blocks: tuple = ()
    """Sparse: the ingest blocks (y0, y1, x0, x1), one per row of ``index`` and ``value``."""
    nnz: np.ndarray | None = None
    """Sparse: non-zero pixels per frame (Ry, Rx)."""
    chunk_len: int = SPARSE_CHUNK_LEN

    @property
    def sparse(self) -> bool:
        return self.array is None

    @functools.cached_property
    def _rows(self) -> dict:
        """Sparse: the row of each block (a dict: a scan of 10⁴ blocks is not searched block by block)."""
        return {tuple(b): i for i, b in enumerate(self.blocks)}

    def rows_of(self, region) -> list[int]:
        """Sparse: the rows of the ingest blocks that make up ``region``: one block, or consecutive blocks of whole
        scan rows (:meth:`block_groups`)."""
        region = tuple(region)
        row = self._rows.get(region)
        if row is not None:
            return [row]
        y0, y1, x0, x1 = region
        rows, y = [], y0
        while y < y1:
            nxt = self._starts.get((y, x0))
            if nxt is None or self.blocks[nxt][3] != x1 or self.blocks[nxt][1] > y1:
                raise KeyError(f"{region} is not made of whole ingest blocks")
            rows.append(nxt)
            y = self.blocks[nxt][1]
        return rows

    @functools.cached_property
    def _starts(self) -> dict:
        return {(b[0], b[2]): i for i, b in enumerate(self.blocks)}

    def block_groups(self, regions, group: int) -> list[tuple[tuple[int, int, int, int], list]]:
        """``regions`` (from :meth:`block_regions`, in scan order) taken ``group`` at a time where they are whole
        scan rows: [(the group's region (y0, y1, 0, Rx), its regions)], a group never reaching past a multiple of
        ``group`` regions from the first (so groups of a chunk of ``k · group`` blocks stay inside it); regions of
        part of a row stay one each. Read as one region by :meth:`read` (sparse: one buffer)."""
        regions = [tuple(b) for b in regions]
        rx = self.shape[1]
        if group <= 1 or not all(b[2] == 0 and b[3] == rx for b in regions):
            return [(b, [b]) for b in regions]
        out = []
        for i in range(0, len(regions), group):
            part = regions[i:i + group]
            if any(a[1] != b[0] for a, b in zip(part, part[1:])):  # not consecutive: one each
                out += [(b, [b]) for b in part]
            else:
                out.append(((part[0][0], part[-1][1], 0, rx), part))
        return out

    def block_regions(self, block_mb: float) -> list[tuple[int, int, int, int]]:
        """Regions to process a block at a time: the ingest blocks (sparse), else whole chunks of about
        ``block_mb`` MB."""
        return list(self.blocks) if self.sparse else array_blocks(self.array, block_mb)

    def read(self, region: tuple[int, int, int, int]):
        """The frames of a region from :meth:`block_regions` as (B, Qy, Qx): an array, or
        :class:`~sendmap.science.sparse.SparseFrames` when stored sparse."""
        from .store import read_region_direct

        if self.sparse:
            y0, y1, x0, x1 = region
            nnz = self.nnz[y0:y1, x0:x1].ravel()
            rows = self.rows_of(region)
            base = Path(self.store_path, SPARSE_GROUP)
            if len(rows) == 1:
                n = int(nnz.sum())
                index = read_row_direct(base / "index", rows[0], n, index_dtype(self.shape[2:]), self.chunk_len)
                value = read_row_direct(base / "value", rows[0], n, self.dtype, self.chunk_len)
                return from_counts(nnz, index, value, self.shape[2:])
            # several ingest blocks: their rows decoded one after another into one buffer (each row's last chunk
            # whole, its tail then overwritten by the next row), in scan order since the blocks are whole rows
            sizes = [int(self.nnz[b[0]:b[1], b[2]:b[3]].sum()) for b in (self.blocks[r] for r in rows)]
            n = sum(sizes)
            index = np.empty(n + self.chunk_len, np.dtype(index_dtype(self.shape[2:])).newbyteorder("<"))
            value = np.empty(n + self.chunk_len, np.dtype(self.dtype).newbyteorder("<"))
            at = 0
            for r, m in zip(rows, sizes):
                read_row_direct(base / "index", r, m, index.dtype, self.chunk_len, out=index, offset=at)
                read_row_direct(base / "value", r, m, value.dtype, self.chunk_len, out=value, offset=at)
                at += m
            return from_counts(nnz, index[:n], value[:n], self.shape[2:])
        frames = read_region_direct(self.array, region)
        if frames is None:  # not a plain local blosc array (e.g. a zarr input used in place): through zarr
            y0, y1, x0, x1 = region
            frames = np.asarray(self.array[y0:y1, x0:x1])
        return frames.reshape(-1, *frames.shape[2:])

    def read_dense(self, region: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Any region (y0, y1, x0, x1) of probe positions (default: all) as a dense (y1-y0, x1-x0, Qy, Qx) array."""
        ry, rx, qy, qx = self.shape
        y0, y1, x0, x1 = region if region is not None else (0, ry, 0, rx)
        if not self.sparse:
            return np.asarray(self.array[y0:y1, x0:x1])
        out = np.zeros((y1 - y0, x1 - x0, qy, qx), self.dtype)
        for b in self.blocks:
            ya, yb, xa, xb = max(y0, b[0]), min(y1, b[1]), max(x0, b[2]), min(x1, b[3])
            if ya < yb and xa < xb:
                frames = self.read(b).dense().reshape(b[1] - b[0], b[3] - b[2], qy, qx)
                out[ya - y0:yb - y0, xa - x0:xb - x0] = frames[ya - b[0]:yb - b[0], xa - b[2]:xb - b[2]]
        return out


def open_stored(store_path: str) -> StoredData:
    """The stored frames of a result store (its own ``data`` or ``data_sparse``, or the zarr input used in place)."""
    import zarr

    g = zarr.open_group(store_path, mode="r")
    ref = g.attrs.get("data_ref") or {"store": store_path, "path": "data"}
    # the store's own data (a copied or moved store too: data_ref names the folder it was written in), else the
    # zarr input used in place (ingest then removes the store's own)
    if "data" in g or SPARSE_GROUP in g:
        if "data" not in g:
            sg = g[SPARSE_GROUP]
            ry, rx = sg.attrs["scan_shape"]
            qy, qx = sg.attrs["frame_shape"]
            return StoredData(store_path, (ry, rx, qy, qx), np.dtype(sg.attrs["dtype"]),
                              blocks=tuple(tuple(b) for b in sg.attrs["blocks"]), nnz=np.asarray(sg["nnz"]),
                              chunk_len=int(sg.attrs["chunk_len"]))
        arr = g["data"]
    elif ref["path"]:
        arr = zarr.open_array(ref["store"], mode="r", path=ref["path"])
    else:
        arr = zarr.open_array(ref["store"], mode="r")
    return StoredData(store_path, tuple(arr.shape), np.dtype(arr.dtype), array=arr)


def read_frames(store_path: str, region: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The stored frames of a result store, dense (Ry, Rx, Qy, Qx) (or a region of probe positions), however
    they are stored: for users and tests.

    >>> read_frames("results/demo/sendmap.zarr", (0, 2, 0, 3)).shape  # doctest: +SKIP
    (2, 3, 256, 256)
    """
    return open_stored(str(store_path)).read_dense(region)


def data_blocks(ctx):
    """The stored data (:class:`StoredData`) and the regions to process a block at a time (the
    ingest blocks where stored sparse, else regions of whole chunks of about ``compute.block_mb`` MB)."""
    stored = open_stored(ctx.store_path)
    return stored, stored.block_regions(ctx.cfg.compute.block_mb)


_DATA_ARRAYS: dict = {}
"""Per process: the opened stored data of each store (zarr's metadata reads funnel through one event-loop
thread; opening it for every block serialised the loader threads)."""


def read_store_block(item):
    """load(): frames (B, Qy, Qx) of one region of the store (an array, or
    :class:`~sendmap.science.sparse.SparseFrames` where stored sparse), and that region's centres (B, 2) when the
    item carries them (item = (store path, (y0, y1, x0, x1), centres (y1-y0, x1-x0, 2) or None))."""
    path, region, centres = item
    stored = _DATA_ARRAYS.get(path)
    if stored is None:
        stored = _DATA_ARRAYS[path] = open_stored(path)
    frames = stored.read(tuple(region))
    return item, frames, (None if centres is None else np.asarray(centres, dtype=np.float64).reshape(-1, 2))


def forget_store_data(store_path: str) -> None:
    """Drop this process's opened stored data of a store (:func:`read_store_block`): its data may have been
    re-ingested since."""
    _DATA_ARRAYS.pop(store_path, None)
