"""Report stage helpers: publication figures (:mod:`sendmap.report.figures`).

The names below are loaded on first use (PEP 562), so ``import sendmap.report.build`` for the tables alone
does not import matplotlib (~0.4 s).
"""
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


def __getattr__(name):
    if name in __all__:
        from sendmap.report import figures

        return getattr(figures, name)
    raise AttributeError(f"module 'sendmap.report' has no attribute {name!r}")
