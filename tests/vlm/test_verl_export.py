"""verl export: the parquet columns of the reference recipe and our reward entry point."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from lib.agent.rewards import episode_reward
from lib.agent.trajectories import rle_encode
from lib.learning.policy.verl_export import as_bool_mask, compute_score, png_bytes, rl_rows, write_parquet
from tests.vlm.scenes import two_tone_disk

BOX = '<tool_call>{"name": "add_bbox", "arguments": {"bbox_2d": [100, 100, 900, 900]}}</tool_call>'
CLICK = '<tool_call>{"name": "add_point", "arguments": {"point_2d": [500, 500], "point_type": "positive"}}</tool_call>'
STOP = '<tool_call>{"name": "stop_action", "arguments": {}}</tool_call>'


def test_rows_have_the_reference_columns_and_survive_parquet(tmp_path):
    import pyarrow.parquet as pq

    img, gt = two_tone_disk(40, 50)
    rows = rl_rows([(img, gt, "disk", {"case_id": "c0", "slice_index": 3, "axis": 0})], dataset_name="demo")
    path = write_parquet(rows, tmp_path / "train.parquet")
    back = pq.read_table(path).to_pylist()[0]
    assert back["data_source"] == "medsam_agent/demo" and back["agent_name"] == "medsam_iterative_agent"
    assert back["prompt"][0]["role"] == "system" and back["prompt"][1]["content"].startswith("<image>The target")
    assert back["extra_info"]["target_description"] == "disk" and back["extra_info"]["shape"] == [40, 50]
    original = np.asarray(Image.open(io.BytesIO(back["images"][0]["bytes"])))
    assert original.shape == (40, 50, 3)  # the original slice; the agent loop makes the 512² model image
    gt_png = np.asarray(Image.open(io.BytesIO(back["reward_model"]["ground_truth"]["bytes"])))
    assert set(np.unique(gt_png)) == {0, 255} and np.array_equal(gt_png > 0, gt)


def test_compute_score_is_our_episode_reward():
    _, gt = two_tone_disk(40, 50)
    first = np.zeros_like(gt)
    first[10:30, 15:35] = gt[10:30, 15:35]
    masks = [first, gt]
    out = compute_score("medsam_agent/demo", BOX + "\n" + CLICK + "\n" + STOP, {"bytes": png_bytes(gt * np.uint8(255))},
                        {"pred_mask": [m.astype(np.uint8) * 255 for m in masks]})
    iou1 = (first & gt).sum() / (first | gt).sum()
    dice1 = 2 * (first & gt).sum() / (first.sum() + gt.sum())
    expected, terms = episode_reward([iou1, 1.0], [dice1, 1.0], n_actions=2, stopped=True)
    assert out["score"] == pytest.approx(expected) and out["iou"] == 1.0 and out["stopped"] is True
    assert out["format"] == 1.0 and out["n_actions"] == 2


def test_mask_conventions_do_not_change_the_score():
    _, gt = two_tone_disk(40, 50)
    pred = np.roll(gt, 3, axis=1)
    scores = [
        compute_score("s", BOX, gt_form, {"pred_mask": [pred_form]})["score"]
        for gt_form, pred_form in [
            (gt, pred),
            (gt.astype(np.uint8), pred.astype(np.uint8)),  # 0/1: the reference's > 127 read these as empty
            ({"bytes": png_bytes(gt.astype(np.uint8) * 255)}, Image.fromarray(pred.astype(np.uint8) * 255)),
            (json.dumps(rle_encode(gt)), rle_encode(pred)),
        ]
    ]
    assert max(scores) - min(scores) < 1e-12
    # a prediction at another resolution is resampled (nearest) to the ground truth
    small = np.asarray(Image.fromarray(pred.astype(np.uint8) * 255).resize((25, 20), Image.NEAREST))
    assert compute_score("s", BOX, gt, {"pred_mask": [small]})["iou"] > 0.5


def test_no_masks_and_no_stop_scores_low():
    _, gt = two_tone_disk(40, 50)
    out = compute_score("s", "I refuse", gt, {})
    assert out["score"] == 0.0 and out["n_actions"] == 0 and not out["stopped"]
    assert as_bool_mask(np.array([[0, 255]], dtype=np.uint8)).tolist() == [[False, True]]
