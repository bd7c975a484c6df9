"""The image a vision-language policy sees: the slice stretched to a square model image, with the mask in green.

One transform, used by inference (``lib.agent.policies.vlm``), SFT export and RL rollouts alike:

- **Stretch, no letterbox.** The (H, W) slice is resampled to ``size x size`` (512 by default, the reference's
  ``grounding_resize``), so the agent grammar's 0..999 integers, which are relative to the *full* slice
  (``lib.agent.coords``), are also relative to the full model image. No offset or scale has to be undone when
  an action comes back (the reference letterboxed at inference but decoded as if it had stretched).
- **Corner-aligned geometry.** Model pixel ``u`` shows slice position ``u * (W - 1) / (size - 1)``: the first
  and last pixel centres of both images coincide, exactly like the grammar (0 = first pixel centre, 999 =
  last). So "grammar integer g" names the same place on the slice and on the model image, and
  ``model_to_slice`` / ``slice_to_model`` are exact inverses of each other. (PIL's ``resize`` uses the
  half-pixel convention, which disagrees with the grammar by up to half a slice pixel at the borders.)
- **Antialiased bilinear.** Each output pixel is a triangle-filter average whose support widens with the
  shrink factor (as PIL's BILINEAR), so a 1024-pixel slice shrunk to 512 does not alias; upscaling is plain
  bilinear interpolation.
- **Overlay.** The mask is resampled with nearest neighbour on the same geometry and blended green
  ``(0, 255, 0)`` at alpha 0.5 over the *plain* model image (never over a previous overlay): masked pixels
  become ``0.5 * pixel + 0.5 * green``, others are unchanged; no contours or markers (as the released
  MedSAM-Agent code does).

Images here are numpy arrays ``(rows, cols[, 3])`` indexed ``image[y, x]``; the model-facing result is an
RGB ``PIL.Image`` of ``size x size``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: side of the square model image in pixels (reference "grounding_resize"; Qwen3-VL: 32 x 32 patches of 16
#: pixels -> 256 visual tokens after the 2 x 2 merge)
MODEL_IMAGE_SIZE = 512
#: overlay colour (RGB) and opacity of the mask on the model image (as in the released MedSAM-Agent code)
OVERLAY_COLOR = (0, 255, 0)
OVERLAY_ALPHA = 0.5


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"model image size must be an int >= 2 pixels, got {size!r}")
    return int(size)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Slice -> (H, W, 3) uint8 RGB.

    Args:
        image: (H, W) float in [0, 1] (a windowed grey slice, as the environment holds it) or (H, W, 3) uint8 RGB.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
        return img
    if img.ndim == 2 and np.issubdtype(img.dtype, np.floating):
        grey = np.clip(np.rint(np.nan_to_num(img) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.ndim == 2 and img.dtype == np.uint8:
        return np.repeat(img[..., None], 3, axis=2)
    raise ValueError(
        f"a model image needs an (H, W) float slice in [0, 1] or (H, W, 3) uint8 RGB, got {img.dtype} {img.shape}"
    )


def _weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) resampling matrix: corner-aligned centres, triangle filter widened when shrinking."""
    if n_in == 1:
        return np.ones((n_out, 1), dtype=np.float64)
    centres = np.arange(n_out, dtype=np.float64) * (n_in - 1) / (n_out - 1)
    # support of the triangle in input pixels: 1 when enlarging (plain bilinear), the shrink factor otherwise
    scale = max(1.0, (n_in - 1) / (n_out - 1))
    dist = np.abs(np.arange(n_in, dtype=np.float64)[None, :] - centres[:, None]) / scale
    w = np.clip(1.0 - dist, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def stretch(image: np.ndarray, size: int = MODEL_IMAGE_SIZE) -> np.ndarray:
    """Slice -> (size, size, 3) uint8 RGB model image (corner-aligned, antialiased bilinear; module docstring).

    Args:
        image: (H, W) float in [0, 1] or (H, W, 3) uint8 RGB, indexed ``image[y, x]``.
        size: side of the square output in pixels.
    """
    size = _check_size(size)
    img = np.asarray(image)
    # a grey slice is resampled once and replicated: 3x less work than resampling identical channels
    planes = to_rgb_uint8(img)[..., :1] if img.ndim == 2 else to_rgb_uint8(img)
    h, w = planes.shape[:2]
    wy, wx = _weights(h, size), _weights(w, size)
    # separable: (size, H) @ (H, W) @ (W, size) per channel
    out = np.stack([wy @ planes[..., c].astype(np.float64) @ wx.T for c in range(planes.shape[2])], axis=2)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return np.repeat(out, 3, axis=2) if out.shape[2] == 1 else out


def stretch_mask(mask: np.ndarray, size: int = MODEL_IMAGE_SIZE) -> np.ndarray:
    """(H, W) bool mask -> (size, size) bool, nearest neighbour on the corner-aligned geometry."""
    size = _check_size(size)
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    h, w = m.shape
    rows = np.rint(np.arange(size) * (h - 1) / (size - 1)).astype(int)
    cols = np.rint(np.arange(size) * (w - 1) / (size - 1)).astype(int)
    return m.astype(bool)[np.ix_(rows, cols)]


def overlay(
    model_image: np.ndarray,
    model_mask: np.ndarray,
    alpha: float = OVERLAY_ALPHA,
    color: tuple[int, int, int] = OVERLAY_COLOR,
) -> np.ndarray:
    """Blend ``color`` at ``alpha`` over the masked pixels of a plain model image.

    Args:
        model_image: (S, S, 3) uint8, the plain stretched slice.
        model_mask: (S, S) bool on the same grid.
        alpha: opacity of the colour, in [0, 1].
        color: RGB in 0..255.

    Returns:
        (S, S, 3) uint8; unmasked pixels are unchanged.
    """
    img = np.asarray(model_image)
    mask = np.asarray(model_mask, dtype=bool)
    if img.shape[:2] != mask.shape:
        raise ValueError(f"model image {img.shape[:2]} and mask {mask.shape} must share the grid")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")
    out = img.astype(np.float64)
    out[mask] = (1.0 - alpha) * out[mask] + alpha * np.asarray(color, dtype=np.float64)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def model_image(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    size: int = MODEL_IMAGE_SIZE,
    alpha: float = OVERLAY_ALPHA,
) -> Image.Image:
    """What the VLM sees on one turn: the stretched slice, with ``mask`` (if any) in green.

    Args:
        image: (H, W) float in [0, 1] or (H, W, 3) uint8 RGB slice.
        mask: (H, W) bool current mask, or None on the first turn (the reference shows the plain image then);
            an all-False mask also gives the plain image.
        size: side of the square model image.
        alpha: overlay opacity.

    Returns:
        RGB ``PIL.Image`` of ``size x size``.
    """
    plain = stretch(image, size)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != np.asarray(image).shape[:2]:
            raise ValueError(f"mask {m.shape} must have the slice's (H, W) {np.asarray(image).shape[:2]}")
        plain = overlay(plain, stretch_mask(m, size), alpha)
    return Image.fromarray(plain, mode="RGB")


def slice_to_model(x: float, y: float, shape: tuple[int, int], size: int = MODEL_IMAGE_SIZE) -> tuple[float, float]:
    """Slice pixel (x, y) = (column, row) of an (H, W) slice -> model-image pixel (u, v), as floats."""
    h, w = shape
    size = _check_size(size)
    u = 0.0 if w == 1 else x * (size - 1) / (w - 1)
    v = 0.0 if h == 1 else y * (size - 1) / (h - 1)
    return u, v


def model_to_slice(u: float, v: float, shape: tuple[int, int], size: int = MODEL_IMAGE_SIZE) -> tuple[float, float]:
    """Model-image pixel (u, v) -> slice pixel (x, y) of an (H, W) slice; the exact inverse of ``slice_to_model``."""
    h, w = shape
    size = _check_size(size)
    return u * (w - 1) / (size - 1), v * (h - 1) / (size - 1)
