"""Scoring ``agent_turns``: run the agent on every unlabeled image and store how hard it found it.

The agent runs in the app's scope (``--conf scope``, default ``volume``: the whole structure in 3D; a scoring
request may send ``scope``). How hard an image is = the **corrective actions** the agent needed: the box/click
actions its policy issued beyond its start (in a volume episode: beyond each propagated box, summed over the
slices; on one slice: its turns minus the user's hand-off prompts).

Writes into each unlabeled image's info (datastore): ``agent_turns`` (corrective actions summed over the
scored labels), ``agent_actions_per_label`` (label -> corrective actions), ``agent_quality`` (lowest predicted
mask quality; per label in ``agent_quality_per_label``), ``agent_stop_reason`` (of the hardest label),
``agent_scope``, ``agent_labels`` and ``agent_ts``. The ``most_turns`` and ``lowest_quality`` strategies rank on
these keys (``lib.activelearning.ranking``, which also builds them: ``agent_info``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from monailabel.interfaces.tasks.scoring import ScoringMethod

from lib.activelearning.ranking import agent_info, corrective_actions  # noqa: F401  (pure; re-exported)
from lib.data.label_names import resolve

logger = logging.getLogger(__name__)


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
        trained = getattr(policy, "labels", self.labels)
        wanted = request.get("labels") or [n for n in self.labels if resolve(n, trained) is not None]
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
