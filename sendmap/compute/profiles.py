"""Per-block compute of the profiles stage, as workers run it: one pass over a block of frames gives the profiles,
robust mean, spot significance, V(Q) and virtual images (:func:`sendmap.science.polar_tables.profile_block`).
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

    def __call__(self, loaded):
        from ..science.features import bragg_fraction
        from ..science.polar_tables import profile_block

        one_numba_thread_off_main()
        item, frames, centres = loaded
        out = profile_block(frames, centres, self.mask, self.tables, self.disk_radius_q, self.adf_q,
                            bf_max_q=self.bf_q, speckle_factor=self.speckle_factor)
        # the stored outputs (float32) made here in the worker, not in the main thread that writes (it shares
        # the cores)
        out["robust_mean"] = out.pop("robust")
        if self.fem_scale is not None:
            out["fem_variance"] = out["fem_variance"] * self.fem_scale
        for nm, src in (("iqn", "mean"), ("iqn_sem", "sem"), ("iqn_robust", "robust_mean")):
            out[nm] = out[src] * self.qn
        for nm in PROFILE_OUTPUTS:
            out[nm] = out[nm].astype(np.float32)
        # from the stored (float32) profiles, as the classify stage computed it before it moved here
        out["bragg"] = bragg_fraction(self.tables.geom.q_centres, out["mean"].astype(np.float64),
                                      out["robust_mean"].astype(np.float64), self.bragg_q_range)
        return item[1], out
