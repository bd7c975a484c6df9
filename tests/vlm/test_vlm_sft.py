"""SFT data export (LLaMA-Factory ShareGPT + TRL dataset) and one TRL SFT step with LoRA on the tiny VLM."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib.agent.actions import from_dict
from lib.agent.env import EnvConfig, SegmentationEnv
from lib.agent.expert import ExpertConfig, ExpertPolicy
from lib.agent.grammar import parse
from lib.agent.rollout import rollout
from lib.agent.vlm_prompt import SYSTEM_PROMPT
from lib.learning.vlm.sft import (
    ExportConfig,
    VLMSFTArguments,
    build_sft_trainer,
    export_sft,
    iter_sharegpt_actions,
    validate_sharegpt,
)

ROOT = Path(__file__).resolve().parents[2]


def expert_episodes(image, gt, tool, seeds=(0, 3)):
    env = SegmentationEnv(tool, EnvConfig())
    out = []
    for seed in seeds:
        traj = rollout(env, ExpertPolicy(env, ExpertConfig()), {"image": image, "gt": gt, "target": "disk"}, seed=seed)
        assert traj.n_actions >= 1
        out.append((traj, image))
    return out


def test_export_validates_and_round_trips_actions_exactly(scene, fake_tool, tmp_path):
    image, gt = scene
    episodes = expert_episodes(image, gt, fake_tool)
    summary = export_sft(episodes, tmp_path, ExportConfig(image_size=128))
    records = json.loads(summary.sharegpt.read_text())
    validate_sharegpt(records, root=tmp_path)
    assert summary.episodes == 2 and summary.conversations == 2 and len(records) == 2
    info = json.loads(summary.dataset_info.read_text())["medsam_agent_sft"]
    assert info["formatting"] == "sharegpt" and info["columns"]["images"] == "images"
    for (traj, _), rec in zip(episodes, records, strict=True):
        assert rec["system"] == SYSTEM_PROMPT
        parsed = [parse(text, image.shape) for text in iter_sharegpt_actions(rec)]
        assert parsed == [from_dict(a) for a in traj.actions]  # exact pixels, Stop included
        assert len(rec["images"]) == len(traj.actions)
        assert Image.open(tmp_path / rec["images"][0]).size == (128, 128)
    import datasets

    hf = datasets.load_from_disk(str(summary.hf_dataset))
    assert hf.column_names == ["messages", "images"] and len(hf) == 2
    row = hf[0]
    assert row["messages"][0]["content"][0]["text"] == SYSTEM_PROMPT
    assistants = [m["content"][0]["text"] for m in row["messages"] if m["role"] == "assistant"]
    assert assistants == list(iter_sharegpt_actions(records[0]))
    assert len(row["images"]) == sum(m["role"] == "user" for m in row["messages"])


def test_validation_names_the_problem(tmp_path):
    good = {"messages": [{"role": "user", "content": "<image>hi"}, {"role": "assistant", "content": "x"}],
            "images": ["a.png"]}
    validate_sharegpt([good])
    with pytest.raises(ValueError, match="placeholders"):
        validate_sharegpt([{**good, "images": []}])
    with pytest.raises(ValueError, match="alternate"):
        validate_sharegpt([{**good, "messages": good["messages"][::-1]}])
    with pytest.raises(ValueError, match="missing image"):
        validate_sharegpt([good], root=tmp_path)
    with pytest.raises(ValueError, match="record 0"):
        validate_sharegpt([{"messages": [{"role": "system", "content": "x"}], "images": []}])


def test_invalid_trajectories_are_skipped_and_counted(scene, fake_tool, tmp_path):
    image, gt = scene
    (traj, _), = expert_episodes(image, gt, fake_tool, seeds=(0,))
    traj.actions = [{"type": "text", "text": "garbage", "invalid": "unparseable"}, *traj.actions]
    summary = export_sft([(traj, image)], tmp_path, ExportConfig(write_hf=False))
    assert summary.episodes == 0 and summary.skipped == {"invalid_action": 1}


def test_one_sft_step_on_two_exported_examples_lowers_the_loss(scene, fake_tool, tmp_path, tiny_vlm, processor):
    from trl import SFTConfig

    image, gt = scene
    summary = export_sft(expert_episodes(image, gt, fake_tool), tmp_path / "data", ExportConfig(image_size=128))
    import datasets

    train = datasets.load_from_disk(str(summary.hf_dataset))
    cfg = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2, learning_rate=5e-3,
                    use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_steps=1,
                    assistant_only_loss=True, gradient_checkpointing=False, max_length=None)
    args = VLMSFTArguments(model_path="unused", dataset_path=str(summary.hf_dataset), lora_r=8, lora_alpha=16,
                           lora_dropout=0.0, dtype="float32")
    trainer = build_sft_trainer(args, cfg, model=tiny_vlm, processor=processor, train_dataset=train)
    batch = trainer.data_collator([train[0], train[1]])
    labelled = batch["labels"] != -100
    assert 0 < int(labelled.sum()) < int(batch["attention_mask"].sum())  # only the tool calls are learned
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n and "language_model" in n for n in trained)

    def loss() -> float:
        trainer.model.eval()
        with torch.no_grad():
            return float(trainer.model(**batch).loss)

    before = loss()
    trainer.train()
    assert loss() < before


def test_export_script_end_to_end(tmp_path):
    """generate_trajectories (fake tool) -> export_sft script, on a tiny 2D MSD dataset written here."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import export_sft as export_script
    import generate_trajectories

    from tests.vlm.scenes import two_tone_disk

    data = tmp_path / "ds"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    cases = []
    for k, (h, w) in enumerate([(48, 64), (64, 40)]):
        img, gt = two_tone_disk(h, w)
        Image.fromarray((img * 255).astype(np.uint8)).save(data / "images" / f"c{k}.png")
        Image.fromarray(gt.astype(np.uint8)).save(data / "labels" / f"c{k}.png")
        cases.append({"image": f"images/c{k}.png", "label": f"labels/c{k}.png"})
    (data / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "disk"}, "training": cases}))
    jsonl = tmp_path / "traj.jsonl"
    assert generate_trajectories.main(["--dataset", str(data), "--backend", "fake", "--out", str(jsonl),
                                       "--workers", "1"]) == 0
    out = tmp_path / "sft"
    assert export_script.main(["--trajectories", str(jsonl), "--out", str(out), "--image-size", "64"]) == 0
    records = json.loads((out / "medsam_agent_sft.json").read_text())
    assert len(records) == 2
    validate_sharegpt(records, root=out)
