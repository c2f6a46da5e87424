"""Per-block compute of the profiles stage, as workers run it: one pass over a block of frames gives the profiles,
robust mean, spot significance, V(Q) and virtual images (:func:`sendmap.science.polar_tables.profile_block`), and
the spot lists and indexing evidence of the frames with a spot (:data:`EVIDENCE_OUTPUTS`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine.execute import one_numba_thread_off_main


PROFILE_OUTPUTS = {
    "mean": ("profiles", {"units": "counts per pixel", "meaning": "azimuthal mean I(Q)"}),
    "sem": ("profiles", {"units": "counts per pixel", "meaning": "standard error of the mean (error_model: see attrs)"}),
    "dispersion": ("profiles", {"meaning": "pixel variance / mean: ≈ 1 for an isotropic Poisson ring"}),
    "robust_mean": ("profiles", {"units": "counts per pixel",
                                 "meaning": "azimuthal mean with sectors holding Bragg spots clipped (one-sided, 4σ)"}),
    "iqn": ("profiles", None),
    "iqn_sem": ("profiles", None),
    "iqn_robust": ("profiles", None),
    "iqn_masked": ("profiles", {"meaning": "I(Q)·Q^n of the spot-masked mean: the azimuthal mean over the (bin, "
                                           "sector) cells no listed Bragg disk (spots/values) reaches; = iqn where "
                                           "none does (sendmap.science.spot_mask)"}),
    "iqn_masked_sem": ("profiles", {"meaning": "standard error of iqn_masked: iqn_sem's Poisson and speckle parts "
                                               "scaled to the kept area (sendmap.science.spot_mask)"}),
    "spot_z": ("features", {"meaning": "significance (σ) of the brightest Bragg-disk-sized spot centred at each Q, "
                                       "against the azimuthal scatter at that Q (Poisson and speckle)"}),
    "fem_variance": ("features", {"meaning": "normalised azimuthal variance V(Q) of the pattern minus its Poisson part "
                                             "(fluctuation electron microscopy; ≈ 0 for a smooth ring, ≈ 1/M for "
                                             "speckle of M independent volumes)",
                                  "estimator": "per position: [Σ_k w_k (I_k − I)² − (n − 1)·I·ΣW_p²/W] / (W·I²) over "
                                               "the azimuthal sectors k of each Q bin (the ring variance of one "
                                               "pattern; its mean over positions is the ring-ensemble V(k)), scaled "
                                               "to the pixel scale by 1/(ρ̄0·(1 − G)) for grains of the probe disk "
                                               "(sendmap.science.polar.fem_variance_scale)",
                                  "units": "dimensionless"}),
}


STORED_ORDER = ("mean", "sem", "dispersion", "robust_mean", "iqn", "iqn_sem", "iqn_robust", "iqn_masked",
                "iqn_masked_sem", "spot_z", "fem_variance")
"""The arrays of :data:`PROFILE_OUTPUTS` in the order :func:`sendmap.science.polar_tables.stored_profiles` makes
them."""


EVIDENCE_OUTPUTS = {
    # name: (dtype, fill for positions without a spot, attrs); (Ry, Rx) maps under features/
    "n_spots": ("int16", 0, {"units": "count", "meaning": "Bragg-disk-sized spots listed (significance ≥ z_min σ, "
                                                          "the definition of features/spot_z; at most max_spots)"}),
    "n_friedel_pairs": ("int16", 0, {"units": "count", "meaning": "pairs of listed spots with g + g' ≈ 0 within 3σ "
                                                                  "of their position errors"}),
    "n_unindexed": ("int16", 0, {"units": "count", "meaning": "listed spots on no ring of the indexing phases "
                                                              "within the calibrated Q uncertainty (reported, not "
                                                              "dropped)"}),
    "n_lattice": ("int16", 0, {"units": "count", "meaning": "spots that are integer combinations of the best 2-D "
                                                           "basis (two of the shortest spots)"}),
    "lattice_phase": ("int8", -1, {"meaning": "phase (index into phase_names) whose zone the best lattice fits: both "
                                              "basis spots on its rings at one of its interplanar angles, ≥ 3 "
                                              "lattice spots on its rings, a net on ≥ 2 rings; -1 none"}),
    "indexed_phase": ("int8", -1, {"meaning": "phase (index into phase_names) that explains the largest share of "
                                              "the spots' intensity; -1 none (no spots, or none indexed)"}),
    "spot_category": ("int8", 0, {"meaning": "crystal (Li/Cu grain) versus LiF evidence of the spots "
                                             "(sendmap.science.indexing.crystal_evidence); names in category_names"}),
    "crystal_score": ("float32", 0.0, {"units": "share", "meaning": "share of the spots' intensity indexed on a "
                                                                    "Li/Cu grain (1 with a Li/Cu zone lattice)"}),
    "lif_score": ("float32", 0.0, {"units": "share", "meaning": "share of the spots' intensity indexed on LiF (1 "
                                                                "with a LiF zone lattice)"}),
    "grain_spot_z": ("float32", 0.0, {"units": "sigma", "meaning": "largest significance of a spot given mostly to "
                                                                   "a Li/Cu phase; 0 none"}),
    "lif_indexed_z": ("float32", 0.0, {"units": "sigma", "meaning": "largest significance of a spot given mostly to "
                                                                    "LiF; 0 none"}),
    "amorphous_share": ("float32", 1.0, {"units": "share", "meaning": "isotropic share of the scattered intensity "
                                                                      "(Q ≥ 2 probe-disk radii): 1 − listed spots' "
                                                                      "intensity / counts there (1 where no spot is "
                                                                      "listed; NaN where a listed frame has no counts)"}),
}
"""Per-position spot and indexing evidence (:func:`sendmap.science.indexing.crystal_evidence`), computed in the
profile worker for the frames with a spot at or above the listing threshold only (the others have no spot: the
fill value)."""


@dataclass(frozen=True)
class ProfileBlock:
    """process(): one pass over a block → profiles, robust mean, spot significance and virtual images."""

    tables: object  # PolarTables (pickles without its tables; rebuilt lazily where it runs)
    mask: np.ndarray
    disk_radius_q: float
    adf_q: tuple
    bf_q: float
    qn: np.ndarray  # Q^n per bin
    bragg_q_range: tuple = (0.0, 0.0)  # Q range (1/Å) of the Bragg fraction (features/bragg_fraction)
    speckle_factor: object = None  # (nq,) G(Q) of the "azimuthal" error model (polar.speckle_mean_factor), or None
    fem_scale: object = None  # (nq,) sector-scale V → pixel-scale V (polar.fem_variance_scale), or None
    spot_keep_z: object = None  # (nq,) σ: frames whose spot_z reaches it somewhere get a spot list; None: no spots
    q_rel_err: float = 0.005  # relative 1σ error of the Q scale for the indexing (indexing.Q_CALIBRATION_REL)

    def __call__(self, loaded):
        from ..science.features import bragg_fraction
        from ..science.polar_tables import profile_block, stored_bragg, stored_profiles

        one_numba_thread_off_main()
        item, frames, centres = loaded
        spots = self.spot_keep_z is not None
        out = profile_block(frames, centres, self.mask, self.tables, self.disk_radius_q, self.adf_q,
                            bf_max_q=self.bf_q, speckle_factor=self.speckle_factor, keep_z=self.spot_keep_z)
        if spots:
            self._evidence(out)
        # the stored outputs (float32) made here in the worker, not in the main thread that writes (it shares
        # the cores), in one pass (stored_profiles: the numbers of (a · b).astype(float32))
        nb, nq = out["mean"].shape
        f32 = np.empty((len(STORED_ORDER), nb, nq), np.float32)
        mm, ms = (out.pop("masked_mean"), out.pop("masked_sem")) if "masked_mean" in out else (out["mean"], out["sem"])
        scale = np.ones(nq) if self.fem_scale is None else np.ascontiguousarray(self.fem_scale, dtype=np.float64)
        stored_profiles(out["mean"], out["sem"], out["dispersion"], out.pop("robust"), out["spot_z"],
                        out["fem_variance"], scale, mm, ms, np.ascontiguousarray(self.qn, dtype=np.float64), f32)
        for j, nm in enumerate(STORED_ORDER):
            out[nm] = f32[j]
        # from the stored (float32) profiles, as the classify stage computed it before it moved here
        # (features.bragg_fraction's numbers, in one pass: stored_bragg)
        q = self.tables.geom.q_centres
        sel = np.flatnonzero((q >= self.bragg_q_range[0]) & (q <= self.bragg_q_range[1]))
        if nb > 1:
            out["bragg"] = np.empty(nb)
            stored_bragg(out["mean"], out["robust_mean"], sel, np.ascontiguousarray(q[sel], dtype=np.float64),
                         out["bragg"])
        else:
            out["bragg"] = bragg_fraction(q, out["mean"].astype(np.float64), out["robust_mean"].astype(np.float64),
                                          self.bragg_q_range)
        return item[1], out

    def _evidence(self, out: dict) -> None:
        """Indexing evidence of the frames whose spots the profile kernel listed (a spot at or above
        ``spot_keep_z``), into ``out``: ``spot_index`` (C,) frame index in the block, ``spot_list`` (C, K, 4),
        ``spot_ring`` (C, K) bool (the spot lies on a ring of :data:`sendmap.science.indexing.GRAIN_PHASES`: the
        indexing's own ring matches, stored as ``spots/grain_ring``, :func:`sendmap.science.spot_context.
        shared_spot_table`) and the (B,) maps of :data:`EVIDENCE_OUTPUTS`."""
        from ..science.indexing import GRAIN_PHASES, crystal_evidence, index_library

        kept = out.pop("kept")
        sp, scat = out.pop("spots"), out.pop("spot_scattered")
        nb = kept.size
        for nm, (dt, fill, _) in EVIDENCE_OUTPUTS.items():
            out[nm] = np.full(nb, fill, dt)
        idx = np.flatnonzero(kept)
        out["spot_index"] = idx
        if idx.size == 0:
            out["spot_list"] = np.zeros((0, 0, 4), np.float32)
            out["spot_ring"] = np.zeros((0, 0), bool)
            return
        # the kernel packs each frame's spots at the front of its K slots: the empty tail is cut before the
        # indexing, whose array work scales with the slots (the same evidence; 20 → 12 µs per frame on the bench)
        sp = sp[:, :max(1, int(np.isfinite(sp[..., 0]).sum(axis=-1).max()))]
        ev = crystal_evidence(sp, scat, self.disk_radius_q, self.tables.geom.bin_width, self.q_rel_err)
        n = ev["n_spots"]
        k = max(1, int(n.max()))
        out["spot_list"] = sp[:, :k]
        # (the ring test of spots/grain_ring, made here once: the stage used to index every spot a second time)
        gi = [i for i, p in enumerate(index_library().phase_ids) if p in GRAIN_PHASES]
        out["spot_ring"] = ev["match"][:, :k][..., gi].any(axis=-1)
        share = ev["phase_share"]
        best = np.where(share.max(axis=-1) > 0, share.argmax(axis=-1), -1)
        vals = {"n_spots": n, "n_friedel_pairs": ev["n_friedel"], "n_unindexed": ev["n_unindexed"],
                "n_lattice": np.where(n > 0, ev["n_lattice"], 0),
                "lattice_phase": np.where(ev["has_lattice"], ev["lattice_phase"], -1), "indexed_phase": best,
                "spot_category": ev["category"], "crystal_score": ev["crystal_score"], "lif_score": ev["lif_score"],
                "grain_spot_z": ev["crystal_z"], "lif_indexed_z": ev["lif_z"], "amorphous_share": ev["amorphous_share"]}
        for nm, v in vals.items():
            out[nm][idx] = v
