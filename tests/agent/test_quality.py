"""Predicted quality: pairs read from episodes, calibration metrics, the isotonic calibrator, the gated stop."""

from __future__ import annotations

import numpy as np
import pytest

from lib.agent.actions import Box, Point, Stop
from lib.agent.env import EnvConfig, SegmentationEnv
from lib.agent.policies.base import Policy, Prefixed
from lib.agent.quality import (
    QualityCalibration,
    calibration_metrics,
    choose_stop_threshold,
    fit_blend,
    fit_isotonic,
    gated_stop,
    quality_pairs,
)
from lib.agent.rollout import rollout


def test_metrics_of_a_perfect_and_of_an_overconfident_predictor():
    true = np.linspace(0.05, 0.95, 50)
    perfect = calibration_metrics(true, true)
    assert perfect["ece"] == pytest.approx(0.0, abs=1e-12) and perfect["spearman"] == pytest.approx(1.0)
    # a predictor 0.2 too high everywhere keeps the ranking and is off by 0.2 in every bin
    over = calibration_metrics(true * 0.8 + 0.2, true * 0.8)
    assert over["spearman"] == pytest.approx(1.0) and over["ece"] == pytest.approx(0.2) and over["n"] == 50
    assert sum(b["n"] for b in over["bins"]) == 50
    # one hand-computed case: two bins, |0.15 - 0.1| and |0.85 - 0.6|, each holding half the pairs
    hand = calibration_metrics([0.1, 0.2, 0.8, 0.9], [0.1, 0.1, 0.6, 0.6], bins=2)
    assert hand["ece"] == pytest.approx(0.5 * 0.05 + 0.5 * 0.25)
    assert calibration_metrics([], [])["n"] == 0 and np.isnan(calibration_metrics([0.5], [0.4])["spearman"])


def test_isotonic_calibration_fixes_an_overconfident_head_and_is_monotone():
    rng = np.random.default_rng(0)
    true = rng.uniform(0.2, 1.0, 400)
    raw = np.clip(true ** 0.3 + rng.normal(0, 0.03, true.size), 0, 1)  # confident: raw >> true
    cal = fit_isotonic(raw, true, fitted_on={"cases": ["a"]})
    served = np.array([cal(q) for q in raw])
    assert calibration_metrics(served, true)["ece"] < 0.03 < calibration_metrics(raw, true)["ece"]
    grid = np.linspace(0, 1, 101)
    assert (np.diff([cal(q) for q in grid]) >= -1e-12).all() and cal(-1.0) == cal(0.0)
    again = QualityCalibration.from_dict(cal.to_dict())
    assert again == cal and again.fitted_on["n"] == 400 and again.fitted_on["cases"] == ["a"]
    with pytest.raises(ValueError, match="at least 10"):
        fit_isotonic([0.5] * 3, [0.5] * 3)
    with pytest.raises(ValueError, match="monotone"):
        QualityCalibration((0.0, 0.5, 1.0), (0.2, 0.1, 0.9))


def test_blend_leans_on_the_input_that_ranks_and_falls_back_without_it():
    rng = np.random.default_rng(1)
    true = rng.uniform(0.1, 0.95, 500)
    head = np.clip(0.5 + 0.1 * rng.normal(size=true.size) + 0.2 * (true - 0.5), 0.01, 0.99)  # weak, overconfident
    tool = np.clip(true + 0.05 * rng.normal(size=true.size) + 0.1, 0.01, 0.99)  # ranks well, 0.1 too high
    cal = fit_blend(head, tool, true)
    assert cal.inputs == ("policy", "tool") and cal.weights[2] > abs(cal.weights[1])
    served = [cal(q, t) for q, t in zip(head, tool, strict=True)]
    m = calibration_metrics(served, true)
    assert m["spearman"] > 0.9 > calibration_metrics(head, true)["spearman"] and m["ece"] < 0.05
    assert cal(0.5, None) == cal.fallback(0.5)  # no tool output: the value head alone, calibrated
    again = QualityCalibration.from_dict(cal.to_dict())
    assert again(0.4, 0.7) == pytest.approx(cal(0.4, 0.7)) and again.fallback == cal.fallback


def test_quality_pairs_skip_unjudged_and_empty_masks():
    actions = [{"type": "box"}, {"type": "point"}, {"type": "point", "invalid": "off"}, {"type": "stop"}]
    # the user's box was not judged (None); the policy judged the box's mask (0.7), the click's mask twice
    pairs = quality_pairs(actions, [None, 0.7, 0.8, 0.9], ious=[0.6, 0.75], scores=[0.9, 0.95])
    assert pairs == [(0.7, 0.6, 0.9), (0.8, 0.75, 0.95), (0.9, 0.75, 0.95)]  # each with the tool's IoU output
    # an autonomous first decision sees an empty mask: left out; a budget end adds the final judgement
    pairs = quality_pairs([{"type": "box"}, {"type": "point"}], [0.1, 0.5], ious=[0.4, 0.8], final_quality=0.85,
                          stopped_by_budget=True)
    assert [p[:2] for p in pairs] == [(0.5, 0.4), (0.85, 0.8)] and np.isnan(pairs[0][2])


def _episode(decisions, final_dice, turns):
    return {"decisions": [{"quality": q, "dice": d, "iou": d, "turns": t} for q, d, t in decisions],
            "final_dice": final_dice, "turns": turns}


def test_gated_stop_replays_recorded_episodes_and_the_threshold_rule():
    # ep1: the box is already good and judged so; the policy's extra click spoils it
    # ep2: the box is poor and judged so; the click fixes it
    eps = [_episode([(0.9, 0.90, 1), (0.8, 0.85, 2)], 0.85, 2), _episode([(0.4, 0.5, 1), (0.9, 0.9, 2)], 0.9, 2)]
    g = gated_stop(eps, 0.85)
    assert g["dice"] == pytest.approx((0.90 + 0.9) / 2) and g["turns"] == pytest.approx(1.5) and g["stopped"] == 0.5
    assert gated_stop(eps, 0.99)["dice"] == pytest.approx((0.85 + 0.9) / 2)  # never fires: the learned stop
    choice = choose_stop_threshold(eps, grid=(0.3, 0.85, 0.99))
    assert choice["threshold"] == 0.85 and choice["gated"]["turns"] < choice["learned"]["turns"]
    # a calibration that maps every raw value to 0.2 silences the gate
    flat = QualityCalibration((0.0, 1.0), (0.2, 0.2))
    assert choose_stop_threshold(eps, transform=flat, grid=(0.5, 0.85))["threshold"] is None


class _Judge(Policy):
    """Clicks the centre until the budget ends; judges every mask 0.6 (assess: 0.65)."""

    name = "judge"

    def act(self, obs, info):
        self.last_quality = 0.6
        h, w = np.asarray(obs["mask"]).shape
        return Point(w // 2, h // 2, True)

    def assess(self, obs, info):
        return 0.65


def test_rollout_records_the_quality_of_every_judged_mask(two_tone_disk, fake_tool):
    img, gt = two_tone_disk
    env = SegmentationEnv(fake_tool, EnvConfig(max_turns=3))
    opts = {"image": img, "gt": gt, "target": "disk"}
    traj = rollout(env, Prefixed([Box(10, 10, 60, 50)], _Judge()), opts, seed=0)
    assert traj.stop_reason == "budget" and len(traj.actions) == 3
    assert traj.qualities == [None, 0.6, 0.6] and traj.final_quality == 0.65  # the budget's final mask: assessed
    pairs = quality_pairs(traj.actions, traj.qualities, traj.ious, traj.final_quality, True)
    assert [p[1] for p in pairs] == traj.ious  # each judged mask pairs with its own IoU

    class StopNow(_Judge):
        def act(self, obs, info):
            self.last_quality = 0.7
            return Stop()

    traj = rollout(env, Prefixed([Box(10, 10, 60, 50)], StopNow()), opts, seed=0)
    assert traj.qualities == [None, 0.7] and traj.final_quality == 0.7  # judged at the Stop, not re-assessed
