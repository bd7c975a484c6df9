"""Intensity windowing: raw scanner values -> float32 in [0, 1] before a tool sees a slice.

CT is windowed in Hounsfield units (level/width); other modalities use robust percentiles of the
slice's non-background pixels, so a bright artefact or a padded border does not flatten contrast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the usual abdominal soft-tissue window (level, width) in HU; ``lib.agent.settings.EpisodeSettings.ct_window``
#: serves it unless ``--conf ct_window`` says otherwise
DEFAULT_CT_WINDOW = (40.0, 400.0)


@dataclass(frozen=True)
class Windowing:
    """How to map raw intensities to [0, 1].

    Attributes:
        mode: "ct" (fixed HU window), "percentile" (robust per-slice range) or "minmax".
        level: CT window centre in HU. The default (40, 400) is the usual abdominal soft-tissue window.
        width: CT window width in HU.
        lower: lower percentile for "percentile" mode.
        upper: upper percentile for "percentile" mode.
    """

    mode: str = "percentile"
    level: float = DEFAULT_CT_WINDOW[0]
    width: float = DEFAULT_CT_WINDOW[1]
    lower: float = 0.5
    upper: float = 99.5

    def __post_init__(self) -> None:
        if self.mode not in ("ct", "percentile", "minmax"):
            raise ValueError(f"windowing mode {self.mode!r} must be one of 'ct', 'percentile', 'minmax'")
        if self.width <= 0:
            raise ValueError(f"CT window width must be > 0 HU, got {self.width}")
        if not 0 <= self.lower < self.upper <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {self.lower}, {self.upper}")

    @classmethod
    def for_modality(cls, modality: str, **overrides) -> Windowing:
        """Default windowing for a modality name ("CT", "MR", ...)."""
        mode = "ct" if str(modality).upper() == "CT" else "percentile"
        return cls(mode=mode, **overrides)

    @property
    def key(self) -> str:
        """Short string identifying this windowing (part of session-cache keys)."""
        if self.mode == "ct":
            return f"ct:{self.level:g}/{self.width:g}"
        if self.mode == "percentile":
            return f"pct:{self.lower:g}-{self.upper:g}"
        return "minmax"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Map an (H, W) or (..., H, W) array of raw intensities to float32 in [0, 1]."""
        x = np.asarray(image, dtype=np.float32)
        if self.mode == "ct":
            lo, hi = self.level - self.width / 2, self.level + self.width / 2
        elif self.mode == "percentile":
            vals = x[x > x.min()] if np.any(x > x.min()) else x.ravel()
            lo, hi = np.percentile(vals, [self.lower, self.upper])
        else:
            lo, hi = float(x.min()), float(x.max())
        if hi <= lo:
            return np.zeros_like(x, dtype=np.float32)
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
