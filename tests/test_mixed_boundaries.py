"""Classes at layer boundaries (issue 18, mixed patterns): the grain-minority rule (a grain-like position that
keeps an amorphous ring and carries less than half of the grain interior's Bragg intensity is not crystal) and the
rule that Li/Cu reflections on a LiF ring do not veto a Type 1 peak."""
import numpy as np

from sendmap.science.boundaries import grain_minority


def boundary_scan(alpha_step: float = 0.2, noise: float = 0.0, seed: int = 0):
    """A grain (left) meets an amorphous film (right) across an inclined boundary: the grain's share of the
    material along the beam falls linearly from 1 to 0 over the boundary; Bragg intensity ∝ that share
    (plus relative noise); an amorphous ring wherever the film's share is > 0."""
    share = np.clip(1.0 - alpha_step * np.arange(-6, 26), 0.0, 1.0)  # columns
    share = np.tile(share, (9, 1))
    rng = np.random.default_rng(seed)
    bragg = 1000.0 * share * (1 + noise * rng.normal(size=share.shape))
    like = share > 0
    ring = share < 1
    return share, bragg, like, ring


def test_minority_is_the_half_maximum():
    share, bragg, like, ring = boundary_scan()
    minority = grain_minority(bragg, like, ring, 7)
    truth_minority = like & (share < 0.5)
    np.testing.assert_array_equal(minority, truth_minority)
    # no amorphous ring: never demoted, whatever the intensity
    assert not grain_minority(bragg, like, np.zeros_like(ring), 7).any()
    # off
    assert not grain_minority(bragg, like, ring, 0).any()


def test_boundary_wider_than_window_errs_towards_crystal():
    share, bragg, like, ring = boundary_scan(alpha_step=0.04)  # 25 positions from grain to film
    minority = grain_minority(bragg, like, ring, 7)
    # the window's brightest position is itself mixed, so fewer positions are demoted, and only true minorities
    assert not (minority & (share >= 0.5)).any()
    assert minority.sum() < (like & (share < 0.5)).sum()


def test_noise_moves_the_boundary_little():
    share, bragg, like, ring = boundary_scan(noise=0.1, seed=5)
    minority = grain_minority(bragg, like, ring, 7)
    wrong = minority != (like & (share < 0.5))
    # with 10 % intensity noise, only positions within one step (0.2) of the half share can be on the wrong side
    assert np.all(np.abs(share[wrong] - 0.5) <= 0.2 + 1e-9)
    assert wrong.mean() < 0.1


def test_li_reflection_on_a_lif_ring_does_not_veto_a_type1_peak():
    """SEI Type 1 with a Li grain minority: its Li (211) spots (0.698 1/Å) fall in the LiF (220) band; where the
    indexing fits them to Li/Cu as well, the Type 1 peak decides (rule 2 of classify_rules); LiF-only spots and a
    peak in the Type 2 range keep Type 2."""
    from sendmap.science.classify import SEI_TYPE1, SEI_TYPE2, UNASSIGNED, classify_rules

    rules = dict(crystal_spot_z=25, lif_spot_z=10.5, electrolyte_max_q=0.307, sei_type1_range=(0.307, 0.37),
                 sei_type2_range=(0.27, 0.33), electrolyte_range=(0.26, 0.307))
    peak = np.array([0.345, 0.345, 0.315, 0.345])
    crystal_z = np.array([15.0, 15.0, 15.0, 3.0])
    lif_z = np.array([20.0, 20.0, 20.0, 3.0])
    grain_indexed = np.array([True, False, True, False])
    with_rule = classify_rules(peak, crystal_z, lif_z, grain_indexed=grain_indexed, **rules)
    without = classify_rules(peak, crystal_z, lif_z, **rules)
    assert with_rule.tolist() == [SEI_TYPE1, UNASSIGNED, SEI_TYPE2, SEI_TYPE1]
    assert without.tolist() == [UNASSIGNED, UNASSIGNED, SEI_TYPE2, SEI_TYPE1]


def test_above_class_ranges_only_where_a_class_claims_the_maximum():
    """A maximum above SEI Type 1's range (its published mean + 2 spreads) is not reported for an amorphous class
    the position gets (probabilities, neighbours); crystals, unassigned positions, the range's own end and positions
    without a maximum are left alone."""
    from sendmap.science.classify import (CRYSTAL, ELECTROLYTE, SEI_TYPE1, SEI_TYPE2, UNASSIGNED,
                                          above_class_ranges)

    q = np.array([0.395, 0.395, 0.395, 0.395, 0.395, 0.37, 0.3701, np.nan, 0.33])
    cls = np.array([SEI_TYPE1, SEI_TYPE2, ELECTROLYTE, CRYSTAL, UNASSIGNED, SEI_TYPE1, SEI_TYPE1, SEI_TYPE1, SEI_TYPE1])
    got = above_class_ranges(q, cls, (0.307, 0.37))
    assert got.tolist() == [True, True, True, False, False, False, True, False, False]
