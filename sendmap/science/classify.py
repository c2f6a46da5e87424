"""Classification of probe positions into crystal, SEI Type 1, SEI Type 2 and electrolyte.

Features per position (all from the profile stage): the first SRO peak Q (1/Å), the significance of
the brightest Bragg-disk-sized spot in the crystal bands (Li, Cu) and in the LiF bands (σ).
Class definitions (thresholds) come from the config; their defaults follow SCIENCE.md.
"""
from __future__ import annotations

import numpy as np

from .. import CLASS_NAMES

CRYSTAL, SEI_TYPE1, SEI_TYPE2, ELECTROLYTE, UNASSIGNED = range(5)
assert CLASS_NAMES[CRYSTAL] == "crystal" and CLASS_NAMES[UNASSIGNED] == "unassigned"


def classify_rules(peak_q: np.ndarray, crystal_z: np.ndarray, lif_z: np.ndarray, *, crystal_spot_z: float,
                   lif_spot_z: float, electrolyte_max_q: float, sei_type1_range: tuple[float, float],
                   sei_type2_range: tuple[float, float], electrolyte_range: tuple[float, float]) -> np.ndarray:
    """Class index per position (``CLASS_NAMES`` order) from the rules of SCIENCE.md.

    1. crystal: a Bragg-disk spot in the Li/Cu bands stronger than ``crystal_spot_z`` σ;
    2. SEI Type 2: spots in the LiF (200)/(220) bands above ``lif_spot_z`` σ, SRO peak in its range;
    3. isotropic: electrolyte below ``electrolyte_max_q``, SEI Type 1 above, each within its range;
    4. anything else (no peak, peak outside every range): unassigned.

    >>> import numpy as np
    >>> classify_rules(np.array([0.33, 0.285, 0.30, 0.35]), np.array([1., 1., 1., 90.]), np.array([1., 1., 12., 1.]),
    ...     crystal_spot_z=25, lif_spot_z=6, electrolyte_max_q=0.307, sei_type1_range=(0.307, 0.37),
    ...     sei_type2_range=(0.27, 0.33), electrolyte_range=(0.26, 0.307))
    array([1, 3, 2, 0], dtype=int8)
    """
    cls = np.full(peak_q.shape, UNASSIGNED, dtype=np.int8)
    fin = np.isfinite(peak_q)
    crystal = np.nan_to_num(crystal_z, nan=0.0) > crystal_spot_z
    spotty = ~crystal & (np.nan_to_num(lif_z, nan=0.0) > lif_spot_z)
    iso = ~crystal & ~spotty & fin

    def within(r):
        return fin & (peak_q >= r[0]) & (peak_q <= r[1])

    cls[spotty & within(sei_type2_range)] = SEI_TYPE2
    cls[iso & (peak_q < electrolyte_max_q) & within(electrolyte_range)] = ELECTROLYTE
    cls[iso & (peak_q >= electrolyte_max_q) & within(sei_type1_range)] = SEI_TYPE1
    cls[crystal] = CRYSTAL
    return cls


def feature_matrix(peak_q: np.ndarray, crystal_z: np.ndarray, lif_z: np.ndarray) -> np.ndarray:
    """Standardised-scale features for clustering: (N, 3) of peak Q (1/Å × 100), log1p crystal σ, log1p LiF σ."""
    return np.stack([np.nan_to_num(peak_q, nan=0.0) * 100.0,
                     np.log1p(np.clip(np.nan_to_num(crystal_z), 0, None)),
                     np.log1p(np.clip(np.nan_to_num(lif_z), 0, None))], axis=-1)


def classify_gmm(peak_q: np.ndarray, crystal_z: np.ndarray, lif_z: np.ndarray, n_clusters: int, seed: int,
                 **definitions) -> np.ndarray:
    """Gaussian-mixture clusters of the features, each named by the rule class of most of its members.

    Clusters are found without labels; naming them by the definitions makes the result comparable
    with ``classify_rules`` while letting the data set the boundaries between classes.
    """
    from sklearn.mixture import GaussianMixture

    flat_q, flat_c, flat_l = (np.ravel(a) for a in (peak_q, crystal_z, lif_z))
    feats = feature_matrix(flat_q, flat_c, flat_l)
    rules = classify_rules(flat_q, flat_c, flat_l, **definitions)
    k = min(n_clusters, max(1, len(feats)))
    labels = GaussianMixture(n_components=k, random_state=seed, covariance_type="full").fit_predict(feats)
    out = np.full(flat_q.shape, UNASSIGNED, dtype=np.int8)
    for lab in np.unique(labels):
        members = labels == lab
        out[members] = np.bincount(rules[members], minlength=len(CLASS_NAMES)).argmax()
    return out.reshape(np.shape(peak_q))
