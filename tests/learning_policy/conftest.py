"""Toy data for the compact-policy learners: CT-like slices (HU) made here, nothing downloaded.

Each slice has a dark background (-100 HU), a mid-grey "organ" disk (60 HU) and a bright "kidney" disk
(200 HU); with the CT window (level 40, width 400) they are well apart for the ``FakeTool`` (tolerance 0.1).
"""

from __future__ import annotations

import numpy as np
import pytest

from lib.agent.policies.compact_config import CompactConfig
from lib.data.dataset import SliceSample

LABELS = {"organ": 1, "kidney": 2}
#: a tiny network for fast tests (the default architecture is tested on its own)
TINY = CompactConfig(size=64, box_bins=32, widths=(8, 16, 16, 32), label_dim=8, cond_dim=16, click_sigma=1.5)


def disk(shape: tuple[int, int], centre_xy: tuple[float, float], radius: float) -> np.ndarray:
    """(H, W) bool disk; centre given as pixel (x, y)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - centre_xy[0]) ** 2 + (yy - centre_xy[1]) ** 2 <= radius**2


def toy_slice(seed: int, shape: tuple[int, int] = (48, 56)) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(image in HU, {label name: (H, W) bool}) of one toy slice."""
    rng = np.random.default_rng(seed)
    img = np.full(shape, -100.0, dtype=np.float32)
    organ = disk(shape, (18 + rng.integers(-3, 4), 22 + rng.integers(-3, 4)), 9 + rng.integers(0, 4))
    kidney = disk(shape, (42 + rng.integers(-2, 3), 30 + rng.integers(-2, 3)), 5 + rng.integers(0, 2)) & ~organ
    img[organ] = 60.0
    img[kidney] = 200.0
    return img, {"organ": organ, "kidney": kidney}


def toy_samples(n_cases: int = 3, slices: int = 2, labels: tuple[str, ...] = ("organ", "kidney")) -> list[SliceSample]:
    out = []
    for c in range(n_cases):
        for k in range(slices):
            img, gts = toy_slice(100 * c + k)
            for name in labels:
                out.append(SliceSample(case_id=f"case_{c}", slice_index=k, label_value=LABELS[name], label_name=name,
                                       image=img, gt=gts[name], modality="CT"))
    return out


@pytest.fixture
def samples() -> list[SliceSample]:
    return toy_samples()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: the tests run beside other jobs, where multi-threaded ops spin (50x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
