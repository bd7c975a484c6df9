"""``BoxPolicy``: the box-only baseline of the evaluation protocol (docs/architecture.md): one box, then Stop.

The box is either given (a user's hand-off box, so every policy of a run starts from the same one) or
drawn from the ground truth as a user would draw it (``lib.agent.clicks.jittered_box``). One box and
no correction is what a plain promptable segmenter gives; an agent that does not beat it adds nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lib.agent.actions import Action, Box, Stop
from lib.agent.clicks import DEFAULT_BOX_JITTER, jittered_box
from lib.agent.policies.base import Policy


class BoxPolicy(Policy):
    """One box, then Stop.

    Args:
        box: the box in pixels ``(x0, y0, x1, y1)`` inclusive; None = draw a jittered ground-truth box
            each episode (needs ``env`` with ground truth).
        env: the ``SegmentationEnv`` whose ``gt`` the box is drawn from (only when ``box`` is None).
        jitter: side fraction of the jitter (default 0.1, SAM's box noise; see ``jittered_box``).
    """

    name = "box"

    def __init__(self, box: Box | None = None, env: Any = None, jitter: float = DEFAULT_BOX_JITTER) -> None:
        if box is None and env is None:
            raise ValueError("BoxPolicy needs a box, or the env whose ground truth the box is drawn from")
        self.box = box
        self.env = env
        self.jitter = float(jitter)
        self._episode_box: Box | None = None
        self._done = False

    def reset(self, obs: Mapping[str, Any], info: Mapping[str, Any], seed: int | None = None) -> None:
        super().reset(obs, info, seed)
        self._done = False
        if self.box is not None:
            self._episode_box = self.box
            return
        gt = getattr(self.env, "gt", None)
        if gt is None or not gt.any():
            raise ValueError("BoxPolicy without a given box needs ground truth with a target (reset options 'gt')")
        self._episode_box = jittered_box(gt, np.random.default_rng(seed), self.jitter)

    def act(self, obs: Mapping[str, Any], info: Mapping[str, Any]) -> Action:
        if self._episode_box is None:
            raise RuntimeError("call reset() before act()")
        if self._done or info.get("executed", 0) >= 1:
            self.stop_reason = "single_box"
            return Stop()
        self._done = True
        return self._episode_box

    def episode_meta(self) -> dict[str, Any]:
        b = self._episode_box
        return {"box": None if b is None else list(b.as_tuple())}
