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


def test_end_process_flushes_runs_atexit_and_keeps_the_status(tmp_path):
    """The command ends without the interpreter's teardown (cli.end_process): what it printed (more than a pipe
    holds), the atexit handlers and the exit status all come out as with a normal exit; a non-daemon thread still
    running is waited for."""
    code = ("import atexit, sys; from sendmap.cli import end_process; "
            "atexit.register(lambda: print('atexit ran')); sys.stdout.write('x' * 200000); "
            "print('to stderr', file=sys.stderr); end_process(3)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 3 and r.stdout == "x" * 200000 + "atexit ran\n" and r.stderr == "to stderr\n"
    flag = tmp_path / "thread_done"
    code = ("import threading, time; from pathlib import Path; from sendmap.cli import end_process; "
            f"threading.Thread(target=lambda: (time.sleep(0.3), Path({str(flag)!r}).write_text('1'))).start(); "
            "end_process(0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and flag.read_text() == "1"


def test_command_exit_status_through_end_process(tmp_path):
    """``python -m sendmap.cli`` returns main()'s exit status (2 for a bad config) and its message."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("input: {path: d.npy}\npeaks: {windw: [0.2, 0.4]}\n")
    r = subprocess.run([sys.executable, "-m", "sendmap.cli", "run", str(cfg)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 2 and "did you mean 'peaks.window'" in r.stderr
