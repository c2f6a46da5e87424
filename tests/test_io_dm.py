"""Gatan DigitalMicrograph .dm4/.dm3 reader and writer, checked against rosettasciio's reader."""
from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from rsciio.digitalmicrograph import file_reader

from sendmap.errors import SendmapInputError
from sendmap.io import dm
from sendmap.io.dm import read_dm_dask, read_dm_metadata, write_dm3, write_dm4

DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
WRITERS = {"dm4": write_dm4, "dm3": write_dm3}


def _values(shape, dtype, seed=0) -> np.ndarray:
    """Random values spanning the dtype's range (both ends included for integers)."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        data = (rng.standard_normal(shape) * 1e3).astype(dtype)
        data.flat[0] = np.finfo(dtype).max
        return data
    info = np.iinfo(dtype)
    data = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    data.flat[0], data.flat[-1] = info.min, info.max
    return data


def _rsciio(path: Path) -> dict:
    """The one image rosettasciio finds in the file (the thumbnail is not returned)."""
    images = file_reader(str(path), lazy=False)
    assert len(images) == 1
    return images[0]


def _main_data_type_offset(path: Path) -> int:
    """Byte offset of the value of the data image's ``DataType`` tag (a little-endian int32) in a DM4 file.

    Layout after the name: tag length (8), ``%%%%`` (4), type-description length (8), type 3 = long (8).
    """
    name = b"\x00\x08DataType"
    return path.read_bytes().rindex(name) + len(name) + 8 + 4 + 8 + 8


@pytest.fixture
def scan_4d(tmp_path) -> tuple[Path, np.ndarray]:
    data = _values((4, 6, 3, 5), "uint16", seed=3)
    return write_dm4(tmp_path / "scan.dm4", data, q_scale=0.5, scan_step_nm=2.0), data


# --- round trips ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", WRITERS)
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (7, 5, 6)], ids=["4D", "3D"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_bit_for_bit_and_equal_to_rosettasciio(tmp_path, fmt, shape, dtype):
    data = _values(shape, dtype)
    path = WRITERS[fmt](tmp_path / f"d.{fmt}", data)
    theirs = np.asarray(_rsciio(path)["data"])
    arr, meta = read_dm_dask(path, required=False)  # (3D: a 1 x N line)
    ours = arr.compute()

    assert theirs.dtype == ours.dtype == arr.dtype == np.dtype(dtype)
    assert theirs.shape == shape
    np.testing.assert_array_equal(theirs.view(np.uint8), data.view(np.uint8))  # bit for bit, NaN-safe
    expected_4d = data if len(shape) == 4 else data.reshape(1, *shape)
    assert ours.shape == arr.shape == expected_4d.shape
    assert ours.tobytes() == expected_4d.tobytes()
    np.testing.assert_array_equal(ours.reshape(theirs.shape), theirs)

    assert meta["format"] == fmt and meta["dm_version"] == int(fmt[-1])
    assert meta["dtype_on_disk"] == np.dtype(dtype).newbyteorder("<").str
    assert meta["shape_on_disk"] == list(shape)
    assert meta["data_bytes"] == data.nbytes
    assert meta["file_bytes"] == path.stat().st_size
    raw = path.read_bytes()
    assert raw[meta["data_offset"]:meta["data_offset"] + data.nbytes] == data.astype(meta["dtype_on_disk"]).tobytes()
    assert raw[:4] == struct.pack(">l", int(fmt[-1])) and raw.endswith(b"\0" * 8)
    json.dumps(meta)  # JSON-able


def test_big_endian_input_is_written_little_endian_and_read_native(tmp_path):
    data = _values((2, 3, 4, 4), "int16", seed=4).astype(">i2")
    arr, meta = read_dm_dask(write_dm4(tmp_path / "be.dm4", data))
    assert arr.dtype == np.dtype("int16") and arr.dtype.isnative
    assert meta["dtype_on_disk"] == "<i2"
    np.testing.assert_array_equal(arr.compute(), data)


def test_writer_streams_a_dask_array_and_replaces_the_file_atomically(tmp_path):
    data = _values((5, 4, 6, 6), "float32", seed=5)
    path = tmp_path / "lazy.dm4"
    path.write_bytes(b"old content")
    write_dm4(path, da.from_array(data, chunks=(2, 3, 6, 6)))
    np.testing.assert_array_equal(read_dm_dask(path)[0].compute(), data)
    np.testing.assert_array_equal(_rsciio(path)["data"], data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lazy.dm4"]  # no temporary file left


def test_writer_refuses_bad_input_without_leaving_a_file(tmp_path):
    path = tmp_path / "bad.dm4"
    with pytest.raises(ValueError, match="complex64"):
        write_dm4(path, np.zeros((2, 2, 4, 4), np.complex64))
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        write_dm4(path, np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError, match="scan_step_nm needs a 4D"):
        write_dm3(path, np.zeros((3, 4, 4), np.uint16), scan_step_nm=1.0)
    with pytest.raises(ValueError, match="cannot write a DM tag"):
        write_dm4(path, np.zeros((1, 4, 4), np.uint16), image_tags={"bad": object()})
    assert list(tmp_path.iterdir()) == []


# --- calibrations and metadata ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", WRITERS)
def test_calibrations_come_back_in_inverse_angstrom_and_nm(tmp_path, fmt):
    data = _values((2, 3, 8, 10), "uint8")
    tags = {"Microscope Info": {"Voltage": 300000.0, "STEM Camera Length": 80.0},
            "Acquisition": {"Parameters": {"High Level": {"Exposure (s)": 0.002}}},
            "DigiScan": {"Sample Time": 16.0}}
    path = WRITERS[fmt](tmp_path / f"cal.{fmt}", data, q_scale=0.125, q_units="1/nm", scan_step_nm=1.75,
                        image_tags=tags)
    meta = read_dm_metadata(path)
    assert meta["q_units_on_disk"] == "1/nm"
    assert meta["q_scale_inv_angstrom"] == pytest.approx(0.0125)  # 0.125 1/nm = 0.0125 1/Å
    assert meta["q_scale_inv_angstrom_yx"] == pytest.approx([0.0125, 0.0125])
    assert meta["q_offset_inv_angstrom_yx"] == [0.0, 0.0]
    assert meta["scan_step_nm"] == 1.75 and meta["scan_step_nm_yx"] == [1.75, 1.75]
    assert meta["voltage_kV"] == 300.0
    assert meta["camera_length_mm"] == 80.0
    assert meta["exposure_ms"] == pytest.approx(2.0)
    assert meta["dwell_time_us"] == 16.0
    assert [(a["name"], a["size"], a["scale"], a["units"]) for a in meta["axes"]] == [
        ("Ry", 2, 1.75, "nm"), ("Rx", 3, 1.75, "nm"), ("Qy", 8, 0.125, "1/nm"), ("Qx", 10, 0.125, "1/nm")]
    # the same calibrations as rosettasciio reads
    theirs = _rsciio(path)["axes"]
    assert [(a["size"], a["scale"], a["offset"], a["units"]) for a in theirs] == \
        [(a["size"], a["scale"], a["offset"], a["units"]) for a in meta["axes"]]
    assert read_dm_dask(path)[1] == meta


def test_angstrom_calibration_and_uncalibrated_file(tmp_path):
    path = write_dm4(tmp_path / "a.dm4", _values((6, 4, 4), "uint16"), q_scale=0.02, q_units="1/Å")
    meta = read_dm_metadata(path)
    assert meta["q_units_on_disk"] == "1/Å"
    assert meta["q_scale_inv_angstrom"] == pytest.approx(0.02, rel=1e-7)  # float32 in the file
    assert meta["scan_step_nm"] is None and meta["axes"][0]["name"] == "N"

    meta = read_dm_metadata(write_dm4(tmp_path / "b.dm4", _values((1, 2, 4, 4), "uint16")))
    assert meta["q_scale_inv_angstrom"] is None and meta["q_units_on_disk"] == ""
    assert meta["scan_step_nm"] is None
    assert meta["voltage_kV"] is None and meta["camera_length_mm"] is None and meta["exposure_ms"] is None


def test_thumbnail_is_skipped_even_when_larger(tmp_path):
    """The 8 x 8 RGBA thumbnail (256 bytes) is image 0; the 4-byte data image is image 1."""
    data = np.array([[[1, 2], [3, 4]]], np.uint8)
    arr, meta = read_dm_dask(write_dm4(tmp_path / "tiny.dm4", data))
    assert meta["image_index"] == 1 and meta["data_bytes"] == 4
    np.testing.assert_array_equal(arr.compute(), data[None])


# --- chunking ------------------------------------------------------------------------------------------------

def test_chunks_are_whole_rows_and_frames_per_chunk_is_honoured(scan_4d):
    path, data = scan_4d
    arr, _ = read_dm_dask(path, frames_per_chunk=12)
    assert arr.chunks == ((2, 2), (6,), (3,), (5,))
    np.testing.assert_array_equal(arr.compute(), data)
    arr, _ = read_dm_dask(path, frames_per_chunk=4)  # shorter than a row: pieces of rows
    assert arr.chunks == ((1, 1, 1, 1), (4, 2), (3,), (5,))
    np.testing.assert_array_equal(arr.compute(), data)
    np.testing.assert_array_equal(arr[1:3, 3:5].compute(), data[1:3, 3:5])
    assert read_dm_dask(path)[0].chunks == ((4,), (6,), (3,), (5,))  # default: all of it fits in 64 MiB


def test_3d_stack_takes_scan_shape_and_chunks_by_rows(tmp_path):
    frames = _values((12, 3, 4), "int32", seed=7)
    path = write_dm3(tmp_path / "stack.dm3", frames)
    arr, _ = read_dm_dask(path, scan_shape=(3, 4), frames_per_chunk=4)
    assert arr.shape == (3, 4, 3, 4) and arr.chunks == ((1, 1, 1), (4,), (3,), (4,))
    np.testing.assert_array_equal(arr.compute(), frames.reshape(3, 4, 3, 4))
    with pytest.raises(SendmapInputError, match=r"stack of 12 frames.*input.scan_shape"):
        read_dm_dask(path)  # a stack does not say its scan: no silent 1 x 12 line
    assert read_dm_dask(path, required=False)[0].shape == (1, 12, 3, 4)


def test_graph_pickles_and_runs_in_processes(scan_4d):
    path, data = scan_4d
    arr, _ = read_dm_dask(path, frames_per_chunk=6)
    assert arr.npartitions == 4
    restored = pickle.loads(pickle.dumps(arr))
    np.testing.assert_array_equal(restored.compute(scheduler="processes", num_workers=2), data)


# --- bad input -----------------------------------------------------------------------------------------------

def test_truncated_pixels_report_byte_counts(scan_4d, tmp_path):
    path, data = scan_4d
    meta = read_dm_metadata(path)
    cut = tmp_path / "cut.dm4"
    size = meta["data_offset"] + data.nbytes - 100  # the last 100 bytes of pixels and everything after
    cut.write_bytes(path.read_bytes()[:size])
    with pytest.raises(SendmapInputError) as err:
        read_dm_dask(cut)
    msg = str(err.value)
    assert str(cut) in msg and "truncated" in msg
    assert f"needs {data.nbytes} bytes" in msg and f"byte offset {meta['data_offset']}" in msg
    assert f"only {size} bytes" in msg and "(100 missing)" in msg


def test_truncated_tags_after_the_pixels(scan_4d, tmp_path):
    path, _ = scan_4d
    cut = tmp_path / "cut.dm4"
    raw = path.read_bytes()
    cut.write_bytes(raw[:-10])  # the end-of-file NULs and part of the last tag
    size = len(raw) - 10
    with pytest.raises(SendmapInputError, match=rf"{cut}: truncated DM4 file: its {size} bytes end inside the tag "
                                                rf"tree \(reading the tags reached byte offset {size}\)"):
        read_dm_metadata(cut)


def test_corrupt_tag_tree(scan_4d):
    path, _ = scan_4d
    raw = bytearray(path.read_bytes())
    at = raw.index(b"%%%%")  # the first data tag's marker
    raw[at:at + 4] = b"XXXX"
    path.write_bytes(bytes(raw))
    with pytest.raises(SendmapInputError, match=rf"{path}: corrupt DM4 file: reading the tags failed at byte offset "
                                                rf"{at + 4} of {len(raw)} bytes"):
        read_dm_dask(path)


@pytest.mark.parametrize("content", [b"", b"\x00\x00", b"MQ1,000001,00384,01,0256",
                                     b"\x93NUMPY\x01\x00" + b" " * 120], ids=["empty", "short", "mib", "npy"])
def test_not_a_dm_file(tmp_path, content):
    path = tmp_path / "x.dm4"
    path.write_bytes(content)
    with pytest.raises(SendmapInputError, match=rf"{path}: not a DigitalMicrograph DM3/DM4 file"):
        read_dm_dask(path)


def test_missing_file(tmp_path):
    with pytest.raises(SendmapInputError, match="cannot read the DM file"):
        read_dm_dask(tmp_path / "absent.dm4")


def test_wrong_scan_shape(scan_4d, tmp_path):
    path, _ = scan_4d
    with pytest.raises(SendmapInputError, match=rf"{path}: scan_shape \(6, 4\) does not match .* \(4, 6\)"):
        read_dm_dask(path, scan_shape=(6, 4))
    with pytest.raises(SendmapInputError, match="24 frames"):
        read_dm_dask(path, scan_shape=(5, 5))
    stack = write_dm4(tmp_path / "s.dm4", _values((6, 4, 4), "uint8"))
    with pytest.raises(SendmapInputError, match=r"4 x 2 = 8 probe positions does not match the 6 frames"):
        read_dm_dask(stack, scan_shape=(4, 2))
    with pytest.raises(SendmapInputError, match="frames_per_chunk"):
        read_dm_dask(stack, scan_shape=(2, 3), frames_per_chunk=0)


@pytest.mark.parametrize("code, kind", [(3, "complex64"), (13, "complex128"), (23, "RGBA"), (8, "RGB"),
                                        (14, "DataType 14")])
def test_unsupported_pixel_type(scan_4d, code, kind):
    path, _ = scan_4d
    raw = bytearray(path.read_bytes())
    at = _main_data_type_offset(path)
    assert struct.unpack_from("<l", raw, at)[0] == 10  # uint16
    struct.pack_into("<l", raw, at, code)
    path.write_bytes(bytes(raw))
    with pytest.raises(SendmapInputError, match=rf"{path}: image 1 of the ImageList \(pixels at byte offset \d+\)"
                                                rf".*{kind}"):
        read_dm_dask(path)


def test_dimensions_disagreeing_with_the_data_array(scan_4d):
    path, data = scan_4d
    raw = bytearray(path.read_bytes())
    at = _main_data_type_offset(path)
    struct.pack_into("<l", raw, at, 6)  # uint16 pixels relabelled uint8: half the bytes the array holds
    path.write_bytes(bytes(raw))
    with pytest.raises(SendmapInputError, match=rf"need {data.size} bytes, but its Data array holds {data.nbytes}"):
        read_dm_dask(path)


def test_single_2d_pattern_is_a_1x1_scan(tmp_path):
    frame = _values((16, 12), "float32", seed=3)
    path = dm._write_dm(tmp_path / "image.dm4", frame, 4)
    np.testing.assert_array_equal(_rsciio(path)["data"], frame)  # a valid DM file
    arr, meta = read_dm_dask(path)
    assert arr.shape == (1, 1, 16, 12) and [a["name"] for a in meta["axes"]] == ["Qy", "Qx"]
    np.testing.assert_array_equal(arr.compute()[0, 0], frame)


def test_real_dm3_single_pattern(real_data_dir):
    """dm3_spots (rosettasciio's test file): one real (87, 87) int32 pattern, 0.1744 1/nm per pixel: a 1 x 1 scan,
    value for value as rosettasciio reads it, Q per pixel 0.01744 1/Å."""
    path = real_data_dir / "dm3_spots" / "test_diffraction_pattern.dm3"
    arr, meta = read_dm_dask(path)
    assert arr.shape == (1, 1, 87, 87)
    np.testing.assert_array_equal(arr.compute()[0, 0], _rsciio(path)["data"])
    assert meta["q_scale_inv_angstrom"] == pytest.approx(0.01744, rel=1e-3)



def test_input_file_is_never_modified(scan_4d):
    path, data = scan_4d
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    read_dm_dask(path)[0].compute()
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before
