"""Config → the physical quantities every stage shares: Q per stored pixel (and where it came from), the stored scan
step, the probe disk's radius.
"""
from __future__ import annotations

import json

from ..config import Config
from ..errors import SendmapInputError
from ..physics import probe_radius_inv_angstrom, q_pixel_size_from_camera


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
