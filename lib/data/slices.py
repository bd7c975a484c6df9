"""The slice a tool and a policy see, and the key its encoding is cached under: one definition for
serving (``lib/infers``), training (``lib/learning``) and evaluation (``lib/agent``).

A tool's input is an (H, W) float32 slice in [0, 1] (CT windowed in HU, other modalities by robust
percentiles) or an (H, W, 3) uint8 colour image passed through. Windowing is decided here only, from the
modality and the CT window of the episode settings (``lib.agent.settings.EpisodeSettings.ct_window``), so
a change of ``--conf ct_window`` reaches inference and training alike.
"""

from __future__ import annotations

import os

import numpy as np

from lib.data.intensity import DEFAULT_CT_WINDOW, Windowing
from lib.data.io import Volume, get_slice


def windowing_for(modality: str, ct_window: tuple[float, float] = DEFAULT_CT_WINDOW) -> Windowing:
    """CT -> the HU window ``ct_window`` = (level, width); any other modality -> robust percentiles."""
    if str(modality).upper() == "CT":
        return Windowing(mode="ct", level=float(ct_window[0]), width=float(ct_window[1]))
    return Windowing(mode="percentile")


def tool_pixels(image: np.ndarray, windowing: Windowing) -> np.ndarray:
    """A raw 2D slice as a tool takes it: (H, W) float32 in [0, 1], or (H, W, 3) uint8 passed through."""
    img = np.asarray(image)
    if img.ndim == 3:
        return img.astype(np.uint8, copy=False)
    return windowing(img)


def volume_slice(vol: Volume, slice_index: int | None, windowing: Windowing, axis: int = 0) -> np.ndarray:
    """Slice ``slice_index`` along ``axis`` of ``vol`` (None for a 2D image) as a tool takes it."""
    return tool_pixels(get_slice(vol, slice_index, axis), windowing)


def slice_key(vol: Volume, slice_index: int | None, windowing: Windowing, axis: int = 0) -> tuple:
    """Session-cache key of one slice: file identity (path, mtime, size), slice, axis and windowing.

    A file rewritten in place (a new mtime or size) gets new keys, so a stale embedding is never reused.
    """
    st = os.stat(vol.path)
    key = (os.path.realpath(vol.path), st.st_mtime_ns, st.st_size, slice_index, windowing.key)
    return key if axis == 0 else (*key, axis)
