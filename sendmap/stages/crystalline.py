"""The one definition of "crystalline" the stages share: a position whose brightest Bragg-disk-sized spot in the
crystal bands (Li, Cu) is more significant than the dose-scaled crystal threshold. Calibrate leaves such frames out
of the ellipse fit, peaks out of the denoising components (with the spots' indexing where there is one: LiF
crystallites are not a grain), and classify's first rule starts from it (adding the indexing, the Bragg fraction
and the neighbours). Also the dose-scaled LiF-spot thresholds.
"""
from __future__ import annotations

import math

import numpy as np

from ..config import Config
from ..engine.context import Context
from ..science.classify import band_max, bragg_disk_above
from .dose import dose_record, measured_counts


CRYSTAL_THRESHOLD_KEYS = ("crystal_spot_z", "crystal_spot_z_electrons", "crystal_bands")
"""classify.definitions keys that decide which frames are crystalline for calibrate (ellipse) and peaks (denoising)."""


def crystal_spot_threshold(cfg: Config, total_counts: np.ndarray, measured: dict | None = None) -> float:
    """The crystal threshold (σ) for this dataset's dose: ``crystal_spot_z`` × sqrt(electrons per stored pattern /
    ``crystal_spot_z_electrons``). A Bragg disk's significance grows as the square root of the counts, so a
    fixed threshold set at 2 × 10⁴ e⁻ misses crystals at 5 × 10³ (synthetic Li/Cu scans: crystals score ≥ 88 σ
    at 2 × 10⁴ and ≥ 20 σ at 5 × 10³, SEI with LiF spots ≤ 26 and ≤ 17)."""
    d = cfg.classify.definitions
    if not d.crystal_spot_z_electrons:
        return float(d.crystal_spot_z)
    from ..science.dose import MIN_CRYSTAL_Z

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
    from ..science.dose import MIN_CRYSTAL_Z

    epp = dose_record(cfg, total_counts, measured)["electrons_per_stored_pattern"]
    if epp is None:
        return float(d.lif_spot_z), float(d.lif_spot_z_noise)
    f = (max(epp, 1.0) / d.lif_spot_z_electrons) ** LIF_DOSE_EXPONENT
    sure = max(d.lif_spot_z * f, min(MIN_CRYSTAL_Z, float(d.lif_spot_z)))
    return float(sure), float(min(d.lif_spot_z_noise * f, 0.9 * sure))


def crystal_rows(ctx: Context) -> np.ndarray:
    """(Ry, Rx) bool: positions that look like a Li/Cu grain, kept out of the denoising components: a Bragg disk
    in the crystal bands above the dose-scaled crystal threshold, from the profile stage's ``features/spot_z``
    (the classify stage's first rule, without the neighbour condition) and, where the profile stage indexed the
    spots (``features/spot_category``; ``classify.definitions.indexing``), the same indexing evidence as the
    classify stage's crystal rule (:func:`sendmap.science.classify.grain_evidence`; a Li/Cu-ring spot that
    ``grain_shared_neighbours`` neighbours share counts with or without an SRO peak): not where the spots index as LiF crystallites in an amorphous matrix and the strongest
    crystal-band spot is LiF's, but wherever they index as a Li/Cu grain. Without it, LiF (200) at 0.497 1/Å (in
    the Cu (111) band) kept the LiF-rich SEI Type 2 positions out of the components, which then had no profile
    like theirs: their denoised SRO maximum moved by +0.035 1/Å (5 × 10³ e⁻, matrix:lif-dominant, development
    seed 600)."""
    from ..science.classify import grain_evidence

    cfg, g = ctx.cfg, ctx.group
    q = np.asarray(g["profiles/q"])
    crystal_z = band_max(np.asarray(g["features/spot_z"]), q, cfg.classify.definitions.crystal_bands)
    thr = crystal_spot_threshold(cfg, np.asarray(g["ingest/total_counts"]), measured_counts(g))
    d = cfg.classify.definitions
    if d.indexing and "features/spot_category" in g and "features/lif_indexed_z" in g:
        shared = None
        if d.grain_shared_neighbours > 0 and "spots/shared_neighbours" in g and "spots/grain_ring" in g:
            from ..science.spot_context import shared_counts

            shared = shared_counts(np.asarray(g["spots/position"]), np.asarray(g["spots/shared_neighbours"]),
                                   np.asarray(g["spots/grain_ring"]), crystal_z.shape,
                                   d.grain_shared_neighbours)["n_shared_grain"] > 0
        # (a shared Li/Cu spot counts whether or not the pattern has an SRO peak, which is not measured yet: an
        # off-axis grain's row, and the few amorphous positions beside a grain, stay out of the components)
        return grain_evidence(crystal_z, thr, np.asarray(g["features/spot_category"]),
                              np.asarray(g["features/lif_indexed_z"]), shared)
    return bragg_disk_above(crystal_z, thr)


def crystal_key_sections(cfg: Config) -> dict:
    """The ``classify.definitions`` keys (:data:`CRYSTAL_THRESHOLD_KEYS`) of a stage key that depends on which
    positions are crystalline."""
    return {k: v for k, v in cfg.section("classify")["definitions"].items() if k in CRYSTAL_THRESHOLD_KEYS}


def grain_disk_refit(ctx: Context, q, y, s, operator, res: dict, crystal: np.ndarray, fit_args, corr, flat_z,
                     half_width: tuple[float, float], degree: int) -> int:
    """``peaks.grain_disk_reach_nm``: refit, in place in ``res``, the positions beside a grain-like one with that
    grain's listed Li/Cu disks fitted away where they show (:func:`sendmap.science.boundaries.refit_beside_grains`).
    Returns the number of positions refitted."""
    from ..science.boundaries import grain_reflections_beside, refit_beside_grains

    g, step = ctx.group, float(ctx.cfg.calibration.scan_step_nm or 0.0)
    radius = float(g["features/spot_category"].attrs.get("disk_radius_q", 0.0)) if "features/spot_category" in g else 0
    if step <= 0 or radius <= 0 or "spots/grain_ring" not in g or "spots/position" not in g:
        return 0
    reach = int(np.floor(ctx.cfg.peaks.grain_disk_reach_nm / step + 1e-9))
    beside = grain_reflections_beside(np.asarray(g["spots/position"]), np.asarray(g["spots/grain_ring"]),
                                      np.asarray(g["spots/values"])[:, 0], crystal, reach, float(q[1] - q[0]))
    return refit_beside_grains(q, y, s, operator, res, beside, radius, fit_args, corr, flat_z, half_width, degree)


def grain_edge_profiles(ctx: Context, iqn: np.ndarray, sem: np.ndarray, crystal: np.ndarray,
                        q_max: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``peaks.grain_edge_mask_nm``: (rows (M,) flat positions, I·Q^n (M, nq), its error (M, nq)) replacing the
    profile and its error (``iqn``, ``sem`` (Ry, Rx, nq), as ``profiles/iqn`` and ``profiles/iqn_sem`` store them;
    not changed) of every non-crystalline position within that distance of
    a grain-like one (``crystal``) by its mean over the polar cells that the neighbouring grain's listed Li/Cu disks
    reaching below the position's ``q_max`` ((Ry·Rx,) 1/Å; NaN: none), and their Friedel mates, do not cover
    (:func:`sendmap.science.grain_edge.neighbour_grain_spots`, :func:`sendmap.science.spot_mask.masked_profile`): the
    frames of those positions are read again and their polar sums remade with the profile stage's geometry (none
    where the store keeps no frames, spot lists or scan step); none either unless the disks show at the scan's edges:
    the sign test :func:`sendmap.science.grain_edge.disks_at_edges` over the positions one step from a grain, each
    one's excess under the mask against that under the same disks turned (:func:`~sendmap.science.grain_edge.
    control_spots`), 1 % false alarms."""
    from ..engine.data import open_stored
    from ..science.grain_edge import (EDGE_DISK_Z, control_spots, disk_excess, disks_at_edges,
                                      masked_frame_profiles, neighbour_grain_spots, one_step_from)
    from ..science.polar_tables import PolarTables
    from ..science.spot_mask import PIXEL_HALF_DIAGONAL
    from .profiles import profile_error_terms, profile_geometry

    cfg, g = ctx.cfg, ctx.group
    none = (np.zeros(0, np.int64), np.zeros((0, iqn.shape[2])), np.zeros((0, iqn.shape[2])))
    step = float(cfg.calibration.scan_step_nm or 0.0)
    if step <= 0 or "spots/grain_ring" not in g or "spots/position" not in g:
        return none
    try:
        stored = open_stored(ctx.store_path)
    except Exception:  # no frames kept (e.g. a store copied without them): the stored profiles stay
        ctx.log("[sendmap] peaks: grain_edge_mask_nm set but the store keeps no frames; profiles kept")
        return none
    calib = dict(g.attrs["calibration"])
    r_q = float(calib["disk_radius_px"]) * float(calib["q_pixel_size"])
    reach = int(np.floor(cfg.peaks.grain_edge_mask_nm / step + 1e-9))
    q_max = np.asarray(q_max, dtype=float).ravel()
    if not np.isfinite(q_max).any():
        return none
    spots = neighbour_grain_spots(np.asarray(g["spots/position"]), np.asarray(g["spots/values"]),
                                  np.asarray(g["spots/grain_ring"]), crystal, reach, r_q, float(np.nanmax(q_max)))
    spots = {p: v[v[:, 0] - r_q < q_max[p]] for p, v in spots.items() if np.isfinite(q_max[p])}
    spots = {p: v for p, v in spots.items() if len(v)}
    if not spots:
        return none
    origin = np.asarray(g["calibration/origin"])
    mask = np.asarray(g["calibration/mask"])
    ry, rx, qy, qx = stored.shape
    geom = profile_geometry(cfg, calib, (qy, qx), origin)
    if geom.nq != iqn.shape[2]:
        return none
    finite = origin.reshape(-1, 2)[np.all(np.isfinite(origin.reshape(-1, 2)), axis=1)]
    tables = PolarTables(geom, cfg.profiles.centre_step_px, (qy, qx),
                         np.stack([finite.min(axis=0), finite.max(axis=0)], axis=1) if len(finite) else None)
    q = geom.q_centres
    qn = q ** cfg.profiles.n
    speckle_g, _ = profile_error_terms(q, geom.n_phi, r_q, geom.bin_width, cfg.profiles.error_model)
    margin = float(geom.q_pixel_size * PIXEL_HALF_DIAGONAL)
    todo = np.array(sorted(spots), np.int64)
    rows, ys, ss, ctrl = [], [], [], []
    mean_full = lambda sel: iqn.reshape(-1, iqn.shape[2])[sel]  # noqa: E731 (the stored, unmasked profiles)
    sem_full = lambda sel: sem.reshape(-1, iqn.shape[2])[sel]  # noqa: E731
    for y0 in range(0, ry, 8):  # a few rows of frames at a time (the ingest blocks are whole rows of 8)
        sel = todo[(todo // rx >= y0) & (todo // rx < min(ry, y0 + 8))]
        sel = sel[np.all(np.isfinite(origin.reshape(-1, 2)[sel]), axis=1)]
        if sel.size == 0:
            continue
        y1 = min(ry, y0 + 8)
        frames = stored.read_dense((y0, y1, 0, rx)).reshape(-1, qy, qx)[sel - y0 * rx]
        centres = origin.reshape(-1, 2)[sel]
        mm, ms = masked_frame_profiles(frames, centres, mask, tables, r_q, [spots[p] for p in sel.tolist()], margin,
                                       speckle_g)
        cm, cs = masked_frame_profiles(frames, centres, mask, tables, r_q,  # the control: the same disks turned
                                       [control_spots(spots[p]) for p in sel.tolist()], margin, speckle_g)
        rows.append(sel)  # (float32, as the profile stage stores them)
        ys.append((mm * qn).astype(np.float32).astype(np.float64))
        ss.append((ms * qn).astype(np.float32).astype(np.float64))
        ctrl.append(disk_excess(mean_full(sel), sem_full(sel), cm * qn, cs * qn))
    if not rows:
        return none
    rows, ys, ss = np.concatenate(rows), np.concatenate(ys), np.concatenate(ss)
    # the disks at the scan's layer edges at all? (a sign test pooling the edge positions, not one frame's noise:
    # without inclined boundaries the mask would only add noise to every position beside a grain)
    excess = disk_excess(mean_full(rows), sem_full(rows), ys, ss)
    # tested at the positions one step from a grain, where a minority's share is largest (the share falls with the
    # distance to the boundary: 0.02-0.17 in the matrix); the mask, if they show, at every position within reach
    one = one_step_from(crystal).ravel()[rows]
    present, z = disks_at_edges((excess - np.concatenate(ctrl))[one])
    ctx.stage_info["grain_edge_disk_z"] = round(z, 2)
    verdict = "masked" if present else f"<= {EDGE_DISK_Z}: stored profiles kept"
    ctx.log(f"[sendmap] peaks: grain_edge_mask_nm: the neighbouring grains' disks at the {rows.size} edge positions "
            f"(tested at the {int(one.sum())} one step from a grain): sign test z = {z:.2f} ({verdict})")
    if not present:
        return none
    return rows, ys, ss
