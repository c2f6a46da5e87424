"""Low-rank denoising of profiles that hold Bragg spots (issue 18, LiF-dominant SEI Type 2): the spot bins are left
out of each position's coefficients (``lowrank_denoise(..., exclude=)``), so the SRO maximum is not pulled."""
from __future__ import annotations

import numpy as np

from sendmap.science.peaks import fit_peaks, gap_filled_sem, lowrank_denoise
from sendmap.science.spot_context import spot_covered_bins
from test_peak_features import _profile, _true_max  # the same SRO ring and its exact maximum

Q = (np.arange(90) + 0.5) * 0.0125
WIN = (0.22, 0.42)
DISK = 0.08  # probe disk radius α/λ, 1/Å (2 mrad at 200 kV: 0.0797)
LIF = (0.43, 0.497, 0.702)  # LiF (111), (200), (220), 1/Å (SCIENCE.md)


def _scan(seed=3, n=1500, spot_share=0.4):
    """Profiles with a known SRO maximum; a share of them (SEI Type 2) hold LiF spots: a disk-wide excess at
    (111), (200), (220) (each excited or not) of 1–10 × the amorphous level there, at a random Q within the calibrated uncertainty, as the
    spot list would report them (positions, Q)."""
    rng = np.random.default_rng(seed)
    q0 = rng.uniform(0.28, 0.345, n)
    clean = np.stack([_profile(v, Q) for v in q0])
    sem = 0.25 * np.sqrt(clean)
    noisy = clean + rng.normal(size=clean.shape) * sem
    spotty = rng.random(n) < spot_share
    pos, sq = [], []
    for i in np.flatnonzero(spotty):
        excited = rng.random(len(LIF)) < 0.6
        excited[rng.integers(len(LIF))] = True  # at least one reflection
        for g in np.asarray(LIF)[excited]:
            qs = g * (1 + rng.normal() * 0.004)
            # a disk's azimuthal sum: a chord of the disk, 1–10 × the amorphous level there (log-uniform)
            bump = np.exp(rng.uniform(0, np.log(10))) * clean[i] * np.sqrt(np.clip(1 - ((Q - qs) / DISK) ** 2, 0, None))
            noisy[i] += bump
            sem[i] += 0.5 * bump  # the azimuthal scatter of a bin holding a spot
            pos.append(i)
            sq.append(qs)
    truth = np.array([_true_max(v) for v in q0])
    return noisy, sem, spotty, np.array(pos), np.array(sq), truth


def test_spot_bins_left_out_of_the_denoising_keep_the_sro_peak():
    noisy, sem, spotty, pos, sq, truth = _scan()
    n = len(truth)
    covered = spot_covered_bins(pos, sq, n, Q, DISK)
    assert covered[spotty].any(axis=1).all() and not covered[~spotty].any()
    sel = Q >= 0.08
    den0, op0, _ = lowrank_denoise(noisy, sem, np.ones(n, bool), sel, "pca")
    den, op, info = lowrank_denoise(noisy, sem, np.ones(n, bool), sel, "pca", exclude=covered)
    assert info["gappy_rows"] == spotty.sum()
    r0 = fit_peaks(Q, den0, sem, WIN, operator=op0)
    r = fit_peaks(Q, den, gap_filled_sem(sem, covered, np.ones(n, bool)), WIN, operator=op)
    bias0 = np.nanmean(r0["q_peak"][spotty] - truth[spotty])
    bias = np.nanmean(r["q_peak"][spotty] - truth[spotty])
    # every bin projected: the spots pull the SRO maximum of the spotty rows (the failure of issue 18)
    assert abs(bias0) > 0.004, bias0
    # their bins left out: unbiased within 1 × 10⁻³ 1/Å (a third of the class-mean target, 0.003), and as
    # precise as the rows without spots to within a factor 1.5
    assert abs(bias) < 0.001, bias
    err_spot = np.sqrt(np.nanmean((r["q_peak"][spotty] - truth[spotty]) ** 2))
    err_free = np.sqrt(np.nanmean((r["q_peak"][~spotty] - truth[~spotty]) ** 2))
    assert err_spot < 1.5 * err_free, (err_spot, err_free)
    assert np.isfinite(r["q_peak"]).mean() > 0.99
    # the rows without spots are denoised as before (to rounding of the components learned with the gaps filled)
    free = ~spotty
    d_free = np.abs(r["q_peak"][free] - truth[free]).mean()
    d_free0 = np.abs(r0["q_peak"][free] - truth[free]).mean()
    assert d_free < 1.1 * d_free0 + 1e-4, (d_free, d_free0)


def test_no_exclusion_mask_is_the_plain_projection():
    noisy, sem, spotty, pos, sq, truth = _scan(seed=4, n=400)
    sel = Q >= 0.08
    a = lowrank_denoise(noisy, sem, np.ones(len(truth), bool), sel, "pca")[0]
    b = lowrank_denoise(noisy, sem, np.ones(len(truth), bool), sel, "pca",
                        exclude=np.zeros_like(noisy, bool))[0]
    np.testing.assert_array_equal(a, b)
