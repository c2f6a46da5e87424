"""Saving figures: ``<base>.png`` (300 dpi) and ``<base>.pdf`` (vector), each written through a temporary file in the
same folder and :func:`os.replace`, so a file with the final name is never half written."""
from __future__ import annotations

import functools
import io
import os
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import matplotlib
from matplotlib.figure import Figure

from .style import DPI, style_context


def _atomic_savefig(fig: Figure, final: Path, fmt: str, creator: str) -> Path:
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as fh:  # 'x': never clobber; permissions follow the umask
            write_figure(fig, fh, fmt, creator)
        os.replace(tmp, final)  # (no fsync, as nowhere in sendmap: 10-20 ms per file on this disk, on the re-run's
        # critical path; a killed process loses nothing the kernel has accepted)
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


def save_figure(fig: Figure, out_base, formats=("png", "pdf")) -> list[Path]:
    """Write ``out_base.png`` (300 dpi, see :func:`_write_png`) and ``out_base.pdf`` (vector); returns both paths
    (``formats``: only those of them).

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
        for fmt in ("png", "pdf"):
            if fmt in formats:
                out.append(_atomic_savefig(fig, base.parent / f"{base.name}.{fmt}", fmt, creator))
    return out
