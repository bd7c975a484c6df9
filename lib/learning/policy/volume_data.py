"""Training data on volume start states: the slices a volume episode meets after its seed slice.

When the app segments a volume (``lib.agent.volume``), every slice after the seed starts from its neighbour's
final mask: the propagated box (the neighbour mask's bounding box + margin) is executed as turn 1, then the
policy reviews the slice. A policy trained only on fresh hand-off boxes has never seen such a state. Measured
on the real CT/MR samples, the phantom-trained demo policy redraws the box on every propagated slice (one
corrective action per slice) and ends below plain propagation where propagation was already right
(docs/results/volume_agent.md). This module makes the states it meets when serving part of its training:

- a **target** is one label of one 3D case of a split; its volume episodes start from the same hand-off box a
  user would draw (the label's largest slice, the tight box jittered by ``box_jitter``, seeded per target) and
  run with the served ``VolumeConfig`` and ``EpisodeSettings``;
- start states come from three sources: ``propagation`` (a plain-propagation volume episode, no corrections:
  the drifted starts a policy meets where it does not fix what goes wrong), ``policy`` (a volume episode of a
  given policy checkpoint, ``VolumeStarts.policy``: the states that policy reaches, its own mistakes included,
  for the expert to label, as in DAgger; off unless asked for) and ``neighbour_gt`` (the box the
  propagation rule draws around the neighbour slice's ground-truth mask: the start a policy meets where it
  corrected the neighbour perfectly). The second stands in for an expert-driven volume episode, which gives
  nearly the same starts (the expert reaches 0.9 IoU) at the cost of the expert's search on every slice of
  the volume rather than on the sampled ones (measured: 86 s per phantom target with it, on 2 busy cores);
- ``volume_expert_trajectories`` gives the expert's slice episodes from those starts (SFT), each replayed
  with ``VolumeEpisode.run_slice``. The propagated box is a given, not a decision: the trajectories carry
  ``policy_meta["handoff_actions"] = 1`` and the learner skips it. An expert that stops at once on a slice that
  is already right is the lesson, so nothing is pruned;
- ``volume_start_states`` gives the plain-propagation starts as (slice sample, ``SliceStart``) pairs, the start
  states of GRPO groups (``RLConfig.volume_fraction``).

Every start carries the neighbour's mask (the propagated final mask, or the neighbour's ground truth): the slice
episode's ``prior``, stored with the trajectory, which a policy with the prior input channel sees as served.

Slices outside the label (ground truth below ``min_area``) are not targets: past a structure's end the expert
has nothing to aim at, and the end of a structure is the end rule's decision (``lib.agent.volume.end_check``).

Arrays: volumes (K, J, I) = (slice, row, column); slices (H, W) = (J, I); boxes inclusive pixels
``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lib.agent.expert import ExpertConfig, ExpertPolicy
from lib.agent.policies.base import Policy, StopPolicy
from lib.agent.policies.compact import CompactPolicy
from lib.agent.rollout import tool_name
from lib.agent.settings import EpisodeSettings
from lib.agent.trajectories import Trajectory
from lib.agent.volume import SliceStart, VolumeConfig, VolumeEpisode, propagated_box
from lib.agent.volume_eval import SEED_RULES, handoff_box, load_case, window_volume
from lib.data.dataset import Dataset, SliceSample
from lib.learning.recipe import help_field
from lib.tools.base import Tool
from lib.tools.cache import SessionCache

logger = logging.getLogger(__name__)

#: where a start state comes from (see the module docstring)
START_SOURCES = ("propagation", "neighbour_gt", "policy")
#: bytes of one LiteMedSAM slice embedding, to size a case's session cache (all of its slices stay cached
#: while its labels are played)
SLICE_BYTES = 4 << 20
#: volume start states as GRPO plays them: (slice sample, its start: propagated box + the neighbour's mask)
VolumeStartStates = list[tuple[SliceSample, SliceStart]]


@dataclass
class VolumeStarts:
    """Which volume start states a learner sees (nested in ``TrajectoryConfig`` and ``RLConfig`` as ``volume``).

    ``sources`` empty turns volume states off (slice episodes only, as before volumes were served)."""

    sources: tuple[str, ...] = help_field(
        f"volume episodes whose propagated slices become start states: any of {', '.join(START_SOURCES)}; "
        "empty = off", ("propagation", "neighbour_gt"))
    max_slices_per_target: int | None = help_field(
        "propagated slices kept per (case, label) and source, evenly spaced along the run (None = all): bounds "
        "the expert's time and keeps long organs from outnumbering short ones", 8)
    min_area: int = help_field("a propagated slice is a target when its label has at least this many pixels", 20)
    seed_rule: str = help_field(f"seed slice of a target's volume episodes: one of {', '.join(SEED_RULES)}",
                                "largest")
    policy: str | None = help_field(
        "compact policy checkpoint folder whose own volume episodes give the 'policy' source's start states (the "
        "states the current policy reaches, for the expert to label: DAgger); needed with that source only", None)

    def __post_init__(self) -> None:
        self.sources = tuple(str(s) for s in self.sources)
        unknown = sorted(set(self.sources) - set(START_SOURCES))
        if unknown:
            raise ValueError(f"VolumeStarts.sources: unknown {unknown}; choose from {START_SOURCES}")
        if self.max_slices_per_target is not None and int(self.max_slices_per_target) < 1:
            raise ValueError(f"VolumeStarts.max_slices_per_target must be >= 1 or None, got "
                             f"{self.max_slices_per_target}")
        if self.min_area < 1:
            raise ValueError(f"VolumeStarts.min_area must be >= 1, got {self.min_area}")
        if "policy" in self.sources and not self.policy:
            raise ValueError("VolumeStarts: the 'policy' source needs VolumeStarts.policy, the checkpoint folder of "
                             "the policy whose volume episodes it plays")
        if self.seed_rule not in SEED_RULES:
            raise ValueError(f"VolumeStarts.seed_rule must be one of {SEED_RULES}, got {self.seed_rule!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.sources)


@dataclass
class VolumeTarget:
    """One label of one 3D case, windowed as served.

    Attributes:
        case_id / label / label_value: the target.
        volume: (K, J, I) float32 in [0, 1], windowed slice by slice as the app windows a slice.
        raw: (K, J, I) raw intensities (HU for CT), for ``SliceSample``s.
        gt: (K, J, I) bool.
        modality: "CT", "MR", ...
        source: provenance for trajectories (``dataset``, ``image``, ``modality``): ``SliceImages`` finds
            the slice again from it.
        key: the windowed volume's session-cache identity (case, windowing).
        cache: the case's session cache (shared by its labels and sources).
    """

    case_id: str
    label: str
    label_value: int
    volume: np.ndarray
    raw: np.ndarray
    gt: np.ndarray
    modality: str
    source: dict[str, Any]
    key: tuple
    cache: SessionCache

    def sample(self, k: int) -> SliceSample:
        """Slice k as a ``SliceSample`` (raw intensities, the label's mask)."""
        return SliceSample(case_id=self.case_id, slice_index=int(k), label_value=self.label_value,
                           label_name=self.label, image=np.asarray(self.raw[k]), gt=np.asarray(self.gt[k]),
                           modality=self.modality)


def volume_targets(data: Dataset | str | Path, labels: Mapping[str, int] | Iterable[str] | None,
                   settings: EpisodeSettings, starts: VolumeStarts, split: str = "training") -> Iterator[VolumeTarget]:
    """Every (3D case, label) of ``split`` whose label the learner knows and the case contains.

    Cases are loaded and windowed once; their labels share one session cache (each slice encoded once per
    case). 2D cases are skipped (they have no neighbours to propagate to).
    """
    ds = data if isinstance(data, Dataset) else Dataset.from_dir(data)
    wanted = None if labels is None else {str(n).lower() for n in labels}
    root = str(Path(ds.root).resolve())
    for case in ds.cases(split):
        try:
            vol, lab = load_case(ds, case)
        except ValueError as e:  # 2D or unlabelled: nothing to propagate through
            logger.info("volume starts: skipping case %s (%s)", case.case_id, e)
            continue
        win = settings.windowing(vol.modality)
        pixels = window_volume(vol.array, win)
        cache = SessionCache(max(vol.array.shape[0] + 4, 16) * SLICE_BYTES)
        source = {"dataset": root, "image": str(Path(case.image_path).resolve()), "modality": vol.modality}
        for value, name in sorted(ds.labels.items()):
            if not value or (wanted is not None and name.lower() not in wanted):
                continue
            gt = lab == value
            if int(gt.reshape(gt.shape[0], -1).sum(axis=1).max()) < starts.min_area:
                continue
            yield VolumeTarget(case_id=case.case_id, label=name, label_value=int(value), volume=pixels,
                               raw=vol.array, gt=gt, modality=vol.modality, source=source,
                               key=(case.case_id, win.key), cache=cache)


def evenly_spaced(items: list, n: int | None) -> list:
    """``items`` evenly thinned to at most ``n`` (None = all), first and last kept."""
    if n is None or len(items) <= n:
        return list(items)
    keep = np.unique(np.linspace(0, len(items) - 1, int(n)).round().astype(int))
    return [items[i] for i in keep]


def starts_of(target: VolumeTarget, starts: VolumeStarts, settings: EpisodeSettings, tool: Tool, seed: int = 0,
              volume_config: VolumeConfig | None = None,
              policy: Policy | None = None) -> Iterator[tuple[str, list[tuple[int, SliceStart]]]]:
    """The target's start states per source: ``(source, [(slice k, SliceStart), ...])``.

    Only slices where the label has at least ``starts.min_area`` pixels, evenly thinned to
    ``starts.max_slices_per_target`` per source. ``propagation`` runs one plain-propagation volume episode
    from the hand-off box (its visited slices, in both directions, until the end rule stops it); ``policy``
    the same with ``policy`` (``start_policy(starts)``) reviewing every slice, as served; ``neighbour_gt``
    starts every slice of the label, except the seed, from its neighbour's ground truth (the neighbour on the
    seed's side, as propagation reaches it).
    """
    vcfg = volume_config or VolumeConfig()
    k0, box = handoff_box(target.gt, target.case_id, target.label, seed=seed, box_jitter=settings.box_jitter,
                          seed_rule=starts.seed_rule)
    present = [k for k in range(target.gt.shape[0]) if int(target.gt[k].sum()) >= starts.min_area]
    for name in starts.sources:
        if name in ("propagation", "policy"):
            if name == "policy" and policy is None:
                raise ValueError("the 'policy' start source needs the policy: pass start_policy(starts)")
            ep = VolumeEpisode(tool, StopPolicy() if name == "propagation" else policy,
                               settings.env_config(tool_name(tool)), vcfg, cache=target.cache)
            res = ep.run(target.volume, target.label, seed_slice=k0, prompts=[box], gt=target.gt, seed=seed,
                         key=target.key, meta={"case_id": target.case_id})
            found = sorted(((r.index, r.start) for r in res.slices
                            if r.start is not None and r.index in present), key=lambda x: x[0])
        else:
            found = []
            for k in present:
                nb = k - int(np.sign(k - k0))
                if k != k0 and target.gt[nb].any():
                    found.append((k, SliceStart(from_slice=nb, box=propagated_box(target.gt[nb], vcfg),
                                                mask=target.gt[nb])))
        yield name, evenly_spaced(found, starts.max_slices_per_target)


def start_policy(starts: VolumeStarts) -> Policy | None:
    """The greedy compact policy of the 'policy' source (None when the source is off)."""
    if "policy" not in starts.sources:
        return None
    return CompactPolicy.load(starts.policy)


def volume_expert_trajectories(data: Dataset | str | Path, tool: Tool,
                               labels: Mapping[str, int] | Iterable[str] | None, settings: EpisodeSettings,
                               starts: VolumeStarts, *, split: str = "training", seed: int = 0,
                               expert: ExpertConfig | None = None, volume_config: VolumeConfig | None = None,
                               progress: Callable[[dict], None] | None = None,
                               should_stop: Callable[[], bool] | None = None) -> list[Trajectory]:
    """The expert's slice episodes from volume start states (module docstring), for behaviour cloning.

    Args:
        data: a dataset folder or ``Dataset`` (its 3D cases of ``split``).
        tool: the segmenter the agent is served with.
        labels: the policy's label set (names, or {name: id}); None = every label.
        settings: the served episode settings (turn budget per slice, prompting, local merge, CT window, jitter).
        starts: which sources and how many slices per target.
        seed: base seed (hand-off boxes, expert strategies).
        expert: the expert's knobs (default: ``ExpertConfig`` with the turn budget).
        volume_config: propagation and end rule (default: ``VolumeConfig()``, what the app serves).
        progress: called with ``{"stage": "volume_trajectories", "done", "kept", "total"}`` after each target.
        should_stop: polled between targets.

    Returns:
        Trajectories with ``policy_meta["handoff_actions"] == 1`` (the propagated box) and ``source`` holding
        ``volume_start`` (the source), ``volume_direction``, ``from_slice`` and the case's file.
    """
    if not starts.enabled:
        return []
    env_config = settings.env_config(tool_name(tool))
    expert_cfg = expert or ExpertConfig(max_actions=env_config.max_turns, box_jitter=settings.box_jitter)
    vcfg = volume_config or VolumeConfig()
    targets = list(volume_targets(data, labels, settings, starts, split))
    player = start_policy(starts)
    out: list[Trajectory] = []
    bar = tqdm(targets, unit="target", desc="volume expert trajectories", disable=progress is not None,
               mininterval=5)
    for n, t in enumerate(bar, start=1):
        if should_stop is not None and should_stop():
            break
        ep = VolumeEpisode(tool, lambda env: ExpertPolicy(env, expert_cfg), env_config, vcfg, cache=t.cache)
        for name, found in starts_of(t, starts, settings, tool, seed, vcfg, player):
            for k, start in found:
                rec = ep.run_slice(t.volume, t.label, k, start, gt=t.gt, seed=seed, key=t.key,
                                   meta={"case_id": t.case_id, **t.source, "volume_start": name})
                if rec.trajectory is None:
                    raise RuntimeError("a volume slice episode returned no trajectory")
                out.append(rec.trajectory)
        if progress is not None:
            progress({"stage": "volume_trajectories", "done": n, "kept": len(out), "total": len(targets)})
    logger.info("volume expert trajectories: %d from %d targets (sources %s)", len(out), len(targets),
                ",".join(starts.sources))
    return out


def volume_start_states(data: Dataset | str | Path, tool: Tool,
                        labels: Mapping[str, int] | Iterable[str] | None, settings: EpisodeSettings,
                        starts: VolumeStarts, *, split: str = "training",
                        seed: int = 0,
                        volume_config: VolumeConfig | None = None) -> VolumeStartStates:
    """Volume start states as (slice sample, ``SliceStart``) pairs: the start states of GRPO groups (its propagated
    box is turn 1, its ``mask`` the episode's prior).

    The dense prompt is not part of the state: ``VolumeConfig.dense_prompt`` is off where the app serves
    LiteMedSAM (a backend served with it would need the logits carried into the group's episodes).
    """
    out: VolumeStartStates = []
    player = start_policy(starts)
    for t in volume_targets(data, labels, settings, starts, split):
        for _, found in starts_of(t, starts, settings, tool, seed, volume_config, player):
            out += [(t.sample(k), start) for k, start in found]
    return out
