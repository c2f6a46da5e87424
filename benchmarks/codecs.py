"""Encode/decode speed and ratio of blosc settings on real frames of a sendmap store (one core), dense and as
the sparse layout's index and count lists (``input.store_layout``).

    python benchmarks/codecs.py RESULTS/sendmap.zarr [--rows 2]

Prints µs per frame to encode and to decode, and the compression ratio, for the settings sendmap could use
(see ``sendmap.engine.store.BLOSC_CNAME``)."""
from __future__ import annotations

import argparse
import time

import numpy as np
from numcodecs import Blosc, blosc

from sendmap.engine.data import open_stored, read_frames
from sendmap.science.sparse import to_sparse

SETTINGS = [("lz4", Blosc.SHUFFLE, 1 << 20), ("lz4", Blosc.BITSHUFFLE, 1 << 20), ("lz4", Blosc.NOSHUFFLE, 1 << 20),
            ("zstd", Blosc.BITSHUFFLE, 1 << 20), ("blosclz", Blosc.SHUFFLE, 0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("store")
    ap.add_argument("--rows", type=int, default=2)
    a = ap.parse_args()
    blosc.set_nthreads(1)
    ry, rx = open_stored(a.store).shape[:2]
    y0 = ry // 2
    x = read_frames(a.store, (y0, y0 + a.rows, 0, rx))
    nf = x.shape[0] * x.shape[1]
    out = np.empty_like(x)
    names = {Blosc.SHUFFLE: "byte shuffle", Blosc.BITSHUFFLE: "bit shuffle", Blosc.NOSHUFFLE: "no shuffle"}
    for cname, shuffle, bs in SETTINGS:
        c = Blosc(cname=cname, clevel=1, shuffle=shuffle, blocksize=bs)
        te = td = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            buf = c.encode(x)
            te = min(te, time.perf_counter() - t)
            t = time.perf_counter()
            c.decode(buf, out=out)
            td = min(td, time.perf_counter() - t)
        print(f"{cname:8s} {names[shuffle]:12s} block {bs >> 10:5d} KiB  encode {te / nf * 1e6:6.1f} µs/frame  "
              f"decode {td / nf * 1e6:6.1f} µs/frame  ratio {x.nbytes / len(buf):5.1f}")
    sp = to_sparse(x.reshape(-1, *x.shape[2:]))
    c = Blosc(cname="lz4", clevel=1, shuffle=Blosc.SHUFFLE, blocksize=1 << 20)
    te = td = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        bufs = [c.encode(v) for v in (sp.index, sp.value)]
        te = min(te, time.perf_counter() - t)
        t = time.perf_counter()
        for b, v in zip(bufs, (np.empty_like(sp.index), np.empty_like(sp.value))):
            c.decode(b, out=v)
        td = min(td, time.perf_counter() - t)
    print(f"sparse   lz4 byte shuffle (index + count lists, {100 * sp.fill:.1f} % of pixels)  encode "
          f"{te / nf * 1e6:6.1f} µs/frame  decode {td / nf * 1e6:6.1f} µs/frame  "
          f"ratio {x.nbytes / sum(len(b) for b in bufs):5.1f} (of the dense bytes)")


if __name__ == "__main__":
    main()
