#!/usr/bin/env python
"""Export RL start states for verl: a parquet of MedSAM-Agent-style rows + our reward entry point.

    python scripts/export_verl.py --dataset sample-data/studies --out runs/verl/train.parquet \\
        [--split training] [--axis 0] [--labels liver,spleen] [--min-area 20] [--max-slices-per-case N]

Columns and reward: ``lib.learning.policy.verl_export`` (``data_source``, ``prompt``, ``images``, ``reward_model``,
``extra_info``, ``ability``, ``agent_name``). In the verl config::

    data.train_files=runs/verl/train.parquet
    custom_reward_function.path=lib/learning/policy/verl_export.py custom_reward_function.name=compute_score

(run verl from this repository's root, or put it on PYTHONPATH, so ``lib`` imports).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402

from lib.agent.rollout import window_slice  # noqa: E402
from lib.agent.settings import add_episode_args, episode_from_args  # noqa: E402
from lib.data.dataset import Dataset, iter_slices  # noqa: E402
from lib.learning.policy.verl_export import rl_rows, write_parquet  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, type=Path, help="folder with an MSD-style dataset.json")
    p.add_argument("--out", required=True, type=Path, help="parquet file to write")
    p.add_argument("--split", default="training", choices=("training", "test"))
    p.add_argument("--axis", type=int, default=0, help="slicing axis of 3D volumes (0 = K)")
    p.add_argument("--labels", default=None, help="comma-separated label names or values (default: all)")
    p.add_argument("--min-area", type=int, default=20, help="smallest target in pixels")
    p.add_argument("--max-slices-per-case", type=int, default=None, help="cap of targets per case")
    add_episode_args(p)  # the CT window the images are windowed with: what the served agent sees
    args = p.parse_args(argv)
    args.episode = episode_from_args(args)
    args.labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ds = Dataset.from_dir(args.dataset)
    samples = iter_slices(ds, args.split, axis=args.axis, labels=args.labels, min_area=args.min_area,
                          max_per_case=args.max_slices_per_case)
    items = ((window_slice(s, args.episode), s.gt, s.label_name, {"case_id": s.case_id, "slice_index": s.slice_index,
                                                    "axis": s.axis}) for s in samples)
    rows = rl_rows(items, dataset_name=ds.name or args.dataset.name, split=args.split)
    path = write_parquet(rows, args.out)
    print(f"{len(rows)} rows -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
