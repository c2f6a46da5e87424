"""The result store ``<output.dir>/sendmap.zarr`` (zarr v3 group), see CONTRACT.md.

Layout (every array documented in README "Result store"): ``data`` (Ry, Rx, Qy, Qx) raw counts;
``ingest/*`` whole-dataset reductions; ``calibration/*``; ``profiles/*``; ``features/*``; ``peaks/*``;
``maps/*``. Root attrs: ``sendmap_version``, ``config``, ``input``, ``calibration``, ``dose``,
``created``, ``status`` (``running`` | ``complete`` | ``failed``) and ``stages``: per stage its cache
key, the config sections it used, when it finished and how long it took. A stage counts as done only
once its entry is written, which happens after all its arrays are; a killed run leaves a stage
without an entry, which the next run recomputes.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import threading
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from .. import STORE_NAME  # noqa: F401 - (re-exported: sendmap.engine.store.STORE_NAME)


BLOSC_BLOCK_BYTES = 1 << 20
"""Blosc block size: 1 MiB blocks compress sparse counts better than blosc's default and encode 1.5-2×
faster (measured with numcodecs 0.16)."""
BLOSC_CNAME = "lz4"
"""Blosc's inner codec, with byte shuffle (:data:`BLOSC_SHUFFLE`). Every pipeline stage that reads the data
decodes it again, so decoding speed wins over size. On 2 × 10⁴-electron 256² uint16 frames (one core,
numcodecs 0.16, µs per frame encode / decode, ratio): lz4 + byte shuffle 77 / 38, 11.6×; lz4 + bit shuffle
88 / 55, 17×; zstd level 1 + bit shuffle 132 / 65, 31× (``python benchmarks/codecs.py STORE``)."""
BLOSC_SHUFFLE = "shuffle"
"""Byte shuffle: 1.4× faster to decode than bit shuffle, for 1.5× the bytes on disk."""


def compressor() -> BloscCodec:
    """Lossless compression for counts and profiles: blosc lz4 level 1 with byte shuffle, 1 MiB blocks (sparse
    integer counts compress ~10×)."""
    return BloscCodec(cname=BLOSC_CNAME, clevel=1, shuffle=BLOSC_SHUFFLE, blocksize=BLOSC_BLOCK_BYTES)


def _numcodecs_blosc():
    """numcodecs' Blosc with exactly :func:`compressor`'s settings (what zarr's BloscCodec runs)."""
    from numcodecs import Blosc

    shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}[BLOSC_SHUFFLE]
    return Blosc(cname=BLOSC_CNAME, clevel=1, shuffle=shuffle, blocksize=BLOSC_BLOCK_BYTES)


def write_region_direct(array_dir: Path, chunk_shape: tuple, region_start: tuple, data: np.ndarray,
                        separator: str = "/", compress: bool = True) -> None:
    """Write ``data`` (whole chunks, aligned at ``region_start``) into a local zarr v3 array created with
    :func:`compressor`, encoding each chunk with numcodecs' Blosc and writing its file directly.

    The bytes are exactly what zarr writes for that array (``bytes`` codec little-endian, then blosc with
    the same settings; edge chunks padded with the fill value 0), and zarr reads them back (tested).
    Going around zarr skips its check of every chunk against the fill value (a full extra pass, 80 ms
    per 50 MB block; chunks of raw counts are never empty, and the ``write_empty_chunks`` setting that
    turns it off is not stored with the array) and its one-chunk-at-a-time codec pipeline: on 256²
    uint16 frames the writes of 2.15 GB went from 3.1 s to 1.3 s. ``separator``: the array's chunk-key
    separator ("/" nests a folder per chunk, "." keeps all chunk files in the array's folder: no mkdir per
    chunk, which costs ~2 ms on some file systems). ``compress`` False: for an array created without
    compressors (``bytes`` codec only), the chunks' raw little-endian bytes. Raises ValueError if ``data`` is
    not chunk-aligned.
    """
    codec = _numcodecs_blosc() if compress else None
    data = np.asarray(data)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    if any(o % c for o, c in zip(region_start, chunk_shape)):
        raise ValueError(f"region start {region_start} is not aligned to chunks {chunk_shape}")
    grid = [range(0, n, c) for n, c in zip(data.shape, chunk_shape)]
    for idx in np.ndindex(*[len(g) for g in grid]):
        lo = [g[i] for g, i in zip(grid, idx)]
        sl = tuple(slice(a, a + c) for a, c in zip(lo, chunk_shape))
        chunk = data[sl]
        if chunk.shape != tuple(chunk_shape):  # an edge chunk: zarr stores it full size, padded
            full = np.zeros(chunk_shape, data.dtype)
            full[tuple(slice(0, n) for n in chunk.shape)] = chunk
            chunk = full
        key = [str((a + o) // c) for a, o, c in zip(lo, region_start, chunk_shape)]
        path = Path(array_dir, "c", *key) if separator == "/" else Path(array_dir, separator.join(["c", *key]))
        chunk = np.ascontiguousarray(chunk)
        # uncompressed: the array's own buffer, not a tobytes() copy
        _write_chunk_atomic(path, codec.encode(chunk) if codec is not None else memoryview(chunk).cast("B"))


def _write_chunk_atomic(path: Path, blob) -> None:
    """Write a chunk file under a temporary name in its folder, then rename it into place: a run killed
    mid-write leaves a stray ``.tmp-*`` file (ignored by zarr, removed by :func:`remove_stray_temps`), never a
    truncated chunk (the next run rewrites that chunk; a rename replaces the old file atomically)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        tmp.write_bytes(blob)
    except FileNotFoundError:  # first chunk of its folder (mkdir on every chunk costs ~1 ms on this VM)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(blob)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: no half-written temporary left behind
        raise
    os.replace(tmp, path)


def remove_stray_temps(array_dir: Path) -> int:
    """Delete the temporary chunk files (``.*.tmp-*``) a killed run left in an array's folder; return how many."""
    n = 0
    root = Path(array_dir)
    if root.is_dir():
        for f in root.rglob(".*.tmp-*"):
            f.unlink(missing_ok=True)
            n += 1
    return n


def read_region_direct(arr, region: tuple[int, int, int, int]) -> np.ndarray | None:
    """Read probe positions [y0:y1, x0:x1] of a local 4D zarr v3 array by decoding its chunk files directly.

    Returns an array (y1-y0, x1-x0, Qy, Qx), or None where the array is not a plain local v3 array of
    little-endian ``bytes`` + ``blosc`` chunks with the default chunk keys (the caller then reads through
    zarr). Chunks are decoded straight into the output (blosc frames describe themselves), skipping
    zarr's per-chunk asyncio pipeline and its intermediate copies: 2-4× faster on sendmap's own stores.
    Missing chunks read as the fill value.
    """
    from numcodecs import Blosc

    try:
        meta = arr.metadata
        root = getattr(arr.store, "root", None)
        codecs = [type(c).__name__ for c in meta.codecs]
        if (meta.zarr_format != 3 or root is None or codecs != ["BytesCodec", "BloscCodec"]
                or str(getattr(meta.codecs[0], "endian", "little")).split(".")[-1].lower() != "little"
                or getattr(meta.chunk_key_encoding, "name", "") != "default"
                or getattr(meta.chunk_key_encoding, "separator", "/") != "/"):
            return None
        chunks = tuple(meta.chunk_grid.chunk_shape)
    except AttributeError:
        return None
    if len(chunks) != 4 or chunks[2:] != tuple(arr.shape[2:]):
        return None
    y0, y1, x0, x1 = region
    dtype = np.dtype(arr.dtype).newbyteorder("<")
    out = np.empty((y1 - y0, x1 - x0, *arr.shape[2:]), dtype)
    codec = Blosc()
    base = Path(root, arr.path) if arr.path else Path(root)
    cy, cx = chunks[:2]
    full = None
    for iy in range(y0 // cy, (y1 - 1) // cy + 1):
        for ix in range(x0 // cx, (x1 - 1) // cx + 1):
            f = base / "c" / str(iy) / str(ix) / "0" / "0"
            ya, yb = max(y0, iy * cy), min(y1, (iy + 1) * cy)
            xa, xb = max(x0, ix * cx), min(x1, (ix + 1) * cx)
            dst = out[ya - y0:yb - y0, xa - x0:xb - x0]
            try:
                raw = f.read_bytes()
            except FileNotFoundError:
                dst[...] = meta.fill_value if meta.fill_value is not None else 0
                continue
            inside = (ya, yb, xa, xb) == (iy * cy, (iy + 1) * cy, ix * cx, (ix + 1) * cx)
            if inside and dst.flags.c_contiguous:
                codec.decode(raw, out=dst)
            else:  # an edge chunk or a chunk reaching outside the region: decode whole, copy the overlap
                if full is None:
                    full = np.empty(chunks, dtype)
                codec.decode(raw, out=full)
                dst[...] = full[ya - iy * cy:yb - iy * cy, xa - ix * cx:xb - ix * cx]
    return out


def read_row_direct(array_dir: Path, row: int, n: int, dtype, chunk_len: int, out: np.ndarray | None = None,
                    offset: int = 0) -> np.ndarray:
    """The first ``n`` elements of row ``row`` of a local 2D zarr v3 array of ``bytes`` + blosc chunks of shape
    (1, ``chunk_len``) with "/" chunk keys X, decoding only the chunk
    files that hold them, straight into the output. A missing chunk file reads as zeros (the fill value).

    ``out``: a 1-D little-endian array of ``dtype`` to decode into, from element ``offset`` (several rows read one
    after another into one buffer): it must hold ``offset`` + ``n`` rounded up to whole chunks, since the row's
    last chunk is decoded whole; the elements after ``offset`` + ``n`` are overwritten (by the next row's)."""
    from numcodecs import Blosc

    n_chunks = -(-n // chunk_len)
    if out is None:
        out, offset = np.empty(n_chunks * chunk_len, np.dtype(dtype).newbyteorder("<")), 0
    else:
        if out.size < offset + n_chunks * chunk_len:
            raise ValueError(f"{out.size} elements cannot hold a row of {n} from element {offset}")
        out = out[offset:offset + n_chunks * chunk_len]
    codec = Blosc()
    for k in range(n_chunks):
        dst = out[k * chunk_len:(k + 1) * chunk_len]
        try:
            raw = (Path(array_dir) / "c" / str(row) / str(k)).read_bytes()
        except FileNotFoundError:
            dst[...] = 0
            continue
        codec.decode(raw, out=dst)
    return out[:n]


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def open_store(out_dir: Path, mode: str = "a") -> zarr.Group:
    """Open (or create, with mode 'a') the result group in ``out_dir``."""
    return zarr.open_group(str(Path(out_dir) / STORE_NAME), mode=mode)


def write_array(group: zarr.Group, name: str, value: np.ndarray, attrs: dict | None = None,
                chunks=None) -> None:
    """Create (replacing any old one) and fill an array of the store in one go (its attributes written with its
    metadata: one metadata write, not two). An old one-chunk array of the same layout is replaced in place
    (:func:`_replace_one_chunk_array`)."""
    value = np.asarray(value)
    if chunks is None and _replace_one_chunk_array(group, name, value, attrs):
        return
    arr = group.create_array(name, shape=value.shape, dtype=value.dtype, chunks=chunks or value.shape or (1,),
                             compressors=compressor(), overwrite=True,
                             fill_value=False if value.dtype == bool else 0,
                             attributes=_jsonable(attrs) if attrs else None)
    if chunks is not None or not _write_single_chunk(arr, value):
        arr[...] = value


def _replace_one_chunk_array(group: zarr.Group, name: str, value: np.ndarray, attrs: dict | None) -> bool:
    """Replace an array of a local store that :func:`write_array` wrote before with the same shape and dtype (one
    chunk, :func:`compressor`, fill value 0/False) without zarr: its ``zarr.json`` rewritten atomically with the new
    attributes and without ``dimension_names`` (so :func:`annotate_arrays` labels it again after the stage, as it does
    an array zarr creates), and its chunk file written directly (:func:`write_region_direct`; removed where the value
    is all fill, as zarr stores no such chunk). The metadata is the one zarr's ``create_array(..., overwrite=True)``
    writes, key for key, and the chunk the same bytes (tested). zarr's own replacement deletes the old folder and writes
    the metadata through its event loop: ~10 ms of wall time per array (~4 ms of CPU), and a re-run after a
    classification change replaces ~25 arrays (classify and statistics); here ~1 ms. False (nothing done) for any
    other array: absent, of another layout, chunked, big-endian or empty, or a store that is not a local folder."""
    root = getattr(group.store, "root", None)
    if root is None or value.ndim == 0 or value.size == 0 or value.dtype.byteorder == ">" \
            or value.dtype.kind not in "biuf":
        return False
    folder = Path(root, *(p for p in (group.path or "").split("/") if p), *name.split("/"))
    try:
        meta = json.loads((folder / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    item = value.dtype.itemsize
    layout = {"shape": list(value.shape), "data_type": value.dtype.name,
              "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(value.shape)}},
              "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
              "fill_value": False if value.dtype == bool else 0.0 if value.dtype.kind == "f" else 0,
              "codecs": [{"name": "bytes", **({"configuration": {"endian": "little"}} if item > 1 else {})},
                         {"name": "blosc", "configuration": {"typesize": item, "cname": BLOSC_CNAME, "clevel": 1,
                                                             "shuffle": BLOSC_SHUFFLE, "blocksize": BLOSC_BLOCK_BYTES}}],
              "zarr_format": 3, "node_type": "array", "storage_transformers": []}
    if not isinstance(meta, dict) or any(meta.get(k) != v or type(meta.get(k)) is not type(v) for k, v in layout.items()):
        return False
    chunk = Path(folder, "c", *(["0"] * value.ndim))
    if set(p.name for p in folder.iterdir()) - {"zarr.json", "c"}:  # (anything else: zarr would have deleted it)
        return False
    meta.pop("dimension_names", None)
    meta["attributes"] = _jsonable(attrs) if attrs else {}
    write_text_atomic(folder / "zarr.json", json.dumps(meta, indent=2))
    from zarr.core.buffer.cpu import NDBuffer

    if NDBuffer.from_numpy_array(value).all_equal(layout["fill_value"]):  # (as zarr: no chunk for all fill)
        chunk.unlink(missing_ok=True)
    else:
        write_region_direct(folder, value.shape, (0,) * value.ndim, value)
    return True


def _write_single_chunk(arr: zarr.Array, value: np.ndarray) -> bool:
    """Fill an array of one chunk (the whole array), just created with :func:`compressor` in a local store, by
    encoding the chunk with numcodecs' Blosc and writing its file directly (:func:`write_region_direct`); False
    (nothing done) for any other array. The file is the one zarr writes, byte for byte, and like zarr (its default
    ``write_empty_chunks`` False) no file is written for a chunk that equals the fill value. zarr's own write of
    one small chunk goes through its asyncio codec pipeline: ~5 ms each, and a re-run after a classification change
    writes ~25 such arrays (classify and statistics); directly, ~0.2 ms."""
    from zarr.core.buffer.cpu import NDBuffer

    try:
        meta = arr.metadata
        root = getattr(arr.store, "root", None)
        codecs = [type(c).__name__ for c in meta.codecs]
        plain = (meta.zarr_format == 3 and root is not None and value.ndim > 0 and value.size > 0
                 and codecs == ["BytesCodec", "BloscCodec"]
                 and str(getattr(meta.codecs[0], "endian", "little")).split(".")[-1].lower() == "little"
                 and getattr(meta.chunk_key_encoding, "name", "") == "default"
                 and getattr(meta.chunk_key_encoding, "separator", "/") == "/"
                 and tuple(meta.chunk_grid.chunk_shape) == value.shape)
    except AttributeError:
        return False
    if not plain:
        return False
    if NDBuffer.from_numpy_array(value).all_equal(meta.fill_value):
        return True  # (zarr writes no chunk: it reads back as the fill value)
    write_region_direct(Path(root, arr.path), value.shape, (0,) * value.ndim, value)
    return True


def _jsonable(obj):
    """Turn numpy scalars/arrays and paths into JSON types for zarr attributes; non-finite floats become null."""
    return _finite(json.loads(json.dumps(obj, default=_json_default)))


def _finite(obj):
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def set_attrs(group: zarr.Group, **attrs) -> None:
    group.attrs.update(_jsonable(attrs))


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to a temporary name in the same folder, then rename: never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_jsonable(obj), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to a temporary name in the same folder (one per process and thread), then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_json_cache(path: Path) -> dict | None:
    """The JSON object of a cache file under ``<output.dir>/.sendmap-cache/``; None where it is missing, unreadable
    or not an object (a cache only: the caller computes instead)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def write_json_cache(path: Path, obj) -> None:
    """Write a cache file's JSON atomically (:func:`write_text_atomic`, its folder made; NaN kept as NaN, which
    Python's json reads back); a cache, so an OSError is ignored."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(path), json.dumps(obj))
    except OSError:
        pass


def array_metadata(store_dir: Path) -> dict[Path, dict]:
    """{path of its ``zarr.json``: its metadata} of every array below the store's root (unreadable ones left out):
    one scan of the store for :func:`annotate_arrays` and :func:`write_coordinates`, which run after each stage."""
    out = {}
    for f in Path(store_dir).rglob("zarr.json"):
        try:
            meta = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if meta.get("node_type") == "array":
            out[f] = meta
    return out


def annotate_arrays(store_dir: Path, scan_shape=None, metas: dict[Path, dict] | None = None) -> int:
    """Give every array of the store that has none its zarr v3 ``dimension_names`` and ``units`` /
    ``long_name`` attributes (:func:`sendmap.schema.describe`), by rewriting its ``zarr.json`` atomically.

    Runs after each stage, so whatever a stage wrote (through :func:`write_array`, ``create_array`` or direct
    chunk writes) is labelled before the stage counts as done; arrays labelled before are not touched.
    ``scan_shape``: (Ry, Rx) of the stored scan (default: the shape of ``ingest/total_counts``). ``metas``:
    :func:`array_metadata` of the store (None: read here; given, the entries rewritten are updated in it). Returns
    the number of arrays labelled."""
    from ..schema import describe

    store_dir = Path(store_dir)
    if scan_shape is None:
        try:
            meta = json.loads((store_dir / "ingest" / "total_counts" / "zarr.json").read_text(encoding="utf-8"))
            scan_shape = tuple(meta["shape"])
        except (OSError, ValueError, KeyError):
            scan_shape = None
    n = 0
    metas = array_metadata(store_dir) if metas is None else metas
    for f, meta in metas.items():
        if f.parent == store_dir:
            continue
        if meta.get("dimension_names"):
            continue
        path = f.parent.relative_to(store_dir).as_posix()
        dims, attrs = describe(path, meta["shape"], meta.get("attributes") or {}, scan_shape)
        meta["dimension_names"] = list(dims)
        meta["attributes"] = _jsonable(attrs)
        write_text_atomic(f, json.dumps(meta, indent=2))
        n += 1
    return n


COORDINATES = {"ry": ("nm", "scan position along y (stored step × row)"),
               "rx": ("nm", "scan position along x (stored step × column)"),
               "q": ("1/Å", "scattering vector Q = 1/d, bin centre"),
               "qy": ("pixel", "detector row"), "qx": ("pixel", "detector column")}
"""Coordinate arrays :func:`write_coordinates` puts beside the arrays that use these dimensions."""


def write_coordinates(group: zarr.Group, store_dir: Path, step_nm: float | None,
                      metas: dict[Path, dict] | None = None) -> None:
    """Write the coordinate arrays (:data:`COORDINATES`) into every group of the store whose arrays use those
    dimensions and lack them, so that ``xarray.open_zarr(store, group=...)`` gives labelled arrays: ``ry``/``rx``
    in nm (NaN-free index × ``step_nm``; index units where the step is unknown), ``q`` copied from
    ``profiles/q`` (where the lengths agree), ``qy``/``qx`` pixel indices. ``metas``: :func:`array_metadata` of the
    store as it stands (None: read here)."""
    store_dir = Path(store_dir)
    need: dict[str, dict[str, int]] = {}
    for f, meta in (array_metadata(store_dir) if metas is None else metas).items():
        grp = f.parent.parent.relative_to(store_dir).as_posix()
        if grp == ".":  # the root holds the data (dense layout) only: no coordinates there, whatever the layout
            continue
        for d, n in zip(meta.get("dimension_names") or [], meta["shape"]):
            if d in COORDINATES and f.parent.name != d:
                need.setdefault(grp, {}).setdefault(d, n)
    q = None
    for grp, dims in need.items():
        for d, n in dims.items():
            if (store_dir / grp / d / "zarr.json").exists():
                continue
            if d in ("ry", "rx"):
                value = np.arange(n, dtype=np.float64) * (step_nm if step_nm else 1.0)
                units = COORDINATES[d][0] if step_nm else "index"
            elif d == "q":
                if q is None:
                    try:
                        q = np.asarray(group["profiles/q"])
                    except KeyError:
                        continue
                if len(q) != n:
                    continue
                value, units = q, COORDINATES[d][0]
            else:
                value, units = np.arange(n, dtype=np.int64), COORDINATES[d][0]
            arr = group.create_array(f"{grp}/{d}" if grp else d, shape=value.shape, dtype=value.dtype,
                                     chunks=value.shape, compressors=None, overwrite=True, fill_value=0,
                                     dimension_names=[d],
                                     attributes={"units": units, "long_name": COORDINATES[d][1]})
            arr[...] = value
