from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from lib.agent.actions import Box, Point, Stop
from lib.agent.clicks import tight_box
from lib.agent.env import (
    KIND_BOX,
    KIND_NONE,
    KIND_POINT,
    KIND_STOP,
    EnvConfig,
    SegmentationEnv,
    clone_interaction,
    decode_action,
    encode_action,
)
from lib.agent.grammar import encode
from lib.agent.rewards import episode_reward
from lib.tools.base import BOX, MASK_INPUT
from lib.tools.fake import FakeTool
from lib.tools.interaction import Prompting


def _opts(img, gt, **kw):
    return {"image": img, "gt": gt, "target": "disk", **kw}


def test_check_env_passes(two_tone_disk):
    img, gt = two_tone_disk

    def sampler(rng):
        return {"image": img, "gt": gt, "target": "disk"}

    env = SegmentationEnv(FakeTool(), shape=img.shape, sampler=sampler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no spec" warnings: the env is not registered with gymnasium.make
        check_env(env, skip_render_check=True)


def test_check_env_passes_with_rgb_render(two_tone_disk):
    img, gt = two_tone_disk
    env = SegmentationEnv(FakeTool(), shape=img.shape, sampler=lambda rng: _opts(img, gt), render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env)
    env.reset(options=_opts(img, gt))
    env.step(tight_box(gt))
    frame = env.render()
    assert frame.shape == (*img.shape, 3) and frame.dtype == np.uint8


def test_observation_and_info(two_tone_disk):
    img, gt = two_tone_disk
    env = SegmentationEnv(FakeTool())
    obs, info = env.reset(seed=0, options=_opts(img, gt))
    assert env.observation_space.contains(obs)
    assert obs["image"].dtype == np.float32 and obs["image"].shape == img.shape
    assert obs["mask"].dtype == np.uint8 and not obs["mask"].any()
    assert obs["turn"] == 0 and obs["last_action"][0] == KIND_NONE
    assert info["ious"] == [] and info["masks"] == [] and info["target"] == "disk"
    box = tight_box(gt)
    obs, reward, term, trunc, info = env.step(box)
    assert env.observation_space.contains(obs)
    assert obs["turn"] == 1 and obs["last_action"][0] == KIND_BOX
    assert obs["mask"].any() and not term and not trunc
    assert len(info["masks"]) == 1 and info["masks"][0].dtype == bool
    assert reward == pytest.approx(info["ious"][0])  # IoU gain from the empty mask
    assert info["reward_terms"]["iou_gain"] == pytest.approx(info["ious"][0])
    assert info["actions"] == [{"type": "box", "box": list(box.as_tuple())}]


def test_budget_counts_executed_actions_and_stop_is_free(two_tone_disk):
    img, gt = two_tone_disk
    env = SegmentationEnv(FakeTool(), EnvConfig(max_turns=3))
    env.reset(options=_opts(img, gt))
    _, _, term, trunc, _ = env.step(tight_box(gt))
    assert not (term or trunc)
    _, _, term, trunc, _ = env.step(Point(50, 30, True))
    assert not (term or trunc)
    _, _, term, trunc, info = env.step(Point(36, 30, True))
    assert trunc and not term and info["stop_reason"] == "budget" and info["turn"] == 3
    assert "episode" in info["reward_terms"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(Stop())

    env.reset(options=_opts(img, gt))
    env.step(tight_box(gt))
    obs, reward, term, trunc, info = env.step(Stop())
    assert term and not trunc and info["turn"] == 1 and obs["turn"] == 1 and info["stop_reason"] == "stop"
    expected, _ = episode_reward(info["ious"], info["dices"], n_actions=1, stopped=True)
    assert reward == pytest.approx(expected) and info["episode_reward"] == pytest.approx(expected)
    assert obs["last_action"][0] == KIND_BOX  # Stop does not change the mask or the last executed action


@pytest.mark.parametrize(
    "action, why",
    [
        (Point(500, 3, True), "off the"),
        (Box(10, 10, 10, 20), "empty or inverted"),
        ("add a box please", "no <tool_call>"),
        ('<tool_call>{"name": "add_bbox", "arguments": {"bbox_2d": [10, 10, 5, 20]}}</tool_call>', "x2="),
        (np.array([7, 0, 0, 0, 0, 0]), "kind"),
        ({"type": "circle"}, "unknown action type"),
    ],
)
def test_invalid_actions_are_penalised_reported_and_counted(two_tone_disk, action, why):
    img, gt = two_tone_disk
    env = SegmentationEnv(FakeTool(), EnvConfig(max_turns=2, invalid_penalty=0.25))
    env.reset(options=_opts(img, gt))
    obs, reward, term, trunc, info = env.step(action)
    assert why in info["invalid"]
    assert reward == pytest.approx(-0.25) and info["reward_terms"]["invalid"] == -1.0
    assert info["turn"] == 1 and obs["turn"] == 1 and info["executed"] == 0 and not obs["mask"].any()
    assert info["actions"][0]["invalid"] == info["invalid"]
    _, _, term, trunc, info = env.step(action)
    assert trunc and info["n_invalid"] == 2
    # the episode reward counts both issued actions (no mask: quality 0; no stop: format 0)
    assert info["reward_terms"]["episode/format"] == 0.5 and info["reward_terms"]["episode/quality"] == 0.0


def test_unsupported_action_is_invalid():
    class BoxOnly(FakeTool):
        capabilities = frozenset({BOX, MASK_INPUT})

    img = np.zeros((20, 20), dtype=np.float32)
    env = SegmentationEnv(BoxOnly())
    env.reset(options={"image": img, "gt": None, "target": "x"})
    _, reward, *_, info = env.step(Point(3, 3, True))
    assert "does not take point prompts" in info["invalid"] and reward == pytest.approx(-0.1)
    assert "ious" not in info  # no ground truth: no IoU, no episode reward


def test_prompting_needing_logits_is_refused_for_a_backend_without_mask_input():
    class NoLogits(FakeTool):
        capabilities = frozenset({BOX})

    with pytest.raises(ValueError, match="prompting='all'"):
        SegmentationEnv(NoLogits(), EnvConfig(prompting="newest"))
    SegmentationEnv(NoLogits(), EnvConfig(prompting="all"))


def test_one_tool_session_per_episode(two_tone_disk):
    img, gt = two_tone_disk
    tool = FakeTool()
    env = SegmentationEnv(tool)
    for episode in range(2):
        env.reset(options=_opts(img, gt))
        session = env.session
        env.step(tight_box(gt))
        env.step(Point(50, 30, True))
        env.step(Point(20, 20, False))
        assert env.session is session
        assert tool.encoder_calls == episode + 1
    assert tool.decoder_calls == 6
    # a pre-encoded session is reused: no encoder call at all
    env.reset(options=_opts(img, gt, session=session))
    assert tool.encoder_calls == 2 and env.session is session


def test_all_prompting_sends_box_and_every_click(two_tone_disk):
    img, gt = two_tone_disk
    calls = []
    tool = FakeTool()
    env = SegmentationEnv(tool, EnvConfig(prompting=Prompting.ALL))
    env.reset(options=_opts(img, gt))
    original = env.session.predict

    def spy(**kw):
        calls.append(kw)
        return original(**kw)

    env.session.predict = spy
    env.step(tight_box(gt))
    env.step(Point(50, 30, True))
    assert calls[-1]["box"] == tight_box(gt).as_tuple() and calls[-1]["points"] == [(50, 30)]
    assert calls[-1]["mask_logits"] is None


def test_peek_does_not_commit_and_step_reuses_it(two_tone_disk):
    img, gt = two_tone_disk
    tool = FakeTool()
    env = SegmentationEnv(tool)
    env.reset(options=_opts(img, gt))
    out = env.peek(tight_box(gt))
    assert out.mask.any() and not env.mask.any() and env.interaction.box is None
    env.peek(Point(50, 30, True))
    assert tool.decoder_calls == 2
    _, _, _, _, info = env.step(tight_box(gt))
    assert tool.decoder_calls == 2 and info["decoder_calls"] == 2  # reused, not decoded again
    assert np.array_equal(env.mask, out.mask)


def test_clone_interaction_is_independent(two_tone_disk):
    img, gt = two_tone_disk
    env = SegmentationEnv(FakeTool())
    env.reset(options=_opts(img, gt))
    env.step(tight_box(gt))
    twin = clone_interaction(env.interaction)
    twin.add_point(50, 30, True)
    assert env.interaction.points == [] and twin.points == [(50, 30)]


def test_action_encoding_round_trip():
    shape = (64, 72)
    for action in (Box(0, 5, 71, 63), Point(13, 40, False), Point(0, 0, True), Stop()):
        vec = encode_action(action, shape)
        assert decode_action(vec, shape) == action
    assert encode_action(None, shape)[0] == KIND_NONE
    assert encode_action(Stop(), shape)[0] == KIND_STOP and encode_action(Point(1, 1, True), shape)[0] == KIND_POINT
    with pytest.raises(ValueError, match="0..999"):
        decode_action(np.array([1, 0, 0, 1000, 5, 0]), shape)


def test_text_actions_are_parsed(two_tone_disk):
    img, gt = two_tone_disk
    env = SegmentationEnv(FakeTool())
    env.reset(options=_opts(img, gt))
    _, _, _, _, info = env.step(encode(tight_box(gt), img.shape))
    assert info["invalid"] is None and info["actions"][0]["type"] == "box"


def test_reset_errors_are_explicit(two_tone_disk):
    img, gt = two_tone_disk
    env = SegmentationEnv(FakeTool())
    with pytest.raises(ValueError, match="options"):
        env.reset()
    with pytest.raises(ValueError, match="Windowing"):
        env.reset(options=_opts(img * 300, gt))
    with pytest.raises(TypeError, match="bool"):
        env.reset(options=_opts(img, gt.astype(np.uint8)))
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options=_opts(img, gt, colour="red"))
    with pytest.raises(ValueError, match="prior"):
        env.reset(options=_opts(img, gt, prior=gt[1:]))
    _, info = env.reset(options=_opts(img, gt, prior=gt))  # a neighbour's mask: handed to the policy, not the tool
    assert info["prior"] is gt and not info["masks"]
    fixed = SegmentationEnv(FakeTool(), shape=(10, 10))
    with pytest.raises(ValueError, match="shape=None"):
        fixed.reset(options=_opts(img, gt))
    with pytest.raises(ValueError, match="max_turns"):
        EnvConfig(max_turns=0)
    with pytest.raises(ValueError, match="prompting"):
        EnvConfig(prompting="some")
