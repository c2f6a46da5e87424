"""Formats end to end through ``open_dataset`` and the ingest stage: detection, crop and binning,
whole-dataset reductions, non-finite values, zarr in place, idempotence, atomicity, read-only input."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from sendmap.cli import main
from sendmap.config import config_from_dict
from sendmap.io import detect_format, open_dataset
from sendmap.pipeline import run_pipeline
from sendmap.stages.settings import q_pixel_size, scan_step_nm

RNG = np.random.default_rng(7)
SCAN, FRAME = (4, 6), (32, 32)


def _counts(dtype=np.uint16, scan=SCAN, frame=FRAME) -> np.ndarray:
    """Poisson counts with a bright disk at the centre, like a diffraction pattern."""
    yy, xx = np.indices(frame)
    lam = 2.0 + 200.0 * (np.hypot(yy - frame[0] / 2, xx - frame[1] / 2) < 3)
    return RNG.poisson(lam, size=(*scan, *frame)).astype(dtype)


def _cfg(tmp_path: Path, data: Path, **input_extra) -> object:
    return config_from_dict({
        "input": {"path": str(data), **input_extra},
        "calibration": {"q_pixel_size": 0.025, "scan_step_nm": 2.0},
        "output": {"dir": str(tmp_path / "out")},
        "compute": {"progress": False, "chunk_mb": 0.02, "block_mb": 0.05},
    })


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- formats

def _write(fmt: str, tmp_path: Path, data: np.ndarray) -> tuple[Path, dict]:
    """Write ``data`` in ``fmt``; return the path to open and extra open_dataset arguments."""
    if fmt == "mib":
        from sendmap.io.mib import write_mib

        return write_mib(tmp_path / "d.mib", data), {}
    if fmt in ("dm4", "dm3"):
        from sendmap.io import dm

        return getattr(dm, f"write_{fmt}")(tmp_path / f"d.{fmt}", data), {}
    if fmt == "empad":
        from sendmap.io.empad import write_empad

        return write_empad(tmp_path / "scan_x6_y4.raw", data), {}
    if fmt == "arina":
        from sendmap.io.hdf5 import write_arina

        return write_arina(tmp_path / "scan", data, frames_per_file=10), {}
    if fmt.startswith("py4dstem"):
        from sendmap.io.hdf5 import write_py4dstem

        layout = fmt.split(":")[1]
        return write_py4dstem(tmp_path / "d.h5", data, layout=layout), {}
    if fmt == "npy":
        np.save(tmp_path / "d.npy", data)
        return tmp_path / "d.npy", {}
    if fmt.startswith("zarr"):
        version = int(fmt[-1])
        path = tmp_path / "d.zarr"
        a = zarr.create_array(str(path), shape=data.shape, chunks=(1, 3, *data.shape[2:]), dtype=data.dtype,
                              zarr_format=version)
        a[...] = data
        return path, {}
    if fmt == "raw":
        from sendmap.io.raw import write_raw

        p = write_raw(tmp_path / "d.bin", data, byte_order=">", header=b"HEAD" * 4, frame_header_bytes=8)
        return p, {"fmt": "raw", "scan_shape": data.shape[:2],
                   "raw": {"dtype": str(data.dtype), "frame_shape": list(data.shape[2:]), "header_bytes": 16,
                           "frame_header_bytes": 8, "byte_order": ">"}}
    raise AssertionError(fmt)


FORMATS = ["mib", "dm4", "dm3", "empad", "arina", "py4dstem:emdfile", "py4dstem:emd1", "py4dstem:py4dstem012",
           "npy", "zarr2", "zarr3", "raw"]
EXPECTED = {"dm3": "dm4", "zarr2": "zarr", "zarr3": "zarr"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_is_detected_and_read_exactly(tmp_path, fmt):
    data = _counts(np.float32, frame=(128, 128)) if fmt == "empad" else _counts()
    path, kw = _write(fmt, tmp_path, data)
    expected = EXPECTED.get(fmt, fmt.split(":")[0])
    ds = open_dataset(path, kw.pop("fmt", "auto"), kw.pop("scan_shape", None), **kw)
    assert ds.format == expected
    if fmt != "raw":
        assert detect_format(path) == expected
    assert ds.data.shape == data.shape
    assert ds.data.dtype == data.dtype.newbyteorder("=")
    np.testing.assert_array_equal(ds.data.compute(), data)
    assert all(f.exists() for f in ds.files)


def test_raw_needs_a_layout(tmp_path):
    from sendmap.errors import SendmapInputError

    path, _ = _write("raw", tmp_path, _counts())
    with pytest.raises(SendmapInputError, match="input.raw"):
        open_dataset(path)


def test_info_describes_every_format(tmp_path, capsys):
    for fmt in ("dm4", "arina", "zarr3", "py4dstem:emdfile"):
        sub = tmp_path / fmt.replace(":", "_")
        sub.mkdir()
        path, _ = _write(fmt, sub, _counts())
        assert main(["info", str(path)]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["scan_shape"] == list(SCAN) and out["frame_shape"] == list(FRAME)
        assert out["format"] == EXPECTED.get(fmt, fmt.split(":")[0])


def test_real_arina_through_open_dataset(real_data_dir):
    ds = open_dataset(real_data_dir / "arina_zeros" / "test_00_master.h5")
    assert ds.format == "arina" and ds.frame_shape == (192, 192) and ds.data.dtype == np.uint32
    assert int(ds.data.sum().compute()) == 0
    assert len(ds.files) >= 2  # master + data file, fingerprinted together


# --------------------------------------------------------------------------------------------- ingest

def test_ingest_stores_data_and_whole_dataset_reductions(tmp_path):
    data = _counts()
    np.save(tmp_path / "d.npy", data)
    cfg = _cfg(tmp_path, tmp_path / "d.npy")
    summary = run_pipeline(cfg, until="ingest", log=lambda *_: None)
    assert summary["timing_s"]["ingest"] > 0
    g = zarr.open_group(str(tmp_path / "out" / "sendmap.zarr"), mode="r")
    np.testing.assert_array_equal(g["data"][...], data)
    assert g["data"].dtype == np.uint16 and g["data"].chunks[2:] == FRAME
    frames = data.reshape(-1, *FRAME).astype(np.float64)
    np.testing.assert_array_equal(g["ingest/sum_pattern"][...], frames.sum(0))
    np.testing.assert_array_equal(g["ingest/max_pattern"][...], frames.max(0))
    np.testing.assert_array_equal(g["ingest/total_counts"][...], data.sum(axis=(2, 3)))
    bf_attrs = dict(g["ingest/virtual_bf"].attrs)
    cy, cx = bf_attrs["centre_yx_px"]
    assert abs(cy - 16) <= 1 and abs(cx - 16) <= 1  # the bright disk
    yy, xx = np.indices(FRAME)
    r = np.hypot(yy - cy, xx - cx)
    np.testing.assert_allclose(g["ingest/virtual_bf"][...], (data * (r <= bf_attrs["radius_px"])).sum(axis=(2, 3)))
    assert g.attrs["status"] == "partial" and "ingest" in g.attrs["stages"]
    assert not (tmp_path / "out" / "summary.json").exists()


def test_crop_and_bin_sum_counts_exactly(tmp_path, capsys):
    data = _counts(np.uint8, scan=(5, 7), frame=(33, 32))
    np.save(tmp_path / "d.npy", data)
    cfg = _cfg(tmp_path, tmp_path / "d.npy", crop_r=[1, 5, 0, 7], crop_q=[0, 33, 2, 32], bin_r=2, bin_q=2)
    run_pipeline(cfg, until="ingest")
    assert "left out" in capsys.readouterr().out  # 7 columns / 2 and 33 rows / 2 do not divide
    g = zarr.open_group(str(tmp_path / "out" / "sendmap.zarr"), mode="r")
    sub = data[1:5, 0:6, 0:32, 2:32].astype(np.int64)
    ref = sub.reshape(2, 2, 3, 2, 16, 2, 15, 2).sum(axis=(1, 3, 5, 7))
    stored = g["data"][...]
    assert stored.dtype == np.uint16  # 16 uint8 values summed need more than 8 bits
    np.testing.assert_array_equal(stored, ref)
    assert g.attrs["ingest"]["crop_r"] == [1, 5, 0, 6] and g.attrs["ingest"]["crop_q"] == [0, 32, 2, 32]
    assert q_pixel_size(cfg) == pytest.approx(0.05) and scan_step_nm(cfg) == pytest.approx(4.0)


def test_crop_outside_the_data_is_an_input_error(tmp_path, capsys):
    np.save(tmp_path / "d.npy", _counts())
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("input: {path: d.npy, crop_q: [0, 64, 0, 32]}\ncalibration: {q_pixel_size: 0.025}\n"
                        "output: {dir: out}\n")
    assert main(["run", str(cfg_path), "--no-progress"]) == 2
    assert "crop_q" in capsys.readouterr().err


def test_nonfinite_values_error_or_mask(tmp_path, capsys):
    data = _counts(np.float32)
    data[2, 3, 5, 7] = np.nan
    data[0, 1, 5, 7] = np.inf
    np.save(tmp_path / "d.npy", data)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("input: {path: d.npy}\ncalibration: {q_pixel_size: 0.025}\noutput: {dir: out}\n"
                        "compute: {progress: false}\n")
    assert main(["run", str(cfg_path)]) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "(5, 7)" in err and "input.nonfinite" in err
    cfg = _cfg(tmp_path, tmp_path / "d.npy", nonfinite="mask")
    run_pipeline(cfg, until="calibrate", log=lambda *_: None)
    g = zarr.open_group(str(tmp_path / "out" / "sendmap.zarr"), mode="r")
    assert np.isfinite(g["data"][...]).all() and g["data"][2, 3, 5, 7] == 0
    assert g["ingest/nonfinite_count"][5, 7] == 2 and int(np.sum(g["ingest/nonfinite_count"][...])) == 2
    assert not g["calibration/mask"][5, 7]
    clean = np.where(np.isfinite(data), data, 0).astype(np.float64)
    np.testing.assert_allclose(g["ingest/sum_pattern"][...], clean.sum(axis=(0, 1)), rtol=1e-6)


def test_zarr_input_is_used_in_place(tmp_path):
    data = _counts()
    path, _ = _write("zarr3", tmp_path, data)
    before = sorted((p.relative_to(path), p.stat().st_mtime_ns) for p in path.rglob("*"))
    cfg = _cfg(tmp_path, path)
    run_pipeline(cfg, until="profiles", log=lambda *_: None)
    g = zarr.open_group(str(tmp_path / "out" / "sendmap.zarr"), mode="r")
    assert "data" not in g and g.attrs["ingest"]["in_place"] is True
    assert g.attrs["data_ref"]["store"] == str(path.resolve())
    np.testing.assert_array_equal(g["ingest/total_counts"][...], data.sum(axis=(2, 3)))
    assert g["profiles/mean"].shape[:2] == SCAN and np.isfinite(g["profiles/mean"][..., 1:5]).all()
    assert sorted((p.relative_to(path), p.stat().st_mtime_ns) for p in path.rglob("*")) == before
    # with binning the data must be copied
    cfg2 = _cfg(tmp_path, path, bin_q=2)
    run_pipeline(cfg2, until="ingest", log=lambda *_: None)
    g = zarr.open_group(str(tmp_path / "out" / "sendmap.zarr"), mode="r")
    assert g["data"].shape == (*SCAN, 16, 16) and g.attrs["ingest"]["in_place"] is False


def test_ingest_is_idempotent_and_never_touches_the_input(tmp_path):
    from sendmap.io.mib import write_mib

    data = _counts()
    mib = write_mib(tmp_path / "d.mib", data)
    sha, mtime = _sha(mib), mib.stat().st_mtime_ns
    cfg = _cfg(tmp_path, mib)
    first = run_pipeline(cfg, until="ingest", log=lambda *_: None)
    second = run_pipeline(cfg, until="ingest", log=lambda *_: None)
    assert "ingest" not in first["reused_stages"] and second["reused_stages"] == ["ingest"]
    assert _sha(mib) == sha and mib.stat().st_mtime_ns == mtime
    # a changed input (same size, other counts) is ingested again
    write_mib(mib, data[::-1])
    third = run_pipeline(cfg, until="ingest", log=lambda *_: None)
    assert "ingest" not in third["reused_stages"]
    g = zarr.open_group(str(tmp_path / "out" / "sendmap.zarr"), mode="r")
    np.testing.assert_array_equal(g["data"][...], data[::-1])


def test_a_failed_ingest_is_never_taken_for_complete(tmp_path, monkeypatch):
    from sendmap.compute.ingest import IngestBlock

    data = _counts()
    np.save(tmp_path / "d.npy", data)
    cfg = _cfg(tmp_path, tmp_path / "d.npy")
    cfg.compute.chunk_mb = cfg.compute.block_mb = 0.002  # one frame per chunk: 24 blocks
    calls = {"n": 0}
    real = IngestBlock.__call__

    def dying(self, loaded):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt("simulated kill in the middle of ingest")
        return real(self, loaded)

    monkeypatch.setattr(IngestBlock, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, until="ingest", log=lambda *_: None)
    g = zarr.open_group(str(tmp_path / "out" / "sendmap.zarr"), mode="r")
    assert g.attrs["status"] == "failed" and "ingest" not in g.attrs.get("stages", {})
    monkeypatch.setattr(IngestBlock, "__call__", real)
    again = run_pipeline(cfg, until="ingest", log=lambda *_: None)
    assert "ingest" not in again["reused_stages"]
    g = zarr.open_group(str(tmp_path / "out" / "sendmap.zarr"), mode="r")
    np.testing.assert_array_equal(g["data"][...], data)


def test_processes_scheduler_ingests_the_same(tmp_path):
    from sendmap.io.mib import write_mib

    data = _counts()
    mib = write_mib(tmp_path / "d.mib", data)
    cfg = _cfg(tmp_path, mib)
    cfg.compute.scheduler = "processes"
    cfg.compute.n_workers = 2
    run_pipeline(cfg, until="ingest", log=lambda *_: None)
    g = zarr.open_group(str(tmp_path / "out" / "sendmap.zarr"), mode="r")
    np.testing.assert_array_equal(g["data"][...], data)
    np.testing.assert_array_equal(g["ingest/total_counts"][...], data.sum(axis=(2, 3)))


def test_direct_chunk_writes_read_back_through_zarr(tmp_path):
    """write_region_direct encodes chunks as zarr would: zarr reads them back, edge chunks included,
    and a chunk written by zarr itself has the same bytes."""
    from sendmap.engine.store import compressor, write_region_direct

    data = RNG.integers(0, 3000, size=(5, 7, 4, 6)).astype(np.uint16)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    chunks = (2, 3, 4, 6)
    g.create_array("d", shape=data.shape, dtype=data.dtype, chunks=chunks, compressors=compressor(), fill_value=0)
    for y0 in range(0, 5, 2):
        write_region_direct(tmp_path / "s.zarr" / "d", chunks, (y0, 0, 0, 0), data[y0:y0 + 2])
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "s.zarr"), path="d", mode="r")[...], data)
    z = g.create_array("z", shape=data.shape, dtype=data.dtype, chunks=chunks, compressors=compressor(), fill_value=0)
    z[...] = data
    for key in ("c/0/0/0/0", "c/2/2/0/0"):  # an interior and a corner edge chunk
        assert (tmp_path / "s.zarr" / "d" / key).read_bytes() == (tmp_path / "s.zarr" / "z" / key).read_bytes()
    with pytest.raises(ValueError, match="aligned"):
        write_region_direct(tmp_path / "s.zarr" / "d", chunks, (1, 0, 0, 0), data[1:3])
