"""Expert trajectories -> SFT of the compact policy, on toy slices with the FakeTool."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lib.agent.policies.compact import CompactPolicy
from lib.agent.policies.compact_config import BOX, NEG, STOP
from lib.agent.settings import EpisodeSettings
from lib.agent.trajectories import Trajectory, read_jsonl, rle_encode, write_jsonl
from lib.learning.policy.data import TrajectoryConfig, expert_trajectories
from lib.learning.policy.sft import SFTConfig, train_sft, trajectory_states
from lib.learning.recipe import load_recipe
from lib.tools.fake import FakeTool

from .conftest import LABELS, TINY, toy_samples


@pytest.fixture(scope="module")
def trajectories():
    tool = FakeTool()
    cfg = TrajectoryConfig(episodes_per_target=2, episode=EpisodeSettings(max_turns=3))
    trajs = expert_trajectories(toy_samples(n_cases=3, slices=2), tool, LABELS, cfg)
    # one encode per slice, shared by both labels and both episodes of each
    assert tool.encoder_calls == 6
    return trajs


def test_expert_trajectories_cover_every_target(trajectories):
    assert len(trajectories) == 3 * 2 * 2 * 2
    assert {t.label for t in trajectories} == set(LABELS)
    assert all(t.ious and t.ious[-1] >= 0.9 for t in trajectories)
    states = trajectory_states(trajectories, CompactPolicy(LABELS, TINY).label_index, TINY)
    # one state per decision: every executed action plus the final stop
    assert len(states) == sum(t.n_actions + (t.stop_reason != "budget") for t in trajectories)
    assert states.ious[0] == 0.0 and states.turns[0] == 0


def test_sft_loss_falls_and_checkpoint_is_written(trajectories, tmp_path):
    path = tmp_path / "traj.jsonl"
    write_jsonl(path, trajectories, append=False)
    cfg = SFTConfig(policy=TINY, steps=60, batch_size=16, lr=3e-3, warmup_steps=5, eval_every=20, val_fraction=0.34,
                    max_minutes=0, seed=1)
    seen = []
    stats = train_sft(cfg, path, tmp_path / "ckpt", LABELS, progress=seen.append, images=toy_samples(3, 2))
    assert stats["steps"] == 60 and len(seen) == 60 and seen[-1]["stage"] == "sft"
    assert stats["train_loss"] < 0.7 * stats["train_loss_first"], stats
    # split by case: the validation case contributes no training state
    assert len(stats["val_cases"]) == 1 and not set(stats["val_cases"]) & set(stats["train_cases"])
    assert stats["val_loss"] is not None and 0.0 <= stats["val_accuracy"] <= 1.0
    for name in ("policy.pt", "policy.json", "sft_curves.png", "sft_history.json"):
        assert (tmp_path / "ckpt" / name).is_file()
    meta = json.loads((tmp_path / "ckpt" / "policy.json").read_text())
    assert meta["provenance"]["stage"] == "sft" and meta["provenance"]["steps"] == 60
    assert CompactPolicy.load(tmp_path / "ckpt").labels == LABELS
    assert len(read_jsonl(path)) == len(trajectories)


def test_sft_stops_on_request_and_rejects_foreign_labels(trajectories, tmp_path):
    cfg = SFTConfig(policy=TINY, steps=50, batch_size=4, max_minutes=0, val_fraction=0.0)
    calls = iter(range(100))
    stats = train_sft(cfg, trajectories, tmp_path / "a", LABELS, should_stop=lambda: next(calls) >= 3,
                      images=toy_samples(3, 2))
    assert stats["stopped"] and stats["steps"] == 3
    with pytest.raises(ValueError, match="no trajectory targets"):
        train_sft(cfg, trajectories, tmp_path / "b", {"liver": 1}, images=toy_samples(3, 2))


def test_recipes_load_into_the_config_dataclasses():
    from pathlib import Path

    from lib.learning.policy.rl import RLConfig

    root = Path(__file__).resolve().parents[2] / "configs"
    sft = load_recipe(SFTConfig, root / "sft.yaml")
    assert isinstance(sft.data, TrajectoryConfig) and sft.policy.size == 256
    rl = load_recipe(RLConfig, root / "rl.yaml", steps=3)
    assert rl.steps == 3 and rl.group_size >= 2
    with pytest.raises(ValueError, match="unknown key"):
        load_recipe(SFTConfig, None, stepz=3)


def _redraw_trajectory(dices: list[float], given: int) -> Trajectory:
    """Box, redraw box, negative click, stop on an 8x8 slice; ``given`` of them were handed over, not decided."""
    actions = [{"type": "box", "box": [1, 1, 6, 6]}, {"type": "box", "box": [2, 1, 6, 6]},
               {"type": "point", "point": [2, 2], "positive": False}, {"type": "stop"}]
    masks = [rle_encode(np.eye(8, dtype=bool))] * 3
    return Trajectory(case_id="c", slice_index=0, label="ball", backend="fake", prompting="all", policy="expert",
                      shape=[8, 8], actions=actions, ious=list(dices), dices=list(dices), scores=[1.0] * 3,
                      masks=masks, final_mask=masks[-1], stop_reason="target_reached",
                      policy_meta={"handoff_actions": given})


@pytest.mark.parametrize("given", [0, 1])
def test_min_redraw_gain_imitates_small_redraws_as_stop(given):
    small = _redraw_trajectory([0.80, 0.82, 0.90], given)
    large = _redraw_trajectory([0.50, 0.80, 0.90], given)

    def kinds(trajs, gain):
        return trajectory_states(trajs, lambda name: 0, TINY, gain).kinds

    every = [BOX, BOX, NEG, STOP][given:]
    assert kinds([small], 0.0) == every and kinds([large], 0.05) == every
    # the redraw gained 0.02 < 0.05: the expert's state after the first box is imitated as Stop, and nothing after it
    assert kinds([small], 0.05) == [BOX, STOP][given:]
    # the first box of an episode is never a redraw, whatever it gained; after a given box every box is one
    assert kinds([_redraw_trajectory([0.01, 0.5, 0.9], given)], 0.6)[:1] == [[BOX], [STOP]][given]
    with pytest.raises(ValueError, match="min_redraw_gain"):
        SFTConfig(min_redraw_gain=-0.1)
