"""The calibrate stage: detector mask, per-position centres with a descan plane fit, the elliptical distortion, the
probe disk's radius and the counted dose.
"""
from __future__ import annotations

import math

import numpy as np

from ..compute.calibrate import CalibrateBlock
from ..engine.context import Context
from ..engine.data import data_blocks, read_store_block, forget_store_data
from ..engine.store import set_attrs, write_array
from ..errors import SendmapInputError
from ..physics import electron_wavelength_angstrom
from .crystalline import crystal_key_sections, crystal_spot_threshold
from .settings import calibrant_record, disk_radius_px, q_pixel_size, q_pixel_size_and_source, scan_step_nm


MASK_WARN_FRACTION = 0.5
"""A detector mask that hides more than this share of the pixels is warned about (issue 21)."""


def detector_mask(ctx: Context, r_disk_px: float) -> dict:
    """Every cause of an unusable pixel, from the ingest reductions: hot, dead, saturated, non-finite, beam stop,
    aperture shadow and the user's mask file. Returns bool arrays (True = excluded) per cause, ``mask`` and
    ``centre_mask`` (True = used; the latter keeps saturated pixels: a flat-topped disk still has a centre),
    ``centre_guess_yx`` and an ``info`` dict."""
    from ..science.mask import hot_dead_mask, load_user_mask, saturated_mask, saturation_level
    from ..science.shadows import shadow_masks

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
    from ..science.centre import central_disk_radius

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
    from ..science.dose import counts_per_pattern, integrating_camera_reason
    from ..science.mask import saturation_level

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
    from ..engine.execute import run_blocks
    from ..science.centre import brightest_disk_guess, fit_descan_plane
    from ..science.ellipse import ellipse_from_polar_mean
    from ..science.polar import PolarGeometry
    from ..science.polar_tables import PolarTables

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
        if method == "disk":
            # is there a disk at the centre? A beam stop found that does not cover the disk as found (a real stop's
            # tip over the centre reads as a dim middle, not as a shadow, where the whole ring is under it), or one
            # not found at all (a stop that lets ~10 % through is no shadow: the real metallic-glass pattern
            # amorphous_sum/sum1.npy, whose centres the disk method put 19 px off)
            from ..science.centre import central_disk_radius

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
    # "crystalline" as everywhere (sendmap.stages.crystalline); the dose from the raw counts, since the measured one
    # (hot pixels out) is this stage's own output
    crystal_thr = crystal_spot_threshold(cfg, np.asarray(g["ingest/total_counts"]))
    process = CalibrateBlock(tuple(guess), centre_mask, mask, radius, method, annulus, tables, r_disk * qpx,
                             tuple(map(tuple, d.crystal_bands)), crystal_thr,
                             ellipse_sample(blocks, cal.ellipse_max_frames))
    forget_store_data(ctx.store_path)  # the data may have been re-ingested since
    run_blocks(read_store_block, process, [(ctx.store_path, b, None) for b in blocks], cfg.compute, "calibrate",
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


def key_sections(cfg, sections: dict) -> dict:
    """The calibrate key adds what decides which frames are crystalline (left out of the ellipse fit), the polar
    supersampling, and the contents (not only the names) of the mask and calibrant files: an edit recomputes."""
    import hashlib

    sections["classify.definitions"] = crystal_key_sections(cfg)
    sections["dose"] = cfg.section("dose")  # (the crystal threshold scales with the dose)
    sections["profiles"] = {k: v for k, v in cfg.section("profiles").items() if k == "supersample"}
    for key in ("mask_file", "calibrant"):
        name = getattr(cfg.calibration, key)
        if name:
            mf = cfg.resolve(name)
            sections[f"{key}_sha256"] = hashlib.sha256(mf.read_bytes()).hexdigest() if mf.is_file() else None
    return sections
