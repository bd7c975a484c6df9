"""GRPO on a toy task whose best action is known: one disk, the FakeTool; a positive click anywhere on the
disk (or a box around it) segments it exactly, then Stop. A click on the background grabs the background."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lib.agent.env import SegmentationEnv
from lib.agent.policies.compact import CompactPolicy
from lib.agent.policies.compact_dist import log_prob
from lib.agent.rollout import sample_options, window_slice
from lib.agent.settings import EpisodeSettings
from lib.data.dataset import SliceSample
from lib.learning.policy.rl import RLConfig, expected_reward, grpo_update, train_grpo
from lib.tools.fake import FakeTool

from .conftest import TINY, disk


def _disk_sample(case: str = "toy") -> SliceSample:
    img = np.full((48, 56), -100.0, dtype=np.float32)
    gt = disk((48, 56), (30, 22), 10)
    img[gt] = 120.0
    return SliceSample(case_id=case, slice_index=0, label_value=1, label_name="disk", image=img, gt=gt, modality="CT")


@pytest.fixture
def init_dir(tmp_path):
    torch.manual_seed(0)
    policy = CompactPolicy({"disk": 1}, TINY)
    return policy.save(tmp_path / "init")


def _expected(ckpt, env, options) -> float:
    return expected_reward(CompactPolicy.load(ckpt), env, options, n=32, seed=1000)


def test_grpo_raises_the_expected_reward_on_a_known_task(init_dir, tmp_path):
    tool = FakeTool()
    sample = _disk_sample()
    cfg = RLConfig(group_size=8, groups_per_step=2, steps=12, lr=3e-3, ppo_epochs=2, kl_coef=0.0,
                   handoff_fraction=0.0, episode=EpisodeSettings(max_turns=3), val_fraction=0.0, max_minutes=0,
                   seed=0)
    env = SegmentationEnv(tool, cfg.env_config(tool.name))
    options = sample_options(sample, image=window_slice(sample, cfg.episode))
    before = _expected(init_dir, env, options)
    seen = []
    stats = train_grpo(cfg, [sample], tool, init_dir, tmp_path / "rl", progress=seen.append)
    after = _expected(tmp_path / "rl", env, options)
    assert stats["steps"] == 12 and stats["episodes"] == 12 * 16 and len(seen) == 12
    assert after > before + 0.1, (before, after, stats)
    # the tool encoded the one slice once for the whole run (the two expectation runs encode their own)
    assert stats["encodes"] == 1
    a = torch.load(init_dir / "policy.pt", weights_only=True)
    b = torch.load(tmp_path / "rl" / "policy.pt", weights_only=True)
    changed = [k for k in a if a[k].dtype.is_floating_point and not torch.equal(a[k], b[k])]
    assert len(changed) > 0.5 * sum(v.dtype.is_floating_point for v in a.values())
    meta = json.loads((tmp_path / "rl" / "policy.json").read_text())
    assert meta["provenance"]["stage"] == "rl" and (tmp_path / "rl" / "rl_curves.png").is_file()


def test_grpo_update_moves_probability_toward_the_better_episode(init_dir):
    policy = CompactPolicy.load(init_dir, greedy=False)
    x = torch.rand(5, 64, 64)
    common = {"x": x, "label": 0, "turn": 1, "box": (0, 0, 1, 1), "cell": 0, "iou": 0.5}
    with torch.no_grad():
        out = policy.net(x[None], torch.tensor([0]), torch.tensor([1]))
        lp = torch.log_softmax(out["kind"], 1)[0]
        old = [float(log_prob(out, torch.tensor([k]), torch.tensor([(0, 0, 1, 1)]), torch.tensor([0]))) for k in (0, 1)]
    steps = [{**common, "kind": 0, "logp": old[0], "adv": 1.0}, {**common, "kind": 1, "logp": old[1], "adv": -1.0}]
    cfg = RLConfig(lr=1e-2, ppo_epochs=1, kl_coef=0.0, quality_weight=0.0)
    opt = torch.optim.AdamW(policy.net.parameters(), lr=cfg.lr)
    stats = grpo_update(policy, None, opt, steps, cfg)
    with torch.no_grad():
        after = torch.log_softmax(policy.net(x[None], torch.tensor([0]), torch.tensor([1]))["kind"], 1)[0]
    assert after[0] > lp[0] and after[1] < lp[1] and stats["clip_frac"] == 0.0
