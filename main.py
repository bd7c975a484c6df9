"""MONAI Label app: MedSAM-Agent. Wiring only; the logic lives in lib/ (see design §2)."""

from __future__ import annotations

import logging
import os

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

import lib  # noqa: F401  (imported at top: MONAI Label drops the app dir from sys.path after loading main.py)
import lib.configs.app_conf
import lib.configs.labels
import lib.infers.interactive
import lib.tools.cache
import lib.tools.provider
import lib.tools.registry

logger = logging.getLogger(__name__)


class MedSAMAgentApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.app_conf = lib.configs.app_conf.AppConf.parse(conf)
        self.agent_labels = lib.configs.labels.resolve_labels(self.app_conf.labels, studies)
        self.session_cache = lib.tools.cache.SessionCache(self.app_conf.session_cache_mb << 20)
        self.unavailable: dict[str, str] = {}
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MedSAM-Agent",
            description="Multi-turn agent over promptable medical segmenters (LiteMedSAM, SAM 2.1, MedSAM2)",
            version="0.1.0",
            labels=list(self.agent_labels),  # names ordered by value, as Slicer lists segments
        )

    def providers(self) -> dict[str, lib.tools.provider.ToolProvider]:
        c = self.app_conf
        overrides = {
            "litemedsam": {"device": c.device, "threads": c.threads},
            "sam2": {"device": c.device, "checkpoint": c.sam2_checkpoint, "model_config": c.sam2_config},
            "medsam2": {"device": c.device, "checkpoint": c.medsam2_checkpoint},
        }
        return {
            b: lib.tools.provider.ToolProvider(b, lib.tools.registry.bundle_dir(b), overrides[b], self.session_cache)
            for b in c.backends
        }

    def init_infers(self):
        infers = {}
        for name, provider in self.providers().items():
            problem = provider.checkpoint_problem()
            if problem:
                self.unavailable[name] = problem
                logger.warning("backend not offered: %s", problem)
                continue
            if self.app_conf.preload:
                provider.tool  # noqa: B018  (load now rather than on the first click)
            infers[name] = lib.infers.interactive.InteractiveInfer(provider, self.agent_labels, self.app_conf.ct_window)
        return infers

    def init_strategies(self):
        return {"random": Random(), "first": First()}

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
            raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore; "
                                "list images with GET /datastore/?output=all or upload it first")
        return super().infer(request, datastore)
