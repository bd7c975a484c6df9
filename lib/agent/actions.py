"""The agent's action space: a box, a click, or stop.

Coordinates are pixels of the original (H, W) slice, ``(x, y)`` = (column, row); boxes are
``(x0, y0, x1, y1)`` with both corners inclusive. The text grammar of language policies
(``lib.agent.grammar``) converts to and from these; nothing else in the agent sees 0..999 integers.

Actions are plain values: they carry no validity guarantee, because a policy may propose anything.
``validate`` says why an action cannot be executed on a given slice, so the environment can penalise
and report it instead of crashing.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Box:
    """A box prompt: ``(x0, y0)`` top-left and ``(x1, y1)`` bottom-right pixel, both inclusive.

    A valid box has ``x0 < x1`` and ``y0 < y1``: SAM-style models read box corners as points, so equal
    corners describe a zero-width box (and the grammar rejects ``x2 <= x1`` likewise).
    """

    x0: int
    y0: int
    x1: int
    y1: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` as Python ints, the form ``Interaction.add_box`` takes."""
        return int(self.x0), int(self.y0), int(self.x1), int(self.y1)

    @property
    def area(self) -> int:
        """Pixels inside the box (corners inclusive)."""
        return (int(self.x1) - int(self.x0) + 1) * (int(self.y1) - int(self.y0) + 1)


@dataclass(frozen=True)
class Point:
    """A click at pixel ``(x, y)``; ``positive`` = include (foreground), else exclude (background)."""

    x: int
    y: int
    positive: bool


@dataclass(frozen=True)
class Stop:
    """End the episode; the current mask is the answer."""


#: what a policy emits each turn
Action = Box | Point | Stop


def box_iou(a: Box | Sequence[int], b: Box | Sequence[int]) -> float:
    """IoU of two boxes given as ``Box`` or ``(x0, y0, x1, y1)``, inclusive pixel corners (a box covers
    ``(x1 - x0 + 1) * (y1 - y0 + 1)`` pixels)."""
    a = a.as_tuple() if isinstance(a, Box) else tuple(a)
    b = b.as_tuple() if isinstance(b, Box) else tuple(b)
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(iw, 0) * max(ih, 0)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / max(area(a) + area(b) - inter, 1)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def validate(action: Action, shape: tuple[int, int]) -> str | None:
    """Why ``action`` cannot be executed on an (H, W) slice, or None when it can.

    Args:
        action: a ``Box``, ``Point`` or ``Stop``.
        shape: (H, W) of the slice in pixels.

    Returns:
        A one-line reason naming the offending value and the allowed range, or None.
    """
    h, w = (int(s) for s in shape)
    if isinstance(action, Stop):
        return None
    if isinstance(action, Point):
        if not (_is_int(action.x) and _is_int(action.y)):
            return f"point ({action.x!r}, {action.y!r}) must have integer pixel coordinates"
        if not isinstance(action.positive, bool):
            return f"point polarity must be True (positive) or False (negative), got {action.positive!r}"
        if not (0 <= action.x <= w - 1 and 0 <= action.y <= h - 1):
            return f"point (x={action.x}, y={action.y}) is off the {w}x{h} image (x in [0,{w - 1}], y in [0,{h - 1}])"
        return None
    if isinstance(action, Box):
        vals = (action.x0, action.y0, action.x1, action.y1)
        if not all(_is_int(v) for v in vals):
            return f"box {vals!r} must have integer pixel coordinates"
        if action.x1 <= action.x0 or action.y1 <= action.y0:
            return (
                f"box {vals} is empty or inverted: need x0 < x1 and y0 < y1 "
                "(corners are inclusive pixels; equal corners give a zero-width box)"
            )
        if not (0 <= action.x0 and 0 <= action.y0 and action.x1 <= w - 1 and action.y1 <= h - 1):
            return f"box {vals} is off the {w}x{h} image (x in [0,{w - 1}], y in [0,{h - 1}])"
        return None
    return f"{action!r} is not an action; use Box, Point or Stop"


def _int_field(v, what: str) -> int:
    # JSON has no int/float distinction, so 12.0 is fine but 12.5 means the writer had a bug
    if _is_int(v) or (isinstance(v, float) and v.is_integer()):
        return int(v)
    raise ValueError(f"{what} must be integer pixels, got {v!r}")


def to_dict(action: Action) -> dict[str, Any]:
    """JSON-ready dict in pixel coordinates: ``{"type": "box", "box": [x0, y0, x1, y1]}``,
    ``{"type": "point", "point": [x, y], "positive": true}`` or ``{"type": "stop"}``."""
    if isinstance(action, Box):
        return {"type": "box", "box": list(action.as_tuple())}
    if isinstance(action, Point):
        return {"type": "point", "point": [int(action.x), int(action.y)], "positive": bool(action.positive)}
    if isinstance(action, Stop):
        return {"type": "stop"}
    raise TypeError(f"{action!r} is not an action; use Box, Point or Stop")


def from_dict(d: dict[str, Any]) -> Action:
    """Inverse of ``to_dict``; ValueError naming the missing or malformed field."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"action dict needs a 'type' of 'box', 'point' or 'stop', got {d!r}")
    kind = d["type"]
    if kind == "stop":
        return Stop()
    if kind == "box":
        box = d.get("box")
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise ValueError(f"box action needs 'box': [x0, y0, x1, y1], got {box!r}")
        return Box(*(_int_field(v, "box coordinate") for v in box))
    if kind == "point":
        pt = d.get("point")
        if not isinstance(pt, (list, tuple)) or len(pt) != 2:
            raise ValueError(f"point action needs 'point': [x, y], got {pt!r}")
        if not isinstance(d.get("positive"), bool):
            raise ValueError(f"point action needs 'positive': true or false, got {d.get('positive')!r}")
        return Point(_int_field(pt[0], "point x"), _int_field(pt[1], "point y"), d["positive"])
    raise ValueError(f"unknown action type {kind!r}; use 'box', 'point' or 'stop'")


def prompts_from_actions(actions: Sequence[Mapping[str, Any]]) -> tuple[tuple[int, ...] | None, list[tuple]]:
    """(current box, clicks) from ``info["actions"]`` dicts in pixels: the last valid box (a new box replaces
    the old one, as ``Interaction.add_box`` does) and every valid click ``(x, y, positive)``."""
    box, clicks = None, []
    for a in actions:
        if "invalid" in a:
            continue
        if a.get("type") == "box":
            box = tuple(int(v) for v in a["box"])
        elif a.get("type") == "point":
            clicks.append((int(a["point"][0]), int(a["point"][1]), bool(a["positive"])))
    return box, clicks
