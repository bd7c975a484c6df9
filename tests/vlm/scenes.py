"""Synthetic scenes of the VLM tests: flat regions of distinct intensity, (H, W) float in [0, 1]."""

from __future__ import annotations

import numpy as np


def two_tone_disk(h: int = 64, w: int = 72) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float image (dark background, a disk 0.8 on the left and 0.6 on the right) and its bool gt."""
    yy, xx = np.mgrid[:h, :w]
    cx, cy, r = w // 2, h // 2, min(h, w) // 3
    gt = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    img = np.full((h, w), 0.1, dtype=np.float32)
    img[gt & (xx <= cx + 4)] = 0.8
    img[gt & (xx > cx + 4)] = 0.6
    return img, gt
