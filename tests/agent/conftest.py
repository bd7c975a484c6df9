"""Synthetic scenes shared by the agent tests: flat regions of distinct intensity, (H, W) float in [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest

from lib.tools.fake import FakeTool


def disk(shape: tuple[int, int], centre_xy: tuple[float, float], radius: float) -> np.ndarray:
    """(H, W) bool disk; centre given as pixel (x, y)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - centre_xy[0]) ** 2 + (yy - centre_xy[1]) ** 2 <= radius**2


@pytest.fixture
def two_tone_disk() -> tuple[np.ndarray, np.ndarray]:
    """A 64x72 (H x W) image: dark background, a disk whose left part is 0.8 and right part 0.6.

    The ground truth is the whole disk, so a region-growing click only gets one tone at a time: a realistic
    "needs a second click" target.
    """
    h, w = 64, 72
    gt = disk((h, w), (36, 30), 18)
    img = np.full((h, w), 0.1, dtype=np.float32)
    xx = np.arange(w)[None, :].repeat(h, axis=0)
    img[gt & (xx <= 40)] = 0.8
    img[gt & (xx > 40)] = 0.6
    return img, gt


@pytest.fixture
def fake_tool() -> FakeTool:
    return FakeTool()
