"""Strategy ``lowest_quality``: send the annotator to the unlabeled image whose agent-predicted mask quality
(``agent_quality``: the lowest over the scored labels and, in volume scope, the kept slices; written by the
``agent_turns`` scoring) is lowest. Ties: most corrective actions, then the image this strategy served least
recently, then the image id. Images without a predicted quality (not scored yet, or a policy that predicts
none) come after every image with one. The rank key lives in ``lib.activelearning.ranking``."""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.tasks.strategy import Strategy

from lib.activelearning.ranking import lowest_quality_key, ranked

logger = logging.getLogger(__name__)


class LowestQuality(Strategy):
    def __init__(self, name: str = "lowest_quality") -> None:
        super().__init__("Unlabeled image whose agent-predicted mask quality is lowest (ties: most corrective "
                         "actions)")
        self.name = name

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any] | None:
        images = datastore.get_unlabeled_images()
        if not images:
            return None
        best = ranked(images, datastore.get_image_info, self.name, key=lowest_quality_key)[0]
        info = datastore.get_image_info(best)
        logger.info("lowest_quality -> %s (agent_quality=%s, per label %s)", best, info.get("agent_quality"),
                    info.get("agent_quality_per_label"))
        return {"id": best, "agent_quality": info.get("agent_quality"), "agent_turns": info.get("agent_turns"),
                "agent_quality_per_label": info.get("agent_quality_per_label")}
