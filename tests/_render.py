"""The detector and probe of the rendered test patterns (``sendmap.synth.patterns``, the generator's renderer): a
128² detector at 0.0125 1/Å per pixel, 2 mrad at 200 kV (probe disk 0.0797 1/Å), a centre off the pixel grid, the
polar geometry of 1-pixel bins and 72 sectors, and the probe-disk convolution of a radial profile on the fine Q
grid. Shared by ``tests/test_indexing.py`` and ``tests/test_spot_mask.py``."""
import numpy as np

from sendmap.physics import probe_radius_inv_angstrom
from sendmap.science.polar import PolarGeometry
from sendmap.synth import patterns as P

N = 128
QPX = 0.0125
R_Q = probe_radius_inv_angstrom(2.0, 200.0)
CENTRE = (63.3, 64.6)
GEOM = PolarGeometry(QPX, QPX, 90, 72, 1.0, 0.0, 3)
MASK = np.ones((N, N), bool)
Q_FINE = P.fine_q_grid(1.4)
_K = P.disk_convolution_matrix(Q_FINE, R_Q)
