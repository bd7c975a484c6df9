"""Fine-tuning with the REAL LiteMedSAM decoder on cached embeddings: loss goes down, only the head moves,
the cache is reused, outputs are written and published."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.agent.clicks import jittered_box
from lib.data.dataset import Dataset
from lib.learning.segmenter.backends import make_backend
from lib.learning.segmenter.click_sessions import SessionPlan, run_sessions
from lib.learning.segmenter.finetune import ToolFinetuneConfig, finetune
from lib.tools.interaction import Prompting

ROOT = Path(__file__).resolve().parents[2]


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_steps_lower_the_loss_and_change_only_prompt_encoder_and_decoder(ft):
    ft.reset()
    net = ft.backend.net
    encoder_before = _params(net.image_encoder)
    decoder_before = _params(net.mask_decoder)
    items = ft.train.items
    rng = np.random.default_rng(0)
    plan = SessionPlan([jittered_box(it.gt, rng) for it in items], [0] * len(items), Prompting.ALL)

    def loss() -> float:
        return float(run_sessions(ft.backend, ft.train.embeddings, items, plan, grad=True).loss.detach())

    params = ft.backend.parameters()
    opt = torch.optim.AdamW(params, lr=2e-4)
    start = loss()
    for _ in range(4):
        trace = run_sessions(ft.backend, ft.train.embeddings, items, plan, grad=True)
        opt.zero_grad()
        trace.loss.backward()
        opt.step()
    assert loss() < start
    assert all(torch.equal(v, net.image_encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert not all(torch.equal(v, net.mask_decoder.state_dict()[k]) for k, v in decoder_before.items())
    assert not any(p.requires_grad for p in net.image_encoder.parameters())
    ft.reset()


def test_finetune_reuses_the_cache_writes_outputs_and_publishes(ft, tmp_path):
    ft.reset()
    cfg = ToolFinetuneConfig(steps=3, val_every=3, batch_size=2, live_sessions=0, val_fraction=0.5, max_clicks=1,
                             val_clicks=1, val_noc_max_clicks=2, warmup_steps=1, cache_dir=str(ft.cache_dir),
                             progress=False)
    calls = ft.backend.encoder_calls
    info = finetune(Dataset.from_dir(ft.root), cfg, tmp_path / "run", publish_to=tmp_path / "models",
                    backend=ft.backend)
    assert ft.backend.encoder_calls == calls  # second run: every embedding came from the cache
    assert info["embedding_cache"]["misses"] == 0 and info["embedding_cache"]["encoder_calls"] == 0
    assert info["steps"]["run"] == 3 and len(info["data"]["val_cases"]) == 1
    t = info["time"]  # validation time is reported apart from the optimisation steps
    assert 0 < t["val_seconds"] < t["train_seconds"]
    assert abs(t["step_seconds"] - (t["train_seconds"] - t["val_seconds"])) <= 0.02
    assert set(info["metrics"]["before"]) >= {"dice_per_click", "noc@85", "score"}
    assert info["released_checkpoint_sha256"].startswith("79d8c9dc")
    for folder in (tmp_path / "run", tmp_path / "models"):
        state = torch.load(folder / "adapted.pt", weights_only=True)
        assert state and all(isinstance(v, torch.Tensor) for v in state.values())
        assert {k.split(".")[0] for k in state} == {"prompt_encoder", "mask_decoder"}
        assert json.loads((folder / "adapted.json").read_text())["steps"]["run"] == 3
    assert (tmp_path / "run" / "learning_curves.png").stat().st_size > 1000
    assert not list((tmp_path / "models").glob(".*"))  # no temporary files left
    ft.reset()


def test_live_session_training_trains_every_step(ft, monkeypatch):
    """live_sessions: each step advances one session in flight by one decoder call, with gradients."""
    from lib.learning.segmenter import finetune as tool_finetune

    ft.reset()
    calls = []
    real = tool_finetune.advance_sessions

    def counted(backend, embeddings, sessions, **kw):
        calls.append([(s, s.turn) for s in sessions])  # holding them keeps their ids unique
        return real(backend, embeddings, sessions, **kw)

    monkeypatch.setattr(tool_finetune, "advance_sessions", counted)
    cfg = ToolFinetuneConfig(steps=6, val_every=6, live_sessions=2, max_clicks=1, val_fraction=0.5, val_clicks=1,
                             val_noc_max_clicks=2, warmup_steps=1, cache_dir=str(ft.cache_dir), progress=False)
    result = tool_finetune.ToolFinetuner(cfg, backend=ft.backend).fit(ft.train, ft.val)
    assert [h["step"] for h in result.history["train"]] == list(range(1, 7))  # a loss at every step
    assert all(np.isfinite(h["loss"]) for h in result.history["train"])
    assert all(len(c) == 1 for c in calls) and len(calls) == 6  # batch_size 1: one session per step
    # two sessions in flight, taken in turn: each runs its first prompt (turn 0), then its one click (turn 1),
    # and a finished session is replaced by a new one
    turns: dict[int, list[int]] = {}
    for ((session, turn),) in calls:
        turns.setdefault(id(session), []).append(turn)
    assert list(turns.values()) == [[0, 1], [0, 1], [0], [0]]
    first = [id(c[0][0]) for c in calls[:4]]
    assert first[0] != first[1] and first == first[:2] * 2
    ft.reset()


def test_config_validation_and_recipes():
    with pytest.raises(ValueError, match="steps"):
        ToolFinetuneConfig(steps=0)
    with pytest.raises(ValueError, match="prompting_mix"):
        ToolFinetuneConfig(prompting_mix={"sometimes": 1.0})
    with pytest.raises(ValueError, match="unknown tool fine-tuning option"):
        ToolFinetuneConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="live_sessions"):
        ToolFinetuneConfig(live_sessions=1, batch_size=2)
    with pytest.raises(ValueError, match="intermediate_weight"):
        ToolFinetuneConfig(live_sessions=4, intermediate_weight=1.0)
    cfg = ToolFinetuneConfig.from_yaml(ROOT / "configs" / "tool_finetune.yaml", steps=7)
    assert cfg.steps == 7 and cfg.backend == "litemedsam" and cfg.ct_window == (40.0, 400.0)


def test_bundle_train_config_parses_with_monai_bundle(tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "litemedsam" / "configs" / "train.json"))
    parser["bundle_root"] = str(tmp_path)
    parser["steps"] = 11
    cfg = parser.get_parsed_content("train_config")
    assert isinstance(cfg, ToolFinetuneConfig) and cfg.steps == 11
    assert cfg.cache_dir == str(tmp_path / "models" / "embedding_cache")


def test_sam2_backends_say_what_is_missing():
    for name in ("sam2", "medsam2"):
        with pytest.raises(NotImplementedError, match="high_res_features"):
            make_backend(name)
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("nope")
