#!/usr/bin/env python
"""Multi-turn GRPO of the VLM policy in our environment with our reward (TRL GRPOTrainer, see lib.learning.vlm.grpo).

    python scripts/train_vlm_grpo.py --config configs/vlm_grpo.yaml [--model_path DIR --source_dataset DIR ...]
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml \\
        scripts/train_vlm_grpo.py --config configs/vlm_grpo.yaml

The YAML fills ``lib.learning.vlm.grpo.VLMGRPOArguments`` and ``trl.GRPOConfig``. Start states: the RL-rows dataset
at ``dataset_path``; when it does not exist and ``source_dataset`` names an MSD-style folder, the rows are built
from it first (main process; the others wait) with the same windowing as trajectory generation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local checkpoints only; never reach the hub

from accelerate import PartialState  # noqa: E402
from trl import GRPOConfig, TrlParser  # noqa: E402

from lib.learning.vlm.grpo import VLMGRPOArguments, build_grpo_trainer, rl_dataset, rl_row  # noqa: E402


def build_rows(args: VLMGRPOArguments) -> None:
    """Write the RL rows of ``args.source_dataset`` to ``args.dataset_path``."""
    from lib.agent.rollout import window_slice
    from lib.data.dataset import Dataset, iter_slices

    ds = Dataset.from_dir(args.source_dataset)
    samples = iter_slices(ds, args.source_split, axis=args.source_axis, min_area=args.source_min_area,
                          max_per_case=args.source_max_per_case)
    episode = args.episode
    rows = (rl_row(window_slice(s, episode), s.gt, s.label_name, s.case_id, s.slice_index, s.axis) for s in samples)
    rl_dataset(rows).save_to_disk(args.dataset_path)


def main(argv: list[str] | None = None) -> int:
    parser = TrlParser((VLMGRPOArguments, GRPOConfig))
    args, grpo_config = parser.parse_args_and_config(args=argv)
    if not Path(args.dataset_path).exists():
        if not args.source_dataset:
            parser.error(f"dataset_path {args.dataset_path} does not exist; set source_dataset to build it")
        with PartialState().main_process_first():
            if not Path(args.dataset_path).exists():
                build_rows(args)
    trainer = build_grpo_trainer(args, grpo_config)
    trainer.train()
    trainer.save_model(grpo_config.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
