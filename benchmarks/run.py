"""`make bench`: sendmap against its peers on the same data, in one run; prints times and ratios.

Sections (``--only NAME[,NAME]`` runs some; all by default). ``profiles``, ``wholerun`` and ``rerun`` run on two
files (``--files 256,128`` by default; ``--files 128`` runs one alone): the 2.9 GB 256² file (``--data3g``) and the
2.9 GB 128² file of issue 20 (``--data128``: 240 × 360 positions of 128 × 128 uint16 frames, 86 400 patterns, 2 ×
10⁴ e⁻), where the cost is per pattern and per position rather than per pixel. The last lines print every ratio of
the run, the two files side by side, with the targets (``summary``).

* ``profiles``: time per pattern of sendmap's profile stage, pyFAI's integrate1d (CSR) and py4DSTEM's
  PolarDatacube radial statistics on the frames of one Merlin file, and the ratios (targets: pyFAI ≥ 5×,
  py4DSTEM ≥ 200× slower per pattern than sendmap).
* ``wholerun``: the whole ``sendmap run --force --no-progress`` (ingest to figures, one process, wall time and
  peak RssAnon) against pyFAI's integrate1d alone over the same frames, reading included (target: sendmap's
  whole run faster).
* ``rerun``: on each file (256²: ``--rerun-data``, default ``--data3g``): wall time and peak memory of a first
  ``sendmap run --force`` and of a re-run after a classification change (``--set classify.method=gmm``; target
  ≤ 20 % of the first, issue 20). On the 256² file also (unless ``--no-rerun-extras``) a re-run to another
  classification without figures, a first run on a local dask cluster of 2 workers limited to ``--worker-memory``
  each (default 500MB: the dataset is several times their memory; the largest RSS of each worker and whether its
  results equal the threads run's) and the floor of the re-run on this machine (benchmarks/rerun_floor.py: the
  CPU time of its work alone, measured warm in one process, and the least wall time that work can take on this
  machine's cores, however it is scheduled).
* ``ingest``: a 2.15 GB Merlin file (128 × 128 positions of 256² uint16, ``--data``) ingested by sendmap
  (``timing_s.ingest``, and ``sendmap run --until ingest`` as a process) and by rosettasciio's lazy reader
  written to zarr with dask (benchmarks/ref_rsciio_ingest.py); then the whole ``sendmap run`` on it; peak
  anonymous memory (RssAnon) of each.

Data of ``profiles`` and ``wholerun``: a 2.9 GB Merlin file, 148 × 148 positions of 256² uint16 frames
(21 904 frames, 2 879 412 224 bytes incl. 384-byte frame headers), written once by ``sendmap synth`` into
``--data3g`` (default bench_data/merlin_3g, git-ignored; a few minutes), and the 128² file (86 400 frames,
2 864 332 800 bytes; ``--data128``, default bench_data/merlin_128, about 4 minutes once). Per file, one
``sendmap run`` serves both sections, and one pyFAI pass (benchmarks/ref_pyfai.py, in a subprocess) too. The page cache holds the
file for every tool (it is read once before the first one).

What each tool computes per pattern (so the ratios are read knowing who does more):

* sendmap, profile stage (``timing_s.profiles`` of summary.json / number of patterns: the stage alone, over
  all frames, read from sendmap's store): every pattern binned around its **own** centre (per-position
  centres from the calibrate stage), in **elliptical** coordinates (fitted ellipse), 1-pixel radial bins
  out to the nearest detector corner, 72 azimuthal sectors, pixels split into 3 × 3 sub-pixels; from those
  sums per Q bin: azimuthal mean I(Q), its Poisson SEM, the dispersion (pixel variance / mean), a robust
  (sector sigma-clipped) mean, I·Qⁿ and its SEM, the Bragg-spot significance (sliding disk-sized azimuthal
  window), and virtual bright-field / annular dark-field intensities; results written to the zarr store.
  Uses all cores. (At the time of writing the stage rounds each centre to a 1/8-px grid and bins with
  precomputed pixel→bin tables, visiting only non-zero pixels: sendmap.science.polar_tables.)
* pyFAI ``AzimuthalIntegrator.integrate1d`` (benchmarks/ref_pyfai.py): **one fixed centre** for all
  frames (sendmap's mean centre), circular, the same 1-pixel radial bins, azimuthal **mean only** (no
  variance, no error model, no solid-angle/polarization correction, no mask, no sectors); the CSR sparse
  matrix is built once outside the timing. Timed: the fastest OpenCL-free CSR variant of a method survey
  (split no/bbox × cython/python(scipy), the cython ones at all cores and at one OpenMP thread — on a busy
  2-core machine two OpenMP threads can be several times slower than one; ("bbox","csr","cython") is
  listed too). ms/pattern is the integrate1d calls alone over all frames (frames already in memory, read a
  scan row at a time).
* py4DSTEM ``PolarDatacube.calculate_radial_statistics`` (benchmarks/ref_py4dstem.py, run in its own
  virtualenv ``.venv-py4dstem`` because py4DSTEM pins numpy<2): per-pattern origin (ground truth) and the
  ellipse, 1-pixel radial bins over the same range, 72 annular bins; per pattern the elliptical polar
  transform (bilinear splitting onto (r, θ) bins with bincounts, Gaussian KDE along θ) of the frame and of
  the mask, done twice (mean, then std), giving the azimuthal mean and standard deviation per radius.
  Single-threaded NumPy; timed on the first ``--py4dstem-frames`` frames (default 256; the DataCube and
  PolarDatacube construction and the file read are not timed).

Whole run vs pyFAI: sendmap's wall time is the whole process (interpreter start-up, ingest into its zarr
store, calibration — centres, descan fit, ellipse — profiles, peaks, classes, statistics, figures and
tables); pyFAI's is only its read-and-integrate loop (``with_read_s``: each scan row read from the file with
a numpy memmap, byte-swapped, then integrated), without its start-up, import or CSR build.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from measure import run_measured  # noqa: E402
from mibread import Mib  # noqa: E402

PY4D_PYTHON = ROOT / ".venv-py4dstem" / "bin" / "python"
PY4D_LOG = ROOT / "bench_data" / "py4dstem_install.log"

TARGETS = {"pyfai": 5.0, "py4dstem": 200.0, "rerun": 0.20, "rss_mib": 1536.0}
"""Issue 20: profile stage ≥ 5× pyFAI csr per pattern, ≥ 200× py4DSTEM; a re-run after a classification change
≤ 20 % of the first run; peak anonymous memory of the whole run ≤ 1.5 GB (1536 MiB)."""

INGEST_SCAN = (128, 128)
INGEST_DETECTOR = 256
"""128 × 128 positions of 256² uint16 frames: 2.15 GB of .mib (the issue asks for ≥ 2 GB)."""

BIG_SCAN = (148, 148)
BIG_DETECTOR = 256
"""148 × 148 positions of 256² uint16 frames: 2.88 GB of .mib (21 904 × (384 + 131 072) bytes)."""

SMALL_SCAN = (240, 360)
SMALL_DETECTOR = 128
SMALL_Q_PIXEL = "0.0125"
"""Issue 20's small-detector file: 240 × 360 positions of 128² uint16 frames, 2.86 GB of .mib (86 400 × (384 +
32 768) bytes), 2 × 10⁴ e⁻ per pattern (sendmap synth's default dose), 0.0125 1/Å per pixel (synth's default: the
same Q range as the 256² files' 0.00625). The cost there is per pattern and per position, not per pixel."""

FILES = {
    # label: (scan, detector px, Q per px, what, how long it takes to write once)
    "256²": (BIG_SCAN, BIG_DETECTOR, "0.00625", "2.9 GB 256²", "about 3-4 minutes"),
    "128²": (SMALL_SCAN, SMALL_DETECTOR, SMALL_Q_PIXEL, "2.9 GB 128²", "about 4 minutes"),
}
"""The two files of ``profiles``, ``wholerun`` and ``rerun`` (``--files``): ``--data3g`` and ``--data128``."""

RESULTS: dict[str, dict[str, tuple[str, str]]] = {}
"""Every ratio of this run, per file label: {label: {row: (value text, verdict text)}} (printed side by side last)."""


def _result(label: str, row: str, value: str, verdict: str = "") -> None:
    RESULTS.setdefault(row, {})[label] = (value, verdict)


def _synth(folder: Path, scan: tuple[int, int], detector: int, what: str, minutes: str,
           q_pixel: str = "0.00625") -> Path:
    mib = folder / "synth.mib"
    if not mib.exists():
        print(f"writing the {what} benchmark file {mib} ({scan[0]}x{scan[1]} x {detector}^2 uint16; once, "
              f"{minutes}) ...", flush=True)
        from sendmap.cli import main as sendmap_main

        rc = sendmap_main(["synth", str(folder), "--scan-shape", *map(str, scan), "--detector", str(detector),
                           "--q-pixel-size", q_pixel, "--dtype", "u2", "--quiet"])
        if rc not in (0, None) or not mib.exists():
            raise SystemExit(f"sendmap synth failed for {folder}")
    return mib


def _warm(path: Path) -> None:
    """Read the file once so that the page cache holds it for the run that follows. Called before *every*
    measured run: hosts that reclaim cold pages proactively (this machine's kernel runs a DAMON ``pageout``
    scheme) evict the file's pages within seconds of its last read, and a run that finds them gone reads from
    disk (the ingest stage took 5.4 s instead of 3.0 s in such a run)."""
    with open(path, "rb", buffering=0) as f:
        while f.read(64 << 20):
            pass


_WARMED: set = set()


def _warmup(folder: Path) -> None:
    """Once per invocation and file: an untimed ``sendmap run`` of the file's first 16 scan rows (``input.crop_r``),
    so that numba's kernels are compiled and in its on-disk cache before any timed run. The cache is keyed by a
    digest of sendmap's sources (sendmap/codehash.py): after any edit the first run compiles every kernel (tens of
    seconds, ~110 s on a busy 2-core machine), which no timed run should include. (Several checkouts sharing one
    ``~/.cache/sendmap/numba`` also evict each other's kernels: it keeps the 4 most recently used digests.)"""
    if folder in _WARMED:
        return
    _WARMED.add(folder)
    ry, rx = _scan_shape(folder)
    print(f"warm-up (not timed): sendmap run on the first {min(16, ry)} scan rows of {folder} ...", flush=True)
    r = run_measured([sys.executable, "-m", "sendmap.cli", "run", str(folder / "config.yaml"), "--set",
                      f"output.dir={folder / 'results_warmup'}", "--set", f"input.crop_r=[0,{min(16, ry)},0,{rx}]",
                      "--force", "--no-progress"])
    if r["returncode"]:
        raise SystemExit(f"the warm-up sendmap run failed (exit {r['returncode']})")
    # and whatever only the rerun section's classification change runs (classify.method=gmm), so that its first use
    # (numba kernels, files read for the first time) is not in the timed re-run
    r = run_measured([sys.executable, "-m", "sendmap.cli", "run", str(folder / "config.yaml"), "--set",
                      f"output.dir={folder / 'results_warmup'}", "--set", f"input.crop_r=[0,{min(16, ry)},0,{rx}]",
                      "--set", RERUN_CHANGE, "--no-progress"])
    if r["returncode"]:
        raise SystemExit(f"the warm-up sendmap re-run ({RERUN_CHANGE}) failed (exit {r['returncode']})")


def _compile_bytecode() -> None:
    """Compile the bytecode of the sendmap package the runs import (``__pycache__``), once, before any timed run, as
    ``pip install`` does for an installed package. Python writes it itself on first import, except where
    PYTHONDONTWRITEBYTECODE is set (as on the machine of the session-18 bench) or the package's folder is read-only:
    then every ``sendmap run`` compiled ~60 modules from source, ~0.25 s of CPU in the main process and more in the
    figure helper, a cost no installed sendmap has."""
    code = "import compileall, os, sendmap; compileall.compile_dir(os.path.dirname(sendmap.__file__), quiet=1)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode:
        print(f"(could not compile sendmap's bytecode: {r.stderr.strip()[-300:]})")


def _scan_shape(folder: Path) -> tuple[int, int]:
    import yaml

    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    return tuple(int(v) for v in cfg["input"]["scan_shape"])


# --------------------------------------------------------------------------------------------- shared 2.9 GB runs

class Big:
    """The 2.9 GB file and the runs on it that ``profiles`` and ``wholerun`` share (made once per invocation).

    With ``repeat`` > 1, sendmap and pyFAI runs alternate ``repeat`` times and the best times are kept (a
    shared or busy machine inflates single runs); the peak RssAnon is the largest seen.
    """

    def __init__(self, folder: Path, pyfai_frames: int, py4dstem_frames: int, py4d_python: Path, repeat: int = 1,
                 label: str = "256²"):
        self.folder = folder
        self.label = label
        self.pyfai_frames = pyfai_frames
        self.py4dstem_frames = py4dstem_frames
        self.py4d_python = py4d_python
        self.repeat = max(1, repeat)
        self._sendmap = self._pyfai = self._py4dstem = None

    @property
    def mib(self) -> Path:
        scan, det, qpx, what, minutes = FILES[self.label]
        return _synth(self.folder, scan, det, what, minutes, qpx)

    def sendmap(self) -> dict:
        """Best of the whole ``sendmap run``s: ``wall_s``, ``profiles_s``, ``peak_rss_anon_mib``, ``summary``
        (of the fastest run), ``walls``, and sendmap's ``nq`` and mean ``centre_yx``."""
        if self._sendmap is None:
            self._measure()
        return self._sendmap

    def pyfai(self) -> dict:
        """Best of the ref_pyfai.py runs: ``result`` (its JSON, best times), ``peak_rss_anon_mib``."""
        if self._pyfai is None:
            self._measure()
        return self._pyfai

    def _measure(self) -> None:
        mib = self.mib
        out = self.folder / "results"
        sm_runs, fai_runs = [], []
        method = None
        _warmup(self.folder)
        for i in range(self.repeat):
            rep = f" ({i + 1}/{self.repeat})" if self.repeat > 1 else ""
            print(f"sendmap run on {mib} ({mib.stat().st_size / 1e9:.2f} GB){rep} ...", flush=True)
            _warm(mib)
            r = run_measured([sys.executable, "-m", "sendmap.cli", "run", str(self.folder / "config.yaml"), "--set",
                              f"output.dir={out}", "--force", "--no-progress"])
            if r["returncode"]:
                raise SystemExit(f"sendmap run failed (exit {r['returncode']})")
            r["summary"] = json.loads((out / "summary.json").read_text())
            sm_runs.append(r)
            geom = _store_geometry(out / "sendmap.zarr")
            cmd = [sys.executable, str(HERE / "ref_pyfai.py"), str(self.folder), "--json", "--frames",
                   str(self.pyfai_frames)]
            if geom.get("nq"):
                cmd += ["--nq", str(geom["nq"])]
            if geom.get("centre_yx"):
                cmd += ["--centre", *(f"{c:.4f}" for c in geom["centre_yx"])]
            if method:  # the survey of the first run chose the method
                cmd += ["--method", method, "--survey", "0"]
            print(f"pyFAI integrate1d over the same frames{rep} ...", flush=True)
            _warm(mib)
            f = run_measured(cmd)
            if f["returncode"]:
                raise SystemExit("benchmarks/ref_pyfai.py failed")
            f["result"] = _last_json(f["stdout"])
            method = f["result"]["method"]
            fai_runs.append(f)
        fastest = min(sm_runs, key=lambda r: r["wall_s"])
        self._sendmap = {
            "wall_s": fastest["wall_s"], "walls": [r["wall_s"] for r in sm_runs],
            "profiles_s": min(r["summary"]["timing_s"]["profiles"] for r in sm_runs),
            "peak_rss_anon_mib": max(r["peak_rss_anon_mib"] for r in sm_runs), "summary": fastest["summary"], **geom}
        res = dict(fai_runs[0]["result"])
        for k in ("integrate_s", "with_read_s"):
            res[k] = min(r["result"][k] for r in fai_runs)
            res[k.replace("_s", "_ms_per_pattern")] = res[k] / res["frames"] * 1e3
        self._pyfai = {"result": res, "peak_rss_anon_mib": max(r["peak_rss_anon_mib"] for r in fai_runs),
                       "runs": len(fai_runs)}

    def py4dstem(self) -> dict | str:
        """The py4DSTEM result, or why it was skipped."""
        if self._py4dstem is None:
            self._py4dstem = self._run_py4dstem()
        return self._py4dstem

    def _run_py4dstem(self) -> dict | str:
        if not self.py4d_python.exists():
            why = f"no py4DSTEM virtualenv at {self.py4d_python.parents[1]} (`make bench` creates it)"
            if PY4D_LOG.exists():
                tail = [ln for ln in PY4D_LOG.read_text(errors="replace").splitlines() if ln.strip()][-3:]
                why += "; last setup attempt: " + " | ".join(ln[:200] for ln in tail)
            return why
        sm = self.sendmap()
        cmd = [str(self.py4d_python), str(HERE / "ref_py4dstem.py"), str(self.folder), "--json", "--frames",
               str(self.py4dstem_frames), "--repeat", str(self.repeat)]
        if sm.get("nq"):
            cmd += ["--nq", str(sm["nq"])]
        print(f"py4DSTEM radial statistics on the first {self.py4dstem_frames} frames ...", flush=True)
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode:
            return f"{' '.join(cmd[:2])} failed (exit {r.returncode}): " + r.stderr.strip()[-800:]
        return _last_json(r.stdout)


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"no JSON result in:\n{text[-2000:]}")


def _store_geometry(store: Path) -> dict:
    """sendmap's radial bins and mean centre from its store, so that pyFAI/py4DSTEM use the same."""
    out = {}
    try:
        attrs = json.loads((store / "zarr.json").read_text())["attributes"]
        out["nq"] = int(attrs["profiles"]["nq"])
    except (OSError, KeyError, ValueError):
        pass
    try:
        import numpy as np
        import zarr

        origin = np.asarray(zarr.open_array(store / "calibration" / "origin", mode="r"))
        out["centre_yx"] = [float(c) for c in np.nanmean(origin.reshape(-1, 2), axis=0)]
    except Exception:  # the store's layout changed: the reference scripts fall back to the ground truth
        pass
    return out


# --------------------------------------------------------------------------------------------- sections

def _row(label: str, value: str, note: str = "") -> None:
    print(f"  {label:60s} {value:>20s}  {note}")


def bench_profiles(big: Big) -> None:
    sm = big.sendmap()
    n = Mib(big.mib).n_frames
    t_prof = sm["profiles_s"]
    ms_sm = t_prof / n * 1e3
    fai_run = big.pyfai()
    fai = fai_run["result"]
    p4 = big.py4dstem()
    best = f", best of {big.repeat} runs" if big.repeat > 1 else ""
    print(f"\nprofiles: time per pattern on {big.mib} ({n} patterns of {'x'.join(map(str, Mib(big.mib).frame_shape))} px, "
          f"{sm.get('nq', '?')} radial bins of 1 px; page cache warm)")
    _row("sendmap profile stage (timing_s.profiles / patterns)", f"{ms_sm:.3f} ms/pattern",
         f"({t_prof:.1f} s over all {n} patterns, all cores{best})")
    _row(f"pyFAI integrate1d {fai['method']} (frames in memory)", f"{fai['integrate_ms_per_pattern']:.3f} ms/pattern",
         f"({fai['frames']} patterns; pyFAI {fai['version']}, OpenMP {_omp(fai)}{best})")
    surv = fai.get("survey_ms_per_pattern", {})
    for m in ("bbox,csr,cython", "bbox,csr,cython@1"):
        if isinstance(surv.get(m), float) and fai["method"] != m:
            _row(f"pyFAI integrate1d {m} (survey)", f"{surv[m]:.3f} ms/pattern",
                 f"({fai['survey_frames']} patterns, best of 3)")
    if isinstance(p4, dict):
        _row("py4DSTEM PolarDatacube.calculate_radial_statistics", f"{p4['ms_per_pattern']:.3f} ms/pattern",
             f"({p4['frames']} patterns; py4DSTEM {p4['version']}, numpy {p4['numpy']}, 1 thread"
             f"{', best of %d' % p4['repeats'] if p4['repeats'] > 1 else ''})")
    else:
        print(f"  py4DSTEM skipped: {p4}")
    r_fai = fai["integrate_ms_per_pattern"] / ms_sm
    met = "met" if r_fai >= TARGETS["pyfai"] else "NOT met"
    print(f"  ratio pyFAI / sendmap:    {r_fai:8.2f}x  (target >= {TARGETS['pyfai']:.0f}x: {met})")
    _result(big.label, "sendmap profile stage, µs/pattern", f"{ms_sm * 1e3:.1f}")
    _result(big.label, "pyFAI integrate1d csr, µs/pattern", f"{fai['integrate_ms_per_pattern'] * 1e3:.1f}",
            fai["method"])
    _result(big.label, f"pyFAI / sendmap profile stage (>= {TARGETS['pyfai']:.0f}x)", f"{r_fai:.2f}x", met)
    if isinstance(p4, dict):
        r_p4 = p4["ms_per_pattern"] / ms_sm
        met = "met" if r_p4 >= TARGETS["py4dstem"] else "NOT met"
        print(f"  ratio py4DSTEM / sendmap: {r_p4:8.1f}x  (target >= {TARGETS['py4dstem']:.0f}x: {met})")
        _result(big.label, f"py4DSTEM / sendmap profile stage (>= {TARGETS['py4dstem']:.0f}x)", f"{r_p4:.0f}x", met)
    else:
        _result(big.label, f"py4DSTEM / sendmap profile stage (>= {TARGETS['py4dstem']:.0f}x)", "skipped")
    if surv:
        print("  pyFAI method survey (ms/pattern; @1 = one OpenMP thread): " + ", ".join(
            f"{m} {v:.3f}" if isinstance(v, float) else f"{m} {v}" for m, v in surv.items()))


def _omp(fai: dict) -> str:
    th = fai.get("threads", {})
    omp = th.get("openmp")
    used = ",".join(str(o["num_threads"]) for o in omp) if isinstance(omp, list) and omp else "?"
    return f"{used} thread(s), OMP_NUM_THREADS={th.get('OMP_NUM_THREADS')}"


def bench_wholerun(big: Big) -> None:
    sm = big.sendmap()
    fai_run = big.pyfai()
    fai = fai_run["result"]
    mib = big.mib
    size = mib.stat().st_size
    n = Mib(big.mib).n_frames
    best = f", best of {big.repeat}: " + " ".join(f"{w:.1f}" for w in sm["walls"]) if big.repeat > 1 else ""
    print(f"\nwhole run on {mib} ({size / 1e9:.2f} GB, {n} patterns; page cache warm):")
    _row("sendmap run --force --no-progress (whole process)", f"{sm['wall_s']:.1f} s",
         f"peak RssAnon {sm['peak_rss_anon_mib']:.0f} MiB (ingest to figures{best})")
    t_fai = fai["with_read_s"] * n / fai["frames"]
    _row(f"pyFAI integrate1d {fai['method']} alone, reading included", f"{t_fai:.1f} s",
         f"peak RssAnon {fai_run['peak_rss_anon_mib']:.0f} MiB (its process, incl. the method survey)"
         + (f"; {fai['frames']} of {n} frames measured, scaled" if fai["frames"] != n else ""))
    r = t_fai / sm["wall_s"]
    met = "met" if r > 1 else "NOT met"
    print(f"  ratio pyFAI alone / sendmap whole run: {r:.2f}x (target > 1: {met})")
    _result(big.label, "sendmap whole run, s", f"{sm['wall_s']:.1f}")
    _result(big.label, "pyFAI integration alone (reading incl.), s", f"{t_fai:.1f}")
    _result(big.label, "pyFAI alone / sendmap whole run (> 1)", f"{r:.2f}x", met)
    rss = sm["peak_rss_anon_mib"]
    _result(big.label, f"whole run peak RssAnon, MiB (<= {TARGETS['rss_mib']:.0f})", f"{rss:.0f}",
            "met" if rss <= TARGETS["rss_mib"] else "NOT met")
    print(f"  sendmap stage times (s): {sm['summary']['timing_s']}")


def _ingest_data(folder: Path) -> Path:
    return _synth(folder, INGEST_SCAN, INGEST_DETECTOR, "ingest", "about 2 minutes")


def bench_ingest(folder: Path) -> None:
    mib = _ingest_data(folder)
    size_mb = mib.stat().st_size / 1e6
    sendmap = [sys.executable, "-m", "sendmap.cli"]
    cfg = folder / "config.yaml"
    out = folder / "results"
    ref_out = folder / "rsciio.zarr"
    _warmup(folder)
    os.sync()
    _warm(mib)
    print(f"\ningest of {mib} ({size_mb:.0f} MB, {INGEST_SCAN[0]}x{INGEST_SCAN[1]} x {INGEST_DETECTOR}^2 uint16), "
          f"page cache warm for both:")
    rows = []
    ref = run_measured([sys.executable, str(HERE / "ref_rsciio_ingest.py"), str(mib), str(ref_out),
                        *map(str, INGEST_SCAN)])
    rows.append(("rosettasciio lazy -> dask.to_zarr", ref["wall_s"], ref["peak_rss_anon_mib"]))
    shutil.rmtree(ref_out, ignore_errors=True)
    _warm(mib)
    ing = run_measured(sendmap + ["run", str(cfg), "--set", f"output.dir={out}", "--until", "ingest", "--force",
                                  "--no-progress"])
    t_ingest = json.loads((out / "sendmap.zarr" / "zarr.json").read_text())["attributes"]["stages"]["ingest"]["seconds"]
    rows.append(("sendmap ingest stage (timing_s.ingest)", t_ingest, ing["peak_rss_anon_mib"]))
    rows.append(("sendmap run --until ingest (whole process)", ing["wall_s"], ing["peak_rss_anon_mib"]))
    _warm(mib)
    full = run_measured(sendmap + ["run", str(cfg), "--set", f"output.dir={out}", "--force", "--no-progress"])
    summary = json.loads((out / "summary.json").read_text())
    rows.append(("sendmap run, whole job (ingest to figures)", full["wall_s"], full["peak_rss_anon_mib"]))
    for name, t, rss in rows:
        print(f"  {name:44s} {t:7.1f} s  {size_mb / t:6.0f} MB/s  peak RssAnon {rss:6.0f} MiB")
    _result("256²", "rosettasciio / sendmap ingest (>= 5x; stage, process)",
            f"{ref['wall_s'] / t_ingest:.1f}x, {ref['wall_s'] / ing['wall_s']:.1f}x",
            "met" if ref["wall_s"] / ing["wall_s"] >= 5 else "NOT met")
    print(f"  ratio rosettasciio / sendmap ingest: {ref['wall_s'] / t_ingest:.1f}x stage, "
          f"{ref['wall_s'] / ing['wall_s']:.1f}x whole process incl. start-up (target >= 5x); "
          f"whole-run RssAnon {full['peak_rss_anon_mib']:.0f} MiB (target <= 1536 MiB)")
    print(f"  whole-run stage times (s): {summary['timing_s']}")


RERUN_CHANGE = "classify.method=gmm"
"""The classification change of the ``rerun`` section (issue 20; the bench files' configs say ``rules``):
classify, statistics and report rerun, and positions move between classes, so the figures drawn from classes are
redrawn."""

RERUN_CHANGE_2 = ("classify.method=gmm", "classify.definitions.lif_spot_z=7.0")
"""A second classification (after :data:`RERUN_CHANGE`), for the re-run without figures and the dask run."""


def _stages(out: Path) -> dict:
    return json.loads((out / "sendmap.zarr" / "zarr.json").read_text())["attributes"]["stages"]


def _same_results(a: Path, b: Path) -> str:
    """Whether two stores hold the same profiles, peaks and classes (bit for bit), as a short text."""
    import numpy as np
    import zarr

    ga, gb = zarr.open_group(str(a / "sendmap.zarr"), mode="r"), zarr.open_group(str(b / "sendmap.zarr"), mode="r")
    diff = [k for k in ("calibration/origin", "profiles/mean", "profiles/sem", "features/spot_z", "peaks/q_peak",
                        "maps/peak_q", "maps/class", "ingest/sum_pattern")
            if not np.array_equal(np.asarray(ga[k]), np.asarray(gb[k]), equal_nan=True)]
    return "identical" if not diff else "DIFFERENT: " + ", ".join(diff)


def bench_rerun(folder: Path, worker_memory: str, workers: int = 2, label: str = "256²", extras: bool = True) -> dict:
    """First run, re-run after a classification change, and (``extras``) the same without figures, a first run on
    a local dask cluster of ``workers`` workers limited to ``worker_memory`` each and the re-run's floor: wall
    time and peak memory of each (one process tree each)."""
    from dask.utils import parse_bytes

    scan, det, qpx, what, minutes = FILES[label]
    mib = _synth(folder, scan, det, what, minutes, qpx) \
        if not (folder / "synth.mib").exists() else folder / "synth.mib"
    cfg = folder / "config.yaml"
    size = sum(f.stat().st_size for f in folder.glob("synth.*"))
    out, out_dist = folder / "results_rerun", folder / "results_rerun_dask"
    sendmap = [sys.executable, "-m", "sendmap.cli", "run", str(cfg), "--no-progress"]
    _warmup(folder)
    _warm(mib)
    print(f"\nincremental re-run and a {workers}-worker dask cluster on {mib} ({size / 1e9:.2f} GB; page cache warm):")
    runs = {}
    runs["first"] = run_measured(sendmap + ["--set", f"output.dir={out}", "--force"])
    profiles_before = _stages(out)["profiles"] if not runs["first"]["returncode"] else None
    cls_before = _class_map(out) if not runs["first"]["returncode"] else None
    manifest_before = _figure_manifest(out)
    runs["change"] = run_measured(sendmap + ["--set", f"output.dir={out}", "--set", RERUN_CHANGE])
    change_timing = json.loads((out / "summary.json").read_text())["timing_s"] if not runs["change"]["returncode"] \
        else {}
    n_changed = int((_class_map(out) != cls_before).sum()) if cls_before is not None else -1
    manifest_after = _figure_manifest(out)
    redrawn = sorted(k for k in manifest_after if manifest_after.get(k) != manifest_before.get(k))
    second = [a for c in RERUN_CHANGE_2 for a in ("--set", c)]
    if extras:
        runs["change_nofig"] = run_measured(sendmap + ["--set", f"output.dir={out}", *second,
                                                       "--set", "output.figures=false"])
        # (with the last classification of `out`, so that every array can be compared with it)
        _warm(mib)
        runs["dask"] = run_measured(sendmap + ["--set", f"output.dir={out_dist}", "--force", "--set",
                                               "compute.scheduler=distributed", "--set", f"compute.n_workers={workers}",
                                               "--set", f"compute.memory_limit={worker_memory}", *second,
                                               "--set", "output.figures=false"])
    for name, r in runs.items():
        if r["returncode"]:
            raise SystemExit(f"sendmap run ({name}) failed (exit {r['returncode']})")
    first, change, nofig, dask = (runs.get(k) for k in ("first", "change", "change_nofig", "dask"))
    st_change = json.loads((out / "summary.json").read_text())  # the last run on `out`
    stages = _stages(out)
    recomputed = [k for k, v in st_change["timing_s"].items() if k not in st_change["reused_stages"]]
    t_first = first["wall_s"]
    rows = [
        ("first run (sendmap run --force, threads)", first),
        (f"re-run after --set {RERUN_CHANGE}", change),
        ("  another classification without figures (output.figures=false)", nofig),
        (f"first run, local dask cluster: {workers} workers x {worker_memory}, no figures", dask),
    ]
    rows = [(t, r) for t, r in rows if r is not None]
    print(f"  ({label} file)")
    for row_label, r in rows:
        extra = ""
        if r is not first:
            extra = f"  {r['wall_s'] / t_first * 100:5.1f} % of the first run"
        if r is dask:
            extra += "; largest worker RSS " + ", ".join(f"{m:.0f}" for m in r["child_peak_rss_mib"][:workers]) + " MiB"
        print(f"  {row_label:72s} {r['wall_s']:7.1f} s  peak RssAnon {r['peak_rss_anon_mib']:6.0f} MiB{extra}")
    ratio = change["wall_s"] / t_first
    met = "met" if ratio <= TARGETS["rerun"] else "NOT met"
    _result(label, f"re-run after --set {RERUN_CHANGE} / first run (<= {TARGETS['rerun'] * 100:.0f} %)",
            f"{ratio * 100:.1f} %", f"{met} ({change['wall_s']:.1f} of {t_first:.1f} s)")
    print(f"  re-run / first: {ratio * 100:.1f} % (target <= {TARGETS['rerun'] * 100:.0f} %: {met}); "
          f"recomputed: {', '.join(recomputed)}; profiles untouched: "
          f"{'yes' if stages['profiles'] == profiles_before else 'NO'}")
    print(f"  re-run after the change: {n_changed} positions changed class; figures redrawn: {', '.join(redrawn) or 'none'}"
          f"; stage times (s): {change_timing}")
    if not extras:
        return runs
    limit = parse_bytes(worker_memory)
    print(f"  dask: the dataset is {size / limit:.1f}x one worker's memory limit and {size / (workers * limit):.1f}x "
          f"all {workers} workers'; results vs the threads run: {_same_results(out, out_dist)}")
    floor = _rerun_floor(cfg, out)
    if floor:
        figs = ", ".join(f"{k} {v:.2f}" for k, v in floor["cpu_figures_s"].items())
        print(f"  floor of that re-run on {floor['cores']} cores (rerun_floor.py: its work alone, warm, no start-up): "
              f"{floor['cpu_total_s']:.2f} CPU-s (pipeline {floor['cpu_pipeline_s']:.2f}, figures {figs}) -> "
              f">= {floor['floor_s']:.2f} s = {floor['floor_s'] / t_first * 100:.1f} % of the first run")
    return runs


def _rerun_floor(cfg: Path, out: Path) -> dict | None:
    """The JSON of :mod:`rerun_floor` on the store ``out`` (None, with its output printed, if it failed)."""
    r = run_measured([sys.executable, str(Path(__file__).with_name("rerun_floor.py")), str(cfg), str(out),
                      RERUN_CHANGE])
    return _last_json(r["stdout"]) if not r["returncode"] else None


def _class_map(out: Path):
    import numpy as np
    import zarr

    return np.asarray(zarr.open_group(str(out / "sendmap.zarr"), mode="r")["maps/class"])


def _figure_manifest(out: Path) -> dict:
    try:
        return json.loads((out / "figures" / ".figures.json").read_text())
    except (OSError, ValueError):
        return {}


SECTIONS = ("profiles", "wholerun", "ingest", "rerun")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(SECTIONS), metavar="SECTION[,SECTION]",
                   help=f"sections to run, comma-separated, of: {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--data", default=str(ROOT / "bench_data" / "merlin_2g"), help="folder of the 2.15 GB ingest file")
    p.add_argument("--data3g", default=str(ROOT / "bench_data" / "merlin_3g"),
                   help="folder of the 2.9 GB 256² file of the profiles, wholerun and rerun sections")
    p.add_argument("--data128", default=str(ROOT / "bench_data" / "merlin_128"),
                   help="folder of the 2.9 GB 128² file (240 x 360 positions) of the same sections")
    p.add_argument("--files", default=",".join(FILES), metavar="LABEL[,LABEL]",
                   help=f"files of the profiles, wholerun and rerun sections, of: {', '.join(FILES)} (also 256, 128; "
                        "default: both)")
    p.add_argument("--rerun-data", default=None, metavar="FOLDER",
                   help="folder of the rerun section's 256² dataset (synth.mib + config.yaml; default: --data3g)")
    p.add_argument("--no-rerun-extras", action="store_true",
                   help="rerun section: only the first run and the re-run (no figure-less re-run, dask run, floor)")
    p.add_argument("--worker-memory", default="500MB",
                   help="memory limit of each of the 2 dask workers in the rerun section (default 500MB)")
    p.add_argument("--pyfai-frames", type=int, default=0, help="frames for pyFAI (0: all)")
    p.add_argument("--py4dstem-frames", type=int, default=256, help="frames for py4DSTEM (it is slow)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of sendmap/pyFAI/py4DSTEM on the 2.9 GB file; the best times are kept")
    p.add_argument("--py4dstem-python", default=str(PY4D_PYTHON), help="python of the py4DSTEM virtualenv")
    args = p.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if not only or set(only) - set(SECTIONS):
        p.error(f"--only: choose from {', '.join(SECTIONS)}, not {args.only!r}")
    files = [f.strip().rstrip("²") + "²" for f in args.files.split(",") if f.strip()]
    if not files or set(files) - set(FILES):
        p.error(f"--files: choose from {', '.join(FILES)}, not {args.files!r}")
    folders = {"256²": Path(args.data3g), "128²": Path(args.data128)}
    bigs = {f: Big(folders[f], args.pyfai_frames, args.py4dstem_frames, Path(args.py4dstem_python), args.repeat, f)
            for f in files}
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min) before the "
          "benchmark" + ("  (WARNING: other processes are using the CPU; times will be inflated)" if load[0] > 0.5 else ""))
    _compile_bytecode()
    t0 = time.perf_counter()
    for f, big in bigs.items():
        if "profiles" in only:
            bench_profiles(big)
        if "wholerun" in only:
            bench_wholerun(big)
    if "ingest" in only:
        bench_ingest(Path(args.data))
    if "rerun" in only:
        for f in files:
            bench_rerun(Path(args.rerun_data or args.data3g) if f == "256²" else folders[f], args.worker_memory,
                        label=f, extras=f == "256²" and not args.no_rerun_extras)
    print_summary(files, time.perf_counter() - t0)
    return 0


def print_summary(files: list[str], seconds: float) -> None:
    """Every ratio of this run, the files side by side."""
    if not RESULTS:
        return
    labels = list(files) + [f for f in FILES if f not in files and any(f in v for v in RESULTS.values())]
    width = max(len(r) for r in RESULTS)
    load = os.getloadavg()
    print(f"\nsummary (this run, {seconds / 60:.1f} min; load average now {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}):")
    print(f"  {'':{width}s}  " + "  ".join(f"{lb:>26s}" for lb in labels))
    for row, per in RESULTS.items():
        cells = []
        for lb in labels:
            v, verdict = per.get(lb, ("-", ""))
            cells.append(f"{v + (' ' + verdict.split(' (')[0] if verdict in ('met', 'NOT met') or verdict.startswith(('met (', 'NOT met (')) else ''):>26s}")
        print(f"  {row:{width}s}  " + "  ".join(cells))


if __name__ == "__main__":
    raise SystemExit(main())
