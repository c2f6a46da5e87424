"""Where the profile worker's CPU goes, by compiled function and by instruction: perf samples of the numba code.

``python benchmarks/profile_kernel_perf.py STORE CONFIG [--seconds 20] [--freq 2000] [--top 15] [--blocks 12]
[--disasm N] [--out DIR] [--keep-map]``

STORE and CONFIG as for ``benchmarks/profile_worker.py`` (a store that has finished calibrate). The worker runs on
one numba thread over the stored blocks, again and again, while ``perf record`` samples this process. perf sees
numba's code only as unnamed ``[JIT]`` addresses (and ``NUMBA_ENABLE_PROFILING=1`` writes no perf map when the
kernels come from numba's cache), so this script keeps the object code numba loads from its cache, finds where
each object was placed (its global symbols' addresses), writes perf's JIT map ``perf-PID.map`` (in ``PERF_MAP_DIR``) naming every function of
every object (the kernels' helpers that LLVM kept as functions: ``_frame_stats``, ``_frame_spots_in``,
``masked_profile_dirs``, the parfor bodies, ...), and prints the share of the samples in each, the hottest 64-byte
blocks of code, and (``--disasm N``) the instructions of the N hottest blocks, from ``objdump`` of the saved
objects (kept in ``--out``). Needs ``perf`` and ``objdump`` on the PATH, and the right to sample one's own
process (``perf_event_paranoid`` ≤ 2).
"""
from __future__ import annotations

import argparse
import bisect
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np
from numba.core import codegen as _codegen

PERF_MAP_DIR = tempfile.gettempdir()
"""Where perf looks for a process's JIT symbol map (perf-PID.map): the system temporary directory, fixed by perf
(tools/perf/Documentation/jit-interface.txt); with TMPDIR set elsewhere, `perf report` will not find it."""


_OBJECTS: dict[str, tuple[bytes, object]] = {}  # library name -> (object code, library)
_unserialize = _codegen.CPUCodeLibrary._unserialize.__func__


def _keep_object(cls, codegen, state):
    """numba's loader of a cached library, keeping its object code (numba drops it once loaded)."""
    lib = _unserialize(cls, codegen, state)
    name, kind, data = state
    if kind == "object":
        _OBJECTS[name] = (data[0], lib)
    return lib


_codegen.CPUCodeLibrary._unserialize = classmethod(_keep_object)


def _short(sym: str) -> str:
    """A readable name for a mangled numba symbol (``_ZN<len><name>...``): its qualified name without the package,
    e.g. ``polar._frame_stats`` or ``<dynamic>.__numba_parfor_gufunc_0x...``."""
    m = re.search(r"_ZN(.*)", sym)
    if not m:
        return sym[:60]
    rest, names = m.group(1), []
    while True:
        d = re.match(r"(\d+)", rest)
        if not d:
            break
        k = int(d.group(1))
        names.append(rest[len(d.group(1)):len(d.group(1)) + k])
        rest = rest[len(d.group(1)) + k:]
    names = [x.replace("_3c", "<").replace("_3e", ">") for x in names if x not in ("sendmap", "science")]
    return ".".join(names[-2:]) if names else sym[:60]


def place_objects(out_dir: str) -> list[tuple[int, int, str, str, int]]:
    """(address, size, short name, object file, offset) of every function of every loaded object."""
    rows = []
    for i, (name, (obj, lib)) in enumerate(sorted(_OBJECTS.items())):
        path = os.path.join(out_dir, f"obj{i}.o")
        with open(path, "wb") as f:
            f.write(obj)
        table = subprocess.run(["objdump", "-t", path], capture_output=True, text=True).stdout
        funcs = []
        for line in table.splitlines():
            f = line.split()
            if len(f) >= 6 and f[2] == "F":  # offset, binding, F, section, size, name
                funcs.append((int(f[0], 16), int(f[4], 16), f[3], f[5], f[1]))
        base = {}
        for off, _, sec, sym, bind in funcs:
            if bind == "g" and sec not in base:
                try:
                    base[sec] = lib.get_pointer_to_function(sym) - off
                except Exception:
                    pass
        for off, size, sec, sym, _ in funcs:
            if sec in base and size:
                rows.append((base[sec] + off, size, _short(sym), path, off))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("config")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--freq", type=int, default=2000)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--disasm", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep-map", action="store_true", help="keep the perf-PID.map (for `perf report` afterwards)")
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import profile_worker

    out_dir = args.out or tempfile.mkdtemp(prefix="kernel_perf_")
    os.makedirs(out_dir, exist_ok=True)
    numba.set_num_threads(1)
    block, loaded, n, _, _ = profile_worker.setup(args.store, args.config)
    block(loaded[0])  # the kernels loaded from numba's cache (their objects kept) or compiled
    rows = place_objects(out_dir)
    if not rows:
        sys.exit("no cached numba object loaded: run once to fill numba's cache, then again")
    perf_map = os.path.join(PERF_MAP_DIR, f"perf-{os.getpid()}.map")
    with open(perf_map, "w") as f:
        for addr, size, name, _, _ in sorted(rows):
            f.write(f"{addr:x} {size:x} {name}\n")
    data = os.path.join(out_dir, "perf.data")
    perf = subprocess.Popen(["perf", "record", "-q", "-F", str(args.freq), "-p", str(os.getpid()), "-o", data],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    t0 = time.time()
    runs = 0
    while time.time() - t0 < args.seconds:
        for item in loaded:
            block(item)
        runs += 1
    perf.send_signal(2)
    perf.wait()
    ips = np.array([int(x.split()[0], 16) for x in subprocess.run(
        ["perf", "script", "-i", data, "-F", "ip"], capture_output=True, text=True).stdout.split("\n") if x.strip()],
        dtype=np.uint64)
    total = ips.size
    rows.sort()
    starts = [r[0] for r in rows]
    by_func = collections.Counter()
    by_block = collections.Counter()
    for ip in ips.tolist():
        j = bisect.bisect_right(starts, ip) - 1
        if j >= 0 and ip < rows[j][0] + rows[j][1]:
            by_func[rows[j][2]] += 1
            by_block[(rows[j][3], rows[j][4], rows[j][4] + (ip - rows[j][0]) // 64 * 64, rows[j][2])] += 1
        else:
            by_func["(outside numba's cached code)"] += 1
    print(f"{total} samples over {runs} passes of {n} patterns; worker ≈ {args.seconds / max(runs, 1) / n * 1e6:.1f} "
          f"µs wall per pattern under perf")
    print("share  function")
    for name, c in by_func.most_common(args.top):
        print(f"{c / total * 100:5.1f}%  {name}")
    print("share  hottest 64-byte blocks (object offset)")
    for (path, _, off, name), c in by_block.most_common(args.blocks):
        print(f"{c / total * 100:5.2f}%  {name} +{off:#x} ({os.path.basename(path)})")
    for (path, f0, off, name), c in by_block.most_common(args.disasm):
        print(f"--- {name} +{off:#x}: {c / total * 100:.2f}% (a sample is counted at the instruction after the one "
              f"that waited)")
        # decoded from the function's start (the block may begin inside an instruction)
        dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={f0:#x}",
                              f"--stop-address={off + 80:#x}", path], capture_output=True, text=True).stdout
        for line in dis.splitlines():
            a = re.match(r"\s+([0-9a-f]+):", line)
            if a and off - 16 <= int(a.group(1), 16) < off + 64:
                print(re.sub(r"<[^>]*>", "", line).rstrip())
    if not args.keep_map:
        os.remove(perf_map)
    print(f"(objects, perf.data: {out_dir}" + (f"; perf map {perf_map})" if args.keep_map else ")"))


if __name__ == "__main__":
    main()
