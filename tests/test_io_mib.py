"""Merlin .mib/.hdr reader and writer, and the .npy reader."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from rsciio.quantumdetector import file_reader

from sendmap.errors import SendmapInputError
from sendmap.io import open_dataset
from sendmap.io.mib import (decode_raw_frames, encode_raw_frames, mib_memmap, read_mib_dask, read_mib_info,
                            read_mib_region, write_mib)
from sendmap.io.npy import read_npy_dask

REAL_FILES = {"001_4x2_6bit": (256, 256), "002_4x2_6bit_roi128": (128, 256)}


def _frames(shape, vmax, seed=0):
    """Random integer frames in 0..vmax, including both ends."""
    data = np.random.default_rng(seed).integers(0, vmax, size=shape, endpoint=True, dtype=np.uint64)
    data.flat[0], data.flat[-1] = 0, vmax
    return data


def _rsciio_data(path: Path) -> np.ndarray:
    return np.asarray(file_reader(str(path))[0]["data"])


def _headers(path: Path) -> list[list[str]]:
    info = read_mib_info(path)
    return [bytes(h).split(b"\0", 1)[0].decode().split(",") for h in mib_memmap(info)["hdr"]]


@pytest.fixture
def small_mib(tmp_path) -> tuple[Path, np.ndarray]:
    data = _frames((3, 4, 10, 12), 4000, seed=1)
    return write_mib(tmp_path / "scan.mib", data, dtype="u2"), data


# --- real files --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", REAL_FILES)
def test_real_file_matches_rosettasciio(real_data_dir, name):
    path = real_data_dir / "merlin_4x2" / f"{name}.mib"
    info = read_mib_info(path)
    assert (info.header_bytes, info.frame_shape, info.n_frames) == (384, REAL_FILES[name], 8)
    assert info.dtype == np.dtype(">u1")
    assert info.frame_stride_bytes == 384 + REAL_FILES[name][0] * REAL_FILES[name][1]
    assert info.counter_depth == 6
    assert info.metadata["exposure_ms"] == pytest.approx(100.0)
    assert info.metadata["hdr"]["Frames in Acquisition (Number)"] == "8"

    data, _ = read_mib_dask(path, scan_shape=(2, 4))
    assert data.shape == (2, 4, *REAL_FILES[name]) and data.dtype == np.uint8
    values = data.compute()
    np.testing.assert_array_equal(values, _rsciio_data(path))
    assert values.max() == 63  # 6-bit counter, saturated pixels
    assert read_mib_dask(path)[0].shape == (1, 8, *REAL_FILES[name])  # .hdr: one frame per trigger
    # the memmap keeps the rows as stored; the reader flips them
    np.testing.assert_array_equal(mib_memmap(info)["px"][:, ::-1].reshape(values.shape), values)


def test_written_headers_match_real_merlin_layout(real_data_dir, tmp_path):
    real = real_data_dir / "merlin_4x2" / "001_4x2_6bit.mib"
    ours = write_mib(tmp_path / "ours.mib", _frames((4, 2, 256, 256), 63), dtype="u1", exposure_ms=100.0,
                     counter_depth=6)
    real_headers, our_headers = _headers(real), _headers(ours)
    assert len(our_headers) == len(real_headers) == 8
    timestamps = (9, real_headers[0].index("MQ1A") + 1)
    for number, (theirs, mine) in enumerate(zip(real_headers, our_headers), start=1):
        assert mine[1] == f"{number:06d}"
        assert [f for i, f in enumerate(mine) if i not in timestamps] == \
            [f for i, f in enumerate(theirs) if i not in timestamps]
        assert [len(mine[i]) for i in timestamps] == [len(theirs[i]) for i in timestamps]

    real_hdr, our_hdr = real.with_suffix(".hdr").read_bytes(), ours.with_suffix(".hdr").read_bytes()
    assert len(our_hdr) == len(real_hdr) == 2048
    keys = [line.split(b"\t")[0] for line in real_hdr.split(b"\r\n")]
    assert [line.split(b"\t")[0] for line in our_hdr.split(b"\r\n")] == keys
    info = read_mib_info(ours)
    assert info.counter_depth == 6 and info.metadata["frames_per_trigger"] == 2


# --- writer round trip -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["u1", "u2", "u4"])
@pytest.mark.parametrize("shape", [(3, 4, 10, 12), (12, 10, 12)])
def test_round_trip(tmp_path, dtype, shape):
    data = _frames(shape, np.iinfo(dtype).max)
    path = write_mib(tmp_path / "rt.mib", data, dtype=dtype)
    assert path == tmp_path / "rt.mib" and path.with_suffix(".hdr").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rt.hdr", "rt.mib"]  # no temporary files left

    info = read_mib_info(path)
    assert info.dtype == np.dtype(dtype).newbyteorder(">") and info.counter_depth == 8 * info.dtype.itemsize
    read, _ = read_mib_dask(path)
    scan_shape = shape[:2] if len(shape) == 4 else (1, shape[0])
    assert read.shape == (*scan_shape, 10, 12) and read.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(read.compute(), data.reshape(read.shape))
    # rosettasciio reads our file as a Merlin file, with the same orientation and scan shape
    np.testing.assert_array_equal(_rsciio_data(path), data)


def test_write_streams_dask_arrays_and_generators(tmp_path):
    data = _frames((2, 3, 6, 5), 1000)
    lazy = write_mib(tmp_path / "lazy.mib", da.from_array(data, chunks=(1, 2, 6, 5)), write_hdr=False)
    assert not lazy.with_suffix(".hdr").exists()
    np.testing.assert_array_equal(read_mib_dask(lazy, scan_shape=(2, 3))[0].compute(), data)

    frames = data.reshape(6, 6, 5)
    stream = write_mib(tmp_path / "stream.mib", (block for block in (frames[:4], frames[4], frames[5:])))
    np.testing.assert_array_equal(read_mib_dask(stream, scan_shape=(2, 3))[0].compute(), data)


@pytest.mark.parametrize("data, kwargs", [
    (np.full((2, 4, 4), 256), {"dtype": "u1"}),
    (np.full((2, 4, 4), -1), {}),
    (np.full((2, 4, 4), 64), {"dtype": "u1", "counter_depth": 6}),
    (np.full((2, 4, 4), 1.5), {}),
    (np.zeros((4, 4)), {}),
    (np.zeros((2, 4, 4)), {"dtype": "i2"}),
])
def test_write_rejects_bad_input(tmp_path, data, kwargs):
    with pytest.raises(ValueError):
        write_mib(tmp_path / "bad.mib", data, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_header_size_is_read_from_the_header(tmp_path):
    """A quad-style 768-byte header: the frame stride follows the header's data offset field."""
    data = _frames((3, 6, 5), 4000)
    header = b"MQ1,%06d,00768,04,0005,0006,U16,   2x2,0F,2024-01-01 00:00:00.000000,0.001000,0,0,0,"
    path = tmp_path / "quad.mib"
    with open(path, "wb") as f:
        for number, frame in enumerate(data, start=1):
            f.write((header % number).ljust(768, b"\0") + frame[::-1].astype(">u2").tobytes())
    info = read_mib_info(path)
    assert (info.header_bytes, info.frame_shape, info.n_frames, info.counter_depth) == (768, (6, 5), 3, 16)
    assert info.metadata["n_chips"] == 4 and info.metadata["exposure_ms"] == pytest.approx(1.0)
    np.testing.assert_array_equal(read_mib_dask(path, scan_shape=(1, 3))[0].compute()[0], data)


# --- lazy reading ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("frames_per_chunk, chunks", [
    (None, ((3,), (4,))),  # default: whole rows up to 64 MiB
    (8, ((2, 1), (4,))),
    (3, ((1, 1, 1), (3, 1))),
])
def test_chunks_are_runs_of_consecutive_frames(small_mib, frames_per_chunk, chunks):
    path, data = small_mib
    read, _ = read_mib_dask(path, frames_per_chunk=frames_per_chunk)
    assert read.chunks == (*chunks, (10,), (12,))
    np.testing.assert_array_equal(read.compute(), data)
    np.testing.assert_array_equal(read[1:, 2:3].compute(), data[1:, 2:3])


def test_graph_pickles_and_runs_in_processes(small_mib):
    path, data = small_mib
    read, _ = read_mib_dask(path, frames_per_chunk=4)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(read)).compute(), data)
    np.testing.assert_array_equal(read.compute(scheduler="processes", num_workers=1), data)


def test_reads_a_read_only_copy(small_mib, tmp_path):
    path, data = small_mib
    copy = shutil.copy(path, tmp_path / "ro.mib")
    shutil.copy(path.with_suffix(".hdr"), tmp_path / "ro.hdr")
    os.chmod(copy, 0o444)
    info = read_mib_info(copy)
    assert not mib_memmap(info).flags.writeable
    np.testing.assert_array_equal(read_mib_dask(copy)[0].compute(), data)


# --- bad input ---------------------------------------------------------------------------------------------

def test_truncated_file_names_byte_offset(small_mib):
    path, _ = small_mib
    stride = read_mib_info(path).frame_stride_bytes
    with open(path, "r+b") as f:
        f.truncate(12 * stride - 100)
    with pytest.raises(SendmapInputError, match=rf"truncated.*{12 * stride - 100} bytes.*multiple of {stride}.*"
                                                rf"byte offset {11 * stride}") as err:
        read_mib_info(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("offset, was, now", [(0, b"MQ1", b"XQ1"), (20, b"0012", b"0013")])  # magic, frame width
def test_bad_last_header_names_byte_offset(small_mib, offset, was, now):
    path, _ = small_mib
    last = 11 * read_mib_info(path).frame_stride_bytes
    with open(path, "r+b") as f:
        f.seek(last + offset)
        assert f.read(len(was)) == was
        f.seek(last + offset)
        f.write(now)
    with pytest.raises(SendmapInputError, match=f"byte offset {last}"):
        read_mib_dask(path)


@pytest.mark.parametrize("depth", [b"U64", b"U01"])
def test_unsupported_pixel_depth(small_mib, depth):
    path, _ = small_mib
    with open(path, "r+b") as f:
        f.seek(30)
        assert f.read(3) == b"U16"
        f.seek(30)
        f.write(depth)
    with pytest.raises(SendmapInputError, match=f"pixel depth '{depth.decode()}'") as err:
        read_mib_info(path)
    assert str(path) in str(err.value)


def test_scan_shape_mismatch(small_mib):
    path, _ = small_mib
    with pytest.raises(SendmapInputError, match=r"5 x 5 = 25 .* 12 frames") as err:
        read_mib_dask(path, scan_shape=(5, 5))
    assert str(path) in str(err.value)


def test_not_a_mib_file(tmp_path):
    path = tmp_path / "notes.mib"
    path.write_text("hello")
    with pytest.raises(SendmapInputError, match="byte offset 0"):
        read_mib_info(path)
    with pytest.raises(SendmapInputError, match="missing.mib"):
        read_mib_info(tmp_path / "missing.mib")


# --- .npy --------------------------------------------------------------------------------------------------

def test_npy_3d_and_4d(tmp_path):
    data = _frames((3, 4, 6, 5), 70000).astype(np.uint32)
    np.save(tmp_path / "four.npy", data)
    np.save(tmp_path / "three.npy", data.reshape(12, 6, 5))
    np.save(tmp_path / "fortran_be.npy", np.asfortranarray(data.astype(">f4")))

    four = read_npy_dask(tmp_path / "four.npy", frames_per_chunk=3)
    assert four.chunks == ((1, 1, 1), (3, 1), (6,), (5,))
    np.testing.assert_array_equal(four.compute(), data)
    three = read_npy_dask(tmp_path / "three.npy", scan_shape=(3, 4), frames_per_chunk=8)
    np.testing.assert_array_equal(three.compute(scheduler="threads"), data)
    with pytest.raises(SendmapInputError, match=r"input.scan_shape: \[Ry, Rx\].*\[1, 12\]"):
        read_npy_dask(tmp_path / "three.npy")  # a stack says nothing of its scan: no silent 1 x 12 line
    assert read_npy_dask(tmp_path / "three.npy", required=False).shape == (1, 12, 6, 5)
    fortran = read_npy_dask(tmp_path / "fortran_be.npy", frames_per_chunk=2)
    assert fortran.dtype == np.float32
    np.testing.assert_array_equal(fortran.compute(), data.astype(np.float32))


def test_npy_errors(tmp_path):
    np.save(tmp_path / "two.npy", np.zeros((4, 4, 4, 4, 4)))
    np.save(tmp_path / "three.npy", np.zeros((12, 4, 4)))
    np.save(tmp_path / "four.npy", np.zeros((3, 4, 4, 4)))
    (tmp_path / "text.npy").write_text("not numpy")
    np.savez(tmp_path / "archive.npy", a=np.zeros(3))  # numpy appends .npz
    cases = [("two.npy", {}, r"shape \(4, 4, 4, 4, 4\)"),
             ("three.npy", {"scan_shape": (5, 2)}, "10 probe positions .* 12 frames"),
             ("four.npy", {"scan_shape": (4, 3)}, r"\(4, 3\) does not match .* \(3, 4\)"),
             ("text.npy", {}, "not a readable .npy"),
             ("archive.npy.npz", {}, "not a .npy file")]
    for name, kwargs, message in cases:
        with pytest.raises(SendmapInputError, match=message) as err:
            read_npy_dask(tmp_path / name, **kwargs)
        assert name in str(err.value)


@pytest.mark.parametrize("frame", [(512, 512), (514, 514)])
def test_quad_frames_with_768_byte_headers(tmp_path, frame):
    """Quad (2x2) recordings: 768-byte headers read from the header, 512² or 514² (with the chip gap)."""
    from rsciio.quantumdetector import file_reader

    data = np.random.default_rng(3).poisson(2.0, size=(2, 3, *frame)).astype(np.uint16)
    path = write_mib(tmp_path / "quad.mib", data, layout="2x2")
    arr, info = read_mib_dask(path)
    assert info.header_bytes == 768 and info.metadata["n_chips"] == 4 and arr.shape == data.shape
    np.testing.assert_array_equal(arr.compute(), data)
    np.testing.assert_array_equal(file_reader(str(path), navigation_shape=(3, 2))[0]["data"], data)


@pytest.mark.parametrize("depth", ["U64", "U12"])
def test_unreadable_pixel_depths_name_the_file_and_offset(tmp_path, depth):
    path = write_mib(tmp_path / "d.mib", np.ones((1, 2, 8, 8), np.uint16))
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"U16"):raw.index(b"U16") + 3] = depth.encode()  # first header only
    path.write_bytes(bytes(raw))
    with pytest.raises(SendmapInputError, match=rf"{depth}.*byte offset 0"):
        read_mib_info(path)


def test_region_reader_equals_the_dask_array(tmp_path):
    """read_mib_region (the ingest's direct path) gives the dask array's values for whole rows and row pieces."""
    from sendmap.io import open_dataset
    from sendmap.io.mib import write_mib

    data = np.random.default_rng(4).integers(0, 3000, (3, 5, 16, 12)).astype(np.uint16)
    path = write_mib(tmp_path / "s.mib", data)
    ds = open_dataset(path, "mib", None)
    assert ds.read_region is not None
    for region in [(0, 3, 0, 5), (1, 2, 0, 5), (0, 2, 1, 4), (2, 3, 4, 5)]:
        y0, y1, x0, x1 = region
        np.testing.assert_array_equal(ds.read_region(region), np.asarray(ds.data[y0:y1, x0:x1]))
        np.testing.assert_array_equal(ds.read_region(region), data[y0:y1, x0:x1])


# --- every Merlin layout and depth (merlin_variants), raw counter mode (R64) ---------------------------------

VARIANTS = sorted(f"{kind}_{n}_Frame_CounterDepth_{d}_Rows_256{raw}"
                  for kind in ("Single", "Quad") for n in (1, 9) for d in (1, 6, 12, 24) for raw in ("",)) + sorted(
    f"{kind}_{n}_Frame_CounterDepth_1_Rows_256RAW" for kind in ("Single", "Quad") for n in (1, 9))


@pytest.mark.parametrize("name", [v for v in VARIANTS if not v.endswith("RAW")] + ["mib2hspy_test_CL30cm_24bit"])
def test_real_variants_equal_rosettasciio(real_data_dir, name):
    """Every U08/U16/U32 Merlin layout (single chip 256², quad 512²; 1, 6, 12, 24 bit; 1 and 9 frames) reads value
    for value as rosettasciio reads it (files: rosettasciio's Merlin_Single_Quad.zip, mib2hspy's test file)."""
    path = real_data_dir / "merlin_variants" / f"{name}.mib"
    data, info = read_mib_dask(path)
    ref = _rsciio_data(path)
    assert data.shape == (1, info.n_frames, *info.frame_shape)
    assert info.frame_shape == ((512, 512) if name.startswith("Quad") else (256, 256))
    depth = 24 if "24bit" in name else int(name.split("CounterDepth_")[1].split("_")[0])
    assert info.counter_depth == depth
    np.testing.assert_array_equal(data.compute().reshape(ref.shape), ref)
    assert int(data.max().compute()) <= 2**depth - 1


@pytest.mark.parametrize("kind", ["Single", "Quad"])
@pytest.mark.parametrize("n", [1, 9])
def test_raw_counter_mode_real_files(real_data_dir, kind, n):
    """R64 raw 1-bit frames decode to the detector's own layout. rosettasciio 0.15 refuses R64 files, so the check
    is against rosettasciio's reading of the U08 1-bit recording of the same detector with the same settings:
    the content is detector noise from a fixed set of noisy pixels, so >= 99.9 % of the pixels agree and >= 99 % of
    the set pixels are set in both (measured: 99.95 %, 99.3-99.7 %), while a flipped layout agrees on 93-96 % of
    the pixels (chance, with 4 % set) and on ~49 % of the set ones."""
    folder = real_data_dir / "merlin_variants"
    raw_path = folder / f"{kind}_{n}_Frame_CounterDepth_1_Rows_256RAW.mib"
    info = read_mib_info(raw_path)
    size = 512 if kind == "Quad" else 256
    assert info.raw is not None and info.counter_depth == 1 and info.frame_shape == (size, size)
    assert info.n_frames == n and info.dtype == np.dtype(">u1")
    raw = read_mib_dask(raw_path)[0].compute().reshape(n, size, size)
    ref = _rsciio_data(folder / f"{kind}_{n}_Frame_CounterDepth_1_Rows_256.mib").reshape(n, size, size)
    assert set(np.unique(raw)) <= {0, 1} and 0.03 < raw.mean() < 0.05
    assert (raw == ref).mean() > 0.999
    assert ((raw > 0) & (ref > 0)).sum() / (raw > 0).sum() > 0.99
    for wrong in (raw[:, ::-1], raw[:, :, ::-1], raw[:, ::-1, ::-1]):
        assert (wrong == ref).mean() < 0.97 and ((wrong > 0) & (ref > 0)).sum() / (wrong > 0).sum() < 0.6
    # the direct reader gives the same frames as the dask array
    np.testing.assert_array_equal(read_mib_region(info, n, (0, 1, 0, n)).reshape(raw.shape), raw)


@pytest.mark.parametrize("depth", [1, 6, 12, 24])
@pytest.mark.parametrize("quad", [False, True])
def test_raw_counter_mode_round_trip(tmp_path, depth, quad):
    """Synthetic R64 files of every counter depth (single and quad; a 24-bit quad is refused: no recording to check
    its layout): frames encoded as the Medipix3 readout stores them (encode_raw_frames, written from the layout
    description in sendmap.io.mib) read back value for value through the file reader."""
    size = 512 if quad else 256
    frames = _frames((4, size, size), 2**depth - 1, seed=depth)
    words = encode_raw_frames(frames[:, ::-1], depth, quad=quad)  # the reader flips Qy as for U08..U32 files
    raw_w, raw_h = (4 * size // 2, size // 2) if quad else ((2 * size if depth == 24 else size), size)
    header_bytes = 768 if quad else 384
    path = tmp_path / "raw.mib"
    with open(path, "wb") as f:
        for i, w in enumerate(words):
            fields = ["MQ1", f"{i + 1:06d}", f"{header_bytes:05d}", "04" if quad else "01", f"{raw_w:04d}",
                      f"{raw_h:04d}", "R64", "   2x2" if quad else "   1x1", "0F" if quad else "01",
                      "2021-04-15 14:43:00.835428", "0.001000", "0", "0", "0", *(["0.000000E+0"] * 8), "3RX",
                      "MQ1A", "2021-04-15T13:43:00.835428351Z", "1000000ns", str(depth), ""]
            f.write(",".join(fields).encode().ljust(header_bytes, b"\0"))
            f.write(w.tobytes())
    if quad and depth == 24:
        with pytest.raises(SendmapInputError, match="24-bit raw counter mode"):
            read_mib_info(path)
        return
    data = read_mib_dask(path, scan_shape=(2, 2))[0].compute()
    assert data.dtype == {1: np.uint8, 6: np.uint8, 12: np.uint16, 24: np.uint32}[depth]
    np.testing.assert_array_equal(data.reshape(frames.shape), frames)


def test_raw_counter_mode_needs_a_known_depth(tmp_path):
    """An R64 header whose counter depth is not one of the chip's (1, 6, 12, 24 bit) cannot be decoded: clear error."""
    path = write_mib(tmp_path / "d.mib", np.ones((1, 2, 8, 8), np.uint16))
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"U16"):raw.index(b"U16") + 3] = b"R64"
    path.write_bytes(bytes(raw))
    with pytest.raises(SendmapInputError, match=r"raw counter mode \(R64\) file whose counter depth is 16"):
        read_mib_info(path)


def test_raw_decoder_matches_bit_layout():
    """One 64-pixel 1-bit word by hand: its 8 bytes stored in reverse order, pixels least significant bit first."""
    pixels = np.zeros((1, 1, 64), np.uint8)
    pixels[0, 0, [0, 9, 63]] = 1  # byte 0 bit 0, byte 1 bit 1, byte 7 bit 7 of the word
    stored = np.array([[0x80, 0, 0, 0, 0, 0, 0x02, 0x01]], np.uint8)  # the same word, bytes reversed on disk
    np.testing.assert_array_equal(decode_raw_frames(stored, (1, 64, 1), 1), pixels)
    np.testing.assert_array_equal(encode_raw_frames(pixels, 1), stored)
    # 12 bit: four pixels 1, 2, 3, 0xABC in one word → little-endian words in reversed byte order
    twelve = np.array([[[1, 2, 3, 0xABC]]], np.uint16)
    stored12 = np.array([[0x0A, 0xBC, 0x00, 0x03, 0x00, 0x02, 0x00, 0x01]], np.uint8)
    np.testing.assert_array_equal(decode_raw_frames(stored12, (1, 4, 1), 12), twelve)


def test_mib_without_hdr(real_data_dir, tmp_path):
    """No .hdr: one frame is a 1 x 1 scan (ueds_beamblock_12bit: one real 12-bit pattern); several frames need
    input.scan_shape (multi_6bit_9frames: the frame headers do not record the scan), and then read as rosettasciio
    reads them."""
    folder = real_data_dir / "merlin_variants"
    single = open_dataset(folder / "ueds_beamblock_12bit.mib")
    assert single.shape == (1, 1, 256, 256) and single.dtype == np.uint16
    np.testing.assert_array_equal(single.data.compute()[0, 0], _rsciio_data(folder / "ueds_beamblock_12bit.mib"))
    with pytest.raises(SendmapInputError, match=r"no .hdr file.*input.scan_shape.*\[1, 9\]"):
        open_dataset(folder / "multi_6bit_9frames.mib")
    multi = open_dataset(folder / "multi_6bit_9frames.mib", scan_shape=(3, 3))
    np.testing.assert_array_equal(multi.data.compute().reshape(9, 256, 256),
                                  _rsciio_data(folder / "multi_6bit_9frames.mib"))
    assert open_dataset(folder / "multi_6bit_9frames.mib", scan_shape_required=False).shape[:2] == (1, 9)


def test_corrupted_header_is_a_clear_error(real_data_dir):
    """mib2hspy's deliberately broken header (the frame height field is empty)."""
    with pytest.raises(SendmapInputError, match=r"corrupt Merlin frame header at byte offset 0: field 5 \(frame height\)"):
        open_dataset(real_data_dir / "merlin_variants" / "mib2hspy_test_CL30cm_corrupted_header.mib")


def test_npy_single_pattern_is_a_1x1_scan(tmp_path):
    pattern = np.arange(12 * 10, dtype=np.int64).reshape(12, 10) - 50  # e.g. background-subtracted: negatives
    np.save(tmp_path / "one.npy", pattern)
    arr = read_npy_dask(tmp_path / "one.npy")
    assert arr.shape == (1, 1, 12, 10)
    np.testing.assert_array_equal(arr.compute()[0, 0], pattern)
    with pytest.raises(SendmapInputError, match="1 x 2 = 2 probe positions does not match the 1 frames"):
        read_npy_dask(tmp_path / "one.npy", scan_shape=(1, 2))
