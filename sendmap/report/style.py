"""The journal style of every report figure: rc parameters, column widths and map sizes, colours and labels.

Every figure is built inside one journal style (:data:`STYLE`: sans-serif 8 pt, thin axes, inward ticks) and at a
journal column width (:data:`SINGLE_COLUMN_IN`, :data:`DOUBLE_COLUMN_IN`). Because ``rcParams`` are
process-global, the style is entered under a module lock (:func:`style_context`), so figures may be built from
several threads at once.

Colours are colour-blind safe: classes use the Okabe-Ito palette, fixed per class name (:data:`CLASS_COLORS`);
the SRO peak position map uses ``cividis``; virtual images use ``gray`` (bright field) and ``magma`` (annular dark
field); positions without a value are drawn in a light grey (:data:`NAN_COLOR`).
"""
from __future__ import annotations

import functools
import re
import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

import matplotlib
import numpy as np
from matplotlib import colors as mcolors


SINGLE_COLUMN_IN = 3.5
"""Single journal column width, inches."""
DOUBLE_COLUMN_IN = 7.2
"""Double (full-page) journal column width, inches."""
DPI = 300
"""Raster resolution of saved PNGs."""

MAX_MAP_IN = 4.5
"""Tallest map in a single-column figure, inches (taller scans are drawn narrower)."""
MAX_MAP_IN_OVERVIEW = 3.4
"""Tallest map in the overview figure, inches."""

MAX_STACK_IN_OVERVIEW = 4.6
"""Total height of the maps stacked one above the other in the overview (wide scans), inches."""
MIN_SIDE_BY_SIDE_IN = 1.0
"""Overview maps side by side only if they would be at least this tall, inches; else stacked."""
MIN_CBAR_RIGHT_IN = 1.2
"""A colourbar goes right of a map at least this tall, inches; below shorter (wide) maps."""

SMALL_PT = 6.5
HKL_PT = 4.5
"""Font size for legends, scale bars, colourbar ticks and the dose line."""

STYLE: dict[str, object] = {
    "font.family": "sans-serif",
    "font.sans-serif": ["Arial", "Helvetica", "Nimbus Sans", "Liberation Sans", "DejaVu Sans"],
    "font.size": 8.0,
    "axes.titlesize": 8.0,
    "axes.labelsize": 8.0,
    "axes.linewidth": 0.6,
    "axes.labelpad": 2.0,
    "axes.titlepad": 3.0,
    "axes.spines.top": True,
    "axes.spines.right": True,
    "axes.unicode_minus": True,
    "axes.formatter.use_mathtext": False,  # plain tick labels (mathtext parsing is slow in layout)
    "xtick.labelsize": 7.0,
    "ytick.labelsize": 7.0,
    "xtick.direction": "in",
    "ytick.direction": "in",
    "xtick.top": True,
    "ytick.right": True,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "xtick.minor.size": 1.5,
    "ytick.minor.size": 1.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "xtick.major.pad": 2.0,
    "ytick.major.pad": 2.0,
    "lines.linewidth": 1.0,
    "patch.linewidth": 0.6,
    "legend.fontsize": SMALL_PT,
    "legend.frameon": False,
    "legend.handlelength": 1.2,
    "legend.handleheight": 0.8,
    "legend.handletextpad": 0.4,
    "legend.columnspacing": 1.0,
    "legend.borderaxespad": 0.3,
    "legend.labelspacing": 0.3,
    "mathtext.default": "regular",
    "image.interpolation": "nearest",
    "image.origin": "upper",
    "figure.dpi": 100,
    "figure.facecolor": "white",
    "savefig.dpi": DPI,
    "savefig.facecolor": "white",
    "savefig.bbox": None,  # keep the exact figure size: width is a journal column
    "pdf.fonttype": 42,  # TrueType: text stays text (editable) in the PDF
    "ps.fonttype": 42,
    "svg.fonttype": "none",
}
"""The journal style, applied through :func:`style_context` to every figure this module builds."""

_STYLE_LOCK = threading.RLock()


@contextmanager
def style_context() -> Iterator[None]:
    """Enter :data:`STYLE` (under a lock, because ``rcParams`` are global to the process)."""
    with _STYLE_LOCK, matplotlib.rc_context(STYLE):
        yield


def _styled(func):
    """Run ``func`` inside :func:`style_context` (artists read rcParams when they are created)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with style_context():
            return func(*args, **kwargs)

    return wrapper


OKABE_ITO: dict[str, str] = {
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "black": "#000000",
    "grey": "#999999",
}
"""The Okabe-Ito colour-blind-safe palette (Okabe & Ito 2008), plus its customary grey."""

CLASS_COLORS: dict[str, str] = {
    "crystal": OKABE_ITO["blue"],
    "sei_type1": OKABE_ITO["orange"],
    "sei_type2": OKABE_ITO["reddish_purple"],
    "electrolyte": OKABE_ITO["bluish_green"],
    "unassigned": OKABE_ITO["grey"],
    "uncertain": OKABE_ITO["black"],
}
"""Class name -> colour, fixed so a class has the same colour in every figure."""

CLASS_LABELS: dict[str, str] = {
    "crystal": "Crystal",
    "sei_type1": "SEI Type 1",
    "sei_type2": "SEI Type 2",
    "electrolyte": "Electrolyte",
    "unassigned": "Unassigned",
    "uncertain": "Uncertain",
}
"""Class name -> human-readable label."""

_SPARE_COLORS = (
    OKABE_ITO["vermillion"],
    OKABE_ITO["sky_blue"],
    OKABE_ITO["yellow"],
    OKABE_ITO["black"],
)

NAN_COLOR = "#DDDDDD"
"""Light grey for positions without a value (no SRO peak, no class)."""

PEAK_CMAP = "cividis"
BF_CMAP = "gray"
ADF_CMAP = "magma"

Q_LABEL = "SRO peak Q (Å⁻¹)"
INV_A = "Å⁻¹"
NO_PEAK_LABEL = "No SRO peak"


def class_color(name: str, index: int = 0) -> str:
    """Colour of a class: :data:`CLASS_COLORS`, or a spare Okabe-Ito colour for an unknown name."""
    if name in CLASS_COLORS:
        return CLASS_COLORS[name]
    return _SPARE_COLORS[index % len(_SPARE_COLORS)]


def class_label(name: str) -> str:
    """Human-readable class name (:data:`CLASS_LABELS`, else the name with underscores as spaces)."""
    return CLASS_LABELS.get(name, name.replace("_", " ").capitalize())


def _class_colors(class_names: Sequence[str]) -> list[str]:
    spare = 0
    out = []
    for name in class_names:
        if name in CLASS_COLORS:
            out.append(CLASS_COLORS[name])
        else:
            out.append(class_color(name, spare))
            spare += 1
    return out


def _class_cmap(class_names: Sequence[str]) -> tuple[mcolors.ListedColormap, mcolors.BoundaryNorm]:
    """A discrete colour map: class index ``i`` -> colour of ``class_names[i]``; masked -> NAN_COLOR."""
    k = max(len(class_names), 1)
    cols = _class_colors(class_names) or [NAN_COLOR]
    cmap = mcolors.ListedColormap(cols, name="sendmap_classes").with_extremes(
        bad=NAN_COLOR, under=NAN_COLOR, over=NAN_COLOR
    )
    norm = mcolors.BoundaryNorm(np.arange(-0.5, k + 0.5), k)
    return cmap, norm


_GREEK = {"alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ"}


_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _chem(text: str) -> str:
    """'Li2CO3' -> 'Li₂CO₃' (Unicode subscript digits where digits follow an element or bracket);
    'beta-Li3PO4' -> 'β-Li₃PO₄'. Plain text, not mathtext: nothing to parse when drawing, and the
    text stays one run of characters in the PDF."""
    text = re.sub(r"^(alpha|beta|gamma|delta)(?=-)", lambda m: _GREEK[m.group(1)], text)
    return re.sub(r"(?<=[A-Za-z\)\]])(\d+)", lambda m: m.group(1).translate(_SUBSCRIPT), text)


def _superscript(n: int) -> str:
    """7 -> '⁷', -2 -> '⁻²'."""
    return str(int(n)).translate(_SUPERSCRIPT)
