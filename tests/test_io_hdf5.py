"""HDF5 readers: DECTRIS Arina/EIGER acquisitions and py4DSTEM / emdfile / EMD 1.0 datacubes."""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from sendmap.errors import SendmapInputError
from sendmap.io.hdf5 import (
    hdf5_flavour,
    read_arina_dask,
    read_arina_pixel_mask,
    read_py4dstem_dask,
    write_arina,
    write_py4dstem,
)

REAL_ARINA = Path(__file__).parents[1].parent / "shared/data/real/arina_zeros"
LAYOUTS = ("emdfile", "emd1", "py4dstem012")


@pytest.fixture(scope="module")
def real_arina() -> Path:
    if not (REAL_ARINA / "test_00_master.h5").is_file():
        pytest.skip(f"../shared/data/real not present: no Arina recording at {REAL_ARINA}")
    return REAL_ARINA


@pytest.fixture(autouse=True)
def _quiet_rsciio(caplog):
    # rosettasciio logs a warning when an Arina acquisition has no <stem>.h5 STEM metadata file.
    caplog.set_level(logging.ERROR, logger="rsciio")


def _random(shape, dtype, seed=0) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(0, int(info.max) + 1, shape, dtype=dtype)


# --- the real Arina recording -------------------------------------------------------------------------

def test_real_arina_master_matches_rosettasciio(real_arina):
    from rsciio.arina import file_reader

    data, md = read_arina_dask(real_arina / "test_00_master.h5")
    assert data.shape == (4, 4, 192, 192) and data.dtype == np.uint32
    array = data.compute()
    assert np.count_nonzero(array) == 0
    (peer,) = file_reader(real_arina / "test_00_master.h5")
    assert peer["data"].shape == (4, 4, 192, 192)  # rosettasciio: square scan, pixels converted to uint16
    np.testing.assert_array_equal(array, peer["data"])
    assert md["frames_per_file"] == [16] and md["image_nr_ranges"] == [[1, 16]]
    assert md["scan_shape"] == [4, 4] and md["scan_shape_source"] == "stem_metadata"
    assert md["scan_pixel_size_nm"] == pytest.approx(0.13915206)
    assert peer["axes"][0]["scale"] == pytest.approx(10 * md["scan_pixel_size_nm"])  # rsciio: Angstrom
    det = md["detector"]
    assert det["count_time_s"] == pytest.approx(9.95e-5)
    assert det["frame_time_s"] == pytest.approx(9.96e-5)
    assert det["x_pixel_size_m"] == pytest.approx(1e-4)
    assert det["detector_distance_m"] == 0.0
    assert det["bit_depth_image"] == 32
    assert det["saturation_value"] == 8352
    assert det["countrate_correction_applied"] == 1
    assert det["photon_energy_eV"] == 300000.0
    assert det["description"] == "Dectris ARINA CZT"
    assert det["detector_number"] == "A-01-0011"
    assert det["pixel_mask_shape"] == [192, 192] and md["pixel_mask_present"] is True
    assert md["hdf5_filters"][0]["id"] == 32008  # bitshuffle (LZ4)
    json.dumps(md)


def test_real_arina_data_file_reads_through_master(real_arina):
    data, md = read_arina_dask(real_arina / "test_00_data_000001.h5")
    assert md["opened_as"] == "data file via its master"
    assert Path(md["master"]).name == "test_00_master.h5"
    assert data.shape == (4, 4, 192, 192) and np.count_nonzero(data.compute()) == 0
    assert md["detector"]["detector_number"] == "A-01-0011"


def test_real_arina_flavour_and_mask(real_arina):
    assert hdf5_flavour(real_arina / "test_00_master.h5") == "arina"
    assert hdf5_flavour(real_arina / "test_00_data_000001.h5") == "arina"
    assert hdf5_flavour(real_arina / "test_00.h5") is None  # STEM metadata only
    mask = read_arina_pixel_mask(real_arina / "test_00_master.h5")
    assert mask.dtype == bool and mask.shape == (192, 192) and mask.all()  # the recording's mask is all zero


# --- Arina round trips --------------------------------------------------------------------------------

def test_arina_round_trip_several_files_chunk_spanning_files(tmp_path):
    data = _random((3, 5, 12, 10), np.uint32)
    master = write_arina(tmp_path / "scan", data, frames_per_file=4)
    assert master == tmp_path / "scan_master.h5"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "scan.h5", "scan_data_000001.h5", "scan_data_000002.h5", "scan_data_000003.h5", "scan_data_000004.h5",
        "scan_master.h5"]
    lazy, md = read_arina_dask(master, frames_per_chunk=3)
    assert lazy.shape == (3, 5, 12, 10) and lazy.dtype == np.uint32
    assert lazy.chunks[:2] == ((1, 1, 1), (3, 2))
    # Block (0, 1) holds frames 3 and 4: the last frame of data file 1 and the first of data file 2.
    np.testing.assert_array_equal(lazy.blocks[0, 1].compute(), data[0:1, 3:5])
    np.testing.assert_array_equal(lazy.compute(), data)
    assert md["frames_per_file"] == [4, 4, 4, 3]
    assert md["image_nr_ranges"] == [[1, 4], [5, 8], [9, 12], [13, 15]]
    assert [Path(f).name for f in md["data_files"]] == [f"scan_data_00000{i}.h5" for i in range(1, 5)]
    assert md["scan_shape"] == [3, 5] and md["scan_shape_source"] == "stem_metadata"
    assert md["dtype"] == "uint32" and md["detector"]["bit_depth_image"] == 32
    assert md["detector"]["compression"] == "bslz4" and md["hdf5_filters"][0]["id"] == 32008
    with h5py.File(tmp_path / "scan_data_000002.h5", "r") as f:
        dset = f["entry/data/data"]
        assert dset.chunks == (1, 12, 10) and dset.attrs["image_nr_low"] == 5
        np.testing.assert_array_equal(dset[0], data[0, 4])
    json.dumps(md)


def test_arina_uncompressed_uint16_3d_input(tmp_path):
    data = _random((12, 6, 8), np.uint16, seed=1)
    master = write_arina(tmp_path / "run_master.h5", data, frames_per_file=5, compression=None)
    assert master.name == "run_master.h5" and not (tmp_path / "run.h5").exists()
    lazy, md = read_arina_dask(master)
    assert lazy.shape == (1, 12, 6, 8) and md["scan_shape_source"] == "single_row"
    assert md["hdf5_filters"] == [] and md["dtype"] == "uint16"
    np.testing.assert_array_equal(lazy.compute()[0], data)
    lazy, md = read_arina_dask(master, scan_shape=(3, 4))
    assert md["scan_shape_source"] == "argument"
    np.testing.assert_array_equal(lazy.compute(), data.reshape(3, 4, 6, 8))


def test_arina_square_scan_without_stem_metadata(tmp_path):
    data = _random((4, 4, 6, 6), np.uint8, seed=2)
    master = write_arina(tmp_path / "sq", data, frames_per_file=7, write_stem_metadata=False)
    lazy, md = read_arina_dask(master)
    assert md["scan_shape"] == [4, 4] and md["scan_shape_source"] == "square" and md["stem_metadata"] is None
    np.testing.assert_array_equal(lazy.compute(), data)


def test_rosettasciio_reads_written_arina(tmp_path):
    from rsciio.arina import file_reader

    data16 = _random((4, 4, 16, 16), np.uint16, seed=3)
    master = write_arina(tmp_path / "a16", data16, frames_per_file=5, scan_pixel_size_nm=0.25)
    (peer,) = file_reader(master)
    assert peer["data"].dtype == np.uint16
    np.testing.assert_array_equal(peer["data"], data16)
    assert peer["axes"][0]["scale"] == pytest.approx(2.5)  # 0.25 nm as Angstrom
    lazy, md = read_arina_dask(master)
    np.testing.assert_array_equal(lazy.compute(), peer["data"])
    assert md["scan_pixel_size_nm"] == 0.25
    # uint32 beyond the uint16 range: rosettasciio keeps it when asked for uint32.
    data32 = _random((3, 3, 8, 8), np.uint32, seed=4)
    master = write_arina(tmp_path / "a32", data32, frames_per_file=2)
    assert int(data32.max()) > 2**16
    (peer,) = file_reader(master, dtype=np.uint32)
    np.testing.assert_array_equal(peer["data"], data32)
    np.testing.assert_array_equal(read_arina_dask(master)[0].compute(), peer["data"])


def test_arina_pixel_mask_true_where_usable(tmp_path):
    data = _random((2, 2, 5, 7), np.uint16, seed=5)
    flags = np.zeros((5, 7), np.uint32)
    flags[1, 2], flags[4, 6] = 1, 16  # gap, noisy
    master = write_arina(tmp_path / "m", data, pixel_mask=flags, frames_per_file=3)
    mask = read_arina_pixel_mask(master)
    assert mask.dtype == bool and mask.sum() == 33 and not mask[1, 2] and not mask[4, 6] and mask[0, 0]
    np.testing.assert_array_equal(read_arina_pixel_mask(tmp_path / "m_data_000002.h5"), mask)
    md = read_arina_dask(master)[1]
    assert md["detector"]["number_of_excluded_pixels"] == 2 and md["pixel_mask_present"] is True


def test_arina_data_file_without_master_reads_its_own_frames(tmp_path):
    data = _random((10, 4, 4), np.uint16, seed=6)
    write_arina(tmp_path / "x", data, frames_per_file=6)
    (tmp_path / "x_master.h5").unlink()
    lazy, md = read_arina_dask(tmp_path / "x_data_000002.h5")
    assert md["opened_as"] == "data file without master" and md["master"] is None and md["detector"] == {}
    assert md["scan_shape"] == [2, 2] and md["image_nr_ranges"] == [[7, 10]]
    np.testing.assert_array_equal(lazy.compute().reshape(4, 4, 4), data[6:])
    assert read_arina_pixel_mask(tmp_path / "x_data_000002.h5") is None


def test_arina_missing_data_file_is_named(tmp_path):
    write_arina(tmp_path / "s", _random((9, 4, 4), np.uint16), frames_per_file=3)
    (tmp_path / "s_data_000002.h5").unlink()
    with pytest.raises(SendmapInputError, match=r"s_data_000002\.h5: data file missing.*data_000002"):
        read_arina_dask(tmp_path / "s_master.h5")


def test_arina_data_file_removed_after_opening_is_named_at_compute(tmp_path):
    master = write_arina(tmp_path / "s", _random((9, 4, 4), np.uint16), frames_per_file=3)
    lazy, _ = read_arina_dask(master, frames_per_chunk=3)
    (tmp_path / "s_data_000003.h5").unlink()
    np.testing.assert_array_equal(lazy[0, :3].compute().shape, (3, 4, 4))  # data file 1 is still there
    with pytest.raises(SendmapInputError, match=r"s_data_000003\.h5: no such file"):
        lazy.compute()


def test_arina_wrong_scan_shape(tmp_path):
    master = write_arina(tmp_path / "w", _random((15, 4, 4), np.uint16), frames_per_file=4)
    with pytest.raises(SendmapInputError, match=r"w_master\.h5: scan_shape 4 x 4 = 16 .* 15 frames"):
        read_arina_dask(master, scan_shape=(4, 4))
    with pytest.raises(SendmapInputError, match="two integers"):
        read_arina_dask(master, scan_shape=(15,))


def test_arina_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8, uint16 or uint32"):
        write_arina(tmp_path / "f", np.ones((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="compression"):
        write_arina(tmp_path / "f", np.ones((2, 4, 4), np.uint16), compression="zstd")
    assert list(tmp_path.iterdir()) == []  # nothing left behind, not even temporary files


# --- py4DSTEM / EMD -----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_py4dstem_round_trip(tmp_path, layout):
    data = _random((3, 4, 9, 7), np.uint16, seed=7)
    path = write_py4dstem(tmp_path / f"{layout}.h5", data, layout=layout, q_pixel_size=0.0125,
                          r_pixel_size_nm=2.5)
    assert hdf5_flavour(path) == "py4dstem"
    lazy, md = read_py4dstem_dask(path, frames_per_chunk=3)
    assert lazy.shape == (3, 4, 9, 7) and lazy.dtype == np.uint16
    assert lazy.chunks[:2] == ((1, 1, 1), (3, 1))
    np.testing.assert_array_equal(lazy.compute(), data)
    assert md["layout"] == layout and md["shape_on_disk"] == [3, 4, 9, 7]
    assert md["hdf5_chunks"] is None and md["compression"] is None
    assert md["r_pixel_size"] == pytest.approx(2.5) and md["r_pixel_units"] == "nm"
    if layout == "emdfile":
        assert md["dataset"] == "/datacube_root/datacube/data" and md["emd_version"] == "1.0"
        assert md["calibration_source"] == "calibration metadata"
        assert (md["q_pixel_size"], md["q_pixel_units"]) == (0.0125, "A^-1")
        assert [d["name"] for d in md["dims"]] == ["Rx", "Ry", "Qx", "Qy"]
    else:
        assert md["calibration_source"] == "dims"
        assert md["q_pixel_size"] == pytest.approx(0.125) and md["q_pixel_units"] == "nm^-1"
        assert [d["dim"] for d in md["dims"]] == ["dim1", "dim2", "dim3", "dim4"]
        assert md["dims"][3]["length"] == 7
    if layout == "py4dstem012":
        assert md["dataset"] == "/4DSTEM_experiment/data/datacubes/datacube/data"
        assert md["py4dstem_version"] == "0.12.0"
    json.dumps(md)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rosettasciio_emd_reads_written_py4dstem(tmp_path, layout):
    from rsciio.emd import file_reader

    data = _random((2, 3, 5, 4), np.uint16, seed=8)
    path = write_py4dstem(tmp_path / "c.h5", data, layout=layout, q_pixel_size=0.02, r_pixel_size_nm=1.5)
    (peer,) = file_reader(str(path))
    ours = read_py4dstem_dask(path)[0].compute()
    if layout == "emdfile":  # 0-based dims: rosettasciio keeps the array as stored
        np.testing.assert_array_equal(peer["data"], ours)
        assert [a["name"] for a in peer["axes"]] == ["Rx", "Ry", "Qx", "Qy"]
        assert peer["axes"][2]["scale"] == pytest.approx(0.02)
    else:  # 1-based EMD dims: rosettasciio reverses the axes of `data` (HyperSpy order)
        np.testing.assert_array_equal(peer["data"], ours.transpose(3, 2, 1, 0))
        assert peer["axes"][3]["scale"] == pytest.approx(1.5) and peer["axes"][0]["scale"] == pytest.approx(0.2)


@pytest.mark.parametrize("compression", ["gzip", "bslz4"])
def test_py4dstem_compressed_chunked_float(tmp_path, compression):
    data = np.random.default_rng(9).normal(size=(2, 5, 6, 6)).astype(np.float32)
    path = write_py4dstem(tmp_path / "z.h5", data, compression=compression)
    lazy, md = read_py4dstem_dask(path)
    np.testing.assert_array_equal(lazy.compute(), data)
    assert md["hdf5_chunks"] == [1, 5, 6, 6] and md["dtype"] == "float32"
    if compression == "gzip":
        assert md["compression"] == "gzip" and md["compression_opts"] == 4
    else:
        assert [f["id"] for f in md["hdf5_filters"]] == [32008]
    assert (md["q_pixel_size"], md["q_pixel_units"], md["r_pixel_units"]) == (1, "pixels", "pixels")


def test_py4dstem_big_endian_comes_back_native(tmp_path):
    data = _random((2, 2, 3, 3), np.uint16, seed=10).astype(">u2")
    path = write_py4dstem(tmp_path / "be.h5", data, layout="emd1")
    lazy, md = read_py4dstem_dask(path)
    assert lazy.dtype == np.dtype("=u2") and md["dtype"] == "uint16"
    out = lazy.compute()
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, data)


def test_py4dstem_largest_candidate_and_explicit_dataset(tmp_path):
    big = _random((3, 3, 4, 4), np.uint16, seed=11)
    small = _random((2, 2, 4, 4), np.uint16, seed=12)
    path = write_py4dstem(tmp_path / "two.h5", big)
    with h5py.File(path, "a") as f:
        group = f["datacube_root"].create_group("cropped")
        group.attrs["emd_group_type"] = "array"
        group.create_dataset("data", data=small)
        f.create_dataset("plain2d", data=np.zeros((4, 4)))
    lazy, md = read_py4dstem_dask(path)
    np.testing.assert_array_equal(lazy.compute(), big)
    assert md["other_candidates"] == [{"dataset": "/datacube_root/cropped/data", "shape": [2, 2, 4, 4]}]
    lazy, md = read_py4dstem_dask(path, dataset="datacube_root/cropped/data")
    np.testing.assert_array_equal(lazy.compute(), small)
    assert md["dataset"] == "/datacube_root/cropped/data" and md["dims"] == []
    assert md["calibration_source"] == "calibration metadata"  # the root's calibration covers it
    with pytest.raises(SendmapInputError, match=r"two\.h5: .*plain2d has shape \(4, 4\)"):
        read_py4dstem_dask(path, dataset="plain2d")
    with pytest.raises(SendmapInputError, match=r"two\.h5: expected a 4D dataset at HDF5 path /datacube_root, found a group"):
        read_py4dstem_dask(path, dataset="/datacube_root")


def test_py4dstem_wrong_scan_shape(tmp_path):
    path = write_py4dstem(tmp_path / "s.h5", np.zeros((3, 4, 2, 2), np.uint8))
    assert read_py4dstem_dask(path, scan_shape=(3, 4))[0].shape == (3, 4, 2, 2)
    with pytest.raises(SendmapInputError, match=r"s\.h5: scan_shape \(4, 3\) does not match the scan axes \(3, 4\)"):
        read_py4dstem_dask(path, scan_shape=(4, 3))
    with pytest.raises(SendmapInputError, match="does not match the 12 frames"):
        read_py4dstem_dask(path, scan_shape=(5, 5))


def test_hdf5_without_4d_dataset_says_what_it_found(tmp_path):
    path = tmp_path / "no4d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=np.zeros((10, 12), np.float32))
        f.create_group("g").create_dataset("stack", data=np.zeros((3, 4, 5), np.uint16))
    assert hdf5_flavour(path) is None
    with pytest.raises(SendmapInputError, match=r"no4d\.h5: no 4D 'data' dataset .*2 dataset\(s\): "
                                                r"/g/stack \(3, 4, 5\) uint16; /image \(10, 12\) float32"):
        read_py4dstem_dask(path)
    with pytest.raises(SendmapInputError, match=r"no4d\.h5: not a DECTRIS master or data file"):
        read_arina_dask(path)
    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()
    with pytest.raises(SendmapInputError, match="no datasets at all"):
        read_py4dstem_dask(empty)


def test_flavour_of_other_files(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not HDF5")
    assert hdf5_flavour(text) is None
    with pytest.raises(SendmapInputError, match=r"notes\.h5: not a readable HDF5 file"):
        read_py4dstem_dask(text)
    with pytest.raises(SendmapInputError, match=r"absent\.h5: no such file"):
        hdf5_flavour(tmp_path / "absent.h5")
    with pytest.raises(SendmapInputError, match=r"absent\.h5: no such file"):
        read_arina_dask(tmp_path / "absent.h5")


def test_py4dstem_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        write_py4dstem(tmp_path / "x.h5", np.zeros((1, 1, 2, 2)), layout="emd2")
    with pytest.raises(ValueError, match="4D"):
        write_py4dstem(tmp_path / "x.h5", np.zeros((4, 2, 2)))
    assert list(tmp_path.iterdir()) == []


# --- graphs pickle and run in other processes -------------------------------------------------------

def test_graphs_pickle_and_compute_in_processes(tmp_path):
    cube = _random((2, 3, 4, 5), np.uint32, seed=13)
    master = write_arina(tmp_path / "p", cube, frames_per_file=4)
    emd = write_py4dstem(tmp_path / "p.h5_emd", cube, layout="emd1")
    arina_lazy = read_arina_dask(master, frames_per_chunk=2)[0]
    emd_lazy = read_py4dstem_dask(emd, frames_per_chunk=2)[0]
    for lazy in (arina_lazy, emd_lazy):
        assert lazy.npartitions > 2
        restored = pickle.loads(pickle.dumps(lazy))
        np.testing.assert_array_equal(restored.compute(scheduler="processes", num_workers=2), cube)
