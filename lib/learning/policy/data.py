"""Expert trajectories for the agent's SFT, and the slice images a learner needs to replay them.

``expert_trajectories`` runs the hybrid-prompting expert (``lib.agent.expert``) over a dataset's
(slice, label) targets, exactly as ``scripts/generate_trajectories.py`` does per episode (same env, same
expert, same episode seeds for ``episodes_per_target = 1``), with two differences that matter on a CPU:
the tool session of a slice is shared by all its labels and episodes (the encoder is ~2.5 s per slice
for LiteMedSAM, the decoder ~80 ms, so a slice with four labels costs one encode instead of four), and
it is a library function, so the MONAI Label train task calls it without a subprocess.

Trajectories store no pixels; ``SliceImages`` finds a trajectory's slice again (from ``source["image"]``,
a dataset folder, a ``Dataset`` or in-memory ``SliceSample``s) and returns what the policy saw as
``obs["image"]``: the windowed (H, W) float32 slice in [0, 1].
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lib.agent.env import SegmentationEnv
from lib.agent.expert import STRATEGIES, ExpertConfig, ExpertPolicy, keep_trajectory
from lib.agent.rollout import episode_seed, rollout, sample_options, tool_name, window_slice
from lib.agent.settings import EpisodeSettings
from lib.agent.trajectories import Trajectory
from lib.data.dataset import Case, Dataset, SliceSample, iter_slices
from lib.data.io import load_image
from lib.data.slices import volume_slice
from lib.learning.policy.volume_data import VolumeStarts, volume_expert_trajectories
from lib.learning.recipe import help_field
from lib.tools.base import Tool
from lib.tools.cache import SessionCache

logger = logging.getLogger(__name__)

#: (case_id, slice_index, axis): one 2D slice of a dataset
SliceKey = tuple[str, int | None, int]
#: a dataset folder, a parsed ``Dataset``, or in-memory samples
DataSource = Dataset | str | Path | Iterable[SliceSample]


@dataclass
class TrajectoryConfig:
    """Which targets become expert episodes, and the expert's knobs (defaults = ``ExpertConfig``'s)."""

    split: str = help_field("dataset split to draw targets from", "training")
    axis: int = help_field("slicing axis of 3D volumes (0 = K, axial for usual CT)", 0)
    min_area: int = help_field("smallest target in pixels", 20)
    max_slices_per_case: int | None = help_field("cap of (slice, label) targets per case (None = all)", None)
    episodes_per_target: int = help_field(
        "expert episodes per target with different seeds (box jitter, strategy); extra episodes cost decoder "
        "time only, since the slice's session is shared", 1)
    first_episode: int = help_field(
        "index of the first episode per target: a later pass with first_episode=k adds new episodes (new seeds) "
        "to an earlier pass's file instead of repeating them", 0)
    episode: EpisodeSettings = help_field(
        "how episodes are played (prompting, local merge, turn budget = the expert's, CT window, box jitter); "
        "default: what the app serves", factory=EpisodeSettings)
    seed: int = help_field("base seed; episode seeds derive from it and (case, slice, label, episode)", 0)
    tau: float = help_field("progress constraint: minimal IoU gain of a kept action", 0.01)
    retries: int = help_field("next-best candidates tried when the best one fails", 3)
    target_iou: float = help_field("the expert stops at this IoU", 0.90)
    box_to_point_prob: float = help_field("share of Box-to-Point episodes (else Sequential-Click)", 0.5)
    strategy: str = help_field(f"expert strategy: one of {', '.join(STRATEGIES)}", "hybrid")
    rebox_margins: tuple[int, ...] = help_field("box redraw margins tried after the clicks (pixels)", (0, 2))
    session_cache_mb: int = help_field("memory for cached tool sessions (4 MiB per LiteMedSAM slice)", 256)
    volume: VolumeStarts = help_field(
        "volume start states (propagated boxes on the slices after a volume's seed slice) the expert also plays "
        "from, on the 3D cases of the split: the states the served volume agent meets", factory=VolumeStarts)

    def __post_init__(self) -> None:
        self.rebox_margins = tuple(int(m) for m in self.rebox_margins)
        if self.split not in ("training", "test"):
            raise ValueError(f"TrajectoryConfig.split must be 'training' or 'test', got {self.split!r}")
        if self.episodes_per_target < 1:
            raise ValueError(f"TrajectoryConfig.episodes_per_target must be >= 1, got {self.episodes_per_target}")
        if self.first_episode < 0:
            raise ValueError(f"TrajectoryConfig.first_episode must be >= 0, got {self.first_episode}")
        if self.session_cache_mb < 8:
            raise ValueError(f"TrajectoryConfig.session_cache_mb must be >= 8, got {self.session_cache_mb}")
        if isinstance(self.episode, Mapping):
            self.episode = EpisodeSettings(**self.episode)
        if isinstance(self.volume, Mapping):
            self.volume = VolumeStarts(**self.volume)
        if not isinstance(self.episode, EpisodeSettings):
            raise TypeError(f"TrajectoryConfig.episode must be EpisodeSettings, got {type(self.episode).__name__}")
        self.expert_config()

    def expert_config(self) -> ExpertConfig:
        return ExpertConfig(box_jitter=self.episode.box_jitter, tau=self.tau, retries=self.retries,
                            target_iou=self.target_iou, max_actions=self.episode.max_turns,
                            box_to_point_prob=self.box_to_point_prob, strategy=self.strategy,
                            rebox_margins=self.rebox_margins)


def slice_key(sample: SliceSample) -> SliceKey:
    return (sample.case_id, sample.slice_index, int(sample.axis))


def traj_key(traj: Trajectory) -> SliceKey:
    return (traj.case_id, traj.slice_index, int(traj.axis))


def _label_names(ds_labels: Mapping[int, str], labels: Mapping[str, int] | Iterable[str] | None) -> list[str] | None:
    if labels is None:
        return None
    wanted = {str(n).lower() for n in labels}
    names = [n for n in ds_labels.values() if n.lower() in wanted]
    if not names:
        raise ValueError(f"none of the labels {sorted(wanted)} is in the dataset's {sorted(ds_labels.values())}")
    return names


def iter_targets(data: DataSource, labels: Mapping[str, int] | Iterable[str] | None = None,
                 split: str = "training", axis: int = 0, min_area: int = 20,
                 max_per_case: int | None = None) -> Iterator[tuple[SliceSample, dict[str, Any]]]:
    """(sample, source) per target; ``source`` records where the slice's pixels come from (for replay).

    Args:
        data: a dataset folder or ``Dataset`` (targets of ``split``), or ``SliceSample``s (used as given,
            filtered by ``labels``).
        labels: label names to keep (a {name: id} mapping or names; case-insensitive); None = all.
    """
    if isinstance(data, (str, Path)):
        data = Dataset.from_dir(data)
    if isinstance(data, Dataset):
        names = _label_names(data.labels, labels)
        root = str(Path(data.root).resolve())
        for case in data.cases(split):
            # one case at a time, so each sample is paired with its image file
            one = Dataset(root=data.root, labels=data.labels, modality=data.modality, training=[case])
            for s in iter_slices(one, "training", axis=axis, labels=names, min_area=min_area,
                                 max_per_case=max_per_case):
                yield s, {"dataset": root, "image": str(Path(case.image_path).resolve()), "modality": s.modality}
        return
    wanted = None if labels is None else {str(n).lower() for n in labels}
    for s in data:
        if wanted is None or s.label_name.lower() in wanted:
            yield s, {"modality": s.modality}


def obs_image(windowed: np.ndarray) -> np.ndarray:
    """What ``SegmentationEnv`` shows a policy as ``obs["image"]``: (H, W) float32 in [0, 1] (an RGB
    uint8 slice becomes its grey mean)."""
    img = np.asarray(windowed)
    if img.ndim == 3:
        return (img.astype(np.float32).mean(axis=2) / 255.0).astype(np.float32)
    return img.astype(np.float32, copy=False)


def expert_trajectories(dataset_or_samples: DataSource, tool: Tool, labels: Mapping[str, int] | None,
                        config: TrajectoryConfig | Any | None = None,
                        progress: Callable[[dict], None] | None = None,
                        should_stop: Callable[[], bool] | None = None) -> list[Trajectory]:
    """Expert (hybrid prompting) trajectories over every target of a dataset split or sample list.

    Args:
        dataset_or_samples: a dataset folder, a ``Dataset`` or ``SliceSample``s.
        tool: the segmenter the agent will be served with (its sessions are cached per slice).
        labels: {name: id} of the targets to keep (the policy's label set); None = every label.
        config: ``TrajectoryConfig``, or any config with a ``data`` attribute holding one (``SFTConfig``).
        progress: called with ``{"stage": "trajectories", "done", "kept", "total"}`` after each target.
        should_stop: polled between targets; True ends generation early (what was kept is returned).

    Returns:
        The kept trajectories (pruned ones, where no action helped, are dropped), in target order; then, from
        a dataset with 3D cases and ``config.volume`` on, the expert's episodes from volume start states
        (``lib.learning.policy.volume_data``; none pruned: stopping at once on a right propagated slice is
        their lesson).
    """
    cfg = getattr(config, "data", config) or TrajectoryConfig()
    if not isinstance(cfg, TrajectoryConfig):
        raise TypeError(f"config must be a TrajectoryConfig or have one as .data, got {type(config).__name__}")
    targets = list(iter_targets(dataset_or_samples, labels, cfg.split, cfg.axis, cfg.min_area,
                                cfg.max_slices_per_case))
    if not targets:
        raise ValueError("no targets: the data has no (slice, label) pair with enough pixels for these labels")
    env = SegmentationEnv(tool, cfg.episode.env_config(tool_name(tool)))
    cache = SessionCache(cfg.session_cache_mb << 20)
    kept: list[Trajectory] = []
    bar = tqdm(targets, unit="target", desc="expert trajectories", disable=progress is not None, mininterval=5)
    for n, (sample, source) in enumerate(bar, start=1):
        if should_stop is not None and should_stop():
            logger.info("expert_trajectories stopped on request after %d targets", n - 1)
            break
        image = window_slice(sample, cfg.episode)
        session, _ = cache.get_or_start(slice_key(sample), lambda image=image: tool.start(image))
        kept += [t for t, keep in expert_episodes(env, cfg, sample, image, session, source) if keep]
        if progress is not None:
            progress({"stage": "trajectories", "done": n, "kept": len(kept), "total": len(targets)})
        elif n % 10 == 0:
            bar.set_postfix(kept=len(kept), refresh=False)
    logger.info("expert_trajectories: %d kept from %d targets (%d encodes)", len(kept), len(targets), cache.misses)
    if cfg.volume.enabled and isinstance(dataset_or_samples, (Dataset, str, Path)):
        kept += volume_expert_trajectories(dataset_or_samples, tool, labels, cfg.episode, cfg.volume,
                                           split=cfg.split, seed=cfg.seed, expert=cfg.expert_config(),
                                           progress=progress, should_stop=should_stop)
    return kept


def expert_episodes(env: SegmentationEnv, cfg: TrajectoryConfig, sample: SliceSample, image: np.ndarray,
                    session: Any, source: Mapping[str, Any]) -> list[tuple[Trajectory, bool]]:
    """The expert's episodes on one target (``cfg.episodes_per_target`` of them, seeded by the target and the
    episode index), each with whether it is kept (``keep_trajectory``: pruned ones taught nothing).

    Args:
        env: the environment over the tool, built from ``cfg.episode``.
        image: the target's slice as ``window_slice(sample, cfg.episode)`` gives it.
        session: that slice's tool session (shared by every episode and label of the slice).
        source: provenance copied into each trajectory (dataset, modality, ...), plus the episode index.
    """
    expert_cfg = cfg.expert_config()
    out = []
    for e in range(cfg.first_episode, cfg.first_episode + cfg.episodes_per_target):
        key = (sample.case_id, sample.slice_index, sample.label_name) + ((e,) if e else ())
        seed = episode_seed(cfg.seed, *key)
        traj = rollout(env, ExpertPolicy(env, expert_cfg), sample_options(
            sample, image=image, session=session, source={**source, "episode": e}), seed=seed)
        out.append((traj, keep_trajectory(traj.ious, expert_cfg)))
    return out


class SliceImages:
    """The windowed slice (``obs["image"]``) of a trajectory or a slice key, loaded once and cached.

    Args:
        source: where pixels come from when a trajectory's ``source["image"]`` does not say: a dataset
            folder or ``Dataset`` (cases found by id in either split), ``SliceSample``s, or a mapping
            ``SliceKey -> windowed image``; None = trajectories must carry ``source["image"]`` or
            ``source["dataset"]``.
        settings: the episode settings the trajectories were played with (their CT window).
        max_volumes: decoded volumes kept in memory (slices of one case are usually read together).
    """

    def __init__(self, source: DataSource | Mapping[SliceKey, np.ndarray] | None = None,
                 settings: EpisodeSettings | None = None, max_volumes: int = 2) -> None:
        self.settings = settings or EpisodeSettings()
        self._images: dict[SliceKey, np.ndarray] = {}
        self._datasets: dict[str, Dataset] = {}
        self._volumes: OrderedDict[tuple[str, str | None], Any] = OrderedDict()
        self.max_volumes = int(max_volumes)
        self._default: Dataset | None = None
        if isinstance(source, (str, Path)):
            source = Dataset.from_dir(source)
        if isinstance(source, Dataset):
            self._default = source
        elif isinstance(source, Mapping):
            self._images.update({tuple(k): obs_image(v) for k, v in source.items()})
        elif source is not None:
            for s in source:
                self._images.setdefault(slice_key(s), obs_image(window_slice(s, self.settings)))

    def __call__(self, traj: Trajectory) -> np.ndarray:
        """(H, W) float32 in [0, 1]: the slice ``traj`` was played on, as the policy saw it."""
        key = traj_key(traj)
        if key not in self._images:
            self._images[key] = obs_image(self._load(key, traj.source))
        return self._images[key]

    def _load(self, key: SliceKey, source: Mapping[str, Any]) -> np.ndarray:
        case_id, index, axis = key
        modality = source.get("modality")
        path = source.get("image")
        if path is None or not Path(path).exists():
            case = self._find_case(case_id, source.get("dataset"))
            path = case.image_path
            modality = modality or case.modality
        vol = self._volume(str(path), modality)
        return volume_slice(vol, index, self.settings.windowing(vol.modality), axis=axis)

    def _find_case(self, case_id: str, dataset: str | None) -> Case:
        ds = self._default
        if dataset is not None and (ds is None or Path(ds.root).resolve() != Path(dataset).resolve()):
            if dataset not in self._datasets:
                self._datasets[dataset] = Dataset.from_dir(dataset, check_files=False)
            ds = self._datasets[dataset]
        if ds is None:
            raise ValueError(f"trajectory of case {case_id!r} names no image or dataset; pass the dataset to the "
                             "learner (e.g. train_sft(..., images=dataset))")
        for case in ds.cases("training") + ds.cases("test"):
            if case.case_id == case_id:
                return case
        raise ValueError(f"case {case_id!r} is not in the dataset at {ds.root}")

    def _volume(self, path: str, modality: str | None):
        key = (path, modality)
        if key in self._volumes:
            self._volumes.move_to_end(key)
            return self._volumes[key]
        vol = load_image(path, modality=modality)
        self._volumes[key] = vol
        while len(self._volumes) > self.max_volumes:
            self._volumes.popitem(last=False)
        return vol
