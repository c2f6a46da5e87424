"""``sendmap synth``: write a synthetic SEND dataset with its ground truth and a ready config.

Size: one forward model of a whole scan (``SynthModel``: phantom, per-class radial models, Bragg disks, the
scenario-matrix axes, each on its own random stream) and the streaming writer of its frames and truth, which must
agree exactly; the CLI (``add_synth_arguments`` … ``main``, ~140 lines) and the scenario truth records are the
pieces to move out next.

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
    LAYER_CLASS as LAYER_CLASS_NAMES,
    LAYER_NAMES,
    PEAK_RANGES,
    SPREAD_CLIP_SIGMA,
    PUBLISHED_CLASS_SPREAD,
    boundary_mixing,
    class_counts,
    defect_pixels,
    make_descan,
    make_phantom,
    mean_layer_width_nm,
    smooth_random_field,
    spread_ranges,
    spread_targets,
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

_STREAM_SCENARIO = 5
"""The scenario-matrix axes (issue 18) draw from default_rng([seed, 5, axis(, ry)]), one sub-stream per axis
(_AXIS_*): switching one axis on changes nothing that another axis or the default generator draws."""
_AXIS_SPREAD, _AXIS_GRAINS, _AXIS_LIF, _AXIS_THICKNESS = 0, 1, 2, 3

LIF_ZONES_RANDOM = ((0, 0, 1), (0, 1, 1), (1, 1, 1), (0, 1, 2), (1, 1, 2), (0, 1, 3), (1, 1, 3), (1, 2, 2),
                    (1, 2, 3))
"""Zone axes of LiF nanocrystals when ``lif_share`` is set ("random zone axes", issue 18): the low-index
ones plus higher-index zones whose zero-order Laue zone holds only one to three reflection families below
LIF_Q_MAX (e.g. [123]: only ±(11-1), the weak {111}) — a crystallite in a general orientation."""

OFF_AXIS_EXCITATION = (0.2, 1.0)
"""An off-axis grain's excited reflections keep a uniform factor in this range of their zone-axis
intensity (excitation error: the Ewald sphere cuts the reciprocal-lattice rod off its centre), one factor per
Friedel pair; so an off-axis grain shows a few weak to medium spots."""

LIF_NONE_DEFAULT = 0.15
"""Share of Type 2 positions with no excited LiF reflection when ``lif_share`` is set and ``lif_none_prob``
is not given (SCIENCE.md: "some Type 2 positions show no excited LiF reflection at all")."""

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
    # scenario-matrix axes (issue 18), all off by default (the data are then the same as without them)
    scenario: str | None = None  # name of the preset that set the axes (recorded in truth.json only)
    class_spread: str | float | None = None  # None: legacy ranges; "published"; or σ (1/Å) for every class
    spread_smooth_share: float = 0.5  # share of the class variance in the smooth part (rest: scatter)
    lif_share: tuple[float, float] | None = None  # LiF share of the scattered intensity, log-uniform [lo, hi]
    lif_none_prob: float | None = None  # share of Type 2 positions with no LiF reflection (None: LIF_NONE_DEFAULT)
    off_axis: float = 0.0  # probability that a Li/Cu grain is off its zone axis (a systematic row or one pair)
    scattered_fraction: tuple[float, float] | None = None  # 1 − central fraction, a smooth field in [lo, hi]
    mix_width_nm: float = 0.0  # lateral width over which the beam crosses an inclined layer boundary

    @property
    def scenario_active(self) -> bool:
        """True when any scenario-matrix axis is on (then truth.json/npz carry the ``scenario`` records)."""
        return bool(self.class_spread is not None or self.lif_share is not None or self.off_axis > 0
                    or self.scattered_fraction is not None or self.mix_width_nm > 0)

    def class_spread_table(self) -> dict[str, tuple[float, float]] | None:
        """(mean, σ) per amorphous class for ``class_spread`` (published means; σ published or given)."""
        cs = self.class_spread
        if cs is None:
            return None
        if isinstance(cs, str) and cs.strip().lower() == "published":
            return dict(PUBLISHED_CLASS_SPREAD)
        sigma = float(cs)
        return {c: (m, sigma) for c, (m, _) in PUBLISHED_CLASS_SPREAD.items()}

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
        self._validate_scenario(bad)

    def _validate_scenario(self, bad) -> None:
        cs = self.class_spread
        if cs is not None:
            if not (isinstance(cs, str) and cs.strip().lower() == "published"):
                try:
                    sigma = float(cs)
                except (TypeError, ValueError):
                    bad("class_spread (--class-spread)", f"must be 'published' or a σ in 1/Å, got {cs!r}")
                if not 0.0 <= sigma <= 0.03:
                    bad("class_spread (--class-spread)", f"σ must lie in [0, 0.03] 1/Å (published ≈ 0.02; wider "
                        f"targets leave the peak window), got {cs}")
        if not 0.0 <= self.spread_smooth_share <= 1.0:
            bad("spread_smooth_share", f"must be in [0, 1], got {self.spread_smooth_share}")
        for key, rng_, lo, hi in (("lif_share (--lif-share)", self.lif_share, 0.0, 0.9),
                                  ("scattered_fraction (--scattered-fraction)", self.scattered_fraction, 0.01, 0.99)):
            if rng_ is None:
                continue
            if len(rng_) != 2 or not (lo < rng_[0] <= rng_[1] <= hi):
                bad(key, f"must be LO:HI with {lo} < LO <= HI <= {hi}, got {rng_}")
        if self.lif_none_prob is not None and not 0.0 <= self.lif_none_prob <= 1.0:
            bad("lif_none_prob (--lif-none)", f"must be in [0, 1], got {self.lif_none_prob}")
        if not 0.0 <= self.off_axis <= 1.0:
            bad("off_axis (--off-axis)", f"must be a probability in [0, 1], got {self.off_axis}")
        if not self.mix_width_nm >= 0:
            bad("mix_width_nm (--mix-width)", f"must be >= 0 nm, got {self.mix_width_nm}")


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
        self._init_scenario()
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
        self.grain_modes = self._grain_modes(spot_qmax)
        self.grain_spots = [self._grain_spots(g, spot_qmax, m) for g, m in zip(self.phantom.grains, self.grain_modes)]
        self.grain_background = [1.0 - CRYSTAL_BRAGG_FRACTION if m is None else 1.0 - m["bragg_share"]
                                 for m in self.grain_modes]
        self._grain_F_cache: dict[int, np.ndarray] = {}
        self._lif_zones = []
        for z in P.ZONE_AXES:
            hkl, g2 = P.cubic_zone_g_vectors(*P.PHASES["lif"], z, LIF_Q_MAX)
            f2 = np.array([P.kinematic_f2("lif", h) for h in hkl])
            self._lif_zones.append((hkl, g2, f2 / f2.sum()))
        self._lif_zones_random = []
        for z in LIF_ZONES_RANDOM:
            hkl, g2 = P.cubic_zone_g_vectors(*P.PHASES["lif"], z, LIF_Q_MAX)
            if len(hkl):
                f2 = np.array([P.kinematic_f2("lif", h) for h in hkl])
                self._lif_zones_random.append((hkl, g2, f2 / f2.sum()))
        self.lookups = {c: self._build_lookup(c) for c in self.peak_ranges}
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

    # -- scenario-matrix axes (issue 18) ---------------------------------------------------------------

    def _scenario_rng(self, axis: int, *more: int) -> np.random.Generator:
        return np.random.default_rng([self.params.seed, _STREAM_SCENARIO, axis, *more])

    def _init_scenario(self) -> None:
        """Opt-in axes that are fixed for the scan: published class spreads (new peak targets), boundary
        mixing and the scattered-fraction (thickness) field. Sets ``peak_ranges`` (class → target range of
        the ring-centre lookup), ``spread`` (class → (mean, σ) or None), ``target_smooth``/``target_scatter``,
        ``mix_alpha``/``mix_layer``/``mix_source``, ``central_map`` ((Ry, Rx) or None)."""
        p, ph = self.params, self.phantom
        self.peak_ranges = dict(PEAK_RANGES)
        self.spread = p.class_spread_table()
        self.target_smooth = self.target_scatter = None
        if self.spread is not None:
            tgt, self.target_smooth, self.target_scatter = spread_targets(
                ph.class_map, ph.depth, p.step_nm, self.spread, self._scenario_rng(_AXIS_SPREAD),
                smooth_share=p.spread_smooth_share)
            ph.target_peak_q = tgt
            self.peak_ranges = spread_ranges(self.spread)
        self.mix_alpha, self.mix_layer, self.mix_source = boundary_mixing(
            ph.layer_map, ph.boundaries_nm, p.step_nm, p.mix_width_nm)
        self.central_map = None
        if p.scattered_fraction is not None:
            lo, hi = p.scattered_fraction
            fld = smooth_random_field(p.scan_shape, p.step_nm, self._scenario_rng(_AXIS_THICKNESS))
            self.central_map = 1.0 - (lo + (hi - lo) * fld)

    def _grain_modes(self, q_max: float) -> list[dict | None]:
        """Per grain: None (at its zone axis, every ZOLZ reflection) or, with probability ``off_axis``, an
        off-axis excitation: {"kind": "row" | "pair", "g0_hkl", "excitation": per-reflection factor} — "row":
        the systematic row ±n·g0 of one low-order reflection g0 (the lowest two |g| shells); "pair": ±g0
        only (two spots). Each excited Friedel pair keeps a factor in OFF_AXIS_EXCITATION of its zone-axis
        intensity."""
        p = self.params
        modes: list[dict | None] = []
        if not p.off_axis > 0:
            return [None] * len(self.phantom.grains)
        rng = self._scenario_rng(_AXIS_GRAINS)
        for grain in self.phantom.grains:
            off = rng.random() < p.off_axis
            kind = "row" if rng.random() < 0.5 else "pair"
            lattice, a = P.PHASES[grain.phase]
            hkl, _ = P.cubic_zone_g_vectors(lattice, a, grain.zone, max(P.Q_REF, q_max))
            gn = np.round(np.linalg.norm(hkl, axis=1), 6)
            shells = np.unique(gn)[:2]
            cand = np.nonzero(np.isin(gn, shells))[0]
            g0 = hkl[cand[rng.integers(cand.size)]]
            # multiples n·g0: hkl parallel to g0 (zero cross product); n = hkl·g0/|g0|²
            par = np.all(np.cross(hkl, g0) == 0, axis=1)
            nmul = np.rint(hkl @ g0 / float(g0 @ g0)).astype(int)
            keep = par & ((np.abs(nmul) == 1) if kind == "pair" else True)
            orders = np.unique(np.abs(nmul[keep]))
            fac = dict(zip(orders.tolist(), rng.uniform(*OFF_AXIS_EXCITATION, orders.size).tolist()))
            excitation = np.array([fac[abs(int(n))] if k else 0.0 for n, k in zip(nmul, keep)])
            modes.append({"kind": kind, "g0_hkl": [int(v) for v in g0], "excitation": excitation} if off else None)
        return modes

    # -- per-class physics --------------------------------------------------------------------------

    def _grain_spots(self, grain, q_max: float, mode: dict | None = None) -> np.ndarray:
        """Bragg disks of a grain: (k, 3) [q_y, q_x, weight]; weights ∝ kinematic |F|², summing to
        CRYSTAL_BRAGG_FRACTION over all ZOLZ reflections up to max(Q_REF, q_max) (those beyond the
        detector's reach are then dropped). Off axis (``mode``, see ``_grain_modes``) only the excited
        reflections remain, each times its excitation factor; ``mode["bragg_share"]`` records their sum."""
        lattice, a = P.PHASES[grain.phase]
        hkl, g2 = P.cubic_zone_g_vectors(lattice, a, grain.zone, max(P.Q_REF, q_max))
        f2 = np.array([P.kinematic_f2(grain.phase, h) for h in hkl])
        w = CRYSTAL_BRAGG_FRACTION * f2 / f2.sum()
        if mode is not None:
            w = w * mode["excitation"]
            mode["bragg_share"] = float(w.sum())
            mode["excited_hkl"] = hkl[w > 0].tolist()
            hkl, g2, w = hkl[w > 0], g2[w > 0], w[w > 0]
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
        lo, hi = self.peak_ranges[cname]
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

    def _lif_spots(self, rng: np.random.Generator, n_cryst: int, zones: list | None = None) -> np.ndarray:
        """Disks of ``n_cryst`` LiF nanocrystals, random zone axis (from ``zones``, default the low-index
        ones) and in-plane azimuth each: (k, 3)."""
        out = []
        zones = self._lif_zones if zones is None else zones
        for _ in range(n_cryst):
            hkl, g2, w = zones[rng.integers(len(zones))]
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
        lif_share = np.zeros(rx_n)
        if p.lif_share is not None:
            self._lif_share_row(ry, cls, n_lif, spots, lif_share)
            lif_scale = 1.0 - lif_share
        else:
            for j in np.nonzero(cls == CLASS_INDEX["sei_type2"])[0]:
                n_lif[j] = rng.integers(1, MAX_LIF_CRYSTALS + 1)
                spots[j] = self._lif_spots(rng, int(n_lif[j]))
                # the nanocrystals' share comes out of the isotropic scattering
                lif_scale[j] = max(0.0, 1.0 - spots[j][:, 2].sum())
                lif_share[j] = spots[j][:, 2].sum()
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
            F_iso[:, j] = self.grain_background[g] * self.K_background
            spots[j] = self.grain_spots[g]
            F_spot[:, j] = self._grain_F_spot(g)
        if self.mix_alpha[ry].any():
            self._mix_row(ry, F_iso, F_spot, spots)
        F_tot = F_iso + F_spot
        # the truth: the I·Q^n maximum of the full noise-free profile (legacy), or, with the scenario axes, of its
        # isotropic (amorphous) part alone, disks excluded: a dominant LiF crystallite (its {111} disk spans
        # 0.35–0.51 1/Å) or a grain across a boundary would otherwise put the "SRO peak" on a Bragg disk
        F_peak = F_iso if p.scenario_active else F_tot
        peak_q = np.full(rx_n, np.nan)
        peak_v = np.full(rx_n, np.nan)
        peak_all = np.full(rx_n, np.nan)
        for j in np.nonzero(cls != CLASS_INDEX["crystal"])[0]:
            peak_q[j], peak_v[j] = P.peak_position(self.q, F_peak[:, j] * self.qn, p.window)
            if p.scenario_active:
                peak_all[j] = P.peak_position(self.q, F_tot[:, j] * self.qn, p.window)[0]
        return {"F_iso": F_iso, "F_tot": F_tot, "spots": spots, "ring_centre": ring_centre,
                "n_lif": n_lif, "peak_q": peak_q, "peak_iqn": peak_v, "lif_share": lif_share,
                "peak_q_with_disks": peak_all}

    def _lif_share_row(self, ry: int, cls: np.ndarray, n_lif: np.ndarray, spots: list, lif_share: np.ndarray) -> None:
        """LiF crystallites with a set share of the scattered intensity (``lif_share`` = (lo, hi)): per Type 2
        position, with probability ``lif_none_prob`` none is excited (share 0, n_lif 0); otherwise 1–3
        crystallites in random zone axes (LIF_ZONES_RANDOM) whose disks together carry a share drawn
        log-uniformly in [lo, hi] of the scattered electrons within |Q| ≤ Q_REF (the isotropic part keeps
        1 − share). Fills ``n_lif``, ``spots`` and ``lif_share`` in place (stream [seed, 5, LiF axis, ry])."""
        p = self.params
        rng = self._scenario_rng(_AXIS_LIF, ry)
        lo, hi = p.lif_share
        none_p = LIF_NONE_DEFAULT if p.lif_none_prob is None else p.lif_none_prob
        for j in np.nonzero(cls == CLASS_INDEX["sei_type2"])[0]:
            none = rng.random() < none_p
            n = int(rng.integers(1, MAX_LIF_CRYSTALS + 1))
            share = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            sp = self._lif_spots(rng, n, self._lif_zones_random)
            if none or not sp[:, 2].sum() > 0:
                continue
            sp[:, 2] *= share / sp[:, 2].sum()
            n_lif[j], spots[j], lif_share[j] = n, sp, share

    def _mix_row(self, ry: int, F_iso: np.ndarray, F_spot: np.ndarray, spots: list) -> None:
        """Blend the minority layer into the mixed positions of row ``ry`` (``phantom.boundary_mixing``): the
        pattern is (1 − α)·own + α·(the nearest position of the other layer in this row), isotropic part, disks
        and their azimuthal average alike (both normalised to the same scattered total, so the blend keeps
        it). Modifies ``F_iso``, ``F_spot`` and ``spots`` in place."""
        a_row, src_row = self.mix_alpha[ry], self.mix_source[ry]
        F_iso0, F_spot0, spots0 = F_iso.copy(), F_spot.copy(), list(spots)
        for j in np.nonzero(a_row > 0)[0]:
            a, s = float(a_row[j]), int(src_row[j])
            F_iso[:, j] = (1.0 - a) * F_iso0[:, j] + a * F_iso0[:, s]
            F_spot[:, j] = (1.0 - a) * F_spot0[:, j] + a * F_spot0[:, s]
            own, other = spots0[j].copy(), spots0[s].copy()
            own[:, 2] *= 1.0 - a
            other[:, 2] *= a
            spots[j] = np.vstack([own, other])

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

    def central_fraction_at(self, ry: int, j: int) -> float:
        """Share of the electrons in the central disk at position (ry, j): ``central_fraction``, or 1 − the
        scattered-fraction field when ``scattered_fraction`` is set."""
        return self.params.central_fraction if self.central_map is None else float(self.central_map[ry, j])

    def _render(self, ry: int, j: int, st: dict, speckle: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        p = self.params
        img, scale = P.render_pattern(
            p.detector_shape, self.centres[ry, j], p.q_pixel_size, probe_radius=self.probe_radius,
            radial_profile=st["F_iso"][:, j], spots=st["spots"][j], central_fraction=self.central_fraction_at(ry, j),
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

    def central_profile(self, central_fraction: float | None = None) -> np.ndarray:
        """Azimuthal mean of the central disk alone (counts per pixel) on ``q``: uniform inside radius
        (``central_fraction`` default the parameter's)."""
        p = self.params
        cf = p.central_fraction if central_fraction is None else central_fraction
        dens = cf * p.electrons_per_pattern * p.q_pixel_size ** 2 / (math.pi * self.probe_radius ** 2)
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
           if p.speckle_m else "")
        + (f"# scenario matrix (issue 18): {p.scenario or 'axes set by flags'}; every setting in truth.json 'scenario'\n"
           if p.scenario_active else "") +
        f"peaks: {{window: [{p.window[0]!r}, {p.window[1]!r}]}}\n"
        "classify: {method: probabilistic}\n"
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
    scenario: str | None = None,
    class_spread: str | float | None = None,
    spread_smooth_share: float = 0.5,
    lif_share: Sequence[float] | None = None,
    lif_none_prob: float | None = None,
    off_axis: float = 0.0,
    scattered_fraction: Sequence[float] | None = None,
    mix_width_nm: float = 0.0,
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

    Scenario-matrix axes (issue 18; off by default, each independent, each from its own random stream;
    presets in ``sendmap.synth.scenario``): ``class_spread`` "published" (or a σ in 1/Å) draws the SRO peak
    targets around the published class means with the published σ ≈ 0.02 (``phantom.spread_targets``: a
    ``spread_smooth_share`` of the variance smooth across the layer, the rest position scatter);
    ``lif_share`` (lo, hi) gives each Type 2 position LiF crystallites in random zone axes carrying a share of
    the scattered intensity (|Q| ≤ Q_REF) drawn log-uniformly in [lo, hi], none with probability
    ``lif_none_prob`` (default 0.15); ``off_axis`` is the probability that a Li/Cu grain is off its zone axis
    (one systematic row or a single Friedel pair); ``scattered_fraction`` (lo, hi) replaces
    ``central_fraction`` by a smooth thickness field; ``mix_width_nm`` mixes the neighbouring layer into the
    patterns near every layer boundary (``phantom.boundary_mixing``). With any of them on, the truth peak
    is the maximum of the isotropic part alone and truth.json/npz gain the ``scenario`` records (see
    ``_scenario_truth_arrays``/``_scenario_truth_json``); ``scenario`` is the preset's name, recorded.

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
        speckle_m=speckle_m, scenario=scenario, class_spread=class_spread,
        spread_smooth_share=float(spread_smooth_share),
        lif_share=None if lif_share is None else tuple(float(v) for v in lif_share),
        lif_none_prob=None if lif_none_prob is None else float(lif_none_prob), off_axis=float(off_axis),
        scattered_fraction=None if scattered_fraction is None else tuple(float(v) for v in scattered_fraction),
        mix_width_nm=float(mix_width_nm))
    model = SynthModel(params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ry_n, rx_n = params.scan_shape
    ph = model.phantom

    peak_q = np.full((ry_n, rx_n), np.nan)
    ring_centre = np.full((ry_n, rx_n), np.nan)
    n_lif = np.zeros((ry_n, rx_n), dtype=np.int8)
    lif_share = np.zeros((ry_n, rx_n))
    peak_with_disks = np.full((ry_n, rx_n), np.nan)
    n_cls = len(CLASS_NAMES)
    prof_sum = np.zeros((n_cls, model.q.size))
    prof_cnt = np.zeros(n_cls)
    central = model.central_profile()
    qpix2 = params.q_pixel_size ** 2

    def on_row(ry, st, scales):
        peak_q[ry] = st["peak_q"]
        ring_centre[ry] = st["ring_centre"]
        n_lif[ry] = st["n_lif"]
        lif_share[ry] = st["lif_share"]
        peak_with_disks[ry] = st["peak_q_with_disks"]
        if model.central_map is None:
            cen = central[:, None]
        else:  # the central disk's profile scales with the position's central fraction
            cen = central[:, None] * (model.central_map[ry] / params.central_fraction)[None, :]
        prof = st["F_tot"] * (scales * qpix2)[None, :] + cen
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
    if params.scenario_active:  # only with the scenario-matrix axes: default outputs are unchanged
        truth_arrays.update(_scenario_truth_arrays(model, lif_share))
        truth_arrays["peak_q_with_disks"] = peak_with_disks
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
        "peak_ranges": {k: list(v) for k, v in model.peak_ranges.items()},
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
    if params.scenario_active:
        truth_json["scenario"] = _scenario_truth_json(model, truth_arrays)
    if model.beam_stop is not None:
        truth_json["beam_stop"] = model.beam_stop
    if model.aperture is not None:
        truth_json["aperture"] = model.aperture
    paths["truth_json"] = out / "truth.json"
    _atomic_write_bytes(paths["truth_json"], (json.dumps(truth_json, indent=2) + "\n").encode())
    paths["config"] = out / "config.yaml"
    _atomic_write_bytes(paths["config"], _config_yaml(data_path.name, fmt, params).encode())
    return paths


def _scenario_truth_arrays(model: SynthModel, lif_share: np.ndarray) -> dict[str, np.ndarray]:
    """truth.npz arrays of the scenario-matrix axes (all (Ry, Rx)): ``lif_share`` (LiF share of the scattered
    intensity of a Type 2 position's own content, before boundary mixing scales it by 1 − α; 0 elsewhere), ``scattered_fraction`` (1 − central fraction), ``mix_fraction`` (α, share of the
    minority layer along the beam), ``mix_layer`` (its LAYER_NAMES index, −1 none), ``mix_class`` (its
    CLASS_NAMES index, −1 none; the position's own class, the majority, is ``class_map``),
    ``peak_q_with_disks`` (added by the caller: the I·Q^n maximum of the full profile, Bragg/LiF disks
    included; ``peak_q`` is then that of the isotropic part), ``target_smooth``/``target_scatter`` (1/Å, the two parts of a target about its class mean; NaN
    without ``class_spread``) and ``grain_off_axis`` (per grain: 0 at the zone axis, 1 systematic row,
    2 a single Friedel pair)."""
    ph, p = model.phantom, model.params
    shape = ph.class_map.shape
    layer_cls = np.array([CLASS_INDEX[LAYER_CLASS_NAMES[n]] for n in LAYER_NAMES], dtype=np.int8)
    mix_class = np.where(model.mix_layer >= 0, layer_cls[np.maximum(model.mix_layer, 0)], -1).astype(np.int8)
    kind = {None: 0, "row": 1, "pair": 2}
    nan = np.full(shape, np.nan)
    return {
        "lif_share": lif_share,
        "scattered_fraction": (np.full(shape, 1.0 - p.central_fraction) if model.central_map is None
                               else 1.0 - model.central_map),
        "mix_fraction": model.mix_alpha,
        "mix_layer": model.mix_layer,
        "mix_class": mix_class,
        "target_smooth": nan if model.target_smooth is None else model.target_smooth,
        "target_scatter": nan if model.target_scatter is None else model.target_scatter,
        "grain_off_axis": np.array([kind[None if m is None else m["kind"]] for m in model.grain_modes], dtype=np.int8),
    }


def _scenario_truth_json(model: SynthModel, arrays: dict) -> dict:
    """truth.json ``scenario`` record: every parameter of the scenario-matrix axes and what they produced."""
    p, ph = model.params, model.phantom
    t2 = ph.class_map == CLASS_INDEX["sei_type2"]
    ls = arrays["lif_share"][t2]
    sf = arrays["scattered_fraction"]
    mixed = arrays["mix_fraction"] > 0
    pairs: dict[str, int] = {}
    for own, other in zip(ph.class_map[mixed], arrays["mix_class"][mixed]):
        key = f"{CLASS_NAMES[int(own)]}+{CLASS_NAMES[int(other)]}"
        pairs[key] = pairs.get(key, 0) + 1
    none_p = (LIF_NONE_DEFAULT if p.lif_none_prob is None else p.lif_none_prob) if p.lif_share is not None else None
    return {
        "name": p.scenario,
        "peak_truth": "I·Q^n maximum of the noise-free probe-convolved isotropic (amorphous) part, disks excluded "
                      "(peak_q); with the disks: peak_q_with_disks",
        "class_spread": None if model.spread is None else {
            "setting": p.class_spread, "smooth_share": p.spread_smooth_share,
            "clip_sigma": SPREAD_CLIP_SIGMA,
            "requested": {c: {"mean": m, "sigma": s} for c, (m, s) in model.spread.items()},
            "truth": {c: {"mean": float(np.nanmean(arrays["peak_q"][ph.class_map == CLASS_INDEX[c]])),
                          "sigma": float(np.nanstd(arrays["peak_q"][ph.class_map == CLASS_INDEX[c]]))}
                      for c in model.spread if (ph.class_map == CLASS_INDEX[c]).any()}},
        "lif": None if p.lif_share is None else {
            "share_range": list(p.lif_share), "share_distribution": "log-uniform", "none_prob": none_p,
            "zones": [list(z) for z in LIF_ZONES_RANDOM], "n_type2": int(t2.sum()),
            "n_none": int(np.sum(ls == 0)), "share_mean": float(ls.mean()) if ls.size else None},
        "grains": None if not p.off_axis > 0 else {
            "off_axis_prob": p.off_axis, "excitation_range": list(OFF_AXIS_EXCITATION),
            "per_grain": [{"index": i, "phase": g.phase, "zone": list(g.zone),
                           **({"kind": "zone"} if m is None else
                              {"kind": m["kind"], "g0_hkl": m["g0_hkl"], "excited_hkl": m["excited_hkl"],
                               "bragg_share": m["bragg_share"]})}
                          for i, (g, m) in enumerate(zip(ph.grains, model.grain_modes))]},
        "scattered_fraction": None if p.scattered_fraction is None else {
            "range": list(p.scattered_fraction), "field": "smooth random field (phantom.smooth_random_field)",
            "min": float(sf.min()), "max": float(sf.max())},
        "mixing": None if not p.mix_width_nm > 0 else {
            "width_nm": p.mix_width_nm, "rule": "alpha = max(0, 1/2 - |d|/width), d distance to the layer boundary",
            "n_mixed": int(mixed.sum()), "pairs_majority_plus_minority": pairs,
            "truth": "class_map is the majority (own) layer's class; mix_class the minority's"},
    }


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
    g = parser.add_argument_group(
        "scenario matrix (issue 18; all off by default, every setting recorded in truth.json 'scenario')")
    g.add_argument("--scenario", default=None, metavar="matrix:CELL",
                   help="a preset cell of the scenario matrix (sendmap/synth/scenario.py: legacy, spread, lif-faint, "
                        "lif-dominant, lif-range, offaxis, thin, thick, thickness, mixed, speckle3, speckle30, all); "
                        "explicit flags below override it")
    g.add_argument("--class-spread", default=None, metavar="published|SIGMA",
                   help="SRO peak targets with class spreads as published (means 0.33/0.295/0.285 1/Å, σ ≈ 0.02; "
                        "or give σ in 1/Å): a smooth variation across the layer plus position scatter")
    g.add_argument("--spread-smooth-share", type=float, default=0.5, metavar="F",
                   help="share of the class variance in the smooth part (rest: position scatter); default 0.5")
    g.add_argument("--lif-share", default=None, metavar="LO:HI",
                   help="LiF crystallites' share of the scattered intensity per Type 2 position, log-uniform in "
                        "[LO, HI] (e.g. 0.01:0.4), random zone axes")
    g.add_argument("--lif-none", type=float, default=None, metavar="P",
                   help="with --lif-share: share of Type 2 positions with no excited LiF reflection; default 0.15")
    g.add_argument("--off-axis", type=float, default=0.0, metavar="P",
                   help="probability that a Li/Cu grain is off its zone axis (one systematic row or a single "
                        "Friedel pair, weak); default 0")
    g.add_argument("--scattered-fraction", default=None, metavar="LO:HI",
                   help="share of electrons outside the central disk (thickness), a smooth field over the scan in "
                        "[LO, HI] (e.g. 0.1:0.5); overrides --central-fraction")
    g.add_argument("--mix-width", type=float, default=0.0, metavar="NM",
                   help="mixed patterns along the beam at every layer boundary over this lateral width (nm); "
                        "the truth is the majority layer, the minority is recorded; default 0")
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
    from .scenario import apply_scenario, parse_range

    apply_scenario(args)

    def rng_arg(v, what):
        return None if v is None else (parse_range(v, what) if isinstance(v, str) else tuple(v))

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
        scenario=getattr(args, "scenario", None), class_spread=getattr(args, "class_spread", None),
        spread_smooth_share=getattr(args, "spread_smooth_share", 0.5),
        lif_share=rng_arg(getattr(args, "lif_share", None), "--lif-share"),
        lif_none_prob=getattr(args, "lif_none", None), off_axis=getattr(args, "off_axis", 0.0),
        scattered_fraction=rng_arg(getattr(args, "scattered_fraction", None), "--scattered-fraction"),
        mix_width_nm=getattr(args, "mix_width", 0.0), progress=not args.quiet)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m sendmap.synth.make OUT_DIR [options]``."""
    parser = add_synth_arguments(argparse.ArgumentParser(prog="sendmap synth", description=__doc__.split("\n")[0]))
    return synth_main(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
