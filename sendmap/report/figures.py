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
Because a map's aspect is fixed, each figure's height is fitted to its maps after a first layout
(:func:`_fit_layout`): side-by-side maps are made equally large, empty bands are cut, tall scans get
their legend beside the map and wide strips are stacked with a horizontal colourbar. The fitted
layout is then frozen, so a saved figure is exactly the fitted one.

:func:`save_figure` writes ``<base>.png`` (300 dpi) and ``<base>.pdf`` (vector), each through a
temporary file in the same folder and :func:`os.replace`, so a file with the final name is never
half written.
"""
from __future__ import annotations

import functools
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
from matplotlib.figure import Figure, SubFigure
from matplotlib.font_manager import FontProperties
from matplotlib.gridspec import GridSpec
from matplotlib.legend_handler import HandlerTuple
from matplotlib.patches import Patch
from matplotlib.transforms import Bbox, TransformedBbox, blended_transform_factory
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
    "figure.constrained_layout.w_pad": 2.0 / 72,
    "figure.constrained_layout.h_pad": 2.0 / 72,
    "figure.constrained_layout.wspace": 0.03,
    "figure.constrained_layout.hspace": 0.03,
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


def _chem(text: str) -> str:
    """'Li2CO3' -> 'Li$_{2}$CO$_{3}$' (subscript digits that follow an element or bracket);
    'beta-Li3PO4' -> 'β-Li$_{3}$PO$_{4}$'."""
    text = re.sub(r"^(alpha|beta|gamma|delta)(?=-)", lambda m: _GREEK[m.group(1)], text)
    return re.sub(r"(?<=[A-Za-z\)\]])(\d+)", r"$_{\1}$", text)


# --------------------------------------------------------------------------------------------------
# Shared drawing pieces
# --------------------------------------------------------------------------------------------------


def _snap_in(x: float) -> float:
    """Round a figure dimension so that ``x * DPI`` lands on a whole pixel (PNG size = figsize x dpi)."""
    return round(x * DPI) / DPI + 1e-7


def _new_figure(width_in: float, height_in: float) -> Figure:
    """A bare Figure with an Agg canvas and constrained layout (never touches pyplot)."""
    fig = Figure(figsize=(_snap_in(width_in), _snap_in(height_in)), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _add_dose_caption(fig: Figure, dose_text: str) -> None:
    """Top line of every figure: the dose that produced the data, small, left aligned."""
    text = str(dose_text).strip() if dose_text is not None else ""
    fig.suptitle(
        f"Dose: {text}" if text else "Dose: not recorded",
        x=0.01,
        ha="left",
        fontsize=SMALL_PT,
        color="0.25",
        fontweight="normal",
    )


def _panel_letter(panel: SubFigure, letter: str) -> None:
    """Bold panel letter at the top-left corner of a panel (space reserved by the layout)."""
    panel.suptitle(letter, x=0.0, ha="left", fontsize=10, fontweight="bold")


def scale_bar_length(width_nm: float, fraction: float = 0.225) -> float:
    """A round scale-bar length (1-2-5 series; 20/50/100/200/500 nm for usual maps) near
    ``fraction`` of the field width, never longer than half of it."""
    if not (np.isfinite(width_nm) and width_nm > 0):
        raise ValueError(f"scale bar: field width must be a positive number of nm, got {width_nm!r}")
    target = fraction * width_nm
    candidates = [m * 10.0**e for e in range(-2, 7) for m in (1, 2, 5)]
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
    """imshow a (Ry, Rx) map with square pixels in nm, no ticks, and a scale bar; the map sits at the
    top of its layout box (spare height goes below, where :func:`_fit_layout` trims it)."""
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
    ax.set_anchor("N")
    ax.set_gid("map")
    if title:
        ax.set_title(title, fontsize=SMALL_PT + 0.5)
    for spine in ax.spines.values():
        spine.set_linewidth(0.4)
    _add_scale_bar(ax, width_nm, height_nm)
    return im


def _map_legend(ax, handles, where: str = "below", max_cols: int = 3, max_width_in: float | None = None):
    """Legend of a map (class names and counts): ``below`` it, in as many columns (up to
    ``max_cols``) as fit within ``max_width_in`` so it never widens the map's panel, or in one column
    to its ``right`` (tall maps, whose height is the limit)."""
    common = dict(handles=handles, borderaxespad=0.0, handlelength=1.0, handleheight=1.0, columnspacing=0.8,
                  handletextpad=0.35, borderpad=0.15)
    if where == "right":
        return ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), ncols=1, **common)
    legend = None
    for ncols in range(max(1, min(max_cols, len(handles))), 0, -1):
        legend = ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.015), ncols=ncols, **common)
        if max_width_in is None or ncols == 1:
            break
        fig = ax.get_figure(root=True)
        width_in = legend.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi
        if width_in <= max_width_in:
            break
    return legend


class _ColourbarLocator:
    """Places a colourbar beside a fixed-aspect map, whatever the map's final size: ``right`` of it
    (as tall as the map, less room at the foot for the map's 'No SRO peak' swatch) or ``below`` it
    (along the left part of the map's width). Thickness and gaps are in points."""

    def __init__(self, parent, where: str = "right", thickness_pt: float = 7.0, gap_pt: float = 4.0,
                 length: float = 0.55):
        self.parent, self.where = parent, where
        self.thickness_pt, self.gap_pt, self.length = thickness_pt, gap_pt, length

    def __call__(self, cax, renderer):
        pb = self.parent.bbox  # the parent's drawn box: its aspect is applied before its children
        gap = renderer.points_to_pixels(self.gap_pt)
        thick = renderer.points_to_pixels(self.thickness_pt)
        if self.where == "below":
            top = pb.y0 - gap
            box = Bbox.from_extents(pb.x0, top - thick, pb.x0 + self.length * pb.width, top)
        else:
            bottom = pb.y0
            legend = self.parent.get_legend()
            if legend is not None:
                bottom = legend.get_window_extent(renderer).y1 + gap
            x0 = pb.x1 + gap
            box = Bbox.from_extents(x0, bottom, x0 + thick, max(pb.y1, bottom + 1.0))
        return TransformedBbox(box, cax.get_figure(root=False).transSubfigure.inverted())


def _add_axes(panel, spec=None):
    """One axes in a (sub)figure: the whole of it, or the gridspec cell ``spec``."""
    return panel.add_subplot(spec) if spec is not None else panel.add_subplot()


def _axes_letter(ax, letter: str) -> None:
    """Panel letter on an axes' top-left (used where several panels share one subfigure)."""
    ax.set_title(letter, loc="left", fontsize=10, fontweight="bold")


def _map_panel_height(width_in: float, shape: tuple[int, int], extra_in: float, max_map_in: float = MAX_MAP_IN) -> float:
    """Height of a figure holding one map of ``shape`` drawn ``width_in`` wide, plus decorations."""
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


# --------------------------------------------------------------------------------------------------
# Panels: draw into a given (sub)figure; public plot functions and the overview reuse them
# --------------------------------------------------------------------------------------------------


def _draw_peak_map(panel, peak_q, step_nm, vmin=None, vmax=None, title: str | None = None,
                   cbar_where: str = "right", spec=None):
    peak_q = np.asarray(peak_q, dtype=float)
    ax = _add_axes(panel, spec)
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
    im = _show_map(ax, np.ma.masked_invalid(peak_q), step_nm, title=title, cmap=cmap, vmin=lo, vmax=hi)
    # NaN note: a light-grey swatch "No SRO peak" at the foot of the colourbar column (colourbar
    # right) or beside the colourbar (colourbar below)
    n_nan = int(np.count_nonzero(~np.isfinite(peak_q)))
    if n_nan:
        swatch = Patch(facecolor=NAN_COLOR, edgecolor="0.5", linewidth=0.4, label=NO_PEAK_LABEL)
        where = dict(loc="lower left", bbox_to_anchor=(1.0, 0.0), borderaxespad=0.6)
        if cbar_where == "below":
            where = dict(loc="upper left", bbox_to_anchor=(0.62, 0.0), borderaxespad=0.6)
        ax.legend(handles=[swatch], borderpad=0.0, handlelength=1.0, handleheight=1.0, handletextpad=0.4, **where)
    # colourbar: a child of the map, sized by the map's final box (see _ColourbarLocator)
    cax = ax.inset_axes([1.03, 0.0, 0.045, 1.0])
    cax.set_axes_locator(_ColourbarLocator(ax, cbar_where))
    cbar = panel.colorbar(im, cax=cax, extend=extend, extendfrac=0.04,
                          orientation="horizontal" if cbar_where == "below" else "vertical")
    cbar.set_label(Q_LABEL)
    cbar.ax.tick_params(labelsize=SMALL_PT, width=0.5, length=2.0)
    cbar.outline.set_linewidth(0.5)
    return ax, im, cbar


def _draw_class_map(panel, class_map, class_names, step_nm, legend_width_in: float, legend_where: str = "below",
                    title: str | None = None, spec=None):
    class_map = np.asarray(class_map)
    if class_map.ndim != 2:
        raise ValueError(f"class map must be 2-D (Ry, Rx), got shape {class_map.shape}")
    names = list(class_names)
    k = len(names)
    valid = (class_map >= 0) & (class_map < k)
    data = np.ma.masked_array(np.where(valid, class_map, 0).astype(float), mask=~valid)
    cmap, norm = _class_cmap(names)
    ax = _add_axes(panel, spec)
    im = _show_map(ax, data, step_nm, title=title, cmap=cmap, norm=norm)
    colors = _class_colors(names)
    handles = []
    for i, name in enumerate(names):
        count = int(np.count_nonzero(class_map == i))
        if count == 0:
            continue
        handles.append(
            Patch(facecolor=colors[i], edgecolor="0.3", linewidth=0.3, label=f"{class_label(name)} (n = {count})")
        )
    n_bad = int(np.count_nonzero(~valid))
    if n_bad:
        handles.append(Patch(facecolor=NAN_COLOR, edgecolor="0.6", linewidth=0.4, label=f"No class (n = {n_bad})"))
    if handles:
        _map_legend(ax, handles, legend_where, 3, legend_width_in)
    return ax, im


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


def _draw_histograms(panel, peak_q, class_map, class_names, fits, bin_width):
    peak_q = np.asarray(peak_q, dtype=float)
    class_map = np.asarray(class_map)
    if peak_q.shape != class_map.shape:
        raise ValueError(f"peak map {peak_q.shape} and class map {class_map.shape} differ in shape")
    if not (np.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"bin_width must be positive, got {bin_width!r}")
    fits = dict(fits or {})
    ax = panel.add_subplot()
    ax.set_xlabel(Q_LABEL)
    ax.set_ylabel("Count per bin")
    ax.minorticks_on()
    groups = _histogram_classes(peak_q, class_map, list(class_names), fits)
    if not groups:
        ax.text(0.5, 0.5, "No SRO peaks in amorphous classes", transform=ax.transAxes, ha="center", va="center",
                fontsize=SMALL_PT, color="0.4")
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
    ax.set_ylim(0, ymax * 1.08 if ymax > 0 else 1)
    ax._sendmap_data_top = float(ymax)  # _fit_layout raises the y limit so the legend clears the bars
    # one legend entry per class: filled patch (histogram) with the fit line on top
    legend_handles = [(p, ln) if ln is not None else p for p, ln, _ in handles]
    ax.legend(
        legend_handles,
        [lbl for *_, lbl in handles],
        handler_map={tuple: HandlerTuple(ndivide=1)},
        loc="upper left",
        borderaxespad=0.4,
        ncols=1,
        handlelength=1.6,
    )
    return ax


def _normalise_profile(q, y, q_range) -> float:
    sel = (q >= q_range[0]) & (q <= q_range[1]) & np.isfinite(y)
    if not sel.any():
        sel = np.isfinite(y)
    m = float(np.max(y[sel])) if sel.any() else 1.0
    return m if np.isfinite(m) and m > 0 else 1.0


def _draw_profiles(panel, q, profiles, n, reference_ticks=None, sem=None, window=None, q_range=(0.2, 1.0)):
    q = np.asarray(q, dtype=float)
    ax = panel.add_subplot()
    names = list(profiles)
    qlo = max(float(np.nanmin(q)), q_range[0]) if q.size else q_range[0]
    qhi = min(float(np.nanmax(q)), q_range[1]) if q.size else q_range[1]
    if not qhi > qlo:
        qlo, qhi = float(np.nanmin(q)), float(np.nanmax(q))
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
        ax.text(1.015, y_end, class_label(name), transform=right, color=col, fontsize=SMALL_PT,
                ha="left", va="center", clip_on=False)
    ybottom = 0.0
    # width of one hkl character in Q units, from the panel width less ~1 in of labels
    axes_w_in = max(panel.bbox.width / panel.get_figure(root=True).dpi - 1.0, 1.0)
    q_per_char = 0.6 * HKL_PT / 72.0 * (qhi - qlo) / axes_w_in
    if reference_ticks:
        row_h = 0.32
        for r, (phase, ticks) in enumerate(reference_ticks.items()):
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
            ax.text(1.015, yr, _chem(str(phase)), transform=right, fontsize=SMALL_PT, ha="left", va="center",
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
    ax.set_xlabel(f"Q ({INV_A})")
    ax.set_ylabel(f"I·Q$^{{{int(n)}}}$ (norm.)")
    return ax


def _draw_image(panel, image, step_nm, cmap: str, title: str, spec=None):
    ax = _add_axes(panel, spec)
    image = np.asarray(image, dtype=float)
    lo, hi = _robust_limits(image, 0.5, 99.5)
    cm = matplotlib.colormaps[cmap].with_extremes(bad=NAN_COLOR)
    _show_map(ax, np.ma.masked_invalid(image), step_nm, title=title, cmap=cm, vmin=lo, vmax=hi)
    return ax


def _execute_layout(fig: Figure) -> None:
    fig.get_layout_engine().execute(fig)


def _map_axes(panel) -> list:
    return [ax for ax in panel.get_axes() if ax.get_gid() == "map"]


def _box_and_map_in(ax) -> tuple[float, float, float, float]:
    """(box width, box height, map width, map height) of a fixed-aspect map axes, in inches."""
    parent = ax.get_figure(root=False)
    dpi = ax.get_figure(root=True).dpi
    pw, ph = parent.bbox.width / dpi, parent.bbox.height / dpi
    box = ax.get_position(original=True)
    act = ax.get_position(original=False)  # applies the aspect
    return box.width * pw, box.height * ph, act.width * pw, act.height * ph


def _free_below_in(ax) -> float:
    """Height of the empty band under a map inside its layout box (maps sit at the top of their
    box), less what hangs below the map into that band (legend, colourbar), inches: what can be
    cut from the figure without the layout having to shrink the map."""
    root = ax.get_figure(root=True)
    renderer = root.canvas.get_renderer()
    parent = ax.get_figure(root=False)
    box = ax.get_position(original=True).transformed(parent.transSubfigure)
    act = ax.get_position(original=False).transformed(parent.transSubfigure)
    tight = ax.get_tightbbox(renderer)
    gap = act.y0 - box.y0
    hang = max(0.0, act.y0 - tight.y0)
    return max(0.0, gap - hang) / root.dpi


def _resize_row(fig: Figure, delta_in: float, rows: tuple[GridSpec, int] | None) -> None:
    """Change the figure height by ``delta_in``; with ``rows`` only that row of the gridspec changes."""
    w, h = fig.get_size_inches()
    if rows is not None:
        gs, row = rows
        ratios = np.asarray(gs.get_height_ratios() or [1.0] * gs.nrows, dtype=float)
        rows_in = ratios / ratios.sum() * h
        rows_in[row] += delta_in
        gs.set_height_ratios(list(rows_in))
    fig.set_size_inches(w, _snap_in(max(h + delta_in, 0.8)))


def _fit_maps(
    fig: Figure,
    maps: Sequence,
    panels: Sequence[SubFigure] = (),
    columns: GridSpec | None = None,
    rows: tuple[GridSpec, int] | None = None,
    max_map_in: float = MAX_MAP_IN,
    stacked: int = 1,
    max_iter: int = 8,
) -> None:
    """Size the figure around its fixed-aspect maps (the initial height is only an estimate):

    * a map limited by its box's height (narrower than its box) makes the maps' row taller, as long
      as no map grows taller than ``max_map_in``;
    * side-by-side map ``panels`` (the columns of ``columns``) get width ratios that make their map
      boxes equally wide (a colourbar or legend takes its room from its own panel, not from the
      map next door);
    * the empty band under width-limited maps is cut from the figure height.

    With ``rows`` = (gridspec of a column of subfigures, row index), only the maps' row changes height.
    ``stacked`` maps sit one above the other in equal gridspec rows: each gets 1/stacked of a change.

    Returns True where the last thing done was a layout pass that changed nothing afterwards (the layout is
    current), False where the caller must run one.
    """
    if not maps:
        return False
    tol = 0.01  # inches: 3 pixels at 300 dpi
    for _ in range(max_iter):
        _execute_layout(fig)
        sizes = [_box_and_map_in(ax) for ax in maps]
        height_limited = any(bw - mw > tol for bw, _, mw, _ in sizes)
        if height_limited:
            need = max((bw * mh / mw - bh) if mw > 0 else 0.0 for bw, bh, mw, mh in sizes)
            grow = min(need + tol, max_map_in - max(mh for *_, mh in sizes))
            if grow > tol:
                _resize_row(fig, grow * stacked, rows)
                continue
            return True  # capped: tall maps stay height-limited (equal heights, so equal widths)
        if columns is not None and len(panels) > 1:
            widths = np.array([p.bbox.width / fig.dpi for p in panels])
            box_w = np.array([_box_and_map_in(_map_axes(p)[0])[0] if _map_axes(p) else np.nan for p in panels])
            target = np.nanmean(box_w)
            if np.nanmax(np.abs(box_w - target)) > tol:
                deco = np.where(np.isfinite(box_w), widths - box_w, 0.0)
                columns.set_width_ratios(list(np.maximum(target + deco, 0.1)))
                continue
        slack = min(_free_below_in(ax) for ax in maps)
        if slack > 3 * tol:  # cut it, leaving a little so rounding cannot make a map height-limited
            _resize_row(fig, -(slack - tol) * stacked, rows)
            continue
        return True
    return False


def _make_room_for_legend(fig: Figure) -> bool:
    """Raise the y limit of histogram axes so their legend (inside, upper left) clears the bars; True if any
    axes changed."""
    renderer = fig.canvas.get_renderer()
    changed = False
    for ax in fig.get_axes():
        top = getattr(ax, "_sendmap_data_top", None)
        legend = ax.get_legend()
        if not top or legend is None:
            continue
        lb = legend.get_window_extent(renderer)
        frac = (lb.y0 - ax.bbox.y0) / ax.bbox.height  # legend bottom, axes fraction
        frac = max(frac - 0.04, 0.35)
        ax.set_ylim(0, max(top * 1.08, top / frac))
        changed = True
    return changed


def _fit_layout(
    fig: Figure,
    map_panels: Sequence[SubFigure] = (),
    map_columns: GridSpec | None = None,
    map_rows: tuple[GridSpec, int] | None = None,
    max_map_in: float = MAX_MAP_IN,
    stacked: int = 1,
) -> Figure:
    """Final layout pass shared by all figures: maps sized by :func:`_fit_maps`, legend room in
    histograms, then the layout is frozen (the figure's layout engine is set to 'none')."""
    if map_panels:
        maps = [ax for p in map_panels for ax in _map_axes(p)]
    else:
        maps = [ax for ax in fig.get_axes() if ax.get_gid() == "map"]
    # each layout pass costs ~0.2 s (text extents of every tick label): run one only where something changed
    if not _fit_maps(fig, maps, map_panels, map_columns, map_rows, max_map_in=max_map_in, stacked=stacked):
        _execute_layout(fig)
    if _make_room_for_legend(fig):
        _execute_layout(fig)
    # freeze the fitted layout: saving (at any dpi) draws exactly what was fitted, without re-solving
    fig.set_layout_engine("none")
    return fig


# --------------------------------------------------------------------------------------------------
# Public figures
# --------------------------------------------------------------------------------------------------


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
    if cbar_where == "right":
        fig = _new_figure(w, _map_panel_height(w - 0.8, peak_q.shape, 0.6))
    else:
        fig = _new_figure(w, _map_panel_height(w, peak_q.shape, 0.9))
    _draw_peak_map(fig, peak_q, step_nm, vmin=vmin, vmax=vmax, cbar_where=cbar_where)
    _add_dose_caption(fig, dose_text)
    return _fit_layout(fig)


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
    n_rows = math.ceil((max(1, len(class_names)) + 1) / 2)
    fig = _new_figure(w, _map_panel_height(w, class_map.shape, 0.3 if tall else 0.45 + 0.15 * n_rows))
    _draw_class_map(fig, class_map, class_names, step_nm, legend_width_in=w - 0.1,
                    legend_where="right" if tall else "below")
    _add_dose_caption(fig, dose_text)
    return _fit_layout(fig)


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
    fig = _new_figure(SINGLE_COLUMN_IN, 2.5)
    _draw_histograms(fig, peak_q, class_map, class_names, fits, bin_width)
    _add_dose_caption(fig, dose_text)
    return _fit_layout(fig)


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
    fig = _new_figure(SINGLE_COLUMN_IN, 2.2 + 0.3 * max(0, len(profiles) - 3) + 0.2 * n_ref)
    _draw_profiles(fig, q, profiles, n, reference_ticks=reference_ticks, sem=sem, window=window, q_range=q_range)
    _add_dose_caption(fig, dose_text)
    return _fit_layout(fig)


@_styled
def plot_virtual_images(bf: np.ndarray, adf: np.ndarray, step_nm: float, dose_text: str) -> Figure:
    """Virtual bright-field (gray) and annular dark-field (magma) images side by side, each with a
    scale bar; contrast from the 0.5-99.5th percentiles; single column."""
    bf = np.asarray(bf, dtype=float)
    adf = np.asarray(adf, dtype=float)
    if bf.ndim != 2 or adf.ndim != 2:
        raise ValueError(f"virtual images must be 2-D, got {bf.shape} and {adf.shape}")
    if bf.shape != adf.shape:
        raise ValueError(f"virtual images differ in shape: {bf.shape} and {adf.shape}")
    w = SINGLE_COLUMN_IN
    ry, rx = bf.shape
    if rx / max(ry, 1) <= 1.6:  # side by side
        fig = _new_figure(w, _map_panel_height(w / 2, bf.shape, 0.5))
        gs = fig.add_gridspec(1, 2)
        stacked = 1
    else:  # wide scans: one above the other
        fig = _new_figure(w, 2 * _map_panel_height(w, bf.shape, 0.3, max_map_in=MAX_MAP_IN / 2) + 0.2)
        gs = fig.add_gridspec(2, 1)
        stacked = 2
    _draw_image(fig, bf, step_nm, BF_CMAP, "Virtual bright field", spec=gs[0])
    _draw_image(fig, adf, step_nm, ADF_CMAP, "Virtual annular dark field", spec=gs[1])
    _add_dose_caption(fig, dose_text)
    return _fit_layout(fig, max_map_in=MAX_MAP_IN / stacked, stacked=stacked)


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
    side_w = (DOUBLE_COLUMN_IN - 0.7) / n_top  # map width with the maps side by side
    stacked = side_w / aspect < MIN_SIDE_BY_SIDE_IN  # wide strips: maps one above the other
    n_ref = len(reference_ticks or {})
    bottom_h = 2.4 + 0.2 * max(0, n_ref - 2) + 0.25 * max(0, len(profiles) - 4)
    n_legend = max(1, len(class_names)) + 1
    if not stacked:
        map_h = min(side_w / aspect, MAX_MAP_IN_OVERVIEW)
        tall = side_w / aspect > MAX_MAP_IN_OVERVIEW  # height-limited: class legend right of the map
        legend_where = "right" if tall else "below"
        cbar_where = "right" if map_h >= MIN_CBAR_RIGHT_IN else "below"
        n_rows_legend = 0 if tall else math.ceil(n_legend / (2 if n_top == 2 else 1))
        top_h = map_h + 0.5 + 0.15 * n_rows_legend + (0.5 if cbar_where == "below" else 0.0)
        max_map_in = MAX_MAP_IN_OVERVIEW
    else:
        stack_w = DOUBLE_COLUMN_IN - 1.5  # room for a legend column on the right
        max_map_in = MAX_STACK_IN_OVERVIEW / n_top
        map_h = min(stack_w / aspect, max_map_in)
        legend_where = "right" if map_h >= 0.15 * n_legend else "below"
        cbar_where = "right" if map_h >= MIN_CBAR_RIGHT_IN else "below"
        top_h = n_top * (map_h + 0.35) + (0.5 if cbar_where == "below" else 0.0) + (
            0.15 * math.ceil(n_legend / 3) if legend_where == "below" else 0.0)
    fig = _new_figure(DOUBLE_COLUMN_IN, top_h + bottom_h + 0.15)
    rows = fig.add_gridspec(2, 1, height_ratios=[top_h, bottom_h], hspace=0.01)
    top, bottom = fig.add_subfigure(rows[0, 0]), fig.add_subfigure(rows[1, 0])
    bottoms = bottom.subfigures(1, 2, wspace=0.01)
    letters = iter("abcdef")
    if not stacked:  # one subfigure per map, lettered at its corner; equal map widths by column ratios
        columns = top.add_gridspec(1, n_top, wspace=0.01)
        tops = [top.add_subfigure(columns[0, i]) for i in range(n_top)]
        specs = [None] * n_top
        legend_w = side_w
    else:  # one column of maps in one subfigure: constrained layout gives them equal widths
        columns = None
        cells = top.add_gridspec(n_top, 1)
        tops = [top] * n_top
        specs = [cells[i, 0] for i in range(n_top)]
        legend_w = DOUBLE_COLUMN_IN - 0.2
    map_axes = []
    if bf is not None:
        map_axes.append(_draw_image(tops[0], bf, step_nm, BF_CMAP, "Virtual bright field", spec=specs[0]))
    map_axes.append(_draw_class_map(tops[-2], class_map, class_names, step_nm, legend_width_in=legend_w,
                                    legend_where=legend_where, title="Class", spec=specs[-2])[0])
    map_axes.append(_draw_peak_map(tops[-1], peak_q, step_nm, vmin=vmin, vmax=vmax, title="First SRO peak position",
                                   cbar_where=cbar_where, spec=specs[-1])[0])
    for panel, ax in zip(tops, map_axes):
        if stacked:
            _axes_letter(ax, next(letters))
        else:
            _panel_letter(panel, next(letters))
    _draw_histograms(bottoms[0], peak_q, class_map, class_names, fits, bin_width)
    _draw_profiles(bottoms[1], q, profiles, n, reference_ticks=reference_ticks, sem=sem, window=window)
    for panel in bottoms:
        _panel_letter(panel, next(letters))
    _add_dose_caption(fig, dose_text)
    return _fit_layout(fig, map_panels=[top] if stacked else tops, map_columns=columns, map_rows=(rows, 0),
                       max_map_in=max_map_in, stacked=n_top if stacked else 1)


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def _atomic_savefig(fig: Figure, final: Path, fmt: str, **kwargs) -> Path:
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as fh:  # 'x': never clobber; permissions follow the umask
            fig.savefig(fh, format=fmt, **kwargs)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def save_figure(fig: Figure, out_base) -> list[Path]:
    """Write ``out_base.png`` (300 dpi) and ``out_base.pdf`` (vector); returns both paths.

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
        out.append(
            _atomic_savefig(fig, base.parent / f"{base.name}.png", "png", dpi=DPI, metadata={"Software": creator})
        )
        # CreationDate None: the same figure gives the same PDF bytes
        out.append(
            _atomic_savefig(
                fig, base.parent / f"{base.name}.pdf", "pdf", metadata={"Creator": creator, "CreationDate": None}
            )
        )
    return out
