"""Typed parsing of the app's ``--conf key value`` strings, done once, in one place.

MONAI Label passes every ``--conf`` value as a string (and exports them to train/scoring
subprocesses through the environment); ``AppConf.parse`` turns them into typed, validated fields.
The README's administrator table documents these keys.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from lib.tools.interaction import Prompting
from lib.tools.local_merge import DEFAULT_LOCAL_RADIUS
from lib.tools.registry import BACKENDS

TRUE = {"1", "true", "yes", "on", "y", "t"}
FALSE = {"0", "false", "no", "off", "n", "f", ""}

#: which prompts reach each backend per turn; see BENCHMARKS.md for the measurement behind it
#: (LiteMedSAM: box + all clicks without logits scored best of the three modes).
DEFAULT_PROMPTING = {"litemedsam": "all", "sam2": "all_logits", "medsam2": "all_logits"}


def _bool(key: str, v: str) -> bool:
    s = str(v).strip().lower()
    if s in TRUE:
        return True
    if s in FALSE:
        return False
    raise ValueError(f"--conf {key} {v!r}: expected true or false")


@dataclass
class AppConf:
    """App settings (``--conf key value``).

    Attributes:
        backends: segmentation backends to offer (subset of litemedsam, sam2, medsam2); a backend
            whose checkpoint is missing is left out of /info with a logged reason.
        device: "cpu" or "cuda[:n]" for the tools.
        threads: torch intra-op threads (0 = torch default).
        ct_window: CT soft-tissue window (level, width) in HU used before the tool sees a CT slice.
        session_cache_mb: memory for cached slice embeddings (LRU), MiB.
        sam2_checkpoint / sam2_config: user-supplied SAM 2.1 checkpoint and Hydra config.
        medsam2_checkpoint: user-supplied MedSAM2_latest.pt.
        prompting: per-backend prompting mode (newest | all | all_logits).
        labels: label name -> value (JSON); empty = read the studies' dataset.json.
        preload: load the tools at start-up instead of on first use.
        policy: the agent's policy: "compact" (CPU-trainable network) or "vlm" (Qwen-VL from ``vlm_path``).
        agent_backend: the segmenter the agent drives.
        max_turns: default turn budget of an agent episode (executed actions).
        local_radius: in agent episodes (inference and training alike) and in a Slicer user's click sessions
            (a request adding one click to the previous request), a click's answer changes the mask only near
            the click, within this multiple of the mask's equivalent radius (``lib.tools.local_merge``; 0 = off,
            the answer replaces the mask). 0.5: issue 3's measurement (BENCHMARKS.md).
        policy_dir: where the served compact policy is published (default ``<app>/model/agent``).
        vlm_path: local folder of a Qwen3-VL / Qwen2.5-VL checkpoint for ``policy vlm``.
        models_dir: where adapted segmenter weights are published and loaded, one subfolder per backend
            (``<models_dir>/<backend>/adapted.pt``); default: each bundle's own ``models/`` folder.
        demo_policy: until a policy is trained, serve the demo policy shipped for the sample studies
            (``demo/agent_policy``); ``serve.sh`` turns it on only when it serves the sample studies.
    """

    backends: tuple[str, ...] = BACKENDS
    device: str = "cpu"
    threads: int = 0
    ct_window: tuple[float, float] = (40.0, 400.0)
    session_cache_mb: int = 512
    sam2_checkpoint: str = ""
    sam2_config: str = "configs/sam2.1/sam2.1_hiera_t.yaml"
    medsam2_checkpoint: str = ""
    prompting: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PROMPTING))
    labels: dict[str, int] = field(default_factory=dict)
    preload: bool = False
    policy: str = "compact"
    agent_backend: str = "litemedsam"
    max_turns: int = 5
    local_radius: float = DEFAULT_LOCAL_RADIUS
    policy_dir: str = ""
    vlm_path: str = ""
    demo_policy: bool = False
    models_dir: str = ""

    def __post_init__(self) -> None:
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"--conf backends: unknown {unknown}; choose from {', '.join(BACKENDS)}")
        for b, mode in self.prompting.items():
            try:
                Prompting(mode)
            except ValueError:
                raise ValueError(
                    f"--conf prompting: {b}={mode!r}; use one of {[p.value for p in Prompting]}"
                ) from None
        if self.policy not in ("compact", "vlm"):
            raise ValueError(f"--conf policy {self.policy!r}: use compact or vlm")
        if self.agent_backend not in BACKENDS:
            raise ValueError(f"--conf agent_backend {self.agent_backend!r}: choose from {', '.join(BACKENDS)}")
        if not 1 <= self.max_turns <= 20:
            raise ValueError(f"--conf max_turns must be between 1 and 20, got {self.max_turns}")
        if not (math.isfinite(self.local_radius) and self.local_radius >= 0):
            raise ValueError(f"--conf local_radius must be a number >= 0 (0 = off), got {self.local_radius}")
        if self.policy == "vlm" and not self.vlm_path:
            raise ValueError("--conf policy vlm needs --conf vlm_path /path/to/Qwen3-VL-checkpoint")
        if self.session_cache_mb <= 0:
            raise ValueError(f"--conf session_cache_mb must be > 0, got {self.session_cache_mb}")
        for name, v in self.labels.items():
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"--conf labels: value of {name!r} must be a positive integer, got {v!r}")

    @classmethod
    def parse(cls, conf: dict[str, str] | None) -> AppConf:
        """Build from MONAI Label's string conf dict; unknown keys are ignored (MONAI Label adds its own)."""
        conf = dict(conf or {})
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {}
        for key, raw in conf.items():
            if key not in known:
                continue
            v = str(raw)
            if key == "backends":
                kw[key] = tuple(b.strip() for b in v.split(",") if b.strip())
            elif key in ("threads", "session_cache_mb", "max_turns"):
                try:
                    kw[key] = int(v)
                except ValueError:
                    raise ValueError(f"--conf {key} {v!r}: expected an integer") from None
            elif key == "local_radius":
                try:
                    kw[key] = float(v)
                except ValueError:
                    raise ValueError(f"--conf local_radius {v!r}: expected a number, e.g. 0.5 (0 = off)") from None
            elif key == "ct_window":
                try:
                    level, width = (float(x) for x in v.split(","))
                except ValueError:
                    raise ValueError(f"--conf ct_window {v!r}: expected 'level,width' in HU, e.g. 40,400") from None
                kw[key] = (level, width)
            elif key in ("preload", "demo_policy"):
                kw[key] = _bool(key, v)
            elif key in ("prompting", "labels"):
                try:
                    parsed = json.loads(v)
                except json.JSONDecodeError as e:
                    raise ValueError(f"--conf {key}: not valid JSON ({e}); e.g. '{{\"liver\": 1}}'") from None
                if not isinstance(parsed, dict):
                    raise ValueError(f"--conf {key}: expected a JSON object")
                kw[key] = {**DEFAULT_PROMPTING, **parsed} if key == "prompting" else parsed
            else:
                kw[key] = v
        return cls(**kw)
