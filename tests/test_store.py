"""The result store's direct chunk reader against zarr's own reads."""
import numpy as np
import zarr

from sendmap.engine.store import compressor, read_region_direct


def _array(tmp_path, chunks, shape=(7, 9, 6, 5), fill=0):
    rng = np.random.default_rng(0)
    data = rng.poisson(0.5, shape).astype(np.uint16)
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=shape, chunks=chunks, dtype="uint16",
                            compressors=compressor(), fill_value=fill)
    arr[...] = data
    return arr, data


def test_direct_read_equals_zarr_for_aligned_partial_and_edge_regions(tmp_path):
    arr, data = _array(tmp_path, (2, 4, 6, 5))
    for region in [(0, 7, 0, 9), (2, 4, 0, 9), (1, 6, 3, 8), (6, 7, 8, 9)]:
        y0, y1, x0, x1 = region
        got = read_region_direct(arr, region)
        np.testing.assert_array_equal(got, data[y0:y1, x0:x1], err_msg=str(region))
        np.testing.assert_array_equal(got, arr[y0:y1, x0:x1])


def test_missing_chunks_read_as_fill_value(tmp_path):
    arr = zarr.create_array(str(tmp_path / "b.zarr"), shape=(4, 4, 3, 3), chunks=(2, 4, 3, 3), dtype="uint16",
                            compressors=compressor(), fill_value=7)
    arr[0:2] = 1
    got = read_region_direct(arr, (0, 4, 0, 4))
    assert (got[:2] == 1).all() and (got[2:] == 7).all()


def test_other_layouts_fall_back_to_zarr(tmp_path):
    arr = zarr.create_array(str(tmp_path / "c.zarr"), shape=(4, 4, 3, 3), chunks=(2, 4, 3, 3), dtype="uint16",
                            compressors=None)
    assert read_region_direct(arr, (0, 4, 0, 4)) is None  # not blosc: the caller reads through zarr
    arr2 = zarr.create_array(str(tmp_path / "d.zarr"), shape=(4, 4, 3, 3), chunks=(2, 4, 2, 3), dtype="uint16",
                             compressors=compressor())
    assert read_region_direct(arr2, (0, 4, 0, 4)) is None  # frames split over chunks


def test_direct_write_with_dot_separator_reads_back_through_zarr(tmp_path):
    from sendmap.engine.store import write_region_direct

    arr = zarr.create_array(str(tmp_path / "e.zarr"), shape=(5, 4, 3), chunks=(2, 4, 3), dtype="float32",
                            compressors=compressor(), fill_value=float("nan"),
                            chunk_key_encoding={"name": "default", "separator": "."})
    data = np.arange(60, dtype=np.float32).reshape(5, 4, 3)
    for y0 in (0, 2, 4):
        write_region_direct(tmp_path / "e.zarr", (2, 4, 3), (y0, 0, 0), data[y0:y0 + 2], separator=".")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "e.zarr"), mode="r")[...], data)


def test_write_region_direct_uncompressed_reads_back_with_zarr(tmp_path):
    """Chunks written raw (compress=False) into an array without compressors: zarr reads the same values."""
    import zarr

    from sendmap.engine.store import write_region_direct

    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    data = np.random.default_rng(3).normal(size=(5, 7, 11)).astype(np.float32)
    g.create_array("a", shape=data.shape, dtype="float32", chunks=(2, 7, 11), compressors=None,
                   fill_value=float("nan"), chunk_key_encoding={"name": "default", "separator": "."})
    write_region_direct(tmp_path / "s.zarr" / "a", (2, 7, 11), (0, 0, 0), data, separator=".", compress=False)
    np.testing.assert_array_equal(np.asarray(zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["a"]), data)


def test_write_array_single_chunk_is_zarrs_own_file(tmp_path):
    """write_array's direct write of a one-chunk array (the classify and statistics stages' maps) leaves the same
    files, byte for byte, as zarr's own write of the same array, for every dtype the stages store, with NaN, -0.0,
    all-fill arrays (no chunk file, as zarr) and an array replaced by one of another shape; zarr reads it back."""
    from pathlib import Path

    from sendmap.engine.store import write_array

    rng = np.random.default_rng(5)
    values = {"f64": rng.normal(size=(13, 17)), "f32": rng.normal(size=(13, 17, 4)).astype(np.float32),
              "i8": rng.integers(-1, 6, (13, 17)).astype(np.int8), "bool": rng.random((13, 17)) > 0.5,
              "i64": rng.integers(0, 1 << 40, 29), "zeros": np.zeros((5, 6)), "false": np.zeros((5, 6), bool),
              "negzero": np.full((3, 4), -0.0), "nan": np.where(rng.random((9, 8)) > 0.7, np.nan, 1.5)}
    ours = zarr.open_group(str(tmp_path / "ours.zarr"), mode="w")
    theirs = zarr.open_group(str(tmp_path / "theirs.zarr"), mode="w")
    for name, v in values.items():
        write_array(ours, f"g/{name}", np.ones((2, 2)), {"old": 1})  # replaced below (another shape and dtype)
        write_array(ours, f"g/{name}", v, {"units": "sigma", "n": 3})
        arr = theirs.create_array(f"g/{name}", shape=v.shape, dtype=v.dtype, chunks=v.shape,
                                  compressors=compressor(), overwrite=True, fill_value=False if v.dtype == bool else 0,
                                  attributes={"units": "sigma", "n": 3})
        arr[...] = v
    files = {p.relative_to(tmp_path / "ours.zarr") for p in Path(tmp_path / "ours.zarr").rglob("*") if p.is_file()}
    other = {p.relative_to(tmp_path / "theirs.zarr") for p in Path(tmp_path / "theirs.zarr").rglob("*") if p.is_file()}
    assert files == other
    assert not any("zeros/c" in str(f) or "false/c" in str(f) for f in files)  # all fill: no chunk, as zarr
    assert any("negzero/c" in str(f) for f in files)  # -0.0 is not the fill value 0.0 bit for bit
    for f in files:
        assert (tmp_path / "ours.zarr" / f).read_bytes() == (tmp_path / "theirs.zarr" / f).read_bytes(), f
    back = zarr.open_group(str(tmp_path / "ours.zarr"), mode="r")
    for name, v in values.items():
        got = np.asarray(back[f"g/{name}"])
        assert got.dtype == v.dtype and np.array_equal(got, v, equal_nan=v.dtype.kind == "f"), name


def test_write_array_replaces_a_one_chunk_array_as_zarr_does(tmp_path, monkeypatch):
    """An array write_array wrote before, replaced by one of the same shape and dtype (a re-run's classify and
    statistics maps), is rewritten without zarr (its metadata and chunk file directly), and leaves the same files,
    byte for byte, as zarr's own creation of the new array, before and after annotate_arrays labels the store;
    all-fill values leave no chunk, -0.0 and NaN do; zarr reads every array back."""
    from pathlib import Path

    from sendmap.engine import store as S

    rng = np.random.default_rng(7)
    values = {"f64": rng.normal(size=(13, 17)), "f32": rng.normal(size=(13, 17, 4)).astype(np.float32),
              "i8": rng.integers(-1, 6, (13, 17)).astype(np.int8), "bool": rng.random((13, 17)) > 0.5,
              "i64": rng.integers(0, 1 << 40, 29), "u16": rng.integers(0, 9, (13, 17)).astype(np.uint16),
              "zeros": np.zeros((13, 17)), "false": np.zeros((13, 17), bool), "negzero": np.full((13, 17), -0.0),
              "nan": np.where(rng.random((13, 17)) > 0.7, np.nan, 1.5)}
    replaced = []
    real = S._replace_one_chunk_array
    def spy(g, n, v, a):
        done = real(g, n, v, a)
        replaced.append((n, done))
        return done

    monkeypatch.setattr(S, "_replace_one_chunk_array", spy)

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}

    for annotate in (False, True):
        ours, theirs = tmp_path / f"ours{annotate}.zarr", tmp_path / f"theirs{annotate}.zarr"
        g, h = zarr.open_group(str(ours), mode="w"), zarr.open_group(str(theirs), mode="w")
        for name, v in values.items():  # the first run's arrays: same layout, other values and attributes
            S.write_array(g, f"maps/{name}", np.ones_like(v) if v.dtype != bool else ~v, {"old": 1, "gone": [1, 2]})
        if annotate:
            S.annotate_arrays(ours, (13, 17))
        replaced.clear()
        for name, v in values.items():
            S.write_array(g, f"maps/{name}", v, {"units": "sigma", "n": 3, "bad": float("nan")})
            S.write_array(h, f"maps/{name}", v, {"units": "sigma", "n": 3, "bad": float("nan")})  # (new: zarr's)
        assert replaced == [(f"maps/{n}", done) for n in values for done in (True, False)]  # ours in place
        if annotate:
            S.annotate_arrays(ours, (13, 17))
            S.annotate_arrays(theirs, (13, 17))
        a, b = files(ours), files(theirs)
        assert a == b
        assert "maps/zeros/c/0/0" not in a and "maps/false/c/0/0" not in a and "maps/negzero/c/0/0" in a
        back = zarr.open_group(str(ours), mode="r")
        for name, v in values.items():
            got = np.asarray(back[f"maps/{name}"])
            assert got.dtype == v.dtype and np.array_equal(got, v, equal_nan=v.dtype.kind == "f"), name
    g = zarr.open_group(str(tmp_path / "ours.zarr"), mode="w")
    S.write_array(g, "x", np.ones((3, 4)))
    replaced.clear()
    S.write_array(g, "x", np.ones((3, 5)))  # another shape (and below dtype): zarr replaces it
    S.write_array(g, "x", np.ones((3, 5), np.float32))
    assert replaced == [("x", False), ("x", False)]
    assert np.asarray(zarr.open_group(str(tmp_path / "ours.zarr"))["x"]).dtype == np.float32
