"""The compact policy's action codec: an ``Action`` in slice pixels <-> an ``ActionCode`` (kind, box bins, click
cell) on the policy's grid."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lib.agent.actions import Action, Box, Point, Stop
from lib.agent.policies.compact_config import BOX, NEG, POS, STOP, CompactConfig
from lib.agent.policies.compact_state import bin_to_pixel, pixel_to_bin


# -- action codec -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActionCode:
    """An action in the policy's output space: ``kind`` (KINDS index), ``box`` bins (x0, y0, x1, y1) and
    click ``cell`` (row-major index into the P x P grid). Unused fields are 0."""

    kind: int
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    cell: int = 0


def encode_action(action: Action | Mapping[str, Any], shape: tuple[int, int], config: CompactConfig) -> ActionCode:
    """Pixel action (an ``Action`` or its ``to_dict`` form) on an (H, W) slice -> ``ActionCode``."""
    h, w = shape
    g, p = config.box_bins, config.point_grid
    if isinstance(action, Mapping):
        kind = action.get("type")
        if kind == "box":
            action = Box(*action["box"])
        elif kind == "point":
            action = Point(int(action["point"][0]), int(action["point"][1]), bool(action["positive"]))
        else:
            action = Stop()
    if isinstance(action, Stop):
        return ActionCode(STOP)
    if isinstance(action, Box):
        bx0, bx1 = pixel_to_bin(action.x0, w, g), pixel_to_bin(action.x1, w, g)
        by0, by1 = pixel_to_bin(action.y0, h, g), pixel_to_bin(action.y1, h, g)
        # the distribution keeps x1 > x0 (and x0 off the last bin): tiny boxes round onto neighbouring bins
        bx0, by0 = min(bx0, g - 2), min(by0, g - 2)
        return ActionCode(BOX, (bx0, by0, max(bx1, bx0 + 1), max(by1, by0 + 1)))
    if isinstance(action, Point):
        cell = pixel_to_bin(action.y, h, p) * p + pixel_to_bin(action.x, w, p)
        return ActionCode(POS if action.positive else NEG, cell=cell)
    raise TypeError(f"{action!r} is not an action; use Box, Point or Stop")


def decode_action(code: ActionCode, shape: tuple[int, int], config: CompactConfig) -> Action:
    """``ActionCode`` -> pixel action on an (H, W) slice; a box always has x0 < x1 and y0 < y1 in pixels."""
    h, w = shape
    g, p = config.box_bins, config.point_grid
    if code.kind == STOP:
        return Stop()
    if code.kind == BOX:
        bx0, by0, bx1, by1 = code.box
        x0, x1 = _ordered(bin_to_pixel(bx0, g, w), bin_to_pixel(bx1, g, w), w)
        y0, y1 = _ordered(bin_to_pixel(by0, g, h), bin_to_pixel(by1, g, h), h)
        return Box(x0, y0, x1, y1)
    row, col = divmod(int(code.cell), p)
    return Point(bin_to_pixel(col, p, w), bin_to_pixel(row, p, h), code.kind == POS)


def _ordered(lo: int, hi: int, n: int) -> tuple[int, int]:
    # more bins than pixels can map two bins onto one pixel; widen to a 2-pixel box inside the image
    if hi > lo:
        return lo, hi
    hi = min(lo + 1, n - 1)
    return hi - 1, hi
