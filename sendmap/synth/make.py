"""``sendmap synth``: write a synthetic SEND dataset with its ground truth and a ready config.

Data flow: ``SynthModel`` (phantom + descan + per-class radial models + probe-disk convolution matrix) →
one scan row at a time: noise-free expected counts (``patterns.render_pattern``) → Poisson → detector
defects → integer frames streamed into the writer (``sendmap.io.mib.write_mib`` or an ``.npy`` memmap), so
memory stays bounded by one scan row whatever the scan size.

Ground truth per amorphous position: the maximum of the noise-free, probe-convolved 1-D azimuthal mean
I(Q)·Q^n (fine radial grid, before pixelation, without ellipse) inside the peak window, parabolically
refined. Its ring centre is chosen (per class, a monotone lookup ring centre → maximum) so that the maximum
lands on the position's target; the truth written is the exactly computed maximum, not the target.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sendmap import CLASS_NAMES, __version__
from sendmap.errors import SendmapInputError
from sendmap.physics import electron_wavelength_angstrom, probe_radius_inv_angstrom

from . import patterns as P
from .phantom import (
    CLASS_INDEX,
    DEFAULT_LAYERS_NM,
    LAYER_NAMES,
    PEAK_RANGES,
    class_counts,
    defect_pixels,
    make_descan,
    make_phantom,
    mean_layer_width_nm,
)

# ----------------------------------------------------------------------------------------------------
# Physical model parameters (all Q in 1/Å)
# ----------------------------------------------------------------------------------------------------

BACKGROUND_Q0 = 0.10
"""Half-width of the Lorentzian diffuse background 1/(1 + (Q/q0)²), 1/Å. With q0 = 0.1 the background
falls ×10 from the central disk edge to Q ≈ 0.3 (a light-element specimen whose electron scattering factor
and inelastic diffuse scattering fall steeply), and its I·Q decreases across the whole [0.22, 0.42] window,
shifting the I·Q maximum below the ring centre for n = 0 and only slightly for n = 1."""


@dataclass(frozen=True)
class AmorphousModel:
    """Isotropic scattering of one amorphous class, before probe convolution.

    f(Q) = frac_background·L(Q) + frac_ring1·G(Q; c, ring1_fwhm) + frac_ring2·G(Q; ring2_ratio·c, ring2_fwhm),
    each term normalised to unit intensity over |Q| ≤ Q_REF, so the fractions are shares of the scattered
    isotropic electrons. c (the first ring centre) is set per position from the peak target.
    """

    ring1_fwhm: float
    ring2_ratio: float
    ring2_fwhm: float
    frac_background: float
    frac_ring1: float
    frac_ring2: float


AMORPHOUS_MODELS = {
    # First SRO ring FWHM 0.08–0.09 1/Å (the brief's 0.06–0.1; a structural coherence length
    # ~1/(π·FWHM) ≈ 4 Å typical of amorphous inorganic solids and liquids). Second ring: ≈ 0.6 for Type 1
    # (SCIENCE.md), ≈ 0.5–0.53 and weaker for Type 2 and the electrolyte; the ratio second/first peak
    # 1.75–1.8 is typical of amorphous solids and liquids. The background carries ~3/4 of the isotropic
    # scattered electrons so the first ring stands ~1.5–2× above it at its centre and the I·Q peak stands
    # out by ~1.5× over its low-Q shoulder, as in published SEND I·Q profiles.
    "sei_type1": AmorphousModel(ring1_fwhm=0.080, ring2_ratio=1.80, ring2_fwhm=0.12,
                                frac_background=0.76, frac_ring1=0.16, frac_ring2=0.08),
    "sei_type2": AmorphousModel(ring1_fwhm=0.085, ring2_ratio=1.75, ring2_fwhm=0.12,
                                frac_background=0.79, frac_ring1=0.16, frac_ring2=0.05),
    "electrolyte": AmorphousModel(ring1_fwhm=0.090, ring2_ratio=1.80, ring2_fwhm=0.13,
                                  frac_background=0.79, frac_ring1=0.16, frac_ring2=0.05),
}

CRYSTAL_BRAGG_FRACTION = 0.70
"""Share of the scattered electrons (those outside the central disk) in the Bragg disks of a Li/Cu grain
in a low-index zone axis; the rest is the diffuse background (no SRO ring). Strong: each first-order disk
holds ~4–15 % of the scattered electrons."""

LIF_FRACTION_PER_CRYSTAL = 0.10
"""Share of a Type 2 pattern's scattered electrons that one LiF nanocrystal would put in all its zero-order
Laue zone reflections up to LIF_Q_MAX if every one were excited; only some are (LIF_EXCITATION_PROB)."""

LIF_Q_MAX = 0.75
"""1/Å. Nanocrystals a few nm across diffract in low orders only: {111} 0.430, {200} 0.497, {220} 0.702."""

LIF_EXCITATION_PROB = 0.5
"""Probability that a Friedel pair ±g of a nanocrystal is excited (the crystal is slightly off its zone
axis, so only some reflections satisfy the Bragg condition); at least one pair always is. An excited pair's
intensity is scaled by a uniform factor in [0.5, 1] (excitation error)."""

MAX_LIF_CRYSTALS = 3
"""1–3 LiF nanocrystals per Type 2 position (new at every position)."""

LOOKUP_MARGIN = 0.08
"""1/Å: the ring-centre → maximum lookup is searched over each class's target range ± this (the I·Q^n
maximum sits up to a few hundredths of 1/Å away from the ring centre, depending on n)."""

_STREAM_GEOMETRY, _STREAM_STRUCTURE, _STREAM_NOISE, _STREAM_DEFECTS, _STREAM_SPECKLE = 0, 1, 2, 3, 4
"""Independent random streams: default_rng([seed, stream(, ry)]): every row is reproducible on its own (the
speckle has its own stream, so a dataset without speckle is the same, count for count, as before it existed)."""

DTYPE_MAX = {"u1": 255, "u2": 65535, "u4": 2**32 - 1}


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------


@dataclass
class SynthParams:
    """All scalar inputs of a synthetic dataset (units in the names)."""

    scan_shape: tuple[int, int] = (60, 90)
    detector_shape: tuple[int, int] = (128, 128)
    q_pixel_size: float = 0.0125
    beam_energy_kv: float = 200.0
    convergence_mrad: float = 2.0
    electrons_per_pattern: float = 2e4
    central_fraction: float = 0.75
    ellipse_ratio: float = 1.015
    ellipse_angle_deg: float = 30.0
    drift_px: tuple[float, float] = (3.0, -2.0)
    drift_slow_px: tuple[float, float] = (1.0, 1.5)
    step_nm: float = 4.0
    n: int = 1
    window: tuple[float, float] = (0.22, 0.42)
    seed: int = 0
    n_hot: int = 5
    n_dead: int = 5
    supersample: int = 3
    waviness_nm: float = 3.0
    layers_nm: dict | None = None
    n_cu_grains: int | None = None
    dtype: str = "u2"
    beam_stop: bool = False
    beam_stop_width_px: float | None = None
    beam_stop_angle_deg: float = 90.0
    beam_stop_tip_radius_px: float | None = None
    aperture_radius_px: float | None = None
    speckle_m: int = 0  # partially developed speckle of M independent volumes (normalised variance 1/M); 0: none

    def validate(self) -> None:
        def bad(key, msg):
            raise SendmapInputError(f"sendmap synth: {key} {msg}")

        for key, value in asdict(self).items():  # no inf/nan anywhere (each check below reads as if finite)
            values = value if isinstance(value, (tuple, list)) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                bad(key, f"must be a finite number, got {value}")
        # the config written beside the data must load: the same bounds as calibration.* in sendmap.config
        from ..config import CalibrationConfig

        for key, cfg_key, value in (("step_nm", "scan_step_nm", self.step_nm),
                                    ("beam_energy_kv", "beam_energy_kv", self.beam_energy_kv),
                                    ("convergence_mrad", "convergence_mrad", self.convergence_mrad)):
            meta = CalibrationConfig.model_fields[cfg_key].metadata
            lo = max([getattr(m, "ge", None) or getattr(m, "gt", None) or 0.0 for m in meta] + [0.0])
            hi = min([getattr(m, "le", None) or math.inf for m in meta] + [math.inf])
            if not (lo <= value <= hi and value > 0):
                bad(key, f"must lie in [{lo:g}, {hi:g}] (calibration.{cfg_key} of the config it writes), got {value}")
        if len(self.scan_shape) != 2 or min(self.scan_shape) < 1:
            bad("scan_shape", f"must be two positive integers, got {self.scan_shape}")
        if len(self.detector_shape) != 2 or min(self.detector_shape) < 16:
            bad("detector_shape", f"must be two integers >= 16, got {self.detector_shape}")
        if not self.q_pixel_size > 0:
            bad("q_pixel_size", f"must be positive (1/Å per pixel), got {self.q_pixel_size}")
        if not self.electrons_per_pattern > 0:
            bad("electrons_per_pattern", f"must be positive, got {self.electrons_per_pattern}")
        if not 0.0 < self.central_fraction < 1.0:
            bad("central_fraction", f"must be in (0, 1), got {self.central_fraction}")
        if not self.ellipse_ratio >= 1.0:
            bad("ellipse ratio", f"must be >= 1 (major/minor), got {self.ellipse_ratio}")
        if not self.step_nm > 0:
            bad("step_nm", f"must be positive, got {self.step_nm}")
        if not (0 <= self.n <= 4 and int(self.n) == self.n):
            bad("n", f"must be an integer 0..4, got {self.n}")
        if not (0 < self.window[0] < self.window[1]):
            bad("window", f"must be [low, high] with 0 < low < high, got {self.window}")
        if self.supersample < 1:
            bad("supersample", f"must be >= 1, got {self.supersample}")
        if self.n_hot < 0 or self.n_dead < 0:
            bad("n_hot/n_dead", "must be >= 0")
        if self.dtype not in DTYPE_MAX:
            bad("dtype", f"must be one of {sorted(DTYPE_MAX)}, got {self.dtype!r}")
        if self.beam_stop_width_px is not None and not self.beam_stop_width_px > 0:
            bad("beam_stop_width_px", f"must be positive, got {self.beam_stop_width_px}")
        if self.beam_stop_tip_radius_px is not None and not self.beam_stop_tip_radius_px >= 0:
            bad("beam_stop_tip_radius_px", f"must be >= 0, got {self.beam_stop_tip_radius_px}")
        if self.aperture_radius_px is not None and not self.aperture_radius_px > 0:
            bad("aperture_radius_px", f"must be positive, got {self.aperture_radius_px}")
        if not (int(self.speckle_m) == self.speckle_m and self.speckle_m >= 0):
            bad("speckle (M)", f"must be a whole number >= 0 (0: no speckle), got {self.speckle_m}")


class SynthModel:
    """Everything needed to generate any scan row on demand, deterministically from ``params.seed``.

    Attributes (public, read-only by convention): ``params``, ``phantom``, ``descan``, ``centres``
    (Ry, Rx, 2), ``probe_radius`` (1/Å), ``q`` (fine radial grid), ``K`` (disk-convolution matrix),
    ``background`` (unit-area background on ``q``), ``grain_spots`` (per grain (k, 3) [q_y, q_x, weight]),
    ``hot``/``hot_values``/``dead`` (defect pixels), ``lookups`` (class → (ring centres, maxima)).
    """

    def __init__(self, params: SynthParams):
        params.validate()
        self.params = p = params
        ry, rx = p.scan_shape
        rng = np.random.default_rng([p.seed, _STREAM_GEOMETRY])
        self.phantom = make_phantom(p.scan_shape, p.step_nm, rng, layers_nm=p.layers_nm,
                                    waviness_nm=p.waviness_nm, n_cu_grains=p.n_cu_grains)
        self.descan = make_descan(p.scan_shape, p.detector_shape, p.drift_px, p.drift_slow_px, rng)
        self.centres = self.descan.centres(p.scan_shape)
        self.wavelength = electron_wavelength_angstrom(p.beam_energy_kv)
        self.probe_radius = probe_radius_inv_angstrom(p.convergence_mrad, p.beam_energy_kv)
        r_px = self.probe_radius / p.q_pixel_size
        corners = self.centres[[0, 0, -1, -1], [0, -1, 0, -1]]
        if (corners.min() < r_px * math.sqrt(p.ellipse_ratio) + 1
                or np.any(corners.max(0) > np.array(p.detector_shape) - 2 - r_px * math.sqrt(p.ellipse_ratio))):
            raise SendmapInputError(
                f"sendmap synth: the central disk (radius {r_px:.1f} px) with drift {p.drift_px}/{p.drift_slow_px} "
                f"does not fit on a {p.detector_shape} detector")
        self.reach = P.detector_q_reach(p.detector_shape, corners, p.q_pixel_size, p.ellipse_ratio)
        q_end = max(self.reach, p.window[1], P.Q_REF) + self.probe_radius + 0.02
        self.q = P.fine_q_grid(q_end)
        self.dq = float(self.q[1] - self.q[0])
        self.K = P.disk_convolution_matrix(self.q, self.probe_radius)
        self.qn = self.q ** p.n
        self.background = P.unit_area(self.q, P.lorentzian(self.q, BACKGROUND_Q0))
        self.K_background = self.K @ self.background
        spot_qmax = self.reach + self.probe_radius
        self.grain_spots = [self._grain_spots(g, spot_qmax) for g in self.phantom.grains]
        self._grain_F_cache: dict[int, np.ndarray] = {}
        self._lif_zones = []
        for z in P.ZONE_AXES:
            hkl, g2 = P.cubic_zone_g_vectors(*P.PHASES["lif"], z, LIF_Q_MAX)
            f2 = np.array([P.kinematic_f2("lif", h) for h in hkl])
            self._lif_zones.append((hkl, g2, f2 / f2.sum()))
        self.lookups = {c: self._build_lookup(c) for c in PEAK_RANGES}
        hot_rng = np.random.default_rng([p.seed, _STREAM_DEFECTS])
        self.hot, self.hot_values, self.dead = defect_pixels(
            p.detector_shape, self.centres, r_px * math.sqrt(p.ellipse_ratio) + 3.0, p.n_hot, p.n_dead, hot_rng,
            hot_counts=(min(200, DTYPE_MAX[p.dtype]), min(1000, DTYPE_MAX[p.dtype])))
        self.n_saturated = 0
        self._init_shadows(r_px)

    def _init_shadows(self, r_px: float) -> None:
        """Beam stop and aperture shadows, fixed on the detector (``params.beam_stop``,
        ``params.aperture_radius_px``): ``transmission`` (Qy, Qx) in [0, 1] multiplies the expected counts
        before Poisson noise, or None (no shadow: frames identical to a dataset without the options);
        ``beam_stop``/``aperture`` hold the geometry (dicts, None when off) and ``*_mask`` the truly
        shadowed pixels (transmission < 1)."""
        p = self.params
        self.transmission = None
        self.beam_stop = self.aperture = None
        self.beam_stop_mask = self.aperture_mask = None
        if not p.beam_stop and p.aperture_radius_px is None:
            return
        t = np.ones(p.detector_shape)
        if p.beam_stop:
            c = self.centres.reshape(-1, 2)
            tip = c.mean(axis=0)
            # the tip hides the central disk at every position: disk radius (ellipse-lengthened) + the
            # spread of the descan + 1 px
            cover = r_px * math.sqrt(p.ellipse_ratio) + float(np.hypot(*(c - tip).T).max()) + 1.0
            tip_r = float(p.beam_stop_tip_radius_px) if p.beam_stop_tip_radius_px is not None else cover
            width = float(p.beam_stop_width_px) if p.beam_stop_width_px is not None else 2.0 * tip_r
            bs = P.beam_stop_transmission(p.detector_shape, tip, tip_r, width, p.beam_stop_angle_deg)
            self.beam_stop_mask = bs < 1.0
            self.beam_stop = {"tip_yx": tip.tolist(), "tip_radius_px": tip_r, "width_px": width,
                              "angle_deg": float(p.beam_stop_angle_deg), "disk_cover_radius_px": cover,
                              "covers_central_disk": bool(tip_r >= cover),
                              "n_pixels": int(self.beam_stop_mask.sum())}
            t *= bs
        if p.aperture_radius_px is not None:
            centre = ((p.detector_shape[0] - 1) / 2.0, (p.detector_shape[1] - 1) / 2.0)
            ap = P.aperture_transmission(p.detector_shape, centre, float(p.aperture_radius_px))
            self.aperture_mask = ap < 1.0
            self.aperture = {"centre_yx": list(centre), "radius_px": float(p.aperture_radius_px),
                             "n_pixels": int(self.aperture_mask.sum())}
            t *= ap
        self.transmission = t

    # -- per-class physics --------------------------------------------------------------------------

    def _grain_spots(self, grain, q_max: float) -> np.ndarray:
        """Bragg disks of a grain: (k, 3) [q_y, q_x, weight]; weights ∝ kinematic |F|², summing to
        CRYSTAL_BRAGG_FRACTION over all ZOLZ reflections up to max(Q_REF, q_max) (those beyond the
        detector's reach are then dropped)."""
        lattice, a = P.PHASES[grain.phase]
        hkl, g2 = P.cubic_zone_g_vectors(lattice, a, grain.zone, max(P.Q_REF, q_max))
        f2 = np.array([P.kinematic_f2(grain.phase, h) for h in hkl])
        w = CRYSTAL_BRAGG_FRACTION * f2 / f2.sum()
        gyx = P.rotate_2d(g2, grain.rotation_deg)
        keep = np.hypot(gyx[:, 0], gyx[:, 1]) <= q_max
        return np.column_stack([gyx[keep], w[keep]])

    def _ring_columns(self, model: AmorphousModel, centres: np.ndarray) -> np.ndarray:
        """Unit-area isotropic scattering (nq, m) of an amorphous class for ring-1 centres (m,)."""
        q = self.q[:, None]
        c = np.asarray(centres, dtype=float)[None, :]
        r1 = P.gaussian_ring(q, c, model.ring1_fwhm)
        r2 = P.gaussian_ring(q, model.ring2_ratio * c, model.ring2_fwhm)
        r1 = r1 / P.radial_integral(self.q, r1, P.Q_REF)
        r2 = r2 / P.radial_integral(self.q, r2, P.Q_REF)
        return (model.frac_background * self.background[:, None] + model.frac_ring1 * r1
                + model.frac_ring2 * r2)

    def _build_lookup(self, cname: str) -> tuple[np.ndarray, np.ndarray]:
        """Ring-1 centres and the resulting I·Q^n maxima (both increasing) covering the class's target range."""
        lo, hi = PEAK_RANGES[cname]
        cs = np.arange(max(lo - LOOKUP_MARGIN, 2 * self.probe_radius), hi + LOOKUP_MARGIN + 1e-9, 0.0005)
        F = self.K @ self._ring_columns(AMORPHOUS_MODELS[cname], cs)
        peaks = np.array([P.peak_position(self.q, F[:, j] * self.qn, self.params.window)[0]
                          for j in range(cs.size)])
        need = (peaks >= lo - 0.002) & (peaks <= hi + 0.002)
        if need.any():
            i0, i1 = np.nonzero(need)[0][[0, -1]]
            i0, i1 = max(i0 - 1, 0), min(i1 + 1, cs.size - 1)
            cs, peaks = cs[i0:i1 + 1], peaks[i0:i1 + 1]
        if not need.any() or peaks[0] > lo or peaks[-1] < hi:
            raise SendmapInputError(
                f"sendmap synth: {cname} peak targets {lo}-{hi} 1/Å cannot be reached with n = {self.params.n} "
                f"(the I·Q^n maximum in the window {self.params.window} does not reach them); choose another n")
        if not np.all(np.diff(peaks) > 0):
            raise SendmapInputError(
                f"sendmap synth: with n = {self.params.n} the {cname} first SRO ring is not a maximum of I·Q^n that "
                f"follows its ring centre inside the window {self.params.window} (a shoulder on the falling "
                f"background); choose another n (n = 1 as in the study)")
        return cs, peaks

    def ring_centre_for(self, cname: str, target_q: np.ndarray) -> np.ndarray:
        """Ring-1 centre (1/Å) whose I·Q^n maximum is ``target_q`` (monotone lookup, linear interpolation)."""
        cs, peaks = self.lookups[cname]
        return np.interp(target_q, peaks, cs)

    def _lif_spots(self, rng: np.random.Generator, n_cryst: int) -> np.ndarray:
        """Disks of ``n_cryst`` LiF nanocrystals, random zone axis and in-plane azimuth each: (k, 3)."""
        out = []
        for _ in range(n_cryst):
            hkl, g2, w = self._lif_zones[rng.integers(len(self._lif_zones))]
            gyx = P.rotate_2d(g2, rng.uniform(0.0, 360.0))
            # Friedel pairs: key each reflection by its canonical sign (first non-zero index positive)
            sign = np.sign(hkl[np.arange(len(hkl)), np.argmax(hkl != 0, axis=1)])
            canon = hkl * sign[:, None]
            keys, inv = np.unique(canon, axis=0, return_inverse=True)
            inv = inv.ravel()
            excited = rng.random(len(keys)) < LIF_EXCITATION_PROB
            if not excited.any():
                excited[rng.integers(len(keys))] = True
            factor = rng.uniform(0.5, 1.0, len(keys))
            sel = excited[inv]
            out.append(np.column_stack([gyx[sel], LIF_FRACTION_PER_CRYSTAL * w[sel] * factor[inv][sel]]))
        return np.vstack(out) if out else np.zeros((0, 3))

    # -- rows -----------------------------------------------------------------------------------------

    def row_structure(self, ry: int) -> dict:
        """Noise-free content of scan row ``ry`` (deterministic from the seed, independent of other rows).

        Returns dict with ``F_iso`` (nq, Rx): the probe-convolved isotropic scattering (K @ f_iso, unit
        scale: the weights of the fractions above), ``F_tot`` (adds the azimuthal average of the disks:
        the full noise-free scattered azimuthal mean, before pixelation, no ellipse), ``spots`` (list of
        (k, 3) [q_y, q_x, weight]), ``ring_centre`` (Rx,), ``n_lif`` (Rx,), ``peak_q`` (Rx,) the truth
        (NaN for crystals) and ``peak_iqn`` (Rx,) the I·Q^n value there.
        """
        p, ph = self.params, self.phantom
        rx_n = p.scan_shape[1]
        rng = np.random.default_rng([p.seed, _STREAM_STRUCTURE, ry])
        cls = ph.class_map[ry]
        F_iso = np.empty((self.q.size, rx_n))
        F_spot = np.zeros((self.q.size, rx_n))
        ring_centre = np.full(rx_n, np.nan)
        n_lif = np.zeros(rx_n, dtype=np.int8)
        spots: list[np.ndarray] = [np.zeros((0, 3))] * rx_n
        lif_scale = np.ones(rx_n)
        for j in np.nonzero(cls == CLASS_INDEX["sei_type2"])[0]:
            n_lif[j] = rng.integers(1, MAX_LIF_CRYSTALS + 1)
            spots[j] = self._lif_spots(rng, int(n_lif[j]))
            # the nanocrystals' share comes out of the isotropic scattering
            lif_scale[j] = max(0.0, 1.0 - spots[j][:, 2].sum())
        for cname in PEAK_RANGES:
            cols = np.nonzero(cls == CLASS_INDEX[cname])[0]
            if cols.size:
                c = self.ring_centre_for(cname, ph.target_peak_q[ry, cols])
                ring_centre[cols] = c
                F_iso[:, cols] = self.K @ (self._ring_columns(AMORPHOUS_MODELS[cname], c) * lif_scale[cols])
        t2 = np.nonzero(cls == CLASS_INDEX["sei_type2"])[0]
        if t2.size:
            f_spot = np.column_stack([P.delta_rings(self.q, np.hypot(spots[j][:, 0], spots[j][:, 1]), spots[j][:, 2])
                                      for j in t2])
            F_spot[:, t2] = self.K @ f_spot
        for j in np.nonzero(cls == CLASS_INDEX["crystal"])[0]:
            g = ph.grain_map[ry, j]
            F_iso[:, j] = (1.0 - CRYSTAL_BRAGG_FRACTION) * self.K_background
            spots[j] = self.grain_spots[g]
            F_spot[:, j] = self._grain_F_spot(g)
        F_tot = F_iso + F_spot
        peak_q = np.full(rx_n, np.nan)
        peak_v = np.full(rx_n, np.nan)
        for j in np.nonzero(cls != CLASS_INDEX["crystal"])[0]:
            peak_q[j], peak_v[j] = P.peak_position(self.q, F_tot[:, j] * self.qn, p.window)
        return {"F_iso": F_iso, "F_tot": F_tot, "spots": spots, "ring_centre": ring_centre,
                "n_lif": n_lif, "peak_q": peak_q, "peak_iqn": peak_v}

    def _grain_F_spot(self, g: int) -> np.ndarray:
        """Probe-convolved azimuthal average of grain g's Bragg disks (cached)."""
        if g not in self._grain_F_cache:
            sp = self.grain_spots[g]
            self._grain_F_cache[g] = self.K @ P.delta_rings(self.q, np.hypot(sp[:, 0], sp[:, 1]), sp[:, 2])
        return self._grain_F_cache[g]

    def speckle_rng(self, ry: int) -> np.random.Generator | None:
        """The speckle stream of row ``ry`` ([seed, speckle, ry]), or None without speckle."""
        p = self.params
        return np.random.default_rng([p.seed, _STREAM_SPECKLE, ry]) if p.speckle_m else None

    def speckle(self, ry: int, j: int, rng: np.random.Generator | None) -> np.ndarray | None:
        """The next speckle field of row ``ry`` (position ``j``) from its stream (``patterns.speckle_field``):
        M = ``speckle_m`` independent volumes, grains the size of the probe disk, centrosymmetric about the
        pattern's centre; independent between positions. None without speckle."""
        if rng is None:
            return None
        p = self.params
        return P.speckle_field(p.detector_shape, self.probe_radius / p.q_pixel_size, p.speckle_m, rng,
                               self.centres[ry, j])

    def _render(self, ry: int, j: int, st: dict, speckle: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        p = self.params
        img, scale = P.render_pattern(
            p.detector_shape, self.centres[ry, j], p.q_pixel_size, probe_radius=self.probe_radius,
            radial_profile=st["F_iso"][:, j], spots=st["spots"][j], central_fraction=p.central_fraction,
            electrons=p.electrons_per_pattern, dq=self.dq, ratio=p.ellipse_ratio,
            angle_deg=p.ellipse_angle_deg, supersample=p.supersample, return_scale=True, speckle=speckle)
        if self.transmission is not None:  # beam stop / aperture shadow (the scale keeps its unshadowed meaning)
            img *= self.transmission
        return img, scale

    def expected_row(self, ry: int, structure: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free expected counts (Rx, Qy, Qx) of row ``ry`` and the per-position scale factor (Rx,)
        (electrons per unit of profile integral, see ``patterns.render_pattern``). With speckle the frames hold
        the same speckle as ``counts_row`` draws (its expected counts before Poisson noise)."""
        st = structure if structure is not None else self.row_structure(ry)
        rx_n = self.params.scan_shape[1]
        out = np.empty((rx_n, *self.params.detector_shape))
        scales = np.empty(rx_n)
        sp_rng = self.speckle_rng(ry)
        for j in range(rx_n):
            out[j], scales[j] = self._render(ry, j, st, self.speckle(ry, j, sp_rng))
        return out, scales

    def counts_row(self, ry: int, structure: dict | None = None, dtype: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Detector frames (Rx, Qy, Qx) of row ``ry`` in ``dtype`` and the scale factors (Rx,).

        Per frame: expected counts (with speckle: × the speckle field of the amorphous part, stream
        [seed, speckle, ry]) → Poisson (stream [seed, noise, ry]) → hot pixels set to their constant
        value, dead pixels to 0 → clipped to the dtype's maximum (clipped pixels are counted in
        ``n_saturated``). Only one float frame is held at a time."""
        p = self.params
        dtype = dtype or p.dtype
        st = structure if structure is not None else self.row_structure(ry)
        rng = np.random.default_rng([p.seed, _STREAM_NOISE, ry])
        rx_n = p.scan_shape[1]
        out = np.empty((rx_n, *p.detector_shape), dtype=np.dtype(dtype))
        scales = np.empty(rx_n)
        vmax = DTYPE_MAX[dtype]
        sp_rng = self.speckle_rng(ry)
        for j in range(rx_n):
            expected, scales[j] = self._render(ry, j, st, self.speckle(ry, j, sp_rng))
            counts = rng.poisson(expected)
            if len(self.hot):
                counts[self.hot[:, 0], self.hot[:, 1]] = self.hot_values
            if len(self.dead):
                counts[self.dead[:, 0], self.dead[:, 1]] = 0
            sat = counts > vmax
            if sat.any():
                self.n_saturated += int(sat.sum())
                np.minimum(counts, vmax, out=counts)
            out[j] = counts
        return out, scales

    def central_profile(self) -> np.ndarray:
        """Azimuthal mean of the central disk alone (counts per pixel) on ``q``: uniform inside radius."""
        p = self.params
        dens = p.central_fraction * p.electrons_per_pattern * p.q_pixel_size ** 2 / (math.pi * self.probe_radius ** 2)
        return np.where(self.q < self.probe_radius, dens, 0.0)


# ----------------------------------------------------------------------------------------------------
# Streaming writer plumbing
# ----------------------------------------------------------------------------------------------------


class _RowSource:
    """Array-like (Ry, Rx, Qy, Qx) whose scan rows are generated on first access, in order, once.

    ``write_mib`` accepts "any array with shape" and reads it a block of frames of one scan row at a
    time, which lets it record the scan row length in the ``.hdr``; generating a row also records its truth.
    """

    def __init__(self, model: SynthModel, dtype: str, on_row):
        p = model.params
        self.shape = (p.scan_shape[0], p.scan_shape[1], *p.detector_shape)
        self.ndim = 4
        self.dtype = np.dtype(dtype)
        self._model, self._dtype, self._on_row = model, dtype, on_row
        self._ry, self._row = -1, None

    def row(self, ry: int) -> np.ndarray:
        if ry != self._ry:
            if ry != self._ry + 1:
                raise RuntimeError(f"rows must be generated in order (asked {ry} after {self._ry})")
            st = self._model.row_structure(ry)
            self._row, scales = self._model.counts_row(ry, st, self._dtype)
            self._on_row(ry, st, scales)
            self._ry = ry
        return self._row

    def __getitem__(self, key):
        if isinstance(key, tuple) and len(key) >= 1 and isinstance(key[0], (int, np.integer)):
            return self.row(int(key[0]))[key[1:]] if len(key) > 1 else self.row(int(key[0]))
        raise TypeError(f"_RowSource supports [row, ...] indexing only, got {key!r}")

    def __len__(self):
        return self.shape[0]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_npy_streaming(path: Path, source: _RowSource) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=source.dtype, shape=source.shape)
        for ry in range(source.shape[0]):
            mm[ry] = source.row(ry)
        mm.flush()
        del mm
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _config_yaml(data_name: str, fmt: str, p: SynthParams) -> str:
    """The ready-to-run sendmap config (YAML text), data path relative to the config's folder."""
    e = p.electrons_per_pattern
    e_txt = str(int(e)) if float(e).is_integer() else repr(float(e))
    return (
        "# sendmap config for a synthetic dataset written by `sendmap synth` (ground truth: truth.npz/json)\n"
        f"input: {{path: {data_name}, format: {fmt}, scan_shape: [{p.scan_shape[0]}, {p.scan_shape[1]}]}}\n"
        f"calibration: {{q_pixel_size: {p.q_pixel_size!r}, scan_step_nm: {float(p.step_nm)!r}, "
        f"beam_energy_kv: {_num(p.beam_energy_kv)}, convergence_mrad: {float(p.convergence_mrad)!r}}}\n"
        f"dose: {{electrons_per_pattern: {e_txt}}}\n"
        f"profiles: {{n: {int(p.n)}}}\n"
        + (f"# speckle_m: {int(p.speckle_m)} (partially developed speckle of the amorphous scattering, sendmap synth --speckle)\n"
           if p.speckle_m else "") +
        f"peaks: {{window: [{p.window[0]!r}, {p.window[1]!r}]}}\n"
        "classify: {method: rules}\n"
        "output: {dir: results}\n"
        "compute: {scheduler: threads}\n"
    )


def _num(x: float):
    return int(x) if float(x).is_integer() else float(x)


# ----------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------


def make_dataset(
    out_dir,
    *,
    scan_shape: Sequence[int] = (60, 90),
    detector_shape: int | Sequence[int] = (128, 128),
    q_pixel_size: float = 0.0125,
    beam_energy_kv: float = 200,
    convergence_mrad: float = 2.0,
    electrons_per_pattern: float = 2e4,
    central_fraction: float = 0.75,
    ellipse_ratio: float = 1.015,
    ellipse_angle_deg: float = 30.0,
    drift_px: Sequence[float] = (3.0, -2.0),
    drift_slow_px: Sequence[float] = (1.0, 1.5),
    step_nm: float = 4.0,
    n: int = 1,
    window: Sequence[float] = (0.22, 0.42),
    fmt: str = "mib",
    dtype: str = "u2",
    seed: int = 0,
    n_hot: int = 5,
    n_dead: int = 5,
    supersample: int = 3,
    waviness_nm: float = 3.0,
    layers_nm: dict | None = None,
    n_cu_grains: int | None = None,
    beam_stop: bool = False,
    beam_stop_width_px: float | None = None,
    beam_stop_angle_deg: float = 90.0,
    beam_stop_tip_radius_px: float | None = None,
    aperture_radius_px: float | None = None,
    speckle_m: int = 0,
    progress: bool = False,
) -> dict[str, Path]:
    """Write a synthetic SEND dataset, its ground truth and a ready config into ``out_dir``.

    Units: ``q_pixel_size`` 1/Å per pixel (Q = 1/d); ``beam_energy_kv`` kV; ``convergence_mrad`` mrad
    (probe-disk radius α/λ); ``electrons_per_pattern`` expected electrons per pattern (dose in e⁻/Å² is
    that over the probe step area (10·step_nm)²); ``central_fraction`` share in the unscattered disk;
    ``ellipse_ratio`` ≥ 1 and ``ellipse_angle_deg`` (major axis from +x towards +y); ``drift_px`` [dy, dx]
    pixels of centre displacement end to end along the fast (x) scan axis and ``drift_slow_px`` along the
    slow (y) axis; ``step_nm`` probe step; ``n`` the Q power in I·Q^n; ``window`` 1/Å where the first SRO peak
    is sought; ``fmt`` "mib" (``synth.mib`` + ``synth.hdr``) or "npy" (``synth.npy``, (Ry, Rx, Qy, Qx));
    ``dtype`` u1/u2/u4 (counts above its maximum are clipped and counted); ``n_hot``/``n_dead`` defect
    pixels; ``supersample`` s×s sub-pixels per pixel.

    Shadows (off by default; fixed on the detector, counts multiplied by the transmission before the
    Poisson noise): ``beam_stop`` draws an opaque beam stop, a round tip over the central disk (radius
    ``beam_stop_tip_radius_px``, default: disk radius + descan spread + 1 px, so the disk is hidden at
    every position) on an arm ``beam_stop_width_px`` wide (default the tip's diameter) reaching from the
    tip to the detector edge in the direction ``beam_stop_angle_deg`` (from +x towards +y; 90 = from the
    bottom edge); ``aperture_radius_px`` shadows everything beyond that radius from the detector centre.
    Their geometry goes into ``truth.json`` (``beam_stop``, ``aperture``) and the shadowed pixels
    (transmission < 1) into ``truth.npz`` (``beam_stop_mask``, ``aperture_mask``, ``transmission``).

    Speckle (off by default): ``speckle_m`` M > 0 multiplies the amorphous scattering (rings and diffuse
    background, not the Bragg disks or the central disk) of every pattern by partially developed speckle of M
    independent volumes (normalised variance 1/M, grains the size of the probe disk, independent between
    positions; ``patterns.speckle_field``) before the Poisson noise. The truth stays the speckle-free
    expectation (the maximum of the noise-free probe-convolved I·Q^n); ``truth.json`` records ``speckle_m``.

    Writes ``truth.npz`` (class_map int8, class_names, peak_q float64 (NaN for crystals), centre (Ry, Rx, 2)
    [y, x], hot_pixels, hot_values, dead_pixels, layer_map, layer_names, grain_map, ring_centre_q, n_lif,
    target_peak_q, profile_q, class_mean_profile / class_mean_iqn (noise-free azimuthal means, counts per
    pixel, per class)), ``truth.json`` (scalar parameters) and ``config.yaml``. Every file is written under a
    temporary name and renamed when complete. Returns {"data", ("hdr"), "truth_npz", "truth_json",
    "config"} → paths. Memory: one scan row of frames at a time.
    """
    t_start = time.perf_counter()
    if fmt not in ("mib", "npy"):
        raise SendmapInputError(f"sendmap synth: format must be 'mib' or 'npy', got {fmt!r}")
    if dtype not in DTYPE_MAX:
        raise SendmapInputError(f"sendmap synth: dtype must be one of {sorted(DTYPE_MAX)}, got {dtype!r}")
    if isinstance(detector_shape, (int, np.integer)):
        detector_shape = (int(detector_shape), int(detector_shape))
    params = SynthParams(
        scan_shape=tuple(int(v) for v in scan_shape), detector_shape=tuple(int(v) for v in detector_shape),
        q_pixel_size=float(q_pixel_size), beam_energy_kv=float(beam_energy_kv),
        convergence_mrad=float(convergence_mrad), electrons_per_pattern=float(electrons_per_pattern),
        central_fraction=float(central_fraction), ellipse_ratio=float(ellipse_ratio),
        ellipse_angle_deg=float(ellipse_angle_deg), drift_px=tuple(float(v) for v in drift_px),
        drift_slow_px=tuple(float(v) for v in drift_slow_px), step_nm=float(step_nm), n=int(n),
        window=tuple(float(v) for v in window), seed=int(seed), n_hot=int(n_hot), n_dead=int(n_dead),
        supersample=int(supersample), waviness_nm=float(waviness_nm), layers_nm=layers_nm,
        n_cu_grains=n_cu_grains, dtype=dtype, beam_stop=bool(beam_stop),
        beam_stop_width_px=None if beam_stop_width_px is None else float(beam_stop_width_px),
        beam_stop_angle_deg=float(beam_stop_angle_deg),
        beam_stop_tip_radius_px=None if beam_stop_tip_radius_px is None else float(beam_stop_tip_radius_px),
        aperture_radius_px=None if aperture_radius_px is None else float(aperture_radius_px),
        speckle_m=speckle_m)
    model = SynthModel(params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ry_n, rx_n = params.scan_shape
    ph = model.phantom

    peak_q = np.full((ry_n, rx_n), np.nan)
    ring_centre = np.full((ry_n, rx_n), np.nan)
    n_lif = np.zeros((ry_n, rx_n), dtype=np.int8)
    n_cls = len(CLASS_NAMES)
    prof_sum = np.zeros((n_cls, model.q.size))
    prof_cnt = np.zeros(n_cls)
    central = model.central_profile()
    qpix2 = params.q_pixel_size ** 2

    def on_row(ry, st, scales):
        peak_q[ry] = st["peak_q"]
        ring_centre[ry] = st["ring_centre"]
        n_lif[ry] = st["n_lif"]
        prof = st["F_tot"] * (scales * qpix2)[None, :] + central[:, None]
        for k in range(n_cls):
            m = ph.class_map[ry] == k
            if m.any():
                prof_sum[k] += prof[:, m].sum(1)
                prof_cnt[k] += m.sum()
        if progress:
            print(f"\rsendmap synth: row {ry + 1}/{ry_n}", end="", flush=True)

    source = _RowSource(model, dtype, on_row)
    paths: dict[str, Path] = {}
    if fmt == "mib":
        from sendmap.io.mib import write_mib  # lazy: the I/O layer is only needed here

        data_path = out / "synth.mib"
        write_mib(data_path, source, dtype=dtype, write_hdr=True)
        paths["data"] = data_path
        paths["hdr"] = data_path.with_suffix(".hdr")
    else:
        data_path = out / "synth.npy"
        _write_npy_streaming(data_path, source)
        paths["data"] = data_path
    if progress:
        print()
    if source._ry != ry_n - 1:
        raise RuntimeError(f"writer stopped after row {source._ry + 1} of {ry_n}")

    with np.errstate(invalid="ignore", divide="ignore"):
        class_mean = prof_sum / prof_cnt[:, None]
    class_mean[prof_cnt == 0] = np.nan
    truth_arrays = {
        "class_map": ph.class_map.astype(np.int8),
        "class_names": np.array(CLASS_NAMES),
        "peak_q": peak_q,
        "centre": model.centres.astype(np.float64),
        "hot_pixels": model.hot,
        "hot_values": model.hot_values,
        "dead_pixels": model.dead,
        "layer_map": ph.layer_map.astype(np.int8),
        "layer_names": np.array(LAYER_NAMES),
        "grain_map": ph.grain_map,
        "target_peak_q": ph.target_peak_q,
        "ring_centre_q": ring_centre,
        "n_lif": n_lif,
        "profile_q": model.q,
        "class_mean_profile": class_mean,
        "class_mean_iqn": class_mean * model.qn[None, :],
    }
    if model.transmission is not None:  # only with the shadow options: default outputs are unchanged
        truth_arrays["transmission"] = model.transmission
        if model.beam_stop_mask is not None:
            truth_arrays["beam_stop_mask"] = model.beam_stop_mask
        if model.aperture_mask is not None:
            truth_arrays["aperture_mask"] = model.aperture_mask
    buf = io.BytesIO()
    np.savez_compressed(buf, **truth_arrays)
    paths["truth_npz"] = out / "truth.npz"
    _atomic_write_bytes(paths["truth_npz"], buf.getvalue())

    counts = class_counts(ph.class_map)
    stats = {}
    for name in PEAK_RANGES:
        v = peak_q[ph.class_map == CLASS_INDEX[name]]
        if v.size:
            stats[name] = {"count": int(v.size), "peak_q_mean": float(np.mean(v)), "peak_q_std": float(np.std(v)),
                           "peak_q_min": float(np.min(v)), "peak_q_max": float(np.max(v))}
    width_nm = rx_n * params.step_nm
    truth_json = {
        "sendmap_version": __version__,
        "generator": "sendmap.synth.make_dataset",
        "format": fmt,
        "data_file": data_path.name,
        "dtype": dtype,
        "scan_shape": list(params.scan_shape),
        "detector_shape": list(params.detector_shape),
        "q_pixel_size": params.q_pixel_size,
        "ellipse": {"ratio": params.ellipse_ratio, "angle_deg": params.ellipse_angle_deg},
        "beam_energy_kv": params.beam_energy_kv,
        "wavelength_angstrom": model.wavelength,
        "convergence_mrad": params.convergence_mrad,
        "probe_radius_inv_angstrom": model.probe_radius,
        "probe_radius_px": model.probe_radius / params.q_pixel_size,
        "electrons_per_pattern": params.electrons_per_pattern,
        "central_fraction": params.central_fraction,
        "dose_e_per_A2": params.electrons_per_pattern / (params.step_nm * 10.0) ** 2,
        "step_nm": params.step_nm,
        "n": params.n,
        "window": list(params.window),
        "seed": params.seed,
        "supersample": params.supersample,
        "descan": {**model.descan.as_dict(), "drift_fast_px": list(params.drift_px),
                   "drift_slow_px": list(params.drift_slow_px)},
        "layer_thickness_nm": ph.layer_thickness_nm,
        "layer_thickness_nominal_nm": dict(params.layers_nm or DEFAULT_LAYERS_NM),
        "layer_mean_width_nm": mean_layer_width_nm(ph.boundaries_nm, width_nm),
        "layer_class": {n: CLASS_NAMES[int(ph.class_map[ph.layer_map == i][0])] if (ph.layer_map == i).any() else None
                        for i, n in enumerate(LAYER_NAMES)},
        "waviness_nm": params.waviness_nm,
        "grains": [g.as_dict() for g in ph.grains],
        "class_counts": counts,
        "peak_q_stats": stats,
        "peak_ranges": {k: list(v) for k, v in PEAK_RANGES.items()},
        "model": {
            "background": {"shape": "1/(1+(Q/q0)^2)", "q0": BACKGROUND_Q0},
            "amorphous": {k: asdict(v) for k, v in AMORPHOUS_MODELS.items()},
            "crystal_bragg_fraction": CRYSTAL_BRAGG_FRACTION,
            "lif_fraction_per_crystal": LIF_FRACTION_PER_CRYSTAL,
            "lif_q_max": LIF_Q_MAX,
            "lif_excitation_prob": LIF_EXCITATION_PROB,
            "max_lif_crystals": MAX_LIF_CRYSTALS,
            "fine_dq": model.dq,
        },
        "hot_pixels": model.hot.tolist(),
        "hot_values": model.hot_values.tolist(),
        "dead_pixels": model.dead.tolist(),
        "n_saturated": model.n_saturated,
        "speckle_m": int(params.speckle_m),
        "speckle": ({"m": int(params.speckle_m), "normalised_variance": 1.0 / params.speckle_m,
                     "grain": "probe disk (intensity autocorrelation: squared overlap of two probe disks)",
                     "applies_to": "amorphous rings and diffuse background", "friedel_symmetric": True}
                    if params.speckle_m else None),
        "generation_time_s": round(time.perf_counter() - t_start, 3),
    }
    if model.beam_stop is not None:
        truth_json["beam_stop"] = model.beam_stop
    if model.aperture is not None:
        truth_json["aperture"] = model.aperture
    paths["truth_json"] = out / "truth.json"
    _atomic_write_bytes(paths["truth_json"], (json.dumps(truth_json, indent=2) + "\n").encode())
    paths["config"] = out / "config.yaml"
    _atomic_write_bytes(paths["config"], _config_yaml(data_path.name, fmt, params).encode())
    return paths


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``sendmap synth`` options to an argparse parser (sub-command parser)."""
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the dataset, truth and config into")
    parser.add_argument("--scan-shape", nargs=2, type=int, default=[60, 90], metavar=("RY", "RX"),
                        help="probe positions (slow, fast); default 60 90")
    parser.add_argument("--detector", nargs="+", type=int, default=[128], metavar="N",
                        help="detector pixels: N (square) or QY QX; default 128")
    parser.add_argument("--q-pixel-size", type=float, default=0.0125, help="1/Å per pixel (Q = 1/d); default 0.0125")
    parser.add_argument("--dose", type=float, default=2e4, metavar="ELECTRONS",
                        help="expected electrons per pattern (realistic 1e3-1e5); default 2e4")
    parser.add_argument("--central-fraction", type=float, default=0.75,
                        help="share of electrons in the unscattered disk (0.6-0.9); default 0.75")
    parser.add_argument("--beam-energy", type=float, default=200.0, metavar="KV", help="kV; default 200")
    parser.add_argument("--convergence", type=float, default=2.0, metavar="MRAD",
                        help="probe convergence semi-angle, mrad; default 2")
    parser.add_argument("--ellipse", nargs=2, type=float, default=[1.015, 30.0], metavar=("RATIO", "ANGLE"),
                        help="elliptical distortion: major/minor ratio >= 1 and major-axis angle (deg from +x "
                             "towards +y); default 1.015 30")
    parser.add_argument("--drift", nargs=2, type=float, default=[3.0, -2.0], metavar=("DY", "DX"),
                        help="centre drift (px) end to end along the fast scan axis; default 3 -2")
    parser.add_argument("--drift-slow", nargs=2, type=float, default=[1.0, 1.5], metavar=("DY", "DX"),
                        help="centre drift (px) end to end along the slow scan axis; default 1 1.5")
    parser.add_argument("--step-nm", type=float, default=4.0, help="probe step, nm; default 4")
    parser.add_argument("--n", type=int, default=1, help="power n in I(Q)·Q^n for the ground truth; default 1")
    parser.add_argument("--format", choices=("mib", "npy"), default="mib", help="data file format; default mib")
    parser.add_argument("--dtype", choices=tuple(DTYPE_MAX), default="u2", help="counter type; default u2")
    parser.add_argument("--seed", type=int, default=0, help="random seed (every run reproducible); default 0")
    parser.add_argument("--hot", type=int, default=5, help="number of hot pixels; default 5")
    parser.add_argument("--dead", type=int, default=5, help="number of dead pixels; default 5")
    parser.add_argument("--supersample", type=int, default=3, help="s×s sub-pixels per pixel; default 3")
    parser.add_argument("--beam-stop", action="store_true",
                        help="draw an opaque beam stop: a round tip hiding the central disk on an arm from the "
                             "detector edge (geometry in truth.json); default off")
    parser.add_argument("--beam-stop-width", type=float, default=None, metavar="PX",
                        help="beam-stop arm width, px; default the tip's diameter")
    parser.add_argument("--beam-stop-angle", type=float, default=90.0, metavar="DEG",
                        help="direction from the tip to the edge the arm comes from (deg from +x towards +y; "
                             "90 = bottom edge); default 90")
    parser.add_argument("--beam-stop-tip-radius", type=float, default=None, metavar="PX",
                        help="beam-stop tip radius, px; default disk radius + descan spread + 1")
    parser.add_argument("--aperture-radius-px", type=float, default=None, metavar="PX",
                        help="shadow of a circular aperture: no counts beyond this radius from the detector "
                             "centre; default none")
    parser.add_argument("--speckle", type=int, default=0, metavar="M",
                        help="partially developed speckle of the amorphous scattering: M independent volumes along "
                             "the beam (normalised variance 1/M, grains the size of the probe disk; real films: "
                             "M ≈ 3-100); default 0 (none)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def synth_main(args: argparse.Namespace) -> int:
    """Run ``sendmap synth`` from parsed arguments; returns the exit code (0). Bad values raise
    ``SendmapInputError`` (exit code 2 in the CLI)."""
    det = args.detector
    if len(det) not in (1, 2):
        raise SendmapInputError(f"sendmap synth: --detector takes N or QY QX, got {det}")
    det = (det[0], det[0]) if len(det) == 1 else tuple(det)
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise SendmapInputError(f"sendmap synth: OUT_DIR {out} exists and is not a folder; give a new or existing "
                                f"folder to write the dataset, its truth and config into")
    t0 = time.perf_counter()
    try:
        paths = _make_dataset_from_args(args, det)
    except OSError as exc:
        from ..errors import SendmapOutputError

        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        raise SendmapOutputError(f"sendmap synth: cannot write the dataset into {out}: "
                                 f"{exc.strerror or exc}{where}; give a writable OUT_DIR") from None
    if not args.quiet:
        print(f"sendmap synth: wrote {paths['data']} and truth/config in {paths['data'].parent} "
              f"({time.perf_counter() - t0:.1f} s)")
    return 0


def _make_dataset_from_args(args: argparse.Namespace, det: tuple) -> dict:
    return make_dataset(
        args.out_dir, scan_shape=tuple(args.scan_shape), detector_shape=det, q_pixel_size=args.q_pixel_size,
        beam_energy_kv=args.beam_energy, convergence_mrad=args.convergence, electrons_per_pattern=args.dose,
        central_fraction=args.central_fraction, ellipse_ratio=args.ellipse[0], ellipse_angle_deg=args.ellipse[1],
        drift_px=tuple(args.drift), drift_slow_px=tuple(args.drift_slow), step_nm=args.step_nm, n=args.n,
        fmt=args.format, dtype=args.dtype, seed=args.seed, n_hot=args.hot, n_dead=args.dead,
        supersample=args.supersample, beam_stop=getattr(args, "beam_stop", False),
        beam_stop_width_px=getattr(args, "beam_stop_width", None),
        beam_stop_angle_deg=getattr(args, "beam_stop_angle", 90.0),
        beam_stop_tip_radius_px=getattr(args, "beam_stop_tip_radius", None),
        aperture_radius_px=getattr(args, "aperture_radius_px", None), speckle_m=getattr(args, "speckle", 0),
        progress=not args.quiet)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m sendmap.synth.make OUT_DIR [options]``."""
    parser = add_synth_arguments(argparse.ArgumentParser(prog="sendmap synth", description=__doc__.split("\n")[0]))
    return synth_main(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
