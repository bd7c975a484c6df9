from __future__ import annotations

import doctest

import numpy as np
import pytest

import lib.agent.rewards as rewards
from lib.agent.actions import Box, Point
from lib.agent.rewards import REWARD_TERMS, RewardConfig, click_placement, episode_reward, register_term


def test_reference_worked_example():
    total, terms = episode_reward([0.60, 0.80, 0.75], [0.70, 0.85, 0.857], n_actions=3, stopped=True)
    assert terms["format"] == 1.0
    assert terms["base"] == pytest.approx(0.5 * 0.75 + 0.5 * 0.857)  # 0.8035
    assert terms["overshoot"] == pytest.approx(0.05)
    assert terms["turn_cost"] == pytest.approx(0.03)
    assert terms["improvement"] == pytest.approx(0.02)  # 0.1 * (0.20 + max(0, -0.05))
    assert terms["quality"] == pytest.approx(0.7435)
    assert total == pytest.approx(0.2 + 0.8 * 0.7435)
    assert round(total, 3) == 0.795


def test_doctests():
    assert doctest.testmod(rewards).failed == 0


@pytest.mark.parametrize(
    "n_actions, stopped, f",
    [(2, True, 1.0), (2, False, 0.5), (0, True, 0.5), (0, False, 0.0)],
)
def test_format_term(n_actions, stopped, f):
    ious = [0.5] * n_actions
    _, terms = episode_reward(ious, ious, n_actions=n_actions, stopped=stopped)
    assert terms["format"] == f


def test_no_action_then_stop():
    total, terms = episode_reward([], [], n_actions=0, stopped=True)
    assert terms["quality"] == 0.0 and total == pytest.approx(0.1)


def test_single_action_pays_no_turn_cost_two_do():
    total1, t1 = episode_reward([0.8], [0.9], n_actions=1, stopped=True)
    assert t1["turn_cost"] == 0.0
    assert total1 == pytest.approx(0.2 + 0.8 * 0.85)
    _, t2 = episode_reward([0.8, 0.8], [0.9, 0.9], n_actions=2, stopped=True)
    assert t2["turn_cost"] == pytest.approx(0.02)
    # the discontinuity is a config switch away
    _, t3 = episode_reward([0.8], [0.9], n_actions=1, stopped=True, config=RewardConfig(turn_cost_min_actions=1))
    assert t3["turn_cost"] == pytest.approx(0.01)


def test_turn_cost_counts_issued_actions_even_without_a_mask():
    _, terms = episode_reward([0.8, 0.8], [0.9, 0.9], n_actions=4, stopped=False)
    assert terms["turn_cost"] == pytest.approx(0.04)


def test_overshoot_and_improvement():
    _, terms = episode_reward([0.3, 0.9, 0.6, 0.7], [0.3, 0.9, 0.6, 0.7], n_actions=4, stopped=True)
    assert terms["overshoot"] == pytest.approx(0.2)  # best 0.9, last 0.7
    assert terms["improvement"] == pytest.approx(0.1 * (0.6 + 0.1))  # gains only, from t = 2 on
    assert terms["quality"] == pytest.approx(0.7 - 0.2 - 0.04 + 0.07)


def test_quality_is_clipped_to_0_1():
    total, terms = episode_reward([0.2, 1.0], [0.3, 1.0], n_actions=2, stopped=True)
    assert terms["base"] - terms["turn_cost"] + terms["improvement"] > 1.0  # 1 - 0.02 + 0.08
    assert terms["quality"] == 1.0 and total == pytest.approx(1.0)
    total, terms = episode_reward([0.9, 0.0], [0.95, 0.0], n_actions=2, stopped=True)
    assert terms["quality"] == 0.0 and total == pytest.approx(0.2)


def test_extra_terms_weigh_zero_by_default():
    assert {"format", "quality", "tool_use", "stop_cost", "click_placement"} <= set(REWARD_TERMS)
    base_total, terms = episode_reward([0.5, 0.6], [0.5, 0.6], n_actions=2, stopped=False)
    assert terms["tool_use"] == 1.0 and terms["stop_cost"] == -1.0 and terms["click_placement"] == 0.0
    cfg = RewardConfig(tool_use_weight=0.1, stop_cost_weight=0.2)
    total, _ = episode_reward([0.5, 0.6], [0.5, 0.6], n_actions=2, stopped=False, config=cfg)
    assert total == pytest.approx(base_total + 0.1 - 0.2)
    _, terms = episode_reward([], [], n_actions=0, stopped=True)
    assert terms["tool_use"] == 0.0 and terms["stop_cost"] == 0.0


def test_click_placement_literal():
    gt = np.zeros((4, 4), dtype=bool)
    gt[0:2, 0:2] = True
    box_mask = np.zeros((4, 4), dtype=bool)
    box_mask[0:1, 0:3] = True  # row 0, cols 0..2: (2, 0) is a false positive, row 1 is missed
    actions = [
        Box(0, 0, 2, 1),
        Point(0, 1, True),  # in FN -> +1
        Point(2, 0, False),  # in FP -> +1
        Point(0, 0, True),  # already covered -> -1
        Point(3, 3, False),  # true background, not in the mask -> -1
    ]
    masks = [box_mask] * len(actions)
    assert click_placement(actions, masks, gt) == pytest.approx(0.0)
    assert click_placement(actions[:3], masks[:3], gt) == 1.0
    assert click_placement(actions[:1], masks[:1], gt) == 0.0  # no clicks
    extra = {"actions": actions[:3], "masks": masks[:3], "gt": gt}
    base, _ = episode_reward([0.5, 0.5, 0.5], [0.6, 0.6, 0.6], n_actions=3, stopped=True, extra=extra)
    total, terms = episode_reward(
        [0.5, 0.5, 0.5], [0.6, 0.6, 0.6], 3, True, RewardConfig(click_placement_weight=0.5), extra
    )
    assert terms["click_placement"] == 1.0 and total == pytest.approx(base + 0.5)


def test_precomputed_term_values_in_extra_win():
    _, terms = episode_reward([0.5], [0.5], n_actions=1, stopped=True, extra={"click_placement": -0.5})
    assert terms["click_placement"] == -0.5


def test_term_weights_for_later_registered_terms():
    register_term("always_one")(lambda ep, cfg: 1.0)
    try:
        base, _ = episode_reward([0.5], [0.5], 1, True)
        total, terms = episode_reward([0.5], [0.5], 1, True, RewardConfig(term_weights={"always_one": 0.25}))
        assert terms["always_one"] == 1.0 and total == pytest.approx(base + 0.25)
        with pytest.raises(ValueError, match="already registered"):
            register_term("always_one")(lambda ep, cfg: 0.0)
    finally:
        REWARD_TERMS.pop("always_one")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"turn_cost": -0.01}, "turn_cost must be a finite number >= 0"),
        ({"format_weight": float("nan")}, "format_weight"),
        ({"iou_weight": 0.0, "dice_weight": 0.0}, "quality_weight=0"),
        ({"turn_cost_min_actions": 0}, "turn_cost_min_actions"),
        ({"term_weights": {"nope": 1.0}}, "unknown term 'nope'"),
    ],
)
def test_config_validation(kwargs, words):
    with pytest.raises(ValueError) as err:
        RewardConfig(**kwargs)
    assert words in str(err.value)


@pytest.mark.parametrize(
    "args, words",
    [
        (([0.5], [0.5, 0.5], 2, True), "one of each"),
        (([1.5], [0.5], 1, True), "[0, 1]"),
        (([0.5, 0.5], [0.5, 0.5], 1, True), "n_actions=1"),
    ],
)
def test_episode_reward_input_checks(args, words):
    with pytest.raises(ValueError) as err:
        episode_reward(*args)
    assert words in str(err.value)
