"""Every bad input gets a clear answer (issue 21): `sendmap` run as a user would, in a subprocess, on one small
synthetic scan (12 × 16 positions of 64² Merlin frames, made once for the module).

Each case asserts the exit code (2: refused with one paragraph naming the key or file; 0: run, with a recorded
warning where the case asks for one), a phrase of the message, no traceback and no Python warning on the terminal,
no input file modified (hashes before/after), and, after a failure, nothing that looks complete in the output
folder: each case's output folder starts with a previous run's complete ``summary.json`` and store status, which
the failure must remove or mark ``failed``.

Cases marked ``xfail(reason="fixed on branch ...")`` are fixed by another engineer's branch (the marks are to be
removed once it is merged); ``strict=False``, so they may pass already.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
ENV.pop("PYTHONWARNINGS", None)
ENV.pop("PYTHONIOENCODING", None)
SCAN, DET = (12, 16), 64


def sendmap(*args, cwd, env=None, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """``sendmap ARGS`` in a subprocess; fails the test on a hang (``timeout`` s)."""
    try:
        return subprocess.run([sys.executable, "-m", "sendmap.cli", *map(str, args)], cwd=cwd, env=env or ENV,
                              capture_output=True, text=True, timeout=timeout, encoding="utf-8", errors="replace")
    except subprocess.TimeoutExpired:
        pytest.fail(f"sendmap {' '.join(map(str, args))} hung (no answer in {timeout:g} s)")


def digests(*folders: Path, skip: Path | None = None) -> dict:
    """sha256 of every regular file under ``folders`` (symlinks, FIFOs and ``skip`` left out)."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if skip is not None and (p == skip or skip in p.parents):
                continue
            if not p.is_symlink() and p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def store_attrs(out: Path) -> dict:
    meta = out / "sendmap.zarr" / "zarr.json"
    return json.loads(meta.read_text()).get("attributes", {}) if meta.is_file() else {}


def fake_previous_complete_run(out: Path) -> None:
    """What a finished earlier run leaves: summary.json and a store marked complete."""
    (out / "sendmap.zarr").mkdir(parents=True)
    (out / "sendmap.zarr" / "zarr.json").write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": {"status": "complete"}}))
    (out / "summary.json").write_text(json.dumps({"status": "complete", "classes": {}}))


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """The synthetic scan S (synth.mib + .hdr, config.yaml) and its frames as an array (for variants)."""
    from sendmap.cli import main
    from sendmap.io import open_dataset

    d = tmp_path_factory.mktemp("bad_inputs")
    assert main(["synth", str(d / "S"), "--scan-shape", *map(str, SCAN), "--detector", str(DET), "--quiet"]) == 0
    frames = np.asarray(open_dataset(d / "S" / "synth.mib", "mib", SCAN).data)
    assert frames.shape == (*SCAN, DET, DET)
    return {"dir": d, "S": d / "S", "frames": frames, "digests": digests(d / "S"),
            "config": yaml.safe_load((d / "S" / "config.yaml").read_text())}


# --------------------------------------------------------------------------------------------- cases

@dataclass
class Case:
    id: str
    rc: int | tuple  # expected exit code(s)
    phrase: str | tuple | None = None  # in stderr (rc 2) / stdout (rc 0); a tuple: any of them
    set: tuple = ()  # --set overrides
    setup: Callable | None = None  # setup(case_dir, scan) -> {"config": dict changes, "args": [...], ...}
    args: tuple = ()  # more CLI arguments of run
    command: str = "run"
    warn: bool = False  # rc 0 must record a warning (summary.json / store attrs "warnings")
    owner: str | None = None  # the branch that fixes it (xfail until merged)
    timeout: float = 120.0
    env: dict = field(default_factory=dict)


def _npy(name, make):
    """setup: an npy input made from the scan's frames by ``make(frames)``, scan_shape from its shape."""
    def setup(case_dir, scan):
        a = make(scan["frames"])
        np.save(case_dir / name, a)
        return {"input": {"path": name, "format": "npy", "scan_shape": None}}
    return setup


def _file(name, content: bytes):
    def setup(case_dir, scan):
        (case_dir / name).write_bytes(content)
        return {"input": {"path": name, "format": "auto"}}
    return setup


def _truncated_mib(case_dir, scan):
    data = (scan["S"] / "synth.mib").read_bytes()
    (case_dir / "t.mib").write_bytes(data[: len(data) // 2 + 123])
    return {"input": {"path": "t.mib"}}


def _mib_without_hdr(case_dir, scan):
    (case_dir / "n.mib").write_bytes((scan["S"] / "synth.mib").read_bytes())
    return {"input": {"path": "n.mib", "scan_shape": None}}


def _symlink_loop(case_dir, scan):
    (case_dir / "a.mib").symlink_to(case_dir / "b.mib")
    (case_dir / "b.mib").symlink_to(case_dir / "a.mib")
    return {"input": {"path": "a.mib"}}


def _fifo(case_dir, scan):
    os.mkfifo(case_dir / "x.mib")
    return {"input": {"path": "x.mib"}}


def _zarr(case_dir, scan, damage: str):
    import zarr

    z = zarr.create_array(str(case_dir / "d.zarr"), shape=scan["frames"].shape, dtype="uint16",
                          chunks=(4, SCAN[1], DET, DET))
    z[...] = scan["frames"]
    chunks = sorted(p for p in (case_dir / "d.zarr").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert chunks, "no chunk files written"
    if damage == "corrupt":
        chunks[1].write_bytes(b"\x00garbage" * 50)
    else:
        chunks[1].unlink()  # a missing chunk reads as the fill value: frames with no counts
    return {"input": {"path": "d.zarr", "format": "zarr", "scan_shape": None}}


def _mask_everything(case_dir, scan):
    np.save(case_dir / "m.npy", np.ones((DET, DET), np.uint8))
    return {"calibration": {"mask_file": "m.npy"}}


def _mask_file_wrong_shape(case_dir, scan):
    np.save(case_dir / "m.npy", np.zeros((10, 10), np.uint8))
    return {"calibration": {"mask_file": "m.npy"}}


def _calibrant_not_json(case_dir, scan):
    (case_dir / "cal.json").write_text("this is not json")
    return {"calibration": {"calibrant": "cal.json"}}


def _output_is_a_file(case_dir, scan):
    (case_dir / "results.txt").write_text("keep me")
    return {"output": {"dir": "results.txt"}}


def _output_unwritable(case_dir, scan):
    ro = case_dir / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return {"output": {"dir": "ro/out"}}


LOCK_HOLDERS: list = []
"""Processes holding an output folder's lock for a case (ended by :func:`_end_lock_holders`)."""


def _output_locked(case_dir, scan):
    # a live run (another process, holding the folder's lock) writes there: its complete results stay untouched
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from sendmap.engine.lock import OutputLock\n"
                               "with OutputLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)\n",
                               str(case_dir / "out")], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    LOCK_HOLDERS.append(holder)
    assert holder.stdout.readline().strip() == "held"
    return {}


@pytest.fixture(autouse=True)
def _end_lock_holders():
    yield
    while LOCK_HOLDERS:
        h = LOCK_HOLDERS.pop()
        h.kill()
        h.wait()


def _config_text(text):
    def setup(case_dir, scan):
        (case_dir / "c.yaml").write_text(text)
        return {"config_file": "c.yaml"}
    return setup


def _thin(frames, electrons):
    """Poisson thinning of the 2e4 e⁻ patterns to about ``electrons`` counts each."""
    rng = np.random.default_rng(0)
    return rng.binomial(frames.astype(np.int64), electrons / frames.sum(axis=(2, 3)).mean()).astype(np.uint16)


PEAKS, CALIB, FORMATS = "peaks", "calib", "formats"
MERGED = {PEAKS, FORMATS, CALIB}
"""Branches whose fixes have landed: their cases run and must pass."""

CASES = [
    # --- config values and --set overrides (issue cases 4, reversed ranges, bounds)
    Case("q_pixel_size_inf", 2, "calibration.q_pixel_size", set=("calibration.q_pixel_size=.inf",)),
    Case("q_pixel_size_nan", 2, "finite number", set=("calibration.q_pixel_size=.nan",)),
    Case("q_pixel_size_negative", 2, "calibration.q_pixel_size", set=("calibration.q_pixel_size=-0.0125",)),
    Case("q_pixel_size_zero", 2, "calibration.q_pixel_size", set=("calibration.q_pixel_size=0",)),
    Case("scan_step_in_metres", 2, "calibration.scan_step_nm", set=("calibration.scan_step_nm=4e-9",)),
    Case("scan_step_huge", 2, "calibration.scan_step_nm", set=("calibration.scan_step_nm=1e9",)),
    Case("beam_energy_in_volts", 2, "calibration.beam_energy_kv", set=("calibration.beam_energy_kv=200000",)),
    Case("convergence_zero", 2, "calibration.convergence_mrad", set=("calibration.convergence_mrad=0",)),
    Case("convergence_in_microrad", 2, "calibration.convergence_mrad", set=("calibration.convergence_mrad=2000",)),
    Case("peak_window_reversed", 2, "peaks.window is [low, high]", set=("peaks.window=[0.42, 0.22]",)),
    Case("peak_window_negative", 2, "peaks.window must lie at Q >= 0", set=("peaks.window=[-0.1, 0.3]",)),
    Case("second_window_reversed", 2, "peaks.second_window", set=("peaks.second_window=[0.75, 0.45]",)),
    Case("denoise_range_reversed", 2, "peaks.denoise_q_range", set=("peaks.denoise_q_range=[0.8, 0.1]",)),
    Case("ellipse_window_reversed", 2, "calibration.ellipse_window", set=("calibration.ellipse_window=[0.45, 0.15]",)),
    Case("ellipse_ratio_zero", 2, "ratio > 0", set=("calibration.ellipse=[0, 30]",)),
    Case("crystal_band_reversed", 2, "classify.definitions.crystal_bands[1]",
         set=("classify.definitions.crystal_bands=[[0.38, 0.44], [0.60, 0.45]]",)),
    Case("lif_band_reversed", 2, "classify.definitions.lif_bands[0]",
         set=("classify.definitions.lif_bands=[[0.53, 0.465]]",)),
    Case("sei_type1_range_reversed", 2, "classify.definitions.sei_type1_range",
         set=("classify.definitions.sei_type1_range=[0.37, 0.307]",)),
    Case("sei_type2_range_reversed", 2, "classify.definitions.sei_type2_range",
         set=("classify.definitions.sei_type2_range=[0.33, 0.27]",)),
    Case("electrolyte_range_reversed", 2, "classify.definitions.electrolyte_range",
         set=("classify.definitions.electrolyte_range=[0.307, 0.26]",)),
    Case("q_max_below_window", 2, "profiles.q_max", set=("profiles.q_max=0.05",)),
    Case("q_max_negative", 2, "profiles.q_max", set=("profiles.q_max=-1",)),
    Case("unknown_key", 2, "did you mean 'peaks.window'", set=("peaks.windw=[0.2, 0.4]",)),
    Case("unknown_section", 2, "did you mean 'calibration'", set=("calibraton.q_pixel_size=0.0125",)),
    Case("set_without_equals", 2, "section.key=value", set=("peaks.window",)),
    Case("set_value_not_yaml", 2, "cannot parse", set=("peaks.window=[0.2,",)),
    Case("wrong_type", 2, "profiles.n", set=("profiles.n=abc",)),
    Case("unknown_format", 2, "input.format", set=("input.format=tiff",)),
    Case("bad_memory_limit", 2, "not a memory size", set=("compute.memory_limit=lots",)),
    Case("crop_reversed", 2, "input.crop_q", set=("input.crop_q=[40, 20, 0, 64]",)),
    Case("scan_shape_zero", 2, "scan_shape", set=("input.scan_shape=[0, 16]",)),
    Case("config_missing", 2, "config file not found", setup=lambda d, s: {"config_file": "nowhere.yaml"}),
    Case("config_not_yaml", 2, "not valid YAML", setup=_config_text("input: [\n")),
    Case("config_not_a_mapping", 2, "must be a mapping", setup=_config_text("- a\n- b\n")),
    Case("config_no_input", 2, "missing required key 'input'", setup=_config_text("output: {dir: out}\n")),
    Case("until_unknown_stage", 2, "invalid choice", args=("--until", "plot")),
    # --- input files
    Case("input_missing", 2, "not found", set=("input.path=nowhere.mib",)),
    Case("input_is_a_folder", 2, "Is a directory", setup=lambda d, s: {"input": {"path": "."}}),
    Case("input_empty_file", 2, "e.mib", setup=_file("e.mib", b"")),
    Case("input_truncated_mib", 2, "truncated", setup=_truncated_mib),
    Case("input_unknown_format", 2, "cannot tell the format", setup=_file("d.xyz", b"hello world" * 100)),
    Case("scan_shape_mismatch", 2, "frames", set=("input.scan_shape=[5, 7]",)),
    Case("mask_file_missing", 2, "calibration.mask_file", set=("calibration.mask_file=nomask.npy",)),
    Case("mask_file_wrong_shape", 2, "m.npy", setup=_mask_file_wrong_shape),
    Case("calibrant_missing", 2, "calibration.calibrant", set=("calibration.calibrant=nocal.json",)),
    Case("calibrant_not_json", 2, "calibration.calibrant", setup=_calibrant_not_json),
    Case("nan_in_float_data", 2, "NaN", setup=_npy("f.npy", lambda f: np.where(
        np.arange(f.size).reshape(f.shape) == 5000, np.nan, f.astype(np.float32)))),
    # --- output folder
    Case("output_is_a_file", 2, "is a file, not a folder", setup=_output_is_a_file),
    Case("output_unwritable", 2, "permission denied", setup=_output_unwritable),
    Case("output_locked_by_a_live_run", 2, "another sendmap run", setup=_output_locked),
    # --- synth (issue case 8)
    Case("synth_into_a_file", 2, "is not a folder", command="synth",
         setup=lambda d, s: (d / "D").write_text("x") and {"args": [d / "D"]}),
    Case("synth_zero_scan", 2, "scan_shape", command="synth",
         setup=lambda d, s: {"args": [d / "D", "--scan-shape", "0", "5"]}),
    Case("synth_tiny_detector", 2, "detector_shape", command="synth",
         setup=lambda d, s: {"args": [d / "D", "--detector", "8"]}),
    Case("synth_q_pixel_size_inf", 2, "q_pixel_size must be a finite number", command="synth",
         setup=lambda d, s: {"args": [d / "D", "--q-pixel-size", "inf"]}),
    Case("synth_step_in_metres", 2, "step_nm must lie in", command="synth",
         setup=lambda d, s: {"args": [d / "D", "--step-nm", "4e-9"]}),
    # --- terminals (issue case 9): a full run whose output is read on an ASCII terminal
    # (a whole run, with numba's kernels compiled in the subprocess where the cache is cold, ≈ 90 s of CPU: timed
    # out at 120 s on a 2-core machine loaded by a second test worker and a sweep, sessions 16-18)
    # (300 s was not enough at load 5-15 with a cold cache, sessions 20-21: a timeout only matters where it hangs)
    Case("ascii_terminal", 0, "+/-", env={"PYTHONIOENCODING": "ascii"}, timeout=900.0),
    # --- cases fixed on other branches (issue cases 1, 2, 3, 5, 6, 10 and the exit-0-with-wrong-results list)
    Case("q_pixel_size_tenfold_small", (0, 2), ("q_pixel_size", "peaks.window"), warn=True, owner=PEAKS,
         set=("calibration.q_pixel_size=0.00125",), args=("--until", "peaks")),
    Case("crop_q_tiny", (0, 2), ("crop_q", "peaks.window"), warn=True, owner=PEAKS,
         set=("input.crop_q=[26, 38, 26, 38]",), args=("--until", "peaks")),
    Case("all_zero_data", (0, 2), "count", warn=True, owner=PEAKS, args=("--until", "peaks"),
         setup=_npy("z.npy", lambda f: np.zeros_like(f))),
    Case("all_nan_data_masked", (0, 2), ("NaN", "count"), warn=True, owner=PEAKS, args=("--until", "peaks"),
         set=("input.nonfinite=mask",), setup=_npy("n.npy", lambda f: np.full(f.shape, np.nan, np.float32))),
    Case("mask_file_masks_everything", (0, 2), "mask", warn=True, owner=PEAKS, args=("--until", "peaks"),
         setup=_mask_everything),
    Case("one_electron_per_pattern", (0, 2), ("dose", "count"), warn=True, owner=PEAKS, args=("--until", "peaks"),
         set=("dose.electrons_per_pattern=1",), setup=_npy("o.npy", lambda f: _thin(f, 1.0))),
    Case("negative_int16_data", (0, 2), ("negative", "count"), warn=True, owner=PEAKS, args=("--until", "peaks"),
         setup=_npy("i.npy", lambda f: -f.astype(np.int16))),
    Case("uint32_at_maximum", (0, 2), ("saturat", "count"), warn=True, owner=PEAKS, args=("--until", "peaks"),
         setup=_npy("u.npy", lambda f: np.full(f.shape, np.iinfo(np.uint32).max, np.uint32))),
    Case("npy_all_ones", (0, 2), ("count", "peak"), warn=True, owner=PEAKS, args=("--until", "peaks"),
         setup=_npy("a.npy", lambda f: np.ones_like(f))),
    Case("zarr_missing_chunks", (0, 2), ("count", "chunk"), warn=True, owner=PEAKS, args=("--until", "peaks"),
         setup=lambda d, s: _zarr(d, s, "missing")),
    Case("peak_window_off_detector", (0, 2), ("peaks.window", "q_pixel_size"), warn=True, owner=PEAKS,
         set=("input.crop_q=[16, 48, 16, 48]", "calibration.q_pixel_size=0.025"), args=("--until", "peaks")),
    # 16 × 16 binned pixels: no traceback; the ellipse is fitted or "not fitted" with a warning naming input.bin_q
    Case("bin_q_4", (0, 2), None, owner=CALIB, set=("input.bin_q=4",), args=("--until", "calibrate")),
    Case("one_by_one_scan", (0, 2), ("scan", "crop_r"), warn=True, owner=CALIB, set=("input.crop_r=[0, 1, 0, 1]",),
         args=("--until", "peaks")),
    # the dose checks belong to statistics (the stage keyed by the dose section): these run to the end, no figures
    Case("dose_far_too_low", (0, 2), "dose", warn=True, owner=CALIB, set=("dose.electrons_per_pattern=1e-3",
                                                                          "output.figures=false")),
    Case("ten_electrons_per_pattern", (0, 2), "dose", warn=True, owner=CALIB, args=("--set", "output.figures=false"),
         set=("dose.electrons_per_pattern=10",), setup=_npy("t.npy", lambda f: _thin(f, 10.0))),
    Case("zarr_corrupt_chunk", 2, ("d.zarr", "chunk"), owner=FORMATS, setup=lambda d, s: _zarr(d, s, "corrupt"),
         args=("--until", "ingest")),
    Case("symlink_loop", 2, ("a.mib", "symbolic link", "symlink"), owner=FORMATS, setup=_symlink_loop),
    Case("fifo_input", 2, ("x.mib", "regular file"), owner=FORMATS, setup=_fifo, timeout=15.0),
    Case("mib_without_hdr_no_scan_shape", (0, 2), "scan_shape", warn=True, owner=FORMATS, setup=_mib_without_hdr,
         args=("--until", "ingest")),
    Case("npy_3d_no_scan_shape", (0, 2), "scan_shape", warn=True, owner=FORMATS, args=("--until", "ingest"),
         setup=_npy("three.npy", lambda f: f.reshape(-1, DET, DET))),
]


OUTPUT_UNKNOWN = {"config_missing", "config_not_yaml", "config_not_a_mapping", "until_unknown_stage",
                  "output_is_a_file", "output_unwritable"}
"""Refused before any output folder can be told (no config to read it from), or with another output than out/."""


def _in_subprocess(c: Case) -> bool:
    """Cases run as their own process: those of other branches (their code may still crash the interpreter),
    a hang (FIFO), a terminal's encoding. The others run ``sendmap.cli.main`` in this process (imports and numba
    kernels loaded once: ~0.1 s a case instead of ~1.5 s)."""
    return (c.owner is not None and c.owner not in MERGED) or bool(c.env)


def _param(c: Case):
    marks = ([pytest.mark.xfail(reason=f"fixed on branch {c.owner}", strict=False)]
             if c.owner and c.owner not in MERGED else [])
    return pytest.param(c, id=c.id, marks=marks)


@dataclass
class Prepared:
    case: Case
    dir: Path
    argv: list
    before: dict
    scan_dir: Path
    result: subprocess.CompletedProcess | None = None


def prepare(case: Case, scan, case_dir: Path) -> Prepared:
    """The case's folder (config, inputs, out/ with a previous complete run), its argv, the inputs' hashes."""
    out = case_dir / "out"
    fake_previous_complete_run(out)
    extra = dict((case.setup(case_dir, scan) if case.setup else None) or {})
    cfg = json.loads(json.dumps(scan["config"]))
    cfg["input"]["path"] = str(scan["S"] / cfg["input"]["path"])
    cfg["output"] = {"dir": "out"}
    cfg.setdefault("compute", {})["progress"] = False
    for section in ("input", "calibration", "output"):
        cfg[section].update(extra.get(section, {}))
    cfg["input"] = {k: v for k, v in cfg["input"].items() if v is not None}
    config_file = case_dir / extra.get("config_file", "config.yaml")
    if "config_file" not in extra:
        config_file.write_text(yaml.safe_dump(cfg))
    if case.command == "run":
        argv = ["run", str(config_file), *case.args]
        for s in case.set:
            argv += ["--set", s]
    else:
        argv = [case.command, *map(str, extra.get("args", []))]
    return Prepared(case, case_dir, argv, digests(scan["S"], case_dir, skip=out), scan["S"])


@pytest.fixture(scope="module")
def subprocess_cases(scan, tmp_path_factory):
    """The subprocess cases, prepared and run three at a time (most of each is Python's and numba's start-up)."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [prepare(c, scan, tmp_path_factory.mktemp(c.id)) for c in CASES if _in_subprocess(c)]

    def run(p: Prepared):
        try:
            p.result = subprocess.run([sys.executable, "-m", "sendmap.cli", *p.argv], cwd=p.dir,
                                      env=dict(ENV, **p.case.env), capture_output=True, text=True,
                                      timeout=p.case.timeout, encoding="utf-8", errors="replace")
        except subprocess.TimeoutExpired:
            p.result = None
        return p

    with ThreadPoolExecutor(3) as pool:
        return {p.case.id: p for p in pool.map(run, todo)}


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(scan, tmp_path, case: Case, request, capsys):
    if case.id == "output_unwritable" and os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    if _in_subprocess(case):
        p = request.getfixturevalue("subprocess_cases")[case.id]
        if p.result is None:
            pytest.fail(f"sendmap {' '.join(p.argv)} hung (no answer in {case.timeout:g} s)")
        rc, stdout, stderr = p.result.returncode, p.result.stdout, p.result.stderr
    else:
        from sendmap.cli import main

        p = prepare(case, scan, tmp_path)
        cwd = os.getcwd()
        os.chdir(p.dir)
        try:
            rc = main(p.argv)
        except SystemExit as exc:  # argparse
            rc = exc.code
        finally:
            os.chdir(cwd)
        stdout, stderr = capsys.readouterr()
    check(p, rc, stdout, stderr)


def check(p: Prepared, rc: int, stdout: str, stderr: str) -> None:
    case, out = p.case, p.dir / "out"
    text = stderr + stdout
    assert "Traceback" not in text, text[-3000:]
    assert "Warning:" not in stderr, stderr[-2000:]  # no numpy RuntimeWarning / matplotlib UserWarning shown
    codes = case.rc if isinstance(case.rc, tuple) else (case.rc,)
    assert rc in codes, f"exit code {rc}\n{text[-3000:]}"
    assert digests(p.scan_dir, p.dir, skip=out) == p.before, "an input file was modified"
    phrases = case.phrase if isinstance(case.phrase, tuple) else (case.phrase,)
    if rc == 2:
        assert stderr.startswith("sendmap: error: ") or "invalid choice" in stderr, stderr
        assert len(stderr.strip().splitlines()) == 1 or "usage:" in stderr, "not one paragraph: " + stderr
        if case.phrase:
            assert any(ph.lower() in stderr.lower() for ph in phrases), stderr
        if case.command != "run" or case.id in OUTPUT_UNKNOWN:
            return
        if case.id == "output_locked_by_a_live_run":  # another run's folder: left as it was
            assert (out / "summary.json").exists() and store_attrs(out)["status"] == "complete"
            return
        assert not (out / "summary.json").exists(), "a failed run left the previous summary.json in place"
        assert store_attrs(out).get("status") == "failed", store_attrs(out)
        assert store_attrs(out).get("error")
        return
    if case.phrase and (not case.owner or case.owner in MERGED):
        assert any(ph in stdout for ph in phrases), stdout[-2000:]
    if case.command != "run":
        return
    attrs = store_attrs(out)
    until = "--until" in case.args
    assert attrs.get("status") == ("partial" if until else "complete")
    if not until:
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "complete" and summary["warnings"] == attrs.get("warnings", [])
    if case.warn:
        warns = attrs.get("warnings", [])
        assert warns, "ran without a recorded warning"
        assert all({"stage", "code", "message"} <= set(w) for w in warns)
        assert any(any(ph.lower() in w["message"].lower() for ph in phrases) for w in warns), warns


def test_the_synthetic_scan_is_not_modified(scan, subprocess_cases):
    """After every case (here and in the subprocesses), the shared scan's files are as ``sendmap synth`` wrote them."""
    assert digests(scan["S"]) == scan["digests"]


# --------------------------------------------------------------------------------------------- more than one run

def _config(scan, tmp_path, **sections) -> Path:
    cfg = json.loads(json.dumps(scan["config"]))
    cfg["input"]["path"] = str(scan["S"] / cfg["input"]["path"])
    cfg["output"] = {"dir": "out"}
    cfg.setdefault("compute", {})["progress"] = False
    for k, v in sections.items():
        cfg[k].update(v)
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_failure_after_a_complete_run_marks_it_failed_and_the_next_run_reuses_its_stages(scan, tmp_path):
    """A real complete run, then failures before the start (a bad key, a missing input): summary.json goes and
    the store says failed with the error; the next good run reuses every stage and is complete again."""
    cfg = _config(scan, tmp_path)
    out = tmp_path / "out"
    assert sendmap("run", cfg, "--until", "profiles", cwd=tmp_path).returncode == 0
    r = sendmap("run", cfg, cwd=tmp_path)
    assert r.returncode == 0 and "Warning:" not in r.stderr, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and isinstance(summary["warnings"], list)
    assert "internal_warnings" in summary
    for bad in (["--set", "peaks.windw=1"], ["--set", "input.path=gone.mib"]):
        r = sendmap("run", cfg, *bad, cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert not (out / "summary.json").exists()
        attrs = store_attrs(out)
        assert attrs["status"] == "failed" and attrs["error"] in r.stderr
    r = sendmap("run", cfg, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reused_stages"] == ["ingest", "calibrate", "profiles", "peaks", "classify", "statistics", "report"]
    assert store_attrs(out)["status"] == "complete" and store_attrs(out).get("error") is None


def test_sigterm_during_a_run_marks_the_output_failed(scan, tmp_path):
    """SIGTERM (kill, a batch system's limit) mid-run: exit 143, a message, the store failed, no summary."""
    cfg = _config(scan, tmp_path)
    out = tmp_path / "out"
    fake_previous_complete_run(out)
    proc = subprocess.Popen([sys.executable, "-m", "sendmap.cli", "run", str(cfg), "--force"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    for line in proc.stdout:  # wait until a stage runs
        if line.startswith("[sendmap] calibrate") or time.time() - t0 > 60:
            break
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("sendmap did not stop on SIGTERM")
    assert proc.returncode == 143 and "SIGTERM" in err and "Traceback" not in err, err
    assert not (out / "summary.json").exists()
    assert store_attrs(out)["status"] == "failed" and "SIGTERM" in store_attrs(out)["error"]


def test_context_warn_records_in_store_and_summary_and_drops_with_its_stage(tmp_path):
    """Context.warn: logged once, kept in the store attrs with its stage and code; a recomputed stage drops its
    old warnings, a reused one keeps them."""
    from sendmap.config import config_from_dict
    from sendmap.engine.context import Context
    from sendmap.engine.runner import build_summary
    from sendmap.engine.store import open_store

    g = open_store(tmp_path, mode="a")
    lines = []
    ctx = Context(config_from_dict({"input": {"path": "x.npy"}}), tmp_path, g, None, {}, lines.append)
    ctx.stage = "peaks"
    ctx.warn("every peak sits at the window's edge (peaks.window)", "peak_at_window_edge")
    assert lines == ["[sendmap] warning: every peak sits at the window's edge (peaks.window)"]
    rec = {"stage": "peaks", "code": "peak_at_window_edge",
           "message": "every peak sits at the window's edge (peaks.window)"}
    assert list(open_store(tmp_path, mode="r").attrs["warnings"]) == [rec]
    assert build_summary(g, {}, [])["warnings"] == [rec]


def test_cli_text_falls_back_to_ascii():
    from sendmap.cli import ascii_text

    assert ascii_text("0.3294 ± 0.0051 1/Å, 2 × 10⁴ e⁻/Å² → I(Q)·Q⁴") == \
        "0.3294 +/- 0.0051 1/A, 2 x 10^4 e^-/A^2 -> I(Q)*Q^4"
    assert ascii_text("Å⁻¹") == "A^-1"
