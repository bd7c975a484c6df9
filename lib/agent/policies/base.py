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

from lib.agent.actions import Action, Stop


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


class Prefixed(Policy):
    """Play ``prefix`` first (a user's hand-off box/clicks), then let ``policy`` continue.

    Args:
        prefix: actions in pixels, executed in order before ``policy`` is asked anything.
        policy: the policy that finishes the episode; it is reset at the start of the episode as usual,
            so it sees the prefix only through ``obs``/``info`` (executed actions, current mask).
    """

    def __init__(self, prefix: Sequence[Action], policy: Policy) -> None:
        self.prefix = list(prefix)
        self.policy = policy
        self.name = policy.name
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
        return action

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
