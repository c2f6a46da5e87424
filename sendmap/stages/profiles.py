"""The profiles stage: azimuthal mean I(Q), its error, dispersion, robust mean, I·Q^n, spot significance, V(Q) and
virtual images per position, in one pass over the data (per block: :class:`sendmap.compute.profiles.ProfileBlock`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..compute.profiles import EVIDENCE_OUTPUTS, PROFILE_OUTPUTS, ProfileBlock
from ..config import Config
from ..engine.context import Context, block_progress
from ..engine.data import data_blocks, forget_store_data, read_store_block
from ..engine.store import set_attrs, write_array, write_region_direct


def profile_geometry(cfg: Config, calib: dict, frame_shape: tuple[int, int], origin: np.ndarray):
    from ..science.polar import PolarGeometry

    qpx = calib["q_pixel_size"]
    bw = cfg.profiles.bin_width or qpx
    if cfg.profiles.q_max:
        q_max = cfg.profiles.q_max
    else:
        cy, cx = np.nanmean(origin.reshape(-1, 2), axis=0)
        corners = [(0, 0), (0, frame_shape[1] - 1), (frame_shape[0] - 1, 0), (frame_shape[0] - 1, frame_shape[1] - 1)]
        q_max = min(math.hypot(y - cy, x - cx) for y, x in corners) * qpx
    ell = calib["ellipse"]
    return PolarGeometry(qpx, bw, max(4, int(q_max / bw)), cfg.profiles.n_azimuth, ell["ratio"], ell["angle_deg"],
                         cfg.profiles.supersample)


def profile_error_terms(q: np.ndarray, n_phi: int, disk_radius_q: float, bin_width: float, error_model: str):
    """(G(Q) of the "azimuthal" error model or None for "poisson", the sector→pixel scale of V(Q)): what
    :class:`ProfileBlock` needs besides the geometry (:func:`sendmap.science.polar.speckle_mean_factor`,
    :func:`~sendmap.science.polar.fem_variance_scale`)."""
    from ..science.polar import speckle_mean_factor

    # one evaluation of G and ρ̄(0) for both (fem_variance_scale's expression; the two calls it replaces computed
    # the same G twice, ~25 ms before the blocks could start)
    g, share = speckle_mean_factor(q, n_phi, disk_radius_q, bin_width, return_sector_share=True)
    return (g if error_model == "azimuthal" else None), 1.0 / (share * (1.0 - np.minimum(g, 0.999)))


PROFILE_CHUNK_BYTES = 2e6
"""Target size of one chunk of each (Ry, Rx, nq) float32 profile array (at the default ``compute.chunk_mb`` of 16,
scaled with it). Small enough that the chunks are written while the kernels run: at 16 MB the 148 × 148 benchmark
scan's outputs were one chunk each, all written after the last block (0.4-0.6 s with both cores idle)."""


PROFILE_TASK_BLOCK_MB = 2.0
"""A profile task covers consecutive stored (ingest) blocks of whole scan rows up to this many times
``compute.block_mb`` of frames (counted dense, as ingest counts its blocks): each task pays fixed costs (the spot
areas of its distinct centres, the geometry cache, the indexing's ~70 numpy passes, a partial last chunk per sparse
row), ≈ 4 ms at 256², which one 148-frame row of the 2.9 GB bench scan did not amortise (README "Profile stage:
tasks of several blocks (session 22)"). Twice the block size keeps the memory a task holds that of about two
ingest blocks (sparse) while a 256² task covers three rows."""


def blocks_per_task(block_bytes: float, per_chunk: int, target_bytes: float) -> int:
    """Stored blocks per profile task: the largest divisor of ``per_chunk`` (blocks per chunk of the profile
    arrays, so a chunk is written from whole tasks) whose frames (``block_bytes`` each, dense) stay within
    ``target_bytes``; at least 1.

    >>> blocks_per_task(19.4e6, 18, 64e6), blocks_per_task(23.6e6, 7, 64e6), blocks_per_task(40e6, 4, 64e6)
    (3, 1, 1)
    """
    most = max(1, int(target_bytes // max(block_bytes, 1.0)))
    return max(d for d in range(1, min(most, max(1, per_chunk)) + 1) if per_chunk % d == 0)


ERROR_MODELS = {
    "poisson": "Poisson counting noise only: sqrt(I·ΣW_p²)/ΣW_p",
    "azimuthal": "Poisson + speckle: Poisson variance + I²·V̄·G/(1 − G), V̄ the normalised azimuthal variance "
                 "(features/fem_variance) averaged over ± one probe-disk radius in Q, G the share of one sector's "
                 "speckle variance left in a ring's mean for grains the size of the probe disk, centrosymmetric "
                 "(sendmap.science.polar.speckle_mean_factor)",
}
"""profiles.error_model → what profiles/sem holds (its attrs name the model)."""


BRAGG_ATTRS = {"meaning": "share of scattered intensity in Bragg-spot sectors (mean − robust mean, Q-weighted)"}


def spot_table_of(spots: dict, shape: tuple[int, int], q_rel: float, r_q: float, bin_width: float):
    """(position, values, (shared_neighbours, grain_ring)) of the spot lists ``spots`` (see :func:`write_evidence`):
    sorted by position (stable), and their per-spot table
    (:func:`sendmap.science.spot_context.shared_spot_table`: which spots repeat at the scan neighbours, a grain's,
    and lie on a Li/Cu ring; independent of the classify settings, so computed once here rather than on every
    re-classification)."""
    from ..science.spot_context import shared_spot_table

    pos = spots.get("spot_pos", np.zeros(0, np.int64))
    val = spots.get("spot_val", np.zeros((0, 4), np.float32))
    order = np.argsort(pos, kind="stable")
    ring = spots.get("spot_ring")
    table = shared_spot_table(pos[order], val[order], shape, r_q, bin_width, q_rel,
                              grain_ring=None if ring is None else ring[order])
    return pos[order], val[order], table


def write_evidence(g, evidence: dict, spots: dict, shape: tuple[int, int], q_rel: float, r_q: float,
                   bin_width: float, table=None) -> None:
    """The spot and indexing evidence maps (features/, :data:`sendmap.compute.profiles.EVIDENCE_OUTPUTS`) and the
    spot lists (``spots/position`` (N,) flat scan index iy·Rx + ix, ``spots/values`` (N, 4): Q, azimuth,
    intensity, z; sorted by position, strongest first within one). ``spots["spot_ring"]`` (N,) bool, where given:
    each spot's Li/Cu-ring flag from the worker's indexing (``spots/grain_ring``; else indexed here again)."""
    from ..science.indexing import CATEGORY_NAMES, INDEX_PHASES, N_SIGMA, SPOT_Z_MIN, SPOTS_ATTRS

    common = {"phase_names": list(INDEX_PHASES), "category_names": list(CATEGORY_NAMES), "z_min": SPOT_Z_MIN,
              "q_rel_err": q_rel, "disk_radius_q": r_q, "method": "sendmap.science.indexing (spot_block, "
              "crystal_evidence); frames without a spot ≥ z_min σ at any Q have none: the fill value"}
    cat = np.asarray(evidence["spot_category"])
    common["category_counts"] = {n: int((cat == i).sum()) for i, n in enumerate(CATEGORY_NAMES)}
    common["unindexed_spots"] = int(np.asarray(evidence["n_unindexed"]).sum())
    for nm, (_, _, attrs) in EVIDENCE_OUTPUTS.items():
        write_array(g, f"features/{nm}", evidence[nm], attrs | common)
    # ``table``: a future of spot_table_of(spots, ...) started by the caller (its kernel runs while the maps above
    # and the lists are written), else computed here
    pos, val, (nb, ring) = (table.result() if table is not None else
                            spot_table_of(spots, shape, q_rel, r_q, bin_width))
    n = max(1, pos.size)
    write_array(g, "spots/position", pos, {"meaning": "flat scan index iy·Rx + ix of each listed spot",
                                           "scan_shape": list(shape)}, chunks=(n,))
    write_array(g, "spots/values", val, SPOTS_ATTRS | {
        "meaning": "Bragg-disk-sized spots of every position (spots/position), strongest first within a position "
                   "(sendmap.science.indexing.spot_block)"}, chunks=(n, 4))
    write_array(g, "spots/shared_neighbours", nb, {
        "units": "count", "n_sigma": N_SIGMA, "meaning": "scan neighbours (of 8) that list a spot at the same g "
        "within n_sigma of the combined position errors (sendmap.science.spot_context.shared_neighbours)"},
        chunks=(n,))
    write_array(g, "spots/grain_ring", ring, {
        "meaning": "the spot lies on a Li or Cu ring within the calibrated Q uncertainty "
                   "(sendmap.science.spot_context.shared_spot_table)"}, chunks=(n,))


def stage_profiles(ctx: Context) -> None:
    """Azimuthal mean I(Q), SEM, dispersion, robust mean, I·Q^n, spot significance and virtual images per position,
    and the Bragg-spot lists with their indexing evidence of the positions that have a spot.

    One read of every data chunk gives all of them (:func:`sendmap.science.polar_tables.profile_block`); the spots
    are listed (:func:`sendmap.science.indexing.spot_block`) only for the frames whose spot significance reaches
    :data:`sendmap.science.indexing.SPOT_Z_MIN` somewhere, while their polar sums are in memory (the others have
    none at that threshold: the same lists as for every frame), and indexed in the worker
    (:func:`sendmap.science.indexing.crystal_evidence`): ``features/`` maps of
    :data:`sendmap.compute.profiles.EVIDENCE_OUTPUTS`, ``spots/position`` and ``spots/values``.
    """
    from ..engine.execute import run_blocks
    from ..science.polar_tables import PolarTables

    cfg, g = ctx.cfg, ctx.group
    calib = dict(g.attrs["calibration"])
    origin = np.asarray(g["calibration/origin"])
    mask = np.asarray(g["calibration/mask"])
    data, blocks = data_blocks(ctx)
    ry, rx, qy, qx = data.shape
    geom = profile_geometry(cfg, calib, (qy, qx), origin)
    finite = origin.reshape(-1, 2)[np.all(np.isfinite(origin.reshape(-1, 2)), axis=1)]
    tables = PolarTables(geom, cfg.profiles.centre_step_px, (qy, qx),
                         np.stack([finite.min(axis=0), finite.max(axis=0)], axis=1) if len(finite) else None)
    if len(finite):  # every table the scan needs, built here with all cores (a worker thread has one)
        tables.split_centres(finite)
    r_q = calib["disk_radius_px"] * calib["q_pixel_size"]
    q = geom.q_centres
    qn = q ** cfg.profiles.n
    # virtual images from whole radial bins: BF out to the bin edge nearest the disk radius, ADF from the edge
    # nearest two disk radii to the last bin's edge
    bw = geom.bin_width
    bf_q = max(1, round(r_q / bw)) * bw
    adf_q = (max(1, round(2 * r_q / bw)) * bw, geom.nq * bw)
    # Results are encoded and written straight to their chunk files (store.write_region_direct), a chunk of
    # whole-row blocks at a time (≈ PROFILE_CHUNK_BYTES per array: creating a file costs ~1 ms on some file
    # systems, 8 arrays × every block adds up); blocks of part of a row are one chunk each.
    by, bx = blocks[0][1] - blocks[0][0], blocks[0][3] - blocks[0][2]
    whole_rows = all(b[2] == 0 and b[3] == rx for b in blocks)
    chunk_bytes = PROFILE_CHUNK_BYTES * cfg.compute.chunk_mb / 16.0  # 2 MB at the default compute.chunk_mb
    per_chunk = max(1, int(chunk_bytes // (by * bx * geom.nq * 4))) if whole_rows else 1
    chunks = (by * per_chunk, bx, geom.nq)
    # several consecutive stored blocks per task where stored sparse (one read of their rows into one buffer)
    group = (blocks_per_task(by * bx * qy * qx * data.dtype.itemsize, per_chunk,
                             PROFILE_TASK_BLOCK_MB * cfg.compute.block_mb * 1e6)
             if data.sparse and whole_rows else 1)
    tasks = data.block_groups(blocks, group) if group > 1 else [(tuple(b), [tuple(b)]) for b in blocks]
    parts = dict(tasks)
    progress = block_progress(ctx, "profiles", {"shape": (ry, rx, geom.nq), "chunks": chunks, "blocks": blocks},
                              [f"{grp}/{nm}" for nm, (grp, _) in PROFILE_OUTPUTS.items()])
    error_model = cfg.profiles.error_model
    speckle_g, fem_scale = profile_error_terms(q, geom.n_phi, r_q, geom.bin_width, error_model)
    out_attrs = {}
    for nm, (_, attrs) in PROFILE_OUTPUTS.items():
        out_attrs[nm] = dict(attrs or {})
    for nm in ("iqn", "iqn_sem", "iqn_robust", "iqn_masked", "iqn_masked_sem"):
        out_attrs[nm].update({"n": cfg.profiles.n, "units": "counts per pixel × (1/Å)^n"})
    for nm in ("sem", "iqn_sem", "iqn_masked_sem"):
        out_attrs[nm].update({"error_model": error_model, "error_model_meaning": ERROR_MODELS[error_model]})

    def create_outputs():
        """The (Ry, Rx, nq) arrays, each with its attributes in one metadata write: made at the first write of
        their chunks, while the workers compute the first blocks (not before they start: ~0.05 s of zarr)."""
        for nm, (grp, _) in PROFILE_OUTPUTS.items():
            g.create_array(f"{grp}/{nm}", shape=(ry, rx, geom.nq), dtype="float32", chunks=chunks, overwrite=True,
                           fill_value=float("nan"), compressors=None, attributes=out_attrs[nm] or None,
                           chunk_key_encoding={"name": "default", "separator": "."})

    if progress.resumed:  # the killed run's arrays, with its finished chunks
        for nm, (grp, _) in PROFILE_OUTPUTS.items():
            if out_attrs[nm]:
                g[f"{grp}/{nm}"].attrs.update(out_attrs[nm])
    created = [progress.resumed]
    bf = progress.arrays.get("bf", np.zeros((ry, rx)))
    adf = progress.arrays.get("adf", np.zeros((ry, rx)))
    bragg = progress.arrays.get("bragg", np.full((ry, rx), np.nan))
    # spot lists and indexing evidence (sendmap.science.indexing), for the frames with a listed spot only
    from ..science.indexing import SPOT_Z_MIN

    lists = cfg.profiles.spot_lists

    evidence = {nm: progress.arrays.get(f"ev_{nm}", np.full((ry, rx), fill, dt))
                for nm, (dt, fill, _) in EVIDENCE_OUTPUTS.items()}
    spot_pos = [progress.arrays["spot_pos"]] if "spot_pos" in progress.arrays else []  # flat position index
    spot_val = [progress.arrays["spot_val"]] if "spot_val" in progress.arrays else []  # (n, 4) spot rows
    # (n,) Li/Cu-ring flag of each spot (a resume record written before they were kept has none: indexed again)
    spot_ring = ([progress.arrays["spot_ring"]] if "spot_ring" in progress.arrays else
                 None if spot_pos else [])

    pending: list = []  # results not yet written, in scan order: ((y0, x0), {name: (rows, cols, nq) array})

    def flush():
        if pending:
            if not created[0]:
                create_outputs()
                created[0] = True
            (y0, x0), _ = pending[0]
            for nm, (grp, _) in PROFILE_OUTPUTS.items():
                block = np.concatenate([r[nm] for _, r in pending], axis=0)
                # uncompressed: float noise compresses 1.2×, not worth encoding in the writing thread
                write_region_direct(Path(ctx.store_path, grp, nm), chunks, (y0, x0, 0), block, separator=".",
                                    compress=False)
            progress.record(list(pending_blocks), {"bf": bf, "adf": adf, "bragg": bragg,
                                                   **{f"ev_{nm}": v for nm, v in evidence.items()},
                                                   **spot_record()})
            pending.clear()
            pending_blocks.clear()

    pending_blocks: list = []  # the blocks of ``pending``, recorded as finished once their chunks are written

    def spot_record():
        if len(spot_pos) > 1:
            spot_pos[:] = [np.concatenate(spot_pos)]
            spot_val[:] = [np.concatenate(spot_val)]
            if spot_ring is not None:
                spot_ring[:] = [np.concatenate(spot_ring)]
        if not spot_pos:
            return {}
        return {"spot_pos": spot_pos[0], "spot_val": spot_val[0], **({"spot_ring": spot_ring[0]} if spot_ring else {})}

    def put(_, res):
        (y0, y1, x0, x1), out = res
        pending_blocks.extend(parts[(y0, y1, x0, x1)])  # the resume record's unit stays the stored block
        bf[y0:y1, x0:x1] = out["bf"].reshape(y1 - y0, x1 - x0)
        adf[y0:y1, x0:x1] = out["adf"].reshape(y1 - y0, x1 - x0)
        bragg[y0:y1, x0:x1] = out["bragg"].reshape(y1 - y0, x1 - x0)
        for nm in EVIDENCE_OUTPUTS if lists else ():
            evidence[nm][y0:y1, x0:x1] = out[nm].reshape(y1 - y0, x1 - x0)
        sl = out["spot_list"] if lists else np.zeros(0)
        if sl.size:
            j = out["spot_index"]
            pos = (y0 + j // (x1 - x0)) * rx + x0 + j % (x1 - x0)
            ok = np.isfinite(sl[..., 0])
            spot_pos.append(np.repeat(pos, ok.sum(axis=1)).astype(np.int64))
            spot_val.append(sl[ok].astype(np.float32))
            if spot_ring is not None:
                spot_ring.append(out["spot_ring"][ok])
        pending.append(((y0, x0), {nm: out[nm].reshape(y1 - y0, x1 - x0, -1) for nm in PROFILE_OUTPUTS}))
        # blocks arrive in order: a chunk is complete at its last row (each part-row block is a chunk of its own)
        if per_chunk == 1 or y1 % chunks[0] == 0 or y1 == ry:
            flush()

    forget_store_data(ctx.store_path)
    # a task is run again unless all its blocks are recorded (a record's blocks are whole chunks: whole tasks)
    todo = [(t, bs) for t, bs in tasks if not all(progress.is_done(b) for b in bs)]
    items = [(ctx.store_path, t, origin[t[0]:t[1], t[2]:t[3]]) for t, _ in todo]
    ctx.stage_info.update(blocks=len(blocks), blocks_resumed=len(blocks) - sum(len(bs) for _, bs in todo))
    bragg_q = (2 * r_q, float(q[-1]))
    q_rel = float(calib["q_pixel_size_err"]) / qpx_ if (calib.get("q_pixel_size_err") and
                                                        (qpx_ := float(calib["q_pixel_size"])) > 0) else None
    from ..science.indexing import Q_CALIBRATION_REL

    q_rel = max(q_rel or 0.0, Q_CALIBRATION_REL)
    run_blocks(read_store_block, ProfileBlock(tables, mask, r_q, adf_q, bf_q, qn, bragg_q, speckle_g, fem_scale,
                                              np.full(geom.nq, SPOT_Z_MIN) if lists else None, q_rel), items,
               cfg.compute, "profiles", on_result=put, thread_safe=True)
    table = None
    if lists:  # the spots' neighbour table on a thread of its own (its kernel releases the GIL) while the last
        # chunks, the resume record and the maps are written
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1)
        table = pool.submit(spot_table_of, spot_record(), (ry, rx), q_rel, r_q, geom.bin_width)
        pool.shutdown(wait=False)
    flush()
    if lists:
        write_evidence(g, evidence, spot_record(), (ry, rx), q_rel, r_q, geom.bin_width, table)
    else:  # (profiles.spot_lists: false) no evidence: none left from an earlier run with lists either
        for key in ["spots", *(f"features/{nm}" for nm in EVIDENCE_OUTPUTS)]:  # (spots/ holds the shared table)
            if key in g:
                del g[key]
    write_array(g, "profiles/q", q, {"units": "1/Å (Q = 1/d), bin centres", "bin_width": geom.bin_width})
    write_array(g, "features/virtual_bf", bf, {"units": "counts", "q_range": [0.0, bf_q]})
    write_array(g, "features/virtual_adf", adf, {"units": "counts", "q_range": list(adf_q)})
    write_array(g, "features/bragg_fraction", bragg, BRAGG_ATTRS | {"q_range": list(bragg_q)})
    set_attrs(g, profiles={"q_max": float(q[-1] + geom.bin_width / 2), "bin_width": geom.bin_width, "nq": geom.nq,
                           "n_azimuth": geom.n_phi, "supersample": geom.supersample,
                           "centre_step_px": tables.centre_step_px,
                           "method": "supersampling (sub-pixels of 1/ss² counts), per-frame centre rounded to "
                                     "centre_step_px, precomputed pixel tables, non-zero pixels only"})
