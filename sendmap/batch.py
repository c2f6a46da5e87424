"""``sendmap batch FOLDER``: run every ``*.yaml`` config of a folder, one after another, continuing past failures.

Each config runs as its own ``sendmap run`` process (a crash, an out-of-memory kill or a hung dataset ends that
run only), with the batch's ``--set`` overrides and ``--force``. As each ends, a row is printed and the table
is rewritten (atomically) as ``batch.csv`` and ``batch.json`` in the report folder (``--out``, default
``FOLDER/batch/``), with each run's full output in ``logs/<config stem>.log`` there.

A row: config, status (``ok``: something was computed; ``reused``: every stage was reused; ``failed``), the
stages computed and reused, wall time, the output folder and, for a failure, the reason in one line (the
error message of ``sendmap run``, the last line of a traceback, a signal or a timeout). Exit code 0 when
nothing failed, 1 when something did, 2 when the folder is not a folder or holds no config.
"""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .errors import SendmapInputError
from .engine.store import write_json_atomic, write_text_atomic

COLUMNS = ("config", "status", "computed", "reused", "wall_s", "output", "reason")


def find_configs(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SendmapInputError(f"sendmap batch: {folder} is not a folder (give a folder of *.yaml configs)")
    configs = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not configs:
        raise SendmapInputError(f"sendmap batch: no *.yaml config in {folder}")
    return configs


def _child_env() -> dict:
    """The child runs this very sendmap (the package's parent folder first on its path)."""
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _reason(returncode: int, text: str, timed_out: bool, timeout: float | None) -> str:
    if timed_out:
        return f"timed out after {timeout:g} s (stopped)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("sendmap: error:"):
            return ln[len("sendmap: error:"):].strip()
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}" + (" (out of memory?)" if -returncode == signal.SIGKILL else "")
    return lines[-1][:500] if lines else f"exit code {returncode}"


def run_one(config: Path, overrides: list[str], force: bool, log_path: Path, timeout: float | None = None) -> dict:
    """Run one config in its own process; return its table row."""
    from .config import load_config

    cmd = [sys.executable, "-m", "sendmap.cli", "run", str(config), "--no-progress"]
    for o in overrides:
        cmd += ["--set", o]
    if force:
        cmd.append("--force")
    row = {"config": config.name, "status": "failed", "computed": [], "reused": [], "wall_s": 0.0, "output": "",
           "reason": ""}
    try:
        out_dir = load_config(config, overrides).output_dir()
        row["output"] = str(out_dir)
    except SendmapInputError:
        out_dir = None  # the run says why, in its own words
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timed_out = False
    with open(log_path, "w+", encoding="utf-8", errors="replace") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=_child_env())
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            rc = proc.wait()
        logf.seek(0)
        text = logf.read()
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    if rc == 0 and not timed_out and out_dir is not None:
        try:
            summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            row["reason"] = f"exit code 0 but no readable summary.json: {exc}"
            return row
        reused = list(summary.get("reused_stages", []))
        row["reused"] = reused
        row["computed"] = [s for s in summary.get("timing_s", {}) if s not in reused]
        row["status"] = "ok" if row["computed"] else "reused"
        return row
    row["reason"] = _reason(rc, text, timed_out, timeout)
    return row


def format_table(rows: list[dict]) -> str:
    head = ("config", "status", "computed", "reused", "wall s", "reason")
    body = [(r["config"], r["status"], ",".join(r["computed"]) or "-", str(len(r["reused"])) + " stages",
             f"{r['wall_s']:.1f}", r["reason"] or "") for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if i < 5 else 0 for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    n = {s: sum(r["status"] == s for r in rows) for s in ("ok", "reused", "failed")}
    lines.append(f"{len(rows)} configs: {n['ok']} ok, {n['reused']} reused (nothing recomputed), {n['failed']} failed")
    return "\n".join(lines)


def write_tables(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r["config"], r["status"], " ".join(r["computed"]), " ".join(r["reused"]), r["wall_s"],
                    r["output"], r["reason"]])
    write_text_atomic(out / "batch.csv", buf.getvalue())
    write_json_atomic(out / "batch.json", {"rows": rows})


def run_batch(folder: Path, overrides: list[str] | None = None, force: bool = False, out: Path | None = None,
              timeout: float | None = None, log=print) -> tuple[list[dict], int]:
    """Run every config of ``folder``; return the rows and the exit code (0, or 1 if any failed)."""
    folder = Path(folder)
    configs = find_configs(folder)
    out = Path(out) if out else folder / "batch"
    rows: list[dict] = []
    for i, cfg in enumerate(configs, 1):
        log(f"[batch] {i}/{len(configs)} {cfg.name} ...")
        row = run_one(cfg, list(overrides or []), force, out / "logs" / f"{cfg.stem}.log", timeout)
        rows.append(row)
        extra = f": {row['reason']}" if row["reason"] else f" (computed: {', '.join(row['computed']) or 'nothing'})"
        log(f"[batch] {i}/{len(configs)} {cfg.name}: {row['status']} in {row['wall_s']:.1f} s{extra}")
        try:
            write_tables(rows, out)
        except OSError as exc:
            log(f"[batch] cannot write the table to {out}: {exc.strerror}")
    log(format_table(rows))
    log(f"[batch] table: {out / 'batch.csv'} and batch.json; logs: {out / 'logs'}")
    return rows, int(any(r["status"] == "failed" for r in rows))
