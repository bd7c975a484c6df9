from __future__ import annotations

import numpy as np
import pytest

from lib.agent.clicks import tight_box
from lib.agent.metrics import iou
from lib.tools.base import SegOutput
from lib.tools.fake import FakeTool, logits_to_mask, mask_to_logits
from lib.tools.interaction import Interaction, Prompting


def test_box_segments_the_central_region(two_tone_disk):
    img, gt = two_tone_disk
    tool = FakeTool()
    session = tool.start(img)
    out = session.predict(box=tight_box(gt).as_tuple())
    assert isinstance(out, SegOutput)
    assert out.mask.dtype == bool and out.mask.shape == gt.shape
    assert out.logits.shape == (1, 256, 256) and out.logits.dtype == np.float32
    # the box centre is in the 0.8 part: that part only, nothing outside the box
    assert out.mask.sum() == (gt & (img == np.float32(0.8))).sum()
    assert iou(out.mask, gt) < 1.0
    assert tool.encoder_calls == 1 and tool.decoder_calls == 1 and session.decoder_calls == 1


def test_box_whose_centre_is_background_finds_background_only():
    img = np.zeros((30, 30), dtype=np.float32)
    img[0:5, 0:5] = 1.0
    out = FakeTool().start(img).predict(box=(0, 0, 29, 29))
    assert not out.mask[0:5, 0:5].any() and out.mask[10:20, 10:20].all()


def test_clicks_add_and_remove_regions(two_tone_disk):
    img, gt = two_tone_disk
    session = FakeTool().start(img)
    pos = session.predict(points=[(36, 30), (50, 30)], labels=[1, 1])
    assert iou(pos.mask, gt) == 1.0
    neg = session.predict(points=[(36, 30), (50, 30), (50, 30)], labels=[1, 1, 0])
    assert neg.mask.sum() == (gt & (img == np.float32(0.8))).sum()
    # a negative click outside the mask changes nothing
    same = session.predict(points=[(36, 30), (0, 0)], labels=[1, 0])
    assert same.mask.sum() == (gt & (img == np.float32(0.8))).sum()


def test_logits_round_trip_exactly_up_to_256(two_tone_disk):
    _, gt = two_tone_disk
    assert np.array_equal(logits_to_mask(mask_to_logits(gt), gt.shape), gt)
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (7, 300), (256, 256), (255, 13)]:
        m = rng.random(shape) > 0.5
        back = logits_to_mask(mask_to_logits(m), shape)
        if max(shape) <= 256:
            assert np.array_equal(back, m)
        assert back.shape == shape and back.dtype == bool


def test_refinement_through_logits_matches_all_prompts(two_tone_disk):
    img, gt = two_tone_disk
    tool = FakeTool()
    session = tool.start(img)
    masks = {}
    for mode in Prompting:
        inter = Interaction(session, prompting=mode)
        inter.add_box(tight_box(gt).as_tuple())
        inter.add_point(50, 30, True)
        inter.add_point(36, 30, True)
        masks[mode] = inter.mask
    assert all(np.array_equal(m, masks[Prompting.ALL]) for m in masks.values())
    assert iou(masks[Prompting.ALL], gt) == 1.0
    assert tool.encoder_calls == 1 and tool.decoder_calls == 9


def test_all_prompts_are_stable(two_tone_disk):
    img, gt = two_tone_disk
    session = FakeTool().start(img)
    kw = dict(box=tight_box(gt).as_tuple(), points=[(50, 30), (20, 5)], labels=[1, 0])
    first = session.predict(**kw)
    again = session.predict(**kw, mask_logits=first.logits)
    assert np.array_equal(first.mask, again.mask)


def test_rgb_input_and_prompt_checks():
    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    rgb[2:6, 3:8] = 200
    session = FakeTool().start(rgb)
    assert session.shape == (10, 12)
    assert session.predict(points=[(4, 3)], labels=[1]).mask.sum() == 20
    with pytest.raises(ValueError, match="outside"):
        session.predict(points=[(12, 0)], labels=[1])
    with pytest.raises(ValueError, match="box or at least one point"):
        session.predict()
    with pytest.raises(ValueError, match="tolerance"):
        FakeTool(tolerance=1.5)
