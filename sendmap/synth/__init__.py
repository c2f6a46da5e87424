"""Synthetic SEND datasets with ground truth (``sendmap synth``).

``make_dataset`` writes a dataset (Merlin .mib/.hdr or .npy), ``truth.npz``/``truth.json`` and a ready
``config.yaml``; ``detector_q`` is the detector-geometry convention (centre, Q per pixel, ellipse) shared
with the analysis.
"""
from .make import SynthModel, SynthParams, add_synth_arguments, make_dataset, synth_main
from .patterns import detector_q, detector_qvec

__all__ = ["SynthModel", "SynthParams", "add_synth_arguments", "detector_q", "detector_qvec", "make_dataset",
           "synth_main"]
