"""Fixtures for tests/learning: a tiny 2D dataset encoded ONCE by the real LiteMedSAM encoder.

The encoder costs seconds per slice on CPU, so the session-scoped ``ft`` fixture builds the dataset (two
2D cases, one slice each, two labels per slice), encodes it into an on-disk embedding cache, and hands
out the released backend; tests reset the backend's trainable head with ``ft.reset()``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

#: (H, W) of the synthetic slices: not square, so the 256² frame has padding below the image
SHAPE = (88, 120)
LABELS = {"1": "disc", "2": "bar"}


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) uint8 image and label map: a bright disc (label 1) and a mid-grey bar (label 2) on noise."""
    rng = np.random.default_rng(seed)
    h, w = SHAPE
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = 30 + 6 * seed, 35 + 5 * seed, 16 + 2 * seed
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = 1
    lab[55:75, 70 + 3 * seed : 108] = 2
    img = rng.normal(50, 8, SHAPE)
    img[lab == 1] += 150
    img[lab == 2] += 80
    return np.clip(img, 0, 255).astype(np.uint8), lab


def write_dataset(root: Path, n_cases: int = 2) -> Path:
    """MSD folder with ``n_cases`` 2D PNG cases in ``training`` (no test split)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    training = []
    for n in range(n_cases):
        img, lab = make_case(n)
        sitk.WriteImage(sitk.GetImageFromArray(img), str(root / "images" / f"c{n}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(lab), str(root / "labels" / f"c{n}.png"))
        training.append({"image": f"images/c{n}.png", "label": f"labels/c{n}.png"})
    spec = {"name": "tiny", "labels": {"0": "background", **LABELS}, "modality": "unknown", "training": training}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


@dataclass
class FineTuneFixture:
    root: Path
    cache_dir: Path
    backend: object
    train: object
    val: object
    released: dict[str, torch.Tensor]
    first_encoder_calls: int
    first_misses: int

    def reset(self) -> None:
        """Put the released weights back into the shared backend."""
        self.backend.load_trainable(self.released)


@pytest.fixture(scope="session")
def ft(tmp_path_factory) -> FineTuneFixture:
    from lib.data.dataset import Dataset
    from lib.learning.segmenter.backends import LiteMedSAMBackend
    from lib.learning.segmenter.data import build_slice_set
    from lib.learning.segmenter.embedding_cache import EmbeddingCache

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("tool_ft")
    root = write_dataset(base / "ds")
    ds = Dataset.from_dir(root)
    backend = LiteMedSAMBackend()
    cache = EmbeddingCache(base / "cache")
    train = build_slice_set(ds, ds.training[:1], backend, cache, progress=False)
    val = build_slice_set(ds, ds.training[1:], backend, cache, progress=False)
    return FineTuneFixture(root, base / "cache", backend, train, val, backend.trainable_state_dict(),
                           backend.encoder_calls, cache.misses)
