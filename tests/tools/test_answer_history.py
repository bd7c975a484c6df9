"""Answers of stateless interactive requests (lib.tools.answer_history): next turn, undo, scopes, LRU."""

from __future__ import annotations

import numpy as np
import pytest

from lib.tools.answer_history import Answer, AnswerHistory

BOX = (10, 10, 40, 40)


def _answer(v: int) -> Answer:
    m = np.zeros((8, 8), dtype=bool)
    m.flat[v] = True
    return Answer(m, score=float(v))


def test_a_request_with_one_more_click_finds_the_earlier_answer_and_the_new_click():
    h = AnswerHistory()
    h.remember("s", BOX, [(12, 13)], [1], _answer(1))
    # Slicer lists background clicks apart from foreground ones: the new click is the negative one
    found = h.previous("s", BOX, [(12, 13), (30, 31)], [1, 0])
    assert found is not None
    answer, click = found
    assert answer.score == 1.0 and click == (30, 31, 0)
    # the order of the request's clicks does not matter, only which ones they are
    assert h.previous("s", BOX, [(30, 31), (12, 13)], [0, 1])[1] == (30, 31, 0)


def test_no_earlier_answer_when_the_box_scope_or_two_clicks_differ():
    h = AnswerHistory()
    h.remember("s", BOX, [(12, 13)], [1], _answer(1))
    assert h.previous("s", (0, 0, 40, 40), [(12, 13), (30, 31)], [1, 0]) is None  # a new box starts over
    assert h.previous("other slice", BOX, [(12, 13), (30, 31)], [1, 0]) is None
    assert h.previous("s", BOX, [(12, 13), (30, 31), (5, 5)], [1, 0, 1]) is None  # two new clicks
    assert h.previous("s", BOX, [(14, 13), (30, 31)], [1, 0]) is None  # the first click moved
    assert h.previous("s", BOX, [(12, 13)], [0]) is None  # same pixel, other label
    assert h.previous("s", BOX, [], []) is None


def test_repeated_prompts_get_their_earlier_answer_back():
    h = AnswerHistory()
    h.remember("s", BOX, [], [], _answer(0))
    h.remember("s", BOX, [(12, 13)], [1], _answer(1))
    assert h.get("s", BOX, [], []).score == 0.0  # undo of the click: the box's answer, as the user saw it
    assert h.get("s", BOX, [(12, 13)], [1]).score == 1.0
    assert h.get("s", None, [(12, 13)], [1]) is None


def test_the_most_recent_candidate_wins_when_either_click_could_be_new():
    h = AnswerHistory()
    h.remember("s", BOX, [(1, 1)], [1], _answer(1))
    h.remember("s", BOX, [(2, 2)], [1], _answer(2))
    answer, click = h.previous("s", BOX, [(1, 1), (2, 2)], [1, 1])
    assert answer.score == 2.0 and click == (1, 1, 1)
    h.get("s", BOX, [(1, 1)], [1])  # using an answer makes it the most recent
    answer, click = h.previous("s", BOX, [(1, 1), (2, 2)], [1, 1])
    assert answer.score == 1.0 and click == (2, 2, 1)


def test_the_oldest_answers_are_forgotten_first():
    h = AnswerHistory(capacity=2)
    for v in range(3):
        h.remember("s", BOX, [(v, v)], [1], _answer(v))
    assert len(h) == 2
    assert h.get("s", BOX, [(0, 0)], [1]) is None
    assert h.get("s", BOX, [(2, 2)], [1]).score == 2.0
    with pytest.raises(ValueError, match="capacity"):
        AnswerHistory(capacity=0)
