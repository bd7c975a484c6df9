"""Local merge of a click's answer: a corrective click may only change the mask near itself.

A promptable segmenter answers every click with a whole new mask. When the mask is already good, what
is left to fix are narrow bands along the contour; a click on one of them makes the model re-draw the
whole contour, and the edges it moves far from the click are as likely to get worse as better (issue 3:
adapted LiteMedSAM, box 0.913 Dice, then 0.920, 0.917, 0.915, 0.911 after 1..4 clicks). The user meant
"fix this spot". So, as FocalClick's progressive merge does, the answer to a click is taken only where
it changed the previous mask in a region connected to the click and inside a disc around it; everywhere
else the previous mask stays.

Frames and units: masks are (H, W) bool on the original slice's pixel grid, ``mask[y, x]``; the click is
``(x, y)`` in pixels; the disc's radius is ``radius`` × the equivalent radius (sqrt(area / pi), pixels)
of the previous mask, so one setting serves a kidney and a liver.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy import ndimage

#: the served default radius (agent episodes): chosen on the sample phantoms' training studies (BENCHMARKS.md, issue 3)
DEFAULT_LOCAL_RADIUS = 0.5

#: 8-connectivity: a diagonal step keeps a changed band connected, as it is on screen
_EIGHT = np.ones((3, 3), dtype=bool)


def check_local_radius(radius: float | None, what: str = "local_radius") -> float | None:
    """``radius`` if it is a valid setting (a finite number > 0, or None = no local merge); else ValueError
    naming ``what``."""
    if radius is not None and not (isinstance(radius, numbers.Real) and math.isfinite(radius) and radius > 0):
        raise ValueError(f"{what} must be a finite number > 0 or None (no local merge), got {radius!r}")
    return radius


def equivalent_radius(area: float) -> float:
    """Radius in pixels of the disc of ``area`` pixels, sqrt(area / pi): the unit of the merge radius."""
    return float(np.sqrt(area / np.pi))


def local_merge(previous: np.ndarray, proposed: np.ndarray, click: tuple[int, int], radius: float) -> np.ndarray:
    """The previous mask with the proposed mask's changes near ``click`` applied.

    Args:
        previous: (H, W) bool mask before the click.
        proposed: (H, W) bool mask the model answered the click with.
        click: (x, y) pixel of the click.
        radius: disc radius as a multiple of the previous mask's equivalent radius (> 0).

    Returns:
        (H, W) bool. ``proposed`` itself when ``previous`` is empty (a first click has nothing to keep);
        ``previous`` when the model's answer did not change the pixels at or next to the click.
    """
    previous, proposed = np.asarray(previous, dtype=bool), np.asarray(proposed, dtype=bool)
    if previous.shape != proposed.shape or previous.ndim != 2:
        raise ValueError(f"previous {previous.shape} and proposed {proposed.shape} must be the same (H, W) shape")
    if not radius > 0:
        raise ValueError(f"local merge radius must be > 0 (a multiple of the mask's equivalent radius), got {radius}")
    area = int(previous.sum())
    if area == 0:
        return proposed.copy()
    h, w = previous.shape
    x, y = int(click[0]), int(click[1])
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"click ({x}, {y}) is outside the ({h}, {w}) mask")
    r = max(radius * equivalent_radius(area), 2.0)
    yy, xx = np.ogrid[:h, :w]
    near = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
    changed = (previous ^ proposed) & near
    components, _ = ndimage.label(changed, structure=_EIGHT)
    touching = np.unique(components[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2])
    keep = np.isin(components, touching[touching > 0])
    out = previous.copy()
    out[keep] = proposed[keep]
    return out
