"""The policy protocol: what decides the next action of an episode.

A policy sees what the environment returns (``obs``, ``info``; see ``SegmentationEnv``) and answers one
action per call. ``rollout`` calls ``reset`` once at the start of every episode, then ``act`` until the
episode ends, so the same policy object serves inference, trajectory generation and RL.

Oracle policies (the expert, the box baseline drawn from ground truth) hold the environment to read its
ground truth and to look ahead with ``SegmentationEnv.peek``; learned policies must not.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lib.agent.actions import Action, Box, Stop, box_iou
from lib.agent.grammar import GrammarError, parse


class Policy(abc.ABC):
    """Base class of every policy.

    Attributes:
        name: registry name ("expert", "box", ...), recorded in trajectories and reports.
        stop_reason: why the last ``Stop`` was returned ("target_reached", "no_improving_candidate", ...),
            or None; ``rollout`` copies it into the trajectory.
    """

    name: str = "policy"
    stop_reason: str | None = None

    def reset(self, obs: Mapping[str, Any], info: Mapping[str, Any], seed: int | None = None) -> None:
        """Start an episode. ``seed`` makes a stochastic policy reproducible (None: fresh entropy)."""
        self.stop_reason = None

    @abc.abstractmethod
    def act(self, obs: Mapping[str, Any], info: Mapping[str, Any]) -> Action | str:
        """The next action: an ``Action`` in pixels of the slice, or a language policy's tool-call text."""

    def episode_meta(self) -> dict[str, Any]:
        """JSON-ready facts about the current episode (e.g. the expert's strategy) for the trajectory."""
        return {}

    #: the quality predicted at the last ``act`` (estimated IoU of the mask shown; ``lib.agent.quality``), or None
    #: for a policy that predicts none
    last_quality: float | None = None

    def assess(self, obs: Mapping[str, Any], info: Mapping[str, Any]) -> float | None:
        """The predicted quality of the current mask without deciding anything (None: no quality head).
        ``rollout`` asks it for the final mask when the turn budget ended the episode."""
        return None


#: ``Prefixed``'s stop reason when the policy's box would move away from where the prefix's box says the structure is
OUTSIDE_PROMPT = "box_outside_prompt"
#: two boxes frame the same object when their IoU is at least this (the PASCAL VOC / COCO AP50 criterion)
SAME_OBJECT_IOU = 0.5


class Prefixed(Policy):
    """Play ``prefix`` first (a user's hand-off box/clicks), then let ``policy`` continue.

    The prefix's box says where the structure is (the user drew it). The policy may refine it, not replace it
    with another object: with ``anchored`` (default), a ``Box`` of the policy that is not the same object as the
    prefix's last box (its centre outside that box, or box IoU < ``SAME_OBJECT_IOU``, the usual detection
    criterion) is not executed and the episode stops there (``stop_reason`` ``OUTSIDE_PROMPT``), keeping the mask
    it had. A redraw around
    another structure is the demo policy's worst failure on real scans (a lung tumour's box redrawn on the chest
    wall: Dice 0.88 -> 0.00); on the training phantoms its redraws with IoU < 0.5 to the user's box cost 0.046
    Dice on average while those above gained 0.09 (``BENCHMARKS.md``, "Agent on one slice: real CT and MR").

    Args:
        prefix: actions in pixels, executed in order before ``policy`` is asked anything.
        policy: the policy that finishes the episode; it is reset at the start of the episode as usual,
            so it sees the prefix only through ``obs``/``info`` (executed actions, current mask).
        anchored: hold the policy's boxes to the prefix's box (above). Clicks are not held: a click outside the
            box is how a user or the expert adds a part the box cut off. Volume episodes hold the policy to the
            user's prompts on the seed slice only, not to the propagated boxes (their own guess).
    """

    def __init__(self, prefix: Sequence[Action], policy: Policy, anchored: bool = True) -> None:
        self.prefix = list(prefix)
        self.policy = policy
        self.name = policy.name
        self.anchor = next((a for a in reversed(self.prefix) if isinstance(a, Box)), None) if anchored else None
        self._i = 0
        self._asked = False

    def reset(self, obs: Mapping[str, Any], info: Mapping[str, Any], seed: int | None = None) -> None:
        super().reset(obs, info, seed)
        self._i = 0
        self._asked = False
        self.policy.reset(obs, info, seed)

    @property
    def last_quality(self) -> float | None:  # type: ignore[override]
        """The wrapped policy's last quality; None while the prefix plays (nobody judged those masks)."""
        return getattr(self.policy, "last_quality", None) if self._asked else None

    def act(self, obs: Mapping[str, Any], info: Mapping[str, Any]) -> Action | str:
        if self._i < len(self.prefix):
            self._i += 1
            self._asked = False
            return self.prefix[self._i - 1]
        self._asked = True
        action = self.policy.act(obs, info)
        self.stop_reason = self.policy.stop_reason
        if self.anchor is not None and self._moves_away(action, obs):
            self.stop_reason = OUTSIDE_PROMPT
            return Stop()
        return action

    def _moves_away(self, action: Action | str, obs: Mapping[str, Any]) -> bool:
        """True for a box (an ``Action``, or a language policy's tool call) that is not the anchor box's object:
        centred outside it, or box IoU < ``SAME_OBJECT_IOU``."""
        if isinstance(action, str):
            shape = tuple(np.shape(obs["image"])[:2])
            try:
                action = parse(action, shape)
            except GrammarError:
                return False  # the environment reports unparseable text as an invalid action
        if not isinstance(action, Box):
            return False
        a = self.anchor
        cx, cy = (action.x0 + action.x1) / 2.0, (action.y0 + action.y1) / 2.0
        return not (a.x0 <= cx <= a.x1 and a.y0 <= cy <= a.y1) or box_iou(action, a) < SAME_OBJECT_IOU

    def assess(self, obs: Mapping[str, Any], info: Mapping[str, Any]) -> float | None:
        return self.policy.assess(obs, info)

    def episode_meta(self) -> dict[str, Any]:
        return {**self.policy.episode_meta(), "handoff_actions": len(self.prefix)}


class StopPolicy(Policy):
    """Stops at once (the empty-mask floor of an evaluation)."""

    name = "stop"

    def act(self, obs: Mapping[str, Any], info: Mapping[str, Any]) -> Action:
        self.stop_reason = "policy"
        return Stop()
