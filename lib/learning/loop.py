"""The step loop's skeleton, shared by the policy's SFT and GRPO and the segmenter's fine-tuning.

Each trainer owns its step (what a batch is, the loss, the optimizer) and its validation; what they have
in common lives here, once:

- ``seeded`` seeds torch and returns the run's numpy generator (the same seed gives the same run);
- ``torch_threads`` runs with a number of torch intra-op threads and gives the caller's setting back;
- ``TrainLoop`` yields step numbers 1..``steps`` under a progress bar and ends early on a stop request, on
  the wall-clock budget or when validation stopped improving (``patience``); it says which, and when to
  validate;
- ``BestState`` keeps the best validated weights (a checkpoint in memory, restored at the end);
- ``MetricLog`` holds the per-step and per-validation metrics that a run writes to its history file and
  plots as learning curves.

Typical use::

    rng = seeded(config.seed)
    log = MetricLog(train=("step", "loss"), val=("step", "loss"))
    best = BestState(mode="min")
    loop = TrainLoop(LoopConfig(steps=config.steps, eval_every=config.eval_every, desc="sft"), should_stop)
    for step in loop:
        log.train(step, loss=one_step(rng))
        if loop.is_eval_step(step):
            metrics = validate()
            log.val(step, **metrics)
            loop.validated(best.offer(metrics["loss"], step, lambda: copy.deepcopy(net.state_dict())))
    net.load_state_dict(best.state)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def seeded(seed: int) -> np.random.Generator:
    """Seed torch's global generator with ``seed`` and return a numpy generator seeded the same: call it
    before building the model, so its initialisation is part of the seeded run."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (0 = unchanged) and restore the caller's setting after: the
    trainers run inside the MONAI Label server, whose inference must keep its own setting."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class LoopConfig:
    """How long a training loop runs and when it validates.

    Attributes:
        steps: optimizer steps (an upper bound: the budget, a stop request or patience may end sooner).
        eval_every: validate after every ``eval_every`` steps and after the last one.
        max_minutes: wall-clock budget in minutes, counted from ``TrainLoop``'s ``started`` (0 = none).
        patience: validations in a row without improvement that end the run (0 = never).
        desc: the progress bar's label.
        bar: show a tqdm progress bar.
        mininterval: seconds between progress bar refreshes.
    """

    steps: int
    eval_every: int
    max_minutes: float = 0.0
    patience: int = 0
    desc: str = "train"
    bar: bool = True
    mininterval: float = 10.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.eval_every < 1:
            raise ValueError(f"LoopConfig: steps and eval_every must be >= 1, got {self.steps}, {self.eval_every}")
        if self.max_minutes < 0 or self.patience < 0:
            raise ValueError("LoopConfig: max_minutes and patience must be >= 0")


class TrainLoop:
    """Iterate over step numbers 1..``config.steps``; ends early, and records why.

    Before each step it polls ``should_stop`` (then ``stopped`` is True) and the wall-clock budget (then
    ``budget_hit``); after a step whose validation made ``validated(False)`` reach ``patience`` it ends
    (``early_stopped``). ``step`` is the last step run (0 before the first).

    Args:
        config: ``LoopConfig``.
        should_stop: polled before every step; True ends the loop.
        started: ``time.perf_counter()`` value the budget counts from (default: now), e.g. the run's start so
            that data preparation counts too.
    """

    def __init__(self, config: LoopConfig, should_stop: Callable[[], bool] | None = None,
                 started: float | None = None) -> None:
        self.config = config
        self.should_stop = should_stop
        self.started = time.perf_counter() if started is None else started
        self.step = 0
        self.stopped = self.budget_hit = self.early_stopped = False
        self._bad = 0
        self._bar: Any = None

    def elapsed(self) -> float:
        """Seconds since ``started``."""
        return time.perf_counter() - self.started

    def __iter__(self) -> Iterator[int]:
        c = self.config
        self._bar = tqdm(range(1, c.steps + 1), desc=c.desc, unit="step", disable=not c.bar,
                         mininterval=c.mininterval)
        try:
            for step in self._bar:
                if self.should_stop is not None and self.should_stop():
                    self.stopped = True
                    break
                if c.max_minutes and self.elapsed() > 60 * c.max_minutes:
                    self.budget_hit = True
                    break
                self.step = step
                yield step
                if self.early_stopped:
                    break
        finally:
            self._bar.close()

    @property
    def steps_run(self) -> int:
        """Steps run so far (the loop counts from 1 without gaps)."""
        return self.step

    @property
    def ended_early(self) -> bool:
        """The loop ended before ``config.steps`` (a stop request, the budget or patience)."""
        return self.step < self.config.steps

    def is_eval_step(self, step: int) -> bool:
        """Validate after this step: every ``eval_every`` steps and after the last one."""
        return step % self.config.eval_every == 0 or step == self.config.steps

    def validated(self, improved: bool) -> None:
        """Report a validation's outcome: ``patience`` validations in a row without improvement end the loop
        after the current step."""
        if improved:
            self._bad = 0
            return
        self._bad += 1
        if self.config.patience and self._bad >= self.config.patience:
            self.early_stopped = True
            logger.info("early stop at step %d (no improvement for %d validations)", self.step, self._bad)

    def show(self, **values: Any) -> None:
        """Put ``values`` after the progress bar (shown at its next refresh)."""
        if self._bar is not None:
            self._bar.set_postfix(refresh=False, **values)


class BestState:
    """The best validated weights of a run, kept in memory and restored at its end.

    Args:
        mode: ``"max"`` (a score) or ``"min"`` (a loss).
        min_delta: an improvement must exceed this margin.
    """

    def __init__(self, mode: Literal["max", "min"] = "max", min_delta: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"BestState mode must be 'max' or 'min', got {mode!r}")
        self.mode, self.min_delta = mode, min_delta
        self.score = -math.inf if mode == "max" else math.inf
        self.step = 0
        self.state: Any = None
        self.info: Any = None

    def improves(self, score: float) -> bool:
        """``score`` beats the best so far by more than ``min_delta``."""
        if self.mode == "max":
            return score > self.score + self.min_delta
        return score < self.score - self.min_delta

    def offer(self, score: float, step: int, state: Callable[[], Any], info: Any = None) -> bool:
        """Keep ``state()`` (called only on improvement: a copy of the weights) when ``score`` improves;
        ``info`` travels with it (e.g. the validation metrics). Returns whether it improved."""
        if not self.improves(score):
            return False
        self.score, self.step, self.state, self.info = score, step, state(), info
        return True

    def keep(self, score: float, step: int, state: Any, info: Any = None) -> None:
        """Set the best unconditionally (e.g. the starting weights before any step)."""
        self.score, self.step, self.state, self.info = score, step, state, info


class MetricLog:
    """The metrics of one run: a row per training step (``train``) and per validation (``val``).

    Args:
        train / val: the columns of each series, in the order ``columns()`` writes them. Rows may carry
            other keys (``rows()`` keeps them); declared columns that a row lacks read as None.
    """

    def __init__(self, train: Sequence[str] = ("step",), val: Sequence[str] = ("step",)) -> None:
        self.columns_of = {"train": tuple(train), "val": tuple(val)}
        self.series: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}

    def train(self, step: int, **values: Any) -> dict[str, Any]:
        """Log one training step's metrics; returns the row."""
        return self._add("train", step, values)

    def val(self, step: int, **values: Any) -> dict[str, Any]:
        """Log one validation's metrics; returns the row."""
        return self._add("val", step, values)

    def _add(self, series: str, step: int, values: dict[str, Any]) -> dict[str, Any]:
        row = {"step": step, **values}
        self.series[series].append(row)
        return row

    def column(self, series: str, key: str) -> list[Any]:
        """One metric over a series, e.g. ``column("train", "loss")``."""
        return [row.get(key) for row in self.series[series]]

    def last(self, series: str, key: str, default: Any = None) -> Any:
        """The latest value of a metric, or ``default`` before the first row."""
        rows = self.series[series]
        return rows[-1].get(key, default) if rows else default

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """``{"train": [row, ...], "val": [row, ...]}``."""
        return self.series

    def columns(self) -> dict[str, list[Any]]:
        """The declared columns as lists: the training ones by name, the validation ones prefixed ``val_``
        (``step``, ``loss``, ``val_step``, ``val_loss``, ...)."""
        out = {k: self.column("train", k) for k in self.columns_of["train"]}
        out.update({f"val_{k}": self.column("val", k) for k in self.columns_of["val"]})
        return out

    def write(self, path: str | Path, layout: Literal["rows", "columns"] = "rows", indent: int | None = None) -> Path:
        """Write ``rows()`` or ``columns()`` as JSON to ``path``."""
        path = Path(path)
        data = self.rows() if layout == "rows" else self.columns()
        path.write_text(json.dumps(data, indent=indent) + "\n", encoding="utf-8")
        return path
