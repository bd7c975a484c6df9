"""GRPO for the compact policy: group-relative policy optimisation on the segmentation environment.

One step draws ``groups_per_step`` start states (a training slice and target; in hand-off mode also the
user's jittered box, the same for the whole group; or, with ``volume_fraction``, a volume start state: a slice
of a 3D training case after its seed slice with the box propagation gave it, ``lib.learning.policy.volume_data``)
and plays ``group_size`` (G) sampled episodes from
each with ``lib.agent.rollout.rollout`` in ``SegmentationEnv``. An episode's reward is the environment's
episode reward (``lib.agent.rewards``, the reference's by default: format + clipped quality with overshoot,
turn cost and improvement bonus), so RL optimises exactly what the reward module defines.

Advantages are normalised within the group, ``A_i = (R_i - mean) / (std + 1e-6)`` (verl's GRPO; a group
whose rewards are all equal teaches nothing and is skipped), and every decision of episode ``i`` gets
``A_i``. The loss, averaged over decisions (verl's token-mean), is PPO's clipped surrogate
``-min(r A, clip(r, 1 - eps, 1 + eps) A)`` with ``r = exp(log pi - log pi_old)``, plus ``kl_coef`` times
the k3 estimate of KL(pi || pi_SFT) (optional regularisation to the SFT policy), plus ``quality_weight``
times the value head's BCE against the IoU the environment measured for each visited mask (the value head
keeps tracking the states the policy now visits). AdamW, ``ppo_epochs`` passes over each step's data.

The encoder is the expensive part (~2.5 s per slice for LiteMedSAM on CPU against ~80 ms per decoder
call), so each slice is encoded once per run and its session shared by every rollout and label
(``SessionCache``). Validation plays the greedy policy on held-out CASES; the checkpoint kept is the best
validation reward seen (the SFT policy itself included), so RL can only keep or improve what it started from
on validation.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lib.agent.clicks import jittered_box
from lib.agent.env import EnvConfig, SegmentationEnv
from lib.agent.policies.base import Policy, Prefixed
from lib.agent.policies.compact import CompactPolicy
from lib.agent.policies.compact_dist import entropy_of_kind, log_prob
from lib.agent.rewards import RewardConfig
from lib.agent.rollout import episode_seed, rollout, sample_options, tool_name, window_slice
from lib.agent.settings import EpisodeSettings
from lib.agent.trajectories import Trajectory
from lib.agent.volume import SliceStart
from lib.data.dataset import Case, Dataset, SliceSample, split_cases
from lib.learning.curves import plot_curves, smooth
from lib.learning.loop import BestState, LoopConfig, MetricLog, TrainLoop, seeded, torch_threads
from lib.learning.policy.data import DataSource, iter_targets, slice_key
from lib.learning.policy.volume_data import VolumeStarts, VolumeStartStates, evenly_spaced, volume_start_states
from lib.learning.recipe import help_field, to_dict
from lib.tools.base import Tool
from lib.tools.cache import SessionCache

logger = logging.getLogger(__name__)


@dataclass
class RLConfig:
    """GRPO of the compact policy (``configs/rl.yaml``). Defaults: small CPU budget; values of the
    released MedSAM-Agent verl run in brackets where they differ."""

    group_size: int = help_field("G: rollouts per start state [8]", 8)
    groups_per_step: int = help_field("start states per optimizer step [8 prompts]", 2)
    steps: int = help_field("RL steps (upper bound; max_minutes may end sooner)", 100)
    lr: float = help_field("AdamW learning rate, constant [1e-6 for an 8B VLM; a 1 M CNN needs more]", 3e-5)
    weight_decay: float = help_field("AdamW weight decay [0.01]", 0.01)
    clip_ratio: float = help_field("PPO ratio clip epsilon [0.2]", 0.2)
    ppo_epochs: int = help_field("optimisation passes over each step's rollouts [1]; > 1 makes the clip bite", 2)
    kl_coef: float = help_field("weight of KL(pi || pi_SFT), k3 estimator [0 = off]", 0.05)
    entropy_coef: float = help_field("bonus on the entropy of the action kind [0]", 0.01)
    quality_weight: float = help_field("weight of the value head's BCE against visited masks' IoU", 0.5)
    temperature: float = help_field("sampling temperature of the action kind in rollouts [1.0]", 1.0)
    coord_temperature: float = help_field(
        "sampling temperature of box corners and click cells: cooler than the kind, so a sampled refinement "
        "is close to what the greedy policy would draw and the group compares stop vs refine fairly", 0.5)
    grad_clip: float = help_field("max global gradient norm [1.0]", 1.0)
    handoff_fraction: float = help_field("share of start states that begin with a user's jittered box", 0.75)
    volume_fraction: float = help_field(
        "share of start states that are volume start states (a slice of a 3D training case after the seed slice, "
        "starting from its propagated box, as the served volume agent meets it); the rest are split by "
        "handoff_fraction. Needs a dataset with 3D cases (ignored for slice samples)", 0.3)
    volume: VolumeStarts = help_field("which volume start states (sources, slices per target)",
                                      factory=VolumeStarts)
    episode: EpisodeSettings = help_field(
        "how episodes are played (prompting, local merge, turn budget with the hand-off box included, CT window, "
        "hand-off box jitter); default: what the app serves", factory=EpisodeSettings)
    reward: dict[str, float] = help_field("RewardConfig overrides (default = the reference's reward)", factory=dict)
    split: str = help_field("dataset split to train on (validation cases are held out of it)", "training")
    axis: int = help_field("slicing axis of 3D volumes", 0)
    min_area: int = help_field("smallest target in pixels", 20)
    max_slices_per_case: int | None = help_field("cap of (slice, label) targets per case", None)
    val_fraction: float = help_field("share of cases held out for validation", 0.2)
    val_targets: int = help_field("validation targets (evenly spaced over the held-out cases)", 24)
    eval_every: int = help_field("steps between validation passes", 10)
    keep_best: bool = help_field("save the best validation checkpoint (else the last)", True)
    session_cache_mb: int = help_field("memory for cached tool sessions (4 MiB per LiteMedSAM slice)", 1024)
    max_minutes: float = help_field("wall-clock budget in minutes (0 = none)", 27.0)
    seed: int = help_field("seeds start states, rollouts and torch", 0)
    threads: int = help_field(
        "torch intra-op threads (0 = torch's default). 1: training shares the CPU with the server, and on an "
        "oversubscribed CPU multi-threaded torch ops spin: one 2-thread SFT step measured 50x slower than 1 thread", 1)

    def __post_init__(self) -> None:
        for name in ("group_size", "groups_per_step", "steps", "ppo_epochs", "eval_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"RLConfig.{name} must be an int >= 1, got {v!r}")
        if self.group_size < 2:
            raise ValueError("RLConfig.group_size must be >= 2: advantages are relative to the group")
        if not 0 < self.clip_ratio < 1:
            raise ValueError(f"RLConfig.clip_ratio must be in (0, 1), got {self.clip_ratio}")
        if isinstance(self.volume, Mapping):
            self.volume = VolumeStarts(**self.volume)
        for name in ("handoff_fraction", "val_fraction", "volume_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"RLConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.val_fraction >= 1.0:
            raise ValueError("RLConfig.val_fraction must be < 1 (training needs cases)")
        for name in ("lr", "temperature", "coord_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RLConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "kl_coef", "entropy_coef", "quality_weight", "grad_clip", "max_minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"RLConfig.{name} must be >= 0, got {getattr(self, name)}")
        if isinstance(self.episode, Mapping):
            self.episode = EpisodeSettings(**self.episode)
        if not isinstance(self.episode, EpisodeSettings):
            raise TypeError(f"RLConfig.episode must be EpisodeSettings, got {type(self.episode).__name__}")
        self.env_config("litemedsam")  # RewardConfig validates the reward weights

    def env_config(self, backend: str) -> EnvConfig:
        return self.episode.env_config(backend, reward=RewardConfig(**self.reward))


class Slices:
    """Start states: each target's windowed image and cached tool session (one encode per slice per run)."""

    def __init__(self, tool: Tool, cache_mb: int, settings: EpisodeSettings) -> None:
        self.tool, self.settings = tool, settings
        self.cache = SessionCache(int(cache_mb) << 20)
        self._images: dict[tuple, np.ndarray] = {}

    def options(self, sample: SliceSample, prior: np.ndarray | None = None) -> dict[str, Any]:
        """Reset options of the target's slice; ``prior``: the neighbour's mask of a volume start state."""
        key = slice_key(sample)
        if key not in self._images:
            self._images[key] = window_slice(sample, self.settings)
        image = self._images[key]
        session, _ = self.cache.get_or_start(key, lambda: self.tool.start(image))
        return sample_options(sample, image=image, session=session, prior=prior)


def play(env: SegmentationEnv, policy: Policy, options: Mapping[str, Any], seed: int,
         box: Any = None, anchored: bool = True) -> Trajectory:
    """One episode; with ``box`` the episode starts with that box: a user's hand-off box (``anchored``: the policy
    is held to it, as served) or a volume start state's propagated box (not anchored, as ``VolumeEpisode`` plays
    the slices after the seed)."""
    return rollout(env, Prefixed([box], policy, anchored=anchored) if box is not None else policy, options,
                   seed=seed)


def expected_reward(policy: CompactPolicy, env: SegmentationEnv, options: Mapping[str, Any], n: int, seed: int,
                    box: Any = None) -> float:
    """Mean episode reward of ``n`` SAMPLED episodes from one start state (the objective GRPO raises)."""
    greedy, recording = policy.greedy, policy.recording
    policy.greedy, policy.recording = False, False
    try:
        return float(np.mean([play(env, policy, options, seed + i, box).reward for i in range(n)]))
    finally:
        policy.greedy, policy.recording = greedy, recording


def evaluate_greedy(policy: CompactPolicy, env: SegmentationEnv, slices: Slices, targets: Sequence[SliceSample],
                    handoff: bool, seed: int, jitter: float,
                    starts: Sequence[SliceStart] | None = None) -> dict[str, float]:
    """Greedy policy on fixed targets: mean reward, final Dice, executed actions (hand-off box included).

    ``starts`` (one per target) are volume start states to play instead of jittered hand-off boxes: their
    propagated box (which the policy is not held to) and their neighbour mask as the episode's prior."""
    greedy, recording = policy.greedy, policy.recording
    policy.greedy, policy.recording = True, False
    rewards, dices, turns = [], [], []
    try:
        for i, s in enumerate(targets):
            key = (s.case_id, s.slice_index, s.label_name)
            ep_seed = episode_seed(seed, *key)
            start = None if starts is None else starts[i]
            if start is not None:
                box = start.box
            else:
                box = jittered_box(s.gt, np.random.default_rng(ep_seed), jitter) if handoff else None
            traj = play(env, policy, slices.options(s, None if start is None else start.mask), ep_seed, box,
                        anchored=start is None)
            rewards.append(traj.reward)
            dices.append(traj.final_dice)
            turns.append(traj.n_actions)
    finally:
        policy.greedy, policy.recording = greedy, recording
    return {"reward": float(np.mean(rewards)), "dice": float(np.mean(dices)), "turns": float(np.mean(turns))}


def _targets(samples: Any, labels: Mapping[str, int], config: RLConfig) -> list[SliceSample]:
    if isinstance(samples, tuple) and len(samples) == 2 and isinstance(samples[0], (Dataset, str, Path)):
        data, split = samples
    else:
        data, split = samples, config.split
    return [s for s, _ in iter_targets(data, labels, split, config.axis, config.min_area, config.max_slices_per_case)]


def _split_targets(targets: list[SliceSample], config: RLConfig) -> tuple[list[SliceSample], list[SliceSample]]:
    """Held-out validation CASES, drawn like SFT's (``split_cases`` with the same seed and fraction), so an
    SFT -> RL pipeline with equal seeds validates both stages on the same cases."""
    val_ids = _val_cases({s.case_id for s in targets}, config)
    train = [s for s in targets if s.case_id not in val_ids]
    return train, evenly_spaced([s for s in targets if s.case_id in val_ids], config.val_targets)


def _val_cases(case_ids: set[str], config: RLConfig) -> set[str]:
    _, val_c = split_cases([Case(image_path=Path(c), label_path=None, case_id=c) for c in sorted(case_ids)],
                           config.val_fraction, config.seed)
    return {c.case_id for c in val_c}


def _volume_starts(samples: Any, tool: Tool, labels: Mapping[str, int], config: RLConfig,
                   case_ids: set[str]) -> tuple[VolumeStartStates, VolumeStartStates]:
    """(training, validation) volume start states: (slice sample, ``SliceStart``) pairs of the dataset's 3D
    cases, split by the same held-out cases as the slice targets; none for slice samples or when off."""
    if not config.volume_fraction or not config.volume.enabled:
        return [], []
    if isinstance(samples, tuple) and len(samples) == 2 and isinstance(samples[0], (Dataset, str, Path)):
        data, split = samples
    elif isinstance(samples, (Dataset, str, Path)):
        data, split = samples, config.split
    else:
        return [], []
    starts = volume_start_states(data, tool, labels, config.episode, config.volume, split=split, seed=config.seed)
    val_ids = _val_cases(case_ids | {s.case_id for s, _ in starts}, config)
    train = [(s, b) for s, b in starts if s.case_id not in val_ids]
    return train, evenly_spaced([(s, b) for s, b in starts if s.case_id in val_ids], config.val_targets)


def grpo_update(policy: CompactPolicy, ref: CompactPolicy | None, opt: torch.optim.Optimizer,
                steps: list[dict[str, Any]], config: RLConfig) -> dict[str, float]:
    """One GRPO update on decisions carrying ``adv`` (their episode's group-normalised advantage)."""
    net = policy.net.train()
    x = torch.stack([s["x"] for s in steps])
    label = torch.tensor([s["label"] for s in steps])
    turn = torch.tensor([s["turn"] for s in steps])
    kind = torch.tensor([s["kind"] for s in steps])
    box = torch.tensor([s["box"] for s in steps])
    cell = torch.tensor([s["cell"] for s in steps])
    old = torch.tensor([s["logp"] for s in steps], dtype=torch.float32)
    adv = torch.tensor([s["adv"] for s in steps], dtype=torch.float32)
    iou = torch.tensor([s["iou"] if s["iou"] is not None else math.nan for s in steps], dtype=torch.float32)
    t, tc = config.temperature, config.coord_temperature
    ref_lp = None
    if ref is not None and config.kl_coef > 0:
        with torch.no_grad():
            ref_lp = log_prob(ref.net.eval()(x, label, turn), kind, box, cell, t, tc)
    stats: dict[str, float] = {}
    for _ in range(config.ppo_epochs):
        out = net(x, label, turn)
        new = log_prob(out, kind, box, cell, t, tc)
        ratio = torch.exp(new - old)
        clipped = torch.clamp(ratio, 1 - config.clip_ratio, 1 + config.clip_ratio)
        pg = -torch.minimum(ratio * adv, clipped * adv).mean()
        loss = pg
        kl = torch.zeros(())
        if ref_lp is not None:
            d = ref_lp - new
            kl = (torch.exp(d) - d - 1).mean()
            loss = loss + config.kl_coef * kl
        known = ~torch.isnan(iou)
        quality = (F.binary_cross_entropy_with_logits(out["quality"][known], iou[known]) if known.any()
                   else torch.zeros(()))
        loss = loss + config.quality_weight * quality
        ent = entropy_of_kind(out).mean()
        if config.entropy_coef:
            loss = loss - config.entropy_coef * ent
        if not torch.isfinite(loss):
            raise FloatingPointError(f"GRPO loss became {float(loss)}; lower lr or raise kl_coef")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        opt.step()
        with torch.no_grad():
            stats = {"loss": float(loss), "pg_loss": float(pg), "kl": float(kl), "quality_loss": float(quality),
                     "kind_entropy": float(ent),
                     "clip_frac": float(((ratio - 1).abs() > config.clip_ratio).float().mean())}
    net.eval()
    return stats


def train_grpo(config: RLConfig, samples: DataSource | tuple[Dataset | str | Path, str], tool: Tool,
               init_dir: str | Path, out_dir: str | Path, progress: Callable[[dict], None] | None = None,
               should_stop: Callable[[], bool] | None = None, *,
               volumes: Dataset | str | Path | None = None) -> dict[str, Any]:
    """GRPO from the SFT checkpoint in ``init_dir``; the result (policy.pt/json, rl_curves.png,
    rl_history.json) goes to ``out_dir`` (publish it with ``lib.learning.checkpoint.publish``).

    Args:
        config: ``RLConfig``.
        samples: ``SliceSample``s, a dataset folder / ``Dataset`` (``config.split``), or ``(dataset, split)``.
            Only targets in the policy's label set are used; validation cases are held out of them.
        tool: the segmenter the policy acts through (the one it will be served with).
        progress: called with ``{"stage": "rl", "step", "steps", "reward", ...}`` after every step.
        should_stop: polled every step; True ends training early (``stats["stopped"]``).
        volumes: the dataset whose 3D cases (``config.split``) give the volume start states when ``samples``
            are slice samples (default: ``samples`` itself when it is a dataset).

    Returns:
        Stats: ``steps``, ``episodes``, ``reward_first`` / ``reward_last`` (smoothed training reward),
        ``val_init`` / ``val_best`` (greedy validation: reward, dice, turns), ``best_step``, ``encodes``,
        ``time_s``.
    """
    with torch_threads(config.threads):
        return _train_grpo(config, samples, tool, init_dir, out_dir, progress, should_stop, volumes)


def _train_grpo(config: RLConfig, samples: Any, tool: Tool, init_dir: str | Path, out_dir: str | Path,
                progress: Callable[[dict], None] | None, should_stop: Callable[[], bool] | None,
                volumes: Any = None) -> dict[str, Any]:
    t_start = time.perf_counter()
    rng = seeded(config.seed)
    # a calibration fitted on the initial weights does not describe the trained ones: drop it (refit after)
    policy = CompactPolicy.load(init_dir, greedy=False, temperature=config.temperature,
                                coord_temperature=config.coord_temperature, calibration=None)
    policy.recording = True
    ref = policy.copy() if config.kl_coef > 0 else None
    if ref is not None:
        ref.net.requires_grad_(False)
    targets = _targets(samples, policy.labels, config)
    if not targets:
        raise ValueError(f"no training targets for the policy's labels {sorted(policy.labels)}")
    train, val = _split_targets(targets, config)
    vol_train, vol_val = _volume_starts(samples if volumes is None else volumes, tool, policy.labels, config,
                                        {s.case_id for s in targets})
    env = SegmentationEnv(tool, config.env_config(tool_name(tool)))
    slices = Slices(tool, config.session_cache_mb, config.episode)
    opt = torch.optim.AdamW(policy.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    vf = config.volume_fraction if vol_train else 0.0
    weights = {"handoff": (1 - vf) * config.handoff_fraction, "autonomous": (1 - vf) * (1 - config.handoff_fraction),
               "volume": vf if vol_val else 0.0}
    modes = [m for m, w in weights.items() if w > 0]
    if vol_train:
        logger.info("GRPO: %d volume start states (%d validation), %.0f%% of groups", len(vol_train), len(vol_val),
                    100 * vf)
    log = MetricLog(train=("step", "reward", "turns", "dice"),
                    val=("step", "reward", *(f"{m}_{k}" for m in modes for k in ("reward", "dice", "turns"))))

    def validate(step: int) -> float | None:
        if not val:
            return None
        per_mode = {}
        total = 0.0
        for m in modes:
            if m == "volume":
                r = evaluate_greedy(policy, env, slices, [v for v, _ in vol_val], True, config.seed + 7,
                                    config.episode.box_jitter, starts=[start for _, start in vol_val])
            else:
                r = evaluate_greedy(policy, env, slices, val, m == "handoff", config.seed + 7,
                                    config.episode.box_jitter)
            per_mode.update({f"{m}_{k}": r[k] for k in ("reward", "dice", "turns")})
            total += weights[m] * r["reward"]
        log.val(step, reward=total, **per_mode)
        logger.info("rl step %d: val reward %.4f (%s)", step, total, ", ".join(
            f"{m}: dice {per_mode[f'{m}_dice']:.3f} turns {per_mode[f'{m}_turns']:.2f}" for m in modes))
        return total

    best_val = validate(0)
    best = BestState(mode="max")
    best.keep(best_val if best_val is not None else -math.inf, 0, copy.deepcopy(policy.net.state_dict()))
    episodes = 0
    last_stats: dict[str, float] = {}
    loop = TrainLoop(LoopConfig(steps=config.steps, eval_every=config.eval_every, max_minutes=config.max_minutes,
                                desc="grpo", bar=progress is None), should_stop, started=t_start)
    for step in loop:
        batch: list[dict[str, Any]] = []
        rewards_all, turns_all, dice_all = [], [], []
        for _ in range(config.groups_per_step):
            # the volume draw only when there are volume starts, so slice-only runs keep their random stream
            propagated = bool(vol_train) and rng.random() < vf
            if propagated:
                sample, start = vol_train[int(rng.integers(len(vol_train)))]
                box, prior = start.box, start.mask
            else:
                sample = train[int(rng.integers(len(train)))]
                handoff = bool(rng.random() < config.handoff_fraction)
                box = jittered_box(sample.gt, rng, config.episode.box_jitter) if handoff else None
                prior = None
            options = slices.options(sample, prior)
            group, rewards = [], []
            for _ in range(config.group_size):
                policy.trace = []
                traj = play(env, policy, options, int(rng.integers(2**31 - 1)), box, anchored=not propagated)
                group.append(policy.trace)
                rewards.append(float(traj.reward))
                turns_all.append(traj.n_actions)
                dice_all.append(traj.final_dice)
            episodes += config.group_size
            r = np.asarray(rewards)
            rewards_all += rewards
            if r.std() < 1e-8:
                continue  # every episode scored the same: no relative signal in this group
            adv = (r - r.mean()) / (r.std() + 1e-6)
            for decisions, a in zip(group, adv, strict=True):
                batch += [{**d, "adv": float(a)} for d in decisions]
        policy.trace = []
        if batch:
            last_stats = grpo_update(policy, ref, opt, batch, config)
        log.train(step, reward=float(np.mean(rewards_all)), turns=float(np.mean(turns_all)),
                  dice=float(np.mean(dice_all)))
        if loop.is_eval_step(step):
            v = validate(step)
            if v is not None:
                best.offer(v, step, lambda: copy.deepcopy(policy.net.state_dict()))
        loop.show(reward=f"{smooth(log.column('train', 'reward'))[-1]:.3f}")
        if progress is not None:
            progress({"stage": "rl", "step": step, "steps": config.steps, "reward": log.last("train", "reward"),
                      "turns": log.last("train", "turns"), **last_stats})
    n_steps = loop.steps_run
    if n_steps == 0:
        raise RuntimeError("GRPO stopped before its first step; nothing to save")
    if config.keep_best and val:
        policy.net.load_state_dict(best.state)
    history = log.columns()
    policy.recording, policy.greedy, policy.trace = False, True, []
    rs = smooth(history["reward"])

    def val_at(i: int | None) -> dict[str, Any] | None:
        if i is None or not history["val_step"]:
            return None
        return {m: {k: history[f"val_{m}_{k}"][i] for k in ("reward", "dice", "turns")} for m in modes}

    best_i = history["val_step"].index(best.step) if val and best.step in history["val_step"] else None
    stats = {
        "stage": "rl",
        "steps": n_steps,
        "episodes": episodes,
        "reward_first": rs[0],
        "reward_last": rs[-1],
        "turns_first": history["turns"][0],
        "turns_last": smooth(history["turns"])[-1],
        "val_init": val_at(0 if history["val_step"] else None),
        "val_best": val_at(best_i) if config.keep_best else val_at(len(history["val_step"]) - 1 if val else None),
        "best_step": best.step if (config.keep_best and val) else n_steps,
        "n_train_targets": len(train),
        "n_val_targets": len(val),
        "val_cases": sorted({t.case_id for t in val}),
        "n_volume_starts": len(vol_train),
        "n_val_volume_starts": len(vol_val),
        "encodes": slices.cache.misses,
        "stopped": loop.stopped,
        "budget_hit": loop.budget_hit,
        "seed": config.seed,
        "last_update": last_stats,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    panels = {"training reward (smoothed)": {"reward": (history["step"], rs)},
              "training turns (smoothed)": {"turns": (history["step"], smooth(history["turns"]))}}
    if history["val_step"]:
        panels["validation (greedy)"] = {f"{m} {k}": (history["val_step"], history[f"val_{m}_{k}"])
                                         for m in modes for k in ("reward", "dice")}
    plot_curves(out / "rl_curves.png", panels, f"GRPO: G={config.group_size}, {n_steps} steps, {episodes} episodes")
    log.write(out / "rl_history.json", layout="columns")
    stats["time_s"] = time.perf_counter() - t_start
    policy.provenance = {"init_provenance": dict(policy.provenance)}  # keep the SFT record, nested
    policy.episode = config.episode.record(tool_name(tool))
    policy.save(out, {"stage": "rl", "init": str(init_dir), "steps": n_steps, "episodes": episodes,
                      "metrics": {"val_best": stats["val_best"], "val_init": stats["val_init"],
                                  "reward_first": stats["reward_first"], "reward_last": stats["reward_last"]},
                      "data": {"train_targets": len(train), "val_targets": len(val),
                               "volume_starts": len(vol_train), "val_volume_starts": len(vol_val),
                               "backend": tool_name(tool)},
                      "seed": config.seed, "config": to_dict(config),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    stats["out_dir"] = str(out)
    return stats
