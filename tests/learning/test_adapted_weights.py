"""Published adapted weights: plain state dict, atomic publish, loaded by the tool with a changed output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lib.agent.clicks import jittered_box
from lib.learning.segmenter import adapted_weights
from lib.learning.segmenter.adapted_weights import load_adapted, publish_adapted
from lib.learning.segmenter.embedding_cache import CachedEmbedding


def test_publish_writes_a_pair_and_rejects_non_tensors(tmp_path):
    pt, js = publish_adapted({"a.w": torch.ones(2)}, {"steps": 1}, tmp_path)
    state, info = load_adapted(pt)
    assert torch.equal(state["a.w"], torch.ones(2)) and info == {"steps": 1}
    assert js.name == "adapted.json"
    with pytest.raises(TypeError, match="str -> tensor"):
        publish_adapted({"a.w": 1.0}, {}, tmp_path)


def test_failed_publish_leaves_the_old_pair(tmp_path, monkeypatch):
    publish_adapted({"a.w": torch.ones(2)}, {"v": "old"}, tmp_path)
    old = (tmp_path / "adapted.pt").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(adapted_weights.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        publish_adapted({"a.w": torch.zeros(2)}, {"v": "new"}, tmp_path)
    assert (tmp_path / "adapted.pt").read_bytes() == old
    assert json.loads((tmp_path / "adapted.json").read_text()) == {"v": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapted.json", "adapted.pt"]


def test_training_that_raises_publishes_nothing(ft, tmp_path, monkeypatch):
    from lib.data.dataset import Dataset
    from lib.learning.segmenter import finetune as tool_finetune

    publish_adapted({"a.w": torch.ones(2)}, {"v": "old"}, tmp_path / "models")
    before = (tmp_path / "models" / "adapted.pt").stat().st_mtime_ns
    calls = []

    def crash(*a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("killed mid-run")
        return real(*a, **k)

    real = tool_finetune.advance_sessions
    monkeypatch.setattr(tool_finetune, "advance_sessions", crash)
    cfg = tool_finetune.ToolFinetuneConfig(steps=5, val_every=5, val_fraction=0.5, val_noc_max_clicks=1,
                                           val_clicks=0, cache_dir=str(ft.cache_dir), progress=False)
    monkeypatch.setattr(tool_finetune, "validate", lambda *a, **k: {"score": 0.0, "dice_per_click": [0.0],
                                                                     "noc@85": 1.0})
    with pytest.raises(RuntimeError, match="killed mid-run"):
        tool_finetune.finetune(Dataset.from_dir(ft.root), cfg, tmp_path / "run", publish_to=tmp_path / "models",
                               backend=ft.backend)
    assert (tmp_path / "models" / "adapted.pt").stat().st_mtime_ns == before
    assert json.loads((tmp_path / "models" / "adapted.json").read_text()) == {"v": "old"}
    ft.reset()


def test_published_state_loads_into_the_tool_and_changes_its_output(ft, tmp_path):
    from lib.tools.litemedsam import LiteMedSAMTool

    ft.reset()
    it = ft.val.items[0]
    entry = CachedEmbedding(ft.val.embeddings[it.index], it.resized, it.shape)
    box = jittered_box(it.gt, np.random.default_rng(0)).as_tuple()
    released = ft.backend.session(entry).predict(box=box).logits
    # a visibly different head: perturb every decoder weight a little
    state = {k: v + 0.05 * torch.randn_like(v) if k.startswith("mask_decoder") and v.is_floating_point() else v
             for k, v in ft.released.items()}
    pt, _ = publish_adapted(state, {"steps": {"run": 1}}, tmp_path)
    tool = LiteMedSAMTool(adapted=str(pt))
    assert tool.adapted_info == {"steps": {"run": 1}} and "adapted" in tool.weights
    adapted = ft.backend.session(entry, tool=tool).predict(box=box).logits
    assert np.abs(adapted - released).max() > 1e-3
    loaded = tool.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
