"""Run a command and measure its wall time and the peak anonymous memory (RssAnon) of its process tree.

RssAnon counts the heap, not file-backed pages (memory-mapped input files, shared libraries), so it is
what a dataset's size could drive up. Sampled every 20 ms from /proc (Linux only).
"""
from __future__ import annotations

import os
import subprocess
import time


def _rss_anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rss_kib(pid: int) -> int:
    """VmRSS (all resident pages, as dask's worker memory limit counts them)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def run_measured(cmd: list[str], env: dict | None = None, cwd=None, quiet: bool = True) -> dict:
    """Run ``cmd``; return ``{"returncode", "wall_s", "peak_rss_anon_mib", "stdout", "child_peak_rss_mib"}`` (the
    last: peak VmRSS of each process below the command's, largest first)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    import threading

    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    per_child: dict[int, int] = {}  # peak VmRSS of every process below the command's (e.g. dask workers)
    while proc.poll() is None:
        tree = _tree(proc.pid)
        peak = max(peak, sum(_rss_anon_kib(p) for p in tree))
        for p in tree[1:]:
            per_child[p] = max(per_child.get(p, 0), _rss_kib(p))
        time.sleep(0.02)
    reader.join()
    wall = time.perf_counter() - t0
    text = "".join(out)
    if not quiet or proc.returncode:
        print(text[-3000:])
    return {"returncode": proc.returncode, "wall_s": wall, "peak_rss_anon_mib": peak / 1024, "stdout": text,
            "child_peak_rss_mib": sorted((v / 1024 for v in per_child.values()), reverse=True)}
