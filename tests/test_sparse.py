"""Sparse frames (the non-zero pixels of counted data): conversion, the kernels that read them, and the sparse
layout of the result store against the dense one."""
import numpy as np
import pytest
import zarr

from _stores import store_arrays
from sendmap.cli import main
from sendmap.errors import SendmapInputError
from sendmap.engine.data import SPARSE_GROUP, read_frames
from sendmap.stages.ingest import choose_sparse
from sendmap.science.centre import disk_centres
from sendmap.science.polar import PolarGeometry
from sendmap.science.polar_tables import PolarTables, profile_block
from sendmap.science.sparse import SPARSE_MAX_FILL, SparseFrames, from_counts, index_dtype, to_sparse


def _counted(rng, shape, rate=0.08, disk=(30.0, 34.0), disk_counts=40.0, dtype=np.uint16):
    """Poisson frames: a sparse background and a bright central disk."""
    nb, ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    lam = np.full((ny, nx), rate) + disk_counts * (np.hypot(yy - disk[0], xx - disk[1]) < 6)
    return rng.poisson(lam, shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32])
def test_to_sparse_round_trip_and_layout(dtype):
    rng = np.random.default_rng(0)
    f = _counted(rng, (5, 40, 48), dtype=dtype)
    f[2] = 0  # an empty frame
    sp = to_sparse(f)
    assert sp.shape == f.shape and sp.value.dtype == f.dtype and sp.index.dtype == np.uint16
    assert np.array_equal(np.diff(sp.offsets), np.count_nonzero(f.reshape(5, -1), axis=1))
    assert sp.offsets[3] == sp.offsets[2]
    assert (sp.value != 0).all()
    for k in range(5):  # ascending flat indices iy * Qx + ix, with their counts
        idx = sp.index[sp.offsets[k]:sp.offsets[k + 1]].astype(np.int64)
        assert np.all(np.diff(idx) > 0)
        assert np.array_equal(sp.value[sp.offsets[k]:sp.offsets[k + 1]], f[k].ravel()[idx])
    assert np.array_equal(sp.dense(), f)
    assert sp.fill == pytest.approx(np.count_nonzero(f) / f.size)
    again = from_counts(np.diff(sp.offsets), sp.index, sp.value, f.shape[1:])
    assert np.array_equal(again.dense(), f)
    with pytest.raises(ValueError, match="indices"):
        from_counts(np.diff(sp.offsets), sp.index[:-1], sp.value, f.shape[1:])


def test_index_dtype_widens_past_256_squared():
    assert index_dtype((256, 256)) == np.uint16 and index_dtype((257, 256)) == np.uint32
    f = np.zeros((1, 300, 300), np.uint16)
    f[0, 299, 299] = 3
    sp = to_sparse(f)
    assert sp.index.dtype == np.uint32 and sp.index.tolist() == [300 * 300 - 1]


@pytest.mark.parametrize("ss,bin_px", [(3, 1.0), (2, 0.4)])
def test_profile_block_sparse_equals_dense_bit_for_bit(ss, bin_px):
    """Both table layouts (4-byte records where a pixel reaches ≤ 2 bins, general records else), a mask, centres
    near the edge (offsets outside the table box) and an empty frame: every output identical."""
    rng = np.random.default_rng(1)
    g = PolarGeometry(q_pixel_size=0.01, bin_width=0.01 * bin_px, nq=int(55 / bin_px), n_phi=36, supersample=ss)
    t = PolarTables(g)
    f = _counted(rng, (24, 64, 72))
    f[5] = 0
    centres = np.array([30.0, 34.0]) + rng.normal(0, 1.5, (24, 2))
    centres[3] = (2.3, 70.6)
    mask = rng.random((64, 72)) > 0.03
    dense = profile_block(f, centres, mask, t, 0.05, (0.1, 0.4), keep_sums=True)
    sparse = profile_block(to_sparse(f), centres, mask, t, 0.05, (0.1, 0.4), keep_sums=True)
    assert t.compact == (ss == 3)
    assert set(dense) == set(sparse)
    for k in dense:
        assert np.array_equal(dense[k], sparse[k], equal_nan=True), k


def test_disk_centres_sparse_equals_dense():
    rng = np.random.default_rng(2)
    f = _counted(rng, (30, 64, 72), disk=(30.3, 33.7))
    mask = np.ones((64, 72), bool)
    mask[30, 36] = False  # a masked pixel inside the window
    a = disk_centres(f, np.array([32.0, 32.0]), mask, 9.0)
    b = disk_centres(to_sparse(f), np.array([32.0, 32.0]), mask, 9.0)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-9)
    assert np.abs(a - (30.3, 33.7)).max() < 0.3  # and they find the disk


def test_choose_sparse():
    sparse_block = np.zeros((2, 10, 10), np.uint16)
    sparse_block[:, :2] = 1  # 20 % non-zero
    dense_block = np.ones((2, 10, 10), np.uint16)
    assert choose_sparse("auto", np.uint16, sparse_block) and SPARSE_MAX_FILL >= 0.2
    assert not choose_sparse("auto", np.uint16, dense_block)
    assert not choose_sparse("auto", np.float32, sparse_block.astype(np.float32))
    assert choose_sparse("sparse", np.uint16, dense_block) and not choose_sparse("dense", np.uint16, sparse_block)
    with pytest.raises(SendmapInputError, match="store_layout: sparse needs integer"):
        choose_sparse("sparse", np.float32, dense_block)


@pytest.fixture(scope="module")
def two_layouts(tmp_path_factory):
    """One synthetic scan run with the sparse and with the dense store layout (small blocks: several rows)."""
    d = tmp_path_factory.mktemp("layouts")
    assert main(["synth", str(d), "--scan-shape", "10", "14", "--seed", "3", "--quiet"]) == 0
    small = ["--set", "compute.chunk_mb=0.1", "--set", "compute.block_mb=0.5", "--set", "output.figures=false"]
    for layout in ("sparse", "dense"):
        assert main(["run", str(d / "config.yaml"), "--no-progress", "--set", f"output.dir={layout}",
                     "--set", f"input.store_layout={layout}", *small]) == 0
    return d


def test_sparse_and_dense_stores_give_the_same_results(two_layouts):
    d = two_layouts
    s, x = store_arrays(d / "sparse" / "sendmap.zarr"), store_arrays(d / "dense" / "sendmap.zarr")
    assert {k for k in s if k.startswith(SPARSE_GROUP)} == {f"{SPARSE_GROUP}/{k}" for k in ("index", "value", "nnz")}
    assert "data" in x and "data" not in s
    common = [k for k in x if k != "data"]
    assert set(common) == {k for k in s if not k.startswith(SPARSE_GROUP)} and len(common) > 30
    for k in common:
        if k in ("calibration/origin_measured", "calibration/origin"):  # sums over the non-zero pixels only
            np.testing.assert_allclose(s[k], x[k], rtol=0, atol=1e-9, err_msg=k)
        else:
            assert s[k].dtype == x[k].dtype and np.array_equal(s[k], x[k], equal_nan=True), k
    gs = zarr.open_group(str(d / "sparse" / "sendmap.zarr"), mode="r")
    assert gs.attrs["ingest"]["layout"] == "sparse" and len(gs[SPARSE_GROUP].attrs["blocks"]) > 2
    assert np.array_equal(s[f"{SPARSE_GROUP}/nnz"].sum(), np.count_nonzero(x["data"]))
    # the stored frames read back dense are the input's, whichever the layout
    full = read_frames(d / "sparse" / "sendmap.zarr")
    assert np.array_equal(full, x["data"])
    assert np.array_equal(read_frames(d / "sparse" / "sendmap.zarr", (3, 7, 2, 11)), x["data"][3:7, 2:11])
    assert np.array_equal(read_frames(d / "dense" / "sendmap.zarr", (3, 7, 2, 11)), x["data"][3:7, 2:11])
    # a copied store reads its own data (data_ref names the folder it was written in)
    import shutil

    shutil.copytree(d / "sparse", d / "sparse_copy")
    shutil.rmtree(d / "sparse")
    try:
        assert np.array_equal(read_frames(d / "sparse_copy" / "sendmap.zarr"), x["data"])
    finally:
        shutil.copytree(d / "sparse_copy", d / "sparse")


def test_sparse_store_is_read_through_zarr_too(two_layouts):
    """The sparse rows are ordinary zarr v3 arrays: zarr reads what the direct reader reads."""
    g = zarr.open_group(str(two_layouts / "sparse" / "sendmap.zarr"), mode="r")
    sg = g[SPARSE_GROUP]
    nnz = np.asarray(sg["nnz"])
    y0, y1, x0, x1 = sg.attrs["blocks"][1]
    counts = nnz[y0:y1, x0:x1].ravel()
    n = int(counts.sum())
    sp = from_counts(counts, sg["index"][1, :n], sg["value"][1, :n], sg.attrs["frame_shape"])
    assert isinstance(sp, SparseFrames)
    assert np.array_equal(sp.dense().reshape(y1 - y0, x1 - x0, *sp.frame_shape),
                          read_frames(two_layouts / "dense" / "sendmap.zarr", (y0, y1, x0, x1)))
    assert np.all(np.asarray(sg["index"][1, n:]) == 0)  # past the row's pixels: the fill value


def test_consecutive_sparse_rows_read_into_one_buffer(two_layouts):
    """A region of several consecutive ingest blocks (whole scan rows) reads as one block of frames: the same
    frames as the dense store's, each row decoded after the one before into one buffer."""
    from sendmap.engine.data import open_stored

    stored = open_stored(str(two_layouts / "sparse" / "sendmap.zarr"))
    ry, rx = stored.shape[:2]
    assert stored.sparse and all(b[2] == 0 and b[3] == rx for b in stored.blocks) and len(stored.blocks) > 3
    dense = read_frames(two_layouts / "dense" / "sendmap.zarr")
    for group in (2, 3):
        tasks = stored.block_groups(stored.block_regions(0.5), group)
        assert [b for _, bs in tasks for b in bs] == [tuple(b) for b in stored.blocks]
        assert all(len(bs) == group for _, bs in tasks[:-1]) and len(tasks) == -(-len(stored.blocks) // group)
        for (y0, y1, x0, x1), bs in tasks:
            assert (y0, y1, x0, x1) == (bs[0][0], bs[-1][1], 0, rx) and stored.rows_of((y0, y1, x0, x1)) == \
                [stored.blocks.index(b) for b in bs]
            frames = stored.read((y0, y1, x0, x1))
            assert frames.index.size == frames.offsets[-1]
            assert np.array_equal(frames.dense(), dense[y0:y1].reshape(-1, *dense.shape[2:]))
    with pytest.raises(KeyError):  # not made of whole ingest blocks
        stored.rows_of((0, stored.blocks[0][1], 0, rx - 1))


def test_profile_tasks_of_several_blocks_give_the_same_store(two_layouts, tmp_path, monkeypatch):
    """The profile stage with several ingest blocks per task writes every array it wrote one block per task,
    bit for bit, with chunks written from whole tasks (a divisor of the blocks per chunk)."""
    import shutil

    import sendmap.stages.profiles as stage
    from sendmap.config import load_config
    from sendmap.engine.context import Context

    made, read, task_mb = {}, stage.read_store_block, stage.PROFILE_TASK_BLOCK_MB
    monkeypatch.setenv("SENDMAP_RESUME_INTERVAL_S", "0")  # (a resume record at every chunk written)

    def run(name, mb, resume=False, fail_at=None):
        cfg = load_config(two_layouts / "config.yaml", [f"output.dir={tmp_path / name}", "compute.chunk_mb=0.16",
                                                        "compute.block_mb=0.5", "compute.progress=false"])
        monkeypatch.setattr(stage, "PROFILE_TASK_BLOCK_MB", mb)
        g = zarr.open_group(str(tmp_path / name / "sendmap.zarr"), mode="r+")
        ctx = Context(cfg, tmp_path / name, g, None, {}, lambda s: None)
        ctx.stage_key, ctx.resume, ctx.stage = "test", resume, "profiles"
        seen = []

        def read_counted(item):
            if len(seen) == fail_at:
                raise OSError("killed")
            seen.append(item[1])
            return read(item)

        monkeypatch.setattr(stage, "read_store_block", read_counted)
        stage.stage_profiles(ctx)
        made[name] = (store_arrays(tmp_path / name / "sendmap.zarr"), seen, g["profiles/mean"].chunks)
        return ctx.stage_info

    for name in ("one", "several", "resumed"):
        shutil.copytree(two_layouts / "sparse", tmp_path / name)
    run("one", 0.0)
    run("several", task_mb)
    (one, blocks, chunks), (several, tasks, chunks2) = made["one"], made["several"]
    assert chunks == chunks2 and chunks[0] > 2  # several blocks of one row per chunk
    assert len(blocks) > len(tasks) > 1 and chunks[0] % (tasks[0][1] - tasks[0][0]) == 0
    # a run that dies at its 4th task resumes after the first chunk's tasks, the record counting stored blocks
    with pytest.raises(OSError, match="killed"):
        run("resumed", task_mb, resume=True, fail_at=3)
    info = run("resumed", task_mb, resume=True)
    assert info["blocks_resumed"] == chunks[0] and made["resumed"][1] == tasks[chunks[0] // (tasks[0][1] - tasks[0][0]):]
    for other in (several, made["resumed"][0]):
        assert set(one) == set(other)
        for k in one:
            assert one[k].dtype == other[k].dtype and np.array_equal(one[k], other[k], equal_nan=True), k
