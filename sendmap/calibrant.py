"""``sendmap calibrate FILE``: Q per pixel, centre and elliptical distortion measured on the rings of a
polycrystalline standard (gold by default), with each ring's residual.

Orchestration only: read the pattern (a single 2-D pattern, or the mean of every frame of a dataset
any ``sendmap`` reader opens), look the standard up in the phase library
(:mod:`sendmap.science.phases`), run :func:`sendmap.science.rings.calibrate_rings` and turn its
arrays into one JSON-serialisable dict (:func:`calibrate_file`) or a text table
(:func:`format_report`).  Bad input raises :class:`~sendmap.errors.SendmapInputError` (exit code 2).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import SendmapInputError

__all__ = ["calibrate_file", "calibrate_pattern", "format_report", "read_pattern"]

TIFF_SUFFIXES = (".tif", ".tiff")
#: Reflections of the standard considered (1/Å); far beyond any ring on a SEND detector.
Q_MAX_INV_ANGSTROM = 3.0


# ----------------------------------------------------------------------------------------------------
# input
# ----------------------------------------------------------------------------------------------------
def read_pattern(path, scan_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, dict]:
    """The 2-D pattern to calibrate on, float64, and a description of where it came from.

    * ``.tif``/``.tiff``: a 2-D image (a 3-D stack is averaged over its first axis, a colour picture
      turned grey);
    * ``.npy``: a 2-D array as it is; 3-D (N, Qy, Qx) and 4-D (Ry, Rx, Qy, Qx) arrays are datasets;
    * anything else ``sendmap.io.open_dataset`` reads (Merlin, DM, EMPAD, Arina, py4DSTEM, zarr, ...):
      the mean over all frames, computed block by block with dask (``scan_shape`` for formats that
      need it).

    Returns ``(pattern, info)`` with ``info = {"file", "format", "frames_averaged", "shape"}``.
    """
    path = Path(path)
    if not path.exists():
        raise SendmapInputError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        import tifffile

        try:
            arr = np.asarray(tifffile.imread(path))
        except Exception as exc:  # any reader error: name the file, not a traceback
            raise SendmapInputError(f"{path}: not a readable TIFF image ({type(exc).__name__}: {exc})") from None
        if arr.dtype.kind not in "biuf":
            raise SendmapInputError(f"{path}: TIFF values of type {arr.dtype} are not numbers (colour image?)")
        if arr.ndim == 3 and arr.shape[-1] in (3, 4) and min(arr.shape[:2]) > 4:  # an RGB(A) picture: grey
            pattern, n, fmt = arr[..., :3].astype(np.float64).mean(axis=-1), 1, "tiff (colour, as grey)"
        elif arr.ndim == 3:
            pattern, n, fmt = arr.astype(np.float64).mean(axis=0), arr.shape[0], "tiff stack"
        elif arr.ndim == 2:
            pattern, n, fmt = arr.astype(np.float64), 1, "tiff"
        else:
            raise SendmapInputError(f"{path}: a TIFF of shape {arr.shape}; expected one 2-D pattern (or a 3-D stack)")
    elif suffix == ".npy" and _npy_ndim(path) == 2:
        arr = np.load(path, allow_pickle=False)
        if arr.dtype.kind not in "biuf":
            raise SendmapInputError(f"{path}: values of type {arr.dtype} are not numbers")
        pattern, n, fmt = arr.astype(np.float64), 1, "npy"
    else:
        from .io import open_dataset

        ds = open_dataset(path, "auto", scan_shape=scan_shape, scan_shape_required=False)  # (the mean only)
        if len(ds.shape) != 4:
            raise SendmapInputError(f"{path}: expected a 2-D pattern or a 4-D dataset, got shape {ds.shape}")
        n = int(ds.shape[0] * ds.shape[1])
        pattern = ds.data.astype(np.float64).mean(axis=(0, 1)).compute()
        fmt = ds.format
    pattern = np.asarray(pattern, dtype=np.float64)
    return pattern, {"file": str(path), "format": fmt, "frames_averaged": int(n), "shape": list(pattern.shape)}


def _npy_ndim(path: Path) -> int:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise SendmapInputError(f"{path}: not a readable .npy file ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise SendmapInputError(f"{path}: not a .npy file (a .npz archive?)")
    return arr.ndim


def zero_border_mask(pattern: np.ndarray) -> np.ndarray:
    """False on the rows and columns at the edges that are exactly zero everywhere (the fill of a shifted
    or padded image), True elsewhere.

    >>> img = np.ones((6, 5)); img[:2] = 0; img[:, -1] = 0
    >>> zero_border_mask(img).sum(axis=1).tolist()
    [0, 0, 4, 4, 4, 4]
    """
    used = np.ones(pattern.shape, bool)
    zero_row = np.all(pattern == 0, axis=1)
    zero_col = np.all(pattern == 0, axis=0)
    for flags, axis in ((zero_row, 0), (zero_col, 1)):
        n = len(flags)
        lo = int(np.argmin(flags)) if not flags.all() else n
        hi = int(np.argmin(flags[::-1])) if not flags.all() else n
        idx = list(range(lo)) + list(range(n - hi, n))
        if axis == 0:
            used[idx, :] = False
        else:
            used[:, idx] = False
    return used


# ----------------------------------------------------------------------------------------------------
# calibration
# ----------------------------------------------------------------------------------------------------
def calibrate_file(path, phase: str = "au", *, scan_shape: tuple[int, int] | None = None,
                   q_guess: float | None = None, mask_file=None, beam_energy_kv: float = 200.0,
                   detector_pixel_um: float | None = None, n_sectors: int = 36, fit_drift: bool = True) -> dict:
    """Calibrate on the rings of a polycrystalline standard in ``path``; returns a JSON-serialisable dict.

    ``phase``: a phase of :mod:`sendmap.science.phases` (``"au"`` by default); ``scan_shape``: for raw
    formats that need it; ``q_guess``: first Q per pixel (1/Å/px) if the automatic indexing needs help;
    ``mask_file``: nonzero = excluded pixel (``.npy``/``.tif``/``.png``); ``beam_energy_kv`` and
    ``detector_pixel_um``: to report the wavelength and the camera length.  See :func:`calibrate_pattern`
    for the keys.
    """
    pattern, info = read_pattern(path, scan_shape)
    mask = None
    if mask_file is not None:
        from .science.mask import load_user_mask

        mask = load_user_mask(mask_file, pattern.shape)
    out = calibrate_pattern(pattern, phase, mask=mask, q_guess=q_guess, beam_energy_kv=beam_energy_kv,
                            detector_pixel_um=detector_pixel_um, n_sectors=n_sectors, fit_drift=fit_drift)
    out["input"] = {**info, "mask_file": None if mask_file is None else str(mask_file)}
    return {"input": out.pop("input"), **out}


def calibrate_pattern(pattern: np.ndarray, phase: str = "au", *, mask: np.ndarray | None = None,
                      q_guess: float | None = None, beam_energy_kv: float = 200.0,
                      detector_pixel_um: float | None = None, n_sectors: int = 36, fit_drift: bool = True) -> dict:
    """Calibrate on one 2-D pattern of a polycrystalline standard; returns a JSON-serialisable dict.

    ``mask``: (Qy, Qx) bool, True = used pixel (non-finite pixels and zero-filled edge rows/columns are
    never used).  Keys: ``q_pixel_size`` (1/Å per pixel, Q = 1/d) and ``q_pixel_size_err``, ``centre``
    [y, x] px (pixel (iy, ix) centred at (iy, ix); the centre at zero radius) and ``centre_err``,
    ``ellipse`` {``ratio``, ``angle_deg``, ``ratio_err``, ``angle_err_deg``} (sendmap's convention),
    ``centre_drift`` (ring centres c + k·r², see :func:`sendmap.science.ring_geometry.fit_ring_geometry`; with
    ``fit_drift=False``, or a single ring in the geometry fit, every ring shares one centre), ``rings`` (one entry per ring found: ``hkl``, ``q``,
    ``radius_px``, ``radius_err_px``, ``residual`` = (q_pixel_size·radius − q)/q, ``used``, ``status``,
    ``blended_with``, ``n_sectors``, ``snr``, ``width_px``), ``max_abs_residual_used``,
    ``rms_sector_residual_px``, ``wavelength_angstrom``, ``camera_length_mm`` (with
    ``detector_pixel_um``) and ``config`` (the keys to put into a sendmap config).
    """
    from .physics import electron_wavelength_angstrom
    from .science.phases import get_phase
    from .science.rings import calibrate_rings

    try:
        ph = get_phase(phase)
    except KeyError as exc:
        raise SendmapInputError(str(exc.args[0])) from None
    img = np.asarray(pattern, dtype=np.float64)
    if img.ndim != 2:
        raise SendmapInputError(f"expected a 2-D pattern, got shape {img.shape}")
    used = np.isfinite(img) & zero_border_mask(img)
    if mask is not None:
        if mask.shape != img.shape:
            raise SendmapInputError(f"mask shape {mask.shape} does not match the pattern's {img.shape}")
        used &= np.asarray(mask, bool)
    values = img[used]
    if values.size == 0 or np.all(values == values[0]):
        raise SendmapInputError("the pattern is empty or constant: no rings to calibrate on")
    if q_guess is not None and not q_guess > 0:
        raise SendmapInputError(f"--q-guess must be positive (1/Å per pixel), got {q_guess}")
    if not beam_energy_kv > 0:
        raise SendmapInputError(f"--beam-energy-kv must be positive, got {beam_energy_kv}")
    if detector_pixel_um is not None and not detector_pixel_um > 0:
        raise SendmapInputError(f"--detector-pixel-um must be positive, got {detector_pixel_um}")
    refl = ph.reflections(Q_MAX_INV_ANGSTROM)
    q_ref = np.array([r.q_inv_angstrom for r in refl])
    inten = np.array([r.intensity for r in refl])
    try:
        res = calibrate_rings(img, q_ref, inten, mask=used, q_guess=q_guess, n_sectors=n_sectors, fit_drift=fit_drift)
    except ValueError as exc:
        raise SendmapInputError(f"calibration on {ph.name} failed: {exc}") from None

    labels = [r.label for r in refl]
    tie = res["ring_tie"]
    rings = []
    for k, j in enumerate(res["ring_index"]):
        others = [labels[res["ring_index"][i]] for i in range(len(tie)) if tie[i] == tie[k] and i != k]
        rings.append({
            "hkl": labels[j], "q": _r(q_ref[j], 4), "radius_px": _r(res["ring_radius_px"][k], 3),
            "radius_err_px": _r(res["ring_radius_err_px"][k], 3), "residual": _r(res["ring_residual"][k], 5),
            "used": bool(res["ring_used"][k]), "status": str(res["ring_status"][k]), "blended_with": others,
            "n_sectors": int(res["ring_n_sectors"][k]), "snr": _r(res["ring_snr"][k], 1),
            "width_px": _r(res["ring_sigma_px"][k], 3),
        })
    qpx = float(res["q_pixel_size"])
    used_res = [abs(r["residual"]) for r in rings if r["used"]]
    r_outer = max((r["radius_px"] for r in rings if r["used"]), default=float("nan"))
    k = res["drift_yx"]
    lam = electron_wavelength_angstrom(beam_energy_kv)
    out = {
        "standard": {"phase": ph.name, "space_group": ph.space_group_label, "lattice_angstrom": list(ph.lattice[:3])},
        "q_pixel_size": _r(qpx, 9), "q_pixel_size_err": _r(res["q_pixel_size_err"], 9),
        "centre": [_r(v, 3) for v in res["centre"]], "centre_err": [_r(v, 3) for v in res["centre_err"]],
        "ellipse": {"ratio": _r(res["ratio"], 5), "angle_deg": _r(res["angle_deg"], 2),
                    "ratio_err": _r(res["ratio_err"], 5), "angle_err_deg": _r(res["angle_err_deg"], 2)},
        "centre_drift": {"fitted": bool(res["drift_fitted"]), "k_per_px": [_r(v, 9) for v in k],
                         "k_err": [_r(v, 9) for v in res["drift_err"]],
                         "outer_ring_radius_px": _r(r_outer, 2),
                         "shift_at_outer_ring_px": [_r(v * r_outer**2, 3) for v in k]},
        "rings": rings,
        "max_abs_residual_used": _r(max(used_res), 5) if used_res else None,
        "rms_sector_residual_px": _r(res["rms_sector_px"], 3),
        "n_sectors": int(res["n_sectors"]), "iterations": int(res["iterations"]),
        "beam_energy_kv": float(beam_energy_kv), "wavelength_angstrom": _r(lam, 6),
        "config": {"calibration": {"q_pixel_size": _r(qpx, 7),
                                   "ellipse": [_r(res["ratio"], 4), _r(res["angle_deg"], 1)]}},
    }
    if detector_pixel_um is not None:
        cam_mm = detector_pixel_um * 1e-3 / (qpx * lam)  # L = p / (q_px · λ)
        out["detector_pixel_um"] = float(detector_pixel_um)
        out["camera_length_mm"] = _r(cam_mm, 2)
        out["camera_length_mm_err"] = _r(cam_mm * res["q_pixel_size_err"] / qpx, 2)
    return out


def _r(x, nd):
    """Round for JSON; NaN/inf become None."""
    x = float(x)
    return round(x, nd) if math.isfinite(x) else None


# ----------------------------------------------------------------------------------------------------
# text output
# ----------------------------------------------------------------------------------------------------
def format_report(res: dict) -> str:
    """A readable summary of :func:`calibrate_file`'s result (what ``sendmap calibrate`` prints)."""
    inp = res.get("input", {})
    std = res["standard"]
    e = res["ellipse"]
    c, ce = res["centre"], res["centre_err"]
    lines = []
    if inp:
        shape = " x ".join(str(v) for v in inp["shape"])
        frames = "1 pattern" if inp["frames_averaged"] == 1 else f"mean of {inp['frames_averaged']} frames"
        lines.append(f"{inp['file']}: {inp['format']}, {shape} px, {frames}")
    lines.append(f"standard       {std['phase']} {std['space_group']}, a = {std['lattice_angstrom'][0]:g} Å")
    lines.append(f"Q per pixel    {res['q_pixel_size']:.7f} ± {res['q_pixel_size_err']:.7f} 1/Å per px (Q = 1/d)")
    lines.append(f"centre (y, x)  {c[0]:.2f} ± {_f(ce[0])}, {c[1]:.2f} ± {_f(ce[1])} px")
    lines.append(f"ellipse        ratio {e['ratio']:.4f} ± {_f(e['ratio_err'], 4)}, major axis at "
                 f"{e['angle_deg']:.1f} ± {_f(e['angle_err_deg'], 1)}° (from +x towards +y)")
    d = res["centre_drift"]
    if d["fitted"] and d["outer_ring_radius_px"] is not None:
        sy, sx = d["shift_at_outer_ring_px"]
        lines.append(f"centre drift   ring centres move by ({sy:+.2f}, {sx:+.2f}) px (y, x) at r = "
                     f"{d['outer_ring_radius_px']:.0f} px (∝ r²)")
    lam = f"λ = {res['wavelength_angstrom']:.5f} Å at {res['beam_energy_kv']:g} kV"
    if "camera_length_mm" in res:
        lines.append(f"camera length  {res['camera_length_mm']:.1f} ± {res['camera_length_mm_err']:.1f} mm "
                     f"({res['detector_pixel_um']:g} µm pixels, {lam})")
    else:
        lines.append(f"wavelength     {lam} (give --detector-pixel-um for the camera length)")
    lines.append("")
    lines.append(f"{'hkl':>6} {'Q (1/Å)':>8} {'radius px':>10} {'residual':>9} {'sectors':>7}  status")
    for r in res["rings"]:
        status = r["status"] + (f" ({'+'.join(r['blended_with'])})" if r["blended_with"] else "")
        lines.append(f"{r['hkl']:>6} {r['q']:8.4f} {r['radius_px']:10.3f} {100 * r['residual']:+8.2f}% "
                     f"{r['n_sectors']:7d}  {status}")
    lines.append("")
    lines.append(f"RMS of the sector radii about the fitted rings: {res['rms_sector_residual_px']:.3f} px "
                 f"({res['n_sectors']} sectors, {res['iterations']} iterations)")
    cal = res["config"]["calibration"]
    lines.append("config:  calibration: {q_pixel_size: %s, ellipse: [%s, %s]}"
                 % (cal["q_pixel_size"], cal["ellipse"][0], cal["ellipse"][1]))
    return "\n".join(lines)


def _f(x, nd=2):
    return "?" if x is None else f"{x:.{nd}f}"
