"""The shared step loop: step numbers, the reasons a run ends early, validation schedule, best state, metric log."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lib.learning.loop import BestState, LoopConfig, MetricLog, TrainLoop, seeded, torch_threads


def test_runs_every_step_and_validates_every_eval_every_and_at_the_last():
    loop = TrainLoop(LoopConfig(steps=7, eval_every=3, bar=False))
    seen = [(step, loop.is_eval_step(step)) for step in loop]
    assert seen == [(1, False), (2, False), (3, True), (4, False), (5, False), (6, True), (7, True)]
    assert loop.steps_run == 7 and not (loop.stopped or loop.budget_hit or loop.early_stopped or loop.ended_early)


def test_a_stop_request_ends_before_the_next_step():
    calls = []
    loop = TrainLoop(LoopConfig(steps=10, eval_every=5, bar=False), should_stop=lambda: len(calls) >= 3)
    for step in loop:
        calls.append(step)
    assert calls == [1, 2, 3] and loop.stopped and loop.steps_run == 3 and loop.ended_early


def test_the_budget_counts_from_started():
    loop = TrainLoop(LoopConfig(steps=10, eval_every=5, max_minutes=1.0, bar=False), started=-1e9)
    assert list(loop) == [] and loop.budget_hit and loop.steps_run == 0


def test_patience_ends_after_the_validation_that_reaches_it():
    loop = TrainLoop(LoopConfig(steps=20, eval_every=2, patience=2, bar=False))
    best = BestState(mode="max", min_delta=0.1)
    scores = iter([0.5, 0.55, 0.9, 0.95, 0.99, 2.0])
    for step in loop:
        if loop.is_eval_step(step):
            loop.validated(best.offer(next(scores), step, lambda s=step: {"w": s}))
    # 0.5 improves (step 2), 0.55 not (4), 0.9 improves (6), 0.95 and 0.99 not (8, 10): stop after step 10
    assert loop.steps_run == 10 and loop.early_stopped and loop.ended_early
    assert (best.score, best.step, best.state) == (0.9, 6, {"w": 6})


def test_best_state_min_mode_copies_only_on_improvement():
    copies = []
    best = BestState(mode="min")
    for step, loss in enumerate([3.0, 2.0, 2.0, 2.5, 1.0], start=1):
        best.offer(loss, step, lambda s=step: copies.append(s) or s, info={"loss": loss})
    assert copies == [1, 2, 5] and (best.score, best.step, best.info) == (1.0, 5, {"loss": 1.0})
    best.keep(9.0, 0, "released")
    assert (best.score, best.step, best.state) == (9.0, 0, "released")
    with pytest.raises(ValueError):
        BestState(mode="best")


def test_metric_log_rows_and_columns(tmp_path):
    log = MetricLog(train=("step", "loss"), val=("step", "loss", "acc"))
    assert log.last("val", "loss") is None and log.columns() == {"step": [], "loss": [], "val_step": [],
                                                                  "val_loss": [], "val_acc": []}
    log.train(1, loss=2.0, mode="all")
    log.train(2, loss=1.5)
    log.val(2, loss=1.7, acc=0.5)
    assert log.column("train", "loss") == [2.0, 1.5] and log.last("train", "loss") == 1.5
    assert list(log.columns()) == ["step", "loss", "val_step", "val_loss", "val_acc"]
    assert log.rows()["train"][0] == {"step": 1, "loss": 2.0, "mode": "all"}
    assert json.loads(log.write(tmp_path / "h.json", layout="columns").read_text())["val_acc"] == [0.5]
    assert json.loads(log.write(tmp_path / "r.json").read_text())["val"] == [{"step": 2, "loss": 1.7, "acc": 0.5}]


def test_seeded_seeds_torch_and_numpy_alike():
    a = seeded(11)
    ta = torch.rand(3)
    b = seeded(11)
    assert torch.equal(ta, torch.rand(3)) and np.array_equal(a.integers(0, 100, 5), b.integers(0, 100, 5))


def test_torch_threads_gives_the_setting_back():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_loop_config_rejects_nonsense():
    with pytest.raises(ValueError):
        LoopConfig(steps=0, eval_every=1)
    with pytest.raises(ValueError):
        LoopConfig(steps=1, eval_every=1, patience=-1)
