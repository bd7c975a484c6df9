"""Shared fixtures: sample studies built by the project's own script, and the real MONAI Label
server started as a subprocess (``python -m monailabel.main start_server``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from serverproc import Server  # noqa: E402


def build_sample_data(out: Path, *args: str) -> Path:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_sample_studies.py"), "--out", str(out), *args],
                   check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """A small private copy of the sample studies (tests may modify it; the repo's copy stays clean)."""
    return build_sample_data(tmp_path_factory.mktemp("sample-data"), "--n-ct", "3", "--n-mr", "1", "--n-2d", "2")


@pytest.fixture(scope="session")
def server(sample_data, tmp_path_factory):
    """The app served over HTTP on the sample studies (default conf: LiteMedSAM only, offline)."""
    studies = tmp_path_factory.mktemp("served") / "studies"
    shutil.copytree(sample_data / "studies", studies)
    srv = Server(studies).wait()
    yield srv
    srv.stop()
