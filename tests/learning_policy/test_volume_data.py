"""Training data on volume start states: tiny CT volumes (a ball that drifts sideways through the slices),
the deterministic FakeTool, the real expert and the real volume episodes."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lib.agent.actions import Box, Stop
from lib.agent.policies.base import Policy
from lib.agent.policies.compact import CompactPolicy
from lib.agent.settings import EpisodeSettings
from lib.agent.volume import VolumeConfig, propagated_box
from lib.learning.policy.data import TrajectoryConfig, expert_trajectories
from lib.learning.policy.rl import RLConfig, train_grpo
from lib.learning.policy.sft import SFTConfig, train_sft, trajectory_states
from lib.learning.policy.volume_data import (
    VolumeStarts,
    start_policy,
    starts_of,
    volume_expert_trajectories,
    volume_start_states,
    volume_targets,
)
from lib.tools.fake import FakeTool

from .conftest import TINY

RADII = (0, 5, 7, 9, 10, 9, 7, 5, 0)


def _write_dataset(root, n_cases=3, drift=5):
    """CT cases in HU: a ball (label 1, 200 HU on 0 HU) whose centre moves ``drift`` px per slice, so the box
    propagated from one slice's mask cuts the next slice's ball (something for the expert to correct)."""
    (root / "img").mkdir(parents=True)
    (root / "lab").mkdir()
    entries = []
    yy, xx = np.mgrid[:40, :72]
    for c in range(n_cases):
        lab = np.zeros((len(RADII), 40, 72), dtype=np.uint8)
        for k, r in enumerate(RADII):
            if r:
                lab[k] = (xx - 14 - drift * k - c) ** 2 + (yy - 20) ** 2 <= r * r
        img = np.where(lab > 0, 200, 0).astype(np.int16)
        img[0, 0, 0] = -1000
        for arr, folder in ((img, "img"), (lab, "lab")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing((1.5, 1.5, 5.0))
            sitk.WriteImage(im, str(root / folder / f"case{c}.nii.gz"))
        entries.append({"image": f"img/case{c}.nii.gz", "label": f"lab/case{c}.nii.gz"})
    spec = {"labels": {"0": "background", "1": "ball"}, "modality": {"0": "CT"}, "training": entries}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


@pytest.fixture
def dataset(tmp_path):
    return _write_dataset(tmp_path / "ds")


SETTINGS = EpisodeSettings(prompting="all", local_radius=0, max_turns=4, box_jitter=0.0)


def test_starts_come_from_propagation_and_from_the_neighbours_ground_truth(dataset):
    starts = VolumeStarts(max_slices_per_target=3)
    target = next(volume_targets(dataset, ["ball"], SETTINGS, starts))
    assert target.volume.shape == (len(RADII), 40, 72) and target.volume.dtype == np.float32
    by_source = dict(starts_of(target, starts, SETTINGS, FakeTool()))
    assert set(by_source) == {"propagation", "neighbour_gt"}
    k0 = int(np.argmax(target.gt.reshape(len(RADII), -1).sum(1)))
    for name, found in by_source.items():
        assert 1 <= len(found) <= 3, name
        for k, start in found:
            assert k != k0 and target.gt[k].sum() >= starts.min_area
            assert abs(start.from_slice - k) == 1 and abs(start.from_slice - k0) < abs(k - k0)  # seed side
    for _, start in by_source["neighbour_gt"]:
        assert start.box == propagated_box(target.gt[start.from_slice], VolumeConfig())
    # None = every propagated slice where the ball is (the seed excluded)
    everything = dict(starts_of(target, VolumeStarts(max_slices_per_target=None), SETTINGS, FakeTool()))
    assert [k for k, _ in everything["neighbour_gt"]] == [k for k, r in enumerate(RADII) if r and k != k0]


def test_expert_trajectories_from_volume_starts_mark_the_propagated_box_as_given(dataset):
    starts = VolumeStarts(max_slices_per_target=3)
    trajs = volume_expert_trajectories(dataset, FakeTool(), ["ball"], SETTINGS, starts)
    sources = Counter(t.source["volume_start"] for t in trajs)
    assert sources["propagation"] >= 3 and sources["neighbour_gt"] == 9  # 3 cases x 3 slices
    for t in trajs:
        assert t.policy_meta["handoff_actions"] == 1 and t.actions[0]["type"] == "box"
        assert t.source["image"].endswith(".nii.gz") and t.source["volume_direction"] in (-1, 1)
        assert t.source["from_slice"] == t.slice_index - t.source["volume_direction"]
    # the drift cuts the propagated box: on some slices the expert corrects; where the start is right it stops
    kinds = Counter(t.actions[1]["type"] for t in trajs)
    assert kinds["stop"] > 0 and kinds["box"] + kinds["point"] > 0, kinds
    assert all(t.ious[-1] >= t.ious[0] - 1e-9 for t in trajs)
    # behaviour cloning never imitates the given box: one state per decision after it
    states = trajectory_states(trajs, lambda name: 0, TINY)
    assert len(states) == sum(len(t.actions) - 1 for t in trajs)
    assert Counter(states.turns)[0] == 0  # no decision at turn 0: turn 0 was the propagated box
    # every start keeps the neighbour's mask as the episode's prior (stored, so SFT rebuilds what was seen)
    target = next(volume_targets(dataset, ["ball"], SETTINGS, starts))
    for t in trajs:
        prior = t.prior_array()
        assert prior is not None and prior.any() and prior.shape == tuple(t.shape)
        if t.source["volume_start"] == "neighbour_gt" and t.case_id == target.case_id:
            assert np.array_equal(prior, target.gt[t.source["from_slice"]])
    assert not any(p is not None for p in trajectory_states(trajs, lambda name: 0, TINY).priors)  # 5 channels
    wide = trajectory_states(trajs, lambda name: 0, dataclasses.replace(TINY, prior=True))
    assert all(p is not None and p.any() for p in wide.priors)


class LeftHalf(Policy):
    """Redraws every slice's box as its left half, then stops: a policy whose states plain propagation never meets."""

    name = "left_half"

    def act(self, obs, info):
        if info["turn"] >= 2:
            return Stop()
        x0, y0, x1, y1 = info["actions"][-1]["box"]
        return Box(x0, y0, (x0 + x1) // 2, y1)


def test_policy_source_labels_the_states_the_current_policy_reaches(dataset, tmp_path):
    with pytest.raises(ValueError, match="needs VolumeStarts.policy"):
        VolumeStarts(sources=("policy",))
    every = {"max_slices_per_target": None}
    target = next(volume_targets(dataset, ["ball"], SETTINGS, VolumeStarts(**every)))
    found = dict(starts_of(target, VolumeStarts(sources=("policy",), policy="given", **every), SETTINGS, FakeTool(),
                           policy=LeftHalf()))["policy"]
    plain = dict(starts_of(target, VolumeStarts(sources=("propagation",), **every), SETTINGS,
                           FakeTool()))["propagation"]
    assert found and all(start.mask is not None for _, start in found)
    # the starts are what the policy kept on the neighbours (half balls): narrower than plain propagation's
    widths = {k: s.box.x1 - s.box.x0 for k, s in plain}
    assert {k for k, _ in found} & set(widths)
    assert all(s.box.x1 - s.box.x0 < widths[k] for k, s in found if k in widths)
    # from a checkpoint, as recipes give it; the expert labels those states
    torch.manual_seed(0)
    CompactPolicy({"ball": 1}, dataclasses.replace(TINY, prior=True)).save(tmp_path / "ckpt")
    starts = VolumeStarts(sources=("policy",), policy=str(tmp_path / "ckpt"), max_slices_per_target=2)
    assert isinstance(start_policy(starts), CompactPolicy)
    trajs = volume_expert_trajectories(dataset, FakeTool(), ["ball"], SETTINGS, starts)
    assert trajs and {t.source["volume_start"] for t in trajs} == {"policy"}
    assert all(t.policy == "expert" and t.prior is not None for t in trajs)


def test_sft_warm_starts_a_prior_channel_policy_from_a_checkpoint_without_one(dataset, tmp_path):
    trajs = volume_expert_trajectories(dataset, FakeTool(), ["ball"], SETTINGS, VolumeStarts(max_slices_per_target=2))
    torch.manual_seed(0)
    old = CompactPolicy({"ball": 1}, TINY)
    old.save(tmp_path / "old")
    cfg = SFTConfig(policy=dataclasses.replace(TINY, prior=True), init=str(tmp_path / "old"), steps=3, batch_size=4,
                    max_minutes=0, val_fraction=0.0)
    train_sft(cfg, trajs, tmp_path / "new", {"ball": 1}, images=dataset)
    new = CompactPolicy.load(tmp_path / "new")
    assert new.config.prior and new.provenance["init"] == str(tmp_path / "old")
    w_old, w_new = old.net.stem[0].weight.detach(), new.net.stem[0].weight.detach()
    assert w_new.shape[1] == w_old.shape[1] + 1
    assert 0 < float((w_new[:, :5] - w_old[:, :5]).abs().max()) < 0.1  # trained from the old weights, not anew
    assert float(w_new[:, 5].abs().max()) > 0  # and the prior channel learned something
    with pytest.raises(ValueError, match="labels"):
        train_sft(cfg, trajs, tmp_path / "other", {"ball": 1, "cube": 2}, images=dataset)


def test_trajectory_config_adds_volume_episodes_from_a_dataset_and_can_turn_them_off(dataset):
    on = TrajectoryConfig(episode=SETTINGS, volume={"max_slices_per_target": 2}, max_slices_per_case=2)
    trajs = expert_trajectories(dataset, FakeTool(), {"ball": 1}, on)
    vol = [t for t in trajs if "volume_start" in t.source]
    assert vol and len(vol) < len(trajs)
    assert all(t.policy_meta.get("handoff_actions", 0) == 0 for t in trajs if t not in vol)
    off = TrajectoryConfig(episode=SETTINGS, volume={"sources": ()}, max_slices_per_case=2)
    assert not any("volume_start" in t.source for t in expert_trajectories(dataset, FakeTool(), {"ball": 1}, off))
    with pytest.raises(ValueError, match="unknown"):
        VolumeStarts(sources=("expert_driven",))


def test_grpo_plays_groups_from_volume_start_states(dataset, tmp_path):
    pairs = volume_start_states(dataset, FakeTool(), ["ball"], SETTINGS, VolumeStarts(max_slices_per_target=2))
    assert pairs
    for sample, start in pairs:
        box = start.box
        assert start.mask is not None and start.mask.shape == sample.gt.shape  # the prior of the episode
        ys, xs = np.nonzero(sample.gt)
        assert sample.label_name == "ball" and sample.image.shape == sample.gt.shape
        assert box.x0 <= xs.max() and box.x1 >= xs.min() and box.y0 <= ys.max() and box.y1 >= ys.min()
    torch.manual_seed(0)
    init = CompactPolicy({"ball": 1}, TINY).save(tmp_path / "init")
    cfg = RLConfig(group_size=2, groups_per_step=2, steps=2, eval_every=1, episode=SETTINGS, volume_fraction=1.0,
                   volume={"max_slices_per_target": 2}, val_fraction=0.34, val_targets=2, max_minutes=0)
    stats = train_grpo(cfg, (dataset, "training"), FakeTool(), init, tmp_path / "rl")
    assert stats["n_volume_starts"] > 0 and stats["n_val_volume_starts"] > 0
    assert set(stats["val_init"]) == {"volume"}  # volume_fraction 1: every group and every validation
    meta = json.loads((tmp_path / "rl" / "policy.json").read_text())
    assert meta["provenance"]["data"]["volume_starts"] == stats["n_volume_starts"]
