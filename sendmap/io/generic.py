"""Formats read through rosettasciio's lazy readers: one generic reader for every 4D-STEM format sendmap has
no own reader for.

=========  ==============================================  =====================================
format     files                                           rosettasciio plugin
=========  ==============================================  =====================================
blockfile  NanoMegas / ASTAR ``.blo`` (precession)         ``rsciio.blockfile``
tvips      TVIPS ``.tvips`` stream files                   ``rsciio.tvips``
mrc        MRC ``.mrc`` (incl. Direct Electron movies)     ``rsciio.mrc``
velox      Thermo Fisher Velox ``.emd``                    ``rsciio.emd``
hspy       HyperSpy ``.hspy`` (HDF5)                       ``rsciio.hspy``
zspy       HyperSpy ``.zspy`` (zarr)                       ``rsciio.zspy``
=========  ==============================================  =====================================

The reader takes the file's largest signal of 2 to 4 dimensions, the last two being the detector (Qy, Qx):
a 4D signal is (Ry, Rx, Qy, Qx) as stored; a 3D signal is a stack of N frames in scan order, reshaped to
``input.scan_shape`` (required unless N = 1: a stack does not say which scan it was); a 2D signal is one
pattern, a 1 × 1 scan. Reading stays lazy: each block of scan rows is sliced from rosettasciio's dask array
and computed on its own, so memory holds one block (plus whatever one chunk of the plugin's own chunking
holds). The file's calibrations (Q per pixel in a reciprocal length, the scan step in a length, the beam
energy) are converted to 1/Å, nm and kV and returned in ``metadata["calibration"]``; diffraction scales in
other units (the blockfile's "cm", angles) are recorded but not used as Q.
"""
from __future__ import annotations

import functools
import math
import sys
import types
from pathlib import Path

import numpy as np

from sendmap.errors import SendmapInputError
from sendmap.io._common import check_scan_shape, scan_chunks, stack_scan_shape

PLUGINS = {"blockfile": "rsciio.blockfile", "tvips": "rsciio.tvips", "mrc": "rsciio.mrc", "velox": "rsciio.emd",
           "hspy": "rsciio.hspy", "zspy": "rsciio.zspy"}
"""sendmap format name → rosettasciio plugin module."""

_INV_LENGTH_TO_INV_ANGSTROM = {"1/nm": 0.1, "nm^-1": 0.1, "nm-1": 0.1, "1/Å": 1.0, "1/A": 1.0, "Å^-1": 1.0,
                               "A^-1": 1.0, "1/angstrom": 1.0, "1/pm": 100.0, "1/µm": 1e-4, "1/um": 1e-4,
                               "1/m": 1e-10}
"""Reciprocal-length units → factor to 1/Å (Q = 1/d, HyperSpy's convention for diffraction axes)."""
_LENGTH_TO_NM = {"nm": 1.0, "Å": 0.1, "A": 0.1, "angstrom": 0.1, "pm": 1e-3, "µm": 1e3, "μm": 1e3, "um": 1e3,
                 "mm": 1e6, "m": 1e9}
_METADATA_LIMIT = 8000
"""Largest JSON text (characters) of the plugin's original metadata copied into the provenance."""


def read_generic(path, fmt: str, scan_shape: tuple[int, int] | None = None,
                 frames_per_chunk: int | None = None, *, required: bool = True):
    """(shape, native dtype, metadata, read_region, make_data) of a file read by rosettasciio plugin ``fmt``.

    ``read_region((y0, y1, x0, x1))`` returns (y1-y0, x1-x0, Qy, Qx) in native byte order; ``make_data()``
    builds the lazy (Ry, Rx, Qy, Qx) dask array (chunks of whole scan rows, each loaded on its own).
    SendmapInputError where the plugin cannot read the file or it holds no 2D-4D numeric signal.
    """
    path = Path(path)
    sig, index = _signal(str(path), fmt, _mtime(path))
    data = sig["data"]
    n_frames = int(np.prod(data.shape[:-2])) if data.ndim > 2 else 1
    if data.ndim == 4:
        if scan_shape is not None and tuple(scan_shape) != tuple(data.shape[:2]):
            raise SendmapInputError(
                f"{path}: input.scan_shape {list(scan_shape)} does not match the file's scan axes {list(data.shape[:2])}")
        scan = check_scan_shape(data.shape[:2], n_frames, path)
    elif data.ndim == 3:
        scan = stack_scan_shape(scan_shape, n_frames, path, required)
    else:
        scan = check_scan_shape(scan_shape or (1, 1), 1, path)
    frame_shape = tuple(int(n) for n in data.shape[-2:])
    native = np.dtype(data.dtype).newbyteorder("=")
    meta = _metadata(sig, index, fmt, data)
    key = (str(path), fmt, _mtime(path))
    read_region = functools.partial(_read_region, key, scan[1])

    def make_data():
        import dask.array as da

        chunks = scan_chunks(scan, frame_shape, native.itemsize, frames_per_chunk)
        return da.map_blocks(_load_block, chunks=chunks, dtype=native, meta=np.empty((0, 0, 0, 0), native),
                             key=key, row_length=scan[1])

    return (*scan, *frame_shape), native, meta, read_region, make_data


def file_calibration(meta: dict) -> dict:
    """{q_pixel_size (1/Å), scan_step_nm, beam_energy_kv}: what any reader's metadata says, None where it does
    not (the generic reader's ``calibration``, the DM reader's ``q_scale_inv_angstrom`` / ``scan_step_nm`` /
    ``voltage_kV``, the py4DSTEM/EMD reader's ``q_pixel_size`` / ``r_pixel_size`` with their units, EMPAD's
    ``scan_step_nm`` / ``beam_energy_kv``, Arina's ``scan_pixel_size_nm``). Merlin files record none of them."""
    if isinstance(meta.get("calibration"), dict) and "q_pixel_size" in meta["calibration"]:
        cal = meta["calibration"]
        return {k: cal.get(k) for k in ("q_pixel_size", "scan_step_nm", "beam_energy_kv")}
    out = {"q_pixel_size": meta.get("q_scale_inv_angstrom"),
           "scan_step_nm": meta.get("scan_step_nm") or meta.get("scan_pixel_size_nm"),
           "beam_energy_kv": meta.get("voltage_kV") or meta.get("beam_energy_kv")}
    if out["q_pixel_size"] is None and meta.get("q_pixel_size") is not None:
        factor = _INV_LENGTH_TO_INV_ANGSTROM.get(_unit(meta.get("q_pixel_units")))
        out["q_pixel_size"] = None if factor is None else float(meta["q_pixel_size"]) * factor
    if out["scan_step_nm"] is None and meta.get("r_pixel_size") is not None:
        factor = _LENGTH_TO_NM.get(_unit(meta.get("r_pixel_units")))
        out["scan_step_nm"] = None if factor is None else float(meta["r_pixel_size"]) * factor
    return {k: (float(v) if _positive(v) else None) for k, v in out.items()}


# --- private helpers -----------------------------------------------------------------------------------

def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def _plugin(fmt: str):
    """The plugin module; the blockfile plugin imports scikit-image at import time for its writer only, so
    where scikit-image is absent a placeholder stands in while it imports (reading never touches it)."""
    import importlib

    name = PLUGINS[fmt]
    if fmt == "blockfile" and "skimage" not in sys.modules:
        try:
            import skimage  # noqa: F401
        except ImportError:
            stub = types.ModuleType("skimage")
            stub.__doc__ = "placeholder: scikit-image is not installed (rosettasciio's blockfile writer needs it)"
            sys.modules["skimage"] = stub
            try:
                return importlib.import_module(name)
            finally:
                if sys.modules.get("skimage") is stub:
                    del sys.modules["skimage"]
    return importlib.import_module(name)


@functools.lru_cache(maxsize=4)
def _signal(path: str, fmt: str, mtime_ns: int) -> tuple[dict, int]:
    """The chosen signal dict of ``path`` (lazy), and its index among the file's signals; opened once per
    process and file version."""
    module = _plugin(fmt)
    kwargs = {"mode": "r"} if fmt in ("zspy", "hspy") else {}  # zspy opens lazily read-write by default
    try:
        signals = module.file_reader(path, lazy=True, **kwargs)
    except Exception as exc:  # each plugin raises its own types for a file it cannot parse
        raise SendmapInputError(
            f"{path}: rosettasciio's {PLUGINS[fmt]} reader cannot read it ({type(exc).__name__}: {exc}); check "
            f"input.format ({fmt}) and that the file is complete") from None
    if isinstance(signals, dict):
        signals = [signals]
    found = [(i, s) for i, s in enumerate(signals)
             if hasattr(s.get("data"), "shape") and 2 <= len(s["data"].shape) <= 4
             and np.dtype(s["data"].dtype).kind in "iuf"]
    if not found:
        shapes = ", ".join(f"{tuple(getattr(s.get('data'), 'shape', ()))} {getattr(s.get('data'), 'dtype', '')}"
                           for s in signals)
        raise SendmapInputError(f"{path}: no 2D, 3D or 4D numeric signal in the file (found: {shapes or 'none'})")
    index, sig = max(found, key=lambda c: (len(c[1]["data"].shape), int(np.prod(c[1]["data"].shape))))
    return sig, index


def _frames_of(key, start: int, stop: int) -> np.ndarray:
    """Frames start..stop (flat scan order) of a stack or single pattern as (k, Qy, Qx) native."""
    data = _signal(*key)[0]["data"]
    out = _compute(data)[None] if data.ndim == 2 else _compute(data[start:stop])
    return out.astype(out.dtype.newbyteorder("="), copy=False)


def _compute(block) -> np.ndarray:
    if hasattr(block, "compute"):
        block = block.compute(scheduler="synchronous")
    return np.asarray(block)


def _read_region(key, row_length: int, region: tuple[int, int, int, int]) -> np.ndarray:
    y0, y1, x0, x1 = region
    data = _signal(*key)[0]["data"]
    if data.ndim == 4:
        out = _compute(data[y0:y1, x0:x1])
        return out.astype(out.dtype.newbyteorder("="), copy=False)
    if x0 == 0 and x1 == row_length:  # whole rows: one run of frames
        return _frames_of(key, y0 * row_length, y1 * row_length).reshape(y1 - y0, row_length, *data.shape[-2:])
    return np.stack([_frames_of(key, y * row_length + x0, y * row_length + x1) for y in range(y0, y1)])


def _load_block(key, row_length: int, block_info=None) -> np.ndarray:
    (r0, r1), (c0, c1) = block_info[None]["array-location"][:2]
    return _read_region(key, row_length, (r0, r1, c0, c1))


def _unit(units) -> str | None:
    if units is None:
        return None
    text = str(units).strip().replace("$", "").replace("{", "").replace("}", "")  # LaTeX: $A^{-1}$
    return {"Angstrom": "Å", "1/Angstrom": "1/Å", "Å⁻¹": "1/Å", "nm⁻¹": "1/nm", "um": "µm"}.get(text, text)


def _positive(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False


def _axes(sig: dict, ndim: int) -> list[dict]:
    """The signal's axes in array order, JSON-able (name, size, scale, offset, units, navigate)."""
    axes = sorted(sig.get("axes") or [], key=lambda a: a.get("index_in_array", 0))
    out = []
    for ax in axes[:ndim]:
        out.append({"name": str(ax.get("name", "")), "size": int(ax.get("size", 0)),
                    "scale": float(ax.get("scale", 1.0)), "offset": float(ax.get("offset", 0.0)),
                    "units": None if ax.get("units") in (None, "<undefined>") else str(ax.get("units")),
                    "navigate": bool(ax.get("navigate", False))})
    return out


def _calibration(axes: list[dict], sig: dict, ndim: int) -> dict:
    cal = {"q_pixel_size": None, "scan_step_nm": None, "beam_energy_kv": None, "notes": []}
    if len(axes) == ndim:
        qy, qx = axes[-2:]
        units = _unit(qy["units"]) if _unit(qy["units"]) == _unit(qx["units"]) else None
        factor = _INV_LENGTH_TO_INV_ANGSTROM.get(units)
        if factor is not None and math.isclose(qy["scale"], qx["scale"], rel_tol=1e-6) and qy["scale"] > 0:
            cal["q_pixel_size"] = qy["scale"] * factor
        elif qy["units"] or qx["units"]:
            cal["notes"].append(f"detector axes scaled {qy['scale']:g} {qy['units']} / {qx['scale']:g} {qx['units']} "
                                "per pixel: not a reciprocal length, so not used as Q per pixel")
        if ndim == 4:
            ry, rx = axes[:2]
            factors = [_LENGTH_TO_NM.get(_unit(a["units"])) for a in (ry, rx)]
            if None not in factors:
                steps = [a["scale"] * f for a, f in zip((ry, rx), factors)]
                if math.isclose(*steps, rel_tol=1e-6) and steps[0] > 0:
                    cal["scan_step_nm"] = steps[0]
                else:
                    cal["notes"].append(f"scan steps {steps[0]:g} / {steps[1]:g} nm differ: not used")
    energy = _beam_energy_kv(sig)
    if energy is not None:
        cal["beam_energy_kv"] = energy
    return cal


def _beam_energy_kv(sig: dict) -> float | None:
    """The beam energy (kV) from the signal's metadata, or from its original metadata through the plugin's
    mapping (``"blockfile_header.Beam_energy"`` → ``Acquisition_instrument.TEM.beam_energy``)."""
    tem = ((sig.get("metadata") or {}).get("Acquisition_instrument") or {}).get("TEM") or {}
    if _positive(tem.get("beam_energy")):
        return float(tem["beam_energy"])
    for source, target in (sig.get("mapping") or {}).items():
        dest, func = (target if isinstance(target, tuple) else (target, None))[:2]
        if dest != "Acquisition_instrument.TEM.beam_energy":
            continue
        value = sig.get("original_metadata") or {}
        for part in source.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and func is not None:
            value = func(value)
        if _positive(value):
            return float(value)
    return None


def _metadata(sig: dict, index: int, fmt: str, data) -> dict:
    import rsciio

    axes = _axes(sig, data.ndim)
    meta = {"reader": f"rosettasciio {PLUGINS[fmt]}", "rosettasciio_version": getattr(rsciio, "__version__", None),
            "signal_index": index, "signal_title": str(((sig.get("metadata") or {}).get("General") or {})
                                                        .get("title", "")),
            "shape_on_disk": [int(n) for n in data.shape], "dtype_on_disk": np.dtype(data.dtype).str,
            "layout": {4: "scan (Ry, Rx, Qy, Qx)", 3: "stack (N, Qy, Qx)", 2: "single pattern (Qy, Qx)"}[data.ndim],
            "axes": axes, "calibration": _calibration(axes, sig, data.ndim)}
    original = _jsonable(sig.get("original_metadata") or {})
    import json

    text = json.dumps(original, default=str)
    meta["original_metadata"] = original if len(text) <= _METADATA_LIMIT else {
        "note": f"{len(text)} characters, not copied", "keys": sorted(original)[:50]}
    return meta


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist()) if value.size <= 64 else f"array {value.shape} {value.dtype}"
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("latin-1")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
