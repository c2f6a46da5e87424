"""Publication figures: pure functions from arrays to :class:`matplotlib.figure.Figure` objects.

Every figure is built on a bare :class:`~matplotlib.figure.Figure` with an Agg canvas (never pyplot's
global figure manager), inside one journal style (:data:`STYLE`: sans-serif 8 pt, thin axes, inward
ticks) and at a journal column width (:data:`SINGLE_COLUMN_IN`, :data:`DOUBLE_COLUMN_IN`). Because
``rcParams`` are process-global, the style is entered under a module lock, so figures may be built from
several threads at once.

Colours are colour-blind safe: classes use the Okabe-Ito palette, fixed per class name
(:data:`CLASS_COLORS`); the SRO peak position map uses ``cividis``; virtual images use ``gray`` (bright
field) and ``magma`` (annular dark field); positions without a value are drawn in a light grey
(:data:`NAN_COLOR`) and named by a swatch beside the colourbar ("No SRO peak").

Every figure carries the electron dose that produced it on its top line (``dose_text``).

Maps are drawn with square pixels (one scan step each) and no ticks, with a round-length scale bar.
There is no layout engine: every figure is laid out in inches from the sizes of its pieces (fonts
have fixed sizes, maps a fixed aspect; titles, tick labels, legends and colourbars are measured once,
without drawing) by :class:`_Sheet`, and its height follows from its maps: side-by-side maps are
equally large, tall scans get their legend beside the map and wide strips are stacked with a
horizontal colourbar. A saved figure is exactly the built one, at any dpi.

:func:`save_figure` writes ``<base>.png`` (300 dpi) and ``<base>.pdf`` (vector), each through a
temporary file in the same folder and :func:`os.replace`, so a file with the final name is never
half written.
"""
from __future__ import annotations

import functools
import io
import math
import os
import re
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.legend_handler import HandlerTuple
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.transforms import ScaledTranslation, blended_transform_factory
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

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
    "scale_bar_length",
    "plot_peak_map",
    "plot_class_map",
    "plot_histograms",
    "plot_class_profiles",
    "plot_virtual_images",
    "plot_overview",
]

# --------------------------------------------------------------------------------------------------
# Style
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# Colours and labels
# --------------------------------------------------------------------------------------------------

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
}
"""Class name -> colour, fixed so a class has the same colour in every figure."""

CLASS_LABELS: dict[str, str] = {
    "crystal": "Crystal",
    "sei_type1": "SEI Type 1",
    "sei_type2": "SEI Type 2",
    "electrolyte": "Electrolyte",
    "unassigned": "Unassigned",
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


# --------------------------------------------------------------------------------------------------
# Layout in inches: every figure is placed from measured sizes, with no layout engine
# --------------------------------------------------------------------------------------------------

PT = 1.0 / 72.0
"""One point, inches."""
PAD_IN = 3 * PT
"""Margin at every edge of a figure, inches."""
GAP_IN = 3 * PT
"""Gap between a map and its legend, and under the dose line, inches."""
CBAR_GAP_IN = 4 * PT
"""Gap between a map and its colourbar, inches."""
CBAR_THICK_IN = 7 * PT
"""Colourbar thickness, inches."""
COL_GAP_IN = 10 * PT
"""Least gap between panels side by side, inches."""
ROW_GAP_IN = 8 * PT
"""Gap between the rows of the overview, inches."""
LETTER_PT = 10.0
"""Font size of panel letters (bold)."""
TITLE_PT = SMALL_PT + 0.5
"""Font size of map titles."""
CBAR_BELOW_LENGTH = 0.55
"""A colourbar below a map spans this fraction of the map's width (from its left)."""

_MEASURERS: list = []


def _measurers() -> list:
    """Agg renderers that measure text and legends (never draw), kept for the process (matplotlib caches
    text metrics per renderer): one at the figure's own dpi and one at :data:`DPI`. Hinting makes text a
    few per cent wider at low dpi, so a size is the larger of the two: it fits at either."""
    if not _MEASURERS:
        from matplotlib.backends.backend_agg import RendererAgg

        _MEASURERS.extend(RendererAgg(1, 1, dpi) for dpi in sorted({float(STYLE["figure.dpi"]), float(DPI)}))
    return _MEASURERS


def _text_in(text: str, size: float, weight: str = "normal") -> tuple[float, float, float]:
    """(width, height, descent) of one line of text, inches, as matplotlib lays it out (a line is at least
    as tall and as deep as 'lp'), in the fonts of the current rc parameters (the journal style: builds run
    inside :func:`style_context`)."""
    rc = matplotlib.rcParams
    return _text_in_fonts(text, float(size), weight, tuple(rc["font.family"]), tuple(rc["font.sans-serif"]))


@functools.lru_cache(maxsize=4096)
def _text_in_fonts(text: str, size: float, weight: str, family: tuple, sans_serif: tuple) -> tuple[float, float, float]:
    prop = FontProperties(size=size, weight=weight)
    out = (0.0, 0.0, 0.0)
    for r in _measurers():
        w, h, d = r.get_text_width_height_descent(text, prop, ismath=False)
        _, lh, ld = r.get_text_width_height_descent("lp", prop, ismath=False)
        k = 1.0 / r.dpi
        out = tuple(max(a, b) for a, b in zip(out, (w * k, max(h, lh) * k, max(d, ld) * k)))
    return out


def _legend_in(legend) -> tuple[float, float]:
    """(width, height) of a legend's box, inches (independent of where it is anchored)."""
    sizes = [(bb.width / r.dpi, bb.height / r.dpi) for r in _measurers() for bb in [legend.get_window_extent(r)]]
    return max(w for w, _ in sizes), max(h for _, h in sizes)


def _tick_labels_in(axis, size: float) -> tuple[float, float, float, float]:
    """(widest, tallest, first, last width) of the major tick labels ``axis`` draws at its current length and
    limits, inches (labels are formatted, not drawn)."""
    lo, hi = sorted(axis.get_view_interval())
    eps = 1e-9 * max(1.0, abs(hi - lo))
    locs = [v for v in axis.get_major_locator()() if lo - eps <= v <= hi + eps]
    labels = [s for s in axis.get_major_formatter().format_ticks(locs) if s] if locs else []
    h0 = _text_in("0", size)[1]
    if not labels:
        return 0.0, h0, 0.0, 0.0
    sizes = [_text_in(s, size)[:2] for s in labels]
    return max(w for w, _ in sizes), max(h for _, h in sizes), sizes[0][0], sizes[-1][0]


def _pad_in(axis_name: str) -> float:
    """Tick-label pad plus any outward tick length of an axis in the journal style, inches."""
    rc = matplotlib.rcParams
    out = rc[f"{axis_name}tick.major.size"] if rc[f"{axis_name}tick.direction"] in ("out", "inout") else 0.0
    return (rc[f"{axis_name}tick.major.pad"] + out) * PT


def _title_band_in(title: str | None) -> float:
    """Height a map title takes above its map (title pad plus the text above its baseline), inches."""
    if not title:
        return 0.0
    _, h, d = _text_in(title, TITLE_PT)
    return matplotlib.rcParams["axes.titlepad"] * PT + (h - d)


def _letter_band_in() -> float:
    """Height of a line of panel letters, inches."""
    return _text_in("a", LETTER_PT, "bold")[1] + 1 * PT


def _caption_band_in(text: str) -> float:
    """Height from the figure's top edge to the top of its content, below the dose line, inches."""
    return PAD_IN + _text_in(text, SMALL_PT)[1] + GAP_IN


def _snap_in(x: float) -> float:
    """Round a figure dimension so that ``x * DPI`` lands on a whole pixel (PNG size = figsize x dpi)."""
    return round(x * DPI) / DPI + 1e-7


class _Sheet:
    """A bare Figure (Agg canvas, never pyplot, no layout engine) whose axes are placed by rectangles in
    inches measured from its top-left corner; :meth:`finish` sets the final height and re-applies them, so a
    piece keeps its size in inches whatever the figure's height."""

    def __init__(self, width_in: float, height_in: float = 4.0):
        self.fig = Figure(figsize=(_snap_in(width_in), _snap_in(height_in)), layout=None)
        FigureCanvasAgg(self.fig)
        self.width = float(self.fig.get_figwidth())
        self._rects: dict = {}

    def axes(self, **kwargs):
        return self.fig.add_axes((0.0, 0.0, 1.0, 1.0), **kwargs)

    def place(self, ax, x: float, top: float, w: float, h: float) -> None:
        """Put ``ax`` at ``x`` inches from the left and ``top`` inches from the top, ``w`` x ``h`` inches."""
        self._rects[ax] = (x, top, max(w, 0.01), max(h, 0.01))
        self._apply(ax)

    def _apply(self, ax) -> None:
        x, top, w, h = self._rects[ax]
        fw, fh = self.fig.get_size_inches()
        ax.set_position((x / fw, (fh - top - h) / fh, w / fw, h / fh))

    def from_top_left(self, x: float, top: float):
        """Transform of the point (0, 1) to ``x`` inches right of and ``top`` inches below the top-left corner."""
        return self.fig.transFigure + ScaledTranslation(x, -top, self.fig.dpi_scale_trans)

    def text(self, x: float, top: float, s: str, **kwargs):
        return self.fig.text(0.0, 1.0, s, transform=self.from_top_left(x, top), **kwargs)

    def finish(self, height_in: float) -> Figure:
        self.fig.set_size_inches(self.width, _snap_in(height_in))
        for ax in self._rects:
            self._apply(ax)
        for ax in self.fig.axes:
            _freeze_ticks(ax)
        if hasattr(Text, "set_fontfeatures"):
            # matplotlib >= 3.11 shapes text with HarfBuzz, which makes 'fi' of 'field' one ligature glyph;
            # its PDF backend puts such a glyph in a second subset of the font, a second fontTools run per
            # file. Without ligatures the letters are drawn as by matplotlib <= 3.10.
            for text in self.fig.findobj(Text):
                text.set_fontfeatures(["-liga"])
        return self.fig


def _offset(ax, x: float, y: float, dx_in: float = 0.0, dy_in: float = 0.0):
    """(point, transform): the axes-fraction point (x, y) moved by (dx_in, dy_in) inches."""
    fig = ax.get_figure(root=True)
    return (x, y), ax.transAxes + ScaledTranslation(dx_in, dy_in, fig.dpi_scale_trans)


def _add_dose_caption(sheet: _Sheet, dose_text: str) -> str:
    """Top line of every figure: the dose that produced the data, small, left aligned. Returns the text."""
    text = str(dose_text).strip() if dose_text is not None else ""
    caption = f"Dose: {text}" if text else "Dose: not recorded"
    sheet.text(PAD_IN, PAD_IN, caption, ha="left", va="top", fontsize=SMALL_PT, color="0.25")
    return caption


def _panel_letter(sheet: _Sheet, x: float, top: float, letter: str) -> None:
    """Bold panel letter with its top-left corner at (x, top) inches."""
    sheet.text(x, top, letter, ha="left", va="top", fontsize=LETTER_PT, fontweight="bold")


def _axes_letter(ax, letter: str) -> None:
    """Panel letter on an axes' top-left, on the line of its title (stacked maps)."""
    ax.set_title(letter, loc="left", fontsize=LETTER_PT, fontweight="bold")


def scale_bar_length(width_nm: float, fraction: float = 0.225) -> float:
    """A round scale-bar length (1-2-5 series; 20/50/100/200/500 nm for usual maps) near
    ``fraction`` of the field width, never longer than half of it."""
    if not (np.isfinite(width_nm) and width_nm > 0):
        raise ValueError(f"scale bar: field width must be a positive number of nm, got {width_nm!r}")
    target = fraction * width_nm
    e0 = math.floor(math.log10(target))  # the 1-2-5 lengths of the decades around the target (any field width)
    candidates = [m * 10.0**e for e in range(e0 - 1, e0 + 2) for m in (1, 2, 5)]
    candidates = [c for c in candidates if c <= 0.5 * width_nm] or [min(candidates)]
    return min(candidates, key=lambda c: abs(math.log(c / target)))


def _length_label(length_nm: float) -> str:
    if length_nm >= 1000:
        return f"{length_nm / 1000:g} µm"
    return f"{length_nm:g} nm"


def _add_scale_bar(ax, width_nm: float, height_nm: float) -> str:
    """Scale bar in the lower right of a map whose data coordinates are nm. Returns its label."""
    length = scale_bar_length(width_nm)
    label = _length_label(length)
    bar = AnchoredSizeBar(
        ax.transData,
        length,
        label,
        loc="lower right",
        pad=0.25,
        borderpad=0.4,
        sep=1.5,
        frameon=True,
        size_vertical=0.015 * min(width_nm, 2.0 * height_nm),
        color="black",
        label_top=True,
        fontproperties=FontProperties(size=SMALL_PT),
    )
    bar.patch.set_facecolor("white")
    bar.patch.set_alpha(0.8)
    bar.patch.set_edgecolor("none")
    bar.set_gid("scale_bar")
    ax.add_artist(bar)
    return label


def _check_step(step_nm: float) -> float:
    step = float(step_nm)
    if not (np.isfinite(step) and step > 0):
        raise ValueError(f"scan step must be a positive number of nm, got {step_nm!r}")
    return step


def _show_map(ax, image: np.ndarray, step_nm: float, title: str | None = None, **imshow_kw):
    """imshow a (Ry, Rx) map with square pixels in nm, no ticks, and a scale bar (the axes is placed later,
    at the map's aspect)."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"a map must be 2-D (Ry, Rx), got shape {image.shape}")
    step = _check_step(step_nm)
    ry, rx = image.shape
    width_nm, height_nm = rx * step, ry * step
    im = ax.imshow(
        image,
        extent=(0.0, width_nm, height_nm, 0.0),
        origin="upper",
        aspect="equal",
        interpolation="nearest",
        **imshow_kw,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_gid("map")
    if title:
        ax.set_title(title, fontsize=TITLE_PT)
    for spine in ax.spines.values():
        spine.set_linewidth(0.4)
    _add_scale_bar(ax, width_nm, height_nm)
    return im


def _map_panel_height(width_in: float, shape: tuple[int, int], extra_in: float, max_map_in: float = MAX_MAP_IN) -> float:
    """Height of one map of ``shape`` drawn ``width_in`` wide (at most ``max_map_in``), plus ``extra_in``."""
    ry, rx = shape
    return min(width_in * ry / max(rx, 1), max_map_in) + extra_in


def _robust_limits(values: np.ndarray, lo_pct: float, hi_pct: float, fallback=(0.0, 1.0)) -> tuple[float, float]:
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return fallback
    lo, hi = np.percentile(finite, [lo_pct, hi_pct])
    if not hi > lo:
        lo, hi = float(finite.min()), float(finite.max())
    if not hi > lo:
        pad = abs(lo) * 0.01 or 0.01
        lo, hi = lo - pad, hi + pad
    return float(lo), float(hi)


def _fit_map(shape: tuple[int, int], max_w: float, max_h: float) -> tuple[float, float]:
    """(width, height) in inches of a map of ``shape`` (square pixels) as large as fits in max_w x max_h."""
    ry, rx = shape
    aspect = ry / max(rx, 1)  # height / width
    w = max(max_w, 0.05)
    h = w * aspect
    if h > max_h:
        h = max(max_h, 0.05)
        w = h / aspect
    return w, h


# --------------------------------------------------------------------------------------------------
# Map panels: a map axes and what hangs off it, with the room each piece needs (inches)
# --------------------------------------------------------------------------------------------------


class _MapPanel:
    """A map and its decorations. ``above`` (title band), ``right`` (legend or colourbar column right of
    the map) and ``below`` (legend or colourbar under it) are the room they need, in inches;
    ``overhang`` is how far the title reaches beyond each side of a map ``w`` wide. :meth:`place` puts the
    map (and its colourbar) at its final rectangle."""

    def __init__(self, sheet: _Sheet, ax, title: str | None):
        self.sheet, self.ax, self.title = sheet, ax, title
        self.above = _title_band_in(title)
        self.right = 0.0
        self.below = 0.0
        self._title_w = _text_in(title, TITLE_PT)[0] if title else 0.0

    def overhang(self, w: float) -> float:
        return max(0.0, 0.5 * (self._title_w - w))

    def place(self, x: float, top: float, w: float, h: float, x_min: float, x_max: float) -> None:
        """Map at (x, top), w x h inches; its decorations stay within [x_min, x_max]."""
        self.sheet.place(self.ax, x, top, w, h)


class _ClassMapPanel(_MapPanel):
    def __init__(self, sheet, class_map, class_names, step_nm, title=None, legend_where="below"):
        class_map = np.asarray(class_map)
        if class_map.ndim != 2:
            raise ValueError(f"class map must be 2-D (Ry, Rx), got shape {class_map.shape}")
        names = list(class_names)
        k = len(names)
        valid = (class_map >= 0) & (class_map < k)
        data = np.ma.masked_array(np.where(valid, class_map, 0).astype(float), mask=~valid)
        cmap, norm = _class_cmap(names)
        super().__init__(sheet, sheet.axes(), title)
        self.im = _show_map(self.ax, data, step_nm, title=title, cmap=cmap, norm=norm)
        colors = _class_colors(names)
        counts = np.bincount(np.where(valid, class_map, k).ravel().astype(np.int64), minlength=k + 1)
        self.handles = [
            Patch(facecolor=colors[i], edgecolor="0.3", linewidth=0.3, label=f"{class_label(name)} (n = {int(counts[i])})")
            for i, name in enumerate(names)
            if counts[i]
        ]
        n_bad = int(np.count_nonzero(~valid))
        if n_bad:
            self.handles.append(Patch(facecolor=NAN_COLOR, edgecolor="0.6", linewidth=0.4, label=f"No class (n = {n_bad})"))
        self.where = legend_where
        self.legend = None
        self.legend_size = (0.0, 0.0)
        if self.handles and legend_where == "right":
            self._make_legend(1)
            self.right = GAP_IN + self.legend_size[0]

    _common = dict(borderaxespad=0.0, handlelength=1.0, handleheight=1.0, columnspacing=0.8, handletextpad=0.35,
                   borderpad=0.15, loc="upper left")

    def _make_legend(self, ncols: int):
        if self.legend is not None:
            self.legend.remove()
        self.legend = self.ax.legend(handles=self.handles, ncols=ncols, **self._common)
        self.legend_size = _legend_in(self.legend)

    def fit_below(self, max_width_in: float, max_cols: int = 3) -> None:
        """Legend under the map in as many columns (up to ``max_cols``) as fit in ``max_width_in``."""
        if not self.handles or self.where != "below":
            return
        for ncols in range(max(1, min(max_cols, len(self.handles))), 0, -1):
            self._make_legend(ncols)
            if ncols == 1 or self.legend_size[0] <= max_width_in:
                break
        self.below = GAP_IN + self.legend_size[1]

    def place(self, x, top, w, h, x_min, x_max):
        super().place(x, top, w, h, x_min, x_max)
        if self.legend is None:
            return
        if self.where == "right":
            self.legend.set_bbox_to_anchor(*_offset(self.ax, 1.0, 1.0, GAP_IN, 0.0))
        else:
            self.legend.set_bbox_to_anchor(*_offset(self.ax, 0.0, 0.0, 0.0, -GAP_IN))


class _PeakMapPanel(_MapPanel):
    def __init__(self, sheet, peak_q, step_nm, vmin=None, vmax=None, title=None, cbar_where="right",
                 est_length_in: float = 2.0):
        peak_q = np.asarray(peak_q, dtype=float)
        super().__init__(sheet, sheet.axes(), title)
        auto_lo, auto_hi = _robust_limits(peak_q, 1, 99, fallback=(0.25, 0.40))
        lo = auto_lo if vmin is None else float(vmin)
        hi = auto_hi if vmax is None else float(vmax)
        if not hi > lo:
            hi = lo + 1e-3
        finite = peak_q[np.isfinite(peak_q)]
        below = finite.size and finite.min() < lo
        above = finite.size and finite.max() > hi
        extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
            (bool(below), bool(above))
        ]
        cmap = matplotlib.colormaps[PEAK_CMAP].with_extremes(bad=NAN_COLOR)
        self.im = _show_map(self.ax, np.ma.masked_invalid(peak_q), step_nm, title=title, cmap=cmap, vmin=lo, vmax=hi)
        self.where = cbar_where
        # NaN note: a light-grey swatch "No SRO peak" at the foot of the colourbar column (colourbar right)
        # or right of the colourbar (colourbar below)
        self.swatch = None
        self.swatch_size = (0.0, 0.0)
        if np.count_nonzero(~np.isfinite(peak_q)):
            patch = Patch(facecolor=NAN_COLOR, edgecolor="0.5", linewidth=0.4, label=NO_PEAK_LABEL)
            self.swatch = self.ax.legend(handles=[patch], borderpad=0.0, borderaxespad=0.0, handlelength=1.0,
                                         handleheight=1.0, handletextpad=0.4,
                                         loc="lower left" if cbar_where == "right" else "upper left")
            self.swatch_size = _legend_in(self.swatch)
        self.cax = sheet.axes()
        horizontal = cbar_where == "below"
        if horizontal:
            sheet.place(self.cax, 0.0, 0.0, CBAR_BELOW_LENGTH * est_length_in, CBAR_THICK_IN)
        else:
            sheet.place(self.cax, 0.0, 0.0, CBAR_THICK_IN, est_length_in)
        self.cbar = sheet.fig.colorbar(self.im, cax=self.cax, extend=extend, extendfrac=0.04,
                                       orientation="horizontal" if horizontal else "vertical")
        self.cbar.formatter.set_useOffset(False)  # every label complete: nothing placed beside the bar
        self.cbar.set_label(Q_LABEL)
        self.cbar.ax.tick_params(labelsize=SMALL_PT, width=0.5, length=2.0)
        self.cbar.outline.set_linewidth(0.5)
        self._measure()

    def _measure(self) -> None:
        """Room the colourbar needs at its current length (tick labels depend on it)."""
        label_h = _text_in(Q_LABEL, matplotlib.rcParams["axes.labelsize"])[1]
        labelpad = matplotlib.rcParams["axes.labelpad"] * PT
        axis = self.cbar.ax.xaxis if self.where == "below" else self.cbar.ax.yaxis
        tw, th, first_w, last_w = _tick_labels_in(axis, SMALL_PT)
        self.tick = (tw, th, first_w, last_w)
        if self.where == "below":
            self.below = CBAR_GAP_IN + CBAR_THICK_IN + _pad_in("x") + th + labelpad + label_h
            self.below = max(self.below, CBAR_GAP_IN + self.swatch_size[1])
            self.right = 0.0
        else:
            column = CBAR_THICK_IN + _pad_in("y") + tw + labelpad + label_h
            self.right = CBAR_GAP_IN + max(column, self.swatch_size[0])
            # the lowest tick label reaches half its height below the bar's foot
            foot = (self.swatch_size[1] + CBAR_GAP_IN) if self.swatch is not None else 0.0
            self.below = max(0.0, 0.5 * th - foot)

    def place(self, x, top, w, h, x_min, x_max):
        super().place(x, top, w, h, x_min, x_max)
        tw, th, first_w, last_w = self.tick
        if self.where == "below":
            # the end labels reach half their width beyond the bar: keep them inside [x_min, x_max]
            x0 = max(x, x_min + 0.5 * first_w)
            length = CBAR_BELOW_LENGTH * w
            if self.swatch is not None:
                sx = min(x + 0.62 * w, x_max - self.swatch_size[0])
                length = min(length, sx - x0 - 0.5 * last_w - GAP_IN)
                self.swatch.set_bbox_to_anchor(*_offset(self.ax, 0.0, 0.0, sx - x, -CBAR_GAP_IN))
            length = min(length, x_max - 0.5 * last_w - x0)
            self.sheet.place(self.cax, x0, top + h + CBAR_GAP_IN, max(length, 0.3), CBAR_THICK_IN)
        else:
            foot = (self.swatch_size[1] + CBAR_GAP_IN) if self.swatch is not None else 0.0
            # a title wider than the map reaches over the colourbar column: start the bar under it
            head = 0.5 * th if self.overhang(w) > CBAR_GAP_IN else 0.0
            self.sheet.place(self.cax, x + w + CBAR_GAP_IN, top + head, CBAR_THICK_IN, max(h - foot - head, 0.2))
            if self.swatch is not None:
                self.swatch.set_bbox_to_anchor(*_offset(self.ax, 1.0, 0.0, CBAR_GAP_IN, 0.0))

    def remeasure(self) -> bool:
        """Measure again at the placed length; True if the colourbar now needs more room than was left."""
        right, below = self.right, self.below
        self._measure()
        return self.right > right + 0.5 * PT or self.below > below + 0.5 * PT


class _ImagePanel(_MapPanel):
    def __init__(self, sheet, image, step_nm, cmap: str, title: str):
        super().__init__(sheet, sheet.axes(), title)
        image = np.asarray(image, dtype=float)
        lo, hi = _robust_limits(image, 0.5, 99.5)
        cm = matplotlib.colormaps[cmap].with_extremes(bad=NAN_COLOR)
        self.im = _show_map(self.ax, np.ma.masked_invalid(image), step_nm, title=title, cmap=cm, vmin=lo, vmax=hi)


# --------------------------------------------------------------------------------------------------
# Plot panels: histograms and profiles, drawn into a rectangle (inches) that includes their labels
# --------------------------------------------------------------------------------------------------


def _histogram_classes(peak_q, class_map, class_names, fits) -> list[tuple[int, str, np.ndarray]]:
    """(index, name, finite peak positions) for each amorphous class worth a histogram."""
    out = []
    for i, name in enumerate(class_names):
        if name == "crystal":
            continue
        if name == "unassigned" and name not in fits:
            continue
        vals = peak_q[(class_map == i) & np.isfinite(peak_q)]
        if vals.size:
            out.append((i, name, vals))
    return out


def _hist_bins(values: Sequence[np.ndarray], bin_width: float, max_bins: int = 2000) -> np.ndarray:
    allv = np.concatenate(values)
    lo = math.floor(allv.min() / bin_width) * bin_width
    hi = math.ceil(allv.max() / bin_width) * bin_width
    if hi <= allv.max():
        hi += bin_width
    n = int(round((hi - lo) / bin_width))
    if n > max_bins:
        return np.linspace(lo, hi, max_bins + 1)
    return lo + bin_width * np.arange(n + 1)


def _fit_label(name: str, fit: Mapping | None, n_default: int) -> tuple[str, float | None, float | None, int]:
    label = class_label(name)
    mu = sigma = None
    count = n_default
    if fit:
        mu = fit.get("mu")
        sigma = fit.get("sigma")
        if fit.get("count") is not None:
            count = int(fit["count"])
    ok = mu is not None and sigma is not None and np.isfinite(mu) and np.isfinite(sigma) and sigma > 0
    if ok:
        return f"{label}: μ = {mu:.3f}, σ = {sigma:.3f} {INV_A} (n = {count})", float(mu), float(sigma), count
    return f"{label} (n = {count})", None, None, count


def _freeze_ticks(ax) -> None:
    """Fix the ticks of ``ax`` as they are now, in the journal style, with its final size and limits: major
    positions (a FixedLocator: the tick count no longer follows the rc font size at draw time), the Tick
    artists themselves (matplotlib makes them lazily, taking size, direction and label size from the rc
    parameters of the moment: made here, inside :func:`style_context`, a figure draws the same anywhere),
    and the minor ticks as marks (:func:`_minor_tick_marks`)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    for axis in (ax.xaxis, ax.yaxis):
        if isinstance(axis.get_major_locator(), NullLocator):
            continue
        locs = np.asarray(axis.get_majorticklocs(), dtype=float)
        if not isinstance(axis.get_major_locator(), FixedLocator):
            axis.set_major_locator(FixedLocator(locs))
        lo, hi = sorted(axis.get_view_interval())
        eps = 1e-9 * max(1.0, abs(hi - lo))
        n = int(np.count_nonzero((locs >= lo - eps) & (locs <= hi + eps)))
        if n:
            axis.get_major_ticks(n)
    _minor_tick_marks(ax)


def _minor_tick_marks(ax) -> None:
    """Draw the minor ticks of ``ax`` as one marker line per side of the axes instead of one Tick per mark
    (a Tick is two lines and two texts, made, updated and laid out at every draw; the histograms and
    profiles have ~40 minor ticks per axis and side). The marks are matplotlib's own: positions from the
    axis's minor locator (less those on major ticks, within the limits), and marker, size, width, colour,
    sides and transforms of the axis's own minor tick. Call once limits and size are final."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullLocator

    for axis in (ax.xaxis, ax.yaxis):
        if isinstance(axis.get_minor_locator(), NullLocator):
            continue
        lo, hi = sorted(axis.get_view_interval())
        eps = 1e-9 * max(1.0, abs(hi - lo))
        locs = np.asarray(axis.get_minorticklocs(), dtype=float)
        locs = locs[(locs >= lo - eps) & (locs <= hi + eps)]
        tick = axis.get_minor_ticks(1)[0]  # the style matplotlib would give each minor tick
        axis.set_minor_locator(NullLocator())
        horizontal = axis is ax.xaxis
        for mark, which, at in ((tick.tick1line, "tick1", 0.0), (tick.tick2line, "tick2", 1.0)):
            if not (mark.get_visible() and locs.size):
                continue
            other = np.full(locs.shape, at)
            transform = (ax.get_xaxis_transform(which=which) if horizontal
                         else ax.get_yaxis_transform(which=which))
            ax.add_artist(Line2D(
                locs if horizontal else other, other if horizontal else locs, transform=transform,
                linestyle="none", marker=mark.get_marker(), markersize=mark.get_markersize(),
                markeredgewidth=mark.get_markeredgewidth(), markeredgecolor=mark.get_markeredgecolor(),
                markerfacecolor=mark.get_markerfacecolor(), zorder=axis.get_zorder(), clip_on=False,
                gid=f"minor_ticks_{axis.axis_name}",
            ))


def _first_tick(axis) -> float | None:
    lo, hi = sorted(axis.get_view_interval())
    eps = 1e-9 * max(1.0, abs(hi - lo))
    locs = [v for v in axis.get_major_locator()() if lo - eps <= v <= hi + eps]
    return min(locs) if locs else None


def _corner_clash(sheet: _Sheet, ax, x_pad: float) -> bool:
    """Would the first x tick label (centred under its tick) run into the y tick label at the axes' bottom
    left corner? They meet where ticks fall on (or next to) both lower limits."""
    rc = matplotlib.rcParams
    _, _, w, h = sheet._rects[ax]
    fx, fy = _first_tick(ax.xaxis), _first_tick(ax.yaxis)
    if fx is None or fy is None:
        return False
    (xlo, xhi), (ylo, yhi) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    dx = (fx - xlo) / (xhi - xlo) * w  # inches right of the corner
    dy = (fy - ylo) / (yhi - ylo) * h  # inches above it
    first_w = _tick_labels_in(ax.xaxis, rc["xtick.labelsize"])[2]
    tick_h = _text_in("0", rc["ytick.labelsize"])[1]
    return dx - 0.5 * first_w < -_pad_in("y") and dy - 0.5 * tick_h < -x_pad


def _place_plot(sheet: _Sheet, ax, x: float, top: float, w: float, h: float, y_ticklabels: bool = True,
                right_in: float = 0.0, x_pad_pt: float | None = None) -> float:
    """Place a plot axes (x label and tick labels below, y label left, ticks inward) so that it and its
    labels fill the rectangle (x, top, w, h) inches; ``right_in`` is kept free right of the axes. Where
    the first x and y tick labels would meet at the bottom left corner, the x tick labels are set lower
    (pad) - unless ``x_pad_pt`` gives their pad. Returns the pad, points."""
    rc = matplotlib.rcParams
    labelpad = rc["axes.labelpad"] * PT
    tick_h = _text_in("0", rc["xtick.labelsize"])[1]
    xlabel_h = _text_in(ax.get_xlabel() or "0", rc["axes.labelsize"])[1]
    ylabel_h = _text_in(ax.get_ylabel() or "0", rc["axes.labelsize"])[1]
    head = 0.5 * tick_h if y_ticklabels else 1 * PT  # the top y tick label reaches half its height above
    pad_pt = rc["xtick.major.pad"] if x_pad_pt is None else x_pad_pt
    out = _pad_in("x") - rc["xtick.major.pad"] * PT  # any outward tick length
    # placed at a guessed width first: the tick labels depend on the axes' size
    left = ylabel_h + labelpad + (_pad_in("y") + 4 * tick_h if y_ticklabels else 1 * PT)
    right = max(right_in, 1 * PT)
    for attempt in range(3):
        ax_h = h - head - (pad_pt * PT + out + tick_h + labelpad + xlabel_h)
        for _ in range(2):
            sheet.place(ax, x + left, top + head, w - left - right, ax_h)
            ytw = _tick_labels_in(ax.yaxis, rc["ytick.labelsize"])[0] if y_ticklabels else 0.0
            left = ylabel_h + labelpad + (_pad_in("y") + ytw if y_ticklabels else 1 * PT)
            last_w = _tick_labels_in(ax.xaxis, rc["xtick.labelsize"])[3]
            right = max(right_in, 0.5 * last_w + 1 * PT)  # the last x tick label reaches half its width beyond
        sheet.place(ax, x + left, top + head, w - left - right, ax_h)
        if attempt or x_pad_pt is not None or not y_ticklabels or not _corner_clash(sheet, ax, pad_pt * PT + out):
            break
        pad_pt = max(pad_pt, 0.5 * tick_h / PT + 1.0)  # x tick labels' tops below the corner y label
    if pad_pt != rc["xtick.major.pad"]:
        ax.tick_params(axis="x", which="major", pad=pad_pt)
    return pad_pt


def _draw_histograms(sheet: _Sheet, rect: tuple[float, float, float, float], peak_q, class_map, class_names,
                     fits, bin_width):
    peak_q = np.asarray(peak_q, dtype=float)
    class_map = np.asarray(class_map)
    if peak_q.shape != class_map.shape:
        raise ValueError(f"peak map {peak_q.shape} and class map {class_map.shape} differ in shape")
    if not (np.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"bin_width must be positive, got {bin_width!r}")
    fits = dict(fits or {})
    ax = sheet.axes()
    ax.set_xlabel(Q_LABEL)
    ax.set_ylabel("Count per bin")
    ax.minorticks_on()
    groups = _histogram_classes(peak_q, class_map, list(class_names), fits)
    if not groups:
        ax.text(0.5, 0.5, "No SRO peaks in amorphous classes", transform=ax.transAxes, ha="center", va="center",
                fontsize=SMALL_PT, color="0.4")
        _place_plot(sheet, ax, *rect)
        return ax
    colors = _class_colors(list(class_names))
    bins = _hist_bins([g[2] for g in groups], bin_width)
    bw = float(bins[1] - bins[0])
    xfine = np.linspace(bins[0], bins[-1], 600)
    handles = []
    ymax = 0.0
    for i, name, vals in groups:
        col = colors[i]
        counts, _ = np.histogram(vals, bins=bins)
        ymax = max(ymax, counts.max())
        ax.stairs(counts, bins, fill=True, color=col, alpha=0.3, linewidth=0)
        ax.stairs(counts, bins, fill=False, color=col, linewidth=0.7)
        label, mu, sigma, count = _fit_label(name, fits.get(name), int(vals.size))
        line = None
        if mu is not None:
            amp = fits[name].get("amplitude")
            if amp is None or not np.isfinite(amp):
                amp = count * bw / (sigma * math.sqrt(2 * math.pi))
            curve = float(amp) * np.exp(-0.5 * ((xfine - mu) / sigma) ** 2)
            ymax = max(ymax, curve.max())
            (line,) = ax.plot(xfine, curve, color=col, linewidth=1.1)
        handles.append(
            (Patch(facecolor=mcolors.to_rgba(col, 0.3), edgecolor=col, linewidth=0.7), line, label)
        )
    ax.set_xlim(bins[0], bins[-1])
    # one legend entry per class: filled patch (histogram) with the fit line on top
    legend_handles = [(p, ln) if ln is not None else p for p, ln, _ in handles]
    legend = ax.legend(
        legend_handles,
        [lbl for *_, lbl in handles],
        handler_map={tuple: HandlerTuple(ndivide=1)},
        loc="upper left",
        borderaxespad=0.4,
        ncols=1,
        handlelength=1.6,
    )
    # the y limit leaves the legend (inside, upper left) clear of the bars and curves: set from the height
    # of the placed axes, then placed again (the y tick labels, hence the width, follow the limit)
    ax.set_ylim(0, ymax * 1.08 if ymax > 0 else 1)
    pad = _place_plot(sheet, ax, *rect)
    ax_h = sheet._rects[ax][3]
    legend_h = _legend_in(legend)[1] + 0.4 * legend.prop.get_size_in_points() * PT
    frac = max(1.0 - legend_h / max(ax_h, 0.1) - 0.04, 0.35)  # legend bottom, axes fraction, less a margin
    ax.set_ylim(0, max(ymax * 1.08, ymax / frac) if ymax > 0 else 1)
    _place_plot(sheet, ax, *rect, x_pad_pt=pad)
    return ax


def _normalise_profile(q, y, q_range) -> float:
    sel = (q >= q_range[0]) & (q <= q_range[1]) & np.isfinite(y)
    if not sel.any():
        sel = np.isfinite(y)
    m = float(np.max(y[sel])) if sel.any() else 1.0
    return m if np.isfinite(m) and m > 0 else 1.0


def _draw_profiles(sheet: _Sheet, rect: tuple[float, float, float, float], q, profiles, n, reference_ticks=None,
                   sem=None, window=None, q_range=(0.2, 1.0)):
    q = np.asarray(q, dtype=float)
    ax = sheet.axes()
    names = list(profiles)
    qlo = max(float(np.nanmin(q)), q_range[0]) if q.size else q_range[0]
    qhi = min(float(np.nanmax(q)), q_range[1]) if q.size else q_range[1]
    if not qhi > qlo:
        qlo, qhi = float(np.nanmin(q)), float(np.nanmax(q))
    # names at the right of the axes (classes and phases): the axes leaves room for the longest
    label_gap = 0.015  # axes fraction between the axes and the names
    phase_labels = [_chem(str(p)) for p in (reference_ticks or {})]
    names_w = max([_text_in(class_label(nm), SMALL_PT)[0] for nm in names]
                  + [_text_in(p, SMALL_PT)[0] for p in phase_labels] + [0.0])
    x, top, w, h = rect
    ax.set_xlabel(f"Q ({INV_A})")
    ax.set_ylabel(f"I·Q{_superscript(n)} (norm.)")
    ylabel_h = _text_in(ax.get_ylabel(), matplotlib.rcParams["axes.labelsize"])[1]
    axes_w = (w - ylabel_h - matplotlib.rcParams["axes.labelpad"] * PT - 1 * PT - names_w - 1 * PT) / (1 + label_gap)
    right_in = names_w + label_gap * axes_w + 1 * PT
    step = 0.65  # vertical offset between normalised curves
    right = blended_transform_factory(ax.transAxes, ax.transData)
    inside = (q >= qlo) & (q <= qhi)
    ytop = 0.0
    colors = _class_colors(names)
    for k, name in enumerate(names):
        y = np.asarray(profiles[name], dtype=float)
        if y.shape != q.shape:
            raise ValueError(f"profile {name!r} has shape {y.shape}, q has {q.shape}")
        scale = _normalise_profile(q, y, (qlo, qhi))
        off = (len(names) - 1 - k) * step  # first class on top
        col = colors[k]
        yn = y / scale + off
        if sem is not None and name in sem:
            s = np.asarray(sem[name], dtype=float) / scale
            ax.fill_between(q, yn - s, yn + s, color=col, alpha=0.3, linewidth=0)
        ax.plot(q, yn, color=col, linewidth=1.0)
        vis = yn[inside & np.isfinite(yn)]
        if vis.size:
            ytop = max(ytop, float(vis.max()))
            y_end = float(vis[-1])
        else:
            y_end = off
        ax.text(1 + label_gap, y_end, class_label(name), transform=right, color=col, fontsize=SMALL_PT,
                ha="left", va="center", clip_on=False)
    ybottom = 0.0
    # width of one hkl character in Q units
    q_per_char = 0.6 * HKL_PT / 72.0 * (qhi - qlo) / max(axes_w, 0.5)
    if reference_ticks:
        row_h = 0.32
        for r, ((phase, ticks), plabel) in enumerate(zip(reference_ticks.items(), phase_labels)):
            yr = -(r + 0.75) * row_h
            ybottom = yr - 0.55 * row_h
            qs = [(float(t[0]), str(t[1]) if len(t) > 1 else "") for t in ticks if qlo <= float(t[0]) <= qhi]
            if qs:
                ax.vlines([t[0] for t in qs], yr - 0.1, yr + 0.1, color="0.2", linewidth=0.7)
            # hkl above its tick where it does not collide with the previous label
            last_q, last_len = -np.inf, 0
            for qq, hkl in sorted(qs):
                fits_in = qlo + 0.5 * len(hkl) * q_per_char <= qq <= qhi - 0.5 * len(hkl) * q_per_char
                if hkl and fits_in and qq - last_q >= (0.5 * (len(hkl) + last_len) + 1.0) * q_per_char:
                    ax.text(qq, yr + 0.12, hkl, ha="center", va="bottom", fontsize=HKL_PT, color="0.35")
                    last_q, last_len = qq, len(hkl)
            ax.text(1 + label_gap, yr, plabel, transform=right, fontsize=SMALL_PT, ha="left", va="center",
                    color="0.2", clip_on=False)
        ax.axhline(0.0 - 0.1 * row_h, color="0.7", linewidth=0.4)
    y_max = ytop + (0.3 if window is not None else 0.15)  # headroom for the window label
    if window is not None:
        w0, w1 = float(window[0]), float(window[1])
        y_band = -0.1 * 0.32 if reference_ticks else ybottom - 0.05  # the band covers the curves, not the tick rows
        ax.fill_between([w0, w1], y_band, y_max, color="0.91", zorder=0, linewidth=0)
        ax.text(0.5 * (w0 + w1), y_max - 0.04, "peak window", ha="center", va="top", fontsize=5.0, color="0.4")
    ax.set_xlim(qlo, qhi)
    ax.set_ylim(ybottom - 0.05, y_max)
    ax.set_yticks([])
    ax.minorticks_on()
    ax.tick_params(axis="y", which="both", left=False, right=False)
    _place_plot(sheet, ax, x, top, w, h, y_ticklabels=False, right_in=right_in)
    return ax


# --------------------------------------------------------------------------------------------------
# Public figures
# --------------------------------------------------------------------------------------------------


def _single_map_figure(sheet: _Sheet, panel: _MapPanel, shape, top: float, max_map_in: float) -> Figure:
    """Lay out one map panel under the dose line of a single-column figure: the map as large as the width
    (less the room right of it) and ``max_map_in`` allow, the map and its right column centred."""
    avail = sheet.width - 2 * PAD_IN
    for _ in range(2):  # a colourbar's tick labels depend on its length: measure again once placed
        w, h = _fit_map(shape, avail - panel.right, max_map_in)
        if isinstance(panel, _ClassMapPanel):
            panel.fit_below(avail)
        x = PAD_IN + max(0.0, 0.5 * (avail - w - panel.right))
        x = max(x, PAD_IN + panel.overhang(w))
        panel.place(x, top + panel.above, w, h, 1 * PT, sheet.width - 1 * PT)
        if not (isinstance(panel, _PeakMapPanel) and panel.remeasure()):
            break
    return sheet.finish(top + panel.above + h + panel.below + PAD_IN)


@_styled
def plot_peak_map(peak_q: np.ndarray, step_nm: float, dose_text: str, vmin=None, vmax=None) -> Figure:
    """Map of the first SRO peak position (1/Å), NaN (light grey) where there is no peak; single
    column. Colour limits default to the 1st-99th percentile of the finite values."""
    peak_q = np.asarray(peak_q, dtype=float)
    if peak_q.ndim != 2:
        raise ValueError(f"peak map must be 2-D (Ry, Rx), got shape {peak_q.shape}")
    w = SINGLE_COLUMN_IN
    ry, rx = peak_q.shape
    cbar_where = "right" if (w - 0.8) * ry / max(rx, 1) >= MIN_CBAR_RIGHT_IN else "below"
    est = _map_panel_height(w - 0.8, peak_q.shape, 0.0) if cbar_where == "right" else w
    sheet = _Sheet(w)
    caption = _add_dose_caption(sheet, dose_text)
    panel = _PeakMapPanel(sheet, peak_q, step_nm, vmin=vmin, vmax=vmax, cbar_where=cbar_where, est_length_in=est)
    return _single_map_figure(sheet, panel, peak_q.shape, _caption_band_in(caption), MAX_MAP_IN)


@_styled
def plot_class_map(class_map: np.ndarray, class_names: Sequence[str], step_nm: float, dose_text: str) -> Figure:
    """Map of the class of every probe position (index into ``class_names``), legend of class names
    and counts; single column. Indices outside ``class_names`` are drawn light grey ("No class")."""
    class_map = np.asarray(class_map)
    if class_map.ndim != 2:
        raise ValueError(f"class map must be 2-D (Ry, Rx), got shape {class_map.shape}")
    w = SINGLE_COLUMN_IN
    ry, rx = class_map.shape
    tall = (w - 0.1) * ry / max(rx, 1) > MAX_MAP_IN  # height-limited: legend to the right of the map
    sheet = _Sheet(w)
    caption = _add_dose_caption(sheet, dose_text)
    panel = _ClassMapPanel(sheet, class_map, class_names, step_nm, legend_where="right" if tall else "below")
    return _single_map_figure(sheet, panel, class_map.shape, _caption_band_in(caption), MAX_MAP_IN)


@_styled
def plot_histograms(
    peak_q: np.ndarray,
    class_map: np.ndarray,
    class_names: Sequence[str],
    fits: Mapping[str, Mapping],
    dose_text: str,
    bin_width: float = 0.0025,
) -> Figure:
    """Histograms of the SRO peak position per amorphous class with their Gaussian fits; single column.

    ``fits[name]`` holds ``mu``, ``sigma`` (1/Å) and ``count``; the fit curve is drawn as
    ``count * bin_width * N(mu, sigma)`` (counts per bin), unless ``amplitude`` (peak height in
    counts per bin) is given. 'crystal' is never plotted, 'unassigned' only when it has a fit, and
    classes without finite peaks are skipped.
    """
    height = 2.5
    sheet = _Sheet(SINGLE_COLUMN_IN, height)
    top = _caption_band_in(_add_dose_caption(sheet, dose_text))
    _draw_histograms(sheet, (PAD_IN, top, sheet.width - 2 * PAD_IN, height - top - PAD_IN), peak_q, class_map,
                     class_names, fits, bin_width)
    return sheet.finish(height)


@_styled
def plot_class_profiles(
    q: np.ndarray,
    profiles: Mapping[str, np.ndarray],
    n: int,
    dose_text: str,
    reference_ticks: Mapping[str, Sequence[tuple[float, str]]] | None = None,
    sem: Mapping[str, np.ndarray] | None = None,
    window: Sequence[float] | None = None,
    q_range: tuple[float, float] = (0.2, 1.0),
) -> Figure:
    """Class-mean I·Q^n profiles, each divided by its maximum in ``q_range`` and offset vertically
    (first class on top), ±sem bands, reference ring positions as tick rows per phase (names at the
    right, hkl above the ticks where there is room), and the peak search window shaded; single column."""
    n_ref = len(reference_ticks or {})
    height = 2.2 + 0.3 * max(0, len(profiles) - 3) + 0.2 * n_ref
    sheet = _Sheet(SINGLE_COLUMN_IN, height)
    top = _caption_band_in(_add_dose_caption(sheet, dose_text))
    _draw_profiles(sheet, (PAD_IN, top, sheet.width - 2 * PAD_IN, height - top - PAD_IN), q, profiles, n,
                   reference_ticks=reference_ticks, sem=sem, window=window, q_range=q_range)
    return sheet.finish(height)


@_styled
def plot_virtual_images(bf: np.ndarray, adf: np.ndarray, step_nm: float, dose_text: str) -> Figure:
    """Virtual bright-field (gray) and annular dark-field (magma) images side by side, each with a
    scale bar; contrast from the 0.5-99.5th percentiles; single column. Wide scans are stacked."""
    bf = np.asarray(bf, dtype=float)
    adf = np.asarray(adf, dtype=float)
    if bf.ndim != 2 or adf.ndim != 2:
        raise ValueError(f"virtual images must be 2-D, got {bf.shape} and {adf.shape}")
    if bf.shape != adf.shape:
        raise ValueError(f"virtual images differ in shape: {bf.shape} and {adf.shape}")
    sheet = _Sheet(SINGLE_COLUMN_IN)
    top = _caption_band_in(_add_dose_caption(sheet, dose_text))
    panels = [_ImagePanel(sheet, bf, step_nm, BF_CMAP, "Virtual bright field"),
              _ImagePanel(sheet, adf, step_nm, ADF_CMAP, "Virtual annular dark field")]
    ry, rx = bf.shape
    avail = sheet.width - 2 * PAD_IN
    band = max(p.above for p in panels)
    if rx / max(ry, 1) <= 1.6:  # side by side, each centred in its half
        col = 0.5 * (avail - COL_GAP_IN)
        w, h = _fit_map(bf.shape, col, MAX_MAP_IN)
        for i, p in enumerate(panels):
            x0 = PAD_IN + i * (col + COL_GAP_IN)
            p.place(x0 + 0.5 * (col - w), top + band, w, h, x0, x0 + col)
        bottom = top + band + h
    else:  # wide scans: one above the other
        w, h = _fit_map(bf.shape, avail, MAX_MAP_IN / 2)
        x0 = PAD_IN + 0.5 * (avail - w)
        y = top
        for p in panels:
            p.place(x0, y + band, w, h, PAD_IN, sheet.width - PAD_IN)
            y += band + h + GAP_IN
        bottom = y - GAP_IN
    return sheet.finish(bottom + PAD_IN)


@_styled
def plot_overview(
    peak_q: np.ndarray,
    class_map: np.ndarray,
    class_names: Sequence[str],
    q: np.ndarray,
    profiles: Mapping[str, np.ndarray],
    fits: Mapping[str, Mapping],
    n: int,
    step_nm: float,
    dose_text: str,
    bf: np.ndarray | None = None,
    reference_ticks: Mapping[str, Sequence[tuple[float, str]]] | None = None,
    *,
    sem: Mapping[str, np.ndarray] | None = None,
    window: Sequence[float] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    bin_width: float = 0.0025,
) -> Figure:
    """Double-column paper figure: (a) class map, (b) SRO peak map, (c) histograms with fits,
    (d) class-mean profiles. With ``bf``, a virtual bright-field image leads the top row and the
    panels are lettered a-e. Maps in the top row are drawn at the same size."""
    peak_q = np.asarray(peak_q, dtype=float)
    if peak_q.ndim != 2:
        raise ValueError(f"peak map must be 2-D (Ry, Rx), got shape {peak_q.shape}")
    ry, rx = peak_q.shape
    aspect = rx / max(ry, 1)  # width / height of a map
    n_top = 3 if bf is not None else 2
    W = DOUBLE_COLUMN_IN
    side_w = (W - 0.7) / n_top  # map width with the maps side by side
    stacked = side_w / aspect < MIN_SIDE_BY_SIDE_IN  # wide strips: maps one above the other
    n_ref = len(reference_ticks or {})
    bottom_h = 2.4 + 0.2 * max(0, n_ref - 2) + 0.25 * max(0, len(profiles) - 4)
    n_legend = max(1, len(class_names)) + 1
    if not stacked:
        map_h = min(side_w / aspect, MAX_MAP_IN_OVERVIEW)
        legend_where = "right" if side_w / aspect > MAX_MAP_IN_OVERVIEW else "below"  # tall: legend right
        cbar_where = "right" if map_h >= MIN_CBAR_RIGHT_IN else "below"
        max_map_in = MAX_MAP_IN_OVERVIEW
    else:
        max_map_in = MAX_STACK_IN_OVERVIEW / n_top
        map_h = min((W - 1.5) / aspect, max_map_in)
        legend_where = "right" if map_h >= 0.15 * n_legend else "below"
        cbar_where = "right" if map_h >= MIN_CBAR_RIGHT_IN else "below"
    sheet = _Sheet(W)
    top = _caption_band_in(_add_dose_caption(sheet, dose_text))
    panels: list[_MapPanel] = []
    if bf is not None:
        panels.append(_ImagePanel(sheet, bf, step_nm, BF_CMAP, "Virtual bright field"))
    cls_panel = _ClassMapPanel(sheet, class_map, class_names, step_nm, title="Class", legend_where=legend_where)
    peak_panel = _PeakMapPanel(sheet, peak_q, step_nm, vmin=vmin, vmax=vmax, title="First SRO peak position",
                               cbar_where=cbar_where, est_length_in=map_h if cbar_where == "right" else side_w)
    panels += [cls_panel, peak_panel]
    letters = iter("abcdef")
    avail = W - 2 * PAD_IN
    if not stacked:
        top_h = _place_side_by_side(sheet, panels, peak_q.shape, top, avail, max_map_in, letters)
    else:
        top_h = _place_stacked(sheet, panels, peak_q.shape, top, avail, max_map_in, letters)
    # bottom row: histograms and profiles, each under its letter
    y = top + top_h + ROW_GAP_IN
    half = 0.5 * (avail - COL_GAP_IN)
    band = _letter_band_in()
    for i, draw in enumerate((
        lambda r: _draw_histograms(sheet, r, peak_q, class_map, class_names, fits, bin_width),
        lambda r: _draw_profiles(sheet, r, q, profiles, n, reference_ticks=reference_ticks, sem=sem, window=window),
    )):
        x0 = PAD_IN + i * (half + COL_GAP_IN)
        _panel_letter(sheet, x0, y, next(letters))
        draw((x0, y + band, half, bottom_h - band))
    return sheet.finish(y + bottom_h + PAD_IN)


def _place_side_by_side(sheet, panels, shape, top, avail, max_map_in, letters) -> float:
    """Maps side by side at one size, each panel lettered at its top-left corner; returns the row height.
    Each column holds its map and what is right of it (colourbar, legend, a title wider than the map);
    width left over is shared evenly between the columns."""
    n = len(panels)
    band = _letter_band_in() + max(p.above for p in panels)
    for _ in range(2):  # the colourbar's tick labels depend on its length: measure again once placed
        w, h = _fit_map(shape, (avail - (n - 1) * COL_GAP_IN - sum(p.right for p in panels)) / n, max_map_in)
        for _ in range(4):  # a title wider than a height-limited (narrow) map needs room too
            need = [p.overhang(w) + w + max(p.right, p.overhang(w)) for p in panels]
            excess = sum(need) + (n - 1) * COL_GAP_IN - avail
            if excess <= 1e-9:
                break
            w, h = _fit_map(shape, w - excess / n, h)
        spare = max(0.0, avail - sum(need) - (n - 1) * COL_GAP_IN) / n
        starts = [PAD_IN + sum(need[:i]) + i * (spare + COL_GAP_IN) for i in range(n)]
        for i, p in enumerate(panels):
            xm = starts[i] + 0.5 * spare + p.overhang(w)
            limit = starts[i + 1] - 2 * PT if i + 1 < n else PAD_IN + avail
            if isinstance(p, _ClassMapPanel):
                p.fit_below(limit - xm)
            p.place(xm, top + band, w, h, starts[i], limit)
        if not any(isinstance(p, _PeakMapPanel) and p.remeasure() for p in panels):
            break
    for i, p in enumerate(panels):
        _panel_letter(sheet, starts[i] + 0.5 * spare, top, next(letters))
    return band + h + max(p.below for p in panels)


def _place_stacked(sheet, panels, shape, top, avail, max_map_in, letters) -> float:
    """Wide strips one above the other at one size (letter and title on one line); returns the height."""
    for p in panels:
        _axes_letter(p.ax, next(letters))
    _, lh, ld = _text_in("a", LETTER_PT, "bold")  # letters sit on the titles' baseline
    band = max(matplotlib.rcParams["axes.titlepad"] * PT + lh - ld, max(p.above for p in panels))
    for _ in range(2):
        right = max(p.right for p in panels)
        w, h = _fit_map(shape, avail - right, max_map_in)
        x0 = PAD_IN + 0.5 * (avail - w - right)
        for p in panels:
            if isinstance(p, _ClassMapPanel):
                p.fit_below(w)
        y = top
        for p in panels:
            p.place(x0, y + band, w, h, PAD_IN, PAD_IN + avail)
            y += band + h + p.below + 2 * GAP_IN
        if not any(isinstance(p, _PeakMapPanel) and p.remeasure() for p in panels):
            break
    return y - 2 * GAP_IN - top


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def _atomic_savefig(fig: Figure, final: Path, fmt: str, creator: str) -> Path:
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as fh:  # 'x': never clobber; permissions follow the umask
            write_figure(fig, fh, fmt, creator)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


PNG_COMPRESS_LEVEL = 3
"""zlib level of saved PNGs: as small as level 6 for these figures once the alpha channel is dropped
(950 vs 955 KiB for the six figures of a 148x148 scan), and half the encoding time."""


def _write_png(fig: Figure, fh, creator: str) -> None:
    """Draw ``fig`` once at :data:`DPI` and write it as PNG: RGB where every pixel is opaque (the figures
    are, on a white ground), else RGBA; zlib level :data:`PNG_COMPRESS_LEVEL`; ``Software`` text and the
    dpi recorded as matplotlib's own PNG writer does."""
    from PIL import Image, PngImagePlugin

    buf = io.BytesIO()
    with style_context():
        fig.savefig(buf, format="rgba", dpi=DPI)
    raw = buf.getbuffer()
    width = int(fig.get_figwidth() * DPI)  # as the Agg canvas sizes itself (figure sizes are whole pixels)
    height = len(raw) // (4 * width)
    if width * height * 4 != len(raw):  # pragma: no cover - a canvas of another size
        raise RuntimeError(f"raw RGBA buffer of {len(raw)} bytes is not {width} pixels wide")
    img = Image.frombuffer("RGBA", (width, height), raw, "raw", "RGBA", 0, 1)
    if img.getextrema()[3] == (255, 255):
        img = img.convert("RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", creator)
    img.save(fh, format="png", pnginfo=info, dpi=(DPI, DPI), compress_level=PNG_COMPRESS_LEVEL)


_PDF_UNUSED_FONT_TABLES = ("GSUB", "GPOS", "GDEF", "MATH", "BASE", "JSTF")
"""OpenType layout tables, never read from a font embedded in a PDF: the PDF places every glyph itself
(glyph ids through the CIDToGIDMap) and maps them back to text with its ToUnicode map, and a
TrueType font program in a PDF needs only glyf, head, hhea, hmtx, loca, maxp (cvt, fpgm, prep)."""


@contextmanager
def _lean_embedded_fonts() -> Iterator[None]:
    """While this thread saves a PDF: fonts loaded for subsetting leave out :data:`_PDF_UNUSED_FONT_TABLES`
    and all but the Windows-platform character maps before fontTools reads them. Subsetting DejaVu Sans
    for Type 42 embedding took ~0.15 s per font per file, mostly decoding GSUB/GPOS lookups that the subset
    then had to keep consistent; without them ~0.03 s. Text stays TrueType text. Other threads get
    fontTools unchanged."""
    try:
        from fontTools import subset as ft_subset
    except ImportError:  # pragma: no cover - matplotlib requires fontTools
        yield
        return
    original = ft_subset.load_font
    owner = threading.get_ident()

    @functools.wraps(original)
    def load_font(*args, **kwargs):
        font = original(*args, **kwargs)
        if threading.get_ident() == owner:
            for tag in _PDF_UNUSED_FONT_TABLES:
                if tag in font:
                    del font[tag]
            # character maps: the Windows-platform ones only (the ones FreeType picks; the Unicode- and
            # Mac-platform ones repeat them), so fontTools decodes 2 of DejaVu Sans' 5 (23,000 entries)
            cmap = font["cmap"] if "cmap" in font else None
            if cmap is not None and any(t.platformID == 3 for t in cmap.tables):
                cmap.tables = [t for t in cmap.tables if t.platformID == 3]
        return font

    ft_subset.load_font = load_font
    try:
        yield
    finally:
        ft_subset.load_font = original


def _write_pdf(fig: Figure, fh, creator: str) -> None:
    """Vector PDF, text as TrueType (Type 42) text; no CreationDate, so the same figure gives the same bytes."""
    with style_context(), _lean_embedded_fonts():
        fig.savefig(fh, format="pdf", metadata={"Creator": creator, "CreationDate": None})


def write_figure(fig: Figure, fh, fmt: str, creator: str) -> None:
    """Write ``fig`` to the binary file ``fh`` as ``fmt``: "png" (:func:`_write_png`) or "pdf" (:func:`_write_pdf`)."""
    {"png": _write_png, "pdf": _write_pdf}[fmt](fig, fh, creator)


def save_figure(fig: Figure, out_base) -> list[Path]:
    """Write ``out_base.png`` (300 dpi, see :func:`_write_png`) and ``out_base.pdf`` (vector); returns both paths.

    Each file is written to a temporary name in the destination folder and moved into place with
    :func:`os.replace`, so a file with the final name is always complete. The folder is created.
    A ``.png``/``.pdf`` suffix on ``out_base`` is ignored.
    """
    base = Path(out_base)
    if base.suffix.lower() in (".png", ".pdf"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    try:
        from sendmap import __version__ as version
    except Exception:  # pragma: no cover - partial installs
        version = "unknown"
    creator = f"sendmap {version} (matplotlib {matplotlib.__version__})"
    out = []
    with style_context():
        out.append(_atomic_savefig(fig, base.parent / f"{base.name}.png", "png", creator))
        out.append(_atomic_savefig(fig, base.parent / f"{base.name}.pdf", "pdf", creator))
    return out
