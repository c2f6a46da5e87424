"""EMPAD (Electron Microscope Pixel Array Detector, Thermo Fisher / Cornell) ``.raw`` + ``.xml`` reader and writer.

File layout
-----------
The ``.raw`` file is nothing but frames in scan order (row after row of the scan), no file header. Each
frame is 130 rows x 128 columns of little-endian float32 (66 560 bytes); rows 0-127 are the 128 x 128
diffraction pattern, the last 2 rows are detector metadata (frame counters and flags), which the reader
drops::

    [frame 0: 128 x 128 <f4 pixels][2 x 128 <f4 metadata][frame 1: ...] ...

The scan size is not in the ``.raw``. The EMPAD software writes an XML file beside it (named after the
project, not the ``.raw``) whose ``<raw_file filename="scan_x256_y256.raw"/>`` names the raw file and
which records the scan size as ``<scan_parameters mode="acquire">`` / ``scan_resolution_x`` /
``scan_resolution_y`` (version 1.2), or ``<pix_x>`` / ``<pix_y>`` (older versions), or
``scan_parameters/series_count`` for a series of single-point frames. The raw file name itself usually
ends in ``_x<Rx>_y<Ry>``. Calibrations, where present, are under ``<iom_measurements>``:
``high_voltage`` or ``source.get_voltage`` (V), ``nominal_camera_length`` or ``optics.get_cameralength``
(m), ``full_scan_field_of_view`` ``x``/``y``/``scale_factor`` (m; the larger scan side, including the
instrument scale factor) or ``optics.get_full_scan_field_of_view`` ``[x, y]`` (m),
``calibrated_diffraction_angle`` (rad / pixel) and ``calibrated_pixelsize`` (times 1e9: 1/nm per pixel);
``exposure_time`` (ms) is at the top level. The scan step follows rosettasciio's reading of these keys.

:func:`read_empad_dask` reads a ``.raw`` lazily (reader contract of :mod:`sendmap.io._common`);
:func:`write_empad` writes a ``.raw`` and a minimal XML (zeros in the metadata rows, see there).
"""
from __future__ import annotations

import math
import re
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import dask.array as da
import numpy as np

from sendmap import __version__
from sendmap.errors import SendmapInputError
from sendmap.io._common import check_scan_shape
from sendmap.io.raw import atomic_output, cast_frames, frame_blocks, frames_dask, write_frames

FRAME_SHAPE = (128, 128)
"""(Qy, Qx) pixels of an EMPAD diffraction pattern."""
ROWS_ON_DISK = 130
"""Rows per frame in the ``.raw``: the pattern plus the detector's metadata rows."""
METADATA_ROWS = ROWS_ON_DISK - FRAME_SHAPE[0]
"""Rows of detector metadata at the end of each frame, dropped by the reader."""
DISK_DTYPE = np.dtype("<f4")
"""Pixel type on disk: little-endian float32."""
FRAME_BYTES = ROWS_ON_DISK * FRAME_SHAPE[1] * DISK_DTYPE.itemsize
"""Bytes per frame on disk (66 560)."""
_FOOTER_BYTES = METADATA_ROWS * FRAME_SHAPE[1] * DISK_DTYPE.itemsize
_NAME_SCAN_SHAPE = re.compile(r"_x(\d+)_y(\d+)$")
"""``..._x<Rx>_y<Ry>`` at the end of a raw file's stem."""

_V_PER_KV = 1e3
_MM_PER_M = 1e3
_NM_PER_M = 1e9
_MRAD_PER_RAD = 1e3
_INV_NM_PER_PIXELSIZE_UNIT = 1e9
"""``calibrated_pixelsize`` times this is 1/nm per pixel (rosettasciio's reading of the key)."""


def read_empad_dask(path, scan_shape: tuple[int, int] | None = None,
                    frames_per_chunk: int | None = None) -> tuple[da.Array, dict]:
    """Lazy (Ry, Rx, 128, 128) float32 array of an EMPAD ``.raw`` file, metadata rows dropped.

    Scan shape (Ry, Rx): ``scan_shape`` if given (it must make the number of frames), else the XML beside
    the file (:func:`find_empad_xml`), else ``_x<Rx>_y<Ry>`` at the end of the file name; SendmapInputError
    otherwise (set ``input.scan_shape``) or if the shape found does not make the number of frames. Chunks
    are whole scan rows of at most ``frames_per_chunk`` frames (default: 64 MiB), each memory-mapping the
    file read-only by itself. NaN/inf are not checked here.

    Returns the array and a JSON-able dict: ``format`` ("empad"), ``xml_path`` (str or None),
    ``scan_shape``, ``scan_shape_source`` ("argument", "xml" or "file_name"), ``xml_scan_shape`` (or None),
    ``n_frames``, ``frame_shape``, ``frame_rows_on_disk`` (130), ``metadata_rows_dropped`` (2),
    ``frame_stride_bytes``, ``dtype`` ("<f4" on disk), ``file_bytes``, and those found in the XML of
    ``timestamp`` (ISO 8601), ``software_version``, ``beam_energy_kv``, ``camera_length_mm``,
    ``scan_step_nm`` (isotropic step), ``scan_step_yx_nm`` ([row step, column step]), ``q_step_mrad``,
    ``q_step_inv_nm``, ``exposure_ms``.

    SendmapInputError (naming the file) for a missing file, a size that is not a whole number of
    66 560-byte frames (with the byte offset where the last complete frame ends) or an unreadable XML.
    """
    path = Path(path)
    size = _file_size(path)
    n_frames = _count_frames(path, size)
    xml_path = find_empad_xml(path)
    xml = read_empad_xml(xml_path) if xml_path is not None else {}
    shape, source = _scan_shape(path, scan_shape, n_frames, xml_path, xml.get("scan_shape"))
    data = frames_dask(path, shape, FRAME_SHAPE, DISK_DTYPE, first_frame_offset=0, pixel_offset=0,
                       stride=FRAME_BYTES, frames_per_chunk=frames_per_chunk)
    metadata = {
        "format": "empad",
        "xml_path": None if xml_path is None else str(xml_path),
        "scan_shape": list(shape),
        "scan_shape_source": source,
        "xml_scan_shape": None if xml.get("scan_shape") is None else list(xml["scan_shape"]),
        "n_frames": n_frames,
        "frame_shape": list(FRAME_SHAPE),
        "frame_rows_on_disk": ROWS_ON_DISK,
        "metadata_rows_dropped": METADATA_ROWS,
        "frame_stride_bytes": FRAME_BYTES,
        "dtype": DISK_DTYPE.str,
        "file_bytes": size,
        **xml.get("values", {}),
        **_scan_step(xml.get("fov", {}), shape),
    }
    return data, metadata


def find_empad_xml(raw_path) -> Path | None:
    """The EMPAD XML describing ``raw_path``: ``<stem>.xml`` beside it, else the first (by name) ``*.xml``
    in its folder whose ``<raw_file filename=...>`` is the raw file's name; None if there is none."""
    raw_path = Path(raw_path)
    same_stem = raw_path.with_suffix(".xml")
    if same_stem.is_file():
        return same_stem
    for candidate in sorted(raw_path.parent.glob("*.xml")):
        try:
            root = ET.parse(candidate).getroot()
        except (ET.ParseError, OSError):
            continue  # not an EMPAD XML (or not readable): not ours
        if _raw_file_name(root) == raw_path.name:
            return candidate
    return None


def read_empad_xml(xml_path) -> dict:
    """What an EMPAD XML says: ``raw_file`` (str or None), ``scan_shape`` ((Ry, Rx) or None), ``fov``
    (scan field-of-view keys, m) and ``values`` (calibrations with units in their names, see
    :func:`read_empad_dask`). SendmapInputError naming the XML if it cannot be read or parsed."""
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise SendmapInputError(f"{xml_path}: cannot read the EMPAD XML ({exc})") from None
    iom = _children(root.find("iom_measurements"))
    top = _children(root)
    values = {
        "timestamp": _attribute(root.find("timestamp"), "isoformat"),
        "software_version": _text(top.get("software_version")),
        "beam_energy_kv": _scaled(iom, ("high_voltage", "source.get_voltage"), 1 / _V_PER_KV),
        "camera_length_mm": _scaled(iom, ("nominal_camera_length", "optics.get_cameralength"), _MM_PER_M),
        "q_step_mrad": _scaled(iom, ("calibrated_diffraction_angle",), _MRAD_PER_RAD),
        "q_step_inv_nm": _scaled(iom, ("calibrated_pixelsize",), _INV_NM_PER_PIXELSIZE_UNIT),
        "exposure_ms": _scaled(top, ("exposure_time",), 1.0),
    }
    fov = _children(iom.get("full_scan_field_of_view"))
    return {
        "raw_file": _raw_file_name(root),
        "scan_shape": _xml_scan_shape(root, top),
        "fov": {"x_m": _number(fov.get("x")), "y_m": _number(fov.get("y")),
                "scale_factor": _number(fov.get("scale_factor")),
                "legacy_xy_m": _text(iom.get("optics.get_full_scan_field_of_view"))},
        "values": {key: value for key, value in values.items() if value is not None},
    }


def scan_shape_from_name(raw_path) -> tuple[int, int] | None:
    """(Ry, Rx) from a name ending in ``_x<Rx>_y<Ry>`` (``scan_x256_y128.raw`` -> (128, 256)), else None."""
    match = _NAME_SCAN_SHAPE.search(Path(raw_path).stem)
    return None if match is None else (int(match.group(2)), int(match.group(1)))


def write_empad(path, data, *, write_xml: bool = True) -> Path:
    """Write frames as an EMPAD ``.raw`` (and ``<stem>.xml``), returning the ``.raw`` path.

    ``data``: (Ry, Rx, 128, 128) or (N, 128, 128) numbers (numpy, dask or any array with ``shape`` and
    slicing; a 3D stack is a (1, N) scan), written as little-endian float32 (values rounded to float32).
    The 2 metadata rows appended to every frame are zeros: sendmap does not imitate the detector's
    counters, and readers drop these rows. The XML is the minimal one giving the raw file name, the scan
    size (``scan_parameters``/``scan_resolution_x/y`` and the older ``pix_x``/``pix_y``, which
    rosettasciio reads) and a time stamp. Frames are converted and written a block (about 16 MiB) at a
    time into hidden temporary files in the same folder, which replace ``path`` and the XML
    (``os.replace``) only once complete. ValueError for another frame shape or non-numeric data.
    """
    path = Path(path)
    shape = tuple(int(n) for n in getattr(data, "shape", ()))
    if len(shape) not in (3, 4) or shape[-2:] != FRAME_SHAPE or 0 in shape:
        raise ValueError(f"data must be (Ry, Rx, 128, 128) or (N, 128, 128) EMPAD frames, not shape {shape}")
    scan_shape = shape[:2] if len(shape) == 4 else (1, shape[0])
    footer = bytes(_FOOTER_BYTES)  # the metadata rows: zeros
    with atomic_output(path) as f:
        for block in frame_blocks(data, shape, DISK_DTYPE.itemsize):
            write_frames(f, cast_frames(block, DISK_DTYPE), b"", footer)
        if write_xml:
            with atomic_output(path.with_suffix(".xml")) as x:
                x.write(_xml_text(path.name, scan_shape))
    return path


# --- private helpers -------------------------------------------------------------------------------------

def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise SendmapInputError(f"{path}: cannot read the EMPAD file ({exc.strerror or exc})") from None


def _count_frames(path: Path, size: int) -> int:
    """Whole frames in a ``size``-byte ``.raw``, or SendmapInputError if the size is not a multiple."""
    n_frames, rest = divmod(size, FRAME_BYTES)
    if rest or n_frames == 0:
        raise SendmapInputError(
            f"{path}: not a whole number of EMPAD frames: the file has {size} bytes, expected a multiple of "
            f"{FRAME_BYTES} ({ROWS_ON_DISK} x {FRAME_SHAPE[1]} float32 per frame); the last complete frame "
            f"ends at byte offset {n_frames * FRAME_BYTES} ({n_frames} frames), {rest} bytes after it")
    return n_frames


def _scan_shape(path: Path, scan_shape, n_frames: int, xml_path: Path | None,
                xml_shape: tuple[int, int] | None) -> tuple[tuple[int, int], str]:
    """(Ry, Rx) and where it came from: the argument, the XML or the file name (see read_empad_dask)."""
    if scan_shape is not None:
        return check_scan_shape(scan_shape, n_frames, path), "argument"
    for shape, source, where in ((xml_shape, "xml", f"the XML {xml_path}"),
                                 (scan_shape_from_name(path), "file_name", "the file name")):
        if shape is None:
            continue
        if shape[0] * shape[1] != n_frames or min(shape) < 1:
            raise SendmapInputError(
                f"{path}: {where} gives a {shape[0]} x {shape[1]} scan = {shape[0] * shape[1]} probe positions, "
                f"but the file holds {n_frames} frames; set input.scan_shape to the real (Ry, Rx)")
        return shape, source
    raise SendmapInputError(
        f"{path}: cannot tell the scan shape of this EMPAD file: no XML beside it names it and its name does not "
        f"end in _x<Rx>_y<Ry>; it holds {n_frames} frames: set input.scan_shape to (Ry, Rx)")


def _xml_scan_shape(root: ET.Element, top: dict) -> tuple[int, int] | None:
    """(Ry, Rx) recorded in an EMPAD XML, from the newest key present, else None."""
    blocks = root.findall("scan_parameters")
    blocks.sort(key=lambda block: block.get("mode") != "acquire")  # the acquisition's, before "search"
    for block in blocks:
        keys = _children(block)
        ry, rx = _integer(keys.get("scan_resolution_y")), _integer(keys.get("scan_resolution_x"))
        if ry is not None and rx is not None:
            return ry, rx
    ry, rx = _integer(top.get("pix_y")), _integer(top.get("pix_x"))
    if ry is not None and rx is not None:
        return ry, rx
    for block in blocks:
        count = _integer(_children(block).get("series_count"))
        if count is not None:
            return 1, count
    return None


def _scan_step(fov: dict, scan_shape: tuple[int, int]) -> dict:
    """``scan_step_yx_nm`` (and ``scan_step_nm`` where both are equal) from the XML's field of view.

    Version 1.2: ``x`` (= ``y``) is the larger scan side times the instrument ``scale_factor``, so the step
    is x / scale_factor / max(Ry, Rx) on both axes; older: ``[x, y]`` sides, steps x / Rx and y / Ry.
    """
    ry, rx = scan_shape
    steps = None
    if fov.get("x_m") and fov.get("scale_factor"):
        step = fov["x_m"] / fov["scale_factor"] / max(ry, rx) * _NM_PER_M
        steps = [step, step]
    elif fov.get("legacy_xy_m"):
        try:
            side_x, side_y = (float(v) for v in fov["legacy_xy_m"].strip("[]() ").split(","))
        except ValueError:
            return {}
        steps = [side_y / ry * _NM_PER_M, side_x / rx * _NM_PER_M]
    if steps is None or not all(math.isfinite(s) and s > 0 for s in steps):
        return {}
    result = {"scan_step_yx_nm": steps}
    if math.isclose(steps[0], steps[1], rel_tol=1e-9):
        result["scan_step_nm"] = steps[0]
    return result


def _children(element: ET.Element | None) -> dict[str, ET.Element]:
    """Child elements by tag (the first of each); tags like ``optics.get_cameralength`` need no escaping."""
    if element is None:
        return {}
    children: dict[str, ET.Element] = {}
    for child in element:
        children.setdefault(child.tag, child)
    return children


def _raw_file_name(root: ET.Element) -> str | None:
    return _attribute(root.find("raw_file"), "filename")


def _attribute(element: ET.Element | None, name: str) -> str | None:
    return None if element is None else element.get(name)


def _text(element: ET.Element | None) -> str | None:
    if element is None or element.text is None:
        return None
    return element.text.strip() or None


def _number(element: ET.Element | None) -> float | None:
    """Finite float of an element's text, else None."""
    try:
        value = float(_text(element))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _integer(element: ET.Element | None) -> int | None:
    value = _number(element)
    return int(value) if value is not None and value == int(value) else None


def _scaled(children: dict, keys: tuple[str, ...], factor: float) -> float | None:
    """The first positive number among ``keys``, times ``factor`` (a unit change), else None."""
    for key in keys:
        value = _number(children.get(key))
        if value is not None and value > 0:
            return value * factor
    return None


def _xml_text(raw_name: str, scan_shape: tuple[int, int]) -> bytes:
    """A minimal EMPAD XML for ``raw_name``: time stamp, software, raw file name and scan size."""
    ry, rx = scan_shape
    now = time.time()
    root = ET.Element("root", name=Path(raw_name).stem)
    ET.SubElement(root, "timestamp", timestamp=f"{now:.6f}",
                  isoformat=datetime.fromtimestamp(now, timezone.utc).astimezone().replace(tzinfo=None).isoformat())
    ET.SubElement(root, "software_version").text = f"sendmap {__version__}"
    ET.SubElement(root, "raw_file", filename=raw_name)
    scan = ET.SubElement(root, "scan_parameters", mode="acquire")
    ET.SubElement(scan, "scan_resolution_x").text = str(rx)
    ET.SubElement(scan, "scan_resolution_y").text = str(ry)
    ET.SubElement(root, "pix_x").text = str(rx)  # the pre-1.2 keys, which rosettasciio reads
    ET.SubElement(root, "pix_y").text = str(ry)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
