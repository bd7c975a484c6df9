#!/usr/bin/env python
"""Benchmark whole-volume episodes (lib.agent.volume) on 3D cases: the policy vs propagation, the expert-driven
propagation and the ground-truth box on every slice; prints a Markdown table.

    python benchmarks/benchmark_volume.py --dataset sample-data/real --split training,test \\
        --checkpoint demo/agent_policy --out runs/volume/real

Every (case, label) target the policy knows is evaluated with ``lib.agent.volume_eval.evaluate_volumes`` (the
seed slice is the label's largest; the hand-off box a jittered ground-truth box there). Episode settings
(prompting, local merge, turn budget per slice, CT window, box jitter) default to what the app serves
(``lib.agent.settings.EpisodeSettings``). Outputs in ``--out``: results.json, report.md, dice3d_per_label.png,
actions_per_slice.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import time  # noqa: E402

from lib.agent.rollout import SCRIPT_BACKENDS, load_backend  # noqa: E402
from lib.agent.settings import add_episode_args, episode_from_args  # noqa: E402
from lib.agent.volume import VolumeConfig  # noqa: E402
from lib.agent.volume_eval import (  # noqa: E402
    BASELINES,
    DEFAULT_NSD_TOLERANCE_MM,
    MODES,
    SEED_RULES,
    SPLIT_EXPERT_BASELINES,
    evaluate_volumes,
    markdown_table,
    summarise,
    write_outputs,
)
from lib.data.dataset import Dataset  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = VolumeConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, type=Path, help="folder with an MSD-style dataset.json (3D cases)")
    p.add_argument("--split", default="test", help="split(s), comma-separated: training,test")
    p.add_argument("--checkpoint", default="demo/agent_policy", help="compact policy folder (policy.pt + policy.json)")
    p.add_argument("--policy", default="compact", choices=("compact", "propagation"),
                   help="compact = the checkpoint; propagation = no agent (a smoke run of the pipeline)")
    p.add_argument("--backend", default="litemedsam", choices=SCRIPT_BACKENDS)
    p.add_argument("--tool-weights", default=None, help="adapted segmenter weights (folder or file)")
    p.add_argument("--mode", default="handoff", choices=MODES)
    p.add_argument("--seed-slice", default="largest", choices=SEED_RULES,
                   help="seed slice: the label's largest slice, or the largest away from the volume's end slices")
    p.add_argument("--labels", default=None, help="comma-separated label names (default: every label)")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help="comma-separated subset of " + ",".join(BASELINES + SPLIT_EXPERT_BASELINES)
                        + " (the last two on request: the expert on the seed slice / propagated slices only)")
    add_episode_args(p)
    p.add_argument("--min-fill", type=float, default=d.min_fill,
                   help="a mask filling less than this fraction of its prompt box hands the next slice that box "
                        "(VolumeConfig.min_fill; 0 = off)")
    p.add_argument("--correction-guard", choices=("on", "off"), default="on" if d.correction_guard else "off",
                   help="keep a propagated slice's corrections only when they agree with the neighbour's mask at "
                        "least as well as the propagated answer (VolumeConfig.correction_guard)")
    p.add_argument("--dense-prompt", choices=("on", "off"), default="on" if d.dense_prompt else "off",
                   help="send the neighbour's logits as the dense prompt (backends with mask input)")
    p.add_argument("--margin-px", type=int, default=d.margin_px)
    p.add_argument("--margin-fraction", type=float, default=d.margin_fraction)
    p.add_argument("--collapse-fraction", type=float, default=d.collapse_fraction)
    p.add_argument("--min-score", type=float, default=d.min_score)
    p.add_argument("--lookahead", type=int, default=d.lookahead)
    p.add_argument("--no-prefetch", action="store_true", help="encode every slice on the calling thread")
    p.add_argument("--nsd-mm", type=float, default=DEFAULT_NSD_TOLERANCE_MM, help="NSD tolerance in mm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-cases", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="output folder (results.json, report.md, plots)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = episode_from_args(args, backend=args.backend)
    tool = load_backend(args.backend, args.tool_weights, threads=args.threads)
    encoder = getattr(tool, "encoder", None)
    if encoder is not None and hasattr(encoder, "prepare"):
        encoder.prepare(block=True)  # the served encoder runtime from the first slice on, not torch until exported
    encoder_info = encoder.info() if encoder is not None and hasattr(encoder, "info") else None
    if args.policy == "compact":
        from lib.agent.policies.compact import CompactPolicy

        policy = CompactPolicy.load(args.checkpoint)
    else:
        from lib.agent.policies.base import StopPolicy

        policy = StopPolicy()
    vcfg = VolumeConfig(margin_px=args.margin_px, margin_fraction=args.margin_fraction,
                        dense_prompt=args.dense_prompt == "on", correction_guard=args.correction_guard == "on",
                        min_fill=args.min_fill,
                        collapse_fraction=args.collapse_fraction,
                        min_score=args.min_score, lookahead=args.lookahead, prefetch=not args.no_prefetch)
    env_config = settings.env_config(args.backend)
    ds = Dataset.from_dir(args.dataset)
    labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    baselines = tuple(b for b in args.baselines.split(",") if b)
    rows, skipped = [], {}
    t0 = time.perf_counter()

    def show(row):
        print(f"  {row['case_id']} {row['label']}: policy {row['dice3d']:.3f}, "
              + ", ".join(f"{b} {row[f'{b}_dice3d']:.3f}" for b in baselines)
              + f"; {row['seconds']:.1f} s vs encoder {row['encoder_s_visited']:.1f} s, {row['actions']} actions, "
              f"{row['encoder_calls_total']} encodes", flush=True)

    for split in [s.strip() for s in args.split.split(",") if s.strip()]:
        res = evaluate_volumes(ds, tool, policy, split=split, labels=labels, mode=args.mode, env_config=env_config,
                               volume_config=vcfg, baselines=baselines, windowing=settings.windowing,
                               box_jitter=settings.box_jitter, seed=args.seed, nsd_tolerance_mm=args.nsd_mm,
                               max_cases=args.max_cases, seed_rule=args.seed_slice, progress=show)
        rows += res["rows"]
        skipped.update(res["skipped"])
    results = summarise(rows, baselines, skipped=skipped, settings={
        "mode": args.mode, "split": args.split, "dataset": str(args.dataset), "seed": args.seed,
        "seed_rule": args.seed_slice,
        "box_jitter": settings.box_jitter, "nsd_tolerance_mm": args.nsd_mm,
        "env": {"max_turns": env_config.max_turns, "prompting": env_config.prompting.value,
                "local_radius": env_config.local_radius},
        "volume": dict(vars(vcfg)), "policy": getattr(policy, "name", "?"), "checkpoint": args.checkpoint,
        "backend": args.backend, "encoder": encoder_info, "ct_window": list(settings.ct_window),
        "wall_s": time.perf_counter() - t0})
    print()
    print(markdown_table(results))
    print(f"\nseconds per volume {results['seconds_per_volume']:.1f}, encoder seconds of visited slices "
          f"{results['encoder_s_per_volume']:.1f} (ratio {results['time_ratio']:.2f}); encoder calls per volume "
          f"{results['encoder_calls_per_volume']:.1f}; skipped {results['skipped'] or 'none'}")
    if args.out:
        paths = write_outputs(results, args.out)
        print(f"results in {paths['json'].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
