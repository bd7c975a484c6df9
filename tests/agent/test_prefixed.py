"""Prefixed: the hand-off prompts play first; the policy may refine the prompt's box but not move it away."""

from __future__ import annotations

import numpy as np
import pytest

from lib.agent.actions import Box, Point, Stop, box_iou
from lib.agent.env import SegmentationEnv
from lib.agent.grammar import encode
from lib.agent.policies.base import OUTSIDE_PROMPT, SAME_OBJECT_IOU, Policy, Prefixed
from lib.agent.rollout import rollout
from lib.agent.volume import VolumeEpisode
from lib.tools.fake import FakeTool

from .conftest import disk

H, W = 60, 80
USER_BOX = Box(20, 15, 44, 39)  # around the disk at (27, 32), radius 10


class Scripted(Policy):
    """Plays a fixed list of actions (Actions or tool-call text), then stops."""

    name = "scripted"

    def __init__(self, actions):
        self.actions = list(actions)

    def reset(self, obs, info, seed=None):
        super().reset(obs, info, seed)
        self._left = list(self.actions)

    def act(self, obs, info):
        if not self._left:
            self.stop_reason = "policy"
            return Stop()
        return self._left.pop(0)


def _play(actions, prefix=(USER_BOX,), **kw):
    gt = disk((H, W), (27, 32), 10) | disk((H, W), (30, 66), 6)  # the target and, right of it, another blob
    img = np.where(gt, 0.8, 0.1).astype(np.float32)
    return rollout(SegmentationEnv(FakeTool()), Prefixed(list(prefix), Scripted(actions), **kw),
                   {"image": img, "gt": gt, "target": "blob"}, seed=0)


def test_a_refined_box_and_clicks_anywhere_are_played():
    traj = _play([Box(22, 17, 42, 37), Point(70, 30, True), Point(5, 5, False)])
    assert [a["type"] for a in traj.actions] == ["box", "box", "point", "point", "stop"]
    assert traj.stop_reason == "policy"


@pytest.mark.parametrize("away", [Box(58, 22, 74, 38), Box(0, 0, 15, 12)])
def test_a_box_moved_away_from_the_prompt_ends_the_episode_with_the_mask_it_had(away):
    traj = _play([Point(30, 30, True), away, Box(22, 17, 42, 37)])
    assert [a["type"] for a in traj.actions] == ["box", "point", "stop"]
    assert traj.stop_reason == OUTSIDE_PROMPT and traj.dices[-1] == pytest.approx(traj.dices[1])


def test_tool_call_text_is_held_to_the_prompt_too():
    traj = _play([encode(Box(58, 22, 74, 38), (H, W))])
    assert [a["type"] for a in traj.actions] == ["box", "stop"] and traj.stop_reason == OUTSIDE_PROMPT
    inside = _play([encode(Box(22, 17, 42, 37), (H, W))])
    assert [a["type"] for a in inside.actions] == ["box", "box", "stop"]


def test_not_anchored_or_no_box_in_the_prefix_plays_every_box():
    away = Box(58, 22, 74, 38)
    assert [a["type"] for a in _play([away], anchored=False).actions] == ["box", "box", "stop"]
    clicks_only = _play([away], prefix=(Point(30, 30, True),))
    assert [a["type"] for a in clicks_only.actions] == ["point", "box", "stop"]


def test_a_box_around_another_object_is_refused_even_when_centred_inside():
    # centre (32, 27) inside the user's box, but a sliver of it: IoU 0.21 < 0.5, not the same object
    sliver = Box(28, 24, 36, 30)
    assert box_iou(sliver, USER_BOX) < SAME_OBJECT_IOU
    traj = _play([sliver])
    assert [a["type"] for a in traj.actions] == ["box", "stop"] and traj.stop_reason == OUTSIDE_PROMPT


def test_box_iou_counts_inclusive_pixels():
    assert box_iou(Box(0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert box_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)
    assert box_iou(Box(0, 0, 4, 4), Box(10, 10, 12, 12)) == 0.0


def test_a_volume_holds_the_policy_to_the_users_box_not_to_the_propagated_ones():
    """The seed slice plays the user's box anchored; a propagated slice lets the policy replace the box."""
    vol = np.zeros((3, H, W), dtype=np.float32)
    gt = np.zeros((3, H, W), dtype=bool)
    for k in range(3):
        gt[k] = disk((H, W), (27, 32), 10)
    vol[gt] = 0.8
    away = Box(58, 22, 74, 38)
    res = VolumeEpisode(FakeTool(), Scripted([away])).run(vol, "blob", seed_slice=1, prompts=[USER_BOX], gt=gt)
    by_k = {s.index: s for s in res.slices}
    assert by_k[1].stop_reason == OUTSIDE_PROMPT and by_k[1].corrective == 0
    assert all(by_k[k].corrective == 1 and by_k[k].stop_reason == "policy" for k in (0, 2))
