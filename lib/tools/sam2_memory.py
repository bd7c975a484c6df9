"""SAM 2.1 / MedSAM2 memory for volume episodes: propagation through SAM 2's video memory, both directions.

``VolumeEpisode`` (``lib/agent/volume.py``) walks a (K, J, I) volume outward from a seed slice ``k0``, one slice
episode per slice. With a ``Sam2Tool`` it asks the tool for a ``Sam2VolumeMemory`` (``Sam2Tool.volume_memory``)
and treats the slices as the frames of a video, read from ``k0`` towards each end, as SAM 2's video predictor
does with ``propagate_in_video`` (forward) and ``propagate_in_video(reverse=True)`` (``track_in_reverse``):

- **Banks.** The seed slice is the one conditioning frame (``cond_frame_outputs``), shared by both directions;
  each direction (+1 towards larger k, -1 towards smaller k) has its own bank of non-conditioning memories
  (``non_cond_frame_outputs``). A slice of direction d only ever reads the seed and bank d, so a backward slice
  never attends to a forward memory (nor the reverse).
- **Reading** (``session``): a propagated slice's cached ``Sam2Session`` is wrapped in a ``Sam2MemorySession``.
  Its pixel features are the slice's backbone features after memory attention over the seed and the last
  ``num_maskmem - 1`` slices of its direction plus the object pointers of up to ``max_obj_ptrs_in_encoder``
  slices (``SAM2Base._prepare_memory_conditioned_features`` with the slice index as the frame index, K as the
  number of frames, ``track_in_reverse`` for d = -1), computed once per slice on its first decode. Every decode
  on the slice reads them: the propagated box, and each click or box the policy adds (the video predictor's
  corrections on a tracked frame read memory the same way). Where the model has an object-score head, an answer
  the head calls absent is SAM 2's "no object" (empty mask), as in the video predictor, which the volume's end
  rule then reads as ``EMPTY``.
- **Writing** (``remember``): once a slice's final answer is decided (and kept by the end rule), the memory
  encoder encodes that mask over the slice's backbone features into its direction's bank (direction 0 = the
  seed). The mask remembered is the slice's FINAL mask, whatever produced it (the propagated box, the policy's
  corrections, the local merge), encoded as the video predictor encodes a frame given a mask (``add_new_mask``):
  ``SAM2Base._use_mask_as_output`` (its object pointer from the mask, its object score from whether the mask is
  empty), the mask at the low-res grid bilinearly back to the input size and binarised
  (``binarize_mask_from_pts_for_mem_enc``, which ``build_sam2_video_predictor`` sets), then
  ``SAM2Base._encode_new_memory``. Memory features are stored in bfloat16, as the video predictor stores them.
  Slices further back than the model ever reads are dropped from the bank.

The seed slice itself decodes without memory: for SAM 2.1 configs (``directly_add_no_mem_embed``) the video
predictor's first conditioning frame is exactly the image predictor's path, which ``Sam2Session`` already is.

What differs from ``SAM2VideoPredictor``: it tracks the propagated frames without prompts and remembers its own
soft prediction; here every slice starts from a box (the neighbour's mask + margin, ``VolumeEpisode``), may be
corrected, and its final binary mask is remembered; a direction stops at the volume's end rule. The cached
sessions are never changed (the wrapper holds its own features): they are shared across requests and threads.

Frames and shapes: S = ``tool.image_size``; backbone maps at S/16 (h = w = S/16), memories (1, 64, h, w),
object pointers (1, 256); masks (H, W) bool on the slice's pixel grid; slice indices k along axis 0 of the
(K, J, I) volume. Memory cost per remembered slice: 64 x (S/16)^2 bfloat16 (128 KiB at S = 512) + one pointer.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lib.tools.base import SegOutput, ToolSession
from lib.tools.sam2_tool import Sam2Session, decode

if TYPE_CHECKING:
    from lib.tools.sam2_tool import Sam2Tool

#: direction of the seed slice (the conditioning frame) in ``remember``
SEED = 0


@dataclasses.dataclass(frozen=True)
class _Remembered:
    """One slice's memory (the video predictor's compact frame output).

    Attributes:
        features: (1, mem_dim, h, w) bfloat16, the memory encoder's output.
        obj_ptr: (1, hidden_dim) float32 object pointer.
        present: the remembered mask was non-empty.
    """

    features: Any
    obj_ptr: Any
    present: bool


class Sam2VolumeMemory:
    """The memory of one volume episode over one ``Sam2Tool``: the seed and one bank per direction.

    Not thread-safe across directions by design: a volume episode plays one slice at a time. The model is only
    read (eval mode, inference), so memories of several volumes may run at once on one tool.

    Args:
        tool: the SAM 2.1 / MedSAM2 tool whose sessions are wrapped.
        num_slices: K, slices of the volume (the video predictor's ``num_frames``: it scales the object pointers'
            temporal encoding and bounds which slices exist).
        gate_absent: apply the model's object-score head to memory-conditioned answers (see
            ``lib.tools.sam2_tool.decode``); True as in the video predictor.
    """

    def __init__(self, tool: Sam2Tool, num_slices: int, gate_absent: bool = True) -> None:
        if int(num_slices) < 1:
            raise ValueError(f"num_slices must be >= 1, got {num_slices}")
        model = tool.model
        if model.num_maskmem < 1:
            raise ValueError(f"{tool.name}: the model has no memory (num_maskmem = {model.num_maskmem})")
        self.tool = tool
        self.num_slices = int(num_slices)
        self.gate_absent = bool(gate_absent)
        self.seed: tuple[int, _Remembered] | None = None
        self.banks: dict[int, dict[int, _Remembered]] = {+1: {}, -1: {}}
        # the farthest slice behind the current one the model reads: spatial memories at t_rel * stride
        # (t_rel < num_maskmem) and object pointers up to max_obj_ptrs_in_encoder - 1 slices back
        stride = max(1, int(model.memory_temporal_stride_for_eval))
        self.horizon = max(model.num_maskmem * stride,
                           model.max_obj_ptrs_in_encoder if model.use_obj_ptrs_in_encoder else 0)
        self._pos_cache: dict[tuple[int, int], Any] = {}
        self._maskmem_pos = None  # the memory encoder's position encoding: the same for every slice
        self._lock = threading.Lock()

    # -- writing -------------------------------------------------------------------------------------------
    def remember(self, k: int, direction: int, session: ToolSession, mask: np.ndarray) -> float:
        """Encode slice k's final mask into the memory.

        Args:
            k: slice index, 0 <= k < K.
            direction: ``SEED`` (0) for the seed slice (the conditioning frame; set it first), or +1 / -1: the
                direction whose bank receives it (k must lie on that side of the seed).
            session: the slice's ``Sam2Session`` of this tool (the cached one, not a wrapper).
            mask: (H, W) bool, the slice's final mask on the session's pixel grid.

        Returns:
            seconds spent (object pointer + memory encoder).
        """
        import torch
        import torch.nn.functional as F

        k = self._check_index(k)
        if direction != SEED:
            self._check_side(k, direction)
        if not isinstance(session, Sam2Session) or session._tool is not self.tool:
            raise TypeError(f"remember needs a Sam2Session of this tool, got {type(session).__name__}")
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != tuple(session.shape):
            raise ValueError(f"mask shape {mask.shape} differs from slice {k}'s shape {tuple(session.shape)}")
        model, s = self.tool.model, self.tool.image_size
        t0 = time.perf_counter()
        with torch.inference_mode():
            pix = session.vision_features()
            h, w = pix.shape[-2:]
            # the mask as the video predictor's add_new_mask takes it: to the input size, then >= 0.5
            m = torch.from_numpy(mask).to(pix.device, torch.float32)[None, None]
            if m.shape[-2:] != (s, s):
                m = F.interpolate(m, (s, s), mode="bilinear", align_corners=False, antialias=True)
            m = (m >= 0.5).float()
            _, _, _, low_res, _, obj_ptr, obj_score = model._use_mask_as_output(pix, session.high_res_features, m)
            # as propagate_in_video_preflight: the memory is encoded from the low-res mask brought back to S
            high = F.interpolate(low_res, (s, s), mode="bilinear", align_corners=False)
            feats, pos = model._encode_new_memory(
                current_vision_feats=[pix.flatten(2).permute(2, 0, 1)], feat_sizes=[(h, w)],
                pred_masks_high_res=high, object_score_logits=obj_score, is_mask_from_pts=True)
            entry = _Remembered(features=feats.to(torch.bfloat16), obj_ptr=obj_ptr, present=bool(mask.any()))
        with self._lock:
            if self._maskmem_pos is None:
                self._maskmem_pos = [p[0:1].clone() for p in pos]
            if direction == SEED:
                if self.seed is not None and self.seed[0] != k:
                    raise ValueError(f"the seed slice is {self.seed[0]}; slice {k} cannot be a second seed")
                self.seed = (k, entry)
            else:
                bank = self.banks[direction]
                bank[k] = entry
                for j in [j for j in bank if abs(k - j) > self.horizon]:
                    del bank[j]  # never read again: the model looks at most ``horizon`` slices back
        return time.perf_counter() - t0

    # -- reading -------------------------------------------------------------------------------------------
    def session(self, k: int, direction: int, session: ToolSession) -> Sam2MemorySession:
        """Slice k's session whose decodes read the memory of ``direction`` (+1 / -1) and the seed.

        The memory is taken as it is now (later ``remember`` calls do not change this wrapper's answers).

        Args:
            k: slice index, on the ``direction`` side of the seed.
            direction: +1 / -1.
            session: the slice's cached ``Sam2Session`` (never changed).
        """
        k = self._check_index(k)
        self._check_side(k, direction)
        if not isinstance(session, Sam2Session) or session._tool is not self.tool:
            raise TypeError(f"memory needs a Sam2Session of this tool, got {type(session).__name__}")
        attended = self.attended(k, direction)
        with self._lock:
            k0, seed = self.seed
            output_dict = {
                "cond_frame_outputs": {k0: self._output(seed)},
                "non_cond_frame_outputs": {j: self._output(e) for j, e in self.banks[direction].items()},
            }
        return Sam2MemorySession(self, k, direction, session, output_dict, attended)

    def attended(self, k: int, direction: int) -> list[int]:
        """Slices whose spatial memories a decode on slice k of ``direction`` reads now: the seed, then the bank
        slices among the last ``num_maskmem - 1`` (nearest last), as ``_prepare_memory_conditioned_features``
        selects them (object pointers reach further back, up to ``max_obj_ptrs_in_encoder - 1`` slices)."""
        model = self.tool.model
        stride = max(1, int(model.memory_temporal_stride_for_eval))
        with self._lock:
            if self.seed is None:
                return []
            bank = self.banks[direction]
            out = [self.seed[0]]
            for t_pos in range(1, model.num_maskmem):
                t_rel = model.num_maskmem - t_pos
                if t_rel == 1:
                    j = k - direction
                elif direction > 0:
                    j = ((k - 2) // stride) * stride - (t_rel - 2) * stride
                else:
                    j = -(-(k + 2) // stride) * stride + (t_rel - 2) * stride
                if j in bank:
                    out.append(j)
        return out

    # -- helpers -------------------------------------------------------------------------------------------
    def _output(self, e: _Remembered) -> dict[str, Any]:
        return {"maskmem_features": e.features, "maskmem_pos_enc": self._maskmem_pos, "obj_ptr": e.obj_ptr}

    def _check_index(self, k: int) -> int:
        k = int(k)
        if not 0 <= k < self.num_slices:
            raise ValueError(f"slice {k} is outside the volume (K = {self.num_slices})")
        return k

    def _check_side(self, k: int, direction: int) -> None:
        if direction not in (+1, -1):
            raise ValueError(f"direction must be +1 or -1 (0 = the seed), got {direction!r}")
        if self.seed is None:
            raise RuntimeError("remember the seed slice (direction 0) before propagating")
        if (k - self.seed[0]) * direction <= 0:
            raise ValueError(f"slice {k} is not on the {direction:+d} side of the seed slice {self.seed[0]}")

    def position_encoding(self, h: int, w: int):
        """(1, 256, h, w): the backbone's sine position encoding of an h x w map, as the FPN neck computes it
        (it depends on the shape only, so sessions need not keep it)."""
        import torch

        with self._lock:
            pe = self._pos_cache.get((h, w))
            if pe is None:
                neck = self.tool.model.image_encoder.neck
                with torch.inference_mode():
                    probe = torch.zeros(1, neck.d_model, h, w, device=self.tool.device)
                    pe = neck.position_encoding(probe).to(probe.dtype)
                self._pos_cache[(h, w)] = pe
        return pe


class Sam2MemorySession(ToolSession):
    """A propagated slice's session whose decodes read the volume's memory (see the module docstring).

    Not cached (``nbytes`` 0): it wraps the cached ``Sam2Session`` and never changes it. The memory-conditioned
    pixel features are computed on the first ``predict`` (its ``decoder_ms`` includes them; ``memory_ms`` says
    how much) and reused by the slice's later decodes.

    Attributes:
        k: slice index; direction: +1 / -1.
        inner: the wrapped ``Sam2Session``.
        attended: slices whose spatial memories the decodes read (``Sam2VolumeMemory.attended``).
        memory_ms: milliseconds of memory attention (0 until the first decode).
    """

    def __init__(self, memory: Sam2VolumeMemory, k: int, direction: int, inner: Sam2Session,
                 output_dict: dict[str, Any], attended: list[int]) -> None:
        super().__init__(shape=tuple(inner.shape), encoder_ms=float(inner.encoder_ms), nbytes=0)
        self.memory = memory
        self.k, self.direction = int(k), int(direction)
        self.inner = inner
        self.attended = list(attended)
        self.memory_ms = 0.0
        self._output_dict = output_dict
        self._features = None
        self._lock = threading.Lock()

    def conditioned_features(self):
        """(1, 256, h, w) memory-conditioned pixel features of the slice (computed once)."""
        import torch

        with self._lock:
            if self._features is None:
                t0 = time.perf_counter()
                mem, model = self.memory, self.memory.tool.model
                pix = self.inner.vision_features()
                h, w = pix.shape[-2:]
                with torch.inference_mode():
                    self._features = model._prepare_memory_conditioned_features(
                        frame_idx=self.k, is_init_cond_frame=False,
                        current_vision_feats=[pix.flatten(2).permute(2, 0, 1)],
                        current_vision_pos_embeds=[mem.position_encoding(h, w).flatten(2).permute(2, 0, 1)],
                        feat_sizes=[(h, w)], output_dict=self._output_dict, num_frames=mem.num_slices,
                        track_in_reverse=self.direction < 0)
                self.memory_ms = (time.perf_counter() - t0) * 1e3
                self._output_dict = None  # read once; let the snapshot go
            return self._features

    def predict(
        self,
        box: Sequence[float] | None = None,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] = (),
        mask_logits: np.ndarray | None = None,
    ) -> SegOutput:
        """Decode one mask from the memory-conditioned features; arguments and result as ``Sam2Session.predict``
        (an answer the object-score head calls absent is an empty mask when ``gate_absent``)."""
        self.validate_prompts(box, points, labels)
        first = self._features is None
        feats = self.conditioned_features()
        out = decode(self.memory.tool, self.shape, feats, self.inner.high_res_features, box, points, labels,
                     mask_logits, gate_absent=self.memory.gate_absent)
        if first:
            out = dataclasses.replace(out, decoder_ms=out.decoder_ms + self.memory_ms)
        return out
