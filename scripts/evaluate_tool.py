#!/usr/bin/env python
"""Released vs adapted segmenter weights on held-out cases: Dice per click per prompting mode, NoC@85/90.

Every (slice, label) item of the dataset's ``test`` cases gets a jittered box, then expert corrective
clicks, through the real inference path (``Interaction`` over a ``ToolSession``), for each prompting mode
(all / all_logits / newest) and each set of weights; NoC@85 and NoC@90 use the standard click-only protocol.
Beside them, the trivial baseline (docs/architecture.md): the ellipse inscribed in the same box (no model). The
image embeddings come from the same on-disk cache training uses (the encoder is frozen, so released and
adapted weights share them). Writes ``tool_eval.json`` (rows + summary), ``tool_eval.md`` (tables) and
``dice_per_click.png`` to ``--out``, and prints the best prompting mode per set of weights.

Example::

    python scripts/evaluate_tool.py --dataset sample-data/studies --adapted runs/tool_ft/adapted.pt --out runs/tool_eval
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Must be set before torch loads libgomp. With the default (spinning) wait policy, two OpenMP threads on a
# shared 2-core machine spin at every barrier while the other is descheduled: measured 7 s per training
# step instead of 0.7 s when other processes were running. Passive waiting costs nothing when idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MODES = ("all", "all_logits", "newest")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, required=True, help="folder with an MSD-style dataset.json")
    p.add_argument("--split", default="test", help="held-out split to evaluate (default: test)")
    p.add_argument("--backend", default="litemedsam")
    p.add_argument("--adapted", type=Path, default=None,
                   help="adapted.pt, or a folder holding one (a run folder or a bundle's models/); omit: released only")
    p.add_argument("--no-released", action="store_true", help="skip the released weights (adapted only)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--modes", default=",".join(MODES), help="prompting modes, comma separated")
    p.add_argument("--local-radius", default="none",
                   help="local merge radii to compare, comma separated (multiples of the mask's equivalent radius; "
                        "'none' = each click's answer replaces the mask), e.g. none,0.5,1")
    p.add_argument("--clicks", type=int, default=4, help="corrective clicks after the box")
    p.add_argument("--noc-max", type=int, default=20, help="NoC@85 / NoC@90 click budget")
    p.add_argument("--max-per-case", type=int, default=None, help="cap of (slice, label) items per case")
    p.add_argument("--max-per-label", type=int, default=None,
                   help="cap of items per (case, label), evenly spaced over that label's slices (every label keeps "
                        "a share; --max-per-case can skip labels on volumes with many labels per slice)")
    p.add_argument("--labels", default=None, help="label names, comma separated (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="runs/embedding_cache")
    p.add_argument("--ct-window", default="40,400", help="CT level,width in HU")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def markdown(summary: dict, clicks: int) -> str:
    after = [f"+{c} click{'s' if c > 1 else ''}" for c in range(1, clicks + 1)]
    head = ["weights", "prompting", "n", "ellipse in box", "box only", *after, f"{clicks} clicks − box", "monotone",
            "NoC@85 (clicks only)", "reached 0.85", "NoC@90", "reached 0.90"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for weights, per_mode in summary.items():
        for mode, s in per_mode.items():
            d = s["dice_per_click"]
            cells = [weights, mode, str(s["n"]), _num(s.get("ellipse"), 3), *[f"{v:.3f}" for v in d],
                     f"{d[-1] - d[0]:+.3f}", "yes" if s["monotone"] else "no", f"{s['noc@85']:.2f}",
                     f"{100 * s['reached@85']:.0f}%", _num(s.get("noc@90"), 2),
                     "–" if s.get("reached@90") is None else f"{100 * s['reached@90']:.0f}%"]
            lines.append("| " + " | ".join(cells) + " |")
    per_label = ["", "| weights | prompting | label | n | ellipse in box | box only | after each click | NoC@85 | "
                     "NoC@90 |", "|---|---|---|---|---|---|---|---|---|"]
    for weights, per_mode in summary.items():
        for mode, s in per_mode.items():
            for label, pl in s["per_label"].items():
                d = pl["dice_per_click"]
                per_label.append(f"| {weights} | {mode} | {label} | {pl['n']} | {_num(pl.get('ellipse'), 3)} | "
                                 f"{d[0]:.3f} | {' → '.join(f'{v:.3f}' for v in d[1:])} | {pl['noc@85']:.2f} | "
                                 f"{_num(pl.get('noc@90'), 2)} |")
    return "\n".join(lines + per_label) + "\n"


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from lib.data.dataset import Dataset
    from lib.learning.segmenter.backends import make_backend
    from lib.learning.segmenter.curves import plot_dice_per_click
    from lib.learning.segmenter.data import build_slice_set
    from lib.learning.segmenter.embedding_cache import EmbeddingCache
    from lib.learning.segmenter.eval import evaluate_weights, per_label_subset, summarize
    from lib.tools.bundle import load_tool
    from lib.tools.registry import bundle_dir

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    radii = [None if r.strip().lower() == "none" else float(r) for r in args.local_radius.split(",") if r.strip()]
    level, width = (float(v) for v in args.ct_window.split(","))
    ds = Dataset.from_dir(args.dataset)
    cases = ds.cases(args.split)
    if not cases:
        raise SystemExit(f"{args.dataset}: split {args.split!r} has no cases")
    backend = make_backend(args.backend)
    t0 = time.perf_counter()
    cache = EmbeddingCache(args.cache_dir)
    data = build_slice_set(ds, cases, backend, cache, labels=args.labels.split(",") if args.labels else None,
                           max_per_case=args.max_per_case, ct_window=(level, width), desc=f"{args.split} slices",
                           progress=not args.no_progress)
    data = per_label_subset(data, args.max_per_label)
    logging.info("%d items on %d slices of %s; cache %d hits / %d misses in %.0fs", len(data.items), data.n_slices,
                 [c.case_id for c in cases], cache.hits, cache.misses, time.perf_counter() - t0)
    variants = {} if args.no_released else {"released": ""}
    if args.adapted is not None:
        adapted = args.adapted / "adapted.pt" if args.adapted.is_dir() else args.adapted
        if not adapted.is_file():
            raise SystemExit(f"no adapted weights at {adapted}")
        variants["adapted"] = str(adapted)
    if not variants:
        raise SystemExit("nothing to evaluate: give --adapted or drop --no-released")
    rows, summary = [], {}
    for name, path in variants.items():
        tool = load_tool(bundle_dir(args.backend), adapted=path)
        logging.info("%s: %s", name, tool.weights)
        r = evaluate_weights(backend, tool, data, modes, args.clicks, args.noc_max, args.seed, desc=name,
                             progress=not args.no_progress, local_radii=radii)
        rows += [{"weights": name, **x} for x in r]
        summary[name] = summarize(r, args.clicks)
    args.out.mkdir(parents=True, exist_ok=True)
    best = {w: max(s, key=lambda m: (s[m]["dice_per_click"][-1], -s[m]["noc@85"])) for w, s in summary.items()}
    report = {"dataset": str(args.dataset), "split": args.split, "cases": [c.case_id for c in cases],
              "items": len(data.items), "clicks": args.clicks, "noc_max": args.noc_max, "seed": args.seed,
              "weights": variants, "best_mode": best, "summary": summary, "rows": rows,
              "seconds": round(time.perf_counter() - t0, 1)}
    (args.out / "tool_eval.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "tool_eval.md").write_text(markdown(summary, args.clicks))
    plot_dice_per_click({f"{w} · {m}": s["dice_per_click"] for w, per in summary.items() for m, s in per.items()},
                        args.out / "dice_per_click.png",
                        title=f"held-out {args.split}: {len(data.items)} items, {len(cases)} cases")
    print(markdown(summary, args.clicks))
    print("best prompting mode (Dice after the last click, then NoC@85):", json.dumps(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
