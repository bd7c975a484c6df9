"""The MONAI Label train task ``litemedsam_interactive``: options, stats, clear errors, atomic publish."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fastapi import HTTPException

from lib.learning.segmenter.adapted_weights import publish_adapted
from lib.trainers.tool_interactive import ToolInteractiveTrain

ROOT = Path(__file__).resolve().parents[2]


class FakeDatastore:
    """The one Datastore method the task uses: ``datalist()`` -> [{"image", "label"}] with final labels."""

    def __init__(self, pairs):
        self.pairs = pairs

    def datalist(self, full_path=True):
        return list(self.pairs)


@pytest.fixture
def bundle(tmp_path) -> Path:
    b = tmp_path / "litemedsam"
    shutil.copytree(ROOT / "bundles" / "litemedsam" / "configs", b / "configs")
    return b


def _task(bundle, ft=None, **overrides):
    if ft is not None:  # reuse the session's embedding cache and keep validation tiny
        overrides = {"cache_dir": str(ft.cache_dir), "train_config#val_noc_max_clicks": 1,
                     "train_config#val_clicks": 1, "train_config#warmup_steps": 1, **overrides}
    return ToolInteractiveTrain(bundle, {"disc": 1, "bar": 2}, overrides=overrides)


def test_options_and_stats_before_training(bundle):
    task = _task(bundle)
    assert task.name == "litemedsam_interactive"
    assert task.config() == {"steps": 1000, "lr": 5e-05, "max_clicks": 4, "val_split": 0.2, "seed": 0,
                             "labels": None, "max_per_case": None, "max_val_samples": 16, "val_every": 250}
    assert task.stats()["status"] == "never trained"
    assert "description" in task.info() and task.info()["config"]["steps"] == 1000


def test_zero_labelled_images_is_a_clear_422(bundle):
    with pytest.raises(HTTPException) as e:
        _task(bundle)({"model": "litemedsam_interactive"}, FakeDatastore([]))
    assert e.value.status_code == 422 and "no labelled images" in e.value.detail


def test_bad_option_is_a_422(bundle, ft):
    pairs = [{"image": str(ft.root / "images" / f"c{n}.png"), "label": str(ft.root / "labels" / f"c{n}.png")}
             for n in range(2)]
    with pytest.raises(HTTPException) as e:
        _task(bundle, ft)({"steps": "many"}, FakeDatastore(pairs))
    assert e.value.status_code == 422 and "steps" in e.value.detail
    with pytest.raises(HTTPException) as e:
        _task(bundle, ft)({"val_split": 1.5}, FakeDatastore(pairs))
    assert e.value.status_code == 422 and "val_fraction" in e.value.detail


def test_run_publishes_and_reports_stats(bundle, ft):
    ft.reset()
    pairs = [{"image": str(ft.root / "images" / f"c{n}.png"), "label": str(ft.root / "labels" / f"c{n}.png")}
             for n in range(2)]
    stats = _task(bundle, ft)({"steps": 2, "val_split": 0.5}, FakeDatastore(pairs))
    assert stats["status"] == "done" and stats["steps"] == 2
    assert stats["embedding_cache"]["misses"] == 0
    assert set(stats["best_val"]) == {"dice_per_click", "noc@85"}
    assert Path(stats["adapted_weights"]).is_file()
    assert _task(bundle).stats() == json.loads(json.dumps(stats))
    state = torch.load(bundle / "models" / "adapted.pt", weights_only=True)
    assert {k.split(".")[0] for k in state} == {"prompt_encoder", "mask_decoder"}
    ft.reset()


def test_failed_run_keeps_the_served_weights(bundle, ft, monkeypatch):
    import lib.learning.segmenter.finetune as tf

    publish_adapted({"mask_decoder.x": torch.ones(1)}, {"v": "old"}, bundle / "models")
    old = (bundle / "models" / "adapted.pt").read_bytes()

    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(tf, "finetune", boom)
    pairs = [{"image": str(ft.root / "images" / "c0.png"), "label": str(ft.root / "labels" / "c0.png")}]
    with pytest.raises(RuntimeError, match="out of memory"):
        _task(bundle, ft)({}, FakeDatastore(pairs))
    assert (bundle / "models" / "adapted.pt").read_bytes() == old
    stats = _task(bundle).stats()
    assert stats["status"] == "failed" and "out of memory" in stats["error"]
