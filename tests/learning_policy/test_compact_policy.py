"""``CompactPolicy``: size, acting contract, action codec and checkpoint round trip."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from lib.agent.actions import Box, Point, Stop, validate
from lib.agent.policies.compact import CompactPolicy
from lib.agent.policies.compact_codec import decode_action, encode_action
from lib.agent.policies.compact_config import BOX, STOP, CompactConfig
from lib.agent.policies.compact_net import n_parameters
from lib.agent.policies.compact_state import prompt_planes, state_features

from .conftest import LABELS, TINY


def _obs(shape=(48, 56)) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    obs = {"image": rng.random(shape, dtype=np.float32), "mask": np.zeros(shape, dtype=np.uint8)}
    info = {"target": "kidney", "turn": 1, "actions": [{"type": "box", "box": [10, 8, 40, 30]}]}
    return obs, info


def test_default_architecture_is_compact_and_acts_validly():
    policy = CompactPolicy({"liver": 1, "spleen": 2, "kidney": 3})
    assert n_parameters(policy.net) < 10_000_000
    obs, info = _obs()
    info["target"] = "Kidney"  # names match case-insensitively
    policy.reset(obs, info, seed=0)
    action = policy.act(obs, info)
    assert isinstance(action, (Box, Point, Stop)) and validate(action, obs["image"].shape) is None
    assert 0.0 <= policy.last_quality <= 1.0 and policy.last_log_prob <= 0.0
    assert policy.labels == {"liver": 1, "spleen": 2, "kidney": 3}


def test_sampling_is_seeded_and_always_valid():
    policy = CompactPolicy(LABELS, TINY, greedy=False)
    obs, info = _obs()
    runs = []
    for _ in range(2):
        policy.reset(obs, info, seed=5)
        runs.append([policy.act(obs, info) for _ in range(30)])
    assert runs[0] == runs[1]
    assert all(validate(a, obs["image"].shape) is None for a in runs[0])
    assert len({type(a) for a in runs[0]}) >= 3  # an untrained policy explores every kind


def test_unknown_target_is_a_clear_error():
    policy = CompactPolicy(LABELS, TINY)
    obs, info = _obs()
    with pytest.raises(ValueError, match="not in this policy's label set"):
        policy.reset(obs, {**info, "target": "liver"})


@pytest.mark.parametrize("shape", [(48, 56), (300, 200), (7, 9)])
def test_action_codec_round_trip(shape):
    cfg = CompactConfig()
    h, w = shape
    for action in (Box(1, 2, w - 2, h - 3), Box(0, 0, 1, 1), Point(w // 2, h - 1, False), Stop()):
        back = decode_action(encode_action(action, shape, cfg), shape, cfg)
        assert validate(back, shape) is None
        if isinstance(action, Box):
            # one bin is (W - 1) / (bins - 1) pixels: the round trip lands within half a bin
            tol = max(1.0, (max(shape) - 1) / (cfg.box_bins - 1))
            assert np.allclose(back.as_tuple(), action.as_tuple(), atol=tol)
        elif isinstance(action, Point):
            assert back.positive == action.positive
            assert abs(back.x - action.x) <= (w - 1) / (cfg.point_grid - 1) and abs(back.y - action.y) <= (
                h - 1) / (cfg.point_grid - 1)
        else:
            assert back == action
    assert encode_action({"type": "box", "box": [3, 3, 3, 9]}, shape, cfg).kind == BOX


def test_prompt_planes_follow_the_last_box_and_every_click():
    cfg = CompactConfig(size=64, box_bins=32)
    actions = [{"type": "box", "box": [0, 0, 10, 10]}, {"type": "point", "point": [30, 20], "positive": True},
               {"type": "box", "box": [20, 5, 40, 25]}, {"type": "point", "point": [5, 5], "positive": False},
               {"type": "point", "point": [1, 1], "positive": True, "invalid": "off image"}]
    planes = prompt_planes((48, 56), actions, cfg)
    assert planes[0, 0, 0] == 0 and planes[0, 15 * 63 // 47, 30 * 63 // 55] == 1  # the second box replaced the first
    assert planes[1].max() == pytest.approx(1.0, abs=0.05) and planes[2].max() == pytest.approx(1.0, abs=0.05)
    assert planes[1, :4, :4].max() < 0.01  # the invalid click is not drawn


def test_save_load_round_trip(tmp_path):
    policy = CompactPolicy(LABELS, TINY, provenance={"note": "test"})
    policy.save(tmp_path / "ckpt", {"steps": 3})
    meta = json.loads((tmp_path / "ckpt" / "policy.json").read_text())
    assert meta["labels"] == LABELS and meta["architecture"]["size"] == 64 and meta["provenance"]["steps"] == 3
    state = torch.load(tmp_path / "ckpt" / "policy.pt", weights_only=True)
    assert set(state) == set(policy.net.state_dict())
    loaded = CompactPolicy.load(tmp_path / "ckpt")
    assert loaded.labels == LABELS and loaded.config == TINY
    obs, info = _obs()
    for p in (policy, loaded):
        p.reset(obs, info, seed=0)
    assert policy.act(obs, info) == loaded.act(obs, info)
    assert policy.last_quality == pytest.approx(loaded.last_quality)


def test_load_missing_checkpoint_names_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="policy.pt"):
        CompactPolicy.load(tmp_path)


def test_quality_calibration_is_stored_served_and_gates_the_stop(tmp_path):
    from lib.agent.quality import QualityCalibration

    # a calibration that says "every mask is 0.95 good" (threshold 0.9 validated with it)
    cal = QualityCalibration((0.0, 1.0), (0.95, 0.95), fitted_on={"stop_threshold": 0.9})
    policy = CompactPolicy(LABELS, TINY, calibration=cal)
    with torch.no_grad():  # an untrained net that never stops by itself: any Stop below is the gate's
        policy.net.kind_head.bias[STOP] = -1e4
    policy.save(tmp_path / "ckpt")
    loaded = CompactPolicy.load(tmp_path / "ckpt")
    assert loaded.calibration == cal and loaded.copy().calibration == cal
    obs, info = _obs()
    loaded.reset(obs, info, seed=0)
    loaded.act(obs, info)
    assert loaded.last_quality == 0.95 and loaded.last_quality_raw != 0.95 and loaded.assess(obs, info) == 0.95
    raw = CompactPolicy.load(tmp_path / "ckpt", calibration=None, stop_on_repeat=False)
    raw.reset(obs, info, seed=0)
    raw.act(obs, info)
    assert raw.last_quality == pytest.approx(loaded.last_quality_raw)
    # the gate: a non-empty mask judged >= the threshold ends the episode; an empty one never does
    gated = CompactPolicy.load(tmp_path / "ckpt", stop_quality="auto", stop_on_repeat=False)
    assert gated.stop_quality == 0.9
    shown = {**obs, "mask": np.ones_like(obs["mask"])}
    raw.reset(shown, info, seed=0)
    assert raw.act(shown, info) != Stop()
    gated.reset(shown, info, seed=0)
    assert gated.act(shown, info) == Stop() and gated.stop_reason == "quality"
    gated.reset(obs, info, seed=0)
    raw.reset(obs, info, seed=0)
    assert gated.act(obs, info) == raw.act(obs, info) and gated.stop_reason != "quality"
    with pytest.raises(ValueError, match="validated stop threshold"):
        CompactPolicy(LABELS, TINY, stop_quality="auto")
    with pytest.raises(ValueError, match="stop_quality"):
        CompactPolicy(LABELS, TINY, stop_quality=1.5)


def test_prior_channel_reads_the_neighbour_mask_and_a_widened_copy_decides_as_before(tmp_path):
    with_prior = dataclasses.replace(TINY, prior=True)
    assert with_prior.channels[-1] == "prior" and len(with_prior.channels) == len(TINY.channels) + 1
    obs, info = _obs()
    neighbour = np.zeros(obs["mask"].shape, dtype=bool)
    neighbour[10:30, 12:40] = True
    x = state_features(np.zeros((64, 64), np.float32), obs["mask"], info["actions"], with_prior, neighbour)
    assert x.shape == (6, 64, 64) and x[5].max() == 1.0 and x[5, :, :10].max() == 0.0  # left of the mask: empty
    none = state_features(np.zeros((64, 64), np.float32), obs["mask"], info["actions"], with_prior)
    assert none.shape == (6, 64, 64) and not none[5].any()  # a slice episode: no neighbour

    torch.manual_seed(0)
    base = CompactPolicy(LABELS, TINY)
    wide = base.copy(with_prior)  # the added channel starts at zero weight: same decisions, prior or not
    back = wide.copy(TINY)
    for p in (base, wide, back):
        p.reset(obs, info, seed=0)
    assert base.act(obs, info) == wide.act(obs, {**info, "prior": neighbour}) == back.act(obs, info)
    assert wide.last_quality == pytest.approx(base.last_quality)
    with torch.no_grad():
        wide.net.stem[0].weight[:, 5] += 1.0  # once trained, the prior changes what the policy sees
    a = wide.features(obs, {**info, "prior": neighbour})[0]
    assert a.shape[0] == 6 and float(a[5].sum()) > 0
    with pytest.raises(ValueError, match="prior only"):
        base.copy(dataclasses.replace(TINY, size=128))

    # a checkpoint written before the channel existed (no "prior" in its architecture) loads as 5 channels
    base.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "policy.json").read_text())
    del meta["architecture"]["prior"]
    (tmp_path / "old" / "policy.json").write_text(json.dumps(meta))
    assert CompactPolicy.load(tmp_path / "old").config == TINY
    wide.save(tmp_path / "new")
    assert CompactPolicy.load(tmp_path / "new").config.channels == with_prior.channels
