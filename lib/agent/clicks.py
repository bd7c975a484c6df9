"""Click simulator: where a careful annotator would click next, given the ground truth.

RITM / SimpleClick style, as in the released MedSAM-Agent clicker, with its gaps closed:

- errors: false negatives ``FN = gt & ~pred`` (missed target, fixed by a *positive* click) and false
  positives ``FP = ~gt & pred`` (leak, fixed by a *negative* click);
- candidates are the connected components of FN and FP (4-connectivity, ``scipy.ndimage.label``), largest
  first, so the click fixes the biggest error rather than whichever error map happens to be deeper;
- each component's click is at its distance-transform maximum (exact Euclidean,
  ``scipy.ndimage.distance_transform_edt``) computed with a 1-pixel zero border, so the image border counts
  as outside and clicks stay away from it (the IBIS clicker had no padding);
- ties are broken deterministically: equal sizes by the deeper component, then FN before FP, then raster
  order of the click; equal depths inside a component by the first pixel in raster order (row, then
  column), as the reference does;
- ``not_clicked`` masks out pixels already clicked so the same pixel is never clicked twice.

Also the prompts an expert starts with: ``interior_point`` (the first Sequential-Click click),
``tight_box`` and ``jittered_box`` (the first Box-to-Point box, as a user would draw it).

Masks are (H, W) bool arrays indexed ``mask[y, x]``; points are pixels ``(x, y)`` = (column, row).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from lib.agent.actions import Box, Point

#: SAM's box augmentation perturbs each side by noise of ~10 % of the box side; a user's hand-drawn box is
#: about that loose, so trajectories and hand-off evaluation start from boxes like the ones people draw
DEFAULT_BOX_JITTER = 0.1


def _as_bool(name: str, mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) mask, got shape {mask.shape}")
    if mask.dtype != bool:
        # masks are bool end to end; silently thresholding 0/255 vs 0/1 was a bug of the released MedSAM-Agent code
        raise TypeError(f"{name} must be a bool mask, got dtype {mask.dtype}; convert with mask > 0 where you load it")
    return mask


def _padded_dt(region: np.ndarray) -> np.ndarray:
    """Euclidean distance to the nearest pixel outside ``region``, the image border counting as outside."""
    return ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def _deepest(dt: np.ndarray) -> tuple[int, int, float]:
    """(row, col, depth) of the first raster-order maximum of ``dt``."""
    flat = int(np.argmax(dt))  # argmax returns the first maximum in C (raster) order
    r, c = np.unravel_index(flat, dt.shape)
    return int(r), int(c), float(dt.flat[flat])


def not_clicked_map(shape: tuple[int, int], clicks: Sequence[Point | tuple[int, int]]) -> np.ndarray:
    """(H, W) bool, True where no click has been placed yet."""
    free = np.ones(shape, dtype=bool)
    for c in clicks:
        x, y = (c.x, c.y) if isinstance(c, Point) else c
        free[int(y), int(x)] = False
    return free


def error_candidates(
    pred: np.ndarray,
    gt: np.ndarray,
    k: int | None = 3,
    not_clicked: np.ndarray | Sequence[Point] | None = None,
) -> list[Point]:
    """Corrective clicks for the error regions of ``pred``, best first.

    Args:
        pred: (H, W) bool, the current mask.
        gt: (H, W) bool, the ground truth.
        k: at most this many candidates (None: one per error component).
        not_clicked: (H, W) bool map, True where a click may go, or the clicks placed so far; pixels
            excluded here are never proposed, and a component with no allowed pixel is skipped.

    Returns:
        One ``Point`` per error component, largest component first, at the component's interior-most
        allowed pixel; ``positive`` iff the component is missed target (FN). Empty when ``pred == gt``.
    """
    pred = _as_bool("pred", pred)
    gt = _as_bool("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same (H, W) shape")
    if not_clicked is None:
        allowed = None
    elif isinstance(not_clicked, np.ndarray):
        allowed = _as_bool("not_clicked", not_clicked)
        if allowed.shape != gt.shape:
            raise ValueError(f"not_clicked {allowed.shape} must have the mask shape {gt.shape}")
    else:
        allowed = not_clicked_map(gt.shape, not_clicked)

    ranked: list[tuple[tuple, Point]] = []
    for positive, error in ((True, gt & ~pred), (False, ~gt & pred)):
        labels, n = ndimage.label(error)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            # the bounding box plus the 1-px zero pad gives the same DT as the full image: every pixel
            # outside the box is outside the component (or outside the image)
            region = labels[sl] == i
            dt = _padded_dt(region)
            if allowed is not None:
                dt = dt * allowed[sl]
            r, c, depth = _deepest(dt)
            if depth <= 0:
                continue  # every pixel of this component has been clicked already
            y, x = r + sl[0].start, c + sl[1].start
            key = (-int(sizes[i]), -depth, 0 if positive else 1, y, x)
            ranked.append((key, Point(int(x), int(y), positive)))
    ranked.sort(key=lambda kp: kp[0])
    points = [p for _, p in ranked]
    return points if k is None else points[:k]


def corrective_click(
    pred: np.ndarray, gt: np.ndarray, not_clicked: np.ndarray | Sequence[Point] | None = None
) -> Point | None:
    """The best corrective click (see ``error_candidates``), or None when there is nothing to fix."""
    cands = error_candidates(pred, gt, k=1, not_clicked=not_clicked)
    return cands[0] if cands else None


def interior_point(gt: np.ndarray) -> Point:
    """Positive click at the interior-most pixel of ``gt`` (distance-transform maximum, border = outside).

    The first click of a Sequential-Click trajectory. ValueError for an empty mask.
    """
    gt = _as_bool("gt", gt)
    if not gt.any():
        raise ValueError("interior_point needs a non-empty ground-truth mask")
    r, c, _ = _deepest(_padded_dt(gt))
    return Point(c, r, True)


def tight_box(gt: np.ndarray) -> Box:
    """Smallest box holding every ``gt`` pixel, widened to 2 pixels per side where ``gt`` is thinner.

    A valid ``Box`` needs ``x0 < x1`` and ``y0 < y1`` (see ``actions.Box``), so a one-pixel-wide target
    gets its box grown by one pixel, inwards at the image border. ValueError for an empty mask or an
    image less than 2 pixels along a side.
    """
    gt = _as_bool("gt", gt)
    if not gt.any():
        raise ValueError("tight_box needs a non-empty ground-truth mask")
    h, w = gt.shape
    if h < 2 or w < 2:
        raise ValueError(f"a box needs an image of at least 2x2 pixels, got {w}x{h}")
    rows = np.flatnonzero(gt.any(axis=1))
    cols = np.flatnonzero(gt.any(axis=0))
    x0, x1 = _widen(int(cols[0]), int(cols[-1]), w)
    y0, y1 = _widen(int(rows[0]), int(rows[-1]), h)
    return Box(x0, y0, x1, y1)


def _widen(lo: int, hi: int, size: int) -> tuple[int, int]:
    if hi > lo:
        return lo, hi
    return (lo, lo + 1) if lo + 1 <= size - 1 else (lo - 1, lo)


def jittered_box(gt: np.ndarray, rng: np.random.Generator, jitter: float = DEFAULT_BOX_JITTER) -> Box:
    """Tight GT box with each side moved independently, as a user would draw it.

    Each of the four sides moves by ``uniform(-jitter, +jitter) * side length`` (x sides by the box width,
    y sides by its height, in pixels ``x1 - x0 + 1``), rounded to the nearest pixel and clipped to the
    image. The default 0.1 matches the noise SAM was trained with (~10 % of the box side), i.e. the
    looseness of a hand-drawn box. If rounding would collapse the box the tight box's extent is kept.

    Args:
        gt: (H, W) bool, non-empty.
        rng: the random generator (the caller owns seeding, so trajectories are reproducible).
        jitter: fraction of the side length, in [0, 0.5) so a box can never invert.
    """
    if not 0.0 <= jitter < 0.5:
        raise ValueError(f"box jitter must be in [0, 0.5) of the side length, got {jitter}")
    tb = tight_box(gt)
    h, w = gt.shape
    bw, bh = tb.x1 - tb.x0 + 1, tb.y1 - tb.y0 + 1
    d = rng.uniform(-jitter, jitter, size=4) * np.array([bw, bh, bw, bh])
    x0 = int(np.clip(np.floor(tb.x0 + d[0] + 0.5), 0, w - 1))
    y0 = int(np.clip(np.floor(tb.y0 + d[1] + 0.5), 0, h - 1))
    x1 = int(np.clip(np.floor(tb.x1 + d[2] + 0.5), 0, w - 1))
    y1 = int(np.clip(np.floor(tb.y1 + d[3] + 0.5), 0, h - 1))
    if x1 <= x0:
        x0, x1 = tb.x0, tb.x1
    if y1 <= y0:
        y0, y1 = tb.y0, tb.y1
    return Box(x0, y0, x1, y1)
