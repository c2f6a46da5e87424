"""The dose of a scan (electrons per pattern and per Å², with its source) from the config and the counts, and its
sanity checks.
"""
from __future__ import annotations

import numpy as np

from ..config import Config
from .settings import scan_step_nm


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


def dose_warnings(cfg: Config, dose: dict) -> list[str]:
    """Sanity checks of a :func:`dose_record`: a stated dose and the counted electrons more than
    :data:`STATED_VS_COUNTED_FACTOR` apart; a dose too low for the classes (the dose-scaled crystal threshold under
    :data:`sendmap.science.dose.MIN_CRYSTAL_Z`); a dose unknown (counts, not electrons)."""
    from ..science.dose import MIN_CRYSTAL_Z, min_electrons_for_classes

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
