"""lib.learning.tool_eval with the real LiteMedSAM weights on the tiny cached slices of ``ft``: the ellipse-in-box
baseline and NoC@90 beside the Dice-per-click curve (the columns scripts/evaluate_tool.py reports)."""

from __future__ import annotations

import numpy as np

from lib.agent.clicks import jittered_box
from lib.agent.metrics import dice
from lib.agent.policies.ellipse import ellipse_mask
from lib.learning.tool_eval import evaluate_weights, summarize


def test_rows_carry_the_ellipse_baseline_and_noc90(ft):
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
