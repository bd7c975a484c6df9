#!/usr/bin/env python
"""Benchmark the hybrid-prompting expert with a real tool (results in BENCHMARKS.md).

    python benchmarks/benchmark_expert.py quality --dataset /tmp/sd/studies --out bench/expert.json
    python benchmarks/benchmark_expert.py throughput --dataset /tmp/sd/studies --out bench/throughput.json

``quality``: every organ target (default liver, spleen, kidneys) of the CT cases of both splits is encoded
once; the expert then runs on that shared session for every (prompting, expert variant, strategy)
combination (hybrid = the Box-to-Point or Sequential-Click episode its per-episode draw picks),
and reports (a) the share of targets that reach IoU >= 0.85 within the turn budget, (b) mean Dice per turn
for Box-to-Point, Sequential-Click and hybrid, plus how many trajectories would be pruned.

``throughput``: runs ``scripts/generate_trajectories.py`` (fresh output files) with each parallel layout
(1 process x 2 torch threads, 2 threads x 1 torch thread sharing one tool, 2 processes x 1 torch thread)
and records trajectories per minute and the encoder / decoder / other split from its summary line.

Both write JSON and print a Markdown table ready for BENCHMARKS.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lib.agent.env import EnvConfig, SegmentationEnv  # noqa: E402
from lib.agent.expert import BOX_TO_POINT, HYBRID, SEQUENTIAL_CLICK, ExpertConfig, ExpertPolicy  # noqa: E402
from lib.agent.rollout import episode_seed, load_backend, rollout, sample_options, window_slice  # noqa: E402
from lib.agent.settings import EpisodeSettings  # noqa: E402
from lib.data.dataset import Dataset, iter_slices  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ORGANS = "liver,spleen,kidney_left,kidney_right"
STRATEGY_ORDER = (BOX_TO_POINT, SEQUENTIAL_CLICK, HYBRID)
#: expert variants compared (ExpertConfig overrides): "paper" = the published recipe (click-only corrections,
#: first helpful candidate in rank order, no opening fallback); "first" = box redraws and opening fallback
#: but selection="first"; "default" = this project's ExpertConfig defaults (redraws, fallback, best candidate)
VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"rebox_margins": (), "opening_fallback": False, "selection": "first"},
    "first": {"selection": "first"},
    "default": {},
}


def quality(args: argparse.Namespace) -> dict[str, Any]:
    ds = Dataset.from_dir(args.dataset)
    tool = load_backend(args.backend, args.tool_weights, threads=args.threads)
    labels = [s for s in args.labels.split(",") if s]
    promptings = [s for s in args.prompting.split(",") if s]
    # hybrid is not run separately: with the same seed, the hybrid expert's episode IS the Box-to-Point or the
    # Sequential-Click episode (its strategy draw is always the first draw of its generator, see
    # tests/agent/test_expert.py), so it is assembled per target from the two, at a third less decoder time
    variants = [v for v in args.variants.split(",") if v]
    combos = [(p, v, st) for p in promptings for v in variants for st in (BOX_TO_POINT, SEQUENTIAL_CLICK)]
    results: dict[str, list[dict[str, Any]]] = {f"{p}/{v}/{st}": [] for p in promptings for v in variants
                                                for st in STRATEGY_ORDER}
    mix = ExpertConfig().box_to_point_prob
    envs = {p: SegmentationEnv(tool, EnvConfig(max_turns=args.max_turns, prompting=p)) for p in promptings}
    targets: list[dict[str, Any]] = []
    enc_ms: list[float] = []
    t0 = time.perf_counter()
    for split in ("training", "test"):
        samples = iter_slices(ds, split, labels=labels, max_per_case=args.max_slices_per_case)
        for s in tqdm(samples, desc=f"quality {split}", unit="target"):
            if args.modality and s.modality != args.modality:
                continue
            image = window_slice(s, EpisodeSettings())  # the served CT window
            session = tool.start(image)
            enc_ms.append(session.encoder_ms)
            seed = episode_seed(args.seed, s.case_id, s.slice_index, s.label_name)
            targets.append({"case_id": s.case_id, "slice_index": s.slice_index, "label": s.label_name,
                            "area": int(s.gt.sum())})
            for p, variant, strat in combos:
                env = envs[p]
                cfg = ExpertConfig(max_actions=args.max_turns, strategy=strat, **VARIANTS[variant])
                traj = rollout(env, ExpertPolicy(env, cfg), sample_options(s, image=image, session=session), seed=seed)
                results[f"{p}/{variant}/{strat}"].append(
                    {"ious": traj.ious, "dices": traj.dices, "strategy": traj.policy_meta["strategy"],
                     "fell_back": traj.policy_meta["fell_back"], "stop": traj.stop_reason,
                     "decoder_calls": traj.timings["decoder_calls"]}
                )
            hybrid = BOX_TO_POINT if np.random.default_rng(seed).random() < mix else SEQUENTIAL_CLICK
            for p in promptings:
                for variant in variants:
                    results[f"{p}/{variant}/{HYBRID}"].append(results[f"{p}/{variant}/{hybrid}"][-1])
    summary = {}
    for key, runs in results.items():
        finals = np.array([r["ious"][-1] if r["ious"] else 0.0 for r in runs])
        dice_curves = []
        for r in runs:
            d = [0.0, *r["dices"]]
            dice_curves.append((d + [d[-1]] * (args.max_turns + 1))[: args.max_turns + 1])
        summary[key] = {
            "reach85": float(np.mean(finals >= 0.85)),
            "reach90": float(np.mean(finals >= 0.90)),
            "final_iou": float(finals.mean()),
            "dice_per_turn": np.mean(dice_curves, axis=0).tolist(),
            "mean_actions": float(np.mean([len(r["ious"]) for r in runs])),
            "pruned": int(sum(1 for r in runs if not r["ious"])),
            "fell_back": int(sum(1 for r in runs if r["fell_back"])),
            "decoder_calls": float(np.mean([r["decoder_calls"] for r in runs])),
            "reach85_per_label": {
                lab: float(np.mean([f >= 0.85 for f, t in zip(finals, targets, strict=True) if t["label"] == lab]))
                for lab in labels if any(t["label"] == lab for t in targets)
            },
        }
    return {"mode": "quality", "dataset": str(args.dataset), "backend": args.backend, "n_targets": len(targets),
            "n_cases": len({t["case_id"] for t in targets}), "max_turns": args.max_turns, "seed": args.seed,
            "encoder_ms_mean": float(np.mean(enc_ms)) if enc_ms else None, "wall_s": time.perf_counter() - t0,
            "summary": summary, "targets": targets, "runs": results}


def quality_table(res: dict[str, Any]) -> str:
    t = res["max_turns"]
    lines = [
        "| prompting | expert | strategy | IoU>=0.85 | IoU>=0.90 | mean final IoU | actions | pruned | fell back | "
        "decoder calls | " + " | ".join(f"Dice@{i}" for i in range(t + 1)) + " |",
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * (t + 1),
    ]
    for key, s in res["summary"].items():
        p, variant, strat = key.split("/")
        lines.append(
            f"| {p} | {variant} | {strat} | {100 * s['reach85']:.0f}% | {100 * s['reach90']:.0f}% | "
            f"{s['final_iou']:.3f} | {s['mean_actions']:.2f} | {s['pruned']} | {s['fell_back']} | "
            f"{s['decoder_calls']:.1f} | " + " | ".join(f"{v:.3f}" for v in s["dice_per_turn"]) + " |"
        )
    return "\n".join(lines)


_SUMMARY = re.compile(
    r"wrote (\d+) trajectories .*? in ([\d.]+) s = ([\d.]+) traj/min .*? mean final IoU ([\d.]+), mean actions "
    r"([\d.]+); worker time: encoder (\d+)%, decoder (\d+)%, other (\d+)% \(policy (\d+)%\); workers busy (\d+)%"
)


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    layouts = [("1 process x 2 torch threads", ["--workers", "1"]),
               ("2 threads x 1 torch thread (shared tool)", ["--workers", "2", "--parallel", "thread"]),
               ("2 processes x 1 torch thread", ["--workers", "2", "--parallel", "process"])]
    out_dir = Path(args.out).with_suffix("")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, extra in layouts:
        out = out_dir / f"throughput_{len(rows)}.jsonl"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, str(ROOT / "scripts" / "generate_trajectories.py"), "--dataset", str(args.dataset),
               "--backend", args.backend, "--out", str(out), "--labels", args.labels, "--limit", str(args.limit),
               "--seed", str(args.seed), "--prompting", args.prompting.split(",")[0], *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        m = _SUMMARY.search(proc.stdout)
        if proc.returncode != 0 or m is None:
            raise SystemExit(f"{name}: generate_trajectories failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        n, gen_s, per_min, iou_, acts, enc, dec, other, pol, busy = m.groups()
        rows.append({"layout": name, "command": " ".join(cmd[1:]), "trajectories": int(n), "generation_s": float(gen_s),
                     "process_wall_s": wall, "traj_per_min": float(per_min), "mean_final_iou": float(iou_),
                     "mean_actions": float(acts), "encoder_pct": int(enc), "decoder_pct": int(dec),
                     "other_pct": int(other), "policy_pct": int(pol), "busy_pct": int(busy),
                     "summary": m.group(0)})
        print(f"{name}: {m.group(0)}", flush=True)
    return {"mode": "throughput", "dataset": str(args.dataset), "backend": args.backend, "limit": args.limit,
            "rows": rows}


def throughput_table(res: dict[str, Any]) -> str:
    lines = ["| layout | trajectories | traj/min | encoder | decoder | other (policy) | workers busy |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['layout']} | {r['trajectories']} | {r['traj_per_min']:.1f} | {r['encoder_pct']}% | "
                     f"{r['decoder_pct']}% | {r['other_pct']}% ({r['policy_pct']}%) | {r['busy_pct']}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("quality", "throughput"))
    p.add_argument("--dataset", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="JSON results file")
    p.add_argument("--backend", default="litemedsam")
    p.add_argument("--tool-weights", default=None)
    p.add_argument("--labels", default=ORGANS)
    p.add_argument("--modality", default="CT", help="only cases of this modality ('' for all)")
    p.add_argument("--prompting", default="newest,all,all_logits", help="comma-separated Prompting modes")
    p.add_argument("--variants", default="paper,first,default", help=f"expert variants, from {', '.join(VARIANTS)}")
    p.add_argument("--max-slices-per-case", type=int, default=8)
    p.add_argument("--max-turns", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (quality)")
    p.add_argument("--limit", type=int, default=40, help="trajectories per layout (throughput)")
    args = p.parse_args(argv)
    res = quality(args) if args.what == "quality" else throughput(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    print(quality_table(res) if args.what == "quality" else throughput_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
