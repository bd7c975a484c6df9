"""Recent answers of stateless interactive requests, so the next click can be merged onto the last answer.

Slicer's interactive (``deepgrow``) requests carry every click so far (foreground and background lists)
and the box, but neither the mask the user is looking at nor which click is new. An agent episode's
``Interaction`` has both, and merges a click's answer locally (``lib.tools.local_merge``); without them a
Slicer user's click re-draws the whole contour. This history recovers both: a request whose prompts are
an earlier request's prompts plus one click is that request's next turn, the extra click is the new one,
and the earlier answer is the mask to merge onto. Repeating earlier prompts (an undo in Slicer) gives
back the answer they got then, not a re-decoded one that may differ from what the user saw.

Prompts are compared as a multiset of clicks, (x, y, label), with the box: the order of the request's
two lists says nothing about the order of the clicks across them.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

Click = tuple[int, int, int]  # (x, y, label): pixels on the slice, 1 positive / 0 negative


@dataclass(frozen=True)
class Answer:
    """A request's answer: (H, W) bool mask on the slice's pixel grid and the model's score."""

    mask: np.ndarray
    score: float | None = None


def _key(scope: Hashable, box, points: Sequence[tuple[int, int]], labels: Sequence[int]) -> tuple:
    clicks = tuple(sorted((int(x), int(y), int(lab)) for (x, y), lab in zip(points, labels)))
    return (scope, None if box is None else tuple(int(v) for v in box), clicks)


class AnswerHistory:
    """LRU of answers keyed by (scope, box, clicks); thread-safe (MONAI Label serves requests in threads).

    Args:
        capacity: answers kept (each one (H, W) bool mask: 64 answers of 512² slices are 16 MiB).

    ``scope`` is whatever identifies the image, slice and target the prompts refer to (e.g. the slice's
    session-cache key and the label name); prompts of different scopes never match.
    """

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._answers: OrderedDict[tuple, Answer] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, scope: Hashable, box, points, labels) -> Answer | None:
        """The answer these exact prompts got before, or None."""
        key = _key(scope, box, points, labels)
        with self._lock:
            answer = self._answers.get(key)
            if answer is not None:
                self._answers.move_to_end(key)
            return answer

    def previous(self, scope: Hashable, box, points, labels) -> tuple[Answer, Click] | None:
        """The answer to these prompts minus one click, and that click (the new one); None if there is none.

        When several clicks could be the new one (the user clicked, undid, clicked elsewhere), the most
        recent matching answer wins: it is the one on the user's screen.
        """
        scope_, box_, clicks = _key(scope, box, points, labels)
        best: tuple[int, Answer, Click] | None = None
        with self._lock:
            order = {k: n for n, k in enumerate(self._answers)}
            for click in Counter(clicks):
                rest = list(clicks)
                rest.remove(click)
                key = (scope_, box_, tuple(rest))
                if key in self._answers and (best is None or order[key] > best[0]):
                    best = (order[key], self._answers[key], click)
        return None if best is None else (best[1], best[2])

    def remember(self, scope: Hashable, box, points, labels, answer: Answer) -> None:
        """Store the answer these prompts got (the oldest answers go first when full)."""
        key = _key(scope, box, points, labels)
        with self._lock:
            self._answers[key] = answer
            self._answers.move_to_end(key)
            while len(self._answers) > self.capacity:
                self._answers.popitem(last=False)
