"""Report stage helpers: publication figures (:mod:`sendmap.report.figures`)."""
from sendmap.report.figures import (
    CLASS_COLORS,
    CLASS_LABELS,
    plot_class_map,
    plot_class_profiles,
    plot_histograms,
    plot_overview,
    plot_peak_map,
    plot_virtual_images,
    save_figure,
)

__all__ = [
    "CLASS_COLORS",
    "CLASS_LABELS",
    "plot_class_map",
    "plot_class_profiles",
    "plot_histograms",
    "plot_overview",
    "plot_peak_map",
    "plot_virtual_images",
    "save_figure",
]
