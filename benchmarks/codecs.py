"""Encode/decode speed and ratio of blosc settings on real chunks of a sendmap store's data (one core).

    python benchmarks/codecs.py RESULTS/sendmap.zarr [--rows 2]

Prints µs per frame to encode and to decode, and the compression ratio, for the settings sendmap could use
(see ``sendmap.store.BLOSC_CNAME``)."""
from __future__ import annotations

import argparse
import time

import numpy as np
import zarr
from numcodecs import Blosc, blosc

from sendmap.store import read_region_direct

SETTINGS = [("lz4", Blosc.SHUFFLE, 1 << 20), ("lz4", Blosc.BITSHUFFLE, 1 << 20), ("lz4", Blosc.NOSHUFFLE, 1 << 20),
            ("zstd", Blosc.BITSHUFFLE, 1 << 20), ("blosclz", Blosc.SHUFFLE, 0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("store")
    ap.add_argument("--rows", type=int, default=2)
    a = ap.parse_args()
    blosc.set_nthreads(1)
    arr = zarr.open_group(a.store, mode="r")["data"]
    y0 = arr.shape[0] // 2
    x = read_region_direct(arr, (y0, y0 + a.rows, 0, arr.shape[1]))
    if x is None:
        x = np.asarray(arr[y0:y0 + a.rows])
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


if __name__ == "__main__":
    main()
