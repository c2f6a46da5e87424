"""Mixed boundaries (issue 18): where the beam crosses an inclined layer boundary, a pattern holds two phases and
its truth is the majority one. :func:`grain_minority` (opt-in, ``classify.definitions.grain_majority_size``) finds
grain-like positions where the grain is the minority of the material along the beam.
"""
from __future__ import annotations

import numpy as np


def grain_minority(bragg_intensity: np.ndarray, like: np.ndarray, sro_peak: np.ndarray, size: int,
                   majority: float = 0.5, candidates: np.ndarray | None = None) -> np.ndarray:
    """(Ry, Rx) bool: grain-like positions (``like``, :func:`grain_evidence`) where the grain is the minority of
    the material along the beam: the position keeps an amorphous ring (``sro_peak``: an SRO peak on its own
    profile) and its Bragg intensity (``bragg_intensity``, counts in the listed spots on Li/Cu rings) is below
    ``majority`` × the grain's intensity around it: the upper quartile of the grain-like positions within the
    ``size`` × ``size`` window. ``candidates``: where given, only these positions can be demoted (e.g. those whose
    spots index as a grain, whose listed intensity measures the grain).

    Scattering from the layers a beam crosses adds up (a thin film's kinematic intensities scale with the
    thickness of each phase), so across an inclined boundary a grain's Bragg intensity falls from its value in the
    grain's interior to 0, and the grain is the majority phase where it is above half of the interior's value: the
    boundary between a grain and the amorphous film beside it is the half-maximum of the grain's intensity
    (the truth of a mixed position is its majority phase, issue 18). The upper quartile, not the maximum, stands
    for the interior: the maximum of noisy intensities is biased high (development seeds 918, 919, 924, 925:
    the maximum demoted 17 more grain positions at 5 × 10³ e⁻). The window must reach from the boundary into
    the grain's interior; where it does not (a boundary wider than the window), the positions in it are mixed ones
    too and fewer positions are demoted: the rule errs towards ``crystal``. A pattern without an amorphous ring is
    never demoted.

    >>> b = np.array([[100.0, 100.0, 90.0, 30.0, 0.0]])
    >>> like = b > 0
    >>> grain_minority(b, like, np.array([[False, False, True, True, True]]), 5).tolist()
    [[False, False, False, True, False]]
    """
    like = np.asarray(like, bool)
    if size < 1 or not like.any():
        return np.zeros(like.shape, bool)
    b = np.nan_to_num(np.asarray(bragg_intensity, dtype=float), nan=0.0)
    r = (size | 1) // 2
    padded = np.pad(np.where(like, b, np.nan), r, mode="edge")
    stack = np.stack([padded[i:i + b.shape[0], j:j + b.shape[1]] for i in range(2 * r + 1) for j in range(2 * r + 1)])
    n = np.sum(np.isfinite(stack), axis=0)
    # the upper quartile of the grain-like values of each window (NaN: not grain-like, sorted last)
    stack.sort(axis=0)
    k = np.clip(np.ceil(0.75 * n).astype(int) - 1, 0, None)
    ref = np.where(n > 0, np.take_along_axis(stack, k[None], axis=0)[0], 0.0)
    out = like & np.asarray(sro_peak, bool) & (b < majority * ref)
    if candidates is not None:
        out &= np.asarray(candidates, bool)
    return out
