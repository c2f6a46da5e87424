"""The spatial phantom of a synthetic SEND scan: where each layer, grain and class lies, what SRO peak
position each amorphous probe position should show, how the pattern centre drifts (descan), and which
detector pixels are hot or dead.

Scan coordinates: probe position (ry, rx) has its centre at (y, x) = ((ry + ½)·step, (rx + ½)·step) nm, so
the scan covers [0, Ry·step] × [0, Rx·step] nm; x is the fast axis. The interface is layered across x:

    electrolyte | SEI Type 1 | Li grain | SEI Type 1 | SEI Type 2 | Cu grains

(SCIENCE.md: a uniform Type 1 layer at the electrolyte/Li interface; at the Li/Cu interface Type 1
≈ 15 nm next to Li and Type 2 ≈ 35 nm next to Cu). Boundaries are wavy along y.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from sendmap import CLASS_NAMES

from .patterns import ZONE_AXES

CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}

LAYER_NAMES = ("electrolyte", "sei1_electrolyte_side", "li", "sei1_cu_side", "sei2", "cu")
"""Layers from x = 0 (left) to x = Rx·step (right)."""

LAYER_CLASS = {
    "electrolyte": "electrolyte",
    "sei1_electrolyte_side": "sei_type1",
    "li": "crystal",
    "sei1_cu_side": "sei_type1",
    "sei2": "sei_type2",
    "cu": "crystal",
}

DEFAULT_LAYERS_NM = {
    # Nominal thicknesses (nm) for the default 90 × 4 nm = 360 nm scan width; rescaled to any width.
    # SEI values from SCIENCE.md (Type 1 ≈ 15 nm next to Li and Type 2 ≈ 35 nm next to Cu at the Li/Cu
    # interface; uniform Type 1 ≈ 20 nm at the electrolyte/Li interface); electrolyte, Li and Cu fill the
    # rest in comparable amounts so every class has plenty of positions.
    "electrolyte": 110.0,
    "sei1_electrolyte_side": 20.0,
    "li": 90.0,
    "sei1_cu_side": 15.0,
    "sei2": 35.0,
    "cu": 90.0,
}

PEAK_RANGES = {
    # Published point-to-point range of the first SRO peak maximum of I×Q (1/Å), SCIENCE.md
    "sei_type1": (0.325, 0.345),
    "sei_type2": (0.29, 0.31),
    "electrolyte": (0.28, 0.29),
}

TARGET_MARGIN = 0.0005
"""1/Å kept between the drawn peak targets and the published range ends, so that the exactly computed
truth (which lands on its target to ~1e-6) stays inside the range."""


@dataclass(frozen=True)
class Grain:
    """One crystal grain: phase ('li' | 'cu'), zone axis [uvw] and in-plane rotation (degrees)."""

    phase: str
    zone: tuple[int, int, int]
    rotation_deg: float

    def as_dict(self) -> dict:
        return {"phase": self.phase, "zone": list(self.zone), "rotation_deg": self.rotation_deg}


@dataclass
class Phantom:
    """Spatial ground truth of a scan (all maps (Ry, Rx))."""

    scan_shape: tuple[int, int]
    step_nm: float
    layer_map: np.ndarray  # int8, index into LAYER_NAMES
    class_map: np.ndarray  # int8, index into CLASS_NAMES
    grain_map: np.ndarray  # int16, index into grains; −1 where amorphous
    grains: list[Grain]
    depth: np.ndarray  # float, 0 at the layer side nearest the Li grain, 1 at the far side
    target_peak_q: np.ndarray  # float, 1/Å; NaN for crystals
    layer_thickness_nm: dict[str, float]
    boundaries_nm: np.ndarray  # (n_layers − 1, Ry) x of each boundary at each scan row
    extras: dict = field(default_factory=dict)


def scaled_thicknesses(layers_nm: dict[str, float], width_nm: float) -> dict[str, float]:
    """Scale nominal layer thicknesses (nm) so that they fill ``width_nm`` (order of LAYER_NAMES)."""
    missing = [n for n in LAYER_NAMES if n not in layers_nm]
    if missing:
        raise ValueError(f"layer thicknesses missing for {missing}")
    t = np.array([float(layers_nm[n]) for n in LAYER_NAMES])
    if np.any(t <= 0):
        raise ValueError("layer thicknesses must be positive")
    t = t * (width_nm / t.sum())
    return {n: float(v) for n, v in zip(LAYER_NAMES, t)}


def wavy_boundaries(
    y_nm: np.ndarray, thickness_nm: dict[str, float], waviness_nm: float, rng: np.random.Generator
) -> np.ndarray:
    """x positions (nm) of the n_layers − 1 boundaries at heights y_nm: (n_layers − 1, ny).

    Each boundary is its mean position plus a sinusoid of amplitude A (period 0.7–1.5× the scan height,
    random phase) and two random-phase harmonics of amplitude A/3 and A/6. A = ``waviness_nm`` but at most
    a quarter of the thinner neighbouring layer, so adjacent boundaries never cross (max excursion 1.5·A)."""
    t = np.array([thickness_nm[n] for n in LAYER_NAMES])
    edges = np.cumsum(t)[:-1]
    height = max(float(y_nm.max() - y_nm.min()), 1.0) + (y_nm[1] - y_nm[0] if y_nm.size > 1 else 0.0)
    out = np.empty((edges.size, y_nm.size))
    for k, x0 in enumerate(edges):
        amp = min(waviness_nm, 0.25 * min(t[k], t[k + 1]))
        period = height * rng.uniform(0.7, 1.5)
        ph = rng.uniform(0, 2 * np.pi, size=3)
        ang = 2 * np.pi * y_nm / period
        out[k] = (x0 + amp * np.sin(ang + ph[0]) + amp / 3 * np.sin(2 * ang + ph[1])
                  + amp / 6 * np.sin(3 * ang + ph[2]))
    return out


def smooth_random_field(
    scan_shape: Sequence[int], step_nm: float, rng: np.random.Generator, correlation_nm: float = 150.0,
    n_modes: int = 6,
) -> np.ndarray:
    """Low-frequency random field in [0, 1] over the scan: a sum of ``n_modes`` plane waves with random
    directions, wavelengths ≥ ``correlation_nm`` and phases, rescaled min→0, max→1 (constant 0.5 if flat)."""
    ry, rx = int(scan_shape[0]), int(scan_shape[1])
    y = (np.arange(ry) + 0.5) * step_nm
    x = (np.arange(rx) + 0.5) * step_nm
    yy, xx = np.meshgrid(y, x, indexing="ij")
    f = np.zeros((ry, rx))
    for _ in range(n_modes):
        lam = correlation_nm * rng.uniform(1.0, 3.0)
        th = rng.uniform(0, np.pi)
        f += rng.uniform(0.5, 1.0) * np.cos(2 * np.pi * (xx * np.cos(th) + yy * np.sin(th)) / lam
                                            + rng.uniform(0, 2 * np.pi))
    span = f.max() - f.min()
    return (f - f.min()) / span if span > 1e-12 else np.full_like(f, 0.5)


def make_phantom(
    scan_shape: Sequence[int],
    step_nm: float,
    rng: np.random.Generator,
    layers_nm: dict[str, float] | None = None,
    waviness_nm: float = 3.0,
    n_cu_grains: int | None = None,
    gradient_weight: float = 0.6,
) -> Phantom:
    """Build the layered phantom (see module docstring).

    ``gradient_weight`` w: a position's SRO peak target within its class range [lo, hi] is
    lo + (hi − lo)·(w·(1 − depth) + (1 − w)·field), where depth runs 0 → 1 away from the Li grain across the
    layer (SCIENCE.md: the peak drifts from ≈ 0.34 next to Li to ≈ 0.295 into the electrolyte) and field is a
    smooth random field in [0, 1] (one per class).
    """
    ry, rx = int(scan_shape[0]), int(scan_shape[1])
    width = rx * step_nm
    thick = scaled_thicknesses(layers_nm or DEFAULT_LAYERS_NM, width)
    y = (np.arange(ry) + 0.5) * step_nm
    x = (np.arange(rx) + 0.5) * step_nm
    bnd = wavy_boundaries(y, thick, waviness_nm, rng)  # (5, ry)
    layer = np.empty((ry, rx), dtype=np.int8)
    depth = np.zeros((ry, rx))
    left = np.vstack([np.zeros((1, ry)), bnd])  # (6, ry) left edge of each layer
    right = np.vstack([bnd, np.full((1, ry), width)])
    li = LAYER_NAMES.index("li")
    for i in range(ry):
        k = np.searchsorted(bnd[:, i], x, side="right")
        layer[i] = k
        lo, hi = left[k, i], right[k, i]
        frac = np.clip((x - lo) / np.maximum(hi - lo, 1e-9), 0.0, 1.0)
        # depth 0 on the side facing the Li grain: layers left of Li face it with their right edge
        depth[i] = np.where(k < li, 1.0 - frac, frac)
    class_map = np.array([CLASS_INDEX[LAYER_CLASS[n]] for n in LAYER_NAMES], dtype=np.int8)[layer]

    # grains: one Li grain; 2–3 Cu grains split along y by slightly inclined lines
    grains = [Grain("li", ZONE_AXES[rng.integers(len(ZONE_AXES))], float(rng.uniform(0, 360)))]
    n_cu = int(n_cu_grains) if n_cu_grains is not None else int(rng.integers(2, 4))
    zones = rng.permutation(len(ZONE_AXES))
    for g in range(n_cu):
        grains.append(Grain("cu", ZONE_AXES[zones[g % len(ZONE_AXES)]], float(rng.uniform(0, 360))))
    grain_map = np.full((ry, rx), -1, dtype=np.int16)
    grain_map[layer == li] = 0
    height = ry * step_nm
    # split lines: evenly spaced ± 15 % jitter, tilted by up to ±10° (a grain boundary seen edge-on)
    ys = (np.arange(1, n_cu) / n_cu + rng.uniform(-0.15, 0.15, n_cu - 1) / n_cu) * height
    tilt = np.tan(np.radians(rng.uniform(-10, 10, n_cu - 1)))
    yy, xx = np.meshgrid(y, x, indexing="ij")
    x_cu = float(bnd[-1].mean())
    cu_idx = np.zeros((ry, rx), dtype=np.int16)
    for ysplit, tt in zip(ys, tilt):
        cu_idx += (yy > ysplit + tt * (xx - x_cu)).astype(np.int16)
    is_cu = layer == LAYER_NAMES.index("cu")
    grain_map[is_cu] = 1 + cu_idx[is_cu]

    target = np.full((ry, rx), np.nan)
    for cname, (lo, hi) in PEAK_RANGES.items():
        m = class_map == CLASS_INDEX[cname]
        fld = smooth_random_field(scan_shape, step_nm, rng)
        lo_t, hi_t = lo + TARGET_MARGIN, hi - TARGET_MARGIN
        s = gradient_weight * (1.0 - depth) + (1.0 - gradient_weight) * fld
        target[m] = (lo_t + (hi_t - lo_t) * s)[m]

    return Phantom(
        scan_shape=(ry, rx), step_nm=float(step_nm), layer_map=layer, class_map=class_map,
        grain_map=grain_map, grains=grains, depth=depth, target_peak_q=target,
        layer_thickness_nm=thick, boundaries_nm=bnd,
    )


@dataclass(frozen=True)
class Descan:
    """Pattern centre over the scan: c(ry, rx) = centre0 + per_step_y·ry + per_step_x·rx (pixels, [y, x])."""

    centre0_yx: tuple[float, float]
    per_step_y: tuple[float, float]
    per_step_x: tuple[float, float]

    def centres(self, scan_shape: Sequence[int]) -> np.ndarray:
        """(Ry, Rx, 2) centres [y, x] in detector pixels."""
        ry = np.arange(int(scan_shape[0]))[:, None, None]
        rx = np.arange(int(scan_shape[1]))[None, :, None]
        return (np.asarray(self.centre0_yx)[None, None, :] + ry * np.asarray(self.per_step_y)
                + rx * np.asarray(self.per_step_x))

    def as_dict(self) -> dict:
        return {"centre0_yx": list(self.centre0_yx), "per_step_y": list(self.per_step_y),
                "per_step_x": list(self.per_step_x)}


def make_descan(
    scan_shape: Sequence[int],
    detector_shape: Sequence[int],
    drift_fast_px: Sequence[float],
    drift_slow_px: Sequence[float],
    rng: np.random.Generator,
) -> Descan:
    """Plane descan: the centre moves by ``drift_fast_px`` [dy, dx] end to end along the fast scan axis (x,
    first to last column) and by ``drift_slow_px`` end to end along the slow axis (y). The middle of the
    scan sits at the detector centre ((Qy − 1)/2, (Qx − 1)/2) plus a random sub-pixel offset (±0.5 px) so
    the centre is never exactly on a pixel or half-pixel."""
    ry, rx = int(scan_shape[0]), int(scan_shape[1])
    fast = np.asarray(drift_fast_px, dtype=float)
    slow = np.asarray(drift_slow_px, dtype=float)
    gx = fast / max(rx - 1, 1)
    gy = slow / max(ry - 1, 1)
    mid = np.array([(detector_shape[0] - 1) / 2.0, (detector_shape[1] - 1) / 2.0]) + rng.uniform(-0.5, 0.5, 2)
    c0 = mid - gy * (ry - 1) / 2.0 - gx * (rx - 1) / 2.0
    return Descan(tuple(map(float, c0)), tuple(map(float, gy)), tuple(map(float, gx)))


def defect_pixels(
    detector_shape: Sequence[int],
    centres_yx: np.ndarray,
    exclusion_radius_px: float,
    n_hot: int,
    n_dead: int,
    rng: np.random.Generator,
    hot_counts: tuple[int, int] = (200, 1000),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed hot and dead detector pixels, never within ``exclusion_radius_px`` of any pattern centre
    (i.e. never in the central disk) and never on the outermost pixel row/column.

    Returns (hot (n_hot, 2) int [y, x], hot_values (n_hot,) int counts in every frame, drawn uniformly in
    ``hot_counts`` — "hundreds of counts", dead (n_dead, 2) int, always 0)."""
    qy, qx = int(detector_shape[0]), int(detector_shape[1])
    c = np.asarray(centres_yx, dtype=float).reshape(-1, 2)
    mean = c.mean(0)
    spread = float(np.sqrt(((c - mean) ** 2).sum(1)).max()) if c.size else 0.0
    rmin = exclusion_radius_px + spread
    yy, xx = np.meshgrid(np.arange(1, qy - 1), np.arange(1, qx - 1), indexing="ij")
    ok = np.hypot(yy - mean[0], xx - mean[1]) > rmin
    cand = np.stack([yy[ok], xx[ok]], axis=1)
    n = int(n_hot) + int(n_dead)
    if n > len(cand):
        raise ValueError(f"cannot place {n} defect pixels on a {qy}×{qx} detector outside the central disk")
    pick = cand[rng.choice(len(cand), size=n, replace=False)] if n else np.zeros((0, 2), dtype=int)
    hot = pick[: int(n_hot)].astype(np.int64)
    dead = pick[int(n_hot):].astype(np.int64)
    vals = rng.integers(hot_counts[0], hot_counts[1] + 1, size=int(n_hot)).astype(np.int64)
    return hot, vals, dead


def class_counts(class_map: np.ndarray) -> dict[str, int]:
    """Number of probe positions of each class name."""
    return {name: int((class_map == i).sum()) for i, name in enumerate(CLASS_NAMES)}


def mean_layer_width_nm(boundaries_nm: np.ndarray, width_nm: float) -> dict[str, float]:
    """Mean thickness (nm, averaged along y) of every layer, from the wavy boundaries."""
    b = np.vstack([np.zeros((1, boundaries_nm.shape[1])), boundaries_nm,
                   np.full((1, boundaries_nm.shape[1]), width_nm)])
    return {n: float(np.mean(b[i + 1] - b[i])) for i, n in enumerate(LAYER_NAMES)}


# ----------------------------------------------------------------------------------------------------
# Scenario-matrix axes (issue 18; opt-in, ``sendmap synth --class-spread / --mix-width``): published class
# spreads and mixed patterns along the beam at the layer boundaries. They draw from their own random
# streams, so the default phantom above is unchanged, count for count.
# ----------------------------------------------------------------------------------------------------

PUBLISHED_CLASS_SPREAD = {
    # class: (mean, σ) of the first SRO peak maximum of I×Q, 1/Å (SCIENCE.md, the 2025 cryo-SEND study):
    # Type 1 at the Li/Cu interface averages 0.33 with histogram σ 0.019; Type 2 averages 0.295; the
    # electrolyte 0.285; "published per-class histograms are broad (σ ≈ 0.02)" (Type 2 and electrolyte σ).
    "sei_type1": (0.330, 0.019),
    "sei_type2": (0.295, 0.020),
    "electrolyte": (0.285, 0.020),
}

SPREAD_CLIP_SIGMA = 2.5
"""Targets of the published-spread mode are clipped to mean ± 2.5σ (98.8 % of a Gaussian; the clipped spread
is 0.955σ): the I·Q maximum of a ring on the falling background stops following its centre far outside the
classes' published range (a shoulder, not a maximum, at low Q), and 2.5σ keeps every target (0.235–0.3775
1/Å) a true maximum inside the default window [0.22, 0.42]."""


def spread_ranges(spread: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Clip range [mean − 2.5σ, mean + 2.5σ] (1/Å) of each class's peak targets (SPREAD_CLIP_SIGMA)."""
    return {c: (m - SPREAD_CLIP_SIGMA * s, m + SPREAD_CLIP_SIGMA * s) for c, (m, s) in spread.items()}


def spread_targets(
    class_map: np.ndarray,
    depth: np.ndarray,
    step_nm: float,
    spread: dict[str, tuple[float, float]],
    rng: np.random.Generator,
    smooth_share: float = 0.5,
    gradient_weight: float = 0.6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SRO peak targets (1/Å) with class spreads as published: per class, mean + a smooth part + scatter.

    For the positions of class c with (mean, σ) = ``spread[c]``: smooth part s = w·(1 − depth) + (1 − w)·field
    (as in ``make_phantom``: a gradient across the layer, high Q next to the Li grain, SCIENCE.md, plus a
    smooth random field), standardised over the class's positions and scaled to σ·sqrt(``smooth_share``);
    position-to-position scatter: independent normal, σ·sqrt(1 − ``smooth_share``). So the class's targets
    have standard deviation σ (before clipping to mean ± 2.5σ, ``SPREAD_CLIP_SIGMA``, which trims ≈ 1 %).

    Returns (target (Ry, Rx), NaN where not amorphous; smooth part (Ry, Rx) in 1/Å about the mean;
    scatter part (Ry, Rx) in 1/Å).
    """
    if not 0.0 <= smooth_share <= 1.0:
        raise ValueError(f"smooth_share must be in [0, 1], got {smooth_share}")
    target = np.full(class_map.shape, np.nan)
    smooth = np.full(class_map.shape, np.nan)
    scatter = np.full(class_map.shape, np.nan)
    for cname, (mean, sigma) in spread.items():
        m = class_map == CLASS_INDEX[cname]
        fld = smooth_random_field(class_map.shape, step_nm, rng)
        noise = rng.standard_normal(class_map.shape)
        if not m.any():
            continue
        s = gradient_weight * (1.0 - depth) + (1.0 - gradient_weight) * fld
        sd = float(np.std(s[m]))
        z = (s - np.mean(s[m])) / sd if sd > 1e-12 else np.zeros_like(s)
        smooth[m] = (sigma * np.sqrt(smooth_share) * z)[m]
        scatter[m] = (sigma * np.sqrt(1.0 - smooth_share) * noise)[m]
        lo, hi = mean - SPREAD_CLIP_SIGMA * sigma, mean + SPREAD_CLIP_SIGMA * sigma
        target[m] = np.clip(mean + smooth[m] + scatter[m], lo + TARGET_MARGIN, hi - TARGET_MARGIN)
    return target, smooth, scatter


def boundary_mixing(
    layer_map: np.ndarray, boundaries_nm: np.ndarray, step_nm: float, width_nm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mixed patterns along the beam at the layer boundaries (an interface inclined through the lamella).

    A boundary inclined to the beam is crossed over a lateral width w = ``width_nm``: a probe at signed
    distance d (nm) from the boundary's mid-depth line passes through the other layer over a fraction
    α = max(0, ½ − |d|/w) of the lamella thickness (linear in d, ½ at the boundary, 0 from w/2 on). The
    position's own layer (where its centre is) is the majority (α ≤ ½): that is its class in the truth.
    Every layer boundary counts (electrolyte|SEI 1, SEI 1|Li, Li|SEI 1, SEI 1|SEI 2, SEI 2|Cu); boundaries
    between Cu grains do not (both sides are crystal).

    Returns (alpha (Ry, Rx) float, share of the minority layer; mix_layer (Ry, Rx) int8, index of the
    minority layer into LAYER_NAMES, −1 where α = 0; source_rx (Ry, Rx) int, the column of the same row
    nearest to the position that lies in the minority layer (its content is what the beam also crosses),
    −1 where none).
    """
    ry, rx = layer_map.shape
    alpha = np.zeros((ry, rx))
    mix_layer = np.full((ry, rx), -1, dtype=np.int8)
    source = np.full((ry, rx), -1, dtype=np.int64)
    if not width_nm > 0:
        return alpha, mix_layer, source
    x = (np.arange(rx) + 0.5) * step_nm
    cols = np.arange(rx)
    for i in range(ry):
        d = x[:, None] - boundaries_nm[:, i][None, :]  # (rx, n_boundaries), > 0 right of the boundary
        k = np.argmin(np.abs(d), axis=1)
        dk = d[cols, k]
        a = np.clip(0.5 - np.abs(dk) / width_nm, 0.0, 0.5)
        other = np.where(dk > 0, k, k + 1)  # boundary k separates layer k (left) from layer k + 1 (right)
        for j in np.nonzero(a > 0)[0]:
            in_other = np.nonzero(layer_map[i] == other[j])[0]
            if in_other.size == 0:
                continue
            alpha[i, j] = a[j]
            mix_layer[i, j] = other[j]
            source[i, j] = in_other[np.argmin(np.abs(in_other - j))]
    return alpha, mix_layer, source
