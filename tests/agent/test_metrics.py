from __future__ import annotations

import numpy as np
import pytest

from lib.agent.actions import Point
from lib.agent.metrics import aggregate, dice, iou, noc, noc_key, per_turn
from lib.tools.fake import FakeTool
from lib.tools.interaction import Prompting

P = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)
G = np.array([[1, 0, 0], [1, 0, 0]], dtype=bool)
E = np.zeros((2, 3), dtype=bool)


def test_dice_and_iou_on_literal_masks():
    assert dice(P, G) == pytest.approx(0.5)  # 2*1 / (2 + 2)
    assert iou(P, G) == pytest.approx(1 / 3)  # 1 / 3
    assert dice(G, G) == 1.0 and iou(G, G) == 1.0
    assert dice(E, G) == 0.0 and iou(P, E) == 0.0


def test_both_empty_is_perfect():
    assert dice(E, E) == 1.0
    assert iou(E, E) == 1.0


def test_masks_must_be_bool_and_same_shape():
    with pytest.raises(TypeError, match="bool"):
        dice(P.astype(np.uint8) * 255, G)
    with pytest.raises(ValueError, match="nearest"):
        iou(P, np.zeros((3, 3), dtype=bool))


def test_per_turn():
    assert per_turn([E, P, G], G) == {"dice": [0.0, 0.5, 1.0], "iou": [0.0, pytest.approx(1 / 3), 1.0]}


def test_noc_reaches_85_in_a_few_clicks(two_tone_disk):
    img, gt = two_tone_disk
    tool = FakeTool()
    res = noc(tool.start(img), gt)
    # click 1 (positive, disk centre) gets the 0.8 part, click 2 adds the 0.6 part
    assert res["noc@85"] == 2 and res["noc@90"] == 2
    assert res["reached"] == {"noc@85": True, "noc@90": True}
    assert res["ious"][0] < 0.85 <= res["ious"][1]
    assert res["clicks"][0] == Point(36, 30, True)
    assert all(c.positive for c in res["clicks"])
    assert tool.encoder_calls == 1 and tool.decoder_calls == 2


@pytest.mark.parametrize("prompting", list(Prompting))
def test_noc_is_the_same_in_every_prompting_mode(two_tone_disk, prompting):
    img, gt = two_tone_disk
    assert noc(FakeTool().start(img), gt, prompting=prompting)["noc@90"] == 2


def test_noc_not_reached_counts_max_clicks():
    # the target has the background's intensity, so region growing can never isolate it
    img = np.full((20, 20), 0.5, dtype=np.float32)
    gt = np.zeros((20, 20), dtype=bool)
    gt[5:10, 5:10] = True
    res = noc(FakeTool().start(img), gt, thresholds=(0.85,), max_clicks=5)
    assert res == {**res, "noc@85": 5, "reached": {"noc@85": False}}
    assert len(res["clicks"]) == 5


def test_noc_of_an_empty_target_is_zero():
    img = np.zeros((8, 8), dtype=np.float32)
    res = noc(FakeTool().start(img), np.zeros((8, 8), dtype=bool))
    assert res["noc@85"] == 0 and res["clicks"] == []


def test_noc_argument_checks():
    s = FakeTool().start(np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        noc(s, np.zeros((8, 8), dtype=bool), thresholds=(85,))
    with pytest.raises(ValueError, match="shape"):
        noc(s, np.zeros((8, 9), dtype=bool))
    assert noc_key(0.85) == "noc@85" and noc_key(0.9) == "noc@90"


def test_aggregate_per_label_overall_and_class_mean():
    rows = [
        {"label": "kidney", "dice": 0.8, "turns": 2, "ok": True, "curve": [0.1]},
        {"label": "kidney", "dice": 0.6, "turns": 4, "ok": False},
        {"label": "liver", "dice": 1.0, "turns": 1, "latency": float("nan")},
    ]
    out = aggregate(rows)
    assert out["per_label"]["kidney"] == {"dice": pytest.approx(0.7), "turns": 3.0, "n": 2}
    assert out["per_label"]["liver"] == {"dice": 1.0, "turns": 1.0, "n": 1}
    assert out["overall"] == {"dice": pytest.approx(0.8), "turns": pytest.approx(7 / 3), "n": 3}
    assert out["class_mean"] == {"dice": pytest.approx(0.85), "turns": 2.0}
    with pytest.raises(ValueError, match="'label'"):
        aggregate([{"dice": 1.0}])
