"""What a HyperSpy/pyxem user does today to get a Merlin file into zarr: rosettasciio's lazy reader
(a dask array over a memory map) written with ``dask.array.to_zarr`` (zarr's default codec)."""
import sys

import dask.array as da
from rsciio.quantumdetector import file_reader


def main(path: str, out: str, ry: int, rx: int) -> None:
    data = file_reader(path, lazy=True, navigation_shape=(rx, ry))[0]["data"]
    data = data.rechunk(data.chunksize)  # to_zarr needs regular chunks
    da.to_zarr(data, out, overwrite=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
