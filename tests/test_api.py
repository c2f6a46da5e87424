"""The Python API (``sendmap.run``, ``open_result``, the array functions, ``export``), the self-describing store
(dimension names, units, long names, coordinates, class flags) and the example notebook."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

import sendmap
from sendmap.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 6 × 8 scan of 64² frames run with ``peaks.denoise: none`` and the Poisson error model (the plain fit on
    the stored errors, as the API's fit_peaks makes it)."""
    d = tmp_path_factory.mktemp("api")
    assert main(["synth", str(d / "s"), "--scan-shape", "6", "8", "--detector", "64", "--seed", "3", "--quiet"]) == 0
    res = sendmap.run(d / "s" / "config.yaml", "output.figures=false", peaks__denoise="none",
                      profiles__error_model="poisson")
    return res


def test_run_returns_the_summary_and_reuses_stages(small):
    assert small.store.is_dir() and (small.path / "summary.json").is_file()
    assert json.loads((small.path / "summary.json").read_text())["classes"] == small.classes
    again = sendmap.run(small.path.parent / "config.yaml", "output.figures=false", peaks__denoise="none",
                        profiles__error_model="poisson")
    assert again.summary["reused_stages"] == ["ingest", "calibrate", "profiles", "peaks", "classify", "statistics",
                                              "report"]


def test_every_array_is_labelled_and_xarray_opens_every_group(small):
    import xarray as xr

    store = small.store
    n = 0
    for f in store.rglob("zarr.json"):
        meta = json.loads(f.read_text())
        if meta.get("node_type") != "array":
            continue
        n += 1
        name = f.parent.relative_to(store).as_posix()
        assert meta.get("dimension_names") and len(meta["dimension_names"]) == len(meta["shape"]), name
        attrs = meta.get("attributes", {})
        assert "long_name" in attrs or "units" in attrs, name
    assert n > 40
    groups = {f.parent.relative_to(store).parts[0] for f in store.rglob("zarr.json") if f.parent != store}
    for grp in sorted(groups - {"data_sparse"}):
        if (store / grp / "zarr.json").is_file() and json.loads((store / grp / "zarr.json").read_text())[
                "node_type"] == "group":
            xr.open_zarr(str(store), group=grp, consolidated=False)  # no conflicting dimensions
    maps = xr.open_zarr(str(store), group="maps", consolidated=False)
    assert maps["peak_q"].dims == ("ry", "rx") and maps["peak_q"].attrs["units"] == "1/Å"
    assert maps["ry"].attrs["units"] == "nm" and float(maps["rx"][1] - maps["rx"][0]) == 4.0
    flags = maps["class"].attrs
    assert flags["flag_meanings"].split() == list(sendmap.CLASS_NAMES) and flags["flag_values"] == list(range(len(sendmap.CLASS_NAMES)))
    prof = xr.open_zarr(str(store), group="profiles", consolidated=False)
    assert prof["iqn"].dims == ("ry", "rx", "q") and prof["q"].attrs["units"] == "1/Å"


def test_open_result_is_one_labelled_lazy_dataset(small):
    ds = sendmap.open_result(small.path)
    assert {"ry", "rx", "q", "qy", "qx"} <= set(ds.dims)
    assert ds["iqn"].dims == ("ry", "rx", "q") and hasattr(ds["iqn"].data, "dask")
    for v in ("peak_q", "peak_q_err", "class", "iqn", "mean", "peaks_q_err", "features_spot_z"):
        assert "units" in ds[v].attrs or "long_name" in ds[v].attrs, v
    names = sendmap.api.class_names(ds)
    g = zarr.open_group(str(small.store), mode="r")
    assert np.array_equal(names, np.array(sendmap.CLASS_NAMES)[np.asarray(g["maps/class"])])
    assert ds.attrs["config"]["peaks"]["denoise"] == "none" and ds["sem"].attrs["error_model"] == "poisson"
    with pytest.raises(sendmap.errors.SendmapInputError, match="no sendmap result store"):
        sendmap.open_result(small.path / "nowhere")


def _stored_frames_and_geometry(small):
    from sendmap.engine.data import open_stored
    from sendmap.science.sparse import as_dense

    g = zarr.open_group(str(small.store), mode="r")
    stored = open_stored(str(small.store))
    ry, rx = g["maps/class"].shape
    frames = np.asarray(as_dense(stored.read((0, ry, 0, rx)))).reshape(ry, rx, *g["calibration/mask"].shape)
    return g, frames


def test_radial_profiles_equal_the_profile_stage(small):
    import dask.array as da

    g, frames = _stored_frames_and_geometry(small)
    cal = g.attrs["calibration"]
    prof = g.attrs["profiles"]
    kw = dict(centres=np.asarray(g["calibration/origin"]), q_pixel_size=cal["q_pixel_size"],
              ellipse=(cal["ellipse"]["ratio"], cal["ellipse"]["angle_deg"]), mask=np.asarray(g["calibration/mask"]),
              q_max=prof["q_max"], disk_radius_q=cal["disk_radius_px"] * cal["q_pixel_size"], error_model="poisson")
    p = sendmap.radial_profiles(frames, **kw)
    assert np.array_equal(p["q"], np.asarray(g["profiles/q"]))
    for name in ("mean", "sem", "iqn", "iqn_sem", "robust_mean"):
        assert np.array_equal(p[name], np.asarray(g[f"profiles/{name}"]), equal_nan=True), name
    assert np.array_equal(p["spot_z"], np.asarray(g["features/spot_z"]), equal_nan=True)
    assert np.array_equal(p["fem_variance"], np.asarray(g["features/fem_variance"]), equal_nan=True)
    lazy = sendmap.radial_profiles(da.from_array(frames, chunks=(2, 4, -1, -1)), **kw)
    assert isinstance(lazy["mean"], da.Array)
    assert np.array_equal(lazy["mean"].compute(), p["mean"], equal_nan=True)


def test_fit_peaks_and_classify_equal_the_pipeline_and_dask_stays_dask(small):
    import dask.array as da

    g = zarr.open_group(str(small.store), mode="r")
    q, iqn, sem = (np.asarray(g[f"profiles/{k}"], dtype=np.float64) for k in ("q", "iqn", "iqn_sem"))
    cfg = g.attrs["config"]["peaks"]
    fr = g.attrs["peaks"]["fit_range"]  # the range the stage chose (fit_half_width: auto)
    half = fr["half_width"][0] if "fixed" in fr["mode"] else tuple(fr["half_width"])
    opts = dict(window=tuple(cfg["window"]), half_width=half, degree=g.attrs["peaks"]["degree"],  # the one used
                smooth_sigma_bins=cfg["smooth_sigma_bins"])
    r = sendmap.fit_peaks(iqn, q, sem, **opts)
    assert r["q_peak"].shape == iqn.shape[:2]
    assert np.array_equal(r["q_peak"], np.asarray(g["peaks/q_peak"]), equal_nan=True)
    assert np.array_equal(r["q_err"], np.asarray(g["peaks/q_err"]), equal_nan=True)
    lazy = sendmap.fit_peaks(da.from_array(iqn, chunks=(3, 4, -1)), q, da.from_array(sem, chunks=(3, 4, -1)), **opts)
    assert isinstance(lazy["q_peak"], da.Array)
    assert np.array_equal(lazy["q_peak"].compute(), r["q_peak"], equal_nan=True)
    assert np.isfinite(sendmap.fit_peaks(iqn, q, sem, window=opts["window"])["q_peak"]).mean() > 0.5  # auto
    c = sendmap.classify([0.33, 0.285, 0.30, np.nan], crystal_z=[1, 1, 1, 1], lif_z=[1, 1, 12, 1])
    assert [sendmap.CLASS_NAMES[i] for i in c] == ["sei_type1", "electrolyte", "sei_type2", "unassigned"]


def test_find_centres_numpy_and_dask():
    import dask.array as da

    yy, xx = np.mgrid[:64, :64]
    true = np.array([[30.0, 33.5], [31.25, 32.0]])
    frames = np.stack([100.0 * (np.hypot(yy - y, xx - x) < 6) for y, x in true]).reshape(1, 2, 64, 64)
    c = sendmap.find_centres(frames, radius_px=9, guess=[32, 32])
    assert c.shape == (1, 2, 2) and np.allclose(c[0], true, atol=0.15)
    lazy = sendmap.find_centres(da.from_array(frames, chunks=(1, 1, 64, 64)), radius_px=9, guess=[32, 32])
    assert isinstance(lazy, da.Array) and np.array_equal(lazy.compute(), c)


def test_export_hspy_emd_csv_read_back_with_calibrated_axes(small, tmp_path):
    from rsciio.hspy import file_reader

    files = sendmap.export(small.path, to="hspy", out=tmp_path / "h")
    assert {f.name for f in files} == {"peak_q.hspy", "peak_q_err.hspy", "class.hspy", "iqn.hspy", "mean.hspy"}
    sig = file_reader(str(tmp_path / "h" / "iqn.hspy"))[0]
    axes = {a["name"]: a for a in sig["axes"]}
    assert [a["name"] for a in sig["axes"]] == ["ry", "rx", "q"] and axes["q"]["navigate"] is False
    assert axes["rx"]["units"] == "nm" and axes["rx"]["scale"] == 4.0 and axes["q"]["units"] == "1/Å"
    g = zarr.open_group(str(small.store), mode="r")
    q = np.asarray(g["profiles/q"])
    assert axes["q"]["offset"] == pytest.approx(q[0]) and axes["q"]["scale"] == pytest.approx(q[1] - q[0])
    assert np.array_equal(sig["data"], np.asarray(g["profiles/iqn"]), equal_nan=True)
    pq = file_reader(str(tmp_path / "h" / "peak_q.hspy"))[0]
    assert np.array_equal(pq["data"], np.asarray(g["maps/peak_q"]), equal_nan=True)

    emd = sendmap.export(small.path, to="emd", out=tmp_path / "e")[0]
    emdfile = pytest.importorskip("emdfile", reason="emdfile (py4DSTEM's EMD reader) not installed")
    arr = emdfile.read(str(emd), emdpath="sendmap/iqn")
    assert tuple(arr.dim_names) == ("ry", "rx", "q") and arr.dim_units[0] == "nm"
    assert np.allclose(arr.dims[2], q) and np.array_equal(arr.data, np.asarray(g["profiles/iqn"]), equal_nan=True)

    csv = sendmap.export(small.path, to="csv", out=tmp_path / "c")[0].read_text().splitlines()
    assert csv[0].startswith("ry_nm,rx_nm,class,peak_q") and len(csv) == 1 + 6 * 8
    assert main(["export", str(small.path), "--to", "zspy", "--out", str(tmp_path / "z")]) == 2


def test_example_notebook_runs(tmp_path, monkeypatch):
    """Every code cell of examples/quickstart.ipynb, in order, in one namespace, from the examples folder."""
    nb = json.loads((ROOT / "examples" / "quickstart.ipynb").read_text())
    monkeypatch.chdir(ROOT / "examples")
    monkeypatch.setenv("SENDMAP_NOTEBOOK_OUT", str(tmp_path / "out"))
    import matplotlib

    matplotlib.use("Agg")
    ns: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "quickstart.ipynb", "exec"), ns)
    assert ns["result"].summary["classes"]["sei_type1"]["count"] > 0
    assert abs(float(np.nanmedian(ns["peaks"]["q_peak"])) - 0.33) < 0.02
    assert (tmp_path / "out" / "export" / "iqn.hspy").is_file()
