"""Where the ingest stage's CPU goes per frame, piece by piece, on a Merlin bench file (one thread, every block).

``python benchmarks/ingest_pieces.py FOLDER [--blocks N] [--work DIR]``

FOLDER holds ``synth.mib`` and ``config.yaml`` (a bench folder). The stage's plan (blocks of whole scan rows) is
made as ``sendmap run`` makes it; each block is then read from the file (``read_region``: the byte swap and row
flip in one copy), binned, reduced (``frame_statistics``), listed as non-zero pixels (``to_sparse``), its index and
count lists encoded with the store's blosc settings and written to a scratch file in ``--work``; the thread's CPU
(``time.thread_time``) of each piece is summed over the blocks and printed in µs per frame, with two floors for the
read: the same bytes read with ``os.preadv`` into one buffer (no swap, no flip), and copied from the file mapping
as stored. The virtual-detector masks are a fixed disk and its complement (their cost does not depend on them).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--blocks", type=int, default=0, help="only the first N blocks (default: all)")
    ap.add_argument("--work", type=Path, default=Path("results/ingest_pieces"))
    args = ap.parse_args()

    from sendmap.config import load_config
    from sendmap.engine.store import _numcodecs_blosc
    from sendmap.io import open_dataset
    from sendmap.io.mib import mib_memmap, read_mib_info
    from sendmap.science.frames import bin_block, frame_statistics
    from sendmap.science.sparse import to_sparse
    from sendmap.stages.ingest import plan_ingest

    cfg = load_config(args.folder / "config.yaml")
    inp = cfg.input
    path = args.folder / inp.path
    ds = open_dataset(str(path), inp.format, tuple(inp.scan_shape) if inp.scan_shape else None)
    plan = plan_ingest(cfg, ds.scan_shape, ds.frame_shape, ds.dtype, lambda *a: None)
    blocks = plan.blocks[:args.blocks] if args.blocks else plan.blocks
    yy, xx = np.indices(plan.frame_shape)
    bf = np.hypot(yy - plan.frame_shape[0] / 2, xx - plan.frame_shape[1] / 2) < plan.frame_shape[0] / 16
    codec = _numcodecs_blosc()
    args.work.mkdir(parents=True, exist_ok=True)
    scratch = args.work / "chunk.bin"
    t = dict.fromkeys(("read", "bin", "statistics", "to_sparse", "encode", "write"), 0.0)
    n_frames = n_bytes = 0
    for b in blocks:
        c = time.thread_time()
        part = ds.read_region(plan.input_region(b))
        t["read"] += time.thread_time() - c
        c = time.thread_time()
        data = bin_block(part, plan.bin_r, plan.bin_q, plan.dtype)
        t["bin"] += time.thread_time() - c
        flat = data.reshape(-1, *data.shape[2:])
        n_frames += len(flat)
        c = time.thread_time()
        frame_statistics(flat, bf, ~bf)
        t["statistics"] += time.thread_time() - c
        c = time.thread_time()
        sp = to_sparse(flat)
        t["to_sparse"] += time.thread_time() - c
        c = time.thread_time()
        blobs = [codec.encode(sp.index), codec.encode(sp.value)]
        t["encode"] += time.thread_time() - c
        n_bytes += sum(len(x) for x in blobs)
        c = time.thread_time()
        for blob in blobs:
            scratch.write_bytes(blob)
        t["write"] += time.thread_time() - c
    scratch.unlink(missing_ok=True)
    floors = {}
    if inp.format == "mib":  # the read's floors: the same frames' bytes, without the swap and flip
        info = read_mib_info(path)
        mm = mib_memmap(info)
        stride, off = mm.dtype.itemsize, mm.offset
        fd = os.open(path, os.O_RDONLY)
        f_pread = f_map = 0.0
        for b in blocks:
            y0, y1, x0, x1 = plan.input_region(b)
            row = ds.scan_shape[1]
            for y in range(y0, y1):
                buf = np.empty((x1 - x0) * stride, np.uint8)
                c = time.thread_time()
                os.preadv(fd, [buf], off + (y * row + x0) * stride)
                f_pread += time.thread_time() - c
                c = time.thread_time()
                np.copyto(buf.view(mm.dtype), mm[y * row + x0:y * row + x1])
                f_map += time.thread_time() - c
        os.close(fd)
        floors = {"read floor: os.preadv of the frames' bytes": f_pread,
                  "read floor: copy from the file mapping as stored": f_map}
    print(f"{n_frames} frames in {len(blocks)} blocks; sparse lists {n_bytes / 1e6:.1f} MB encoded")
    for k, v in t.items():
        print(f"{k:12s} {v:7.3f} s  {1e6 * v / n_frames:6.2f} µs per frame")
    print(f"{'total':12s} {sum(t.values()):7.3f} s  {1e6 * sum(t.values()) / n_frames:6.2f} µs per frame")
    for k, v in floors.items():
        print(f"{k}: {v:.3f} s, {1e6 * v / n_frames:.2f} µs per frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
