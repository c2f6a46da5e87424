"""The YAML config: a typed, validated model (pydantic) with the keys of CONTRACT.md and more.

Every section is a model with ``extra="forbid"``: an unknown key is an error that names the key,
the file and the nearest valid name. Relative paths resolve against the config file's folder.

Size: the whole YAML schema, one pydantic model per section in the order of the file, with the loader whose
error messages walk that schema (~410 + ~120 lines); every feature adds keys here, so one file stays the one place
to read what a config may say. The loader (``_format_errors`` to ``load_config``) could move out if it grows.

>>> cfg = config_from_dict({"input": {"path": "data.npy", "scan_shape": [4, 6]}})
>>> cfg.profiles.n, cfg.peaks.window
(1, (0.22, 0.42))
"""
from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import ConfigError

FORMATS = ("auto", "mib", "dm4", "dm3", "empad", "arina", "py4dstem", "npy", "zarr", "raw",
           "blockfile", "tvips", "mrc", "velox", "hspy", "zspy")


class _Section(BaseModel):
    # allow_inf_nan=False: a YAML .inf or .nan is refused for every number (no key means "infinite")
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _ordered_range(v, what: str = "a range", low: float = 0.0):
    """A (low, high) range of 1/Å (a window, a band): ``low`` ≤ lo < hi, else a ValueError saying so."""
    if v is None:
        return v
    lo, hi = v
    if not lo < hi:
        raise ValueError(f"{what} is [low, high] with low < high, got {list(v)}"
                         + (" (reversed?)" if lo > hi else ""))
    if lo < low:
        raise ValueError(f"{what} must lie at Q >= {low:g} 1/Å, got {list(v)}")
    return v


class RawLayout(_Section):
    """Byte layout of a raw binary file (``input.format: raw``): a file header, then per frame a header,
    Qy × Qx pixels and a footer."""

    dtype: str = Field(..., description="pixel type, a numpy name: uint8, uint16, >u2, float32, ...")
    frame_shape: tuple[int, int] = Field(..., description="[Qy, Qx] detector pixels")
    header_bytes: int = Field(0, ge=0, description="bytes before the first frame")
    frame_header_bytes: int = Field(0, ge=0, description="bytes before each frame's pixels")
    frame_footer_bytes: int = Field(0, ge=0, description="bytes after each frame's pixels")
    byte_order: Literal["<", ">", "="] = Field("<", description="'<' little-endian, '>' big-endian, '=' native")


Region = tuple[int, int, int, int]


class InputConfig(_Section):
    path: str = Field(..., description="the raw dataset; relative to the config file's folder")
    format: Literal[FORMATS] = "auto"  # type: ignore[valid-type]
    scan_shape: Optional[tuple[int, int]] = Field(None, description="[Ry, Rx] where the file does not record it")
    dataset: Optional[str] = Field(
        None, description="HDF5 or zarr path of the 4D array inside the file (null: found automatically)")
    raw: Optional[RawLayout] = Field(None, description="byte layout, required for format: raw")
    crop_r: Optional[Region] = Field(
        None, description="[y0, y1, x0, x1] probe positions kept (half-open, before binning); null: all")
    crop_q: Optional[Region] = Field(
        None, description="[y0, y1, x0, x1] detector pixels kept (half-open, before binning); null: all")
    bin_r: int = Field(1, ge=1, le=16, description="sum bin_r × bin_r probe positions into one (scan step grows by bin_r)")
    bin_q: int = Field(1, ge=1, le=16, description="sum bin_q × bin_q detector pixels into one (Q per pixel grows by bin_q)")
    nonfinite: Literal["error", "mask"] = Field(
        "error", description="NaN/inf in float data: 'error' (exit 2, naming the first), or 'mask' (set to 0, "
                             "detector pixels holding them masked, counts logged and stored)")
    in_place: bool = Field(True, description="use a zarr input array in place (no copy) when it needs no crop or binning")
    store_layout: Literal["auto", "dense", "sparse"] = Field(
        "auto", description="how the stored data hold the frames: 'sparse' (the non-zero pixels of each frame and "
                            "their counts; integer data only), 'dense' (whole frames, compressed), or 'auto' (sparse "
                            "for integer data with at most 25 % non-zero pixels in the first block). Results are "
                            "identical; sparse is faster to ingest and to profile")

    @field_validator("scan_shape")
    @classmethod
    def _positive(cls, v):
        if v is not None and (v[0] < 1 or v[1] < 1):
            raise ValueError(f"scan_shape must be two positive integers, got {list(v)}")
        return v

    @field_validator("crop_r", "crop_q")
    @classmethod
    def _region(cls, v):
        if v is not None and not (0 <= v[0] < v[1] and 0 <= v[2] < v[3]):
            raise ValueError(f"a crop is [y0, y1, x0, x1] with 0 <= y0 < y1 and 0 <= x0 < x1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _raw_layout(self):
        if self.format == "raw" and self.raw is None:
            raise ValueError("format: raw needs input.raw: {dtype, frame_shape, header_bytes, frame_header_bytes, "
                             "frame_footer_bytes, byte_order}")
        return self


class CalibrationConfig(_Section):
    _from_file: dict = PrivateAttr(default_factory=dict)
    """Values the run took from the input file's own calibration (keys the config left out): see
    :func:`sendmap.stages.input.apply_file_calibration`. Not part of the YAML."""
    q_pixel_size: Optional[float] = Field(None, gt=0, description="1/Å per (unbinned) detector pixel, Q = 1/d; null: "
                                          "from calibrant or camera length, else the input file's own calibration")
    # Bounds that catch unit mistakes (a step in metres, a voltage in V), not physics limits: the finest 4D-STEM
    # steps (atomic-resolution ptychography) are ≈ 0.02 nm, 20× above 1e-3 nm; a STEM scan field is at most tens
    # of µm (scan-coil deflection), so one step above 1e5 nm (100 µm) cannot come from one scan.
    scan_step_nm: float = Field(4.0, ge=1e-3, le=1e5, description="probe step of the recording (before input.bin_r), "
                                "nm (1e-3 to 1e5); left out: the input file's scan step where it records one, else 4")
    # 1 kV (the lowest STEM-in-SEM voltages) to 3000 kV (the largest high-voltage TEMs, 3 MV)
    beam_energy_kv: float = Field(200.0, ge=1, le=3000, description="accelerating voltage, kV (1 to 3000); left out: "
                                  "the input file's where it records one, else 200")
    # the largest probe-forming apertures of aberration-corrected STEM give ≈ 30-50 mrad; SEND uses ≈ 0.5-2
    convergence_mrad: float = Field(2.0, gt=0, le=100, description="probe convergence semi-angle, mrad (at most 100)")
    camera_length_mm: Optional[float] = Field(None, gt=0, description="used with detector_pixel_um when q_pixel_size is null")
    detector_pixel_um: Optional[float] = Field(None, gt=0, description="physical detector pixel size, µm")
    centre_radius_px: Optional[float] = Field(
        None, gt=0, description="radius (px) of the window for the centre of mass; null: 1.5 × probe-disk radius")
    descan_fit: Literal["plane", "none"] = Field("plane", description="robust plane fit of the per-position centres")
    ellipse: Literal["fit", "none", "calibrant"] | tuple[float, float] = Field(
        "fit", description="'fit' from the amorphous ring of the centred mean pattern, 'none', [ratio, angle_deg], "
        "or 'calibrant' (from calibration.calibrant)")
    calibrant: Optional[str] = Field(
        None, description="JSON written by `sendmap calibrate --json` on a standard at the same camera length: "
        "gives q_pixel_size where that is null, and the ellipse with ellipse: calibrant")
    ellipse_window: tuple[float, float] = Field((0.15, 0.45), description="1/Å range used to fit the ellipse")
    ellipse_max_frames: int = Field(
        4096, ge=0, description="fit the ellipse on at most this many frames, whole blocks spread evenly over the "
        "scan (0: every frame). The ellipse is one detector property: 4096 frames of 2e4 e⁻ fix its ratio to "
        "~0.001, and the measured centres still come from every frame")
    mask_hot_dead: bool = Field(True, description="find hot and dead pixels from the sum and max patterns")
    mask_saturated: bool = Field(True, description="exclude pixels that reached the counter's saturation value "
                                 "(unbinned data only) from the profiles")
    saturation_count: Optional[int] = Field(
        None, gt=0, description="saturation value; null: 2^bits − 1 of the recorded counter depth, else the integer "
        "type's maximum")
    mask_shadows: bool = Field(True, description="find a beam stop and an aperture shadow in the mean pattern")
    mask_file: Optional[str] = Field(
        None, description=".npy/.tif/.png of the stored frame shape, nonzero = excluded pixel (pyFAI's convention); "
        "added to the automatic mask")
    @field_validator("ellipse_window")
    @classmethod
    def _ellipse_window(cls, v):
        return _ordered_range(v, "calibration.ellipse_window")

    @field_validator("ellipse")
    @classmethod
    def _ellipse_value(cls, v):
        if isinstance(v, tuple) and not v[0] > 0:
            raise ValueError(f"ellipse: [ratio, angle_deg] needs a ratio > 0 (≈ 1: major/minor axis), got {list(v)}")
        return v

    centre_method: Literal["auto", "disk", "symmetry"] = Field(
        "auto", description="disk: centre of mass of the central disk; symmetry: 180° point symmetry of the rings; "
        "auto: symmetry where a beam stop or the mask hides more than half of the central disk")

    @field_validator("ellipse_window")
    @classmethod
    def _window_order(cls, v):
        if not 0 <= v[0] < v[1]:
            raise ValueError(f"ellipse_window is [low, high] in 1/Å with 0 <= low < high, got {list(v)}")
        return v


class DoseConfig(_Section):
    electrons_per_pattern: Optional[float] = Field(None, gt=0, description="incident electrons per probe position")
    beam_current_pa: Optional[float] = Field(None, gt=0, description="probe current, pA (with dwell_time_ms)")
    dwell_time_ms: Optional[float] = Field(None, gt=0, description="dwell time per position, ms")
    detector_counts_per_electron: Optional[float] = Field(
        None, gt=0, description="mean counts per incident electron, to measure the dose from the counts when nothing "
        "else is given; null: 1 for a counting detector (integer counts), unknown for an integrating camera (float or "
        "negative values, counts above the counter's depth): the dose is then reported in counts, not electrons")


class ProfilesConfig(_Section):
    n: int = Field(1, ge=0, le=4, description="the power in I(Q)·Q^n")
    bin_width: Optional[float] = Field(None, gt=0, description="1/Å; null: one detector pixel")
    q_max: Optional[float] = Field(None, gt=0, description="1/Å; null: the largest full circle inside the detector")
    supersample: int = Field(3, ge=1, le=8, description="sub-pixels per pixel side for the radial binning")
    n_azimuth: int = Field(72, ge=8, le=360, description="azimuthal sectors for anisotropy and spot features")
    error_model: Literal["azimuthal", "poisson"] = Field(
        "azimuthal", description="profiles/sem: azimuthal = Poisson + speckle (the pattern's own azimuthal variance "
        "V(Q) × the share of it a ring's mean keeps for grains the size of the probe disk): honest for nanobeam "
        "patterns of amorphous films, whose speckle scatters more than Poisson; poisson = counting noise only")
    spot_lists: bool = Field(
        True, description="list and index the Bragg-disk-sized spots of every pattern that has one (spots/*, "
        "features/spot_category …; the evidence of classify.definitions.indexing): on scans where most patterns "
        "hold spots (grains, LiF) it costs 2-4× the profile's own per-pattern time; false: no lists, and the crystal "
        "rule is the spot threshold alone")
    centre_step_px: float = Field(
        0.125, gt=0, le=1, description="per-position centres are rounded to this grid (px, 1/n) for the precomputed "
        "pixel tables: at most half a step off; ≤ 1/step² tables of ≈ 8 bytes per pixel")

    @field_validator("centre_step_px")
    @classmethod
    def _one_over_n(cls, v):
        n = round(1 / v)
        if abs(n * v - 1) > 1e-9:
            raise ValueError(f"must be 1/n for a whole number n (0.5, 0.25, 0.125, 0.0625, ...), got {v}")
        return v


class PeaksConfig(_Section):
    window: tuple[float, float] = Field((0.22, 0.42), description="1/Å, where the first SRO peak is sought: the "
                                        "published class means 0.285-0.33 1/Å ± 3 published class spreads (0.019-0.026; "
                                        "SCIENCE.md), 0.228-0.408, rounded outwards")
    fit_half_width: "float | Literal['auto']" = Field(
        "auto", description="1/Å each side of the first estimate used in the polynomial fit, or auto: ± 0.14 (≈ 1.1 × "
        "the FWHM of probe-convolved synthetic SRO peaks) unless, on the scan's mean non-crystalline profile, that "
        "range moves the maximum by more than 0.003 1/Å from a range matched to the peak (1.4 × each side's half width "
        "at half prominence): then the matched, possibly asymmetric, range (real asymmetric halos: the fixed range is "
        "0.008–0.014 1/Å off). The choice and its reason are in the peaks attributes (fit_range). A number: that "
        "range both sides, as in earlier versions")
    degree: int = Field(5, ge=2, le=8, description="degree of the polynomial fitted around the peak (where "
                        "fixed_range_degree does not apply)")
    fixed_range_degree: Optional[int] = Field(
        6, ge=2, le=8, description="degree of the polynomial where fit_half_width: auto keeps the fixed ± 0.14 1/Å range "
        "(23 bins, ≈ 1.1 FWHM each side: the flanks beyond their inflection points); null: degree there too. A quintic "
        "misfits the generator's skewed SRO peaks over that range and its maximum moves with the range (β ≈ -0.2): "
        "noise-free, re-centred, it lands +0.0000 to -0.0024 1/Å from the true maximum of I·Q depending on the "
        "weights (worst under the speckle error model's, sem ∝ intensity) and on where the peak falls between bins; "
        "a sextic -0.0001 to -0.0005 under either weights, β -0.02 to +0.01 (SEI Type 1, Type 2, electrolyte at two "
        "peak positions each: tests/test_peak_bias_mc.py). Not for the matched (narrow, 7-16 bins) range: there a "
        "sextic raised the per-position σ 1.45 × on the real Ta2O5 halo and 1.5 × on the real metallic-glass pattern "
        "(tests/test_peaks_real.py's draws), so real asymmetric halos keep degree")
    smooth_sigma_bins: float = Field(3.0, ge=0, description="Gaussian smoothing (bins) for the first estimate")
    spatial_binning: int = Field(
        1, ge=1, le=8, description="average each profile with those of its k × k neighbourhood that agree with it within "
        "counting noise (χ² test over the fit range: layer boundaries and crystals are not smeared) before the fit")
    grain_disk_reach_nm: Optional[float] = Field(
        None, ge=0, description="nm (off by default: null or 0): positions within this distance (whole scan steps of "
        "calibration.scan_step_nm) of a grain-like position have that grain's listed Li/Cu disks fitted beside the "
        "polynomial where their amplitude exceeds 2.33 sigma (sendmap.science.boundaries.refit_beside_grains). Measured "
        "with 4 (README, 'A grain's faint disks beside it (session 19)'): SEI Type 1 class mean of matrix:mixed at 5e3 "
        "e- +0.0018/+0.0026 -> +0.0016/+0.0019 (development seeds 1419, 1819), check seeds 1519 +0.0070 -> +0.0039, "
        "1919 +0.0041 -> +0.0041, legacy within 0.0005; but matrix:speckle3 (M = 3) at 5e3: speckle passes for "
        "disks, Type 1 recall 0.93 -> 0.81, so not on by default")
    grain_edge_mask_nm: Optional[float] = Field(
        None, ge=0, description="nm (null or 0: off): positions within this distance (whole scan steps of "
        "calibration.scan_step_nm) of a grain-like position have their profile rebuilt from their frame with the "
        "Li/Cu disks listed at those grain positions, and their Friedel mates, masked (a grain minority along the beam "
        "at a layer edge shares the neighbouring grain's orientation; sendmap.science.grain_edge), those disks that reach "
        "the inner half of the first fit's range above its maximum; the rows are refitted through the scan's own fit "
        "range and denoising components (every other position bit for bit). The masked cells are chosen without looking "
        "at the frame's counts, so an isotropic ring's mean stays unbiased. 8 (two 4 nm steps, chosen on development "
        "seeds 1818/1819/1824/1825): matrix:mixed 5e3 SEI Type 1 class mean +0.0038 -> +0.0002 (reporting seed 1019), "
        "check seed 1919 +0.0032 -> +0.0015 (README, 'A grain's faint disks beside it'). Applied only when a sign test over "
        "the positions one step from a grain finds the disks' excess under the mask above that of the same disks turned "
        "30 deg (z > 2.33, 1 % false alarms; sendmap.science.grain_edge.disks_at_edges): scans without inclined layer "
        "boundaries keep their stored profiles bit for bit (lif-range 5e3 seed 1009: z = 0.18, Type 2 -0.0028 kept)")
    profile: Literal["mean", "robust", "masked"] = Field(
        "mean", description="profile the peak is fitted on: the azimuthal mean, the robust mean whose sectors "
        "holding Bragg spots are clipped (for spotty patterns), or the spot-masked mean (profiles/iqn_masked: the "
        "polar cells of every listed Bragg disk left out; needs profiles.spot_lists, else it is the mean)")
    denoise: Literal["none", "pca", "nmf"] = Field(
        "pca", description="low-rank denoising of the profiles before the fit (components from the non-crystalline "
        "positions, each Q bin whitened by its counting noise); the fit's error is propagated through the projection; "
        "none: each position's profile on its own")
    denoise_components: Optional[int] = Field(
        None, ge=1, le=40, description="components kept; null: those above the noise edge of the singular values "
        "plus denoise_guard")
    denoise_guard: int = Field(
        3, ge=0, le=10, description="components kept beyond the noise edge when denoise_components is null: a little more "
        "variance (propagated into the error) for less truncation bias (not in the error)")
    denoise_q_range: Optional[tuple[float, float]] = Field(
        None, description="1/Å range denoised; null: from window[0] − the fit range's left half width to the detector's "
        "edge")
    denoise_exclude_spots: bool = Field(
        False, description="fit each position's denoising coefficients without the Q bins its listed Bragg spots cover "
        "(within the probe disk's radius of their Q, spots/*; gappy PCA, pca only), so that a position's own spots "
        "(e.g. LiF (220) at 0.70 1/Å in SEI Type 2) do not enter its coefficients. Off by default: on development "
        "seeds 656-673 it took the SEI Type 2 class mean of speckle30 (2e4 e-) from -0.0015 to -0.0030 1/Å and of "
        "offaxis (5e3) from -0.0018 to -0.0036, while on lif-dominant at 5e3 (seed 600) it gives the 98 LiF-rich Type 2 "
        "positions that have no SRO maximum otherwise a peak (bias +0.0004, rms 0.010 1/Å)")
    denoise_residual_pool: int = Field(
        1, ge=1, le=15, description="(off by default, 1; 5 to use it) where the denoising's components were counted above the correlated speckle "
        "noise's edge (strong speckle: few components), the residual y − ŷ of the other non-crystalline positions of "
        "each position's k × k neighbourhood (odd k), averaged, is added back to its denoised profile: what the few "
        "components leave out of a class's shape is spatially coherent, the speckle is not "
        "(sendmap.science.denoise_residual). Without it the SEI Type 2 peak came out 0.005-0.006 1/Å low at speckle "
        "M = 3 (development seeds 920, 921, matrix seed 1020; -0.0027 to +0.0007 with it; and -0.0036/-0.0054 -> "
        "-0.0007/-0.0006 on the check seeds 970/971); k = 3, 5, 7 were compared on the development seeds (5 and 7 "
        "alike, 3 noisier). 1: off. Off by default since the real metallic-glass scan (amorphous_sum/sum1.npy, 12 x 16): "
        "with 5 the reported peak errors grew from 0.00018 to 0.00085 1/Å, 2.4 x the map's own scatter (0.00035), "
        "because the added-back mean is shared by neighbouring positions (its noise is correlated between them, which "
        "the class probabilities and the per-region mixtures treat as independent; the region's mixture no longer "
        "converged)")
    denoise_learn_pool: int = Field(
        3, ge=1, le=15, description="(1: off; 3 chosen on development seeds 1620/1621 among 3, 5, 7, README strong speckle) where the denoising's components were counted above the correlated "
        "speckle noise's edge, learn the mean and the components from each non-crystalline position's k x k "
        "neighbourhood mean (odd k) instead of the single profiles, and project every position's own profile onto "
        "them (the same number of components; sendmap.science.peaks.lowrank_denoise, learn): ranked on single "
        "profiles, the speckle's correlated modes take the few components and a class's shape falls below them "
        "(the truncation bias of denoise_residual_pool); averaged over k x k positions the speckle's modes shrink "
        "k^2-fold and the layers' shapes come first. Each denoised profile still depends on its own measurement "
        "only (no error shared between neighbours)")
    one_step_pool: int = Field(
        5, ge=1, le=15, description="(1: off; 5 chosen on development seeds 1620/1621) each non-crystalline position's peak as one Newton step from the "
        "maximum of the mean fit input of the other non-crystalline positions of its k x k neighbourhood (odd k; "
        "sendmap.science.peaks.one_step_peaks): linear in the position's own noise, where its own polynomial's "
        "maximum is not (under strong speckle the noise moves a skewed peak's maximum further along its slower "
        "flank than back). Only over the fixed fit range (fit_half_width auto keeping +-0.14 1/A): on a narrow matched "
        "range the re-centred maximum's feedback makes it steadier (the real metallic-glass scan: scatter 0.00019 "
        "against 0.00066 1/A with the step, whose range differs from the matched one's, moving the mean by +0.0014)")
    classify_feature: Literal["reported", "plain"] = Field(
        "plain", description="the peak the classify stage reads where denoise_learn_pool or one_step_pool changed "
        "the reported peak (peaks/q_peak): 'plain' (the default) stores the estimate without those two options "
        "(components from the single profiles, the polynomial's maximum) as peaks/q_peak_classify, with "
        "q_err_classify and status_classify, and classify reads it, while peaks/q_peak, its error, maps/peak_q and "
        "the class means are the less biased estimate; 'reported': classify reads peaks/q_peak. Under strong speckle "
        "(M = 3) the plain estimator's SEI Type 2 peaks lie low, which keeps them apart from SEI Type 1's; the class "
        "models are learned from the scan's own feature, so a biased but consistent feature is legitimate. With "
        "'reported' SEI Type 1 recall fell 0.97 -> 0.90 on matrix seed 1020 (README, strong speckle)")
    second_window: tuple[float, float] = Field(
        (0.45, 0.75), description="1/Å, where the second SRO peak (≈ 1.75–1.8 × the first) is sought")
    second_half_width: float = Field(0.16, gt=0, description="1/Å each side of the second peak's first estimate")
    flat_top_test: bool = Field(
        False, description="test every peak for a flat or two-topped maximum (status no_clear_maximum, its error the "
        "plateau's half width, no class from a Q range that spans classes; sendmap.science.peaks.FLAT_TOP_Z, "
        "RIVAL_Z). Off by default: on synthetic scans at 5e3 e- with speckle M = 30 it flags 13 % of the amorphous "
        "positions although their estimates are as accurate as the rest (|q - true| median 0.0072 against 0.0073 "
        "1/Å), reporting ~12x too wide an error and leaving them unclassed; the real flat top it was made for came "
        "from wrong centres, which calibrate now avoids")

    @field_validator("window", "second_window", "denoise_q_range")
    @classmethod
    def _ranges(cls, v, info):
        return _ordered_range(v, f"peaks.{info.field_name}")

    @field_validator("denoise_residual_pool", "denoise_learn_pool", "one_step_pool")
    @classmethod
    def _odd_pool(cls, v):
        if v > 1 and v % 2 == 0:
            raise ValueError(f"must be 1 (off) or an odd number of positions (3, 5, 7, ...), got {v}")
        return v

    @field_validator("fit_half_width")
    @classmethod
    def _positive_width(cls, v):
        if v != "auto" and not v > 0:
            raise ValueError(f"must be auto or a number > 0 (1/Å), got {v}")
        return v


class ClassDefinitions(_Section):
    """Class rules; defaults from SCIENCE.md (2025 cryo-SEND study)."""

    crystal_spot_z: float = Field(25.0, gt=0, description="Bragg-disk significance (σ) above which a pattern is crystalline, "
                                  "at crystal_spot_z_electrons per pattern (speckled synthetic scans, seeds 21-25: "
                                  "amorphous ≤ 13.4 at the 99th percentile, SEI Type 2 with LiF ≤ 24, crystals ≥ 18.5, "
                                  "1st percentile ≥ 27.6 at 2 × 10⁴ e⁻; at 5 × 10³ (threshold 12.5): ≤ 9.9, ≤ 16, ≥ 20)")
    crystal_spot_z_electrons: Optional[float] = Field(
        20000.0, gt=0, description="electrons per (stored) pattern at which crystal_spot_z holds; the threshold scales "
        "as sqrt(electrons / this), as a spot's significance does; null: no scaling")
    crystal_bands: list[tuple[float, float]] = Field(
        [(0.38, 0.44), (0.45, 0.60), (0.75, 0.82)],
        description="1/Å bands where Li (110 0.403, 200 0.570) and Cu (111 0.479, 200 0.553, 220 0.782) Bragg disks fall")
    crystal_min_neighbours: int = Field(
        4, ge=0, le=8, description="of its 8 scan neighbours, how many must pass the crystal spot threshold too: Li/Cu "
        "grains span many positions, a LiF nanocrystal with one strong reflection does not; 0: off (grains of one "
        "or two positions)")
    crystal_bragg_fraction: float = Field(
        0.0, ge=0, le=1, description="share of the scattered intensity (Q from 2 probe-disk radii) in sectors holding "
        "Bragg spots above which a pattern with a crystal-band spot is crystalline (a Li/Cu grain in a zone axis: most; "
        "a few LiF nanocrystals, whose (200) ring falls into the Cu band: a few %); 0: off (default: the clipping misses "
        "spots that fill much of a ring, e.g. Li [111], which then measures ≈ 0.01)")
    indexing: bool = Field(
        True, description="use the spots' indexing (profile stage: features/spot_category, spots/*; "
        "sendmap.science.indexing) in the crystal rule: spots that index as LiF crystallites in an amorphous matrix "
        "(LiF share of the spot intensity > 1/2 with the isotropic share ≥ 0.6 or Q alone, within 3σ of the calibrated "
        "Q uncertainty) are never crystal whatever their strength; spots that index as a Li/Cu grain (a zone lattice, "
        "or Li/Cu spots too strong for their Q to be LiF's: ≥ 22 σ, or on a pattern with isotropic share < 0.6) are a "
        "grain whatever their strength; and LiF-band spots that index as Li/Cu too (Li (211) 0.698 lies 0.6 % from "
        "LiF (220) 0.702) do not veto an SRO peak in the Type 1 range above Type 2's (SEI Type 1 with a Li grain "
        "minority along the beam; without it unassigned); false: the crystal_spot_z threshold alone")
    grain_shared_neighbours: int = Field(
        3, ge=0, le=8, description="with indexing: a spot on a Li/Cu ring that at least this many of the 8 scan "
        "neighbours list at the same g (within 3σ of their position errors) on a pattern without an SRO peak makes a "
        "grain (an off-axis grain's single Friedel pair or systematic row); 3: a grain's corner position has 3 grain "
        "neighbours; amorphous positions reach it by chance (speckle, LiF nanocrystals) in 0-0.9 %, and then keep "
        "their SRO peak (development scans sendmap synth --scenario matrix:all / offaxis / lif-dominant, 48 × 64, "
        "seeds 501, 511, 512, 515); 0: off")
    grain_majority_size: int = Field(
        7, ge=0, le=31, description="with indexing: a grain-like position that keeps an amorphous ring (an SRO peak on "
        "its own profile) and whose grain reflections (listed spots on Li/Cu rings) carry less than half of the same "
        "reflection's intensity in the grain's interior (the upper quartile of the same g within this window, positions, "
        "odd: sendmap.science.boundaries.same_reflection_share) is not crystal: the grain is the minority of the "
        "material along the beam (intensities of the layers a beam crosses add up, so the boundary is the grain's "
        "half-maximum; the truth of a mixed position is its majority phase; 7 reaches 3 positions to each side, twice "
        "an interface inclined 10° through a 70 nm lamella). The same g keeps a neighbouring, brighter grain out of "
        "the reference (sessions 15-17 compared the summed intensity with every grain-like position of the window and "
        "demoted pure grains beside a brighter one). Session 18, chosen on development seeds 1418-1431 and checked on "
        "1518-1531 (README, 'Class probabilities and the spatial prior'); 0: off")
    lif_spot_z: float = Field(
        10.5, gt=0, description="spot significance (σ, against the azimuthal scatter) in LiF bands that marks SEI Type 2: "
        "the 99th percentile of speckled amorphous positions (sendmap synth --speckle 3, 2 × 10⁴ e⁻, seed 21, the "
        "worst of M = 3, 10, 30 at 2 × 10⁴ and 5 × 10³ e⁻, seeds 21-25: ≤ 7 for M ≥ 10), i.e. ≤ 1 % false LiF spots")
    lif_spot_z_electrons: Optional[float] = Field(
        20000.0, gt=0, description="electrons per (stored) pattern at which lif_spot_z and lif_spot_z_noise hold; both "
        "scale as (electrons / this)^0.26, as the chance maximum of speckled amorphous patterns does "
        "(sendmap.stages.crystalline.LIF_DOSE_EXPONENT); null: no scaling")
    lif_spot_z_noise: float = Field(
        4.5, gt=0, description="σ an isotropic pattern's brightest spot in the LiF bands reaches by chance (median over "
        "speckled amorphous positions: 3.4-5.4 for M = 3-30, synthetic seeds 21-25): a position votes 0 for LiF spots "
        "here, rising to 1 at lif_spot_z")
    lif_neighbourhood: int = Field(
        3, ge=1, le=9, description="k × k neighbourhood (non-crystal positions) whose LiF-spot vote marks SEI Type 2; "
        "3: the nearest neighbours (12 nm at 4 nm steps, inside a Type 2 layer ≈ 35 nm thick, SCIENCE.md), since "
        "LiF spot azimuths change from one position to the next; 1: each position on its own")
    lif_vote_min: float = Field(0.5, gt=0, le=1, description="neighbourhood vote (0–1) at or above which a position is "
                                "SEI Type 2; 0.5: the neighbourhood's evidence is more for LiF spots than against")
    lif_layer_z_min: float = Field(
        3.5, ge=0, description="SEI Type 2 of a layer without strong LiF (sendmap.science.classify.lif_layer_z): "
        "where the neighbourhood mean of the LiF-band spot significance stands this many of its own chance scatters "
        "(robust σ over the scan: speckle sets one chance level for the whole scan) above the scan's median, a "
        "position whose SRO peak would make it electrolyte is SEI Type 2; 3.5: a one-sided Gaussian false-alarm "
        "rate of 2.3 × 10⁻⁴ per position (measured: 0 of 9 133 electrolyte/Type 1 positions ≥ 3 from Type 2 in "
        "the scenario cells lif-faint, lif-range, speckle3, speckle30 at 2 × 10⁴ and 5 × 10³ e⁻, development "
        "seeds 704–723; 24 of 2 261 in the cell 'all', beside grains); 0: off")
    lif_layer_neighbourhood: int = Field(
        5, ge=3, le=9, description="k × k neighbourhood (odd) of lif_layer_z_min: 5 = 20 nm at 4 nm steps, inside a "
        "SEI Type 2 layer tens of nm thick (3: Type 2 recall 0.57 against 0.81 at 5 × 10³ e⁻, lif-faint, seed 705)")
    lif_bands: list[tuple[float, float]] = Field(
        [(0.465, 0.53), (0.67, 0.735)], description="1/Å bands of LiF (200) 0.497 and (220) 0.702")
    electrolyte_max_q: float = Field(
        0.307, gt=0, description="isotropic patterns with an SRO peak below this are electrolyte (≈0.285), above SEI "
        "Type 1 (≈0.33): midway between the published class means (SCIENCE.md), the equal-error split of two classes "
        "of equal spread")
    sei_type1_range: tuple[float, float] = Field((0.307, 0.37), description="1/Å; isotropic SRO peak range of SEI "
                                                 "Type 1: from electrolyte_max_q to the published mean 0.33 + 2 × its "
                                                 "histogram's std 0.019 (SCIENCE.md); beyond: unassigned. The "
                                                 "class probabilities undo this cut (and the two below) in the "
                                                 "class spreads they measure on the rules' classes")
    sei_type2_range: tuple[float, float] = Field((0.27, 0.33), description="1/Å; SRO peak range of SEI Type 2: "
                                                 "its published mean 0.295 ± 0.035 (≈ ± 2 published spreads 0.019, "
                                                 "SCIENCE.md; the upper end at SEI Type 1's mean)")
    electrolyte_range: tuple[float, float] = Field((0.26, 0.307), description="1/Å; SRO peak range of the "
                                                   "electrolyte: its published mean 0.285 − 0.025 (≈ 1.3 published "
                                                   "spreads; SCIENCE.md) up to electrolyte_max_q")


    @field_validator("sei_type1_range", "sei_type2_range", "electrolyte_range")
    @classmethod
    def _class_range(cls, v, info):
        return _ordered_range(v, f"classify.definitions.{info.field_name}")

    @field_validator("lif_layer_neighbourhood")
    @classmethod
    def _odd(cls, v, info):
        if v % 2 == 0:
            raise ValueError(f"classify.definitions.{info.field_name} must be odd (a window centred on the position), "
                             f"got {v}")
        return v

    @field_validator("crystal_bands", "lif_bands")
    @classmethod
    def _bands(cls, v, info):
        for i, band in enumerate(v):
            _ordered_range(band, f"classify.definitions.{info.field_name}[{i}]")
        return v


class ClassifyConfig(_Section):
    method: Literal["rules", "gmm", "kmeans", "probabilistic"] = Field(
        "probabilistic", description="probabilistic (default since session 17): the most probable class of "
        "maps/class_probability (each position's evidence: crystal rule, SRO peak with its error, LiF evidence; and a "
        "Potts spatial prior; sendmap.science.probability); rules: the class rules (definitions) position by position; "
        "gmm/kmeans: clusters named by the rules. Chosen on the scenario matrix's development seeds 1200-1225 (26 "
        "cells, 128²: cells meeting every issue-18 target 13 -> 17, accuracy higher on 22) and checked on seeds "
        "1300-1325 (14 -> 18, higher on 25): where classes overlap in Q (published spreads) the rules' Q cuts label "
        "each position alone (accuracy 0.89-0.90 on spread), the spatial prior gives it its layer's class (0.97)")
    min_confidence: float = Field(
        0.0, ge=0, lt=1, description="positions whose class has a probability (maps/class_confidence) below this are "
        "'uncertain'; 0: off (the default until the probabilities are validated on the scenario matrix)")
    lif_hit_rate: float = Field(
        0.5, gt=0, lt=1, description="share of SEI Type 2 positions that show an excited LiF reflection, for the class "
        "probabilities (SCIENCE.md: some Type 2 positions show LiF reflections, some none; 0.5: no preference)")
    lif_layer_evidence: bool = Field(
        False, description="class probabilities: weigh the LiF layer evidence (definitions.lif_layer_z_min; "
        "sendmap.science.probability.lif_layer_llr) for SEI Type 1 and Type 2 against the electrolyte. Off by "
        "default: on the development seeds it raised the accuracy of method probabilistic (lif-faint 0.911 → 0.998 at "
        "5 × 10³ e⁻, all 0.918 → 0.939; seeds 705, 725) but lowered SEI Type 1 recall where the classes overlap in Q "
        "(spread 0.92 → 0.88, seed 703), below the target on the reduced matrix's spread cell; the rules use the "
        "layer either way, and their classes set the probabilities' class models")
    model_iterations: int = Field(
        0, ge=0, le=10, description="class probabilities: times the amorphous class models (mean, spread, weight) "
        "are re-measured on the posterior's own most probable classes, with the spatial prior, and the posterior "
        "recomputed (a hard EM; sendmap.science.probability.MODEL_ITERATIONS); 0: measured on the rules' classes "
        "only. Off by default: it recovers the spreads the rules' Q cuts halve, but on the development seeds of the "
        "scenario matrix (802-825) it eroded the thin SEI Type 1 layer (recall 0.90 -> 0.67 on spread at 2 x 10^4 e-, "
        "0.63 -> 0.08 on all, 2 iterations)")
    beta_iterations: int = Field(
        0, ge=0, le=50, description="class probabilities: times the Potts coupling is re-estimated (pseudo-likelihood) "
        "on the posterior's own class map and the posterior recomputed, until it stops changing (Besag 1986; "
        "sendmap.science.probability.BETA_ITERATIONS); 0 (default): the coupling of the evidence-only map, biased low "
        "where classes overlap. 10: method probabilistic more accurate (matrix seeds: 21 of 32 cells meet every "
        "target against 20) but the probabilities overconfident (pooled tenths 0.149 / 0.117 against 0.098 / 0.041 at "
        "2e4 / 5e3 e-; check seeds 850-875: 0.281 against 0.085 at 2e4)")
    spread_cut_on_measured: bool = Field(
        False, description="class probabilities: undo the rules' Q cut of each amorphous class on its measured peaks' "
        "spread (intrinsic + error), then take the error out (sendmap.science.probability.untruncated_class_spread), "
        "instead of on the deconvolved spread, which a cut narrower than the errors leaves at 0. Off by default: on the "
        "matrix seeds 24 of 32 cells pass against 22, but the pooled calibration at 5e3 e- goes 0.047 -> 0.076 "
        "(target 0.07; README, class probabilities, session 20)")
    temperature: float | Literal["auto"] = Field(
        1.25, description="class probabilities: posterior temperature, p_k ∝ p_k^(1/T) (it changes no position's "
        "most probable class). 1.25 (default): sendmap.science.probability.POSTERIOR_TEMPERATURE, chosen on the "
        "scenario matrix's development cells 1600-1621 and 1818-1825 as the only value on a 1-1.4 grid whose pooled "
        "tenths met +-0.07 at both doses (session 20). auto: 1 + rho, rho the correlation of neighbouring positions' "
        "standardised peak residuals within a class (the design effect of the Potts prior's pairs of neighbours; "
        "science.probability.residual_correlation_temperature): 1 where departures are independent (speckle), "
        "1.3-1.5 where a class's spread varies smoothly across its layer. Meant with spread_cut_on_measured: "
        "together 25 of 32 matrix cells pass and the pooled tenths are within 0.065 / 0.041 (5e3 / 2e4 e-), but SEI "
        "Type 1 recall falls by 0.05 on two cells (README, class probabilities, session 21)")
    definitions: ClassDefinitions = Field(default_factory=ClassDefinitions)
    n_clusters: int = Field(4, ge=2, le=12, description="gmm: number of mixture components")
    seed: int = 0

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v):
        if not isinstance(v, str) and not v > 0:
            raise ValueError(f"classify.temperature must be > 0 or 'auto', got {v}")
        return v


class StatisticsConfig(_Section):
    bin_width: float = Field(0.0025, gt=0, description="histogram bin width, 1/Å: an eighth of the narrowest "
                             "published class spread (0.019, SCIENCE.md), ~15 bins within ± 1σ of a class")
    min_count: int = Field(5, ge=2, description="fewest positions for a Gaussian fit (3 parameters: 5 leave 2 degrees "
                           "of freedom)")


class OutputConfig(_Section):
    dir: str = "results"
    figures: bool = True
    formats: list[Literal["png", "pdf"]] = ["png", "pdf"]


class ComputeConfig(_Section):
    scheduler: Literal["threads", "processes", "distributed", "synchronous"] = "threads"
    address: Optional[str] = Field(None, description="tcp://host:port of a running dask scheduler (distributed)")
    n_workers: Optional[int] = Field(None, ge=1, description="worker threads/processes (threads, processes) or "
                                                        "dask workers (distributed: local cluster, or SLURM jobs' workers)")
    threads_per_worker: int = Field(1, ge=1, description="distributed: tasks (blocks) run at once per dask worker "
                                                          "(each with one numba thread)")
    memory_limit: Optional[str] = Field(None, description="distributed, local or SLURM cluster: memory per worker, "
                                                          "e.g. '1GB' (dask's limit: a worker above 95 % is restarted); "
                                                          "null = dask's default (the machine's memory / workers)")
    cluster: Literal["local", "slurm"] = Field("local", description="distributed without address: start a local "
                                                                      "cluster, or SLURM jobs with dask-jobqueue")
    cluster_options: dict[str, Any] = Field(default_factory=dict, description="cluster: slurm: keyword arguments of "
                                                                               "dask_jobqueue.SLURMCluster (queue, "
                                                                               "account, cores, memory, walltime, ...)")
    chunk_mb: float = Field(16.0, gt=0, description="target size of one stored chunk of data (whole scan rows where "
                                                       "a row is at most twice this), MB")
    block_mb: float = Field(32.0, gt=0, description="data read and processed per task (whole chunks), MB; memory "
                                                       "per worker is a few times this (sparse data: later stages "
                                                       "read the blocks ingest wrote, which hold less)")
    progress: bool = True

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _memory(cls, v):
        if v is None or isinstance(v, str):
            if isinstance(v, str):
                from dask.utils import parse_bytes

                try:
                    parse_bytes(v)
                except (ValueError, TypeError):
                    raise ValueError(f"not a memory size: {v!r} (e.g. '1GB', '512MiB')") from None
            return v
        if isinstance(v, (int, float)) and v > 0:
            return str(int(v))
        raise ValueError("a memory size such as '1GB', or a number of bytes")


class Config(_Section):
    input: InputConfig
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    dose: DoseConfig = Field(default_factory=DoseConfig)
    profiles: ProfilesConfig = Field(default_factory=ProfilesConfig)
    peaks: PeaksConfig = Field(default_factory=PeaksConfig)
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
    statistics: StatisticsConfig = Field(default_factory=StatisticsConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)

    # Folder the config came from: relative paths resolve against it (not part of the YAML).
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @model_validator(mode="after")
    def _q_max_reaches_the_peak(self):
        q_max, win = self.profiles.q_max, self.peaks.window
        if q_max is not None and q_max <= win[0]:
            raise ValueError(f"profiles.q_max ({q_max:g} 1/Å) lies below peaks.window {list(win)}: the profiles would "
                             f"end before the SRO peak; raise profiles.q_max above {win[1]:g} or set it to null (the "
                             f"detector's edge)")
        return self

    def input_path(self) -> Path:
        return _resolve(self.base_dir, self.input.path)

    def output_dir(self) -> Path:
        return _resolve(self.base_dir, self.output.dir)

    def resolve(self, path: str) -> Path:
        """A path of the config (mask file, calibrant, ...): relative paths against the config's folder."""
        return _resolve(self.base_dir, path)

    def section(self, name: str) -> dict:
        """One section as a JSON-compatible dict (what a stage's cache key is made of)."""
        return json.loads(getattr(self, name).model_dump_json())

    def resolved(self) -> dict:
        """The whole config with defaults filled in and paths made absolute (stored as provenance)."""
        d = json.loads(self.model_dump_json())
        d["input"]["path"] = str(self.input_path())
        d["output"]["dir"] = str(self.output_dir())
        return d


def _resolve(base: Path, p: str) -> Path:
    path = Path(p).expanduser()
    if path.is_absolute():
        return path
    try:
        return (base / path).resolve()
    except (RuntimeError, OSError):  # a symbolic link loop: left for the reader to report, naming the file
        return Path(os.path.abspath(base / path))


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc[:-1]`` (for key suggestions)."""
    cur: Any = model
    for part in loc[:-1]:
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or part not in cur.model_fields:
            return None
        ann = cur.model_fields[part].annotation
        cur = ann if isinstance(ann, type) else None
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"])
        key = ".".join(str(x) for x in loc)
        if e["type"] == "extra_forbidden":
            owner = _model_at(Config, loc)
            names = list(owner.model_fields) if owner else []
            names = [n for n in names if n != "base_dir"]
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{'.'.join(str(x) for x in loc[:-1] + (close[0],))}'?" if close else ""
            valid = f" Valid keys here: {', '.join(names)}." if names else ""
            lines.append(f"unknown key '{key}'{hint}{valid}")
        elif e["type"] == "missing":
            lines.append(f"missing required key '{key}'")
        elif e["type"] == "value_error":  # our validators: the message names the key and the value
            msg = str(e.get("ctx", {}).get("error", e["msg"]))
            lines.append(msg if not key or msg.startswith(key) else f"key '{key}': {msg}")
        else:
            owner = _model_at(Config, loc)
            field = owner.model_fields.get(str(loc[-1])) if owner else None
            about = f" [{key}: {field.description}]" if field is not None and field.description else ""
            lines.append(f"key '{key}': {e['msg']} (got {e.get('input')!r}){about}")
    return f"invalid config {source}: " + "; ".join(lines)


def config_from_dict(data: dict, base_dir: Path | None = None, source: str = "<dict>") -> Config:
    """Validate a config dict; raises :class:`ConfigError` naming every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping of sections, got {type(data).__name__}")
    if "base_dir" in data:
        raise ConfigError(f"invalid config {source}: unknown key 'base_dir'")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
    cfg.base_dir = (base_dir or Path.cwd()).resolve()
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` → (["section", "key"], value parsed as YAML).

    >>> parse_override("peaks.window=[0.2, 0.4]")
    (['peaks', 'window'], [0.2, 0.4])
    """
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got '{text}'")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"--set expects section.key=value (a dotted key), got '{text}'")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value '{raw}' as YAML: {_yaml_problem(exc)}") from None
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``--set`` overrides to a raw config dict (returns a new dict)."""
    data = json.loads(json.dumps(data))
    for text in overrides or []:
        parts, value = parse_override(text)
        cur = data
        for p in parts[:-1]:
            nxt = cur.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text}: '{p}' is not a section")
            cur = nxt
        cur[parts[-1]] = value
    return data


def _yaml_problem(exc: Exception) -> str:
    """A YAML error in one line: what, and where (line, column), without PyYAML's multi-line pointer."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem:
        return " ".join(str(exc).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(exc, "context", None)
    return f"{problem}{where}" + (f" ({context})" if context else "")


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides, validate.

    Raises :class:`ConfigError` (exit code 2) for a missing or unreadable file, bad YAML or a bad key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {_yaml_problem(exc)}") from None
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data, base_dir=path.parent, source=str(path))
