"""Batches, resume after SIGKILL, faults of the output folder, and memory bounded by the block size."""
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from _stores import assert_same_arrays, store_arrays
from sendmap.cli import main

ROOT = Path(__file__).resolve().parents[1]

SMALL_BLOCKS = ["--set", "compute.chunk_mb=0.04", "--set", "compute.block_mb=0.3", "--set", "output.figures=false"]
"""Many small blocks (2-frame chunks, ≈ 9-frame blocks, one profile chunk per block) on the 12 × 16 scan."""


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 12 × 16 scan of 128² Merlin frames and one uninterrupted run of it with small blocks."""
    d = tmp_path_factory.mktemp("reprocess")
    assert main(["synth", str(d), "--scan-shape", "12", "16", "--seed", "5", "--quiet"]) == 0
    assert main(["run", str(d / "config.yaml"), "--no-progress", "--set", "output.dir=ref", *SMALL_BLOCKS]) == 0
    return d


def _assert_same_store(a: Path, b: Path):
    x, y = store_arrays(a), store_arrays(b)
    assert set(x) == set(y)
    assert len(x) > 30
    assert_same_arrays(x, y)  # (floats within _stores.KERNEL_RTOL: the resumed run loads kernels from the cache)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.mark.parametrize("stage,after,layout", [("profiles", 4, "auto"), ("ingest", 5, "auto"), ("ingest", 5, "dense")])
def test_sigkill_mid_stage_is_resumed_without_redoing_finished_blocks(small, stage, after, layout, capsys):
    """(The synthetic counts are stored sparse by default: ``layout`` dense resumes the dense ``data`` array.)"""
    out = f"killed_{stage}_{layout}"
    lay = ["--set", f"input.store_layout={layout}"]
    ref = small / "ref"
    if layout != "auto":
        ref = small / f"ref_{layout}"
        assert main(["run", str(small / "config.yaml"), "--no-progress", "--set", f"output.dir={ref.name}", *lay,
                     *SMALL_BLOCKS]) == 0
    cmd = [sys.executable, "-m", "sendmap.cli", "run", str(small / "config.yaml"), "--no-progress",
           "--set", f"output.dir={out}", *lay, *SMALL_BLOCKS]
    r = subprocess.run(cmd, env={**_env(), "SENDMAP_KILL_AFTER_BLOCKS": f"{stage}:{after}",
                                 "SENDMAP_RESUME_INTERVAL_S": "0"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    res = small / out
    assert not (res / "summary.json").exists()
    attrs = json.loads((res / "sendmap.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["status"] == "running" and stage not in attrs["stages"]
    from sendmap.engine.resume import read_record

    assert len(read_record(res, stage)["done"]) == after
    from sendmap.info import describe

    assert describe(res)["unfinished"][stage]["blocks_done"] == after

    assert main(["run", str(small / "config.yaml"), "--no-progress", "--set", f"output.dir={out}", *lay,
                 *SMALL_BLOCKS]) == 0
    log = capsys.readouterr().out
    st = zarr.open_group(str(res / "sendmap.zarr"), mode="r").attrs["stages"]
    n = st[stage]["blocks"]
    assert f"{stage}: resuming, {after}/{n} blocks done" in log
    assert st[stage]["blocks_resumed"] == after and n > 2 * after  # the rest were processed, the first `after` not
    assert read_record(res, stage) is None and not (res / ".sendmap-resume").exists()
    assert not list((res / "sendmap.zarr").rglob(".*.tmp-*"))
    assert zarr.open_group(str(res / "sendmap.zarr"), mode="r").attrs["ingest"]["layout"] == \
        ("dense" if layout == "dense" else "sparse")
    _assert_same_store(ref / "sendmap.zarr", res / "sendmap.zarr")


def test_force_and_changed_key_discard_the_record(small, capsys):
    """A record of another key (or --force) is not used: the stage starts over."""
    from sendmap.engine.resume import BlockProgress

    p = BlockProgress(small / "rec", "profiles", "k1", {"blocks": [[0, 1, 0, 2]]})
    p.interval = 0
    p.record([(0, 1, 0, 2)], {"bf": np.ones(3), "n": np.arange(4, dtype=np.int16).reshape(2, 2)})
    q = BlockProgress(small / "rec", "profiles", "k1", {"blocks": [[0, 1, 0, 2]]})
    assert q.resumed and q.done == {(0, 1, 0, 2)} and q.arrays["n"].dtype == np.int16
    assert np.array_equal(q.arrays["n"], [[0, 1], [2, 3]]) and np.array_equal(q.arrays["bf"], np.ones(3))
    assert not BlockProgress(small / "rec", "profiles", "k1", {"blocks": [[0, 2, 0, 2]]}).resumed
    p.record([(0, 1, 0, 2)], {"bf": np.ones(3)})
    assert not BlockProgress(small / "rec", "profiles", "k2", {"blocks": [[0, 1, 0, 2]]}).resumed
    p.record([(0, 1, 0, 2)], {"bf": np.ones(3)})
    assert not BlockProgress(small / "rec", "profiles", "k1", {"blocks": [[0, 1, 0, 2]]}, enabled=False).resumed
    assert not (small / "rec" / ".sendmap-resume").exists()


def test_full_disk_is_a_clear_error_and_the_next_run_completes(small, monkeypatch, capsys):
    import sendmap.engine.store as store

    monkeypatch.setenv("SENDMAP_RESUME_INTERVAL_S", "0")
    real = store._write_chunk_atomic
    calls = {"n": 0}

    def full_after_some(path, blob):  # the disk fills after 5 blocks of profiles (8 arrays, a chunk each)
        calls["n"] += "profiles" in str(path) or "features" in str(path)
        if calls["n"] > 40:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, blob)

    monkeypatch.setattr(store, "_write_chunk_atomic", full_after_some)
    args = ["run", str(small / "config.yaml"), "--no-progress", "--set", "output.dir=full", *SMALL_BLOCKS]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "profiles stage" in err and str(small / "full") in err
    assert "Traceback" not in err and err.count("\n") == 1
    attrs = json.loads((small / "full" / "sendmap.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["status"] == "failed" and not (small / "full" / "summary.json").exists()
    monkeypatch.setattr(store, "_write_chunk_atomic", real)
    assert main(args) == 0
    assert "profiles: resuming" in capsys.readouterr().out
    _assert_same_store(small / "ref" / "sendmap.zarr", small / "full" / "sendmap.zarr")


def test_read_only_output_folder(small, monkeypatch, capsys):
    import pathlib

    ro = small / "readonly"
    ro.mkdir()
    args = ["run", str(small / "config.yaml"), "--no-progress", "--set", f"output.dir={ro / 'out'}"]
    if os.geteuid() != 0:  # root ignores permissions: simulate the refusal below instead
        ro.chmod(0o555)
    else:
        real_mkdir = pathlib.Path.mkdir

        def refuse(self, *a, **k):
            if str(self).startswith(str(ro)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            return real_mkdir(self, *a, **k)

        monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    try:
        assert main(args) == 2
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err
    assert f"cannot write the results to the output folder {ro / 'out'}" in err
    assert ("read-only" in err) if os.geteuid() == 0 else ("permission denied" in err)
    assert not (ro / "out").exists()


HOLD_LOCK = ("import sys, time; from sendmap.engine.lock import OutputLock\n"
             "with OutputLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")


def test_second_run_on_the_same_output_is_refused(small, capsys):
    """A run holding the output folder's lock (another process) refuses a second run, naming its pid; a lock file
    left by a process that no longer holds the lock (any ended run) refuses nothing."""
    out = small / "locked"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["run", str(small / "config.yaml"), "--no-progress", "--set", f"output.dir={out}"]) == 2
        err = capsys.readouterr().err
        assert f"another sendmap run (pid {holder.pid}) is writing to {out}" in err
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "sendmap.zarr").exists()  # refused before touching anything
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # the file names a live pid, but that process holds no lock: not a lock
        import socket

        (out / ".sendmap.lock").write_text(f"{sleeper.pid} {socket.gethostname()}")
        assert main(["run", str(small / "config.yaml"), "--no-progress", "--set", f"output.dir={out}",
                     *SMALL_BLOCKS]) == 0
    finally:
        sleeper.kill()
        sleeper.wait()


ZOMBIE_PARENT = """
import os, signal, subprocess, sys, time
# starts the run and never reaps it (a container's PID 1 without --init): once SIGKILLed it stays a zombie
child = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
lock = os.path.join(sys.argv[1], ".sendmap.lock")
for _ in range(6000):
    if os.path.exists(lock) and open(lock).read().startswith(str(child.pid)):
        break
    time.sleep(0.01)
os.kill(child.pid, signal.SIGKILL)
time.sleep(0.5)
state = open(f"/proc/{child.pid}/stat").read().split(")")[1].split()[0]
print(child.pid, state, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see the zombie")
def test_sigkilled_run_left_a_zombie_does_not_block_the_next(small, capsys):
    """issue: a SIGKILLed run whose parent does not reap it stays a zombie (its pid looks alive); the next run on
    that output must not be refused: the kernel released the killed run's lock."""
    out = small / "zombie"
    out.mkdir()
    cmd = [sys.executable, "-m", "sendmap.cli", "run", str(small / "config.yaml"), "--no-progress",
           "--set", f"output.dir={out}", *SMALL_BLOCKS]
    parent = subprocess.Popen([sys.executable, "-c", ZOMBIE_PARENT, str(out), *cmd], env=_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        pid, state = parent.stdout.readline().split()
        assert state == "Z"  # a zombie: os.kill(pid, 0) succeeds on it
        os.kill(int(pid), 0)
        assert main(cmd[3:]) == 0
    finally:
        parent.kill()
        parent.wait()
    assert json.loads((out / "summary.json").read_text())


def test_batch_continues_past_failures_and_reports(small, tmp_path, capsys):
    cfg = (small / "config.yaml").read_text()
    mib = str(small / "synth.mib")
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "a_good.yaml").write_text(cfg.replace("synth.mib", mib).replace("dir: results", f"dir: {tmp_path / 'a'}"))
    (folder / "b_bad.yaml").write_text(cfg.replace("synth.mib", str(small / "missing.mib"))
                                       .replace("dir: results", f"dir: {tmp_path / 'b'}"))
    (folder / "c_done.yaml").write_text(cfg.replace("synth.mib", mib).replace("dir: results", f"dir: {small / 'ref'}"))
    (folder / "notes.txt").write_text("not a config")
    assert main(["batch", str(folder), *SMALL_BLOCKS]) == 1
    out = capsys.readouterr().out
    rows = json.loads((folder / "batch" / "batch.json").read_text())["rows"]
    assert [r["config"] for r in rows] == ["a_good.yaml", "b_bad.yaml", "c_done.yaml"]
    assert [r["status"] for r in rows] == ["ok", "failed", "reused"]
    assert rows[0]["computed"] == ["ingest", "calibrate", "profiles", "peaks", "classify", "statistics", "report"]
    assert "input file not found" in rows[1]["reason"] and "missing.mib" in rows[1]["reason"]
    assert rows[2]["computed"] == [] and len(rows[2]["reused"]) == 7
    csv = (folder / "batch" / "batch.csv").read_text().splitlines()
    assert csv[0] == "config,status,computed,reused,wall_s,output,reason" and len(csv) == 4
    assert "3 configs: 1 ok, 1 reused (nothing recomputed), 1 failed" in out
    assert "input file not found" in (folder / "batch" / "logs" / "b_bad.log").read_text()
    assert main(["batch", str(tmp_path / "nothing_here")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["batch", str(tmp_path / "empty")]) == 2
    assert "no *.yaml config" in capsys.readouterr().err


def test_block_stages_read_one_block_at_a_time(small, monkeypatch):
    """Ingest and profiles never hold more than a block of frames per task: memory is set by compute.block_mb,
    not by the dataset (12 × 16 × 128² uint16 = 6.3 MB here, blocks of ≤ 0.3 MB)."""
    from sendmap.compute.ingest import IngestLoad
    from sendmap.engine.data import read_store_block
    from sendmap.stages import calibrate, profiles

    seen = {"ingest": [], "store": [], "store_frames": []}
    real_load, real_read = IngestLoad.__call__, read_store_block

    def load(self, item):
        r = real_load(self, item)
        seen["ingest"].append(r[1].nbytes)
        return r

    def read(item):
        r = real_read(item)
        seen["store"].append(r[1].nbytes)  # (sparse here: the frames' non-zero pixels)
        seen["store_frames"].append(len(r[1]))
        return r

    monkeypatch.setattr(IngestLoad, "__call__", load)
    for stage in (calibrate, profiles):  # (the stages that read the stored data)
        monkeypatch.setattr(stage, "read_store_block", read)
    assert main(["run", str(small / "config.yaml"), "--no-progress", "--set", "output.dir=blocks", "--force",
                 *SMALL_BLOCKS, "--until", "profiles"]) == 0
    total = 12 * 16 * 128 * 128 * 2
    assert sum(seen["ingest"]) == total  # every input frame read once
    # the stored data read once by calibrate, once by profiles
    assert sum(seen["store_frames"]) == 2 * 12 * 16 and sum(seen["store"]) < 2 * total
    for stage in ("ingest", "store"):
        assert max(seen[stage]) <= 0.3e6 and len(seen[stage]) >= 20, (stage, max(seen[stage]))


ROW_BLOCKS = ["--set", "compute.chunk_mb=0.3", "--set", "compute.block_mb=0.3", "--set", "output.figures=false"]
"""One scan row per block and one profile chunk of several blocks: each chunk is written from blocks that must
arrive in scan order."""


@pytest.fixture(scope="module")
def rows_ref(small):
    assert main(["run", str(small / "config.yaml"), "--no-progress", "--set", "output.dir=rows_threads",
                 *ROW_BLOCKS]) == 0
    return small / "rows_threads"


@pytest.mark.parametrize("scheduler", ["processes", "distributed"])
def test_schedulers_identical_with_many_blocks(small, rows_ref, scheduler):
    """Every array of the store equals the threads run's, bit for bit, with a dozen blocks per stage in flight
    (results are delivered in block order whatever the scheduler)."""
    out = f"sched_{scheduler}"
    extra = ["--set", "compute.memory_limit=1GB"] if scheduler == "distributed" else []
    assert main(["run", str(small / "config.yaml"), "--no-progress", "--set", f"compute.scheduler={scheduler}",
                 "--set", "compute.n_workers=2", "--set", f"output.dir={out}", *ROW_BLOCKS, *extra]) == 0
    g = zarr.open_group(str(small / out / "sendmap.zarr"), mode="r")
    # a dozen blocks, each profile chunk made of several of them
    assert g.attrs["stages"]["profiles"]["blocks"] == 12 and g["profiles/mean"].chunks[0] > 1
    _assert_same_store(rows_ref / "sendmap.zarr", small / out / "sendmap.zarr")


def test_slurm_cluster_options_reach_dask_jobqueue(monkeypatch):
    """compute.cluster: slurm builds dask_jobqueue.SLURMCluster(**cluster_options) (memory from memory_limit,
    cores from threads_per_worker) and scales it to n_workers (a stand-in module here: no SLURM on CI)."""
    import types

    from distributed import LocalCluster

    from sendmap.engine import execute
    from sendmap.config import ComputeConfig

    made = {}

    def slurm_cluster(**kw):
        made["kw"] = kw
        cluster = LocalCluster(n_workers=0, processes=False, dashboard_address=None)
        real_scale = cluster.scale
        cluster.scale = lambda n: (made.setdefault("scale", n), real_scale(1))[1]
        return cluster

    monkeypatch.setitem(sys.modules, "dask_jobqueue", types.SimpleNamespace(SLURMCluster=slurm_cluster))
    compute = ComputeConfig(scheduler="distributed", cluster="slurm", n_workers=4, memory_limit="8GB",
                            cluster_options={"queue": "gpu", "account": "p1", "walltime": "01:00:00"})
    try:
        client = execute.get_client(compute)
        assert client.submit(lambda x: x + 1, 1).result() == 2
    finally:
        execute.close_client()
    assert made["kw"] == {"queue": "gpu", "account": "p1", "walltime": "01:00:00", "memory": "8GB", "cores": 1}
    assert made["scale"] == 4
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    from sendmap.errors import SendmapInputError

    with pytest.raises(SendmapInputError, match="dask-jobqueue"):
        execute.get_client(compute)


def test_compute_memory_limit_is_validated(small):
    from sendmap.config import ConfigError, load_config

    assert load_config(small / "config.yaml", ["compute.memory_limit=1.5GB"]).compute.memory_limit == "1.5GB"
    assert load_config(small / "config.yaml", ["compute.memory_limit=500000000"]).compute.memory_limit == "500000000"
    with pytest.raises(ConfigError, match="compute.memory_limit"):
        load_config(small / "config.yaml", ["compute.memory_limit=lots"])
    with pytest.raises(ConfigError, match="did you mean 'compute.cluster'"):
        load_config(small / "config.yaml", ["compute.clustr=slurm"])


def test_run_killed_from_outside_mid_profiles_while_a_second_run_is_refused(small, capsys):
    """A real run on the same output is refused while another holds it; that run, SIGKILLed from outside (no
    hook) right after it enters profiles, is completed by the next run with the same result."""
    out = small / "outside_kill"
    cmd = [sys.executable, "-m", "sendmap.cli", "run", str(small / "config.yaml"), "--no-progress",
           "--set", f"output.dir={out}", *SMALL_BLOCKS]
    proc = subprocess.Popen(cmd, env={**_env(), "SENDMAP_RESUME_INTERVAL_S": "0", "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("[sendmap] profiles:"):
                break
        os.kill(proc.pid, signal.SIGSTOP)  # frozen mid-stage, holding the output folder
        assert main(cmd[3:]) == 2
        assert f"another sendmap run (pid {proc.pid}) is writing to {out}" in capsys.readouterr().err
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    assert main(cmd[3:]) == 0
    _assert_same_store(small / "ref" / "sendmap.zarr", out / "sendmap.zarr")


def test_prefetched_imports_cover_the_later_stages():
    """While ingest runs, prefetch_imports imports engine.execute.LATER_STAGE_MODULES, a hand-kept list: every sendmap
    module that a function of a stage module after ingest (or of the per-block compute) imports when it runs must
    then be loaded already (a module added to a stage and not to the list fails here), and every name in the list
    must exist."""
    import ast

    import sendmap

    pkg = Path(sendmap.__file__).parent
    lazy = set()
    for f in [*pkg.joinpath("stages").glob("*.py"), *pkg.joinpath("compute").glob("*.py")]:
        if f.stem in ("ingest", "input"):
            continue
        tree = ast.parse(f.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
                        lazy.add(f"sendmap.{node.module}")
                    elif isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                        lazy.add(f"sendmap.{f.parent.name}.{node.module}")
    assert "sendmap.science.peaks" in lazy and "sendmap.report.build" in lazy  # (the walk finds them)
    code = ("import sys, importlib, sendmap.stages.ingest, sendmap.pipeline\n"
            "from sendmap.engine.execute import LATER_STAGE_MODULES\n"
            "[importlib.import_module(m) for m in LATER_STAGE_MODULES]\n"
            "print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    assert not lazy - loaded, f"add to LATER_STAGE_MODULES: {sorted(lazy - loaded)}"


def test_raised_stage_revision_recomputes_that_stage_and_later(small, monkeypatch, capsys):
    """A store written before a stage's ``revision`` was raised (a change in what it stores) is recomputed from
    that stage on, without --force; the stages before it are reused, and then the new keys are reused."""
    import dataclasses

    from sendmap import pipeline

    run = ["run", str(small / "config.yaml"), "--no-progress", "--set", "output.dir=revision", *SMALL_BLOCKS]

    def reused():
        return json.loads((small / "revision" / "summary.json").read_text())["reused_stages"]

    assert main(run) == 0 and reused() == []
    revised = tuple(dataclasses.replace(st, revision=st.revision + 1) if st.name == "peaks" else st
                    for st in pipeline.STAGES)
    monkeypatch.setattr(pipeline, "STAGES", revised)
    assert main(run) == 0 and reused() == ["ingest", "calibrate", "profiles"]
    assert main(run) == 0 and len(reused()) == len(revised)
