"""Volume evaluation: a policy's whole-volume episodes (``lib.agent.volume``) on a dataset's 3D cases, with
same-run baselines that share the encoded slices.

For every 3D case of the split and every label present in it (one *target*):

- the seed slice ``k0`` is the slice where the label is largest (the slice a user would start on);
- the hand-off box is the tight ground-truth box of ``k0`` jittered as a user draws it
  (``lib.agent.clicks.jittered_box``, ``box_jitter`` of the side, seeded per target by
  ``episode_seed(seed, case, label)``); the same box seeds every run of the target;
- the **policy** runs a ``VolumeEpisode`` in ``handoff`` mode (the box is its first action on ``k0``) or in
  ``autonomous`` mode (the policy starts from nothing on ``k0``);
- baselines, always seeded with the hand-off box (they cannot start without one):
  ``propagation`` = the same propagation and end rule with no agent (the propagated box, then Stop);
  ``expert`` = the ground-truth expert (``lib.agent.expert``) reviewing every slice of the same propagation
  at the same turn budget (an oracle: an upper bound of what a policy could do on these start states);
  ``oracle_box`` = the tool given the tight ground-truth box on every slice where the label is present (no
  propagation, no end rule: what the tool can do when the box is always right);
  ``oracle_ellipse`` = no tool at all: the ellipse inscribed in that same box on every slice (the trivial
  ellipse-in-box baseline through the volume; a tool that does not beat it with the same boxes adds nothing).

All runs of a target share one session cache: each slice is encoded once for the target, by the policy run,
which goes first on a cold cache, so its seconds are what a user waits; baseline seconds are on warm
embeddings (decoder + policy only, plus any slice the policy never visited).

Metrics (3D, on the case's voxel grid): Dice (``monai.metrics.compute_dice``) and normalised surface Dice
(``monai.metrics.compute_surface_dice``) at a tolerance of ``nsd_tolerance_mm`` millimetres (default 2 mm)
with the case's voxel spacing (mm, (K, J, I) order). Actions are corrective actions per volume: Box/Point
actions the policy issued beyond the seed prompt and the propagated boxes. Seconds are wall seconds per
volume episode.

Call ``evaluate_volumes(...)`` for the results dict, then ``write_outputs(results, out_dir)`` for
``results.json``, ``report.md`` and the plots.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lib.agent.actions import Box, Stop
from lib.agent.clicks import DEFAULT_BOX_JITTER, jittered_box, tight_box
from lib.agent.env import EnvConfig
from lib.agent.expert import ExpertConfig, ExpertPolicy
from lib.agent.policies.base import Policy, StopPolicy
from lib.agent.policies.ellipse import ellipse_mask
from lib.agent.rollout import episode_seed
from lib.agent.volume import PolicyLike, VolumeConfig, VolumeEpisode, VolumeResult, session_key
from lib.data.dataset import Case, Dataset
from lib.data.intensity import Windowing
from lib.data.io import load_image
from lib.data.slices import windowing_for
from lib.tools.base import Tool
from lib.tools.cache import SessionCache

#: baselines run beside the policy (see the module docstring)
BASELINES = ("propagation", "expert", "oracle_box", "oracle_ellipse")
#: where the expert's headroom lies, on request (not run by default): the expert on the seed slice only (every
#: propagated slice keeps its propagated answer), or on the propagated slices only (the seed keeps the box's answer)
SPLIT_EXPERT_BASELINES = ("expert_seed", "expert_propagated")
MODES = ("handoff", "autonomous")
#: how the seed slice of a target is chosen: "largest" = the slice where the label is largest (the slice a user
#: would start on); "largest_interior" = the same among slices at least ``INTERIOR_MARGIN`` slices from either end
#: of the volume (falls back to "largest" when the label has none there): an organ cut by the field of view is
#: largest at the cut, an end slice a user would rarely start on
SEED_RULES = ("largest", "largest_interior")
INTERIOR_MARGIN = 2
#: NSD tolerance: 2 mm is about one in-plane voxel of an abdominal CT (0.7-1.5 mm) plus annotation noise,
#: and below one slice thickness, so a missing or extra slice at an organ's end still costs NSD (on 3 mm
#: isotropic scans it is stricter than one voxel: any boundary voxel off by one fails it)
DEFAULT_NSD_TOLERANCE_MM = 2.0
#: embedding bytes kept per target: every slice a run may visit must stay cached until the last run of the
#: target, or a baseline would encode it again (a 200-slice organ span of LiteMedSAM = 800 MiB)
DEFAULT_CACHE_BYTES = 2 << 30


# -- metrics ---------------------------------------------------------------------------------------------
def volume_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
                   tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> dict[str, float]:
    """3D Dice and normalised surface Dice of one target.

    Args:
        pred, gt: (K, J, I) bool masks on the same voxel grid.
        spacing: voxel size in mm in the same (K, J, I) order.
        tolerance_mm: NSD tolerance: surface voxels within this distance of the other surface count as hits.

    Returns:
        ``{"dice3d": float, "nsd": float}``. Both are 1.0 when both masks are empty and 0.0 when exactly one is
        (MONAI reports NaN for an empty ground truth; a correct "nothing here" is not an error).
    """
    import torch
    from monai.metrics import compute_dice, compute_surface_dice

    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be the same (K, J, I) shape")
    if len(spacing) != 3:
        raise ValueError(f"spacing must be 3 values in mm, (K, J, I) order, got {spacing!r}")
    if not gt.any() or not pred.any():
        both = float(not gt.any() and not pred.any())
        return {"dice3d": both, "nsd": both}
    # crop to the union's bounding box (+1 voxel, so surfaces at the crop edge are still surfaces): the metrics
    # only see voxels near either mask, and the distance transforms shrink from the whole scan to the organ
    idx = np.nonzero(pred | gt)
    sl = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
    p = torch.from_numpy(np.ascontiguousarray(pred[sl]))[None, None].float()
    g = torch.from_numpy(np.ascontiguousarray(gt[sl]))[None, None].float()
    d = float(compute_dice(p, g, include_background=True)[0, 0])
    nsd = float(compute_surface_dice(p, g, [float(tolerance_mm)], include_background=True,
                                     spacing=[float(s) for s in spacing])[0, 0])
    return {"dice3d": d, "nsd": nsd}


# -- windowing -----------------------------------------------------------------------------------------------
def window_volume(array: np.ndarray, windowing: Windowing) -> np.ndarray:
    """(K, J, I) raw intensities -> (K, J, I) float32 in [0, 1], slice by slice (as the app windows a slice, so a
    volume episode's slice k is exactly the image a slice episode on k sees)."""
    return np.stack([np.asarray(windowing(np.asarray(array[k])), dtype=np.float32) for k in range(array.shape[0])])


# -- one target ---------------------------------------------------------------------------------------------
def seed_slice_of(gt: np.ndarray, rule: str = "largest") -> int:
    """The seed slice k of a (K, J, I) bool ground truth under ``rule`` (``SEED_RULES``); ties: the lowest k."""
    if rule not in SEED_RULES:
        raise ValueError(f"seed rule must be one of {SEED_RULES}, got {rule!r}")
    areas = np.asarray(gt, dtype=bool).reshape(gt.shape[0], -1).sum(axis=1)
    if rule == "largest_interior":
        inner = areas.copy()
        inner[:INTERIOR_MARGIN] = 0
        inner[max(gt.shape[0] - INTERIOR_MARGIN, 0):] = 0
        if inner.any():
            return int(np.argmax(inner))
    return int(np.argmax(areas))


def handoff_box(gt: np.ndarray, case_id: str, label: str, *, seed: int = 0, box_jitter: float = DEFAULT_BOX_JITTER,
                seed_rule: str = "largest") -> tuple[int, Box]:
    """A target's seed slice k0 (``seed_slice_of``) and the user's box on it: the tight ground-truth box of
    ``gt[k0]`` jittered by ``box_jitter`` of its side, seeded by ``episode_seed(seed, case_id, label)`` (every
    run of a target, in evaluation and in training, starts from this box)."""
    k0 = seed_slice_of(gt, seed_rule)
    return k0, jittered_box(gt[k0], np.random.default_rng(episode_seed(seed, case_id, label)), box_jitter)



def _policy_knows(policy: Policy, label: str) -> str | None:
    """Why ``policy`` cannot take ``label`` (None when it can)."""
    index = getattr(policy, "label_index", None)
    if index is None:
        return None
    try:
        index(label)
    except ValueError:
        return f"not in the policy's label set {sorted(getattr(policy, 'labels', {}))}"
    return None


def present_slices(gt: np.ndarray) -> list[int]:
    """Indices k (axis 0) of the slices of a (K, J, I) bool ``gt`` that hold at least one voxel."""
    return [int(k) for k in np.flatnonzero(gt.reshape(gt.shape[0], -1).any(axis=1))]


def oracle_box(tool: Tool, volume: np.ndarray, gt: np.ndarray, cache: SessionCache, key: Any) -> dict[str, Any]:
    """The tool given the tight ground-truth box on every slice where ``gt`` is present.

    Args:
        volume: (K, J, I) windowed float in [0, 1]; gt: (K, J, I) bool.
        cache / key: the target's session cache and volume key (``session_key(tool, key, k)``, as the volume
            episodes use), so slices they encoded are not encoded again.

    Returns:
        ``{"mask": (K, J, I) bool, "seconds": float, "encoder_calls": int, "slices": int}``.
    """
    t0 = time.perf_counter()
    out = np.zeros(gt.shape, dtype=bool)
    calls = 0
    slices = present_slices(gt)
    for k in slices:
        session, cached = cache.get_or_start(session_key(tool, key, k), lambda k=k: tool.start(volume[k]))
        calls += int(not cached)
        out[k] = np.asarray(session.predict(box=tight_box(gt[k]).as_tuple()).mask, dtype=bool)
    return {"mask": out, "seconds": time.perf_counter() - t0, "encoder_calls": calls, "slices": len(slices)}


def oracle_ellipse(gt: np.ndarray) -> dict[str, Any]:
    """The ellipse inscribed in the tight ground-truth box on every slice where ``gt`` is present (no tool).

    Args:
        gt: (K, J, I) bool.

    Returns:
        ``{"mask": (K, J, I) bool, "seconds": float, "encoder_calls": 0, "slices": int}``, as ``oracle_box``.
    """
    t0 = time.perf_counter()
    out = np.zeros(gt.shape, dtype=bool)
    slices = present_slices(gt)
    for k in slices:
        out[k] = ellipse_mask(tight_box(gt[k]), gt[k].shape)
    return {"mask": out, "seconds": time.perf_counter() - t0, "encoder_calls": 0, "slices": len(slices)}


class OnSlices(Policy):
    """``inner`` decides on the seed slice only (``seed=True``) or on the propagated slices only (``False``); on the
    other slices it stops at once, so they keep what the prompts (user's or propagated box) gave. Reads the slice's
    place from ``info["meta"]["source"]["volume_direction"]`` (0 = seed), set by ``VolumeEpisode``."""

    def __init__(self, inner: Policy, seed: bool) -> None:
        self.inner, self.seed, self.active = inner, bool(seed), False
        self.name = f"{inner.name}_{'seed' if seed else 'propagated'}"

    def reset(self, obs, info, seed=None) -> None:
        self.stop_reason = None
        self.active = (info["meta"]["source"]["volume_direction"] == 0) == self.seed
        if self.active:
            self.inner.reset(obs, info, seed)

    def act(self, obs, info):
        if not self.active:
            self.stop_reason = "not_this_slice"
            return Stop()
        action = self.inner.act(obs, info)
        self.stop_reason = self.inner.stop_reason
        return action


def _run_row(res: VolumeResult, k0: int) -> dict[str, Any]:
    """Per-run numbers of one target (JSON-ready)."""
    t = res.timings
    return {
        "actions": int(res.corrective_actions),
        "seconds": float(t["wall_s"]),
        "encoder_s": float(t["encoder_s"]),
        "encoder_s_visited": float(t["encoder_s_visited"]),
        "decoder_s": float(t["decoder_s"]),
        "policy_s": float(t["policy_s"]),
        "wait_s": float(t["wait_s"]),
        "encoder_calls": int(t["encoder_calls"]),
        "visited": len(res.visited),
        "kept": len(res.kept),
        "turns": int(sum(s.turns for s in res.slices)),
        "ends": {str(d): dict(e) for d, e in res.ends.items()},
        # (slice offset from the seed, corrective actions on that slice), for the actions-along-the-volume plot
        "actions_per_slice": [[int(s.index - k0), int(s.corrective)]
                              for s in sorted(res.slices, key=lambda s: s.index)],
    }


def evaluate_target(tool: Tool, policy: PolicyLike, volume: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
                    label: str, *, case_id: str = "", mode: str = "handoff", env_config: EnvConfig | None = None,
                    volume_config: VolumeConfig | None = None, expert_config: ExpertConfig | None = None,
                    baselines: Sequence[str] = BASELINES, box_jitter: float = DEFAULT_BOX_JITTER, seed: int = 0,
                    key: Any = None, nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
                    cache_bytes: int = DEFAULT_CACHE_BYTES, seed_rule: str = "largest") -> dict[str, Any]:
    """Evaluate the policy and the baselines on one target (one label of one volume).

    Args:
        volume: (K, J, I) windowed float in [0, 1]; gt: (K, J, I) bool, non-empty; spacing: mm, (K, J, I).
        label: the target's name; mode: "handoff" or "autonomous" (the policy run only).
        seed_rule: how the seed slice is chosen (``SEED_RULES``, default the label's largest slice).
        key: the volume's cache identity (default ``case_id``); the target gets a fresh cache of
            ``cache_bytes``, so its policy run starts cold.

    Returns:
        One row: ``case_id``, ``label``, ``seed_slice``, ``gt_slices`` [first, last], ``handoff_box``, the policy's
        ``dice3d`` / ``nsd`` / ``actions`` / ``seconds`` / timings / ``actions_per_slice``, ``encoder_calls_total``
        (every run of the target), and per baseline ``{name}_dice3d``, ``{name}_nsd``, ``{name}_actions``,
        ``{name}_seconds``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    unknown = sorted(set(baselines) - set(BASELINES) - set(SPLIT_EXPERT_BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {BASELINES + SPLIT_EXPERT_BASELINES}")
    gt = np.asarray(gt, dtype=bool)
    if not gt.any():
        raise ValueError(f"{case_id}/{label}: the ground truth is empty; nothing to evaluate")
    env_config = env_config or EnvConfig()
    volume_config = volume_config or VolumeConfig()
    areas = gt.reshape(gt.shape[0], -1).sum(axis=1)
    k0, box = handoff_box(gt, case_id, label, seed=seed, box_jitter=box_jitter, seed_rule=seed_rule)
    present = np.flatnonzero(areas)
    cache = SessionCache(cache_bytes)
    key = case_id if key is None else key
    meta = {"case_id": case_id}

    def run(p: PolicyLike, prompts) -> VolumeResult:
        ep = VolumeEpisode(tool, p, env_config, volume_config, cache=cache)
        return ep.run(volume, label, seed_slice=k0, prompts=prompts, gt=gt, seed=seed, key=key, meta=meta)

    main = run(policy, [box] if mode == "handoff" else [])
    row: dict[str, Any] = {"case_id": case_id, "label": label, "seed_slice": k0,
                           "gt_slices": [int(present[0]), int(present[-1])], "n_slices": int(gt.shape[0]),
                           "handoff_box": list(box.as_tuple()), "mode": mode, "seed_rule": seed_rule}
    row.update(volume_metrics(main.mask, gt, spacing, nsd_tolerance_mm))
    row.update(_run_row(main, k0))
    row["kept_slices"] = [int(main.kept[0]), int(main.kept[-1])] if main.kept else None
    calls = row["encoder_calls"]
    for name in baselines:
        if name in ("oracle_box", "oracle_ellipse"):
            ob = oracle_box(tool, volume, gt, cache, key) if name == "oracle_box" else oracle_ellipse(gt)
            m = volume_metrics(ob["mask"], gt, spacing, nsd_tolerance_mm)
            row.update({f"{name}_dice3d": m["dice3d"], f"{name}_nsd": m["nsd"], f"{name}_actions": 0,
                        f"{name}_seconds": ob["seconds"]})
            calls += ob["encoder_calls"]
            continue
        cfg = expert_config or ExpertConfig(max_actions=env_config.max_turns)
        if name == "propagation":
            res = run(StopPolicy(), [box])
        elif name == "expert":
            res = run(lambda env, cfg=cfg: ExpertPolicy(env, cfg), [box])
        else:
            res = run(lambda env, cfg=cfg, seed=name == "expert_seed": OnSlices(ExpertPolicy(env, cfg), seed), [box])
        m = volume_metrics(res.mask, gt, spacing, nsd_tolerance_mm)
        r = _run_row(res, k0)
        row.update({f"{name}_dice3d": m["dice3d"], f"{name}_nsd": m["nsd"], f"{name}_actions": r["actions"],
                    f"{name}_seconds": r["seconds"], f"{name}_kept": r["kept"]})
        calls += r["encoder_calls"]
        if name == "expert":
            row["expert_actions_per_slice"] = r["actions_per_slice"]
    row["encoder_calls_total"] = int(calls)
    return row


# -- a dataset ----------------------------------------------------------------------------------------------
def load_case(dataset: Dataset, case: Case):
    """(image ``Volume``, (K, J, I) integer label array) of a 3D case; ValueError for a 2D or unlabelled case."""
    vague = {None, "unknown", "mixed"}
    modality = case.modality or (dataset.modality if dataset.modality not in vague else None)
    vol = load_image(case.image_path, modality=modality)
    if case.label_path is None:
        raise ValueError(f"case {case.case_id} has no label; volume evaluation needs ground truth")
    lab = load_image(case.label_path).array
    if not vol.is_3d or lab.shape != vol.spatial_shape:
        raise ValueError(f"case {case.case_id}: needs a 3D image and a label on its grid, got {vol.spatial_shape} "
                         f"and {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        lab = np.rint(lab).astype(np.int64)  # float label files hold whole numbers
    return vol, lab


def evaluate_volumes(dataset: Dataset | str | Path, tool: Tool, policy: PolicyLike, *, split: str = "test",
                     labels: Iterable[int | str] | None = None, mode: str = "handoff",
                     env_config: EnvConfig | None = None, volume_config: VolumeConfig | None = None,
                     expert_config: ExpertConfig | None = None, baselines: Sequence[str] = BASELINES,
                     windowing: Callable[[str], Windowing] = windowing_for,
                     box_jitter: float = DEFAULT_BOX_JITTER, seed: int = 0,
                     nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, min_voxels: int = 1,
                     max_cases: int | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES, seed_rule: str = "largest",
                     progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Evaluate ``policy`` on every 3D (case, label) target of ``split`` with the baselines (module docstring).

    Args:
        dataset: a ``Dataset`` or the folder holding its ``dataset.json``.
        tool: the segmenter; policy: a ``Policy`` or a factory ``env -> Policy``.
        labels: label names or values (default: all); a label the policy does not know is skipped and listed
            in ``skipped`` (the baselines need no policy, but a mean over different targets would mislead).
        mode: "handoff" or "autonomous" (the policy run; baselines always start from the hand-off box).
        env_config: slice-episode rules (turn budget per slice, prompting, local merge).
        volume_config: propagation and end rule. expert_config: the expert baseline (default: budget = turns).
        windowing: modality -> ``Windowing`` (default CT 40/400 HU, else per-slice percentiles).
        box_jitter / seed: the hand-off box (side fraction; base seed of ``episode_seed``).
        nsd_tolerance_mm: NSD tolerance in mm. min_voxels: smaller targets are not evaluated.
        max_cases: evaluate only the first n cases. seed_rule: the seed slice (``SEED_RULES``).
        progress: called with each finished row.

    Returns:
        ``{"scope": "volume", "mode", "policy", "backend", "final_dice3d" (mean over targets), "final_nsd",
        "per_label": {name: {"dice3d", "nsd", "actions", "seconds", "n", ...}}, "baselines": {name:
        {"final_dice3d", "final_nsd", "per_label": {...}}}, "seconds_per_volume", "encoder_s_per_volume",
        "time_ratio" (policy seconds / encoder seconds of its visited slices, summed over targets; with prefetch
        the encoder seconds are measured while decoder and policy run beside them, which slows both, so compare
        against a serial run's encoder seconds for the true overhead),
        "encoder_calls_per_volume", "actions_per_volume", "skipped": {label: reason}, "settings": {...},
        "rows": [one per target]}``.
    """
    ds = dataset if isinstance(dataset, Dataset) else Dataset.from_dir(dataset)
    values = ds.label_values(labels)
    policy_obj = policy if isinstance(policy, Policy) else None
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    t0 = time.perf_counter()
    cases = ds.cases(split)[: max_cases if max_cases else None]
    for case in cases:
        vol, lab = load_case(ds, case)
        win = windowing(vol.modality)
        pixels = None
        for v in values:
            name = ds.labels[v]
            gt = lab == v
            if int(gt.sum()) < max(1, min_voxels):
                continue
            why = _policy_knows(policy_obj, name) if policy_obj is not None else None
            if why:
                skipped[name] = why
                continue
            if pixels is None:  # windowed once per case, shared by its labels
                pixels = window_volume(vol.array, win)
            row = evaluate_target(tool, policy, pixels, gt, vol.spacing, name, case_id=case.case_id, mode=mode,
                                  env_config=env_config, volume_config=volume_config, expert_config=expert_config,
                                  baselines=baselines, box_jitter=box_jitter, seed=seed,
                                  key=(case.case_id, win.key), nsd_tolerance_mm=nsd_tolerance_mm,
                                  cache_bytes=cache_bytes, seed_rule=seed_rule)
            row["modality"] = vol.modality
            row["spacing_mm"] = [float(s) for s in vol.spacing]
            rows.append(row)
            if progress is not None:
                progress(row)
    return summarise(rows, baselines, skipped=skipped, settings={
        "mode": mode, "split": split, "dataset": str(ds.root), "seed": seed, "box_jitter": box_jitter,
        "seed_rule": seed_rule,
        "nsd_tolerance_mm": nsd_tolerance_mm, "env": _env_dict(env_config or EnvConfig()),
        "volume": dict(vars(volume_config or VolumeConfig())),
        "policy": getattr(policy_obj, "name", None) if policy_obj is not None else "factory",
        "backend": str(getattr(tool, "name", type(tool).__name__)), "wall_s": time.perf_counter() - t0})


def _env_dict(cfg: EnvConfig) -> dict[str, Any]:
    return {"max_turns": cfg.max_turns, "prompting": cfg.prompting.value, "local_radius": cfg.local_radius}


def _mean(values: Iterable[float]) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else float("nan")


def _per_label(rows: Sequence[Mapping[str, Any]], prefix: str = "") -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in sorted({r["label"] for r in rows}):
        group = [r for r in rows if r["label"] == name]
        out[name] = {f: _mean(r[f"{prefix}{f}"] for r in group) for f in ("dice3d", "nsd", "actions", "seconds")}
        out[name]["n"] = len(group)
    return out


def summarise(rows: Sequence[Mapping[str, Any]], baselines: Sequence[str] = BASELINES,
              skipped: Mapping[str, str] | None = None, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The results dict of ``evaluate_volumes`` from its per-target rows (see there for the schema)."""
    settings = dict(settings or {})
    per_label = _per_label(rows)
    for name, m in per_label.items():
        group = [r for r in rows if r["label"] == name]
        m["encoder_s_visited"] = _mean(r["encoder_s_visited"] for r in group)
        m["encoder_calls"] = _mean(r["encoder_calls"] for r in group)
        m["visited"] = _mean(r["visited"] for r in group)
    enc = sum(r["encoder_s_visited"] for r in rows)
    results: dict[str, Any] = {
        "scope": "volume",
        "mode": settings.get("mode"),
        "policy": settings.get("policy"),
        "backend": settings.get("backend"),
        "n_cases": len({r["case_id"] for r in rows}),
        "n_targets": len(rows),
        "final_dice3d": _mean(r["dice3d"] for r in rows),
        "final_nsd": _mean(r["nsd"] for r in rows),
        "per_label": per_label,
        "baselines": {
            b: {"final_dice3d": _mean(r[f"{b}_dice3d"] for r in rows), "final_nsd": _mean(r[f"{b}_nsd"] for r in rows),
                "per_label": _per_label(rows, f"{b}_")}
            for b in baselines
        },
        "seconds_per_volume": _mean(r["seconds"] for r in rows),
        "encoder_s_per_volume": _mean(r["encoder_s_visited"] for r in rows),
        "time_ratio": float(sum(r["seconds"] for r in rows) / enc) if enc > 0 else float("nan"),
        "encoder_calls_per_volume": _mean(r["encoder_calls"] for r in rows),
        "actions_per_volume": _mean(r["actions"] for r in rows),
        "skipped": dict(skipped or {}),
        "settings": settings,
        "rows": [dict(r) for r in rows],
    }
    return results


# -- outputs ------------------------------------------------------------------------------------------------
def markdown_table(results: Mapping[str, Any]) -> str:
    """Per-label Markdown table: the policy's 3D Dice / NSD / actions / seconds next to each baseline's Dice."""
    bases = list(results["baselines"])
    head = ("| label | n | policy Dice3D | policy NSD | " + " | ".join(f"{b} Dice3D" for b in bases)
            + " | actions / volume | s / volume |")
    lines = [head, "|---|---|---|---|" + "---|" * len(bases) + "---|---|"]

    def fmt(v: float) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    for name, m in results["per_label"].items():
        cells = [fmt(results["baselines"][b]["per_label"].get(name, {}).get("dice3d", float("nan"))) for b in bases]
        lines.append(f"| {name} | {m['n']} | {fmt(m['dice3d'])} | {fmt(m['nsd'])} | " + " | ".join(cells)
                     + f" | {m['actions']:.1f} | {m['seconds']:.1f} |")
    cells = [fmt(results["baselines"][b]["final_dice3d"]) for b in bases]
    lines.append(f"| **mean** | {results['n_targets']} | {fmt(results['final_dice3d'])} | "
                 f"{fmt(results['final_nsd'])} | " + " | ".join(cells)
                 + f" | {results['actions_per_volume']:.1f} | {results['seconds_per_volume']:.1f} |")
    return "\n".join(lines)


def plot_dice_per_label(path: Path, results: Mapping[str, Any]) -> None:
    """Grouped bars: 3D Dice per label, the policy beside each baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results["per_label"])
    runs = [("policy", results["per_label"])] + [(b, v["per_label"]) for b, v in results["baselines"].items()]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(labels) + 2), 4), dpi=100)
    width = 0.8 / max(len(runs), 1)
    for i, (name, per) in enumerate(runs):
        vals = [per.get(lab, {}).get("dice3d", float("nan")) for lab in labels]
        ax.bar(np.arange(len(labels)) + (i - (len(runs) - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(labels)))
    ax.set_xticklabels(labels, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("3D Dice")
    ax.set_title(f"3D Dice per label ({results.get('mode')}, {results.get('backend')})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_actions_per_slice(path: Path, results: Mapping[str, Any]) -> None:
    """Mean corrective actions per slice against the slice's offset from the seed slice, per label (policy solid,
    expert dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for i, name in enumerate(results["per_label"]):
        colour = f"C{i % 10}"
        for field, style in (("actions_per_slice", "-"), ("expert_actions_per_slice", "--")):
            acc: dict[int, list[int]] = {}
            for r in results["rows"]:
                if r["label"] == name:
                    for off, n in r.get(field, []):
                        acc.setdefault(int(off), []).append(int(n))
            if acc:
                xs = sorted(acc)
                ax.plot(xs, [np.mean(acc[x]) for x in xs], style, color=colour,
                        label=name if style == "-" else f"{name} (expert)")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("slice offset from the seed slice")
    ax.set_ylabel("corrective actions per slice")
    ax.set_title("Actions along the volume")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``report.md``, ``dice3d_per_label.png`` and ``actions_per_slice.png`` into
    ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "report": out / "report.md", "dice": out / "dice3d_per_label.png",
             "actions": out / "actions_per_slice.png"}
    paths["json"].write_text(json.dumps(results, indent=1, default=_json_default) + "\n", encoding="utf-8")
    plot_dice_per_label(paths["dice"], results)
    plot_actions_per_slice(paths["actions"], results)
    s = results.get("settings", {})
    title = f"`{results.get('policy')}` ({results.get('mode')}, backend `{results.get('backend')}`)"
    lines = [f"# Volume evaluation: {title}",
             "", f"{results['n_targets']} targets from {results['n_cases']} cases; settings: "
             f"`{json.dumps({k: v for k, v in s.items() if k != 'wall_s'}, default=_json_default)}`", "",
             markdown_table(results), "",
             f"Seconds per volume {results['seconds_per_volume']:.1f} vs encoder seconds of the visited slices "
             f"{results['encoder_s_per_volume']:.1f} (ratio {results['time_ratio']:.2f}); encoder calls per volume "
             f"{results['encoder_calls_per_volume']:.1f}.", ""]
    if results.get("skipped"):
        lines += [f"Skipped labels: {json.dumps(results['skipped'])}", ""]
    lines += ["![3D Dice per label](dice3d_per_label.png)", "", "![actions per slice](actions_per_slice.png)", ""]
    paths["report"].write_text("\n".join(lines), encoding="utf-8")
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, tuple):
        return list(o)
    return str(o)
