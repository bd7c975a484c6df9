"""Segmentation metrics of the evaluation protocol (docs/architecture.md): Dice, IoU, per-turn curves, NoC.

Masks are (H, W) bool arrays at the ground truth's resolution (resample predictions with nearest
neighbour before calling; never threshold a resampled 0/255 image). An empty prediction of an empty
target scores 1.0 (the reference convention), so a correct "nothing here" is not punished.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lib.agent.clicks import corrective_click, not_clicked_map
from lib.tools.base import ToolSession
from lib.tools.interaction import Interaction, Prompting

#: NoC thresholds of the protocol: NoC@85 and NoC@90
DEFAULT_NOC_THRESHOLDS = (0.85, 0.90)
#: click budget of NoC; a target not reached within it counts as this many clicks (standard convention)
DEFAULT_MAX_CLICKS = 20


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.dtype != bool or gt.dtype != bool:
        raise TypeError(
            f"masks must be bool, got pred {pred.dtype} and gt {gt.dtype}; convert with mask > 0 at load time"
        )
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ; resample pred to the gt grid (nearest) first")
    return pred, gt


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice = 2|P∩G| / (|P| + |G|); 1.0 when both are empty."""
    pred, gt = _pair(pred, gt)
    denom = int(pred.sum()) + int(gt.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred & gt).sum()) / denom


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU = |P∩G| / |P∪G|; 1.0 when both are empty."""
    pred, gt = _pair(pred, gt)
    union = int((pred | gt).sum())
    return 1.0 if union == 0 else int((pred & gt).sum()) / union


def per_turn(masks: Sequence[np.ndarray], gt: np.ndarray) -> dict[str, list[float]]:
    """Dice and IoU of each mask of an episode (one per executed action, Stop not included)."""
    return {"dice": [dice(m, gt) for m in masks], "iou": [iou(m, gt) for m in masks]}


def noc_key(threshold: float) -> str:
    """Result key of a NoC threshold: 0.85 -> "noc@85"."""
    return f"noc@{round(threshold * 100)}"


def noc(
    session: ToolSession,
    gt: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_NOC_THRESHOLDS,
    max_clicks: int = DEFAULT_MAX_CLICKS,
    prompting: Prompting | str = Prompting.ALL,
    local_radius: float | None = None,
) -> dict[str, Any]:
    """Number of clicks the standard click simulator needs to reach each IoU threshold.

    Protocol: start from an empty mask, place ``clicks.corrective_click`` after ``clicks.corrective_click``
    (so the first one is a positive click at the interior of the largest target component), each sent
    through one ``Interaction`` with ``prompting`` (default: every click so far). Clicking stops when the
    highest threshold is reached, ``max_clicks`` clicks were placed, or no unclicked error pixel is left.

    Args:
        session: an encoded slice of the tool under test.
        gt: (H, W) bool ground truth; an empty gt needs 0 clicks (the empty start mask already has IoU 1).
        thresholds: IoU levels in (0, 1].
        max_clicks: click budget; a threshold not reached counts as ``max_clicks`` clicks.
        prompting: which prompts reach the model each click (see ``Prompting``).
        local_radius: merge each answer locally (see ``Interaction``); None = each answer replaces the mask.

    Returns:
        ``{"noc@85": int, "noc@90": int, ..., "reached": {key: bool}, "ious": [IoU after click 1..n],
        "clicks": [Point, ...]}``.
    """
    if not thresholds or not all(0.0 < t <= 1.0 for t in thresholds):
        raise ValueError(f"NoC thresholds must be IoU levels in (0, 1], got {thresholds}")
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    gt = np.asarray(gt)
    if tuple(gt.shape) != tuple(session.shape):
        raise ValueError(f"gt {gt.shape} must have the session's (H, W) shape {tuple(session.shape)}")
    inter = Interaction(session, prompting=Prompting(prompting), local_radius=local_radius)
    clicks, ious = [], []
    first_at: dict[float, int] = {}
    score = iou(inter.mask, gt)
    for t in thresholds:
        if score >= t:
            first_at[t] = 0
    while len(clicks) < max_clicks and len(first_at) < len(thresholds):
        click = corrective_click(inter.mask, gt, not_clicked=not_clicked_map(gt.shape, clicks))
        if click is None:
            break
        inter.add_point(click.x, click.y, click.positive)
        clicks.append(click)
        score = iou(inter.mask, gt)
        ious.append(score)
        for t in thresholds:
            if t not in first_at and score >= t:
                first_at[t] = len(clicks)
    out: dict[str, Any] = {noc_key(t): first_at.get(t, max_clicks) for t in thresholds}
    out["reached"] = {noc_key(t): t in first_at for t in thresholds}
    out["ious"] = ious
    out["clicks"] = clicks
    return out


def aggregate(rows: Iterable[Mapping[str, Any]], key: str = "label") -> dict[str, Any]:
    """Means of every numeric field, per value of ``key`` and overall.

    Args:
        rows: one mapping per case and target, e.g. ``{"label": "kidney", "dice": 0.9, "turns": 3}``.
            Numeric fields (int or float, not bool) are averaged; others (lists, strings) are ignored.
            NaN values and rows missing a field are left out of that field's mean.
        key: the field to group by.

    Returns:
        ``{"per_label": {label: {field: mean, "n": rows}}, "overall": {field: mean over rows, "n": rows},
        "class_mean": {field: mean of the per-label means}}``. ``overall`` weighs every row equally,
        ``class_mean`` every label equally (the reference reports both).
    """
    rows = list(rows)
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for row in rows:
        if key not in row:
            raise ValueError(f"row {dict(row)!r} has no {key!r} field to group by")
        groups.setdefault(row[key], []).append(row)
    per_label = {label: _means(group, key) for label, group in sorted(groups.items(), key=lambda kv: str(kv[0]))}
    fields = sorted({f for m in per_label.values() for f in m if f != "n"})
    class_mean = {}
    for f in fields:
        vals = [m[f] for m in per_label.values() if f in m]
        class_mean[f] = float(np.mean(vals))
    return {"per_label": per_label, "overall": _means(rows, key), "class_mean": class_mean}


def _means(rows: Sequence[Mapping[str, Any]], key: str) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for row in rows:
        for f, v in row.items():
            if f == key or isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                continue
            if not math.isnan(float(v)):
                values.setdefault(f, []).append(float(v))
    out: dict[str, float] = {f: float(np.mean(v)) for f, v in sorted(values.items())}
    out["n"] = len(rows)
    return out
