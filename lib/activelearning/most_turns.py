"""Strategy ``most_turns``: send the annotator to the unlabeled image on which the agent needed the most
turns. Ties: lowest predicted quality first, then the image this strategy served least recently.
Images the agent has not scored yet come after every scored one (run ``/scoring/agent_turns``)."""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.tasks.strategy import Strategy

logger = logging.getLogger(__name__)


def rank_key(info: dict[str, Any], strategy_name: str) -> tuple:
    """Sort key (ascending = served first)."""
    turns = info.get("agent_turns")
    quality = info.get("agent_quality")
    served = info.get("strategy", {}).get(strategy_name, {}).get("ts", 0)
    return (turns is None, -(turns or 0.0), 1.0 if quality is None else float(quality), served)


class MostTurns(Strategy):
    def __init__(self, name: str = "most_turns") -> None:
        super().__init__("Unlabeled image where the agent needed the most turns (ties: lowest predicted quality)")
        self.name = name

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any] | None:
        images = datastore.get_unlabeled_images()
        if not images:
            return None
        ranked = sorted(images, key=lambda i: (rank_key(datastore.get_image_info(i), self.name), i))
        best = ranked[0]
        info = datastore.get_image_info(best)
        logger.info("most_turns -> %s (agent_turns=%s)", best, info.get("agent_turns"))
        return {"id": best, "agent_turns": info.get("agent_turns"), "agent_quality": info.get("agent_quality")}
