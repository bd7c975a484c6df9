"""``<backend>_interactive`` train task: adapt a segmenter's clicks to the datastore's final labels.

A direct ``TrainTask`` subclass. MONAI Label runs ``/train/<name>`` in a subprocess that rebuilds the app
from its conf, so everything comes from the constructor arguments and the bundle's ``configs/train.json``
(parsed with ``monai.bundle.ConfigParser``; the request may override ``steps``, ``lr``, ``max_clicks``,
``val_split``, ``seed``). The run trains with ``lib.learning.segmenter.finetune.finetune``, writes its curves
and history to ``<bundle>/models/train_runs/<time>/`` and publishes ``adapted.pt`` + ``adapted.json``
atomically into ``<bundle>/models/``; the server's ``ToolProvider`` sees the new ``.pt`` mtime and the next
interactive request decodes with the adapted weights, no restart. A run that raises publishes nothing,
so the previously served weights stay. Progress and results go to ``<bundle>/models/<name>_stats.json``,
which ``stats()`` returns (``/info`` → ``train_stats``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.train import TrainTask

from lib.data.dataset import Case, Dataset

logger = logging.getLogger(__name__)

#: request keys a user may set (``/info`` → trainers → config) -> (train.json id, type)
USER_OPTIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "steps": ("steps", int),
    "lr": ("lr", float),
    "max_clicks": ("max_clicks", int),
    "val_split": ("val_split", float),
    "seed": ("seed", int),
    "labels": ("labels", lambda v: [s.strip() for s in v.split(",")] if isinstance(v, str) else [str(s) for s in v]),
    "max_per_case": ("max_per_case", int),
    "max_val_samples": ("max_val_samples", int),
    "val_every": ("val_every", int),
}


def datastore_cases(datastore) -> list[Case]:
    """Images with a ``final`` label as ``Case``s (modality guessed from each image).

    Raises:
        HTTPException 422: no image has a final label yet.
    """
    pairs = datastore.datalist()
    if not pairs:
        raise HTTPException(status_code=422, detail=(
            "no labelled images: interactive fine-tuning needs images with a saved final label in the datastore "
            "(segment an image in Slicer and press 'Submit Label', or PUT /datastore/label?tag=final)"))
    return [Case(image_path=Path(p["image"]), label_path=Path(p["label"]), case_id=Path(p["image"]).name)
            for p in pairs]


class ToolInteractiveTrain(TrainTask):
    """Interactive fine-tuning of one backend's prompt encoder + mask decoder.

    Args:
        bundle_dir: the backend's bundle (``configs/train.json`` in, ``models/adapted.{pt,json}`` out).
        labels: label name -> value of the app (the datastore's label maps use these values).
        backend: backend name (the task is called ``<backend>_interactive``).
        overrides: train.json ids to override for every run (e.g. ``{"device": "cuda", "ct_window": [40, 400]}``);
            ``models_dir`` moves the published weights, stats, runs and embedding cache out of the bundle.
    """

    def __init__(self, bundle_dir: str | Path, labels: dict[str, int], backend: str = "litemedsam",
                 overrides: dict[str, Any] | None = None, description: str | None = None) -> None:
        super().__init__(description or (
            f"{backend}: fine-tune the prompt encoder + mask decoder on your final labels so corrective clicks "
            "improve masks (image encoder frozen; new weights are served without a restart)"))
        self.name = f"{backend}_interactive"
        self.backend = backend
        self.bundle_dir = Path(bundle_dir)
        self.labels = dict(labels)
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        self.models_dir = Path(self.overrides.get("models_dir") or self.bundle_dir / "models")
        self.stats_path = self.models_dir / f"{self.name}_stats.json"

    def _parser(self, request: dict[str, Any] | None = None):
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(self.bundle_dir / "configs" / "train.json"))
        parser["bundle_root"] = str(self.bundle_dir.resolve())
        for k, v in self.overrides.items():
            parser[k] = v
        for key, (cid, typ) in USER_OPTIONS.items():
            if request and request.get(key) not in (None, ""):
                try:
                    parser[cid] = typ(request[key])
                except (TypeError, ValueError):
                    raise HTTPException(
                        status_code=422, detail=f"{self.name}: {key}={request[key]!r} is not a valid {key}"
                    ) from None
        return parser

    def config(self) -> dict[str, Any]:
        """User-visible options with the bundle's defaults."""
        parser = self._parser()
        return {key: parser.get_parsed_content(cid) for key, (cid, _) in USER_OPTIONS.items()}

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, json.JSONDecodeError):
            adapted = self.models_dir / "adapted.pt"
            return {"status": "never trained", "adapted_weights": str(adapted) if adapted.is_file() else None}

    def _write_stats(self, stats: dict[str, Any]) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.stats_path.with_name(f".{self.stats_path.name}.tmp")
        tmp.write_text(json.dumps(stats, indent=1, default=str))
        os.replace(tmp, self.stats_path)

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any]:
        from lib.learning.segmenter.finetune import finetune

        cases = datastore_cases(datastore)
        parser = self._parser(request)
        try:
            cfg = parser.get_parsed_content("train_config")
        except (ValueError, RuntimeError) as e:
            # monai.bundle wraps the dataclass's ValueError (which names the bad value and how to fix it)
            cause: BaseException | None = e
            while cause is not None and not isinstance(cause, ValueError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise HTTPException(status_code=422, detail=f"{self.name}: {cause}") from e
        dataset = Dataset(root=cases[0].image_path.parent, labels={v: k for k, v in self.labels.items()},
                          training=cases)
        t0 = time.time()
        run_dir = Path(parser.get_parsed_content("runs_dir")) / time.strftime("%Y%m%d-%H%M%S")
        base = {"task": self.name, "backend": self.backend, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "n_images": len(cases), "steps_planned": cfg.steps, "run_dir": str(run_dir)}
        self._write_stats({**base, "status": "running", "step": 0})

        def on_validation(step: int, metrics: dict[str, Any]) -> None:
            self._write_stats({**base, "status": "running", "step": step, "elapsed_s": round(time.time() - t0, 1),
                               "val_dice_per_click": metrics["dice_per_click"], "val_noc@85": metrics["noc@85"]})

        try:
            info = finetune(dataset, cfg, run_dir, publish_to=self.models_dir, source=f"datastore {dataset.root}",
                            on_validation=on_validation)
        except Exception as e:
            logger.exception("%s failed; the served weights are unchanged", self.name)
            self._write_stats({**base, "status": "failed", "error": f"{type(e).__name__}: {e}",
                               "elapsed_s": round(time.time() - t0, 1)})
            raise
        after, before = info["metrics"]["after"], info["metrics"]["before"]
        stats = {
            **base, "status": "done", "elapsed_s": round(time.time() - t0, 1),
            "steps": info["steps"]["run"], "best_step": info["steps"]["best"],
            "best_val": {"dice_per_click": after["dice_per_click"], "noc@85": after["noc@85"]},
            "released_val": {"dice_per_click": before["dice_per_click"], "noc@85": before["noc@85"]},
            "train_cases": info["data"]["train_cases"], "val_cases": info["data"]["val_cases"],
            "adapted_weights": str(self.models_dir / "adapted.pt"),
            "embedding_cache": info["embedding_cache"],
        }
        self._write_stats(stats)
        return stats
