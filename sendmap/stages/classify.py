"""The classify stage: features, class and phase per position, and the final peak maps (no SRO peak for crystals).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import CLASS_NAMES
from ..engine.context import Context
from ..engine.store import write_array
from ..science.classify import band_max, band_spot_z, in_bands
from .crystalline import crystal_spot_threshold, lif_spot_thresholds
from .dose import measured_counts
from .profiles import BRAGG_ATTRS


def grain_like(cfg, g, crystal_z: np.ndarray, crystal_thr: float, sro_peak: np.ndarray, r_q: float,
               bin_width: float, no_maximum: np.ndarray | None = None):
    """Per position grain evidence (:func:`sendmap.science.classify.grain_evidence`) from the profile stage's spot
    lists and indexing (``features/spot_category``, ``features/lif_indexed_z``, ``spots/*``); stores
    ``features/shared_spots`` and ``features/shared_grain_spots``. ``no_maximum``: (Ry, Rx) bool, no SRO maximum in
    the window on the position's own and denoised profiles (:func:`sendmap.science.classify.without_amorphous_ring`;
    None: not used). Returns (like, spots): the evidence (Ry, Rx) bool and the spot table it used, (position,
    values, on a grain ring) per listed spot (for :func:`grain_minority_positions`); (None, None) for stores without
    spot lists (the threshold alone)."""
    from ..science.classify import grain_evidence, without_amorphous_ring
    from ..science.indexing import LIF
    from ..science.spot_context import shared_counts, shared_spot_table

    d = cfg.classify.definitions
    if not d.indexing or "features/spot_category" not in g or "spots/values" not in g:
        return None, None
    cat_arr = g["features/spot_category"]
    q_rel = float(cat_arr.attrs.get("q_rel_err", 0.005))
    pos = np.asarray(g["spots/position"])
    values = np.asarray(g["spots/values"])
    if "spots/shared_neighbours" in g and "spots/grain_ring" in g:  # the profile stage's per-spot table
        nb, ring = np.asarray(g["spots/shared_neighbours"]), np.asarray(g["spots/grain_ring"])
    else:  # a store written before it
        nb, ring = shared_spot_table(pos, values, crystal_z.shape, r_q, bin_width, q_rel)
    sh = shared_counts(pos, nb, ring, crystal_z.shape, max(1, d.grain_shared_neighbours))
    attrs = {"units": "count", "min_neighbours": max(1, d.grain_shared_neighbours),
             "method": "sendmap.science.spot_context.shared_grain_evidence"}
    write_array(g, "features/shared_spots", sh["n_shared"], attrs | {
        "meaning": "listed spots that at least min_neighbours of the 8 scan neighbours list at the same g (a grain's)"})
    write_array(g, "features/shared_grain_spots", sh["n_shared_grain"], attrs | {
        "meaning": "shared spots on a Li or Cu ring within the calibrated Q uncertainty"})
    cat = np.asarray(cat_arr)
    no_ring = None
    if no_maximum is not None and d.crystal_min_neighbours > 0:
        ring_spot = np.zeros(crystal_z.size, bool)
        ring_spot[pos[np.asarray(ring, bool)]] = True
        no_ring = without_amorphous_ring(no_maximum, cat == LIF, ring_spot.reshape(crystal_z.shape),
                                         d.crystal_min_neighbours)
    like = grain_evidence(crystal_z, crystal_thr, cat, np.asarray(g["features/lif_indexed_z"]),
                          (sh["n_shared_grain"] > 0) if d.grain_shared_neighbours > 0 else None, sro_peak, no_ring)
    return like, (pos, values, np.asarray(ring, bool))


MINORITY_CACHE = ".sendmap-cache/classify_minority.json"
"""In the output folder: the grain-minority positions of the last run and the digest of their inputs
(:func:`kept_grain_minority`)."""


def kept_grain_minority(spots: tuple, like: np.ndarray, sro_peak: np.ndarray, r_q: float, size: int,
                        cache_path=None, reuse: bool = True) -> np.ndarray:
    """:func:`grain_minority_positions`, kept from the last run where its inputs are the same: the test reads only
    the spot table, the grain evidence and the SRO peaks, none of which depends on ``classify.method`` or the
    classes, so a re-run after a classification change finds its result in ``cache_path`` (a JSON file: the SHA-256
    of every input and of the classify stage's code, and the flat indices of the positions found) instead of
    running it again (0.3-0.7 s of CPU on the 128² bench scan with numba's first use; the SHA-256 of its inputs,
    ~10 MB, ~0.02 s). ``reuse`` False (``--force``) computes it again; the file is rewritten after every computation."""
    import json

    from ..engine.codehash import stage_code_digest
    from ..engine.store import read_json_cache, write_json_cache

    like, sro_peak = np.asarray(like, bool), np.asarray(sro_peak, bool)
    pos, values, ring = spots
    h = _sha256(np.asarray(pos), np.asarray(values), np.asarray(ring, bool), like, sro_peak)
    h.update(json.dumps([float(r_q), int(size), stage_code_digest("stage_classify", __name__)]).encode())
    key = h.hexdigest()
    old = read_json_cache(cache_path) if cache_path is not None and reuse else None
    if old is not None and old.get("key") == key and old.get("shape") == list(like.shape):
        try:
            out = np.zeros(like.size, bool)
            out[np.asarray(old["positions"], dtype=np.int64)] = True
            return out.reshape(like.shape)
        except (ValueError, TypeError, KeyError, IndexError):
            pass
    out = grain_minority_positions(spots, like, sro_peak, r_q, size)
    if cache_path is not None:
        write_json_cache(Path(cache_path), {"key": key, "shape": list(like.shape),
                                            "positions": np.flatnonzero(out).tolist()})
    return out


def grain_minority_positions(spots: tuple, like: np.ndarray, sro_peak: np.ndarray, r_q: float,
                             size: int) -> np.ndarray:
    """(Ry, Rx) bool: grain-like positions (``like``) that keep an SRO peak on their own profile (``sro_peak``) and
    whose grain reflections carry less than half of the same reflections' intensity in the grain's interior
    (:func:`sendmap.science.boundaries.same_reflection_share` over a ``size`` × ``size`` window): boundary positions
    where the grain is the minority of the material along the beam, so not crystal (the truth of a mixed position
    is its majority phase). ``spots``: the spot table :func:`grain_like` used (position, values, on a grain ring)."""
    from ..science.boundaries import same_reflection_share

    pos, values, ring = spots
    candidates = np.asarray(like, bool) & np.asarray(sro_peak, bool)
    share = same_reflection_share(pos, values, ring, like.shape, size, r_q, where=candidates)
    return candidates & (np.nan_to_num(share, nan=1.0) < 0.5)


def method_independent_features(g, q: np.ndarray, spot_z: np.ndarray, r_q: float, lif_sure: float,
                                crystal_z: np.ndarray, lif_z: np.ndarray, vote: np.ndarray, layer: np.ndarray,
                                d, counts: np.ndarray, bf_img: np.ndarray) -> None:
    """Compute and write the classify stage's outputs that do not depend on the classification method or its
    classes: ``features/{crystal_z,lif_z,lif_vote,lif_layer_z,anisotropy,scattered_fraction,phase_score,
    phase_score_second}`` and ``maps/phase`` (anisotropy at each feature phase's reflections, ± one bin; phase
    naming over all SEI phases; ``d``: ``classify.definitions``; ``counts``, ``bf_img``: ``ingest/total_counts`` and
    ``features/virtual_bf`` as float64). Thread-safe against a clustering running meanwhile (it
    touches neither the store nor these arrays)."""
    from ..science.features import FEATURE_PHASES, SEI_PHASES, name_phases, phase_anisotropy, phase_lines
    from ..science.phases import get_phase

    q_rng = (2 * r_q, float(q[-1]))
    bw = float(q[1] - q[0])
    feat_lines = phase_lines(FEATURE_PHASES, q_rng)
    aniso = phase_anisotropy(q, spot_z, feat_lines, bw)
    all_lines = phase_lines(SEI_PHASES, q_rng)
    phase_idx, phase_score, phase_second = name_phases(q, spot_z, all_lines, lif_sure, 0.6 * bw, q_rng)
    with np.errstate(invalid="ignore", divide="ignore"):
        scattered = np.where(counts > 0, 1.0 - bf_img / counts, np.nan)
    phase_names = [get_phase(p).name for p in SEI_PHASES]
    write_array(g, "features/crystal_z", crystal_z, {"bands": d.crystal_bands, "units": "sigma"})
    write_array(g, "features/lif_z", lif_z, {"bands": d.lif_bands, "units": "sigma"})
    write_array(g, "features/lif_vote", vote, {"meaning": "neighbourhood vote for LiF spots (0-1), NaN for crystals",
                                                "neighbourhood": d.lif_neighbourhood})
    write_array(g, "features/lif_layer_z", layer.astype(np.float32), {
        "units": "robust sigma", "neighbourhood": d.lif_layer_neighbourhood, "min": d.lif_layer_z_min,
        "method": "sendmap.science.classify.lif_layer_z",
        "meaning": "neighbourhood mean of features/lif_z against the scan's own chance level (median, lower "
                   "half-width); NaN for crystals, positions whose spots index as a grain, and scans too small"})
    write_array(g, "features/anisotropy", aniso, {"phases": [get_phase(p).name for p in FEATURE_PHASES],
                                                  "units": "sigma", "lines": {get_phase(k).name: v.tolist()
                                                                              for k, v in feat_lines.items()},
                                                  "meaning": "largest spot significance within one Q bin of the phase's rings"})
    write_array(g, "features/scattered_fraction", scattered, {"meaning": "1 - virtual BF / total counts"})
    write_array(g, "maps/phase", phase_idx, {"phase_names": phase_names, "meaning": "library phase whose rings the "
                                             "significant spots fall on; -1 none", "min_spot_z": lif_sure})
    write_array(g, "features/phase_score", phase_score, {"meaning": "explained spot share minus chance, best phase"})
    write_array(g, "features/phase_score_second", phase_second, {"meaning": "the same for the runner-up phase"})


METHOD_INDEPENDENT_ARRAYS = ("features/crystal_z", "features/lif_z", "features/lif_vote", "features/lif_layer_z",
                             "features/anisotropy", "features/scattered_fraction", "maps/phase", "features/phase_score",
                             "features/phase_score_second")
"""The arrays :func:`method_independent_features` writes."""

FEATURES_CACHE = ".sendmap-cache/classify_features.json"
"""In the output folder: the digest of the inputs of the last :func:`method_independent_features` and of the arrays
it wrote (:class:`FeaturesCache`)."""


def _sha256(*arrays):
    """A hashlib SHA-256 object fed each array's dtype, shape and bytes."""
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    return h


class FeaturesCache:
    """Whether the store already holds what :func:`method_independent_features` would write: the digest of its inputs
    (every array and number it reads, the classify stage's code: :func:`sendmap.engine.codehash.stage_code_digest`)
    is that of the run that wrote them, and the arrays' stored chunks are still the ones it wrote (SHA-256 of their
    files, so a store moved or copied keeps it, one rewritten by anything else does not). A classification change
    (``classify.method``, ``n_clusters``, ``min_confidence``, ...) leaves them as they are: on the 128² bench scan their
    phase naming and anisotropy cost ~0.2 s of CPU warm, ~0.5-0.8 s in a fresh process (the phase library's first use).
    The file is removed before they are written and written after, so a run killed between leaves none."""

    def __init__(self, out_dir, store_dir, key: str, enabled: bool = True):
        from pathlib import Path

        self.path, self.root, self.key, self.enabled = Path(out_dir) / FEATURES_CACHE, Path(store_dir), key, enabled

    def _store_digest(self) -> str | None:
        """SHA-256 of the stored chunk files of :data:`METHOD_INDEPENDENT_ARRAYS` (None where one is missing)."""
        import hashlib

        root = self.root
        h = hashlib.sha256()
        for name in METHOD_INDEPENDENT_ARRAYS:
            files = sorted(p for p in (root / name / "c").rglob("*") if p.is_file())
            if not (root / name / "zarr.json").is_file() or not files:
                return None
            for f in files:
                h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
        return h.hexdigest()

    def valid(self) -> bool:
        from ..engine.store import read_json_cache

        old = read_json_cache(self.path) if self.enabled else None
        return old is not None and old.get("key") == self.key and old.get("store") == self._store_digest()

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)

    def save(self) -> None:
        from ..engine.store import write_json_cache

        write_json_cache(self.path, {"key": self.key, "store": self._store_digest()})


def features_key(q: np.ndarray, spot_z: np.ndarray, counts: np.ndarray, bf_img: np.ndarray, r_q: float,
                 lif_sure: float, crystal_z: np.ndarray, lif_z: np.ndarray, vote: np.ndarray, layer: np.ndarray,
                 d) -> str:
    """SHA-256 of every input of :func:`method_independent_features` and of the classify stage's code."""
    import json

    from ..engine.codehash import stage_code_digest

    h = _sha256(q, spot_z, counts, bf_img, crystal_z, lif_z, vote, layer)
    h.update(json.dumps([r_q, lif_sure, d.crystal_bands, d.lif_bands, d.lif_neighbourhood, d.lif_layer_neighbourhood,
                         d.lif_layer_z_min, stage_code_digest("stage_classify", __name__)], default=str).encode())
    return h.hexdigest()


def stage_classify(ctx: Context) -> None:
    """Features per position, class per position, phase naming, and the final peak maps (no SRO peak for crystals).

    Features (``features/*``): crystal- and LiF-band spot significance, anisotropy at the reflections of
    LiF, Li, Li2O and Cu (phase library), Bragg fraction, LiF-spot neighbourhood vote, scattered fraction;
    ``maps/phase``: the library phase whose reflections the significant spots fall on.
    """
    from ..science.classify import (CRYSTAL, ELECTROLYTE, SEI_TYPE1, SEI_TYPE2, UNASSIGNED, UNCERTAIN, above_class_ranges,
                                    classify_gmm, classify_rules, crystal_neighbour_count, crystal_positions,
                                    grain_reflection_type1, lif_indexed_positions, lif_layer_z, lif_spotty, spot_vote,
                                    undetermined_by_q)
    from ..science.indexing import AMBIGUOUS, GRAIN
    from ..science.probability import (CRYSTAL_FALSE_ALARM_RATE, PROB_CLASSES, class_probabilities,
                                       lif_evidence)
    from ..science.features import bragg_fraction
    from ..science.peaks import status_attrs, status_code

    cfg, g = ctx.cfg, ctx.group
    q = np.asarray(g["profiles/q"])
    spot_z = np.asarray(g["features/spot_z"])
    d = cfg.classify.definitions
    calib = dict(g.attrs.get("calibration", {}))
    r_q = float(calib.get("disk_radius_px", 0.0)) * float(calib.get("q_pixel_size", 0.0)) or float(q[1] - q[0]) * 6
    crystal_z = band_max(spot_z, q, d.crystal_bands)
    lif_sure, lif_noise = lif_spot_thresholds(cfg, np.asarray(g["ingest/total_counts"]), measured_counts(g))
    lif_z = band_max(spot_z, q, d.lif_bands)
    if "spots/values" in g and "spots/position" in g:  # a band raised by a spot centred beside it: chance level
        from ..science.indexing import INDEX_PHASES, SPOT_Z_MIN, index_rings

        ring_q, ring_phase, _ = index_rings()  # (index_library's rings, without its interplanar angles)
        # LiF's rings and the grains' (Li, Cu): a spot nearest a grain's ring is the grain's
        rings = np.isin(ring_phase, [INDEX_PHASES.index(p) for p in ("lif", "li", "cu")])
        lif_z = band_spot_z(spot_z, q, d.lif_bands, np.asarray(g["spots/position"]),
                            np.asarray(g["spots/values"][:, 0]), r_q, ring_q[rings],
                            ((ring_phase == INDEX_PHASES.index("lif")) | in_bands(ring_q, d.lif_bands))[rings],
                            float(g["spots/values"].attrs.get("z_min", SPOT_Z_MIN)), lif_noise)
    q_hi = float(q[-1])
    if "features/bragg_fraction" in g:  # the profile stage's (stores of sendmap ≤ 0.1 session 4: computed here)
        bragg = np.asarray(g["features/bragg_fraction"])
    else:
        bragg = bragg_fraction(q, np.asarray(g["profiles/mean"], dtype=np.float64),
                               np.asarray(g["profiles/robust_mean"], dtype=np.float64), (2 * r_q, q_hi))
        write_array(g, "features/bragg_fraction", bragg, BRAGG_ATTRS | {"q_range": [2 * r_q, q_hi]})
    # the class evidence reads the peaks stage's classification feature where it stored one (peaks.classify_feature:
    # the plain estimator under the strong-speckle options); the maps report peaks/q_peak
    report_q, report_err = np.asarray(g["peaks/q_peak"]), np.asarray(g["peaks/q_err"])
    feature = "_classify" if "peaks/q_peak_classify" in g else ""
    peak_q, peak_err = np.asarray(g[f"peaks/q_peak{feature}"]), np.asarray(g[f"peaks/q_err{feature}"])
    # the peak status (ok, or why there is no peak); stores without it: ok where a peak was found
    peak_status = (np.asarray(g[f"peaks/status{feature}"]).astype(np.int8) if "peaks/status" in g
                   else np.where(np.isfinite(peak_q), status_code("ok"), status_code("no_maximum_in_window")).astype(np.int8))
    # (the reported fit's status: the final maps report no peak where it found none)
    report_status = np.asarray(g["peaks/status"]).astype(np.int8) if feature else peak_status
    crystal_thr = crystal_spot_threshold(cfg, np.asarray(g["ingest/total_counts"]), measured_counts(g))
    # the spots' indexing (profile stage) and their spatial context: grain or LiF, whatever the spot strength
    # a flat-topped halo (no_clear_maximum) is an SRO peak too, with a wide error
    has_peak = (peak_status == status_code("ok")) | (peak_status == status_code("no_clear_maximum"))
    # (the grain rule asks the position's own profile: the denoised one of a grain is the amorphous mean's shape)
    own = np.asarray(g["peaks/status_own_profile"]) if "peaks/status_own_profile" in g else peak_status
    own_peak = has_peak & ((own == status_code("ok")) | (own == status_code("no_clear_maximum")))
    no_max = (peak_status == status_code("no_maximum_in_window")) & (own == status_code("no_maximum_in_window"))
    like, spots = grain_like(cfg, g, crystal_z, crystal_thr, own_peak, r_q, float(q[1] - q[0]), no_max)
    neighbours = crystal_neighbour_count(crystal_z, crystal_thr, like)
    minority = np.zeros(crystal_z.shape, bool)
    if like is not None and d.grain_majority_size > 0:  # (after the neighbour counts: the grain's edge stays a grain's)
        minority = kept_grain_minority(spots, like, own_peak, r_q, d.grain_majority_size,
                                       cache_path=Path(ctx.out_dir) / MINORITY_CACHE, reuse=ctx.resume)
        like = like & ~minority
    crystal_like = crystal_positions(crystal_z, crystal_thr, bragg, d.crystal_bragg_fraction, neighbours,
                                     d.crystal_min_neighbours, like=like)
    vote = spot_vote(lif_z, crystal_like, lif_noise, lif_sure, d.lif_neighbourhood)
    # the LiF evidence of a layer against the scan's own chance level (speckle); positions whose spots index as a
    # grain (or ambiguously) are left out of the means like crystals: a grain's spots near LiF's rings (Li (211)
    # 0.698, Cu (111) 0.479 1/Å) would otherwise raise the positions beside it (development seeds 724, 725)
    cat = np.asarray(g["features/spot_category"]) if "features/spot_category" in g else None
    layer_excl = crystal_like | (np.isin(cat, (GRAIN, AMBIGUOUS)) if cat is not None else False)
    layer = lif_layer_z(lif_z, layer_excl, d.lif_layer_neighbourhood)
    rules = dict(crystal_spot_z=crystal_thr, lif_spot_z=lif_sure, electrolyte_max_q=d.electrolyte_max_q,
                 sei_type1_range=d.sei_type1_range, sei_type2_range=d.sei_type2_range,
                 electrolyte_range=d.electrolyte_range, bragg_fraction=bragg,
                 crystal_bragg_fraction=d.crystal_bragg_fraction, lif_vote=vote, lif_vote_min=d.lif_vote_min,
                 crystal_neighbours=neighbours, crystal_min_neighbours=d.crystal_min_neighbours, crystal_like=like,
                 lif_indexed=lif_indexed_positions(cat if like is not None else None),
                 lif_layer=layer, lif_layer_z_min=d.lif_layer_z_min,
                 grain_indexed=np.isin(cat, (GRAIN, AMBIGUOUS)) if like is not None else None)
    # what does not depend on the method or its classes is kept where the store holds it for the same inputs (a
    # re-run after a classification change): FeaturesCache
    counts = np.asarray(g["ingest/total_counts"], dtype=np.float64)
    bf_img = np.asarray(g["features/virtual_bf"], dtype=np.float64)
    key = features_key(q, spot_z, counts, bf_img, r_q, lif_sure, crystal_z, lif_z, vote, layer, d)
    kept = FeaturesCache(ctx.out_dir, ctx.store_path, key, enabled=ctx.resume)  # (--force: computed afresh)
    features_todo = not kept.valid()
    if features_todo:
        kept.forget()

    def features():
        if features_todo:
            method_independent_features(g, q, spot_z, r_q, lif_sure, crystal_z, lif_z, vote, layer, d, counts, bf_img)
            kept.save()

    if cfg.classify.method in ("rules", "probabilistic"):  # (probabilistic: the rules' crystals, then below)
        cls = classify_rules(peak_q, crystal_z, lif_z, **rules)
    else:  # the clustering (sendmap.science.gmm: numba kernels, the GIL released) on a second thread, while this one
        # computes and writes what does not depend on the classes (method_independent_features)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            clustering = pool.submit(classify_gmm, peak_q, crystal_z, lif_z, cfg.classify.n_clusters,
                                     cfg.classify.seed, method=cfg.classify.method, **rules)
            features()
            cls = clustering.result()
    # no clear maximum: no class from the peak's Q unless the whole Q range consistent with the maximum gives it
    flat = peak_status == status_code("no_clear_maximum")
    if flat.any() and "peaks/q_max_lo" in g:
        ends = [classify_rules(np.where(flat, np.asarray(g[f"peaks/q_max_{e}"]), peak_q), crystal_z, lif_z, **rules)
                for e in ("lo", "hi")]
        cls = undetermined_by_q(cls, *ends, flat)
    # class probabilities: the evidence of each position and the spatial prior (sendmap.science.probability)
    # a flat top (no_clear_maximum) is no evidence for an amorphous class: its Q range spans them (and its positions
    # are not independent evidence: one film's plateau is the same everywhere, which a Potts field over many such
    # positions would turn into a near-certain class from a 1.03 likelihood ratio each, as measured on the real
    # scan); nor is it "no peak": such positions keep NaN probabilities, unassigned as by the rules
    ok_peak = np.where(peak_status == status_code("ok"), peak_q, np.nan)
    lif_idx = rules["lif_indexed"]
    prob = class_probabilities(ok_peak, peak_err, cls == CRYSTAL, lif_evidence(lif_z, lif_noise, lif_sure),
                               labels=cls, lif_hit_rate=cfg.classify.lif_hit_rate,
                               lif_no_peak=None if lif_idx is None else (cls == SEI_TYPE2) & ~np.isfinite(ok_peak) & lif_idx,
                               no_peak=None if lif_idx is None else ~np.isfinite(ok_peak) & ~flat,
                               lif_layer=(np.nan_to_num(layer, nan=-np.inf) >= d.lif_layer_z_min)
                               if d.lif_layer_z_min > 0 and cfg.classify.lif_layer_evidence else None,
                               model_iterations=cfg.classify.model_iterations,
                               cut_on_measured=cfg.classify.spread_cut_on_measured,
                               temperature=cfg.classify.temperature,
                               beta_iterations=cfg.classify.beta_iterations,
                               class_ranges={"sei_type1": d.sei_type1_range, "sei_type2": d.sei_type2_range,
                                             "electrolyte": (d.electrolyte_range[0], d.electrolyte_max_q)})
    p = prob["probability"]
    if cfg.classify.method == "probabilistic":
        has = np.isfinite(p).all(axis=-1)
        cls = np.where(has, np.nan_to_num(p).argmax(axis=-1), UNASSIGNED).astype(np.int8)
    idx = np.clip(cls, 0, len(PROB_CLASSES) - 1)
    confidence = np.where(cls < len(PROB_CLASSES), np.take_along_axis(p, idx[..., None].astype(np.intp), axis=-1)[..., 0],
                          np.nan)
    if cfg.classify.min_confidence > 0:
        cls = np.where(np.isfinite(confidence) & (confidence < cfg.classify.min_confidence), UNCERTAIN, cls
                       ).astype(np.int8)
    no_peak = cls == CRYSTAL
    if cfg.classify.method in ("rules", "probabilistic"):  # (the clustering methods wrote them meanwhile)
        features()
    write_array(g, "features/peak_fwhm", np.where(no_peak, np.nan, np.asarray(g["peaks/fwhm"])), {"units": "1/Å"})
    # a second maximum where Bragg spots sit (e.g. LiF (220) at 0.70 1/Å in SEI Type 2) is a reflection, not SRO
    q2 = np.asarray(g["peaks/second_q_peak"])
    j2 = np.clip(np.searchsorted(q, np.nan_to_num(q2, nan=q[0])), 0, q.size - 1)
    spot_at_q2 = np.take_along_axis(np.nan_to_num(spot_z), j2[..., None], axis=-1)[..., 0] > lif_sure
    no_peak2 = no_peak | spot_at_q2
    for key, name in (("q_peak", "peak2_q"), ("q_err", "peak2_q_err"), ("height", "peak2_height")):
        src = np.asarray(g[f"peaks/second_{key}"])
        write_array(g, f"maps/{name}", np.where(no_peak2, np.nan, src),
                    {"units": "1/Å" if key.startswith("q") else "profile units", "meaning": "second SRO peak; NaN where absent"})
    write_array(g, "maps/class", cls, {"class_names": list(CLASS_NAMES), "method": cfg.classify.method,
                                       "crystal_spot_z_threshold": crystal_thr,
                                       "min_confidence": cfg.classify.min_confidence})
    write_array(g, "maps/class_probability", p.astype(np.float32),
                {"class_index_names": list(PROB_CLASSES), "beta": prob["beta"], "lif_hit_rate": prob["lif_hit_rate"],
                 "class_models": prob["class_models"], "temperature": prob["temperature"],
                 "residual_correlation": prob["residual_correlation"],
                 "model_iterations": prob["model_iterations"], "model_history": prob["model_history"],
                 "beta_history": prob["beta_history"],
                 "crystal_false_alarm_rate": CRYSTAL_FALSE_ALARM_RATE,
                 "meaning": "posterior probability of each class: the position's evidence (crystal rule with its "
                            "false-alarm rate, SRO peak with its error, LiF evidence) and a Potts spatial prior, at the "
                            "temperature fitted on development seeds, the class spreads corrected for the rules' Q cuts "
                            "(sendmap.science.probability); "
                            "NaN where a position has neither a crystal nor an SRO peak"})
    write_array(g, "maps/class_confidence", confidence.astype(np.float32),
                {"meaning": "probability (maps/class_probability) of the class in maps/class; NaN for unassigned"})
    # the final maps: a peak only where the fit found an interior maximum inside the window (status ok) and the
    # position is not crystalline; maps/peak_status says why not elsewhere
    final_status = np.where(no_peak, status_code("crystal"), peak_status).astype(np.int8)
    if rules["grain_indexed"] is not None:  # Type 1 by its peak, whose Q the grain's disks pull up: not reported
        pulled = (cls == SEI_TYPE1) & lif_spotty(lif_z, lif_sure, vote, d.lif_vote_min) & grain_reflection_type1(
            peak_q, rules["grain_indexed"], d.sei_type1_range, d.sei_type2_range, d.electrolyte_max_q)
        final_status[pulled & (final_status == status_code("ok"))] = status_code("bragg_disk_in_fit_range")
    # beside a grain, a grain reflection in the fit range above the scan's own chance level pulls the maximum: the
    # grain is a minority along the beam (science.boundaries.grain_disk_beside_grain); the class stands, the peak is
    # not reported
    fit_hw = (dict(g.attrs.get("peaks", {})).get("fit_range") or {}).get("half_width")
    if fit_hw is None and not isinstance(cfg.peaks.fit_half_width, str):
        fit_hw = [float(cfg.peaks.fit_half_width)] * 2
    ok_amorphous = ((cls == SEI_TYPE1) | (cls == SEI_TYPE2) | (cls == ELECTROLYTE)) & (final_status == status_code("ok"))
    if fit_hw is not None:
        from ..science.boundaries import grain_disk_beside_grain, grain_line_z
        from ..science.features import phase_lines
        from ..science.indexing import GRAIN_PHASES

        lines = np.concatenate(list(phase_lines(GRAIN_PHASES, (float(q[0]), float(q[-1]))).values()))
        pulled = grain_disk_beside_grain(grain_line_z(q, spot_z, peak_q, lines, fit_hw, r_q), cls == CRYSTAL,
                                         ok_amorphous)
        final_status[pulled] = status_code("bragg_disk_in_fit_range")
    # a grain minority (above) lists the grain's disks, strong enough for the crystal rule: Li (110) at 0.403 and
    # Cu (111) at 0.479 1/Å reach into the fit range and pull its maximum (+0.012-0.024 1/Å on development seed 1419)
    final_status[minority & ok_amorphous] = status_code("bragg_disk_in_fit_range")
    # a maximum above every class's range is no class's SRO peak: not reported where the position has a class
    above = above_class_ranges(report_q, cls, d.sei_type1_range)
    final_status[above & (final_status == status_code("ok"))] = status_code("above_class_ranges")
    lost = (report_status != status_code("ok")) & (final_status == status_code("ok"))  # (the reported fit's)
    final_status[lost] = report_status[lost]
    no_peak_map = (final_status != status_code("ok")) & (final_status != status_code("no_clear_maximum"))
    write_array(g, "maps/peak_status", final_status, status_attrs())
    write_array(g, "maps/peak_q", np.where(no_peak_map, np.nan, report_q), {"units": "1/Å", "meaning": "first SRO peak maximum (no_clear_maximum: the centre of the "
                                                         "Q range consistent with it); NaN where maps/peak_status is "
                                                         "neither ok nor no_clear_maximum"})
    write_array(g, "maps/peak_q_err", np.where(no_peak_map, np.nan, report_err), {"units": "1/Å", "meaning": "1-sigma"})
