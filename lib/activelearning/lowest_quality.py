"""Strategy ``lowest_quality``: send the annotator to the unlabeled image whose agent-predicted mask quality
(``agent_quality``: the lowest over the scored labels and, in volume scope, the kept slices; written by the
``agent_turns`` scoring) is lowest. Ties: most corrective actions, then the image this strategy served least
recently, then the image id. Images without a predicted quality (not scored yet, or a policy that predicts
none) come after every image with one. The rank key lives in ``lib.activelearning.ranking``."""

from __future__ import annotations

from lib.activelearning.agent_strategy import AgentRankedStrategy
from lib.activelearning.ranking import lowest_quality_key


class LowestQuality(AgentRankedStrategy):
    def __init__(self, name: str = "lowest_quality") -> None:
        super().__init__(name, "Unlabeled image whose agent-predicted mask quality is lowest (ties: most corrective "
                         "actions)", lowest_quality_key, "agent_quality_per_label")
