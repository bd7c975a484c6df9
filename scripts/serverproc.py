"""Start the real MONAI Label server with this app as a subprocess (used by tests and benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m monailabel.main start_server`` on 127.0.0.1, offline, logging to a file."""

    def __init__(self, studies: Path | str, conf: dict[str, str] | None = None, log: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        # a folder, or a DICOMweb URL (``http://.../dicom-web``: then pass ``log``)
        self.studies = studies if str(studies).startswith(("http://", "https://")) else Path(studies)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log or Path(self.studies).parent / f"server-{self.port}.log")
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(ROOT), "--studies",
               str(self.studies), "--host", "127.0.0.1", "--port", str(self.port)]
        for k, v in (conf or {}).items():
            cmd += ["--conf", k, str(v)]
        full_env = dict(os.environ, MONAI_LABEL_TRACKING_ENABLED="false", MONAI_ZOO_SOURCE="local",
                        MONAI_LABEL_AUTO_UPDATE_SCORING="false", MONAI_LABEL_DATASTORE_AUTO_RELOAD="false",
                        HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
        self._fh = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(ROOT), env=full_env, stdout=self._fh, stderr=subprocess.STDOUT)

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

    def train(self, model: str, body: dict | None = None, poll: float = 2.0) -> dict:
        """Run train task ``model`` in the background (MONAI Label's async path, as the Slicer Train button
        does) and wait for it to finish; returns MONAI Label's task record (``status`` DONE / ERROR / STOPPED).

        Waits on the task's progress, not on the clock: a slow or busy machine only makes it take longer.
        Each status request has its own short timeout; the server dying ends the wait with its log.
        """
        r = requests.post(f"{self.url}/train/{model}", params={"run_sync": "false"}, json=body or {}, timeout=120)
        r.raise_for_status()
        while True:
            if not self.alive():
                raise RuntimeError(f"server exited while training {model}:\n{self.tail()}")
            try:
                task = requests.get(f"{self.url}/train/", timeout=30).json()
            except (requests.RequestException, ValueError):
                task = {}
            if task.get("status") in ("DONE", "ERROR", "STOPPED"):
                return task
            time.sleep(poll)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 60) -> str:
        self._fh.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._fh.close()

    def __enter__(self) -> Server:
        return self.wait()

    def __exit__(self, *exc) -> None:
        self.stop()
