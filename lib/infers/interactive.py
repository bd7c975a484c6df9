"""Direct interactive segmentation: the user's clicks and box on one slice -> that slice's mask.

MONAI Label type ``deepgrow``, dimension 2: Slicer sends ``foreground`` / ``background`` IJK
clicks, an optional ``roi`` box and the current ``slice``, and pastes the returned label into that
slice. All prompts of the request go to the model together; the slice embedding is cached, so every
request after the first on a slice costs decoder time only.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.data.ijk import request_to_slice_prompts
from lib.data.intensity import Windowing
from lib.data.io import Volume, get_slice, load_image, save_label_like
from lib.infers.errors import client_errors
from lib.tools.provider import ToolProvider

logger = logging.getLogger(__name__)


def slice_key(vol: Volume, slice_index: int | None, windowing: Windowing) -> tuple:
    """Session-cache key of one slice: file identity (path, mtime, size), slice and windowing."""
    st = os.stat(vol.path)
    return (os.path.realpath(vol.path), st.st_mtime_ns, st.st_size, slice_index, windowing.key)


def windowing_for(vol: Volume, ct_window: tuple[float, float]) -> Windowing:
    """CT -> HU window; anything else -> robust percentiles."""
    if vol.modality == "CT":
        return Windowing(mode="ct", level=ct_window[0], width=ct_window[1])
    return Windowing(mode="percentile")


def tool_input(vol: Volume, slice_index: int | None, windowing: Windowing) -> np.ndarray:
    """The slice a tool encodes: (H, W) float [0, 1], or (H, W, 3) uint8 for RGB 2D images."""
    img = get_slice(vol, slice_index)
    return img if img.ndim == 3 else windowing(img)


def result_extension(vol: Volume) -> str:
    """The input's own format when it can hold a label (as MONAI Label's writer does), else .nii.gz."""
    name = str(vol.path or "").lower()
    for ext in (".nii.gz", ".nii", ".nrrd", ".png"):
        if name.endswith(ext):
            return ext
    return ".nii.gz"


def label_value(request: dict, labels: dict[str, int]) -> tuple[str, int]:
    """Segment name and value for the result: the request's ``label`` if known, else 1."""
    name = request.get("label")
    if isinstance(name, str) and name in labels:
        return name, labels[name]
    return (name if isinstance(name, str) and name else "foreground"), 1


class InteractiveInfer(InferTask):
    """One backend, driven directly by the user's prompts."""

    def __init__(self, provider: ToolProvider, labels: dict[str, int], ct_window=(40.0, 400.0)) -> None:
        super().__init__(
            type=InferType.DEEPGROW,
            labels=labels,
            dimension=2,
            description=f"{provider.name}: segment the current slice from your clicks and box "
            "(first click on a slice encodes it; later clicks are fast)",
        )
        self.provider = provider
        self.ct_window = ct_window

    def is_valid(self) -> bool:
        return self.provider.checkpoint_problem() is None

    def __call__(self, request: dict[str, Any]):
        t0 = time.perf_counter()
        with client_errors(self.provider.name):
            vol = load_image(request["image"])
            size_ijk = tuple(reversed(vol.spatial_shape))
            prompts = request_to_slice_prompts(request, size_ijk)
            win = windowing_for(vol, self.ct_window)
            session, cached = self.provider.session(
                slice_key(vol, prompts.slice_index, win), lambda: tool_input(vol, prompts.slice_index, win)
            )
            out = session.predict(box=prompts.box, points=prompts.points, labels=prompts.labels)
            name, value = label_value(request, self.labels if isinstance(self.labels, dict) else {})
            label = np.zeros(vol.spatial_shape, dtype=np.uint8)
            if prompts.slice_index is None:
                label[out.mask] = value
            else:
                label[prompts.slice_index][out.mask] = value
            ext = request.get("result_extension") or result_extension(vol)
            path = save_label_like(label, vol, tempfile.NamedTemporaryFile(suffix=ext, delete=False).name)
        total = (time.perf_counter() - t0) * 1e3
        return str(path), {
            "label_names": {name: value},
            "backend": self.provider.name,
            "weights": self.provider.tool.weights,
            "slice": prompts.slice_index,
            "score": out.score,
            "latencies": {
                "encoder_ms": 0.0 if cached else session.encoder_ms,
                "decoder_ms": out.decoder_ms,
                "total_ms": total,
                "embedding_cached": cached,
            },
        }
