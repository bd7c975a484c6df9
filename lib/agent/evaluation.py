"""Slice evaluation: every (case, slice, label) target once, many policies side by side on one encoding.

``evaluate_targets`` is the one evaluation loop of the project (``scripts/evaluate.py`` and the agent
benchmark both call it). For each target the slice is encoded ONCE and that session is shared by every
run, so runs differ only in their prompts; in hand-off mode every run starts from the same jittered
ground-truth box, drawn from the target's own seed (``episode_seed(seed, case, slice, label)``), exactly as a
user would draw it. Episodes are played under one ``EpisodeSettings`` (prompting, local merge, turn budget,
CT window, box jitter) = what the app serves unless the caller says otherwise.

Policies come from ``POLICIES`` (``register_policy``): ``expert`` and ``box`` read the ground truth (oracles:
upper bounds, never deployable results); ``ellipse`` is the trivial mask inscribed in the hand-off box (no
model at all); ``compact`` and ``vlm`` load a checkpoint folder.

Metrics per target: Dice / IoU after every turn 0..T (turn 0 = empty mask), final Dice / IoU, turns,
stop reason, NoC@85/90 of the standard click simulator with this tool (``lib.agent.metrics.noc``), and
encoder / decoder / policy milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from lib.agent.actions import Box
from lib.agent.clicks import jittered_box
from lib.agent.env import SegmentationEnv
from lib.agent.expert import ExpertConfig, ExpertPolicy
from lib.agent.metrics import dice, iou, noc
from lib.agent.policies.base import Policy, Prefixed
from lib.agent.policies.box import BoxPolicy
from lib.agent.policies.ellipse import ellipse_mask
from lib.agent.quality import (
    STOP_GRID,
    QualityCalibration,
    calibration_metrics,
    gated_stop,
    judged_masks,
    learned_stop,
    nan_to_none,
    quality_pairs,
)
from lib.agent.rollout import episode_seed, rollout, sample_options, tool_name, window_slice
from lib.agent.settings import EpisodeSettings
from lib.agent.trajectories import Trajectory
from lib.data.dataset import SliceSample
from lib.tools.base import Tool

MODES = ("autonomous", "handoff")
#: the baselines a slice evaluation runs beside the policy by default (ellipse: hand-off mode only)
SLICE_BASELINES = ("box", "expert", "ellipse")
#: policies that read the ground truth (oracles): reported as upper bounds, never as deployable results
ORACLES = {"expert", "box"}


@dataclass(frozen=True)
class Run:
    """One policy in one mode, as a column of an evaluation.

    Attributes:
        policy: a ``POLICIES`` name.
        mode: "handoff" (the jittered ground-truth box is the first action) or "autonomous".
        checkpoint: folder of the policy's weights (compact: policy.pt + policy.json; vlm: a Qwen-VL folder).
        name: the run's key in the results (default ``policy``).
        stop_quality: quality-gated stop of a compact policy (``CompactPolicy.stop_quality``: a threshold, or
            "auto" = the one validated with its calibration); None = the learned stop.
        raw_quality: play the compact policy without its stored quality calibration, so trajectories record the
            value head's raw qualities (its actions do not depend on them unless ``stop_quality`` is set); the
            evaluation then reports raw and calibrated metrics from the same episodes (``quality_results``).
    """

    policy: str
    mode: str = "handoff"
    checkpoint: str | None = None
    name: str = ""
    stop_quality: float | str | None = None
    raw_quality: bool = False

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; registered: {', '.join(sorted(POLICIES))}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.policy == "ellipse" and self.mode != "handoff":
            raise ValueError("the ellipse baseline needs hand-off mode: it is inscribed in the user's box")
        if self.raw_quality and self.stop_quality is not None:
            raise ValueError("a quality-gated stop reads the calibrated quality: raw_quality must be False with it")
        if self.stop_quality is not None and self.policy != "compact":
            raise ValueError("a quality-gated stop needs a policy that predicts a quality (compact), "
                             f"not {self.policy!r}")
        if not self.name:
            object.__setattr__(self, "name", self.policy)

    @property
    def handoff(self) -> bool:
        return self.mode == "handoff"


@dataclass
class PolicyContext:
    """What a policy factory may use: the run, the episode settings, and loaded checkpoints (shared)."""

    settings: EpisodeSettings
    device: str = "cpu"
    loaded: dict[tuple, Policy] = field(default_factory=dict)

    def load(self, kind: str, path: str | None, loader: Callable[[str], Policy], variant: Any = None) -> Policy:
        """The policy of ``kind`` in ``path`` (loaded once per ``variant``: e.g. one object per stop rule)."""
        if not path:
            raise ValueError(f"--policy {kind} needs --checkpoint DIR (its weights folder)")
        key = (kind, path) if variant is None else (kind, path, variant)
        if key not in self.loaded:
            self.loaded[key] = loader(path)
        return self.loaded[key]


#: a policy factory: (env, run, hand-off box of this target, context) -> Policy that starts from nothing; the
#: evaluation prefixes the hand-off box itself in hand-off mode unless the factory consumes it (``box``).
PolicyFactory = Callable[[SegmentationEnv, Run, Box, PolicyContext], Policy]
POLICIES: dict[str, PolicyFactory | None] = {}
#: factories that already start from the hand-off box (no prefix added)
_OWN_BOX: set[str] = set()


def register_policy(name: str, uses_box: bool = False) -> Callable[[PolicyFactory], PolicyFactory]:
    """Add a policy by name; ``uses_box``: the factory plays the hand-off box itself."""

    def deco(fn: PolicyFactory) -> PolicyFactory:
        POLICIES[name] = fn
        if uses_box:
            _OWN_BOX.add(name)
        return fn

    return deco


@register_policy("expert")
def _expert(env: SegmentationEnv, run: Run, box: Box, ctx: PolicyContext) -> Policy:
    return ExpertPolicy(env, ExpertConfig(max_actions=ctx.settings.max_turns, box_jitter=ctx.settings.box_jitter))


@register_policy("box", uses_box=True)
def _box(env: SegmentationEnv, run: Run, box: Box, ctx: PolicyContext) -> Policy:
    return BoxPolicy(box=box)  # one box in both modes: the hand-off box


POLICIES["ellipse"] = None  # no factory: a mask without a tool (lib.agent.policies.ellipse), scored directly


@register_policy("compact")
def _compact(env: SegmentationEnv, run: Run, box: Box, ctx: PolicyContext) -> Policy:
    from lib.agent.policies.compact import CompactPolicy

    raw = {"calibration": None} if run.raw_quality else {}
    variant = (run.stop_quality, run.raw_quality) if run.stop_quality is not None or run.raw_quality else None
    return ctx.load("compact", run.checkpoint, lambda p: CompactPolicy.load(
        p, device=ctx.device, stop_quality=run.stop_quality, **raw), variant=variant)


@register_policy("vlm")
def _vlm(env: SegmentationEnv, run: Run, box: Box, ctx: PolicyContext) -> Policy:
    from lib.agent.policies.vlm import VLMConfig, VLMPolicy

    return ctx.load("vlm", run.checkpoint, lambda p: VLMPolicy.from_pretrained(
        p, VLMConfig(device="auto" if ctx.device == "cpu" else ctx.device)))


# -- per-episode scoring ------------------------------------------------------------------------------
def turn_curves(traj: Trajectory, gt: np.ndarray, max_turns: int) -> dict[str, list[float]]:
    """Dice / IoU after turn 0..max_turns (turn 0 = empty mask). A turn is a Box/Point action issued; an
    invalid one leaves the mask as it was; after the episode ends the final mask carries forward."""
    empty = np.zeros(gt.shape, dtype=bool)
    d, j = [dice(empty, gt)], [iou(empty, gt)]
    k = 0
    for a in traj.actions:
        if a.get("type") == "stop":
            continue
        if "invalid" not in a and k < len(traj.dices):
            d.append(traj.dices[k])
            j.append(traj.ious[k])
            k += 1
        else:
            d.append(d[-1])
            j.append(j[-1])
    while len(d) < max_turns + 1:
        d.append(d[-1])
        j.append(j[-1])
    return {"dice": d[: max_turns + 1], "iou": j[: max_turns + 1]}


def score_episode(traj: Trajectory, gt: np.ndarray, max_turns: int) -> dict[str, Any]:
    """One episode's scores against ``gt`` ((H, W) bool), with what the policy and the tool predicted of their
    masks' quality: ``quality_pairs`` ([predicted, true IoU, tool IoU output] per mask the policy judged, see
    ``lib.agent.quality``), ``tool_pairs`` ([tool IoU output, true IoU] of the same masks) and ``decisions`` (per
    policy decision on a non-empty mask: its predicted quality, the tool's IoU output, and the Dice, IoU and turns
    so far of the mask it judged: what a quality-gated stop there would have answered)."""
    curves = turn_curves(traj, gt, max_turns)
    stopped_by_budget = traj.stop_reason == "budget"
    pairs = quality_pairs(traj.actions, traj.qualities, traj.ious, traj.final_quality, stopped_by_budget, traj.scores)
    return {
        "dice_per_turn": curves["dice"],
        "iou_per_turn": curves["iou"],
        "final_dice": curves["dice"][-1],
        "final_iou": curves["iou"][-1],
        "turns": sum(1 for a in traj.actions if a.get("type") != "stop"),
        "executed": traj.n_actions,
        "invalid": traj.n_invalid,
        "stop_reason": traj.stop_reason,
        "decoder_ms": traj.timings["decoder_ms"],
        "policy_ms": traj.timings["policy_ms"],
        "final_quality": traj.final_quality,
        "quality_pairs": [list(p) for p in pairs],
        "tool_pairs": [[p[2], p[1]] for p in pairs if np.isfinite(p[2])],
        "decisions": _decisions(traj),
    }


def _decisions(traj: Trajectory) -> list[dict[str, float]]:
    return [{"quality": q, "tool": float(traj.scores[n - 1]) if n <= len(traj.scores) else float("nan"),
             "dice": float(traj.dices[n - 1]), "iou": float(traj.ious[n - 1]), "turns": n}
            for q, n in judged_masks(traj.actions, traj.qualities) if n <= len(traj.dices)]


def score_mask(mask: np.ndarray, gt: np.ndarray, max_turns: int) -> dict[str, Any]:
    """A one-turn result that is a mask (the ellipse baseline)."""
    empty = np.zeros(gt.shape, dtype=bool)
    d1, j1 = dice(mask, gt), iou(mask, gt)
    return {
        "dice_per_turn": [dice(empty, gt)] + [d1] * max_turns,
        "iou_per_turn": [iou(empty, gt)] + [j1] * max_turns,
        "final_dice": d1,
        "final_iou": j1,
        "turns": 1,
        "executed": 1,
        "invalid": 0,
        "stop_reason": "mask_baseline",
        "decoder_ms": 0.0,
        "policy_ms": 0.0,
    }


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over targets of one run's per-episode results."""
    if not results:
        return {}
    turns = sum(r["turns"] for r in results)
    return {
        "dice_per_turn": np.mean([r["dice_per_turn"] for r in results], axis=0).tolist(),
        "iou_per_turn": np.mean([r["iou_per_turn"] for r in results], axis=0).tolist(),
        "final_dice": float(np.mean([r["final_dice"] for r in results])),
        "final_iou": float(np.mean([r["final_iou"] for r in results])),
        "mean_turns": float(np.mean([r["turns"] for r in results])),
        "decoder_ms_per_turn": float(sum(r["decoder_ms"] for r in results) / max(turns, 1)),
        "policy_ms_per_turn": float(sum(r["policy_ms"] for r in results) / max(turns, 1)),
        "policy_ms_per_decision": float(np.mean([r.get("policy_ms_per_decision", 0.0) for r in results])),
    }


# -- the loop ---------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """What ``evaluate_targets`` measured.

    Attributes:
        runs: run name -> one score dict per target (``score_episode`` / ``score_mask`` keys, plus
            ``policy_ms_per_decision``), in target order.
        rows: one dict per target: case_id, slice_index, label, area, noc85/noc90 (when measured),
            encoder_ms of its slice, the hand-off box, and ``{run name: {"dice", "iou", "turns"}}``.
        trajectories: run name -> the trajectory of each target (None for mask baselines); kept only for
            the first ``keep_trajectories`` targets.
        images: the windowed slice and the ground truth ((H, W) bool) of each kept target (for strips).
        encoder_ms: encoder milliseconds of each distinct slice.
    """

    runs: dict[str, list[dict[str, Any]]]
    rows: list[dict[str, Any]]
    trajectories: dict[str, list[Trajectory | None]]
    images: list[tuple[np.ndarray, np.ndarray]]
    encoder_ms: list[float]

    def summary(self) -> dict[str, dict[str, Any]]:
        return {name: summarise(r) for name, r in self.runs.items()}

    def per_label(self) -> dict[str, dict[str, dict[str, float]]]:
        """label -> run -> {"dice", "iou", "turns", "n"} (means over the label's targets)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for label in sorted({r["label"] for r in self.rows}):
            mine = [r for r in self.rows if r["label"] == label]
            out[label] = {name: {k: float(np.mean([r[name][k] for r in mine])) for k in ("dice", "iou", "turns")}
                          | {"n": len(mine)} for name in self.runs}
        return out


def evaluate_targets(tool: Tool, samples: Iterable[SliceSample], runs: Sequence[Run],
                     settings: EpisodeSettings | None = None, seed: int = 0, measure_noc: bool = True,
                     keep_trajectories: int = 0, context: PolicyContext | None = None,
                     desc: str = "evaluate") -> Evaluation:
    """Play every run on every target; see the module docstring.

    Args:
        tool: the segmenter (one session per distinct slice, shared by every run and label of the slice).
        samples: targets; consecutive samples of one slice share its encoding (``iter_slices`` order).
        runs: the columns; names must be distinct.
        settings: episode settings (default: what the app serves).
        seed: base seed of hand-off boxes and of each episode.
        measure_noc: also run the click simulator (NoC@85/90) on each target.
        keep_trajectories: keep trajectories and slices of the first N targets (plots).
        context: shared policy context (loaded checkpoints); built from ``settings`` when None.
    """
    settings = settings or EpisodeSettings()
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be distinct, got {names}")
    ctx = context or PolicyContext(settings)
    env = SegmentationEnv(tool, settings.env_config(tool_name(tool)))
    T = settings.max_turns
    out = Evaluation({n: [] for n in names}, [], {n: [] for n in names}, [], [])
    current, session, image = None, None, None
    for sample in tqdm(samples, unit="target", desc=desc, mininterval=10):
        if (sample.case_id, sample.slice_index, sample.axis) != current:
            current = (sample.case_id, sample.slice_index, sample.axis)
            image = window_slice(sample, settings)
            session = tool.start(image)
            out.encoder_ms.append(float(session.encoder_ms))
        key = (sample.case_id, sample.slice_index, sample.label_name)
        target_seed = episode_seed(seed, *key)
        # the same box for every run of this target, from its own stream (independent of the policies)
        box = jittered_box(sample.gt, np.random.default_rng(target_seed), settings.box_jitter)
        options = sample_options(sample, image=image, session=session)
        row: dict[str, Any] = {"case_id": sample.case_id, "slice_index": sample.slice_index,
                               "label": sample.label_name, "area": int(sample.gt.sum()),
                               "encoder_ms": float(session.encoder_ms), "handoff_box": list(box.as_tuple())}
        keep = len(out.rows) < keep_trajectories
        for run in runs:
            factory = POLICIES[run.policy]
            traj = None
            if factory is None:
                res = score_mask(ellipse_mask(box, sample.gt.shape), sample.gt, T)
            else:
                policy = factory(env, run, box, ctx)
                if run.handoff and run.policy not in _OWN_BOX:
                    policy = Prefixed([box], policy)
                traj = rollout(env, policy, options, seed=target_seed)
                res = score_episode(traj, sample.gt, T)
                decisions = len(traj.actions) - (1 if run.handoff and run.policy not in _OWN_BOX else 0)
                res["policy_ms_per_decision"] = traj.timings["policy_ms"] / max(decisions, 1)
            out.runs[run.name].append(res)
            row[run.name] = {"dice": res["final_dice"], "iou": res["final_iou"], "turns": res["turns"],
                             "stop_reason": res["stop_reason"]}
            if keep:
                out.trajectories[run.name].append(traj)
        if measure_noc:
            clicks = noc(session, sample.gt)  # the standard simulator: a property of the tool, not of the settings
            row["noc85"], row["noc90"] = clicks["noc@85"], clicks["noc@90"]
        if keep:
            out.images.append((image, sample.gt))
        out.rows.append(row)
    return out


def slice_results(ev: Evaluation, run: str, baselines: Sequence[str], settings: EpisodeSettings, *,
                  policy: str, mode: str, backend: str, meta: Mapping[str, Any],
                  calibration: QualityCalibration | None = None) -> dict[str, Any]:
    """``results.json`` of a slice evaluation of ``run`` with its ``baselines`` (the keys other tools read:
    summary keys, ``baselines``, ``per_label``, ``class_mean``, ``quality_calibration``, ``rows``); ``calibration``:
    see ``quality_results``."""
    from lib.agent.metrics import aggregate

    handoff = mode == "handoff"
    rows = []
    for r, res in zip(ev.rows, ev.runs[run], strict=True):
        row = {"case_id": r["case_id"], "slice_index": r["slice_index"], "label": r["label"], "area": r["area"],
               "final_dice": res["final_dice"], "final_iou": res["final_iou"], "turns": res["turns"],
               "dice_per_turn": res["dice_per_turn"], "stop_reason": res["stop_reason"],
               "noc85": r.get("noc85"), "noc90": r.get("noc90"), "encoder_ms": r["encoder_ms"],
               "final_quality": res.get("final_quality"),
               "decoder_ms_per_turn": res["decoder_ms"] / max(res["turns"], 1),
               "policy_ms_per_turn": res["policy_ms"] / max(res["turns"], 1),
               "handoff_box": r["handoff_box"] if handoff else None}
        for b in baselines:
            row[f"{b}_dice"], row[f"{b}_iou"], row[f"{b}_turns"] = r[b]["dice"], r[b]["iou"], r[b]["turns"]
        rows.append(row)
    main = summarise(ev.runs[run])
    agg = aggregate([{k: v for k, v in r.items() if k not in ("slice_index", "handoff_box")} for r in rows])
    return {
        "policy": policy, "mode": mode, "backend": backend,
        "prompting": settings.prompting_for(backend).value, "local_radius": settings.local_radius,
        "episode": settings.record(backend), **dict(meta),
        "max_turns": settings.max_turns,
        "n_cases": len({r["case_id"] for r in rows}), "n_targets": len(rows),
        "dice_per_turn": main["dice_per_turn"], "iou_per_turn": main["iou_per_turn"],
        "final_dice": main["final_dice"], "final_iou": main["final_iou"], "mean_turns": main["mean_turns"],
        "noc85": float(np.mean([r["noc85"] for r in rows if r["noc85"] is not None] or [np.nan])),
        "noc90": float(np.mean([r["noc90"] for r in rows if r["noc90"] is not None] or [np.nan])),
        "latency_ms": {"encoder": float(np.mean(ev.encoder_ms)), "decoder": main["decoder_ms_per_turn"],
                       "policy": main["policy_ms_per_turn"]},
        "baselines": {b: summarise(ev.runs[b]) for b in baselines},
        "per_label": agg["per_label"], "class_mean": agg["class_mean"],
        **quality_results(ev, run, calibration),
        "rows": rows,
    }


def quality_results(ev: Evaluation, run: str, calibration: QualityCalibration | None = None) -> dict[str, Any]:
    """``quality_calibration`` (the policy's predicted quality of each mask it judged against the true IoU: ``n``,
    ``spearman``, ``ece``, ``mae``, reliability ``bins``, ``per_label``, ``per_case``, ``calibrated``) and
    ``tool_quality_calibration`` (the same for the tool's own IoU output); absent when the policy / tool predicts none.

    ``calibration``: the policy's stored calibration when ``run`` was played with raw qualities
    (``Run.raw_quality``): ``quality_calibration`` is then the served, calibrated quality (the calibration applied to
    the recorded raw values, exactly what the served policy outputs) and ``quality_calibration_raw`` the head's own.
    """
    out: dict[str, Any] = {}
    fields_ = [("quality_calibration", "quality_pairs", calibration), ("tool_quality_calibration", "tool_pairs", None)]
    if calibration is not None:
        fields_.append(("quality_calibration_raw", "quality_pairs", None))
    for key, field_, transform in fields_:
        pairs = [((r["label"], r["case_id"]), (transform(p[0], p[2]) if transform else p[0], p[1]))
                 for r, res in zip(ev.rows, ev.runs[run], strict=True) for p in res.get(field_, [])]
        if not pairs:
            continue
        metrics = nan_to_none(calibration_metrics([p[0] for _, p in pairs], [p[1] for _, p in pairs]))
        for key_, idx in (("per_label", 0), ("per_case", 1)):
            groups = sorted({g[idx] for g, _ in pairs})
            metrics[key_] = {g: {k: v for k, v in nan_to_none(calibration_metrics(
                [p[0] for h, p in pairs if h[idx] == g], [p[1] for h, p in pairs if h[idx] == g])).items()
                if k != "bins"} for g in groups}
        metrics["calibrated"] = transform is not None
        out[key] = metrics
    if out.get("quality_calibration"):
        # what a quality-gated stop would have answered at each threshold, replayed on these very episodes
        # (exact for a greedy policy: the gate only ends episodes earlier)
        episodes = ev.runs[run]
        out["quality_gated_stop"] = {
            "learned": learned_stop(episodes),
            "curve": [gated_stop(episodes, t, calibration) for t in STOP_GRID]}
    return out
