"""The report's tables (CSV, one row per class, position, phase, layer, region component or Q bin; the dose on every
row) and the dose caption of the figures, from the result store."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .. import CLASS_NAMES


def dose_text(dose: dict | None) -> str:
    """Caption text of the dose, e.g. '2.0×10⁴ e⁻/pattern, 125 e⁻/Å²'."""
    if not dose:
        return "dose unknown"

    def sci(v):
        exp = int(np.floor(np.log10(v))) if v > 0 else 0
        return f"{v / 10 ** exp:.1f}×10" + str(exp).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))

    epp = dose.get("electrons_per_pattern")
    if epp is None:  # an integrating camera's counts with no counts-per-electron: counts, not electrons
        cpp = dose.get("counts_per_pattern")
        return "dose unknown" + (f" ({sci(cpp)} counts/pattern)" if cpp else "")
    low = "≥ " if dose.get("lower_bound") else ""
    return f"{low}{sci(epp)} e⁻/pattern, {low}{dose['electrons_per_A2']:.3g} e⁻/Å²"


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def _format_column(v: np.ndarray, spec: str) -> list[str]:
    """``v`` (1-D float) as text with the %-format ``spec``, "" where not finite."""
    out = list(map(f"%{spec}".__mod__, v.tolist()))
    for i in np.flatnonzero(~np.isfinite(v)).tolist():
        out[i] = ""
    return out


POSITIONS_CACHE = ".sendmap-cache/positions_columns.pkl"
"""In ``<out_dir>`` (beside the region mixtures' cache, out of the tables folder users hand on): the text of each numeric column of positions.csv, keyed by the digest of its values and
format (:class:`ColumnCache`)."""


class ColumnCache:
    """The formatted text of table columns from the last run, keyed by a SHA-256 of the values (bytes, dtype,
    shape) and the format: formatting 86 400 positions × 16 numbers costs ~0.5 s of CPU, and a re-run after a
    classification change alters few of the columns. ``get`` returns the cached text where the key matches, else
    formats (and counts the miss); ``save`` keeps only the columns of this run. An unreadable file is ignored
    (everything formatted afresh)."""

    VERSION = 1

    def __init__(self, path: Path):
        import pickle

        self.path = Path(path)
        self.new: dict[str, str] = {}
        self.hits = self.misses = 0
        try:
            old = pickle.loads(self.path.read_bytes())
            self.old = old["columns"] if old.get("version") == self.VERSION else {}
        except Exception:  # noqa: BLE001 - absent or unreadable: no cache
            self.old = {}

    def get(self, values: np.ndarray, spec: str, formatter) -> list[str]:
        import hashlib

        v = np.ascontiguousarray(values)
        key = hashlib.sha256(f"{spec}|{v.dtype.str}|{v.shape}|".encode() + v.tobytes()).hexdigest()
        text = self.old.get(key)
        if text is not None:
            self.hits += 1
            out = text.split("\n") if v.size else []
        else:
            self.misses += 1
            out = formatter(v, spec)
            text = "\n".join(out)
        self.new[key] = text
        return out

    def save(self) -> None:
        import os
        import pickle

        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        try:  # (atomic: a run killed meanwhile leaves the old file or none)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(pickle.dumps({"version": self.VERSION, "columns": self.new}, protocol=5))
            os.replace(tmp, self.path)
        except OSError:  # a cache only
            pass


def write_tables(group, out_dir: Path) -> list[Path]:
    """tables/classes.csv (per-class statistics), tables/positions.csv (one row per position: class, phase,
    peak and its error, height, prominence, width, second peak, features, centre), tables/phases.csv (named
    phase counts per class), tables/layers.csv (layer thickness), tables/regions.csv (per region of amorphous
    positions, the deconvolved mixture of the peak positions: one row per component), tables/class_profiles.csv (class-mean
    I·Q^n); every table carries the dose (electrons per pattern and e⁻/Å²) on every row."""
    from ..engine.store import write_text_atomic  # here, not at the top: the figure helper process needs no zarr
    tdir = Path(out_dir) / "tables"
    tdir.mkdir(parents=True, exist_ok=True)
    stats = group.attrs.get("statistics", {})
    dose = group.attrs.get("dose", {}) or {}
    rows = []
    for name, c in stats.get("classes", {}).items():
        rows.append({"class": name, "count": c.get("count"), "count_with_peak": c.get("count_with_peak"),
                     "peak_q_mean": c.get("peak_q_mean"), "peak_q_std": c.get("peak_q_std"),
                     "fit_mu": c.get("fit_mu"), "fit_mu_err": c.get("fit_mu_err"), "fit_sigma": c.get("fit_sigma"),
                     "fit_sigma_err": c.get("fit_sigma_err"),
                     "intrinsic_sigma": c.get("intrinsic_sigma"), "peak_q_err_median": c.get("peak_q_err_median"),
                     "fwhm_mean": c.get("fwhm_mean"), "peak2_q_mean": c.get("peak2_q_mean"),
                     "peak2_count": c.get("peak2_q_count"),
                     "electrons_per_pattern": dose.get("electrons_per_pattern"),
                     "electrons_per_A2": dose.get("electrons_per_A2")})
    paths = []
    p = tdir / "classes.csv"
    write_text_atomic(p, _csv(rows))
    paths.append(p)
    cls = np.asarray(group["maps/class"])
    ry, rx = cls.shape
    step = float(group.attrs["calibration"]["scan_step_nm"])
    epp, epa = dose.get("electrons_per_pattern"), dose.get("electrons_per_A2")

    def arr(key, default=np.nan):
        return np.asarray(group[key], dtype=float) if key in group else np.full((ry, rx), default)

    yy, xx = np.mgrid[:ry, :rx]
    origin = np.asarray(group["calibration/origin"])
    phase = np.asarray(group["maps/phase"]) if "maps/phase" in group else np.full((ry, rx), -1)
    phase_names = list(group["maps/phase"].attrs.get("phase_names", [])) if "maps/phase" in group else []
    cols = {"peak_q_inv_A": arr("maps/peak_q"), "peak_q_err_inv_A": arr("maps/peak_q_err"),
            "peak_height": np.where(cls == 0, np.nan, arr("peaks/height")),
            "peak_prominence": np.where(cls == 0, np.nan, arr("peaks/prominence")),
            "peak_fwhm_inv_A": arr("features/peak_fwhm"),
            "peak_fwhm_err_inv_A": np.where(cls == 0, np.nan, arr("peaks/fwhm_err")),
            "peak2_q_inv_A": arr("maps/peak2_q"), "peak2_q_err_inv_A": arr("maps/peak2_q_err"),
            "crystal_z": arr("features/crystal_z"), "lif_z": arr("features/lif_z"),
            "lif_vote": arr("features/lif_vote"), "bragg_fraction": arr("features/bragg_fraction"),
            "virtual_bf": arr("features/virtual_bf"), "virtual_adf": arr("features/virtual_adf")}
    header = ["ry", "rx", "y_nm", "x_nm", "class", "phase", *cols, "centre_y_px", "centre_x_px",
              "electrons_per_pattern", "electrons_per_A2"]
    lines = [",".join(header)]
    names = np.array([*CLASS_NAMES, ""], dtype=object)
    pnames = np.array([*phase_names, ""], dtype=object)

    cache = ColumnCache(Path(out_dir) / POSITIONS_CACHE)

    def fmt(values, spec: str) -> list[str]:  # one column as text, "" where not finite (Python floats format fast)
        v = np.asarray(values, float).ravel()
        return cache.get(v, spec, _format_column)

    ph = phase.ravel()
    columns = [map(str, yy.ravel().tolist()), map(str, xx.ravel().tolist()), fmt(yy * step, "g"), fmt(xx * step, "g"),
               names[np.where((cls >= 0) & (cls < len(CLASS_NAMES)), cls, -1).ravel()],
               pnames[np.where((ph >= 0) & (ph < len(phase_names)), ph, -1)],
               *(fmt(v, ".6g") for v in cols.values()),
               fmt(origin[..., 0], ".3f"), fmt(origin[..., 1], ".3f")]
    tail = f",{epp},{epa}"
    lines += [",".join(row) + tail for row in zip(*columns)]
    p = tdir / "positions.csv"
    write_text_atomic(p, "\n".join(lines) + "\n")
    paths.append(p)
    cache.save()
    prow = []
    for name, c in stats.get("classes", {}).items():
        for ph, count in c.get("phases", {}).items():
            prow.append({"class": name, "phase": ph, "positions": count, "class_count": c.get("count"),
                         "electrons_per_pattern": epp, "electrons_per_A2": epa})
    p = tdir / "phases.csv"
    write_text_atomic(p, _csv(prow) or "class,phase,positions,class_count,electrons_per_pattern,electrons_per_A2\n")
    paths.append(p)
    layers = [{"key": k, **v, "electrons_per_pattern": epp, "electrons_per_A2": epa}
              for k, v in stats.get("layers", {}).items()]
    p = tdir / "layers.csv"
    write_text_atomic(p, _csv(layers))
    paths.append(p)
    rrow = []
    for reg in stats.get("regions", []):
        mix = reg.get("mixture") or {}
        base = {"region": reg["region"], "positions": reg["positions"], "positions_with_peak": reg["positions_with_peak"],
                "centroid_y_nm": f"{reg['centroid_nm'][0]:.1f}", "centroid_x_nm": f"{reg['centroid_nm'][1]:.1f}",
                "classes": " ".join(f"{k}:{v}" for k, v in reg["classes"].items()),
                "n_components": mix.get("n_components", "")}
        for i in range(mix.get("n_components", 0)) or [None]:
            comp = {"component": "" if i is None else i}
            for key in ("weight", "mean", "mean_err", "sigma", "sigma_err"):
                v = None if i is None else mix[key][i]
                comp[key] = "" if v is None or not np.isfinite(v) else f"{v:.5g}"  # (None: an unresolved error)
            rrow.append(base | comp | {"electrons_per_pattern": epp, "electrons_per_A2": epa})
    p = tdir / "regions.csv"
    write_text_atomic(p, _csv(rrow) or "region,positions,positions_with_peak,centroid_y_nm,centroid_x_nm,classes,"
                                       "n_components,component,weight,mean,mean_err,sigma,sigma_err,"
                                       "electrons_per_pattern,electrons_per_A2\n")
    paths.append(p)
    q = np.asarray(group["profiles/q"])
    mean = np.asarray(group["statistics/class_mean_iqn"])
    prow = [{"q_inv_A": f"{qq:.5f}", **{CLASS_NAMES[k]: f"{mean[k, i]:.6g}" for k in range(len(CLASS_NAMES))
                                           if np.isfinite(mean[k]).any()},
             "electrons_per_pattern": epp, "electrons_per_A2": epa} for i, qq in enumerate(q)]
    p = tdir / "class_profiles.csv"
    write_text_atomic(p, _csv(prow))
    paths.append(p)
    return paths
