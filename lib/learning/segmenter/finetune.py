"""Interactive fine-tuning of a promptable segmenter on local labels (issue 3).

The released LiteMedSAM weights were trained with box prompts; corrective clicks on top of a box can
make its masks worse. This loop adapts the prompt encoder and mask decoder (the image encoder stays
frozen, so embeddings are computed once and cached on disk) on simulated annotation sessions made from
ground-truth masks (``lib.learning.segmenter.click_sessions``): a jittered box or an interior click first, then a
random number of expert corrective clicks, with or without the previous logits fed back. Loss: BCE +
Dice on the last mask (optionally also the earlier ones); AdamW with warm-up and cosine decay.

Validation runs on held-out *cases*: mean Dice after the box and after 1..``val_clicks`` corrective
clicks (the Dice-per-click curve), and NoC@85 with the click-only protocol of ``lib.agent.metrics.noc``.
The score for early stopping and model selection is the mean of the Dice-per-click curve; the best
state is restored at the end. Output: the trainable parts as a plain state dict + provenance JSON
(``lib.learning.segmenter.adapted_weights``), learning curves and the history.

Typical use::

    cfg = ToolFinetuneConfig.from_yaml("configs/tool_finetune.yaml", steps=1000)
    result = finetune(Dataset.from_dir("sample-data/studies"), cfg, out_dir="runs/tool_ft",
                      publish_to="bundles/litemedsam/models")
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lib.agent.clicks import jittered_box
from lib.data.dataset import Case, Dataset, split_cases
from lib.learning.loop import BestState, LoopConfig, MetricLog, TrainLoop
from lib.learning.segmenter.adapted_weights import publish_adapted
from lib.learning.segmenter.backends import TrainableBackend, make_backend
from lib.learning.segmenter.click_sessions import LiveSession, SessionPlan, advance_sessions, run_sessions
from lib.learning.segmenter.config import ToolFinetuneConfig
from lib.learning.segmenter.curves import plot_learning_curves
from lib.learning.segmenter.data import SliceSet, build_slice_set
from lib.learning.segmenter.embedding_cache import EmbeddingCache
from lib.tools.interaction import Prompting

logger = logging.getLogger(__name__)

#: IoU level of the NoC reported during validation
NOC_IOU = 0.85
#: validation decodes this many sessions per decoder call
VAL_CHUNK = 8

__all__ = ["ToolFinetuneConfig", "ToolFinetuner", "FinetuneResult", "finetune", "validate"]


def validate(
    backend: TrainableBackend,
    data: SliceSet,
    clicks: int = 4,
    prompting: Prompting | str = Prompting.ALL,
    noc_max_clicks: int = 10,
    seed: int = 0,
    box_jitter: float = 0.1,
) -> dict[str, Any]:
    """Dice-per-click and NoC@85 of the current weights on ``data`` (no gradients).

    Box protocol: one jittered box per item (the same boxes for every call with the same ``seed``, so
    validations are comparable), then ``clicks`` expert corrective clicks. NoC protocol: clicks only,
    from an empty mask, up to ``noc_max_clicks`` (not reached counts as ``noc_max_clicks``).

    Returns:
        ``{"dice_per_click": [mean Dice after box, +1, ..., +clicks], "iou_per_click": [...],
        "noc@85": mean clicks, "score": mean of dice_per_click, "n": items, "per_label": {label: dice curve}}``.
    """
    rng = np.random.default_rng(seed)
    boxes = [jittered_box(it.gt, rng, box_jitter) for it in data.items]
    dices, ious, nocs = [], [], []
    with torch.no_grad():
        for lo in range(0, len(data.items), VAL_CHUNK):
            chunk = data.items[lo : lo + VAL_CHUNK]
            box = run_sessions(backend, data.embeddings, chunk,
                               SessionPlan(boxes[lo : lo + VAL_CHUNK], [clicks] * len(chunk), Prompting(prompting)))
            for d, i in zip(box.dice, box.iou):  # a session that became perfect keeps its last value
                dices.append(d + [d[-1]] * (clicks + 1 - len(d)))
                ious.append(i + [i[-1]] * (clicks + 1 - len(i)))
            noc = run_sessions(backend, data.embeddings, chunk,
                               SessionPlan([None] * len(chunk), [noc_max_clicks - 1] * len(chunk), Prompting(prompting),
                                           stop_iou=NOC_IOU))
            for i in noc.iou:
                hit = [n for n, v in enumerate(i, start=1) if v >= NOC_IOU]
                nocs.append(hit[0] if hit else noc_max_clicks)
    dice_curve = np.mean(np.array(dices), axis=0)
    per_label: dict[str, list[float]] = {}
    for label in sorted({it.label for it in data.items}):
        rows = [d for d, it in zip(dices, data.items) if it.label == label]
        per_label[label] = [round(float(v), 4) for v in np.mean(np.array(rows), axis=0)]
    return {
        "dice_per_click": [round(float(v), 4) for v in dice_curve],
        "iou_per_click": [round(float(v), 4) for v in np.mean(np.array(ious), axis=0)],
        "noc@85": round(float(np.mean(nocs)), 3),
        "score": round(float(dice_curve.mean()), 4),
        "n": len(data.items),
        "per_label": per_label,
    }


def _first_box(data: SliceSet, i: int, rng: np.random.Generator, cfg: ToolFinetuneConfig):
    """A jittered box (``box_first_prob``) or None (a click-first session)."""
    return jittered_box(data.items[i].gt, rng, cfg.box_jitter) if rng.random() < cfg.box_first_prob else None


def _prompting(rng: np.random.Generator, cfg: ToolFinetuneConfig) -> Prompting:
    modes = sorted(cfg.prompting_mix)
    p = np.array([float(cfg.prompting_mix[m]) for m in modes])
    return Prompting(modes[int(rng.choice(len(modes), p=p / p.sum()))])


def sample_plan(n: int, data: SliceSet, picks: Sequence[int], rng: np.random.Generator,
                cfg: ToolFinetuneConfig) -> SessionPlan:
    """Random first prompts, click budgets (uniform 0..max_clicks) and one prompting mode for a batch."""
    boxes = [_first_box(data, i, rng, cfg) for i in picks]
    budgets = [int(b) for b in rng.integers(0, cfg.max_clicks + 1, size=n)]
    return SessionPlan(boxes, budgets, _prompting(rng, cfg), alt_click_prob=cfg.alt_click_prob)


def new_live_session(data: SliceSet, rng: np.random.Generator, cfg: ToolFinetuneConfig) -> LiveSession:
    """A fresh continued session: a (label-balanced) item, its first prompt, budget ``max_clicks``, a mode."""
    i = sample_items(data, 1, rng, cfg.balance_labels)[0]
    return LiveSession(data.items[i], _first_box(data, i, rng, cfg), cfg.max_clicks, _prompting(rng, cfg))


def sample_items(data: SliceSet, n: int, rng: np.random.Generator, balance_labels: bool = True) -> list[int]:
    """Indices of ``n`` training items: uniform over items, or a uniform label first then one of its items."""
    if not balance_labels:
        return [int(i) for i in rng.choice(len(data.items), size=n, replace=len(data.items) < n)]
    by_label: dict[str, list[int]] = {}
    for i, it in enumerate(data.items):
        by_label.setdefault(it.label, []).append(i)
    labels = sorted(by_label)
    return [int(rng.choice(by_label[labels[int(rng.integers(len(labels)))]])) for _ in range(n)]


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced.

    Attributes:
        state: trained parts as ``{key: tensor}`` (the best validated state).
        before / after: validation metrics of the released weights and of ``state``.
        history: ``{"train": [...], "val": [...]}`` per-step loss and per-validation metrics.
        steps_run / best_step: optimizer steps executed, and the step of ``state`` (0 = released).
        stopped_early: patience ran out before ``steps``.
        train_seconds: wall time of the optimisation loop (validation included, data preparation not).
        val_seconds: the part of ``train_seconds`` spent validating (the released weights' pass included).
    """

    state: dict[str, torch.Tensor]
    before: dict[str, Any]
    after: dict[str, Any]
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    steps_run: int = 0
    best_step: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    val_seconds: float = 0.0


class ToolFinetuner:
    """The optimisation loop over prepared ``SliceSet``s.

    Args:
        config: the recipe.
        backend: the model to adapt (default: ``make_backend(config.backend, ...)``).
        on_validation: called after each validation with ``(step, metrics)`` (e.g. to update train stats).
    """

    def __init__(self, config: ToolFinetuneConfig, backend: TrainableBackend | None = None,
                 on_validation: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        self.cfg = config
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self.backend = backend or make_backend(config.backend, checkpoint=config.checkpoint, device=config.device,
                                               encoder_runtime=config.encoder_runtime)
        self.on_validation = on_validation

    def _validate(self, val: SliceSet) -> dict[str, Any]:
        c = self.cfg
        return validate(self.backend, val, c.val_clicks, c.val_prompting, c.val_noc_max_clicks, c.seed, c.box_jitter)

    def _lr_lambda(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.lr_schedule == "constant":
            return 1.0
        frac = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))

    def session_loss(self, train: SliceSet, pool: deque[LiveSession],
                     rng: np.random.Generator) -> tuple[torch.Tensor | None, str]:
        """One step's loss (with gradients) and the prompting mode it trained.

        With ``live_sessions``: tops ``pool`` (the sessions in flight, oldest first; updated in place) up
        to ``live_sessions``, advances the ``batch_size`` oldest by one turn and puts back those not done.
        Without: ``batch_size`` new sessions replayed to their last turn.
        """
        c = self.cfg
        if c.live_sessions:
            while len(pool) < c.live_sessions:
                pool.append(new_live_session(train, rng, c))
            batch = [pool.popleft() for _ in range(c.batch_size)]
            loss = advance_sessions(self.backend, train.embeddings, batch, no_harm_weight=c.no_harm_weight,
                                    bce_weight=c.bce_weight, dice_weight=c.dice_weight,
                                    click_focus_weight=c.click_focus_weight, click_focus_radius=c.click_focus_radius,
                                    alt_click_prob=c.alt_click_prob, rng=rng)
            pool.extend(s for s in batch if not s.done)
            return loss, batch[0].prompting.value
        picks = sample_items(train, c.batch_size, rng, c.balance_labels)
        items = [train.items[i] for i in picks]
        plan = sample_plan(len(items), train, picks, rng, c)
        trace = run_sessions(self.backend, train.embeddings, items, plan, grad=True,
                             intermediate_weight=c.intermediate_weight, no_harm_weight=c.no_harm_weight,
                             bce_weight=c.bce_weight, dice_weight=c.dice_weight,
                             click_focus_weight=c.click_focus_weight, click_focus_radius=c.click_focus_radius, rng=rng)
        return trace.loss, plan.prompting.value

    def optimizer_step(self, train: SliceSet, pool: deque[LiveSession], rng: np.random.Generator,
                       opt: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter]) -> tuple[float | None, str]:
        """``session_loss``, back-propagated, clipped to ``grad_clip`` and applied by ``opt``; returns the loss
        (None when no session had anything to decode) and the prompting mode trained."""
        loss, mode = self.session_loss(train, pool, rng)
        if loss is None:
            return None, mode
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        opt.step()
        return float(loss.detach()), mode

    def fit(self, train: SliceSet, val: SliceSet) -> FinetuneResult:
        """Optimise on ``train``, select on ``val``; returns the best state (the released one if nothing beat it)."""
        c = self.cfg
        rng = np.random.default_rng(c.seed)  # torch was seeded in __init__, before the backend was built
        params = self.backend.parameters()
        opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_lambda)
        t0 = time.perf_counter()
        before = self._validate(val)
        val_seconds = time.perf_counter() - t0
        logger.info("released weights: val Dice per click %s, NoC@85 %.2f", before["dice_per_click"], before["noc@85"])
        log = MetricLog()
        log.val(0, **before)
        if self.on_validation:
            self.on_validation(0, before)
        best = BestState(mode="max", min_delta=c.min_delta)
        best.keep(before["score"], 0, self.backend.trainable_state_dict(), before)
        loop = TrainLoop(LoopConfig(steps=c.steps, eval_every=c.val_every, patience=c.patience, desc="fine-tune",
                                    bar=c.progress, mininterval=2.0), started=t0)
        pool: deque[LiveSession] = deque()
        for step in loop:
            loss, mode = self.optimizer_step(train, pool, rng, opt, params)
            if loss is not None:
                log.train(step, loss=round(loss, 5), t=round(loop.elapsed(), 2), lr=sched.get_last_lr()[0], mode=mode)
                loop.show(loss=f"{loss:.3f}")
            sched.step()
            if loop.is_eval_step(step):
                tv = time.perf_counter()
                metrics = self._validate(val)
                val_seconds += time.perf_counter() - tv
                log.val(step, **metrics)
                logger.info("step %d: val Dice per click %s, NoC@85 %.2f", step, metrics["dice_per_click"],
                            metrics["noc@85"])
                if self.on_validation:
                    self.on_validation(step, metrics)
                loop.validated(best.offer(metrics["score"], step, self.backend.trainable_state_dict, metrics))
        self.backend.load_trainable(best.state)
        return FinetuneResult(state=best.state, before=before, after=best.info, history=log.rows(),
                              steps_run=loop.steps_run, best_step=best.step, stopped_early=loop.ended_early,
                              train_seconds=loop.elapsed(), val_seconds=val_seconds)


def prepare_slices(dataset: Dataset, cases: Sequence[Case], cfg: ToolFinetuneConfig, backend: TrainableBackend,
                   cache: EmbeddingCache) -> tuple[SliceSet, SliceSet]:
    """The (train, validation) slice sets of ``cases``, split by case (``cfg.val_fraction``, ``cfg.seed``), with
    their embeddings from ``cache`` (encoded on a miss); validation capped at ``cfg.max_val_samples`` items."""
    train_cases, val_cases = split_cases(list(cases), cfg.val_fraction, cfg.seed)
    kw = dict(labels=cfg.labels, axis=cfg.axis, min_area=cfg.min_area, max_per_case=cfg.max_per_case,
              ct_window=cfg.ct_window, progress=cfg.progress)
    train = build_slice_set(dataset, train_cases, backend, cache, desc="train slices", **kw)
    val = build_slice_set(dataset, val_cases, backend, cache, desc="val slices", **kw)
    return train, val.subset(cfg.max_val_samples)


def finetune(
    dataset: Dataset,
    cfg: ToolFinetuneConfig,
    out_dir: str | Path,
    publish_to: str | Path | None = None,
    cases: Sequence[Case] | None = None,
    source: str | None = None,
    backend: TrainableBackend | None = None,
    on_validation: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Split by case, prepare cached embeddings, fit, write ``adapted.pt``/``adapted.json``/curves to ``out_dir``
    and, when ``publish_to`` is given, publish the same pair atomically there (e.g. the bundle's ``models/``).

    Args:
        dataset: labelled data (its ``training`` list unless ``cases`` is given).
        cfg: the recipe.
        out_dir: run folder (created).
        publish_to: folder to publish the adapted weights into, or None.
        cases: cases to use instead of ``dataset.training``.
        source: how to name the data in the provenance (default: the dataset folder).

    Returns:
        The provenance dict written to ``adapted.json`` (plus nothing else).
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = list(cases if cases is not None else dataset.training)
    if len(cases) < 2:
        raise ValueError(f"fine-tuning needs >= 2 labelled cases (one is held out for validation), got {len(cases)}")
    tuner = ToolFinetuner(cfg, backend=backend, on_validation=on_validation)
    cache = EmbeddingCache(cfg.cache_dir)
    encoder_calls0 = getattr(tuner.backend, "encoder_calls", 0)
    t0 = time.perf_counter()
    train, val = prepare_slices(dataset, cases, cfg, tuner.backend, cache)
    prepare_seconds = time.perf_counter() - t0
    logger.info("data: %d train items (%d slices), %d val items; cache %d hits / %d misses in %.1fs",
                len(train.items), train.n_slices, len(val.items), cache.hits, cache.misses, prepare_seconds)
    result = tuner.fit(train, val)
    info = {
        "backend": tuner.backend.name,
        "kind": "state-dict delta over the released checkpoint (trainable parts only)",
        "keys": sorted({k.split(".")[0] for k in result.state}),
        "released_checkpoint_sha256": tuner.backend.released_sha256(),
        "data": {
            "source": source or str(dataset.root),
            "labels": sorted({it.label for it in train.items}),
            "train_cases": train.cases, "val_cases": val.cases,
            "train_items": len(train.items), "train_slices": train.n_slices, "val_items": len(val.items),
        },
        "steps": {"planned": cfg.steps, "run": result.steps_run, "best": result.best_step,
                  "stopped_early": result.stopped_early},
        "metrics": {"before": result.before, "after": result.after},
        "episode": cfg.episode_record(),
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "time": {
            "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "prepare_seconds": round(prepare_seconds, 2),
            "train_seconds": round(result.train_seconds, 2),
            "val_seconds": round(result.val_seconds, 2),
            "step_seconds": round(result.train_seconds - result.val_seconds, 2),
            "total_seconds": round(time.perf_counter() - t_start, 2),
        },
        "embedding_cache": {"dir": str(cache.root), "hits": cache.hits, "misses": cache.misses,
                            "encoder_calls": getattr(tuner.backend, "encoder_calls", 0) - encoder_calls0},
        "versions": {"torch": torch.__version__},
    }
    (out_dir / "history.json").write_text(json.dumps(result.history, indent=1) + "\n")
    plot_learning_curves(result.history, out_dir / "learning_curves.png",
                         title=f"{tuner.backend.name}: {len(train.items)} train items, val cases {val.cases}")
    publish_adapted(result.state, info, out_dir)
    if publish_to is not None:
        publish_adapted(result.state, copy.deepcopy(info), publish_to)
        logger.info("published adapted weights to %s", publish_to)
    return info
