"""Rank keys of the active-learning strategies, and the image-info keys they rank on (pure: no MONAI Label).

The app's strategies (``most_turns``, ``lowest_quality``) and the simulated campaign
(``scripts/simulate_al.py``) rank with these same functions, so a simulation serves images in exactly the
order the server would. ``info`` is an image's info in the datastore: ``agent_turns`` (corrective actions
summed over the scored labels), ``agent_quality`` (the lowest predicted mask quality over the labels and, in
volume scope, the kept slices; None when the policy predicts none) and ``strategy[<name>]["ts"]`` (when the
strategy last served the image; MONAI Label writes it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def corrective_actions(result: dict[str, Any]) -> int:
    """Corrective actions of one agent result JSON (``corrective_actions``; older or slice results without it:
    executed turns minus the hand-off prompts)."""
    if result.get("corrective_actions") is not None:
        return int(result["corrective_actions"])
    return max(int(result.get("turns", 0)) - int(result.get("handoff_actions", 0)), 0)


def result_quality(result: dict[str, Any]) -> float | None:
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
        qualities[str(r.get("target"))] = result_quality(r)
    hardest = max(results, key=lambda r: (corrective_actions(r), -(result_quality(r) or 0.0)))
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


def _served(info: dict[str, Any], strategy_name: str) -> float:
    return (info.get("strategy") or {}).get(strategy_name, {}).get("ts", 0)


def most_turns_key(info: dict[str, Any], strategy_name: str = "most_turns") -> tuple:
    """``most_turns`` sort key (ascending = served first): scored images first, most corrective actions, then
    lowest predicted quality (unknown = 1.0), then least recently served by this strategy."""
    turns = info.get("agent_turns")
    quality = info.get("agent_quality")
    return (turns is None, -(turns or 0.0), 1.0 if quality is None else float(quality), _served(info, strategy_name))


def lowest_quality_key(info: dict[str, Any], strategy_name: str = "lowest_quality") -> tuple:
    """``lowest_quality`` sort key (ascending = served first): images with a predicted quality first, lowest
    quality, then most corrective actions, then least recently served by this strategy. An image the agent has
    not scored, or scored with a policy that predicts no quality, comes after every image with a quality."""
    quality = info.get("agent_quality")
    turns = info.get("agent_turns")
    return (quality is None, 1.0 if quality is None else float(quality), -(turns or 0.0),
            _served(info, strategy_name))


#: strategy name -> its sort key
RANK_KEYS: dict[str, Callable[[dict[str, Any], str], tuple]] = {
    "most_turns": most_turns_key,
    "lowest_quality": lowest_quality_key,
}


def ranked(images: list[str], info_of: Callable[[str], dict[str, Any]], strategy_name: str = "most_turns",
           key: Callable[[dict[str, Any], str], tuple] | None = None) -> list[str]:
    """``images`` in the order a strategy serves them (``info_of(image_id)`` -> the image's info); last tie-break:
    the image id. ``key`` defaults to ``RANK_KEYS[strategy_name]`` (an app may register a strategy under another
    name and pass its key)."""
    key = key or RANK_KEYS[strategy_name]
    return sorted(images, key=lambda i: (key(info_of(i), strategy_name), i))
