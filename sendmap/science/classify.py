"""Classification of probe positions into crystal, SEI Type 1, SEI Type 2 and electrolyte.

Features per position (all from the profile stage): the first SRO peak Q (1/Å), the significance of
the brightest Bragg-disk-sized spot in the crystal bands (Li, Cu) and in the LiF bands (σ).
Class definitions (thresholds) come from the config; their defaults follow SCIENCE.md.
"""
from __future__ import annotations

import numpy as np

from .. import CLASS_NAMES

CRYSTAL, SEI_TYPE1, SEI_TYPE2, ELECTROLYTE, UNASSIGNED, UNCERTAIN = range(6)
assert CLASS_NAMES[CRYSTAL] == "crystal" and CLASS_NAMES[UNASSIGNED] == "unassigned"
assert CLASS_NAMES[UNCERTAIN] == "uncertain"


def classify_rules(peak_q: np.ndarray, crystal_z: np.ndarray, lif_z: np.ndarray, *, crystal_spot_z: float,
                   lif_spot_z: float, electrolyte_max_q: float, sei_type1_range: tuple[float, float],
                   sei_type2_range: tuple[float, float], electrolyte_range: tuple[float, float],
                   bragg_fraction: np.ndarray | None = None, crystal_bragg_fraction: float = 0.0,
                   lif_vote: np.ndarray | None = None, lif_vote_min: float = 0.5,
                   crystal_neighbours: np.ndarray | None = None, crystal_min_neighbours: int = 0,
                   crystal_like: np.ndarray | None = None, lif_indexed: np.ndarray | None = None,
                   lif_layer: np.ndarray | None = None, lif_layer_z_min: float = 0.0,
                   grain_indexed: np.ndarray | None = None) -> np.ndarray:
    """Class index per position (``CLASS_NAMES`` order) from the rules of SCIENCE.md.

    1. crystal: a Bragg-disk spot in the Li/Cu bands stronger than ``crystal_spot_z`` σ and (where
       ``bragg_fraction`` is given) more than ``crystal_bragg_fraction`` of the scattered intensity in
       Bragg spots: a grain in a zone axis puts most of it there, a few LiF nanocrystals whose (200) ring
       falls into the same band only a few %; not used by default: the robust mean misses spots that fill
       much of a ring, e.g. Li [111]) and (where ``crystal_neighbours`` is given, :func:`crystal_neighbour_count`)
       at least ``crystal_min_neighbours`` of its 8 neighbours crystalline too: a grain, not a nanocrystal
       with one strong reflection; where ``crystal_like`` (:func:`grain_evidence`, the spots' indexing) is given
       it replaces the spot threshold;
    2. SEI Type 2: spots in the LiF (200)/(220) bands above ``lif_spot_z`` σ, or (where ``lif_vote`` is
       given, see :func:`spot_vote`) a neighbourhood vote for LiF spots ≥ ``lif_vote_min``; SRO peak in its
       range, or no SRO peak at all where the spots index as LiF crystallites in an amorphous matrix
       (``lif_indexed``, :func:`lif_indexed_positions`: strong LiF rings can hide the SRO maximum in the window);
       where ``grain_indexed`` is given (the spots index as a Li/Cu grain, or as LiF and Li/Cu alike: Li (211) at
       0.698 1/Å lies 0.6 % from LiF (220) at 0.702), the LiF evidence does not veto an SRO peak in the SEI Type 1
       range and above Type 2's: such a position is isotropic (rule 3), e.g. SEI Type 1 with a Li grain as the
       minority along the beam, which would otherwise be unassigned;
    2b. SEI Type 2 of a layer without strong LiF: where ``lif_layer`` (:func:`lif_layer_z`, the neighbourhood's
       LiF-band significance against the scan's own chance level) reaches ``lif_layer_z_min`` (> 0; 0: off) and
       the SRO peak is in the Type 2 range below ``electrolyte_max_q``: the Q alone would make it electrolyte,
       whose peak Type 2's overlaps, while SEI Type 1's lies above it (a Type 1 position beside the layer
       keeps its class);
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
    crystal = crystal_positions(crystal_z, crystal_spot_z, bragg_fraction, crystal_bragg_fraction,
                                crystal_neighbours, crystal_min_neighbours, like=crystal_like)
    spotty = lif_spotty(lif_z, lif_spot_z, lif_vote, lif_vote_min) & ~crystal

    def within(r):
        return fin & (peak_q >= r[0]) & (peak_q <= r[1])

    if grain_indexed is not None:  # a Li/Cu reflection on a LiF ring does not veto a Type 1 peak
        spotty &= ~grain_reflection_type1(peak_q, grain_indexed, sei_type1_range, sei_type2_range, electrolyte_max_q)
    iso = ~crystal & ~spotty & fin

    cls[spotty & within(sei_type2_range)] = SEI_TYPE2
    if lif_layer is not None and lif_layer_z_min > 0:
        layer = (~crystal & ~spotty & (np.nan_to_num(lif_layer, nan=-np.inf) >= lif_layer_z_min)
                 & within(sei_type2_range) & (peak_q < electrolyte_max_q))
        cls[layer] = SEI_TYPE2
        iso &= ~layer
    if lif_indexed is not None:
        cls[spotty & ~fin & np.asarray(lif_indexed, bool)] = SEI_TYPE2
    cls[iso & (peak_q < electrolyte_max_q) & within(electrolyte_range)] = ELECTROLYTE
    cls[iso & (peak_q >= electrolyte_max_q) & within(sei_type1_range)] = SEI_TYPE1
    cls[crystal] = CRYSTAL
    return cls


def lif_spotty(lif_z: np.ndarray, lif_spot_z: float, lif_vote: np.ndarray | None = None,
               lif_vote_min: float = 0.5) -> np.ndarray:
    """The LiF evidence of :func:`classify_rules` (rule 2, before crystals are taken out): a spot in the LiF bands
    above ``lif_spot_z`` σ or, where ``lif_vote`` is given, a neighbourhood vote ≥ ``lif_vote_min``.

    >>> lif_spotty(np.array([12.0, 3.0, np.nan]), 10.5, np.array([0.0, 0.6, 0.2])).tolist()
    [True, True, False]
    """
    spotty = np.nan_to_num(lif_z, nan=0.0) > lif_spot_z
    if lif_vote is not None:
        spotty |= np.nan_to_num(lif_vote, nan=0.0) >= lif_vote_min
    return spotty


def grain_reflection_type1(peak_q: np.ndarray, grain_indexed: np.ndarray, sei_type1_range: tuple[float, float],
                           sei_type2_range: tuple[float, float], electrolyte_max_q: float) -> np.ndarray:
    """(Ry, Rx) bool: positions whose spots index as Li/Cu (``grain_indexed``: grain or ambiguous) and whose SRO peak
    (1/Å) is in the SEI Type 1 range, above Type 2's and above ``electrolyte_max_q``: their LiF-band evidence does not
    veto Type 1 (:func:`classify_rules`). Their disks pull the peak up (a Li grain's (110) at 0.403 1/Å lies in the fit
    range), away from the Type 2 and electrolyte ranges, so the class holds; the peak itself is not reported
    (``maps/peak_status`` ``bragg_disk_in_fit_range``).

    >>> grain_reflection_type1(np.array([0.345, 0.345, 0.315]), np.array([True, False, True]), (0.307, 0.37),
    ...                        (0.27, 0.33), 0.307).tolist()
    [True, False, False]
    """
    q = np.asarray(peak_q, dtype=float)
    fin = np.isfinite(q)
    qq = np.where(fin, q, 0.0)
    in_t1 = fin & (qq >= sei_type1_range[0]) & (qq <= sei_type1_range[1])
    in_t2 = fin & (qq >= sei_type2_range[0]) & (qq <= sei_type2_range[1])
    return np.asarray(grain_indexed, bool) & in_t1 & ~in_t2 & (qq >= electrolyte_max_q)


def above_class_ranges(peak_q: np.ndarray, cls: np.ndarray, sei_type1_range: tuple[float, float]) -> np.ndarray:
    """(Ry, Rx) bool: positions given an amorphous class (SEI Type 1, Type 2, electrolyte) whose SRO maximum (1/Å)
    lies above every class's range, i.e. above ``sei_type1_range``'s upper end (SEI Type 1's published mean + 2
    spreads, the highest-Q class; SCIENCE.md). No class has its peak there, so the maximum is not reported as the
    class's peak (``maps/peak_status`` ``above_class_ranges``). The rules leave such positions unassigned; the class
    probabilities' spatial prior (``classify.method: probabilistic``) gives them a class, and on the scenario matrix
    these are SEI Type 1 positions beside a grain whose Bragg disk in the fit range (Li (110) at 0.403 1/Å) pulls the
    maximum to 0.35–0.40 (development seed 1219: SEI Type 1's class mean +0.026 → +0.006 1/Å without them).

    >>> above_class_ranges(np.array([0.39, 0.39, 0.34, np.nan]), np.array([SEI_TYPE1, UNASSIGNED, SEI_TYPE1, SEI_TYPE1]),
    ...                    (0.307, 0.37)).tolist()
    [True, False, False, False]
    """
    q = np.nan_to_num(np.asarray(peak_q, dtype=float), nan=-np.inf)
    c = np.asarray(cls)
    return (q > sei_type1_range[1]) & ((c == SEI_TYPE1) | (c == SEI_TYPE2) | (c == ELECTROLYTE))


def undetermined_by_q(cls: np.ndarray, cls_lo: np.ndarray, cls_hi: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Classes where the SRO peak has no clear maximum (``flat``, peak status ``no_clear_maximum``): the class the
    rules give at the peak's Q (``cls``) where they give the same at both ends of the Q range consistent with the
    maximum (``cls_lo``, ``cls_hi``: the rules at ``peaks/q_max_lo`` and ``q_max_hi``), else unassigned: the data do
    not say on which side of a Q threshold the maximum lies, and a class chosen there would follow the noise (on
    a real flat-topped halo: one film split into electrolyte, SEI Type 1 and unassigned).

    >>> undetermined_by_q(np.array([3, 1, 1]), np.array([3, 3, 1]), np.array([1, 1, 1]), np.array([False, True, True]))
    array([3, 4, 1], dtype=int8)
    """
    same = (np.asarray(cls_lo) == cls) & (np.asarray(cls_hi) == cls)
    return np.where(np.asarray(flat, bool) & ~same, UNASSIGNED, cls).astype(np.int8)


def bragg_disk_above(crystal_z: np.ndarray, threshold: float) -> np.ndarray:
    """True where the brightest Bragg-disk-sized spot in the crystal bands is more significant than ``threshold`` σ
    (NaN: no). The first condition of "crystalline" (:func:`crystal_positions`), and the whole of it where a stage
    only needs to keep strongly spotty patterns out of a fit (the ellipse, the denoising components).

    >>> bragg_disk_above(np.array([30.0, 10.0, np.nan]), 25).tolist()
    [True, False, False]
    """
    return np.nan_to_num(crystal_z, nan=0.0) > threshold


def crystal_positions(crystal_z: np.ndarray, threshold: float, bragg_fraction: np.ndarray | None = None,
                      min_bragg_fraction: float = 0.0, neighbours: np.ndarray | None = None,
                      min_neighbours: int = 0, like: np.ndarray | None = None) -> np.ndarray:
    """The one definition of a crystalline position (class ``crystal``): a Bragg disk above ``threshold`` σ in the
    crystal bands (:func:`bragg_disk_above`) and, where given and set, more than ``min_bragg_fraction`` of the
    scattered intensity in Bragg spots and at least ``min_neighbours`` of the 8 neighbours with such a disk too
    (:func:`crystal_neighbour_count`): a grain, not a nanocrystal with one strong reflection. ``like``: the
    position's own grain evidence from its indexed spots (:func:`grain_evidence`) in place of the threshold.

    >>> crystal_positions(np.array([30.0, 30.0]), 25, neighbours=np.array([5, 1]), min_neighbours=4).tolist()
    [True, False]
    """
    crystal = bragg_disk_above(crystal_z, threshold) if like is None else np.asarray(like, bool).copy()
    if bragg_fraction is not None and min_bragg_fraction > 0:
        crystal &= np.nan_to_num(bragg_fraction, nan=1.0) > min_bragg_fraction
    if neighbours is not None and min_neighbours > 0:
        crystal &= np.asarray(neighbours) >= min_neighbours
    return crystal


def crystal_neighbour_count(crystal_z: np.ndarray, threshold: float, like: np.ndarray | None = None) -> np.ndarray:
    """Number of the 8 scan neighbours (edges: the nearest position repeated) whose crystal-band spot
    significance exceeds ``threshold`` σ (or, where ``like`` is given, that are grain-like: :func:`grain_evidence`),
    (Ry, Rx) int.

    >>> import numpy as np
    >>> z = np.zeros((3, 4)); z[:, 2:] = 50
    >>> crystal_neighbour_count(z, 25)[1].tolist()
    [0, 3, 5, 8]
    """
    k = np.ones((3, 3))
    k[1, 1] = 0
    hit = (bragg_disk_above(crystal_z, threshold) if like is None else np.asarray(like, bool)).astype(float)
    return np.rint(window_sum(hit, k)).astype(int)


def grain_evidence(crystal_z: np.ndarray, threshold: float, spot_category: np.ndarray | None = None,
                   lif_indexed_z: np.ndarray | None = None, shared_grain: np.ndarray | None = None,
                   sro_peak: np.ndarray | None = None, no_ring_region: np.ndarray | None = None) -> np.ndarray:
    """Per position: does it look like a Li/Cu grain (before the neighbour condition of :func:`crystal_positions`)?

    * a Bragg disk in the crystal bands above ``threshold`` σ (:func:`bragg_disk_above`), **unless** the spots
      index as LiF crystallites in an amorphous matrix (``spot_category`` LIF,
      :func:`sendmap.science.indexing.crystal_evidence`) and the strongest crystal-band spot is one of them
      (``lif_indexed_z`` ≥ ``crystal_z``): LiF (200) at 0.497 1/Å lies in the Cu (111) band, and a LiF-dominant
      SEI Type 2 pattern passes any threshold;
    * or spots that index as a Li/Cu grain (category GRAIN: a Li/Cu zone lattice, or Li/Cu spots on a pattern
      dominated by Bragg scattering or too strong for their Q to be LiF's), whatever their strength;
    * or (``shared_grain``) a spot on a Li/Cu ring that 3 or more neighbours share
      (:func:`sendmap.science.spot_context.shared_grain_evidence`: a grain's reflection repeats over the grain, an
      off-axis grain's single pair or row included) on a pattern without an SRO peak (``sro_peak`` False: no
      amorphous ring; a boundary pattern where the grain is the minority keeps its SEI's ring);
    * or (``no_ring_region``) a region without an amorphous ring beside a Li/Cu reflection (:func:`without_amorphous_ring`).

    Without the indexing arrays (None), the threshold alone: the stores of sendmap before spot lists.

    >>> grain_evidence(np.array([40.0, 40.0, 3.0, 3.0]), 25, np.array([2, 1, 1, 0]), np.array([40.0, 0, 0, 0]),
    ...                np.array([False, False, False, True]), np.array([True, True, True, False])).tolist()
    [False, True, True, True]
    """
    like = bragg_disk_above(crystal_z, threshold)
    if spot_category is not None:
        from .indexing import GRAIN, LIF

        cat = np.asarray(spot_category)
        lz = np.nan_to_num(np.asarray(lif_indexed_z, dtype=np.float64), nan=0.0) if lif_indexed_z is not None else 0.0
        lif = (cat == LIF) & (lz >= np.nan_to_num(crystal_z, nan=0.0) - 1e-3)
        like = (like & ~lif) | (cat == GRAIN)
    if shared_grain is not None:
        no_ring = ~np.asarray(sro_peak, bool) if sro_peak is not None else True
        like = like | (np.asarray(shared_grain, bool) & no_ring)
    if no_ring_region is not None:
        like = like | np.asarray(no_ring_region, bool)
    return like


def without_amorphous_ring(no_maximum: np.ndarray, lif_indexed: np.ndarray | None, grain_ring_spot: np.ndarray,
                           min_neighbours: int) -> np.ndarray:
    """(Ry, Rx) bool: positions in a region without an amorphous ring that show a Li/Cu reflection nearby: an
    off-axis grain whose reflections are too weak or too few for the other grain evidence.

    Every amorphous class has its first SRO ring inside the peak window (SCIENCE.md: 0.285-0.33 1/Å), so a
    pattern with counts whose I·Q has no maximum there (``no_maximum``: status no_maximum_in_window on its own and
    on its denoised profile) holds no amorphous film; a Li/Cu grain off its zone axis shows only its diffuse
    background and a pair or row of reflections, often below the spot threshold. A position counts where it has no
    maximum, at least ``min_neighbours`` of its 8 scan neighbours have none either (a grain spans many positions;
    ``classify.definitions.crystal_min_neighbours``), its spots do not index as LiF crystallites in an amorphous
    matrix (``lif_indexed``: strong LiF rings can hide SEI Type 2's maximum, rule 2 of :func:`classify_rules`), and it
    or one of its neighbours lists a spot on a Li or Cu ring (``grain_ring_spot``; a peak window that misses the
    rings of an amorphous scan does not make it crystalline). Measured on the development seeds 910-931 (matrix cells
    offaxis, thin, mixed, all; ``benchmarks/scenario_matrix.py --seed-base 900``): 490 positions gained, 487 of them
    grains (a Li (211) pair carrying 0.7 % of the scattered intensity, seed 930: accuracy 0.614 -> 0.754), 3 SEI
    Type 2.

    >>> import numpy as np
    >>> nm = np.zeros((4, 4), bool); nm[:, :3] = True
    >>> ring = np.zeros((4, 4), bool); ring[1, 1] = True
    >>> without_amorphous_ring(nm, None, ring, 4).astype(int).tolist()  # (the last row: no Li/Cu spot near)
    [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    """
    no_max = np.asarray(no_maximum, bool)
    if lif_indexed is not None:
        no_max = no_max & ~np.asarray(lif_indexed, bool)
    k = np.ones((3, 3))
    k[1, 1] = 0
    around = np.rint(window_sum(no_max.astype(float), k)).astype(int)
    ring = np.asarray(grain_ring_spot, bool)
    ring_near = ring | (np.rint(window_sum(ring.astype(float), k)) >= 1)
    return no_max & (around >= min_neighbours) & ring_near


def lif_indexed_positions(spot_category: np.ndarray | None) -> np.ndarray | None:
    """True where a position's spots index as LiF crystallites in an amorphous matrix (``features/spot_category``
    LIF, :func:`sendmap.science.indexing.crystal_evidence`); None without the indexing (older stores)."""
    if spot_category is None:
        return None
    from .indexing import LIF

    return np.asarray(spot_category) == LIF


def window_sum(image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted sum over the odd-sized, symmetric ``weights`` window centred on every pixel of a 2-D ``image``,
    edges extended by the nearest pixel: ``scipy.ndimage.convolve(image, weights, mode="nearest")`` for the small
    symmetric windows used here, without importing scipy.ndimage (~0.2 s of a re-run).

    >>> import numpy as np
    >>> window_sum(np.arange(3.0)[None, :], np.ones((1, 3))).tolist()
    [[1.0, 3.0, 5.0]]
    """
    wy, wx = weights.shape
    ry, rx = wy // 2, wx // 2
    padded = np.pad(np.asarray(image, dtype=float), ((ry, ry), (rx, rx)), mode="edge")
    out = np.zeros(image.shape, dtype=float)
    for i in range(wy):
        for j in range(wx):
            if weights[i, j]:
                out += weights[i, j] * padded[i:i + image.shape[0], j:j + image.shape[1]]
    return out


def spot_vote(lif_z: np.ndarray, exclude: np.ndarray, z_noise: float, z_sure: float, size: int = 3,
              self_weight: float = 2.0) -> np.ndarray:
    """Neighbourhood vote (0–1) for LiF nanocrystal spots at each scan position.

    Each position votes clip((lif_z − z_noise) / (z_sure − z_noise), 0, 1): 0 at the level an isotropic
    Poisson pattern reaches by chance (its brightest spot over the LiF bands is ≈ 2.5–4.8 σ), 1 for a spot
    that is certain. The vote is averaged over the ``size`` × ``size`` neighbourhood (the position itself
    counted ``self_weight`` times), leaving out ``exclude`` (crystal) positions. An SEI Type 2 layer is tens
    of nm thick and holds nanocrystals throughout, so at 4 nm steps its neighbours show spots too, while a
    lone noise excursion has none; a vote, not a mean of σ, so that strong neighbours do not carry an
    isotropic position across a layer boundary. ``size`` 1: the position's own vote.

    >>> import numpy as np
    >>> z = np.array([[3., 3., 3.], [3., 5., 3.], [3., 3., 3.]])
    >>> round(float(spot_vote(z, np.zeros((3, 3), bool), 3.5, 6.0)[1, 1]), 3)  # (2 × 0.6) / 10
    0.12
    """
    v = np.clip((np.nan_to_num(lif_z, nan=0.0) - z_noise) / max(z_sure - z_noise, 1e-9), 0.0, 1.0)
    w = (~exclude).astype(float)
    if size <= 1:
        return np.where(exclude, np.nan, v)
    k = np.ones((size, size))
    k[size // 2, size // 2] = self_weight
    num = window_sum(v * w, k)
    den = window_sum(w, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(exclude | (den <= 0), np.nan, num / np.where(den > 0, den, 1.0))


LIF_LAYER_MIN_POSITIONS = 50
"""Fewest non-crystalline positions a scan needs for :func:`lif_layer_z`'s own chance level (its median and
lower half-width): with fewer, the 15.9th percentile's sampling error (≈ 0.2 σ at 50 positions) would move the
threshold by more than the LiF excess of a faint layer; below it the statistic is NaN (the rule is off)."""


def lif_layer_z(lif_z: np.ndarray, exclude: np.ndarray, size: int = 5, self_weight: float = 2.0,
                min_positions: int = LIF_LAYER_MIN_POSITIONS) -> np.ndarray:
    """Speckle-robust LiF evidence of a layer: the neighbourhood mean of the LiF-band spot significance, in units
    of its own chance scatter over the scan (a robust z, dimensionless).

    ``lif_z`` (Ry, Rx) σ: the largest spot significance over the LiF bands (:func:`band_max`); ``exclude`` (Ry, Rx)
    bool: crystalline positions (left out of every mean, NaN in the result). Per position the mean of ``lif_z``
    over the ``size`` × ``size`` neighbourhood (itself ``self_weight`` times, as :func:`spot_vote`); then
    d = (m − median(m)) · s₀/s (s ∝ sqrt(Σw²)/Σw, the scatter of a mean of independent values with the weights the
    position has, s₀ that of a full interior neighbourhood: edges and crystal neighbours leave fewer positions), then
    z = d / (median(d) − P15.87(d)) over the scan's non-crystalline positions.

    Why relative to the scan: speckle raises the chance maximum of the spot significance at every Q of the
    amorphous ring, LiF's bands included (median over amorphous positions 3.1 σ without speckle, 5.2–5.5 σ at
    M = 3, 2 × 10⁴ e⁻; development seeds 704, 720), so no fixed σ threshold separates a faint LiF layer from
    speckle; the speckle of one scan (one specimen, one probe) sets the chance level of all its positions alike,
    while LiF crystallites raise it only where the SEI Type 2 layer is. The median and the lower half-width
    (median − 15.87th percentile, = σ for a Gaussian) come from the side of the distribution the layer does not
    reach, so a layer holding up to ~ a third of the positions moves them little. A control band off LiF's rings
    was measured and rejected: the Bragg-disk-sized window (disk radius ≈ 0.08 1/Å at 2 mrad) spreads each LiF
    spot over ± 0.16 1/Å, which leaves no LiF-free Q between (111), (200) and (220); and the amorphous ring below
    0.36 1/Å has a different speckle-to-Poisson ratio (its contrast turned negative at M = 3).
    Limits: a scan that is mostly SEI Type 2 has its chance level set by the layer (faint LiF then goes
    unnoticed; strong LiF still passes ``lif_spot_z``); fewer than ``min_positions`` non-crystalline positions
    (or no spread): all NaN.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(6.0, 1.0, (40, 40)); z[:, :8] += 1.5   # speckle everywhere, a faint LiF layer at the left
    >>> lz = lif_layer_z(z, np.zeros(z.shape, bool))
    >>> bool(np.median(lz[:, :6]) > 4), bool(np.nanmax(lz[:, 12:]) < 4)
    (True, True)
    """
    lif_z = np.asarray(lif_z, dtype=np.float64)
    exclude = np.asarray(exclude, bool)
    v = np.nan_to_num(lif_z, nan=0.0)
    w = (~exclude & np.isfinite(lif_z)).astype(float)
    k = np.ones((size, size))
    k[size // 2, size // 2] = self_weight
    r = size // 2  # zero padding: a position at the scan's edge averages the neighbours it has (no repeats)
    crop = (slice(r, r + lif_z.shape[0]), slice(r, r + lif_z.shape[1]))
    num = window_sum(np.pad(v * w, r), k)[crop]
    den = window_sum(np.pad(w, r), k)[crop]
    den2 = window_sum(np.pad(w, r), k * k)[crop]  # Σ weight²: the mean's scatter is ∝ sqrt(Σw²)/Σw
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(exclude | (den <= 0), np.nan, num / np.where(den > 0, den, 1.0))
        # deviations scaled to a full interior neighbourhood's scatter (edges, crystals around: fewer positions)
        scale = (np.sqrt((k * k).sum()) / k.sum()) / (np.sqrt(den2) / np.where(den > 0, den, 1.0))
    ok = np.isfinite(m)
    if ok.sum() < max(min_positions, 2):
        return np.full(m.shape, np.nan)
    med = float(np.median(m[ok]))
    dev = np.where(ok, (m - med) * scale, np.nan)
    half = float(np.median(dev[ok]) - np.percentile(dev[ok], 15.87))
    if not half > 0:
        return np.full(m.shape, np.nan)
    return dev / half


def fit_cluster_labels(feats: np.ndarray, k: int, seed: int, method: str = "gmm") -> np.ndarray:
    """Cluster index (n,) of each row of the standardised features ``feats`` (n, d): the full-covariance Gaussian
    mixture (3 k-means-initialised starts) fitted on every row, or (``method`` "kmeans") k-means (10 seedings), both
    seeded by ``seed``: :mod:`sendmap.science.gmm` (the algorithms and defaults of scikit-learn's
    ``GaussianMixture`` / ``KMeans``, without their import)."""
    from .gmm import gmm_labels, kmeans_labels

    if method == "kmeans":
        return kmeans_labels(feats, k, seed, n_init=10)
    return gmm_labels(feats, k, seed, n_init=3)


def classify_gmm(peak_q: np.ndarray, crystal_z: np.ndarray, lif_z: np.ndarray, n_clusters: int, seed: int,
                 method: str = "gmm", fit_labels=None, **definitions) -> np.ndarray:
    """Unsupervised clusters (Gaussian mixture, or k-means), each named by the rule class of most of its members.

    Crystals are found by the physics rule (strong Bragg disks, :func:`classify_rules`); the other
    positions are clustered without labels into ``n_clusters`` − 1 groups on standardised features (SRO
    peak Q, LiF-spot evidence: the neighbourhood vote where given, else log1p of the LiF-band σ). Naming
    each cluster by the definitions makes the result comparable with ``classify_rules`` while the data set
    the boundaries between classes. Several clusters may take one name; a class no cluster wins is absent.
    ``definitions``: the keyword arguments of :func:`classify_rules` (``bragg_fraction``/``lif_vote`` arrays
    included). ``fit_labels``: a function like :func:`fit_cluster_labels` (same arguments and result); None:
    :func:`fit_cluster_labels`.
    """
    shape = np.shape(peak_q)
    flat_q, flat_c, flat_l = (np.ravel(a) for a in (peak_q, crystal_z, lif_z))
    d = dict(definitions)
    for key in ("bragg_fraction", "lif_vote", "crystal_neighbours", "crystal_like", "lif_indexed", "lif_layer",
                "grain_indexed"):
        if d.get(key) is not None:
            d[key] = np.ravel(d[key])
    rules = classify_rules(flat_q, flat_c, flat_l, **d)
    out = np.full(flat_q.shape, UNASSIGNED, dtype=np.int8)
    out[rules == CRYSTAL] = CRYSTAL
    out[(rules == SEI_TYPE2) & ~np.isfinite(flat_q)] = SEI_TYPE2  # LiF-indexed spots without an SRO peak
    rest = (rules != CRYSTAL) & np.isfinite(flat_q)
    vote = d.get("lif_vote")
    spot = np.nan_to_num(vote) if vote is not None else np.log1p(np.clip(np.nan_to_num(flat_l), 0, None))
    feats = np.stack([flat_q, spot], axis=-1)[rest]
    k = min(max(1, n_clusters - 1), max(1, len(feats)))
    if len(feats) == 0:
        return out.reshape(shape)
    sd = feats.std(axis=0)
    feats = (feats - feats.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    labels = (fit_labels or fit_cluster_labels)(feats, k, seed, method)
    named = np.empty(len(feats), dtype=np.int8)
    for lab in np.unique(labels):
        members = labels == lab
        named[members] = np.bincount(rules[rest][members], minlength=len(CLASS_NAMES)).argmax()
    out[rest] = named
    return out.reshape(shape)


def in_bands(q: np.ndarray, bands) -> np.ndarray:
    """Whether each Q (1/Å) lies in one of the bands (list of (lo, hi) 1/Å, lo included)."""
    q = np.asarray(q, dtype=np.float64)
    return np.logical_or.reduce([(q >= lo) & (q < hi) for lo, hi in bands] + [np.zeros(q.shape, bool)])


def band_max(spot_z: np.ndarray, q: np.ndarray, bands) -> np.ndarray:
    """Largest spot significance over Q bands (list of (lo, hi) 1/Å) per position."""
    sel = in_bands(q, bands)
    if not sel.any():
        return np.zeros(spot_z.shape[:-1])
    if sel.all():
        return np.nanmax(spot_z, axis=-1)
    return np.fmax.reduce(spot_z[..., sel], axis=-1, initial=-np.inf)  # -inf where the bands are all NaN


def band_spot_z(spot_z: np.ndarray, q: np.ndarray, bands, spot_position: np.ndarray, spot_q: np.ndarray,
                disk_radius_q: float, ring_q: np.ndarray, ring_is_band: np.ndarray, z_listed: float,
                floor: float, slice_spots: int = 8192) -> np.ndarray:
    """:func:`band_max` over the LiF bands per position (σ), without the flank of another phase's spot: where the
    value reaches the spot list's threshold ``z_listed`` (σ) and the position's listed spots (``spot_position``,
    flat scan indices; ``spot_q``, 1/Å) within two disk radii (``disk_radius_q``, 1/Å) of a band are all nearer a
    ring of another phase than one of the bands' own (library rings ``ring_q``, 1/Å; ``ring_is_band``: LiF's) and
    none lies in a band, it is ``floor`` (σ, the chance level). ``spot_z`` at Q scores a window one disk diameter
    wide, so a disk 2 radii away raises it: Li (110) at 0.403 1/Å (a Li grain the minority beside SEI Type 1) was
    LiF evidence (matrix:all seed 1031: Type 1 recall 0.27); LiF (111) at 0.431 raising it stays LiF's.

    >>> q = np.linspace(0.3, 0.6, 31); z = np.zeros((4, 31)); z[:, 18:24] = 12.0      # the band 0.465-0.53
    >>> band_spot_z(z, q, [(0.465, 0.53)], np.array([0, 1, 2]), np.array([0.405, 0.497, 0.428]), 0.08,
    ...             np.array([0.403, 0.431]), np.array([False, True]), 5.0, 3.0).tolist()
    [3.0, 12.0, 12.0, 12.0]
    """
    out = band_max(spot_z, q, bands)
    flat, sq, pos = out.reshape(-1).copy(), np.asarray(spot_q, dtype=np.float64), np.asarray(spot_position, np.int64)
    ok = np.isfinite(sq) & (pos >= 0) & (pos < flat.size)
    # the spots near a band only, their nearest ring ``slice_spots`` at a time (any number: the same result; one
    # table of a scan's ~4·10⁵ spots × ~30 rings is ~10⁸ bytes of fresh memory, ~0.3 s)
    use = ok & in_bands(sq, [(lo - 2.0 * disk_radius_q, hi + 2.0 * disk_radius_q) for lo, hi in bands])
    sq, pos, rq, own = sq[use], pos[use], np.asarray(ring_q, dtype=np.float64), np.ones(int(use.sum()), bool)
    for a in range(0, sq.size if rq.size else 0, slice_spots):
        part = sq[a:a + slice_spots]
        own[a:a + part.size] = np.asarray(ring_is_band, bool)[np.argmin(np.abs(part[:, None] - rq[None, :]), axis=1)]
    inside = in_bands(sq, bands)
    band_spot, other_spot = np.zeros(flat.size, bool), np.zeros(flat.size, bool)
    band_spot[pos[inside | own]] = True
    other_spot[pos[~inside & ~own]] = True
    flank = other_spot & ~band_spot & (flat >= z_listed)
    flat[flank] = floor
    return flat.reshape(out.shape)
