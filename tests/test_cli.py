"""Command line: bad input and config end with a clear message, exit code 2 and nothing that looks complete."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sendmap.cli import main
from sendmap.config import ConfigError, load_config


def _write_config(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def _small_npy(tmp_path: Path, shape=(3, 4, 32, 32)) -> Path:
    p = tmp_path / "d.npy"
    np.save(p, np.random.default_rng(0).poisson(3, shape).astype(np.uint16))
    return p


def _assert_nothing_complete(out: Path):
    assert not (out / "summary.json").exists()
    store = out / "sendmap.zarr" / "zarr.json"
    if store.exists():
        assert json.loads(store.read_text()).get("attributes", {}).get("status") != "complete"


def test_version():
    r = subprocess.run([sys.executable, "-m", "sendmap.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("sendmap ")


@pytest.mark.parametrize("body,needle", [
    ("input: {path: d.npy}\npeaks: {windw: [0.2, 0.4]}\n", "did you mean 'peaks.window'"),
    ("input: {path: d.npy}\ncalibraton: {q_pixel_size: 0.01}\n", "did you mean 'calibration'"),
    ("input: {path: d.npy, format: tiff}\n", "input.format"),
    ("input: {path: d.npy}\nprofiles: {n: -1}\n", "profiles.n"),
    ("input: [\n", "not valid YAML"),
])
def test_bad_config_exit_2(tmp_path, capsys, body, needle):
    _small_npy(tmp_path)
    cfg = _write_config(tmp_path, body + "output: {dir: out}\n" if "[\n" not in body else body)
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(cfg) in err
    assert not (tmp_path / "out").exists()


def test_missing_input_file(tmp_path, capsys):
    cfg = _write_config(tmp_path, "input: {path: nowhere.mib}\ncalibration: {q_pixel_size: 0.0125}\noutput: {dir: out}\n")
    assert main(["run", str(cfg)]) == 2
    assert "nowhere.mib" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_format(tmp_path, capsys):
    (tmp_path / "d.xyz").write_bytes(b"hello world")
    cfg = _write_config(tmp_path, "input: {path: d.xyz}\ncalibration: {q_pixel_size: 0.0125}\noutput: {dir: out}\n")
    assert main(["run", str(cfg)]) == 2
    assert "cannot tell the format" in capsys.readouterr().err


def test_scan_shape_mismatch(tmp_path, capsys):
    p = tmp_path / "d.npy"
    np.save(p, np.zeros((12, 16, 16), np.uint16))
    cfg = _write_config(tmp_path, "input: {path: d.npy, scan_shape: [5, 3]}\ncalibration: {q_pixel_size: 0.0125}\n"
                                  "output: {dir: out}\n")
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "12 frames" in err and "5 x 3" in err
    _assert_nothing_complete(tmp_path / "out")


def test_truncated_mib(tmp_path, capsys):
    from sendmap.io.mib import write_mib

    mib = write_mib(tmp_path / "d.mib", np.ones((2, 3, 16, 16), np.uint16))
    data = mib.read_bytes()
    mib.write_bytes(data[:-100])
    cfg = _write_config(tmp_path, "input: {path: d.mib, scan_shape: [2, 3]}\ncalibration: {q_pixel_size: 0.0125}\n"
                                  "output: {dir: out}\n")
    assert main(["run", str(cfg)]) == 2
    assert "truncated" in capsys.readouterr().err
    _assert_nothing_complete(tmp_path / "out")


def test_nan_in_float_input(tmp_path, capsys):
    a = np.ones((2, 3, 32, 32), np.float32)
    a[1, 2, 5, 7] = np.nan
    np.save(tmp_path / "d.npy", a)
    cfg = _write_config(tmp_path, "input: {path: d.npy}\ncalibration: {q_pixel_size: 0.0125}\noutput: {dir: out}\n"
                                  "compute: {progress: false}\n")
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "NaN" in err and "(1, 2)" in err
    _assert_nothing_complete(tmp_path / "out")


def test_no_q_calibration(tmp_path, capsys):
    _small_npy(tmp_path)
    cfg = _write_config(tmp_path, "input: {path: d.npy}\noutput: {dir: out}\n")
    assert main(["run", str(cfg)]) == 2
    assert "q_pixel_size" in capsys.readouterr().err


def test_overrides_and_relative_paths(tmp_path):
    _small_npy(tmp_path)
    cfg = load_config(_write_config(tmp_path, "input: {path: d.npy}\n"), ["peaks.window=[0.2, 0.4]", "profiles.n=2"])
    assert cfg.peaks.window == (0.2, 0.4) and cfg.profiles.n == 2
    assert cfg.input_path() == (tmp_path / "d.npy").resolve()
    with pytest.raises(ConfigError, match="did you mean 'profiles.n'"):
        load_config(tmp_path / "c.yaml", ["profiles.nn=2"])
