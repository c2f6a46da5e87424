"""sendmap: scanning electron nanobeam diffraction (SEND) maps of battery interfaces.

Data flow, one module per stage (see ``sendmap.pipeline``)::

    input -> ingest -> calibrate -> profiles -> peaks -> classify -> statistics -> report
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("sendmap")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

CLASS_NAMES = ("crystal", "sei_type1", "sei_type2", "electrolyte", "unassigned")
"""Class index -> name, as stored in ``maps/class`` (attr ``class_names``)."""

STORE_NAME = "sendmap.zarr"
"""The result store's folder name in ``output.dir`` (:mod:`sendmap.store`)."""
