"""Batched training decode == the inference session's decode, per prompting mode; loss and plan checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.agent.clicks import corrective_click, jittered_box, not_clicked_map
from lib.agent.metrics import dice
from lib.learning.click_sessions import LiveSession, SessionPlan, advance_sessions, run_sessions, segmentation_loss
from lib.learning.embedding_cache import CachedEmbedding
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
