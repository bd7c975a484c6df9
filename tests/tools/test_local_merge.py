"""Local merge of a click's answer (lib.tools.local_merge) and its use by Interaction."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from lib.tools.base import SegOutput, ToolSession
from lib.tools.interaction import Interaction, Prompting
from lib.tools.local_merge import local_merge


def _square(shape=(64, 64), y0=20, y1=40, x0=20, x1=40) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_keeps_only_the_change_connected_to_the_click():
    prev = _square()
    proposed = prev.copy()
    proposed[20:40, 40:43] = True  # grows on the right, where the click is
    proposed[20:40, 20:22] = False  # and shrinks on the far left side
    merged = local_merge(prev, proposed, click=(41, 30), radius=1.0)
    assert merged[20:40, 40:43].all()  # the near change is taken
    assert merged[20:40, 20:22].all()  # the far change is not
    assert merged.sum() == prev.sum() + 60


def test_disc_bounds_a_change_that_runs_along_the_whole_contour():
    prev = _square()
    proposed = _square(y0=19, y1=41, x0=19, x1=41)  # a one-pixel ring: one connected change
    merged = local_merge(prev, proposed, click=(40, 30), radius=0.3)  # r = 0.3 * 11.3 px = 3.4 px
    added = merged & ~prev
    assert added[30, 40] and 0 < added.sum() < (proposed & ~prev).sum()
    ys, xs = np.nonzero(added)
    assert ((xs - 40) ** 2 + (ys - 30) ** 2).max() <= 3.4**2


def test_no_change_at_the_click_keeps_the_previous_mask():
    prev = _square()
    proposed = prev.copy()
    proposed[50:55, 50:55] = True  # a change elsewhere only
    assert np.array_equal(local_merge(prev, proposed, click=(30, 30), radius=5.0), prev)


def test_first_click_on_an_empty_mask_takes_the_answer():
    proposed = _square()
    assert np.array_equal(local_merge(np.zeros_like(proposed), proposed, click=(30, 30), radius=0.5), proposed)


@pytest.mark.parametrize("radius", [0.0, -1.0, float("nan")])
def test_bad_radius_is_refused(radius):
    with pytest.raises(ValueError, match="radius"):
        local_merge(_square(), _square(), (30, 30), radius)


def test_shape_mismatch_and_outside_click_are_refused():
    with pytest.raises(ValueError, match="shape"):
        local_merge(_square(), _square(shape=(32, 64), y1=30), (30, 30), 1.0)
    with pytest.raises(ValueError, match="outside"):
        local_merge(_square(), _square(), (64, 3), 1.0)


@dataclass
class _Scripted(ToolSession):
    """Answers with the next mask of ``answers`` whatever the prompts (and records them)."""

    answers: list = field(default_factory=list)
    calls: list = field(default_factory=list)

    def predict(self, box=None, points=(), labels=(), mask_logits=None) -> SegOutput:
        self.calls.append((box, list(points), list(labels), mask_logits is not None))
        mask = self.answers[len(self.calls) - 1]
        return SegOutput(mask=mask, logits=np.full((1, 256, 256), float(len(self.calls)), dtype=np.float32))


def test_interaction_merges_clicks_locally_but_never_the_box():
    prev = _square()
    grown = prev.copy()
    grown[20:40, 40:43] = True
    grown[20:40, 20:22] = False
    redrawn = _square(y0=5, y1=15, x0=5, x1=15)
    session = _Scripted(shape=(64, 64), answers=[prev, grown, redrawn])
    inter = Interaction(session, prompting=Prompting.ALL, local_radius=1.0)
    inter.add_box((18, 18, 42, 42))
    out = inter.add_point(41, 30, True)
    assert out.mask[20:40, 40:43].all() and out.mask[20:40, 20:22].all()
    assert float(out.logits[0, 0, 0]) == 2.0  # the model's own logits are kept for the next turn
    inter.add_box((4, 4, 16, 16))  # a new box replaces the mask outright
    assert np.array_equal(inter.mask, redrawn)
    assert session.calls[1][1:3] == ([(41, 30)], [1])


def test_interaction_without_local_radius_replaces():
    prev, grown = _square(), _square(x1=44)
    session = _Scripted(shape=(64, 64), answers=[prev, grown])
    inter = Interaction(session, prompting=Prompting.ALL)
    inter.add_box((18, 18, 42, 42))
    assert np.array_equal(inter.add_point(41, 30, True).mask, grown)
    with pytest.raises(ValueError, match="local_radius"):
        Interaction(session, local_radius=0.0)
