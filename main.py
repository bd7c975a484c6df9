"""MONAI Label app: MedSAM-Agent. Wiring only; the logic lives in lib/ (docs/architecture.md)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

import lib  # noqa: F401  (imported at top: MONAI Label drops the app dir from sys.path after loading main.py)
import lib.activelearning.agent_turns
import lib.activelearning.lowest_quality
import lib.activelearning.most_turns
import lib.agent.policies.store
import lib.configs.app_conf
import lib.configs.labels
import lib.configs.policy
import lib.datastore.dicomweb
import lib.infers.agent
import lib.infers.errors
import lib.infers.interactive
import lib.tools.cache
import lib.tools.provider
import lib.tools.registry
import lib.trainers.agent
import lib.trainers.tool_interactive

logger = logging.getLogger(__name__)

AGENT_MODELS = ("agent", "agent_handoff")


class MedSAMAgentApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.app_conf = lib.configs.app_conf.AppConf.parse(conf)
        self.agent_labels = lib.configs.labels.resolve_labels(self.app_conf.labels, studies)
        self.session_cache = lib.tools.cache.SessionCache(self.app_conf.session_cache_mb << 20)
        self.unavailable: dict[str, str] = {}
        self.policy_dir = Path(self.app_conf.policy_dir or os.path.join(app_dir, "model", "agent"))
        self._providers = self._make_providers()
        self.policy_store = lib.configs.policy.policy_store(self.app_conf, self.policy_dir)
        lib.infers.errors.install_bad_json_handler()
        if self.app_conf.demo_policy:
            self.seed_demo_policy(Path(app_dir) / "demo" / "agent_policy")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MedSAM-Agent",
            description="Multi-turn agent over promptable medical segmenters (LiteMedSAM, SAM 2.1, MedSAM2)",
            version="0.1.0",
            labels=list(self.agent_labels),  # names ordered by value, as Slicer lists segments
        )

    def _make_providers(self) -> dict[str, lib.tools.provider.ToolProvider]:
        c = self.app_conf
        overrides = {
            "litemedsam": {"device": c.device, "threads": c.threads, "encoder_runtime": c.encoder_runtime},
            "sam2": {"device": c.device, "checkpoint": c.sam2_checkpoint, "model_config": c.sam2_config},
            "medsam2": {"device": c.device, "checkpoint": c.medsam2_checkpoint},
        }
        names = dict.fromkeys([*c.backends, c.agent_backend])
        return {
            b: lib.tools.provider.ToolProvider(b, lib.tools.registry.bundle_dir(b), overrides[b], self.session_cache,
                                               models_dir=Path(c.models_dir) / b if c.models_dir else None)
            for b in names
        }

    def init_infers(self):
        infers = {}
        for name, provider in self._providers.items():
            problem = provider.checkpoint_problem()
            if problem:
                self.unavailable[name] = problem
                logger.warning("backend not offered: %s", problem)
                continue
            if self.app_conf.preload:
                provider.tool  # noqa: B018  (load now rather than on the first click)
            self.warn_settings(name, provider.weights_info())
            if name in self.app_conf.backends:
                infers[name] = lib.infers.interactive.InteractiveInfer(provider, self.agent_labels,
                                                                       self.app_conf.episode)
        agent_backend = self._providers[self.app_conf.agent_backend]
        if self.app_conf.agent_backend in self.unavailable:
            for m in AGENT_MODELS:
                self.unavailable[m] = self.unavailable[self.app_conf.agent_backend]
            return infers
        for m in AGENT_MODELS:
            infers[m] = lib.infers.agent.AgentInfer(
                agent_backend, self.policy_store, self.agent_labels, self.app_conf.episode,
                handoff=(m == "agent_handoff"), scope=self.app_conf.scope)
        return infers

    def init_trainers(self):
        provider = self._providers[self.app_conf.agent_backend]
        trainers = self._tool_trainers()
        if self.app_conf.policy != "compact":
            return trainers  # the VLM is trained with TRL scripts on GPUs (docs/vlm.md), not inside the server
        return {
            **trainers,
            "agent_sft": lib.trainers.agent.AgentSFTTask(
                provider, self.agent_labels, self.policy_dir, self.app_conf.episode,
                "Agent SFT: imitate expert box/click trajectories simulated from the final labels"),
            "agent_rl": lib.trainers.agent.AgentRLTask(
                provider, self.agent_labels, self.policy_dir, self.app_conf.episode,
                "Agent RL (GRPO): refine the SFT policy with the verifiable process reward"),
        }

    def _tool_trainers(self) -> dict:
        """``<backend>_interactive`` for each offered backend whose bundle declares ``configs/train.json``."""
        trainers = {}
        for name, provider in self._providers.items():
            if name in self.unavailable or not (provider.bundle / "configs" / "train.json").is_file():
                continue
            episode = self.app_conf.episode
            # the segmenter is adapted under the settings it is served with (train == serve), its frozen image
            # encoder run by the served runtime (--conf encoder_runtime; None for backends without the option)
            overrides = {"device": self.app_conf.device, "encoder_runtime": provider.overrides.get("encoder_runtime"),
                         "ct_window": list(episode.ct_window), "box_jitter": episode.box_jitter,
                         "val_prompting": episode.prompting_for(name).value, "models_dir": str(provider.models_dir)}
            task = lib.trainers.tool_interactive.ToolInteractiveTrain(
                provider.bundle, self.agent_labels, backend=name, overrides=overrides)
            trainers[task.name] = task
        return trainers

    def init_strategies(self):
        return {"most_turns": lib.activelearning.most_turns.MostTurns(),
                "lowest_quality": lib.activelearning.lowest_quality.LowestQuality(),
                "random": Random(), "first": First()}

    def init_scoring_methods(self):
        agent = self._infers.get("agent")
        return {"agent_turns": lib.activelearning.agent_turns.AgentTurnsScoring(agent, self.agent_labels)} if agent \
            else {}

    def info(self):
        meta = super().info()
        meta["agent"] = {
            "policy": self.app_conf.policy,
            "policy_dir": str(self.policy_dir),
            "trained": self.policy_store.exists(),
            **({"vlm_path": self.app_conf.vlm_path} if self.app_conf.policy == "vlm" else {}),
            "backend": self.app_conf.agent_backend,
            "unavailable": self.unavailable,
        }
        meta["tools"] = {name: p.weights_info() for name, p in self._providers.items() if name not in self.unavailable}
        return meta

    def infer(self, request, datastore=None):
        model = request.get("model")
        if model not in self._infers:
            why = f" ({self.unavailable[model]})" if model in self.unavailable else ""
            raise HTTPException(
                status_code=404,
                detail=f"model {model!r} is not available{why}; available models: {sorted(self._infers)}",
            )
        image = request.get("image")
        ds = datastore or self.datastore()
        if isinstance(image, str) and not os.path.exists(image) and image not in ds.list_images():
            if isinstance(ds, lib.datastore.dicomweb.AgentDICOMwebDatastore):
                raise HTTPException(status_code=404, detail=ds.describe_missing(image))
            raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore; "
                                "list images with GET /datastore/?output=all or upload it first")
        res = super().infer(request, datastore)
        if model in AGENT_MODELS and isinstance(image, str) and image in ds.list_images():
            # what the most_turns / lowest_quality strategies rank on, refreshed by every agent run a user makes
            ds.update_image_info(image, lib.activelearning.agent_turns.agent_info([res["params"]],
                                                                                  ds.get_image_info(image)))
        return res

    def _init_dicomweb_datastore(self):
        """``--studies http(s)://.../dicom-web``: MONAI Label's DICOMweb datastore, made to read compressed series,
        list CT and MR, keep label values through DICOM SEG and answer clear errors (lib/datastore/dicomweb.py)."""
        self._download_dcmqi_tools()
        cache = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or None
        logger.info("DICOMweb datastore %s (cache %s)", self.studies, cache or "~/.cache/monailabel/dicom")
        return lib.datastore.dicomweb.AgentDICOMwebDatastore(self.studies, self.agent_labels, cache_path=cache)

    def _download_dcmqi_tools(self):
        """dcmqi (DICOM SEG writer) from the PyPI package ``dcmqi``; MONAI Label would download it from GitHub."""
        logger.info("DICOM SEG writer: %s", lib.datastore.dicomweb.ensure_dcmqi())

    def warn_settings(self, backend: str, weights: dict) -> None:
        """Log when adapted segmenter weights were trained under other episode settings than those served."""
        if weights.get("weights") != "adapted":
            return
        diff = self.app_conf.episode.differences(weights.get("episode"), backend, keys=("prompting", "ct_window"))
        if diff:
            logger.warning("%s: the adapted weights were trained with other settings than the server serves "
                           "(retrain %s_interactive, or serve them with --conf): %s", backend, backend, "; ".join(diff))

    def seed_demo_policy(self, demo: Path) -> None:
        """First start: serve the demo policy shipped with the sample studies until a trained one exists."""
        if not self.policy_store.exists() and (demo / "policy.json").is_file():
            shutil.copytree(demo, self.policy_dir, dirs_exist_ok=True)
