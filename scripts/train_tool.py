#!/usr/bin/env python
"""Interactive fine-tuning of a promptable segmenter on a dataset's labelled ``training`` cases.

Trains the prompt encoder + mask decoder (image encoder frozen, embeddings cached on disk) on simulated
box + corrective-click sessions, validates on a case-level split of ``training``, and writes
``adapted.pt`` (plain state dict of the trained parts), ``adapted.json`` (provenance), ``history.json``
and ``learning_curves.png`` to ``--out``. With ``--publish BUNDLE_DIR`` the pair is also published
atomically into ``BUNDLE_DIR/models/`` where a running server picks it up without a restart.

Example::

    python scripts/train_tool.py --dataset sample-data/studies --backend litemedsam --out runs/tool_ft \
        --config configs/tool_finetune.yaml --steps 1000 --publish bundles/litemedsam
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

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, required=True, help="folder with an MSD-style dataset.json")
    p.add_argument("--backend", default="litemedsam", help="backend to adapt (default: litemedsam)")
    p.add_argument("--out", type=Path, required=True, help="run folder for adapted.pt/json, history and curves")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "tool_finetune.yaml", help="YAML recipe")
    p.add_argument("--steps", type=int, default=None, help="override: optimizer steps")
    p.add_argument("--seed", type=int, default=None, help="override: seed")
    p.add_argument("--lr", type=float, default=None, help="override: learning rate")
    p.add_argument("--batch-size", type=int, default=None, help="override: sessions per step")
    p.add_argument("--val-every", type=int, default=None, help="override: validation interval (steps)")
    p.add_argument("--cache-dir", default=None, help="override: embedding cache folder")
    p.add_argument("--threads", type=int, default=None, help="override: torch threads")
    p.add_argument("--publish", type=Path, default=None, help="bundle folder: also publish into BUNDLE/models/")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (logs only)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from lib.data.dataset import Dataset
    from lib.learning.segmenter.finetune import ToolFinetuneConfig, finetune

    cfg = ToolFinetuneConfig.from_yaml(
        args.config, backend=args.backend, steps=args.steps, seed=args.seed, lr=args.lr, batch_size=args.batch_size,
        val_every=args.val_every, cache_dir=args.cache_dir, threads=args.threads,
        progress=False if args.no_progress else None,
    )
    t0 = time.perf_counter()
    info = finetune(Dataset.from_dir(args.dataset), cfg, args.out,
                    publish_to=args.publish / "models" if args.publish else None)
    m = info["metrics"]
    print(json.dumps({
        "out": str(args.out), "published": str(args.publish / "models") if args.publish else None,
        "steps": info["steps"], "time": info["time"], "embedding_cache": info["embedding_cache"],
        "val_before": {k: m["before"][k] for k in ("dice_per_click", "noc@85")},
        "val_after": {k: m["after"][k] for k in ("dice_per_click", "noc@85")},
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
