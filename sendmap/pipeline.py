"""The stage graph and its runner: input → ingest → calibrate → profiles → peaks → classify → statistics → report.

Each stage is a function of a :class:`Context` that reads its inputs from the result store and writes
its outputs there. Its cache key hashes sendmap's version, the config sections it depends on and the
key of the stage before it (ingest: the input fingerprint), so changing one setting recomputes that
stage and the ones after it, nothing before it. The graph itself is :data:`STAGES` (one place to add
a stage); ``pipelines/README.md`` describes it for users.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import CLASS_NAMES, __version__
from .config import Config
from .errors import SendmapInputError
from .io import Dataset, fingerprint, open_dataset
from .lock import OutputBusyError, OutputLock
from .physics import electron_wavelength_angstrom, probe_radius_inv_angstrom, q_pixel_size_from_camera
from .resume import clear_resume_record
from .report.build import FIGURE_HELPER_STAGES, start_figure_helpers
from .store import (STORE_NAME, annotate_arrays, now_iso, open_store, set_attrs, write_array, write_coordinates,
                    write_json_atomic, write_region_direct)


@dataclass
class Context:
    cfg: Config
    out_dir: Path
    group: object  # zarr.Group
    dataset: Dataset | None
    input_info: dict
    log: Callable[[str], None] = print
    stage_key: str | None = None
    """Cache key of the stage being run (block stages key their resume record with it)."""
    resume: bool = True
    """Block stages may resume from the finished blocks of a killed run (False with ``--force``)."""
    stage_info: dict = field(default_factory=dict)
    """What the stage being run reports for its ``stages`` entry (block stages: ``blocks``, ``blocks_resumed``)."""
    figure_helpers: object = None
    """:class:`sendmap.report.build.FigureHelpers` started when classification starts, for the report."""
    stage: str | None = None
    """Name of the stage being run (recorded with its warnings)."""
    warnings: list = field(default_factory=list)
    """Run warnings so far, each {"stage", "code", "message"}: those of reused stages (from the store) and new ones."""
    _warn_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def warn(self, message: str, code: str) -> None:
        """Record a run warning: something the user must know about the results that is not an error (a peak
        at the window's edge, a dose too low for classes, a mask hiding most of the detector, ...).

        Logged at once as ``[sendmap] warning: MESSAGE``, kept in the store's root attrs ``warnings`` (so a
        reused stage's warnings stay with its results, and are dropped when the stage is recomputed) and copied
        into ``summary.json`` ``warnings``: a list of ``{"stage": ..., "code": ..., "message": ...}``.
        ``code``: a short stable snake_case name scripts and tests can match (e.g. ``"peak_at_window_edge"``);
        ``message``: one sentence naming what was found, what it means and the config key to change."""
        rec = {"stage": self.stage or "run", "code": str(code), "message": str(message)}
        with self._warn_lock:
            self.warnings.append(rec)
            if self.group is not None:
                set_attrs(self.group, warnings=self.warnings)
        self.log(f"[sendmap] warning: {message}")

    @property
    def store_path(self) -> str:
        return str(self.out_dir / STORE_NAME)


@dataclass(frozen=True)
class Stage:
    """One stage of :data:`STAGES`: ``run(ctx)`` reads its inputs from the store and writes its outputs there;
    ``sections``: the config sections in its cache key; ``revision``: raise it when a change of the code alters
    what the stage stores (arrays, their layout or meaning), so that stores written before the change are
    recomputed from this stage on, not reused (within one sendmap version, whose number is in the key too)."""

    name: str
    sections: tuple[str, ...]
    run: Callable[[Context], None]
    doc: str
    revision: int = 1


# --------------------------------------------------------------------------------------------- helpers

def calibrant_record(cfg: Config) -> dict | None:
    """The ``sendmap calibrate --json`` result named by ``calibration.calibrant`` (None where not set)."""
    cal = cfg.calibration
    if not cal.calibrant:
        return None
    path = cfg.resolve(cal.calibrant)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        float(rec["q_pixel_size"])
        float(rec["ellipse"]["ratio"]), float(rec["ellipse"]["angle_deg"])
    except FileNotFoundError:
        raise SendmapInputError(f"calibration.calibrant: {path} does not exist (write it with "
                                f"`sendmap calibrate STANDARD --json > {path.name}`)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SendmapInputError(f"calibration.calibrant: {path} is not the JSON of `sendmap calibrate --json` "
                                f"(needs q_pixel_size and ellipse.ratio/angle_deg): {exc}") from None
    rec["file"] = str(path)
    return rec


def q_pixel_size_and_source(cfg: Config) -> tuple[float, str]:
    """Q per stored pixel (1/Å) and where it came from: the config's value (given directly, measured on a
    standard by ``sendmap calibrate`` and named by ``calibration.calibrant``, or from camera length and
    detector pixel size) for one detector pixel, times ``input.bin_q``."""
    cal = cfg.calibration
    if cal.q_pixel_size:
        source = ("taken from the input file (calibration.q_pixel_size not set)" if "q_pixel_size" in cal._from_file
                  else "config calibration.q_pixel_size")
        return float(cal.q_pixel_size) * cfg.input.bin_q, source
    if cal.calibrant:
        return (float(calibrant_record(cfg)["q_pixel_size"]) * cfg.input.bin_q,
                f"measured on a standard: {cal.calibrant}")
    if cal.camera_length_mm and cal.detector_pixel_um:
        return (q_pixel_size_from_camera(cal.detector_pixel_um, cal.camera_length_mm, cal.beam_energy_kv)
                * cfg.input.bin_q, "camera length and detector pixel size")
    raise SendmapInputError(
        "calibration.q_pixel_size is not set and cannot be derived: give calibration.q_pixel_size (1/Å per pixel), "
        "or calibration.camera_length_mm with calibration.detector_pixel_um, or measure it with `sendmap calibrate "
        "STANDARD --json > standard.json` and set calibration.calibrant: standard.json")


def q_pixel_size(cfg: Config) -> float:
    """Q per stored pixel (1/Å): see :func:`q_pixel_size_and_source`."""
    return q_pixel_size_and_source(cfg)[0]


def scan_step_nm(cfg: Config) -> float:
    """Distance between stored probe positions (nm): the recorded step times ``input.bin_r``."""
    return cfg.calibration.scan_step_nm * cfg.input.bin_r


def disk_radius_px(cfg: Config) -> float:
    return probe_radius_inv_angstrom(cfg.calibration.convergence_mrad, cfg.calibration.beam_energy_kv) / q_pixel_size(cfg)


def data_blocks(ctx: Context):
    """The stored data (:class:`sendmap.ingest.StoredData`) and the regions to process a block at a time (the
    ingest blocks where stored sparse, else regions of whole chunks of about ``compute.block_mb`` MB)."""
    from .ingest import open_stored

    stored = open_stored(ctx.store_path)
    return stored, stored.block_regions(ctx.cfg.compute.block_mb)


_DATA_ARRAYS: dict = {}
"""Per process: the opened stored data of each store (zarr's metadata reads funnel through one event-loop
thread; opening it for every block serialised the loader threads)."""


def _read_store_block(item):
    """load(): frames (B, Qy, Qx) of one region of the store (an array, or
    :class:`~sendmap.science.sparse.SparseFrames` where stored sparse), and that region's centres (B, 2) when the
    item carries them (item = (store path, (y0, y1, x0, x1), centres (y1-y0, x1-x0, 2) or None))."""
    from .ingest import open_stored

    path, region, centres = item
    stored = _DATA_ARRAYS.get(path)
    if stored is None:
        stored = _DATA_ARRAYS[path] = open_stored(path)
    frames = stored.read(tuple(region))
    return item, frames, (None if centres is None else np.asarray(centres, dtype=np.float64).reshape(-1, 2))


def measured_counts(group) -> dict | None:
    """The calibrate stage's count of detector counts per pattern (masked pixels left out and filled in,
    :func:`sendmap.science.dose.counts_per_pattern`, and ``integrating``: why the data are not electron counts,
    or None); None in stores written before it was recorded."""
    rec = dict(group.attrs.get("calibration", {}) or {}).get("dose_counts")
    return dict(rec) if rec else None


def dose_record(cfg: Config, counts: np.ndarray, measured: dict | None = None) -> dict:
    """Electrons per pattern and e⁻/Å² per position (and accumulated), with where the number came from.

    Priority: ``dose.electrons_per_pattern``; else beam current × dwell time / e; else the detector counts per
    position ÷ ``dose.detector_counts_per_electron``. The counts are ``measured`` (:func:`measured_counts`: hot,
    dead, saturated and shadowed pixels left out and filled in with their ring's level; ``lower_bound`` where a
    beam stop hides the whole central disk), else the mean of ``counts`` (every pixel). Data that look like an
    integrating camera's (``measured["integrating"]``) with no ``dose.detector_counts_per_electron``: the dose is
    unknown, ``electrons_per_pattern`` etc. are None, ``unit`` is "counts" and ``counts_per_pattern`` holds the
    counts. All of these are per recorded probe position; a stored (``input.bin_r``-binned) pattern sums bin_r²
    of them (``electrons_per_stored_pattern``). Area per recorded position = (recorded scan step)²; with a probe
    no larger than the step, each area is exposed once, so the accumulated dose equals the per-position dose.
    ``counted_electrons_per_pattern``: the electrons the detector counted (None where unknown), for the sanity
    check against a stated dose.
    """
    d = cfg.dose
    per_stored = cfg.input.bin_r ** 2
    step_a = cfg.calibration.scan_step_nm * 10.0
    if measured:
        mean_counts, integrating = float(measured["counts_per_pattern"]), measured.get("integrating")
        lower = bool(measured.get("lower_bound"))
    else:
        mean_counts, integrating, lower = float(np.mean(counts)) if np.size(counts) else 0.0, None, False
    cpe = d.detector_counts_per_electron
    counts_pp = mean_counts / per_stored
    counted = None if (integrating and cpe is None) else counts_pp / (cpe or 1.0)
    base = {"scan_step_nm": cfg.calibration.scan_step_nm, "stored_step_nm": scan_step_nm(cfg),
            "counts_per_pattern": counts_pp, "counted_electrons_per_pattern": counted, "counted_lower_bound": lower}
    if d.electrons_per_pattern:
        epp, source = float(d.electrons_per_pattern), "config dose.electrons_per_pattern"
    elif d.beam_current_pa and d.dwell_time_ms:
        epp = d.beam_current_pa * 1e-12 * d.dwell_time_ms * 1e-3 / 1.602176634e-19
        source = "beam current × dwell time"
    elif counted is None:
        return base | {"electrons_per_pattern": None, "electrons_per_A2": None, "accumulated_electrons_per_A2": None,
                       "electrons_per_stored_pattern": None, "unit": "counts",
                       "source": f"unknown (counts): the data do not look like electron counts ({integrating}); set "
                                 f"dose.detector_counts_per_electron, dose.electrons_per_pattern or "
                                 f"dose.beam_current_pa with dose.dwell_time_ms"}
    else:
        epp = counted
        source = ("measured: detector counts per position (masked pixels filled in from their ring) / "
                  + (f"detector_counts_per_electron {cpe:g}" if cpe else "1 count per electron (counting detector)"))
        if lower:
            source += "; a lower bound: the mask hides the central disk's counts"
        base["lower_bound"] = lower
    per_area = epp / step_a ** 2
    return base | {"electrons_per_pattern": epp, "electrons_per_A2": per_area, "accumulated_electrons_per_A2": per_area,
                   "electrons_per_stored_pattern": epp * per_stored, "unit": "electrons", "source": source}


STATED_VS_COUNTED_FACTOR = 3.0
"""A stated dose (config) and the electrons counted that differ by more than this factor are warned about: a
counting detector's detective quantum efficiency and the electrons scattered beyond the detector cost tens of per
cent, not a factor 3 (Medipix3 DQE(0) ≈ 0.9 at 200 kV; ~5–25 % of the electrons scatter past the detector's edge)."""

MASK_WARN_FRACTION = 0.5
"""A detector mask that hides more than this share of the pixels is warned about (issue 21)."""


def dose_warnings(cfg: Config, dose: dict) -> list[str]:
    """Sanity checks of a :func:`dose_record`: a stated dose and the counted electrons more than
    :data:`STATED_VS_COUNTED_FACTOR` apart; a dose too low for the classes (the dose-scaled crystal threshold under
    :data:`sendmap.science.dose.MIN_CRYSTAL_Z`); a dose unknown (counts, not electrons)."""
    from .science.dose import MIN_CRYSTAL_Z, min_electrons_for_classes

    out = []
    epp, counted = dose.get("electrons_per_pattern"), dose.get("counted_electrons_per_pattern")
    if epp is None:
        out.append(f"dose {dose.get('source')}; figures and tables give counts, not electrons")
    elif counted is not None and not dose["source"].startswith("measured") and counted >= 0:
        ratio = epp / counted if counted > 0 else float("inf")
        too_many = ratio > STATED_VS_COUNTED_FACTOR and not dose.get("counted_lower_bound")  # counts a lower bound:
        if too_many or ratio < 1 / STATED_VS_COUNTED_FACTOR:  # only more counts than electrons says something
            out.append(f"the stated dose ({dose['source']}: {epp:.3g} e⁻/pattern) and the electrons the detector "
                       f"counted ({counted:.3g} per pattern) differ by a factor {max(ratio, 1 / max(ratio, 1e-300)):.3g}"
                       f" (> {STATED_VS_COUNTED_FACTOR:g}); check dose.* and dose.detector_counts_per_electron")
    d = cfg.classify.definitions
    n_min = min_electrons_for_classes(d.crystal_spot_z, d.crystal_spot_z_electrons)
    per_stored = dose.get("electrons_per_stored_pattern")
    if n_min is not None and per_stored is not None and per_stored < n_min:
        out.append(f"{per_stored:.3g} electrons per pattern is too few for the classes: under {n_min:.3g} e⁻ per "
                   f"pattern the dose-scaled crystal threshold (classify.definitions.crystal_spot_z at "
                   f"crystal_spot_z_electrons) would fall below {MIN_CRYSTAL_Z:g} σ, where noise passes for Bragg "
                   f"disks; it is held at {MIN_CRYSTAL_Z:g} σ, so crystals go undetected; bin positions "
                   f"(input.bin_r) or treat the class map as unsupported")
    return out


# --------------------------------------------------------------------------------------------- calibrate

def detector_mask(ctx: Context, r_disk_px: float) -> dict:
    """Every cause of an unusable pixel, from the ingest reductions: hot, dead, saturated, non-finite, beam stop,
    aperture shadow and the user's mask file. Returns bool arrays (True = excluded) per cause, ``mask`` and
    ``centre_mask`` (True = used; the latter keeps saturated pixels: a flat-topped disk still has a centre),
    ``centre_guess_yx`` and an ``info`` dict."""
    from .science.mask import hot_dead_mask, load_user_mask, saturated_mask, saturation_level, shadow_masks

    cfg, g = ctx.cfg, ctx.group
    cal = cfg.calibration
    sum_p = np.asarray(g["ingest/sum_pattern"])
    max_p = np.asarray(g["ingest/max_pattern"])
    shape = sum_p.shape
    none = np.zeros(shape, bool)
    info: dict = {}
    hd = hot_dead_mask(sum_p, max_p) if cal.mask_hot_dead else {"hot": none, "dead": none}
    sat = none
    if cal.mask_saturated:
        if cfg.input.bin_q > 1 or cfg.input.bin_r > 1:
            info["saturated"] = "not searched: the data are binned (saturation is a property of single pixels/frames)"
        else:
            level = cal.saturation_count or saturation_level(
                np.dtype(ctx.input_info.get("dtype", "uint16")),
                (ctx.input_info.get("reader_metadata") or {}).get("counter_depth"))
            if level is not None:
                sat = saturated_mask(max_p, level)
                info["saturation_count"] = int(level)
    user = none
    if cal.mask_file:
        path = cfg.resolve(cal.mask_file)
        user = ~load_user_mask(path, shape)
        info["mask_file"] = str(path)
    nonfinite = (np.asarray(g["ingest/nonfinite_count"]) > 0) if "ingest/nonfinite_count" in g else none
    prior = ~(hd["hot"] | hd["dead"] | user | nonfinite)
    beam_stop = aperture = none
    guess = [float("nan"), float("nan")]
    if cal.mask_shadows:
        try:
            sh = shadow_masks(np.asarray(g["ingest/mean_pattern"]), None, mask=prior & ~sat, disk_radius_px=r_disk_px,
                              n_frames=int(np.prod(g["ingest/total_counts"].shape))
                              if np.issubdtype(np.dtype(ctx.input_info.get("dtype", "uint16")), np.integer) else None)
        except (ValueError, IndexError, np.linalg.LinAlgError) as exc:  # a pattern the search cannot handle
            info["shadows"] = {"failed": f"no shadow mask: the beam-stop/aperture search failed ({exc}); set "
                                         f"calibration.mask_file to mask them, or calibration.mask_shadows: false"}
        else:
            beam_stop, aperture = sh["beam_stop"], sh["aperture"]
            info["shadows"] = sh["info"]
            guess = list(sh["info"].get("centre_yx", guess))
    centre_mask = prior & ~beam_stop & ~aperture
    return {"hot_pixels": hd["hot"], "dead_pixels": hd["dead"], "saturated_pixels": sat, "user_mask": user,
            "beam_stop": beam_stop, "aperture": aperture, "mask": centre_mask & ~sat, "centre_mask": centre_mask,
            "centre_guess_yx": guess, "info": info}


ELLIPSE_SECTORS = 36
"""Azimuthal sectors (10° each) for the ellipse fit: enough to sample cos 2φ, wide enough to hold counts."""
ELLIPSE_CENTRE_STEP_PX = 0.25
"""Centre grid of the ellipse fit's mean pattern: a ±1/8 px jitter of single frames does not blur a mean ring."""


@dataclass(frozen=True)
class _CalibrateProcess:
    """process(): per-frame centres of a block and, for the ellipse fit, the centred polar sums (no ellipse
    correction) of its non-crystalline frames: one read of the data for both."""

    guess: tuple
    centre_mask: np.ndarray  # pixels used for the centres (saturated ones too: a flat-topped disk has a centre)
    mask: np.ndarray  # pixels used for the ellipse sums and the profiles
    radius: float
    method: str  # "disk" or "symmetry"
    annulus_px: tuple  # symmetry: the radii (px) of the rings used
    tables: object  # PolarTables of the ellipse geometry, or None when the ellipse is not fitted
    disk_radius_q: float
    crystal_bands: tuple
    crystal_spot_z: float

    ellipse_regions: frozenset  # the blocks whose ellipse sums are taken (all, or a sample spread over the scan)

    def __call__(self, loaded):
        from .science.centre import disk_centres, symmetry_centres
        from .science.polar_tables import profile_block
        from .science.sparse import as_dense

        _one_numba_thread_off_main()
        item, frames, _ = loaded
        if self.method == "symmetry":
            centres = symmetry_centres(as_dense(frames), np.array(self.guess), self.centre_mask, *self.annulus_px)
            centres = np.where(np.isfinite(centres), centres, np.array(self.guess))
        else:
            centres = disk_centres(frames, np.array(self.guess), self.centre_mask, self.radius)
        sums = None
        if self.tables is not None and tuple(item[1]) in self.ellipse_regions:
            # around the measured centres (≈ 0.05 px noise at 2e4 e⁻: no visible blur of a mean ring)
            r = profile_block(frames, centres, self.mask, self.tables, self.disk_radius_q, keep_sums=True)
            keep = band_max(r["spot_z"], self.tables.geom.q_centres, self.crystal_bands) < self.crystal_spot_z
            sums = (r["s"][keep].sum(axis=0), r["w"][keep].sum(axis=0), int(keep.sum()))
        return item[1], centres, sums


def ellipse_sample(blocks, max_frames: int) -> frozenset:
    """The blocks (y0, y1, x0, x1) whose frames feed the ellipse fit: all of them, or where they hold more than
    ``max_frames`` frames (> 0), about that many in whole blocks evenly spaced over the scan (a detector's
    ellipse does not vary across the scan, so a spread sample fits it as well as the sample's counts allow)."""
    sizes = [(b[1] - b[0]) * (b[3] - b[2]) for b in blocks]
    total = sum(sizes)
    if max_frames <= 0 or total <= max_frames:
        return frozenset(tuple(b) for b in blocks)
    n = max(1, math.ceil(len(blocks) * max_frames / total))
    picks = np.unique(np.round(np.linspace(0, len(blocks) - 1, n)).astype(int))
    return frozenset(tuple(blocks[i]) for i in picks)


PROBE_MISMATCH = 0.10
"""A measured central-disk radius more than 10 % from convergence_mrad / λ / q_pixel_size is warned about (issue
17): one of the three numbers is wrong, and the disk radius sets the centre window and the Q range cut."""


PROBE_MIN_COUNTS = 10.0
"""The central disk's middle must hold at least this many counts per pixel summed over the scan for its radius to
be measured (Poisson noise ≤ 32 % per pixel; the edge is then located on rings of 2πR such pixels)."""


def measure_probe(ctx: Context, origins: np.ndarray, dm: dict, r_disk: float, qpx: float) -> dict:
    """The central disk's radius measured on the scan's summed pattern about the median fitted centre
    (:func:`sendmap.science.centre.central_disk_radius`), against the radius expected from
    ``calibration.convergence_mrad``, the wavelength and the Q per pixel; ``warning`` where they differ by more than
    :data:`PROBE_MISMATCH`. Not measured (``note``) where the mask hides the disk's middle (a beam stop)."""
    from .science.centre import central_disk_radius

    cal = ctx.cfg.calibration
    out = {"expected_radius_px": float(r_disk), "convergence_mrad": float(cal.convergence_mrad)}
    c = np.nanmedian(origins.reshape(-1, 2), axis=0) if np.isfinite(origins).any() else np.full(2, np.nan)
    if not np.all(np.isfinite(c)):
        return out | {"measured_radius_px": None, "note": "not measured: no centre"}
    total = np.asarray(ctx.group["ingest/sum_pattern"], dtype=np.float64)
    # on the scan's sum: its middle must hold ≥ PROBE_MIN_COUNTS per pixel
    res = central_disk_radius(total, c, dm["centre_mask"], r_max_px=min(max(3.0 * r_disk, 8.0), 0.45 * min(total.shape)),
                              min_plateau=PROBE_MIN_COUNTS)
    rad = res.get("radius_px")
    if rad is None or not np.isfinite(rad):
        return out | {"measured_radius_px": None, "note": f"not measured: {res.get('reason', 'no disk edge')}"}
    lam = electron_wavelength_angstrom(cal.beam_energy_kv)
    out.update(measured_radius_px=float(rad), measured_convergence_mrad=float(rad * qpx * lam * 1e3),
               ratio=float(rad / r_disk), contrast=res.get("contrast"),
               method="half-way level of the central disk's edge in the scan's summed pattern")
    if abs(rad / r_disk - 1.0) > PROBE_MISMATCH:
        out["warning"] = (f"the central disk in the data has a radius of {rad:.3g} px ({rad * qpx * lam * 1e3:.3g} mrad), "
                          f"but calibration.convergence_mrad = {cal.convergence_mrad:g} mrad at {qpx:.4g} 1/Å per px "
                          f"gives {r_disk:.3g} px ({100 * (rad / r_disk - 1):+.0f} %): check "
                          f"calibration.convergence_mrad and calibration.q_pixel_size")
    return out


def counted_dose(ctx: Context, mask: np.ndarray, origins: np.ndarray) -> dict:
    """Detector counts per pattern with the masked pixels left out and filled in from their ring
    (:func:`sendmap.science.dose.counts_per_pattern`, about the median fitted centre), and ``integrating``: why the
    data are not electron counts (:func:`sendmap.science.dose.integrating_camera_reason`), or None."""
    from .science.dose import counts_per_pattern, integrating_camera_reason
    from .science.mask import saturation_level

    g, cfg = ctx.group, ctx.cfg
    sum_p = np.asarray(g["ingest/sum_pattern"], dtype=np.float64)
    n = int(np.prod(g["ingest/total_counts"].shape))
    c = np.nanmedian(origins.reshape(-1, 2), axis=0) if np.isfinite(origins).any() else np.full(2, np.nan)
    rec = counts_per_pattern(sum_p, mask, c, n)
    depth = (ctx.input_info.get("reader_metadata") or {}).get("counter_depth")
    sat = None
    if depth is not None and cfg.input.bin_q == 1 and cfg.input.bin_r == 1:  # binned: sums of pixels/frames
        try:
            sat = saturation_level(np.dtype(ctx.input_info.get("dtype", "uint16")), depth)
        except ValueError:
            sat = None
    rec["integrating"] = integrating_camera_reason(np.dtype(ctx.input_info.get("dtype", "uint16")), sum_p,
                                                   np.asarray(g["ingest/max_pattern"]), sat)
    return rec


def stage_calibrate(ctx: Context) -> None:
    """Detector mask, per-position centres with a descan plane fit, and the elliptical distortion.

    One read of the data: each block gives its frames' centres (centre of mass of the central disk) and
    the centred polar sums of its non-crystalline frames, from which the ellipse is fitted.
    """
    from .execute import run_blocks
    from .science.centre import brightest_disk_guess, fit_descan_plane
    from .science.ellipse import ellipse_from_polar_mean
    from .science.polar import PolarGeometry
    from .science.polar_tables import PolarTables

    cfg, g = ctx.cfg, ctx.group
    cal = cfg.calibration
    qpx = q_pixel_size(cfg)
    r_disk = disk_radius_px(cfg)
    data, blocks = data_blocks(ctx)
    ry, rx = data.shape[:2]
    sum_p = np.asarray(g["ingest/sum_pattern"], dtype=np.float64)
    if not np.any(sum_p[np.isfinite(sum_p)] > 0):
        raise SendmapInputError(
            f"the data hold no counts: every pixel of every frame of {ctx.input_info.get('path', cfg.input.path)} is "
            f"zero (or negative), so no centre, mask, ellipse or dose can be determined; check input.path, "
            f"input.dataset and input.crop_r/crop_q")
    dm = detector_mask(ctx, r_disk)
    mask, centre_mask = dm["mask"], dm["centre_mask"]

    def warn(msg, code="calibration_fallback"):
        ctx.warn(msg, code)

    if dm["info"].get("shadows", {}).get("failed"):
        warn(dm["info"]["shadows"]["failed"], "shadow_search_failed")
    masked_frac = float((~mask).mean())
    if masked_frac > MASK_WARN_FRACTION:
        warn(f"the detector mask hides {100 * masked_frac:.0f} % of the pixels (hot {int(dm['hot_pixels'].sum())}, "
             f"dead {int(dm['dead_pixels'].sum())}, saturated {int(dm['saturated_pixels'].sum())}, beam stop "
             f"{int(dm['beam_stop'].sum())}, aperture {int(dm['aperture'].sum())}, mask file "
             f"{int(dm['user_mask'].sum())}); check calibration.mask_* and calibration.mask_file",
             "mask_hides_most_of_detector")
    guess = np.asarray(dm["centre_guess_yx"], dtype=float)
    if not np.all(np.isfinite(guess)):
        guess = brightest_disk_guess(np.where(mask, np.asarray(g["ingest/sum_pattern"]), 0.0), r_disk)
    method = cal.centre_method
    if method == "auto":
        yy, xx = np.mgrid[:mask.shape[0], :mask.shape[1]]
        disk = np.hypot(yy - guess[0], xx - guess[1]) <= r_disk
        hidden = 1.0 - float(centre_mask[disk].mean()) if disk.any() else 1.0
        method = "symmetry" if hidden > 0.5 else "disk"
        dm["info"]["central_disk_hidden_fraction"] = hidden
        if method == "disk" and dm["beam_stop"].any():
            # a beam stop was found but does not cover the disk as found: is there a disk at the centre? (a real
            # stop's tip over the centre reads as a dim middle, not as a shadow, where the whole ring is under it)
            from .science.centre import central_disk_radius

            seen = central_disk_radius(np.asarray(g["ingest/sum_pattern"], dtype=np.float64), guess, centre_mask,
                                       r_max_px=min(max(3.0 * r_disk, 8.0), 0.45 * min(mask.shape)))
            if not np.isfinite(seen.get("radius_px", np.nan)):
                method = "symmetry"
                dm["info"]["central_disk_not_seen"] = seen.get("reason", "no disk")
    radius = cal.centre_radius_px or 1.5 * r_disk
    annulus = (1.5 * r_disk, 0.45 * min(mask.shape))
    if method == "symmetry" and not annulus[0] < annulus[1]:
        warn(f"centres: the rings for the symmetry centre would start at 1.5 disk radii = {annulus[0]:.3g} px, beyond "
             f"0.45 of the detector ({annulus[1]:.3g} px): centre of mass of the disk instead (check "
             f"calibration.q_pixel_size and calibration.convergence_mrad)")
        method = "disk"
    ell = cal.ellipse
    tables = None
    if ell == "fit":
        geom = PolarGeometry(qpx, qpx, int(cfg.calibration.ellipse_window[1] / qpx * 1.2) + 2, ELLIPSE_SECTORS,
                             supersample=cfg.profiles.supersample)
        tables = PolarTables(geom, ELLIPSE_CENTRE_STEP_PX)
    measured = np.zeros((ry, rx, 2))
    acc = {"s": 0.0, "w": 0.0, "n": 0}

    def put(_, res):
        (y0, y1, x0, x1), c, sums = res
        measured[y0:y1, x0:x1] = c.reshape(y1 - y0, x1 - x0, 2)
        if sums is not None:
            acc["s"] = acc["s"] + sums[0]
            acc["w"] = acc["w"] + sums[1]
            acc["n"] += sums[2]

    d = cfg.classify.definitions
    process = _CalibrateProcess(tuple(guess), centre_mask, mask, radius, method, annulus, tables, r_disk * qpx,
                                tuple(map(tuple, d.crystal_bands)), d.crystal_spot_z,
                                ellipse_sample(blocks, cal.ellipse_max_frames))
    _DATA_ARRAYS.pop(ctx.store_path, None)  # the data may have been re-ingested since
    run_blocks(_read_store_block, process, [(ctx.store_path, b, None) for b in blocks], cfg.compute, "calibrate",
               on_result=put, thread_safe=True)
    # a frame with no counts in the window (centre of mass) or no usable symmetry keeps the first guess exactly:
    # not a measurement; the plane fitted to the others stands in for it
    at_guess = np.all(measured == guess[None, None, :], axis=-1)
    n_at_guess = int(at_guess.sum())
    if n_at_guess:
        warn(f"centres: {n_at_guess} of {at_guess.size} positions have no measurable centre (no counts in the "
             f"{'disk window' if method == 'disk' else 'rings'}); they take "
             + ("the descan plane's value" if cfg.calibration.descan_fit == "plane" else "the first guess"))
    if cfg.calibration.descan_fit == "plane":
        fitted, descan = fit_descan_plane(np.where(at_guess[..., None], np.nan, measured))
        if descan.get("fallback"):
            fitted = np.where(np.isfinite(fitted), fitted, guess[None, None, :])
            warn(f"descan plane {descan['fallback']}: the measured centres are used as they are "
                 f"(calibration.descan_fit)")
    else:
        fitted, descan = measured, {"model": "none"}
    write_array(g, "calibration/origin_measured", measured, {"units": "pixel (y, x)"})
    write_array(g, "calibration/origin", fitted, {"units": "pixel (y, x)", "model": cfg.calibration.descan_fit})
    write_array(g, "calibration/mask", mask, {"meaning": "True where a detector pixel is used"})
    for name in ("hot_pixels", "dead_pixels", "saturated_pixels", "beam_stop", "aperture", "user_mask"):
        write_array(g, f"calibration/{name}", dm[name], {"meaning": "True where a pixel is excluded for this cause"})

    if ell == "fit":
        with np.errstate(invalid="ignore", divide="ignore"):
            polar_mean = np.asarray(acc["s"], dtype=np.float64) / np.asarray(acc["w"], dtype=np.float64)
        ellipse = ellipse_from_polar_mean(polar_mean, tables.geom.q_centres, cfg.calibration.ellipse_window, acc["n"])
        if not ellipse["fitted"]:
            binned = (f" (input.bin_q = {cfg.input.bin_q} leaves {mask.shape[0]} × {mask.shape[1]} pixels of "
                      f"{qpx:.3g} 1/Å: Bragg-disk-sized spots span few pixels)" if cfg.input.bin_q > 1 else "")
            warn(f"ellipse {ellipse['source']}{binned}; no correction (ratio 1) is applied: set calibration.ellipse "
                 f"to [ratio, angle_deg] or 'calibrant' if the detector is known to be distorted", "ellipse_not_fitted")
    elif ell == "none":
        ellipse = {"ratio": 1.0, "angle_deg": 0.0, "source": "none"}
    elif ell == "calibrant":
        rec = calibrant_record(cfg)
        if rec is None:
            raise SendmapInputError("calibration.ellipse: calibrant needs calibration.calibrant (the JSON of "
                                    "`sendmap calibrate --json`)")
        ellipse = {"ratio": float(rec["ellipse"]["ratio"]), "angle_deg": float(rec["ellipse"]["angle_deg"]),
                   "source": f"measured on a standard: {rec['file']}"}
    else:
        ellipse = {"ratio": float(ell[0]), "angle_deg": float(ell[1]), "source": "config"}
    probe = measure_probe(ctx, fitted, dm, r_disk, qpx)
    if probe.get("warning"):
        warn(probe["warning"], "probe_radius_mismatch")
    dose_counts = counted_dose(ctx, mask, fitted)
    if dm["info"].get("central_disk_not_seen") or (dm["beam_stop"].any() and method == "symmetry"):
        dose_counts["lower_bound"] = True  # the unscattered disk is under the beam stop: its counts are missing
    calib = {"q_pixel_size": qpx, "q_pixel_size_source": q_pixel_size_and_source(cfg)[1], "disk_radius_px": r_disk,
             "probe": probe, "dose_counts": dose_counts, "masked_fraction": masked_frac, "n_centres_at_guess": n_at_guess,
             "wavelength_angstrom": electron_wavelength_angstrom(cfg.calibration.beam_energy_kv),
             "ellipse": ellipse, "descan": descan, "centre_guess_yx": guess.tolist(), "centre_method": method,
             "n_hot": int(dm["hot_pixels"].sum()), "n_dead": int(dm["dead_pixels"].sum()),
             "n_saturated": int(dm["saturated_pixels"].sum()), "n_masked": int((~mask).sum()),
             "mask_info": dm["info"], "scan_step_nm": scan_step_nm(cfg)}
    set_attrs(g, calibration=calib)


# --------------------------------------------------------------------------------------------- profiles

def block_progress(ctx: Context, stage: str, plan: dict, arrays: list[str]):
    """The resume record of a block stage (:mod:`sendmap.resume`) whose blocks write ``arrays`` of the store: used
    when the stage key and ``plan`` match those of a killed run and its arrays are there (stray temporary chunk
    files removed), else discarded. Logs how many blocks are done."""
    from .resume import BlockProgress
    from .store import remove_stray_temps

    progress = BlockProgress(ctx.out_dir, stage, ctx.stage_key, plan, enabled=ctx.resume)
    if progress.resumed:
        if all(a in ctx.group for a in arrays):
            for a in arrays:
                remove_stray_temps(Path(ctx.store_path, a))
            ctx.log(f"[sendmap] {stage}: resuming, {len(progress.done)}/{len(plan['blocks'])} blocks done")
        else:
            progress.clear()
            progress.done, progress.arrays, progress.resumed = set(), {}, False
    return progress


def profile_geometry(cfg: Config, calib: dict, frame_shape: tuple[int, int], origin: np.ndarray):
    from .science.polar import PolarGeometry

    qpx = calib["q_pixel_size"]
    bw = cfg.profiles.bin_width or qpx
    if cfg.profiles.q_max:
        q_max = cfg.profiles.q_max
    else:
        cy, cx = np.nanmean(origin.reshape(-1, 2), axis=0)
        corners = [(0, 0), (0, frame_shape[1] - 1), (frame_shape[0] - 1, 0), (frame_shape[0] - 1, frame_shape[1] - 1)]
        q_max = min(math.hypot(y - cy, x - cx) for y, x in corners) * qpx
    ell = calib["ellipse"]
    return PolarGeometry(qpx, bw, max(4, int(q_max / bw)), cfg.profiles.n_azimuth, ell["ratio"], ell["angle_deg"],
                         cfg.profiles.supersample)


def profile_error_terms(q: np.ndarray, n_phi: int, disk_radius_q: float, bin_width: float, error_model: str):
    """(G(Q) of the "azimuthal" error model or None for "poisson", the sector→pixel scale of V(Q)): what
    :class:`_PolarProcess` needs besides the geometry (:func:`sendmap.science.polar.speckle_mean_factor`,
    :func:`~sendmap.science.polar.fem_variance_scale`)."""
    from .science.polar import fem_variance_scale, speckle_mean_factor

    g = speckle_mean_factor(q, n_phi, disk_radius_q, bin_width) if error_model == "azimuthal" else None
    return g, fem_variance_scale(q, n_phi, disk_radius_q, bin_width)


@dataclass(frozen=True)
class _PolarProcess:
    """process(): one pass over a block → profiles, robust mean, spot significance and virtual images."""

    tables: object  # PolarTables (pickles without its tables; rebuilt lazily where it runs)
    mask: np.ndarray
    disk_radius_q: float
    adf_q: tuple
    bf_q: float
    qn: np.ndarray  # Q^n per bin
    bragg_q_range: tuple = (0.0, 0.0)  # Q range (1/Å) of the Bragg fraction (features/bragg_fraction)
    speckle_factor: object = None  # (nq,) G(Q) of the "azimuthal" error model (polar.speckle_mean_factor), or None
    fem_scale: object = None  # (nq,) sector-scale V → pixel-scale V (polar.fem_variance_scale), or None

    def __call__(self, loaded):
        from .science.features import bragg_fraction
        from .science.polar_tables import profile_block

        _one_numba_thread_off_main()
        item, frames, centres = loaded
        out = profile_block(frames, centres, self.mask, self.tables, self.disk_radius_q, self.adf_q,
                            bf_max_q=self.bf_q, speckle_factor=self.speckle_factor)
        # the stored outputs (float32) made here in the worker, not in the main thread that writes (it shares
        # the cores)
        out["robust_mean"] = out.pop("robust")
        if self.fem_scale is not None:
            out["fem_variance"] = out["fem_variance"] * self.fem_scale
        for nm, src in (("iqn", "mean"), ("iqn_sem", "sem"), ("iqn_robust", "robust_mean")):
            out[nm] = out[src] * self.qn
        for nm in PROFILE_OUTPUTS:
            out[nm] = out[nm].astype(np.float32)
        # from the stored (float32) profiles, as the classify stage computed it before it moved here
        out["bragg"] = bragg_fraction(self.tables.geom.q_centres, out["mean"].astype(np.float64),
                                      out["robust_mean"].astype(np.float64), self.bragg_q_range)
        return item[1], out


LATER_STAGE_MODULES = ("sendmap.execute", "sendmap.science.mask", "sendmap.science.centre", "sendmap.science.ellipse",
                       "sendmap.science.polar_tables", "sendmap.science.peaks", "sendmap.science.features",
                       "sendmap.science.classify", "sendmap.science.phases", "sendmap.science.stats", "sendmap.science.dose",
                       "sendmap.science.lowrank",
                       "sendmap.io.generic", "sendmap.report.build", "threadpoolctl")
"""The modules the stages after ingest import (0.24 s in all, scipy.ndimage alone ~0.2 s): see :func:`prefetch_imports`.
Kept by hand; ``tests/test_reprocess.py`` fails if a function here imports a sendmap module it does not load."""


def prefetch_imports(modules=LATER_STAGE_MODULES) -> None:
    """Import ``modules`` on a background thread. Called when ingest's blocks start: its threads then run numba
    kernels, blosc and file I/O without the GIL, so the imports cost little there, instead of running serially,
    with a core idle, at the start of later stages. Python's import lock makes a later import of the same module
    wait for this one; a module that fails to import here is imported (and fails) again where it is used."""
    import importlib
    import threading

    def run():
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - reported where the module is really needed
                pass

    threading.Thread(target=run, name="sendmap-prefetch-imports", daemon=True).start()


def _one_numba_thread_off_main() -> None:
    """In a worker thread of the threads scheduler (one block per core), kernels run on that thread alone.

    numba's thread count is per thread, and its OpenMP layer accepts launches from several threads: one
    serial kernel per core, each with its own block's decoding, scales better than one block at a time
    spread over the cores while another thread decodes the next (1.9× vs 1.6× on 2 cores)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        import numba

        numba.set_num_threads(1)


PROFILE_CHUNK_BYTES = 2e6
"""Target size of one chunk of each (Ry, Rx, nq) float32 profile array (at the default ``compute.chunk_mb`` of 16,
scaled with it). Small enough that the chunks are written while the kernels run: at 16 MB the 148 × 148 benchmark
scan's outputs were one chunk each, all written after the last block (0.4-0.6 s with both cores idle)."""

PROFILE_OUTPUTS = {
    "mean": ("profiles", {"units": "counts per pixel", "meaning": "azimuthal mean I(Q)"}),
    "sem": ("profiles", {"units": "counts per pixel", "meaning": "standard error of the mean (error_model: see attrs)"}),
    "dispersion": ("profiles", {"meaning": "pixel variance / mean: ≈ 1 for an isotropic Poisson ring"}),
    "robust_mean": ("profiles", {"units": "counts per pixel",
                                 "meaning": "azimuthal mean with sectors holding Bragg spots clipped (one-sided, 4σ)"}),
    "iqn": ("profiles", None),
    "iqn_sem": ("profiles", None),
    "iqn_robust": ("profiles", None),
    "spot_z": ("features", {"meaning": "significance (σ) of the brightest Bragg-disk-sized spot centred at each Q, "
                                       "against the azimuthal scatter at that Q (Poisson and speckle)"}),
    "fem_variance": ("features", {"meaning": "normalised azimuthal variance V(Q) of the pattern minus its Poisson part "
                                             "(fluctuation electron microscopy; ≈ 0 for a smooth ring, ≈ 1/M for "
                                             "speckle of M independent volumes)",
                                  "estimator": "per position: [Σ_k w_k (I_k − I)² − (n − 1)·I·ΣW_p²/W] / (W·I²) over "
                                               "the azimuthal sectors k of each Q bin (the ring variance of one "
                                               "pattern; its mean over positions is the ring-ensemble V(k)), scaled "
                                               "to the pixel scale by 1/(ρ̄0·(1 − G)) for grains of the probe disk "
                                               "(sendmap.science.polar.fem_variance_scale)",
                                  "units": "dimensionless"}),
}


ERROR_MODELS = {
    "poisson": "Poisson counting noise only: sqrt(I·ΣW_p²)/ΣW_p",
    "azimuthal": "Poisson + speckle: Poisson variance + I²·V̄·G/(1 − G), V̄ the normalised azimuthal variance "
                 "(features/fem_variance) averaged over ± one probe-disk radius in Q, G the share of one sector's "
                 "speckle variance left in a ring's mean for grains the size of the probe disk, centrosymmetric "
                 "(sendmap.science.polar.speckle_mean_factor)",
}
"""profiles.error_model → what profiles/sem holds (its attrs name the model)."""


BRAGG_ATTRS = {"meaning": "share of scattered intensity in Bragg-spot sectors (mean − robust mean, Q-weighted)"}


def stage_profiles(ctx: Context) -> None:
    """Azimuthal mean I(Q), SEM, dispersion, robust mean, I·Q^n, spot significance and virtual images per position.

    One read of every data chunk gives all of them (:func:`sendmap.science.polar_tables.profile_block`).
    """
    from .execute import run_blocks
    from .science.polar import fem_variance_scale, speckle_mean_factor
    from .science.polar_tables import PolarTables

    cfg, g = ctx.cfg, ctx.group
    calib = dict(g.attrs["calibration"])
    origin = np.asarray(g["calibration/origin"])
    mask = np.asarray(g["calibration/mask"])
    data, blocks = data_blocks(ctx)
    ry, rx, qy, qx = data.shape
    geom = profile_geometry(cfg, calib, (qy, qx), origin)
    finite = origin.reshape(-1, 2)[np.all(np.isfinite(origin.reshape(-1, 2)), axis=1)]
    tables = PolarTables(geom, cfg.profiles.centre_step_px, (qy, qx),
                         np.stack([finite.min(axis=0), finite.max(axis=0)], axis=1) if len(finite) else None)
    if len(finite):  # every table the scan needs, built here with all cores (a worker thread has one)
        tables.split_centres(finite)
    r_q = calib["disk_radius_px"] * calib["q_pixel_size"]
    q = geom.q_centres
    qn = q ** cfg.profiles.n
    # virtual images from whole radial bins: BF out to the bin edge nearest the disk radius, ADF from the edge
    # nearest two disk radii to the last bin's edge
    bw = geom.bin_width
    bf_q = max(1, round(r_q / bw)) * bw
    adf_q = (max(1, round(2 * r_q / bw)) * bw, geom.nq * bw)
    # Results are encoded and written straight to their chunk files (store.write_region_direct), a chunk of
    # whole-row blocks at a time (≈ PROFILE_CHUNK_BYTES per array: creating a file costs ~1 ms on some file
    # systems, 8 arrays × every block adds up); blocks of part of a row are one chunk each.
    by, bx = blocks[0][1] - blocks[0][0], blocks[0][3] - blocks[0][2]
    whole_rows = all(b[2] == 0 and b[3] == rx for b in blocks)
    chunk_bytes = PROFILE_CHUNK_BYTES * cfg.compute.chunk_mb / 16.0  # 2 MB at the default compute.chunk_mb
    per_chunk = max(1, int(chunk_bytes // (by * bx * geom.nq * 4))) if whole_rows else 1
    chunks = (by * per_chunk, bx, geom.nq)
    progress = block_progress(ctx, "profiles", {"shape": (ry, rx, geom.nq), "chunks": chunks, "blocks": blocks},
                              [f"{grp}/{nm}" for nm, (grp, _) in PROFILE_OUTPUTS.items()])
    arrays = {}
    for nm, (grp, attrs) in PROFILE_OUTPUTS.items():
        if progress.resumed:  # the killed run's arrays, with its finished chunks
            arrays[nm] = g[f"{grp}/{nm}"]
            continue
        arrays[nm] = g.create_array(f"{grp}/{nm}", shape=(ry, rx, geom.nq), dtype="float32", chunks=chunks,
                                    overwrite=True, fill_value=float("nan"), compressors=None,
                                    chunk_key_encoding={"name": "default", "separator": "."})
        if attrs:
            arrays[nm].attrs.update(attrs)
    for nm in ("iqn", "iqn_sem", "iqn_robust"):
        arrays[nm].attrs.update({"n": cfg.profiles.n, "units": "counts per pixel × (1/Å)^n"})
    error_model = cfg.profiles.error_model
    speckle_g, fem_scale = profile_error_terms(q, geom.n_phi, r_q, geom.bin_width, error_model)
    for nm in ("sem", "iqn_sem"):
        arrays[nm].attrs.update({"error_model": error_model, "error_model_meaning": ERROR_MODELS[error_model]})
    bf = progress.arrays.get("bf", np.zeros((ry, rx)))
    adf = progress.arrays.get("adf", np.zeros((ry, rx)))
    bragg = progress.arrays.get("bragg", np.full((ry, rx), np.nan))

    pending: list = []  # results not yet written, in scan order: ((y0, x0), {name: (rows, cols, nq) array})

    def flush():
        if pending:
            (y0, x0), _ = pending[0]
            for nm, (grp, _) in PROFILE_OUTPUTS.items():
                block = np.concatenate([r[nm] for _, r in pending], axis=0)
                # uncompressed: float noise compresses 1.2×, not worth encoding in the writing thread
                write_region_direct(Path(ctx.store_path, grp, nm), chunks, (y0, x0, 0), block, separator=".",
                                    compress=False)
            progress.record(list(pending_blocks), {"bf": bf, "adf": adf, "bragg": bragg})
            pending.clear()
            pending_blocks.clear()

    pending_blocks: list = []  # the blocks of ``pending``, recorded as finished once their chunks are written

    def put(_, res):
        (y0, y1, x0, x1), out = res
        pending_blocks.append((y0, y1, x0, x1))
        bf[y0:y1, x0:x1] = out["bf"].reshape(y1 - y0, x1 - x0)
        adf[y0:y1, x0:x1] = out["adf"].reshape(y1 - y0, x1 - x0)
        bragg[y0:y1, x0:x1] = out["bragg"].reshape(y1 - y0, x1 - x0)
        pending.append(((y0, x0), {nm: out[nm].reshape(y1 - y0, x1 - x0, -1) for nm in PROFILE_OUTPUTS}))
        # blocks arrive in order: a chunk is complete at its last row (each part-row block is a chunk of its own)
        if per_chunk == 1 or y1 % chunks[0] == 0 or y1 == ry:
            flush()

    _DATA_ARRAYS.pop(ctx.store_path, None)
    items = [(ctx.store_path, b, origin[b[0]:b[1], b[2]:b[3]]) for b in blocks if not progress.is_done(b)]
    ctx.stage_info.update(blocks=len(blocks), blocks_resumed=len(blocks) - len(items))
    bragg_q = (2 * r_q, float(q[-1]))
    run_blocks(_read_store_block, _PolarProcess(tables, mask, r_q, adf_q, bf_q, qn, bragg_q, speckle_g, fem_scale), items,
               cfg.compute, "profiles", on_result=put, thread_safe=True)
    flush()
    write_array(g, "profiles/q", q, {"units": "1/Å (Q = 1/d), bin centres", "bin_width": geom.bin_width})
    write_array(g, "features/virtual_bf", bf, {"units": "counts", "q_range": [0.0, bf_q]})
    write_array(g, "features/virtual_adf", adf, {"units": "counts", "q_range": list(adf_q)})
    write_array(g, "features/bragg_fraction", bragg, BRAGG_ATTRS | {"q_range": list(bragg_q)})
    set_attrs(g, profiles={"q_max": float(q[-1] + geom.bin_width / 2), "bin_width": geom.bin_width, "nq": geom.nq,
                           "n_azimuth": geom.n_phi, "supersample": geom.supersample,
                           "centre_step_px": tables.centre_step_px,
                           "method": "supersampling (sub-pixels of 1/ss² counts), per-frame centre rounded to "
                                     "centre_step_px, precomputed pixel tables, non-zero pixels only"})


# --------------------------------------------------------------------------------------------- peaks

def crystal_rows(ctx: Context) -> np.ndarray:
    """(Ry, Rx) bool: positions whose Bragg-disk significance in the crystal bands is above the dose-scaled
    crystal threshold (the classify stage's first rule, without the neighbour condition: every strongly
    spotty pattern is kept out of the denoising components), from the profile stage's ``features/spot_z``."""
    cfg, g = ctx.cfg, ctx.group
    q = np.asarray(g["profiles/q"])
    crystal_z = band_max(np.asarray(g["features/spot_z"]), q, cfg.classify.definitions.crystal_bands)
    return np.nan_to_num(crystal_z, nan=0.0) > crystal_spot_threshold(cfg, np.asarray(g["ingest/total_counts"]),
                                                                      measured_counts(g))


AUTO_FIT_HALF_WIDTH_FALLBACK = 0.14
"""1/Å, the fixed fit half range that ``peaks.fit_half_width: auto`` keeps unless the mean profile shows it biased
(:func:`sendmap.science.peaks.choose_fit_range`): the earlier default, ≈ 1.1 × the FWHM of probe-convolved synthetic
SRO peaks."""

PEAK_STATUS_WARN_SHARE = 0.10
"""Share of non-crystalline positions without an SRO peak (``peaks/status`` not ok) above which the peaks stage
warns: on the synthetic Li/SEI/Cu scenarios (seed 0) at 5 × 10³ and 2 × 10⁴ e⁻ it is 0 of 2685, so a tenth means the window, the
calibration or the dose does not suit the data."""


def peak_window_check(q: np.ndarray, window: tuple[float, float], log: Callable, total_counts=None,
                      centre_yx=None, frame_shape=None) -> list[str]:
    """Compare ``peaks.window`` (1/Å) with the profiles' Q range (bin edges): a SendmapInputError where it lies
    entirely outside (or holds fewer than 3 bins), a logged warning (returned in a list) where it lies partly
    outside. ``total_counts`` (per frame) and ``centre_yx`` (the beam centre found, px) only make the error's
    message name the likelier cause: frames without counts, or a centre at the detector's edge."""
    bw = float(q[1] - q[0]) if q.size > 1 else 0.0
    lo, hi = (max(round(float(q[0]) - bw / 2, 12), 0.0), float(q[-1]) + bw / 2) if q.size else (0.0, 0.0)
    n_in = int(np.sum((q >= window[0]) & (q <= window[1])))
    if n_in < 3:
        cause = ""
        if total_counts is not None and not np.any(np.asarray(total_counts) > 0):
            cause = (" Every frame of the input sums to zero or less (no counts): there is nothing to measure; check "
                     "input.path / input.dataset and the detector's file.")
        elif centre_yx is not None and frame_shape is not None and min(
                centre_yx[0], centre_yx[1], frame_shape[0] - 1 - centre_yx[0], frame_shape[1] - 1 - centre_yx[1]) < 2:
            cause = (f" The beam centre was found at (y, x) = ({centre_yx[0]:.1f}, {centre_yx[1]:.1f}) px, at the edge "
                     f"of the {frame_shape[0]} × {frame_shape[1]} px detector, and the profiles reach only to the "
                     "nearest detector corner from it: no direct beam was found (frames with too few counts, or a "
                     "mask, calibration.mask_file, hiding it).")
        raise SendmapInputError(
            f"peaks.window {list(window)} 1/Å lies outside the profiles' Q range [{lo:.4g}, {hi:.4g}] 1/Å "
            f"({n_in} bins inside, need ≥ 3): no SRO peak can be sought. The Q range is set by the detector size and "
            "calibration.q_pixel_size (and limited by profiles.q_max and calibration.crop_q): check that "
            "calibration.q_pixel_size is right for this camera length, or move peaks.window." + cause)
    if window[0] < lo or window[1] > hi:
        msg = (f"peaks.window {list(window)} 1/Å lies partly outside the profiles' Q range [{lo:.4g}, {hi:.4g}] 1/Å: "
               "maxima at the profile's edge are not peaks (status no_maximum_in_window); check "
               "calibration.q_pixel_size and peaks.window")
        log(f"[sendmap] peaks: warning: {msg}")
        return [msg]
    return []


def speckle_fit_errors(ctx: Context, iqn: np.ndarray, sem: np.ndarray) -> np.ndarray:
    """The peak fit's per-bin errors under the "azimuthal" error model: speckle errors are correlated over ± one
    probe-disk diameter in Q, which a fit treating the bins as independent does not see; their part of each bin's
    variance is scaled by the factor that correlation gives the variance of the slope at the centre of the fit's
    polynomial (:func:`sendmap.science.polar.peak_slope_variance_factor`: 2.5 for degree 5 over ± 0.14 1/Å at 2 mrad,
    200 kV, 0.0125 1/Å bins), so the propagated peak error stays honest. ``profiles/sem`` itself is unchanged.

    Returns (errors for the fit, speckle dict: ``spk`` the unscaled speckle standard error per position and bin,
    ``correlation`` the radial correlation of consecutive bins, for :func:`speckle_components`)."""
    from .science.polar import peak_slope_variance_factor, speckle_fit_sem, speckle_mean_factor, speckle_radial_correlation

    cfg, g = ctx.cfg, ctx.group
    calib = dict(g.attrs["calibration"])
    r_q = float(calib["disk_radius_px"]) * float(calib["q_pixel_size"])
    q = np.asarray(g["profiles/q"])
    bw = float(q[1] - q[0])
    n_phi = int(dict(g.attrs["profiles"])["n_azimuth"])
    gfac, share = speckle_mean_factor(q, n_phi, r_q, bw, return_sector_share=True)
    # with fit_half_width: auto the range is chosen later, on these errors: the factor is taken at the fixed range it
    # starts from (the matched range, where chosen, is narrower: its factor is smaller, the errors a little wide)
    hw = cfg.peaks.fit_half_width if cfg.peaks.fit_half_width != "auto" else AUTO_FIT_HALF_WIDTH_FALLBACK
    factor = peak_slope_variance_factor(bw, hw, cfg.peaks.degree, speckle_radial_correlation(r_q, bw))
    fem = np.asarray(g["features/fem_variance"], dtype=np.float64)
    half = 0  # features/fem_variance is already pooled over ± one disk radius in Q
    spk = speckle_fit_sem(np.zeros_like(sem), iqn, fem, gfac, share, half, 2.0)  # factor 2: the speckle part once
    corr = speckle_radial_correlation(r_q, bw)
    return speckle_fit_sem(sem, iqn, fem, gfac, share, half, factor), {"spk": spk, "sem": sem, "correlation": corr}


SPECKLE_EDGE_SHARE = 0.03
"""Share of the profile's variance (median over the denoised bins of the non-crystalline positions) above which the
denoising's number of components comes from the correlated-noise edge (:func:`speckle_components`): below it the
errors are mostly Poisson, independent between bins, and the Marchenko–Pastur edge of ``lowrank_denoise`` holds."""

SPECKLE_EDGE_MARGIN = 1.2
"""Components kept: singular values above this × the top singular value of modelled noise (the margin of
``lowrank_denoise``'s own edge), plus one."""


def speckle_components(y: np.ndarray, s_fit: np.ndarray, speckle: dict, rows: np.ndarray, q_sel: np.ndarray):
    """Number of low-rank components for speckle-dominated profiles, or (None, None) where speckle is a minor part.

    The denoising whitens each bin by the median fit error ``s_fit`` of ``rows``; in those units the noise of one
    profile has the covariance diag(Poisson²) + diag(speckle)·K·diag(speckle) (K the speckle's radial correlation),
    whose correlated modes clear the Marchenko–Pastur edge for independent bins: on speckled synthetic scans
    (M = 10, 2 × 10⁴ e⁻) it keeps 12 + 3 components, ~10 of them speckle, and the peak MAE stays at the speckle
    floor of single patterns (0.0097 1/Å), while the singular values beyond the third follow the modelled noise's
    (2.5, 2.1, 1.9, 1.8, ... vs 2.5, 2.2, 1.9, 1.6, ...). Components are counted above
    ``SPECKLE_EDGE_MARGIN`` × the modelled noise's top singular value, plus one (MAE 0.0047-0.0049 with 3-4)."""
    from .science.lowrank import gram_svd
    from .science.polar import correlated_noise_top_singular_value

    sem, spk = speckle["sem"].reshape(y.shape), speckle["spk"].reshape(y.shape)
    if rows.sum() < 8:
        return None, None
    sub = s_fit[rows]
    ok_cols = np.isfinite(sub).any(axis=0)  # (a column NaN at every row has no median: left out, unwarned)
    ref = np.full(y.shape[1], np.nan)
    ref[ok_cols] = np.nanmedian(sub[:, ok_cols], axis=0)
    cols = np.flatnonzero(q_sel & np.isfinite(ref) & (ref > 0))
    cols = cols[np.isfinite(spk[rows][:, cols]).any(axis=0) & np.isfinite(sem[rows][:, cols]).any(axis=0)]
    if cols.size < 4:
        return None, None
    r = ref[cols]
    s_ref = np.nanmedian(spk[rows][:, cols], axis=0)
    p_ref = np.sqrt(np.clip(np.nanmedian(sem[rows][:, cols], axis=0) ** 2 - s_ref ** 2, 0.0, None))
    share = float(np.median(s_ref ** 2 / np.maximum(s_ref ** 2 + p_ref ** 2, 1e-300)))
    if not share >= SPECKLE_EDGE_SHARE:
        return None, None
    x = np.nan_to_num(y[rows][:, cols]) / r
    sv = gram_svd(x - x.mean(axis=0), vectors=False)[0] / np.sqrt(len(x))
    top = correlated_noise_top_singular_value(p_ref / r, s_ref / r, speckle["correlation"], len(x))
    n = max(2, int(np.sum(sv > SPECKLE_EDGE_MARGIN * top))) + 1
    return n, {"speckle_share": share, "noise_top_singular_value": top, "n_components": n}


PLAIN_FIT_SAMPLE = 4096
"""With binning or denoising, the plain fit (for the diagnostics: the options' effect on the reported error) runs
on at most this many non-crystalline positions, drawn at random (seed 0): medians to ~2 %."""


def stage_peaks(ctx: Context) -> None:
    """First SRO peak of every I·Q^n profile: position, 1-σ error, height, prominence, width; second peak.

    Optional, each off by default: k × k spatial binning, then low-rank (PCA/NMF) denoising whose
    components come from the non-crystalline positions. The error is propagated through both (binning:
    the SEM of the average; denoising: through the projection, :func:`sendmap.science.peaks.fit_peaks`).
    The plain fit of the unbinned, undenoised profiles is always made too; the median reported σ of
    both (non-crystalline positions) is stored in the ``peaks`` attribute as the options' effect.

    ``peaks/status`` (codes and names in its ``flag_values``/``flag_meanings``, :data:`sendmap.science.peaks.
    PEAK_STATUS`) says per position whether there is a peak and, if not, why; positions without counts are
    ``too_few_counts``. The window is checked against the profiles' Q range first (an input error where it lies
    outside, a warning where partly). The ``peaks`` attribute records the fit range used (``fit_range``; with
    ``fit_half_width: auto`` measured on the mean non-crystalline profile), ``status_counts`` and ``warnings``
    (also logged: more than :data:`PEAK_STATUS_WARN_SHARE` of the non-crystalline positions without a peak).
    """

    from .execute import local_map
    from .science.peaks import (PEAK_STATUS, bin_similar_neighbours, fit_peaks, fit_second_peak, resolve_auto_fit_range,
                                lowrank_denoise, status_attrs, status_code)

    cfg, g = ctx.cfg, ctx.group
    pk = cfg.peaks
    fit_map = local_map(cfg.compute)
    q = np.asarray(g["profiles/q"])
    iqn = np.asarray(g["profiles/iqn_robust" if pk.profile == "robust" else "profiles/iqn"], dtype=np.float64)
    sem = np.asarray(g["profiles/iqn_sem"], dtype=np.float64)
    speckle = None
    if g["profiles/iqn_sem"].attrs.get("error_model") == "azimuthal" and "features/fem_variance" in g:
        sem, speckle = speckle_fit_errors(ctx, iqn, sem)
    ry, rx, nq = iqn.shape
    counts = np.asarray(g["ingest/total_counts"], dtype=np.float64).ravel()
    centre = dict(g.attrs.get("calibration", {})).get("centre_guess_yx")
    frame_shape = dict(g.attrs.get("ingest", {})).get("frame_shape")
    warnings_ = peak_window_check(q, pk.window, lambda _: None, counts, centre, frame_shape)
    for msg in warnings_:
        ctx.warn(msg, "peak_window_partly_outside_data")
    amorphous = ~crystal_rows(ctx).ravel()
    # the fit range: the configured number, or matched to the peak's half widths on the mean profile of the
    # non-crystalline positions that have counts
    fit_range = {"mode": "fixed", "half_width": [float(pk.fit_half_width)] * 2} if pk.fit_half_width != "auto" else None
    half_width = pk.fit_half_width
    if fit_range is None:
        half_width, fit_range = resolve_auto_fit_range(q, iqn.reshape(-1, nq), sem.reshape(-1, nq),
                                                       amorphous & (counts > 0), pk.window,
                                                       AUTO_FIT_HALF_WIDTH_FALLBACK, pk.smooth_sigma_bins, pk.degree)
        ctx.log(f"[sendmap] peaks: fit range ({fit_range['mode']}) -{fit_range['half_width'][0]:.3f} "
                f"+{fit_range['half_width'][1]:.3f} 1/Å: {fit_range['reason']}")
    hw_l, hw_r = fit_range["half_width"]
    fit_args = (pk.window, half_width, pk.smooth_sigma_bins, pk.degree)
    plain_in = (iqn.reshape(-1, nq), sem.reshape(-1, nq))
    k = pk.spatial_binning
    compare = (q >= pk.window[0] - hw_l) & (q <= pk.window[1] + hw_r)
    n_binned = np.ones((ry, rx), int)
    if k > 1:
        sem_raw = sem
        iqn, sem, n_binned = bin_similar_neighbours(iqn, sem_raw, k, compare)
    y, s = iqn.reshape(-1, nq), sem.reshape(-1, nq)
    operator, info = None, {"method": "none"}
    if pk.denoise != "none":
        lo, hi = pk.denoise_q_range or (pk.window[0] - hw_l, (float(q[-1]) if q.size else 0.0) + 1.0)
        n_comp = pk.denoise_components
        speckle_info = None
        if n_comp is None and speckle is not None and k == 1:
            n_comp, speckle_info = speckle_components(y, s, speckle, amorphous, (q >= lo) & (q <= hi))
        y, operator, info = lowrank_denoise(y, s, amorphous, (q >= lo) & (q <= hi), pk.denoise,
                                            n_comp, pk.denoise_guard)
        if speckle_info:
            info["speckle_edge"] = speckle_info
        if info["method"] == "none":
            operator = None
            ctx.log(f"[sendmap] peaks: denoising skipped ({info['skipped']})")
    if k == 1 and operator is None:
        res = plain = fit_peaks(q, *plain_in, *fit_args, map_blocks=fit_map)
    else:  # the plain fit only for the diagnostics, on a sample of the non-crystalline positions
        res = fit_peaks(q, y, s, *fit_args, operator=operator, map_blocks=fit_map)
        sample = np.flatnonzero(amorphous)
        if sample.size > PLAIN_FIT_SAMPLE:
            sample = np.random.default_rng(0).choice(sample, PLAIN_FIT_SAMPLE, replace=False)
        plain = {kk: np.full(ry * rx, np.nan) for kk in ("q_peak", "q_err")}
        part = fit_peaks(q, plain_in[0][sample], plain_in[1][sample], *fit_args, width_error=False,
                         map_blocks=fit_map)
        for kk in plain:
            plain[kk][sample] = part[kk]
    # the second peak on the robust mean (sectors holding Bragg spots clipped): LiF (220) spots at 0.70 1/Å
    # would otherwise pose as a second SRO peak in SEI Type 2
    y2, op2 = y, operator
    if pk.profile == "mean":
        rob = np.asarray(g["profiles/iqn_robust"], dtype=np.float64)
        if k > 1:
            rob = bin_similar_neighbours(rob, sem_raw, k, compare)[0]
        y2, op2 = rob.reshape(-1, nq), None
        if operator is not None:
            y2, op2, info2 = lowrank_denoise(y2, s, amorphous, (q >= lo) & (q <= hi), pk.denoise,
                                             pk.denoise_components, pk.denoise_guard)
            op2 = None if info2["method"] == "none" else op2
    second = fit_second_peak(q, y2, s, pk.second_window, pk.second_half_width, pk.smooth_sigma_bins,
                             operator=op2, map_blocks=fit_map)
    # positions without counts have no peak, whatever their (zero) profile looks like
    empty = ~(counts > 0)
    status = np.asarray(res["status"]).copy()
    status[empty] = status_code("too_few_counts")
    for key in res:
        if key != "status":
            res[key] = np.where(empty, np.nan, res[key])
    res["status"] = status
    second["present"] = second["present"] & ~empty
    for key in second:
        if key != "present":
            second[key] = np.where(empty, np.nan, second[key])
    for key, val in res.items():
        if key == "status":
            write_array(g, "peaks/status", val.reshape(ry, rx).astype(np.int8), status_attrs())
            continue
        write_array(g, f"peaks/{key}", val.reshape(ry, rx), {"units": "1/Å"} if key.startswith(("q", "fwhm")) else None)
    for key, val in second.items():
        name = "second_present" if key == "present" else f"second_{key}"
        write_array(g, f"peaks/{name}", val.reshape(ry, rx),
                    {"units": "1/Å"} if key.startswith(("q", "fwhm")) else None)
    if operator is not None:
        write_array(g, "peaks/denoised_iqn", y.reshape(ry, rx, nq).astype(np.float32),
                    {"meaning": f"profiles after {pk.denoise} denoising (fit input)", "n_components": info["n_components"]})

    in_plain = np.isfinite(plain["q_err"])  # the positions the plain fit covers (all, or the sample)

    def med(a):
        v = a[amorphous & in_plain & np.isfinite(a)]
        return float(np.median(v)) if v.size else None

    diagnostics = {"n_amorphous_positions": int(amorphous.sum()), "n_plain_fit": int((amorphous & in_plain).sum()),
                   "median_q_err_plain": med(plain["q_err"]), "median_q_err": med(res["q_err"]),
                   "median_q_err_ratio": (med(res["q_err"]) / med(plain["q_err"])
                                          if med(plain["q_err"]) and med(res["q_err"]) else None),
                   "median_abs_shift_vs_plain": med(np.abs(res["q_peak"] - plain["q_peak"])),
                   "second_peak_fraction": float(np.mean(second["present"][amorphous])) if amorphous.any() else 0.0,
                   "median_positions_binned": float(np.median(n_binned.ravel()[amorphous])) if amorphous.any() else 1.0}
    status_counts = {name: int(np.sum(status == c)) for c, name in enumerate(PEAK_STATUS) if np.any(status == c)}
    if status_counts.get("fit_failed"):
        ctx.log(f"[sendmap] peaks: {status_counts['fit_failed']} positions: the polynomial has no interior maximum; "
                "peaks/q_peak holds the smoothed maximum (± one bin) there, status fit_failed, no peak in maps/peak_q")
    n_am = int(amorphous.sum())
    not_ok = amorphous & (status != status_code("ok"))
    if n_am and not_ok.sum() > PEAK_STATUS_WARN_SHARE * n_am:
        parts = ", ".join(f"{PEAK_STATUS[c]} {int(np.sum(not_ok & (status == c)))}" for c in range(1, len(PEAK_STATUS))
                          if np.any(not_ok & (status == c)))
        msg = (f"{100 * not_ok.sum() / n_am:.0f} % of the {n_am} non-crystalline positions have no SRO peak ({parts}); "
               "see peaks/status")
        if np.sum(not_ok & (status == status_code("no_maximum_in_window"))) > 0.5 * not_ok.sum():
            msg += ": mostly no maximum inside peaks.window (check it and calibration.q_pixel_size)"
        elif np.sum(not_ok & (status == status_code("too_few_counts"))) > 0.5 * not_ok.sum():
            msg += (": mostly too few counts or valid profile bins around the window (check the dose, the mask, and "
                    "peaks.window against the detector's Q range set by calibration.q_pixel_size)")
        warnings_.append(msg)
        ctx.warn(msg, "positions_without_peak")
    set_attrs(g, peaks={"fit_half_width": pk.fit_half_width, "fit_range": fit_range, "degree": pk.degree,
                        "profile": pk.profile, "status_counts": status_counts, "warnings": warnings_,
                        "spatial_binning": k, "denoise": info, "diagnostics": diagnostics,
                        "method": "weighted polynomial fit, maximum by Newton, delta-method error"
                                  + (" propagated through the denoising projection" if operator is not None else "")})


# --------------------------------------------------------------------------------------------- ingest

def stage_ingest(ctx: Context) -> None:
    """Raw file → data (Ry, Rx, Qy, Qx) + sum/max patterns, counts, dose: see :mod:`sendmap.ingest` (imported here,
    not at the top: it needs numba and dask, which a re-run that reuses ingest never loads)."""
    from .ingest import stage_ingest as run

    run(ctx)


# --------------------------------------------------------------------------------------------- classify

def band_max(spot_z: np.ndarray, q: np.ndarray, bands) -> np.ndarray:
    """Largest spot significance over Q bands (list of (lo, hi) 1/Å) per position."""
    sel = np.zeros(q.shape, bool)
    for lo, hi in bands:
        sel |= (q >= lo) & (q < hi)
    if not sel.any():
        return np.zeros(spot_z.shape[:-1])
    if sel.all():
        return np.nanmax(spot_z, axis=-1)
    return np.fmax.reduce(spot_z[..., sel], axis=-1, initial=-np.inf)  # -inf where the bands are all NaN


def crystal_spot_threshold(cfg: Config, total_counts: np.ndarray, measured: dict | None = None) -> float:
    """The crystal threshold (σ) for this dataset's dose: ``crystal_spot_z`` × sqrt(electrons per stored pattern /
    ``crystal_spot_z_electrons``). A Bragg disk's significance grows as the square root of the counts, so a
    fixed threshold set at 2 × 10⁴ e⁻ misses crystals at 5 × 10³ (synthetic Li/Cu scans: crystals score ≥ 88 σ
    at 2 × 10⁴ and ≥ 20 σ at 5 × 10³, SEI with LiF spots ≤ 26 and ≤ 17)."""
    d = cfg.classify.definitions
    if not d.crystal_spot_z_electrons:
        return float(d.crystal_spot_z)
    from .science.dose import MIN_CRYSTAL_Z

    epp = dose_record(cfg, total_counts, measured)["electrons_per_stored_pattern"]
    if epp is None:  # dose unknown (an integrating camera's counts): the threshold as set
        return float(d.crystal_spot_z)
    # never below MIN_CRYSTAL_Z (5 σ: below it noise is called crystal; at 10 e⁻ per pattern the scaled threshold,
    # 0.56 σ, called 110 of 192 synthetic positions crystal); a crystal_spot_z set lower than that stands
    floor = min(MIN_CRYSTAL_Z, float(d.crystal_spot_z))
    return float(max(d.crystal_spot_z * math.sqrt(max(epp, 1.0) / d.crystal_spot_z_electrons), floor))


LIF_DOSE_EXPONENT = 0.26
"""How the chance maximum of the LiF-band spot significance of a speckled amorphous pattern grows with the dose:
as (electrons)^0.26. Its 99th percentile at M = 3 (the strongest speckle of the scenarios) is 6.8 σ at 5 × 10³ and
9.8 σ at 2 × 10⁴ e⁻ (test_speckle's generator, seeds 21-25 × 100 patterns each); ln(9.8 / 6.8) / ln 4 = 0.26. Slower
than a Bragg spot's √dose: speckle, not Poisson noise, sets the null at these doses."""


def lif_spot_thresholds(cfg: Config, total_counts: np.ndarray, measured: dict | None = None) -> tuple[float, float]:
    """(sure, noise) LiF-spot thresholds (σ) at this dataset's dose: ``lif_spot_z`` and ``lif_spot_z_noise`` (set at
    ``lif_spot_z_electrons`` per pattern) × (electrons per stored pattern / ``lif_spot_z_electrons``) ^
    :data:`LIF_DOSE_EXPONENT`; as set where the dose is unknown or the scaling off (``lif_spot_z_electrons`` null).
    Never below :data:`sendmap.science.dose.MIN_CRYSTAL_Z` (a false-alarm rate below 10⁻³ per pattern) unless set
    lower."""
    d = cfg.classify.definitions
    if not d.lif_spot_z_electrons:
        return float(d.lif_spot_z), float(d.lif_spot_z_noise)
    from .science.dose import MIN_CRYSTAL_Z

    epp = dose_record(cfg, total_counts, measured)["electrons_per_stored_pattern"]
    if epp is None:
        return float(d.lif_spot_z), float(d.lif_spot_z_noise)
    f = (max(epp, 1.0) / d.lif_spot_z_electrons) ** LIF_DOSE_EXPONENT
    sure = max(d.lif_spot_z * f, min(MIN_CRYSTAL_Z, float(d.lif_spot_z)))
    return float(sure), float(min(d.lif_spot_z_noise * f, 0.9 * sure))


def stage_classify(ctx: Context) -> None:
    """Features per position, class per position, phase naming, and the final peak maps (no SRO peak for crystals).

    Features (``features/*``): crystal- and LiF-band spot significance, anisotropy at the reflections of
    LiF, Li, Li2O and Cu (phase library), Bragg fraction, LiF-spot neighbourhood vote, scattered fraction;
    ``maps/phase``: the library phase whose reflections the significant spots fall on.
    """
    from .science.classify import CRYSTAL, classify_gmm, classify_rules, crystal_neighbour_count, spot_vote
    from .science.features import (FEATURE_PHASES, SEI_PHASES, bragg_fraction, name_phases, phase_anisotropy,
                                   phase_lines)
    from .science.peaks import status_attrs, status_code
    from .science.phases import get_phase

    cfg, g = ctx.cfg, ctx.group
    q = np.asarray(g["profiles/q"])
    spot_z = np.asarray(g["features/spot_z"])
    d = cfg.classify.definitions
    calib = dict(g.attrs.get("calibration", {}))
    r_q = float(calib.get("disk_radius_px", 0.0)) * float(calib.get("q_pixel_size", 0.0)) or float(q[1] - q[0]) * 6
    crystal_z = band_max(spot_z, q, d.crystal_bands)
    lif_z = band_max(spot_z, q, d.lif_bands)
    q_hi = float(q[-1])
    if "features/bragg_fraction" in g:  # the profile stage's (stores of sendmap ≤ 0.1 session 4: computed here)
        bragg = np.asarray(g["features/bragg_fraction"])
    else:
        bragg = bragg_fraction(q, np.asarray(g["profiles/mean"], dtype=np.float64),
                               np.asarray(g["profiles/robust_mean"], dtype=np.float64), (2 * r_q, q_hi))
        write_array(g, "features/bragg_fraction", bragg, BRAGG_ATTRS | {"q_range": [2 * r_q, q_hi]})
    peak_q = np.asarray(g["peaks/q_peak"])
    peak_err = np.asarray(g["peaks/q_err"])
    # the peak status (ok, or why there is no peak); stores without it: ok where a peak was found
    peak_status = (np.asarray(g["peaks/status"]).astype(np.int8) if "peaks/status" in g
                   else np.where(np.isfinite(peak_q), status_code("ok"), status_code("no_maximum_in_window")).astype(np.int8))
    crystal_thr = crystal_spot_threshold(cfg, np.asarray(g["ingest/total_counts"]), measured_counts(g))
    neighbours = crystal_neighbour_count(crystal_z, crystal_thr)
    crystal_like = (np.nan_to_num(crystal_z) > crystal_thr) & (neighbours >= d.crystal_min_neighbours)
    if d.crystal_bragg_fraction > 0:
        crystal_like &= np.nan_to_num(bragg, nan=1.0) > d.crystal_bragg_fraction
    lif_sure, lif_noise = lif_spot_thresholds(cfg, np.asarray(g["ingest/total_counts"]), measured_counts(g))
    vote = spot_vote(lif_z, crystal_like, lif_noise, lif_sure, d.lif_neighbourhood)
    rules = dict(crystal_spot_z=crystal_thr, lif_spot_z=lif_sure, electrolyte_max_q=d.electrolyte_max_q,
                 sei_type1_range=d.sei_type1_range, sei_type2_range=d.sei_type2_range,
                 electrolyte_range=d.electrolyte_range, bragg_fraction=bragg,
                 crystal_bragg_fraction=d.crystal_bragg_fraction, lif_vote=vote, lif_vote_min=d.lif_vote_min,
                 crystal_neighbours=neighbours, crystal_min_neighbours=d.crystal_min_neighbours)
    if cfg.classify.method == "rules":
        cls = classify_rules(peak_q, crystal_z, lif_z, **rules)
    else:
        cls = classify_gmm(peak_q, crystal_z, lif_z, cfg.classify.n_clusters, cfg.classify.seed,
                           method=cfg.classify.method, **rules)
    no_peak = cls == CRYSTAL
    # anisotropy at each feature phase's reflections (± one bin), and phase naming over all SEI phases
    q_rng = (2 * r_q, q_hi)
    bw = float(q[1] - q[0])
    feat_lines = phase_lines(FEATURE_PHASES, q_rng)
    aniso = phase_anisotropy(q, spot_z, feat_lines, bw)
    all_lines = phase_lines(SEI_PHASES, q_rng)
    phase_idx, phase_score, phase_second = name_phases(q, spot_z, all_lines, lif_sure, 0.6 * bw, q_rng)
    counts = np.asarray(g["ingest/total_counts"], dtype=np.float64)
    bf_img = np.asarray(g["features/virtual_bf"], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        scattered = np.where(counts > 0, 1.0 - bf_img / counts, np.nan)
    phase_names = [get_phase(p).name for p in SEI_PHASES]
    write_array(g, "features/crystal_z", crystal_z, {"bands": d.crystal_bands, "units": "sigma"})
    write_array(g, "features/lif_z", lif_z, {"bands": d.lif_bands, "units": "sigma"})
    write_array(g, "features/lif_vote", vote, {"meaning": "neighbourhood vote for LiF spots (0-1), NaN for crystals",
                                                "neighbourhood": d.lif_neighbourhood})
    write_array(g, "features/anisotropy", aniso, {"phases": [get_phase(p).name for p in FEATURE_PHASES],
                                                  "units": "sigma", "lines": {get_phase(k).name: v.tolist()
                                                                              for k, v in feat_lines.items()},
                                                  "meaning": "largest spot significance within one Q bin of the phase's rings"})
    write_array(g, "features/scattered_fraction", scattered, {"meaning": "1 - virtual BF / total counts"})
    write_array(g, "features/peak_fwhm", np.where(no_peak, np.nan, np.asarray(g["peaks/fwhm"])), {"units": "1/Å"})
    # a second maximum where Bragg spots sit (e.g. LiF (220) at 0.70 1/Å in SEI Type 2) is a reflection, not SRO
    q2 = np.asarray(g["peaks/second_q_peak"])
    j2 = np.clip(np.searchsorted(q, np.nan_to_num(q2, nan=q[0])), 0, q.size - 1)
    spot_at_q2 = np.take_along_axis(np.nan_to_num(spot_z), j2[..., None], axis=-1)[..., 0] > lif_sure
    no_peak2 = no_peak | spot_at_q2
    for key, name in (("q_peak", "peak2_q"), ("q_err", "peak2_q_err"), ("height", "peak2_height")):
        src = np.asarray(g[f"peaks/second_{key}"])
        write_array(g, f"maps/{name}", np.where(no_peak2, np.nan, src),
                    {"units": "1/Å" if key.startswith("q") else "profile units", "meaning": "second SRO peak; NaN where absent"})
    write_array(g, "maps/phase", phase_idx, {"phase_names": phase_names, "meaning": "library phase whose rings the "
                                             "significant spots fall on; -1 none", "min_spot_z": lif_sure})
    write_array(g, "features/phase_score", phase_score, {"meaning": "explained spot share minus chance, best phase"})
    write_array(g, "features/phase_score_second", phase_second, {"meaning": "the same for the runner-up phase"})
    write_array(g, "maps/class", cls, {"class_names": list(CLASS_NAMES), "method": cfg.classify.method,
                                       "crystal_spot_z_threshold": crystal_thr})
    # the final maps: a peak only where the fit found an interior maximum inside the window (status ok) and the
    # position is not crystalline; maps/peak_status says why not elsewhere
    final_status = np.where(no_peak, status_code("crystal"), peak_status).astype(np.int8)
    no_peak_map = final_status != status_code("ok")
    write_array(g, "maps/peak_status", final_status, status_attrs())
    write_array(g, "maps/peak_q", np.where(no_peak_map, np.nan, peak_q), {"units": "1/Å", "meaning": "first SRO peak maximum; NaN where maps/peak_status is not ok"})
    write_array(g, "maps/peak_q_err", np.where(no_peak_map, np.nan, peak_err), {"units": "1/Å", "meaning": "1-sigma"})


# --------------------------------------------------------------------------------------------- statistics

def stage_statistics(ctx: Context) -> None:
    """Per-class histogram fits, intrinsic spread, class-mean profiles and layer thicknesses."""
    from .science.stats import class_mean_profiles, gaussian_histogram_fit, layer_thickness

    cfg, g = ctx.cfg, ctx.group
    cls = np.asarray(g["maps/class"])
    peak = np.asarray(g["maps/peak_q"])
    err = np.asarray(g["maps/peak_q_err"])
    fwhm = np.asarray(g["features/peak_fwhm"]) if "features/peak_fwhm" in g else np.full(cls.shape, np.nan)
    peak2 = np.asarray(g["maps/peak2_q"]) if "maps/peak2_q" in g else np.full(cls.shape, np.nan)
    phase = np.asarray(g["maps/phase"]) if "maps/phase" in g else None
    phase_names = list(g["maps/phase"].attrs.get("phase_names", [])) if phase is not None else []
    peak_status = np.asarray(g["maps/peak_status"]) if "maps/peak_status" in g else None
    status_names = (str(g["maps/peak_status"].attrs.get("flag_meanings", "")).split()
                    if peak_status is not None else [])
    dose = dose_record(cfg, np.asarray(g["ingest/total_counts"]), measured_counts(g))
    for msg in dose_warnings(cfg, dose):
        ctx.warn(msg, "dose_too_low_for_classes" if "too few for the classes" in msg else
                 "dose_stated_vs_counted" if "stated dose" in msg else "dose_in_counts" if "not electrons" in msg
                 else "dose")
    classes = {}
    for k, name in enumerate(CLASS_NAMES):
        sel = cls == k
        if not sel.any():
            continue
        fit = gaussian_histogram_fit(peak[sel], cfg.statistics.bin_width, err[sel])
        entry = {"count": int(sel.sum()), "count_with_peak": fit["count"]}
        if peak_status is not None:  # why the others have none (by maps/peak_status name)
            codes, cnt = np.unique(peak_status[sel], return_counts=True)
            entry["peak_status"] = {status_names[c] if 0 <= c < len(status_names) else str(c): int(n)
                                    for c, n in zip(codes, cnt)}
        if fit["count"] >= 1:
            entry.update(peak_q_mean=fit["mean"], peak_q_std=fit.get("std"), peak_q_err_median=float(np.nanmedian(err[sel])))
        if fit["count"] >= cfg.statistics.min_count:
            entry.update(fit_mu=fit["mu"], fit_sigma=fit["sigma"], fit_mu_err=fit["mu_err"], fit_sigma_err=fit["sigma_err"],
                         fit_amplitude=fit["amplitude"], fit_converged=fit["fit_converged"],
                         fit_method=fit.get("fit_method"),
                         intrinsic_sigma=fit.get("intrinsic_sigma"), measurement_sigma=fit.get("measurement_sigma"),
                         histogram={"bin_edges": fit["bin_edges"], "counts": fit["bin_counts"]})
        for key, arr in (("fwhm", fwhm), ("peak2_q", peak2)):
            v = arr[sel & np.isfinite(arr)]
            if v.size:
                entry[f"{key}_mean"], entry[f"{key}_std"] = float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
            entry[f"{key}_count"] = int(v.size)
        if phase is not None:
            idx, cnt = np.unique(phase[sel & (phase >= 0)], return_counts=True)
            entry["phases"] = {phase_names[i]: int(c) for i, c in zip(idx, cnt)}
        entry["electrons_per_pattern"] = dose["electrons_per_pattern"]
        entry["electrons_per_A2"] = dose["electrons_per_A2"]
        classes[name] = entry
    iqn = np.asarray(g["profiles/iqn"], dtype=np.float64)
    mean, sem, counts = class_mean_profiles(iqn, cls, len(CLASS_NAMES))
    write_array(g, "statistics/class_mean_iqn", mean, {"class_names": list(CLASS_NAMES)})
    write_array(g, "statistics/class_sem_iqn", sem, {"class_names": list(CLASS_NAMES)})
    layers = layer_thickness(cls, scan_step_nm(cfg))
    set_attrs(g, statistics={"classes": classes, "layers": layers}, dose=dose)


# --------------------------------------------------------------------------------------------- report

def stage_report(ctx: Context) -> None:
    """Figures (PNG + PDF) and tables (CSV)."""
    from .report.build import write_report

    # --force redraws every figure
    write_report(ctx.group, ctx.out_dir, ctx.cfg, ctx.log, reuse=ctx.resume, helpers=ctx.figure_helpers)


STAGES: tuple[Stage, ...] = (
    Stage("ingest", ("input",), stage_ingest, "raw file → data (Ry, Rx, Qy, Qx) + sum/max patterns, counts, dose",
          revision=2),
    # revision 2 (speckle): spot_z is measured against the azimuthal scatter (calibrate uses it to leave crystals out
    # of the ellipse fit), profiles/sem has an error model, features/fem_variance is new
    Stage("calibrate", ("calibration",), stage_calibrate, "mask, per-position centre, descan plane, ellipse", 2),
    Stage("profiles", ("profiles",), stage_profiles, "I(Q), SEM, dispersion, V(Q), I·Q^n, spot significance, BF/ADF, "
          "Bragg fraction", 2),
    # revision 2 (speckle, peak status): the fit's errors carry the speckle's correlation in Q, the denoising's
    # components come from the correlated-noise edge; peaks/status
    Stage("peaks", ("peaks",), stage_peaks, "SRO peaks: binning/denoising, position, error, height, width; second peak",
          2),
    Stage("classify", ("classify",), stage_classify, "features, class and phase per position; final peak maps"),
    Stage("statistics", ("statistics", "dose"), stage_statistics, "histogram fits, class-mean profiles, layers, dose"),
    Stage("report", ("output",), stage_report, "figures and tables"),
)


CRYSTAL_THRESHOLD_KEYS = ("crystal_spot_z", "crystal_spot_z_electrons", "crystal_bands")
"""classify.definitions keys that decide which frames are crystalline for calibrate (ellipse) and peaks (denoising)."""


def stage_keys(cfg: Config, input_fp: dict) -> dict[str, dict]:
    """Cache key of every stage: sendmap version + the stage's revision + its config sections + the digest of the
    code it can run (:func:`sendmap.codehash.stage_code_digest`) + the previous stage's key."""
    from .codehash import stage_code_digest

    keys = {}
    prev = json.dumps(input_fp, sort_keys=True)
    for st in STAGES:
        sections = {s: cfg.section(s) for s in st.sections}
        if st.name == "ingest":
            sections["input"] = {k: v for k, v in sections["input"].items() if k != "path"}
        if st.name == "calibrate":
            sections["classify.definitions"] = {k: v for k, v in cfg.section("classify")["definitions"].items()
                                                if k in CRYSTAL_THRESHOLD_KEYS}
            sections["profiles"] = {k: v for k, v in cfg.section("profiles").items() if k == "supersample"}
            for key in ("mask_file", "calibrant"):  # the files' content, not only their names: an edit recomputes
                name = getattr(cfg.calibration, key)
                if name:
                    mf = cfg.resolve(name)
                    sections[f"{key}_sha256"] = hashlib.sha256(mf.read_bytes()).hexdigest() if mf.is_file() else None
        if st.name == "peaks":  # which positions are crystalline (the rows that define denoising components)
            sections["classify.definitions"] = {k: v for k, v in cfg.section("classify")["definitions"].items()
                                                if k in CRYSTAL_THRESHOLD_KEYS}
            sections["dose"] = cfg.section("dose")
        if st.name == "report":
            sections["output"].pop("dir", None)
        blob = json.dumps({"stage": st.name, "version": __version__, "revision": st.revision, "sections": sections,
                           "code": stage_code_digest(st.run.__name__), "previous": prev}, sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        keys[st.name] = {"key": key, "sections": sections}
        prev = key
    return keys


# --------------------------------------------------------------------------------------------- runner

READERS = {"mib": "sendmap.io.mib", "dm4": "sendmap.io.dm (tags: rosettasciio)", "empad": "sendmap.io.empad",
           "arina": "sendmap.io.hdf5 (h5py + hdf5plugin)", "py4dstem": "sendmap.io.hdf5 (h5py)",
           "npy": "sendmap.io.npy", "zarr": "sendmap.io.zarrarray (zarr)", "raw": "sendmap.io.raw",
           **{f: f"sendmap.io.generic (rosettasciio {m})" for f, m in
              (("blockfile", "blockfile"), ("tvips", "tvips"), ("mrc", "mrc"), ("velox", "emd"), ("hspy", "hspy"),
               ("zspy", "zspy"))}}


def preflight(cfg: Config) -> tuple[Dataset, dict]:
    """Everything that can be checked before touching the output: the input opens, the shapes fit, Q is known."""
    path = cfg.input_path()
    inp = cfg.input
    ds = open_dataset(path, inp.format, inp.scan_shape, dataset=inp.dataset,
                      raw=inp.raw.model_dump() if inp.raw else None)
    taken = apply_file_calibration(cfg, ds.metadata)
    q_pixel_size(cfg)
    cal = cfg.calibration
    if cal.calibrant:
        calibrant_record(cfg)  # named, so it must be readable even where q_pixel_size is given
    if cal.mask_file and not cfg.resolve(cal.mask_file).is_file():
        raise SendmapInputError(f"calibration.mask_file: {cfg.resolve(cal.mask_file)} not found (a .npy/.tif/.png of "
                                f"the detector's shape, nonzero = excluded pixel; or set mask_file: null)")
    fp = fingerprint(path, files=ds.files)
    info = {"path": str(path), "format": ds.format, "reader": READERS.get(ds.format, ""), "bytes": fp["bytes"],
            "fingerprint": fp["sha256_sampled"], "files": [str(f) for f in ds.files], "scan_shape": list(ds.scan_shape),
            "frame_shape": list(ds.frame_shape), "dtype": str(ds.dtype), "reader_metadata": ds.metadata,
            "calibration_from_file": taken}
    info["fingerprint_of"] = fp["sampled"]
    info["mtime_ns"] = fp["mtime_ns"]
    return ds, info


def apply_file_calibration(cfg: Config, metadata: dict) -> dict:
    """Fill the calibration the config leaves out from the input file's own (its reader's metadata, see
    :func:`sendmap.io.generic.file_calibration`): ``q_pixel_size`` where it is null and neither a calibrant nor
    camera length + detector pixel size is given; ``scan_step_nm`` and ``beam_energy_kv`` where the config does
    not set them (their defaults, 4 nm and 200 kV, stand only where the file says nothing). Changes ``cfg`` in
    place (so the stages' cache keys see the values) and returns {key: value} taken from the file."""
    from .io.generic import file_calibration

    found = file_calibration(metadata or {})
    cal = cfg.calibration
    given = set(cal.model_fields_set)
    taken = {}
    if found["q_pixel_size"] and not cal.q_pixel_size and not cal.calibrant and not (
            cal.camera_length_mm and cal.detector_pixel_um):
        taken["q_pixel_size"] = found["q_pixel_size"]
    for key in ("scan_step_nm", "beam_energy_kv"):
        if found[key] and key not in given:
            taken[key] = found[key]
    for key, value in taken.items():
        setattr(cal, key, value)
    cal._from_file.update(taken)
    return taken


def run_pipeline(cfg: Config, force: bool = False, log: Callable[[str], None] = print, until: str | None = None,
                 figure_helpers=None) -> dict:
    """Run every stage whose cache key changed (all with ``force``); return the summary dict.

    ``until``: stop after that stage. Its outputs are kept (and reused by the next run); the store stays
    ``status: partial`` and no ``summary.json`` is written, since the results are not complete.
    ``figure_helpers``: :class:`~sendmap.report.build.FigureHelpers` the caller started early
    (:func:`~sendmap.report.build.start_figure_helpers_for_rerun`); used if the first stage to run is one of
    :data:`~sendmap.report.build.FIGURE_HELPER_STAGES`, else ended at once; ended in any case when the run ends.
    """
    out_dir = cfg.output_dir()
    try:
        dataset, input_info = preflight(cfg)
        if out_dir.exists() and not out_dir.is_dir():
            from .errors import SendmapOutputError

            raise SendmapOutputError(f"output.dir {out_dir} is a file, not a folder: set output.dir to a folder "
                                     f"(new or existing) for the results")
        for key, value in input_info["calibration_from_file"].items():
            log(f"calibration.{key} = {value:.6g} taken from the file (the config leaves it out)")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            probe = out_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise output_error(exc, out_dir, None) from None
        try:
            return _run_locked(cfg, out_dir, dataset, input_info, force, log, until, figure_helpers)
        except OSError as exc:
            if _is_output_error(exc, out_dir):
                raise output_error(exc, out_dir, getattr(exc, "sendmap_stage", None)) from None
            raise
    except OutputBusyError:
        raise  # another run's folder: not ours to mark
    except BaseException as exc:
        mark_failed(out_dir, exc)
        raise
    finally:
        if figure_helpers is not None:
            figure_helpers.close()  # (nothing left to end where they drew the figures)


@contextlib.contextmanager
def python_warnings_recorded(ctx: Context):
    """Python warnings shown while a stage runs (in any of its threads) are kept off the terminal.

    A numpy ``RuntimeWarning`` ("Mean of empty slice", "All-NaN slice", ...) or a matplotlib ``UserWarning`` means
    a case sendmap's code does not guard yet; the user can do nothing with it. They are counted per stage, by
    category, message and the line that raised them, in the store's attrs ``internal_warnings`` and in
    summary.json (``{stage: {"RuntimeWarning: Mean of empty slice (sendmap/science/stats.py:134)": 1}}``; with
    Python's default filters a warning is shown, so counted, once per line). A ``UserWarning`` of sendmap's own
    code (e.g. "figure helper process failed; drawing here") is a message for the user: it becomes a run warning
    (:meth:`Context.warn`, code ``"python_warning"``). Only the display is replaced: the warning filters stay, so
    ``python -W error`` (or pytest's ``-W error::RuntimeWarning``) still turns them into errors.
    """
    import warnings

    pkg = os.path.dirname(os.path.abspath(__file__))
    counts: dict = {}
    lock = threading.Lock()

    def count(message, category, filename, lineno, file=None, line=None):
        fname = os.path.abspath(str(filename))
        if fname.startswith(pkg) and issubclass(category, UserWarning):
            ctx.warn(str(message), "python_warning")
            return
        where = (os.path.relpath(fname, os.path.dirname(pkg)) if fname.startswith(pkg)
                 else "/".join(fname.split(os.sep)[-2:]))
        key = f"{category.__name__}: {(str(message).splitlines() or [''])[0][:200]} ({where}:{lineno})"
        with lock:
            counts[key] = counts.get(key, 0) + 1

    with warnings.catch_warnings():  # restores the display (and the filters) afterwards
        warnings.showwarning = count
        try:
            yield
        finally:
            if counts and ctx.stage:
                internal = dict(ctx.group.attrs.get("internal_warnings", {}))
                internal[ctx.stage] = counts
                with contextlib.suppress(OSError):
                    set_attrs(ctx.group, internal_warnings=internal)


def failure_text(exc: BaseException) -> str:
    """What a failed run records as its ``error`` (store attrs; the CLI prints the same)."""
    from .errors import Terminated

    if isinstance(exc, Terminated):
        return "stopped by SIGTERM"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(exc, SystemExit):
        return f"stopped (exit code {exc.code})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, SendmapInputError) else text


def mark_failed(out_dir: Path, exc: BaseException) -> None:
    """After a failure at any point (before the run starts, in a stage, an interrupt): nothing in ``out_dir``
    may look complete. Removes ``summary.json`` and marks the result store (if there is one) ``status: failed``
    with ``error``; the finished stages' results stay and are reused by the next run. Leaves a folder that
    another live run holds (its lock) alone, and never creates anything. Best effort: never raises."""
    try:
        out_dir = Path(out_dir)
        if not out_dir.is_dir() or OutputLock(out_dir).held_by_other():
            return
        (out_dir / "summary.json").unlink(missing_ok=True)
        if (out_dir / STORE_NAME / "zarr.json").is_file():
            group = open_store(out_dir, mode="r+")
            set_attrs(group, status="failed", error=failure_text(exc), failed_at=now_iso(),
                      failed_stage=getattr(exc, "sendmap_stage", None))
    except Exception:  # noqa: BLE001 - a read-only or broken folder: the error being reported matters more
        pass


OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
"""Write errors that are the output folder's condition (not a bug): reported in one paragraph, exit code 2."""


def _is_output_error(exc: OSError, out_dir: Path) -> bool:
    """A full disk anywhere, or a permission/read-only error on a file of the output folder."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    if exc.errno not in OUTPUT_ERRNOS:
        return False
    name = getattr(exc, "filename", None)
    return name is None or os.path.abspath(str(name)).startswith(os.path.abspath(str(out_dir)))


def output_error(exc: OSError, out_dir: Path, stage: str | None):
    """A :class:`SendmapOutputError` for a write that failed: what, where, how much space is left, what to do."""
    from .errors import SendmapOutputError

    import shutil

    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    what = f"the {stage} stage's results" if stage else "the results"
    try:
        free = f"; {shutil.disk_usage(out_dir).free / 1e6:.0f} MB free there"
    except OSError:
        free = ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why = f"the disk is full{' (quota)' if exc.errno == errno.EDQUOT else ''}{free}"
        todo = "free some space or set output.dir to another disk, then run again"
    elif exc.errno == errno.EROFS:
        why = "the file system is read-only"
        todo = "set output.dir to a writable folder"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied"
        todo = "make it writable or set output.dir to a writable folder"
    else:
        why = exc.strerror or str(exc)
        todo = "set output.dir to a writable folder"
    resume = (": finished stages are reused and the finished blocks of ingest and profiles are not redone"
              if stage else "")
    return SendmapOutputError(f"cannot write {what} to the output folder {out_dir}: {why}{where}. "
                              f"Nothing there is marked complete; {todo}{resume}.")


def _first_stage_to_run(keys: dict, done: dict, force: bool) -> str | None:
    """The first stage whose key differs from the finished one's (every stage after it runs too)."""
    return next((st.name for st in STAGES if force or (done.get(st.name) or {}).get("key") != keys[st.name]["key"]),
                None)


def _run_locked(cfg: Config, out_dir: Path, dataset, input_info: dict, force: bool, log, until,
                figure_helpers=None) -> dict:
    with OutputLock(out_dir):
        summary_path = out_dir / "summary.json"
        summary_path.unlink(missing_ok=True)  # a stale summary must not stand for an unfinished run
        group = open_store(out_dir, mode="a")
        keys = stage_keys(cfg, {"fingerprint": input_info["fingerprint"], "bytes": input_info["bytes"]})
        done = dict(group.attrs.get("stages", {}))
        set_attrs(group, sendmap_version=__version__, config=cfg.resolved(), input=input_info, status="running",
                  created=group.attrs.get("created", now_iso()), error=None, failed_stage=None, failed_at=None)
        ctx = Context(cfg, out_dir, group, dataset, input_info, log)
        # warnings of the stages that may be reused stay with their results; those of a run's preamble do not
        ctx.warnings = [w for w in group.attrs.get("warnings", []) if isinstance(w, dict) and w.get("stage") in done]
        if figure_helpers is not None and _first_stage_to_run(keys, done, force) in FIGURE_HELPER_STAGES:
            ctx.figure_helpers = figure_helpers
        elif figure_helpers is not None:  # a heavier stage runs first: they would compete with its blocks
            figure_helpers.close()
        try:
            return _run_stages(ctx, keys, done, force, until)
        finally:
            if ctx.figure_helpers is not None:
                ctx.figure_helpers.close()  # unused (e.g. --until) or failed: end them


def _run_stages(ctx: Context, keys: dict, done: dict, force: bool, until) -> dict:
    cfg, out_dir, group, log = ctx.cfg, ctx.out_dir, ctx.group, ctx.log
    summary_path = out_dir / "summary.json"
    reused, timing = [], {}
    first, invalid = _first_stage_to_run(keys, done, force), False
    for st in STAGES:
        if not invalid and st.name != first:
            reused.append(st.name)
            timing[st.name] = 0.0
            if st.name == until:
                break
            continue
        if not invalid:  # this stage and every later one are recomputed: their old warnings go
            later = {s.name for s in STAGES[[s.name for s in STAGES].index(st.name):]}
            ctx.warnings = [w for w in ctx.warnings if w.get("stage") not in later]
            internal = {k: v for k, v in dict(group.attrs.get("internal_warnings", {})).items() if k not in later}
            set_attrs(group, warnings=ctx.warnings, internal_warnings=internal)
        invalid = True  # every later stage reruns too
        done.pop(st.name, None)
        set_attrs(group, stages=done)
        log(f"[sendmap] {st.name}: {st.doc}")
        if st.name in FIGURE_HELPER_STAGES and ctx.figure_helpers is None:
            ctx.figure_helpers = start_figure_helpers(cfg)
        ctx.stage_key, ctx.resume, ctx.stage_info, ctx.stage = keys[st.name]["key"], not force, {}, st.name
        t0 = time.perf_counter()
        try:
            with python_warnings_recorded(ctx):
                st.run(ctx)
        except BaseException as exc:
            with contextlib.suppress(AttributeError):
                exc.sendmap_stage = st.name  # (OSError: the output error's message; any: failed_stage)
            try:
                set_attrs(group, status="failed", error=failure_text(exc), failed_stage=st.name)
            except OSError:  # e.g. the disk is full: the status stays "running", which is not complete either
                pass
            raise
        finally:
            ctx.stage = None
        annotate_arrays(Path(ctx.store_path))  # dimension names, units, long names (sendmap/schema.py)
        write_coordinates(group, Path(ctx.store_path), scan_step_nm(cfg))
        timing[st.name] = round(time.perf_counter() - t0, 3)
        done[st.name] = {"key": keys[st.name]["key"], "config": keys[st.name]["sections"], "completed": now_iso(),
                         "seconds": timing[st.name], "sendmap_version": __version__, **ctx.stage_info}
        set_attrs(group, stages=done)
        clear_resume_record(out_dir, st.name)  # only now: a kill before this line resumes from the record
        if st.name == until:
            break
    summary = build_summary(group, timing, reused)
    if until and until != STAGES[-1].name:
        set_attrs(group, status="partial")
        return summary
    summary["status"] = "complete"
    write_json_atomic(summary_path, summary)
    set_attrs(group, status="complete", completed=now_iso(), error=None, failed_stage=None, failed_at=None)
    return summary


def build_summary(group, timing: dict, reused: list) -> dict:
    """summary.json: classes, calibration, dose, layers, peaks, timing, the run's ``warnings`` (list of
    {"stage", "code", "message"}, see :meth:`Context.warn`) and ``internal_warnings`` (Python warnings raised
    inside sendmap's stages, counted: see :func:`python_warnings_recorded`)."""
    stats = group.attrs.get("statistics", {})
    calib = dict(group.attrs.get("calibration", {}))
    return {"warnings": list(group.attrs.get("warnings", [])),
            "internal_warnings": dict(group.attrs.get("internal_warnings", {})),
            "classes": stats.get("classes", {}),
            "calibration": {"q_pixel_size": calib.get("q_pixel_size"), "ellipse": calib.get("ellipse"),
                            "probe": calib.get("probe"), "masked_fraction": calib.get("masked_fraction"),
                            "descan": calib.get("descan"), "n_hot": calib.get("n_hot"), "n_dead": calib.get("n_dead")},
            "dose": group.attrs.get("dose"), "layers": stats.get("layers", {}), "peaks": group.attrs.get("peaks"),
            "timing_s": timing, "reused_stages": reused, "input": group.attrs.get("input"),
            "sendmap_version": __version__, "store": str(Path(group.store.root) if hasattr(group.store, "root") else "")}
