"""Direct interactive segmentation: the user's clicks and box on one slice -> that slice's mask.

MONAI Label type ``deepgrow``, dimension 2: Slicer sends ``foreground`` / ``background`` IJK
clicks, an optional ``roi`` box and the current ``slice``, and pastes the returned label into that
slice. All prompts of the request go to the model together; the slice embedding is cached, so every
request after the first on a slice costs decoder time only.

Requests are stateless, but a user's clicks are not: a request that adds one click to an earlier
request on the same slice and label is that session's next turn (``lib.tools.answer_history``). With
``local_radius`` its answer is merged locally onto the earlier answer, as in agent episodes
(``lib.tools.local_merge``): the click changes the mask near itself only, so a click that fixes one
edge no longer moves the others (BENCHMARKS.md, issue 3). Sending earlier prompts again (an undo) gives
back the answer they got.
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.agent.settings import EpisodeSettings
from lib.data.ijk import request_to_slice_prompts
from lib.data.io import load_image, result_extension, save_label_like
from lib.data.slices import slice_key, volume_slice
from lib.infers.errors import client_errors
from lib.tools.answer_history import Answer, AnswerHistory
from lib.tools.local_merge import local_merge
from lib.tools.provider import ToolProvider

logger = logging.getLogger(__name__)


def label_value(request: dict, labels: dict[str, int]) -> tuple[str, int]:
    """Segment name and value for the result: the request's ``label`` if known, else 1."""
    name = request.get("label")
    if isinstance(name, str) and name in labels:
        return name, labels[name]
    return (name if isinstance(name, str) and name else "foreground"), 1


class InteractiveInfer(InferTask):
    """One backend, driven directly by the user's prompts.

    Args:
        provider: the backend.
        labels: label name -> value of the result.
        settings: the served episode settings: their CT window, and their local merge radius (a click's
            answer is merged onto the previous request's answer within this multiple of the mask's
            equivalent radius; 0 = each answer replaces the mask).
        history: answers remembered for the merge and for undo (LRU).
    """

    def __init__(self, provider: ToolProvider, labels: dict[str, int], settings: EpisodeSettings | None = None,
                 history: int = 64) -> None:
        super().__init__(
            type=InferType.DEEPGROW,
            labels=labels,
            dimension=2,
            description=f"{provider.name}: segment the current slice from your clicks and box "
            "(first click on a slice encodes it; later clicks are fast)",
        )
        self.provider = provider
        self.settings = settings or EpisodeSettings()
        self.local_radius = self.settings.merge_radius
        self.history = AnswerHistory(history)

    def is_valid(self) -> bool:
        return self.provider.checkpoint_problem() is None

    def __call__(self, request: dict[str, Any]):
        t0 = time.perf_counter()
        with client_errors(self.provider.name):
            vol = load_image(request["image"])
            size_ijk = tuple(reversed(vol.spatial_shape))
            prompts = request_to_slice_prompts(request, size_ijk)
            win = self.settings.windowing(vol.modality)
            session_key = slice_key(vol, prompts.slice_index, win)
            name, value = label_value(request, self.labels if isinstance(self.labels, dict) else {})
            scope = (session_key, name, self.provider.weights_stamp)
            # A repeated prompt set (an undo) is answered from the history before the slice's session is
            # opened: after the session cache evicted the slice, opening it would re-encode for nothing.
            answer = self.history.get(scope, prompts.box, prompts.points, prompts.labels)
            how, decoder_ms, encoder_ms, cached = "repeated", 0.0, 0.0, True
            if answer is None:
                session, cached = self.provider.session(session_key,
                                                        lambda: volume_slice(vol, prompts.slice_index, win))
                answer, how, decoder_ms = self._decode(session, scope, prompts)
                encoder_ms = 0.0 if cached else session.encoder_ms
            label = np.zeros(vol.spatial_shape, dtype=np.uint8)
            if prompts.slice_index is None:
                label[answer.mask] = value
            else:
                label[prompts.slice_index][answer.mask] = value
            ext = request.get("result_extension") or result_extension(vol)
            path = save_label_like(label, vol, tempfile.NamedTemporaryFile(suffix=ext, delete=False).name)
        total = (time.perf_counter() - t0) * 1e3
        return str(path), {
            "label_names": {name: value},
            "backend": self.provider.name,
            "weights": self.provider.tool.weights,
            "slice": prompts.slice_index,
            "score": answer.score,
            "answer": how,
            "latencies": {
                "encoder_ms": encoder_ms,
                "decoder_ms": decoder_ms,
                "total_ms": total,
                "embedding_cached": cached,
            },
        }

    def _decode(self, session, scope, prompts) -> tuple[Answer, str, float]:
        """The mask of prompts not answered before and how it was made: ``decoded``, or ``merged`` onto the
        answer of the same prompts minus the new click; decoder ms. The answer joins the history."""
        box, points, labels = prompts.box, prompts.points, prompts.labels
        out = session.predict(box=box, points=points, labels=labels)
        answer, how = Answer(out.mask, out.score), "decoded"
        earlier = self.history.previous(scope, box, points, labels) if self.local_radius else None
        if earlier is not None:
            before, (x, y, _) = earlier
            answer, how = Answer(local_merge(before.mask, out.mask, (x, y), self.local_radius), out.score), "merged"
        self.history.remember(scope, box, points, labels, answer)
        return answer, how, out.decoder_ms
