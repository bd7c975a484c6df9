"""Batched training decode == the inference session's decode, per prompting mode; loss and plan checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.agent.actions import Point
from lib.agent.clicks import corrective_click, jittered_box, not_clicked_map
from lib.agent.metrics import dice
from lib.learning.segmenter.click_sessions import (
    ClickTarget,
    LiveSession,
    SessionPlan,
    advance_sessions,
    click_focus,
    run_sessions,
    segmentation_loss,
)
from lib.learning.segmenter.embedding_cache import CachedEmbedding
from lib.tools.interaction import Interaction, Prompting


@pytest.mark.parametrize(("mode", "box_first"), [(Prompting.ALL, True), (Prompting.ALL_LOGITS, True),
                                                  (Prompting.NEWEST, True), (Prompting.ALL_LOGITS, False)])
def test_simulated_session_matches_interaction(ft, mode, box_first):
    """The training simulator and an ``Interaction`` over the inference session agree turn by turn."""
    ft.reset()
    it = ft.train.items[0]
    box = jittered_box(it.gt, np.random.default_rng(1)) if box_first else None
    with torch.no_grad():
        trace = run_sessions(ft.backend, ft.train.embeddings, [it], SessionPlan([box], [1], mode))
    session = ft.backend.session(CachedEmbedding(ft.train.embeddings[it.index], it.resized, it.shape))
    inter, clicks, dices = Interaction(session, prompting=mode), [], []
    if box_first:
        inter.add_box(box.as_tuple())
        dices.append(dice(inter.mask, it.gt))
    for _ in range(2 if not box_first else 1):
        c = corrective_click(inter.mask, it.gt, not_clicked=not_clicked_map(it.gt.shape, clicks))
        clicks.append(c)
        inter.add_point(c.x, c.y, c.positive)
        dices.append(dice(inter.mask, it.gt))
    assert trace.clicks[0] == clicks
    np.testing.assert_allclose(trace.dice[0], dices, atol=1e-6)


def test_loss_ignores_padding_and_is_zero_for_a_perfect_confident_prediction():
    target = torch.zeros(1, 8, 8)
    target[0, 2:5, 2:5] = 1
    valid = torch.zeros(1, 8, 8)
    valid[0, :6, :] = 1
    logits = (target * 2 - 1) * 50
    logits[0, 6:, :] = 50  # wrong, but in the padding
    assert float(segmentation_loss(logits, target, valid)[0]) < 1e-3
    assert float(segmentation_loss(-logits, target, valid)[0]) > 1.0


def test_click_focus_is_a_disc_around_the_newest_click_in_the_low_res_frame():
    """A 200x100 slice fills the top 128 rows of a 256² frame (scale 1.28); a target of radius 20 px and
    focus radius 0.5 give a disc of 0.5 * 20 * 1.28 = 12.8 low-res px around the click's mapped position."""
    yy, xx = np.mgrid[:100, :200]
    gt = (xx - 60) ** 2 + (yy - 50) ** 2 <= 20**2
    item = ClickTarget(index=0, gt=gt, target=torch.zeros(256, 256), resized=(128, 256))
    f = click_focus([item, item], [Point(100, 50, False), None], 256, weight=4.0, radius=0.5)
    assert f.shape == (2, 256, 256) and float(f[1].abs().sum()) == 0  # no click yet: no focus
    assert set(torch.unique(f[0]).tolist()) == {0.0, 4.0}
    ys, xs = torch.nonzero(f[0], as_tuple=True)
    r = 0.5 * np.sqrt(gt.sum() / np.pi) * 1.28
    assert len(ys) == pytest.approx(np.pi * r**2, rel=0.05)
    assert float(xs.float().mean()) == pytest.approx(100.5 * 1.28 - 0.5, abs=0.2)
    assert float(ys.float().mean()) == pytest.approx(50.5 * 1.28 - 0.5, abs=0.2)
    assert click_focus([item], [Point(100, 50, True)], 256, weight=0.0, radius=0.5) is None
    assert click_focus([item], [None], 256, weight=4.0, radius=0.5) is None


def test_focus_adds_its_weight_times_the_bce_inside_the_disc():
    target = torch.zeros(1, 8, 8)
    valid = torch.ones(1, 8, 8)
    logits = torch.full((1, 8, 8), -6.0)
    logits[0, :2, :2] = 3.0  # confidently right except in the top-left corner
    focus = torch.zeros(1, 8, 8)
    base = float(segmentation_loss(logits, target, valid, dice_weight=0.0)[0])
    focus[0, 4:, 4:] = 4.0  # away from the error: adds only the (small) BCE of the right pixels there
    far = float(segmentation_loss(logits, target, valid, dice_weight=0.0, focus=focus)[0])
    focus[0] = 0
    focus[0, :2, :2] = 4.0  # on the error
    near = float(segmentation_loss(logits, target, valid, dice_weight=0.0, focus=focus)[0])
    bce_corner = float(torch.nn.functional.softplus(torch.tensor(3.0))) * 4 / 64
    assert near - base == pytest.approx(4.0 * bce_corner, rel=1e-4)
    assert far - base < 0.1 * (near - base)


def test_plan_validation():
    with pytest.raises(ValueError, match="budgets"):
        SessionPlan([None], [1, 2])
    with pytest.raises(ValueError, match=">= 0"):
        SessionPlan([None], [-1])



def test_no_harm_term_adds_exactly_the_loss_increase_of_the_last_click(ft):
    """no_harm_weight adds w * relu(L_last - L_prev) per clicked session and nothing for first-prompt-only ones."""
    ft.reset()
    items = ft.train.items[:2]
    boxes = [jittered_box(it.gt, np.random.default_rng(3)) for it in items]

    def loss(its, bxs, budgets, **kw):
        return float(run_sessions(ft.backend, ft.train.embeddings, its, SessionPlan(bxs, budgets, Prompting.ALL),
                                  grad=True, **kw).loss)

    l_box = loss([items[1]], [boxes[1]], [0])  # session 1 before its click
    l_click = loss([items[1]], [boxes[1]], [1])  # session 1 after its click
    base = loss(items, boxes, [0, 1])
    harm = loss(items, boxes, [0, 1], no_harm_weight=2.0)
    # the batch loss is the mean over the 2 sessions: + 2.0 * relu(increase) / 2
    assert harm - base == pytest.approx(max(l_click - l_box, 0.0), abs=1e-5)
    assert loss(items, boxes, [0, 0], no_harm_weight=2.0) == pytest.approx(loss(items, boxes, [0, 0]), abs=1e-6)


@pytest.mark.parametrize("mode", [Prompting.ALL, Prompting.ALL_LOGITS])
def test_live_sessions_advanced_turn_by_turn_replay_a_whole_session(ft, mode):
    """Continued-session training: advancing sessions one turn per call (with gradients) places the same
    clicks and decodes the same masks as running the whole session at once, when the weights do not move."""
    ft.reset()
    items = [ft.train.items[i % len(ft.train.items)] for i in range(3)]  # one item may run twice
    rng = np.random.default_rng(2)
    boxes = [jittered_box(items[0].gt, rng), None, jittered_box(items[2].gt, rng)]
    budgets = [2, 1, 0]
    with torch.no_grad():
        whole = run_sessions(ft.backend, ft.train.embeddings, items, SessionPlan(boxes, budgets, mode))
    live = [LiveSession(it, b, k, mode) for it, b, k in zip(items, boxes, budgets)]
    losses = []
    while not all(s.done for s in live):
        loss = advance_sessions(ft.backend, ft.train.embeddings, live)
        assert loss is not None and loss.requires_grad
        losses.append(float(loss))
    assert advance_sessions(ft.backend, ft.train.embeddings, live) is None  # nothing left to decode
    assert len(losses) == max(budgets) + 1
    assert [s.clicks for s in live] == whole.clicks
    assert [s.turn for s in live] == [len(d) for d in whole.dice]
    last = [ft.backend.to_original(s.prev[0, 0], s.item.resized, s.item.shape) for s in live]
    np.testing.assert_allclose([dice(m, s.item.gt) for m, s in zip(last, live)], [d[-1] for d in whole.dice],
                               atol=1e-6)
