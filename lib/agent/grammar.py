"""The MedSAM-Agent tool-call text grammar, for language-model policies.

One turn of a language policy is one Hermes-style tool call::

    <tool_call>{"name": "add_bbox", "arguments": {"bbox_2d": [x1, y1, x2, y2]}}</tool_call>
    <tool_call>{"name": "add_point", "arguments": {"point_2d": [345, 167], "point_type": "positive"}}</tool_call>
    <tool_call>{"name": "stop_action", "arguments": {}}</tool_call>

The three tools and their JSON keys are the released MedSAM-Agent code's verbatim, so the released
MedSAM-Agent checkpoint works unchanged. Coordinates are integers 0..999 relative to the full slice
extent, x first; they are converted to pixels by ``lib.agent.coords`` only.

``parse`` is deliberately lenient about *form* (surrounding text, whitespace and newlines, unquoted JSON
keys, integral floats, the legacy ``add_positive_point`` / ``add_negative_point`` tools with ``{"x", "y"}``)
and strict about *meaning*: it returns only actions that can be executed on the given image, and otherwise
raises ``GrammarError`` whose message says exactly what is wrong, so the environment can report it and a
reward can penalise it. Only the first tool call of a response is used (the reference executes one per
turn).
"""

from __future__ import annotations

import json
import numbers
import re
from typing import Any

from lib.agent import coords
from lib.agent.actions import Action, Box, Point, Stop, validate

#: the three tools, as given to the model inside ``<tools></tools>`` (reference model_loader.py:88-148)
TOOL_SCHEMAS: tuple[dict[str, Any], ...] = (
    {
        "type": "function",
        "function": {
            "name": "add_bbox",
            "description": "Add a bounding box to initialize or refine the segmentation.",
            "parameters": {
                "type": "object",
                "properties": {
                    "bbox_2d": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "minItems": 4,
                        "maxItems": 4,
                        "description": "2D bounding box in [x1, y1, x2, y2] format",
                    }
                },
                "required": ["bbox_2d"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add_point",
            "description": "Add a point to refine the mask (positive to include areas, negative to exclude areas).",
            "parameters": {
                "type": "object",
                "properties": {
                    "point_2d": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "minItems": 2,
                        "maxItems": 2,
                        "description": "2D coordinate point in [x, y] format, with x and y in range [0, 999]",
                    },
                    "point_type": {
                        "type": "string",
                        "enum": ["positive", "negative"],
                        "description": "Type of point: 'positive' to expand mask, 'negative' to refine mask",
                    },
                },
                "required": ["point_2d", "point_type"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "stop_action",
            "description": "Stop the refinement process when the mask accurately covers the target object.",
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
    },
)

#: tool names a model may call, in schema order
TOOL_NAMES: tuple[str, ...] = tuple(t["function"]["name"] for t in TOOL_SCHEMAS)
#: accepted on input only (older MedSAM-Agent prompts); never produced by ``encode``
LEGACY_TOOL_NAMES: tuple[str, ...] = ("add_positive_point", "add_negative_point")

# non-greedy and first match only, like the reference inference parser
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
# a bare identifier used as a key right after "{" or ","
_UNQUOTED_KEY = re.compile(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:")


class GrammarError(ValueError):
    """A policy's text is not one executable tool call; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def tools_block() -> str:
    """The schemas one JSON object per line, as the reference puts them between ``<tools>`` tags."""
    return "\n".join(json.dumps(t) for t in TOOL_SCHEMAS)


def encode(action: Action, shape: tuple[int, int]) -> str:
    """Action in pixels of an (H, W) slice -> one ``<tool_call>...</tool_call>`` string.

    ValueError when the action is not valid on the slice (see ``actions.validate``).
    """
    reason = validate(action, shape)
    if reason is not None:
        raise ValueError(f"cannot encode an invalid action: {reason}")
    h, w = shape
    if isinstance(action, Box):
        gx0, gy0 = coords.xy_to_grammar(action.x0, action.y0, (h, w))
        gx1, gy1 = coords.xy_to_grammar(action.x1, action.y1, (h, w))
        call = {"name": "add_bbox", "arguments": {"bbox_2d": [gx0, gy0, gx1, gy1]}}
    elif isinstance(action, Point):
        gx, gy = coords.xy_to_grammar(action.x, action.y, (h, w))
        kind = "positive" if action.positive else "negative"
        call = {"name": "add_point", "arguments": {"point_2d": [gx, gy], "point_type": kind}}
    else:
        call = {"name": "stop_action", "arguments": {}}
    return f"<tool_call>{json.dumps(call)}</tool_call>"


def parse(text: str, shape: tuple[int, int]) -> Action:
    """First tool call in ``text`` -> an action in pixels of an (H, W) slice.

    Raises:
        GrammarError: no ``<tool_call>`` block, JSON that cannot be read, an unknown tool, wrong or missing
            arguments, values outside 0..999, an inverted box, or an action that maps to nothing
            executable on this image (e.g. a box narrower than one pixel on a small slice).
    """
    if not isinstance(text, str):
        raise GrammarError(f"expected the model's text, got {type(text).__name__}")
    call = _decode_call(_first_block(text))
    name = call.get("name")
    if not isinstance(name, str):
        raise GrammarError(f"tool call needs a string 'name' (one of {', '.join(TOOL_NAMES)}), got {name!r}")
    args = call.get("arguments", {})
    if isinstance(args, str):
        # some chat templates serialise arguments as a JSON string (OpenAI style)
        try:
            args = json.loads(args)
        except json.JSONDecodeError as err:
            raise GrammarError(f"{name} 'arguments' is a string that is not JSON: {err.msg}") from None
    if not isinstance(args, dict):
        raise GrammarError(f"{name} 'arguments' must be a JSON object, got {args!r}")

    h, w = shape
    if name == "stop_action":
        return Stop()
    if name == "add_bbox":
        if "bbox_2d" not in args:
            raise GrammarError(f'add_bbox needs arguments {{"bbox_2d": [x1, y1, x2, y2]}}, got keys {sorted(args)}')
        gx0, gy0, gx1, gy1 = _grammar_ints(args["bbox_2d"], "bbox_2d", 4, "[x1, y1, x2, y2]")
        order = "([x1, y1, x2, y2] = top-left, bottom-right)"
        if gx1 <= gx0:
            raise GrammarError(f"bbox_2d x2={gx1} must be greater than x1={gx0} {order}")
        if gy1 <= gy0:
            raise GrammarError(f"bbox_2d y2={gy1} must be greater than y1={gy0} {order}")
        x0, y0 = coords.grammar_to_xy(gx0, gy0, (h, w))
        x1, y1 = coords.grammar_to_xy(gx1, gy1, (h, w))
        action: Action = Box(x0, y0, x1, y1)
    elif name == "add_point":
        if "point_2d" not in args:
            raise GrammarError(f'add_point needs arguments "point_2d": [x, y], "point_type", got keys {sorted(args)}')
        gx, gy = _grammar_ints(args["point_2d"], "point_2d", 2, "[x, y]")
        kind = args.get("point_type")
        kind_norm = kind.strip().lower() if isinstance(kind, str) else kind
        if kind_norm not in ("positive", "negative"):
            raise GrammarError(f'add_point point_type must be "positive" or "negative", got {kind!r}')
        x, y = coords.grammar_to_xy(gx, gy, (h, w))
        action = Point(x, y, kind_norm == "positive")
    elif name in LEGACY_TOOL_NAMES:
        missing = [k for k in ("x", "y") if k not in args]
        if missing:
            raise GrammarError(f'{name} needs arguments {{"x": int, "y": int}}, missing {missing}')
        gx, gy = _grammar_ints([args["x"], args["y"]], f"{name} x/y", 2, "x, y")
        x, y = coords.grammar_to_xy(gx, gy, (h, w))
        action = Point(x, y, name == "add_positive_point")
    else:
        raise GrammarError(f"unknown tool {name!r}; valid tools are {', '.join(TOOL_NAMES)}")

    reason = validate(action, shape)
    if reason is not None:
        raise GrammarError(f"{reason} (after mapping 0..999 onto the {w}x{h} image)")
    return action


def _first_block(text: str) -> str:
    match = _BLOCK.search(text)
    if match is None:
        if "<tool_call>" in text:
            raise GrammarError("'<tool_call>' is opened but never closed with '</tool_call>'")
        raise GrammarError("no <tool_call>...</tool_call> block in the text; answer with exactly one tool call")
    return match.group(1)


def _decode_call(body: str) -> dict[str, Any]:
    start = body.find("{")
    if start < 0:
        raise GrammarError(f"the <tool_call> block holds no JSON object: {body[:80]!r}")
    body = body[start:]
    decoder = json.JSONDecoder()
    # repairs the reference applies too: quote bare keys, then drop newlines (verl's salvage)
    first_err = None
    keys_quoted = _UNQUOTED_KEY.sub(r'\1"\2":', body)
    for candidate in (body, keys_quoted, keys_quoted.replace("\n", " ")):
        try:
            obj, _ = decoder.raw_decode(candidate)
        except json.JSONDecodeError as err:
            first_err = first_err or err
            continue
        if not isinstance(obj, dict):
            raise GrammarError(f"the tool call must be a JSON object with 'name' and 'arguments', got {obj!r}")
        return obj
    raise GrammarError(
        f"the <tool_call> JSON does not parse: {first_err.msg} at character {first_err.pos} of {body[:80]!r}"
    )


def _grammar_ints(values, key: str, n: int, form: str) -> list[int]:
    if not isinstance(values, (list, tuple)):
        raise GrammarError(f"{key} must be a list of {n} integers {form}, got {values!r}")
    if len(values) != n:
        raise GrammarError(f"{key} must have exactly {n} integers {form}, got {len(values)}: {list(values)!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not (isinstance(v, numbers.Integral) or (isinstance(v, float) and v.is_integer())):
            raise GrammarError(f"{key} values must be integers 0..999, got {v!r}")
        if not 0 <= v <= coords.GRAMMAR_MAX:
            raise GrammarError(f"{key} value {v!r} is outside 0..999 (coordinates are relative to the image, 0..999)")
        out.append(int(v))
    return out
