#!/usr/bin/env python
"""Evaluate a policy on a dataset folder (design §6) with same-run baselines; JSON + Markdown + PNGs.

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

Policies come from ``POLICIES`` (``register_policy``); later issues add ``compact`` and ``vlm`` there.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lib.agent.actions import Box  # noqa: E402
from lib.agent.clicks import DEFAULT_BOX_JITTER, jittered_box  # noqa: E402
from lib.agent.env import EnvConfig, SegmentationEnv  # noqa: E402
from lib.agent.expert import ExpertConfig, ExpertPolicy  # noqa: E402
from lib.agent.metrics import aggregate, dice, iou, noc  # noqa: E402
from lib.agent.policies.base import Policy, Prefixed  # noqa: E402
from lib.agent.policies.box import BoxPolicy  # noqa: E402
from lib.agent.policies.ellipse import ellipse_mask  # noqa: E402
from lib.agent.rollout import (  # noqa: E402
    SCRIPT_BACKENDS,
    add_episode_args,
    episode_seed,
    load_backend,
    rollout,
    sample_options,
    window_slice,
)
from lib.agent.trajectories import Trajectory  # noqa: E402
from lib.data.dataset import Dataset, iter_slices  # noqa: E402

#: a policy factory: (env, args, box, handoff) -> Policy. ``box`` is this target's jittered ground-truth box
#: (the same for every policy); with ``handoff`` True the policy must start with it (``Prefixed`` does that
#: for policies that do not handle it themselves).
PolicyFactory = Callable[[SegmentationEnv, argparse.Namespace, Box, bool], Policy]
POLICIES: dict[str, PolicyFactory | None] = {}
#: policies that read the ground truth (oracles): reported as upper bounds, never as deployable results
ORACLES = {"expert", "box"}


def register_policy(name: str) -> Callable[[PolicyFactory], PolicyFactory]:
    """Add a ``--policy`` choice; later issues register "compact" and "vlm" with this decorator."""

    def deco(fn: PolicyFactory) -> PolicyFactory:
        POLICIES[name] = fn
        return fn

    return deco


@register_policy("expert")
def _expert(env: SegmentationEnv, args: argparse.Namespace, box: Box, handoff: bool) -> Policy:
    policy = ExpertPolicy(env, ExpertConfig(max_actions=args.max_turns))
    return Prefixed([box], policy) if handoff else policy


@register_policy("box")
def _box(env: SegmentationEnv, args: argparse.Namespace, box: Box, handoff: bool) -> Policy:
    # one box in both modes: the hand-off box (a jittered ground-truth box, as a user draws it)
    return BoxPolicy(box=box)


# no factory: a mask baseline without a tool (lib.agent.policies.ellipse), scored directly
POLICIES["ellipse"] = None


_COMPACT: dict[str, Policy] = {}


@register_policy("compact")
def _compact(env: SegmentationEnv, args: argparse.Namespace, box: Box, handoff: bool) -> Policy:
    # the learned CPU policy (lib.agent.policies.compact); loaded once per run, greedy (deterministic)
    if not args.checkpoint:
        raise SystemExit("--policy compact needs --checkpoint DIR (a folder with policy.pt + policy.json)")
    from lib.agent.policies.compact import CompactPolicy

    if args.checkpoint not in _COMPACT:
        _COMPACT[args.checkpoint] = CompactPolicy.load(args.checkpoint)
    policy = _COMPACT[args.checkpoint]
    return Prefixed([box], policy) if handoff else policy


# -- per-episode scoring -------------------------------------------------------------------------------
def turn_curves(traj: Trajectory, gt: np.ndarray, max_turns: int) -> dict[str, list[float]]:
    """Dice / IoU after turn 0..max_turns (turn 0 = empty mask). A turn is a Box/Point action issued; an
    invalid one leaves the mask as it was; after the episode ends the final mask carries forward."""
    empty = np.zeros(gt.shape, dtype=bool)
    d, j = [dice(empty, gt)], [iou(empty, gt)]
    k = 0
    for a in traj.actions:
        if a.get("type") == "stop":
            continue
        if "invalid" not in a and k < len(traj.dices):
            d.append(traj.dices[k])
            j.append(traj.ious[k])
            k += 1
        else:
            d.append(d[-1])
            j.append(j[-1])
    while len(d) < max_turns + 1:
        d.append(d[-1])
        j.append(j[-1])
    return {"dice": d[: max_turns + 1], "iou": j[: max_turns + 1]}


def score_episode(traj: Trajectory, gt: np.ndarray, max_turns: int) -> dict[str, Any]:
    curves = turn_curves(traj, gt, max_turns)
    turns = sum(1 for a in traj.actions if a.get("type") != "stop")
    return {
        "dice_per_turn": curves["dice"],
        "iou_per_turn": curves["iou"],
        "final_dice": curves["dice"][-1],
        "final_iou": curves["iou"][-1],
        "turns": turns,
        "executed": traj.n_actions,
        "invalid": traj.n_invalid,
        "stop_reason": traj.stop_reason,
        "decoder_ms": traj.timings["decoder_ms"],
        "policy_ms": traj.timings["policy_ms"],
    }


def score_mask(mask: np.ndarray, gt: np.ndarray, max_turns: int) -> dict[str, Any]:
    """A one-turn result that is a mask (the ellipse baseline)."""
    empty = np.zeros(gt.shape, dtype=bool)
    d1, j1 = dice(mask, gt), iou(mask, gt)
    return {
        "dice_per_turn": [dice(empty, gt)] + [d1] * max_turns,
        "iou_per_turn": [iou(empty, gt)] + [j1] * max_turns,
        "final_dice": d1,
        "final_iou": j1,
        "turns": 1,
        "executed": 1,
        "invalid": 0,
        "stop_reason": "mask_baseline",
        "decoder_ms": 0.0,
        "policy_ms": 0.0,
    }


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over targets of one policy's (or baseline's) per-episode results."""
    if not results:
        return {}
    turns = sum(r["turns"] for r in results)
    return {
        "dice_per_turn": np.mean([r["dice_per_turn"] for r in results], axis=0).tolist(),
        "iou_per_turn": np.mean([r["iou_per_turn"] for r in results], axis=0).tolist(),
        "final_dice": float(np.mean([r["final_dice"] for r in results])),
        "final_iou": float(np.mean([r["final_iou"] for r in results])),
        "mean_turns": float(np.mean([r["turns"] for r in results])),
        "decoder_ms_per_turn": float(sum(r["decoder_ms"] for r in results) / max(turns, 1)),
        "policy_ms_per_turn": float(sum(r["policy_ms"] for r in results) / max(turns, 1)),
    }


# -- plots and report ----------------------------------------------------------------------------------
def plot_dice_vs_turn(path: Path, curves: dict[str, list[float]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    styles = {"box": ":", "expert": "--", "ellipse": "-."}
    for name, curve in curves.items():
        ax.plot(range(len(curve)), curve, styles.get(name, "-"), marker="o", label=name)
    ax.set_xlabel("turn (Box/Point actions)")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_strip(path: Path, strips: list[dict[str, Any]], max_turns: int) -> None:
    """One row per case: the slice with the ground truth, then the mask after each turn with its prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not strips:
        return
    cols = max_turns + 1
    fig, axes = plt.subplots(len(strips), cols, figsize=(2.2 * cols, 2.3 * len(strips)), dpi=90, squeeze=False)
    for r, s in enumerate(strips):
        img = s["image"] if s["image"].ndim == 2 else s["image"].mean(axis=2) / 255.0
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.contour(s["gt"], levels=[0.5], colors="yellow", linewidths=0.8)
                ax.set_title(f"{s['case_id']}:{s['slice_index']} {s['label']}", fontsize=7)
                continue
            if c - 1 >= len(s["masks"]):
                ax.set_title(f"turn {c}: stopped", fontsize=7)
                continue
            m = s["masks"][c - 1]
            overlay = np.zeros((*m.shape, 4))
            overlay[m] = (0.0, 1.0, 0.0, 0.5)
            ax.imshow(overlay)
            ax.contour(s["gt"], levels=[0.5], colors="yellow", linewidths=0.5)
            for a in s["actions"][:c]:
                if a["type"] == "box":
                    x0, y0, x1, y1 = a["box"]
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="cyan", lw=0.8))
                elif a["type"] == "point":
                    ax.plot(*a["point"], "+" if a["positive"] else "x", color="lime" if a["positive"] else "red",
                            ms=6, mew=1.5)
            ax.set_title(f"turn {c}: Dice {s['dices'][c - 1]:.2f}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(path: Path, res: dict[str, Any]) -> None:
    t = res["max_turns"]
    lines = [
        f"# Evaluation: `{res['policy']}` ({res['mode']}, backend `{res['backend']}`)",
        "",
        f"Dataset `{res['dataset']}` split `{res['split']}`: {res['n_targets']} targets from {res['n_cases']} cases; "
        f"turn budget {t}; prompting `{res['prompting']}`; seed {res['seed']}.",
        "",
        "| run | final Dice | final IoU | mean turns | " + " | ".join(f"Dice@{i}" for i in range(t + 1)) + " |",
        "|---|---|---|---|" + "---|" * (t + 1),
    ]
    runs = [(res["policy"] + (" (oracle)" if res["policy"] in ORACLES else ""), res)]
    runs += [(f"baseline: {k}", v) for k, v in res["baselines"].items()]
    for name, r in runs:
        lines.append(
            f"| {name} | {r['final_dice']:.3f} | {r['final_iou']:.3f} | {r['mean_turns']:.2f} | "
            + " | ".join(f"{v:.3f}" for v in r["dice_per_turn"])
            + " |"
        )
    lat = res["latency_ms"]
    lines += [
        "",
        f"NoC@85 {res['noc85']:.2f}, NoC@90 {res['noc90']:.2f} (click simulator with this tool, max 20 clicks).",
        f"Latency: encoder {lat['encoder']:.0f} ms per slice (shared by all runs and labels), decoder "
        f"{lat['decoder']:.0f} ms "
        f"and policy {lat['policy']:.1f} ms per turn.",
        "",
        "## Per label",
        "",
        "| label | n | final Dice | final IoU | turns | box Dice | expert Dice |"
        + (" ellipse Dice |" if "ellipse" in res["baselines"] else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if "ellipse" in res["baselines"] else ""),
    ]
    for label, m in res["per_label"].items():
        row = (
            f"| {label} | {m['n']} | {m['final_dice']:.3f} | {m['final_iou']:.3f} | {m['turns']:.2f} | "
            f"{m['box_dice']:.3f} | {m['expert_dice']:.3f} |"
        )
        if "ellipse" in res["baselines"]:
            row += f" {m['ellipse_dice']:.3f} |"
        lines.append(row)
    lines += ["", "![Dice vs turn](dice_vs_turn.png)", "", "![turns](turns_strip.png)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


# -- main ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, type=Path, help="folder with an MSD-style dataset.json")
    p.add_argument("--split", default="test", choices=("training", "test"))
    p.add_argument("--policy", required=True, choices=sorted(POLICIES), help="policy to evaluate")
    p.add_argument("--checkpoint", default=None, help="policy weights folder (for policies that have weights)")
    p.add_argument("--tool-weights", default=None, help="adapted segmenter weights (folder or file)")
    p.add_argument("--mode", default="autonomous", choices=("autonomous", "handoff"))
    p.add_argument("--backend", default="litemedsam", choices=SCRIPT_BACKENDS,
                   help="segmentation backend (default litemedsam; 'fake' is a test double for tests only)")
    add_episode_args(p)
    p.add_argument("--max-turns", type=int, default=5, help="turn budget (Box/Point actions)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--labels", default=None, help="comma-separated label names or values (default: all)")
    p.add_argument("--max-slices-per-case", type=int, default=None)
    p.add_argument("--axis", type=int, default=0, help="slicing axis of 3D volumes")
    p.add_argument("--min-area", type=int, default=20, help="smallest target in pixels")
    p.add_argument("--box-jitter", type=float, default=DEFAULT_BOX_JITTER, help="hand-off box jitter (side fraction)")
    p.add_argument("--seed", type=int, default=0, help="seed of hand-off boxes and expert draws")
    p.add_argument("--strip-cases", type=int, default=4, help="cases shown in turns_strip.png")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    args.labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    if args.policy == "ellipse" and args.mode != "handoff":
        p.error("--policy ellipse needs --mode handoff: the ellipse is inscribed in the user's box")
    if args.max_turns < 1:
        p.error("--max-turns must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ds = Dataset.from_dir(args.dataset)
    tool = load_backend(args.backend, args.tool_weights, threads=args.threads)
    env_cfg = EnvConfig(max_turns=args.max_turns, prompting=args.prompting, local_radius=args.local_radius)
    env = SegmentationEnv(tool, env_cfg)
    handoff_mode = args.mode == "handoff"
    baselines = ["box", "expert"] + (["ellipse"] if handoff_mode else [])
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in [args.policy, *baselines]}
    rows: list[dict[str, Any]] = []
    strips: list[dict[str, Any]] = []
    strip_labels: set[str] = set()
    enc_ms: list[float] = []
    t0 = time.perf_counter()
    samples = iter_slices(ds, args.split, axis=args.axis, labels=args.labels, min_area=args.min_area,
                          max_per_case=args.max_slices_per_case)
    slice_key, session, image = None, None, None
    for sample in tqdm(samples, unit="target", desc=f"evaluate {args.policy}"):
        # encode once per slice: shared by the policy, every baseline, NoC and every label of the slice
        # (iter_slices yields a slice's labels one after another, so a one-entry cache is enough)
        if (sample.case_id, sample.slice_index) != slice_key:
            slice_key = (sample.case_id, sample.slice_index)
            image = window_slice(sample)
            session = tool.start(image)
            enc_ms.append(float(session.encoder_ms))
        key = (sample.case_id, sample.slice_index, sample.label_name)
        seed = episode_seed(args.seed, *key)
        # the same box for every policy and baseline of this target (its own stream, independent of policies)
        box = jittered_box(sample.gt, np.random.default_rng(seed), args.box_jitter)
        options = sample_options(sample, image=image, session=session)
        per: dict[str, dict[str, Any]] = {}
        trajs: dict[str, Trajectory] = {}
        for name in runs:  # the policy first, then the baselines (a policy that is a baseline runs once)
            if name == "ellipse":
                per[name] = score_mask(ellipse_mask(box, sample.gt.shape), sample.gt, args.max_turns)
                continue
            policy = POLICIES[name](env, args, box, handoff_mode)
            trajs[name] = rollout(env, policy, options, seed=seed)
            per[name] = score_episode(trajs[name], sample.gt, args.max_turns)
        for name in runs:
            runs[name].append(per[name])
        clicks = noc(session, sample.gt)
        main_res = per[args.policy]
        row = {
            "case_id": sample.case_id,
            "slice_index": sample.slice_index,
            "label": sample.label_name,
            "area": int(sample.gt.sum()),
            "final_dice": main_res["final_dice"],
            "final_iou": main_res["final_iou"],
            "turns": main_res["turns"],
            "dice_per_turn": main_res["dice_per_turn"],
            "stop_reason": main_res["stop_reason"],
            "noc85": clicks["noc@85"],
            "noc90": clicks["noc@90"],
            "encoder_ms": float(session.encoder_ms),  # of the slice (paid once for all its labels)
            "decoder_ms_per_turn": main_res["decoder_ms"] / max(main_res["turns"], 1),
            "policy_ms_per_turn": main_res["policy_ms"] / max(main_res["turns"], 1),
            "handoff_box": list(box.as_tuple()) if handoff_mode else None,
        }
        for b in baselines:
            row[f"{b}_dice"] = per[b]["final_dice"]
            row[f"{b}_iou"] = per[b]["final_iou"]
        rows.append(row)
        if args.policy in trajs and len(strips) < args.strip_cases and sample.label_name not in strip_labels:
            traj = trajs[args.policy]
            strip_labels.add(sample.label_name)
            strips.append({"case_id": sample.case_id, "slice_index": sample.slice_index, "label": sample.label_name,
                           "image": image, "gt": sample.gt, "masks": traj.mask_arrays(), "dices": traj.dices,
                           "actions": [a for a in traj.actions if a["type"] != "stop" and "invalid" not in a]})
    if not rows:
        raise SystemExit(f"no targets in split {args.split!r} of {args.dataset} (labels {args.labels or 'all'})")
    main_sum = summarise(runs[args.policy])
    agg = aggregate([{k: v for k, v in r.items() if k not in ("slice_index", "handoff_box")} for r in rows])
    results = {
        "policy": args.policy,
        "mode": args.mode,
        "backend": args.backend,
        "prompting": args.prompting,
        "local_radius": args.local_radius,
        "dataset": str(args.dataset),
        "split": args.split,
        "seed": args.seed,
        "max_turns": args.max_turns,
        "n_cases": len({r["case_id"] for r in rows}),
        "n_targets": len(rows),
        "dice_per_turn": main_sum["dice_per_turn"],
        "iou_per_turn": main_sum["iou_per_turn"],
        "final_dice": main_sum["final_dice"],
        "final_iou": main_sum["final_iou"],
        "mean_turns": main_sum["mean_turns"],
        "noc85": float(np.mean([r["noc85"] for r in rows])),
        "noc90": float(np.mean([r["noc90"] for r in rows])),
        "latency_ms": {
            "encoder": float(np.mean(enc_ms)),
            "decoder": main_sum["decoder_ms_per_turn"],
            "policy": main_sum["policy_ms_per_turn"],
        },
        "baselines": {b: summarise(runs[b]) for b in baselines},
        "per_label": agg["per_label"],
        "class_mean": agg["class_mean"],
        "checkpoint": args.checkpoint,
        "tool_weights": args.tool_weights,
        "wall_s": time.perf_counter() - t0,
        "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    curves = {args.policy: results["dice_per_turn"]}
    curves.update({b: s["dice_per_turn"] for b, s in results["baselines"].items() if b != args.policy})
    plot_dice_vs_turn(args.out / "dice_vs_turn.png", curves, f"{args.policy} ({args.mode}, {args.backend})")
    plot_strip(args.out / "turns_strip.png", strips, args.max_turns)
    write_report(args.out / "report.md", results)
    print(
        f"{args.policy} ({args.mode}, {args.backend}): final Dice {results['final_dice']:.3f}, IoU "
        f"{results['final_iou']:.3f}, {results['mean_turns']:.2f} turns on {len(rows)} targets; baselines "
        + ", ".join(f"{b} {s['final_dice']:.3f}" for b, s in results["baselines"].items())
        + f"; results in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
