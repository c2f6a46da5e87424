"""Shared pytest fixtures.

Real detector files live in ``../shared/data/real/`` beside the checkout (never copied into the
project, GPL-3.0); tests that need them skip with a clear reason where that folder is absent.
"""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "real"
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """Folder of small real detector files; skips the test where it is absent."""
    if not REAL_DATA_DIR.is_dir():
        pytest.skip(f"real detector files not found at {REAL_DATA_DIR} (../shared/data/real beside the checkout)")
    return REAL_DATA_DIR


@pytest.fixture(scope="session")
def shared_reference_dir() -> Path:
    """``../shared/reference``; skips where absent."""
    ref = SHARED_DIR / "reference"
    if not ref.is_dir():
        pytest.skip(f"shared reference folder not found at {ref}")
    return ref


def scenario_matrix_module():
    """``benchmarks/scenario_matrix.py`` as a module (the scenario matrix's cells and commands, for the tests that
    sweep part of it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "scenario_matrix", Path(__file__).resolve().parents[1] / "benchmarks" / "scenario_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
