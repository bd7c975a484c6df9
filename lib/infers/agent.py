"""The agent as MONAI Label infer tasks.

- ``agent`` (type ``segmentation``): the agent segments the requested target on the requested slice by
  itself, turn by turn (box, corrective clicks, stop).
- ``agent_handoff`` (type ``deepgrow``): the user's box and clicks on the slice become the first actions;
  the agent continues from there.

Both return an integer label volume in the input's geometry (only the segmented slice filled, value =
the target's value in the app's label set) and JSON with the turns, every action (type, pixel
coordinates, predicted quality), the stop reason and latencies.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import replace
from typing import Any

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.agent.actions import Action, Box, Point
from lib.agent.env import SegmentationEnv
from lib.agent.policies.base import Policy, Prefixed
from lib.agent.policies.store import PolicyStore
from lib.agent.rollout import rollout
from lib.agent.settings import EpisodeSettings
from lib.data.ijk import request_to_slice_prompts
from lib.data.io import load_image, result_extension, save_label_like
from lib.data.slices import slice_key, volume_slice
from lib.infers.errors import client_errors
from lib.tools.provider import ToolProvider

logger = logging.getLogger(__name__)


class QualityRecorder(Policy):
    """Wraps a policy and records its predicted quality (``last_quality``) after every decision."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.name = policy.name
        self.qualities: list[float | None] = []

    def reset(self, obs, info, seed=None) -> None:
        super().reset(obs, info, seed)
        self.qualities = []
        self.policy.reset(obs, info, seed)

    def act(self, obs, info):
        action = self.policy.act(obs, info)
        q = getattr(self.policy, "last_quality", None)
        self.qualities.append(None if q is None else float(q))
        self.stop_reason = self.policy.stop_reason
        return action

    def episode_meta(self):
        return self.policy.episode_meta()


def target_of(request: dict, labels: dict[str, int]) -> tuple[str, int]:
    """The target label (``target`` or Slicer's ``label``), validated against the app's label set."""
    name = request.get("target") or request.get("label")
    if not name:
        raise ValueError(f"say which structure to segment: send `label` (one of {sorted(labels)})")
    if name not in labels:
        raise ValueError(f"unknown label {name!r}; valid labels: {sorted(labels)}")
    return str(name), labels[name]


def handoff_actions(request: dict, size_ijk) -> tuple[int | None, list[Action]]:
    """The user's roi box, then clicks, as the first actions of the episode (pixels of the slice)."""
    prompts = request_to_slice_prompts(request, size_ijk)
    actions: list[Action] = []
    if prompts.box is not None:
        x0, y0, x1, y1 = prompts.box
        actions.append(Box(x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
    actions += [Point(x, y, bool(lab)) for (x, y), lab in zip(prompts.points, prompts.labels)]
    return prompts.slice_index, actions


class AgentInfer(InferTask):
    """Runs one agent episode on one slice.

    Args:
        provider: the segmentation backend the agent drives.
        store: the published policy (reloaded when training publishes a new one).
        labels: the app's label set (name -> value).
        handoff: False = ``agent`` (autonomous), True = ``agent_handoff``.
        settings: the served episode settings (prompting for this backend, local merge radius, default turn
            budget — a request may send ``max_turns`` 1..20 —, CT window). A policy trained with other
            settings is still served, with a logged warning and ``settings_mismatch`` in the result.
        train_hint: what to tell the user when no policy is trained for the requested label.
    """

    def __init__(self, provider: ToolProvider, store: PolicyStore, labels: dict[str, int],
                 settings: EpisodeSettings | None = None, handoff: bool = False,
                 train_hint: str = "train one with POST /train/agent_sft") -> None:
        super().__init__(
            type=InferType.DEEPGROW if handoff else InferType.SEGMENTATION,
            labels=labels,
            dimension=2,
            description=(f"Agent over {provider.name}: your box/clicks start it, it refines and stops"
                         if handoff else f"Agent over {provider.name}: segments the chosen label on this slice "
                         "by itself (box, corrective clicks, stop)"),
        )
        self.provider, self.store, self.handoff = provider, store, handoff
        self.settings = settings or EpisodeSettings()
        self.env_config = self.settings.env_config(provider.name)
        self.train_hint = train_hint
        self._checked: tuple[int, list[str]] | None = None

    def is_valid(self) -> bool:
        return self.provider.checkpoint_problem() is None

    def __call__(self, request: dict[str, Any]):
        t0 = time.perf_counter()
        with client_errors("agent_handoff" if self.handoff else "agent"):
            name, value = target_of(request, self.labels)
            policy = self.store.get()
            if policy is None or name not in getattr(policy, "labels", {name: 0}):
                trained = sorted(getattr(policy, "labels", {})) if policy is not None else []
                raise HTTPException(status_code=409, detail=(
                    f"no trained agent policy for label {name!r} (trained labels: {trained or 'none'}); "
                    f"{self.train_hint} once images with final labels of {name!r} are in the datastore, "
                    "or run scripts/train_sft.py and put the checkpoint in the app's model/agent folder"))
            vol = load_image(request["image"])
            size_ijk = tuple(reversed(vol.spatial_shape))
            if self.handoff:
                slice_index, prefix = handoff_actions(request, size_ijk)
            else:
                slice_index, prefix = self._slice(request, vol), []
            max_turns = int(request.get("max_turns", self.env_config.max_turns))
            if not 1 <= max_turns <= 20:
                raise ValueError(f"max_turns must be between 1 and 20, got {max_turns}")
            mismatch = self.settings_mismatch(policy)
            win = self.settings.windowing(vol.modality)
            pixels = volume_slice(vol, slice_index, win)  # the policy looks at the same windowed slice
            session, cached = self.provider.session(slice_key(vol, slice_index, win), lambda: pixels)
            env = SegmentationEnv(self.provider.tool, replace(self.env_config, max_turns=max_turns))
            with self.store.episode_lock:
                recorder = QualityRecorder(policy)
                agent = Prefixed(prefix, recorder) if prefix else recorder
                seed = int(request.get("seed", 0))
                traj = rollout(env, agent, {"image": pixels, "session": session, "target": name,
                                            "meta": {"slice_index": slice_index}}, seed=seed)
                qualities = [None] * len(prefix) + recorder.qualities
            mask = _final_mask(traj, vol.spatial_shape if slice_index is None else vol.spatial_shape[1:])
            label = np.zeros(vol.spatial_shape, dtype=np.uint8)
            if slice_index is None:
                label[mask] = value
            else:
                label[slice_index][mask] = value
            ext = request.get("result_extension") or result_extension(vol)
            path = save_label_like(label, vol, tempfile.NamedTemporaryFile(suffix=ext, delete=False).name)
        actions = [dict(a, predicted_quality=q) for a, q in zip(traj.actions, qualities)]
        executed = [a for a in traj.actions if a.get("type") in ("box", "point") and "invalid" not in a]
        quality = next((q for q in reversed(qualities) if q is not None), None)
        return str(path), {
            "label_names": {name: value},
            "target": name,
            "slice": slice_index,
            "turns": len(executed),
            "actions": actions,
            "stop_reason": traj.stop_reason,
            "predicted_quality": quality,
            "handoff_actions": len(prefix),
            "backend": self.provider.name,
            "policy": getattr(policy, "name", type(policy).__name__),
            **({"settings_mismatch": mismatch} if mismatch else {}),
            "latencies": {
                "encoder_ms": 0.0 if cached else session.encoder_ms,
                "decoder_ms": traj.timings.get("decoder_ms", 0.0),
                "policy_ms": traj.timings.get("policy_ms", 0.0),
                "total_ms": (time.perf_counter() - t0) * 1e3,
                "embedding_cached": cached,
            },
        }

    def settings_mismatch(self, policy: Policy) -> list[str]:
        """Where the served settings differ from those ``policy`` was trained with (``policy.episode``);
        logged once per loaded policy. Policies that record none (the VLM, test doubles) are not checked."""
        recorded = getattr(policy, "episode", None)
        if recorded is None:
            return []
        if self._checked is None or self._checked[0] != id(policy):
            diff = self.settings.differences(recorded, self.provider.name)
            if diff:
                logger.warning("the agent policy was trained with other episode settings than the server serves "
                               "(retrain with agent_sft, or serve its settings with --conf): %s", "; ".join(diff))
            self._checked = (id(policy), diff)
        return self._checked[1]

    @staticmethod
    def _slice(request: dict, vol) -> int | None:
        """The slice to segment: ``slice`` of the request, else the middle slice of a 3D volume."""
        if not vol.is_3d:
            return None
        k = request.get("slice")
        k = vol.num_slices // 2 if k is None or int(k) < 0 else int(k)
        if not 0 <= k < vol.num_slices:
            raise ValueError(f"slice {k} is outside the image (it has {vol.num_slices} slices along k)")
        return k


def _final_mask(traj, shape) -> np.ndarray:
    from lib.agent.trajectories import rle_decode

    return rle_decode(traj.final_mask) if traj.final_mask else np.zeros(shape, dtype=bool)
