"""Scoring ``agent_turns``: run the agent on every unlabeled image and store how hard it found it.

The agent runs in the app's scope (``--conf scope``, default ``volume``: the whole structure in 3D; a scoring
request may send ``scope``). How hard an image is = the **corrective actions** the agent needed: the box/click
actions its policy issued beyond its start (in a volume episode: beyond each propagated box, summed over the
slices; on one slice: its turns minus the user's hand-off prompts).

Writes into each unlabeled image's info (datastore): ``agent_turns`` (corrective actions summed over the
scored labels), ``agent_actions_per_label`` (label -> corrective actions), ``agent_quality`` (lowest predicted
mask quality; per label in ``agent_quality_per_label``), ``agent_stop_reason`` (of the hardest label),
``agent_scope``, ``agent_labels`` and ``agent_ts``. The ``most_turns`` strategy ranks on these keys.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from monailabel.interfaces.tasks.scoring import ScoringMethod

logger = logging.getLogger(__name__)


def corrective_actions(result: dict[str, Any]) -> int:
    """Corrective actions of one agent result JSON (``corrective_actions``; older or slice results without it:
    executed turns minus the hand-off prompts)."""
    if result.get("corrective_actions") is not None:
        return int(result["corrective_actions"])
    return max(int(result.get("turns", 0)) - int(result.get("handoff_actions", 0)), 0)


def _quality(result: dict[str, Any]) -> float | None:
    """The lowest predicted quality of a result: over the kept slices in volume scope, else the seed slice's."""
    q = result.get("min_predicted_quality")
    return result.get("predicted_quality") if q is None else q


def agent_info(results: list[dict[str, Any]], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Image-info keys from the agent's result JSONs on one image (one per label).

    Args:
        results: agent result JSONs (``target``, ``corrective_actions`` or ``turns``, ...), one per label.
        previous: the image's current info; its per-label entries for labels not in ``results`` are kept (a user's
            agent request on one label updates that label only). None = the results alone (a scoring pass).
    """
    previous = previous or {}
    actions = dict(previous.get("agent_actions_per_label") or {})
    qualities = dict(previous.get("agent_quality_per_label") or {})
    for r in results:
        actions[str(r.get("target"))] = corrective_actions(r)
        qualities[str(r.get("target"))] = _quality(r)
    hardest = max(results, key=lambda r: (corrective_actions(r), -(_quality(r) or 0.0)))
    known = [q for q in qualities.values() if q is not None]
    return {
        "agent_turns": sum(actions.values()),
        "agent_actions_per_label": actions,
        "agent_quality": min(known) if known else None,
        "agent_quality_per_label": qualities,
        "agent_stop_reason": hardest.get("stop_reason"),
        "agent_scope": hardest.get("scope", "slice"),
        "agent_labels": list(actions),
        "agent_ts": int(time.time()),
    }


class AgentTurnsScoring(ScoringMethod):
    """Args: agent: the ``agent`` infer task (its scope is the app's ``--conf scope``); labels: the app's label set."""

    def __init__(self, agent, labels: dict[str, int]) -> None:
        super().__init__("Run the agent on unlabeled images (whole volume by default); record the corrective "
                         "actions it needed per label, stop reason and predicted quality")
        self.agent = agent
        self.labels = labels

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any]:
        policy = self.agent.store.get()
        if policy is None:
            return {"scored": 0, "reason": "no trained agent policy yet (run agent_sft first)"}
        wanted = request.get("labels") or [n for n in self.labels if n in getattr(policy, "labels", self.labels)]
        options = {k: request[k] for k in ("slice", "scope") if request.get(k) is not None}
        scored, failed = {}, {}
        images = datastore.get_unlabeled_images()
        for n, image_id in enumerate(images, 1):
            path = datastore.get_image_uri(image_id)
            results = []
            for name in wanted:
                try:
                    label_file, res = self.agent({"image": path, "label": name, **options})
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
            logger.info("agent_turns: %d/%d images (%s: %s)", n, len(images), image_id,
                        failed.get(image_id) or scored.get(image_id))
        logger.info("agent_turns scored %d images (%d failed)", len(scored), len(failed))
        return {"scored": len(scored), "turns": scored, "failed": failed}
