"""Labelled slices -> cached embeddings + ``ClickTarget`` items for interactive fine-tuning.

Slices come from ``lib.data.dataset.iter_slices`` (every (slice, label) pair whose label covers at least
``min_area`` pixels). Each distinct slice is windowed exactly as the interactive infer task windows it
(CT: the HU window, else 0.5-99.5 percentiles; colour images as they are), encoded once by the frozen
encoder through the on-disk ``EmbeddingCache``, and shared by all of its labels.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from lib.data.dataset import Case, Dataset, iter_slices
from lib.data.intensity import Windowing
from lib.learning.segmenter.backends import TrainableBackend
from lib.learning.segmenter.click_sessions import ClickTarget
from lib.learning.segmenter.embedding_cache import EmbeddingCache, EmbeddingKey, file_identity

logger = logging.getLogger(__name__)


def windowing_for(modality: str, ct_window: tuple[float, float]) -> Windowing:
    """CT -> the HU window (level, width); anything else -> robust percentiles (as the infer task does)."""
    if modality == "CT":
        return Windowing(mode="ct", level=ct_window[0], width=ct_window[1])
    return Windowing(mode="percentile")


@dataclasses.dataclass
class SliceSet:
    """Embeddings of distinct slices and the (slice, label) items that point into them.

    Attributes:
        embeddings: (S, C, h, w) float32, one row per distinct slice.
        items: one ``ClickTarget`` per (slice, label), ``item.index`` = its slice's row.
        cases: case ids in the set, in dataset order.
    """

    embeddings: torch.Tensor
    items: list[ClickTarget]
    cases: list[str]

    @property
    def n_slices(self) -> int:
        return int(self.embeddings.shape[0])

    def subset(self, n: int | None) -> SliceSet:
        """At most ``n`` items, evenly spaced over the list (so every case and label keeps a share)."""
        if n is None or len(self.items) <= n:
            return self
        keep = np.unique(np.linspace(0, len(self.items) - 1, n).round().astype(int))
        return SliceSet(self.embeddings, [self.items[i] for i in keep], self.cases)


def build_slice_set(
    dataset: Dataset,
    cases: Sequence[Case],
    backend: TrainableBackend,
    cache: EmbeddingCache,
    *,
    labels: Iterable[int | str] | None = None,
    axis: int = 0,
    min_area: int = 20,
    max_per_case: int | None = None,
    ct_window: tuple[float, float] = (40.0, 400.0),
    desc: str = "slices",
    progress: bool = True,
) -> SliceSet:
    """Encode (or read from the cache) every labelled slice of ``cases`` and build the items.

    Raises:
        ValueError: no (slice, label) pair of ``cases`` reaches ``min_area`` pixels.
    """
    sub = dataclasses.replace(dataset, training=list(cases), test=[])
    paths = {c.case_id: c.image_path for c in cases}
    rows: dict[str, int] = {}
    embeddings: list[torch.Tensor] = []
    resized: list[tuple[int, int]] = []
    items: list[ClickTarget] = []
    samples = iter_slices(sub, "training", axis=axis, labels=labels, min_area=min_area, max_per_case=max_per_case)
    for s in tqdm(samples, desc=desc, unit="item", disable=not progress, mininterval=2.0):
        colour = s.image.ndim == 3
        win = None if colour else windowing_for(s.modality, ct_window)
        key = EmbeddingKey(
            image=file_identity(paths[s.case_id]),
            slice_index=s.slice_index,
            axis=s.axis,
            windowing="rgb" if colour else win.key,
            backend=backend.name,
            encoder=backend.encoder_id(),
        )
        digest = key.digest
        if digest not in rows:
            image = s.image if colour else win(s.image)
            entry = cache.get_or_compute(key, lambda image=image: backend.encode(image))
            rows[digest] = len(embeddings)
            embeddings.append(entry.embedding)
            resized.append(entry.resized)
        row = rows[digest]
        items.append(
            ClickTarget(
                index=row, gt=s.gt, target=backend.target(s.gt, resized[row]), resized=resized[row],
                case_id=s.case_id, label=s.label_name,
            )
        )
    if not items:
        raise ValueError(
            f"no labelled slice with >= {min_area} pixels in cases {[c.case_id for c in cases]}; "
            "label some images (final labels) or lower min_area"
        )
    return SliceSet(torch.stack(embeddings), items, [c.case_id for c in cases])
