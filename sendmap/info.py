"""``sendmap info PATH``: what a dataset file or a result store holds."""
from __future__ import annotations

from pathlib import Path

from .errors import SendmapInputError
from .io import check_readable, detect_format, fingerprint, open_dataset
from .engine.store import STORE_NAME


def describe(path: Path) -> dict:
    """A JSON-able description: for a result store its arrays, status, stages and provenance; for a
    dataset file its format, shape, dtype, size, fingerprint and reader metadata."""
    path = Path(path)
    if not path.exists():
        check_readable(path)  # names a symbolic link loop as such
        raise SendmapInputError(f"no such file or folder: {path}")
    store = path / STORE_NAME if (path / STORE_NAME).is_dir() else path
    if _is_result_store(store):
        import zarr

        g = zarr.open_group(str(store), mode="r")
        arrays = {}

        def walk(grp, prefix=""):
            for name, item in grp.members():
                full = f"{prefix}{name}"
                if isinstance(item, zarr.Group):
                    walk(item, full + "/")
                else:
                    arrays[full] = {"shape": list(item.shape), "dtype": str(item.dtype), **dict(item.attrs)}

        walk(g)
        attrs = dict(g.attrs)
        failure = {k: attrs[k] for k in ("error", "failed_stage", "failed_at") if attrs.get(k)}
        return {"kind": "sendmap result store", "path": str(store), "status": attrs.get("status"), **failure,
                "warnings": attrs.get("warnings", []),
                "sendmap_version": attrs.get("sendmap_version"), "created": attrs.get("created"),
                "input": attrs.get("input"), "ingest": attrs.get("ingest"), "calibration": attrs.get("calibration"),
                "dose": attrs.get("dose"),
                "stages": {k: {kk: v[kk] for kk in ("key", "completed", "seconds", "blocks", "blocks_resumed")
                               if kk in v}
                           for k, v in attrs.get("stages", {}).items()},
                "unfinished": _unfinished(store.parent),
                "arrays": arrays}
    note = None
    try:
        ds = open_dataset(path, "auto")
    except SendmapInputError as exc:
        if "input.scan_shape" not in str(exc):
            raise
        ds = open_dataset(path, "auto", scan_shape_required=False)
        note = (f"the file does not record its scan shape: shown as a 1 x {ds.scan_shape[1]} line; a run needs "
                "input.scan_shape")
    if ds.format in ("zarr", "zspy"):
        path = path.resolve()
    out = {"kind": "dataset", "path": str(path), "format": ds.format, "detected": detect_format(path),
           "scan_shape": list(ds.scan_shape), "frame_shape": list(ds.frame_shape), "dtype": str(ds.dtype),
           "n_frames": int(ds.scan_shape[0] * ds.scan_shape[1]), "chunks": [list(c[:3]) for c in ds.data.chunks[:2]],
           "fingerprint": fingerprint(path, files=ds.files), "metadata": ds.metadata}
    if note:
        out["scan_shape_note"] = note
    return out


def _unfinished(out_dir: Path) -> dict:
    """Block stages a killed run left part-done (the next run resumes them): blocks done per stage."""
    from .engine.resume import RESUME_DIR, read_record

    out = {}
    for rec in sorted((out_dir / RESUME_DIR).glob("*.rec")):
        meta = read_record(out_dir, rec.stem)
        if meta:
            out[rec.stem] = {"blocks_done": len(meta.get("done", [])), "blocks": len(meta.get("plan", {}).get("blocks", [])),
                             "key": meta.get("key")}
    return out


def _is_result_store(path: Path) -> bool:
    """A zarr v3 group written by sendmap (other zarr folders are datasets)."""
    import json

    meta = path / "zarr.json"
    if not (path.is_dir() and meta.exists()):
        return False
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return doc.get("node_type") == "group" and "sendmap_version" in doc.get("attributes", {})
