"""Strategy ``most_turns``: send the annotator to the unlabeled image on which the agent needed the most
corrective actions (``agent_turns``: summed over the scored labels and, in volume scope, over the slices).
Ties: lowest predicted quality first, then the image this strategy served least recently, then the image id.
Images the agent has not scored yet come after every scored one (run ``/scoring/agent_turns``).
The rank key lives in ``lib.activelearning.ranking`` (shared with ``scripts/simulate_al.py``)."""

from __future__ import annotations

from lib.activelearning.agent_strategy import AgentRankedStrategy
from lib.activelearning.ranking import most_turns_key


class MostTurns(AgentRankedStrategy):
    def __init__(self, name: str = "most_turns") -> None:
        super().__init__(name, "Unlabeled image where the agent needed the most corrective actions (ties: lowest "
                         "predicted quality)", most_turns_key, "agent_actions_per_label")
