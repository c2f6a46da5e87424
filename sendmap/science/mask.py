"""Detector mask: hot and dead pixels found from the sum and maximum patterns of a dataset."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def hot_dead_mask(sum_pattern: np.ndarray, max_pattern: np.ndarray,
                  hot_factor: float = 5.0, hot_sigma: float = 10.0, dead_min_expected: float = 20.0) -> dict:
    """Find hot and dead pixels; returns ``{"mask", "hot", "dead"}`` (Qy, Qx) bool arrays.

    * **hot**: a pixel whose summed counts exceed ``hot_factor`` × the brightest of its 8 neighbours
      *and* that excess is more than ``hot_sigma`` Poisson σ. Comparing with the brightest neighbour
      (not the median) keeps the steep edge of the central disk and Bragg disks, whose pixels always
      have an equally bright neighbour, from being flagged.
    * **dead**: a pixel that never counted (max = 0) where its neighbourhood's median sum predicts at
      least ``dead_min_expected`` counts (P(0 | Poisson 20) = 2e-9).

    ``mask`` is True where a pixel is used.

    >>> import numpy as np
    >>> s = np.full((16, 16), 100.0); s[3, 4] = 5e4; s[8, 8] = 0
    >>> m = np.ones((16, 16)); m[8, 8] = 0
    >>> r = hot_dead_mask(s, m)
    >>> int(r["hot"].sum()), int(r["dead"].sum()), bool(r["mask"][3, 4])
    (1, 1, False)
    """
    s = np.asarray(sum_pattern, dtype=np.float64)
    footprint = np.ones((3, 3), bool)
    footprint[1, 1] = False
    nb_max = ndimage.maximum_filter(s, footprint=footprint, mode="nearest")
    hot = (s > hot_factor * nb_max) & (s - nb_max > hot_sigma * np.sqrt(np.maximum(nb_max, 1.0)))
    nb_med = ndimage.median_filter(s, size=5, mode="nearest")
    dead = (np.asarray(max_pattern) <= 0) & (nb_med >= dead_min_expected)
    return {"mask": ~(hot | dead), "hot": hot, "dead": dead}
