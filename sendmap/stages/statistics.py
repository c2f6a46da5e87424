"""The statistics stage: per-class histogram fits with the intrinsic spread, class-mean profiles, layer thicknesses
and the dose.
"""
from __future__ import annotations

import numpy as np

from .. import CLASS_NAMES
from ..engine.context import Context
from ..engine.store import set_attrs, write_array
from .dose import dose_record, dose_warnings, measured_counts
from .settings import scan_step_nm


def stage_statistics(ctx: Context) -> None:
    """Per-class histogram fits, intrinsic spread, class-mean profiles and layer thicknesses."""
    from ..science.stats import class_mean_profiles, gaussian_histogram_fit, layer_thickness

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
