"""Per-episode prompt bookkeeping over a shared ``ToolSession``.

An ``Interaction`` is what an episode (a Slicer request, an agent rollout) talks to: it keeps the
box, the clicks and the last low-res logits, and decides which of them go to the model on each turn
(``Prompting``). The embedding-holding ``ToolSession`` stays immutable, so many interactions can
share one cached session without cross-talk.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np

from lib.tools.base import SegOutput, ToolSession
from lib.tools.local_merge import check_local_radius, local_merge


class Prompting(str, Enum):
    """Which prompts reach the model on each turn.

    - ``newest``: the reference MedSAM-Agent pattern. A box goes with the previous logits; a click
      goes alone with the previous logits (earlier clicks and the box survive only through the logits).
    - ``all``: the box and every click so far, no logits.
    - ``all_logits``: the box and every click so far, plus the previous logits.
    """

    NEWEST = "newest"
    ALL = "all"
    ALL_LOGITS = "all_logits"


@dataclass
class Interaction:
    """Prompt state of one episode.

    Attributes:
        session: the encoded slice.
        prompting: which prompts go to the model each turn.
        box: last box (x0, y0, x1, y1) inclusive pixels, or None.
        points: clicks so far, (x, y) pixels.
        labels: 1 positive / 0 negative per click.
        last: the last ``SegOutput`` (None before the first prompt).
        local_radius: None = a click's answer replaces the mask; else the answer is merged locally
            (``lib.tools.local_merge``: only changes connected to the click, within ``local_radius`` × the
            mask's equivalent radius). ``last.logits`` stay the model's own answer either way.
    """

    session: ToolSession
    prompting: Prompting = Prompting.ALL
    box: tuple[int, int, int, int] | None = None
    points: list[tuple[int, int]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    last: SegOutput | None = None
    local_radius: float | None = None

    def __post_init__(self) -> None:
        self.prompting = Prompting(self.prompting)
        check_local_radius(self.local_radius)

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool: the current mask (all False before the first prompt)."""
        if self.last is None:
            return np.zeros(self.session.shape, dtype=bool)
        return self.last.mask

    def add_box(self, box) -> SegOutput:
        """Set (or replace) the box and decode."""
        box = tuple(int(round(v)) for v in box)
        self.session.validate_prompts(box, (), ())
        self.box = box
        if self.prompting is Prompting.NEWEST:
            out = self.session.predict(box=box, mask_logits=self._logits())
        else:
            out = self._predict_all()
        self.last = out
        return out

    def add_point(self, x: float, y: float, positive: bool) -> SegOutput:
        """Add one click and decode."""
        pt = (int(round(x)), int(round(y)))
        lab = 1 if positive else 0
        self.session.validate_prompts(None, [pt], [lab])
        self.points.append(pt)
        self.labels.append(lab)
        if self.prompting is Prompting.NEWEST:
            out = self.session.predict(points=[pt], labels=[lab], mask_logits=self._logits())
        else:
            out = self._predict_all()
        if self.local_radius is not None and self.last is not None:
            out = replace(out, mask=local_merge(self.last.mask, out.mask, pt, self.local_radius))
        self.last = out
        return out

    def _logits(self) -> np.ndarray | None:
        return None if self.last is None else self.last.logits

    def _predict_all(self) -> SegOutput:
        logits = self._logits() if self.prompting is Prompting.ALL_LOGITS else None
        return self.session.predict(box=self.box, points=self.points, labels=self.labels, mask_logits=logits)
