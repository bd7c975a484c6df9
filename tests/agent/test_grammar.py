from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lib.agent.actions import Box, Point, Stop
from lib.agent.grammar import TOOL_NAMES, TOOL_SCHEMAS, GrammarError, encode, parse, tools_block


def test_encode_matches_the_reference_example_exactly():
    text = encode(Point(345, 167, True), (1000, 1000))
    assert text == (
        '<tool_call>{"name": "add_point", "arguments": {"point_2d": [345, 167], "point_type": "positive"}}</tool_call>'
    )


def test_encode_box_and_stop():
    assert encode(Box(0, 0, 516, 299), (300, 517)) == (
        '<tool_call>{"name": "add_bbox", "arguments": {"bbox_2d": [0, 0, 999, 999]}}</tool_call>'
    )
    assert encode(Stop(), (5, 5)) == '<tool_call>{"name": "stop_action", "arguments": {}}</tool_call>'


def test_encode_refuses_invalid_actions():
    with pytest.raises(ValueError, match="off the"):
        encode(Point(10, 0, True), (5, 5))


@st.composite
def shape_and_action(draw):
    h = draw(st.integers(1, 1000))
    w = draw(st.integers(1, 1000))
    kinds = ["point", "stop"] + (["box"] if h >= 2 and w >= 2 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "stop":
        return (h, w), Stop()
    if kind == "point":
        return (h, w), Point(draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1)), draw(st.booleans()))
    x0 = draw(st.integers(0, w - 2))
    y0 = draw(st.integers(0, h - 2))
    return (h, w), Box(x0, y0, draw(st.integers(x0 + 1, w - 1)), draw(st.integers(y0 + 1, h - 1)))


@given(shape_and_action())
@example(((300, 517), Box(0, 0, 516, 299)))
@example(((300, 517), Point(516, 299, False)))
@example(((517, 300), Box(298, 515, 299, 516)))
@example(((1, 1), Point(0, 0, True)))
@example(((2, 2), Box(0, 0, 1, 1)))
@example(((1000, 1000), Box(998, 0, 999, 1)))
def test_encode_parse_round_trip(shape_action):
    shape, action = shape_action
    assert parse(encode(action, shape), shape) == action


@pytest.mark.parametrize(
    "text, expected",
    [
        # whitespace and newlines around and inside
        (
            '<tool_call>\n  {"name": "add_point",\n "arguments": {"point_2d": [0, 999],\n'
            '   "point_type": "negative"}}\n</tool_call>',
            Point(0, 99, False),
        ),
        # unquoted keys
        ('<tool_call>{name: "add_bbox", arguments: {bbox_2d: [0, 0, 999, 999]}}</tool_call>', Box(0, 0, 99, 99)),
        # text before and after, and only the FIRST call counts
        (
            'I will click.\n<tool_call>{"name": "stop_action", "arguments": {}}</tool_call> then '
            '<tool_call>{"name": "add_point", "arguments": {"point_2d": [1, 1], "point_type": "positive"}}</tool_call>',
            Stop(),
        ),
        # legacy tools with {x, y}
        ('<tool_call>{"name": "add_positive_point", "arguments": {"x": 999, "y": 0}}</tool_call>', Point(99, 0, True)),
        ('<tool_call>{"name": "add_negative_point", "arguments": {"x": 0, "y": 999}}</tool_call>', Point(0, 99, False)),
        # integral floats, capitalised point type, stop without arguments, JSON-string arguments
        (
            '<tool_call>{"name": "add_point", "arguments": {"point_2d": [999.0, 0], '
            '"point_type": " Positive"}}</tool_call>',
            Point(99, 0, True),
        ),
        ('<tool_call>{"name": "stop_action"}</tool_call>', Stop()),
        (
            '<tool_call>{"name": "add_bbox", "arguments": "{\\"bbox_2d\\": [0, 0, 999, 999]}"}</tool_call>',
            Box(0, 0, 99, 99),
        ),
        # trailing text inside the block after the JSON object
        ('<tool_call>{"name": "stop_action", "arguments": {}} done</tool_call>', Stop()),
    ],
)
def test_parse_is_lenient_about_form(text, expected):
    assert parse(text, (100, 100)) == expected


def _call(name, args) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>"


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "no <tool_call>"),
        ("add_point(3, 4)", "no <tool_call>"),
        ('<tool_call>{"name": "stop_action", "arguments": {}}', "never closed"),
        ("<tool_call>stop please</tool_call>", "holds no JSON object"),
        ('<tool_call>{"name": "add_point", "arguments": {</tool_call>', "does not parse"),
        ("<tool_call>[1, 2]</tool_call>", "holds no JSON object"),
        ('<tool_call>{"arguments": {}}</tool_call>', "needs a string 'name'"),
        (_call("add_circle", {}), "unknown tool 'add_circle'; valid tools are add_bbox, add_point, stop_action"),
        (_call("add_bbox", {}), "add_bbox needs arguments"),
        (_call("add_bbox", {"bbox_2d": [1, 2, 3]}), "exactly 4 integers"),
        (_call("add_bbox", {"bbox_2d": "1, 2, 3, 4"}), "must be a list of 4 integers"),
        (_call("add_bbox", {"bbox_2d": [0, 0, 1000, 10]}), "value 1000 is outside 0..999"),
        (_call("add_bbox", {"bbox_2d": [-1, 0, 10, 10]}), "value -1 is outside 0..999"),
        (_call("add_bbox", {"bbox_2d": [200, 0, 100, 10]}), "x2=100 must be greater than x1=200"),
        (_call("add_bbox", {"bbox_2d": [0, 50, 10, 50]}), "y2=50 must be greater than y1=50"),
        (_call("add_point", {"point_type": "positive"}), "add_point needs arguments"),
        (_call("add_point", {"point_2d": [1, 2, 3], "point_type": "positive"}), "exactly 2 integers"),
        (_call("add_point", {"point_2d": [1.5, 2], "point_type": "positive"}), "must be integers 0..999, got 1.5"),
        (_call("add_point", {"point_2d": [True, 2], "point_type": "positive"}), "must be integers"),
        (_call("add_point", {"point_2d": [1, 2], "point_type": "maybe"}), "point_type must be"),
        (_call("add_point", {"point_2d": [1, 2]}), "point_type must be"),
        (_call("add_positive_point", {"x": 3}), "missing ['y']"),
        (_call("add_point", [1, 2]), "'arguments' must be a JSON object"),
        ('<tool_call>{"name": "add_bbox", "arguments": "bbox"}</tool_call>', "is a string that is not JSON"),
        # grammar-valid, but the box is narrower than one pixel on a 10 px image
        (_call("add_bbox", {"bbox_2d": [0, 0, 1, 500]}), "after mapping 0..999 onto the 10x10 image"),
    ],
)
def test_parse_rejections_say_why(text, words):
    with pytest.raises(GrammarError) as err:
        parse(text, (10, 10))
    assert words in str(err.value)
    assert err.value.reason == str(err.value)


def test_grammar_error_is_a_value_error():
    assert issubclass(GrammarError, ValueError)


def test_schemas_are_the_reference_tools():
    assert TOOL_NAMES == ("add_bbox", "add_point", "stop_action")
    point = TOOL_SCHEMAS[1]["function"]["parameters"]
    assert point["required"] == ["point_2d", "point_type"]
    assert point["properties"]["point_type"]["enum"] == ["positive", "negative"]
    assert TOOL_SCHEMAS[0]["function"]["parameters"]["properties"]["bbox_2d"]["minItems"] == 4
    lines = tools_block().splitlines()
    assert [json.loads(line)["function"]["name"] for line in lines] == list(TOOL_NAMES)
