"""Histograms of the SRO peak position per amorphous class with their Gaussian fits (a panel of the overview, and
a figure of its own)."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.patches import Patch

from .layout import PAD_IN, PT, _Sheet, _add_dose_caption, _caption_band_in, _legend_in, _place_plot
from .style import INV_A, Q_LABEL, SINGLE_COLUMN_IN, SMALL_PT, _class_colors, _styled, class_label


def _histogram_classes(peak_q, class_map, class_names, fits) -> list[tuple[int, str, np.ndarray]]:
    """(index, name, finite peak positions) for each amorphous class worth a histogram."""
    out = []
    for i, name in enumerate(class_names):
        if name == "crystal":
            continue
        if (name == "unassigned" and name not in fits) or name == "uncertain":  # (no class: no histogram)
            continue
        vals = peak_q[(class_map == i) & np.isfinite(peak_q)]
        if vals.size:
            out.append((i, name, vals))
    return out


MIN_DISPLAY_BINS = 20
"""Bins the drawn histogram spans at least (:func:`display_bin_width`): where the values span fewer bins of
``statistics.bin_width``, the figure draws finer ones, so a narrow distribution keeps its shape."""


def display_bin_width(values: Sequence[np.ndarray], bin_width: float, max_split: int = 100) -> float:
    """The drawn histogram's bin width: ``bin_width`` (1/Å, ``statistics.bin_width``, the fits' bins), or that divided
    by the smallest whole number (≤ ``max_split``) that makes the values' range span :data:`MIN_DISPLAY_BINS` bins
    (a real film whose positions scatter by 0.0002 1/Å fills one 0.0025 bin).

    >>> round(display_bin_width([np.array([0.2958, 0.2962])], 0.0025), 6)  # 0.0025 / 100 (at most 100 splits)
    2.5e-05
    >>> display_bin_width([np.array([0.28, 0.34])], 0.0025)
    0.0025
    """
    allv = np.concatenate([np.asarray(v, float).ravel() for v in values])
    span = float(allv.max() - allv.min()) if allv.size else 0.0
    if not span > 0 or span >= MIN_DISPLAY_BINS * bin_width:
        return bin_width
    return bin_width / min(max_split, math.ceil(MIN_DISPLAY_BINS * bin_width / span))


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
        # three decimals, or as many as show σ to two significant figures (a real film: σ = 0.00023, not 0.000)
        d = max(3, 1 - math.floor(math.log10(sigma)))
        return (f"{label}: μ = {mu:.{d}f}, σ = {sigma:.{d}f} {INV_A} (n = {count})", float(mu), float(sigma),
                count)
    return f"{label} (n = {count})", None, None, count


def _mixture_curve(x: np.ndarray, mix: Mapping, bw: float) -> np.ndarray:
    """A region's deconvolved mixture as expected counts per bin of width ``bw`` of its measured positions: each
    component N(mean, sigma² + err_median²) (the intrinsic spread broadened by the typical measurement error)."""
    out = np.zeros_like(x)
    e2 = float(mix.get("err_median") or 0.0) ** 2
    for w, m, s in zip(mix["weight"], mix["mean"], mix["sigma"]):
        v = s ** 2 + e2
        if v > 0:
            out += mix["n"] * w * bw * np.exp(-0.5 * (x - m) ** 2 / v) / math.sqrt(2 * math.pi * v)
    return out


def _draw_histograms(sheet: _Sheet, rect: tuple[float, float, float, float], peak_q, class_map, class_names,
                     fits, bin_width, mixtures=None):
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
    shown_bw = display_bin_width([g[2] for g in groups], bin_width)
    bins = _hist_bins([g[2] for g in groups], shown_bw)
    bw = float(bins[1] - bins[0])
    if shown_bw < bin_width:  # finer than the fits' bins: say so (the fits' amplitudes are rescaled below)
        ax.set_ylabel(f"Count per bin of {bw:.{max(4, 1 - math.floor(math.log10(bw)))}f} {INV_A}")
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
            else:  # counts per bin of the fit's width → per drawn bin
                amp = float(amp) * bw / bin_width
            curve = float(amp) * np.exp(-0.5 * ((xfine - mu) / sigma) ** 2)
            ymax = max(ymax, curve.max())
            (line,) = ax.plot(xfine, curve, color=col, linewidth=1.1)
        handles.append(
            (Patch(facecolor=mcolors.to_rgba(col, 0.3), edgecolor=col, linewidth=0.7), line, label)
        )
    for k, mix in enumerate(mixtures or []):  # each region's deconvolved mixture (summed components), dashed
        curve = _mixture_curve(xfine, mix, bw)
        ymax = max(ymax, curve.max())
        (line,) = ax.plot(xfine, curve, color=str(0.1 + 0.3 * (k % 3)), linewidth=0.9, linestyle=(0, (3, 1.5)))
        means = ", ".join(f"{m:.3f}" for m in mix["mean"])
        handles.append((None, line, f"region {mix['region']}: mixture μ = {means}"))
    ax.set_xlim(bins[0], bins[-1])
    # one legend entry per class: filled patch (histogram) with the fit line on top
    legend_handles = [(p, ln) if ln is not None and p is not None else (p if p is not None else ln)
                      for p, ln, _ in handles]
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


@_styled
def plot_histograms(
    peak_q: np.ndarray,
    class_map: np.ndarray,
    class_names: Sequence[str],
    fits: Mapping[str, Mapping],
    dose_text: str,
    bin_width: float = 0.0025,
    mixtures: Sequence[Mapping] | None = None,
) -> Figure:
    """Histograms of the SRO peak position per amorphous class with their Gaussian fits; single column.

    ``fits[name]`` holds ``mu``, ``sigma`` (1/Å) and ``count``; the fit curve is drawn as
    ``count * bin_width * N(mu, sigma)`` (counts per bin), unless ``amplitude`` (peak height in
    counts per bin of ``bin_width``, ``statistics.bin_width``) is given. Values spanning fewer than
    :data:`MIN_DISPLAY_BINS` bins are drawn in finer bins (:func:`display_bin_width`, named on the y axis). 'crystal' and 'uncertain' are never plotted, 'unassigned' only when it has a fit, and
    classes without finite peaks are skipped. ``mixtures``: per region of the scan, its deconvolved mixture
    (``region``, ``n`` positions, ``weight``, ``mean``, ``sigma`` per component, ``err_median``), drawn dashed.
    """
    height = 2.5
    sheet = _Sheet(SINGLE_COLUMN_IN, height)
    top = _caption_band_in(_add_dose_caption(sheet, dose_text))
    _draw_histograms(sheet, (PAD_IN, top, sheet.width - 2 * PAD_IN, height - top - PAD_IN), peak_q, class_map,
                     class_names, fits, bin_width, mixtures)
    return sheet.finish(height)
