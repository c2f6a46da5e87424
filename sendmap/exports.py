"""Results into other tools' files: HyperSpy signals (``.hspy``, through rosettasciio), a py4DSTEM-readable EMD
1.0 file (HDF5, the layout of the ``emdfile`` package), or a CSV table per position.

What is exported: the maps ``peak_q``, ``peak_q_err`` and ``class`` (2-D, axes ry, rx in nm) and the profiles
``iqn`` and ``mean`` (ry, rx, q: navigation ry, rx in nm, signal Q in 1/Å), each with its units. Every file is
written to a temporary name and renamed: no half-written file is left behind.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import SendmapInputError

FORMATS = ("hspy", "zspy", "emd", "csv")
MAPS = ("peak_q", "peak_q_err", "class")
PROFILES = ("iqn", "mean")


def _axis(ds, dim: str) -> dict:
    """A linear axis (offset, scale, units) of a dataset dimension."""
    c = np.asarray(ds[dim].values, dtype=float)
    scale = float(c[1] - c[0]) if c.size > 1 else 1.0
    return {"name": dim, "units": str(ds[dim].attrs.get("units", "")), "offset": float(c[0]) if c.size else 0.0,
            "scale": scale, "size": int(c.size)}


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def export(result, to: str = "hspy", out=None) -> list[Path]:
    """Export the results in folder ``result`` (or its ``sendmap.zarr``) to format ``to`` (:data:`FORMATS`) in
    folder ``out`` (default ``<result>/export``). Returns the files written.

    ``zspy`` is refused: rosettasciio's zspy writer needs zarr 2, and sendmap's store needs zarr 3.
    """
    from .api import open_result
    from . import __version__

    if to not in FORMATS:
        raise SendmapInputError(f"export: unknown format {to!r}; choose one of {', '.join(FORMATS)}")
    if to == "zspy":
        raise SendmapInputError("export --to zspy is not available: rosettasciio's zspy writer needs zarr 2 "
                                "(zarr.storage.NestedDirectoryStore), and sendmap's store needs zarr 3; use "
                                "--to hspy (the same HyperSpy signals in HDF5)")
    ds = open_result(result)
    res = Path(result)
    res = res.parent if res.name.endswith(".zarr") else res
    out = Path(out) if out is not None else res / "export"
    out.mkdir(parents=True, exist_ok=True)
    if to == "hspy":
        return [_write_hspy(ds, name, out, __version__) for name in MAPS + PROFILES if name in ds]
    if to == "emd":
        return [_write_emd(ds, out / "sendmap.emd", __version__)]
    return [_write_csv(ds, out / "positions.csv")]


def _signal_dict(ds, name: str, version: str) -> dict:
    var = ds[name]
    axes = [dict(_axis(ds, d), navigate=(d in ("ry", "rx") and "q" in var.dims)) for d in var.dims]
    title = str(var.attrs.get("long_name", name))
    md = {"General": {"title": name, "long_name": title},
          "Signal": {"signal_type": "", "quantity": f"{title} ({var.attrs.get('units', '')})"}}
    if name == "class":
        md["Signal"]["flag_meanings"] = str(var.attrs.get("flag_meanings", ""))
    return {"data": np.asarray(var.values), "axes": axes, "metadata": md, "original_metadata": {},
            "attributes": {"_lazy": False}, "tmp_parameters": {}, "learning_results": {}, "models": {},
            "package_info": {"name": "sendmap", "version": version}}


def _write_hspy(ds, name: str, out: Path, version: str) -> Path:
    from rsciio.hspy import file_writer

    path = out / f"{name}.hspy"
    tmp = _tmp(path)
    file_writer(str(tmp), _signal_dict(ds, name, version), show_progressbar=False)
    os.replace(tmp, path)
    return path


def _write_emd(ds, path: Path, version: str) -> Path:
    """EMD 1.0 (HDF5): root attrs ``emd_group_type: file``, a group ``sendmap`` (``root``) holding one group per
    array (``emd_group_type: array``) with ``data`` (attr ``units``) and ``dim0``, ``dim1``, … (``name``,
    ``units``; each dimension's full coordinate vector)."""
    import uuid

    import h5py

    tmp = _tmp(path)
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"emd_group_type": "file", "version_major": 1, "version_minor": 0,
                        "UUID": str(uuid.uuid4()), "authoring_program": f"sendmap {version}", "authoring_user": ""})
        root = f.create_group("sendmap")
        root.attrs.update({"emd_group_type": "root", "python_class": "Root"})
        for name in MAPS + PROFILES:
            if name not in ds:
                continue
            var = ds[name]
            g = root.create_group(name)
            g.attrs.update({"emd_group_type": "array", "python_class": "Array"})
            d = g.create_dataset("data", data=np.asarray(var.values))
            d.attrs["units"] = str(var.attrs.get("units", ""))
            for i, dim in enumerate(var.dims):
                v = g.create_dataset(f"dim{i}", data=np.asarray(ds[dim].values, dtype=np.float64))
                v.attrs.update({"name": dim, "units": str(ds[dim].attrs.get("units", ""))})
    os.replace(tmp, path)
    return path


def _write_csv(ds, path: Path) -> Path:
    """One row per position: ry_nm, rx_nm, class, peak_q (1/Å), peak_q_err (1/Å)."""
    from .api import class_names

    ry, rx = np.meshgrid(ds["ry"].values, ds["rx"].values, indexing="ij")
    names = class_names(ds)
    q = np.asarray(ds["peak_q"].values, dtype=float)
    e = np.asarray(ds["peak_q_err"].values, dtype=float)
    tmp = _tmp(path)
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write("ry_nm,rx_nm,class,peak_q_inv_angstrom,peak_q_err_inv_angstrom\n")
        for a, b, c, d, f in zip(ry.ravel(), rx.ravel(), names.ravel(), q.ravel(), e.ravel()):
            fh.write(f"{a:g},{b:g},{c},{'' if not np.isfinite(d) else f'{d:.5f}'},"
                     f"{'' if not np.isfinite(f) else f'{f:.5f}'}\n")
    os.replace(tmp, path)
    return path
