"""What the compact policy sees: frame conversions between slice pixels and its grid, and the input planes
(``state_features``). Frames and channels: ``lib.agent.policies.compact_config``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lib.agent.actions import prompts_from_actions
from lib.agent.policies.compact_config import CompactConfig


# -- frame conversions ---------------------------------------------------------------------------------
def pixel_to_bin(p: float, n_pixels: int, n_bins: int) -> int:
    """Pixel index along a side of ``n_pixels`` -> nearest of ``n_bins`` bins (align-corners geometry)."""
    if n_pixels <= 1:
        return 0
    return int(min(max(round(float(p) * (n_bins - 1) / (n_pixels - 1)), 0), n_bins - 1))


def bin_to_pixel(b: int, n_bins: int, n_pixels: int) -> int:
    """Bin index -> nearest pixel index along a side of ``n_pixels`` (inverse of ``pixel_to_bin``)."""
    if n_bins <= 1:
        return 0
    return int(min(max(round(int(b) * (n_pixels - 1) / (n_bins - 1)), 0), n_pixels - 1))


def _to_grid(p: float, n_pixels: int, size: int) -> float:
    return 0.0 if n_pixels <= 1 else float(p) * (size - 1) / (n_pixels - 1)


def resize_plane(plane: np.ndarray, size: int) -> np.ndarray:
    """(H, W) array -> (S, S) float32, bilinear with align-corners geometry (the policy's frame)."""
    t = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=True)[0, 0].numpy()


def prompt_planes(shape: tuple[int, int], actions: Sequence[Mapping[str, Any]], config: CompactConfig) -> np.ndarray:
    """(3, S, S) float32 prompt channels (box, positive, negative) for an (H, W) slice."""
    s = config.size
    h, w = shape
    out = np.zeros((3, s, s), dtype=np.float32)
    box, clicks = prompts_from_actions(actions)
    if box is not None:
        x0, y0, x1, y1 = box
        c0, c1 = round(_to_grid(x0, w, s)), round(_to_grid(x1, w, s))
        r0, r1 = round(_to_grid(y0, h, s)), round(_to_grid(y1, h, s))
        out[0, r0 : r1 + 1, c0 : c1 + 1] = 1.0
    if clicks:
        yy, xx = np.mgrid[:s, :s].astype(np.float32)
        two_var = 2.0 * float(config.click_sigma) ** 2
        for x, y, positive in clicks:
            gx, gy = _to_grid(x, w, s), _to_grid(y, h, s)
            blob = np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / two_var)
            ch = 1 if positive else 2
            np.maximum(out[ch], blob, out=out[ch])
    return out


def state_features(image_s: np.ndarray, mask: np.ndarray, actions: Sequence[Mapping[str, Any]],
                   config: CompactConfig, prior: np.ndarray | None = None) -> np.ndarray:
    """(C, S, S) float32 network input (``config.channels``: 5, or 6 with the prior).

    Args:
        image_s: the windowed slice already in the policy frame, (S, S) float32 in [0, 1]
            (``resize_plane(image, S)``; computed once per slice by callers that see it many times).
        mask: (H, W) bool or {0, 1} current mask of the ORIGINAL slice.
        actions: ``info["actions"]`` so far (pixels of the original slice).
        prior: (H, W) bool neighbouring slice's mask (``info["prior"]``) or None (zeros); read only when
            ``config.prior`` is on.
    """
    shape = tuple(int(v) for v in np.asarray(mask).shape)
    planes = [image_s[None].astype(np.float32), resize_plane(np.asarray(mask, dtype=np.float32), config.size)[None],
              prompt_planes(shape, actions, config)]
    if config.prior:
        s = config.size
        planes.append(np.zeros((1, s, s), np.float32) if prior is None else
                      resize_plane(np.asarray(prior, dtype=np.float32), s)[None])
    return np.concatenate(planes)
