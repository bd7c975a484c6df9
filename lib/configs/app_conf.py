"""Typed parsing of the app's ``--conf key value`` strings, done once, in one place.

MONAI Label passes every ``--conf`` value as a string (and exports them to train/scoring
subprocesses through the environment); ``AppConf.parse`` turns them into typed, validated fields.
The README's administrator table documents these keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from lib.agent.settings import EpisodeSettings, parse_ct_window
from lib.tools.encoder_runtime import RUNTIMES
from lib.tools.registry import BACKENDS

TRUE = {"1", "true", "yes", "on", "y", "t"}
FALSE = {"0", "false", "no", "off", "n", "f", ""}

#: the conf keys that fill ``AppConf.episode`` (``lib.agent.settings.EpisodeSettings``, its defaults)
EPISODE_KEYS = ("prompting", "local_radius", "max_turns", "ct_window", "box_jitter")
#: what the ``agent`` / ``agent_handoff`` tasks segment: the whole structure through the volume, or one slice
SCOPES = ("volume", "slice")


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
        encoder_runtime: LiteMedSAM image-encoder runtime: auto (fastest installed) | torch | onnxruntime | openvino.
            Every LiteMedSAM the app builds uses it: the infer tasks, the agent trainers, litemedsam_interactive.
        session_cache_mb: memory for cached slice embeddings (LRU), MiB.
        sam2_checkpoint / sam2_config: user-supplied SAM 2.1 checkpoint and Hydra config.
        medsam2_checkpoint: user-supplied MedSAM2_latest.pt.
        episode: how agent episodes are played, for inference and the in-server trainers alike
            (``EpisodeSettings``), from the conf keys ``prompting`` (per-backend JSON: newest | all |
            all_logits), ``local_radius`` (a click's answer changes the mask only near the click, within
            this multiple of the mask's equivalent radius; 0 = off; also used by a Slicer user's click
            sessions), ``max_turns`` (turn budget of an agent episode), ``ct_window`` (level,width in HU
            before a tool or the policy sees a CT slice) and ``box_jitter``.
        labels: label name -> value (JSON); empty = read the studies' dataset.json.
        preload: load the tools at start-up instead of on first use.
        policy: the agent's policy: "compact" (CPU-trainable network) or "vlm" (Qwen-VL from ``vlm_path``).
        agent_backend: the segmenter the agent drives.
        policy_dir: where the served compact policy is published (default ``<app>/model/agent``).
        vlm_path: local folder of a Qwen3-VL / Qwen2.5-VL checkpoint for ``policy vlm``.
        models_dir: where adapted segmenter weights are published and loaded, one subfolder per backend
            (``<models_dir>/<backend>/adapted.pt``); default: each bundle's own ``models/`` folder.
        demo_policy: until a policy is trained, serve the demo policy shipped for the sample studies
            (``demo/agent_policy``); ``serve.sh`` turns it on only when it serves the sample studies.
        scope: what ``agent`` / ``agent_handoff`` return by default (a request may send ``scope``):
            "volume" = the structure through the whole 3D image from one seed slice, "slice" = the seed slice only.
        stop_quality: quality-gated stop of the compact policy: "" = its learned stop (default); "auto" = stop when
            its calibrated quality reaches the threshold validated with its calibration (the learned stop where the
            checkpoint has none); a number in (0, 1] = that threshold.
    """

    backends: tuple[str, ...] = BACKENDS
    device: str = "cpu"
    threads: int = 0
    encoder_runtime: str = "auto"
    session_cache_mb: int = 512
    sam2_checkpoint: str = ""
    sam2_config: str = "configs/sam2.1/sam2.1_hiera_t.yaml"
    medsam2_checkpoint: str = ""
    episode: EpisodeSettings = field(default_factory=EpisodeSettings)
    labels: dict[str, int] = field(default_factory=dict)
    preload: bool = False
    policy: str = "compact"
    agent_backend: str = "litemedsam"
    policy_dir: str = ""
    vlm_path: str = ""
    demo_policy: bool = False
    models_dir: str = ""
    scope: str = "volume"
    stop_quality: str = ""

    def __post_init__(self) -> None:
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"--conf backends: unknown {unknown}; choose from {', '.join(BACKENDS)}")
        if self.encoder_runtime not in RUNTIMES:
            raise ValueError(f"--conf encoder_runtime {self.encoder_runtime!r}: use one of {', '.join(RUNTIMES)}")
        if self.policy not in ("compact", "vlm"):
            raise ValueError(f"--conf policy {self.policy!r}: use compact or vlm")
        if self.agent_backend not in BACKENDS:
            raise ValueError(f"--conf agent_backend {self.agent_backend!r}: choose from {', '.join(BACKENDS)}")
        if self.policy == "vlm" and not self.vlm_path:
            raise ValueError("--conf policy vlm needs --conf vlm_path /path/to/Qwen3-VL-checkpoint")
        if self.scope not in SCOPES:
            raise ValueError(f"--conf scope {self.scope!r}: use one of {', '.join(SCOPES)} (volume = the whole "
                             "structure in 3D, slice = one slice)")
        if self.stop_quality not in ("", "auto"):
            try:
                ok = 0 < float(self.stop_quality) <= 1
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"--conf stop_quality {self.stop_quality!r}: use auto or a number in (0, 1] "
                                 "(empty = the policy's learned stop)")
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
        episode: dict[str, Any] = {}
        for key, raw in conf.items():
            if key in EPISODE_KEYS:
                episode[key] = _episode_value(key, str(raw))
                continue
            if key not in known or key == "episode":
                continue
            v = str(raw)
            if key == "backends":
                kw[key] = tuple(b.strip() for b in v.split(",") if b.strip())
            elif key in ("threads", "session_cache_mb"):
                try:
                    kw[key] = int(v)
                except ValueError:
                    raise ValueError(f"--conf {key} {v!r}: expected an integer") from None
            elif key in ("encoder_runtime", "scope", "stop_quality"):
                kw[key] = v.strip().lower()
            elif key in ("preload", "demo_policy"):
                kw[key] = _bool(key, v)
            elif key == "labels":
                kw[key] = _json_object(key, v, '{"liver": 1}')
            else:
                kw[key] = v
        try:
            kw["episode"] = EpisodeSettings(**episode)
        except ValueError as e:
            raise ValueError(f"--conf {e}") from None
        return cls(**kw)


def _json_object(key: str, v: str, example: str) -> dict:
    try:
        parsed = json.loads(v)
    except json.JSONDecodeError as e:
        raise ValueError(f"--conf {key}: not valid JSON ({e}); e.g. '{example}'") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"--conf {key}: expected a JSON object, e.g. '{example}'")
    return parsed


def _episode_value(key: str, v: str) -> Any:
    """One ``EpisodeSettings`` conf value from its string; the dataclass validates the range."""
    if key == "prompting":
        return _json_object(key, v, '{"litemedsam": "all"}')
    if key == "ct_window":
        return parse_ct_window(v)
    try:
        return int(v) if key == "max_turns" else float(v)
    except ValueError:
        raise ValueError(f"--conf {key} {v!r}: expected a number") from None
