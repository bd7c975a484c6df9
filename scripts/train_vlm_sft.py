#!/usr/bin/env python
"""Fine-tune a Qwen3-VL / Qwen2.5-VL policy on exported expert conversations (TRL SFTTrainer + PEFT LoRA).

    python scripts/train_vlm_sft.py --config configs/vlm_sft.yaml [--model_path DIR --dataset_path DIR ...]
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml \\
        scripts/train_vlm_sft.py --config configs/vlm_sft.yaml

The YAML fills ``lib.learning.vlm.sft.VLMSFTArguments`` and ``trl.SFTConfig`` (``trl.TrlParser``); any key can be
overridden as ``--key value``. Data: ``<out>/hf`` of ``scripts/export_sft.py``. Output: the adapter (or model) in
``output_dir`` and, with ``save_merged``, a plain checkpoint in ``output_dir/merged`` for inference and GRPO.
Models load from local folders only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local checkpoints only; never reach the hub

from trl import SFTConfig, TrlParser  # noqa: E402

from lib.learning.vlm.sft import VLMSFTArguments, build_sft_trainer, save_merged  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = TrlParser((VLMSFTArguments, SFTConfig))
    args, sft_config = parser.parse_args_and_config(args=argv)
    trainer = build_sft_trainer(args, sft_config)
    trainer.train()
    trainer.save_model(sft_config.output_dir)
    if args.save_merged:
        out = save_merged(trainer, trainer.processing_class, Path(sft_config.output_dir) / "merged")
        if out is not None:
            print(f"merged checkpoint: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
