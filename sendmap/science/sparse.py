"""Blocks of counted frames as compressed sparse rows: the non-zero pixels of each frame, and their counts.

At the doses of cryo-SEND (10³–10⁴ electrons per pattern on a 256² counting detector) most pixels of a
frame hold no electron: 93 % of the pixels of the 2 × 10⁴ e⁻ benchmark frames are zero. Stored and
processed as lists of non-zero pixels, a frame costs what its electrons cost, not what its detector
size costs: the profile kernel skips decoding 128 KB per frame and scanning it for non-zero pixels.

Layout of a block of ``B`` frames of shape (Qy, Qx): frame ``f`` holds the pixels
``index[offsets[f]:offsets[f + 1]]`` (flat pixel index ``iy * Qx + ix``, ascending) with counts
``value[offsets[f]:offsets[f + 1]]`` (the frames' own dtype, never 0). Pure functions; the kernels are
serial and release the GIL (blocks run one per core in threads).
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

SPARSE_MAX_FILL = 0.25
"""Largest share of non-zero pixels for which ``input.store_layout: auto`` stores a dataset sparse. A non-zero
pixel of a uint16 frame costs 4 bytes sparse (index + count) against 2 bytes per pixel dense, so at a quarter
of the pixels filled the sparse block is half the dense one's raw size (at 50 % they are equal)."""


def index_dtype(frame_shape: tuple[int, int]) -> np.dtype:
    """The smallest unsigned type holding every flat pixel index of a frame: uint16 up to 256², else uint32."""
    return np.dtype(np.uint16) if frame_shape[0] * frame_shape[1] <= 1 << 16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class SparseFrames:
    """A block of frames as compressed sparse rows (see the module docstring).

    offsets: (B + 1,) int64; index: (N,) uint16 or uint32 flat pixel indices; value: (N,) counts;
    frame_shape: (Qy, Qx).
    """

    offsets: np.ndarray
    index: np.ndarray
    value: np.ndarray
    frame_shape: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, Qy, Qx), the shape of the dense block."""
        return (len(self.offsets) - 1, *self.frame_shape)

    @property
    def dtype(self) -> np.dtype:
        return self.value.dtype

    @property
    def nbytes(self) -> int:
        """Bytes held (offsets, indices and counts)."""
        return self.offsets.nbytes + self.index.nbytes + self.value.nbytes

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def fill(self) -> float:
        """Share of the block's pixels that are non-zero."""
        return float(self.offsets[-1]) / max(1, int(np.prod(self.shape)))

    def dense(self) -> np.ndarray:
        """The block as a dense (B, Qy, Qx) array.

        >>> f = np.zeros((2, 3, 4), np.uint16); f[0, 1, 2] = 5; f[1, 2, 3] = 1
        >>> bool(np.array_equal(to_sparse(f).dense(), f))
        True
        """
        out = np.zeros(self.shape, self.value.dtype)
        _scatter(self.offsets, self.index, self.value, out.reshape(len(self), -1))
        return out


@numba.njit(cache=True, nogil=True)
def _count_nonzero(flat, out):  # pragma: no cover - numba
    """Non-zero pixels per frame of a (B, P) block (branch-free: it vectorises)."""
    for f in range(flat.shape[0]):
        n = 0
        for p in range(flat.shape[1]):
            n += flat[f, p] != 0
        out[f] = n


@numba.njit(inline="always")
def list_nonzero(row, x0, x1, idx):
    """Positions of the non-zero elements of ``row[x0:x1]`` into ``idx``; returns how many. Listed without a
    branch: testing pixel by pixel mispredicts a branch at every non-zero pixel of a sparse frame (35 vs 52 µs per
    256²). Shared with the dense profile kernel (:mod:`sendmap.science.polar_tables`)."""
    n_nz = 0
    for ix in range(x0, x1):
        idx[n_nz] = ix
        n_nz += row[ix] != 0
    return n_nz


@numba.njit(cache=True, nogil=True)
def _fill_nonzero(flat, offsets, index, value, scratch):  # pragma: no cover - numba
    """Flat indices and counts of the non-zero pixels of each frame, listed into ``scratch``, then copied."""
    for f in range(flat.shape[0]):
        row = flat[f]
        n = list_nonzero(row, 0, row.size, scratch)
        k = offsets[f]
        for m in range(n):
            p = scratch[m]
            index[k + m] = p
            value[k + m] = row[p]


@numba.njit(cache=True, nogil=True)
def _scatter(offsets, index, value, out):  # pragma: no cover - numba
    for f in range(out.shape[0]):
        for k in range(offsets[f], offsets[f + 1]):
            out[f, index[k]] = value[k]


def to_sparse(frames: np.ndarray) -> SparseFrames:
    """The non-zero pixels of a block of frames (B, Qy, Qx), any integer dtype (floats work too: NaN counts as
    non-zero).

    >>> f = np.zeros((2, 2, 3), np.uint16); f[0, 1, 2] = 7; f[1, 0, 0] = 2; f[1, 0, 1] = 1
    >>> s = to_sparse(f)
    >>> s.offsets.tolist(), s.index.tolist(), s.value.tolist()
    ([0, 1, 3], [5, 0, 1], [7, 2, 1])
    """
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (B, Qy, Qx), got shape {frames.shape}")
    nb, qy, qx = frames.shape
    flat = frames.reshape(nb, qy * qx)
    counts = np.empty(nb, np.int64)
    _count_nonzero(flat, counts)
    offsets = np.zeros(nb + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    index = np.empty(int(offsets[-1]), index_dtype((qy, qx)))
    value = np.empty(int(offsets[-1]), frames.dtype)
    _fill_nonzero(flat, offsets, index, value, np.empty(qy * qx, np.int64))
    return SparseFrames(offsets, index, value, (qy, qx))


def from_counts(nnz: np.ndarray, index: np.ndarray, value: np.ndarray, frame_shape) -> SparseFrames:
    """A :class:`SparseFrames` from the non-zero count of each frame (B,) and the concatenated index and value
    lists (as stored: :mod:`sendmap.stages.ingest`)."""
    offsets = np.zeros(len(nnz) + 1, np.int64)
    np.cumsum(np.asarray(nnz, np.int64), out=offsets[1:])
    if len(index) != offsets[-1] or len(value) != offsets[-1]:
        raise ValueError(f"{len(index)} indices and {len(value)} values for {int(offsets[-1])} non-zero pixels")
    return SparseFrames(offsets, index, value, tuple(frame_shape))


def as_dense(frames) -> np.ndarray:
    """``frames`` as a dense (B, Qy, Qx) array, whether given dense or as :class:`SparseFrames`."""
    return frames.dense() if isinstance(frames, SparseFrames) else np.asarray(frames)
