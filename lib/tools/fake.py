"""``FakeTool``: a deterministic test double of a promptable segmenter (no weights, numpy/scipy only).

For unit tests of pure logic (environment, expert, metrics, rewards, rollouts) only; it is not a model
and must never be offered to users. It behaves like a plausible region-growing segmenter on synthetic
images made of flat regions of distinct intensity:

- box: the pixels inside the box whose intensity is within ``tolerance`` of the median intensity of the
  box's central region, kept only in the connected component(s) that touch that central region;
- positive click: adds the connected region of similar intensity (within ``tolerance`` of the clicked
  pixel) around the click;
- negative click: removes, from the connected component of the current mask under the click, the part
  of similar intensity to the clicked pixel (a leak into a differently bright region goes, the rest
  stays); a negative click outside the mask changes nothing.

Prompts apply in order: the box (it replaces the previous mask), then each click. When ``mask_logits``
is given without a box, the previous mask decoded from them is the starting state, so the reference's
"newest prompt + previous logits" mode refines like the real backends. Sending the box and all clicks
again always gives the same answer (clicks are idempotent), so every ``Prompting`` mode is stable.

Logits encode the mask at 256² by nearest-neighbour sampling (+10 inside, -10 outside); for slices up to
256 pixels per side decoding them gives the mask back exactly, larger slices lose detail like SAM's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from lib.tools.base import BOX, MASK_INPUT, POINT, SegOutput, Tool, ToolSession

#: side of the low-resolution logits, as SAM's mask decoder
LOGIT_SIZE = 256
_LOGIT_MAG = 10.0


def mask_to_logits(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (1, 256, 256) float32 logits, sampling the pixel under each logit cell's centre."""
    h, w = mask.shape
    rows = ((np.arange(LOGIT_SIZE) + 0.5) * h / LOGIT_SIZE).astype(int)
    cols = ((np.arange(LOGIT_SIZE) + 0.5) * w / LOGIT_SIZE).astype(int)
    low = mask[np.ix_(rows, cols)]
    return np.where(low, _LOGIT_MAG, -_LOGIT_MAG).astype(np.float32)[None]


def logits_to_mask(logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(1, 256, 256) logits -> (H, W) bool (logit > 0), sampling the cell under each pixel's centre."""
    logits = np.asarray(logits)
    if logits.shape != (1, LOGIT_SIZE, LOGIT_SIZE):
        raise ValueError(f"mask_logits must have shape (1, {LOGIT_SIZE}, {LOGIT_SIZE}), got {logits.shape}")
    h, w = shape
    rows = ((np.arange(h) + 0.5) * LOGIT_SIZE / h).astype(int)
    cols = ((np.arange(w) + 0.5) * LOGIT_SIZE / w).astype(int)
    return logits[0][np.ix_(rows, cols)] > 0


@dataclass
class FakeSession(ToolSession):
    """An "encoded" slice: just the grey image. Counts decoder calls (``decoder_calls``)."""

    image: np.ndarray = field(default=None, repr=False)
    tool: FakeTool | None = field(default=None, repr=False)
    decoder_calls: int = 0

    def predict(
        self,
        box: Sequence[float] | None = None,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] = (),
        mask_logits: np.ndarray | None = None,
    ) -> SegOutput:
        """Decode a mask (see the module docstring). Coordinates: pixels (x, y) of the slice."""
        self.validate_prompts(box, points, labels)
        self.decoder_calls += 1
        if self.tool is not None:
            self.tool.decoder_calls += 1
        tol = self.tool.tolerance if self.tool is not None else FakeTool.tolerance
        central = self.tool.central_fraction if self.tool is not None else FakeTool.central_fraction
        if box is not None:
            mask = self._box_mask(tuple(int(round(v)) for v in box), tol, central)
        elif mask_logits is not None:
            mask = logits_to_mask(mask_logits, self.shape)
        else:
            mask = np.zeros(self.shape, dtype=bool)
        for (x, y), lab in zip(points, labels, strict=True):
            x, y = int(round(x)), int(round(y))
            similar = self._similar_region(x, y, tol)
            if int(lab) == 1:
                mask = mask | similar
            elif mask[y, x]:
                comp, _ = ndimage.label(mask)
                mask = mask & ~((comp == comp[y, x]) & similar)
        score = 0.9 if mask.any() else 0.0
        return SegOutput(mask=mask, logits=mask_to_logits(mask), score=score, decoder_ms=0.0)

    def _similar_region(self, x: int, y: int, tol: float) -> np.ndarray:
        similar = np.abs(self.image - self.image[y, x]) <= tol
        comp, _ = ndimage.label(similar)
        return comp == comp[y, x]

    def _box_mask(self, box: tuple[int, int, int, int], tol: float, central: float) -> np.ndarray:
        x0, y0, x1, y1 = box
        crop = self.image[y0 : y1 + 1, x0 : x1 + 1]
        ch, cw = crop.shape
        # central region: the middle `central` fraction of each side, at least one pixel
        mh, mw = max(1, round(ch * central)), max(1, round(cw * central))
        r0, c0 = (ch - mh) // 2, (cw - mw) // 2
        centre = np.zeros(crop.shape, dtype=bool)
        centre[r0 : r0 + mh, c0 : c0 + mw] = True
        similar = np.abs(crop - np.median(crop[centre])) <= tol
        comp, _ = ndimage.label(similar)
        keep = np.unique(comp[centre & similar])
        inside = np.isin(comp, keep[keep > 0])
        mask = np.zeros(self.shape, dtype=bool)
        mask[y0 : y1 + 1, x0 : x1 + 1] = inside
        return mask


class FakeTool(Tool):
    """Test double of a promptable segmenter; see the module docstring. Not a model.

    Attributes:
        tolerance: intensity difference (image in [0, 1]) still counted as "the same region".
        central_fraction: side fraction of a box's central region whose median intensity is the target's.
        encoder_calls: ``start`` calls so far.
        decoder_calls: ``predict`` calls so far, over all sessions.
    """

    name = "fake"
    capabilities = frozenset({BOX, POINT, MASK_INPUT})
    weights = "none (FakeTool test double)"
    tolerance: float = 0.1
    central_fraction: float = 0.5

    def __init__(self, tolerance: float = 0.1, central_fraction: float = 0.5):
        if not 0.0 <= tolerance < 1.0:
            raise ValueError(f"FakeTool tolerance is an intensity difference in [0, 1), got {tolerance}")
        if not 0.0 < central_fraction <= 1.0:
            raise ValueError(f"FakeTool central_fraction must be in (0, 1], got {central_fraction}")
        self.tolerance = float(tolerance)
        self.central_fraction = float(central_fraction)
        self.encoder_calls = 0
        self.decoder_calls = 0

    def start(self, image: np.ndarray) -> FakeSession:
        """ "Encode" an (H, W) float image in [0, 1] or an (H, W, 3) uint8 RGB image (averaged to grey)."""
        img = np.asarray(image)
        if img.ndim == 3 and img.shape[2] == 3:
            img = img.astype(np.float32).mean(axis=2) / 255.0
        elif img.ndim != 2:
            raise ValueError(f"FakeTool.start needs an (H, W) or (H, W, 3) image, got shape {img.shape}")
        self.encoder_calls += 1
        img = img.astype(np.float32)
        return FakeSession(shape=(int(img.shape[0]), int(img.shape[1])), nbytes=img.nbytes, image=img, tool=self)
