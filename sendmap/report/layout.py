"""Layout in inches: the :class:`_Sheet` every report figure is built on, text measurement and plot placement.

There is no layout engine: every figure is laid out in inches from the sizes of its pieces (fonts have fixed
sizes, maps a fixed aspect; titles, tick labels, legends and colourbars are measured once, without drawing), and
its height follows from its maps. A saved figure is exactly the built one, at any dpi.

Why not matplotlib's own engines (constrained layout, GridSpec, ``fig.get_tightbbox``)? They cannot give the
same figures:

* they fit axes into a figure of a *given* size, while here the figure's height follows from its content (a
  map's aspect decides its height at a fixed journal column width); ``bbox_inches="tight"`` would change the
  width instead, and the saved file would no longer be the built figure;
* they lay out at draw time, at the dpi of the draw: text extents differ with hinting between the 100 dpi
  figure and the 300 dpi PNG (and the PDF), so the PNG and the PDF would be laid out slightly differently.
  Here sizes are measured once at both dpi (:func:`_measurers`, the larger taken) and the layout is frozen
  (:meth:`_Sheet.finish`, :func:`_freeze_ticks`);
* the rules are not a grid's: side-by-side maps of one size with unequal decorations (a legend below one, a
  colourbar right of the other), titles wider than a narrow map reaching over the neighbour's margin, a
  colourbar shortened to leave room for the "No SRO peak" swatch, the x tick labels lowered only where the first
  x and y labels would meet. Constrained layout equalises the decorations' room instead, which moves the maps.

Measured (matplotlib 3.11, the synthetic figures of tests/test_figures.py): the single-axes histogram and profile
figures, their axes put in a one-cell GridSpec and laid out by ``ConstrainedLayoutEngine(h_pad=w_pad=3 pt)`` (the
pads of this module) instead of :func:`_place_plot`, move an axes edge by 22 and 18 pt and change 19 % and 9 % of
the 300 dpi pixels: the engine does not know the dose line (a figure text) and lays the axes over it. So this
module stays.
"""
from __future__ import annotations

import functools

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.text import Text
from matplotlib.transforms import ScaledTranslation

from .style import DPI, SMALL_PT, STYLE


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
