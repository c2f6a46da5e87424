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
    """Run ``cmd``; return ``{"returncode", "wall_s", "peak_rss_anon_mib", "stdout"}``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    import threading

    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, sum(_rss_anon_kib(p) for p in _tree(proc.pid)))
        time.sleep(0.02)
    reader.join()
    wall = time.perf_counter() - t0
    text = "".join(out)
    if not quiet or proc.returncode:
        print(text[-3000:])
    return {"returncode": proc.returncode, "wall_s": wall, "peak_rss_anon_mib": peak / 1024, "stdout": text}
