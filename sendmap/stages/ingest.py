"""The ingest stage: stream the input into ``<store>/data`` in one pass, with everything later stages
need from the whole dataset.

One read of every input chunk gives: the stored (optionally cropped and binned) data, compressed
losslessly, as each frame's non-zero pixels where the data are sparse counts (:data:`SPARSE_GROUP`) or as whole
frames; the sum, mean and maximum patterns; total counts, virtual bright-field and annular
dark-field signal per position; and the count of non-finite values per detector pixel. Memory is
bounded by (chunk size × blocks in flight), not by the dataset: blocks are read on a background
thread (or by workers), reduced by a numba kernel, written, and dropped.

A zarr input that needs no crop or binning is used in place (``input.in_place``): nothing is copied,
the store records where the data live (root attr ``data_ref``) and the pass only computes the
reductions.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..compute.ingest import IngestBlock, IngestLoad
from ..config import Config
from ..engine.data import SPARSE_CHUNK_LEN, SPARSE_GROUP, array_blocks, grid_blocks
from ..errors import SendmapInputError
from ..science.frames import bin_block, binned_dtype
from ..science.sparse import SPARSE_MAX_FILL, index_dtype


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
    sparse: bool = False
    """Frames stored as their non-zero pixels (``data_sparse``, one row per block) instead of whole (``data``)."""

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


VIRTUAL_SAMPLE_FRAMES = 64
"""The ingest virtual detectors are centred on the brightest disk of the mean of the scan's first this many
positions (whole rows): enough counts for the disk of a 10³ e⁻ pattern, the same whatever compute.block_mb."""


VIRTUAL_SAMPLE_BYTES = 256e6
"""... and at most this many bytes of frames (64 frames of 1k² float32 = 256 MB), so a large detector's sample fits
in memory."""


def virtual_sample(scan_shape, frame_bytes: int) -> tuple[int, int, int, int]:
    """The stored region (y0, y1, x0, x1) whose mean pattern centres the ingest virtual detectors: the scan's first
    :data:`VIRTUAL_SAMPLE_FRAMES` positions (at most :data:`VIRTUAL_SAMPLE_BYTES`), whole rows where a row is shorter.
    Depends on the scan and frame size only, never on the block size.

    >>> virtual_sample((12, 16), 128 * 128 * 2), virtual_sample((1, 200), 8)
    ((0, 4, 0, 16), (0, 1, 0, 64))
    """
    sy, sx = int(scan_shape[0]), int(scan_shape[1])
    n = max(1, min(VIRTUAL_SAMPLE_FRAMES, int(VIRTUAL_SAMPLE_BYTES // max(int(frame_bytes), 1))))
    cols = min(sx, n)
    return 0, min(sy, max(1, -(-n // cols))), 0, cols


def virtual_detector_masks(mean_pattern: np.ndarray, disk_radius_px: float) -> tuple[np.ndarray, np.ndarray, list]:
    """Bright-field disk (radius = the probe-disk radius) and annular dark field (2× that radius to the
    largest circle inside the detector) around the brightest disk of ``mean_pattern``: fixed detector
    regions for quick-look images of the raw data (the profiles stage adds descan-corrected ones)."""
    from ..science.centre import brightest_disk_guess

    cy, cx = brightest_disk_guess(mean_pattern, disk_radius_px)
    yy, xx = np.indices(mean_pattern.shape)
    r = np.hypot(yy - cy, xx - cx)
    r_out = min(cy, cx, mean_pattern.shape[0] - 1 - cy, mean_pattern.shape[1] - 1 - cx)
    r_in = 2.0 * disk_radius_px
    if r_out <= r_in:  # a detector too small (or a centre too near its edge) for an annulus: use all beyond
        r_out = np.inf
    return r <= disk_radius_px, (r >= r_in) & (r < r_out), [float(cy), float(cx)]


def _in_place_target(ctx, plan: IngestPlan):
    ds, inp = ctx.dataset, ctx.cfg.input
    if ds.format != "zarr" or not inp.in_place or not plan.identity or len(ds.shape) != 4:
        return None
    if ds.metadata.get("dtype_on_disk") and np.dtype(ds.metadata["dtype_on_disk"]) != plan.dtype:
        return None
    return {"store": str(Path(ds.path).resolve()), "path": ds.metadata.get("array_path", "")}


def stage_ingest(ctx) -> None:
    """Stream the raw dataset into the store, compressed (``data_sparse``: the non-zero pixels of counted frames, or
    ``data`` (Ry, Rx, Qy, Qx): whole frames; ``input.store_layout``), with its whole-dataset reductions."""
    from ..engine.execute import run_blocks
    from ..engine.execute import prefetch_imports
    from .settings import disk_radius_px
    from ..engine.store import set_attrs, write_array

    cfg, ds, g = ctx.cfg, ctx.dataset, ctx.group
    plan = plan_ingest(cfg, ds.scan_shape, ds.frame_shape, ds.dtype, ctx.log)
    ref = _in_place_target(ctx, plan)
    if ref is not None:
        from ..io.zarrarray import open_zarr_array

        arr, _ = open_zarr_array(ref["store"], ref["path"] or None)
        blocks = array_blocks(arr, cfg.compute.block_mb)
        plan = IngestPlan(plan.crop_r, plan.crop_q, 1, 1, plan.scan_shape, plan.frame_shape, plan.dtype,
                          tuple(arr.chunks[:2]), tuple(blocks))
        target = None
        ctx.log(f"[sendmap] ingest: using the zarr array {ref['store']}:{ref['path'] or '/'} in place (no copy)")
        _drop_stored_data(g)
    else:
        ref = {"store": ctx.store_path, "path": "data"}
        target = (ctx.store_path, "data")
    progress = _ingest_progress(ctx, plan, ref)
    # input chunks matched to the stored blocks, so each input chunk is read once
    y0, y1, x0, x1 = plan.input_region(plan.blocks[0])
    if target is None:  # in place: dask chunks = the blocks, groups of whole stored chunks
        fpc = (y1 - y0) * (x1 - x0)
    elif x1 - x0 >= ds.scan_shape[1] - plan.crop_r[2] or plan.bin_r > 1:  # blocks of whole input rows
        fpc = (y1 - y0) * ds.scan_shape[1]
    else:  # pieces of one row
        fpc = x1 - x0
    inp = cfg.input
    load = IngestLoad(str(ds.path), ds.format, tuple(inp.scan_shape) if inp.scan_shape else None, inp.dataset,
                 inp.raw.model_dump() if inp.raw else None, int(fpc))
    # the virtual-detector regions come from a fixed sample of the scan (its first positions, whole rows: see
    # virtual_sample), not from the first block, whose size depends on compute.block_mb; the blocks that hold the
    # sample are read first, kept, and processed like every other once the regions are known (each frame read once)
    r_disk = disk_radius_px(cfg)
    items = [(plan, b, i) for i, b in enumerate(plan.blocks)]
    saved = progress.arrays
    pre: list = []
    if progress.resumed:  # the virtual detectors and reductions of the finished blocks, as the killed run left them
        bf_mask, adf_mask, vcentre = saved["bf_mask"], saved["adf_mask"], saved["vcentre"].tolist()
        ctx.log(f"[sendmap] ingest: resuming, {len(progress.done)}/{len(items)} blocks done")
    else:
        sample = virtual_sample(plan.scan_shape, int(np.prod(ds.frame_shape)) * ds.dtype.itemsize)
        sy0, sy1, sx0, sx1 = plan.input_region(sample)
        acc_s = np.zeros((plan.crop_q[1] - plan.crop_q[0], plan.crop_q[3] - plan.crop_q[2]))
        acc_n = np.zeros(acc_s.shape)
        for i, it in enumerate(items):
            b = it[1]
            if i > 0 and not (b[0] < sample[1] and b[1] > sample[0] and b[2] < sample[3] and b[3] > sample[2]):
                continue
            loaded = load(it)
            pre.append(loaded)
            iy0, iy1, ix0, ix1 = plan.input_region(b)
            part = loaded[1][max(sy0, iy0) - iy0:max(0, min(sy1, iy1) - iy0),
                             max(sx0, ix0) - ix0:max(0, min(sx1, ix1) - ix0)]
            if part.size:
                fin = np.isfinite(part)
                acc_s = acc_s + np.where(fin, part, 0).sum(axis=(0, 1), dtype=np.float64)
                acc_n = acc_n + fin.sum(axis=(0, 1))
        mean_first = (acc_s / np.maximum(acc_n, 1))[None, None]  # crop_q applied, not yet binned
        mean_first = bin_block(mean_first, 1, plan.bin_q, np.float64)[0, 0]
        bf_mask, adf_mask, vcentre = virtual_detector_masks(np.nan_to_num(mean_first), r_disk)
    if target is not None:
        if progress.resumed:
            sparse = bool(saved["sparse"])
        else:
            sparse = choose_sparse(inp.store_layout, plan.dtype,
                                   bin_block(pre[0][1], plan.bin_r, plan.bin_q, plan.dtype))
            _create_data_arrays(g, plan, sparse)
        plan = dataclasses.replace(plan, sparse=sparse)
        items = [(plan, b, i) for i, b in enumerate(plan.blocks)]
        pre = [(items[it[2]], frames) for it, frames in pre]
    process = IngestBlock(bf_mask, adf_mask, inp.nonfinite, target)

    total_sum = saved["sum"] if progress.resumed else np.zeros(plan.frame_shape)
    total_max = saved["max"] if progress.resumed else np.full(plan.frame_shape, -np.inf)
    nonfinite = saved["nonfinite"] if progress.resumed else np.zeros(plan.frame_shape, np.int64)
    maps = {k: saved[k] if progress.resumed else np.zeros(plan.scan_shape) for k in ("total", "bf", "adf")}
    if plan.sparse:
        maps["nnz"] = saved["nnz"] if progress.resumed else np.zeros(plan.scan_shape, np.int64)

    def collect(_, res):
        (y0, y1, x0, x1), out = res
        total_sum[...] += out["sum"]
        np.maximum(total_max, out["max"], out=total_max)
        nonfinite[...] += out["nonfinite"]
        for k in maps:
            maps[k][y0:y1, x0:x1] = out[k]
        progress.record([(y0, y1, x0, x1)], {"bf_mask": bf_mask, "adf_mask": adf_mask, "vcentre": np.asarray(vcentre),
                                             "sum": total_sum, "max": total_max, "nonfinite": nonfinite,
                                             "sparse": np.asarray(plan.sparse), **maps})

    frame_bytes = int(np.prod(ds.frame_shape)) * ds.dtype.itemsize
    sizes = [(b[1] - b[0]) * (b[3] - b[2]) * plan.bin_r ** 2 * frame_bytes for b in plan.blocks]
    while pre:
        collect(0, process(pre.pop(0)))
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
    layout = "in place" if target is None else "sparse" if plan.sparse else "dense"
    if plan.sparse:
        write_array(g, f"{SPARSE_GROUP}/nnz", maps["nnz"], {"units": "non-zero pixels per frame"})
        n_pix = maps["nnz"].size * math.prod(plan.frame_shape)
        ctx.log(f"[sendmap] ingest: stored sparse ({100 * maps['nnz'].sum() / n_pix:.1f} % of the pixels non-zero)")
    n_bad = int(nonfinite.sum())
    if n_bad:
        ctx.log(f"[sendmap] ingest: {n_bad} NaN/inf values in {int((nonfinite > 0).sum())} detector pixels set to 0; "
                "those pixels are masked (input.nonfinite: mask)")
    set_attrs(g, data_ref=ref, ingest={
        "crop_r": list(plan.crop_r), "crop_q": list(plan.crop_q), "bin_r": plan.bin_r, "bin_q": plan.bin_q,
        "scan_shape": list(plan.scan_shape), "frame_shape": list(plan.frame_shape), "dtype": plan.dtype.str,
        "chunks": list(plan.chunk_shape), "in_place": target is None, "layout": layout, "nonfinite_values": n_bad,
        "input_bytes": int(math.prod(ds.shape) * ds.dtype.itemsize)})


def choose_sparse(layout: str, dtype: np.dtype, first_block: np.ndarray) -> bool:
    """Whether to store the data sparse (``input.store_layout``): 'sparse' and 'dense' as asked (sparse needs
    integer data), 'auto' where the data are integers with at most :data:`SPARSE_MAX_FILL` of the first block's
    pixels non-zero."""
    integer = np.dtype(dtype).kind in "ui"
    if layout == "sparse" and not integer:
        raise SendmapInputError(f"input.store_layout: sparse needs integer counts; the data are {np.dtype(dtype)}")
    if layout != "auto":
        return layout == "sparse"
    return integer and np.count_nonzero(first_block) <= SPARSE_MAX_FILL * first_block.size


def _drop_stored_data(g) -> None:
    """Remove the store's own data of an earlier ingest, in either layout."""
    for name in ("data", SPARSE_GROUP):
        if name in g:
            del g[name]


def _create_data_arrays(g, plan: IngestPlan, sparse: bool) -> None:
    """The empty stored-data arrays of ``plan``: ``data`` (dense) or ``data_sparse/index`` and ``value`` (one row
    of up to every pixel of the largest block per block; only the chunks a row fills are ever written)."""
    from ..engine.store import compressor

    _drop_stored_data(g)
    if not sparse:
        g.create_array("data", shape=(*plan.scan_shape, *plan.frame_shape), dtype=plan.dtype, chunks=plan.chunk_shape,
                       compressors=compressor(), overwrite=True, fill_value=0)
        return
    cap = max((b[1] - b[0]) * (b[3] - b[2]) for b in plan.blocks) * math.prod(plan.frame_shape)
    grp = g.create_group(SPARSE_GROUP, overwrite=True)
    grp.attrs.update({"blocks": [list(b) for b in plan.blocks], "frame_shape": list(plan.frame_shape),
                      "scan_shape": list(plan.scan_shape), "dtype": plan.dtype.str, "chunk_len": SPARSE_CHUNK_LEN,
                      "layout": "row b = block b (attr blocks: y0, y1, x0, x1), its frames in scan order, each frame's "
                                "non-zero pixels in ascending flat index iy * Qx + ix; nnz: per frame"})
    for part, dtype in (("index", index_dtype(plan.frame_shape)), ("value", plan.dtype)):
        grp.create_array(part, shape=(len(plan.blocks), cap), dtype=dtype, chunks=(1, SPARSE_CHUNK_LEN),
                         compressors=compressor(), overwrite=True, fill_value=0)


def _ingest_progress(ctx, plan: IngestPlan, ref: dict):
    """The resume record of this ingest (see :mod:`sendmap.engine.resume`): used when the key and the block plan match
    and, where the data are copied, the stored ``data`` array is the one that plan creates."""
    from ..engine.resume import BlockProgress
    from ..engine.store import remove_stray_temps

    rplan = {"scan_shape": plan.scan_shape, "frame_shape": plan.frame_shape, "dtype": plan.dtype.str,
             "chunks": plan.chunks, "blocks": plan.blocks, "crop_r": plan.crop_r, "crop_q": plan.crop_q,
             "bin_r": plan.bin_r, "bin_q": plan.bin_q, "data": ref}
    progress = BlockProgress(ctx.out_dir, "ingest", ctx.stage_key, rplan, enabled=ctx.resume)
    if progress.resumed and ref["path"] == "data" and ref["store"] == ctx.store_path:
        g = ctx.group
        if "sparse" not in progress.arrays:
            ok = False
        elif bool(progress.arrays["sparse"]):
            ok = f"{SPARSE_GROUP}/index" in g and f"{SPARSE_GROUP}/value" in g \
                and g[SPARSE_GROUP].attrs.get("blocks") == [list(b) for b in plan.blocks] \
                and np.dtype(g[f"{SPARSE_GROUP}/value"].dtype) == plan.dtype
            dirs = [Path(ctx.store_path, SPARSE_GROUP, p) for p in ("index", "value")]
        else:
            arr = g.get("data")
            ok = arr is not None and tuple(arr.shape) == (*plan.scan_shape, *plan.frame_shape) \
                and tuple(arr.chunks) == plan.chunk_shape and np.dtype(arr.dtype) == plan.dtype
            dirs = [Path(ctx.store_path, "data")]
        if not ok:
            progress.clear()
            progress.done, progress.arrays, progress.resumed = set(), {}, False
        else:
            for d in dirs:
                remove_stray_temps(d)
    return progress


def key_sections(cfg: Config, sections: dict) -> dict:
    """The ingest key leaves out input.path: the input's fingerprint stands for it (a moved file is reused)."""
    sections["input"] = {k: v for k, v in sections["input"].items() if k != "path"}
    return sections
