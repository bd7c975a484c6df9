#!/usr/bin/env python
"""GRPO of the compact policy from its SFT checkpoint, on a dataset's slices, with a real tool.

    python scripts/train_rl.py --dataset sample-data/studies --init runs/sft --out runs/grpo \\
        [--backend litemedsam] [--tool-weights bundles/litemedsam/models] [--config configs/rl.yaml] \\
        [--steps N] [--max-minutes M] [--seed S]

Start states are the (slice, label) targets of ``--split`` (default: the recipe's, "training") for the
labels the SFT policy knows; validation cases are held out of them by case. The result is trained in a
scratch folder and published atomically to ``--out`` only when training succeeded.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from lib.agent.rollout import SCRIPT_BACKENDS
    from lib.agent.settings import add_episode_args

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, type=Path, help="folder with an MSD-style dataset.json")
    p.add_argument("--init", required=True, type=Path, help="SFT checkpoint folder to start from")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder for the RL policy")
    p.add_argument("--backend", default="litemedsam", choices=SCRIPT_BACKENDS,
                   help="segmentation backend the policy acts through ('fake' is for tests only)")
    p.add_argument("--tool-weights", default=None, help="adapted segmenter weights (folder with adapted.pt, or file)")
    p.add_argument("--config", type=Path, default=None, help="YAML recipe filling RLConfig (default configs/rl.yaml)")
    p.add_argument("--split", default=None, choices=("training", "test"), help="override RLConfig.split")
    p.add_argument("--steps", type=int, default=None, help="override RLConfig.steps")
    p.add_argument("--max-minutes", type=float, default=None, help="override RLConfig.max_minutes")
    p.add_argument("--max-slices-per-case", type=int, default=None, help="override RLConfig.max_slices_per_case")
    p.add_argument("--seed", type=int, default=None, help="override RLConfig.seed")
    add_episode_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from lib.agent.rollout import load_backend
    from lib.agent.settings import episode_from_args
    from lib.data.dataset import Dataset
    from lib.learning.checkpoint import publish
    from lib.learning.policy.rl import RLConfig, train_grpo
    from lib.learning.recipe import load_recipe, to_dict

    recipe = args.config or (Path(__file__).resolve().parents[1] / "configs" / "rl.yaml")
    cfg = load_recipe(RLConfig, recipe, steps=args.steps, max_minutes=args.max_minutes, seed=args.seed,
                      split=args.split, max_slices_per_case=args.max_slices_per_case)
    cfg.episode = episode_from_args(args, cfg.episode, backend=args.backend)
    print(f"RL recipe {recipe}: {json.dumps(to_dict(cfg))}")
    tool = load_backend(args.backend, args.tool_weights, threads=cfg.threads or None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="grpo-", dir=args.out.parent))
    try:
        stats = train_grpo(cfg, Dataset.from_dir(args.dataset), tool, args.init, scratch)
        stats["out_dir"] = str(args.out)
        (scratch / "rl_stats.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
        publish(scratch, args.out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"GRPO: {stats['steps']} steps, {stats['episodes']} episodes in {stats['time_s']:.0f} s; training reward "
          f"{stats['reward_first']:.3f} -> {stats['reward_last']:.3f}; validation {stats['val_init']} -> "
          f"{stats['val_best']} (best step {stats['best_step']}); checkpoint {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
