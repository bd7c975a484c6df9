"""The agent as MONAI Label infer tasks.

- ``agent`` (type ``segmentation``): the agent segments the requested target by itself, turn by turn (box,
  corrective clicks, stop), starting on the requested ``slice`` (default: the middle slice).
- ``agent_handoff`` (type ``deepgrow``): the user's box and clicks on one slice become the first actions;
  the agent continues from there.

Scope (``--conf scope``, default ``volume``; a request may send ``scope``):

- ``volume``: that slice is the seed of a volume episode (``lib.agent.volume.VolumeEpisode``): the agent
  propagates the structure slice by slice both ways, reviews each slice, and stops where the structure ends.
  The label holds every kept slice.
- ``slice``: one slice episode; the label holds that slice only (the behaviour before volume episodes).

Both return an integer label volume in the input's geometry (value = the target's value in the app's label
set) and JSON with the seed slice's turns, every action (type, pixel coordinates, the quality the policy predicted
for the mask it was shown before it), ``quality`` (the policy's estimated IoU of the final mask on the seed slice,
calibrated on validation cases when ``quality_calibrated``; ``quality_meaning`` says so in words), the stop reason
and latencies; in volume scope also the visited and kept slices, corrective actions, one record per
slice and where/why each direction ended. A 2D image is always one slice.
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
from lib.agent.policies.base import Policy, Prefixed, StopPolicy
from lib.agent.policies.store import PolicyStore
from lib.agent.quality import QUALITY_MEANING
from lib.agent.rollout import rollout
from lib.agent.settings import EpisodeSettings
from lib.agent.volume import VolumeConfig, VolumeEpisode, VolumeResult
from lib.configs.app_conf import SCOPES
from lib.data.ijk import request_to_slice_prompts
from lib.data.intensity import Windowing
from lib.data.io import Volume, load_image, result_extension, save_label_like
from lib.data.label_names import resolve
from lib.data.slices import slice_key, volume_slice
from lib.infers.errors import client_errors
from lib.tools.provider import ToolProvider

logger = logging.getLogger(__name__)


class WindowedVolume:
    """A (K, J, I) volume as a volume episode takes it: slice k windowed with the served settings exactly as a
    single-slice request windows it (``volume_slice``), so both share session-cache keys and embeddings. Each
    slice is windowed once, on first access: a volume episode only reads the slices it visits.
    """

    def __init__(self, vol: Volume, windowing: Windowing) -> None:
        self.vol, self.windowing = vol, windowing
        self.shape = tuple(int(n) for n in vol.spatial_shape)
        self._slices: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, k: int) -> np.ndarray:
        k = int(k)
        if k not in self._slices:  # two threads may both window a slice: same pixels, last one kept
            self._slices[k] = volume_slice(self.vol, k, self.windowing)
        return self._slices[k]


def scope_of(request: dict, default: str) -> str:
    """The request's ``scope`` (``volume`` or ``slice``), else the app's ``--conf scope``."""
    raw = request.get("scope")
    if raw is None or raw == "":
        return default
    scope = str(raw).strip().lower()
    if scope not in SCOPES:
        raise ValueError(f"scope {raw!r} is not valid; use one of {', '.join(repr(s) for s in SCOPES)} "
                         "('volume' = the whole structure in 3D from this slice, 'slice' = this slice only)")
    return scope


def target_of(request: dict, labels: dict[str, int]) -> tuple[str, int]:
    """The target label (``target`` or Slicer's ``label``) as the app's label set spells it ("Right Kidney" and
    "RK" are ``kidney_right``: ``lib.data.label_names.resolve``), and its value."""
    name = request.get("target") or request.get("label")
    if not name:
        raise ValueError(f"say which structure to segment: send `label` (one of {sorted(labels)})")
    known = resolve(str(name), labels)
    if known is None:
        raise ValueError(f"unknown label {name!r}; valid labels: {sorted(labels)}")
    return known, labels[known]


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
    """Runs the agent on a volume (default) or one slice; see the module docstring for the two scopes.

    Args:
        provider: the segmentation backend the agent drives.
        store: the published policy (reloaded when training publishes a new one).
        labels: the app's label set (name -> value).
        handoff: False = ``agent`` (autonomous), True = ``agent_handoff``.
        settings: the served episode settings (prompting for this backend, local merge radius, default turn
            budget — a request may send ``max_turns`` 1..20; in volume scope it is the budget of every slice —,
            CT window). A policy trained with other settings is still served, with a logged warning and
            ``settings_mismatch`` in the result.
        train_hint: what to tell the user when no policy is trained for the requested label.
        scope: default scope (``--conf scope``): "volume" or "slice"; a request may send ``scope``.
        volume_config: propagation and end rule of volume episodes (``VolumeConfig`` defaults).
        progress_every: in volume scope, log progress every this many slices.
    """

    def __init__(self, provider: ToolProvider, store: PolicyStore, labels: dict[str, int],
                 settings: EpisodeSettings | None = None, handoff: bool = False,
                 train_hint: str = "train one with POST /train/agent_sft", scope: str = "volume",
                 volume_config: VolumeConfig | None = None, progress_every: int = 10) -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope {scope!r}: use one of {', '.join(SCOPES)}")
        what = "the whole structure in 3D" if scope == "volume" else "this slice"
        super().__init__(
            type=InferType.DEEPGROW if handoff else InferType.SEGMENTATION,
            labels=labels,
            # 2 for Slicer: it then sends the prompts of the current slice only (a hand-off starts on one
            # slice) and adds the returned label, every slice of it, to the segment
            dimension=2,
            # Slicer shows it in Options (infer, this model) as a choice, the server's default first, and sends it
            config={"scope": [scope, *(s for s in SCOPES if s != scope)],
                    # the autonomous agent's target, chosen in the viewer's Options (OHIF sends no segment name
                    # with Auto-Segmentation); empty = the request's own ``label``
                    **({} if handoff else {"label": ["", *labels]})},
            description=(f"Agent over {provider.name}: your box/clicks on a slice start it, it refines and "
                         f"segments {what} (request scope: volume | slice)"
                         if handoff else f"Agent over {provider.name}: segments the chosen label by itself "
                         f"(box, corrective clicks, stop), {what} (request scope: volume | slice)"),
        )
        self.provider, self.store, self.handoff = provider, store, handoff
        self.settings = settings or EpisodeSettings()
        self.env_config = self.settings.env_config(provider.name)
        self.train_hint = train_hint
        self.scope = scope
        self.volume_config = volume_config or VolumeConfig()
        self.progress_every = max(1, int(progress_every))
        self._checked: tuple[int, list[str]] | None = None

    def is_valid(self) -> bool:
        return self.provider.checkpoint_problem() is None

    def __call__(self, request: dict[str, Any]):
        t0 = time.perf_counter()
        with client_errors("agent_handoff" if self.handoff else "agent"):
            name, value = target_of(request, self.labels)
            scope = scope_of(request, self.scope)
            policy = self.store.get()
            trained = getattr(policy, "labels", None) if policy is not None else {}
            untrained = trained is not None and resolve(name, trained) is None
            vol = load_image(request["image"])
            size_ijk = tuple(reversed(vol.spatial_shape))
            if self.handoff:
                slice_index, prefix = handoff_actions(request, size_ijk)
            else:
                slice_index, prefix = self._slice(request, vol), []
            fallback = None
            if untrained:
                if not prefix:  # nothing to start from: the policy would have to find the structure itself
                    raise HTTPException(status_code=409, detail=(
                        f"no trained agent policy for label {name!r} (trained labels: {sorted(trained) or 'none'}); "
                        f"{self.train_hint} once images with final labels of {name!r} are in the datastore, "
                        "or run scripts/train_sft.py and put the checkpoint in the app's model/agent folder; "
                        "meanwhile agent_handoff with a box segments it without corrections"))
                # the user's prompts still say where the structure is: the segmenter answers them and (volume
                # scope) propagates, with nobody correcting; better than refusing a label the app defines
                policy = StopPolicy()
                fallback = (f"no trained agent policy for label {name!r}: your prompts were answered by the "
                            f"segmenter{' and propagated' if scope == 'volume' else ''} without the agent's "
                            f"corrections; {self.train_hint} to train one")
                logger.warning("agent_handoff: %s", fallback)
            max_turns = int(request.get("max_turns", self.env_config.max_turns))
            if not 1 <= max_turns <= 20:
                raise ValueError(f"max_turns must be between 1 and 20, got {max_turns}")
            mismatch = self.settings_mismatch(policy)
            win = self.settings.windowing(vol.modality)
            seed = int(request.get("seed", 0))
            if scope == "volume" and slice_index is not None:
                label, out = self._volume(vol, win, name, value, slice_index, prefix, max_turns, policy, seed)
            else:  # one slice (a 2D image is always one slice)
                label, out = self._one_slice(vol, win, name, value, slice_index, prefix, max_turns, policy, seed)
            ext = request.get("result_extension") or result_extension(vol)
            path = save_label_like(label, vol, tempfile.NamedTemporaryFile(suffix=ext, delete=False).name)
        out["latencies"]["total_ms"] = (time.perf_counter() - t0) * 1e3
        return str(path), {
            "label_names": {name: value},
            "target": name,
            "slice": slice_index,
            **out,
            "handoff_actions": len(prefix),
            "backend": self.provider.name,
            "policy": getattr(policy, "name", type(policy).__name__),
            **({"settings_mismatch": mismatch} if mismatch else {}),
            **({"fallback": fallback} if fallback else {}),
        }

    def _one_slice(self, vol, win, name, value, slice_index, prefix, max_turns, policy, seed):
        """One slice episode on ``slice_index`` (None = the 2D image): (label volume, result keys)."""
        pixels = volume_slice(vol, slice_index, win)  # the policy looks at the same windowed slice
        session, cached = self.provider.session(slice_key(vol, slice_index, win), lambda: pixels)
        env = SegmentationEnv(self.provider.tool, replace(self.env_config, max_turns=max_turns))
        with self.store.episode_lock:
            agent = Prefixed(prefix, policy) if prefix else policy
            traj = rollout(env, agent, {"image": pixels, "session": session, "target": name,
                                        "meta": {"slice_index": slice_index}}, seed=seed)
        mask = _final_mask(traj, vol.spatial_shape if slice_index is None else vol.spatial_shape[1:])
        label = np.zeros(vol.spatial_shape, dtype=np.uint8)
        if slice_index is None:
            label[mask] = value
        else:
            label[slice_index][mask] = value
        turns, actions = _seed_summary(traj)
        return label, {
            "scope": "slice",
            "turns": turns,
            "corrective_actions": max(turns - len(prefix), 0),
            "actions": actions,
            "stop_reason": traj.stop_reason,
            **_quality_keys(policy, traj.final_quality),
            "latencies": {
                "encoder_ms": 0.0 if cached else session.encoder_ms,
                "decoder_ms": traj.timings.get("decoder_ms", 0.0),
                "policy_ms": traj.timings.get("policy_ms", 0.0),
                "embedding_cached": cached,
            },
        }

    def _volume(self, vol, win, name, value, k0, prefix, max_turns, policy, seed):
        """A volume episode seeded on slice ``k0``: (label volume, result keys)."""
        if len(prefix) > max_turns:
            # as on one slice, where the turn budget ends the episode after the first ``max_turns`` prompts
            logger.warning("agent volume: %d hand-off prompts, the turn budget is %d: the first %d are used",
                           len(prefix), max_turns, max_turns)
            prefix = prefix[:max_turns]
        tool = self.provider.tool
        windowed = WindowedVolume(vol, win)
        K = windowed.shape[0]
        source = str(getattr(vol, "path", "") or "")
        t_start = time.perf_counter()

        def progress(n: int) -> None:
            if n % self.progress_every == 0:
                logger.info("agent volume %s / %s: %d slices visited of %d, %.1fs", source.rsplit("/", 1)[-1],
                            name, n, K, time.perf_counter() - t_start)

        with self.store.episode_lock:
            episode = VolumeEpisode(tool, policy, replace(self.env_config, max_turns=max_turns),
                                    self.volume_config, cache=self.provider.cache)
            res: VolumeResult = episode.run(
                windowed, name, seed_slice=k0, prompts=prefix, seed=seed,
                # the provider's own keys: a later click or slice request on a visited slice reuses its embedding
                key=lambda k: self.provider.cache_key(slice_key(vol, k, win)),
                meta={"case_id": source}, progress=progress)
        label = np.zeros(vol.spatial_shape, dtype=np.uint8)
        label[res.mask] = value
        first = res.slices[0]
        turns, actions = _seed_summary(first.trajectory)
        summary = res.to_dict()
        timings = summary["timings"]
        kept_q = [s.predicted_quality for s in res.slices if s.kept and s.predicted_quality is not None]
        logger.info("agent volume %s / %s: seed slice %d, %d slices visited, %d kept (%s), %d corrective actions, "
                    "%.1fs (encoder %.1fs in %d calls, decoder %.1fs, policy %.1fs)", source.rsplit("/", 1)[-1],
                    name, k0, len(res.visited), len(res.kept),
                    f"k {res.kept[0]}..{res.kept[-1]}" if res.kept else "none", res.corrective_actions,
                    timings["wall_s"], timings["encoder_s"], timings["encoder_calls"], timings["decoder_s"],
                    timings["policy_s"])
        return label, {
            "scope": "volume",
            "turns": turns,
            "actions": actions,
            "stop_reason": first.stop_reason,
            **_quality_keys(policy, first.predicted_quality),
            "min_predicted_quality": min(kept_q) if kept_q else None,
            "slices_visited": summary["visited"],
            "slices_kept": summary["kept"],
            "corrective_actions": summary["corrective_actions"],
            "ends": summary["ends"],
            "timings": timings,
            "slices": summary["slices"],
            "latencies": {
                "encoder_ms": timings["encoder_s"] * 1e3,
                "decoder_ms": timings["decoder_s"] * 1e3,
                "policy_ms": timings["policy_s"] * 1e3,
                "embedding_cached": bool(first.encoder_cached),
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


def _seed_summary(traj) -> tuple[int, list[dict]]:
    """(executed Box/Point actions, every action with the quality the policy predicted for the mask it was shown
    before that action: None for the user's prompts)."""
    qualities = list(traj.qualities) + [None] * (len(traj.actions) - len(traj.qualities))
    out = [dict(a, predicted_quality=q) for a, q in zip(traj.actions, qualities)]
    executed = [a for a in traj.actions if a.get("type") in ("box", "point") and "invalid" not in a]
    return len(executed), out


def _quality_keys(policy: Policy, final: float | None) -> dict[str, Any]:
    """The result's quality of its final mask (``quality``, and ``predicted_quality`` as before), what it means,
    and whether it is calibrated on validation cases."""
    calibration = getattr(policy, "calibration", None)
    return {"quality": final, "predicted_quality": final,
            "quality_meaning": QUALITY_MEANING if final is not None else None,
            "quality_calibrated": calibration is not None if final is not None else None}


def _final_mask(traj, shape) -> np.ndarray:
    from lib.agent.trajectories import rle_decode

    return rle_decode(traj.final_mask) if traj.final_mask else np.zeros(shape, dtype=bool)
