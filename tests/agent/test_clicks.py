from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lib.agent.actions import Box, Point, validate
from lib.agent.clicks import (
    corrective_click,
    error_candidates,
    interior_point,
    jittered_box,
    not_clicked_map,
    tight_box,
)


def blank(h=12, w=16):
    return np.zeros((h, w), dtype=bool)


def test_largest_missed_component_gets_a_positive_click_at_its_centre():
    gt = blank()
    gt[1:4, 1:4] = True  # 3x3
    gt[5:10, 8:13] = True  # 5x5, larger
    assert corrective_click(blank(), gt) == Point(10, 7, True)


def test_negative_click_when_the_largest_error_is_a_leak():
    gt = blank()
    gt[2:5, 2:5] = True
    pred = gt.copy()
    pred[6:11, 8:15] = True  # 35-pixel false positive
    pred[2, 2] = False  # 1-pixel false negative
    click = corrective_click(pred, gt)
    assert click is not None and not click.positive
    assert pred[click.y, click.x] and not gt[click.y, click.x]


def test_size_beats_depth():
    # a long thin FN (1 x 14 = 14 px, depth 1) is fixed before a compact FP of 9 px (depth 2)
    gt = blank()
    gt[1, 1:15] = True
    pred = blank()
    pred[6:9, 6:9] = True
    cands = error_candidates(pred, gt, k=None)
    assert [c.positive for c in cands] == [True, False]
    assert cands[1] == Point(7, 7, False)


def test_image_border_counts_as_outside():
    # a band along the top border: with the 1-px zero pad the deepest row is the band's middle (row 2),
    # without it row 0 would look deepest (5 px from the band's lower edge)
    gt = np.zeros((12, 30), dtype=bool)
    gt[0:5, :] = True
    click = corrective_click(np.zeros_like(gt), gt)
    assert click == Point(2, 2, True)  # first raster pixel at depth 3: row 2, column 2
    unpadded = ndimage.distance_transform_edt(gt)
    assert np.unravel_index(np.argmax(unpadded), gt.shape)[0] == 0  # what the padding prevents


def test_ties_are_deterministic_and_fn_first():
    gt = blank()
    gt[2:5, 2:5] = True  # FN, 9 px
    pred = blank()
    pred[2:5, 10:13] = True  # FP, 9 px, same depth
    cands = error_candidates(pred, gt)
    assert cands == [Point(3, 3, True), Point(11, 3, False)]
    # two equal FN components: raster order of their clicks decides
    gt2 = blank()
    gt2[6:9, 10:13] = True
    gt2[6:9, 2:5] = True
    assert error_candidates(blank(), gt2) == [Point(3, 7, True), Point(11, 7, True)]


def test_flat_maximum_takes_first_raster_pixel():
    gt = blank()
    gt[3:6, 2:8] = True  # 3 rows: the whole middle row is at depth 2
    assert interior_point(gt) == Point(3, 4, True)
    assert corrective_click(blank(), gt) == Point(3, 4, True)


def test_not_clicked_moves_the_click_and_skips_exhausted_components():
    gt = blank()
    gt[3:6, 3:6] = True
    first = corrective_click(blank(), gt)
    assert first == Point(4, 4, True)
    second = corrective_click(blank(), gt, not_clicked=[first])
    assert second is not None and (second.x, second.y) != (4, 4) and gt[second.y, second.x]
    # same through an explicit bool map
    assert corrective_click(blank(), gt, not_clicked=not_clicked_map(gt.shape, [first])) == second
    tiny = blank()
    tiny[0, 0] = True
    assert corrective_click(blank(), tiny, not_clicked=[(0, 0)]) is None


def test_nothing_to_fix():
    gt = blank()
    gt[3:6, 3:6] = True
    assert corrective_click(gt.copy(), gt) is None
    assert error_candidates(gt.copy(), gt) == []


def test_k_limits_the_candidates_in_rank_order():
    gt = blank(20, 20)
    gt[0:2, 0:2] = True  # 4 px
    gt[5:8, 5:8] = True  # 9 px
    gt[12:16, 12:16] = True  # 16 px
    cands = error_candidates(blank(20, 20), gt, k=2)
    assert len(cands) == 2
    assert gt[12:16, 12:16][cands[0].y - 12, cands[0].x - 12]
    assert 5 <= cands[1].x < 8 and 5 <= cands[1].y < 8


def test_masks_must_be_bool():
    gt = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(TypeError, match="bool"):
        corrective_click(gt, gt)
    with pytest.raises(ValueError, match="same"):
        corrective_click(blank(4, 4), blank(4, 5))


def test_interior_point_needs_a_target():
    with pytest.raises(ValueError, match="non-empty"):
        interior_point(blank())


def test_tight_box_and_thin_targets():
    gt = blank()
    gt[2:5, 3:9] = True
    assert tight_box(gt) == Box(3, 2, 8, 4)
    one = blank()
    one[4, 15] = True  # single pixel at the right border: grown inwards in x, downwards in y
    assert tight_box(one) == Box(14, 4, 15, 5)
    with pytest.raises(ValueError, match="non-empty"):
        tight_box(blank())


def test_jittered_box_stays_within_jitter_and_image():
    gt = blank(100, 120)
    gt[20:60, 30:90] = True  # box (30, 20, 89, 59): width 60, height 40
    tb = tight_box(gt)
    rng = np.random.default_rng(0)
    boxes = [jittered_box(gt, rng) for _ in range(200)]
    for b in boxes:
        assert validate(b, gt.shape) is None
        assert abs(b.x0 - tb.x0) <= 6 and abs(b.x1 - tb.x1) <= 6
        assert abs(b.y0 - tb.y0) <= 4 and abs(b.y1 - tb.y1) <= 4
    assert len(set(boxes)) > 50  # it does jitter
    assert jittered_box(gt, np.random.default_rng(1)) == jittered_box(gt, np.random.default_rng(1))
    assert jittered_box(gt, rng, jitter=0.0) == tb


def test_jittered_box_clips_to_the_image():
    gt = blank(10, 10)
    gt[:, :] = True
    for seed in range(20):
        assert validate(jittered_box(gt, np.random.default_rng(seed), jitter=0.4), gt.shape) is None
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        jittered_box(gt, np.random.default_rng(0), jitter=0.5)
