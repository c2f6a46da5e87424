"""Class probabilities per position from its evidence, and a spatial prior that turns them into a class map.

Size: the evidence terms, the Potts coupling's estimate and the class models (with the corrections for the rules'
Q cuts) feed one posterior and are documented with the measurements that chose them; split, each part would need
the others' docstrings.

Evidence of a position (all from the earlier stages):

* **crystalline** (the one rule, :func:`sendmap.science.classify.crystal_positions`): where it fires, a likelihood
  with the rule's measured false-alarm rate, not a certainty: P(fires | amorphous class) =
  :data:`CRYSTAL_FALSE_ALARM_RATE` against P(fires | crystal) ≈ 1 (until session 13 the rule entered at
  probability 1: its false alarms, 0.3 % of amorphous positions on the development seeds, were certain mistakes).
  Where it does not fire and the position has an SRO peak, crystal keeps probability 0: its miss rate (also 0.3 %)
  entered as a likelihood (a missed crystal's peak uniform over the peak window) let the spatial prior pull
  amorphous positions beside grains to crystal, and lowered the accuracy on the development seeds (positions with
  a probability, 2 × 10⁴ e⁻: 0.978 → 0.976 on seeds 511–536, 0.975 → 0.972 on seeds 561–586), so it is not used.
* **its SRO peak** q_i with its 1-σ error σ_i: under an amorphous class k (SEI Type 1, SEI Type 2, electrolyte)
  q_i ~ N(μ_k, s_k² + σ_i²), with μ_k and s_k the class's intrinsic mean and spread. They are measured on the scan
  itself (extreme deconvolution, as :mod:`sendmap.science.mixture`, of the positions the class rules give the
  class) where a class holds enough positions, else taken from the published study (:data:`PUBLISHED_CLASS_Q`).
  (A free EM over the probabilities was tried: with speckle at 5 × 10³ e⁻ Type 2 absorbed the electrolyte.)
* **its LiF evidence** e_i ∈ [0, 1]: 0 at or below the LiF-band spot significance amorphous patterns reach by
  chance (their median, ``lif_spot_z_noise``), 1 at or above the significance they exceed 1 % of the time
  (``lif_spot_z``), linear between. Its log-likelihood ratio for SEI Type 2 against the other amorphous classes is
  e_i ln(h/α) + (1 − e_i) ln((1 − h)/(1 − α)): α = 0.01, the false-alarm rate ``lif_spot_z`` is defined by; h, the
  share of SEI Type 2 positions that show an excited LiF reflection (``classify.lif_hit_rate``).
* **its spots' indexing** (``features/spot_category``, :mod:`sendmap.science.indexing`): crystal already through
  the crystal rule (which uses it); a position without an SRO peak whose spots index as LiF crystallites in an
  amorphous matrix is SEI Type 2; any other position without an SRO peak weighs P(no peak | class), the share of
  the scan's positions of each class (by the rules) that have none, and takes its class from its neighbours, where
  at least half of them carry evidence of their own (:func:`evidence_support`; else it stays unassigned).

The spatial prior is a Potts Markov random field on the scan grid (:func:`sendmap.science.spatial.
potts_mean_field`), its coupling β estimated by maximum pseudo-likelihood (Besag 1975, The Statistician 24, 179),
first on the evidence-only class map, then (session 15) again on the posterior's own class map until it stops
changing (Besag 1986, :data:`BETA_ITERATIONS`): no coupling is tuned by hand, and a scan whose classes do not form
regions gets a weak one.

**Calibration** (issue 18: in each tenth of predicted probability the observed frequency within ±0.07). Measured
on development seeds only (``benchmarks/scenario_matrix.py --seed-base 511 --detectors 128``: 26 cells, 48 × 64,
seeds 511–536; the reporting seeds 1000–1031 were not used to choose anything), per evidence term, by replacing one
term at a time with its truth (``evidence_probability`` and the posterior scored with the Brier score and the log
loss against the truth):

* the Potts coupling is not too strong: β from the pseudo-likelihood of the evidence-only map is 0.6–1.6, that of
  the true class maps ≥ 2 (their regions are smoother still). Session 15 found it too weak instead: re-estimated on
  the posterior's own map (:data:`BETA_ITERATIONS`) it converges to 0.9–2.0 and the class maps are more accurate
  (development seeds 802–825, checked on 852–875); the mean-field approximation is not the cause either:
  Gibbs-sampled marginals of the same field (200 sweeps) gave the same tenths within their noise;
* the class models (mean, spread and weight of each amorphous class measured on the rules' classes, cut at fixed Q
  limits where classes overlap) are the largest term: the true class models lower the Brier score from 0.039 to
  0.027 at 2 × 10⁴ e⁻. The spreads measured on the rules' classes are about half the true ones where classes
  overlap (published spreads: 0.009–0.015 against 0.017–0.021 1/Å) and Type 2's weight is that of the positions
  with LiF evidence only (0.05 against 0.20 where LiF is faint). Not fixed: an EM over the probabilities instead of
  the rules' classes made it worse (Type 2 and the electrolyte overlap in Q and trade positions), and a fit of each
  class truncated to its rule's Q range is ill-posed on ranges 0.05 1/Å wide (Type 1's mean ran to 0.29). Session
  15 re-measured the models on the posterior's own classes (a hard EM with the spatial prior,
  ``model_iterations``): it recovers the true spreads but lowers SEI Type 1's recall on the matrix, and so do the
  true models themselves (:data:`MODEL_ITERATIONS`): for the class map (accuracy, recall, class means) the rules'
  models are the better ones, whatever they do to the Brier score;
* the crystal rule at probability 1: see above (now a likelihood where it fires);
* what remains is an overconfidence of the posterior (the 0.6–0.9 tenths observed 0.03–0.10 below their mean
  probability): one temperature, :data:`POSTERIOR_TEMPERATURE`, p_k ∝ p_k^(1/T) (Guo et al. 2017, ICML,
  "temperature scaling"), fitted on those seeds by the log loss; it changes no position's most probable class.

**Session 20** (strong speckle, M = 3: the posterior underconfident, the 0.5–0.9 tenths observed at 0.95–1.00):
not the peak term. Its standardised errors (q − q_true)/σ on the speckle3 cells have a robust scale of 0.97–1.10
(standard deviation 1.13–1.25; 1.8–3.4 % beyond 3 σ against 0.27 % for a normal: tails, but the scale is right),
and a Student-t peak term (ν = 4 or 8) changes nothing there; the posterior without the temperature is calibrated
(every speckle3 cell within 0.005). There the peak's own error (σ ≈ 0.010 1/Å) is as large as SEI Type 2's
distance from the electrolyte, the spatial prior carries the confidence, and the temperature fitted where the class
models are too narrow made it underconfident. Their narrowness is the rules' Q cuts: a class measured on the
positions its rule keeps inside its Q range has the variance of a cut normal. :func:`untruncated_spread` undoes the
cut (bounded by the published spread), which leaves a smaller temperature to fit (:data:`POSTERIOR_TEMPERATURE`).
The cut acts on the measured peaks (intrinsic spread and error together): undone on the deconvolved spread, a cut
narrower than the peaks' errors leaves the class at 0, and its recall with it (matrix seed 1031, 128² copy: SEI
Type 2 0.46). :func:`untruncated_class_spread` undoes it on the measured peaks' spread and takes the error out after
(``classify.spread_cut_on_measured``, off by default: on the matrix seeds it passes 24 cells against 22, but the
pooled tenths at 5 × 10³ e⁻ go 0.047 → 0.076, beyond ±0.07; README, session 20). Re-estimating the models by EM of a three-component deconvolved mixture over all amorphous peaks,
started from the rules' classes, was tried again (means, spreads, weights; weights only; with a prior on the
spreads): SEI Type 2 takes the electrolyte's positions (that copy: accuracy 0.864 → 0.56–0.78); a conjugate prior
on each spread centred on the published one, worth 100–1000 positions, pulls narrow classes wide (mixed: the
electrolyte 0.002 → 0.006–0.014 1/Å, SEI Type 1's class mean out of its target at 5 × 10³ e⁻). Neither is used.

**Session 21** (``classify.temperature: auto``, off by default): with class models of the right width the remaining
overconfidence is the spatial prior's: neighbours' peaks depart from their class mean together where a class's
spread varies smoothly across its layer, and the Potts prior's pairs count that shared departure twice.
:func:`residual_correlation_temperature` sets T = 1 + ρ from the neighbours' residual correlation ρ measured on the
scan (:func:`neighbour_residual_correlation`): ≈ 1 under strong speckle (ρ ≤ 0.06), 1.18–1.38 on the published
spreads. With ``spread_cut_on_measured`` it passes 25 of the 32 matrix cells with the pooled tenths within ±0.07
at both doses, but the wider electrolyte still takes SEI Type 1's mixed edge positions, whose peak does not tell
the two layers apart (Type 1 recall −0.05 on two cells); README, session 21.
"""
from __future__ import annotations

import numpy as np

from .mixture import fit_deconvolved_mixture
from .spatial import NEIGHBOUR_WEIGHTS, _neighbour_sum, potts_mean_field

SIDE_WEIGHTS = np.where(NEIGHBOUR_WEIGHTS == 1.0, 1.0, 0.0)
CORNER_WEIGHTS = np.where((NEIGHBOUR_WEIGHTS > 0) & (NEIGHBOUR_WEIGHTS < 1.0), 1.0, 0.0)
"""The 4 side and the 4 corner neighbours (weights 1 each), to count a position's neighbours by class."""

PROB_CLASSES = ("crystal", "sei_type1", "sei_type2", "electrolyte")
"""The classes of ``maps/class_probability``, in its last axis (the first four of :data:`sendmap.CLASS_NAMES`)."""

PUBLISHED_CLASS_Q = {"sei_type1": (0.330, 0.019), "sei_type2": (0.295, 0.019), "electrolyte": (0.285, 0.019)}
"""(mean, spread) of the SRO peak per amorphous class (1/Å) where the scan holds too few positions of a class to
measure them: the study's class means (SCIENCE.md: Type 1 0.33, Type 2 0.295, electrolyte 0.285) and its Type 1
histogram's standard deviation 0.019 (which includes measurement noise: an upper bound of the intrinsic spread)."""

MIN_CLASS_WEIGHT = 20
"""Fewest positions from which a class's intrinsic mean and spread are measured on the scan;
fewer: :data:`PUBLISHED_CLASS_Q`. With 20 positions a mean is known to s/√20 ≈ 0.004 1/Å for s = 0.019."""

LIF_FALSE_ALARM = 0.01
"""Share of amorphous positions above ``lif_spot_z`` (its definition: the 99th percentile of speckled amorphous
positions, see ``classify.definitions.lif_spot_z``)."""

HIT_RATE_RANGE = (0.05, 0.95)
"""Bounds of the share of SEI Type 2 positions with LiF evidence: SCIENCE.md has Type 2 positions both with and
without an excited LiF reflection, so neither 0 nor 1; the bounds keep the log-likelihood ratio finite."""

CRYSTAL_FALSE_ALARM_RATE = 0.0031
"""Share of amorphous positions (truth) that the crystal rule calls crystalline: 109 of 35 279 on the development
seeds 511–536 (26 cells of the 128² scenario matrix, 48 × 64, both doses; 0.0040 at 2 × 10⁴ e⁻, 0.0021 at 5 × 10³)."""

POSTERIOR_TEMPERATURE = 1.25
"""Temperature T of the posterior, p_k ∝ p_k^(1/T) (Guo et al. 2017, ICML, "temperature scaling"; it changes no
position's most probable class), with the class spreads corrected for the rules' Q cuts (:func:`untruncated_spread`).
Session 20: chosen on development cells (``benchmarks/scenario_matrix.py --detectors 128``: seeds 1600–1621 legacy,
spread, lif-range, speckle3; 1818–1825 mixed, all; 12 cells of 48 × 64, both doses) as the only value on a
0.05–0.1 grid from 1 to 1.4 whose pooled tenths are within ±0.07 at both doses (0.021 / 0.043 at 2 × 10⁴ /
5 × 10³ e⁻; T = 1: 0.149 / 0.153, the all and mixed cells overconfident; T = 1.75: 0.070 / 0.059 with speckle3 at
0.13 per cell), every cell within 0.07 on its own. Checked on seeds 1700–1721 (pooled 0.003 / 0.008, every cell
within 0.011) and 1918–1925 (mixed, all: 0.026 / 0.015), both sets pooled 0.082 / 0.050 (T = 1 there: 0.040 /
0.065; the value still moves with the seed set), and reported on the matrix seeds 1000–1031 (README, session 20).

Before (sessions 13–19) it was 1.75, the log-loss minimum over development seeds 511–536 with the spreads as
measured on the rules' classes (log loss 0.1367 nats at T = 1.75 against 0.1606 at T = 1). That temperature made
the speckle3 cells underconfident (0.11–0.17 per cell on seeds 1020/1021, 1620/1621, 1720/1721), where the class
models are not too narrow: the peak's own error (σ ≈ 0.010 1/Å, measured with the right scale) dominates them."""

MODEL_ITERATIONS = 0
"""Default re-measurements of the class models on the posterior's own classes (``classify.model_iterations``): none.
A hard EM with the spatial prior (each class's mean, spread and weight re-measured on the positions the posterior
gives it) recovers the spreads of overlapping layers of one synthetic label map (``tests/test_probability.py``:
0.015 → 0.019 1/Å, accuracy 0.89–0.91 → 0.97–0.98), but on the scenario matrix it erodes the thin SEI Type 1
layer: measured on development seeds 802–825 (``benchmarks/scenario_matrix.py --seed-base 800 --detectors 128
--only spread mixed all lif-faint lif-dominant speckle3``, each store's classify inputs rescored), 2 iterations
took Type 1's recall from 0.90 / 0.85 to 0.67 / 0.44 (spread, 2 × 10⁴ / 5 × 10³ e⁻, seeds 802 / 803) and from
0.63 to 0.08 (all, 2 × 10⁴, seed 824), the edge positions of the layer (lower Q, half their neighbours another
class) going to the electrolyte, the next pass measuring Type 1 on its upper half (mean 0.329 → 0.337, spread
0.015 → 0.014 in three passes on seed 802). Updating the spreads only, or soft (posterior-weighted) updates, did
the same. The true class models (measured on the truth's classes) do it too (Type 1 recall 0.80 / 0.59 on seeds
802 / 803): the narrow spreads measured on the rules' classes are not what limits the class map."""

BETA_ITERATIONS = 0
"""Default times the Potts coupling β is re-estimated on the posterior's own class map (``classify.beta_iterations``;
it stops earlier where β no longer changes on its 0.025 grid): none, i.e. β of the evidence-only map. 10 passes are
more accurate but worse calibrated (below), and the calibration of the stored probabilities is what every run
keeps (the default class map is the rules'). The pseudo-likelihood of the evidence-only class map
(before session 15 the only estimate) is biased low: that map's misclassified positions break up the regions
(β 0.6–0.8 on the published spreads, whose true maps give ≥ 2). Re-estimating β from the current restoration of
the map and restoring again is Besag's scheme (Besag 1986, J. R. Stat. Soc. B 48, 259, "On the statistical
analysis of dirty pictures", with ICM; here with the mean field); β is still bounded by :data:`MAX_BETA`, and a scan
of unrelated positions keeps a weak one (its posterior map is as noisy as its evidence; ``tests/test_probability.
py``).

Chosen on the development seeds 800–827 (``benchmarks/scenario_matrix.py --seed-base 800 --detectors 128 --set
classify.method=probabilistic``: the 26 cells of 128², each store's classify inputs rescored with and without),
checked on seeds 850–877 (``--seed-base 850``, the same 26 cells): β converges in 2–7 passes (0.6–1.3 → 0.9–2.0); the most probable
class's accuracy rises on 19, falls on 4 (by ≤ 0.002) of the 24 cells of the six hard presets (e.g. spread
0.961–0.973 → 0.972–0.981, speckle3 at 5 × 10³ e⁻ 0.989–0.991 → 0.995–0.996, all 0.851–0.919 → 0.867–0.931);
cells meeting every target 18 → 18 of 26 (development; the rules: 16) and 17 → 18 of 26 (check; the rules: 15):
spread and lif-faint at 5 × 10³ newly, lif-dominant lost at one dose of each set (SEI Type 2's class mean +0.0039
/ +0.0034 1/Å, of which +0.0024 / +0.0027 is the peak's own LiF pull: a few Type 1 positions beside the LiF layer
go to Type 2). Calibration per cell: the worst tenth of speckle3 0.13–0.15 → ≤ 0.001. Pooled per
dose at the unchanged :data:`POSTERIOR_TEMPERATURE`: within 0.010 / 0.044 on the development cells (2 × 10⁴ /
5 × 10³ e⁻; 0.116 / 0.098 with β of the evidence map), but 0.281 / 0.040 on the check cells (0.085 / 0.091),
the 0.8–0.9 tenth of 2 × 10⁴ observed at 0.57: mostly one cell (offaxis, seed 860: 85 pairs at p ≈ 0.85 observed
0.13, an off-axis grain the crystal rule misses, now confidently amorphous) and the all cell. On the matrix seeds
1000–1031 (reported, not chosen on; the session-15 sweep's stores re-classified, 32 cells): method probabilistic
meets every target on 21 cells with 10 passes against 20 without (rules: 18), but the pooled tenths are 0.149 /
0.117 (2 × 10⁴ / 5 × 10³ e⁻) against 0.098 / 0.041 without, overconfident in the 0.6–0.9 tenths (0.8–0.9 observed at
0.71 / 0.74). With the check seeds' 0.281 at 2 × 10⁴ that decided the default: 0 (``classify.beta_iterations: 10``
for the more accurate probabilistic map)."""

MAX_BETA = 2.0
"""Upper end of the pseudo-likelihood search of the Potts coupling: at β = 2 eight agreeing neighbours (Σw = 6.8)
outweigh a likelihood ratio of e^13.7 ≈ 10⁶, i.e. any evidence; larger values change nothing."""


def lif_evidence(lif_z: np.ndarray, z_noise: float, z_sure: float) -> np.ndarray:
    """LiF evidence e ∈ [0, 1] of each position from its LiF-band spot significance (σ): 0 at or below ``z_noise``,
    1 at or above ``z_sure``, linear between; NaN → 0.

    >>> lif_evidence(np.array([2.0, 7.5, 12.0, np.nan]), 4.5, 10.5).tolist()
    [0.0, 0.5, 1.0, 0.0]
    """
    z = np.nan_to_num(np.asarray(lif_z, dtype=np.float64), nan=-np.inf)
    return np.clip((z - z_noise) / max(z_sure - z_noise, 1e-12), 0.0, 1.0)


def temper(prob: np.ndarray, temperature: float) -> np.ndarray:
    """Class probabilities (..., K) at temperature T: p_k^(1/T) renormalised (T > 1 softens, 1 leaves them; the
    most probable class stays); NaN rows stay NaN.

    >>> temper(np.array([[0.8, 0.2], [np.nan, np.nan]]), 2.0).round(3).tolist()[0]
    [0.667, 0.333]
    """
    p = np.asarray(prob, dtype=np.float64)
    if temperature == 1.0:
        return p
    ok = np.isfinite(p).all(axis=-1)
    with np.errstate(divide="ignore"):
        out = _softmax(np.where(ok[..., None], np.log(np.where(ok[..., None], p, 1.0)), 0.0) / float(temperature))
    out[~ok] = np.nan
    return out


def lif_layer_llr(layer: np.ndarray, hit_rate: float) -> np.ndarray:
    """Log-likelihood ratio of the LiF layer evidence (``layer``: bool, :func:`sendmap.science.classify.lif_layer_z`
    ≥ ``classify.definitions.lif_layer_z_min``) for "in or beside the SEI Type 2 layer" against the electrolyte:
    ln(h/α) where it fires, ln((1 − h)/(1 − α)) where not, with α = :data:`LIF_FALSE_ALARM` (0.01: the rate measured
    beside grains, 24 of 2 261 electrolyte/Type 1 positions ≥ 3 from Type 2 in the development cells 'all', seeds
    724–725; elsewhere 0 of 9 133) and h the share of SEI Type 2 positions with LiF evidence
    (``classify.lif_hit_rate``). The statistic pools 5 × 5 positions, so it cannot tell the layer from a Type 1
    position beside it: it weighs SEI Type 1 and Type 2 alike against the electrolyte, and the peak's Q
    separates those two.

    >>> lif_layer_llr(np.array([True, False]), 0.5).round(2).tolist()
    [3.91, -0.68]
    """
    h = float(np.clip(hit_rate, *HIT_RATE_RANGE))
    return np.where(np.asarray(layer, bool), np.log(h / LIF_FALSE_ALARM), np.log((1 - h) / (1 - LIF_FALSE_ALARM)))


def _amorphous_log_lik(q, s2, lif_llr, models, log_weights, layer_llr=None):
    """(N, 3) log-likelihood of the amorphous classes (sei_type1, sei_type2, electrolyte) per position."""
    out = np.empty((q.size, 3))
    for j, name in enumerate(PROB_CLASSES[1:]):
        mu, var = models[name]
        tot = var + s2
        out[:, j] = log_weights[j] - 0.5 * (np.log(2 * np.pi * tot) + (q - mu) ** 2 / tot)
    out[:, 1] += lif_llr
    if layer_llr is not None:
        out[:, :2] += layer_llr[:, None]
    return out


def _softmax(a: np.ndarray) -> np.ndarray:
    a = a - np.max(a, axis=-1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=-1, keepdims=True)


def potts_beta_pseudolikelihood(labels: np.ndarray, valid: np.ndarray, n_classes: int,
                                betas: np.ndarray | None = None) -> float:
    """Coupling β of a Potts field (8-neighbourhood, :data:`sendmap.science.spatial.NEIGHBOUR_WEIGHTS`) that
    maximises the pseudo-likelihood Π_i p(c_i | neighbours) of a label map (Besag 1975), on a grid of β from 0 to
    :data:`MAX_BETA`. ``valid``: positions that take part (as centres and as neighbours).

    >>> lab = np.zeros((20, 20), int); lab[:, 10:] = 1
    >>> potts_beta_pseudolikelihood(lab, np.ones((20, 20), bool), 2) > 1.0      # two clean regions: strong
    True
    >>> rng = np.random.default_rng(0)
    >>> potts_beta_pseudolikelihood(rng.integers(0, 2, (20, 20)), np.ones((20, 20), bool), 2) < 0.2   # noise
    True
    """
    labels = np.asarray(labels)
    valid = np.asarray(valid, bool)
    onehot = np.zeros((*labels.shape, n_classes))
    idx = np.where(valid, labels, 0)
    np.put_along_axis(onehot, idx[..., None], valid[..., None].astype(float), axis=-1)
    counts = _neighbour_sum(onehot)[valid]  # (N, K) weighted neighbours of each class
    own = np.take_along_axis(counts, labels[valid][:, None], axis=-1)[:, 0]
    if betas is None:
        betas = np.linspace(0.0, MAX_BETA, 81)
    # the pseudo-likelihood summed over the distinct neighbourhoods (own class; per class, the number of side and
    # of corner neighbours, 0-4 each) times their multiplicity: a few hundred terms instead of one per position
    # (the same sum regrouped, equal to ~1e-15; ~40x less time on 86 400 positions)
    if 25 ** n_classes * n_classes < 2 ** 62:
        code = labels[valid].astype(np.int64)
        for c in range(n_classes):
            side = _neighbour_sum(onehot[..., c:c + 1], SIDE_WEIGHTS)[valid][:, 0]
            corner = _neighbour_sum(onehot[..., c:c + 1], CORNER_WEIGHTS)[valid][:, 0]
            code = code * 25 + np.rint(side).astype(np.int64) * 5 + np.rint(corner).astype(np.int64)
        _, first, mult = np.unique(code, return_index=True, return_counts=True)
        own, counts = own[first], counts[first]
    else:
        mult = np.ones(own.size)
    pl = [float(np.sum(mult * (b * own - np.log(np.exp(b * counts).sum(axis=1))))) for b in betas]
    return float(betas[int(np.argmax(pl))])


def neighbour_residual_correlation(peak_q: np.ndarray, peak_err: np.ndarray, labels: np.ndarray,
                                   models: dict) -> float:
    """Correlation of the standardised SRO peak residuals, (q − μ_k)/√(s_k² + σ²), of side-neighbour pairs of
    positions that ``labels`` give the same amorphous class k (``models``: {class: (mean, intrinsic variance)}, 1/Å
    and 1/Å²; NaN peaks and other classes left out); 0 with fewer than 20 pairs.

    The evidence of neighbouring positions is independent given their classes only if what makes a peak depart
    from its class mean is independent from position to position (the peak's own error, position-to-position
    scatter). A class spread that varies smoothly across a layer (the published histograms' spread is partly that:
    SCIENCE.md; ``sendmap synth --class-spread published`` draws half of it so) makes neighbours depart together,
    and a Potts prior over pairs of neighbours then counts their shared departure twice.

    >>> rng = np.random.default_rng(1); lab = np.full((40, 40), 3)
    >>> q = 0.285 + 0.01 * rng.standard_normal((40, 40)); e = np.full((40, 40), 0.01)
    >>> abs(neighbour_residual_correlation(q, e, lab, {"electrolyte": (0.285, 0.0)})) < 0.06   # independent
    True
    >>> smooth = np.kron(0.01 * rng.standard_normal((4, 4)), np.ones((10, 10)))   # shared by 10 x 10 patches
    >>> rho = neighbour_residual_correlation(q + smooth, e, lab, {"electrolyte": (0.285, 0.01 ** 2)})
    >>> 0.3 < rho < 0.6     # half the variance shared, by 90 % of the pairs: 0.45 expected
    True
    """
    q = np.asarray(peak_q, dtype=np.float64)
    err = np.asarray(peak_err, dtype=np.float64)
    labels = np.asarray(labels)
    r = np.full(q.shape, np.nan)
    for k, name in enumerate(PROB_CLASSES):
        if name in models:
            m = (labels == k) & np.isfinite(q) & np.isfinite(err)
            mu, var = models[name]
            r[m] = (q[m] - mu) / np.sqrt(var + err[m] ** 2)
    a = np.concatenate([r[:, :-1].ravel(), r[:-1, :].ravel()])
    b = np.concatenate([r[:, 1:].ravel(), r[1:, :].ravel()])
    same = np.concatenate([(labels[:, :-1] == labels[:, 1:]).ravel(), (labels[:-1, :] == labels[1:, :]).ravel()])
    ok = np.isfinite(a) & np.isfinite(b) & same
    if ok.sum() < 20:
        return 0.0
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / den) if den > 0 else 0.0


def residual_correlation_temperature(rho: float) -> float:
    """Posterior temperature T = 1 + max(ρ, 0) from the neighbours' residual correlation ρ
    (:func:`neighbour_residual_correlation`; ``classify.temperature: auto``). The Potts prior's cliques are pairs of
    neighbours, and the mean field adds their evidence as if independent; two equally correlated Gaussian residuals
    carry the information of 2 / (1 + ρ) independent ones (the design effect of a cluster of two, Kish 1965,
    Survey Sampling, 1 + (m − 1)ρ with m = 2), so the log-posterior is divided by 1 + ρ. Independent departures
    (the peak's own error dominating: speckle M = 3) keep T ≈ 1, which is what those scans want (README, session 20).

    >>> residual_correlation_temperature(0.0), residual_correlation_temperature(0.4), residual_correlation_temperature(-0.1)
    (1.0, 1.4, 1.0)
    """
    return 1.0 + max(float(rho), 0.0) if np.isfinite(rho) else 1.0


def evidence_support(own: np.ndarray) -> np.ndarray:
    """(Ry, Rx) bool: positions at least half of whose scan neighbours (of the 8; fewer at edges) carry evidence of
    their own (``own``: crystalline, an SRO peak, or spots indexed as LiF crystallites). A position without an SRO
    peak has no amorphous-class evidence of its own, and the spatial prior gives it its neighbours' class: only
    where its neighbours have something to give. Without this, a scan with almost no evidence (10 e⁻ per
    pattern: no SRO peak anywhere, the crystal rule's few false alarms) became crystal throughout, the Potts prior
    spreading the false alarms over the positions without any evidence; the half is the majority of the
    neighbourhood, as the crystal rule's 4 of 8 (``classify.definitions.crystal_min_neighbours``).

    >>> own = np.zeros((3, 3), bool); own[0, :] = True; own[1, 0] = True
    >>> evidence_support(own).astype(int).tolist()
    [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    """
    own = np.asarray(own, bool)
    unit = (SIDE_WEIGHTS + CORNER_WEIGHTS)
    n_own = _neighbour_sum(own[..., None].astype(np.float64), unit)[..., 0]
    n_all = _neighbour_sum(np.ones(own.shape + (1,)), unit)[..., 0]
    return 2.0 * n_own >= n_all


def class_probabilities(peak_q: np.ndarray, peak_err: np.ndarray, crystal: np.ndarray, lif_e: np.ndarray,
                        labels: np.ndarray | None = None, lif_hit_rate: float = 0.5,
                        beta: float | str = "auto", lif_no_peak: np.ndarray | None = None,
                        no_peak: np.ndarray | None = None,
                        crystal_false_alarm: float | None = CRYSTAL_FALSE_ALARM_RATE,
                        temperature: float | str = POSTERIOR_TEMPERATURE, lif_layer: np.ndarray | None = None,
                        model_iterations: int = 0, beta_iterations: int | None = None,
                        class_ranges: dict | None = None, cut_on_measured: bool = False) -> dict:
    """Per-position class probabilities (:data:`PROB_CLASSES` order) with the spatial prior; see the module docstring.

    peak_q, peak_err: (Ry, Rx) SRO peak (1/Å) and its 1-σ error (NaN: no peak); crystal: (Ry, Rx) bool, the
    crystalline positions; lif_e: (Ry, Rx) LiF evidence (:func:`lif_evidence`); labels: (Ry, Rx) class indices
    (:data:`sendmap.CLASS_NAMES`, e.g. the rules') whose positions measure each amorphous class's mean and spread
    (None: the published ones); lif_hit_rate: share of SEI Type 2 positions with an excited LiF reflection
    (within :data:`HIT_RATE_RANGE`); beta: the Potts coupling, or "auto" (pseudo-likelihood); lif_no_peak: (Ry, Rx)
    bool, positions without an SRO peak whose spots index as LiF crystallites in an amorphous matrix (the rules'
    SEI Type 2 without a peak, :func:`sendmap.science.classify.classify_rules` ``lif_indexed``): SEI Type 2 by
    their evidence, as crystalline positions are crystal; no_peak: (Ry, Rx) bool, positions without an SRO peak
    (no amorphous ring in the window: an off-axis grain's pattern is its diffuse background and a spot or two):
    their evidence is the probability of having no peak in each class, P(no peak | k), measured on the scan as the
    share of the positions ``labels`` give class k that have none (+1 / +2: Laplace's rule, so a class whose
    positions all have a peak still gets a small one), and the spatial prior decides, where at least half of the
    position's neighbours carry evidence of their own (:func:`evidence_support`; elsewhere, and with None, such
    positions stay NaN); crystal_false_alarm: the crystal rule's false-alarm rate (module docstring; None: the rule is certain,
    as before session 13); temperature: of the posterior (:data:`POSTERIOR_TEMPERATURE`; 1: none; "auto": from the
    neighbours' residual correlation on ``labels``, :func:`residual_correlation_temperature`); lif_layer:
    (Ry, Rx) bool, the LiF layer evidence (:func:`lif_layer_llr`; None: not used); model_iterations: times the
    amorphous class models (mean, spread, weight) are re-measured on the posterior's own most probable classes and
    the posterior recomputed (:data:`MODEL_ITERATIONS`; 0: the models of ``labels`` only, as before session 15);
    beta_iterations: with ``beta="auto"``, times β is re-estimated on the posterior's own class map and the posterior
    recomputed (Besag 1986; :data:`BETA_ITERATIONS`, None: that default; 0: β of the evidence-only map, as before
    session 15); class_ranges: {class: (lo, hi)} (1/Å), the Q range within which ``labels`` (the rules) keep each
    amorphous class: the spread measured on those positions is corrected for that cut
    (:func:`untruncated_spread` on the deconvolved spread; with ``cut_on_measured`` on the measured peaks' spread,
    :func:`untruncated_class_spread`, off by default: see the module docstring; None: as measured, before session 20).

    Returns ``probability`` (Ry, Rx, 4), NaN where a position is neither crystalline nor has a peak;
    ``evidence_probability`` (the same without the spatial prior and the temperature); ``beta``; ``beta_history``
    (the estimates in turn, first that of the evidence-only map; [] for a given β); ``temperature`` (the one used);
    ``residual_correlation`` (ρ behind ``temperature="auto"``, else None);
    ``class_models``: per amorphous class the mean and intrinsic spread (1/Å) used, their ``source`` ("scan" or
    "published") and the class weights; ``model_history``: the same for every pass (first: measured on ``labels``);
    ``model_iterations``: the re-measurements done (fewer than asked where the class map stopped changing).
    """
    peak_q = np.asarray(peak_q, dtype=np.float64)
    err = np.asarray(peak_err, dtype=np.float64)
    crystal = np.asarray(crystal, bool)
    amorph = ~crystal & np.isfinite(peak_q) & np.isfinite(err) & (err > 0)
    lif_only = (np.asarray(lif_no_peak, bool) & ~crystal & ~amorph) if lif_no_peak is not None else np.zeros_like(crystal)
    valid = crystal | amorph | lif_only
    none = (np.asarray(no_peak, bool) & ~valid) if no_peak is not None and labels is not None else np.zeros_like(crystal)
    none &= evidence_support(valid)
    valid = valid | none
    q, s2 = peak_q[amorph], err[amorph] ** 2
    h = float(np.clip(lif_hit_rate, *HIT_RATE_RANGE))
    e = np.asarray(lif_e, dtype=np.float64)[amorph]
    lif_llr = e * np.log(h / LIF_FALSE_ALARM) + (1 - e) * np.log((1 - h) / (1 - LIF_FALSE_ALARM))
    fa_ll = np.log(crystal_false_alarm) if crystal_false_alarm else -np.inf
    lay = lif_layer_llr(np.asarray(lif_layer, bool)[amorph], h) if lif_layer is not None else None
    p_none = None
    if none.any():  # P(no peak | class) from the scan's own classes (``labels``, the rules')
        lab_all = np.asarray(labels)
        has = ~np.isfinite(peak_q)
        p_none = [(float(((lab_all == k) & has).sum()) + 1.0) / (float((lab_all == k).sum()) + 2.0)
                  for k in range(len(PROB_CLASSES))]
    lab = np.asarray(labels)[amorph] if labels is not None else None
    history, beta_in, done = [], beta, 0
    for it in range(max(0, int(model_iterations)) + 1):
        models, source, counts = _class_models(q, s2, lab, class_ranges if it == 0 else None, cut_on_measured)
        log_w = np.log(counts / counts.sum())
        history.append({name: {"mean": float(models[name][0]), "intrinsic_sigma": float(np.sqrt(models[name][1])),
                               "source": source[name], "weight": float(np.exp(log_w[j]))}
                        for j, name in enumerate(PROB_CLASSES[1:])})
        ll = np.full((*peak_q.shape, 4), -np.inf)
        ll[crystal] = [0.0, fa_ll, fa_ll, fa_ll]
        ll[lif_only] = [-np.inf, -np.inf, 0.0, -np.inf]
        if p_none is not None:
            ll[none] = np.log(p_none)
        sub = np.full((int(amorph.sum()), 4), -np.inf)
        sub[:, 1:] = _amorphous_log_lik(q, s2, lif_llr, models, log_w, lay) if q.size else sub[:, 1:]
        ll[amorph] = sub
        ll_finite = np.where(np.isfinite(ll), ll, -1e6)  # (exp → 0 without NaN in the mean field)
        evidence = _softmax(ll_finite)
        evidence[~valid] = np.nan
        beta, beta_history = beta_in, []
        if beta == "auto":
            ev_lab = np.where(valid, np.nan_to_num(evidence).argmax(axis=-1), 0)
            beta = potts_beta_pseudolikelihood(ev_lab, valid, 4) if valid.sum() > 1 else 0.0
            beta_history.append(float(beta))
        post = potts_mean_field(ll_finite, float(beta), valid=valid) if valid.any() else evidence
        # β re-estimated on the posterior's own class map until it stops changing (Besag 1986, module docstring)
        n_beta = BETA_ITERATIONS if beta_iterations is None else int(beta_iterations)
        for _ in range(n_beta if beta_in == "auto" and valid.sum() > 1 else 0):
            b_new = potts_beta_pseudolikelihood(np.where(valid, np.nan_to_num(post).argmax(axis=-1), 0), valid, 4)
            if b_new == beta:
                break
            beta = b_new
            beta_history.append(float(beta))
            post = potts_mean_field(ll_finite, float(beta), valid=valid)
        if it == int(model_iterations) or not q.size:
            break
        # hard EM with the spatial prior: the next pass measures each class on the positions the posterior gives it
        new_lab = np.nan_to_num(post[amorph]).argmax(axis=-1)
        if lab is not None and np.array_equal(new_lab, lab):
            break
        lab, done = new_lab, done + 1
    rho = None
    if temperature == "auto":  # the design effect of a pair of neighbours (residual_correlation_temperature)
        rho = (neighbour_residual_correlation(np.where(amorph, peak_q, np.nan), err, np.asarray(labels), models)
               if labels is not None else 0.0)
        temperature = residual_correlation_temperature(rho)
    prob = temper(post, temperature)
    return {"probability": prob, "evidence_probability": evidence, "beta": float(beta), "beta_history": beta_history,
            "lif_hit_rate": h,
            "temperature": float(temperature), "residual_correlation": rho, "class_models": history[-1],
            "model_history": history,
            "model_iterations": done}


def truncated_normal_variance(mean: float, sigma: float, lo: float, hi: float) -> float:
    """Variance of N(mean, sigma²) cut to [lo, hi] (same units, e.g. 1/Å; Johnson, Kotz & Balakrishnan 1994,
    Continuous Univariate Distributions 1, eq. 13.135): σ² [1 + (αφ(α) − βφ(β))/Z − ((φ(α) − φ(β))/Z)²] with
    α, β the cuts in units of σ and Z = Φ(β) − Φ(α). Written out rather than ``scipy.stats.truncnorm(...).var()``
    (tested against it): importing scipy.stats would add ≈ 0.45 s to a classification re-run (measured here).

    >>> round(truncated_normal_variance(0.0, 1.0, -1.0, 1.0), 4)      # ±1 σ keeps 29 % of the variance
    0.2911
    >>> round(truncated_normal_variance(0.0, 1.0, -50.0, 50.0), 4)    # no cut
    1.0
    """
    from math import erf, exp, pi, sqrt

    if sigma <= 0:
        return 0.0
    a, b = (lo - mean) / sigma, (hi - mean) / sigma
    phi = lambda x: exp(-0.5 * x * x) / sqrt(2 * pi)  # noqa: E731
    z = 0.5 * (erf(b / sqrt(2)) - erf(a / sqrt(2)))
    if z <= 1e-300:
        return 0.0
    fa, fb = phi(a) if np.isfinite(a) else 0.0, phi(b) if np.isfinite(b) else 0.0
    afa = a * fa if np.isfinite(a) else 0.0
    bfb = b * fb if np.isfinite(b) else 0.0
    return float(sigma ** 2 * (1.0 + (afa - bfb) / z - ((fa - fb) / z) ** 2))


def untruncated_spread(mean: float, sigma: float, lo: float, hi: float, cap: float) -> float:
    """Intrinsic spread (1/Å) of a class whose positions were chosen by a Q cut [lo, hi] (the rules' range of the
    class) and whose spread measured on them is ``sigma``: the s ≥ sigma whose normal, cut to [lo, hi], has
    variance sigma² (:func:`truncated_normal_variance`), at most ``cap`` (the published spread, which includes
    measurement noise: an upper bound); ``sigma`` itself where it is ≥ cap. A narrow class (sigma ≪ hi − lo) keeps
    its spread.

    >>> round(untruncated_spread(0.285, 0.002, 0.26, 0.307, 0.019), 4)     # narrow: unchanged
    0.002
    >>> s = untruncated_spread(0.285, 0.011, 0.26, 0.307, 0.019)           # the published spreads, cut
    >>> 0.013 < s < 0.019 and abs(truncated_normal_variance(0.285, s, 0.26, 0.307) - 0.011 ** 2) < 1e-9
    True
    """
    if not sigma > 0 or sigma >= cap:
        return float(sigma)
    target = sigma ** 2
    if truncated_normal_variance(mean, cap, lo, hi) <= target:
        return float(cap)
    lo_s, hi_s = sigma, cap
    for _ in range(60):  # bisection: the cut variance grows with s
        mid = 0.5 * (lo_s + hi_s)
        if truncated_normal_variance(mean, mid, lo, hi) < target:
            lo_s = mid
        else:
            hi_s = mid
    return float(0.5 * (lo_s + hi_s))


def untruncated_class_spread(mean: float, measured: float, err2: float, lo: float, hi: float, cap: float,
                             deconvolved: float = 0.0) -> float:
    """Intrinsic spread (1/Å) of a class whose positions were chosen by a Q cut [lo, hi] of their **measured** peaks
    (the rules' range of the class): ``measured``, the standard deviation of those peaks (1/Å), is that of a cut
    normal of variance s² + ``err2`` (intrinsic spread and the peaks' mean squared error, 1/Å², together: the cut
    acts on both); :func:`untruncated_spread` undoes it (at most √(cap² + err2)) and the error is taken out again;
    never below ``deconvolved`` (the spread deconvolved on the same positions: a cut only narrows), at most ``cap``
    (the published spread; or ``deconvolved`` where larger). Undoing the cut on the deconvolved spread instead (session 20's first
    form) left a class whose cut is narrower than its peaks' errors at 0: the measured variance inside the cut is
    below the errors', so the deconvolution gives 0 and there is nothing left to correct (SEI Type 2 of a 128² copy
    of matrix seed 1031 at 5 × 10³ e⁻: truth 0.020 1/Å, measured 0, Type 2 recall 0.46).

    >>> s = untruncated_class_spread(0.295, 0.0081, 0.010 ** 2, 0.28, 0.31, 0.019)  # cut narrower than the errors
    >>> 0.011 < s < 0.013   # N(0.295, 0.012) + errors 0.010, cut to ± 0.96 of their total 0.0156: measured 0.0081
    True
    >>> round(untruncated_class_spread(0.285, 0.0045, 0.004 ** 2, 0.26, 0.307, 0.019), 4)  # narrow: not cut
    0.0021
    >>> untruncated_class_spread(0.285, 0.0045, 0.004 ** 2, 0.26, 0.307, 0.019, deconvolved=0.0025)
    0.0025
    """
    if not (err2 >= 0 and measured >= 0):
        return float("nan")
    total = untruncated_spread(mean, float(measured), lo, hi, float(np.sqrt(cap ** 2 + err2)))
    return float(max(min(np.sqrt(max(total ** 2 - err2, 0.0)), cap), deconvolved))


def _class_models(q: np.ndarray, s2: np.ndarray, lab: np.ndarray | None,
                  class_ranges: dict | None = None, cut_on_measured: bool = False) -> tuple[dict, dict, np.ndarray]:
    """(models {class: (mean, intrinsic variance)}, source {class: "scan" | "published"}, counts + 1) of the
    amorphous classes, each measured (deconvolved, one Gaussian) on the positions ``lab`` (class indices, one per
    peak ``q`` with variance ``s2``) gives it where it has ≥ :data:`MIN_CLASS_WEIGHT`, else published."""
    models = {k: (m, s ** 2) for k, (m, s) in PUBLISHED_CLASS_Q.items()}
    source = {k: "published" for k in models}
    counts = np.ones(3)
    if lab is None:
        return models, source, counts
    for j, name in enumerate(PROB_CLASSES[1:]):
        sel = lab == PROB_CLASSES.index(name)
        counts[j] += sel.sum()
        if sel.sum() >= MIN_CLASS_WEIGHT:
            one = fit_deconvolved_mixture(q[sel], np.sqrt(s2[sel]), 1, errors=False)
            mean, sd = float(one["mean"][0]), float(one["sigma"][0])
            if class_ranges and name in class_ranges and cut_on_measured:
                sd = untruncated_class_spread(mean, float(np.std(q[sel])), float(np.mean(s2[sel])),
                                              *class_ranges[name], PUBLISHED_CLASS_Q[name][1], deconvolved=sd)
            elif class_ranges and name in class_ranges:
                sd = untruncated_spread(mean, sd, *class_ranges[name], PUBLISHED_CLASS_Q[name][1])
            models[name] = (mean, max(sd ** 2, 1e-10))
            source[name] = "scan"
    return models, source, counts
