"""The real-data suite: every real file of ``../shared/data/real/`` that holds a diffraction pattern goes through
``sendmap info`` and ``sendmap run`` (as the scan it is, or built into a small scan where it is a single pattern),
without a traceback, with numbers asserted where the truth is known.

Files and their sources are listed in ``../shared/data/real/README.md`` (public test suites and example data:
hyperspy/rosettasciio, AndrewHerzing/merlintools, CSSFrancis/empyer, pyxem/pyxem-demos,
TEM-Gemini-Centre/nordtemhub_4DSTEMworkshop_2024, TEM-Gemini-Centre/mib2hspy, LaurentRDC/scikit-ued).
Format-level value-for-value checks against rosettasciio live in the io tests; probe-disk and peak-shape checks
in ``test_probe.py`` / ``test_peaks_real.py``; this file is the end-to-end view a new user gets.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REAL_DATA_DIR

pytestmark = pytest.mark.skipif(not REAL_DATA_DIR.is_dir(),
                                reason=f"real detector files not found at {REAL_DATA_DIR} (../shared/data/real)")

# (file, frame shape (Qy, Qx), number of frames) of every real file that holds a pattern
PATTERN_FILES = [
    ("merlin_4x2/001_4x2_6bit.mib", (256, 256), 8),
    ("merlin_4x2/002_4x2_6bit_roi128.mib", (128, 256), 8),
    ("merlin_fpd_16x16/FPD_HDF5.hdf5", (256, 256), 256),
    ("blockfile/test1.blo", (144, 144), 6),
    ("arina_zeros/test_00_master.h5", (192, 192), 16),
    ("amorphous_sum/sum1.npy", (256, 256), 1),
    ("sped_ag/cluster_sums.hspy", (112, 112), 5),
    ("dm3_spots/test_diffraction_pattern.dm3", (87, 87), 1),
    ("merlin_calibration/200kV/CL_100mm.mib", (256, 256), 1),
    ("merlin_calibration/200kV/CL_380mm_Si110.mib", (256, 256), 1),
    ("merlin_variants/mib2hspy_test_CL30cm_24bit.mib", (256, 256), 1),
    ("merlin_variants/ueds_beamblock_12bit.mib", (256, 256), 1),
    ("merlin_variants/multi_6bit_9frames.mib", (256, 256), 9),
] + [(f"merlin_variants/{kind}_{n}_Frame_CounterDepth_{d}_Rows_256{raw}.mib", (256, 256) if kind == "Single"
      else (512, 512), n)
     for kind in ("Single", "Quad") for n in (1, 9) for d in (1, 6, 12, 24) for raw in ("", "RAW") if raw == "" or d == 1]


def sendmap(*args, cwd=None, timeout=300):
    """``sendmap ARGS`` in a subprocess (the user's view: exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONWARNINGS="default")
    return subprocess.run([sys.executable, "-m", "sendmap.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


def assert_clean(r, code=0):
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-3000:]
    assert "RuntimeWarning" not in out and "UserWarning" not in out, out[-3000:]
    assert r.returncode == code, out[-3000:]


@pytest.mark.parametrize("name,frame,n", PATTERN_FILES, ids=[p[0] for p in PATTERN_FILES])
def test_info_opens_every_real_pattern_file(name, frame, n):
    r = sendmap("info", REAL_DATA_DIR / name)
    assert_clean(r)
    info = json.loads(r.stdout)
    shape = info.get("shape") or (list(info["scan_shape"]) + list(info["frame_shape"]))
    assert tuple(shape[-2:]) == frame
    assert int(np.prod(shape[:-2])) == n


def test_info_corrupted_header_is_a_clear_error():
    r = sendmap("info", REAL_DATA_DIR / "merlin_variants/mib2hspy_test_CL30cm_corrupted_header.mib")
    assert_clean(r, code=2)
    assert "corrupted_header.mib" in r.stderr


def _config(tmp_path: Path, path: Path, fmt: str = "auto", scan_shape=None, q_pixel_size=0.0125, extra: str = ""):
    lines = [f"input: {{path: '{path}', format: {fmt}" + (f", scan_shape: {list(scan_shape)}" if scan_shape else "") + "}",
             f"calibration: {{q_pixel_size: {q_pixel_size}, scan_step_nm: 4.0, beam_energy_kv: 200, convergence_mrad: 1.0}}",
             "output: {dir: out}", extra]
    cfg = tmp_path / "config.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


REAL_SCANS = [  # (file, scan shape, q pixel size 1/Å: a plausible one; the files record none as Q)
    # (the fpd scan, the blockfile, the RAW quad and the 6-bit file without .hdr run in tests/test_io_rsciio.py)
    ("merlin_4x2/001_4x2_6bit.mib", (4, 2), 0.0125),
    ("sped_ag/cluster_sums.hspy", (1, 5), 0.02673),
    ("merlin_variants/Quad_9_Frame_CounterDepth_12_Rows_256.mib", (3, 3), 0.0125),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,scan,qpx", REAL_SCANS, ids=[s[0] for s in REAL_SCANS])
def test_run_real_scans_end_to_end(tmp_path, name, scan, qpx):
    """Every real scan runs through the whole pipeline: exit 0, a complete summary, no traceback or warning
    text; positions whose profile has no SRO maximum carry no peak."""
    cfg = _config(tmp_path, REAL_DATA_DIR / name, scan_shape=scan, q_pixel_size=qpx,
                  extra="output: {dir: out, figures: false}" if False else "")
    r = sendmap("run", cfg, "--no-progress", cwd=tmp_path)
    assert_clean(r)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary.get("status", "complete") == "complete"
    import zarr
    g = zarr.open_group(str(tmp_path / "out" / "sendmap.zarr"), mode="r")
    assert g["maps/class"].shape == tuple(scan)


def test_all_zero_real_container_is_a_clear_error(tmp_path):
    """The real Arina container (every value zero): exit 2 naming the missing counts, nothing complete."""
    cfg = _config(tmp_path, REAL_DATA_DIR / "arina_zeros/test_00_master.h5", scan_shape=(4, 4))
    r = sendmap("run", cfg, "--no-progress", cwd=tmp_path)
    assert_clean(r, code=2)
    assert "no counts" in r.stderr and not (tmp_path / "out" / "summary.json").exists()


def _resampled_scan(pattern: np.ndarray, shape, dose: float, shifts: np.ndarray, stop: np.ndarray, seed: int):
    """A (Ry, Rx, Qy, Qx) uint16 scan: the pattern's positive part shifted per position by ``shifts`` (px, the
    descan), hidden where the fixed beam stop ``stop`` is, scaled to ``dose`` counts and Poisson-sampled."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    base = np.clip(pattern.astype(np.float64), 0, None)
    out = np.zeros(tuple(shape) + base.shape, np.uint16)
    for iy in range(shape[0]):
        for ix in range(shape[1]):
            lam = ndi.shift(base, shifts[iy, ix], order=1, mode="nearest")
            lam[stop] = 0.0
            lam *= dose / lam.sum()
            out[iy, ix] = rng.poisson(lam)
    return out


def _stop_mask(pattern: np.ndarray) -> np.ndarray:
    """The beam stop of the summed pattern: the connected low region touching the left edge (it enters from the
    left over the centre), from the pattern smoothed over 3 px."""
    from scipy import ndimage as ndi

    s = ndi.gaussian_filter(np.clip(pattern.astype(float), 0, None), 3)
    low = s < 0.3 * np.median(s)
    lab, _ = ndi.label(low)
    keep = np.setdiff1d(np.unique(lab[:, 0]), [0])
    return ndi.binary_dilation(np.isin(lab, keep), iterations=2)


@pytest.mark.slow
def test_real_amorphous_pattern_with_beam_stop_as_a_scan(tmp_path):
    """A 10 × 10 scan built from the real summed amorphous pattern with a beam stop (``amorphous_sum/sum1.npy``,
    CSSFrancis/empyer tests), resampled at 2 × 10⁴ counts and shifted per position by a known descan (±2 px):
    calibrate finds the centres from the rings' symmetry, and the median SRO peak equals the same estimator on
    the high-count pattern itself (a 1 × 1 scan of the summed counts) within 0.003 1/Å."""
    pattern = np.load(REAL_DATA_DIR / "amorphous_sum" / "sum1.npy")
    stop = _stop_mask(pattern)
    rng = np.random.default_rng(1)
    shifts = rng.uniform(-2, 2, (10, 10, 2))
    scan = _resampled_scan(pattern, (10, 10), 2e4, shifts, stop, seed=2)
    np.save(tmp_path / "scan.npy", scan)
    high = np.clip(pattern, 0, None)
    high[stop] = 0
    np.save(tmp_path / "high.npy", (high * (2e7 / high.sum())).round().astype(np.uint32)[None, None])
    # q pixel size chosen to put the halo's maximum of I·Q near 0.31 1/Å (a shape test: the SRO window's scale;
    # the same choice as tests/test_peaks_real.py)
    qpx = 0.0035
    res = {}
    for name in ("scan", "high"):
        d = tmp_path / name
        d.mkdir()
        cfg = _config(d, tmp_path / f"{name}.npy", fmt="npy", q_pixel_size=qpx,
                      extra="peaks: {window: [0.2, 0.45]}")
        r = sendmap("run", cfg, "--no-progress", cwd=d)
        assert_clean(r)
        import zarr
        res[name] = zarr.open_group(str(d / "out" / "sendmap.zarr"), mode="r")
    # the peak estimator's output (peaks/q_peak), whatever the class: this is about the measurement
    truth = float(np.asarray(res["high"]["peaks/q_peak"]).ravel()[0])
    assert np.isfinite(truth) and 0.25 < truth < 0.40
    peaks = np.asarray(res["scan"]["peaks/q_peak"]).ravel()
    ok = np.isfinite(peaks)
    assert ok.mean() > 0.9
    assert abs(np.median(peaks[ok]) - truth) < 0.003
    # the descan: the centres found from the rings' symmetry (the beam stop hides the disk) follow the known
    # shifts (uniform ±2 px, 1.15 px rms) up to one common offset: correlation > 0.8, error < 0.75 px rms
    origin = np.asarray(res["scan"]["calibration/origin_measured"]).reshape(-1, 2)
    d = origin - shifts.reshape(-1, 2)
    d -= np.nanmedian(d, axis=0)
    assert np.sqrt(np.nanmean(d ** 2)) < 0.75
    for axis in (0, 1):
        assert np.corrcoef(origin[:, axis], shifts.reshape(-1, 2)[:, axis])[0, 1] > 0.8


def test_real_amorphous_scan_with_a_semi_transparent_beam_stop(tmp_path):
    """The same real pattern as recorded, the stop not zeroed (it lets ~10 % of the ring's intensity through, so it
    is no shadow): 12 × 16 positions at 2 × 10⁴ counts, each shifted by a known whole-pixel descan (±2 px).
    ``centre_method: auto`` must not take the disk method (the direct beam is hidden: it put the centres ~19 px off
    on such a scan, and the flat-smeared halo split one film into three classes): the centres follow the shifts, and
    the film is one population with one SRO peak (scatter < 0.003 1/Å)."""
    pattern = np.clip(np.load(REAL_DATA_DIR / "amorphous_sum" / "sum1.npy").astype(float), 0, None)
    pattern *= 2e4 / pattern.sum()
    rng = np.random.default_rng(7)
    shifts = np.empty((12, 16, 2), int)
    scan = np.empty((12, 16) + pattern.shape, np.uint16)
    for iy in range(12):
        for ix in range(16):
            shifts[iy, ix] = rng.integers(-2, 3, 2)
            scan[iy, ix] = rng.poisson(np.roll(pattern, tuple(shifts[iy, ix]), axis=(0, 1)))
    np.save(tmp_path / "scan.npy", scan)
    cfg = _config(tmp_path, tmp_path / "scan.npy", fmt="npy", q_pixel_size=0.0033)
    r = sendmap("run", cfg, "--no-progress", cwd=tmp_path)
    assert_clean(r)
    import zarr

    g = zarr.open_group(str(tmp_path / "out" / "sendmap.zarr"), mode="r")
    assert dict(g.attrs["calibration"])["centre_method"] == "symmetry"
    origin = np.asarray(g["calibration/origin_measured"]).reshape(-1, 2)
    d = origin - shifts.reshape(-1, 2)
    d -= np.nanmedian(d, axis=0)
    assert np.sqrt(np.nanmean(d ** 2)) < 0.75
    peaks = np.asarray(g["maps/peak_q"]).ravel()
    assert np.isfinite(peaks).mean() > 0.9
    assert np.nanstd(peaks) < 0.003
    cls = np.asarray(g["maps/class"]).ravel()
    assert np.bincount(cls).max() >= 0.9 * cls.size
