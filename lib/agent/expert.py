"""The hybrid-prompting expert (docs/architecture.md): an oracle that segments from the ground truth.

Two strategies, mixed per episode (MedSAM-Agent's "hybrid prompting"):

- **Box-to-Point**: a jittered ground-truth box (as a user draws it), then corrective clicks;
- **Sequential-Click**: a positive click at the interior-most ground-truth pixel, then corrective clicks.

Corrective clicks come from the click simulator (``lib.agent.clicks.error_candidates``): one candidate
per false-negative / false-positive connected component, largest first, at its distance-transform
maximum; positive iff it fixes missed target. After the clicks, box redraws (the tight ground-truth box
grown by a few pixels) are candidates too: tools trained on boxes answer them far better than clicks.
If no opening click of Sequential-Click helps (point-only prompts fail on box-trained tools), the
episode opens with the Box-to-Point box instead (``opening_fallback``).

**Progress constraint.** Every candidate is first tried WITHOUT committing it (``SegmentationEnv.peek``
on a clone of the episode's ``Interaction``); it is kept only if it raises IoU by at least ``tau``,
otherwise the next-best candidate is tried, up to ``retries`` more. So IoU never decreases across the
actions of an expert trajectory. The expert stops when IoU >= ``target_iou``, when no candidate helps,
or at ``max_actions``; trajectories in which nothing helped at all are pruned (``keep_trajectory``).

Everything goes through the environment, with the prompting mode the environment was built with: a
trajectory replays exactly in the same env, and its per-turn masks are the ones a learner will see.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lib.agent.actions import Action, Box, Point, Stop
from lib.agent.clicks import error_candidates, interior_point, jittered_box, tight_box
from lib.agent.metrics import iou
from lib.agent.policies.base import Policy

#: strategy names, as recorded in trajectories
BOX_TO_POINT = "box_to_point"
SEQUENTIAL_CLICK = "sequential_click"
HYBRID = "hybrid"
STRATEGIES = (HYBRID, BOX_TO_POINT, SEQUENTIAL_CLICK)


@dataclass(frozen=True)
class ExpertConfig:
    """Knobs of the expert, each default with its reason.

    Attributes:
        box_jitter: side fraction by which each side of the first box moves (uniform +/-). 0.1 = the box
            noise SAM-family models were trained with, i.e. how loose a hand-drawn box is; a policy that
            imitates the expert then sees realistic first masks rather than perfect-box ones.
        tau: minimal IoU gain for an action to be kept. 0.01 (one IoU point) keeps real corrections and
            rejects clicks that only shuffle boundary pixels, which would teach a learner useless turns.
        retries: next-best candidates tried after the best one fails (so up to ``1 + retries`` tries per
            turn). 3: error components beyond the fourth largest are tiny, and each try costs a decoder
            call (~80 ms for LiteMedSAM on CPU), so 4 tries bound an episode at ~20 decoder calls.
        target_iou: stop once IoU reaches this. 0.90 is a mask an annotator accepts without edits on
            abdominal organs (and the NoC@90 level); pushing beyond it mostly learns boundary noise.
        max_actions: executed Box/Point actions per episode. 5 = the environment's default turn budget
            (the reference's inference cap), so expert trajectories never need a longer horizon than
            the policy will get.
        box_to_point_prob: probability of Box-to-Point (else Sequential-Click) for ``strategy="hybrid"``.
            0.5 = the paper's even mix, so the learner sees both openings equally often.
        strategy: "hybrid" (mix per episode), "box_to_point" or "sequential_click" (for ablations).
        rebox_margins: after the click candidates, also try redrawing the box: the tight ground-truth box
            grown by each of these margins (pixels per side), in order; these do not count against
            ``retries``. (0, 2, 4, 6) by default because promptable segmenters trained mostly on boxes
            (LiteMedSAM) answer a careful box far better than any click, and on kidneys the tight box
            often gives IoU < 0.5 while the same box grown by 2-6 px gives > 0.9 (BENCHMARKS.md); ()
            disables it (the paper's click-only corrections).
        selection: how a corrective turn's candidates are tried. "best" (default) = try all of them (the
            ``1 + retries`` clicks and the box redraws) and keep the largest IoU gain, if >= tau. "first" =
            the literal reading of the progress constraint: in rank order, keep the first candidate that
            gains >= tau. "best" is the default because with a 5-action budget "first" spends turns on
            clicks worth +0.01..0.03 before it reaches the redraw that gives +0.3 (LiteMedSAM kidneys:
            91% vs 75% of targets at IoU >= 0.85, BENCHMARKS.md); it costs a few more decoder calls.
            The opening action is always taken "first" (the jittered box stays the user-like box).
        opening_fallback: when no opening click of Sequential-Click gains >= tau, open with the
            Box-to-Point box instead (the episode then continues exactly as Box-to-Point would, and
            ``episode_meta`` says ``fell_back``). On by default because point-only prompts fail on
            box-trained tools (LiteMedSAM: the opening click gives IoU ~0.01, BENCHMARKS.md), and without
            the fallback half of the hybrid trajectories would be pruned.
        prune: drop trajectories in which no action was kept (``keep_trajectory``): they teach only Stop
            on an empty mask.
    """

    box_jitter: float = 0.1
    tau: float = 0.01
    retries: int = 3
    target_iou: float = 0.90
    max_actions: int = 5
    box_to_point_prob: float = 0.5
    strategy: str = HYBRID
    rebox_margins: tuple[int, ...] = (0, 2, 4, 6)
    selection: str = "best"
    opening_fallback: bool = True
    prune: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.box_jitter < 0.5:
            raise ValueError(f"ExpertConfig.box_jitter must be in [0, 0.5) of the box side, got {self.box_jitter}")
        for name, lo, hi in (("tau", 0.0, 1.0), ("target_iou", 0.0, 1.0), ("box_to_point_prob", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or not lo <= v <= hi:
                raise ValueError(f"ExpertConfig.{name} must be a number in [{lo}, {hi}], got {v!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(
                f"ExpertConfig.retries must be an int >= 0 (extra candidates per turn), got {self.retries!r}"
            )
        if isinstance(self.max_actions, bool) or not isinstance(self.max_actions, int) or self.max_actions < 1:
            raise ValueError(f"ExpertConfig.max_actions must be an int >= 1, got {self.max_actions!r}")
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in self.rebox_margins):
            raise ValueError(f"ExpertConfig.rebox_margins must be pixel margins >= 0, got {self.rebox_margins!r}")
        if self.selection not in ("first", "best"):
            raise ValueError(f"ExpertConfig.selection must be 'first' or 'best', got {self.selection!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"ExpertConfig.strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")


class ExpertPolicy(Policy):
    """The oracle (docs/architecture.md), acting through a ``SegmentationEnv`` that holds the ground truth.

    Args:
        env: the environment the episode runs in (read: ``gt``, ``mask``, ``interaction``; look-ahead:
            ``peek``). Its ``prompting`` decides which prompts the tool sees, for the expert as for any
            policy.
        config: ``ExpertConfig``.

    ``reset(obs, info, seed)`` picks the strategy (hybrid: Box-to-Point with ``box_to_point_prob``) and
    the box jitter from ``seed``, so a (seed, slice) pair always gives the same trajectory.
    """

    name = "expert"

    def __init__(self, env: Any, config: ExpertConfig | None = None) -> None:
        self.env = env
        self.config = config or ExpertConfig()
        self.strategy: str | None = None
        self.rng = np.random.default_rng()
        self.tries: list[int] = []
        self.fell_back = False

    def reset(self, obs: Mapping[str, Any], info: Mapping[str, Any], seed: int | None = None) -> None:
        super().reset(obs, info, seed)
        gt = getattr(self.env, "gt", None)
        if gt is None:
            raise ValueError("the expert is an oracle: reset the env with options['gt'] (an (H, W) bool mask)")
        self.rng = np.random.default_rng(seed)
        draw = self.rng.random()  # always drawn, so the box jitter does not depend on the strategy
        if self.config.strategy == HYBRID:
            self.strategy = BOX_TO_POINT if draw < self.config.box_to_point_prob else SEQUENTIAL_CLICK
        else:
            self.strategy = self.config.strategy
        self.tries = []
        self.fell_back = False

    def act(self, obs: Mapping[str, Any], info: Mapping[str, Any]) -> Action:
        if self.strategy is None:
            raise RuntimeError("call reset() before act()")
        gt = self.env.gt
        if not gt.any():
            return self._stop("empty_target")
        mask = self.env.mask
        current = iou(mask, gt)
        if current >= self.config.target_iou:
            return self._stop("target_reached")
        if int(info.get("executed", 0)) >= self.config.max_actions:
            return self._stop("max_actions")
        executed = int(info.get("executed", 0))
        # the opening is always taken in rank order: "best" would trade the user-like jittered box for the tight one
        selection = "first" if executed == 0 else self.config.selection
        choice = self._choose(self.candidates(mask, executed), current, selection)
        if choice is None and executed == 0 and self.strategy == SEQUENTIAL_CLICK and self.config.opening_fallback:
            self.fell_back = True
            choice = self._choose(self._box_opening(), current, "first")
        if choice is None:
            return self._stop("no_improving_candidate")
        return choice

    def _choose(self, candidates: list[Box | Point], current: float, selection: str) -> Box | Point | None:
        """The progress constraint: the first (or best) candidate whose look-ahead gains >= tau, else None."""
        gt, cfg = self.env.gt, self.config
        tried, best, best_gain = 0, None, -1.0
        for candidate in candidates:
            if not self._supported(candidate):
                continue
            tried += 1
            gain = iou(np.asarray(self.env.peek(candidate).mask, dtype=bool), gt) - current
            if gain >= cfg.tau and selection == "first":
                best = candidate
                break
            if gain >= cfg.tau and gain > best_gain:
                best, best_gain = candidate, gain
        self.tries.append(tried)
        return best

    def _box_opening(self) -> list[Box | Point]:
        gt = self.env.gt
        return [jittered_box(gt, self.rng, self.config.box_jitter), tight_box(gt)]

    def candidates(self, mask: np.ndarray, executed: int) -> list[Box | Point]:
        """Actions to try this turn, best first: at most ``1 + retries`` (+ the box redraws after the first turn)."""
        gt, cfg = self.env.gt, self.config
        n = 1 + cfg.retries
        inter = self.env.interaction
        out: list[Box | Point] = []
        if executed == 0 and self.strategy == BOX_TO_POINT:
            out = self._box_opening()
        elif executed == 0:
            first = interior_point(gt)
            out = [first] + [p for p in error_candidates(mask, gt, k=n) if (p.x, p.y) != (first.x, first.y)]
        else:
            clicked = [Point(int(x), int(y), bool(lab)) for (x, y), lab in zip(inter.points, inter.labels, strict=True)]
            out = list(error_candidates(mask, gt, k=n, not_clicked=clicked))
        seen: list[Box | Point] = []
        for c in out:
            if c not in seen:
                seen.append(c)
        seen = seen[:n]
        if executed > 0:
            h, w = gt.shape
            tb = tight_box(gt)
            for m in cfg.rebox_margins:
                box = Box(max(tb.x0 - m, 0), max(tb.y0 - m, 0), min(tb.x1 + m, w - 1), min(tb.y1 + m, h - 1))
                if inter.box != box.as_tuple() and box not in seen:
                    seen.append(box)
        return seen

    def _supported(self, action: Box | Point) -> bool:
        caps = getattr(self.env, "capabilities", None)
        if not caps:
            return True
        return ("box" if isinstance(action, Box) else "point") in caps

    def _stop(self, reason: str) -> Stop:
        self.stop_reason = reason
        return Stop()

    def episode_meta(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "fell_back": self.fell_back, "tries_per_turn": list(self.tries),
                "expert": _config_dict(self.config)}


def _config_dict(config: ExpertConfig) -> dict[str, Any]:
    # JSON-ready: tuples become lists so a trajectory reads back equal to what was written
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()}


def keep_trajectory(ious: list[float] | tuple[float, ...], config: ExpertConfig | None = None) -> bool:
    """Whether an expert trajectory is worth keeping as training data.

    Pruned (False) when ``config.prune`` and no action was kept, i.e. the trajectory does not improve
    on the empty mask: it would only teach Stop. Every kept action raised IoU by >= tau already.
    """
    config = config or ExpertConfig()
    return not config.prune or len(ious) > 0
