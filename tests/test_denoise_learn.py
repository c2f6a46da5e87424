"""Denoising components learned from other profiles than those projected (``lowrank_denoise(..., learn=)``,
``peaks.denoise_learn_pool``) and the neighbourhood mean they are learned from."""
from __future__ import annotations

import numpy as np

from sendmap.science.denoise_residual import neighbourhood_mean
from sendmap.science.peaks import lowrank_denoise


def _scan(seed=3, ry=32, rx=32):
    """Two layers (rows < 16 and ≥ 16) of different peak shape, amplitude ±20 %, and strong smooth multiplicative
    noise (8 cosine modes along Q, 30 % each) that outranks the layers' difference in single profiles."""
    rng = np.random.default_rng(seed)
    q = (np.arange(60) + 0.5) * 0.0125
    cls = np.repeat((np.arange(ry) >= ry // 2).astype(int), rx)
    shapes = np.stack([np.exp(-0.5 * ((q - 0.33) / 0.05) ** 2) + 0.3,
                       0.95 * np.exp(-0.5 * ((q - 0.315) / 0.06) ** 2) + 0.31])
    truth = shapes[cls] * rng.uniform(0.8, 1.2, (ry * rx, 1))
    modes = np.array([np.cos(np.pi * k * (q - q[0]) / (q[-1] - q[0])) for k in range(1, 9)])
    y = truth * (1 + rng.normal(0, 0.3, (ry * rx, 8)) @ modes) + rng.normal(0, 0.005, truth.shape)
    return q, cls, truth, y, np.full_like(y, 0.01)


def test_learned_components_are_the_learning_profiles():
    """Known answer: with the noise-free profiles as ``learn`` (their 2-dimensional span: layer and amplitude), two
    components keep each layer's mean profile (max deviation 0.034 / 0.028 against 0.090 / 0.079 with the
    components of the noisy profiles themselves, whose two leading directions are noise modes); the noise-free
    profiles themselves come back unchanged; ``learn`` = the profiles is the default, to rounding."""
    q, cls, truth, y, s = _scan()
    rows, sel = np.ones(len(y), bool), np.ones(q.size, bool)
    dev = {}
    for name, learn in (("own", None), ("truth", truth)):
        d = lowrank_denoise(y, s, rows, sel, "pca", 2, learn=learn)[0]
        dev[name] = max(np.abs(d[cls == c].mean(0) - truth[cls == c].mean(0)).max() for c in (0, 1))
    assert dev["truth"] < 0.5 * dev["own"], dev
    assert np.abs(lowrank_denoise(truth, s, rows, sel, "pca", 2, learn=truth)[0] - truth).max() < 1e-10
    assert np.abs(lowrank_denoise(y, s, rows, sel, "pca", 2, learn=y)[0]
                  - lowrank_denoise(y, s, rows, sel, "pca", 2)[0]).max() < 1e-10


def test_neighbourhood_mean_counts_only_the_rows():
    """The k × k mean over the given rows only (the position itself included), finite bins only."""
    p = np.arange(9.0)[:, None] * np.ones((1, 2))
    p[4, 1] = np.nan
    rows = np.ones(9, bool)
    rows[0] = False
    m = neighbourhood_mean(p, rows, (3, 3), 3)
    assert m[4, 0] == (36 - 0) / 8  # positions 1..8
    assert m[4, 1] == (36 - 4) / 7  # and without the NaN bin of position 4
    assert m[0, 0] == (1 + 3 + 4) / 3  # position 0 is not a row: its neighbours' mean
