"""Before/after evaluation of a segmenter's clicks through the real inference path.

For every (slice, label) item and prompting mode, an ``Interaction`` over a ``ToolSession`` (exactly
what the interactive infer task and the agent use) receives a jittered ground-truth box, then expert
corrective clicks (``lib.agent.clicks.corrective_click``, never the same pixel twice). Reported per
item: Dice after the box and after each click (``dice_0`` .. ``dice_K``), NoC@85 and NoC@90 with the
standard click-only protocol (``lib.agent.metrics.noc``, max ``noc_max`` clicks), and the Dice of the trivial
baseline (docs/architecture.md): the ellipse inscribed in the same box, no model at all (``ellipse``). The box of an
item is the same for every mode and every set of weights (seeded by item index), so rows are paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lib.agent.clicks import corrective_click, jittered_box, not_clicked_map
from lib.agent.metrics import dice, noc
from lib.agent.policies.ellipse import ellipse_mask
from lib.learning.segmenter.backends import TrainableBackend
from lib.learning.segmenter.data import SliceSet
from lib.learning.segmenter.embedding_cache import CachedEmbedding
from lib.tools.base import Tool
from lib.tools.interaction import Interaction, Prompting


def per_label_subset(data: SliceSet, n: int | None) -> SliceSet:
    """At most ``n`` items of every (case, label), evenly spaced over that label's slices, in the input order.

    ``SliceSet.subset`` spaces items evenly over the whole (slice, label) list, which on a volume with many
    labels per slice can skip a label entirely (the stride aliases with the labels per slice); this keeps
    every label of every case, e.g. small organs that appear on few slices.
    """
    if n is None:
        return data
    if n < 1:
        raise ValueError(f"n must be >= 1 or None, got {n}")
    groups: dict[tuple[str, str], list[int]] = {}
    for i, it in enumerate(data.items):
        groups.setdefault((it.case_id, it.label), []).append(i)
    keep = sorted(g[j] for g in groups.values() for j in np.unique(np.linspace(0, len(g) - 1, min(n, len(g)))
                                                                     .round().astype(int)))
    return SliceSet(data.embeddings, [data.items[i] for i in keep], data.cases)


def box_session_dice(session, gt: np.ndarray, box, clicks: int, prompting: Prompting,
                     local_radius: float | None = None) -> list[float]:
    """Dice after ``box`` and after each of ``clicks`` corrective clicks (a perfect mask keeps its value);
    ``local_radius``: see ``Interaction`` (None = each answer replaces the mask)."""
    inter = Interaction(session, prompting=prompting, local_radius=local_radius)
    inter.add_box(box.as_tuple())
    out, placed = [dice(inter.mask, gt)], []
    for _ in range(clicks):
        click = corrective_click(inter.mask, gt, not_clicked=not_clicked_map(gt.shape, placed))
        if click is None:
            out.append(out[-1])
            continue
        placed.append(click)
        inter.add_point(click.x, click.y, click.positive)
        out.append(dice(inter.mask, gt))
    return out


def evaluate_weights(
    backend: TrainableBackend,
    tool: Tool,
    data: SliceSet,
    modes: Sequence[Prompting | str] = tuple(Prompting),
    clicks: int = 4,
    noc_max: int = 20,
    seed: int = 0,
    box_jitter: float = 0.1,
    desc: str = "evaluate",
    progress: bool = True,
    local_radii: Sequence[float | None] = (None,),
) -> list[dict[str, Any]]:
    """One row per (item, mode, local radius): ``{"case", "label", "mode", "dice_0".."dice_K", "ellipse",
    "noc@85", "reached@85", "noc@90", "reached@90"}``; ``mode`` is the prompting mode, suffixed ``+local<r>`` for
    a local merge of radius r; ``ellipse`` is the Dice of the ellipse inscribed in the item's box (the same
    number in every row of an item)."""
    rows = []
    for n, it in enumerate(tqdm(data.items, desc=desc, unit="item", disable=not progress, mininterval=5.0)):
        entry = CachedEmbedding(data.embeddings[it.index], it.resized, it.shape)
        session = backend.session(entry, tool=tool)
        box = jittered_box(it.gt, np.random.default_rng([seed, n]), box_jitter)
        trivial = round(dice(ellipse_mask(box, it.gt.shape), it.gt), 4)
        for mode, radius in [(Prompting(m), r) for m in modes for r in local_radii]:
            curve = box_session_dice(session, it.gt, box, clicks, mode, radius)
            # one click sequence serves both thresholds: it runs until IoU 0.90 (or the budget)
            clicks_only = noc(session, it.gt, thresholds=(0.85, 0.90), max_clicks=noc_max, prompting=mode,
                              local_radius=radius)
            name = mode.value if radius is None else f"{mode.value}+local{radius:g}"
            rows.append({"case": it.case_id, "label": it.label, "mode": name,
                         **{f"dice_{c}": round(v, 4) for c, v in enumerate(curve)}, "ellipse": trivial,
                         **{key: clicks_only[key] for key in ("noc@85", "noc@90")},
                         **{f"reached@{t}": clicks_only["reached"][f"noc@{t}"] for t in (85, 90)}})
    return rows


def summarize(rows: Sequence[dict[str, Any]], clicks: int = 4) -> dict[str, dict[str, Any]]:
    """Per mode: mean Dice per click, mean ellipse-in-box Dice, mean NoC@85 / NoC@90, share reaching IoU 0.85 /
    0.90, per-label Dice curves (rows without ``ellipse`` / ``noc@90``, from older runs, report None there)."""
    out: dict[str, dict[str, Any]] = {}
    for mode in sorted({r["mode"] for r in rows}):
        sel = [r for r in rows if r["mode"] == mode]
        curve = [float(np.mean([r[f"dice_{c}"] for r in sel])) for c in range(clicks + 1)]
        per_label = {}
        for label in sorted({r["label"] for r in sel}):
            lab = [r for r in sel if r["label"] == label]
            per_label[label] = {"n": len(lab),
                                "dice_per_click": [round(float(np.mean([r[f"dice_{c}"] for r in lab])), 4)
                                                   for c in range(clicks + 1)],
                                "ellipse": _mean(lab, "ellipse", 4),
                                "noc@85": _mean(lab, "noc@85", 2), "noc@90": _mean(lab, "noc@90", 2)}
        out[mode] = {
            "n": len(sel),
            "dice_per_click": [round(v, 4) for v in curve],
            "monotone": bool(all(b >= a - 1e-9 for a, b in zip(curve, curve[1:]))),
            "ellipse": _mean(sel, "ellipse", 4),
            "noc@85": _mean(sel, "noc@85", 3),
            "reached@85": _mean(sel, "reached@85", 3),
            "noc@90": _mean(sel, "noc@90", 3),
            "reached@90": _mean(sel, "reached@90", 3),
            "per_label": per_label,
        }
    return out


def _mean(rows: Sequence[dict[str, Any]], key: str, digits: int) -> float | None:
    vals = [float(r[key]) for r in rows if r.get(key) is not None]
    return round(float(np.mean(vals)), digits) if vals else None
