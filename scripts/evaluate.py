#!/usr/bin/env python
"""Evaluate a policy on a dataset folder with same-run baselines (docs/architecture.md); JSON + Markdown + PNGs.

    python scripts/evaluate.py --dataset sample-data/studies --split test --policy expert \\
        --mode handoff --backend litemedsam --max-turns 5 --out eval/expert-handoff

For every (case, slice, label) target of the split (2D images, or 2D slices of 3D volumes where the label
covers >= ``--min-area`` pixels) the slice is encoded ONCE and that session is shared by the policy and
every baseline, so they differ only in their prompts:

- ``box``: box-only, one turn (the jittered ground-truth box = the hand-off box);
- ``expert``: the hybrid-prompting oracle at the same turn budget (the upper bound);
- ``ellipse`` (hand-off mode): the ellipse inscribed in the hand-off box, no model at all.

Modes: ``autonomous`` (the policy starts from nothing) and ``handoff`` (a jittered ground-truth box, drawn
with the same seed for every policy and baseline, is executed as the first action; the policy continues).
NoC@85/90 are the clicks the standard click simulator needs with this tool (``lib.agent.metrics.noc``,
max 20), a property of the tool on each target reported alongside.

Outputs in ``--out``: ``results.json`` (summary keys, ``baselines``, ``per_label``, ``rows``), ``report.md``,
``dice_vs_turn.png`` and ``turns_strip.png``.

``--scope volume`` evaluates whole-volume episodes instead (``lib.agent.volume_eval``): for every (3D case,
label) of the split, one hand-off box on the label's largest slice (``--seed-slice``), propagation through the
volume with the policy reviewing every slice, 3D Dice and NSD, corrective actions, seconds and encoder calls per
volume, beside the baselines ``propagation`` (no agent), ``expert`` (the oracle driving the same propagation),
``oracle_box`` (the ground-truth box on every slice) and ``oracle_ellipse`` (the ellipse in that box, no tool).
``--policy box`` is plain propagation there. Outputs:
``results.json`` (``scope: "volume"``, ``final_dice3d``, ``per_label``, ``baselines``, ``rows``), ``report.md``,
``dice3d_per_label.png``, ``actions_per_slice.png``.

Policies come from ``lib.agent.evaluation.POLICIES``: expert, box, ellipse, compact (``--checkpoint DIR``) and
vlm (``--checkpoint`` = a local Qwen3-VL / Qwen2.5-VL folder). The loop, the scoring and the report live in
``lib.agent.evaluation`` / ``lib.agent.eval_report``; this script only parses arguments. Episodes follow the
served ``EpisodeSettings`` unless ``--prompting/--local-radius/--max-turns/--ct-window/--box-jitter`` say otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

from lib.agent.eval_report import (  # noqa: E402
    plot_dice_vs_turn,
    plot_reliability,
    plot_strip,
    strips,
    write_report,
)
from lib.agent.evaluation import (  # noqa: E402
    POLICIES,
    SLICE_BASELINES,
    PolicyContext,
    Run,
    evaluate_targets,
    slice_results,
)
from lib.agent.policies.base import StopPolicy  # noqa: E402
from lib.agent.rollout import SCRIPT_BACKENDS, load_backend  # noqa: E402
from lib.agent.settings import add_episode_args, episode_from_args  # noqa: E402
from lib.agent.volume_eval import (  # noqa: E402
    BASELINES,
    SEED_RULES,
    SPLIT_EXPERT_BASELINES,
    evaluate_volumes,
    write_outputs,
)
from lib.data.dataset import Dataset, iter_slices  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, type=Path, help="folder with an MSD-style dataset.json")
    p.add_argument("--split", default="test", choices=("training", "test"))
    p.add_argument("--policy", required=True, choices=sorted(POLICIES), help="policy to evaluate")
    p.add_argument("--checkpoint", default=None, help="policy weights folder (compact: policy.pt + policy.json; "
                   "vlm: a local Qwen-VL checkpoint folder)")
    p.add_argument("--tool-weights", default=None, help="adapted segmenter weights (folder or file)")
    p.add_argument("--mode", default="autonomous", choices=("autonomous", "handoff"))
    p.add_argument("--backend", default="litemedsam", choices=SCRIPT_BACKENDS,
                   help="segmentation backend (default litemedsam; 'fake' is a test double for tests only)")
    add_episode_args(p)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--labels", default=None, help="comma-separated label names or values (default: all)")
    p.add_argument("--max-slices-per-case", type=int, default=None)
    p.add_argument("--axis", type=int, default=0, help="slicing axis of 3D volumes")
    p.add_argument("--min-area", type=int, default=20, help="smallest target in pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of hand-off boxes and expert draws")
    p.add_argument("--strip-cases", type=int, default=4, help="targets shown in turns_strip.png")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="device of the tool and the policy (cpu, cuda[:n])")
    p.add_argument("--scope", default="slice", choices=("slice", "volume"),
                   help="slice: one slice per target (default); volume: whole-volume episodes from one box")
    p.add_argument("--seed-slice", default="largest", choices=SEED_RULES,
                   help="volume scope: the slice the hand-off box is drawn on")
    p.add_argument("--baselines", default=None,
                   help=f"comma-separated baselines run beside the policy on the same encodings; slice scope: subset "
                        f"of {','.join(SLICE_BASELINES)} (default all; ellipse in hand-off mode only), volume scope: "
                        f"subset of {','.join(BASELINES)} (default all), plus {','.join(SPLIT_EXPERT_BASELINES)} on "
                        "request (the expert on the seed slice only / on the propagated slices only)")
    p.add_argument("--no-noc", action="store_true", help="slice scope: skip the click simulator's NoC@85/90")
    p.add_argument("--stop-quality", default=None,
                   help="compact: quality-gated stop of the policy (a threshold in (0, 1], or 'auto' = the threshold "
                        "validated with its calibration, scripts/calibrate_quality.py); default: the learned stop")
    p.add_argument("--gated-stop", default=None,
                   help="slice scope, compact: also run the same policy with this quality-gated stop ('auto' or a "
                        "threshold) as the baseline 'gated', to compare Dice and turns with the learned stop")
    args = p.parse_args(argv)
    for name in ("stop_quality", "gated_stop"):
        value = getattr(args, name)
        if value not in (None, "auto"):
            try:
                setattr(args, name, float(value))
            except ValueError:
                p.error(f"--{name.replace('_', '-')} must be 'auto' or a number in (0, 1], got {value!r}")
        if getattr(args, name) is not None and args.policy != "compact":
            p.error(f"--{name.replace('_', '-')} needs --policy compact (a policy that predicts its mask's quality)")
    if args.scope == "volume" and args.policy == "ellipse":
        p.error("--policy ellipse has no volume scope (there is nothing to propagate)")
    args.labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    if args.policy == "ellipse" and args.mode != "handoff":
        p.error("--policy ellipse needs --mode handoff: the ellipse is inscribed in the user's box")
    try:
        args.episode = episode_from_args(args, backend=args.backend)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ds = Dataset.from_dir(args.dataset)
    tool = load_backend(args.backend, args.tool_weights, threads=args.threads, device=args.device)
    if args.scope == "volume":
        return evaluate_volume_scope(args, ds, tool)
    wanted = SLICE_BASELINES if args.baselines is None else [b for b in args.baselines.split(",") if b]
    unknown = [b for b in wanted if b not in SLICE_BASELINES]
    if unknown:
        raise SystemExit(f"--baselines: unknown slice baseline(s) {unknown}; choose from {','.join(SLICE_BASELINES)}")
    baselines = [b for b in wanted if b != "ellipse" or args.mode == "handoff"]
    # a calibrated compact policy with the learned stop plays with raw qualities (same actions), so results.json
    # reports the value head before and after its calibration from the same episodes
    calibration = stored_calibration(args.checkpoint) if args.policy == "compact" else None
    raw = calibration is not None and args.stop_quality is None
    runs = [Run(args.policy, args.mode, args.checkpoint, stop_quality=args.stop_quality, raw_quality=raw)]
    runs += [Run(b, args.mode) for b in baselines if b != args.policy]  # an oracle policy is its own baseline
    if args.gated_stop is not None:
        runs.append(Run("compact", args.mode, args.checkpoint, name="gated", stop_quality=args.gated_stop))
        baselines.append("gated")
    samples = iter_slices(ds, args.split, axis=args.axis, labels=args.labels, min_area=args.min_area,
                          max_per_case=args.max_slices_per_case)
    t0 = time.perf_counter()
    ev = evaluate_targets(tool, samples, runs, args.episode, seed=args.seed, keep_trajectories=4 * args.strip_cases,
                          measure_noc=not args.no_noc,
                          context=PolicyContext(args.episode, device=args.device), desc=f"evaluate {args.policy}")
    if not ev.rows:
        raise SystemExit(f"no targets in split {args.split!r} of {args.dataset} (labels {args.labels or 'all'})")
    results = slice_results(ev, args.policy, baselines, args.episode, policy=args.policy, mode=args.mode,
                            backend=args.backend, meta={"dataset": str(args.dataset), "split": args.split,
                                                        "seed": args.seed, "checkpoint": args.checkpoint,
                                                        "tool_weights": args.tool_weights,
                                                        "stop_quality": args.stop_quality,
                                                        "gated_stop": args.gated_stop},
                            calibration=calibration if raw else None)
    if calibration is not None and not raw and "quality_calibration" in results:
        results["quality_calibration"]["calibrated"] = True  # the policy applied it while playing
    results["wall_s"] = time.perf_counter() - t0
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    curves = {args.policy: results["dice_per_turn"]}
    curves.update({b: s["dice_per_turn"] for b, s in results["baselines"].items() if b != args.policy})
    plot_dice_vs_turn(args.out / "dice_vs_turn.png", curves, f"{args.policy} ({args.mode}, {args.backend})")
    plot_strip(args.out / "turns_strip.png", strips(ev, args.policy, args.strip_cases), args.episode.max_turns)
    if results.get("quality_calibration"):
        plot_reliability(args.out / "reliability.png", {
            **({"policy, raw value head": results["quality_calibration_raw"]}
               if results.get("quality_calibration_raw") else {}),
            "policy" + (", calibrated" if results["quality_calibration"]["calibrated"] else ""):
                results["quality_calibration"],
            **({"tool (IoU output)": results["tool_quality_calibration"]}
               if results.get("tool_quality_calibration") else {})}, f"{args.policy} ({args.mode}), {args.split}")
    write_report(args.out / "report.md", results)
    if results.get("quality_calibration"):
        write_quality_pairs(args.out / "quality_pairs.csv", ev, args.policy, calibration if raw else None)
    print(
        f"{args.policy} ({args.mode}, {args.backend}): final Dice {results['final_dice']:.3f}, IoU "
        f"{results['final_iou']:.3f}, {results['mean_turns']:.2f} turns on {len(ev.rows)} targets; baselines "
        + ", ".join(f"{b} {s['final_dice']:.3f}" for b, s in results["baselines"].items())
        + f"; results in {args.out}"
    )
    return 0


def write_quality_pairs(path: Path, ev, run: str, calibration) -> None:
    """One row per mask the policy judged: where, the served quality (calibrated), the value head's raw one when
    the run played raw, the tool's IoU output and the true IoU (for your own reliability analysis)."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "slice_index", "label", "quality", "value_head_raw", "tool_iou_output", "true_iou"])
        for row, res in zip(ev.rows, ev.runs[run], strict=True):
            for q, true, tool in res.get("quality_pairs", []):
                served = calibration(q, tool) if calibration is not None else q
                w.writerow([row["case_id"], row["slice_index"], row["label"], f"{served:.4f}",
                            f"{q:.4f}" if calibration is not None else "", f"{tool:.4f}", f"{true:.4f}"])


def stored_calibration(checkpoint: str | None):
    """The quality calibration stored in a compact checkpoint (None when it has none)."""
    from lib.agent.policies.compact import CompactPolicy

    return CompactPolicy.load(checkpoint).calibration if checkpoint else None


def evaluate_volume_scope(args: argparse.Namespace, ds: Dataset, tool) -> int:
    run = Run(args.policy, args.mode, args.checkpoint)
    ctx = PolicyContext(args.episode, device=args.device)
    if args.policy == "box":
        policy = StopPolicy()  # the box, propagated, never corrected: plain propagation
    elif args.policy == "expert":
        policy = lambda env: POLICIES["expert"](env, run, None, ctx)  # noqa: E731 - the expert reads its env
    else:
        policy = POLICIES[args.policy](None, run, None, ctx)  # checkpoint policies do not hold an environment
    baselines = [b for b in args.baselines.split(",") if b]
    t0 = time.perf_counter()

    def show(row):
        print(f"  {row['case_id']} {row['label']}: {args.policy} {row['dice3d']:.3f}, "
              + ", ".join(f"{b} {row[f'{b}_dice3d']:.3f}" for b in baselines), flush=True)

    results = evaluate_volumes(ds, tool, policy, split=args.split, labels=args.labels, mode=args.mode,
                               env_config=args.episode.env_config(args.backend), windowing=args.episode.windowing,
                               box_jitter=args.episode.box_jitter, seed=args.seed, baselines=baselines,
                               seed_rule=args.seed_slice, progress=show)
    if not results["rows"]:
        raise SystemExit(f"no 3D targets in split {args.split!r} of {args.dataset} (labels {args.labels or 'all'})")
    results["settings"].update({"checkpoint": args.checkpoint, "tool_weights": args.tool_weights,
                                "episode": args.episode.record(args.backend)})
    results["wall_s"] = time.perf_counter() - t0
    write_outputs(results, args.out)
    print(f"{args.policy} ({args.mode}, volume, {args.backend}): 3D Dice {results['final_dice3d']:.3f} on "
          f"{results['n_targets']} targets; baselines "
          + ", ".join(f"{b} {s['final_dice3d']:.3f}" for b, s in results["baselines"].items())
          + f"; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
