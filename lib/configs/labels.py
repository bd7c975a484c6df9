"""The app's label set: ``--conf labels`` JSON, else the studies folder's MSD-style dataset.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def resolve_labels(conf_labels: dict[str, int], studies: str | Path) -> dict[str, int]:
    """Label name -> integer value, background excluded, ordered by value.

    Raises:
        ValueError: dataset.json exists but its ``labels`` are malformed.
    """
    if conf_labels:
        return dict(sorted(conf_labels.items(), key=lambda kv: kv[1]))
    ds = Path(studies) / "dataset.json" if studies and Path(str(studies)).is_dir() else None
    if ds is None or not ds.is_file():
        where = f"no {ds}" if ds is not None else f"the studies {str(studies)!r} are not a folder with a dataset.json"
        logger.warning("no --conf labels and %s: using a single 'foreground' label (pass --conf labels "
                       "'{\"liver\": 1, ...}' to name yours)", where)
        return {"foreground": 1}
    raw = json.loads(ds.read_text()).get("labels", {})
    try:
        labels = {str(name): int(idx) for idx, name in raw.items() if int(idx) > 0}
    except (TypeError, ValueError):
        raise ValueError(f"{ds}: `labels` must map integer strings to names, e.g. {{\"1\": \"liver\"}}") from None
    return dict(sorted(labels.items(), key=lambda kv: kv[1]))
