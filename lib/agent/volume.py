"""Whole-volume episodes: one target segmented through a (K, J, I) volume, slice episode after slice episode.

A volume episode is a sequence of ordinary slice episodes (``SegmentationEnv`` + ``rollout``, the same as
everywhere else) that share one tool session cache:

1. **Seed slice** ``k0``: hand-off (the user's box and/or clicks on ``k0``, pixels, executed first; the policy
   continues) or autonomous (the policy starts from nothing on the requested slice, default the middle one).
2. **Propagation**, outward in both directions, alternating between them (``k0+1, k0-1, k0+2, ...``). A new
   slice ``k`` starts from the final mask of its neighbour ``k-d``: the first action is the neighbour
   mask's bounding box grown by ``VolumeConfig.margin`` (executed as a ``Prefixed`` Box, so it counts as
   turn 1 of the slice's budget, exactly as a hand-off box does on a slice episode), and, where the backend
   declares ``MASK_INPUT``, the neighbour's final low-resolution logits go along as the dense prompt
   (``DensePromptSession``). The policy then reviews the slice within ``EnvConfig.max_turns``: clicks, a new
   box, or Stop. Where the tool offers a volume memory (``tool.volume_memory(K)``: SAM 2.1 / MedSAM2,
   ``lib/tools/sam2_memory.py``) and ``VolumeConfig.memory`` allows it, the seed slice's final mask is remembered
   as the conditioning frame, every decode on a propagated slice reads the memory of the seed and of its own
   direction (``SliceRecord.memory`` lists the slices read), and each kept slice's final mask is remembered in
   its direction; nothing else changes.
3. **Correction guard** (``VolumeConfig.correction_guard``): on a propagated slice the policy's corrections are
   kept only when the final mask agrees with the neighbour's kept mask (Dice) at least as well as the propagated
   answer did; otherwise the slice keeps the propagated answer (replayed: one decode) and says so
   (``SliceRecord.refused``).
4. **End of structure** (``end_check``): a direction stops when a slice's final mask is empty
   (< ``min_area`` pixels), collapses (area < ``collapse_fraction`` x the last kept slice's area), or the
   tool's predicted IoU of its answer is < ``min_score``, or the median image value under it moved more than
   ``max_intensity_shift`` from the seed mask's (another tissue). One failing slice is bridged
   (``lookahead``): the next slice is tried from the last kept mask, and if it passes, the failing slice keeps
   its own mask and propagation goes on; if it fails too, both are dropped and the direction ends at the
   first of them.

Cost: every slice is encoded at most once per volume (sessions come from a ``SessionCache`` keyed by
(backend, volume key, slice), and a slice is requested once per run), and the next slice of each direction
is encoded ahead in a worker thread while the current one is decided (``VolumeConfig.prefetch``).

Arrays: volumes are (K, J, I) = (slice, row, column); a slice is (H, W) = (J, I) indexed ``[y, x]``;
points are ``(x, y)`` = (column, row) pixels; boxes ``(x0, y0, x1, y1)`` inclusive pixels. Times are seconds
unless a name ends in ``_ms``.

The same ``VolumeEpisode.run`` serves inference (no ground truth), evaluation, active-learning scoring and
training (with ``gt`` the slice episodes carry IoU/Dice and rewards, and each ``SliceRecord`` keeps its
``Trajectory`` and its start state), so each of them sees the states the others produce.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lib.agent.actions import Action, Box, Point, prompts_from_actions
from lib.agent.clicks import tight_box
from lib.agent.env import EnvConfig, SegmentationEnv
from lib.agent.metrics import dice
from lib.agent.policies.base import Policy, Prefixed, StopPolicy
from lib.agent.rollout import episode_seed, rollout
from lib.agent.trajectories import Trajectory
from lib.tools.base import MASK_INPUT, SegOutput, Tool, ToolSession
from lib.tools.cache import SessionCache

#: end-rule verdicts of ``end_check`` (None = the slice passes)
EMPTY, COLLAPSED, LOW_SCORE, INTENSITY = "empty", "collapsed", "low_score", "intensity"
#: why a direction ended when no slice failed the rule
VOLUME_EDGE, EMPTY_SEED = "volume_edge", "empty_seed"
#: embedding bytes of a private cache (``VolumeEpisode`` without a shared cache): visited slices are never
#: revisited within a run, so it only has to hold the slices in flight; 64 MiB = 16 LiteMedSAM embeddings
PRIVATE_CACHE_BYTES = 64 << 20


@dataclass(frozen=True)
class VolumeConfig:
    """How a volume episode propagates and when it stops; each default with its reason.

    Attributes:
        margin_px: minimum growth in pixels of each side of the neighbour mask's bounding box. An organ's
            outline moves between slices; a box that only just fits the neighbour cuts the new slice's
            mask off where it grew. 3 px also matches the 2-6 px the expert's box redraws use.
        margin_fraction: growth of each side as a fraction of the box's side (x sides of its width, y sides
            of its height); the larger of this and ``margin_px`` is used. 0.05: the box must leave the organ
            room to grow, but every pixel of margin is room for a leak that the next slice inherits and grows;
            on the phantoms' training studies 0.05 beat 0.1 by 0.03-0.2 3D Dice for propagation (liver 0.912 vs
            0.706), on the real CT liver by 0.002 (docs/results/volume_agent.md).
        dense_prompt: send the neighbour's final low-res logits as the dense (mask) prompt of the new slice
            where the backend declares ``MASK_INPUT``. The logits are the backend's own answer on the
            neighbour (same volume, so same slice shape and model frame); with ``local_radius`` they are the
            model's answer before the click merge. Default False for the served LiteMedSAM: on the real CT/MR
            sample scans it lowers plain propagation's mean 3D Dice from 0.470 to 0.406 (its released decoder was
            trained with box prompts), see docs/results/volume_agent.md.
        min_area: a final mask with fewer pixels counts as empty (``EMPTY``).
        collapse_fraction: a final mask smaller than this fraction of the last kept slice's mask has
            collapsed (``COLLAPSED``): organs taper gradually between slices, a sudden drop to a sliver
            means the tool lost the structure (or the structure ended).
        min_score: a final answer whose tool-predicted IoU is below this fails (``LOW_SCORE``); NaN scores
            (backends without a quality head) never fail this test.
        max_intensity_shift: a final mask whose median image value (windowed, [0, 1]) differs from the seed
            mask's median by more than this fails (``INTENSITY``): past an organ's end the tool still finds
            "something" in the propagated box, with a confident score and no collapse, but it is another
            tissue. 0.1 of the window = 40 HU for the CT window 400 HU: organs are homogeneous to ~10-20 HU,
            while fat, air, bone and contrast-filled structures differ by > 40 HU. Chosen on the real CT/MR
            samples (0.1 and 0.15 tied except pancreas, 0.235 vs 0.178 for propagation); 1.0 = off.
        lookahead: consecutive failing slices tolerated (bridged when the slice after them passes);
            1 bridges a one-slice gap (a slice of artefact, a partial-volume slice at a thin waist).
        prefetch: encode the next slice of each direction in a worker thread while the current slice is
            decided (one slice ahead per direction).
        memory: where the tool offers a volume memory (``tool.volume_memory(K)``: SAM 2.1 / MedSAM2,
            ``lib/tools/sam2_memory.py``), propagate through it: the seed slice's final mask is the conditioning
            frame, every decode on a propagated slice reads the memory of the seed and of the last slices of its
            own direction, and each kept slice's final mask is remembered in its direction. These models were
            trained to track an object through video frames that way (more context than one neighbour's box);
            a backend without one (LiteMedSAM) ignores it. False = every slice decodes from its own embedding
            only (the image path), as before.
        correction_guard: keep the policy's corrections on a propagated slice only when its final mask agrees
            with the neighbour's kept mask (Dice) at least as well as the propagated answer did; otherwise the
            slice keeps the propagated answer (``SliceRecord.refused``). Neighbouring slices of an organ differ
            by a few pixels of outline, so a correction that moves the mask away from its neighbour is more
            likely a wrong click than a repair, and one that removes a leak or fills a hole the neighbour does
            not have moves it closer. It needs no ground truth and no quality head (which does not rank masks on
            real MR: BENCHMARKS.md, "Quality"). Costs one decode on a refused slice.
        min_fill: when a slice's final mask fills less than this fraction of the last box it was prompted with
            (the user's box on the seed slice, a policy's box, or the propagated box), the next slice starts from
            that same box instead of the mask's bounding box: a mask that fills little of a box drawn around the
            structure undershot it (LiteMedSAM answers a fragment on many real MR slices), and a box shrunk to the
            fragment makes the next answer smaller still. 0 = off (every start box comes from the mask).
    """

    margin_px: int = 3
    margin_fraction: float = 0.05
    dense_prompt: bool = False
    min_area: int = 10
    collapse_fraction: float = 0.25
    min_score: float = 0.5
    max_intensity_shift: float = 0.1
    lookahead: int = 1
    prefetch: bool = True
    memory: bool = True
    correction_guard: bool = False
    min_fill: float = 0.0

    def __post_init__(self) -> None:
        for name in ("margin_px", "min_area", "lookahead"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ValueError(f"VolumeConfig.{name} must be an int >= 0, got {v!r}")
        for name, hi in (("margin_fraction", 1.0), ("collapse_fraction", 1.0), ("min_score", 1.0),
                         ("max_intensity_shift", 1.0), ("min_fill", 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or not 0 <= v <= hi:
                raise ValueError(f"VolumeConfig.{name} must be a number in [0, {hi}], got {v!r}")


def end_check(area: int, score: float, previous_area: int, config: VolumeConfig,
              intensity_shift: float = 0.0) -> str | None:
    """The end-of-structure rule for one slice: why it fails, or None when it passes.

    Args:
        area: pixels of the slice's final mask.
        score: the tool's predicted IoU of its final answer (NaN = none; never fails the score test).
        previous_area: pixels of the last kept mask in this direction (the seed's, at first).
        config: thresholds (``min_area``, ``collapse_fraction``, ``min_score``, ``max_intensity_shift``).
        intensity_shift: |median image value under the mask - the seed mask's median| (windowed units).

    Returns:
        ``EMPTY`` (area < ``min_area``, at least 1 pixel), ``COLLAPSED`` (area < ``collapse_fraction`` x
        ``previous_area``), ``LOW_SCORE`` (score < ``min_score``), ``INTENSITY`` (``intensity_shift`` >
        ``max_intensity_shift``), tested in that order; None = keep it.
    """
    if area < max(1, config.min_area):
        return EMPTY
    if area < config.collapse_fraction * previous_area:
        return COLLAPSED
    if not math.isnan(score) and score < config.min_score:
        return LOW_SCORE
    if intensity_shift > config.max_intensity_shift:
        return INTENSITY
    return None


def propagated_box(mask: np.ndarray, config: VolumeConfig) -> Box:
    """The start box of the next slice: ``mask``'s bounding box grown by the margin, clipped to the slice.

    Args:
        mask: (H, W) bool, non-empty: the neighbour slice's final mask.
        config: ``margin_px`` / ``margin_fraction`` (each side grows by the larger of the two).

    Returns:
        ``Box(x0, y0, x1, y1)`` inclusive pixels.
    """
    tb = tight_box(np.asarray(mask, dtype=bool))
    h, w = mask.shape
    mx = max(config.margin_px, int(round(config.margin_fraction * (tb.x1 - tb.x0 + 1))))
    my = max(config.margin_px, int(round(config.margin_fraction * (tb.y1 - tb.y0 + 1))))
    return Box(max(tb.x0 - mx, 0), max(tb.y0 - my, 0), min(tb.x1 + mx, w - 1), min(tb.y1 + my, h - 1))


class DensePromptSession(ToolSession):
    """A slice's session whose decodes carry the neighbour slice's logits as the dense prompt.

    Every ``predict`` that brings no ``mask_logits`` of its own gets ``logits`` (so with prompting ``all``
    every decode of the slice sees the neighbour's mask; with ``newest``/``all_logits`` the first decode
    does and later ones refine their own logits). Not cached (``nbytes`` 0): it wraps the cached session.

    Args:
        inner: the encoded slice.
        logits: (1, 256, 256) low-res logits of the same backend on a slice of the same volume.
    """

    def __init__(self, inner: ToolSession, logits: np.ndarray) -> None:
        super().__init__(shape=tuple(inner.shape), encoder_ms=float(inner.encoder_ms), nbytes=0)
        self.inner = inner
        self.logits = logits

    def predict(self, box=None, points=(), labels=(), mask_logits=None) -> SegOutput:
        dense = self.logits if mask_logits is None else mask_logits
        return self.inner.predict(box=box, points=points, labels=labels, mask_logits=dense)


@dataclass
class SliceStart:
    """How a propagated slice starts: the neighbour's box (+ margin) and, optionally, its logits.

    Attributes:
        from_slice: the neighbour slice index.
        box: the first action (pixels).
        logits: (1, 256, 256) dense prompt, or None (backend without mask input, or turned off).
        mask: (H, W) bool, the neighbour's final mask: the slice episode's ``prior`` (what a policy with the
            prior channel sees) and what ``VolumeConfig.correction_guard`` compares with; None = a start built
            from a box alone (no prior, no guard).
    """

    from_slice: int
    box: Box
    logits: np.ndarray | None = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)


@dataclass
class SliceRecord:
    """One slice episode of a volume episode.

    Attributes:
        index: slice index k along axis 0 of the (K, J, I) volume.
        direction: 0 = seed slice, +1 = towards larger k, -1 = towards smaller k.
        start: the propagated start state (None on the seed slice).
        turns: Box/Point actions issued on the slice (seed prompts / propagated box included).
        corrective: Box/Point actions the POLICY issued (beyond the seed prompts / the propagated box).
        actions: every issued action as a dict (pixels), as in ``Trajectory.actions``.
        stop_reason: why the slice episode ended ("budget", the policy's reason, ...).
        score: the tool's predicted IoU of its final answer (NaN when nothing was decoded).
        predicted_quality: the policy's own (calibrated) quality estimate of the final mask, if it predicts one
            (``Trajectory.final_quality``).
        area: pixels of the final mask.
        intensity: median windowed image value under the final mask (NaN when empty).
        check: ``end_check`` verdict (None = passed; always None on the seed slice).
        kept: the mask was written into the volume (seed, passed, or bridged).
        bridged: a failing slice kept because the slice after it passed.
        refused: the policy's corrections on the slice were not kept (``VolumeConfig.correction_guard``): its
            mask, score and logits are the propagated answer's; ``actions`` still lists what the policy issued.
        encoder_s: encoder seconds this run paid for the slice (0 when the session was cached before).
        encoder_cached: the session came from the cache (encoded before this run).
        wait_s: seconds the episode waited for the slice's embedding (0 when prefetched in time).
        decoder_s / policy_s / total_s: of the slice episode (look-ahead decodes included; total = wait +
            episode).
        session_encoder_s: what computing the slice's embedding cost when it was computed (this run or an
            earlier request): the encoder time a visit stands for.
        memory: slices whose memories the slice's decodes read (the seed first; ``VolumeConfig.memory``), None =
            decoded without memory (the seed slice, or a backend without one).
        memory_s: seconds spent encoding the slice's final mask into the memory (0 without memory).
        mask: (H, W) bool final mask of the slice (also when not kept).
        logits: (1, 256, 256) the tool's last low-res logits on the slice (the next slice's dense prompt).
        trajectory: the slice episode (with ``gt``: IoU/Dice per turn, rewards) for training and scoring.
    """

    index: int
    direction: int
    start: SliceStart | None
    turns: int
    corrective: int
    actions: list[dict[str, Any]]
    stop_reason: str | None
    score: float
    predicted_quality: float | None
    area: int
    intensity: float = float("nan")
    check: str | None = None
    kept: bool = False
    bridged: bool = False
    refused: bool = False
    encoder_s: float = 0.0
    encoder_cached: bool = False
    wait_s: float = 0.0
    decoder_s: float = 0.0
    policy_s: float = 0.0
    total_s: float = 0.0
    session_encoder_s: float = 0.0
    memory: list[int] | None = None
    memory_s: float = 0.0
    mask: np.ndarray | None = field(default=None, repr=False)
    logits: np.ndarray | None = field(default=None, repr=False)
    trajectory: Trajectory | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays, no trajectory)."""
        start = None if self.start is None else {"from_slice": self.start.from_slice,
                                                 "box": list(self.start.box.as_tuple()),
                                                 "dense_prompt": self.start.logits is not None}
        return {
            "index": self.index, "direction": self.direction, "start": start, "turns": self.turns,
            "corrective": self.corrective, "actions": self.actions, "stop_reason": self.stop_reason,
            "score": None if math.isnan(self.score) else self.score, "predicted_quality": self.predicted_quality,
            "area": self.area, "intensity": None if math.isnan(self.intensity) else self.intensity,
            "check": self.check, "kept": self.kept, "bridged": self.bridged, "refused": self.refused,
            "encoder_s": self.encoder_s, "encoder_cached": self.encoder_cached, "wait_s": self.wait_s,
            "decoder_s": self.decoder_s, "policy_s": self.policy_s, "total_s": self.total_s,
            "memory": self.memory, "memory_s": self.memory_s,
        }


@dataclass
class VolumeResult:
    """What a volume episode produced.

    Attributes:
        mask: (K, J, I) bool, the target through the volume (kept slices only).
        target: label name.
        seed_slice: k of the seed slice.
        handoff: True when the seed slice started from the caller's prompts.
        slices: every visited slice, in visit order (seed first).
        ends: ``{+1: {"slice": k, "reason": ...}, -1: {...}}``: where and why each direction stopped;
            ``slice`` is the first dropped slice (or the volume edge, k = -1 or K).
        timings: ``wall_s`` (the whole run), ``encoder_s`` (encoder seconds this run paid, worker included),
            ``encoder_s_visited`` (encoder seconds of the visited slices' sessions, however they were
            cached), ``wait_s`` (waiting for embeddings), ``decoder_s``, ``policy_s``, ``encoder_calls``
            (``Tool.start`` calls of this run, prefetched slices never visited included), ``prefetched``,
            ``memory_s`` (encoding final masks into the memory).
        memory: the run propagated through the tool's volume memory (``VolumeConfig.memory``).
    """

    mask: np.ndarray
    target: str
    seed_slice: int
    handoff: bool
    slices: list[SliceRecord]
    ends: dict[int, dict[str, Any]]
    timings: dict[str, float]
    memory: bool = False

    @property
    def visited(self) -> list[int]:
        """Slice indices visited, in visit order."""
        return [s.index for s in self.slices]

    @property
    def kept(self) -> list[int]:
        """Slice indices whose masks are in ``mask``, ascending."""
        return sorted(s.index for s in self.slices if s.kept)

    @property
    def corrective_actions(self) -> int:
        """Box/Point actions the policy issued over the volume (seed prompts and propagated boxes excluded)."""
        return sum(s.corrective for s in self.slices)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {"target": self.target, "seed_slice": self.seed_slice, "handoff": self.handoff,
                "visited": self.visited, "kept": self.kept, "corrective_actions": self.corrective_actions,
                "ends": {str(d): dict(e) for d, e in self.ends.items()}, "timings": dict(self.timings),
                "memory": self.memory, "slices": [s.to_dict() for s in self.slices]}


PolicyLike = Policy | Callable[[SegmentationEnv], Policy]


def session_key(tool: Tool, key: Hashable, k: int) -> tuple:
    """Session-cache key of slice k of the volume identified by ``key`` (backend name first, so two
    backends never share an embedding)."""
    return (str(getattr(tool, "name", type(tool).__name__)), key, int(k))


class VolumeEpisode:
    """Runs volume episodes of one policy over one tool; reusable across volumes and targets.

    Args:
        tool: the promptable segmenter.
        policy: a ``Policy``, or a factory ``env -> Policy`` for policies that hold the environment (the
            expert reads its ground truth and looks ahead with ``peek``).
        env_config: rules of every slice episode (turn budget per slice, prompting, local merge).
        config: propagation and end rule (``VolumeConfig``).
        cache: session cache to share (e.g. the app's provider cache, or one shared by the runs of an
            evaluation); None = a private cache per run. Keys are ``(tool name, key, k)`` (see ``run``).

    ``run`` is the only entry point; calls on one object are serialised (one environment, one policy).
    """

    def __init__(self, tool: Tool, policy: PolicyLike, env_config: EnvConfig | None = None,
                 config: VolumeConfig | None = None, cache: SessionCache | None = None) -> None:
        self.tool = tool
        self.env_config = env_config or EnvConfig()
        self.config = config or VolumeConfig()
        self.cache = cache
        self.env = SegmentationEnv(tool, self.env_config)
        self.policy = policy if isinstance(policy, Policy) else policy(self.env)
        if not isinstance(self.policy, Policy):
            raise TypeError(f"policy must be a Policy or a factory env -> Policy, got {type(self.policy).__name__}")
        self.dense = self.config.dense_prompt and MASK_INPUT in frozenset(getattr(tool, "capabilities", ()))
        self.memory = self.config.memory and callable(getattr(tool, "volume_memory", None))
        self._lock = threading.Lock()

    # -- the entry point ---------------------------------------------------------------------------------
    def run(self, volume: np.ndarray, target: str, *, seed_slice: int | None = None,
            prompts: Sequence[Box | Point] = (), gt: np.ndarray | None = None, seed: int = 0,
            key: Hashable | Callable[[int], Hashable] | None = None,
            meta: Mapping[str, Any] | None = None,
            progress: Callable[[int], None] | None = None) -> VolumeResult:
        """Segment ``target`` through ``volume``.

        Args:
            volume: (K, J, I) float in [0, 1], windowed by the caller (any array-like with ``shape`` and
                ``volume[k]`` giving the (J, I) slice).
            target: label name (the policy must know it).
            seed_slice: k of the seed slice; None = the middle slice ``K // 2`` (hand-off needs it).
            prompts: hand-off prompts on the seed slice (``Box`` / ``Point`` in pixels), executed first, in
                order; empty = autonomous (the policy starts from nothing). They count against the seed
                slice's turn budget, so at most ``env_config.max_turns`` of them.
            gt: optional (K, J, I) bool ground truth (evaluation, training, the expert): slice episodes then
                score every turn. It never influences the end rule.
            seed: base seed; slice k's episode seed is ``episode_seed(seed, volume id, target, k)``.
            key: identifies the windowed volume in the session cache (e.g. file identity + windowing), or a
                function ``k -> cache key`` of slice k; None = a fresh identity (nothing shared with other
                runs). Slice k is cached under ``(tool name, key, k)``.
            meta: copied into every slice trajectory's ``source`` (e.g. ``case_id``).
            progress: called with the number of slices visited so far after each slice (long-request logging).

        Returns:
            ``VolumeResult``.
        """
        with self._lock:
            run = _Run(self, volume, target, seed_slice, prompts, gt, seed, key, meta)
            run.progress = progress
            return run.execute()

    def run_slice(self, volume: np.ndarray, target: str, k: int, start: SliceStart | None = None, *,
                  prompts: Sequence[Box | Point] = (), gt: np.ndarray | None = None, seed: int = 0,
                  key: Hashable | Callable[[int], Hashable] | None = None,
                  meta: Mapping[str, Any] | None = None) -> SliceRecord:
        """Play ONE slice episode of a volume from a given start state, without propagating.

        For training on volume start states: ``start`` is a ``SliceRecord.start`` recorded by ``run`` (the
        neighbour's box + margin and, when dense prompts are on, its logits), so a sampling policy can be rolled
        out G times from the very state a volume episode met (GRPO groups). ``start`` None = the seed-slice
        episode (``prompts`` = hand-off prompts, or none = autonomous). Arguments as in ``run``; the record's
        ``check`` is not set (there is no previous slice to compare with here), and the slice is played
        without volume memory (there are no remembered slices here).
        """
        with self._lock:
            r = _Run(self, volume, target, k, prompts, gt, seed, key, meta)
            r.memory = None
            return r._slice(int(k), 0 if start is None else int(np.sign(k - start.from_slice)), start)


class _Direction:
    """Propagation state of one direction (+1 or -1)."""

    def __init__(self, step: int, seed: SliceRecord) -> None:
        self.step = step
        self.next = seed.index + step
        self.last = seed  # the last kept slice: the next start comes from it
        self.pending: list[SliceRecord] = []  # failing slices awaiting a bridge
        self.alive = seed.area > 0
        self.end: dict[str, Any] = {} if self.alive else {"slice": seed.index + step, "reason": EMPTY_SEED}


class _Run:
    """One ``VolumeEpisode.run``: holds the per-run state (futures, counters) so the episode object stays clean."""

    def __init__(self, ep: VolumeEpisode, volume, target, seed_slice, prompts, gt, seed, key, meta) -> None:
        shape = tuple(int(s) for s in np.shape(volume))
        if len(shape) != 3:
            raise ValueError(f"a volume episode needs a (K, J, I) volume, got shape {shape}")
        self.ep, self.volume, self.target = ep, volume, str(target)
        self.K = shape[0]
        k0 = self.K // 2 if seed_slice is None else int(seed_slice)
        if not 0 <= k0 < self.K:
            raise ValueError(f"seed slice {k0} is outside the volume (K = {self.K} slices)")
        self.k0 = k0
        self.prompts = list(prompts)
        if any(not isinstance(p, (Box, Point)) for p in self.prompts):
            raise TypeError("hand-off prompts must be Box / Point actions in pixels of the seed slice")
        if len(self.prompts) > ep.env_config.max_turns:
            raise ValueError(f"{len(self.prompts)} hand-off prompts exceed the seed slice's turn budget "
                             f"({ep.env_config.max_turns}); raise EnvConfig.max_turns")
        if gt is not None:
            gt = np.asarray(gt)
            if gt.dtype != bool or gt.shape != shape:
                raise ValueError(f"gt must be a (K, J, I) bool mask of the volume's shape {shape}, got "
                                 f"{gt.dtype} {gt.shape}")
        self.gt = gt
        self.progress: Callable[[int], None] | None = None
        self.seed = int(seed)
        self.volume_id = uuid.uuid4().hex if key is None else key
        self.key_of = key if callable(key) else (lambda k: session_key(ep.tool, self.volume_id, k))
        self.meta = dict(meta or {})
        self.cache = ep.cache if ep.cache is not None else SessionCache(PRIVATE_CACHE_BYTES)
        self.futures: dict[int, Future] = {}
        self.requested: set[int] = set()
        self.encoded: dict[int, float] = {}  # k -> encoder seconds paid by this run
        self.counter_lock = threading.Lock()
        self.encoder_calls = 0
        self.prefetched = 0
        self.session_bytes = 0
        self.pool: ThreadPoolExecutor | None = None
        # the tool's volume memory (VolumeConfig.memory), and the sessions of visited slices it has yet to remember
        self.memory = ep.tool.volume_memory(self.K) if ep.memory else None
        self.unremembered: dict[int, ToolSession] = {}

    # -- sessions ------------------------------------------------------------------------------------------
    def _encode(self, k: int) -> ToolSession:
        def start() -> ToolSession:
            t0 = time.perf_counter()
            session = self.ep.tool.start(np.asarray(self.volume[k]))
            with self.counter_lock:
                self.encoder_calls += 1
                self.encoded[k] = time.perf_counter() - t0
            return session

        session, _ = self.cache.get_or_start(self.key_of(k), start)
        self.session_bytes = max(self.session_bytes, int(session.nbytes))
        return session

    def _prefetch(self, k: int) -> None:
        if self.pool is None or not 0 <= k < self.K or k in self.requested:
            return
        # prefetch only when the cache can hold the slice in use plus one ahead per direction; otherwise a
        # prefetched embedding would push the current one out (the run still holds both, but a shared
        # cache would lose what other requests put there)
        if self.session_bytes and self.cache.max_bytes < 3 * self.session_bytes:
            return
        self.requested.add(k)
        self.futures[k] = self.pool.submit(self._encode, k)
        self.prefetched += 1

    def _session(self, k: int) -> tuple[ToolSession, float]:
        """(session of slice k, seconds waited for it)."""
        t0 = time.perf_counter()
        fut = self.futures.pop(k, None)
        if fut is not None:
            session = fut.result()
        else:
            if k in self.requested:
                raise RuntimeError(f"slice {k} was requested twice in one volume episode")
            self.requested.add(k)
            session = self._encode(k)
        return session, time.perf_counter() - t0

    def _cancel(self, k: int) -> None:
        fut = self.futures.pop(k, None)
        if fut is not None:
            fut.cancel()  # a prefetch already running finishes (and counts as an encoder call)

    # -- one slice -----------------------------------------------------------------------------------------
    def _slice(self, k: int, direction: int, start: SliceStart | None,
               then: Callable[[], Any] | None = None) -> SliceRecord:
        """Play slice k's episode (from ``start``, or from the hand-off prompts / nothing on the seed slice);
        ``then`` runs once the slice's embedding is ready, before the episode (the seed's prefetches)."""
        ep = self.ep
        session, wait_s = self._session(k)
        if then is not None:
            then()
        cached = k not in self.encoded
        session_used: ToolSession = session
        attended = None
        if self.memory is not None:
            self.unremembered[k] = session
            if start is not None:  # the seed is the conditioning frame: it decodes without memory
                session_used = self.memory.session(k, direction, session)
                attended = list(session_used.attended)
        if start is not None and start.logits is not None:
            session_used = DensePromptSession(session_used, start.logits)
        prefix: list[Action] = list(self.prompts) if start is None else [start.box]
        # only the user's prompts hold the policy to their box: a propagated box is the episode's own guess of
        # where the structure moved, which the policy may replace (held to it, the phantoms' volume Dice fell
        # from 0.701 to 0.696: shifted pancreas and kidney boxes were refused)
        agent = Prefixed(prefix, ep.policy, anchored=start is None) if prefix else ep.policy
        options = {
            "image": np.asarray(self.volume[k], dtype=np.float32),
            "session": session_used,
            "gt": None if self.gt is None else self.gt[k],
            "target": self.target,
            "prior": None if start is None else start.mask,
            "meta": {"case_id": str(self.meta.get("case_id", self.volume_id)), "slice_index": int(k), "axis": 0,
                     "source": {**self.meta, "volume_direction": direction,
                                "from_slice": None if start is None else start.from_slice}},
        }
        slice_seed = episode_seed(self.seed, self.meta.get("case_id", ""), self.target, k)
        traj = rollout(ep.env, agent, options, seed=slice_seed)
        last = ep.env.interaction.last
        mask = np.array(ep.env.mask, dtype=bool)
        issued = [a for a in traj.actions if a.get("type") != "stop"]
        pixels = options["image"]
        timings = dict(traj.timings)
        refused = False
        if ep.config.correction_guard and start is not None and start.mask is not None and len(issued) > len(prefix):
            # the propagated answer, replayed (deterministic: same session, same box), against the corrections
            replay = rollout(ep.env, Prefixed(prefix, StopPolicy(), anchored=False), options, seed=slice_seed)
            for name in ("decoder_ms", "total_ms"):
                timings[name] += replay.timings[name]
            propagated = np.array(ep.env.mask, dtype=bool)
            if dice(propagated, start.mask) > dice(mask, start.mask):
                refused, last, mask = True, ep.env.interaction.last, propagated
        return SliceRecord(
            index=int(k), direction=direction, start=start, turns=len(issued),
            corrective=max(len(issued) - len(prefix), 0), actions=list(traj.actions),
            stop_reason=traj.stop_reason, score=float("nan") if last is None else float(last.score),
            predicted_quality=traj.final_quality, area=int(mask.sum()),
            intensity=float(np.median(pixels[mask])) if mask.any() else float("nan"),
            encoder_s=self.encoded.get(k, 0.0), encoder_cached=cached, wait_s=wait_s,
            decoder_s=timings["decoder_ms"] / 1e3, policy_s=timings["policy_ms"] / 1e3,
            total_s=timings["total_ms"] / 1e3 + wait_s, session_encoder_s=float(session.encoder_ms) / 1e3,
            memory=attended, mask=mask, refused=refused,
            logits=None if last is None else np.asarray(last.logits), trajectory=traj)

    def _remember(self, rec: SliceRecord) -> None:
        """Encode a kept slice's final mask into the tool's volume memory (the seed's as the conditioning frame)."""
        if self.memory is not None:
            rec.memory_s = self.memory.remember(rec.index, rec.direction, self.unremembered.pop(rec.index), rec.mask)

    def _start_from(self, rec: SliceRecord) -> SliceStart:
        logits = rec.logits if self.ep.dense else None
        box = propagated_box(rec.mask, self.ep.config)
        if self.ep.config.min_fill > 0:  # off by default: no action parsing on every propagated slice
            prompted, _ = prompts_from_actions(rec.actions)
            held = None if prompted is None else Box(*prompted)
            if held is not None and rec.area < self.ep.config.min_fill * held.area:
                box = held  # the mask undershot the box it was asked for (VolumeConfig.min_fill)
        return SliceStart(from_slice=rec.index, box=box, logits=logits, mask=rec.mask)

    # -- the whole volume ----------------------------------------------------------------------------------
    def execute(self) -> VolumeResult:
        t0 = time.perf_counter()
        cfg = self.ep.config
        out = np.zeros(np.shape(self.volume), dtype=bool)
        records: list[SliceRecord] = []
        if cfg.prefetch:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="volume-prefetch")
        try:
            # the seed slice is encoded here, then decided while both of its neighbours are encoded
            seed = self._slice(self.k0, 0, None, then=lambda: (self._prefetch(self.k0 + 1),
                                                                self._prefetch(self.k0 - 1)))
            seed.kept = True
            self._remember(seed)
            self.seed_intensity = seed.intensity
            self._record(records, seed)
            out[self.k0] = seed.mask
            dirs = [_Direction(+1, seed), _Direction(-1, seed)]
            for d in dirs:
                if not d.alive:
                    self._cancel(d.next)
            while any(d.alive for d in dirs):
                for d in dirs:  # alternate, so each direction's next slice is the one being prefetched
                    if d.alive:
                        self._advance(d, out, records)
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
        visited = {r.index for r in records}
        timings = {
            "wall_s": time.perf_counter() - t0,
            "encoder_s": float(sum(self.encoded.values())),
            "encoder_s_visited": float(sum(r.session_encoder_s for r in records)),
            "wait_s": float(sum(r.wait_s for r in records)),
            "decoder_s": float(sum(r.decoder_s for r in records)),
            "policy_s": float(sum(r.policy_s for r in records)),
            "encoder_calls": int(self.encoder_calls),
            "prefetched": int(self.prefetched),
            "encoded_not_visited": int(sum(1 for k in self.encoded if k not in visited)),
            "memory_s": float(sum(r.memory_s for r in records)),
        }
        ends = {d.step: d.end for d in dirs}
        return VolumeResult(mask=out, target=self.target, seed_slice=self.k0, handoff=bool(self.prompts),
                            slices=records, ends=ends, timings=timings, memory=self.memory is not None)

    def _record(self, records: list[SliceRecord], rec: SliceRecord) -> None:
        records.append(rec)
        if self.progress is not None:
            self.progress(len(records))

    def _advance(self, d: _Direction, out: np.ndarray, records: list[SliceRecord]) -> None:
        """Visit the next slice of direction ``d`` and apply the end rule."""
        k = d.next
        if not 0 <= k < self.K:
            first = d.pending[0] if d.pending else None  # an unbridged failing slice at the edge is dropped
            self._finish(d, k if first is None else first.index, VOLUME_EDGE if first is None else first.check)
            return
        self._prefetch(k + d.step)
        rec = self._slice(k, d.step, self._start_from(d.last))
        self._record(records, rec)
        shift = abs(rec.intensity - self.seed_intensity) if rec.area else 0.0
        rec.check = end_check(rec.area, rec.score, d.last.area, self.ep.config, shift)
        if rec.check is None:
            for gap in d.pending:  # the structure goes on past the failing slice(s): keep their own masks
                gap.kept = gap.bridged = True
                out[gap.index] = gap.mask
                self._remember(gap)
            d.pending = []
            rec.kept = True
            self._remember(rec)
            out[k] = rec.mask
            d.last = rec
            d.next = k + d.step
        elif len(d.pending) < self.ep.config.lookahead:
            d.pending.append(rec)  # try the next slice from the last kept mask before giving up
            d.next = k + d.step
        else:
            first = d.pending[0] if d.pending else rec
            self._finish(d, first.index, first.check)
            self._cancel(k + d.step)

    @staticmethod
    def _finish(d: _Direction, k: int, reason: str) -> None:
        """End direction ``d`` at slice k (the first dropped one) for ``reason``; pending slices stay dropped."""
        d.pending = []
        d.alive = False
        d.end = {"slice": int(k), "reason": reason}
