"""Class probabilities (issue 18): the evidence of each position and the Potts prior (sendmap.science.probability),
checked on label maps with known truth: overlapping classes in Q, LiF evidence at some Type 2 positions only."""
from __future__ import annotations

import numpy as np

from sendmap.science.probability import PROB_CLASSES, class_probabilities, lif_evidence, potts_beta_pseudolikelihood

E1, E2, EL = (PROB_CLASSES.index(n) for n in ("sei_type1", "sei_type2", "electrolyte"))


def _layers(seed: int, shape=(60, 90), err=0.012, hit=0.5, spread=0.012):
    """Three vertical layers (electrolyte | Type 1 | Type 2) with a crystal block; peak positions drawn from each
    class's intrinsic distribution (the published means, ``spread``) plus a measurement error ``err``; the LiF
    evidence is 1 at a share ``hit`` of Type 2 positions and at 1 % of the others (the false-alarm rate)."""
    rng = np.random.default_rng(seed)
    ry, rx = shape
    truth = np.full(shape, EL)
    truth[:, rx // 3:2 * rx // 3] = E1
    truth[:, 2 * rx // 3:] = E2
    truth[:10, :10] = 0
    means = {EL: 0.285, E1: 0.330, E2: 0.295}
    q = np.full(shape, np.nan)
    for k, m in means.items():
        sel = truth == k
        q[sel] = rng.normal(m, spread, sel.sum()) + rng.normal(0, err, sel.sum())
    lif = np.where(truth == E2, rng.random(shape) < hit, rng.random(shape) < 0.01).astype(float)
    return truth, q, np.full(shape, err), truth == 0, lif


def _rule_labels(q, crystal, lif):
    lab = np.where(q < 0.307, EL, E1)
    lab[lif > 0.5] = E2
    lab[crystal] = 0
    return lab


def test_probabilities_are_calibrated_and_the_prior_helps():
    """In each tenth of predicted probability (≥ 30 entries), the observed frequency is within 0.15 of the mean
    probability (measured: at most 0.13 off, seeds 1, 2, 5, in the 0.1 and 0.8 tenths: the class spreads measured
    on the rules' classes, cut at 0.307, come out narrow; issue 18 asks for 0.07: not met yet); the spatial prior
    raises the accuracy over the evidence alone and over the rules (0.92-0.93 against 0.77 with β of the evidence
    map; 0.993-0.999 with β re-estimated on the posterior's map, BETA_ITERATIONS, which also brings the tenths within
    0.005 at T = 1: seeds 1, 2, 5). The model alone
    (temperature 1): on these well-specified layers the temperature fitted on the scenario matrix
    (POSTERIOR_TEMPERATURE, which corrects class models misfitted there) leaves them underconfident (0.5 tenth:
    observed 0.62-0.71 against 0.55); the matrix's calibration is tests/test_probability_calibration.py."""
    for seed in (1, 2):
        truth, q, err, crystal, lif = _layers(seed)
        lab = _rule_labels(q, crystal, lif)
        r = class_probabilities(q, err, crystal, lif, labels=lab, temperature=1.0)
        p = r["probability"]
        assert np.isfinite(p).all() and np.allclose(p.sum(-1), 1)
        acc = (p.argmax(-1) == truth).mean()
        acc_evidence = (r["evidence_probability"].argmax(-1) == truth).mean()
        acc_rules = (lab == truth).mean()
        assert acc > acc_evidence + 0.05 and acc > acc_rules + 0.05 and acc > 0.9, (acc, acc_evidence, acc_rules)
        assert r["beta"] > 0.3  # layers: a real coupling
        # the crystal rule with its false-alarm rate (0.3 %), softened by the temperature: crystal, not certain
        assert (p[crystal].argmax(-1) == 0).all() and (p[crystal][:, 0] > 0.9).all()
        onehot = truth[..., None] == np.arange(4)
        for lo in np.arange(0, 1, 0.1):
            sel = (p >= lo) & (p < lo + 0.1 + 1e-9 * (lo > 0.85))
            if sel.sum() >= 30:
                assert abs(p[sel].mean() - onehot[sel].mean()) < 0.15, (seed, lo, p[sel].mean(), onehot[sel].mean())


def test_class_models_are_measured_where_classes_are_populated():
    truth, q, err, crystal, lif = _layers(3, spread=0.008, err=0.004)
    r = class_probabilities(q, err, crystal, lif, labels=_rule_labels(q, crystal, lif))
    m = r["class_models"]
    assert m["sei_type1"]["source"] == "scan" and abs(m["sei_type1"]["mean"] - 0.330) < 0.004
    assert abs(m["electrolyte"]["mean"] - 0.285) < 0.004
    # without labels: the published class models
    r0 = class_probabilities(q, err, crystal, lif)
    assert all(v["source"] == "published" for v in r0["class_models"].values())


def test_no_peak_no_probability_and_noise_gets_no_coupling():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 3, (30, 30))
    assert potts_beta_pseudolikelihood(lab, np.ones(lab.shape, bool), 3) < 0.2
    q = np.full((4, 5), 0.30)
    q[0, 0] = np.nan
    r = class_probabilities(q, np.full(q.shape, 0.01), np.zeros(q.shape, bool), np.zeros(q.shape))
    assert np.isnan(r["probability"][0, 0]).all() and np.isfinite(r["probability"][1:]).all()
    assert lif_evidence(np.array([np.nan, 4.5, 20.0]), 4.5, 10.5).tolist() == [0.0, 0.0, 1.0]


def test_class_models_re_measured_on_the_posterior_recover_overlapping_spreads():
    """Classes overlapping in Q as published (intrinsic spread 0.019 1/Å, measurement error 0.008): the rules' cut at
    0.307 measures Type 1's and the electrolyte's spreads at ~0.015 and Type 2's weight from its LiF positions only
    (0.18 against the true 0.33). Re-measured on the posterior's own classes (the spatial prior separates what Q
    cannot; model_iterations), the spreads come out within 0.003 of 0.019 and the weights within 0.05 of a third,
    the accuracy rises (measured, seeds 1, 2, 5, β of the evidence map: 0.89-0.91 → 0.97-0.98 with 2 iterations),
    and more iterations
    change the models by at most 0.0011 (measured; asserted < 0.002: it converges rather than running away)."""
    for seed in (1, 2):
        truth, q, err, crystal, lif = _layers(seed, spread=0.019, err=0.008)
        lab = _rule_labels(q, crystal, lif)
        # (β of the evidence map, not re-estimated: the models' effect alone)
        r0 = class_probabilities(q, err, crystal, lif, labels=lab, beta_iterations=0)
        r2 = class_probabilities(q, err, crystal, lif, labels=lab, model_iterations=2, beta_iterations=0)
        r4 = class_probabilities(q, err, crystal, lif, labels=lab, model_iterations=4, beta_iterations=0)
        m0, m2, m4 = r0["class_models"], r2["class_models"], r4["class_models"]
        assert r0["model_iterations"] == 0 and r2["model_iterations"] == 2 and len(r2["model_history"]) == 3
        assert r2["model_history"][0] == m0  # the first pass is the rules' models
        for name in ("sei_type1", "electrolyte"):
            assert m0[name]["intrinsic_sigma"] < 0.016, (seed, name, m0[name])  # the cut halves the tails
        assert m0["sei_type2"]["weight"] < 0.22
        for name, mean in (("sei_type1", 0.330), ("sei_type2", 0.295), ("electrolyte", 0.285)):
            assert abs(m2[name]["intrinsic_sigma"] - 0.019) < 0.003, (seed, name, m2[name])
            assert abs(m2[name]["mean"] - mean) < 0.003, (seed, name, m2[name])
            assert abs(m2[name]["weight"] - 1 / 3) < 0.05, (seed, name, m2[name])
            assert abs(m4[name]["intrinsic_sigma"] - m2[name]["intrinsic_sigma"]) < 0.002
            assert abs(m4[name]["mean"] - m2[name]["mean"]) < 0.002
        acc0 = (r0["probability"].argmax(-1) == truth).mean()
        acc2 = (r2["probability"].argmax(-1) == truth).mean()
        assert acc0 < 0.92 and acc2 > 0.96, (seed, acc0, acc2)


def test_beta_re_estimated_on_the_posterior_map_is_stronger_and_noise_stays_uncoupled():
    """Besag's scheme (BETA_ITERATIONS): β re-estimated by pseudo-likelihood on the posterior's own class map. On the
    layers with the published spreads the evidence-only map gives β ≈ 0.4-0.5 (its mistakes break up the regions;
    the true map's is at the MAX_BETA bound), the re-estimate converges higher (≥ 1) and the accuracy rises
    (measured, seeds 1, 2: 0.89-0.91 → 0.999); classes drawn independently at every position do not run away: β
    0.325 → 0.35 (measured, seed 3; > 0 already from the evidence map, whose classes are unequal in number: a Potts
    field without a singleton term reads that as agreement), far below the layers'."""
    from sendmap.science.probability import MAX_BETA

    for seed in (1, 2):
        truth, q, err, crystal, lif = _layers(seed, spread=0.019, err=0.008)
        lab = _rule_labels(q, crystal, lif)
        r0 = class_probabilities(q, err, crystal, lif, labels=lab, beta_iterations=0)
        r = class_probabilities(q, err, crystal, lif, labels=lab, beta_iterations=10)
        assert r["beta_history"][0] == r0["beta"] and r["beta"] == r["beta_history"][-1]
        assert r0["beta"] < 0.8 and r["beta"] >= 1.0 and r["beta"] <= MAX_BETA, (r0["beta"], r["beta_history"])
        acc0 = (r0["probability"].argmax(-1) == truth).mean()
        acc = (r["probability"].argmax(-1) == truth).mean()
        assert acc0 < 0.92 and acc > 0.98, (seed, acc0, acc)
    # no regions: every position's class drawn independently (the same class models and errors)
    rng = np.random.default_rng(3)
    shape = (60, 90)
    truth = rng.choice([E1, E2, EL], size=shape)
    means = {EL: 0.285, E1: 0.330, E2: 0.295}
    q = np.vectorize(means.get)(truth) + rng.normal(0, 0.012, shape)
    lif = np.where(truth == E2, rng.random(shape) < 0.5, rng.random(shape) < 0.01).astype(float)
    crystal = np.zeros(shape, bool)
    r = class_probabilities(q, np.full(shape, 0.008), crystal, lif, labels=_rule_labels(q, crystal, lif),
                            beta_iterations=10)
    assert r["beta"] < 0.5 and r["beta"] - r["beta_history"][0] < 0.1, r["beta_history"]


def test_positions_without_evidence_do_not_take_a_class_from_false_alarms():
    """A scan with no SRO peak anywhere and two crystal-rule false alarms (10 e⁻ per pattern): the positions without
    a peak get no probability (unassigned) instead of the false alarms' class spread by the spatial prior; beside a
    grain (most neighbours crystalline) a position without a peak still gets its neighbours' class."""
    from sendmap.science.probability import class_probabilities, evidence_support

    shape = (6, 8)
    nan = np.full(shape, np.nan)
    crystal = np.zeros(shape, bool)
    crystal[1, 2] = crystal[4, 6] = True
    labels = np.where(crystal, 0, 4)
    out = class_probabilities(nan, nan, crystal, np.zeros(shape), labels=labels, no_peak=~crystal)
    p = out["probability"]
    assert np.isfinite(p[crystal]).all()
    assert np.isnan(p[~crystal]).all()
    # a grain: a block of crystalline positions with one missed (no peak) inside it
    grain = np.zeros(shape, bool)
    grain[1:5, 1:5] = True
    grain[2, 2] = False
    support = evidence_support(grain)
    assert support[2, 2] and not support[5, 7]
    out = class_probabilities(nan, nan, grain, np.zeros(shape), labels=np.where(grain, 0, 4), no_peak=~grain)
    assert np.nan_to_num(out["probability"][2, 2]).argmax() == 0


def test_class_spread_recovered_where_the_rules_cut_narrower_than_the_peak_errors():
    """Known answer: one class N(0.295, 0.012) measured with errors 0.010 1/Å; the rules keep its peaks within
    [0.28, 0.31] only (about a third of its positions go to the neighbouring classes: the rules' errors), a cut
    narrower than the peaks' total spread, so the deconvolved spread of the kept positions is 0. Undoing the cut on
    the measured peaks recovers the intrinsic spread (session 20: SEI Type 2 of matrix seed 1031 had collapsed to 0)."""
    got = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        shape = (40, 60)
        q = rng.normal(0.295, 0.012, shape) + rng.normal(0, 0.010, shape)
        lab = np.where(q < 0.28, EL, np.where(q > 0.31, E1, E2))
        assert 0.6 < (lab == E2).mean() < 0.7
        args = (q, np.full(shape, 0.010), np.zeros(shape, bool), np.zeros(shape))
        plain = class_probabilities(*args, labels=lab, beta=0.0)["class_models"]["sei_type2"]
        ranges = {"sei_type2": (0.28, 0.31)}
        old = class_probabilities(*args, labels=lab, beta=0.0, class_ranges=ranges)["class_models"]["sei_type2"]
        cut = class_probabilities(*args, labels=lab, beta=0.0, class_ranges=ranges, cut_on_measured=True)
        assert plain["intrinsic_sigma"] < 0.001 and old["intrinsic_sigma"] < 0.001  # the collapse
        got.append(cut["class_models"]["sei_type2"]["intrinsic_sigma"])
    assert abs(np.mean(got) - 0.012) < 0.0015 and min(got) > 0.009
