"""The promptable-segmenter ("tool") contract shared by every backend.

Coordinates: 2D pixel coordinates of the original slice, ``(x, y)`` = (column, row), in pixels;
boxes are ``(x0, y0, x1, y1)`` with both corners inclusive. This is the convention of SAM and of
the agent grammar; conversions from client IJK voxel indices live in ``lib.data.ijk`` only.

Call order: ``Tool.start(image)`` encodes the slice once and returns a ``ToolSession``; every
``ToolSession.predict`` afterwards costs decoder time only. A session holds no prompt state (it
is shared through the session cache by concurrent requests); per-episode prompt bookkeeping lives
in ``lib.tools.interaction.Interaction``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: capabilities a backend may declare
BOX = "box"
POINT = "point"
MASK_INPUT = "mask_input"


@dataclass(frozen=True)
class SegOutput:
    """One decoder answer.

    Attributes:
        mask: (H, W) bool, the original slice's pixel grid.
        logits: (1, 256, 256) float32 low-resolution logits in the model's own frame; pass them back
            as ``mask_logits`` to refine. Opaque outside the backend that produced them.
        score: the model's predicted IoU of ``mask`` (nan when the backend has none).
        decoder_ms: wall time of prompt encoder + mask decoder + upsampling, milliseconds.
    """

    mask: np.ndarray
    logits: np.ndarray
    score: float = float("nan")
    decoder_ms: float = 0.0


@dataclass
class ToolSession(abc.ABC):
    """Image embedding of one 2D slice.

    Attributes:
        shape: (H, W) of the original slice in pixels.
        encoder_ms: wall time spent computing the embedding, milliseconds.
    """

    shape: tuple[int, int]
    encoder_ms: float = 0.0
    nbytes: int = field(default=0)

    @abc.abstractmethod
    def predict(
        self,
        box: Sequence[float] | None = None,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] = (),
        mask_logits: np.ndarray | None = None,
    ) -> SegOutput:
        """Decode a mask for the given prompts.

        Args:
            box: (x0, y0, x1, y1) inclusive, pixels of the original slice, or None.
            points: N × (x, y) pixels of the original slice.
            labels: N ints, 1 = positive (foreground), 0 = negative (background).
            mask_logits: (1, 256, 256) logits of an earlier ``SegOutput`` of this session, or None.
        """

    def validate_prompts(self, box, points, labels) -> None:
        """Raise ValueError naming the offending prompt when it is not on the slice."""
        h, w = self.shape
        if box is None and len(points) == 0:
            raise ValueError("predict needs a box or at least one point")
        if len(points) != len(labels):
            raise ValueError(f"{len(points)} points but {len(labels)} labels; give one label per point")
        for (x, y), lab in zip(points, labels):
            if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
                raise ValueError(
                    f"point (x={x}, y={y}) is outside the {w}x{h} slice (x in [0,{w - 1}], y in [0,{h - 1}])"
                )
            if int(lab) not in (0, 1):
                raise ValueError(f"point label {lab} must be 1 (positive) or 0 (negative)")
        if box is not None:
            x0, y0, x1, y1 = box
            if not (0 <= x0 <= x1 <= w - 1 and 0 <= y0 <= y1 <= h - 1):
                raise ValueError(
                    f"box {tuple(box)} is not an (x0, y0, x1, y1) box inside the {w}x{h} slice with x0<=x1, y0<=y1"
                )


class Tool(abc.ABC):
    """A promptable segmenter loaded once per device.

    Attributes:
        name: registry name of the backend (e.g. "litemedsam").
        capabilities: subset of {BOX, POINT, MASK_INPUT}.
        weights: human-readable description of which weights are loaded (shown in /info).
    """

    name: str = "tool"
    capabilities: frozenset[str] = frozenset({BOX, POINT, MASK_INPUT})
    weights: str = ""

    @abc.abstractmethod
    def start(self, image: np.ndarray) -> ToolSession:
        """Encode one slice.

        Args:
            image: (H, W) float32 in [0, 1] (already windowed, see ``lib.data.intensity``) or
                (H, W, 3) uint8 RGB. Row-major: ``image[y, x]``.
        """


class MissingCheckpointError(FileNotFoundError):
    """A backend's checkpoint file is not where the configuration says it should be."""
