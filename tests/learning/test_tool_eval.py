"""lib.learning.segmenter.eval with the real LiteMedSAM weights on the tiny cached slices of ``ft``: the ellipse-in-box
baseline and NoC@90 beside the Dice-per-click curve (the columns scripts/evaluate_tool.py reports)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.agent.clicks import jittered_box
from lib.agent.metrics import dice
from lib.agent.policies.ellipse import ellipse_mask
from lib.learning.segmenter.click_sessions import ClickTarget
from lib.learning.segmenter.data import SliceSet
from lib.learning.segmenter.eval import evaluate_weights, per_label_subset, summarize


@pytest.fixture
def one_thread():
    """One torch thread for 28 small decoder calls. On the shared 2-core machine (load ~10) two spinning OpenMP
    threads made them take 92 s under pytest, one thread 24 s (a script with OMP_WAIT_POLICY=PASSIVE: 8 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_rows_carry_the_ellipse_baseline_and_noc90(ft, one_thread):
    ft.reset()
    rows = evaluate_weights(ft.backend, ft.backend.tool, ft.val, modes=["all", "newest"], clicks=2, noc_max=4,
                            seed=3, progress=False)
    assert len(rows) == 2 * len(ft.val.items)
    for n, it in enumerate(ft.val.items):
        mine = [r for r in rows if r["label"] == it.label and r["case"] == it.case_id]
        # the same jittered box as the model got (seeded by item index), so the baseline is paired with it
        box = jittered_box(it.gt, np.random.default_rng([3, n]), 0.1)
        expected = round(dice(ellipse_mask(box, it.gt.shape), it.gt), 4)
        assert {r["ellipse"] for r in mine} == {expected} and 0.3 < expected < 1.0
        for r in mine:
            assert 1 <= r["noc@85"] <= r["noc@90"] <= 4  # 0.90 is never reached before 0.85
            assert r["reached@90"] <= r["reached@85"]
    s = summarize(rows, clicks=2)
    for mode in ("all", "newest"):
        sel = [r for r in rows if r["mode"] == mode]
        assert s[mode]["ellipse"] == round(float(np.mean([r["ellipse"] for r in sel])), 4)
        assert s[mode]["noc@90"] >= s[mode]["noc@85"]
        assert set(s[mode]["per_label"]["disc"]) >= {"ellipse", "noc@85", "noc@90"}
    # rows of an older run (no ellipse / NoC@90) still summarise
    old = [{k: v for k, v in r.items() if k not in ("ellipse", "noc@90", "reached@90")} for r in rows]
    assert summarize(old, clicks=2)["all"]["ellipse"] is None


def test_per_label_subset_keeps_every_label_evenly_spaced():
    # a volume's item list: slices 0..9, labels a (every slice), b (every slice), c (slices 4, 5 only)
    items = [ClickTarget(k, np.zeros((2, 2), bool), torch.zeros(1), (2, 2), "v", lab)
             for k in range(10) for lab in ("a", "b", "c") if lab != "c" or k in (4, 5)]
    data = SliceSet(torch.zeros(10, 1), items, ["v"])
    # a plain even spacing over the list (SliceSet.subset) can miss c entirely
    assert {it.label for it in data.subset(4).items} == {"a", "b"}
    kept = per_label_subset(data, 3).items
    assert [(it.label, it.index) for it in kept if it.label == "a"] == [("a", 0), ("a", 4), ("a", 9)]
    assert [it.index for it in kept if it.label == "c"] == [4, 5]
    pos = [next(n for n, x in enumerate(items) if x is it) for it in kept]
    assert pos == sorted(pos)  # input order kept
    assert per_label_subset(data, None) is data
    with pytest.raises(ValueError):
        per_label_subset(data, 0)
