#!/usr/bin/env python
"""Side-by-side: a fine-tuning step with replayed sessions vs continued (live) sessions (step time).

Replayed (``live_sessions: 0``): every step runs new sessions from their first prompt to their last turn
without gradients and decodes the last turn with them: 3.1 decoder calls per step for budgets uniform in
0..4. Live (``live_sessions: N``): N sessions stay in flight and each step decodes the next turn of one
of them, with gradients: one decoder call per step. Both run ``ToolFinetuner.optimizer_step`` (sessions,
backward, clipping, AdamW), exactly as ``fit`` does, on the same cached embeddings, in interleaved blocks
(A B A B ...) in one process, so machine-speed drift hits both alike. Needs the embedding cache of a
``scripts/train_tool.py`` run on the same dataset (it encodes missing slices otherwise).

    python benchmarks/benchmark_finetune_step.py --dataset sample-data/studies [--blocks 3 --steps 40]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "tool_finetune.yaml")
    p.add_argument("--blocks", type=int, default=3, help="blocks per variant, interleaved")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per block")
    p.add_argument("--live", type=int, default=8, help="live_sessions of the live variant")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from lib.data.dataset import Dataset
    from lib.learning.recipe import load_recipe
    from lib.learning.segmenter.config import ToolFinetuneConfig
    from lib.learning.segmenter.embedding_cache import EmbeddingCache
    from lib.learning.segmenter.finetune import ToolFinetuner, prepare_slices

    cfg = load_recipe(ToolFinetuneConfig, args.config, progress=False)
    ds = Dataset.from_dir(args.dataset)
    variants = {"replayed": dataclasses.replace(cfg, live_sessions=0),
                "live": dataclasses.replace(cfg, live_sessions=args.live)}
    tuners = {name: ToolFinetuner(c) for name, c in variants.items()}
    backend = tuners["replayed"].backend
    tuners["live"].backend = backend  # one model: the variants differ in the sessions only
    data, _ = prepare_slices(ds, ds.training, cfg, backend, EmbeddingCache(cfg.cache_dir))
    params = backend.parameters()
    opt = torch.optim.AdamW(params, lr=1e-9)  # steps run for timing; the weights barely move
    decodes = {name: 0 for name in variants}
    real_decode = backend.decode

    def counted(*a, **k):
        decodes[current] += 1
        return real_decode(*a, **k)

    backend.decode = counted
    pools = {name: deque() for name in variants}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for block in range(args.blocks):
        for current, tuner in tuners.items():
            rng = np.random.default_rng(block)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                tuner.optimizer_step(data, pools[current], rng, opt, params)
            times[current].append((time.perf_counter() - t0) / args.steps)
    out = {name: {"ms_per_step": round(1000 * float(np.median(t)), 1),
                  "decoder_calls_per_step": round(decodes[name] / (args.blocks * args.steps), 2)}
           for name, t in times.items()}
    out["speedup"] = round(out["replayed"]["ms_per_step"] / out["live"]["ms_per_step"], 2)
    out["setup"] = {"blocks": args.blocks, "steps_per_block": args.steps, "live_sessions": args.live,
                    "threads": torch.get_num_threads(), "unit": "median over blocks"}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
