"""Strategy ``most_turns``: send the annotator to the unlabeled image on which the agent needed the most
corrective actions (``agent_turns``: summed over the scored labels and, in volume scope, over the slices).
Ties: lowest predicted quality first, then the image this strategy served least recently, then the image id.
Images the agent has not scored yet come after every scored one (run ``/scoring/agent_turns``).
The rank key lives in ``lib.activelearning.ranking`` (shared with ``scripts/simulate_al.py``)."""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.tasks.strategy import Strategy

from lib.activelearning.ranking import most_turns_key

logger = logging.getLogger(__name__)


def rank_key(info: dict[str, Any], strategy_name: str) -> tuple:
    """Sort key (ascending = served first)."""
    return most_turns_key(info, strategy_name)


def ranked(images: list[str], info_of, strategy_name: str = "most_turns") -> list[str]:
    """``images`` in the order the strategy serves them (``info_of(image_id)`` -> the image's info)."""
    from lib.activelearning.ranking import ranked as _ranked

    return _ranked(images, info_of, strategy_name, key=most_turns_key)


class MostTurns(Strategy):
    def __init__(self, name: str = "most_turns") -> None:
        super().__init__("Unlabeled image where the agent needed the most corrective actions (ties: lowest "
                         "predicted quality)")
        self.name = name

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any] | None:
        images = datastore.get_unlabeled_images()
        if not images:
            return None
        best = ranked(images, datastore.get_image_info, self.name)[0]
        info = datastore.get_image_info(best)
        logger.info("most_turns -> %s (agent_turns=%s, per label %s)", best, info.get("agent_turns"),
                    info.get("agent_actions_per_label"))
        return {"id": best, "agent_turns": info.get("agent_turns"), "agent_quality": info.get("agent_quality"),
                "agent_actions_per_label": info.get("agent_actions_per_label")}
