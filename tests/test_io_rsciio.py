"""Formats read through rosettasciio (sendmap.io.generic), the fpd scan, calibrations taken from the file, and
io-level bad input (FIFO, symlink loop, corrupt zarr chunk, stacks without a scan shape) through the CLI.

Every reader is compared value for value with rosettasciio's own reading of the same file (the peer library).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from sendmap.cli import main
from sendmap.errors import SendmapInputError
from sendmap.io import detect_format, open_dataset
from sendmap.io.generic import _plugin, file_calibration


def _rsciio(fmt: str, path: Path, **kw) -> list[dict]:
    return _plugin(fmt).file_reader(str(path), **kw)


def _signal_dict(data, q_scale=0.05, q_units="1/nm", step=2.5, kv=300.0) -> dict:
    """A HyperSpy signal dict as rosettasciio's writers take it."""
    nav = [dict(name=n, size=s, scale=step, offset=0.0, units="nm", navigate=True)
           for n, s in zip("yx", data.shape[:-2])]
    sig = [dict(name=n, size=s, scale=q_scale, offset=0.0, units=q_units, navigate=False)
           for n, s in zip(("ky", "kx"), data.shape[-2:])]
    return dict(data=data, axes=nav + sig, metadata={"General": {"title": "t"}, "Signal": {"signal_type": "diffraction"},
                                                      "Acquisition_instrument": {"TEM": {"beam_energy": kv}}},
                original_metadata={}, attributes={"_lazy": False}, tmp_parameters={}, learning_results={}, models={},
                package_info={"name": "", "version": ""})


def _write_hspy(path: Path, data, **kw) -> Path:
    _plugin("hspy").file_writer(str(path), _signal_dict(data, **kw), show_progressbar=False)
    return path


def _hspy_to_zspy(src: Path, dst: Path) -> Path:
    """The same HyperSpy tree in a zarr (v2) group: a ``.zspy``. (rosettasciio 0.15's zspy writer needs zarr 2,
    this environment has zarr 3; its reader works with both.)"""
    import zarr

    def conv(v):
        if isinstance(v, bytes):
            return v.decode()
        if isinstance(v, np.ndarray):
            return [conv(x) for x in v.tolist()]
        return v.item() if isinstance(v, np.generic) else v

    def copy(a, b):
        for k, v in a.attrs.items():
            b.attrs[k] = conv(v)
        for name, item in a.items():
            if isinstance(item, h5py.Group):
                copy(item, b.create_group(name))
            elif item.dtype.kind != "O":
                arr = b.create_array(name, shape=item.shape, dtype=item.dtype, chunks=item.chunks or item.shape)
                arr[...] = item[()]
                for k, v in item.attrs.items():
                    arr.attrs[k] = conv(v)

    with h5py.File(src, "r") as f:
        g = zarr.open_group(str(dst), mode="w", zarr_format=2)
        copy(f, g)
        g.attrs["file_format"] = "ZSpy"
    return dst


def _write_mrc(path: Path, frames: np.ndarray) -> Path:
    """A minimal MRC2014 stack (mode 6: uint16), as MRC readers expect: 1024-byte header, then the frames."""
    nz, ny, nx = frames.shape
    h = np.zeros(256, "<i4")
    hf = h.view("<f4")
    h[0:4] = nx, ny, nz, 6
    h[7:10] = nx, ny, nz
    hf[10:13] = nx, ny, nz
    hf[13:16] = 90
    h[16:19] = 1, 2, 3
    head = bytearray(h.tobytes())
    head[208:216] = b"MAP " + bytes([0x44, 0x44, 0, 0])
    path.write_bytes(bytes(head) + frames.astype("<u2").tobytes())
    return path


# --- the real blockfile and fpd scan -------------------------------------------------------------------------

def test_blockfile_equals_rosettasciio(real_data_dir):
    """NanoMegas/ASTAR test1.blo (rosettasciio's test file): a 3 x 2 scan of 144² uint8 precession patterns, 12.8 nm
    step, 200 kV. Value for value as rosettasciio's blockfile reader gives it, by block and whole."""
    path = real_data_dir / "blockfile" / "test1.blo"
    assert detect_format(path) == "blockfile"
    ds = open_dataset(path)
    ref = np.asarray(_rsciio("blockfile", path)[0]["data"])
    assert ds.format == "blockfile" and ds.shape == (3, 2, 144, 144) and ds.dtype == np.uint8
    np.testing.assert_array_equal(ds.data.compute(), ref)
    np.testing.assert_array_equal(ds.read_region((1, 3, 1, 2)), ref[1:3, 1:2])
    assert ref.max() == 255 and ref.mean() > 10  # real content (saturated direct beam), not an empty container
    cal = file_calibration(ds.metadata)
    assert cal["scan_step_nm"] == pytest.approx(12.8) and cal["beam_energy_kv"] == pytest.approx(200.0)
    # the blockfile's diffraction scale is in "cm" (per pixel on the camera), not a reciprocal length: not used
    assert cal["q_pixel_size"] is None and "cm" in ds.metadata["calibration"]["notes"][0]
    assert ds.metadata["original_metadata"]["blockfile_header"]["SX"] == pytest.approx(12.8)


def test_fpd_scan_equals_rosettasciio(real_data_dir):
    """The real 16 x 16 Merlin scan saved by the fpd package (EMD 1.0 layout: read by the py4DSTEM/EMD reader) equals
    rosettasciio's EMD reading of it, whose axes are the file's in reverse order; its 5.4826 nm step is used."""
    path = real_data_dir / "merlin_fpd_16x16" / "FPD_HDF5.hdf5"
    ds = open_dataset(path)
    assert ds.format == "py4dstem" and ds.shape == (16, 16, 256, 256) and ds.dtype == np.uint16
    ref = next(s["data"] for s in _rsciio("velox", path, lazy=True) if s["data"].ndim == 4).compute()
    np.testing.assert_array_equal(ds.data.compute(), ref.transpose(3, 2, 1, 0))
    cal = file_calibration(ds.metadata)
    assert cal["scan_step_nm"] == pytest.approx(5.482583939370844) and cal["q_pixel_size"] is None


def test_hspy_stack_needs_a_scan_shape(real_data_dir):
    """sped_ag/cluster_sums.hspy: 5 summed precession patterns (a stack, not a scan), 0.02673 1/Å per pixel ($A^{-1}$)."""
    path = real_data_dir / "sped_ag" / "cluster_sums.hspy"
    assert detect_format(path) == "hspy"
    with pytest.raises(SendmapInputError, match=r"stack of 5 frames.*input.scan_shape.*\[1, 5\]"):
        open_dataset(path)
    ds = open_dataset(path, scan_shape=(1, 5))
    ref = np.asarray(_rsciio("hspy", path)[0]["data"])
    np.testing.assert_array_equal(ds.data.compute()[0], ref)
    np.testing.assert_array_equal(ds.read_region((0, 1, 2, 4))[0], ref[2:4])
    assert file_calibration(ds.metadata)["q_pixel_size"] == pytest.approx(0.02672830388733737)


# --- hspy / zspy / mrc written here ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["hspy", "zspy"])
def test_hspy_zspy_scan_and_calibrations(tmp_path, kind):
    """A 4D HyperSpy signal (3 x 4 scan, 2.5 nm step, 0.05 1/nm per pixel, 300 kV) read lazily, value for value, with
    its calibration converted to sendmap's units (Q = 1/d in 1/Å)."""
    data = np.random.default_rng(1).integers(0, 4000, (3, 4, 16, 18)).astype(np.uint16)
    path = _write_hspy(tmp_path / "a.hspy", data)
    if kind == "zspy":
        path = _hspy_to_zspy(path, tmp_path / "a.zspy")
    assert detect_format(path) == kind
    ds = open_dataset(path, frames_per_chunk=4)
    assert ds.format == kind and ds.shape == data.shape and ds.dtype == np.uint16
    assert ds.data.chunks[:2] == ((1, 1, 1), (4,))
    np.testing.assert_array_equal(ds.data.compute(), data)
    np.testing.assert_array_equal(ds.read_region((1, 3, 1, 3)), data[1:3, 1:3])
    cal = file_calibration(ds.metadata)
    assert cal == pytest.approx({"q_pixel_size": 0.005, "scan_step_nm": 2.5, "beam_energy_kv": 300.0})


def test_single_pattern_is_a_1x1_scan(tmp_path):
    frame = np.arange(20 * 22, dtype=np.float32).reshape(20, 22)
    ds = open_dataset(_write_hspy(tmp_path / "one.hspy", frame))
    assert ds.shape == (1, 1, 20, 22)
    np.testing.assert_array_equal(ds.data.compute()[0, 0], frame)


def test_mrc_stack(tmp_path):
    """An MRC stack (the container of Direct Electron movies) through rosettasciio's MRC reader: needs its scan
    shape; its detector axes are real-space (nm), so no Q calibration is taken from it."""
    frames = np.random.default_rng(2).integers(0, 1000, (6, 20, 24)).astype(np.uint16)
    path = _write_mrc(tmp_path / "s.mrc", frames)
    assert detect_format(path) == "mrc"
    with pytest.raises(SendmapInputError, match="input.scan_shape"):
        open_dataset(path)
    ds = open_dataset(path, scan_shape=(2, 3))
    np.testing.assert_array_equal(ds.data.compute(), frames.reshape(2, 3, 20, 24))
    np.testing.assert_array_equal(ds.read_region((1, 2, 1, 3))[0], frames[4:6])
    assert file_calibration(ds.metadata)["q_pixel_size"] is None


def test_tvips_stream(tmp_path):
    """A TVIPS stream (written by rosettasciio's TVIPS writer, diffraction mode, 2 1/nm per pixel, 200 kV): a stack of
    frames in recording order that needs its scan shape; the calibration comes through (TVIPS stores integer
    scales)."""
    frames = np.random.default_rng(4).integers(0, 4000, (6, 32, 32)).astype(np.uint16)
    # (rosettasciio 0.15's TVIPS writer stores the first axis's scale as the pixel size: give it the same)
    axes = [dict(name="t", size=6, scale=2, offset=0, units="1/nm", navigate=True)] + [
        dict(name=n, size=32, scale=2, offset=0, units="1/nm", navigate=False) for n in ("ky", "kx")]
    sig = dict(data=frames, axes=axes, attributes={"_lazy": False}, original_metadata={},
               metadata={"General": {"title": "t", "date": "2024-01-01", "time": "00:00:00"},
                         "Signal": {"signal_type": "diffraction"},
                         "Acquisition_instrument": {"TEM": {"beam_energy": 200.0}}})
    _plugin("tvips").file_writer(str(tmp_path / "s_000.tvips"), sig, mode=2)
    path = tmp_path / "s_000.tvips"
    assert detect_format(path) == "tvips"
    with pytest.raises(SendmapInputError, match=r"stack of 6 frames.*input.scan_shape"):
        open_dataset(path)
    ds = open_dataset(path, scan_shape=(2, 3))
    np.testing.assert_array_equal(ds.data.compute(), frames.reshape(2, 3, 32, 32))
    assert file_calibration(ds.metadata) == pytest.approx({"q_pixel_size": 0.2, "scan_step_nm": None,
                                                           "beam_energy_kv": 200.0})


def test_plugin_failure_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.blo"
    path.write_bytes(b"IMGBLO" + b"\0" * 100)
    with pytest.raises(SendmapInputError, match="rosettasciio's rsciio.blockfile reader cannot read it"):
        open_dataset(path)


# --- the CLI: info and run end to end, calibrations from the file; bad input → exit 2 -------------------------

def _config(tmp_path: Path, data: Path, extra_input: str = "", calibration: str = "q_pixel_size: 0.02",
            ellipse: str = "none") -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"input:\n  path: {data}\n{extra_input}"
                   f"calibration:\n  {calibration}\n  ellipse: {ellipse}\n"
                   "output:\n  dir: out\n  figures: false\ncompute:\n  scheduler: synchronous\n  progress: false\n")
    return cfg


def _store_attrs(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "sendmap.zarr" / "zarr.json").read_text())["attributes"]


@pytest.mark.parametrize("rel, fmt, scan", [
    ("blockfile/test1.blo", "blockfile", [3, 2]),
    ("merlin_fpd_16x16/FPD_HDF5.hdf5", "py4dstem", [16, 16]),
    ("merlin_variants/Quad_9_Frame_CounterDepth_1_Rows_256RAW.mib", "mib", [1, 9]),
    ("merlin_variants/multi_6bit_9frames.mib", "mib", [1, 9]),
    ("sped_ag/cluster_sums.hspy", "hspy", [1, 5]),
])
def test_info(real_data_dir, capsys, rel, fmt, scan):
    assert main(["info", str(real_data_dir / rel)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == fmt and out["scan_shape"] == scan
    assert ("scan_shape_note" in out) == rel.endswith(("multi_6bit_9frames.mib", ".hspy"))


def test_info_every_merlin_variant(real_data_dir, capsys):
    """Every file of merlin_variants (all layouts, depths, raw mode, files without .hdr) opens with `sendmap info`;
    the deliberately corrupted header ends with exit 2 and a message naming the file."""
    files = sorted((real_data_dir / "merlin_variants").glob("*.mib"))
    assert len(files) == 24
    for path in files:
        code = main(["info", str(path)])
        captured = capsys.readouterr()
        if "corrupted" in path.name:
            assert code == 2 and path.name in captured.err and "corrupt Merlin frame header" in captured.err
            continue
        assert code == 0, captured.err
        out = json.loads(captured.out)
        assert out["format"] == "mib" and out["frame_shape"] == ([512, 512] if "Quad" in path.name else [256, 256])
        assert out["n_frames"] == (9 if "_9_" in path.name or "9frames" in path.name else 1)


def test_velox_emd_is_detected_and_a_bad_one_is_a_clear_error(tmp_path):
    """Velox .emd (no Velox file can be written here): detected from its Data group and Version; a file rosettasciio
    cannot read as Velox is a SendmapInputError naming the reader."""
    path = tmp_path / "v.emd"
    with h5py.File(path, "w") as f:
        f.create_group("Data")
        f.create_dataset("Version", data=np.bytes_('{"format": "Velox", "version": "2"}'))
    assert detect_format(path) == "velox"
    with pytest.raises(SendmapInputError, match=r"rsciio.emd reader cannot read it|no 2D, 3D or 4D numeric signal"):
        open_dataset(path)


def test_run_blockfile_takes_step_and_voltage_from_the_file(real_data_dir, tmp_path, capsys):
    """End to end on the real blockfile: the config gives Q per pixel only; scan step and voltage come from the file,
    are logged, and are in the store's provenance (config and input)."""
    cfg = _config(tmp_path, real_data_dir / "blockfile" / "test1.blo", calibration="q_pixel_size: 0.01")
    assert main(["run", str(cfg)]) == 0
    log = capsys.readouterr().out
    assert "calibration.scan_step_nm = 12.8 taken from the file" in log
    assert "calibration.beam_energy_kv = 200 taken from the file" in log
    attrs = _store_attrs(tmp_path)
    assert attrs["status"] == "complete"
    assert attrs["input"]["format"] == "blockfile" and "rosettasciio" in attrs["input"]["reader"]
    assert attrs["input"]["calibration_from_file"] == {"scan_step_nm": 12.8, "beam_energy_kv": 200.0}
    assert attrs["input"]["reader_metadata"]["calibration"]["scan_step_nm"] == 12.8
    assert attrs["config"]["calibration"]["scan_step_nm"] == 12.8
    assert attrs["calibration"]["q_pixel_size_source"] == "config calibration.q_pixel_size"


def test_run_config_values_win_over_the_file(real_data_dir, tmp_path, capsys):
    cfg = _config(tmp_path, real_data_dir / "blockfile" / "test1.blo",
                  calibration="q_pixel_size: 0.02\n  scan_step_nm: 10\n  beam_energy_kv: 300")
    assert main(["run", str(cfg), "--until", "ingest"]) == 0
    assert "taken from the file" not in capsys.readouterr().out
    attrs = _store_attrs(tmp_path)
    assert attrs["input"]["calibration_from_file"] == {}
    assert (attrs["config"]["calibration"]["scan_step_nm"], attrs["config"]["calibration"]["beam_energy_kv"]) == (10, 300)


def test_run_q_pixel_size_from_the_file(tmp_path, capsys):
    """Q per pixel left null in the config: taken from a file that records it in a reciprocal length, and named so."""
    data = np.random.default_rng(3).poisson(5, (2, 3, 32, 32)).astype(np.uint16)
    path = _write_hspy(tmp_path / "a.hspy", data, q_scale=0.2, q_units="1/nm")
    cfg = _config(tmp_path, path, calibration="convergence_mrad: 2.0")
    assert main(["run", str(cfg), "--until", "calibrate"]) == 0
    assert "calibration.q_pixel_size = 0.02 taken from the file" in capsys.readouterr().out
    attrs = _store_attrs(tmp_path)
    assert attrs["calibration"]["q_pixel_size"] == pytest.approx(0.02)
    assert attrs["calibration"]["q_pixel_size_source"].startswith("taken from the input file")


@pytest.mark.parametrize("rel, scan, q", [
    ("merlin_fpd_16x16/FPD_HDF5.hdf5", None, 0.005),
    ("merlin_variants/Quad_9_Frame_CounterDepth_1_Rows_256RAW.mib", [3, 3], 0.0125),
    ("merlin_variants/multi_6bit_9frames.mib", [3, 3], 0.005),
])
def test_run_real_merlin_files(real_data_dir, tmp_path, rel, scan, q):
    extra = f"  scan_shape: {scan}\n" if scan else ""
    assert main(["run", str(_config(tmp_path, real_data_dir / rel, extra, f"q_pixel_size: {q}"))]) == 0
    attrs = _store_attrs(tmp_path)
    assert attrs["status"] == "complete" and attrs["input"]["scan_shape"] == (scan or [16, 16])


def _exit_2(tmp_path, capsys, cfg: Path, *needles: str) -> str:
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_corrupted_merlin_header_exit_2(real_data_dir, tmp_path, capsys):
    path = real_data_dir / "merlin_variants" / "mib2hspy_test_CL30cm_corrupted_header.mib"
    _exit_2(tmp_path, capsys, _config(tmp_path, path), "corrupt Merlin frame header", path.name)
    assert main(["info", str(path)]) == 2


def test_mib_without_hdr_needs_scan_shape_exit_2(real_data_dir, tmp_path, capsys):
    _exit_2(tmp_path, capsys, _config(tmp_path, real_data_dir / "merlin_variants" / "multi_6bit_9frames.mib"),
            "no .hdr", "input.scan_shape", "[1, 9]")


def test_3d_npy_without_scan_shape_exit_2(tmp_path, capsys):
    np.save(tmp_path / "s.npy", np.ones((6, 16, 16), np.uint16))
    _exit_2(tmp_path, capsys, _config(tmp_path, tmp_path / "s.npy"), "input.scan_shape", "[1, 6]")


def test_fifo_is_refused_not_read(tmp_path, capsys):
    """A named pipe would block the first read forever: refused from its file type, before any open."""
    fifo = tmp_path / "x.mib"
    os.mkfifo(fifo)
    _exit_2(tmp_path, capsys, _config(tmp_path, fifo), "FIFO", "regular files")
    assert main(["info", str(fifo)]) == 2


def test_symlink_loop_is_refused(tmp_path, capsys):
    loop = tmp_path / "loop.mib"
    loop.symlink_to(loop)
    _exit_2(tmp_path, capsys, _config(tmp_path, "loop.mib"), "loop of symbolic links")
    assert main(["info", str(loop)]) == 2
    assert "loop of symbolic links" in capsys.readouterr().err


@pytest.mark.parametrize("in_place", [True, False])
def test_corrupt_zarr_chunk_names_the_chunk(tmp_path, capsys, in_place):
    import zarr

    a = zarr.create_array(str(tmp_path / "d.zarr"), shape=(4, 4, 16, 16), chunks=(1, 4, 16, 16), dtype="uint16")
    a[:] = np.random.default_rng(0).poisson(3, (4, 4, 16, 16)).astype(np.uint16)
    (tmp_path / "d.zarr" / "c" / "2" / "0" / "0" / "0").write_bytes(b"garbage")
    cfg = _config(tmp_path, tmp_path / "d.zarr", f"  in_place: {str(in_place).lower()}\n")
    _exit_2(tmp_path, capsys, cfg, "d.zarr", "chunk [2, 0, 0, 0]", "corrupt")


@pytest.mark.parametrize("meta, expected", [
    ({"q_scale_inv_angstrom": 0.0125, "scan_step_nm": 4.0, "voltage_kV": 300.0}, (0.0125, 4.0, 300.0)),  # DM
    ({"q_pixel_size": 0.02, "q_pixel_units": "A^-1", "r_pixel_size": 2.0, "r_pixel_units": "nm"}, (0.02, 2.0, None)),
    ({"q_pixel_size": 0.2, "q_pixel_units": "nm^-1", "r_pixel_size": 20.0, "r_pixel_units": "Å"}, (0.02, 2.0, None)),
    ({"q_pixel_size": 1.0, "q_pixel_units": "pixels", "r_pixel_size": 1.0, "r_pixel_units": "pixels"},
     (None, None, None)),  # uncalibrated py4DSTEM/EMD dims
    ({"scan_step_nm": 3.0, "beam_energy_kv": 120.0}, (None, 3.0, 120.0)),  # EMPAD XML
    ({"scan_pixel_size_nm": 5.0}, (None, 5.0, None)),  # Arina STEM metadata
    ({"calibration": {"q_pixel_size": None, "scan_step_nm": 12.8, "beam_energy_kv": 200.0}}, (None, 12.8, 200.0)),
    ({"counter_depth": 12}, (None, None, None)),  # Merlin: nothing
])
def test_file_calibration_of_every_reader(meta, expected):
    got = file_calibration(meta)
    assert tuple(got[k] for k in ("q_pixel_size", "scan_step_nm", "beam_energy_kv")) == pytest.approx(expected)


def test_de_seq_says_what_to_do(tmp_path):
    path = tmp_path / "movie.seq"
    path.write_bytes(b"\xfe\xff\x00\x00" + b"\0" * 1020)
    with pytest.raises(SendmapInputError, match=r"\.seq sequence: not read.*input.format: mrc"):
        open_dataset(path)
