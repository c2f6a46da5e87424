"""sendmap: scanning electron nanobeam diffraction (SEND) maps of battery interfaces.

Data flow, one module per stage (see ``sendmap.pipeline``)::

    input -> ingest -> calibrate -> profiles -> peaks -> classify -> statistics -> report
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("sendmap")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

CLASS_NAMES = ("crystal", "sei_type1", "sei_type2", "electrolyte", "unassigned", "uncertain")
"""Class index -> name, as stored in ``maps/class`` (attr ``class_names``)."""

STORE_NAME = "sendmap.zarr"
"""The result store's folder name in ``output.dir`` (:mod:`sendmap.engine.store`)."""

__all__ = ["CLASS_NAMES", "STORE_NAME", "Result", "classify", "export", "find_centres", "fit_peaks", "open_result",
           "radial_profiles", "run"]

_API = {"Result", "class_names", "classify", "find_centres", "fit_peaks", "open_result", "radial_profiles", "run"}


def __getattr__(name):
    """The Python API (:mod:`sendmap.api`, :func:`sendmap.exports.export`), imported on first use: ``import
    sendmap`` stays light for the command line."""
    if name in _API:
        from . import api

        return getattr(api, name)
    if name == "export":
        from .exports import export

        return export
    raise AttributeError(f"module 'sendmap' has no attribute {name!r}")


def _numba_cache_for_this_source() -> None:
    """Point numba's on-disk cache at a folder of this exact source (:func:`sendmap.engine.codehash.numba_cache_dir`):
    numba checks only the time stamp of a kernel's own file, not of helpers inlined from other files. The root
    is ``$NUMBA_CACHE_DIR`` where the user set one, else ``~/.cache/sendmap/numba``; child processes inherit it."""
    import os
    import sys

    root = os.environ.get("SENDMAP_NUMBA_CACHE_ROOT")
    if root is None:
        root = os.environ.get("NUMBA_CACHE_DIR") or ""
        os.environ["SENDMAP_NUMBA_CACHE_ROOT"] = root
    from .engine.codehash import numba_cache_dir

    d = str(numba_cache_dir(root or None))
    os.environ["NUMBA_CACHE_DIR"] = d
    if "numba" in sys.modules:  # imported before sendmap (a notebook): its config was read already
        sys.modules["numba"].config.CACHE_DIR = d


_numba_cache_for_this_source()
