"""The stage graph: input → ingest → calibrate → profiles → peaks → classify → statistics → report.

Each stage is a module of :mod:`sendmap.stages` whose ``stage_*`` function reads its inputs from the result store
and writes its outputs there (:class:`~sendmap.engine.context.Context`); the per-block work its workers run lives
in :mod:`sendmap.compute`, the pure science in :mod:`sendmap.science`, and the runner, store access, execution,
resume records, output lock and cache keys in :mod:`sendmap.engine`. A stage's cache key hashes sendmap's version,
the config sections it depends on, the digest of the code it can run and the key of the stage before it (ingest:
the input fingerprint), so changing one setting recomputes that stage and the ones after it, nothing before it.
:data:`STAGES` is the one place to add a stage; ``pipelines/README.md`` describes the graph for users.
"""
from __future__ import annotations

from collections.abc import Callable

from .config import Config
from .engine import runner
from .engine.context import Stage
from .stages import calibrate, classify, ingest, peaks, profiles, report, statistics
from .stages.input import apply_file_calibration, preflight  # noqa: F401 - (the input stage, run by the runner)

STAGES: tuple[Stage, ...] = (
    Stage("ingest", ("input",), ingest.stage_ingest,
          "raw file → data (Ry, Rx, Qy, Qx) + sum/max patterns, counts, dose", revision=2,
          key_sections=ingest.key_sections),
    # revision 2 (speckle): spot_z is measured against the azimuthal scatter (calibrate uses it to leave crystals out
    # of the ellipse fit), profiles/sem has an error model, features/fem_variance is new; revision 3: clusters of 2-3
    # adjacent hot pixels are masked (sendmap.science.mask.HOT_CLUSTER_MAX)
    Stage("calibrate", ("calibration",), calibrate.stage_calibrate, "mask, per-position centre, descan plane, ellipse",
          3, key_sections=calibrate.key_sections),
    # profiles revision 3 (indexing): spot lists and their indexing evidence (features/n_spots, spot_category, ...,
    # spots/*) for the frames with a spot ≥ 5 σ; revision 4: a spot is a local maximum of the window significance
    # (the flanks of a stronger spot, 2 disk radii from it, are no longer listed); revision 5 (issue 18, spot mask):
    # profiles/iqn_masked and iqn_masked_sem, the mean without the listed disks' cells (peaks.profile: masked)
    Stage("profiles", ("profiles",), profiles.stage_profiles,
          "I(Q), SEM, dispersion, V(Q), I·Q^n, spot significance, spot lists and indexing, BF/ADF, Bragg fraction", 5),
    # revision 2 (speckle, peak status): the fit's errors carry the speckle's correlation in Q, the denoising's
    # components come from the correlated-noise edge; peaks/status. revision 3 (coverage): the speckle covariance is
    # propagated exactly (no slope factor), V(Q) for the errors averaged over 5 × 5 non-crystalline neighbours
    # revision 5 (flat tops): status no_clear_maximum, its honest error, peaks/q_max_lo and q_max_hi
    # revision 6 (issue 18, LiF): the denoising components leave out grains by the spots' indexing (LiF-rich SEI
    # Type 2 is no longer left out: its LiF (200) lies in the Cu band); peaks.denoise_exclude_spots (gappy PCA)
    # revision 7: peaks/status_own_profile (the grain-like rows' own profiles: an SRO maximum without the denoising?)
    # revision 8: under strong speckle the denoised profiles get their neighbours' mean residual back
    # (peaks.denoise_residual_pool: the few components' truncation bias)
    # revision 9 (issue 18, estimator bias): a sextic over the fixed ± 0.14 1/Å range (peaks.fixed_range_degree)
    # revision 10 (session 22, strong speckle): denoise_learn_pool 3 and one_step_pool 5 by default; where they act,
    # the plain estimator's peak is stored apart as the classification feature (peaks/q_peak_classify,
    # q_err_classify, status_classify; peaks.classify_feature) and peaks/q_peak is the options' less biased one
    Stage("peaks", ("peaks",), peaks.stage_peaks,
          "SRO peaks: binning/denoising, position, error, height, width; second peak", 10,
          key_sections=peaks.key_sections),
    # classify revision 2 (indexing): the crystal rule and SEI Type 2 use the spots' indexing and shared grain spots;
    # revision 3 (calibration): class probabilities with the crystal rule's error rates and a posterior temperature;
    # revision 4 (flat tops): no_clear_maximum positions keep their peak (wide error) in maps/ and get no class from
    # a Q they cannot tell (sendmap.science.classify.undetermined_by_q); revision 5 (LiF layer): SEI Type 2 where
    # the neighbourhood's LiF evidence stands above the scan's own chance level (features/lif_layer_z); revision 6
    # (session 15): the Potts coupling re-estimated on the posterior's own map (classify.beta_iterations);
    # revision 7 (method gmm): the mixture is fitted on at most 20 000 positions (science.classify.GMM_FIT_POSITIONS);
    # revision 8: the grain rule's 'no SRO peak' asks the position's own profile (peaks/status_own_profile), and a
    # region without an amorphous ring beside a Li/Cu reflection is grain-like (science.classify.without_amorphous_ring)
    # revision 9 (mixed boundaries): Li/Cu-indexed spots on a LiF ring do not veto a Type 1 peak (classify_rules
    # grain_indexed), whose peak is then not reported (maps/peak_status bragg_disk_in_fit_range); opt-in
    # classify.definitions.grain_majority_size (a summed-intensity rule, replaced in revision 13); revision 10 (methods gmm/kmeans):
    # the project's own mixture and k-means (science.gmm) on every clustered position, not scikit-learn's on 20 000
    # revision 11: a maximum above every class's range, where the position still gets an amorphous class, is not
    # reported (maps/peak_status above_class_ranges); revision 12: a position without an SRO peak gets a class
    # probability only where half of its neighbours carry evidence of their own (science.probability.evidence_support);
    # revision 13 (session 18): beside a grain, a grain reflection in the fit range above the scan's chance level
    # marks the peak bragg_disk_in_fit_range (science.boundaries.grain_disk_beside_grain), and a grain-like position
    # with an SRO peak whose reflections carry < ½ of the same reflections' interior intensity is not crystal
    # (classify.definitions.grain_majority_size 7 by default; science.boundaries.same_reflection_share)
    # revision 14 (session 20, calibration): the class spreads measured on the rules' classes are corrected for the
    # rules' Q cuts (science.probability.untruncated_spread), the posterior temperature 1.75 → 1.25
    # revision 15 (session 20): the LiF bands' significance leaves out the flank of a listed spot of another phase
    # centred beside them (Li (110), Cu (200)): science.classify.band_spot_z
    # revision 16 (session 22): the class evidence reads the peaks stage's classification feature where stored
    # (peaks/q_peak_classify and its status); maps/peak_q and its error report peaks/q_peak
    Stage("classify", ("classify",), classify.stage_classify, "features, class and phase per position; final peak maps",
          16),
    # statistics revision 2: where no Gaussian can be fitted, the amplitude is the moments' Gaussian's (area = count)
    Stage("statistics", ("statistics", "dose"), statistics.stage_statistics,
          "histogram fits, class-mean profiles, layers, dose", 2),
    Stage("report", ("output",), report.stage_report, "figures and tables", key_sections=report.key_sections),
)


def stage_keys(cfg: Config, input_fp: dict) -> dict[str, dict]:
    """Cache key of every stage of :data:`STAGES` (:func:`sendmap.engine.runner.stage_keys`)."""
    return runner.stage_keys(cfg, input_fp, STAGES)


def run_pipeline(cfg: Config, force: bool = False, log: Callable[[str], None] = print, until: str | None = None,
                 figure_helpers=None) -> dict:
    """Run every stage of :data:`STAGES` whose cache key changed (all with ``force``); return the summary dict
    (:func:`sendmap.engine.runner.run_pipeline`: ``until``, ``figure_helpers``)."""
    return runner.run_pipeline(cfg, STAGES, force=force, log=log, until=until, figure_helpers=figure_helpers)
