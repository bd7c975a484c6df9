"""VLMPolicy: full episodes through the agent loop (tiny random Qwen3-VL and scripted answers), retry rules,
history with each turn's own image, hand-off, configuration and local loading."""

from __future__ import annotations

import numpy as np
import pytest

from lib.agent.actions import Box, Point
from lib.agent.env import EnvConfig, SegmentationEnv
from lib.agent.grammar import encode
from lib.agent.policies.base import Prefixed
from lib.agent.policies.vlm import VLMConfig, VLMPolicy, check_checkpoint_dir
from lib.agent.rollout import rollout
from lib.agent.vlm_image import model_image
from lib.agent.vlm_prompt import FOLLOWUP_TURN, user_text

STOP = '<tool_call>{"name": "stop_action", "arguments": {}}</tool_call>'


class ScriptedVLM(VLMPolicy):
    """The real prompt/parse/retry logic with canned answers instead of a model; records every prompt."""

    def __init__(self, answers, config=None):
        super().__init__(model=None, processor=None, config=config or VLMConfig())
        self.answers = list(answers)
        self.prompts: list[list[dict]] = []
        self.temperatures: list[float] = []

    def generate_text(self, messages, temperature):
        self.prompts.append(messages)
        self.temperatures.append(temperature)
        return self.answers.pop(0)


def test_tiny_random_vlm_runs_a_full_episode_and_garbage_ends_it_cleanly(tiny_vlm, processor, scene, fake_tool):
    image, gt = scene
    env = SegmentationEnv(fake_tool, EnvConfig())
    # 2 new tokens cannot hold a tool call (<tool_call>, body, </tool_call>): the answer is garbage for sure
    policy = VLMPolicy(tiny_vlm, processor, VLMConfig(max_new_tokens=2, device="cpu"))
    traj = rollout(env, policy, {"image": image, "gt": gt, "target": "disk"}, seed=0)
    # one shared retry, then the episode ends with the empty mask, no crash
    assert len(policy.outputs) == 2 and policy.retries_used == 1
    assert traj.stop_reason == "unparseable_output"
    assert traj.actions == [{"type": "stop"}] and traj.n_actions == 0
    assert traj.reward is not None and traj.policy_meta["vlm"]["retries_used"] == 1


def test_from_pretrained_loads_a_local_folder_without_network(checkpoint_dir, scene, fake_tool):
    policy = VLMPolicy.from_pretrained(checkpoint_dir, VLMConfig(max_new_tokens=24, device="cpu"))
    info = policy.describe()
    assert info["policy"] == "vlm" and info["architecture"] == "Qwen3VLForConditionalGeneration"
    assert info["device"] == "cpu" and info["dtype"] == "float32" and info["model"] == str(checkpoint_dir)
    image, gt = scene
    traj = rollout(SegmentationEnv(fake_tool), policy, {"image": image, "gt": gt, "target": "disk"}, seed=0)
    # whatever the random model writes (garbage, or by chance a tool call), the loop ends by its rules
    assert traj.stop_reason in ("unparseable_output", "policy", "budget")
    assert len(policy.outputs) == len(traj.actions) + policy.retries_used


def test_missing_checkpoint_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="vlm_path"):
        check_checkpoint_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        check_checkpoint_dir(tmp_path)


def test_scripted_episode_history_images_and_retries(scene, fake_tool):
    image, gt = scene
    shape = image.shape
    box = Box(14, 9, 58, 55)
    click = Point(50, 32, True)
    answers = [
        "I think the liver is here",  # unparseable -> retry (sampled)
        encode(box, shape),  # accepted: the retry budget is restored
        "<tool_call>{bad json</tool_call>",  # unparseable -> retry
        encode(click, shape),
        STOP,
    ]
    policy = ScriptedVLM(answers, VLMConfig(retry_temperature=0.7))
    env = SegmentationEnv(fake_tool, EnvConfig())
    traj = rollout(env, policy, {"image": image, "gt": gt, "target": "disk"}, seed=0)
    assert [a["type"] for a in traj.actions] == ["box", "point", "stop"]
    assert traj.stop_reason == "policy" and policy.retries_used == 2
    assert policy.temperatures == [0.0, 0.7, 0.0, 0.7, 0.0]  # greedy, retries sampled
    masks = traj.mask_arrays()
    last = policy.prompts[-1]
    users = [m for m in last if m["role"] == "user"]
    assert [u["content"][1]["text"] for u in users] == [user_text("disk", 0), FOLLOWUP_TURN, FOLLOWUP_TURN]
    # every turn keeps the image it was asked with: plain, then the mask after each action (a released-code bug)
    expected = [model_image(image, None), model_image(image, masks[0]), model_image(image, masks[1])]
    for u, exp in zip(users, expected, strict=True):
        assert np.array_equal(np.asarray(u["content"][0]["image"]), np.asarray(exp))
    assert [m["content"][0]["text"] for m in last if m["role"] == "assistant"] == [answers[1], answers[3]]


def test_first_turn_stop_is_retried_once_then_accepted(scene, fake_tool):
    image, gt = scene
    policy = ScriptedVLM([STOP, STOP])
    traj = rollout(SegmentationEnv(fake_tool), policy, {"image": image, "gt": gt, "target": "disk"})
    assert len(policy.prompts) == 2 and traj.stop_reason == "policy" and traj.n_actions == 0
    policy = ScriptedVLM([STOP, encode(Box(14, 9, 58, 55), image.shape), STOP])
    traj = rollout(SegmentationEnv(fake_tool), policy, {"image": image, "gt": gt, "target": "disk"})
    assert [a["type"] for a in traj.actions] == ["box", "stop"]


def test_history_window_drops_the_oldest_turns(scene, fake_tool):
    image, gt = scene
    clicks = [encode(Point(30 + k, 30, k % 2 == 0), image.shape) for k in range(4)]
    policy = ScriptedVLM([*clicks, STOP], VLMConfig(history_turns=2))
    rollout(SegmentationEnv(fake_tool, EnvConfig(max_turns=5)), policy, {"image": image, "gt": gt, "target": "d"})
    last = policy.prompts[-1]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"][0]["text"] for m in last if m["role"] == "assistant"] == clicks[2:4]


def test_handoff_box_becomes_the_first_turn_of_the_conversation(scene, fake_tool):
    image, gt = scene
    box = Box(14, 9, 58, 55)
    inner = ScriptedVLM([STOP])
    traj = rollout(SegmentationEnv(fake_tool), Prefixed([box], inner), {"image": image, "gt": gt, "target": "disk"})
    assert [a["type"] for a in traj.actions] == ["box", "stop"]
    msgs = inner.prompts[0]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[2]["content"][0]["text"] == encode(box, image.shape)
    assert msgs[1]["content"][1]["text"] == user_text("disk", 0)
    shown = np.asarray(msgs[3]["content"][0]["image"])
    assert np.array_equal(shown, np.asarray(model_image(image, traj.mask_arrays()[0])))


def test_parsed_actions_are_returned_in_pixels(scene, fake_tool):
    image, gt = scene
    policy = ScriptedVLM([encode(Point(40, 20, False), image.shape)])
    env = SegmentationEnv(fake_tool)
    obs, info = env.reset(options={"image": image, "gt": gt, "target": "disk"})
    policy.reset(obs, info)
    assert policy.act(obs, info) == Point(40, 20, False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dtype": "int8"}, "dtype"),
        ({"device": "tpu"}, "device"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"retries": -1}, "retries"),
        ({"overlay_alpha": 1.5}, "overlay_alpha"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VLMConfig(**kwargs)


def test_config_resolves_cpu_defaults():
    import torch

    cfg = VLMConfig(device="cpu")
    assert cfg.resolved_device() == "cpu" and cfg.resolved_dtype() == torch.float32
    assert VLMConfig(device="cuda", dtype="auto").resolved_dtype() == torch.bfloat16
