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
def real_only_studies():
    """``real_only_studies(root) -> studies``: a private datastore of the real CT (labelled) and MR (unlabelled)
    only, as ``make_sample_studies.py --real`` builds it with no phantoms. Skips the calling test, saying what to
    run, when the real samples are not cached."""
    from lib.data import real_samples

    def build(root: Path) -> Path:
        if not real_samples.is_cached():
            pytest.skip(real_samples.unavailable_message())
        build_sample_data(root / "data", "--n-ct", "0", "--n-mr", "0", "--n-2d", "0", "--real")
        return root / "data" / "studies"

    return build


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
