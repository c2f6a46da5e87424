"""Map figures: the peak-position map, the class map and the virtual images, and the map panels (a map axes with
its title, scale bar, legend or colourbar, and the room each needs, in inches) the overview reuses.

Maps are drawn with square pixels (one scan step each) and no ticks, with a round-length scale bar
(:func:`scale_bar_length`). Tall scans get their legend beside the map and wide strips a horizontal colourbar.
"""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Patch
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from .layout import (
    CBAR_BELOW_LENGTH, CBAR_GAP_IN, CBAR_THICK_IN, COL_GAP_IN, GAP_IN, PAD_IN, PT, TITLE_PT, _Sheet,
    _add_dose_caption, _caption_band_in, _fit_map, _legend_in, _offset, _pad_in, _text_in, _tick_labels_in,
    _title_band_in,
)
from .style import (
    ADF_CMAP, BF_CMAP, MAX_MAP_IN, MIN_CBAR_RIGHT_IN, NAN_COLOR, NO_PEAK_LABEL, PEAK_CMAP, Q_LABEL, SINGLE_COLUMN_IN,
    SMALL_PT, _class_cmap, _class_colors, _styled, class_label,
)


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
