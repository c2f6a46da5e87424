"""The double-column overview figure: class map, peak map (and virtual bright field) in the top row, histograms and
profiles below, lettered a-e."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from .histograms import _draw_histograms
from .layout import (
    COL_GAP_IN, GAP_IN, LETTER_PT, PAD_IN, PT, ROW_GAP_IN, _Sheet, _add_dose_caption, _axes_letter, _caption_band_in,
    _fit_map, _letter_band_in, _panel_letter, _text_in,
)
from .maps import _ClassMapPanel, _ImagePanel, _MapPanel, _PeakMapPanel
from .profiles import _draw_profiles
from .style import (
    BF_CMAP, DOUBLE_COLUMN_IN, MAX_MAP_IN_OVERVIEW, MAX_STACK_IN_OVERVIEW, MIN_CBAR_RIGHT_IN, MIN_SIDE_BY_SIDE_IN,
    _styled,
)


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
    mixtures: Sequence[Mapping] | None = None,
) -> Figure:
    """Double-column paper figure: (a) class map, (b) SRO peak map, (c) histograms with fits (and each region's
    deconvolved mixture, ``mixtures``: see :func:`sendmap.report.histograms.plot_histograms`),
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
        lambda r: _draw_histograms(sheet, r, peak_q, class_map, class_names, fits, bin_width, mixtures),
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
