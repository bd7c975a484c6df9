#!/usr/bin/env python
"""Export expert trajectories as VLM SFT data: LLaMA-Factory ShareGPT (+ a Hugging Face dataset for TRL).

    python scripts/export_sft.py --trajectories runs/expert.jsonl --out runs/sft_data \\
        [--dataset sample-data/studies] [--split training] [--name medsam_agent_sft] [--no-hf]

Trajectories store no pixels: each one is matched by (case, slice, label, axis) to its slice in the dataset it
was generated from (``--dataset``, default: the ``source.dataset`` recorded in the trajectories), windowed exactly
as ``scripts/generate_trajectories.py`` did (``lib.agent.rollout.window_slice``). Conversations are rendered by
the same prompt builder and image transform as inference (``lib.agent.vlm_prompt``, ``lib.agent.vlm_image``).

Output (``--out``): ``images/*.png``, ``<name>.json`` + ``dataset_info.json`` (LLaMA-Factory: point
``dataset_dir`` and ``media_dir`` at ``--out``, ``dataset: <name>``, ``template: qwen3_vl_nothink``) and ``hf/`` (TRL,
``datasets.load_from_disk``; what ``scripts/train_vlm_sft.py`` reads).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import numpy as np  # noqa: E402

from lib.agent.rollout import window_slice  # noqa: E402
from lib.agent.settings import EpisodeSettings, add_episode_args, episode_from_args  # noqa: E402
from lib.agent.trajectories import Trajectory, read_jsonl  # noqa: E402
from lib.agent.vlm_image import MODEL_IMAGE_SIZE, OVERLAY_ALPHA  # noqa: E402
from lib.agent.vlm_prompt import HISTORY_TURNS  # noqa: E402
from lib.data.dataset import Dataset, iter_slices  # noqa: E402
from lib.learning.vlm.sft import ExportConfig, export_sft, validate_sharegpt  # noqa: E402


def matched_episodes(trajectories: list[Trajectory], dataset: Dataset, split: str,
                     settings: EpisodeSettings) -> Iterator[tuple[Trajectory, np.ndarray]]:
    """(trajectory, slice windowed under ``settings``) for every trajectory whose slice is in ``dataset``'s
    ``split``."""
    by_axis: dict[int, dict[tuple, list[Trajectory]]] = defaultdict(lambda: defaultdict(list))
    for t in trajectories:
        by_axis[t.axis][t.key].append(t)
    for axis, wanted in by_axis.items():
        labels = sorted({t.label for group in wanted.values() for t in group})
        for sample in iter_slices(dataset, split, axis=axis, labels=labels, min_area=1):
            key = (sample.case_id, sample.slice_index, sample.label_name)
            if key in wanted:
                image = window_slice(sample, settings)
                for traj in wanted.pop(key):
                    yield traj, image
        for key in wanted:
            print(f"warning: no slice in {dataset.root} ({split}, axis {axis}) for trajectory {key}", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trajectories", required=True, type=Path, help="JSONL of scripts/generate_trajectories.py")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--dataset", type=Path, default=None, help="dataset folder (default: recorded in trajectories)")
    p.add_argument("--split", default="training", choices=("training", "test"))
    p.add_argument("--name", default="medsam_agent_sft", help="dataset name in dataset_info.json")
    p.add_argument("--image-size", type=int, default=MODEL_IMAGE_SIZE, help="model image side (default 512)")
    p.add_argument("--overlay-alpha", type=float, default=OVERLAY_ALPHA, help="mask overlay opacity (default 0.5)")
    p.add_argument("--history-turns", type=int, default=HISTORY_TURNS, help="history window (default 5)")
    p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face dataset for TRL")
    add_episode_args(p)  # the CT window the images are windowed with: what the served agent sees
    args = p.parse_args(argv)
    args.episode = episode_from_args(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trajectories = read_jsonl(args.trajectories)
    if not trajectories:
        print(f"no trajectories in {args.trajectories}", file=sys.stderr)
        return 1
    root = args.dataset
    if root is None:
        roots = {t.source.get("dataset") for t in trajectories}
        if len(roots) != 1 or None in roots:
            print(f"trajectories come from {sorted(map(str, roots))}; pass --dataset", file=sys.stderr)
            return 2
        root = Path(roots.pop())
    config = ExportConfig(name=args.name, image_size=args.image_size, overlay_alpha=args.overlay_alpha,
                          history_turns=args.history_turns, write_hf=not args.no_hf)
    summary = export_sft(matched_episodes(trajectories, Dataset.from_dir(root), args.split, args.episode), args.out,
                         config)
    validate_sharegpt(json.loads(summary.sharegpt.read_text()), root=args.out)
    print(f"{summary.episodes} episodes -> {summary.conversations} conversations, {summary.images} images "
          f"(skipped: {dict(summary.skipped) or 'none'})")
    print(f"ShareGPT: {summary.sharegpt} (+ {summary.dataset_info})" + (f"; TRL: {summary.hf_dataset}"
                                                                          if summary.hf_dataset else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
