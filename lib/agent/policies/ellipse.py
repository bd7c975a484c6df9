"""The trivial mask baseline of the evaluation (docs/architecture.md): the ellipse inscribed in the hand-off box,
no model at all.

On compact, blob-like targets this scores a high Dice; a tool or an agent that does not beat it adds
nothing, so hand-off reports show it next to every policy.

It is an evaluation baseline FUNCTION, not a ``Policy``: it produces a mask without calling a tool, so
there is no action to execute and no environment to run. ``scripts/evaluate.py --policy ellipse`` scores
``ellipse_mask(box, shape)`` as a one-turn result (hand-off mode only: it needs the user's box).
"""

from __future__ import annotations

import numpy as np

from lib.agent.actions import Box, validate


def ellipse_mask(box: Box, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: pixels whose centres lie inside the ellipse inscribed in ``box``.

    Args:
        box: ``(x0, y0, x1, y1)`` inclusive pixels; the ellipse touches the outer edges of the corner
            pixels, i.e. centre ``((x0 + x1) / 2, (y0 + y1) / 2)`` and semi-axes ``(x1 - x0 + 1) / 2`` by
            ``(y1 - y0 + 1) / 2`` pixels, so a box around a disk gives that disk back.
        shape: (H, W) of the slice.
    """
    reason = validate(box, shape)
    if reason is not None:
        raise ValueError(reason)
    h, w = shape
    cx, cy = (box.x0 + box.x1) / 2.0, (box.y0 + box.y1) / 2.0
    ax, ay = (box.x1 - box.x0 + 1) / 2.0, (box.y1 - box.y0 + 1) / 2.0
    yy, xx = np.mgrid[:h, :w]
    return ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0
