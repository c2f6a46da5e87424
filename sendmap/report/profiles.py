"""Class-mean I·Q^n profiles, offset, with ±sem bands, reference ring ticks per phase and the peak search window
(a panel of the overview, and a figure of its own)."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from .layout import PAD_IN, PT, _Sheet, _add_dose_caption, _caption_band_in, _place_plot, _text_in
from .style import HKL_PT, INV_A, SINGLE_COLUMN_IN, SMALL_PT, _chem, _class_colors, _styled, _superscript, class_label


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
