"""Detector mask: hot, dead and saturated pixels (from the sum and maximum patterns of a dataset), the
shadows of a beam stop and of an aperture (from the mean pattern: :mod:`sendmap.science.shadows`), and a user mask file.

Every function is pure (arrays in, arrays out) except ``load_user_mask``. Convention: a *mask* is (Qy, Qx)
bool, True where a pixel is used; the per-cause arrays (``hot``, ``dead``, ``saturated_mask``,
``beam_stop``, ``aperture``) are True where a pixel is excluded. The detector mask used by the pipeline is

    hot_dead["mask"] & ~saturated & shadows["mask"] & user_mask
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage



HOT_CLUSTER_MAX = 3
"""Largest cluster of adjacent hot pixels flagged (each above ``hot_factor`` × the brightest pixel two away, by
``hot_sigma``): a Bragg or the central disk of radius ≥ 2 px covers ≥ 12 pixels at that contrast (the probe disk is
6.4 px at 2 mrad, 200 kV, 0.0125 1/Å per pixel), so it is never that small; two or three adjacent hot pixels are
(a pair of 724 and 224 counts per frame on the development scan ``sendmap synth --scenario matrix:legacy --seed
561``, missed by the brightest-neighbour test, put a 60 σ "spot" at Q 0.31 1/Å into every pattern)."""


def hot_dead_mask(sum_pattern: np.ndarray, max_pattern: np.ndarray,
                  hot_factor: float = 5.0, hot_sigma: float = 10.0, dead_min_expected: float = 20.0) -> dict:
    """Find hot and dead pixels; returns ``{"mask", "hot", "dead"}`` (Qy, Qx) bool arrays.

    * **hot**: a pixel whose summed counts exceed ``hot_factor`` × the brightest of its 8 neighbours
      *and* that excess is more than ``hot_sigma`` Poisson σ. Comparing with the brightest neighbour
      (not the median) keeps the steep edge of the central disk and Bragg disks, whose pixels always
      have an equally bright neighbour, from being flagged. Clusters of 2 to :data:`HOT_CLUSTER_MAX` adjacent
      pixels that pass the same test against the brightest pixel two away are hot too.
    * **dead**: a pixel that never counted (max = 0) where its neighbourhood's median sum predicts at
      least ``dead_min_expected`` counts (P(0 | Poisson 20) = 2e-9).

    ``mask`` is True where a pixel is used.

    >>> import numpy as np
    >>> s = np.full((16, 16), 100.0); s[3, 4] = 5e4; s[8, 8] = 0
    >>> m = np.ones((16, 16)); m[8, 8] = 0
    >>> r = hot_dead_mask(s, m)
    >>> int(r["hot"].sum()), int(r["dead"].sum()), bool(r["mask"][3, 4])
    (1, 1, False)
    """
    s = np.asarray(sum_pattern, dtype=np.float64)
    footprint = np.ones((3, 3), bool)
    footprint[1, 1] = False
    nb_max = ndimage.maximum_filter(s, footprint=footprint, mode="nearest")
    hot = (s > hot_factor * nb_max) & (s - nb_max > hot_sigma * np.sqrt(np.maximum(nb_max, 1.0)))
    # clusters of 2-3 hot pixels (adjacent defects, or one with charge shared into a neighbour): each is the
    # other's brightest neighbour, so the test above passes both; against the brightest pixel two away instead
    ring = np.ones((5, 5), bool)
    ring[1:4, 1:4] = False
    nb2 = ndimage.maximum_filter(s, footprint=ring, mode="nearest")
    cand = (s > hot_factor * nb2) & (s - nb2 > hot_sigma * np.sqrt(np.maximum(nb2, 1.0)))
    if cand.any():
        lab, _ = ndimage.label(cand, structure=np.ones((3, 3), bool))
        size = np.bincount(lab.ravel())
        size[0] = 0
        hot |= cand & (size[lab] >= 2) & (size[lab] <= HOT_CLUSTER_MAX)
    nb_med = ndimage.median_filter(s, size=5, mode="nearest")
    dead = (np.asarray(max_pattern) <= 0) & (nb_med >= dead_min_expected)
    return {"mask": ~(hot | dead), "hot": hot, "dead": dead}


def saturation_level(dtype, counter_depth_bits: int | None = None) -> float | None:
    """Count at which a counting detector's pixel saturates: 2**bits − 1.

    ``counter_depth_bits`` is the counter depth when the detector reports one (Merlin: 1, 6, 12 or 24
    bits, stored in u1/u1/u2/u4, so a 6-bit Merlin file saturates at 63 although its pixels are bytes;
    DECTRIS ``saturation_value``); otherwise the integer ``dtype``'s maximum. Float data (EMPAD,
    gain-corrected frames) have no fixed saturation count: returns None.

    >>> saturation_level("u1", 6), saturation_level(">u2"), saturation_level("float32"), saturation_level("u1", 1)
    (63, 65535, None, None)
    """
    if counter_depth_bits is not None:
        bits = int(counter_depth_bits)
        if not 1 <= bits <= 64:
            raise ValueError(f"counter depth must be 1..64 bits, got {counter_depth_bits}")
        # a 1-bit (binary) counter: every count is its maximum; "saturated" would mask every pixel that counted
        return None if bits == 1 else 2 ** bits - 1
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        return int(np.iinfo(dt).max)
    return None


def saturated_mask(max_pattern: np.ndarray, saturation_count: float | None) -> np.ndarray:
    """Pixels that reached the detector's saturation count in at least one frame: (Qy, Qx) bool,
    **True = saturated** (a flag like ``hot``/``dead``, not a used-pixel mask).

    ``max_pattern`` is the per-pixel maximum over the scan (``ingest/max_pattern``); ``saturation_count``
    from ``saturation_level`` (None: nothing is flagged). A saturated pixel's counts are a lower bound,
    not a measurement, so the whole pixel is excluded from the detector mask, hence from the centre fit
    and from every profile (``mask = hot_dead["mask"] & ~saturated``). Where the central disk itself
    saturates, its pixels go too: find the centres with ``centre.symmetry_centres`` (the rings).

    >>> mx = np.array([[3, 63], [62, 63]], dtype=np.uint8)
    >>> saturated_mask(mx, saturation_level("u1", 6))
    array([[False,  True],
           [False,  True]])
    """
    mx = np.asarray(max_pattern)
    if saturation_count is None:
        return np.zeros(mx.shape, bool)
    return np.asarray(mx >= saturation_count)


USER_MASK_SUFFIXES = (".npy", ".tif", ".tiff", ".png")


def load_user_mask(path, shape) -> np.ndarray:
    """Read a user's detector mask file; returns (Qy, Qx) bool, **True = used** pixel.

    File convention (pyFAI's, so its masks and those drawn in pyFAI-drawmask/ImageJ work as they are):
    a **nonzero value marks an excluded pixel**, zero a used one (NaN counts as nonzero). Formats:
    ``.npy`` (any numeric or bool dtype), ``.tif``/``.tiff`` (tifffile) and ``.png`` (Pillow; colour
    images are converted to grey first). The array must have the detector's frame shape ``shape``
    (after any crop or binning of the frames); a leading axis of length 1 is dropped.

    Raises ``SendmapInputError`` naming the file when it is missing, unreadable, of an unknown type or
    of the wrong shape.

    >>> import tempfile, os
    >>> m = np.zeros((4, 5), np.uint8); m[1, 2] = 1
    >>> p = os.path.join(tempfile.mkdtemp(), "mask.npy"); np.save(p, m)
    >>> used = load_user_mask(p, (4, 5))
    >>> bool(used[1, 2]), int(used.sum())
    (False, 19)
    """
    from sendmap.errors import SendmapInputError

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in USER_MASK_SUFFIXES:
        raise SendmapInputError(f"mask file {p}: unknown type {p.suffix!r}; use one of "
                                f"{', '.join(USER_MASK_SUFFIXES)} (nonzero = excluded pixel)")
    if not p.is_file():
        raise SendmapInputError(f"mask file {p}: not found")
    try:
        if suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(p)
        else:
            from PIL import Image

            with Image.open(p) as im:
                if im.mode not in ("1", "L", "I", "I;16", "F"):
                    im = im.convert("L")
                arr = np.asarray(im)
    except Exception as exc:  # any reader error: report the file, not a traceback
        raise SendmapInputError(
            f"mask file {p}: cannot be read as {suffix[1:]} ({type(exc).__name__}: {exc})") from exc
    arr = np.asarray(arr)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    want = tuple(int(v) for v in shape)
    if arr.shape != want:
        raise SendmapInputError(
            f"mask file {p}: shape {tuple(arr.shape)} does not match the detector frames' shape {want} "
            f"(Qy, Qx after crop/binning); nonzero = excluded pixel")
    if arr.dtype.kind not in "biuf":
        raise SendmapInputError(f"mask file {p}: values of type {arr.dtype} are not numbers")
    return ~(arr != 0)
