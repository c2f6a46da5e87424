"""The result store's data model: dimension names, units and long names of every array, in one place.

Every array the pipeline writes gets zarr v3 ``dimension_names`` and ``units`` / ``long_name`` attributes from
:func:`describe` (called by :func:`sendmap.engine.store.write_array` and wherever an array is created), so that
``xarray.open_zarr(store, group=...)`` and :func:`sendmap.api.open_result` give labelled arrays:

=========  ==========================================================================
dimension  meaning (coordinate, written by :func:`write_coordinates`)
=========  ==========================================================================
``ry``     scan row (``ry``: position in nm, stored step × index)
``rx``     scan column (``rx``: nm)
``q``      profile bin (``q``: bin centre, 1/Å, Q = 1/d)
``qy``     detector row (``qy``: pixel index)
``qx``     detector column (``qx``: pixel index)
``yx``     the (y, x) pair of a centre, detector pixels
``class``  class index of :data:`sendmap.CLASS_NAMES` (statistics); ``class_index`` in ``maps``, where
           ``class`` is the class map
=========  ==========================================================================

Arrays not declared in :data:`DECLARED` get dimensions from their group and rank (``(ry, rx)`` maps,
``(ry, rx, q)`` profiles, ``(qy, qx)`` detector images), else ``<name>_0, <name>_1, …``.
"""
from __future__ import annotations

from collections.abc import Sequence

DECLARED: dict[str, tuple[tuple[str, ...], str | None, str]] = {
    # path: (dimension names, units, long name)
    "data": (("ry", "rx", "qy", "qx"), "counts", "diffraction patterns as recorded (after crop/bin)"),
    "profiles/q": (("q",), "1/Å", "scattering vector Q = 1/d, bin centre"),
    "profiles/mean": (("ry", "rx", "q"), "counts per pixel", "azimuthal mean intensity I(Q)"),
    "profiles/sem": (("ry", "rx", "q"), "counts per pixel", "standard error of the azimuthal mean"),
    "profiles/iqn": (("ry", "rx", "q"), "counts per pixel × (1/Å)^n", "I(Q)·Q^n"),
    "profiles/iqn_sem": (("ry", "rx", "q"), "counts per pixel × (1/Å)^n", "standard error of I(Q)·Q^n"),
    "profiles/iqn_robust": (("ry", "rx", "q"), "counts per pixel × (1/Å)^n", "I(Q)·Q^n, Bragg-spot sectors clipped"),
    "profiles/iqn_masked": (("ry", "rx", "q"), "counts per pixel × (1/Å)^n", "I(Q)·Q^n, listed Bragg disks masked"),
    "profiles/iqn_masked_sem": (("ry", "rx", "q"), "counts per pixel × (1/Å)^n", "standard error of iqn_masked"),
    "profiles/robust_mean": (("ry", "rx", "q"), "counts per pixel", "azimuthal mean, Bragg-spot sectors clipped"),
    "profiles/dispersion": (("ry", "rx", "q"), "1", "pixel variance / mean (index of dispersion)"),
    "features/spot_z": (("ry", "rx", "q"), "sigma", "significance of the brightest Bragg-disk-sized spot at Q"),
    "features/anisotropy": (("ry", "rx", "anisotropy_phase"), "sigma", "largest spot significance at a phase's reflections"),
    "calibration/origin": (("ry", "rx", "yx"), "pixel", "pattern centre (y, x), descan model"),
    "calibration/origin_measured": (("ry", "rx", "yx"), "pixel", "pattern centre (y, x) as measured"),
    "maps/peak_q": (("ry", "rx"), "1/Å", "first SRO peak maximum of I(Q)·Q^n"),
    "maps/peak_q_err": (("ry", "rx"), "1/Å", "1-sigma uncertainty of the first SRO peak"),
    "maps/class": (("ry", "rx"), None, "class"),
    "maps/class_probability": (("ry", "rx", "class_index"), "1", "probability of each class (evidence and spatial prior)"),
    "maps/class_confidence": (("ry", "rx"), "1", "probability of the class in maps/class"),
    "maps/phase": (("ry", "rx"), None, "library phase whose rings the spots fall on"),
    "peaks/q_peak": (("ry", "rx"), "1/Å", "first SRO peak maximum (before the crystal rule)"),
    "peaks/q_err": (("ry", "rx"), "1/Å", "1-sigma uncertainty of peaks/q_peak"),
    "statistics/region": (("ry", "rx"), None, "region of amorphous positions (-1: none)"),
    "statistics/class_mean_iqn": (("class", "q"), "counts per pixel × (1/Å)^n", "class-mean I(Q)·Q^n"),
    "statistics/class_sem_iqn": (("class", "q"), "counts per pixel × (1/Å)^n", "standard error of the class mean"),
    "ingest/total_counts": (("ry", "rx"), "counts", "detector counts per position"),
    "peaks/height": (("ry", "rx"), "counts per pixel × (1/Å)^n", "first SRO peak height"),
    "peaks/height_err": (("ry", "rx"), "counts per pixel × (1/Å)^n", "1-sigma uncertainty of the peak height"),
    "peaks/prominence": (("ry", "rx"), "counts per pixel × (1/Å)^n", "first SRO peak prominence"),
    "peaks/fwhm": (("ry", "rx"), "1/Å", "first SRO peak full width at half prominence"),
    "peaks/fwhm_err": (("ry", "rx"), "1/Å", "1-sigma uncertainty of the peak width"),
    "peaks/status": (("ry", "rx"), None, "peak fit status"),
    "peaks/second_present": (("ry", "rx"), None, "second SRO peak found"),
    "peaks/second_q_peak": (("ry", "rx"), "1/Å", "second SRO peak maximum"),
    "peaks/second_q_err": (("ry", "rx"), "1/Å", "1-sigma uncertainty of the second SRO peak"),
    "peaks/second_height": (("ry", "rx"), "counts per pixel × (1/Å)^n", "second SRO peak height"),
    "peaks/second_height_err": (("ry", "rx"), "counts per pixel × (1/Å)^n", "1-sigma uncertainty of its height"),
    "peaks/second_prominence": (("ry", "rx"), "counts per pixel × (1/Å)^n", "second SRO peak prominence"),
    "peaks/second_fwhm": (("ry", "rx"), "1/Å", "second SRO peak full width at half prominence"),
    "peaks/second_fwhm_err": (("ry", "rx"), "1/Å", "1-sigma uncertainty of its width"),
}

DETECTOR_GROUPS = ("calibration", "ingest")
"""Groups holding both detector images and per-position maps: a 2-D array there whose shape is not the scan's
is a detector image (qy, qx)."""
DETECTOR_IMAGES = {"mask", "centre_mask", "hot_pixels", "dead_pixels", "saturated_pixels", "beam_stop", "aperture",
                   "user_mask", "nonfinite_count"}
"""Names of detector images (qy, qx), whatever the scan's shape (``*_pattern`` too)."""


def describe(path: str, shape: Sequence[int], attrs: dict | None = None,
             scan_shape: Sequence[int] | None = None) -> tuple[tuple[str, ...], dict]:
    """(dimension names, attributes with ``units`` and ``long_name``) of the store array at ``path``.

    ``attrs``: the attributes the writer gives (kept; ``units`` given there wins; ``meaning`` becomes the
    ``long_name`` where none is declared). ``scan_shape``: (Ry, Rx) of the stored scan, to tell a
    per-position map from a detector image in groups holding both.

    >>> describe("maps/peak_q", (3, 4))[0]
    ('ry', 'rx')
    >>> describe("features/fem_variance", (3, 4, 50), {"meaning": "V(Q)"})
    (('ry', 'rx', 'q'), {'meaning': 'V(Q)', 'long_name': 'V(Q)'})
    >>> describe("calibration/beam_stop", (64, 64))[0]
    ('qy', 'qx')
    """
    attrs = dict(attrs or {})
    shape = tuple(shape)
    group, _, leaf = path.rpartition("/")
    if path in DECLARED and len(DECLARED[path][0]) == len(shape):
        dims, units, long_name = DECLARED[path]
        if units is not None:
            if attrs.get("units") not in (None, units):  # a descriptive text becomes the description
                attrs.setdefault("description", attrs["units"])
            attrs["units"] = units
        attrs.setdefault("long_name", long_name)
        if "class_names" in attrs:
            attrs.update({k: v for k, v in class_flags(attrs["class_names"]).items() if k not in attrs})
        return dims, attrs
    top = group.split("/")[0] if group else ""
    is_scan = scan_shape is not None and tuple(shape[:2]) == tuple(scan_shape)
    detector_image = leaf in DETECTOR_IMAGES or leaf.endswith("_pattern") or (
        top in DETECTOR_GROUPS and scan_shape is not None and not is_scan)
    if len(shape) == 2 and detector_image:
        dims = ("qy", "qx")
    elif len(shape) == 2 and top in ("maps", "peaks", "features", "ingest", "calibration"):
        dims = ("ry", "rx")
    elif len(shape) == 3 and top == "maps" and leaf.startswith("class_prob"):
        dims = ("ry", "rx", "class_index")  # not "class": maps/class is a variable of that name
    elif len(shape) == 3 and top in ("profiles", "features", "peaks") and (scan_shape is None or is_scan):
        dims = ("ry", "rx", "q")
    elif len(shape) == 1 and leaf == "q":
        dims = ("q",)
    else:
        dims = tuple(f"{leaf}_{i}" for i in range(len(shape)))
    attrs.setdefault("long_name", str(attrs.get("meaning") or f"{group} {leaf}".strip().replace("_", " ")))
    if "class_names" in attrs:
        for k, v in class_flags(attrs["class_names"]).items():
            attrs.setdefault(k, v)
    return dims, attrs


CLASS_FLAG_ATTRS = "flag_values", "flag_meanings"
"""CF-style attributes of a class map: values 0..n-1 and their names separated by spaces."""


def class_flags(class_names: Sequence[str]) -> dict:
    """CF ``flag_values`` / ``flag_meanings`` for a class map whose index i means ``class_names[i]``.

    >>> class_flags(["crystal", "sei_type1"])
    {'flag_values': [0, 1], 'flag_meanings': 'crystal sei_type1'}
    """
    return {"flag_values": list(range(len(class_names))), "flag_meanings": " ".join(class_names)}
