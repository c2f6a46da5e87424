"""HDF5 4D-STEM files: DECTRIS Arina/EIGER (NeXus) acquisitions and py4DSTEM / EMD files.

The modules: :mod:`sendmap.io.arina` and :mod:`sendmap.io.py4dstem` (readers), :mod:`sendmap.io.hdf5_write`
(writers), :mod:`sendmap.io._hdf5_common` (detection and shared helpers); this module describes the layouts and
gathers their public functions.

Readers follow the contract of :mod:`sendmap.io._common`: a lazy (Ry, Rx, Qy, Qx) dask array in native
byte order, chunks from :func:`~sendmap.io._common.scan_chunks` (consecutive frames, whole scan rows),
built with ``dask.array.map_blocks`` of a module-level loader that takes plain picklable parameters
(file path, HDF5 path inside the file, frame counts) and opens the file read-only by itself (h5py, with
:mod:`hdf5plugin` imported so bitshuffle-LZ4 decodes), reading only its frames. Bad input raises
:class:`~sendmap.errors.SendmapInputError` naming the file and the HDF5 path inside it.

DECTRIS Arina / EIGER (SIMPLON, NeXus NXmx)
-------------------------------------------
An acquisition ``<stem>`` is a master file and one or more data files beside it::

    <stem>_master.h5
      /entry                          NX_class=NXentry
        /data                         NX_class=NXdata
          data_000001 -> external link to <stem>_data_000001.h5:/entry/data/data
          data_000002 -> external link to <stem>_data_000002.h5:/entry/data/data ...
        /instrument/detector          NX_class=NXdetector: count_time (s), frame_time (s),
                                      x_pixel_size (m), detector_distance (m), bit_depth_image,
                                      saturation_value, countrate_correction_applied, description,
                                      detector_number, ... (scalar datasets, ``units`` attributes)
          /detectorSpecific           nimages, ntrigger, photon_energy (eV), compression ("bslz4"),
                                      pixel_mask (Qy, Qx) uint32, NONZERO where a pixel is bad, ...
    <stem>_data_NNNNNN.h5
      /entry/data/data                (n, Qy, Qx) unsigned integers, chunks of one frame, bitshuffle-LZ4
                                      (HDF5 filter 32008); attributes image_nr_low / image_nr_high
                                      (1-based numbers of its first and last frame)

Frames are in acquisition (scan) order, concatenated over the data files in the order of their numbers.
The Arina acquisition software may also write ``<stem>.h5``, a group ``STEM Metadata`` whose attributes
give the scan (``NumPixelsX``, ``NumPixelsY``, ``Pixel Size`` in nm, ``High Tension`` in V, ``Camera
Length`` in m...). rosettasciio's arina reader reads only the scan pixel size from it and takes a square
scan; :func:`read_arina_dask` takes the scan shape from ``scan_shape``, else NumPixelsY x NumPixelsX of
that file where they make the frame count, else a square scan where the frame count is a perfect square,
else (1, N). Unlike rosettasciio (which converts uint32 to uint16 by default) the pixel type is kept.

py4DSTEM / emdfile / EMD
------------------------
* **emdfile** (py4DSTEM >= 0.14; py4DSTEM 0.13 is the same tree with integer group tags): file attributes
  ``emd_group_type="file"``, ``version_major=1``, ``version_minor=0``, ``UUID``, ``authoring_program``;
  a root group (``emd_group_type="root"``, e.g. ``/datacube_root``) holding ``metadatabundle/calibration``
  (``emd_group_type="metadata"``, ``python_class="Calibration"``; datasets ``Q_pixel_size``,
  ``Q_pixel_units``, ``R_pixel_size``, ``R_pixel_units``) and the datacube group (``emd_group_type="array"``
  (0.13: ``1``), ``python_class="DataCube"``) with datasets ``data`` (Rx, Ry, Qx, Qy) and ``dim0`` ..
  ``dim3`` (calibration vectors, two values where linear; attributes ``name`` Rx/Ry/Qx/Qy and ``units``).
* **py4DSTEM 0.12** (and 0.10-0.11): top group ``4DSTEM_experiment`` (``emd_group_type=2``,
  ``version_major=0``, ``version_minor=12``) with ``data/datacubes/<name>`` EMD type-1 groups.
* **EMD 1.0 / Berkeley EMD** (emdatasets.com, ``version_major``/``version_minor`` on the file): groups
  with ``emd_group_type=1`` holding ``data`` and ``dim1`` .. ``dimN`` (1-based; ``name`` and ``units``
  attributes, units like ``[n_m]``).

Axis order: py4DSTEM indexes ``datacube.data[rx, ry, qx, qy]`` and calls its first axis x, but its x is the
array's first (row) index, not the horizontal one: its raw-file readers reshape frames in acquisition order
with a C-order reshape whose first axis is the slow scan axis (e.g. ``read_arina``:
``array_3D.reshape(scan_width, scan_height, Qx, Qy)``), its ``DataCube.R_Nx`` is ``data.shape[0]``, and its
``show`` draws virtual images and diffraction patterns with ``imshow`` (first axis = displayed rows). So
py4DSTEM's (Rx, Ry, Qx, Qy) is sendmap's (Ry, Rx, Qy, Qx) axis for axis: no transposition. EMD type-1 ``data``
in these files is read the same way (rosettasciio's EMD reader, in contrast, reverses all axes of ``data``
datasets that have 1-based dims, following HyperSpy's axis order).
"""
from __future__ import annotations

from ._hdf5_common import hdf5_flavour
from .arina import read_arina_dask, read_arina_pixel_mask
from .hdf5_write import write_arina, write_py4dstem
from .py4dstem import read_py4dstem_dask

__all__ = ["hdf5_flavour", "read_arina_dask", "read_arina_pixel_mask", "read_py4dstem_dask", "write_arina",
           "write_py4dstem"]
