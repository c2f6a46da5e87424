"""The ingest stage: stream the input into ``<store>/data`` in one pass, with everything later stages
need from the whole dataset.

One read of every input chunk gives: the stored (optionally cropped and binned) data, compressed
losslessly; the sum, mean and maximum patterns; total counts, virtual bright-field and annular
dark-field signal per position; and the count of non-finite values per detector pixel. Memory is
bounded by (chunk size × blocks in flight), not by the dataset: blocks are read on a background
thread (or by workers), reduced by a numba kernel, written, and dropped.

A zarr input that needs no crop or binning is used in place (``input.in_place``): nothing is copied,
the store records where the data live (root attr ``data_ref``) and the pass only computes the
reductions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config
from .errors import SendmapInputError
from .io import Dataset, open_dataset
from .io._common import chunk_groups
from .science.frames import bin_block, binned_dtype, frame_statistics
from .store import write_region_direct


@dataclass(frozen=True)
class IngestPlan:
    """How input positions and pixels map to stored ones (crop, then bin), and the stored blocks."""

    crop_r: tuple[int, int, int, int]
    """[y0, y1, x0, x1] input probe positions used (trimmed to whole bins)."""
    crop_q: tuple[int, int, int, int]
    """[y0, y1, x0, x1] input detector pixels used (trimmed to whole bins)."""
    bin_r: int
    bin_q: int
    scan_shape: tuple[int, int]
    """Stored (Ry, Rx)."""
    frame_shape: tuple[int, int]
    """Stored (Qy, Qx)."""
    dtype: np.dtype
    """Stored pixel type (the input's, widened where binning sums could overflow)."""
    chunks: tuple[int, int]
    """Stored chunk size along (Ry, Rx); a chunk holds whole frames."""
    blocks: tuple[tuple[int, int, int, int], ...]
    """Stored regions (y0, y1, x0, x1) processed per task: whole chunks."""

    @property
    def chunk_shape(self) -> tuple[int, int, int, int]:
        return (*self.chunks, *self.frame_shape)

    def input_region(self, block: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """The input probe positions (y0, y1, x0, x1) that make up a stored block."""
        y0, y1, x0, x1 = block
        b, (cy, _, cx, _) = self.bin_r, self.crop_r
        return cy + y0 * b, cy + y1 * b, cx + x0 * b, cx + x1 * b

    @property
    def identity(self) -> bool:
        """True where the stored data are the input as it is (no crop, no binning)."""
        return self.bin_r == 1 and self.bin_q == 1 and self.crop_r[::2] == (0, 0) and self.crop_q[::2] == (0, 0)


def _crop(region, shape, what: str, bins: int, log) -> tuple[int, int, int, int]:
    """Clip a crop [y0, y1, x0, x1] to ``shape`` (error if outside) and trim it to whole bins."""
    ny, nx = shape
    y0, y1, x0, x1 = region if region is not None else (0, ny, 0, nx)
    if y1 > ny or x1 > nx:
        raise SendmapInputError(f"input.crop_{what} {[y0, y1, x0, x1]} reaches beyond the {what.upper()} axes "
                                f"({ny}, {nx}) of the input")
    ty, tx = (y1 - y0) // bins * bins, (x1 - x0) // bins * bins
    if ty == 0 or tx == 0:
        raise SendmapInputError(f"input.bin_{what} = {bins} is larger than the {what.upper()} extent "
                                f"({y1 - y0}, {x1 - x0})")
    if (ty, tx) != (y1 - y0, x1 - x0):
        log(f"[sendmap] ingest: {what.upper()} extent ({y1 - y0}, {x1 - x0}) is not a multiple of bin_{what} = {bins}; "
            f"the last {y1 - y0 - ty} rows and {x1 - x0 - tx} columns are left out")
    return y0, y0 + ty, x0, x0 + tx


def plan_ingest(cfg: Config, scan_shape, frame_shape, dtype, log=print) -> IngestPlan:
    """The crop, binning, stored shapes and dtype, chunks of about ``compute.chunk_mb`` and blocks of
    about ``compute.block_mb``."""
    inp = cfg.input
    crop_r = _crop(inp.crop_r, scan_shape, "r", inp.bin_r, log)
    crop_q = _crop(inp.crop_q, frame_shape, "q", inp.bin_q, log)
    ry, rx = (crop_r[1] - crop_r[0]) // inp.bin_r, (crop_r[3] - crop_r[2]) // inp.bin_r
    qy, qx = (crop_q[1] - crop_q[0]) // inp.bin_q, (crop_q[3] - crop_q[2]) // inp.bin_q
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    stored = binned_dtype(dtype, inp.bin_r ** 2 * inp.bin_q ** 2)
    frame_bytes = qy * qx * stored.itemsize
    chunks = chunk_grid((ry, rx), frame_bytes, cfg.compute.chunk_mb)
    blocks = grid_blocks((ry, rx), chunks, frame_bytes, cfg.compute.block_mb)
    return IngestPlan(crop_r, crop_q, inp.bin_r, inp.bin_q, (ry, rx), (qy, qx), stored, chunks, tuple(blocks))


def chunk_grid(scan_shape, frame_bytes: int, chunk_mb: float) -> tuple[int, int]:
    """Chunk size (rows, columns) along the scan for chunks of about ``chunk_mb`` MB: whole scan rows
    where a row is at most twice that, else equal pieces of one row."""
    ry, rx = scan_shape
    target = max(1, chunk_mb * 1e6 / frame_bytes)
    if 2 * target >= rx:
        return max(1, min(ry, round(target / rx))), rx
    pieces = math.ceil(rx / target)
    return 1, math.ceil(rx / pieces)


def grid_blocks(scan_shape, chunk_yx, frame_bytes: int, block_mb: float) -> list[tuple[int, int, int, int]]:
    """Regions (y0, y1, x0, x1) made of whole chunks of ``chunk_yx``, about ``block_mb`` MB each."""
    ry, rx = scan_shape
    rows, cols = chunk_groups(scan_shape, chunk_yx, frame_bytes, block_mb * 1e6)
    return [(y, min(ry, y + rows), x, min(rx, x + cols)) for y in range(0, ry, rows) for x in range(0, rx, cols)]


def array_blocks(arr, block_mb: float) -> list[tuple[int, int, int, int]]:
    """Regions of a stored 4D zarr array aligned to its chunk grid, about ``block_mb`` MB each."""
    frame_bytes = arr.shape[2] * arr.shape[3] * arr.dtype.itemsize
    return grid_blocks(arr.shape[:2], arr.chunks[:2], frame_bytes, block_mb)


# --------------------------------------------------------------------------------------------- per block

@dataclass(frozen=True)
class _Load:
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


def _open_cached(load: _Load) -> Dataset:
    """The dataset, opened once per process (the header parse of a large file is not repeated per block)."""
    ds = _OPEN.get(load)
    if ds is None:
        _OPEN.clear()
        ds = _OPEN[load] = open_dataset(load.path, load.fmt, load.scan_shape, dataset=load.dataset, raw=load.raw,
                                        frames_per_chunk=load.frames_per_chunk)
    return ds


@dataclass(frozen=True)
class _Process:
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
        if self.target is not None:  # (used in place: the reduction left them out, calibrate masks their pixels)
            if n_bad:
                data = np.where(np.isfinite(data), data, 0).astype(data.dtype)
            store, name = self.target
            write_region_direct(Path(store, name), (*plan.chunks, *plan.frame_shape), (y0, x0, 0, 0), data)
        shape = (y1 - y0, x1 - x0)
        return block, {"sum": st["sum"], "max": st["max"], "nonfinite": st["nonfinite"],
                       "total": st["total"].reshape(shape), "bf": st["bf"].reshape(shape),
                       "adf": st["adf"].reshape(shape)}


def virtual_detector_masks(mean_pattern: np.ndarray, disk_radius_px: float) -> tuple[np.ndarray, np.ndarray, list]:
    """Bright-field disk (radius = the probe-disk radius) and annular dark field (2× that radius to the
    largest circle inside the detector) around the brightest disk of ``mean_pattern``: fixed detector
    regions for quick-look images of the raw data (the profiles stage adds descan-corrected ones)."""
    from .science.centre import brightest_disk_guess

    cy, cx = brightest_disk_guess(mean_pattern, disk_radius_px)
    yy, xx = np.indices(mean_pattern.shape)
    r = np.hypot(yy - cy, xx - cx)
    r_out = min(cy, cx, mean_pattern.shape[0] - 1 - cy, mean_pattern.shape[1] - 1 - cx)
    r_in = 2.0 * disk_radius_px
    if r_out <= r_in:  # a detector too small (or a centre too near its edge) for an annulus: use all beyond
        r_out = np.inf
    return r <= disk_radius_px, (r >= r_in) & (r < r_out), [float(cy), float(cx)]


# --------------------------------------------------------------------------------------------- stage

def _in_place_target(ctx, plan: IngestPlan):
    ds, inp = ctx.dataset, ctx.cfg.input
    if ds.format != "zarr" or not inp.in_place or not plan.identity or len(ds.shape) != 4:
        return None
    if ds.metadata.get("dtype_on_disk") and np.dtype(ds.metadata["dtype_on_disk"]) != plan.dtype:
        return None
    return {"store": str(Path(ds.path).resolve()), "path": ds.metadata.get("array_path", "")}


def stage_ingest(ctx) -> None:
    """Stream the raw dataset into ``data`` (Ry, Rx, Qy, Qx), compressed, with its whole-dataset reductions."""
    from .execute import run_blocks
    from .pipeline import disk_radius_px, prefetch_imports
    from .store import compressor, set_attrs, write_array

    cfg, ds, g = ctx.cfg, ctx.dataset, ctx.group
    plan = plan_ingest(cfg, ds.scan_shape, ds.frame_shape, ds.dtype, ctx.log)
    ref = _in_place_target(ctx, plan)
    if ref is not None:
        from .io.zarrarray import open_zarr_array

        arr, _ = open_zarr_array(ref["store"], ref["path"] or None)
        blocks = array_blocks(arr, cfg.compute.block_mb)
        plan = IngestPlan(plan.crop_r, plan.crop_q, 1, 1, plan.scan_shape, plan.frame_shape, plan.dtype,
                          tuple(arr.chunks[:2]), tuple(blocks))
        target = None
        ctx.log(f"[sendmap] ingest: using the zarr array {ref['store']}:{ref['path'] or '/'} in place (no copy)")
        if "data" in g:
            del g["data"]
    else:
        ref = {"store": ctx.store_path, "path": "data"}
        target = (ctx.store_path, "data")
    progress = _ingest_progress(ctx, plan, ref)
    if target is not None and not progress.resumed:
        g.create_array("data", shape=(*plan.scan_shape, *plan.frame_shape), dtype=plan.dtype, chunks=plan.chunk_shape,
                       compressors=compressor(), overwrite=True, fill_value=0)
    # input chunks matched to the stored blocks, so each input chunk is read once
    y0, y1, x0, x1 = plan.input_region(plan.blocks[0])
    if target is None:  # in place: dask chunks = the blocks, groups of whole stored chunks
        fpc = (y1 - y0) * (x1 - x0)
    elif x1 - x0 >= ds.scan_shape[1] - plan.crop_r[2] or plan.bin_r > 1:  # blocks of whole input rows
        fpc = (y1 - y0) * ds.scan_shape[1]
    else:  # pieces of one row
        fpc = x1 - x0
    inp = cfg.input
    load = _Load(str(ds.path), ds.format, tuple(inp.scan_shape) if inp.scan_shape else None, inp.dataset,
                 inp.raw.model_dump() if inp.raw else None, int(fpc))
    # the virtual-detector regions come from the first block, which is then processed like every other
    r_disk = disk_radius_px(cfg)
    items = [(plan, b, i) for i, b in enumerate(plan.blocks)]
    saved = progress.arrays
    first = None
    if progress.resumed:  # the virtual detectors and reductions of the finished blocks, as the killed run left them
        bf_mask, adf_mask, vcentre = saved["bf_mask"], saved["adf_mask"], saved["vcentre"].tolist()
        ctx.log(f"[sendmap] ingest: resuming, {len(progress.done)}/{len(items)} blocks done")
    else:
        first = load(items[0])
        mean_first = np.nanmean(first[1], axis=(0, 1))[None, None]  # crop_q applied, not yet binned
        mean_first = bin_block(mean_first, 1, plan.bin_q, np.float64)[0, 0]
        bf_mask, adf_mask, vcentre = virtual_detector_masks(np.nan_to_num(mean_first), r_disk)
    process = _Process(bf_mask, adf_mask, inp.nonfinite, target)

    total_sum = saved["sum"] if progress.resumed else np.zeros(plan.frame_shape)
    total_max = saved["max"] if progress.resumed else np.full(plan.frame_shape, -np.inf)
    nonfinite = saved["nonfinite"] if progress.resumed else np.zeros(plan.frame_shape, np.int64)
    maps = {k: saved[k] if progress.resumed else np.zeros(plan.scan_shape) for k in ("total", "bf", "adf")}

    def collect(_, res):
        (y0, y1, x0, x1), out = res
        total_sum[...] += out["sum"]
        np.maximum(total_max, out["max"], out=total_max)
        nonfinite[...] += out["nonfinite"]
        for k in maps:
            maps[k][y0:y1, x0:x1] = out[k]
        progress.record([(y0, y1, x0, x1)], {"bf_mask": bf_mask, "adf_mask": adf_mask, "vcentre": np.asarray(vcentre),
                                             "sum": total_sum, "max": total_max, "nonfinite": nonfinite, **maps})

    frame_bytes = int(np.prod(ds.frame_shape)) * ds.dtype.itemsize
    sizes = [(b[1] - b[0]) * (b[3] - b[2]) * plan.bin_r ** 2 * frame_bytes for b in plan.blocks]
    if first is not None:
        collect(0, process(first))
        del first
    todo = [i for i in range(len(items)) if not progress.is_done(items[i][1])]
    ctx.stage_info.update(blocks=len(items), blocks_resumed=len(items) - len(todo) if progress.resumed else 0)
    if len(todo) > 2:  # the later stages' imports, while the blocks run (see prefetch_imports)
        prefetch_imports()
    run_blocks(load, process, [items[i] for i in todo], cfg.compute, "ingest", on_result=collect,
               sizes=[sizes[i] for i in todo], thread_safe=True)
    n = maps["total"].size
    total_max[~np.isfinite(total_max)] = 0.0
    write_array(g, "ingest/sum_pattern", total_sum, {"units": "counts summed over all positions"})
    write_array(g, "ingest/mean_pattern", total_sum / n, {"units": "counts per position"})
    write_array(g, "ingest/max_pattern", total_max, {"units": "counts"})
    write_array(g, "ingest/total_counts", maps["total"], {"units": "counts per position"})
    write_array(g, "ingest/virtual_bf", maps["bf"], {"units": "counts", "centre_yx_px": vcentre,
                                                       "radius_px": r_disk, "note": "fixed detector disk, no descan"})
    write_array(g, "ingest/virtual_adf", maps["adf"], {"units": "counts", "centre_yx_px": vcentre,
                                                         "inner_radius_px": 2 * r_disk, "note": "fixed annulus"})
    write_array(g, "ingest/nonfinite_count", nonfinite, {"units": "NaN/inf values per detector pixel"})
    n_bad = int(nonfinite.sum())
    if n_bad:
        ctx.log(f"[sendmap] ingest: {n_bad} NaN/inf values in {int((nonfinite > 0).sum())} detector pixels set to 0; "
                "those pixels are masked (input.nonfinite: mask)")
    set_attrs(g, data_ref=ref, ingest={
        "crop_r": list(plan.crop_r), "crop_q": list(plan.crop_q), "bin_r": plan.bin_r, "bin_q": plan.bin_q,
        "scan_shape": list(plan.scan_shape), "frame_shape": list(plan.frame_shape), "dtype": plan.dtype.str,
        "chunks": list(plan.chunk_shape), "in_place": target is None, "nonfinite_values": n_bad,
        "input_bytes": int(math.prod(ds.shape) * ds.dtype.itemsize)})


def _ingest_progress(ctx, plan: IngestPlan, ref: dict):
    """The resume record of this ingest (see :mod:`sendmap.resume`): used when the key and the block plan match
    and, where the data are copied, the stored ``data`` array is the one that plan creates."""
    from .resume import BlockProgress
    from .store import remove_stray_temps

    rplan = {"scan_shape": plan.scan_shape, "frame_shape": plan.frame_shape, "dtype": plan.dtype.str,
             "chunks": plan.chunks, "blocks": plan.blocks, "crop_r": plan.crop_r, "crop_q": plan.crop_q,
             "bin_r": plan.bin_r, "bin_q": plan.bin_q, "data": ref}
    progress = BlockProgress(ctx.out_dir, "ingest", ctx.stage_key, rplan, enabled=ctx.resume)
    if progress.resumed and ref["path"] == "data" and ref["store"] == ctx.store_path:
        arr = ctx.group.get("data")
        if arr is None or tuple(arr.shape) != (*plan.scan_shape, *plan.frame_shape) \
                or tuple(arr.chunks) != plan.chunk_shape or np.dtype(arr.dtype) != plan.dtype:
            progress.clear()
            progress.done, progress.arrays, progress.resumed = set(), {}, False
        else:
            remove_stray_temps(Path(ctx.store_path, "data"))
    return progress


def open_data(store_path: str):
    """The stored 4D data array of a result store (its own ``data`` or the zarr input used in place)."""
    import zarr

    g = zarr.open_group(store_path, mode="r")
    ref = g.attrs.get("data_ref") or {"store": store_path, "path": "data"}
    if ref["store"] == store_path and ref["path"] == "data":
        return g["data"]
    return zarr.open_array(ref["store"], mode="r", path=ref["path"]) if ref["path"] else \
        zarr.open_array(ref["store"], mode="r")
