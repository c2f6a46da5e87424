"""Minimal Merlin ``.mib`` reader (numpy only), for the reference tools' benchmark scripts.

Deliberately independent of sendmap: ``ref_py4dstem.py`` runs in its own virtualenv (py4DSTEM pins
numpy<2) where sendmap is not installed. Same layout and orientation as ``sendmap.io.mib``: every frame
is an ASCII header (field 3 = header size in bytes, fields 5/6 = width/height, field 7 = ``U08``/``U16``/
``U32`` big-endian pixels) followed by the pixels; the first row on disk is the bottom row of the pattern,
so rows are flipped here as sendmap (and rosettasciio) do, and centres from sendmap's ground truth apply.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

_DTYPES = {"U08": ">u1", "U16": ">u2", "U32": ">u4"}


class Mib:
    """``Mib(path)``: ``.n_frames``, ``.frame_shape``, ``.frames(i0, i1)`` → (i1−i0, Qy, Qx) native array."""

    def __init__(self, path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            head = f.read(4096)
        fields = head.split(b"\0", 1)[0].decode("ascii").split(",")
        if fields[0] != "MQ1":
            raise ValueError(f"{self.path}: not a Merlin .mib file (no MQ1 header)")
        self.header_bytes = int(fields[2])
        qx, qy = int(fields[4]), int(fields[5])
        self.dtype = np.dtype(_DTYPES[fields[6].strip()])
        self.frame_shape = (qy, qx)
        stride = self.header_bytes + qy * qx * self.dtype.itemsize
        self.n_frames = os.path.getsize(self.path) // stride
        rec = np.dtype([("hdr", f"V{self.header_bytes}"), ("px", self.dtype, self.frame_shape)])
        self._mm = np.memmap(self.path, dtype=rec, mode="r", shape=(self.n_frames,))

    def frames(self, i0: int, i1: int) -> np.ndarray:
        """Frames i0..i1-1 read from the file into memory, native byte order, rows flipped (see module doc)."""
        return np.array(self._mm["px"][i0:i1, ::-1], dtype=self.dtype.newbyteorder("="))


def resolve(path) -> tuple[Path, Path]:
    """(the .mib file, its folder) for a .mib path or a folder holding ``synth.mib`` or one ``*.mib``."""
    path = Path(path)
    if path.is_dir():
        mibs = [path / "synth.mib"] if (path / "synth.mib").exists() else sorted(path.glob("*.mib"))
        if not mibs:
            raise SystemExit(f"{path}: no .mib file in this folder")
        return mibs[0], path
    return path, path.parent


def truth(folder: Path) -> dict:
    """Ground truth written by ``sendmap synth`` beside the data (empty dict where there is none):
    ``scan_shape``, ``q_pixel_size``, ``ellipse`` {ratio, angle_deg} and ``centre`` (Ry, Rx, 2) (y, x) px."""
    out: dict = {}
    if (folder / "truth.json").exists():
        t = json.loads((folder / "truth.json").read_text())
        out.update({k: t[k] for k in ("scan_shape", "q_pixel_size", "ellipse") if k in t})
    if (folder / "truth.npz").exists():
        with np.load(folder / "truth.npz") as z:
            if "centre" in z:
                out["centre"] = np.asarray(z["centre"], float)
    return out


def profile_bins(centre_yx, frame_shape) -> int:
    """sendmap's default number of 1-pixel radial bins (sendmap.stages.profiles.profile_geometry, q_max unset):
    the distance from the mean centre to the nearest detector corner, in whole pixels."""
    cy, cx = centre_yx
    qy, qx = frame_shape
    corners = [(0, 0), (0, qx - 1), (qy - 1, 0), (qy - 1, qx - 1)]
    return max(4, int(min(np.hypot(y - cy, x - cx) for y, x in corners)))
