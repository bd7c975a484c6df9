"""A backend ready to serve: its bundle, the lazily loaded ``Tool`` and the shared session cache."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np

from lib.tools.base import MissingCheckpointError, Tool, ToolSession
from lib.tools.bundle import load_tool
from lib.tools.cache import SessionCache

logger = logging.getLogger(__name__)


class ToolProvider:
    """Loads a backend from its bundle on first use (train/scoring subprocesses that never segment
    pay nothing) and hands out cached slice sessions.

    Args:
        name: backend name ("litemedsam", "sam2", "medsam2").
        bundle: the backend's bundle folder.
        overrides: bundle config ids to override (e.g. ``checkpoint``, ``device``).
        cache: session cache shared by every task that uses this backend.
    """

    def __init__(self, name: str, bundle: Path | str, overrides: dict[str, Any] | None = None,
                 cache: SessionCache | None = None) -> None:
        self.name = name
        self.bundle = Path(bundle)
        self.overrides = {k: v for k, v in (overrides or {}).items() if v not in (None, "")}
        self.cache = cache or SessionCache()
        self._tool: Tool | None = None
        self._lock = threading.Lock()
        self._mtime: float | None = None

    def checkpoint_problem(self) -> str | None:
        """Why this backend cannot load (a missing checkpoint), or None. Cheap: loads no weights."""
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(self.bundle / "configs" / "inference.json"))
        parser["bundle_root"] = str(self.bundle.resolve())
        for k, v in self.overrides.items():
            parser[k] = v
        if "checkpoint" not in parser:
            return None
        ckpt = parser.get_parsed_content("checkpoint")
        if ckpt and not Path(ckpt).is_file():
            return (f"{self.name}: checkpoint {ckpt} not found; put the file there or pass "
                    f"--conf {self.name}_checkpoint /path/to/{Path(ckpt).name}")
        return None

    def _weights_mtime(self) -> float | None:
        """Newest mtime of the bundle's models/ files: adapted weights published there trigger a reload."""
        files = list((self.bundle / "models").glob("*.pt")) if (self.bundle / "models").is_dir() else []
        return max((f.stat().st_mtime for f in files), default=None)

    @property
    def tool(self) -> Tool:
        """The loaded tool; reloaded (and the session cache cleared) when new weights are published."""
        with self._lock:
            mtime = self._weights_mtime()
            if self._tool is None or mtime != self._mtime:
                problem = self.checkpoint_problem()
                if problem:
                    raise MissingCheckpointError(problem)
                t0 = time.perf_counter()
                self._tool = load_tool(self.bundle, **self.overrides)
                self._mtime = mtime
                self.cache.clear()
                logger.info("loaded %s (%s) in %.1fs", self.name, self._tool.weights, time.perf_counter() - t0)
            return self._tool

    def session(self, key: Hashable, image: Callable[[], np.ndarray]) -> tuple[ToolSession, bool]:
        """Cached session for ``key`` (which must identify image, slice and windowing), encoding
        ``image()`` on a miss. Returns (session, was_cached)."""
        tool = self.tool
        return self.cache.get_or_start((self.name, *key) if isinstance(key, tuple) else (self.name, key),
                                       lambda: tool.start(image()))
