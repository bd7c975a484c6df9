"""Run episodes: ``rollout(env, policy, options) -> Trajectory``, the same function for inference, trajectory
generation, RL and evaluation; plus the glue from dataset slices to episode options and from backend
names to tools, shared by ``scripts/generate_trajectories.py`` and ``scripts/evaluate.py``.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lib.agent.env import SegmentationEnv
from lib.agent.policies.base import Policy
from lib.agent.settings import EpisodeSettings
from lib.agent.trajectories import Trajectory, rle_encode
from lib.data.dataset import SliceSample
from lib.data.slices import tool_pixels
from lib.tools.base import Tool

#: backends the scripts accept; "fake" is the FakeTool test double, for tests only (never a real model)
SCRIPT_BACKENDS = ("litemedsam", "sam2", "medsam2", "fake")


def rollout(
    env: SegmentationEnv,
    policy: Policy,
    options: Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> Trajectory:
    """Play one episode of ``policy`` in ``env`` and return it as a ``Trajectory``.

    Args:
        env: the environment; reset here with ``seed`` and ``options`` (see ``SegmentationEnv.reset``).
        policy: reset with the same ``seed``, then asked for actions until the episode ends.
        options: reset options; ``options["meta"]`` may carry ``case_id``, ``slice_index``, ``axis`` and
            ``source`` (copied into the trajectory).
        seed: episode seed (env and policy); None = fresh entropy.

    Quality: the policy's ``last_quality`` after each ``act`` goes into ``Trajectory.qualities``; the final mask's
    quality is the one judged at the Stop, or ``policy.assess`` when the turn budget ended the episode.

    Timings: ``policy_ms`` is the time inside ``policy.act`` (and ``assess``) minus the decoder time the policy spent
    looking ahead (which is counted under ``decoder_ms``), so encoder + decoder + policy + other = total.
    """
    t_start = time.perf_counter()
    obs, info = env.reset(seed=seed, options=options)
    policy.reset(obs, info, seed=seed)
    policy_ms = 0.0
    qualities: list[float | None] = []
    terminated = truncated = False
    while not (terminated or truncated):
        t0, dec0 = time.perf_counter(), env.decoder_ms
        action = policy.act(obs, info)
        policy_ms += (time.perf_counter() - t0) * 1e3 - (env.decoder_ms - dec0)
        q = getattr(policy, "last_quality", None)
        qualities.append(None if q is None else float(q))
        obs, _, terminated, truncated, info = env.step(action)
    # the final mask's quality: judged at the policy's Stop; after the budget ran out nobody judged it yet
    if truncated or not info["actions"] or info["actions"][-1].get("type") != "stop":
        t0, assess = time.perf_counter(), getattr(policy, "assess", None)
        final_quality = assess(obs, info) if assess is not None else None
        policy_ms += (time.perf_counter() - t0) * 1e3
    else:
        final_quality = qualities[-1]
    total_ms = (time.perf_counter() - t_start) * 1e3
    reward = info.get("episode_reward")
    terms = {k[len("episode/") :]: float(v) for k, v in info["reward_terms"].items() if k.startswith("episode/")}
    meta = info.get("meta", {})
    masks = info["masks"]
    shape = tuple(int(s) for s in env.shape)
    final = masks[-1] if masks else np.zeros(shape, dtype=bool)
    if truncated:
        stop_reason = "budget"
    else:
        stop_reason = policy.stop_reason or "stop"
    enc, dec = float(info["encoder_ms"]), float(info["decoder_ms"])
    slice_index = meta.get("slice_index")
    return Trajectory(
        case_id=str(meta.get("case_id", "")),
        slice_index=None if slice_index is None else int(slice_index),
        label=info.get("target", ""),
        backend=tool_name(env.tool),
        prompting=env.config.prompting.value,
        policy=policy.name,
        shape=list(shape),
        actions=info["actions"],
        ious=[float(v) for v in info.get("ious", [])],
        dices=[float(v) for v in info.get("dices", [])],
        scores=[float(v) for v in info["scores"]],
        masks=[rle_encode(m) for m in masks],
        final_mask=rle_encode(final),
        stop_reason=stop_reason,
        n_invalid=int(info["n_invalid"]),
        axis=int(meta.get("axis", 0)),
        reward=None if reward is None else float(reward),
        reward_terms=terms,
        timings={
            "encoder_ms": enc,
            "decoder_ms": dec,
            "policy_ms": max(policy_ms, 0.0),
            "other_ms": max(total_ms - enc - dec - max(policy_ms, 0.0), 0.0),
            "total_ms": total_ms,
            "decoder_calls": int(info["decoder_calls"]),
        },
        policy_meta=policy.episode_meta(),
        seed=seed,
        source=dict(meta.get("source", {})),
        qualities=qualities,
        final_quality=None if final_quality is None else float(final_quality),
        prior=None if info.get("prior") is None else rle_encode(info["prior"]),
    )


def tool_name(tool: Tool) -> str:
    """The backend name of a tool (``Tool.name``; the class name for a tool without one)."""
    return str(getattr(tool, "name", type(tool).__name__))


def window_slice(sample: SliceSample, settings: EpisodeSettings) -> np.ndarray:
    """The slice as a tool and a policy see it under ``settings`` (its CT window): (H, W) float32 in [0, 1],
    or (H, W, 3) uint8 for a colour image."""
    return tool_pixels(sample.image, settings.windowing(sample.modality))


def sample_options(sample: SliceSample, image: np.ndarray, session: Any = None,
                   source: Mapping[str, Any] | None = None, prior: np.ndarray | None = None) -> dict[str, Any]:
    """Reset options of ``SegmentationEnv`` for a dataset slice: ``image`` is ``window_slice(sample, ...)``;
    ``prior`` the neighbouring slice's mask of a volume start state."""
    return {
        "prior": prior,
        "image": image,
        "gt": sample.gt,
        "target": sample.label_name,
        "session": session,
        "meta": {
            "case_id": sample.case_id,
            "slice_index": sample.slice_index,
            "axis": sample.axis,
            "source": dict(source or {}),
        },
    }


def episode_seed(seed: int, *key: Any) -> int:
    """A 32-bit seed from a base seed and an episode key, e.g. ``(case_id, slice_index, label)``.

    Independent of process, order and ``PYTHONHASHSEED`` (CRC32 of the key's text), so a resumed or
    parallel run draws exactly the boxes and strategies a single sequential run would.
    """
    text = "|".join(str(k) for k in key).encode()
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(text)]).generate_state(1)[0])


def load_backend(name: str, tool_weights: str | Path | None = None, threads: int | None = None,
                 device: str = "cpu") -> Tool:
    """Build a tool by backend name for the scripts.

    Args:
        name: one of ``SCRIPT_BACKENDS``; "fake" is the test double (tests only).
        tool_weights: adapted segmenter weights: a folder holding ``adapted.pt`` or the file itself
            (LiteMedSAM); for sam2/medsam2 the checkpoint file. None = the bundle's default weights.
        threads: torch intra-op threads (1 per worker process when parallelising over processes).
        device: "cpu" or "cuda[:n]".
    """
    if name not in SCRIPT_BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(SCRIPT_BACKENDS)}")
    if name == "fake":
        from lib.tools.fake import FakeTool

        return FakeTool()
    from lib.tools.bundle import load_tool
    from lib.tools.registry import bundle_dir

    overrides: dict[str, Any] = {"device": device}
    if threads and name == "litemedsam":
        overrides["threads"] = int(threads)
    elif threads:
        import torch

        torch.set_num_threads(int(threads))
    if tool_weights:
        path = Path(tool_weights)
        if name == "litemedsam":
            path = path / "adapted.pt" if path.is_dir() else path
            if not path.is_file():
                raise FileNotFoundError(f"--tool-weights: no adapted LiteMedSAM weights at {path}")
            overrides["adapted"] = str(path)
        else:
            if not path.is_file():
                raise FileNotFoundError(f"--tool-weights: no {name} checkpoint at {path}")
            overrides["checkpoint"] = str(path)
    return load_tool(bundle_dir(name), **overrides)
