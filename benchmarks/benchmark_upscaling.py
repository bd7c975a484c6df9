#!/usr/bin/env python
"""Side-by-side: LiteMedSAM's mask-decoder upscaling as torch's ConvTranspose2d vs the same layer as one GEMM.

A 2x2 transposed convolution with stride 2 has no overlapping outputs: output pixel (2i + a, 2j + b) is
``x[:, :, i, j] @ W[:, :, a, b] + bias``, i.e. one (B*H*W, C_in) x (C_in, C_out*4) matrix product and a pixel
rearrangement. The idea was that torch's CPU transposed convolution is slow (about 23% of a decoder forward in a
cProfile of fine-tuning steps) and a GEMM would be faster. Measured 2026-11-30 (BENCHMARKS.md, segmenter): 1.02x per
fine-tuning step, 1.12x per inference decode. Too little for the step-time target, so the product keeps torch's
layer and this variant lives here only.

Interleaved blocks (A B A B ...) in one process on the same cached embeddings, so machine-speed drift hits both
variants alike: the fine-tuning step (``configs/tool_finetune.yaml`` sessions: decodes without gradients, one
with, backward, AdamW) and one inference decode (box prompt, no gradients). Needs the embedding cache of a
``scripts/train_tool.py`` run on the same dataset (it encodes missing slices otherwise).

    python benchmarks/benchmark_upscaling.py --dataset sample-data/studies [--blocks 4 --steps 25]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402


class GemmConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with kernel_size == stride == 2 (no padding, groups or dilation) as a GEMM.

    Input (B, C_in, H, W) float -> output (B, C_out, 2H, 2W), channels-first like the layer it replaces.
    """

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        b, c, h, w = x.shape
        c_out = self.out_channels
        y = x.permute(0, 2, 3, 1).reshape(b * h * w, c) @ self.weight.reshape(c, c_out * 4)
        y = y.reshape(b, h, w, c_out, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c_out, 2 * h, 2 * w)
        return y if self.bias is None else y + self.bias[None, :, None, None]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "tool_finetune.yaml")
    p.add_argument("--blocks", type=int, default=4, help="blocks per variant, interleaved")
    p.add_argument("--steps", type=int, default=25, help="training steps per block")
    p.add_argument("--decodes", type=int, default=40, help="inference decodes per block")
    args = p.parse_args(argv)

    import numpy as np

    from lib.agent.clicks import jittered_box
    from lib.data.dataset import Dataset
    from lib.learning.recipe import load_recipe
    from lib.learning.segmenter.config import ToolFinetuneConfig
    from lib.learning.segmenter.embedding_cache import EmbeddingCache
    from lib.learning.segmenter.finetune import ToolFinetuner, prepare_slices

    # the replayed-session step this was measured on (stop 9), whatever the recipe's live_sessions
    cfg = dataclasses.replace(load_recipe(ToolFinetuneConfig, args.config, progress=False), live_sessions=0)
    ds = Dataset.from_dir(args.dataset)
    tuner = ToolFinetuner(cfg)
    backend = tuner.backend
    data, _ = prepare_slices(ds, ds.training, cfg, backend, EmbeddingCache(cfg.cache_dir))
    ups = [m for m in backend.net.mask_decoder.output_upscaling if isinstance(m, nn.ConvTranspose2d)]
    variants = {"conv_transpose": nn.ConvTranspose2d, "gemm": GemmConvTranspose2d}
    params = backend.parameters()
    opt = torch.optim.AdamW(params, lr=1e-9)  # steps run for timing; the weights barely move
    times: dict[str, dict[str, list[float]]] = {v: {"step": [], "decode": []} for v in variants}
    it = data.items[0]
    box = jittered_box(it.gt, np.random.default_rng(0), 0.1).as_tuple()
    emb = data.embeddings[it.index : it.index + 1]
    answers = []
    for cls in variants.values():  # the same layer: both variants must give the same logits before timing them
        for m in ups:
            m.__class__ = cls
        with torch.no_grad():
            answers.append(backend.decode(emb, [it.shape], np.array([box], dtype=np.float32), None, None, None))
    torch.testing.assert_close(answers[0], answers[1], rtol=1e-4, atol=1e-4)
    for block in range(args.blocks):
        for name, cls in variants.items():
            for m in ups:
                m.__class__ = cls
            rng = np.random.default_rng(block)  # the same sessions for both variants in a block
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss, _ = tuner.session_loss(data, deque(), rng)
                if loss is not None:
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            times[name]["step"].append((time.perf_counter() - t0) / args.steps)
            t0 = time.perf_counter()
            with torch.no_grad():
                for _ in range(args.decodes):
                    backend.decode(emb, [it.shape], np.array([box], dtype=np.float32), None, None, None)
            times[name]["decode"].append((time.perf_counter() - t0) / args.decodes)
    out = {name: {k: round(1000 * float(np.median(v)), 1) for k, v in t.items()} for name, t in times.items()}
    out["speedup"] = {k: round(out["conv_transpose"][k] / out["gemm"][k], 2) for k in ("step", "decode")}
    out["setup"] = {"blocks": args.blocks, "steps_per_block": args.steps, "decodes_per_block": args.decodes,
                    "threads": torch.get_num_threads(), "unit": "ms, median over blocks"}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
