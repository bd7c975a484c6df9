"""``agent_sft`` and ``agent_rl``: train the agent policy on the datastore's final labels, inside MONAI Label.

Direct ``TrainTask`` subclasses, rebuildable from conf alone (MONAI Label runs async training in a
subprocess that reconstructs the app). Each run trains into a temporary folder and publishes the
checkpoint with one atomic swap (``lib.learning.checkpoint.publish``); the infer tasks reload it on the
next request. A run that fails or is stopped never touches the served policy or the datastore.
Progress and results go to ``<policy_dir>/../<name>_stats.json``, shown in ``/info`` (``train_stats``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.train import TrainTask

from lib.agent.settings import EpisodeSettings
from lib.data.dataset import Case, Dataset, iter_slices
from lib.data.label_names import resolve
from lib.tools.provider import ToolProvider

logger = logging.getLogger(__name__)


def _default_steps(module: str, config_class: str) -> int | None:
    """The training config's default step count (None when the learning module cannot be imported)."""
    import importlib

    try:
        return int(getattr(importlib.import_module(module), config_class)().steps)
    except (ImportError, AttributeError) as e:
        logger.warning("cannot read default steps from %s.%s: %s", module, config_class, e)
        return None


class InjectedFailure(RuntimeError):
    """Raised on purpose by ``debug_fail_at_step`` (tests prove a failed run leaves the served policy)."""


def datastore_dataset(datastore, labels: dict[str, int]) -> Dataset:
    """The datastore's images with ``final`` labels as a ``Dataset`` (all in the ``training`` split).

    Raises:
        HTTPException 422: no image has a final label yet.
    """
    pairs = datastore.datalist()
    if not pairs:
        raise HTTPException(status_code=422, detail=(
            "no labelled images: training needs images with a saved final label in the datastore "
            "(segment an image in Slicer and press 'Submit Label', or PUT /datastore/label?tag=final)"))
    cases = [Case(image_path=Path(p["image"]), label_path=Path(p["label"]), case_id=Path(p["image"]).name)
             for p in pairs]
    return Dataset(root=Path(pairs[0]["image"]).parent, labels={v: k for k, v in labels.items()}, training=cases)


class AgentTrainTask(TrainTask):
    """Shared run/stats/publish logic; subclasses implement ``train(request, dataset, tmp_out, progress)``."""

    name = "agent"

    def __init__(self, provider: ToolProvider, labels: dict[str, int], policy_dir: Path | str,
                 settings: EpisodeSettings, description: str) -> None:
        super().__init__(description)
        self.provider = provider
        # trained with the very settings object the infer tasks serve, so train and infer cannot drift
        self.settings = settings
        self.labels = labels
        self.policy_dir = Path(policy_dir)
        self.stats_path = self.policy_dir.parent / f"{self.name}_stats.json"

    def config(self) -> dict[str, Any]:
        # volume_slices_per_target: propagated slices per (image, label) whose start states the policy also
        # learns from (the states the volume agent meets when it serves); 0 = slice episodes only
        # calibrate_quality: fit the served quality's calibration on the held-out validation cases after training
        return {"max_slices_per_case": 8, "volume_slices_per_target": 4, "seed": 0, "calibrate_quality": True}

    def volume_starts(self, req: dict[str, Any]):
        from lib.learning.policy.volume_data import VolumeStarts

        n = int(req["volume_slices_per_target"])
        if n < 0:
            raise HTTPException(status_code=422, detail=f"volume_slices_per_target must be >= 0 (0 = off), got {n}")
        return VolumeStarts(max_slices_per_target=n) if n else VolumeStarts(sources=())

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {"status": "never trained", "policy_dir": str(self.policy_dir)}

    def _write_stats(self, stats: dict[str, Any]) -> None:
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.stats_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(stats, indent=1, default=str))
        os.replace(tmp, self.stats_path)

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any]:
        from lib.learning.checkpoint import publish

        req = {**self.config(), **(request or {})}
        dataset = datastore_dataset(datastore, self.labels)
        t0 = time.time()
        base = {"task": self.name, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "backend": self.provider.name,
                "n_images": len(dataset.training), "policy_dir": str(self.policy_dir)}
        self._write_stats({**base, "status": "running", "progress": 0.0})
        fail_at = req.get("debug_fail_at_step")
        last = [0.0]

        def progress(info: dict[str, Any]) -> None:
            step = int(info.get("step", 0))
            if fail_at is not None and step >= int(fail_at):
                raise InjectedFailure(f"debug_fail_at_step={fail_at} reached at step {step}")
            if time.time() - last[0] > 2.0:  # keep the stats file cheap to maintain
                last[0] = time.time()
                logger.info("%s progress: %s", self.name, info)
                self._write_stats({**base, "status": "running", **info})

        try:
            self.policy_dir.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.policy_dir.parent, prefix=f".{self.name}-") as tmp:
                out = Path(tmp) / "checkpoint"
                result = self.train(req, dataset, out, progress)
                publish(out, self.policy_dir)
        except Exception as e:
            logger.exception("%s failed; the served policy is unchanged", self.name)
            self._write_stats({**base, "status": "failed", "error": f"{type(e).__name__}: {e}",
                               "elapsed_s": time.time() - t0})
            raise
        stats = {**base, "status": "done", "elapsed_s": time.time() - t0, **result}
        self._write_stats(stats)
        return stats

    def targets(self, req: dict[str, Any]) -> dict[str, int]:
        """The labels to train on: request ``labels`` (names) or every label of the app."""
        names = req.get("labels") or list(self.labels)
        known = {n: resolve(str(n), self.labels) for n in names}
        unknown = [n for n, k in known.items() if k is None]
        if unknown:
            raise HTTPException(status_code=422, detail=f"unknown labels {unknown}; valid: {sorted(self.labels)}")
        return {k: self.labels[k] for k in known.values()}

    def samples(self, req: dict[str, Any], dataset: Dataset) -> list:
        values = list(self.targets(req).values())
        return list(iter_slices(dataset, "training", labels=values, max_per_case=int(req["max_slices_per_case"])))

    def train(self, req: dict[str, Any], dataset: Dataset, out: Path, progress) -> dict[str, Any]:
        raise NotImplementedError

    def calibrate(self, req: dict[str, Any], out: Path, samples: list, val_cases, progress) -> dict[str, Any]:
        """Fit the trained policy's quality calibration on the validation cases' targets and store it in ``out``
        (``lib.learning.policy.calibration``); stats say what was fitted, or why nothing was."""
        from lib.agent.policies.compact import CompactPolicy
        from lib.learning.policy.calibration import fit_calibration

        if not req.get("calibrate_quality", True):
            return {"quality_calibration": "off (request calibrate_quality: false)"}
        val = [s for s in samples if s.case_id in set(val_cases or ())]
        if not val:
            return {"quality_calibration": "skipped: no validation case (label at least two images)"}
        policy = CompactPolicy.load(out, calibration=None)
        try:
            fit = fit_calibration(policy, self.provider.tool, [val], self.settings, seed=int(req["seed"]),
                                  meta={"backend": self.provider.name, "source": f"{self.name} validation cases"},
                                  progress=progress)
        except ValueError as e:
            return {"quality_calibration": f"skipped: {e}"}
        policy.calibration = fit.calibration
        policy.save(out)
        return {"quality_calibration": fit.summary()}


class AgentSFTTask(AgentTrainTask):
    """Behaviour cloning of expert trajectories simulated from the final labels."""

    name = "agent_sft"

    def config(self) -> dict[str, Any]:
        return {**super().config(), "steps": _default_steps("lib.learning.policy.sft", "SFTConfig")}

    def train(self, req, dataset, out, progress):
        from lib.learning.policy.data import TrajectoryConfig, expert_trajectories
        from lib.learning.policy.sft import SFTConfig, train_sft
        from lib.learning.policy.volume_data import volume_expert_trajectories

        samples = self.samples(req, dataset)
        data = TrajectoryConfig(episode=self.settings, seed=int(req["seed"]))
        config = SFTConfig(data=data, seed=int(req["seed"]),
                           **({"steps": int(req["steps"])} if req.get("steps") else {}))
        trajectories = expert_trajectories(samples, self.provider.tool, self.targets(req), config=data,
                                           progress=progress)
        volume = volume_expert_trajectories(dataset, self.provider.tool, self.targets(req), self.settings,
                                            self.volume_starts(req), seed=data.seed, expert=data.expert_config(),
                                            progress=progress)
        trajectories += volume
        if not trajectories:
            raise HTTPException(status_code=422, detail="the labelled images gave no usable expert trajectories "
                                "(targets too small or labels not in the app's label set)")
        stats = train_sft(config, trajectories, out, self.labels, progress=progress, images=samples)
        stats.update(self.calibrate(req, out, samples, stats.get("val_cases"), progress))
        return {"n_slices": len(samples), "n_trajectories": len(trajectories),
                "n_volume_trajectories": len(volume), **stats}


class AgentRLTask(AgentTrainTask):
    """GRPO from the served SFT policy with the verifiable process reward."""

    name = "agent_rl"

    def config(self) -> dict[str, Any]:
        return {**super().config(), "steps": _default_steps("lib.learning.policy.rl", "RLConfig")}

    def train(self, req, dataset, out, progress):
        from lib.learning.policy.rl import RLConfig, train_grpo

        if not (self.policy_dir / "policy.json").is_file():
            raise HTTPException(status_code=422, detail="agent_rl starts from the SFT policy: run agent_sft first")
        samples = self.samples(req, dataset)
        config = RLConfig(seed=int(req["seed"]), episode=self.settings, volume=self.volume_starts(req),
                          **({"steps": int(req["steps"])} if req.get("steps") else {}))
        stats = train_grpo(config, samples, self.provider.tool, self.policy_dir, out, progress=progress,
                           volumes=dataset)
        stats.update(self.calibrate(req, out, samples, stats.get("val_cases"), progress))
        return {"n_slices": len(samples), **stats}
