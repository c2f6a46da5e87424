"""Per-block compute of the calibrate stage, as workers run it: each frame's centre, and the centred polar sums of the
non-crystalline frames for the ellipse fit (one read of the data for both).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine.execute import one_numba_thread_off_main
from ..science.classify import band_max, bragg_disk_above


@dataclass(frozen=True)
class CalibrateBlock:
    """process(): per-frame centres of a block and, for the ellipse fit, the centred polar sums (no ellipse
    correction) of its non-crystalline frames: one read of the data for both."""

    guess: tuple
    centre_mask: np.ndarray  # pixels used for the centres (saturated ones too: a flat-topped disk has a centre)
    mask: np.ndarray  # pixels used for the ellipse sums and the profiles
    radius: float
    method: str  # "disk" or "symmetry"
    annulus_px: tuple  # symmetry: the radii (px) of the rings used
    tables: object  # PolarTables of the ellipse geometry, or None when the ellipse is not fitted
    disk_radius_q: float
    crystal_bands: tuple
    crystal_threshold_z: float  # the dose-scaled crystal threshold (sendmap.stages.crystalline.crystal_spot_threshold)

    ellipse_regions: frozenset  # the blocks whose ellipse sums are taken (all, or a sample spread over the scan)

    def __call__(self, loaded):
        from ..science.centre import disk_centres, symmetry_centres
        from ..science.polar_tables import profile_block
        from ..science.sparse import as_dense

        one_numba_thread_off_main()
        item, frames, _ = loaded
        if self.method == "symmetry":
            centres = symmetry_centres(as_dense(frames), np.array(self.guess), self.centre_mask, *self.annulus_px)
            centres = np.where(np.isfinite(centres), centres, np.array(self.guess))
        else:
            centres = disk_centres(frames, np.array(self.guess), self.centre_mask, self.radius)
        sums = None
        if self.tables is not None and tuple(item[1]) in self.ellipse_regions:
            # around the measured centres (≈ 0.05 px noise at 2e4 e⁻: no visible blur of a mean ring)
            r = profile_block(frames, centres, self.mask, self.tables, self.disk_radius_q, keep_sums=True)
            keep = ~bragg_disk_above(band_max(r["spot_z"], self.tables.geom.q_centres, self.crystal_bands),
                                     self.crystal_threshold_z)
            sums = (r["s"][keep].sum(axis=0), r["w"][keep].sum(axis=0), int(keep.sum()))
        return item[1], centres, sums
