"""The one conversion between agent-grammar integers 0..999 and pixels.

Inference, training, trajectory export and evaluation all go through these functions; no other module
divides by 999 or 1000 (the reference used ``round(v / 999 * W)`` at inference and ``floor(v * W / 1000)``
in RL, so a trained policy's clicks landed up to one pixel apart in the released MedSAM-Agent code).

Frame: the 0..999 integers are relative to the *full extent of the original slice*, x (column) along the
width and y (row) along the height; 0 is the first pixel centre and 999 the last one. The VLM image is a
plain stretch of the slice to 512² (no letterbox), so a position has the same grammar integers on the
slice and on the model's image and no offset or scale has to be undone (the reference letterboxed at
inference but decoded as if it had stretched).

Exactness: for a side of ``size <= 1000`` pixels, pixel -> grammar -> pixel is the identity, because
neighbouring pixels are at least one grammar step apart (999 / (size - 1) >= 1) and each conversion
rounds to the nearest integer. For larger sides grammar -> pixel -> grammar is the identity instead and
a pixel comes back within half a grammar step, (size - 1) / 1998 pixels, rounded.

Rounding is half-up in exact integer arithmetic (not Python's banker's ``round``), so results do not
depend on float representation.
"""

from __future__ import annotations

import numbers

#: largest grammar integer; the grammar range is 0..GRAMMAR_MAX inclusive
GRAMMAR_MAX = 999


def _check_int(name: str, value) -> int:
    # bool is an Integral too, but True as a coordinate is always a caller bug
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}); round it first")
    return int(value)


def _check_size(size) -> int:
    size = _check_int("size", size)
    if size < 1:
        raise ValueError(f"image side must be >= 1 pixel, got {size}")
    return size


def _div_round_half_up(num: int, den: int) -> int:
    """round(num / den) with halves rounded up, exact for non-negative integers."""
    return (2 * num + den) // (2 * den)


def grammar_to_pixel(v: int, size: int) -> int:
    """Grammar integer (0..999) -> pixel index along one image side.

    Args:
        v: grammar integer; values outside 0..999 are clamped to the border (``grammar.parse`` rejects
            them before they get here).
        size: number of pixels along that side (width for x, height for y).

    Returns:
        ``round(v * (size - 1) / 999)`` clamped to ``[0, size - 1]``.
    """
    v = min(max(_check_int("grammar value", v), 0), GRAMMAR_MAX)
    size = _check_size(size)
    return min(max(_div_round_half_up(v * (size - 1), GRAMMAR_MAX), 0), size - 1)


def pixel_to_grammar(p: int, size: int) -> int:
    """Pixel index along one image side -> grammar integer (0..999).

    Args:
        p: pixel index; values outside ``[0, size - 1]`` are clamped to the border.
        size: number of pixels along that side.

    Returns:
        ``round(p * 999 / (size - 1))``; 0 for a one-pixel side.
    """
    size = _check_size(size)
    p = min(max(_check_int("pixel", p), 0), size - 1)
    if size == 1:
        return 0
    return _div_round_half_up(p * GRAMMAR_MAX, size - 1)


def xy_to_grammar(x: int, y: int, shape: tuple[int, int]) -> tuple[int, int]:
    """Pixel (x, y) = (column, row) of an (H, W) slice -> grammar (gx, gy)."""
    h, w = shape
    return pixel_to_grammar(x, w), pixel_to_grammar(y, h)


def grammar_to_xy(gx: int, gy: int, shape: tuple[int, int]) -> tuple[int, int]:
    """Grammar (gx, gy) -> pixel (x, y) = (column, row) of an (H, W) slice."""
    h, w = shape
    return grammar_to_pixel(gx, w), grammar_to_pixel(gy, h)
