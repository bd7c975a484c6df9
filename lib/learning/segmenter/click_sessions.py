"""Simulated interactive sessions on cached embeddings: the training signal and the validation protocol.

A session is what an annotator does in Slicer: a first prompt (a jittered ground-truth box, or a
positive click at the interior of the target), then corrective clicks from ``lib.agent.clicks`` (largest
error component, distance-transform maximum; positive on a miss, negative on a leak), each decoded
with the prompts the chosen ``Prompting`` mode sends. The sessions of a batch advance in lock-step, one
turn at a time, so every decoder call holds prompts of one kind and one count (no padding tokens that
inference would never see).

Frames and units: ground truth and clicks in original-slice pixels, ``gt[y, x]``, clicks ``(x, y)``; the
loss is computed on the low-res logits (L×L, L = ``backend.low_res``) against the ground truth resized
into that frame, over the slice's extent only (the zero padding is ignored). Dice/IoU per turn are
measured at the original resolution after the same upsampling inference does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from lib.agent.actions import Box, Point
from lib.agent.clicks import error_candidates
from lib.agent.metrics import dice, iou
from lib.learning.segmenter.backends import TrainableBackend
from lib.tools.interaction import Prompting
from lib.tools.local_merge import equivalent_radius


@dataclass(frozen=True)
class ClickTarget:
    """One (slice, label) item.

    Attributes:
        index: row of the slice's embedding in the embeddings tensor.
        gt: (H, W) bool ground truth, original pixels.
        target: (L, L) float32 {0, 1} ground truth in the low-res model frame (``backend.target``).
        resized: (h, w) extent of the slice inside the L×L frame (the rest is padding).
        case_id / label: provenance, for per-label reports and case-level splits.
    """

    index: int
    gt: np.ndarray
    target: torch.Tensor
    resized: tuple[int, int]
    case_id: str = ""
    label: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the original slice, pixels."""
        return tuple(self.gt.shape)


@dataclass(frozen=True)
class SessionPlan:
    """How each session of a batch runs.

    Attributes:
        boxes: per session the first box (x0, y0, x1, y1 inclusive pixels), or None for a click-first
            session (positive click at the interior-most target pixel, then corrections).
        budgets: per session the number of corrective clicks after the first prompt (0 = first prompt only).
        prompting: which prompts reach the model each turn (shared by the batch).
        alt_click_prob: chance of taking a random one of the 3 best corrective clicks instead of the best
            (training only: varies click positions so the head does not learn one click per error shape).
        stop_iou: end a session early once its IoU reaches this (NoC measurement), or None.
    """

    boxes: Sequence[Box | None]
    budgets: Sequence[int]
    prompting: Prompting = Prompting.ALL
    alt_click_prob: float = 0.0
    stop_iou: float | None = None

    def __post_init__(self) -> None:
        if len(self.boxes) != len(self.budgets):
            raise ValueError(f"{len(self.boxes)} boxes but {len(self.budgets)} budgets; give one per session")
        if any(b < 0 for b in self.budgets):
            raise ValueError(f"click budgets must be >= 0, got {list(self.budgets)}")


@dataclass
class SessionTrace:
    """Outcome of a batch of sessions.

    Attributes:
        loss: scalar training loss (None when run without gradients).
        dice / iou: per session, the value after each executed turn (turn 0 = first prompt).
        clicks: per session the clicks placed (the click-first session's first click included).
    """

    loss: torch.Tensor | None = None
    dice: list[list[float]] = field(default_factory=list)
    iou: list[list[float]] = field(default_factory=list)
    clicks: list[list[Point]] = field(default_factory=list)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0,
    focus: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-item BCE + soft Dice over the valid region.

    Args:
        logits: (B, L, L) raw logits.
        target: (B, L, L) float {0, 1}.
        valid: (B, L, L) float {0, 1}; 1 on the slice's extent in the model frame, 0 on padding.
        focus: optional (B, L, L) float >= 0: extra BCE weight per pixel (``click_focus``), added to 1.

    Returns:
        (B,) losses.
    """
    n = valid.sum(dim=(1, 2)).clamp(min=1.0)
    w = valid if focus is None else valid * (1.0 + focus)
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w).sum(dim=(1, 2)) / n
    prob = torch.sigmoid(logits) * valid
    inter = (prob * target).sum(dim=(1, 2))
    soft_dice = 1.0 - (2.0 * inter + 1.0) / (prob.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + 1.0)
    return bce_weight * bce + dice_weight * soft_dice


def _valid(items: Sequence[ClickTarget], size: int) -> torch.Tensor:
    v = torch.zeros(len(items), size, size)
    for j, it in enumerate(items):
        v[j, : it.resized[0], : it.resized[1]] = 1.0
    return v


def _next_click(pred: np.ndarray, gt: np.ndarray, clicks: list[Point], alt_prob: float, rng) -> Point | None:
    k = 3 if alt_prob > 0 else 1
    cands = error_candidates(pred, gt, k=k, not_clicked=clicks)
    if not cands:
        return None
    if len(cands) > 1 and rng is not None and rng.random() < alt_prob:
        return cands[int(rng.integers(len(cands)))]
    return cands[0]


def click_focus(items: Sequence[ClickTarget], newest: Sequence[Point | None], size: int, weight: float,
                radius: float) -> torch.Tensor | None:
    """(B, L, L) extra BCE weight: ``weight`` on a disc around each item's newest click, 0 elsewhere.

    The disc's radius is ``radius`` × the ground truth's equivalent radius (sqrt(area / pi)), the same
    unit as the local merge's radius (``lib.tools.local_merge``), so training stresses the pixels that
    the merge will take from the click's answer. Clicks are original pixels ``(x, y)``; the disc is drawn
    in the low-res frame, where the slice fills ``resized`` = (h, w) from the top-left corner.
    Returns None when ``weight`` is 0 or no item has a click.
    """
    if weight <= 0 or all(c is None for c in newest):
        return None
    out = torch.zeros(len(items), size, size)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    for j, (it, c) in enumerate(zip(items, newest, strict=True)):
        if c is None:
            continue
        (h, w), (hh, ww) = it.resized, it.shape
        sy, sx = h / hh, w / ww
        r = radius * equivalent_radius(max(int(it.gt.sum()), 1)) * max(sy, sx)
        # pixel centres: original (x + 0.5) maps to low-res (x + 0.5) * scale
        d2 = (xx + 0.5 - (c.x + 0.5) * sx) ** 2 + (yy + 0.5 - (c.y + 0.5) * sy) ** 2
        out[j] = weight * (d2 <= max(r, 1.0) ** 2).float()
    return out


def _loss_terms(low: torch.Tensor, items: Sequence[ClickTarget], earlier: Sequence[torch.Tensor | None], size: int,
                bce_weight: float, dice_weight: float, no_harm_weight: float,
                focus: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss of one decoded group: the sum of its items' BCE + Dice (BCE weighted up by ``focus``, see
    ``click_focus``), and the no-harm term (``no_harm_weight`` × relu(L - L_earlier)) over the items with
    ``earlier`` (1, 1, L, L) detached logits of their previous turn, or None when there is none (or
    ``no_harm_weight`` is 0)."""
    target = torch.stack([it.target for it in items]).to(low.device)
    valid = _valid(items, size).to(low.device)
    focus = None if focus is None else focus.to(low.device)
    per_item = segmentation_loss(low[:, 0], target, valid, bce_weight, dice_weight, focus)
    before = [j for j, e in enumerate(earlier) if e is not None]
    if not (no_harm_weight > 0 and before):
        return per_item.sum(), None
    prev_logits = torch.cat([earlier[j] for j in before])[:, 0].to(low.device)
    prev_loss = segmentation_loss(prev_logits, target[before], valid[before], bce_weight, dice_weight,
                                  None if focus is None else focus[before])
    return per_item.sum(), no_harm_weight * F.relu(per_item[before] - prev_loss).sum()


def _first_click(gt: np.ndarray) -> Point | None:
    """A click-first session's first click: the best click on an empty mask (None: empty ground truth)."""
    return _next_click(np.zeros(gt.shape, dtype=bool), gt, [], 0.0, None)


def _continue(pred: np.ndarray, gt: np.ndarray, clicks: list[Point], turn: int, budget: int, alt_prob: float,
              rng) -> bool:
    """After ``turn``'s answer ``pred``: append the next corrective click; False when the session ends
    (its budget is spent, or the mask already is the ground truth)."""
    if turn >= budget:
        return False
    click = _next_click(pred, gt, clicks, alt_prob, rng)
    if click is None:
        return False
    clicks.append(click)
    return True


def run_sessions(
    backend: TrainableBackend,
    embeddings: torch.Tensor,
    items: Sequence[ClickTarget],
    plan: SessionPlan,
    *,
    grad: bool = False,
    intermediate_weight: float = 0.0,
    no_harm_weight: float = 0.0,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    click_focus_weight: float = 0.0,
    click_focus_radius: float = 0.5,
    rng: np.random.Generator | None = None,
) -> SessionTrace:
    """Run a batch of sessions turn by turn; with ``grad`` return the loss to back-propagate.

    The loss is the mean over sessions of BCE + Dice at each session's last turn, plus
    ``intermediate_weight`` × the same at its earlier turns. Turns without a loss term run without
    gradients; the logits fed back as ``mask_logits`` are always detached (as at inference, where the
    previous answer is data, not a differentiable input).

    Args:
        backend: the model (its trainable head decodes; its encoder is not called).
        embeddings: (N, C, h, w) cached embeddings; ``items[i].index`` selects a row.
        items: the sessions' targets.
        plan: first prompts, click budgets and prompting mode.
        grad: build the graph and return ``loss``.
        intermediate_weight: weight of the loss at turns before the last (0 = final mask only).
        no_harm_weight: weight of ``relu(L_last - L_prev)`` for sessions with at least one click after the first
            prompt, where ``L_prev`` is the same loss on the previous turn's (detached) logits: a click that makes
            the mask worse costs extra, and only the click's answer receives the gradient.
        click_focus_weight / click_focus_radius: extra BCE weight near the newest click of a turn after the
            first prompt (``click_focus``; 0 = off).
        rng: randomness for ``plan.alt_click_prob``.
    """
    n = len(items)
    if len(plan.boxes) != n:
        raise ValueError(f"plan has {len(plan.boxes)} sessions for {n} items")
    mode = Prompting(plan.prompting)
    size = backend.low_res
    clicks: list[list[Point]] = [[] for _ in range(n)]
    prev: list[torch.Tensor | None] = [None] * n
    trace = SessionTrace(dice=[[] for _ in range(n)], iou=[[] for _ in range(n)], clicks=clicks)
    active = [True] * n
    for i, it in enumerate(items):
        if plan.boxes[i] is None:
            first = _first_click(it.gt)
            if first is None:
                active[i] = False  # empty ground truth: nothing to segment
            else:
                clicks[i].append(first)
    terms: list[torch.Tensor] = []
    turn = 0
    while any(active):
        for has_box in (True, False):
            group = [i for i in range(n) if active[i] and (plan.boxes[i] is not None) == has_box]
            last = [i for i in group if turn == plan.budgets[i]]
            middle = [i for i in group if turn != plan.budgets[i]]
            for sub, weight, is_last in ((last, 1.0, True), (middle, intermediate_weight, False)):
                if not sub:
                    continue
                with_grad = grad and weight > 0
                with torch.set_grad_enabled(with_grad):
                    low = _decode(backend, embeddings, items, plan, mode, sub, clicks, prev, turn, has_box)
                    if with_grad:
                        earlier = [prev[i] if is_last and turn > 0 else None for i in sub]
                        focus = click_focus([items[i] for i in sub], [clicks[i][-1] if turn > 0 else None
                                                                      for i in sub],
                                            size, click_focus_weight, click_focus_radius)
                        loss, harm = _loss_terms(low, [items[i] for i in sub], earlier, size, bce_weight,
                                                 dice_weight, no_harm_weight, focus)
                        terms.append(weight * loss)
                        if harm is not None:
                            terms.append(harm)
                for j, i in enumerate(sub):
                    prev[i] = low[j : j + 1].detach()
                    pred = backend.to_original(low[j, 0].detach(), items[i].resized, items[i].shape)
                    trace.dice[i].append(dice(pred, items[i].gt))
                    trace.iou[i].append(iou(pred, items[i].gt))
                    stopped = plan.stop_iou is not None and trace.iou[i][-1] >= plan.stop_iou
                    active[i] = not stopped and _continue(pred, items[i].gt, clicks[i], turn, plan.budgets[i],
                                                          plan.alt_click_prob, rng)
        turn += 1
    if grad:
        trace.loss = torch.stack(terms).sum() / max(n, 1) if terms else None
    return trace


def _decode(backend, embeddings, items, plan, mode, sub, clicks, prev, turn, has_box) -> torch.Tensor:
    """Decode one uniform group (same first prompt kind, same turn) with the mode's prompts."""
    shapes = [items[i].shape for i in sub]
    emb = embeddings[[items[i].index for i in sub]]
    boxes = points = labels = logits = None
    newest = mode is Prompting.NEWEST
    if has_box and not (newest and turn > 0):
        boxes = np.array([plan.boxes[i].as_tuple() for i in sub], dtype=np.float32)
    sent = [clicks[i][-1:] if newest else clicks[i] for i in sub]
    if newest and has_box and turn == 0:
        sent = [[] for _ in sub]
    if sent and len(sent[0]):
        points = np.array([[(p.x, p.y) for p in s] for s in sent], dtype=np.float32)
        labels = np.array([[1 if p.positive else 0 for p in s] for s in sent], dtype=np.int64)
    if mode is not Prompting.ALL and turn > 0:
        logits = torch.cat([prev[i] for i in sub])
    return backend.decode(emb, shapes, boxes, points, labels, logits)


@dataclass
class LiveSession:
    """One simulated session carried across optimizer steps, advanced one turn per step.

    Continued-session training: instead of replaying a session's earlier turns without gradients in
    every step (``run_sessions``: 3.1 decoder calls per step for budgets uniform in 0..4), each step
    decodes the next turn of sessions already in flight, with gradients, and keeps the answer as the
    state the next click is chosen from. Every turn of a session is trained once, so a pool of sessions
    with budget K trains turns 0..K equally often, as final-turn training with budgets uniform in 0..K
    does, at one decoder call per step. The earlier turns were answered by weights a few steps older
    (the pool's size): the prompts and fed-back logits a turn sees are, as at inference, data.

    Attributes:
        item: the target.
        box: the first box (x0, y0, x1, y1 inclusive pixels), or None for a click-first session.
        budget: corrective clicks after the first prompt.
        prompting: which prompts reach the model each turn.
        clicks: clicks placed so far (original pixels), the click-first session's first click included.
        prev: (1, 1, L, L) detached logits of the last turn, or None before the first.
        turn: the next turn to decode (0 = first prompt).
        done: the session has ended (budget spent, mask perfect, or empty ground truth).
    """

    item: ClickTarget
    box: Box | None
    budget: int
    prompting: Prompting = Prompting.ALL
    clicks: list[Point] = field(default_factory=list)
    prev: torch.Tensor | None = None
    turn: int = 0
    done: bool = False

    def __post_init__(self) -> None:
        self.prompting = Prompting(self.prompting)
        if self.budget < 0:
            raise ValueError(f"click budget must be >= 0, got {self.budget}")
        if self.box is None and not self.clicks:
            first = _first_click(self.item.gt)
            if first is None:
                self.done = True  # empty ground truth: nothing to segment
            else:
                self.clicks.append(first)


def advance_sessions(
    backend: TrainableBackend,
    embeddings: torch.Tensor,
    sessions: Sequence[LiveSession],
    *,
    no_harm_weight: float = 0.0,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    click_focus_weight: float = 0.0,
    click_focus_radius: float = 0.5,
    alt_click_prob: float = 0.0,
    rng: np.random.Generator | None = None,
) -> torch.Tensor | None:
    """Decode the next turn of each unfinished session with gradients and advance it.

    Sessions at the same turn with the same first-prompt kind and prompting mode share a decoder call.
    The loss, ``no_harm_weight`` and the click focus are those of ``run_sessions`` at a session's last turn.

    Args:
        embeddings: (N, C, h, w) cached embeddings; ``session.item.index`` selects a row.
        sessions: updated in place (clicks, prev, turn, done).

    Returns:
        The mean loss over the sessions decoded, or None when every session had already ended.
    """
    size = backend.low_res
    live = [s for s in sessions if not s.done]
    groups: dict[tuple, list[LiveSession]] = {}
    for s in live:
        groups.setdefault((s.turn, s.box is not None, s.prompting), []).append(s)
    terms: list[torch.Tensor] = []
    for (turn, has_box, mode), group in groups.items():
        items = [s.item for s in group]
        plan = SessionPlan([s.box for s in group], [s.budget for s in group], mode)
        sub = list(range(len(group)))
        low = _decode(backend, embeddings, items, plan, mode, sub, [s.clicks for s in group],
                      [s.prev for s in group], turn, has_box)
        focus = click_focus(items, [s.clicks[-1] if turn > 0 else None for s in group], size, click_focus_weight,
                            click_focus_radius)
        loss, harm = _loss_terms(low, items, [s.prev for s in group], size, bce_weight, dice_weight, no_harm_weight,
                                 focus)
        terms.append(loss)
        if harm is not None:
            terms.append(harm)
        for j, s in enumerate(group):
            s.prev = low[j : j + 1].detach()
            pred = backend.to_original(s.prev[0, 0], s.item.resized, s.item.shape)
            s.done = not _continue(pred, s.item.gt, s.clicks, s.turn, s.budget, alt_click_prob, rng)
            s.turn += 1
    return torch.stack(terms).sum() / len(live) if terms else None
