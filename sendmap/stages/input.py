"""The input stage: everything that can be checked before the output is touched (the input opens, the shapes fit, Q
is known), and the calibrations the file carries taken where the config leaves them out.
"""
from __future__ import annotations

from ..config import Config
from ..errors import SendmapInputError
from ..io import Dataset, fingerprint, open_dataset
from .settings import calibrant_record, q_pixel_size


READERS = {"mib": "sendmap.io.mib", "dm4": "sendmap.io.dm (tags: rosettasciio)", "empad": "sendmap.io.empad",
           "arina": "sendmap.io.hdf5 (h5py + hdf5plugin)", "py4dstem": "sendmap.io.hdf5 (h5py)",
           "npy": "sendmap.io.npy", "zarr": "sendmap.io.zarrarray (zarr)", "raw": "sendmap.io.raw",
           **{f: f"sendmap.io.generic (rosettasciio {m})" for f, m in
              (("blockfile", "blockfile"), ("tvips", "tvips"), ("mrc", "mrc"), ("velox", "emd"), ("hspy", "hspy"),
               ("zspy", "zspy"))}}


def preflight(cfg: Config) -> tuple[Dataset, dict]:
    """Everything that can be checked before touching the output: the input opens, the shapes fit, Q is known."""
    path = cfg.input_path()
    inp = cfg.input
    ds = open_dataset(path, inp.format, inp.scan_shape, dataset=inp.dataset,
                      raw=inp.raw.model_dump() if inp.raw else None)
    taken = apply_file_calibration(cfg, ds.metadata)
    q_pixel_size(cfg)
    cal = cfg.calibration
    if cal.calibrant:
        calibrant_record(cfg)  # named, so it must be readable even where q_pixel_size is given
    if cal.mask_file and not cfg.resolve(cal.mask_file).is_file():
        raise SendmapInputError(f"calibration.mask_file: {cfg.resolve(cal.mask_file)} not found (a .npy/.tif/.png of "
                                f"the detector's shape, nonzero = excluded pixel; or set mask_file: null)")
    fp = fingerprint(path, files=ds.files)
    info = {"path": str(path), "format": ds.format, "reader": READERS.get(ds.format, ""), "bytes": fp["bytes"],
            "fingerprint": fp["sha256_sampled"], "files": [str(f) for f in ds.files], "scan_shape": list(ds.scan_shape),
            "frame_shape": list(ds.frame_shape), "dtype": str(ds.dtype), "reader_metadata": ds.metadata,
            "calibration_from_file": taken}
    info["fingerprint_of"] = fp["sampled"]
    info["mtime_ns"] = fp["mtime_ns"]
    return ds, info


def apply_file_calibration(cfg: Config, metadata: dict) -> dict:
    """Fill the calibration the config leaves out from the input file's own (its reader's metadata, see
    :func:`sendmap.io.generic.file_calibration`): ``q_pixel_size`` where it is null and neither a calibrant nor
    camera length + detector pixel size is given; ``scan_step_nm`` and ``beam_energy_kv`` where the config does
    not set them (their defaults, 4 nm and 200 kV, stand only where the file says nothing). Changes ``cfg`` in
    place (so the stages' cache keys see the values) and returns {key: value} taken from the file."""
    from ..io.generic import file_calibration

    found = file_calibration(metadata or {})
    cal = cfg.calibration
    given = set(cal.model_fields_set)
    taken = {}
    if found["q_pixel_size"] and not cal.q_pixel_size and not cal.calibrant and not (
            cal.camera_length_mm and cal.detector_pixel_um):
        taken["q_pixel_size"] = found["q_pixel_size"]
    for key in ("scan_step_nm", "beam_energy_kv"):
        if found[key] and key not in given:
            taken[key] = found[key]
    for key, value in taken.items():
        setattr(cal, key, value)
    cal._from_file.update(taken)
    return taken
