from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lib.agent.env import SegmentationEnv
from lib.agent.expert import ExpertPolicy
from lib.agent.rollout import episode_seed, rollout
from lib.agent.trajectories import (
    SCHEMA_VERSION,
    Trajectory,
    TrajectorySchemaError,
    read_jsonl,
    read_keys,
    repair_tail,
    rle_decode,
    rle_encode,
    write_jsonl,
)
from lib.tools.fake import FakeTool


def test_rle_literal_is_column_major_coco():
    m = np.array([[0, 1, 1], [0, 1, 0]], dtype=bool)
    # columns top to bottom: (0, 0), (1, 1), (1, 0) -> F F T T T F
    assert rle_encode(m) == {"size": [2, 3], "counts": [2, 3, 1]}
    starts_true = np.array([[1, 0]], dtype=bool)
    assert rle_encode(starts_true)["counts"] == [0, 1, 1]
    assert rle_encode(np.zeros((2, 2), dtype=bool))["counts"] == [4]


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_rle_round_trip(mask):
    rle = rle_encode(mask)
    assert sum(rle["counts"]) == mask.size
    assert np.array_equal(rle_decode(json.loads(json.dumps(rle))), mask)


def test_rle_rejects_bad_input():
    with pytest.raises(ValueError, match="bool"):
        rle_encode(np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="H\\*W"):
        rle_decode({"size": [2, 2], "counts": [1, 1]})


def _trajectory(two_tone_disk, seed=0, case="c1", idx=4) -> Trajectory:
    img, gt = two_tone_disk
    env = SegmentationEnv(FakeTool())
    opts = {"image": img, "gt": gt, "target": "disk",
            "meta": {"case_id": case, "slice_index": idx, "axis": 0, "source": {"dataset": "x"}}}
    return rollout(env, ExpertPolicy(env), opts, seed=seed)


def test_rollout_builds_a_complete_trajectory(two_tone_disk):
    _, gt = two_tone_disk
    traj = _trajectory(two_tone_disk)
    assert traj.key == ("c1", 4, "disk") and traj.backend == "fake" and traj.prompting == "newest"
    assert traj.policy == "expert" and traj.schema_version == SCHEMA_VERSION
    assert len(traj.ious) == len(traj.dices) == len(traj.masks) == len(traj.scores) == traj.n_actions >= 1
    assert traj.actions[-1] == {"type": "stop"}
    assert np.array_equal(rle_decode(traj.final_mask), traj.mask_arrays()[-1])
    assert traj.final_iou == traj.ious[-1] and traj.reward is not None and "format" in traj.reward_terms
    t = traj.timings
    assert set(t) >= {"encoder_ms", "decoder_ms", "policy_ms", "other_ms", "total_ms", "decoder_calls"}
    parts = t["encoder_ms"] + t["decoder_ms"] + t["policy_ms"] + t["other_ms"]
    assert parts == pytest.approx(t["total_ms"], rel=1e-6, abs=1e-6)
    assert traj.source == {"dataset": "x"}


def test_jsonl_round_trip_and_resume_keys(tmp_path, two_tone_disk):
    path = tmp_path / "sub" / "traj.jsonl"
    a = _trajectory(two_tone_disk, seed=episode_seed(0, "c1", 4, "disk"))
    b = _trajectory(two_tone_disk, seed=1, case="c2", idx=None)
    assert write_jsonl(path, [a]) == 1
    assert write_jsonl(path, [b], append=True) == 1
    back = read_jsonl(path)
    assert [t.to_dict() for t in back] == [a.to_dict(), b.to_dict()]
    for t, orig in zip(back, (a, b), strict=True):
        for m, o in zip(t.mask_arrays(), orig.mask_arrays(), strict=True):
            assert np.array_equal(m, o)
    assert read_keys(path) == {("c1", 4, "disk"), ("c2", None, "disk")}
    write_jsonl(path, [b], append=False)
    assert len(read_jsonl(path)) == 1
    assert read_keys(tmp_path / "absent.jsonl") == set()


def test_schema_version_is_checked(tmp_path, two_tone_disk):
    d = _trajectory(two_tone_disk).to_dict()
    d["schema_version"] = 99
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(d) + "\n")
    with pytest.raises(TrajectorySchemaError, match=r"old.jsonl:1.*schema_version 99.*regenerate"):
        read_jsonl(path)
    d["schema_version"] = SCHEMA_VERSION
    del d["masks"]
    path.write_text(json.dumps(d) + "\n")
    with pytest.raises(TrajectorySchemaError, match="masks"):
        read_jsonl(path)


def test_repair_tail_drops_a_partial_line(tmp_path, two_tone_disk):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [_trajectory(two_tone_disk)])
    good = path.read_bytes()
    path.write_bytes(good + b'{"schema_version": 1, "case_')
    with pytest.raises(TrajectorySchemaError, match="not JSON"):
        read_jsonl(path)
    assert repair_tail(path) == len(b'{"schema_version": 1, "case_')
    assert path.read_bytes() == good and repair_tail(path) == 0
    assert len(read_jsonl(path)) == 1
