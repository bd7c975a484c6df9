"""The compact policy's settings, frame, input channels and action kinds (its network: ``compact_net``; what it
sees: ``compact_state``; its actions: ``compact_codec``; their distribution: ``compact_dist``).

**Frame.** The policy works on an ``S x S`` grid (``CompactConfig.size``, 256 by default): the (H, W) slice
is stretched to it with ``align_corners`` geometry, so pixel ``x`` of a ``W``-wide slice sits at grid
position ``x * (S - 1) / (W - 1)`` (0 = first pixel centre, S - 1 = last). Box coordinates are predicted on
``box_bins`` bins and clicks on a ``P x P`` grid (``P = S / 4``) in the same geometry; ``bin_to_pixel`` /
``pixel_to_bin`` are the only conversions. Nothing here depends on a backend: the input is the windowed
slice, the current mask and the prompts, never a segmenter's embedding (tool-agnostic by design, docs/architecture.md).

**Input** ``(B, C, S, S)`` float32 (C = 5, or 6 with the prior), channels: ``image`` (windowed, [0, 1]),
``mask`` (current mask, [0, 1] after bilinear resampling), ``box`` (1 inside the current box), ``positive`` /
``negative`` (a Gaussian of ``click_sigma`` grid pixels at each click, max-combined); with ``CompactConfig.prior``
a 6th, ``prior`` (the neighbouring slice's final mask where a volume episode continues a structure, [0, 1] after
bilinear resampling; 0 elsewhere), so the policy can tell a mask that drifted from the structure one slice away
from anatomy that changed. Two coordinate planes (x, y in [-1, 1]) are added inside the network, so "where" is
learnable in autonomous mode. The target label (index into the
policy's label set) and the turn index condition the network by FiLM.

**Action** = a kind (stop / box / positive click / negative click) then its location:
``log p(a) = log p(kind) + log p(location | kind)``; a box factorises into x0, y0 (any bin but the last)
and x1 > x0, y1 > y0 (masked to the bins after the first corner), so every sampled box is a valid box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: action kinds, index = the kind head's class
KINDS = ("stop", "box", "positive", "negative")
STOP, BOX, POS, NEG = range(4)
#: input channels of ``state_features`` (``CompactConfig.channels``: these, then ``PRIOR`` when it is on)
CHANNELS = ("image", "mask", "box", "positive", "negative")
PRIOR = "prior"


@dataclass(frozen=True)

class CompactConfig:
    """Architecture of the compact policy (saved in ``policy.json`` as ``architecture``).

    Attributes:
        size: input side S in grid pixels (a multiple of 32: a /4 stem then three /2 stages). 256 = the
            resolution the latency target is stated at (< 50 ms per decision on 2 CPU cores).
        box_bins: bins per box coordinate. 128 at S = 256 is 2 grid pixels, 1.25 pixels on a 160² slice:
            finer than the box noise SAM-family models were trained with.
        widths: channels of the four stages (S/4, S/8, S/16, S/32). (24, 48, 96, 160) gives ~1.3 M
            parameters (budget 10 M) and half the decision time of (32, 64, 128, 192) on a 2-core CPU;
            SFT steps cost the same factor, which is what bounds training on a hospital CPU.
        label_dim: size of the target-label embedding.
        cond_dim: size of the (label, turn) conditioning vector that drives the FiLM layers.
        max_turns: turn embeddings (turn indices beyond clamp to the last one).
        click_sigma: Gaussian radius of a click in the prompt channels, grid pixels.
        prior: a 6th input channel, the neighbouring slice's final mask (volume episodes; zeros on a slice
            episode). Off in checkpoints written before it existed, which load unchanged.
    """

    size: int = 256
    box_bins: int = 128
    widths: tuple[int, int, int, int] = (24, 48, 96, 160)
    label_dim: int = 32
    cond_dim: int = 64
    max_turns: int = 8
    click_sigma: float = 3.0
    prior: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 32 or self.size % 32:
            raise ValueError(f"CompactConfig.size must be a multiple of 32 (>= 32), got {self.size!r}")
        if not 2 <= int(self.box_bins) <= self.size:
            raise ValueError(f"CompactConfig.box_bins must be in [2, size={self.size}], got {self.box_bins!r}")
        if len(self.widths) != 4 or min(self.widths) < 8 or any(w % 8 for w in self.widths):
            raise ValueError(f"CompactConfig.widths must be 4 multiples of 8 (GroupNorm groups), got {self.widths!r}")
        for name in ("label_dim", "cond_dim", "max_turns"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"CompactConfig.{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.prior, bool):
            raise ValueError(f"CompactConfig.prior must be true or false, got {self.prior!r}")
        if not 0.5 <= float(self.click_sigma) <= self.size / 8:
            raise ValueError(f"CompactConfig.click_sigma must be in [0.5, size/8] grid pixels, got {self.click_sigma}")

    @property
    def channels(self) -> tuple[str, ...]:
        """Names of the input channels, in order."""
        return CHANNELS + ((PRIOR,) if self.prior else ())

    @property
    def point_grid(self) -> int:
        """P: side of the click heatmaps (the first stage's resolution, S / 4)."""
        return self.size // 4

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "box_bins": self.box_bins, "widths": list(self.widths), "label_dim": self.label_dim,
                "cond_dim": self.cond_dim, "max_turns": self.max_turns, "click_sigma": self.click_sigma,
                "prior": self.prior}
