"""Shared fixtures: sample studies built by the project's own script, and the real MONAI Label
server started as a subprocess (``python -m monailabel.main start_server``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]


def build_sample_data(out: Path, *args: str) -> Path:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_sample_studies.py"), "--out", str(out), *args],
                   check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """A small private copy of the sample studies (tests may modify it; the repo's copy stays clean)."""
    return build_sample_data(tmp_path_factory.mktemp("sample-data"), "--n-ct", "3", "--n-mr", "1", "--n-2d", "2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real MONAI Label server process serving this app."""

    def __init__(self, studies: Path, conf: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.studies = studies
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log or studies.parent / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(ROOT), "--studies", str(studies),
               "--host", "127.0.0.1", "--port", str(self.port)]
        for k, v in (conf or {}).items():
            cmd += ["--conf", k, v]
        env = dict(os.environ, MONAI_LABEL_TRACKING_ENABLED="false", MONAI_ZOO_SOURCE="local",
                   MONAI_LABEL_AUTO_UPDATE_SCORING="false", MONAI_LABEL_DATASTORE_AUTO_RELOAD="false",
                   HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self._fh = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=self._fh, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 180.0) -> Server:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if requests.get(f"{self.url}/info/", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"server not up after {timeout}s:\n{self.tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 60) -> str:
        self._fh.flush()
        return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._fh.close()


@pytest.fixture(scope="session")
def server(sample_data, tmp_path_factory):
    """The app served over HTTP on the sample studies (default conf: LiteMedSAM only, offline)."""
    studies = tmp_path_factory.mktemp("served") / "studies"
    shutil.copytree(sample_data / "studies", studies)
    srv = Server(studies).wait()
    yield srv
    srv.stop()
