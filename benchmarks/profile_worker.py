"""CPU per pattern of the profile stage's worker on one thread, and every array it returns, for before/after checks.

``python benchmarks/profile_worker.py STORE CONFIG [--reps N] [--dump OUT.npz] [--compare BEFORE.npz]``

STORE is the ``sendmap.zarr`` of a run of CONFIG that has finished calibrate (``sendmap run CONFIG --until
calibrate``; a crop of a bench file with ``--set input.crop_r=[0,24,0,360]`` is enough). The worker
(:class:`sendmap.compute.profiles.ProfileBlock`) is set up as the profiles stage sets it up and run over the
stored blocks on one numba thread; the blocks are read once before, so reading is not in the time. Printed: the
table build, the reads and the worker (``time.process_time`` per pattern, best of ``--reps``), and with
``--compare`` how each returned array differs from the same run of other code (``--dump`` of it): cells that
differ, largest absolute and relative difference, and the spot lists matched by position (spots only before or
only after, with their significance).

CPU time, not wall time: on a machine shared with other work, wall time per pattern varied by ±20 % between runs
while the worker's CPU time per pattern varied by ±3 %. Alternate the two versions (two checkouts) and compare
minima.
"""
from __future__ import annotations

import argparse
import time

import numba
import numpy as np


def setup(store: str, config: str):
    """(ProfileBlock, loaded blocks, number of patterns, table build s, reads s) as the profiles stage makes them."""
    import zarr

    from sendmap.compute.profiles import ProfileBlock
    from sendmap.config import load_config
    from sendmap.engine.data import open_stored
    from sendmap.science.indexing import Q_CALIBRATION_REL, SPOT_Z_MIN
    from sendmap.science.polar_tables import PolarTables
    from sendmap.stages.profiles import profile_error_terms, profile_geometry

    cfg = load_config(config)
    g = zarr.open_group(store, mode="r")
    calib = dict(g.attrs["calibration"])
    origin = np.asarray(g["calibration/origin"])
    mask = np.asarray(g["calibration/mask"])
    stored = open_stored(store)
    _, _, qy, qx = stored.shape
    geom = profile_geometry(cfg, calib, (qy, qx), origin)
    finite = origin.reshape(-1, 2)[np.all(np.isfinite(origin.reshape(-1, 2)), axis=1)]
    t0 = time.process_time()
    tables = PolarTables(geom, cfg.profiles.centre_step_px, (qy, qx),
                         np.stack([finite.min(axis=0), finite.max(axis=0)], axis=1))
    tables.split_centres(finite)
    t_tables = time.process_time() - t0
    r_q = calib["disk_radius_px"] * calib["q_pixel_size"]
    q = geom.q_centres
    bw = geom.bin_width
    speckle_g, fem_scale = profile_error_terms(q, geom.n_phi, r_q, bw, cfg.profiles.error_model)
    q_rel = float(calib["q_pixel_size_err"]) / float(calib["q_pixel_size"]) if calib.get("q_pixel_size_err") else 0.0
    block = ProfileBlock(tables, mask, r_q, (max(1, round(2 * r_q / bw)) * bw, geom.nq * bw),
                         max(1, round(r_q / bw)) * bw, q ** cfg.profiles.n, (2 * r_q, float(q[-1])), speckle_g,
                         fem_scale, np.full(geom.nq, SPOT_Z_MIN) if cfg.profiles.spot_lists else None,
                         max(q_rel, Q_CALIBRATION_REL))
    t0 = time.process_time()
    loaded = []
    for b in stored.block_regions(cfg.compute.block_mb):
        centres = origin[b[0]:b[1], b[2]:b[3]].reshape(-1, 2).astype(np.float64)
        loaded.append(((None, tuple(b), None), stored.read(tuple(b)), centres))
    t_reads = time.process_time() - t0
    return block, loaded, sum(len(c) for _, _, c in loaded), t_tables, t_reads


def concatenate(outs: list[dict], sizes: list[int]) -> dict[str, np.ndarray]:
    """The blocks' outputs as one array each (spot lists padded to one K; spot_index made global)."""
    cat = {}
    offsets = np.cumsum([0] + sizes[:-1])
    for k in outs[0]:
        vs = [np.asarray(o[k]) for o in outs]
        if k in ("spot_list", "spot_ring") and vs[0].ndim > 1:
            width = max(v.shape[1] for v in vs)
            vs = [np.concatenate([v, np.full((v.shape[0], width - v.shape[1], *v.shape[2:]),
                                             np.nan if v.dtype.kind == "f" else 0, v.dtype)], axis=1) for v in vs]
        if k == "spot_index":
            vs = [v + o for v, o in zip(vs, offsets)]
        cat[k] = np.concatenate(vs, axis=0)
    return cat


def compare(before: dict, after: dict) -> None:
    """Print how each array differs, and the spot lists matched by position."""
    for k in sorted(set(before) | set(after)):
        if k not in before or k not in after:
            print(f"  {k:16s} only {'after' if k in after else 'before'}")
            continue
        x, y = before[k], after[k]
        if x.shape != y.shape:
            print(f"  {k:16s} shape {x.shape} -> {y.shape}")
            continue
        if x.dtype.kind != "f":
            n = int((x != y).sum())
            print(f"  {k:16s} {'same' if n == 0 else f'{n} of {x.size} differ'}")
            continue
        both = np.isfinite(x) & np.isfinite(y)
        d = np.abs(x[both].astype(float) - y[both].astype(float))
        rel = d / np.maximum(np.abs(x[both].astype(float)), 1e-300)
        n = int((x[both] != y[both]).sum()) + int((np.isnan(x) != np.isnan(y)).sum())
        print(f"  {k:16s} " + ("same, bit for bit" if np.array_equal(x, y, equal_nan=True) else
                               f"{n} of {x.size} differ, max abs {d.max():.3g}, max rel {rel.max():.3g}"))
    if "spot_list" not in before or "spot_list" not in after:
        return
    fa = dict(zip(before["spot_index"].tolist(), before["spot_list"]))
    fb = dict(zip(after["spot_index"].tolist(), after["spot_list"]))
    lost, new, n = [], [], 0
    for f in set(fa) | set(fb):
        sa = fa.get(f, np.zeros((0, 4)))
        sb = fb.get(f, np.zeros((0, 4)))
        sa, sb = sa[np.isfinite(sa[:, 0])], sb[np.isfinite(sb[:, 0])]
        xa = sa[:, 0] * np.exp(1j * sa[:, 1])
        xb = sb[:, 0] * np.exp(1j * sb[:, 1])
        used = np.zeros(len(sb), bool)
        for i in range(len(sa)):
            d = np.where(used, np.inf, np.abs(xb - xa[i])) if len(sb) else np.zeros(0)
            if len(d) and d.min() < 1e-4:
                used[int(d.argmin())] = True
                n += 1
            else:
                lost.append(float(sa[i, 3]))
        new += sb[~used, 3].tolist()
    print(f"  spots at the same position (< 1e-4 1/Å): {n}; only before: {len(lost)} (z {sorted(lost)[:10]}…); "
          f"only after: {len(new)} (z {sorted(new)[:10]}…)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("config")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dump", help="save every returned array (npz)")
    ap.add_argument("--compare", help="an npz of --dump to compare with")
    args = ap.parse_args()
    numba.set_num_threads(1)
    block, loaded, n, t_tables, t_reads = setup(args.store, args.config)
    block(loaded[0])  # first call: the kernels loaded from numba's cache (or compiled)
    best = np.inf
    for _ in range(args.reps):
        t0 = time.process_time()
        outs = [block(item)[1] for item in loaded]
        best = min(best, time.process_time() - t0)
    print(f"{n} patterns in {len(loaded)} blocks: tables {t_tables:.2f} s, reads {t_reads / n * 1e6:.1f} µs/pattern, "
          f"worker {best / n * 1e6:.1f} µs/pattern (one thread, best of {args.reps})")
    if args.dump or args.compare:
        cat = concatenate(outs, [len(c) for _, _, c in loaded])
        if args.dump:
            np.savez(args.dump, **cat)
        if args.compare:
            before = dict(np.load(args.compare))
            compare(before, cat)


if __name__ == "__main__":
    main()
