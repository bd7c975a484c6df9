"""Scoring ``agent_turns``: run the agent on every unlabeled image and store how hard it found it.

Writes into each unlabeled image's info (datastore): ``agent_turns`` (mean executed actions over the
scored labels), ``agent_stop_reason`` (of the hardest label), ``agent_quality`` (lowest predicted mask
quality) and ``agent_ts``. The ``most_turns`` strategy ranks on these keys.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from monailabel.interfaces.tasks.scoring import ScoringMethod

logger = logging.getLogger(__name__)


def agent_info(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Image-info keys from the agent's result JSONs on one image (one per label)."""
    hardest = max(results, key=lambda r: (r.get("turns", 0), -(r.get("predicted_quality") or 0.0)))
    qualities = [r["predicted_quality"] for r in results if r.get("predicted_quality") is not None]
    return {
        "agent_turns": sum(r.get("turns", 0) for r in results) / len(results),
        "agent_stop_reason": hardest.get("stop_reason"),
        "agent_quality": min(qualities) if qualities else None,
        "agent_labels": [r.get("target") for r in results],
        "agent_ts": int(time.time()),
    }


class AgentTurnsScoring(ScoringMethod):
    """Args: agent: the ``agent`` infer task; labels: the app's label set."""

    def __init__(self, agent, labels: dict[str, int]) -> None:
        super().__init__("Run the agent on unlabeled images; record turns, stop reason and predicted quality")
        self.agent = agent
        self.labels = labels

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any]:
        policy = self.agent.store.get()
        if policy is None:
            return {"scored": 0, "reason": "no trained agent policy yet (run agent_sft first)"}
        wanted = request.get("labels") or [n for n in self.labels if n in getattr(policy, "labels", self.labels)]
        scored, failed = {}, {}
        for image_id in datastore.get_unlabeled_images():
            path = datastore.get_image_uri(image_id)
            results = []
            for name in wanted:
                try:
                    label_file, res = self.agent({"image": path, "label": name, "slice": request.get("slice")})
                except Exception as e:  # noqa: BLE001 - one bad image must not stop the pass
                    failed[image_id] = f"{type(e).__name__}: {getattr(e, 'detail', e)}"
                    break
                if label_file and os.path.exists(label_file):
                    os.unlink(label_file)
                results.append(res)
            if results and image_id not in failed:
                info = agent_info(results)
                datastore.update_image_info(image_id, info)
                scored[image_id] = info["agent_turns"]
        logger.info("agent_turns scored %d images (%d failed)", len(scored), len(failed))
        return {"scored": len(scored), "turns": scored, "failed": failed}
