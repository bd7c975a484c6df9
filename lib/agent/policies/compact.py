"""``CompactPolicy``: the small CPU policy (docs/architecture.md), trained by SFT then GRPO (lib.learning).

It sees what any policy sees (``obs["image"]``, ``obs["mask"]``, ``info["actions"]``, ``info["turn"]``,
``info["target"]``), never the ground truth and never a backend's embedding, so the same checkpoint drives
any tool. Settings, frame and channels: ``compact_config``; input planes: ``compact_state``; action codec:
``compact_codec``; network: ``compact_net``; action distribution: ``compact_dist`` (all in ``lib.agent.policies``).

After every ``act`` it exposes ``last_quality`` (the value head: predicted IoU in [0, 1] of the mask it
was shown, i.e. the mask BEFORE the action it returns; at Stop, the answer's quality) and
``last_log_prob`` (log-probability of the returned action under the temperature it was drawn with).
With a ``QualityCalibration`` (``lib.agent.quality``, fitted on validation cases by ``scripts/calibrate_quality.py``
and stored in ``policy.json``) ``last_quality`` is the calibrated value (a blend of the value head and the tool's
IoU output of the same mask) and ``last_quality_raw`` the head's own;
``stop_quality`` turns on the quality-gated stop (Stop as soon as the mask shown is judged at least that good).

Latency (256², 1.3 M parameters, measured on this project's 2-core CPU): 24-28 ms per decision with one torch
thread. With two threads while another process keeps a core busy, torch's intra-op threads spin and one
decision took 1.4 s, so serve it with ``torch.set_num_threads(1)`` unless the cores are otherwise idle.

A checkpoint is a folder with ``policy.pt`` (a plain state dict, ``torch.load(weights_only=True)``) and
``policy.json`` (architecture, ``labels`` {name: id}, preprocessing, provenance, and the SHA-256 of
``policy.pt`` so a reader never pairs the weights of one publish with the config of another).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lib.agent.actions import Action, Stop, to_dict
from lib.agent.policies.base import Policy
from lib.agent.policies.compact_codec import ActionCode, decode_action
from lib.agent.policies.compact_config import CHANNELS, KINDS, STOP, CompactConfig
from lib.agent.policies.compact_dist import choose, log_prob
from lib.agent.policies.compact_net import CompactNet, n_parameters
from lib.agent.policies.compact_state import resize_plane, state_features
from lib.agent.quality import QualityCalibration
from lib.data.label_names import resolve

FORMAT = "medsam-agent-compact-policy"
FORMAT_VERSION = 1
WEIGHTS, CONFIG = "policy.pt", "policy.json"


def _check_labels(labels: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(f"labels must be a non-empty {{name: id}} mapping, got {labels!r}")
    out: dict[str, int] = {}
    for name, value in labels.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"label names must be non-empty strings, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"label {name!r} must map to an integer id, got {value!r}")
        out[name] = int(value)
    if len(set(out.values())) != len(out):
        raise ValueError(f"label ids must be unique, got {out}")
    return out


class CompactPolicy(Policy):
    """A learned policy over Box / Point / Stop for one target label at a time.

    Args:
        labels: the policy's label set {name: id}; the embedding row of a label is its rank by id, so
            ids need not be contiguous.
        config: architecture (``CompactConfig``).
        device: torch device of the network.
        greedy: True = argmax of every factor (deployment, evaluation: deterministic); False = sample
            with ``temperature`` (RL rollouts).
        temperature: sampling temperature of the action kind (ignored when greedy).
        coord_temperature: sampling temperature of box corners and click cells (None = ``temperature``).
            RL samples locations cooler than kinds: a box drawn at temperature 1 is much worse than the
            greedy one, which makes "stop" look better than the refinement the greedy policy would make.
        stop_on_repeat: a greedy policy that would repeat its last executed prompt stops instead: the
            same prompt cannot fix the mask and would only burn turns until the budget ends.
        provenance: JSON-ready facts about training (data, steps, metrics, seed, timestamps).
        calibration: the map from the value head's raw quality to the served one (None = raw).
        stop_quality: quality-gated stop: a greedy policy stops (reason "quality") when the (calibrated) quality of
            a non-empty mask it is shown is at least this; None = the learned stop only; "auto" = the threshold
            chosen on validation and stored with the calibration (``fitted_on["stop_threshold"]``).

    Attributes:
        last_quality: predicted IoU of the mask shown at the last ``act`` (calibrated when ``calibration`` is set;
            None before the first).
        last_quality_raw: the value head's own prediction at the last ``act``.
        last_log_prob: log-probability of the last returned action.
        recording: when True every decision is appended to ``trace`` (input tensor, label, turn, action
            code, log-prob, and the true IoU of the mask when the env knows the ground truth; that IoU is a
            training target for the value head and is never used to decide).
    """

    name = "compact"

    def __init__(self, labels: Mapping[str, int], config: CompactConfig | None = None, device: str = "cpu",
                 greedy: bool = True, temperature: float = 1.0, coord_temperature: float | None = None,
                 stop_on_repeat: bool = True,
                 provenance: Mapping[str, Any] | None = None, episode: Mapping[str, Any] | None = None,
                 calibration: QualityCalibration | None = None, stop_quality: float | str | None = None) -> None:
        self._labels = _check_labels(labels)
        ranked = sorted(self._labels.items(), key=lambda kv: (kv[1], kv[0]))
        self._index = {name: i for i, (name, _) in enumerate(ranked)}
        self.config = config or CompactConfig()
        self.device = torch.device(device)
        self.net = CompactNet(self.config, len(self._labels)).to(self.device).eval()
        self.greedy = bool(greedy)
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)
        if coord_temperature is not None and not float(coord_temperature) > 0:
            raise ValueError(f"coord_temperature must be > 0, got {coord_temperature!r}")
        self.coord_temperature = None if coord_temperature is None else float(coord_temperature)
        self.stop_on_repeat = bool(stop_on_repeat)
        self.provenance: dict[str, Any] = dict(provenance or {})
        #: the episode settings it was trained with (``EpisodeSettings.record``); empty = not recorded
        self.episode: dict[str, Any] = dict(episode or {})
        self.calibration = calibration
        self.stop_quality = self._stop_threshold(stop_quality)
        self.last_quality: float | None = None
        self.last_quality_raw: float | None = None
        self.last_log_prob: float | None = None
        self.recording = False
        self.trace: list[dict[str, Any]] = []
        self._image_s: np.ndarray | None = None
        self._label: int | None = None
        self._gen = torch.Generator().manual_seed(0)

    # -- labels --------------------------------------------------------------------------------------
    @property
    def labels(self) -> dict[str, int]:
        """The label set {name: id} the policy was trained with (a copy)."""
        return dict(self._labels)

    def label_index(self, name: str) -> int:
        """Embedding row of a label name, as ``lib.data.label_names.resolve`` reads it ("Right Kidney", "RK" and
        "kidney_right" are one label; nothing fuzzier)."""
        known = resolve(str(name), self._index)
        if known is not None:
            return self._index[known]
        raise ValueError(f"target {name!r} is not in this policy's label set {sorted(self._labels)}; "
                         "train the policy on it (agent_sft) or pick one of those labels")

    def _stop_threshold(self, value: float | str | None) -> float | None:
        if value is None:
            return None
        if value == "auto":
            stored = (self.calibration.fitted_on.get("stop_threshold") if self.calibration is not None else None)
            if stored is None:
                raise ValueError("stop_quality='auto' needs a quality calibration with a validated stop threshold; "
                                 "fit one with scripts/calibrate_quality.py --checkpoint DIR")
            value = stored
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
            raise ValueError(f"stop_quality must be None, 'auto' or a number in (0, 1], got {value!r}")
        return float(value)

    def quality(self, raw: float, info: Mapping[str, Any] | None = None) -> float:
        """The served quality of a raw value-head output: calibrated when a calibration is set, blended with the
        tool's IoU output of the same mask (``info["scores"][-1]``, the last executed action's) where it uses one."""
        if self.calibration is None:
            return float(raw)
        scores = (info or {}).get("scores") or []
        return self.calibration(raw, float(scores[-1]) if scores else None)

    # -- acting --------------------------------------------------------------------------------------
    def reset(self, obs: Mapping[str, Any], info: Mapping[str, Any], seed: int | None = None) -> None:
        super().reset(obs, info, seed)
        self._label = self.label_index(str(info.get("target", "")))
        # the slice does not change within an episode: resample it to the policy frame once
        self._image_s = resize_plane(np.asarray(obs["image"], dtype=np.float32), self.config.size)
        self._gen = torch.Generator().manual_seed(int(seed) & 0x7FFFFFFF if seed is not None else
                                                  int(torch.randint(0, 2**31 - 1, (1,))))
        self.last_quality = None
        self.last_quality_raw = None
        self.last_log_prob = None

    def features(self, obs: Mapping[str, Any], info: Mapping[str, Any]) -> tuple[torch.Tensor, int, int]:
        """(input (C, S, S) float32 tensor, label index, turn) of the current state."""
        if self._image_s is None or self._label is None:
            raise RuntimeError("call reset(obs, info) before act()")
        x = state_features(self._image_s, np.asarray(obs["mask"]), info.get("actions", []), self.config,
                           info.get("prior"))
        return torch.from_numpy(x), self._label, int(info.get("turn", 0))

    def _forward(self, x: torch.Tensor, label: int, turn: int) -> dict[str, torch.Tensor]:
        out = self.net(x[None].to(self.device), torch.tensor([label], device=self.device),
                       torch.tensor([turn], device=self.device))
        return {k: v.float().cpu() for k, v in out.items()}

    def assess(self, obs: Mapping[str, Any], info: Mapping[str, Any]) -> float:
        """The (calibrated) predicted quality of the current mask, without choosing an action."""
        x, label, turn = self.features(obs, info)
        with torch.inference_mode():
            return self.quality(float(torch.sigmoid(self._forward(x, label, turn)["quality"][0])), info)

    def act(self, obs: Mapping[str, Any], info: Mapping[str, Any]) -> Action:
        x, label, turn = self.features(obs, info)
        with torch.inference_mode():
            out = self._forward(x, label, turn)
            code = choose(out, self.greedy, self.temperature, self._gen, self.coord_temperature)
            t, tc = (1.0, 1.0) if self.greedy else (self.temperature, self.coord_temperature)
            lp = log_prob(out, torch.tensor([code.kind]), torch.tensor([code.box]), torch.tensor([code.cell]), t, tc)
        self.last_quality_raw = float(torch.sigmoid(out["quality"][0]))
        self.last_quality = self.quality(self.last_quality_raw, info)
        self.last_log_prob = float(lp[0])
        shape = tuple(int(s) for s in np.asarray(obs["mask"]).shape)
        action = decode_action(code, shape, self.config)
        if self.recording:
            ious = info.get("ious")
            iou_now = (float(ious[-1]) if ious else 0.0) if ious is not None else None
            self.trace.append({"x": x, "label": label, "turn": turn, "kind": code.kind, "box": code.box,
                               "cell": code.cell, "logp": self.last_log_prob, "iou": iou_now})
        elif (self.stop_quality is not None and self.greedy and code.kind != STOP
              and self.last_quality >= self.stop_quality and np.asarray(obs["mask"]).any()):
            self.stop_reason = "quality"
            return Stop()
        elif self.stop_on_repeat and self.greedy and code.kind != STOP and _repeats(action, info):
            self.stop_reason = "repeat"
            return Stop()
        if code.kind == STOP:
            self.stop_reason = "policy"
        return action

    def episode_meta(self) -> dict[str, Any]:
        return {"last_quality": self.last_quality}

    # -- persistence ---------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """``policy.json`` content (without the weights hash)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "policy": self.name,
            "architecture": self.config.to_dict(),
            "parameters": n_parameters(self.net),
            "labels": self.labels,
            "label_order": sorted(self._labels, key=lambda n: self._index[n]),
            "kinds": list(KINDS),
            "preprocessing": {
                "input": "obs['image']: the windowed (H, W) slice, float in [0, 1] (lib.data.slices.windowing_for "
                         "with the CT window under 'episode', as the environment receives it)",
                "resize": f"bilinear, align_corners geometry, to {self.config.size}x{self.config.size}",
                "channels": list(self.config.channels),
                "coordinates": "pixel (x, y) = (column, row); box bins and click cells in align_corners geometry",
            },
            "episode": dict(self.episode),
            "quality_calibration": None if self.calibration is None else self.calibration.to_dict(),
            "provenance": dict(self.provenance),
        }

    def save(self, ckpt_dir: str | Path, provenance: Mapping[str, Any] | None = None) -> Path:
        """Write ``policy.pt`` + ``policy.json`` into ``ckpt_dir`` (created). Publish a finished folder with
        ``lib.learning.checkpoint.publish`` so readers never see a half-written one."""
        ckpt = Path(ckpt_dir)
        ckpt.mkdir(parents=True, exist_ok=True)
        if provenance:
            self.provenance.update(dict(provenance))
        self.provenance.setdefault("saved_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.net.state_dict().items()}, buf)
        blob = buf.getvalue()
        meta = {**self.describe(), "weights_sha256": hashlib.sha256(blob).hexdigest()}
        _write_atomic(ckpt / WEIGHTS, blob)
        _write_atomic(ckpt / CONFIG, (json.dumps(meta, indent=1) + "\n").encode())
        return ckpt

    @classmethod
    def load(cls, ckpt_dir: str | Path, device: str = "cpu", **kwargs: Any) -> CompactPolicy:
        """Read a checkpoint folder; ``kwargs`` go to the constructor (``greedy``, ``temperature``, ...).

        Raises:
            FileNotFoundError: ``policy.pt`` or ``policy.json`` is missing.
            ValueError: the folder holds another format, or weights and config do not match.
        """
        ckpt = Path(ckpt_dir)
        missing = [n for n in (WEIGHTS, CONFIG) if not (ckpt / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"no compact policy checkpoint in {ckpt}: missing {', '.join(missing)} (a checkpoint is a folder "
                f"with {WEIGHTS} + {CONFIG}; train one with scripts/train_sft.py --out {ckpt} or the agent_sft task)")
        for _ in range(3):  # a publish may swap the folder between the two reads: read again
            meta = json.loads((ckpt / CONFIG).read_text(encoding="utf-8"))
            blob = (ckpt / WEIGHTS).read_bytes()
            if meta.get("weights_sha256") in (None, hashlib.sha256(blob).hexdigest()):
                break
        else:
            raise ValueError(f"{ckpt / WEIGHTS} does not match the weights_sha256 in {ckpt / CONFIG}; re-publish it")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{ckpt / CONFIG} is not a compact policy (format {meta.get('format')!r}, "
                             f"expected {FORMAT!r})")
        arch = dict(meta["architecture"])
        arch["widths"] = tuple(arch["widths"])
        calibration = meta.get("quality_calibration")
        kwargs.setdefault("calibration", None if not calibration else QualityCalibration.from_dict(calibration))
        policy = cls(meta["labels"], CompactConfig(**arch), device=device,
                     provenance=meta.get("provenance", {}), episode=meta.get("episode"), **kwargs)
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        policy.net.load_state_dict(state, strict=True)
        policy.net.to(policy.device).eval()
        return policy

    def copy(self, config: CompactConfig | None = None) -> CompactPolicy:
        """An independent copy (weights included), e.g. the frozen reference of KL regularisation.

        ``config``: the copy's architecture when it differs from this one by the ``prior`` input channel only
        (a checkpoint trained without it, warm-starting one that reads it): an added channel starts with zero
        weights, so the copy decides exactly as this policy until it is trained; a removed one is dropped."""
        config = self.config if config is None else config
        if dataclasses.replace(config, prior=self.config.prior) != self.config:
            raise ValueError(f"a copy may change CompactConfig.prior only; {config} differs from {self.config}")
        other = CompactPolicy(self._labels, config, device=str(self.device), greedy=self.greedy,
                              temperature=self.temperature, coord_temperature=self.coord_temperature,
                              stop_on_repeat=self.stop_on_repeat,
                              provenance=self.provenance, episode=self.episode, calibration=self.calibration,
                              stop_quality=self.stop_quality)
        state = self.net.state_dict()
        if config.prior != self.config.prior:
            stem = "stem.0.weight"  # (out, C + 2 coordinate planes, k, k): the data channels first, then x, y
            w, n = state[stem], len(CHANNELS)
            extra = torch.zeros_like(w[:, :1])
            state = {**state, stem: torch.cat([w[:, :n], extra, w[:, n:]] if config.prior
                                              else [w[:, :n], w[:, n + 1:]], dim=1)}
        other.net.load_state_dict(state)
        return other


def _repeats(action: Action, info: Mapping[str, Any]) -> bool:
    executed = [a for a in info.get("actions", []) if a.get("type") != "stop" and "invalid" not in a]
    return bool(executed) and executed[-1] == to_dict(action)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = ["ActionCode", "CompactConfig", "CompactPolicy"]
