"""The expert oracle as a policy: re-exported from ``lib.agent.expert`` (where its logic and config live)."""

from __future__ import annotations

from lib.agent.expert import (
    BOX_TO_POINT,
    HYBRID,
    SEQUENTIAL_CLICK,
    STRATEGIES,
    ExpertConfig,
    ExpertPolicy,
    keep_trajectory,
)

__all__ = [
    "BOX_TO_POINT",
    "HYBRID",
    "SEQUENTIAL_CLICK",
    "STRATEGIES",
    "ExpertConfig",
    "ExpertPolicy",
    "keep_trajectory",
]
