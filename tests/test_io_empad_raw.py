"""EMPAD .raw/.xml and generic raw binary readers and writers."""
from __future__ import annotations

import pickle
import sys

import dask
import dask.array as da
import numpy as np
import pytest
from rsciio.empad import file_reader as rsciio_empad_reader

import sendmap.io.raw as raw_module
from sendmap.errors import SendmapInputError
from sendmap.io.empad import find_empad_xml, read_empad_dask, scan_shape_from_name, write_empad
from sendmap.io.raw import read_raw_dask, write_raw

EMPAD_FRAME_BYTES = 130 * 128 * 4  # 130 rows x 128 columns of float32 per frame on disk


def _empad_frames(shape, seed=0) -> np.ndarray:
    """Float32 frames with negative, fractional, tiny, huge and signed-zero values."""
    data = np.random.default_rng(seed).normal(scale=50.0, size=shape).astype(np.float32)
    flat = data.reshape(-1)
    flat[:6] = [-0.0, -1.5, 0.125, 1e-38, -3.4e38, 65535.75]
    return data


def _bits(array) -> np.ndarray:
    """The array's bit patterns, so -0.0 != 0.0 and NaN == NaN for comparisons."""
    array = np.ascontiguousarray(array)
    return array.view(f"u{array.dtype.itemsize}")


def _write_empad_by_hand(path, frames: np.ndarray, metadata_value: float = 1e30) -> None:
    """An EMPAD .raw written with plain numpy: (N, 128, 128) frames + 2 metadata rows of ``metadata_value``."""
    disk = np.full((len(frames), 130, 128), metadata_value, dtype="<f4")
    disk[:, :128] = frames
    disk.tofile(path)


def _empad_xml(raw_name: str, body: str) -> str:
    return f'<root name="project"><raw_file filename="{raw_name}"/>{body}</root>'


MODERN_XML_BODY = (  # keys and values as in EMPAD 1.2.2 files (rosettasciio's test file)
    '<timestamp timestamp="1774471672.586728" isoformat="2026-03-25T16:47:52.586728"/>'
    "<software_version>1.2.2  (2021-08-20)</software_version><exposure_time>1</exposure_time>"
    '<scan_parameters mode="search"><scan_size>0.8</scan_size><scan_resolution_y>64</scan_resolution_y>'
    "<scan_resolution_x>64</scan_resolution_x></scan_parameters>"
    '<scan_parameters mode="acquire"><scan_size>0.6</scan_size><scan_resolution_y>2</scan_resolution_y>'
    "<scan_resolution_x>3</scan_resolution_x></scan_parameters>"
    "<iom_measurements><full_scan_field_of_view><scale_factor>0.72</scale_factor>"
    "<x>1.272412341559544e-06</x><y>1.272412341559544e-06</y></full_scan_field_of_view>"
    "<nominal_camera_length>0.369</nominal_camera_length><high_voltage>300000.0</high_voltage>"
    "<calibrated_diffraction_angle>0.00025</calibrated_diffraction_angle></iom_measurements>")

LEGACY_XML_BODY = (  # keys of EMPAD 0.51 files
    "<pix_x>3</pix_x><pix_y>2</pix_y><iom_measurements>"
    "<optics.get_full_scan_field_of_view>[6e-08, 4e-08]</optics.get_full_scan_field_of_view>"
    "<optics.get_cameralength>0.2</optics.get_cameralength><source.get_voltage>200000</source.get_voltage>"
    "<calibrated_pixelsize>1.826537060227288e-10</calibrated_pixelsize></iom_measurements>")


# --- EMPAD ----------------------------------------------------------------------------------------------

def test_empad_round_trip_is_bit_for_bit(tmp_path):
    data = _empad_frames((3, 4, 128, 128))
    path = write_empad(tmp_path / "scan_x4_y3.raw", data)
    assert path == tmp_path / "scan_x4_y3.raw"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan_x4_y3.raw", "scan_x4_y3.xml"]  # no temp files
    assert path.stat().st_size == 12 * EMPAD_FRAME_BYTES == 798720

    # the layout on disk, read with plain numpy: pattern rows then 2 metadata rows of zeros
    disk = np.fromfile(path, dtype="<f4").reshape(12, 130, 128)
    np.testing.assert_array_equal(_bits(disk[:, :128]), _bits(data.reshape(12, 128, 128)))
    assert not disk[:, 128:].any()

    read, meta = read_empad_dask(path, frames_per_chunk=3)
    assert read.shape == (3, 4, 128, 128) and read.dtype == np.dtype("float32")
    assert read.chunks == ((1, 1, 1), (3, 1), (128,), (128,))  # 3 frames a chunk: pieces of 4-frame rows
    np.testing.assert_array_equal(_bits(read.compute()), _bits(data))
    np.testing.assert_array_equal(_bits(read[2, 3].compute()), _bits(data[2, 3]))
    assert meta["scan_shape"] == [3, 4] and meta["scan_shape_source"] == "xml"
    assert meta["xml_path"] == str(tmp_path / "scan_x4_y3.xml")
    assert (meta["frame_rows_on_disk"], meta["metadata_rows_dropped"], meta["n_frames"]) == (130, 2, 12)
    assert meta["frame_stride_bytes"] == EMPAD_FRAME_BYTES and meta["file_bytes"] == 798720
    assert meta["software_version"].startswith("sendmap ")


def test_empad_writer_streams_dask_3d_and_integer_input(tmp_path):
    data = _empad_frames((2, 5, 128, 128), seed=3)
    lazy = write_empad(tmp_path / "lazy.raw", da.from_array(data, chunks=(1, 2, 128, 128)), write_xml=False)
    assert not (tmp_path / "lazy.xml").exists()
    read, meta = read_empad_dask(lazy, scan_shape=(2, 5))
    np.testing.assert_array_equal(_bits(read.compute()), _bits(data))
    assert meta["xml_path"] is None and meta["scan_shape_source"] == "argument"

    counts = np.arange(4 * 128 * 128, dtype=np.int32).reshape(4, 128, 128) - 1000
    stack = write_empad(tmp_path / "stack.raw", counts)
    read, meta = read_empad_dask(stack)
    assert meta["scan_shape"] == [1, 4] and meta["xml_scan_shape"] == [1, 4]
    np.testing.assert_array_equal(read.compute()[0], counts.astype(np.float32))
    assert read.compute()[0, 0, 0, 0] == -1000.0

    with pytest.raises(ValueError, match=r"\(Ry, Rx, 128, 128\).*\(2, 2, 64, 64\)"):
        write_empad(tmp_path / "bad.raw", np.zeros((2, 2, 64, 64), np.float32))
    assert not (tmp_path / "bad.raw").exists()


def test_empad_reader_matches_rosettasciio(tmp_path):
    # our writer's XML/raw read by the maintained library gives our reader's array
    data = _empad_frames((3, 2, 128, 128), seed=5)
    path = write_empad(tmp_path / "scan_x2_y3.raw", data)
    theirs = np.asarray(rsciio_empad_reader(str(path.with_suffix(".xml")))[0]["data"])
    ours = read_empad_dask(path)[0].compute()
    assert theirs.shape == ours.shape == (3, 2, 128, 128)
    np.testing.assert_array_equal(_bits(theirs), _bits(ours))

    # a file written without our writer (metadata rows full of 1e30), with an old-style XML of another name
    folder = tmp_path / "by_hand"
    folder.mkdir()
    frames = _empad_frames((6, 128, 128), seed=6)
    _write_empad_by_hand(folder / "data.raw", frames)
    (folder / "project.xml").write_text(_empad_xml("data.raw", LEGACY_XML_BODY))
    theirs = np.asarray(rsciio_empad_reader(str(folder / "project.xml"))[0]["data"])
    ours, meta = read_empad_dask(folder / "data.raw", frames_per_chunk=4)
    assert ours.shape == theirs.shape == (2, 3, 128, 128)
    np.testing.assert_array_equal(_bits(ours.compute()), _bits(theirs))
    np.testing.assert_array_equal(_bits(ours.compute()), _bits(frames.reshape(2, 3, 128, 128)))
    assert meta["xml_path"] == str(folder / "project.xml")


def test_empad_scan_shape_and_calibration_from_xml(tmp_path):
    frames = _empad_frames((6, 128, 128), seed=7)
    _write_empad_by_hand(tmp_path / "acquisition.raw", frames)
    # an XML about another raw file comes first by name and must be ignored; an unparsable one is skipped
    (tmp_path / "a_other.xml").write_text(_empad_xml("other.raw", "<pix_x>6</pix_x><pix_y>1</pix_y>"))
    (tmp_path / "b_broken.xml").write_text("<root><raw_file filename='acquisition.raw'>")
    (tmp_path / "c_project.xml").write_text(_empad_xml("acquisition.raw", MODERN_XML_BODY))
    assert find_empad_xml(tmp_path / "acquisition.raw") == tmp_path / "c_project.xml"

    read, meta = read_empad_dask(tmp_path / "acquisition.raw")
    assert read.shape == (2, 3, 128, 128)  # the "acquire" scan parameters, not the 64 x 64 "search" ones
    np.testing.assert_array_equal(_bits(read.compute()), _bits(frames.reshape(2, 3, 128, 128)))
    assert meta["scan_shape_source"] == "xml" and meta["xml_scan_shape"] == [2, 3]
    assert meta["beam_energy_kv"] == pytest.approx(300.0)
    assert meta["camera_length_mm"] == pytest.approx(369.0)
    assert meta["q_step_mrad"] == pytest.approx(0.25)
    assert meta["exposure_ms"] == pytest.approx(1.0)
    assert meta["timestamp"] == "2026-03-25T16:47:52.586728"
    # 1.272412e-6 m field of view / 0.72 scale factor / max(2, 3) positions = 589.08 nm, both axes
    assert meta["scan_step_nm"] == pytest.approx(589.0798, rel=1e-6)
    assert meta["scan_step_yx_nm"] == pytest.approx([589.0798, 589.0798], rel=1e-6)
    assert "q_step_inv_nm" not in meta


def test_empad_legacy_xml_calibration(tmp_path):
    _write_empad_by_hand(tmp_path / "old.raw", _empad_frames((6, 128, 128)))
    (tmp_path / "old.xml").write_text(_empad_xml("renamed.raw", LEGACY_XML_BODY))  # same stem wins
    _, meta = read_empad_dask(tmp_path / "old.raw")
    assert meta["scan_shape"] == [2, 3] and meta["xml_path"] == str(tmp_path / "old.xml")
    assert meta["beam_energy_kv"] == pytest.approx(200.0)
    assert meta["camera_length_mm"] == pytest.approx(200.0)
    assert meta["q_step_inv_nm"] == pytest.approx(0.1826537, rel=1e-6)
    # [6e-8 m, 4e-8 m] over 3 columns and 2 rows: 20 nm steps
    assert meta["scan_step_yx_nm"] == pytest.approx([20.0, 20.0])
    assert meta["scan_step_nm"] == pytest.approx(20.0)


def test_empad_scan_shape_from_file_name_and_argument(tmp_path):
    frames = _empad_frames((6, 128, 128), seed=8)
    path = tmp_path / "scan_x3_y2.raw"
    _write_empad_by_hand(path, frames)
    assert scan_shape_from_name(path) == (2, 3)
    assert scan_shape_from_name(tmp_path / "scan_256.raw") is None

    read, meta = read_empad_dask(path)
    assert read.shape == (2, 3, 128, 128) and meta["scan_shape_source"] == "file_name"
    assert meta["xml_path"] is None and meta["xml_scan_shape"] is None
    assert not any(key in meta for key in ("beam_energy_kv", "camera_length_mm", "scan_step_nm"))

    read, meta = read_empad_dask(path, scan_shape=(3, 2))  # the argument beats the file name
    assert read.shape == (3, 2, 128, 128) and meta["scan_shape_source"] == "argument"
    np.testing.assert_array_equal(_bits(read.compute()), _bits(frames.reshape(3, 2, 128, 128)))
    assert read.compute().max() < 1e29  # the 1e30 metadata rows were dropped

    with pytest.raises(SendmapInputError, match=r"scan_x3_y2\.raw.*4 x 2 = 8 probe positions.*6 frames"):
        read_empad_dask(path, scan_shape=(4, 2))


def test_empad_scan_shape_errors(tmp_path):
    _write_empad_by_hand(tmp_path / "anonymous.raw", _empad_frames((6, 128, 128)))
    with pytest.raises(SendmapInputError, match=r"anonymous\.raw.*6 frames.*input\.scan_shape"):
        read_empad_dask(tmp_path / "anonymous.raw")

    _write_empad_by_hand(tmp_path / "scan_x4_y4.raw", _empad_frames((6, 128, 128)))
    with pytest.raises(SendmapInputError, match=r"file name gives a 4 x 4 scan = 16 .* 6 frames.*input\.scan_shape"):
        read_empad_dask(tmp_path / "scan_x4_y4.raw")

    (tmp_path / "anonymous.xml").write_text(_empad_xml("anonymous.raw", "<pix_x>5</pix_x><pix_y>2</pix_y>"))
    with pytest.raises(SendmapInputError, match=r"anonymous\.xml gives a 2 x 5 scan = 10 .* 6 frames"):
        read_empad_dask(tmp_path / "anonymous.raw")
    assert read_empad_dask(tmp_path / "anonymous.raw", scan_shape=(6, 1))[0].shape == (6, 1, 128, 128)

    (tmp_path / "anonymous.xml").write_text("<root><pix_x>6</pix_x>")  # the same-stem XML is cut
    with pytest.raises(SendmapInputError, match=r"anonymous\.xml: cannot read the EMPAD XML"):
        read_empad_dask(tmp_path / "anonymous.raw", scan_shape=(6, 1))


def test_empad_truncated_file(tmp_path):
    path = tmp_path / "scan_x1_y3.raw"
    _write_empad_by_hand(path, _empad_frames((3, 128, 128)))
    with open(path, "r+b") as f:
        f.truncate(2 * EMPAD_FRAME_BYTES + 1000)  # the third frame cut after 1000 bytes
    with pytest.raises(SendmapInputError, match=r"scan_x1_y3\.raw.* 134120 bytes.*multiple of 66560.*"
                                                r"ends at byte offset 133120 \(2 frames\), 1000 bytes after"):
        read_empad_dask(path)
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    with pytest.raises(SendmapInputError, match=r"empty\.raw.* 0 bytes"):
        read_empad_dask(empty, scan_shape=(1, 1))
    with pytest.raises(SendmapInputError, match=r"missing\.raw: cannot read"):
        read_empad_dask(tmp_path / "missing.raw")


# --- raw binary --------------------------------------------------------------------------------------------

def _raw_values(dtype: str, shape, seed=0) -> np.ndarray:
    """Values of ``dtype`` covering its extremes (integers) or negative, fractional, signed-zero floats."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    if dtype.kind == "f":
        data = rng.normal(scale=1000.0, size=shape).astype(dtype)
        data.reshape(-1)[:4] = [-0.0, -2.5, 0.375, np.finfo(dtype).max]
        return data
    info = np.iinfo(dtype)
    data = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    data.reshape(-1)[:2] = [info.min, info.max]
    return data


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("dtype", ["uint8", "u2", "int16", "uint32", "int64", "float16", "float32", "f8"])
def test_raw_round_trip_with_headers(tmp_path, dtype, byte_order):
    data = _raw_values(dtype, (2, 3, 5, 7))
    header = b"SENDMAP-RAW\x00\xff"  # 13 bytes: nothing is aligned
    path = write_raw(tmp_path / "frames.bin", data, dtype=dtype, byte_order=byte_order, header=header,
                     frame_header_bytes=b"FH!", frame_footer_bytes=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.bin"]
    disk = np.dtype(dtype).newbyteorder(byte_order)
    stride = 3 + 5 * 7 * disk.itemsize + 2
    assert path.stat().st_size == 13 + 6 * stride

    # reference built independently: a structured numpy view of the documented layout
    record = np.dtype([("head", "V3"), ("px", disk, (5, 7)), ("foot", "V2")])
    ref = np.fromfile(path, dtype=record, offset=13)
    assert path.read_bytes()[:13] == header
    assert {bytes(h) for h in ref["head"]} == {b"FH!"} and {bytes(f) for f in ref["foot"]} == {b"\0\0"}
    np.testing.assert_array_equal(_bits(ref["px"].astype(disk.newbyteorder("="))), _bits(data.reshape(6, 5, 7)))

    read, meta = read_raw_dask(path, scan_shape=(2, 3), frame_shape=(5, 7), dtype=dtype, byte_order=byte_order,
                               header_bytes=13, frame_header_bytes=3, frame_footer_bytes=2, frames_per_chunk=2)
    assert read.dtype == np.dtype(dtype) and read.dtype.isnative
    assert read.chunks == ((1, 1), (2, 1), (5,), (7,))
    values = read.compute()
    assert values.dtype.isnative
    np.testing.assert_array_equal(_bits(values), _bits(data))
    assert meta == {"format": "raw", "scan_shape": [2, 3], "frame_shape": [5, 7], "n_frames": 6,
                    "dtype": disk.str, "byte_order": byte_order, "header_bytes": 13, "frame_header_bytes": 3,
                    "frame_footer_bytes": 2, "frame_stride_bytes": stride, "file_bytes": 13 + 6 * stride}


def test_raw_reader_against_hand_written_memmap(tmp_path):
    # a file made with plain numpy (random header and per-frame header/footer bytes), big-endian uint16
    rng = np.random.default_rng(11)
    frames = rng.integers(0, 65535, size=(12, 4, 6), dtype=np.uint16, endpoint=True)
    record = np.dtype([("head", "u1", 16), ("px", ">u2", (4, 6)), ("foot", "u1", 8)])
    records = np.zeros(12, dtype=record)
    records["head"], records["foot"] = rng.integers(0, 255, (12, 16)), rng.integers(0, 255, (12, 8))
    records["px"] = frames
    path = tmp_path / "detector.dat"
    with open(path, "wb") as f:
        f.write(rng.bytes(100))
        records.tofile(f)
    reference = np.memmap(path, dtype=record, mode="r", offset=100, shape=(12,))["px"].reshape(3, 4, 4, 6)

    read, meta = read_raw_dask(path, scan_shape=(3, 4), frame_shape=(4, 6), dtype="uint16", header_bytes=100,
                               frame_header_bytes=16, frame_footer_bytes=8, byte_order=">", frames_per_chunk=5)
    assert read.chunks == ((1, 1, 1), (4,), (4,), (6,))
    np.testing.assert_array_equal(read.compute(), reference)
    np.testing.assert_array_equal(read[1:, 2:].compute(), frames.reshape(3, 4, 4, 6)[1:, 2:])
    assert meta["frame_stride_bytes"] == 16 + 48 + 8 and meta["dtype"] == ">u2"

    # scan_shape None: one row of all frames
    line, meta = read_raw_dask(path, scan_shape=None, frame_shape=(4, 6), dtype="u2", header_bytes=100,
                               frame_header_bytes=16, frame_footer_bytes=8, byte_order=">")
    assert line.shape == (1, 12, 4, 6) and meta["scan_shape"] == [1, 12]
    np.testing.assert_array_equal(line.compute()[0], frames)


def test_raw_native_byte_order_and_default_dtype(tmp_path):
    data = _raw_values("int32", (2, 2, 3, 3))
    native = write_raw(tmp_path / "native.bin", data, byte_order="=")
    explicit = write_raw(tmp_path / "explicit.bin", data, byte_order="<" if sys.byteorder == "little" else ">")
    assert native.read_bytes() == explicit.read_bytes() == data.tobytes()  # no header: just the pixels
    read, meta = read_raw_dask(native, scan_shape=(2, 2), frame_shape=(3, 3), dtype="int32", byte_order="=")
    np.testing.assert_array_equal(read.compute(), data)
    assert meta["byte_order"] == "="


def test_raw_writer_is_block_wise_and_streams_dask(tmp_path, monkeypatch):
    data = _raw_values("uint16", (4, 3, 5, 7), seed=2)
    frame_bytes = 5 * 7 * 2
    expected = write_raw(tmp_path / "one_block.bin", data, frame_header_bytes=4).read_bytes()
    # 2 frames a block (pieces of 3-frame rows), then 7 frames a block (2 whole rows)
    for frames_per_block in (2, 7):
        monkeypatch.setattr(raw_module, "_WRITE_BLOCK_BYTES", frames_per_block * frame_bytes)
        blocks = list(raw_module.frame_blocks(data, data.shape, 2))
        assert [len(b) for b in blocks] == ([2, 1] * 4 if frames_per_block == 2 else [6, 6])
        lazy = da.from_array(data, chunks=(1, 2, 5, 7))
        path = write_raw(tmp_path / f"blocks_{frames_per_block}.bin", lazy, frame_header_bytes=4)
        assert path.read_bytes() == expected
    stack = write_raw(tmp_path / "stack.bin", data.reshape(12, 5, 7), frame_header_bytes=4)
    assert stack.read_bytes() == expected


def test_raw_writer_rejects_values_the_dtype_cannot_hold(tmp_path):
    path = write_raw(tmp_path / "keep.bin", np.ones((1, 2, 2, 2), np.uint8))
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"values -1\.\.1 do not fit uint8 \(0\.\.255\)"):
        write_raw(path, np.array([[[[-1, 1], [0, 0]]]]), dtype="uint8")
    with pytest.raises(ValueError, match="non-integer values"):
        write_raw(path, np.full((1, 1, 2, 2), 0.5), dtype="u2")
    assert path.read_bytes() == before  # the failed writes left the old file whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.bin"]  # and no temporary files
    # a float64 -> float32 write rounds as numpy does
    rounded = write_raw(tmp_path / "f4.bin", np.full((1, 1, 1, 2), 0.1), dtype="float32")
    assert np.fromfile(rounded, "<f4").tolist() == [np.float32(0.1)] * 2


def _stride_file(tmp_path, n_bytes: int):
    path = tmp_path / "cut.bin"
    path.write_bytes(bytes(n_bytes))
    return path


RAW_LAYOUT = dict(frame_shape=(4, 4), dtype="uint16", header_bytes=10, frame_header_bytes=6)  # 38-byte frames


def test_raw_size_errors(tmp_path):
    truncated = _stride_file(tmp_path, 10 + 5 * 38 + 20)  # 5 frames and 20 bytes of a sixth
    with pytest.raises(SendmapInputError, match=r"cut\.bin: truncated: expected 238 bytes \(6 frames\), found 220 "
                                                r"bytes; frame 6 .* at byte offset 220, .* ends at byte offset 200"):
        read_raw_dask(truncated, scan_shape=(2, 3), **RAW_LAYOUT)
    with pytest.raises(SendmapInputError, match=r"cut\.bin: 20 trailing bytes .* 38-byte frame .*expected 200 "
                                                r"bytes, found 220 bytes; .* ends at byte offset 200"):
        read_raw_dask(truncated, scan_shape=None, **RAW_LAYOUT)
    with pytest.raises(SendmapInputError, match=r"20 trailing bytes .*expected 162 bytes \(4 frames\), found 220"):
        read_raw_dask(truncated, scan_shape=(2, 2), **RAW_LAYOUT)

    whole = _stride_file(tmp_path, 10 + 6 * 38)
    with pytest.raises(SendmapInputError, match=r"cut\.bin: scan_shape 4 x 2 = 8 probe positions .* 6 frames"):
        read_raw_dask(whole, scan_shape=(4, 2), **RAW_LAYOUT)
    with pytest.raises(SendmapInputError, match=r"scan_shape must be two integers"):
        read_raw_dask(whole, scan_shape=(6,), **RAW_LAYOUT)
    assert read_raw_dask(whole, scan_shape=(3, 2), **RAW_LAYOUT)[0].shape == (3, 2, 4, 4)

    tiny = _stride_file(tmp_path, 30)
    with pytest.raises(SendmapInputError, match=r"cut\.bin: file too small: found 30 bytes, less than the 10-byte"
                                                r" file header plus one 38-byte frame"):
        read_raw_dask(tiny, scan_shape=None, **RAW_LAYOUT)
    with pytest.raises(SendmapInputError, match=r"nothing\.bin: cannot read"):
        read_raw_dask(tmp_path / "nothing.bin", scan_shape=None, **RAW_LAYOUT)


@pytest.mark.parametrize("changes, message", [
    ({"dtype": "uint17"}, r"dtype 'uint17' is not a numpy type name"),
    ({"dtype": "complex64"}, r"dtype 'complex64' .* not an integer or float"),
    ({"dtype": "bool"}, r"dtype 'bool' .* not an integer or float"),
    ({"dtype": ">u2"}, r"dtype '>u2' has a byte-order prefix.*'u2'"),
    ({"byte_order": "big"}, r"byte_order must be one of"),
    ({"header_bytes": -1}, r"header_bytes must be a non-negative integer"),
    ({"frame_footer_bytes": -4}, r"frame_footer_bytes must be a non-negative integer"),
    ({"frame_header_bytes": 1.5}, r"frame_header_bytes must be a non-negative integer"),
    ({"frame_shape": (0, 4)}, r"frame_shape must be two positive integers"),
])
def test_raw_parameter_errors_name_the_file(tmp_path, changes, message):
    path = _stride_file(tmp_path, 4 * 32)
    kwargs = dict(scan_shape=(2, 2), frame_shape=(4, 4), dtype="uint16") | changes
    with pytest.raises(SendmapInputError, match=r"cut\.bin: " + message):
        read_raw_dask(path, **kwargs)


# --- both: graphs pickle and run in other processes ----------------------------------------------------------

def test_graphs_pickle_and_run_in_processes(tmp_path):
    empad_data = _empad_frames((2, 2, 128, 128), seed=9)
    empad, _ = read_empad_dask(write_empad(tmp_path / "scan_x2_y2.raw", empad_data), frames_per_chunk=1)
    raw_data = _raw_values("int16", (2, 3, 4, 5), seed=10)
    raw, _ = read_raw_dask(write_raw(tmp_path / "r.bin", raw_data, byte_order=">", frame_footer_bytes=3),
                           scan_shape=(2, 3), frame_shape=(4, 5), dtype="i2", byte_order=">",
                           frame_footer_bytes=3, frames_per_chunk=2)
    assert empad.npartitions == 4 and raw.npartitions == 4
    for lazy, data in ((empad, empad_data), (raw, raw_data)):
        np.testing.assert_array_equal(_bits(pickle.loads(pickle.dumps(lazy)).compute()), _bits(data))
    empad_values, raw_values = dask.compute(empad, raw, scheduler="processes", num_workers=2)
    np.testing.assert_array_equal(_bits(empad_values), _bits(empad_data))
    np.testing.assert_array_equal(raw_values, raw_data)
