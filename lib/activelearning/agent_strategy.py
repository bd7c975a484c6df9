"""The active-learning strategies that rank unlabeled images by what the ``agent_turns`` scoring recorded
(``most_turns``, ``lowest_quality``): one ``Strategy`` adapter, parameterised by a pure rank key from
``lib.activelearning.ranking`` (the keys ``scripts/simulate_al.py`` ranks with too)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from monailabel.interfaces.tasks.strategy import Strategy

from lib.activelearning.ranking import ranked

logger = logging.getLogger(__name__)


class AgentRankedStrategy(Strategy):
    """Serve the first unlabeled image in ``key`` order (ties: image id).

    Args:
        name: the strategy's name (its "served" timestamps in the image info are kept under it).
        description: what MONAI Label lists.
        key: ``(image info, strategy name) -> sort key``, ascending = served first.
        per_label: the image-info key with the per-label detail the strategy reports.
    """

    def __init__(self, name: str, description: str, key: Callable[[dict[str, Any], str], tuple],
                 per_label: str) -> None:
        super().__init__(description)
        self.name, self.key, self.per_label = name, key, per_label

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any] | None:
        images = datastore.get_unlabeled_images()
        if not images:
            return None
        best = ranked(images, datastore.get_image_info, self.name, key=self.key)[0]
        info = datastore.get_image_info(best)
        logger.info("%s -> %s (agent_turns=%s, agent_quality=%s, per label %s)", self.name, best,
                    info.get("agent_turns"), info.get("agent_quality"), info.get(self.per_label))
        return {"id": best, "agent_turns": info.get("agent_turns"), "agent_quality": info.get("agent_quality"),
                self.per_label: info.get(self.per_label)}
