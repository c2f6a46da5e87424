"""The statistics stage: per-class histogram fits with the intrinsic spread, class-mean profiles, layer thicknesses
and the dose.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import CLASS_NAMES
from ..engine.context import Context
from ..engine.store import read_json_cache, set_attrs, write_array, write_json_cache
from .dose import dose_record, dose_warnings, measured_counts
from .settings import scan_step_nm


def stage_statistics(ctx: Context) -> None:
    """Per-class histogram fits, intrinsic spread, class-mean profiles, layer thicknesses and, per region, the
    deconvolved mixture of the peak positions (:func:`region_mixtures`)."""
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
    # (its numbers as float64, without the second conversion of zarr's __array__: 0.04 s instead of 0.38 s of CPU for
    # the 128² bench scan's 240 × 360 × 89 float32 profiles; sendmap.stages.peaks.read_float64)
    iqn = g["profiles/iqn"][...].astype(np.float64, copy=False)
    mean, sem, counts = class_mean_profiles(iqn, cls, len(CLASS_NAMES))
    write_array(g, "statistics/class_mean_iqn", mean, {"class_names": list(CLASS_NAMES)})
    write_array(g, "statistics/class_sem_iqn", sem, {"class_names": list(CLASS_NAMES)})
    layers = layer_thickness(cls, scan_step_nm(cfg))
    regions = region_mixtures(g, cls, peak, err, scan_step_nm(cfg),
                              cache_path=Path(ctx.out_dir) / REGION_MIXTURE_CACHE, reuse=ctx.resume)
    set_attrs(g, statistics={"classes": classes, "layers": layers, "regions": regions}, dose=dose)


MIN_REGION_POSITIONS = 50
"""Fewest positions of a region (an 8-connected group of amorphous positions, e.g. one interface) that is described
apart, and fewest peaks its mixture is fitted to: issue 18's floor for scoring a class (≥ 50 positions); a
three-component mixture has 8 parameters."""


MIXTURE_MAX_POSITIONS = 3000
"""Most positions a region's mixture is fitted to (a seeded random subset of larger regions): the EM and the
numerical Hessian of its errors cost ~0.5 s per 1000 positions on one core (best_mixture, three fits); the errors
reported are those of the subset's estimate, so they do not shrink below what 3000 positions allow (about 0.0003
1/Å for a mean of spread 0.015)."""


REGION_MIXTURE_CACHE = ".sendmap-cache/region_mixtures.json"
"""In the output folder: the last run's region mixtures keyed by their inputs (:func:`region_mixtures`)."""


def _mixture_key(x: np.ndarray, e: np.ndarray, components) -> str:
    """SHA-256 of a region mixture's inputs: the values and errors fitted, the numbers of components, and the source
    of :mod:`sendmap.science.mixture` (a fit made by other code is not reused)."""
    import hashlib

    from ..science import mixture

    h = hashlib.sha256(Path(mixture.__file__).read_bytes())
    for a in (x, e):
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(str(a.shape).encode() + a.tobytes())
    h.update(repr(tuple(components)).encode())
    return h.hexdigest()


def region_mixtures(g, cls: np.ndarray, peak: np.ndarray, err: np.ndarray, step_nm: float,
                    cache_path: Path | None = None, reuse: bool = True) -> list[dict]:
    """The study's view of the histograms: per region of amorphous positions (:func:`sendmap.science.spatial.
    amorphous_regions`; e.g. the two interfaces either side of a Li grain), a one-, two- or three-component
    Gaussian mixture of the SRO peak positions with each position's error deconvolved (the intrinsic means and
    spreads with their 1-σ errors; the number of components by BIC, :func:`sendmap.science.mixture.best_mixture`).
    Writes ``statistics/region`` (Ry, Rx; -1 outside every region).

    ``cache_path`` (a JSON file): the mixtures of the last run, keyed by their inputs (:func:`_mixture_key`); a
    region whose fitted values and errors are those of a cached fit takes its result instead of fitting again (the
    fits cost ~0.1-0.3 s each: a classification change that moves positions only between amorphous classes keeps
    every region; ``reuse`` False, e.g. ``--force``: nothing is taken from it). The file is rewritten with this
    run's mixtures; unreadable, it is ignored."""
    from ..science.mixture import best_mixture
    from ..science.spatial import amorphous_regions

    cache = (read_json_cache(cache_path) if cache_path is not None and reuse else None) or {}
    new_cache: dict = {}

    amorphous = [CLASS_NAMES.index(n) for n in ("sei_type1", "sei_type2", "electrolyte")]
    region = amorphous_regions(cls, amorphous, MIN_REGION_POSITIONS)
    write_array(g, "statistics/region", region, {"meaning": "region of amorphous positions (8-connected, numbered by "
                                                            "decreasing size); -1 elsewhere"})
    out = []
    yy, xx = np.mgrid[:cls.shape[0], :cls.shape[1]]
    for r in range(int(region.max()) + 1):
        inside = region == r
        sel = inside & np.isfinite(peak) & np.isfinite(err) & (err > 0)
        codes, counts = np.unique(cls[inside], return_counts=True)
        entry = {"region": r, "positions": int(inside.sum()), "positions_with_peak": int(sel.sum()),
                 "centroid_nm": [float(yy[inside].mean() * step_nm), float(xx[inside].mean() * step_nm)],
                 "classes": {CLASS_NAMES[c]: int(n) for c, n in zip(codes, counts)},
                 "peak_q_err_median": float(np.median(err[sel])) if sel.any() else None}
        if sel.sum() >= MIN_REGION_POSITIONS:
            x, e = peak[sel], err[sel]
            if x.size > MIXTURE_MAX_POSITIONS:  # a fixed random subset (seeded: the same numbers on every run)
                pick = np.sort(np.random.default_rng(r).choice(x.size, MIXTURE_MAX_POSITIONS, replace=False))
                x, e = x[pick], e[pick]
            key = _mixture_key(x, e, (1, 2, 3))
            mix = cache.get(key)
            if not isinstance(mix, dict):
                fit = best_mixture(x, e, (1, 2, 3))
                mix = {"n_components": int(len(fit["mean"])),
                       **{k: [float(v) for v in fit[k]] for k in ("weight", "mean", "sigma", "mean_err", "sigma_err")},
                       "bic_by_components": {str(k): float(v) for k, v in fit["bic_by_components"].items()},
                       "converged": bool(fit["converged"]), "fitted_positions": int(x.size),
                       "method": "extreme deconvolution EM (Bovy et al. 2011), components by BIC"}
            new_cache[key] = mix
            entry["mixture"] = mix
        out.append(entry)
    if cache_path is not None:
        write_json_cache(Path(cache_path), new_cache)
    return out


