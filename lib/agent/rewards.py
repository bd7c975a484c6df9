"""Episode reward: pure functions of an episode's per-turn IoU/Dice (and, for process terms, its actions).

Default = the MedSAM-Agent RL reward (as in the released MedSAM-Agent code), term for term::

    R = 0.2 * F + 0.8 * clip(base - P + B, 0, 1)
    F    = 1.0 if (>= 1 Box/Point action) and (ended with Stop); 0.5 if exactly one holds; else 0
    base = 0.5 * IoU_T + 0.5 * Dice_T                      (0 when no action produced a mask)
    P    = 1.0 * (max_t IoU_t - IoU_T) + 0.01 * T           (turn cost only when T >= 2, like the reference)
    B    = 0.1 * sum_{t>=2} max(0, IoU_t - IoU_{t-1})

T counts executed Box/Point actions (Stop is not an action). Differences from the reference code, all
deliberate: F is computed from the executed actions, not by regex over the whole decoded text (which
counted the un-executed fifth generation); masks are bools, so no 0/255 threshold can silently
turn a 0/1 mask into "empty".

Extra process terms from the paper and IBISAgent are registered in ``REWARD_TERMS`` with weight 0, so an
ablation is a config change only. Every term's value is reported unweighted in ``terms``; the total is
``sum(config.weight(name) * terms[name] for name in REWARD_TERMS)``. Penalty terms have negative values
(weights stay >= 0).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lib.agent.actions import Point


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the episode reward. Defaults reproduce the reference.

    Attributes:
        format_weight: weight of the format term F.
        quality_weight: weight of the clipped quality ``clip(base - P + B, 0, 1)``.
        iou_weight: weight of the final IoU inside ``base``.
        dice_weight: weight of the final Dice inside ``base``.
        overshoot_weight: penalty per unit of IoU lost between the best turn and the last one.
        turn_cost: penalty per executed action.
        turn_cost_min_actions: the turn cost applies from this many actions on. The reference uses 2
            (T > 1), so one action costs 0 but two cost 0.02; set 1 to remove that discontinuity.
        improvement_bonus: bonus per unit of IoU gained from one action to the next (gains only).
        tool_use_weight: weight of ``tool_use`` (1 when at least one action produced a mask).
        stop_cost_weight: weight of ``stop_cost`` (-1 when the episode ended without Stop).
        click_placement_weight: weight of ``click_placement`` (IBISAgent's region-based click reward).
        term_weights: weights of terms registered later with ``register_term``, by name.
    """

    format_weight: float = 0.2
    quality_weight: float = 0.8
    iou_weight: float = 0.5
    dice_weight: float = 0.5
    overshoot_weight: float = 1.0
    turn_cost: float = 0.01
    turn_cost_min_actions: int = 2
    improvement_bonus: float = 0.1
    tool_use_weight: float = 0.0
    stop_cost_weight: float = 0.0
    click_placement_weight: float = 0.0
    term_weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "format_weight",
            "quality_weight",
            "iou_weight",
            "dice_weight",
            "overshoot_weight",
            "turn_cost",
            "improvement_bonus",
            "tool_use_weight",
            "stop_cost_weight",
            "click_placement_weight",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise ValueError(
                    f"RewardConfig.{name} must be a finite number >= 0, got {v!r}; "
                    "penalties are subtracted already, so turn a term off with 0 rather than a negative weight"
                )
        if self.iou_weight + self.dice_weight <= 0:
            raise ValueError(
                "RewardConfig.iou_weight + dice_weight must be > 0; to drop segmentation quality set quality_weight=0"
            )
        if (
            isinstance(self.turn_cost_min_actions, bool)
            or not isinstance(self.turn_cost_min_actions, int)
            or (self.turn_cost_min_actions < 1)
        ):
            raise ValueError(
                f"RewardConfig.turn_cost_min_actions must be an int >= 1, got {self.turn_cost_min_actions!r}"
            )
        for name, v in self.term_weights.items():
            if name not in REWARD_TERMS:
                raise ValueError(
                    f"RewardConfig.term_weights names unknown term {name!r}; registered: {sorted(REWARD_TERMS)}"
                )
            if not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise ValueError(f"RewardConfig.term_weights[{name!r}] must be a finite number >= 0, got {v!r}")

    def weight(self, name: str) -> float:
        """Weight of a registered term: ``term_weights[name]``, else the ``<name>_weight`` field, else 0."""
        if name in self.term_weights:
            return float(self.term_weights[name])
        return float(getattr(self, f"{name}_weight", 0.0))


@dataclass(frozen=True)
class Episode:
    """What the reward sees of one episode.

    Attributes:
        ious: IoU after each executed Box/Point action, t = 1..T.
        dices: Dice after each executed action, same length.
        n_actions: Box/Point actions the policy issued (>= len(ious); an invalid one has no mask).
        stopped: the episode ended with Stop (not the turn budget or an error).
        extra: optional context for process terms: ``actions`` (the executed actions, aligned with
            ``masks``), ``masks`` ((H, W) bool after each action), ``gt`` ((H, W) bool); or a
            precomputed value under a term's name.
    """

    ious: tuple[float, ...]
    dices: tuple[float, ...]
    n_actions: int
    stopped: bool
    extra: Mapping[str, Any] = field(default_factory=dict)


#: a term maps (episode, config) -> unweighted value
RewardTerm = Callable[[Episode, RewardConfig], float]
#: registry of top-level reward terms, name -> function; weights come from ``RewardConfig.weight(name)``
REWARD_TERMS: dict[str, RewardTerm] = {}


def register_term(name: str) -> Callable[[RewardTerm], RewardTerm]:
    """Decorator adding a term to ``REWARD_TERMS``; it weighs 0 until a config gives it a weight."""

    def deco(fn: RewardTerm) -> RewardTerm:
        if name in REWARD_TERMS:
            raise ValueError(f"reward term {name!r} is already registered")
        REWARD_TERMS[name] = fn
        return fn

    return deco


def quality_parts(ious: Sequence[float], dices: Sequence[float], n_actions: int, config: RewardConfig) -> dict:
    """Components of the quality term: base, overshoot, turn_cost, improvement (penalties as positive
    amounts) and the clipped ``quality = clip(base - overshoot - turn_cost + improvement, 0, 1)``."""
    t = len(ious)
    if t == 0:
        return {"base": 0.0, "overshoot": 0.0, "turn_cost": 0.0, "improvement": 0.0, "quality": 0.0}
    base = config.iou_weight * ious[-1] + config.dice_weight * dices[-1]
    overshoot = config.overshoot_weight * (max(ious) - ious[-1])
    # every issued action spent a turn, including one that produced no mask
    turn_cost = config.turn_cost * n_actions if n_actions >= config.turn_cost_min_actions else 0.0
    improvement = config.improvement_bonus * sum(max(0.0, b - a) for a, b in zip(ious[:-1], ious[1:], strict=True))
    quality = min(max(base - overshoot - turn_cost + improvement, 0.0), 1.0)
    return {
        "base": base,
        "overshoot": overshoot,
        "turn_cost": turn_cost,
        "improvement": improvement,
        "quality": quality,
    }


@register_term("format")
def format_term(ep: Episode, config: RewardConfig) -> float:
    """F: 1.0 with at least one Box/Point action and a final Stop, 0.5 when exactly one holds, else 0."""
    return 0.5 * (ep.n_actions >= 1) + 0.5 * bool(ep.stopped)


@register_term("quality")
def quality_term(ep: Episode, config: RewardConfig) -> float:
    """clip(base - P + B, 0, 1), see ``quality_parts``."""
    return quality_parts(ep.ious, ep.dices, ep.n_actions, config)["quality"]


@register_term("tool_use")
def tool_use_term(ep: Episode, config: RewardConfig) -> float:
    """Active tool use: 1.0 when at least one action produced a mask, else 0 (stopping at once)."""
    return 1.0 if len(ep.ious) >= 1 else 0.0


@register_term("stop_cost")
def stop_cost_term(ep: Episode, config: RewardConfig) -> float:
    """Stopping cost: -1.0 when the policy did not stop by itself (turn budget or error), else 0."""
    return 0.0 if ep.stopped else -1.0


@register_term("click_placement")
def click_placement_term(ep: Episode, config: RewardConfig) -> float:
    """IBISAgent-style click placement, from ``extra`` actions/masks/gt (0 when they are not given)."""
    if not all(k in ep.extra for k in ("actions", "masks", "gt")):
        return 0.0
    return click_placement(ep.extra["actions"], ep.extra["masks"], ep.extra["gt"])


def click_placement(actions: Sequence[Any], masks: Sequence[np.ndarray], gt: np.ndarray) -> float:
    """Mean over clicks of +1 (positive click in a false-negative pixel, or negative click in a
    false-positive pixel, of the mask *before* the click) or -1 (otherwise); 0 without clicks.

    Args:
        actions: executed actions; ``masks[i]`` is the mask after ``actions[i]``. Non-``Point`` actions
            only advance the mask.
        masks: (H, W) bool per action.
        gt: (H, W) bool ground truth.
    """
    if len(actions) != len(masks):
        raise ValueError(f"{len(actions)} actions but {len(masks)} masks; give the mask after each action")
    gt = np.asarray(gt, dtype=bool)
    prev = np.zeros(gt.shape, dtype=bool)
    scores = []
    for action, mask in zip(actions, masks, strict=True):
        if isinstance(action, Point):
            inside_gt, inside_pred = bool(gt[action.y, action.x]), bool(prev[action.y, action.x])
            fixes = (inside_gt and not inside_pred) if action.positive else (inside_pred and not inside_gt)
            scores.append(1.0 if fixes else -1.0)
        prev = np.asarray(mask, dtype=bool)
    return float(np.mean(scores)) if scores else 0.0


def episode_reward(
    ious: Sequence[float],
    dices: Sequence[float],
    n_actions: int,
    stopped: bool,
    config: RewardConfig | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[float, dict[str, float]]:
    """Scalar reward of one episode and its unweighted terms.

    Args:
        ious: IoU after each executed Box/Point action (t = 1..T), in [0, 1].
        dices: Dice after each executed action, same length.
        n_actions: Box/Point actions issued (Stop excluded), >= len(ious).
        stopped: the episode ended with Stop.
        config: weights; None = the reference's.
        extra: context for process terms (see ``Episode.extra``); a number under a term's name replaces
            that term's computed value.

    Returns:
        ``(total, terms)``; ``terms`` holds every registered term (unweighted) plus the quality parts
        ``base``, ``overshoot``, ``turn_cost`` (penalties as positive amounts) and ``improvement``.

    The reference's worked example: IoU 0.60, 0.80, 0.75, final Dice 0.857, then Stop:

    >>> total, terms = episode_reward([0.60, 0.80, 0.75], [0.70, 0.85, 0.857], n_actions=3, stopped=True)
    >>> round(total, 3), terms["format"], round(terms["base"], 4), round(terms["quality"], 4)
    (0.795, 1.0, 0.8035, 0.7435)
    """
    config = config or RewardConfig()
    extra = dict(extra or {})
    if len(ious) != len(dices):
        raise ValueError(f"{len(ious)} IoUs but {len(dices)} Dices; give one of each per executed action")
    for name, vals in (("iou", ious), ("dice", dices)):
        if any(not (0.0 <= float(v) <= 1.0) for v in vals):
            raise ValueError(f"{name} values must be in [0, 1], got {list(vals)}")
    if n_actions < len(ious):
        raise ValueError(f"n_actions={n_actions} < {len(ious)} executed actions; count every Box/Point issued")
    ious = tuple(float(v) for v in ious)
    dices = tuple(float(v) for v in dices)
    ep = Episode(ious, dices, int(n_actions), bool(stopped), extra)
    terms: dict[str, float] = {}
    for name, fn in REWARD_TERMS.items():
        given = extra.get(name)
        if isinstance(given, numbers.Real) and not isinstance(given, bool):
            terms[name] = float(given)
        else:
            terms[name] = float(fn(ep, config))
    total = sum(config.weight(name) * value for name, value in terms.items())
    parts = quality_parts(ious, dices, ep.n_actions, config)
    terms.update({k: float(v) for k, v in parts.items() if k != "quality"})
    return float(total), terms
