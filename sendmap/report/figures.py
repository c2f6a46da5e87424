"""Publication figures: pure functions from arrays to :class:`matplotlib.figure.Figure` objects (the catalogue the
report stage draws from, :func:`sendmap.report.build.figure_specs`, by name).

Every figure is built on a bare :class:`~matplotlib.figure.Figure` with an Agg canvas (never pyplot's global figure
manager), in the journal style of :mod:`.style`, laid out in inches by :mod:`.layout`, and carries the electron
dose that produced it on its top line (``dose_text``). The figures, by kind:

* :mod:`.maps`: :func:`plot_peak_map`, :func:`plot_class_map`, :func:`plot_virtual_images`;
* :mod:`.histograms`: :func:`plot_histograms`;
* :mod:`.profiles`: :func:`plot_class_profiles`;
* :mod:`.overview`: :func:`plot_overview` (the double-column paper figure, from the panels of the others);
* :mod:`.savefig`: :func:`save_figure` writes ``<base>.png`` (300 dpi) and ``<base>.pdf`` (vector), atomically.
"""
from __future__ import annotations

from .histograms import plot_histograms
from .maps import plot_class_map, plot_peak_map, plot_virtual_images, scale_bar_length
from .overview import plot_overview
from .profiles import plot_class_profiles
from .savefig import save_figure, write_figure
from .style import CLASS_COLORS, CLASS_LABELS, DOUBLE_COLUMN_IN, DPI, NAN_COLOR, SINGLE_COLUMN_IN, STYLE, style_context

__all__ = [
    "CLASS_COLORS",
    "CLASS_LABELS",
    "NAN_COLOR",
    "STYLE",
    "SINGLE_COLUMN_IN",
    "DOUBLE_COLUMN_IN",
    "DPI",
    "style_context",
    "save_figure",
    "write_figure",
    "scale_bar_length",
    "plot_peak_map",
    "plot_class_map",
    "plot_histograms",
    "plot_class_profiles",
    "plot_virtual_images",
    "plot_overview",
]
