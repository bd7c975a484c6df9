"""A backend ready to serve: its bundle, the lazily loaded ``Tool`` and the shared session cache."""

from __future__ import annotations

import json
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
        models_dir: folder of this backend's adapted weights (default ``<bundle>/models``); a new ``.pt``
            published there reloads the tool.
    """

    def __init__(self, name: str, bundle: Path | str, overrides: dict[str, Any] | None = None,
                 cache: SessionCache | None = None, models_dir: Path | str | None = None) -> None:
        self.name = name
        self.bundle = Path(bundle)
        self.models_dir = Path(models_dir) if models_dir else self.bundle / "models"
        self.overrides = {k: v for k, v in (overrides or {}).items() if v not in (None, "")}
        if models_dir:
            self.overrides.setdefault("adapted", str(self.models_dir / "adapted.pt"))
        self.cache = cache or SessionCache()
        self._tool: Tool | None = None
        self._lock = threading.Lock()
        self._mtime: float | None = None

    def _config(self):
        """The bundle's inference config with this provider's overrides (a ``monai.bundle.ConfigParser``)."""
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(self.bundle / "configs" / "inference.json"))
        parser["bundle_root"] = str(self.bundle.resolve())
        for k, v in self.overrides.items():
            parser[k] = v
        return parser

    def checkpoint_problem(self) -> str | None:
        """Why this backend cannot load (a missing checkpoint), or None. Cheap: loads no weights."""
        parser = self._config()
        if "checkpoint" not in parser:
            return None
        ckpt = parser.get_parsed_content("checkpoint")
        if ckpt and not Path(ckpt).is_file():
            return (f"{self.name}: checkpoint {ckpt} not found; put the file there or pass "
                    f"--conf {self.name}_checkpoint /path/to/{Path(ckpt).name}")
        return None

    def _weights_mtime(self) -> float | None:
        """Newest mtime of the ``.pt`` files in ``models_dir``: adapted weights published there trigger a reload."""
        files = list(self.models_dir.glob("*.pt")) if self.models_dir.is_dir() else []
        return max((f.stat().st_mtime for f in files), default=None)

    def encoder_info(self) -> dict[str, Any]:
        """Which runtime runs the image encoder, without loading the tool.

        Loaded: the tool's own report (``lib.tools.encoder_runtime.EncoderRunner.info``: ``encoder_runtime``
        = what answers now, ``encoder_state`` ready | exporting | fallback, and the fallback reason).
        Not loaded yet: the runtime the configuration resolves to, ``encoder_state`` "not loaded".
        Backends without a runtime option report torch.
        """
        tool = self._tool
        if tool is not None:
            info = getattr(tool, "encoder_info", None)
            return info() if info else {"encoder_runtime": "torch", "encoder_state": "ready"}
        from lib.tools.encoder_runtime import resolve_runtime

        try:
            parser = self._config()
            if "encoder_runtime" not in parser:
                return {"encoder_runtime": "torch", "encoder_state": "not loaded"}
            requested = parser.get_parsed_content("encoder_runtime")
            device = str(parser.get_parsed_content("device")) if "device" in parser else "cpu"
            return {"encoder_runtime": resolve_runtime(requested, "cuda" if device.startswith("cuda") else "cpu"),
                    "encoder_state": "not loaded", "encoder_requested": requested}
        except Exception as e:  # noqa: BLE001 — /info must answer even with a broken override
            return {"encoder_runtime": "unknown", "encoder_state": f"config error: {e}"}

    def weights_info(self) -> dict[str, Any]:
        """Which weights the tool serves and which runtime runs its image encoder, without loading it:
        ``{"weights": "adapted" | "released", **encoder_info()}`` plus the adapted file and the provenance
        written beside it (``adapted.json``) when present."""
        adapted = Path(self.overrides.get("adapted") or self.models_dir / "adapted.pt")
        encoder = self.encoder_info()
        if not adapted.is_file():
            return {"weights": "released", **encoder}
        out: dict[str, Any] = {"weights": "adapted", "adapted": str(adapted), **encoder}
        try:
            meta = json.loads(adapted.with_suffix(".json").read_text())
        except (OSError, ValueError):
            return out
        out.update({k: meta[k] for k in ("time", "steps", "metrics", "data", "episode") if k in meta})
        return out

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
                prepare = getattr(self._tool, "prepare_encoder", None)
                if prepare:
                    # load the cached fast encoder now, or start exporting it in the background (the tool
                    # encodes in torch until it is ready): loading is the server's "first use"
                    prepare()
            return self._tool

    @property
    def weights_stamp(self) -> float | None:
        """Identifies the weights being served (the adapted file's mtime; None = released): answers
        remembered under one stamp are not served under another."""
        self.tool  # noqa: B018  (loads, or reloads newly published weights, first)
        return self._mtime

    def cache_key(self, key: Hashable) -> tuple:
        """The key ``session`` files ``key`` under in ``cache`` (this backend's name first, so two backends never
        share an embedding). Whoever encodes into ``cache`` directly (a volume episode) uses it, so its slices
        and later single-slice requests reuse each other's embeddings."""
        return (self.name, *key) if isinstance(key, tuple) else (self.name, key)

    def session(self, key: Hashable, image: Callable[[], np.ndarray]) -> tuple[ToolSession, bool]:
        """Cached session for ``key`` (which must identify image, slice and windowing), encoding
        ``image()`` on a miss. Returns (session, was_cached)."""
        tool = self.tool
        return self.cache.get_or_start(self.cache_key(key), lambda: tool.start(image()))
