"""The command line, end to end on a tiny NIfTI dataset with the FakeTool (``--backend fake``, tests only):
train_sft.py -> train_rl.py (in process) -> evaluate.py --policy compact (a subprocess, as a user runs it)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from lib.data.io import save_label_like, volume_from_array
from lib.learning.recipe import to_dict

from .conftest import TINY, toy_slice

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    entries = []
    for n in range(3):
        imgs, labs = [], []
        for k in range(2):
            img, gts = toy_slice(10 * n + k)
            imgs.append(img.astype(np.int16))
            labs.append(gts["organ"].astype(np.uint8) + 2 * gts["kidney"].astype(np.uint8))
        vol = volume_from_array(np.stack(imgs), spacing=(5.0, 1.0, 1.0), modality="CT")
        sitk.WriteImage(vol.image, str(root / "images" / f"case_{n}.nii.gz"))
        save_label_like(np.stack(labs), vol, root / "labels" / f"case_{n}.nii.gz")
        entries.append({"image": f"images/case_{n}.nii.gz", "label": f"labels/case_{n}.nii.gz"})
    spec = {"labels": {"0": "background", "1": "organ", "2": "kidney"}, "modality": {"0": "CT"},
            "training": entries[:2], "test": entries[2:]}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def _main(script: str, *args: str) -> None:
    """Run a script's ``main`` in this process (cheaper than a subprocess: torch is imported already)."""
    spec = importlib.util.spec_from_file_location("_script_" + script.removesuffix(".py"), ROOT / "scripts" / script)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    assert mod.main(list(args)) == 0


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_train_sft_rl_and_evaluate_compact_end_to_end(tiny_dataset, tmp_path, capsys):
    sft_yaml = tmp_path / "sft.yaml"
    sft_yaml.write_text(yaml.safe_dump({"policy": to_dict(TINY), "steps": 8, "batch_size": 8, "eval_every": 4,
                                        "val_fraction": 0.5, "data": {"episode": {"max_turns": 3}}}))
    rl_yaml = tmp_path / "rl.yaml"
    rl_yaml.write_text(yaml.safe_dump({"steps": 2, "group_size": 2, "groups_per_step": 1, "eval_every": 1,
                                       "val_fraction": 0.5, "val_targets": 2, "episode": {"max_turns": 3}}))
    traj = tmp_path / "traj.jsonl"
    _main("train_sft.py", "--dataset", str(tiny_dataset), "--out", str(tmp_path / "sft"), "--backend", "fake",
          "--config", str(sft_yaml), "--trajectories", str(traj))
    assert traj.is_file() and "SFT: 8 steps" in capsys.readouterr().out
    stats = json.loads((tmp_path / "sft" / "sft_stats.json").read_text())
    assert stats["val_cases"] and not set(stats["val_cases"]) & set(stats["train_cases"])
    _main("train_rl.py", "--dataset", str(tiny_dataset), "--init", str(tmp_path / "sft"), "--out",
          str(tmp_path / "rl"), "--backend", "fake", "--config", str(rl_yaml))
    assert "GRPO: 2 steps" in capsys.readouterr().out and (tmp_path / "rl" / "policy.pt").is_file()
    out = tmp_path / "eval"
    _run("evaluate.py", "--dataset", str(tiny_dataset), "--split", "test", "--policy", "compact", "--checkpoint",
         str(tmp_path / "rl"), "--mode", "handoff", "--backend", "fake", "--max-turns", "3", "--out", str(out))
    res = json.loads((out / "results.json").read_text())
    assert res["policy"] == "compact" and res["checkpoint"] == str(tmp_path / "rl")
    assert res["n_targets"] == 4 and set(res["baselines"]) == {"box", "expert", "ellipse"}
    assert all(1 <= r["turns"] <= 3 for r in res["rows"])  # the hand-off box, then the policy's own turns
    assert (out / "report.md").is_file() and (out / "dice_vs_turn.png").stat().st_size > 1000
