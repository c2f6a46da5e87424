"""Tests of the publication figures (sendmap.report: figures, maps, histograms, profiles, overview, savefig): small
synthetic maps, no real data."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.axis import Tick
from matplotlib.text import Text

from sendmap.report import figures as F
from sendmap.report import layout as L
from sendmap.report import style as S
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

CLASS_NAMES = ["crystal", "sei_type1", "sei_type2", "electrolyte", "unassigned"]
DOSE = "2.0×10⁴ e⁻/pattern, 125 e⁻/Å²"
STEP = 4.0
ROUND_LENGTHS = {"20 nm", "50 nm", "100 nm", "200 nm", "500 nm"}


def synthetic(ry: int = 20, rx: int = 30, seed: int = 0) -> dict:
    """Layered interface: crystal | SEI type 1 | SEI type 2 | electrolyte columns, with NaN peaks
    in the crystal and a few dropped positions; Gaussian peak positions per class."""
    rng = np.random.default_rng(seed)
    class_map = np.zeros((ry, rx), dtype=np.int16)
    edges = np.linspace(0, rx, 5).astype(int)  # 4 column bands
    for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        class_map[:, a:b] = k  # 0 crystal, 1 type1, 2 type2, 3 electrolyte
    class_map[0, -1] = 4  # one unassigned position
    centres = {1: (0.331, 0.006), 2: (0.297, 0.008), 3: (0.285, 0.005), 4: (0.31, 0.01)}
    peak_q = np.full((ry, rx), np.nan)
    for k, (mu, sd) in centres.items():
        sel = class_map == k
        peak_q[sel] = rng.normal(mu, sd, sel.sum())
    peak_q[3, 12] = np.nan  # an amorphous position without a peak
    fits = {}
    for k, name in enumerate(CLASS_NAMES):
        v = peak_q[(class_map == k) & np.isfinite(peak_q)]
        if name != "crystal" and v.size > 1:
            fits[name] = {"mu": float(v.mean()), "sigma": float(v.std()), "count": int(v.size)}
    q = np.linspace(0.05, 1.1, 220)
    bg = 3.0 * np.exp(-q / 0.12) + 0.3 * np.exp(-q / 0.5)
    profiles, sem = {}, {}
    for name, (p1, p2) in {"sei_type1": (0.33, 0.6), "sei_type2": (0.30, 0.7), "electrolyte": (0.285, 0.55),
                           "crystal": (0.403, 0.57)}.items():
        prof = (bg + 0.4 * np.exp(-0.5 * ((q - p1) / 0.03) ** 2) + 0.15 * np.exp(-0.5 * ((q - p2) / 0.05) ** 2)) * q
        profiles[name] = prof
        sem[name] = 0.02 * prof.max() * np.ones_like(q)
    yy, xx = np.mgrid[:ry, :rx]
    bf = 1.0 - 0.5 * (class_map == 0) + 0.05 * rng.standard_normal((ry, rx))
    adf = 0.2 + 0.6 * (class_map == 0) + 0.1 * np.sin(xx / 3.0) + 0.05 * rng.standard_normal((ry, rx))
    ref = {
        "LiF": [(0.431, "111"), (0.497, "200"), (0.702, "220"), (0.824, "311"), (0.861, "222")],
        "Li2O": [(0.376, "111"), (0.434, "200"), (0.613, "220"), (0.719, "311")],
        "Li": [(0.403, "110"), (0.570, "200"), (0.698, "211"), (0.806, "220")],
    }
    return dict(class_map=class_map, peak_q=peak_q, fits=fits, q=q, profiles=profiles, sem=sem, bf=bf, adf=adf,
                ref=ref)


@pytest.fixture(scope="module")
def data() -> dict:
    return synthetic()


@pytest.fixture(scope="module")
def all_figures(data) -> dict[str, Figure]:
    """Every figure once per module (building them is the slow part)."""
    return _all_figures(data)


def _all_figures(d: dict) -> dict[str, Figure]:
    return {
        "peak_map": plot_peak_map(d["peak_q"], STEP, DOSE),
        "class_map": plot_class_map(d["class_map"], CLASS_NAMES, STEP, DOSE),
        "histograms": plot_histograms(d["peak_q"], d["class_map"], CLASS_NAMES, d["fits"], DOSE),
        "profiles": plot_class_profiles(d["q"], d["profiles"], 1, DOSE, reference_ticks=d["ref"], sem=d["sem"],
                                        window=(0.22, 0.42)),
        "virtual": plot_virtual_images(d["bf"], d["adf"], STEP, DOSE),
        "overview": plot_overview(d["peak_q"], d["class_map"], CLASS_NAMES, d["q"], d["profiles"], d["fits"], 1,
                                  STEP, DOSE, reference_ticks=d["ref"]),
    }


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text)]


def _render(fig: Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255.0


def _pixel_at(fig: Figure, ax, rgb: np.ndarray, x_data: float, y_data: float) -> np.ndarray:
    """Rendered colour at a data coordinate (display y runs up, buffer rows run down)."""
    xd, yd = ax.transData.transform((x_data, y_data))
    h = rgb.shape[0]
    return rgb[int(round(h - yd)), int(round(xd))]


def _pdf_pages(raw: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", raw))


# -- every figure ------------------------------------------------------------------------------------


def test_every_function_returns_figure_with_dose(all_figures):
    for name, fig in all_figures.items():
        assert isinstance(fig, Figure), name
        assert any(DOSE in t for t in _texts(fig)), f"{name}: dose not printed"
        w, h = fig.get_size_inches()
        assert w in (pytest.approx(F.SINGLE_COLUMN_IN, abs=1e-3), pytest.approx(F.DOUBLE_COLUMN_IN, abs=1e-3)), name
        assert 1.0 < h < 9.0, name


def test_no_pyplot_state(data):
    import sys

    plot_peak_map(data["peak_q"], STEP, DOSE)
    if "matplotlib.pyplot" in sys.modules:  # another test may have imported it; we must not register figures
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


def test_style_does_not_leak(data):
    import matplotlib

    before = matplotlib.rcParams["font.size"], matplotlib.rcParams["xtick.direction"]
    fig = plot_peak_map(data["peak_q"], STEP, DOSE)
    assert (matplotlib.rcParams["font.size"], matplotlib.rcParams["xtick.direction"]) == before
    ax = fig.axes[0]
    assert ax.get_xticks().size == 0 and ax.get_yticks().size == 0


# -- saving --------------------------------------------------------------------------------------------


def test_save_figure_png_pdf(tmp_path, data):
    fig = plot_class_map(data["class_map"], CLASS_NAMES, STEP, DOSE)
    out = save_figure(fig, tmp_path / "figures" / "class_map")
    assert out == [tmp_path / "figures" / "class_map.png", tmp_path / "figures" / "class_map.pdf"]
    png = imread(out[0])
    w, h = fig.get_size_inches()
    assert png.shape[1] == round(w * 300) and png.shape[0] == round(h * 300)
    raw = out[1].read_bytes()
    assert raw.startswith(b"%PDF")
    assert raw.rstrip().endswith(b"%%EOF")
    assert _pdf_pages(raw) == 1
    # no temporary leftovers
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["class_map.pdf", "class_map.png"]


def test_png_is_the_rendered_image(tmp_path, data):
    """The PNG holds exactly the pixels matplotlib renders at 300 dpi (RGB: the figure is opaque), with
    the dpi and the Software text recorded."""
    import io

    from PIL import Image

    fig = plot_peak_map(data["peak_q"], STEP, DOSE)
    png, _ = save_figure(fig, tmp_path / "peak")
    with Image.open(png) as im:
        assert im.mode == "RGB"
        assert im.info["Software"].startswith("sendmap")
        assert im.info["dpi"] == pytest.approx((300, 300), abs=0.01)
        pixels = np.asarray(im)
    buf = io.BytesIO()
    with F.style_context():
        fig.savefig(buf, format="rgba", dpi=300)
    rgba = np.frombuffer(buf.getvalue(), np.uint8).reshape(pixels.shape[0], pixels.shape[1], 4)
    assert (rgba[..., 3] == 255).all()
    assert np.array_equal(pixels, rgba[..., :3])


def _embedded_fonts(raw: bytes) -> list:
    """The TrueType font programs (FontFile2 streams) of a matplotlib PDF, as fontTools fonts."""
    import io
    import zlib

    from fontTools.ttLib import TTFont

    fonts = []
    for num in re.findall(rb"/FontFile2 (\d+) 0 R", raw):
        obj = re.search(rb"\n" + num + rb" 0 obj\s*<<(.*?)>>\s*stream\r?\n", raw, re.S)
        start = obj.end()
        length = int(re.search(rb"/Length (\d+)", obj.group(1)).group(1))
        data = raw[start:start + length]
        if b"FlateDecode" in obj.group(1):
            data = zlib.decompress(data)
        fonts.append(TTFont(io.BytesIO(data)))
    return fonts


def test_pdf_text_is_truetype_without_layout_tables(tmp_path, all_figures):
    """PDF text is embedded TrueType (Type 42) subsets that keep glyph outlines and metrics but not the
    OpenType layout tables a PDF never reads; fontTools is left as it was."""
    from fontTools import subset

    load_font = subset.load_font
    _, pdf = save_figure(all_figures["overview"], tmp_path / "overview")
    raw = pdf.read_bytes()
    assert b"/CIDFontType2" in raw and b"/Type3" not in raw
    fonts = _embedded_fonts(raw)
    assert fonts
    for font in fonts:
        assert {"glyf", "loca", "head", "hhea", "hmtx", "maxp"} <= set(font.keys())
        assert not {"GSUB", "GPOS", "GDEF", "MATH"} & set(font.keys())
        assert font["cmap"].getBestCmap()  # a Unicode character map is kept
    assert subset.load_font is load_font


def test_pdf_one_font_subset_per_font(tmp_path, data):
    """'field' in the titles makes no ligature glyph, which matplotlib would embed as a second subset of the
    font (each subset is another fontTools run); the overview has a second font only for bold letters."""
    fig = plot_virtual_images(data["bf"], data["adf"], STEP, DOSE)
    _, pdf = save_figure(fig, tmp_path / "virtual")
    assert len(re.findall(rb"/FontFile2", pdf.read_bytes())) == 1
    fig = plot_overview(data["peak_q"], data["class_map"], CLASS_NAMES, data["q"], data["profiles"], data["fits"], 1,
                        STEP, DOSE, bf=data["bf"], reference_ticks=data["ref"])
    _, pdf = save_figure(fig, tmp_path / "overview")
    raw = pdf.read_bytes()
    assert len(re.findall(rb"/FontFile2", raw)) == 2
    assert len(set(re.findall(rb"/BaseFont /([A-Z]{6}\+[A-Za-z-]+)", raw))) == 2


def test_save_all_figures_sizes(tmp_path, all_figures):
    for name, fig in all_figures.items():
        png, pdf = save_figure(fig, tmp_path / name)
        arr = imread(png)
        w, h = fig.get_size_inches()
        assert arr.shape[:2] == (round(h * 300), round(w * 300)), name
        assert _pdf_pages(pdf.read_bytes()) == 1, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_save_figure_replaces_and_cleans_up_on_error(tmp_path, data, monkeypatch):
    fig = plot_peak_map(data["peak_q"], STEP, DOSE)
    save_figure(fig, tmp_path / "peak")
    old = (tmp_path / "peak.png").read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(RuntimeError):
        save_figure(fig, tmp_path / "peak")
    # the previous complete files are still there, no temporary files left
    assert (tmp_path / "peak.png").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peak.pdf", "peak.png"]


def test_save_figure_strips_suffix(tmp_path, data):
    fig = plot_peak_map(data["peak_q"], STEP, DOSE)
    out = save_figure(fig, tmp_path / "a" / "b" / "peak.png")
    assert [p.name for p in out] == ["peak.png", "peak.pdf"]


# -- maps ----------------------------------------------------------------------------------------------


def test_class_map_colours_at_pixels(data):
    cm = data["class_map"]
    fig = plot_class_map(cm, CLASS_NAMES, STEP, DOSE)
    ax = fig.axes[0]
    rgb = _render(fig)
    ry, rx = cm.shape
    # centre of each column band, at one quarter height (away from the scale bar, lower right)
    for k in range(4):
        cols = np.where(cm[ry // 4] == k)[0]
        x_nm = (cols.mean() + 0.5) * STEP
        y_nm = (ry // 4 + 0.5) * STEP
        got = _pixel_at(fig, ax, rgb, x_nm, y_nm)
        want = np.array(mcolors.to_rgb(CLASS_COLORS[CLASS_NAMES[k]]))
        assert np.allclose(got, want, atol=2 / 255), (CLASS_NAMES[k], got, want)


def test_class_map_legend_names_and_counts(data):
    cm = data["class_map"]
    fig = plot_class_map(cm, CLASS_NAMES, STEP, DOSE)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for k, name in enumerate(CLASS_NAMES):
        assert f"{CLASS_LABELS[name]} (n = {int((cm == k).sum())})" in labels


def test_class_map_unknown_and_invalid(data):
    cm = data["class_map"].copy()
    cm[5, 5] = -1
    fig = plot_class_map(cm, ["crystal", "sei_type1", "mystery", "electrolyte", "unassigned"], STEP, DOSE)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(lbl.startswith("Mystery") for lbl in labels)
    assert "No class (n = 1)" in labels


def test_class_colours_okabe_ito_and_distinct():
    okabe = {c.lower() for c in S.OKABE_ITO.values()}
    import sendmap

    assert set(CLASS_COLORS) == set(sendmap.CLASS_NAMES) == set(CLASS_LABELS)  # every class the pipeline writes
    assert {c.lower() for c in CLASS_COLORS.values()} <= okabe
    assert len(set(CLASS_COLORS.values())) == len(CLASS_COLORS)
    assert CLASS_LABELS["sei_type1"] == "SEI Type 1"


def test_peak_map_nan_colour_colourbar_and_note(data):
    pq = data["peak_q"]
    fig = plot_peak_map(pq, STEP, DOSE)
    ax = fig.axes[0]
    texts = _texts(fig)
    assert "SRO peak Q (Å⁻¹)" in texts
    assert "No SRO peak" in texts  # the swatch at the foot of the colourbar
    rgb = _render(fig)
    ry = pq.shape[0]
    got = _pixel_at(fig, ax, rgb, 2 * STEP, (ry // 4 + 0.5) * STEP)  # crystal column: NaN
    assert np.allclose(got, mcolors.to_rgb(F.NAN_COLOR), atol=2 / 255)


def test_peak_map_explicit_limits(data):
    fig = plot_peak_map(data["peak_q"], STEP, DOSE, vmin=0.28, vmax=0.34)
    im = fig.axes[0].images[0]
    assert im.get_clim() == (0.28, 0.34)


def test_peak_map_all_nan():
    fig = plot_peak_map(np.full((10, 12), np.nan), STEP, DOSE)
    assert isinstance(fig, Figure)
    _render(fig)


@pytest.mark.parametrize("shape,step", [((20, 30), 4.0), ((60, 90), 4.0), ((40, 40), 10.0), ((50, 200), 2.5)])
def test_scale_bar_round(shape, step):
    fig = plot_peak_map(np.full(shape, 0.3), step, DOSE)
    bars = [t for t in _texts(fig) if re.fullmatch(r"[\d.]+ (nm|µm)", t)]
    assert len(bars) == 1 and bars[0] in ROUND_LENGTHS
    length = float(bars[0].split()[0])
    width = shape[1] * step
    assert 0.1 <= length / width <= 0.5


def test_scale_bar_length_choice():
    assert F.scale_bar_length(120) == 20
    assert F.scale_bar_length(360) == 100
    assert F.scale_bar_length(200) == 50
    assert F.scale_bar_length(1000) == 200
    assert F.scale_bar_length(2000) == 500
    with pytest.raises(ValueError):
        F.scale_bar_length(0)


# -- histograms, profiles, overview -------------------------------------------------------------------


def test_histograms_legend_and_classes(data):
    fig = plot_histograms(data["peak_q"], data["class_map"], CLASS_NAMES, data["fits"], DOSE)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    f1 = data["fits"]["sei_type1"]
    d = 3 if f1["sigma"] >= 0.01 else 4 if f1["sigma"] >= 0.001 else 5  # σ to two significant figures at least
    assert f"SEI Type 1: μ = {f1['mu']:.{d}f}, σ = {f1['sigma']:.{d}f} Å⁻¹ (n = {f1['count']})" in labels
    assert not any(lbl.startswith("Crystal") for lbl in labels)
    assert ax.get_xlabel() == "SRO peak Q (Å⁻¹)"
    # one fit line per fitted class with >1 value: type1, type2, electrolyte (unassigned has 1 value: no fit)
    assert len(_data_lines(ax)) == 3


def _data_lines(ax) -> list:
    """The axes' lines but the minor tick marks (drawn as marker lines, see test_minor_ticks_as_drawn)."""
    return [ln for ln in ax.lines if not (ln.get_gid() or "").startswith("minor_ticks")]


def test_minor_ticks_as_drawn(data, monkeypatch):
    """Minor ticks are marker lines (one per side), drawn exactly as matplotlib's own minor ticks would be:
    four sides of the histograms, top and bottom of the profiles."""
    def build():
        return (plot_histograms(data["peak_q"], data["class_map"], CLASS_NAMES, data["fits"], DOSE),
                plot_class_profiles(data["q"], data["profiles"], 1, DOSE, reference_ticks=data["ref"]))

    figs = build()
    sides = [sorted(ln.get_gid() for ln in f.axes[0].lines if (ln.get_gid() or "").startswith("minor")) for f in figs]
    assert sides == [["minor_ticks_x"] * 2 + ["minor_ticks_y"] * 2, ["minor_ticks_x"] * 2]
    monkeypatch.setattr(L, "_minor_tick_marks", lambda ax: None)  # matplotlib's Tick artists instead
    for new, old in zip(figs, build()):
        with F.style_context():  # as saved (Tick artists made at draw time take the rc style of the moment)
            assert np.array_equal(_render(new), _render(old))


def test_figure_draws_alike_outside_the_style(data):
    """Ticks are made when the figure is built: drawing it outside the journal style changes nothing."""
    for fig in (plot_histograms(data["peak_q"], data["class_map"], CLASS_NAMES, data["fits"], DOSE),
                plot_peak_map(data["peak_q"], STEP, DOSE)):
        plain = _render(fig)  # first draw outside the style: any Tick made now would take default rc values
        with F.style_context():
            assert np.array_equal(_render(fig), plain)


def test_histogram_fit_scaled_to_counts():
    rng = np.random.default_rng(3)
    pq = rng.normal(0.33, 0.006, (40, 50))
    cm = np.ones((40, 50), dtype=int)
    fits = {"sei_type1": {"mu": 0.33, "sigma": 0.006, "count": pq.size}}
    fig = plot_histograms(pq, cm, CLASS_NAMES, fits, DOSE, bin_width=0.002)
    line = _data_lines(fig.axes[0])[0]
    peak = line.get_ydata().max()
    expected = pq.size * 0.002 / (0.006 * np.sqrt(2 * np.pi))
    assert peak == pytest.approx(expected, rel=0.01)


def test_histograms_no_peaks():
    cm = np.zeros((5, 5), dtype=int)
    fig = plot_histograms(np.full((5, 5), np.nan), cm, CLASS_NAMES, {}, DOSE)
    assert isinstance(fig, Figure)
    _render(fig)


def test_histogram_corner_tick_labels_apart():
    """Bins starting on a major tick (0.27) put an x tick label at the bottom left corner, where the y axis
    has its '0': they must not overlap (nor on an empty histogram, 0.0 and 0.0)."""
    rng = np.random.default_rng(2)
    cm = np.ones((4, 200), dtype=int)
    pq = 0.2701 + np.abs(rng.normal(0.0, 0.01, cm.shape))
    fits = {"sei_type1": {"mu": 0.28, "sigma": 0.01, "count": pq.size}}
    fig = plot_histograms(pq, cm, CLASS_NAMES, fits, DOSE)
    assert fig.axes[0].get_xlim()[0] == pytest.approx(0.27)
    _nothing_overlaps(fig)
    _inside_figure(fig)
    _nothing_overlaps(plot_histograms(np.full((5, 5), np.nan), np.zeros((5, 5), int), CLASS_NAMES, {}, DOSE))


def test_profiles_label_ticks_and_normalisation(data):
    fig = plot_class_profiles(data["q"], data["profiles"], 2, DOSE, reference_ticks=data["ref"], sem=data["sem"],
                              window=(0.22, 0.42))
    ax = fig.axes[0]
    assert ax.get_ylabel() == "I·Q² (norm.)"
    texts = _texts(fig)
    for name in data["profiles"]:
        assert CLASS_LABELS[name] in texts
    assert "Li₂O" in texts and "LiF" in texts
    assert not [t for t in texts if "$" in t]  # plain Unicode, no mathtext
    # each curve's max inside [0.2, 1.0] equals 1 + its offset
    q = data["q"]
    sel = (q >= 0.2) & (q <= 1.0)
    offsets = sorted(round(float(line.get_ydata()[sel].max()) - 1.0, 6) for line in _data_lines(ax)[: len(data["profiles"])])
    assert offsets[0] == pytest.approx(0.0, abs=1e-9)
    assert len(set(offsets)) == len(data["profiles"])


def test_chemical_formulas_and_exponents():
    assert S._chem("Li2CO3") == "Li₂CO₃"
    assert S._chem("beta-Li3PO4") == "β-Li₃PO₄"
    assert S._chem("Li (bcc)") == "Li (bcc)"
    assert S._chem("Ca(OH)2") == "Ca(OH)₂"
    assert S._superscript(1) == "¹" and S._superscript(-2) == "⁻²" and S._superscript(10) == "¹⁰"


def test_overview_panels(data):
    fig = plot_overview(data["peak_q"], data["class_map"], CLASS_NAMES, data["q"], data["profiles"], data["fits"], 1,
                        STEP, DOSE, bf=data["bf"], reference_ticks=data["ref"], window=(0.22, 0.42))
    assert fig.get_size_inches()[0] == pytest.approx(F.DOUBLE_COLUMN_IN, abs=1e-3)
    letters = [t for t in _texts(fig) if re.fullmatch(r"[a-e]", t)]
    assert sorted(letters) == list("abcde")
    fig2 = plot_overview(data["peak_q"], data["class_map"], CLASS_NAMES, data["q"], data["profiles"], data["fits"], 1,
                         STEP, DOSE)
    assert sorted(t for t in _texts(fig2) if re.fullmatch(r"[a-e]", t)) == list("abcd")


def _map_sizes_in(fig: Figure) -> list[tuple[float, float]]:
    """Drawn (width, height) of every map axes, inches."""
    fig.canvas.draw()
    out = []
    for ax in fig.get_axes():
        if ax.get_gid() == "map":
            bb = ax.get_window_extent()
            out.append((bb.width / fig.dpi, bb.height / fig.dpi))
    return out


def _drawn_texts(fig: Figure) -> list[Text]:
    """Every text the figure draws (non-empty, visible; tick labels only of ticks inside the view)."""
    tick_texts = {id(t) for tick in fig.findobj(Tick) for t in (tick.label1, tick.label2)}
    drawn_ticks = []
    for ax in fig.get_axes():
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            eps = 1e-9 * max(1.0, abs(hi - lo))
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if tick.get_loc() is not None and lo - eps <= tick.get_loc() <= hi + eps:
                    drawn_ticks += [t for t in (tick.label1, tick.label2) if t.get_visible()]
    texts = [t for t in fig.findobj(Text) if id(t) not in tick_texts] + drawn_ticks
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def _inside_figure(fig: Figure) -> None:
    """No text, legend or axes is cut off at the figure's edges."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    fb = fig.bbox
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _drawn_texts(fig)]
    boxes += [("legend", ax.get_legend().get_window_extent(renderer)) for ax in fig.get_axes() if ax.get_legend()]
    boxes += [("axes", ax.get_window_extent(renderer)) for ax in fig.get_axes()]
    for name, bb in boxes:
        assert bb.x0 >= fb.x0 - 1 and bb.x1 <= fb.x1 + 1 and bb.y0 >= fb.y0 - 1 and bb.y1 <= fb.y1 + 1, name


def _overlap(a, b, tol: float = 0.5) -> bool:
    """Boxes (display pixels) overlap by more than ``tol`` pixels both ways."""
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tol and min(a.y1, b.y1) - max(a.y0, b.y0) > tol


def _nothing_overlaps(fig: Figure) -> None:
    """No text, legend or colourbar lies over a map (but its own scale bar), and no two texts overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    maps = [ax for ax in fig.get_axes() if ax.get_gid() == "map"]
    own = {}  # id(text) -> the map whose scale bar holds it
    for ax in maps:
        for bar in [a for a in ax.get_children() if a.get_gid() == "scale_bar"]:
            own.update({id(t): ax for t in bar.findobj(Text)})
    texts = _drawn_texts(fig)
    boxes = [t.get_window_extent(renderer) for t in texts]
    for t, bb in zip(texts, boxes):
        for ax in maps:
            if own.get(id(t)) is not ax:
                assert not _overlap(bb, ax.get_window_extent(renderer)), f"text {t.get_text()!r} over a map"
    others = [a.get_legend().get_window_extent(renderer) for a in maps if a.get_legend() is not None]
    others += [a.get_window_extent(renderer) for a in fig.get_axes() if a.get_gid() != "map"]  # colourbars, plots
    for m in maps:
        for bb in others:
            assert not _overlap(bb, m.get_window_extent(renderer)), "a legend or an axes over a map"
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            assert not _overlap(boxes[i], boxes[j]), (texts[i].get_text(), texts[j].get_text())


def _legend_clears_bars(fig: Figure) -> None:
    """The histogram legend (inside, upper left) lies above every bar and fit curve under it."""
    from matplotlib.patches import StepPatch

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.get_axes():
        legend = ax.get_legend()
        steps = [p for p in ax.patches if isinstance(p, StepPatch)]
        if legend is None or not steps:
            continue
        lb = legend.get_window_extent(renderer)
        inv = ax.transData.inverted()
        (x0, _), (x1, y0) = inv.transform([(lb.x0, lb.y0), (lb.x1, lb.y0)])
        for p in steps:
            values, edges = p.get_data().values, p.get_data().edges
            under = (edges[1:] >= x0) & (edges[:-1] <= x1)
            assert not under.any() or values[under].max() < y0, "bars reach into the legend"
        for line in _data_lines(ax):
            x, y = line.get_data()
            under = (x >= x0) & (x <= x1)
            assert not under.any() or y[under].max() < y0, "a fit curve reaches into the legend"


def test_overview_maps_equal_size_and_nothing_cut(all_figures, data):
    fig = all_figures["overview"]
    sizes = _map_sizes_in(fig)
    assert len(sizes) == 2
    (w1, h1), (w2, h2) = sizes
    assert w1 == pytest.approx(w2, abs=0.02) and h1 == pytest.approx(h2, abs=0.02)
    for name, f in all_figures.items():
        _inside_figure(f)
        _nothing_overlaps(f)
        _legend_clears_bars(f)


def test_no_layout_engine(all_figures):
    """Figures are laid out when built (in inches); saving must not lay them out again."""
    for name, fig in all_figures.items():
        assert fig.get_layout_engine() is None, name


def test_histogram_legend_clears_tall_bars():
    """Many counts in one class (5-digit tick labels) and several classes: the legend stays clear."""
    rng = np.random.default_rng(5)
    cm = np.repeat(np.array([1, 2, 3]), [30000, 2000, 500]).reshape(65, 500)
    pq = np.where(cm == 1, rng.normal(0.30, 0.004, cm.shape), rng.normal(0.33, 0.01, cm.shape))
    fits = {n: {"mu": 0.3, "sigma": 0.005, "count": int((cm == k).sum())} for k, n in enumerate(CLASS_NAMES) if k in (1, 2, 3)}
    fig = plot_histograms(pq, cm, CLASS_NAMES, fits, DOSE)
    _legend_clears_bars(fig)
    _inside_figure(fig)
    _nothing_overlaps(fig)


@pytest.mark.parametrize("shape", [(120, 30), (40, 200), (12, 200), (148, 148), (300, 40), (30, 45)])
def test_layouts_for_tall_and_wide_scans(shape, recwarn):
    """Tall scans (legend right), wide strips (maps stacked, colourbar below): no collapsed layout,
    maps of equal size, figure within a page, no text cut off."""
    d = synthetic(*shape, seed=1)
    fig = plot_overview(d["peak_q"], d["class_map"], CLASS_NAMES, d["q"], d["profiles"], d["fits"], 1, STEP, DOSE,
                        bf=d["bf"], reference_ticks=d["ref"])
    w, h = fig.get_size_inches()
    assert w == pytest.approx(F.DOUBLE_COLUMN_IN, abs=1e-3) and h < 9.5
    sizes = np.array(_map_sizes_in(fig))
    assert len(sizes) == 3
    assert np.ptp(sizes[:, 0]) < 0.03 and np.ptp(sizes[:, 1]) < 0.03
    # square pixels: drawn aspect equals the scan's
    assert sizes[0, 0] / sizes[0, 1] == pytest.approx(shape[1] / shape[0], rel=0.03)
    _inside_figure(fig)
    _nothing_overlaps(fig)
    for f in (plot_peak_map(d["peak_q"], STEP, DOSE), plot_class_map(d["class_map"], CLASS_NAMES, STEP, DOSE),
              plot_virtual_images(d["bf"], d["adf"], STEP, DOSE)):
        assert f.get_size_inches()[1] < 9.5
        _inside_figure(f)
        _nothing_overlaps(f)
        sizes = np.array(_map_sizes_in(f))
        assert np.ptp(sizes[:, 0]) < 0.03 and np.ptp(sizes[:, 1]) < 0.03  # both virtual images alike
        assert sizes[0, 0] / sizes[0, 1] == pytest.approx(shape[1] / shape[0], rel=0.03)
    assert not [w for w in recwarn if "layout" in str(w.message)]


def test_threads_build_figures_concurrently(tmp_path, data):
    errors = []

    def work(i):
        try:
            fig = plot_peak_map(data["peak_q"], STEP, DOSE)
            save_figure(fig, tmp_path / f"p{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(list(tmp_path.glob("p*.png"))) == 3


def test_bad_inputs():
    with pytest.raises(ValueError):
        plot_peak_map(np.zeros(5), STEP, DOSE)
    with pytest.raises(ValueError):
        plot_peak_map(np.zeros((4, 4)), 0.0, DOSE)
    with pytest.raises(ValueError):
        plot_histograms(np.zeros((4, 4)), np.zeros((3, 4), int), CLASS_NAMES, {}, DOSE)


def write_examples(out_dir: Path) -> list[Path]:  # pragma: no cover - used to look at the figures by eye
    d = synthetic(60, 90)
    paths = []
    for name, fig in _all_figures(d).items():
        paths += save_figure(fig, out_dir / name)
    fig = plot_overview(d["peak_q"], d["class_map"], CLASS_NAMES, d["q"], d["profiles"], d["fits"], 1, STEP, DOSE,
                        bf=d["bf"], reference_ticks=d["ref"], window=(0.22, 0.42), sem=d["sem"])
    paths += save_figure(fig, out_dir / "overview_bf")
    return paths
