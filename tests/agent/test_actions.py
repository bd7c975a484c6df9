from __future__ import annotations

import json

import numpy as np
import pytest

from lib.agent.actions import Box, Point, Stop, from_dict, to_dict, validate

SHAPE = (20, 30)  # (H, W)


@pytest.mark.parametrize(
    "action",
    [Box(0, 0, 29, 19), Box(3, 4, 5, 6), Point(0, 0, True), Point(29, 19, False), Stop(), Point(np.int64(3), 4, True)],
)
def test_valid_actions(action):
    assert validate(action, SHAPE) is None


@pytest.mark.parametrize(
    "action, words",
    [
        (Box(0, 0, 30, 19), "off the 30x20 image"),
        (Box(-1, 0, 5, 5), "off the"),
        (Box(5, 5, 5, 9), "empty or inverted"),
        (Box(5, 9, 8, 2), "empty or inverted"),
        (Box(1.5, 0, 5, 5), "integer"),
        (Point(30, 0, True), "off the 30x20 image"),
        (Point(0, -1, True), "off the"),
        (Point(2.0, 3, True), "integer"),
        (Point(2, 3, 1), "polarity"),
        ("box", "not an action"),
    ],
)
def test_invalid_actions_say_why(action, words):
    reason = validate(action, SHAPE)
    assert reason is not None and words in reason


@pytest.mark.parametrize("action", [Box(1, 2, 3, 4), Point(5, 6, True), Point(5, 6, False), Stop()])
def test_dict_round_trip_through_json(action):
    assert from_dict(json.loads(json.dumps(to_dict(action)))) == action


def test_to_dict_forms():
    assert to_dict(Box(1, 2, 3, 4)) == {"type": "box", "box": [1, 2, 3, 4]}
    assert to_dict(Point(5, 6, False)) == {"type": "point", "point": [5, 6], "positive": False}
    assert to_dict(Stop()) == {"type": "stop"}


@pytest.mark.parametrize(
    "d, words",
    [
        ({}, "'type'"),
        ({"type": "circle"}, "unknown action type"),
        ({"type": "box", "box": [1, 2, 3]}, "[x0, y0, x1, y1]"),
        ({"type": "box", "box": [1, 2, 3, 4.5]}, "integer"),
        ({"type": "point", "point": [1, 2]}, "'positive'"),
        ({"type": "point", "point": [1], "positive": True}, "[x, y]"),
    ],
)
def test_from_dict_errors(d, words):
    with pytest.raises(ValueError) as err:
        from_dict(d)
    assert words in str(err.value)


def test_actions_are_frozen_and_hashable():
    with pytest.raises(AttributeError):
        Box(1, 2, 3, 4).x0 = 0  # type: ignore[misc]
    assert len({Point(1, 2, True), Point(1, 2, True), Stop(), Stop()}) == 2
