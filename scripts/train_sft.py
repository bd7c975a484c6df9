#!/usr/bin/env python
"""SFT of the compact policy: expert trajectories -> behaviour cloning -> checkpoint folder.

    python scripts/train_sft.py --dataset sample-data/studies --out runs/sft \\
        [--trajectories runs/traj.jsonl] [--backend litemedsam] [--tool-weights bundles/litemedsam/models] \\
        [--config configs/sft.yaml] [--steps N] [--seed S]

Without ``--trajectories`` the expert generates trajectories with the chosen backend (the tool the agent
will be served with). With ``--trajectories FILE``: an existing file is used as is (e.g. from
scripts/generate_trajectories.py); a missing one is generated and saved there for the next run.
Labels: the dataset's label map. The checkpoint is trained in a scratch folder and published atomically
to ``--out`` only when training succeeded.
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
import time  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from lib.agent.rollout import SCRIPT_BACKENDS
    from lib.agent.settings import add_episode_args

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, type=Path, help="folder with an MSD-style dataset.json")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder (policy.pt + policy.json)")
    p.add_argument("--trajectories", type=Path, default=None, help="JSONL of expert trajectories (made if missing)")
    p.add_argument("--backend", default="litemedsam", choices=SCRIPT_BACKENDS,
                   help="segmentation backend for trajectory generation ('fake' is for tests only)")
    p.add_argument("--tool-weights", default=None, help="adapted segmenter weights (folder with adapted.pt, or file)")
    p.add_argument("--config", type=Path, default=None, help="YAML recipe filling SFTConfig (default configs/sft.yaml)")
    p.add_argument("--labels", default=None, help="comma-separated label names (default: all of the dataset)")
    p.add_argument("--steps", type=int, default=None, help="override SFTConfig.steps")
    p.add_argument("--max-minutes", type=float, default=None, help="override SFTConfig.max_minutes")
    p.add_argument("--max-slices-per-case", type=int, default=None, help="override data.max_slices_per_case")
    p.add_argument("--seed", type=int, default=None, help="override SFTConfig.seed")
    add_episode_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # ---- config ---------------------------------------------------------------------------------
    from lib.agent.settings import episode_from_args
    from lib.agent.trajectories import read_jsonl, write_jsonl
    from lib.data.dataset import Dataset
    from lib.learning.checkpoint import publish
    from lib.learning.policy.data import expert_trajectories
    from lib.learning.policy.sft import SFTConfig, train_sft
    from lib.learning.recipe import load_recipe, to_dict

    recipe = args.config or (Path(__file__).resolve().parents[1] / "configs" / "sft.yaml")
    cfg = load_recipe(SFTConfig, recipe, steps=args.steps, max_minutes=args.max_minutes, seed=args.seed)
    if args.max_slices_per_case is not None:
        cfg.data.max_slices_per_case = args.max_slices_per_case
    cfg.data.episode = episode_from_args(args, cfg.data.episode, backend=args.backend)
    ds = Dataset.from_dir(args.dataset)
    names = [s.strip() for s in args.labels.split(",")] if args.labels else list(ds.labels.values())
    labels = {n: v for v, n in ds.labels.items() if n in names}
    print(f"SFT recipe {recipe}: {json.dumps(to_dict(cfg))}")
    # ---- trajectories ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    if args.trajectories is not None and args.trajectories.is_file():
        trajs = read_jsonl(args.trajectories)
        print(f"read {len(trajs)} trajectories from {args.trajectories}")
    else:
        from lib.agent.rollout import load_backend

        tool = load_backend(args.backend, args.tool_weights, threads=cfg.threads or None)
        trajs = expert_trajectories(ds, tool, labels, cfg.data)
        print(f"generated {len(trajs)} expert trajectories with {args.backend} in {time.perf_counter() - t0:.0f} s")
        if args.trajectories is not None:
            write_jsonl(args.trajectories, trajs, append=False)
    # ---- train into scratch, publish on success ---------------------------------------------------
    scratch = Path(tempfile.mkdtemp(prefix="sft-", dir=args.out.parent if args.out.parent.exists() else None))
    try:
        stats = train_sft(cfg, trajs, scratch, labels, images=ds)
        stats["out_dir"] = str(args.out)
        stats["trajectory_time_s"] = time.perf_counter() - t0 - stats["time_s"]
        (scratch / "sft_stats.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
        publish(scratch, args.out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"SFT: {stats['steps']} steps in {stats['time_s']:.0f} s; train loss {stats['train_loss_first']:.3f} -> "
          f"{stats['train_loss']:.3f}; val loss {stats['val_loss']}, val kind accuracy {stats['val_accuracy']}, "
          f"val box IoU {stats['val_box_iou']}; checkpoint {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
