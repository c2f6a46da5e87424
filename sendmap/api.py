"""sendmap from Python: run a config, open its results as labelled arrays, or use the measuring functions on
arrays of your own (numpy in → numpy out; dask in → dask out).

Each function is a thin layer over the code the pipeline runs (the same kernels, the same defaults from
:mod:`sendmap.config`); the command line is a thin layer over :func:`run`.

>>> import numpy as np, sendmap
>>> yy, xx = np.mgrid[:64, :64]
>>> ring = np.exp(-0.5 * ((np.hypot(yy - 31.5, xx - 32.0) * 0.0125 - 0.33) / 0.03) ** 2)
>>> frames = np.random.default_rng(0).poisson(200 * ring, (2, 64, 64)).astype(np.uint16)
>>> p = sendmap.radial_profiles(frames, centres=[31.5, 32.0], q_pixel_size=0.0125)
>>> p["mean"].shape, round(float(p["q"][np.argmax(p["mean"][0])]), 2)
((2, 31), 0.33)
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import STORE_NAME


# ------------------------------------------------------------------------------------------------ run / open

@dataclass
class Result:
    """What :func:`run` returns: ``summary`` (the dict of ``summary.json``), ``path`` (the output folder),
    ``store`` (the zarr store's path) and :meth:`dataset` (the results as an ``xarray.Dataset``)."""

    path: Path
    summary: dict = field(repr=False)

    @property
    def store(self) -> Path:
        return self.path / STORE_NAME

    def dataset(self, profiles: bool = True):
        """:func:`open_result` of this run."""
        return open_result(self.path, profiles=profiles)

    @property
    def classes(self) -> dict:
        """Per class: count, SRO peak mean and spread, Gaussian fit (``summary["classes"]``)."""
        return self.summary.get("classes", {})


def _as_config(config, overrides: Sequence[str], kw: Mapping[str, Any]):
    """A :class:`sendmap.config.Config` from a path, a dict or a Config, plus ``section.key=value`` strings and
    keyword overrides (``peaks__window=(0.2, 0.4)`` or ``{"peaks.window": ...}`` spelled as ``**{...}``)."""
    import json

    import yaml

    from .config import Config, apply_overrides, config_from_dict, load_config

    sets = list(overrides) + [f"{k.replace('__', '.')}={json.dumps(v) if not isinstance(v, str) else v}"
                              for k, v in kw.items()]
    if isinstance(config, Config):
        data, base = config.model_dump(mode="json"), getattr(config, "_base_dir", None)
        return config_from_dict(apply_overrides(data, sets), base_dir=base or Path.cwd(), source="<Config>")
    if isinstance(config, Mapping):
        return config_from_dict(apply_overrides(yaml.safe_load(yaml.safe_dump(dict(config))), sets),
                                base_dir=Path.cwd(), source="<dict>")
    return load_config(Path(config), sets)


def run(config, *overrides: str, force: bool = False, until: str | None = None, progress: bool = False,
        log=print, **kw) -> Result:
    """Run the whole job (or up to stage ``until``) of a config: a YAML path, a dict of the YAML's content
    (relative paths resolve against the current folder) or a :class:`~sendmap.config.Config`.

    ``overrides``: ``"section.key=value"`` strings as ``--set`` takes them; keyword overrides spell the dot as
    a double underscore (``peaks__window=[0.2, 0.4]``). Finished stages are reused as on the command line.
    Raises :class:`sendmap.errors.SendmapInputError` (bad input) or :class:`sendmap.config.ConfigError`.

    ``sendmap.run("configs/demo.yaml", "classify.method=gmm").summary["classes"]``
    """
    from .pipeline import run_pipeline

    cfg = _as_config(config, overrides, kw)
    cfg.compute.progress = bool(progress)
    summary = run_pipeline(cfg, force=force, until=until, log=log)
    return Result(cfg.output_dir(), summary)


PREFIXED_GROUPS = ("peaks", "features", "calibration", "ingest")
"""Groups whose variables carry the group's name in :func:`open_result` (``peaks_q_err``; ``maps`` and
``profiles`` keep bare names: ``peak_q``, ``class``, ``iqn``)."""


def open_result(path, profiles: bool = True):
    """The results of a run as one ``xarray.Dataset``, lazily backed by the store (dask arrays).

    ``path``: the output folder or its ``sendmap.zarr``. Dimensions ``ry``, ``rx`` (coordinates in nm),
    ``q`` (1/Å), ``qy``, ``qx`` (detector pixels); every variable has ``units`` and ``long_name``; ``class`` has
    CF ``flag_values`` / ``flag_meanings`` (and ``class_name``, the names as a coordinate-free variable of
    strings, is built on access by :func:`class_names`). ``profiles=False`` leaves the (Ry, Rx, nq) profile
    arrays out. Root attributes of the store (config, input, calibration, dose, provenance) are the
    Dataset's ``attrs``.
    """
    import xarray as xr
    import zarr

    store = Path(path)
    if store.name != STORE_NAME:
        store = store / STORE_NAME
    if not (store / "zarr.json").is_file():
        from .errors import SendmapInputError

        raise SendmapInputError(f"{path}: no sendmap result store ({STORE_NAME}) there")
    root = zarr.open_group(str(store), mode="r")
    parts = []
    for grp in ("maps", "profiles", "peaks", "features", "calibration", "ingest"):
        if grp not in root or (grp == "profiles" and not profiles):
            continue
        ds = xr.open_zarr(str(store), group=grp, consolidated=False)
        if grp in PREFIXED_GROUPS:
            ds = ds.rename({v: f"{grp}_{v}" for v in ds.data_vars})
        parts.append(ds)
    out = xr.merge(parts, compat="override", join="outer", combine_attrs="override")
    out.attrs = {k: v for k, v in root.attrs.items()}
    return out


def class_names(ds) -> np.ndarray:
    """The class name of every position of an :func:`open_result` dataset, (Ry, Rx) strings."""
    flags = ds["class"].attrs
    names = np.array(str(flags["flag_meanings"]).split())
    return names[np.asarray(ds["class"])]


# ------------------------------------------------------------------------------------------------ arrays

def _defaults(section: str) -> dict:
    from . import config as C

    model = {"profiles": C.ProfilesConfig, "peaks": C.PeaksConfig, "calibration": C.CalibrationConfig}[section]
    return {k: f.default for k, f in model.model_fields.items()}


def radial_profiles(frames, centres=None, *, q_pixel_size: float, ellipse: tuple[float, float] = (1.0, 0.0),
                    mask=None, n: int | None = None, bin_width: float | None = None, q_max: float | None = None,
                    n_azimuth: int | None = None, disk_radius_q: float | None = None,
                    convergence_mrad: float = 2.0, beam_energy_kv: float = 200.0,
                    error_model: str | None = None) -> dict:
    """Azimuthal profiles of diffraction patterns, each around its own centre, as the profiles stage makes them.

    frames: (..., Qy, Qx) counts (numpy or dask; a dask array must hold whole frames per chunk); centres:
    (..., 2) or (2,) pixel centres (y, x) (default: the detector's middle); q_pixel_size: 1/Å per pixel;
    ellipse: (ratio ≥ 1, major-axis angle in degrees from +x towards +y); mask: (Qy, Qx) bool, True where a
    pixel is used; n: the power in I·Q^n (config default); bin_width, q_max: 1/Å (default one pixel, the largest
    full circle); disk_radius_q: the Bragg-disk radius for the spot statistic (default from
    ``convergence_mrad`` and ``beam_energy_kv``); error_model: ``azimuthal`` (Poisson + speckle, the config
    default) or ``poisson`` for ``sem``.

    Returns a dict: ``q`` (nq,) bin centres (1/Å) and (..., nq) float32 arrays ``mean``, ``sem``, ``iqn``,
    ``iqn_sem``, ``robust_mean``, ``iqn_robust``, ``dispersion``, ``spot_z``, ``fem_variance`` and whatever else the profile
    kernel measures per bin (the store's ``profiles/*`` and ``features/spot_z``), as numpy, or dask where
    ``frames`` is dask.
    """
    from .physics import probe_radius_inv_angstrom
    from .science.polar import PolarGeometry
    from .science.polar_tables import PolarTables

    d = _defaults("profiles")
    n = d["n"] if n is None else n
    qy, qx = frames.shape[-2:]
    lead = tuple(frames.shape[:-2])
    if centres is None:
        centres = np.array([(qy - 1) / 2.0, (qx - 1) / 2.0])
    centres = np.broadcast_to(np.asarray(centres, dtype=np.float64), lead + (2,))
    mask = np.ones((qy, qx), bool) if mask is None else np.asarray(mask, bool)
    bw = bin_width or q_pixel_size
    if q_max is None:
        c = centres.reshape(-1, 2).mean(axis=0) if centres.size else np.array([qy / 2, qx / 2])
        q_max = min(c[0], c[1], qy - 1 - c[0], qx - 1 - c[1]) * q_pixel_size
    geom = PolarGeometry(q_pixel_size, bw, max(4, int(q_max / bw)), n_azimuth or d["n_azimuth"], float(ellipse[0]),
                         float(ellipse[1]), d["supersample"])
    tables = PolarTables(geom, d["centre_step_px"], (qy, qx))
    r_q = disk_radius_q if disk_radius_q is not None else probe_radius_inv_angstrom(convergence_mrad, beam_energy_kv)
    qn = geom.q_centres ** n
    error_model = error_model or d["error_model"]
    names = _profile_names(tables, mask, r_q, qn, error_model)

    def block(fr, ce):
        out = _profile_arrays(fr.reshape(-1, qy, qx), ce.reshape(-1, 2), tables, mask, r_q, qn, error_model)
        return np.stack([out[k] for k in names], axis=-2).reshape(fr.shape[:-2] + (len(names), geom.nq))

    if _is_dask(frames):
        import dask.array as da

        if frames.chunks[-2:] != ((qy,), (qx,)):
            frames = frames.rechunk(frames.chunks[:-2] + ((qy,), (qx,)))
        # (..., 1, 2): the same block grid as the frames (one block along the detector's two axes)
        cen = da.from_array(np.ascontiguousarray(centres)[..., None, :], chunks=frames.chunks[:-2] + ((1,), (2,)))
        stacked = da.map_blocks(block, frames, cen, dtype=np.float32,
                                chunks=frames.chunks[:-2] + ((len(names),), (geom.nq,)))
    else:
        stacked = block(np.asarray(frames), centres)
    out = {"q": geom.q_centres}
    for i, k in enumerate(names):
        out[k] = stacked[..., i, :]
    return out


def _profile_arrays(frames, centres, tables, mask, r_q, qn, error_model) -> dict:
    """The pipeline's per-block profile computation (:class:`sendmap.compute.profiles.ProfileBlock`) on one block of frames."""
    from .compute.profiles import ProfileBlock
    from .stages.profiles import profile_error_terms

    geom = tables.geom
    speckle_g, fem_scale = profile_error_terms(geom.q_centres, geom.n_phi, r_q, geom.bin_width, error_model)
    proc = ProfileBlock(tables, mask, r_q, (0.0, 0.0), r_q, qn, (0.0, 0.0), speckle_g, fem_scale)
    _, out = proc(((None, None), frames, centres))
    return {k: v for k, v in out.items() if getattr(v, "ndim", 0) == 2}


def _profile_names(tables, mask, r_q, qn, error_model) -> list[str]:
    probe = _profile_arrays(np.zeros((1,) + mask.shape, np.uint16), np.array([[mask.shape[0] / 2, mask.shape[1] / 2]]),
                            tables, mask, r_q, qn, error_model)
    return sorted(probe)


def _is_dask(a) -> bool:
    return type(a).__module__.startswith("dask")


def find_centres(frames, *, radius_px: float, guess=None, mask=None, n_iter: int = 6):
    """Centre (y, x) in pixels of the central disk of every frame, by the iterated centre of mass the calibrate
    stage uses (:func:`sendmap.science.centre.disk_centres`).

    frames: (..., Qy, Qx) numpy or dask; radius_px: the window radius (≈ 1.5 × the probe-disk radius);
    guess: (2,) first guess (default: the brightest disk of the mean pattern); mask: (Qy, Qx) bool, True where
    used. Returns (..., 2) float64 (dask where ``frames`` is dask).
    """
    from .science.centre import brightest_disk_guess, disk_centres

    qy, qx = frames.shape[-2:]
    mask = np.ones((qy, qx), bool) if mask is None else np.asarray(mask, bool)
    if guess is None:
        mean = frames.reshape((-1, qy, qx)).mean(axis=0)
        mean = np.asarray(mean.compute() if _is_dask(mean) else mean, dtype=np.float64)
        guess = brightest_disk_guess(np.where(mask, mean, 0.0), radius_px / 1.5)
    guess = np.asarray(guess, dtype=np.float64)

    def block(fr):
        return disk_centres(np.ascontiguousarray(fr.reshape(-1, qy, qx)), guess, mask, radius_px,
                            n_iter).reshape(fr.shape[:-2] + (2,))

    if _is_dask(frames):
        frames = frames.rechunk(frames.chunks[:-2] + ((qy,), (qx,)))
        return frames.map_blocks(block, dtype=np.float64, drop_axis=frames.ndim - 1,
                                 chunks=frames.chunks[:-2] + ((2,),))
    return block(np.asarray(frames))


def fit_peaks(profiles, q, sem=None, *, window: tuple[float, float] | None = None, **options) -> dict:
    """The first SRO peak of every profile, as the peaks stage fits it (:func:`sendmap.science.peaks.fit_peaks`).

    profiles: (..., nq) I·Q^n (numpy or dask); q: (nq,) bin centres, 1/Å; sem: its standard error (default:
    √profile, Poisson counts); window: 1/Å where the peak is sought (config default). ``options``: the
    science function's keywords (``half_width``: a number, (left, right), or ``"auto"``, the config default: chosen
    on the mean of the given profiles as the peaks stage chooses it on the non-crystalline ones; ``degree``, ...;
    under the speckle error model the stage also passes ``recentre=True``, ``feedback`` (β, its ``peaks`` attribute
    ``window_feedback``) and ``correlated`` (the speckle and Poisson covariances of
    :func:`sendmap.stages.peaks.speckle_fit_errors`): pass them for the same numbers). ``flat_top_z``: the σ level
    of the flat-top test (status ``no_clear_maximum`` and the plateau's error, as the stage with
    ``peaks.flat_top_test``; default: off, as the config).
    Returns a dict of (...) arrays: ``q_peak``,
    ``q_err`` (1/Å), ``height``, ``prominence``, ``fwhm``, ``status`` and the rest of the science function's
    outputs.
    """
    from .science.peaks import FLAT_TOP_Z, resolve_auto_fit_range
    from .science.peaks import fit_peaks_reported as _fit

    d = _defaults("peaks")
    window = tuple(window or d["window"])
    q = np.asarray(q, dtype=np.float64)
    lead = tuple(profiles.shape[:-1])
    if options.get("half_width", d["fit_half_width"]) == "auto":  # as the stage: from the mean profile
        from .stages.peaks import AUTO_FIT_HALF_WIDTH_FALLBACK, fit_degree

        p = np.asarray(profiles, dtype=np.float64).reshape(-1, len(q))
        s = (np.sqrt(np.clip(p, 0, None)) if sem is None else np.asarray(sem, dtype=np.float64).reshape(p.shape))
        rows = np.isfinite(p).any(axis=1) & (np.nansum(np.abs(p), axis=1) > 0)
        options["half_width"], rec = resolve_auto_fit_range(
            q, p, s, rows, window, AUTO_FIT_HALF_WIDTH_FALLBACK, options.get("smooth_sigma_bins", 3.0),
            options.get("degree", d["degree"]))
        if "degree" not in options:  # the stage's degree for the chosen range
            options["degree"] = fit_degree(d["degree"], d.get("fixed_range_degree"), rec)

    # the flat-top tests where the config asks the stage for them (peaks.flat_top_test; flat_top_z: the σ level, None off)
    options.setdefault("flat_top_z", FLAT_TOP_Z if d.get("flat_top_test") else None)

    def fit(p, s):
        p = np.asarray(p, dtype=np.float64).reshape(-1, len(q))
        s = np.sqrt(np.clip(p, 0, None)) if s is None else np.asarray(s, dtype=np.float64).reshape(-1, len(q))
        return _fit(q, p, s, window, **options)  # (with the flat-top test's errors, as the stage)

    if not _is_dask(profiles):
        return {k: v.reshape(lead) for k, v in fit(profiles, sem).items()}
    import dask.array as da

    names = sorted(fit(np.zeros((1, len(q))), None))

    def block(p, s=None):
        r = fit(p, s)
        return np.stack([np.asarray(r[k], dtype=np.float64) for k in names], axis=-1).reshape(p.shape[:-1] + (-1,))

    p = profiles.rechunk(profiles.chunks[:-1] + ((len(q),),))
    chunks = p.chunks[:-1] + ((len(names),),)
    stacked = (p.map_blocks(block, dtype=np.float64, chunks=chunks) if sem is None else
               da.map_blocks(block, p, da.asarray(sem).rechunk(p.chunks), dtype=np.float64, chunks=chunks))
    return {k: stacked[..., i] for i, k in enumerate(names)}


def classify(peak_q, crystal_z, lif_z, **definitions) -> np.ndarray:
    """Class index per position (:data:`sendmap.CLASS_NAMES` order) by the rules the classify stage applies
    (:func:`sendmap.science.classify.classify_rules`), with the config's ``classify.definitions`` as defaults
    (any of them may be given as keywords).

    peak_q: (...) first SRO peak, 1/Å (NaN: none); crystal_z, lif_z: (...) largest Bragg-spot significance (σ)
    in the crystal and LiF bands. Returns int8 (...).
    """
    import inspect

    from .config import ClassDefinitions
    from .science.classify import classify_rules

    defaults = {k: f.default for k, f in ClassDefinitions.model_fields.items()}
    accepted = set(inspect.signature(classify_rules).parameters)
    kw = {k: v for k, v in {**defaults, **definitions}.items() if k in accepted}
    for k in ("sei_type1_range", "sei_type2_range", "electrolyte_range"):
        if k in kw:
            kw[k] = tuple(kw[k])
    peak_q, crystal_z, lif_z = (np.asarray(a, dtype=np.float64) for a in (peak_q, crystal_z, lif_z))
    shape = np.broadcast_shapes(peak_q.shape, crystal_z.shape, lif_z.shape)
    out = classify_rules(*(np.broadcast_to(a, shape).ravel() for a in (peak_q, crystal_z, lif_z)), **kw)
    return out.reshape(shape)
