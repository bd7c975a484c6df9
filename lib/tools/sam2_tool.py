"""SAM 2.1 and MedSAM2 backends through the PyPI ``sam2`` package (Meta's SAM 2 code, 1.1.0).

One class, ``Sam2Tool``, serves two bundles:

- ``sam2``: SAM 2.1, any Hydra config shipped in the ``sam2`` package (``configs/sam2.1/*.yaml``) or
  an absolute yaml path, plus the matching checkpoint (``sam2.1_hiera_tiny.pt`` by default).
- ``medsam2``: MedSAM2 = the SAM 2.1 hiera-tiny architecture (``configs/sam2.1/sam2.1_hiera_t.yaml``)
  run at 512² input, as MedSAM2's own ``sam2.1_hiera_t512.yaml`` does, with ``MedSAM2_latest.pt``.

What this reproduces from ``sam2.sam2_image_predictor.SAM2ImagePredictor`` (1.1.0), step for step:
image -> uint8 RGB -> ``ToTensor`` (/255) -> bilinear antialiased stretch to ``image_size``² ->
ImageNet mean/std -> ``forward_image`` -> ``_prepare_backbone_features`` -> ``+ no_mem_embed``;
prompts (x, y) pixels -> ``/ (W, H) * image_size``; box corners go first as points with labels 2, 3;
decoder logits -> bilinear to (H, W) -> ``> 0``; low-res logits clamped to [-32, 32].
What differs from it, and why:

- The embedding lives in a ``Sam2Session`` instead of in the predictor, so one loaded model serves many
  cached slices and threads at once (the predictor keeps one image as mutable state).
- Backbone feature sizes are read from the backbone instead of the predictor's hard-coded
  (256, 128, 64) list, which silently reshapes wrongly at any ``image_size`` other than 1024.
- The config is read with OmegaConf and instantiated with ``hydra.utils.instantiate`` instead of
  ``hydra.compose``: ``compose`` depends on the process-wide GlobalHydra search path, which
  ``import sam2`` sets and MONAI Label's own SAM2 task re-initialises elsewhere.
- Checkpoints are never downloaded; a missing one raises ``MissingCheckpointError``.
- The image encoder (Hiera trunk + FPN neck + the decoder's ``conv_s0``/``conv_s1`` projections + ``no_mem_embed``,
  ``_Sam2ImageEncoder``) runs in the runtime ``encoder_runtime`` selects (``lib.tools.encoder_runtime``: torch,
  or its ONNX Runtime / OpenVINO export cached on disk); preprocessing, prompt encoder and mask decoder stay
  in torch. Parity measured on random hiera-tiny weights: features within ~4e-6 of torch
  (``tests/tools/test_sam2_tool.py``, ``docs/results/encoder_runtime.md``).

Volumes: ``Sam2Tool.volume_memory(K)`` gives a volume episode SAM 2's video memory
(``lib.tools.sam2_memory``): propagated slices decode from memory-conditioned features instead of the
image path's ``+ no_mem_embed``. It reads the sessions' feature maps only (``Sam2Session.vision_features``,
``high_res_features``), so it serves every encoder runtime alike and leaves the image path unchanged; the one
model flag it adds (``binarize_mask_from_pts_for_mem_enc``, as ``build_sam2_video_predictor``) is read only
by the memory encoder.

Low-res logits: SAM 2 decodes at ``image_size / 4`` per side (256 at 1024, 128 at 512). ``SegOutput``
promises (1, 256, 256), so logits from a model whose low-res grid is not 256 are resampled to 256 on
the way out and back to the model's grid on the way in (see ``_to_contract_logits``).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lib.data.io import sha256_file
from lib.tools.base import BOX, MASK_INPUT, POINT, MissingCheckpointError, SegOutput, Tool, ToolSession
from lib.tools.encoder_runtime import EncoderRunner

logger = logging.getLogger(__name__)

#: side of the low-res logits exchanged through ``SegOutput.logits`` / ``mask_logits``
CONTRACT_LOGITS = 256

#: ImageNet statistics, as in ``sam2.utils.transforms.SAM2Transforms``
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)

#: the decoder post-processing ``sam2.build_sam.build_sam2`` adds by default (``apply_postprocessing``);
#: it only acts when ``multimask_output=False``: fall back to the best multimask output when the single
#: mask is unstable. Kept so results match ``build_sam2`` + ``SAM2ImagePredictor``.
_POSTPROCESSING = {
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
}

#: what ``build_sam2_video_predictor`` also sets (its ``apply_postprocessing``); only the memory encoder reads it
#: (``lib.tools.sam2_memory``: a remembered slice's mask is binarised before it is encoded), never the image path
_VIDEO_POSTPROCESSING = {"model.binarize_mask_from_pts_for_mem_enc": True}

#: low-res logits of a "no object" answer (``sam2.modeling.sam2_base.NO_OBJ_SCORE``)
NO_OBJ_SCORE = -1024.0

#: where each known checkpoint comes from (shown in MissingCheckpointError; never fetched)
_SOURCES = {
    "MedSAM2_latest.pt": "https://huggingface.co/wanglab/MedSAM2 (file MedSAM2_latest.pt)",
    "sam2.1_hiera_tiny.pt": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt",
    "sam2.1_hiera_small.pt": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_small.pt",
    "sam2.1_hiera_base_plus.pt": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_base_plus.pt",
    "sam2.1_hiera_large.pt": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt",
}


def resolve_config(config: str | Path) -> Path:
    """Path of a SAM 2 model yaml.

    Args:
        config: an existing yaml path (absolute, or relative to the working directory), or a config
            name inside the installed ``sam2`` package such as ``configs/sam2.1/sam2.1_hiera_t.yaml``
            (the ``.yaml`` suffix may be left out, as with Hydra).

    Raises:
        FileNotFoundError: neither exists; the message lists the configs the package ships.
    """
    path = Path(config).expanduser()
    if path.is_file():
        return path.resolve()
    import sam2  # noqa: F401  (only to locate the package; importing it initialises Hydra globally)

    pkg = Path(sam2.__file__).resolve().parent
    name = str(config).lstrip("/")
    for candidate in (pkg / name, pkg / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = sorted(str(p.relative_to(pkg)) for p in (pkg / "configs").rglob("*.yaml"))
    raise FileNotFoundError(
        f"SAM 2 config {str(config)!r} is neither a yaml file nor a config inside the sam2 package ({pkg}). "
        f"Pass an absolute yaml path or one of: {', '.join(shipped)}"
    )



def _pick_device(device: str) -> Any:
    """torch.device for ``device``; a CUDA request without CUDA falls back to CPU with a warning."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            f"device {device!r} requested but CUDA is not available; running SAM 2 on cpu instead",
            RuntimeWarning,
            stacklevel=3,
        )
        dev = torch.device("cpu")
    return dev


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """The slice as the (H, W, 3) uint8 RGB array SAM 2 was trained on.

    Args:
        image: (H, W) float in [0, 1] (already windowed; replicated to three channels after
            ``round(255 * v)``), (H, W) uint8 grey, or (H, W, 3) uint8 RGB (returned as is).
            Row-major, ``image[y, x]``.

    Raises:
        ValueError: another shape or dtype, non-finite values, or floats outside [0, 1].
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.ndim == 2 and image.dtype == np.uint8:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 2 and np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ValueError("image has NaN or infinite values; window it to [0, 1] first (lib.data.intensity)")
        lo, hi = float(image.min()), float(image.max())
        # a little tolerance for float round-off of an upstream [0, 1] rescale
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(
                f"float image must be windowed to [0, 1] but spans [{lo:.4g}, {hi:.4g}]; "
                "apply the intensity window first (lib.data.intensity)"
            )
        # quantise to 8 bits like the reference pipeline (cv2/PIL uint8 RGB into set_image)
        grey = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    raise ValueError(
        f"image must be (H, W) float32 in [0, 1] or (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}"
    )


def _Sam2ImageEncoder(model):  # noqa: N802 - builds a module (the class needs torch, imported lazily here)
    """SAM 2's single-image encoder as one ``torch.nn.Module``: (1, 3, S, S) normalised image -> the three feature
    maps ``Sam2Session`` keeps, ((1, 32, S/4, S/4), (1, 64, S/8, S/8), (1, 256, S/16, S/16)) float32."""
    import torch

    class Sam2ImageEncoder(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            backbone_out = self.model.forward_image(x)
            _, vision_feats, _, feat_sizes = self.model._prepare_backbone_features(backbone_out)
            if self.model.directly_add_no_mem_embed:
                # as SAM2ImagePredictor.set_image: training added it to the lowest-res map on single frames
                vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
            # (HW, 1, C) -> (1, C, H, W) with the sizes the backbone produced (not a hard-coded list)
            return tuple(f.permute(1, 2, 0).reshape(1, -1, *size).contiguous()
                         for f, size in zip(vision_feats, feat_sizes, strict=True))

    return Sam2ImageEncoder(model)


class Sam2Session(ToolSession):
    """Cached SAM 2 image embedding of one slice; ``predict`` runs prompt encoder + mask decoder only.

    Holds no prompt state and never mutates the model, so one session may be used from several
    threads at once, and many sessions share one ``Sam2Tool``.

    Attributes:
        shape: (H, W) of the original slice, pixels.
        encoder_ms: wall time of preprocessing + image encoder, milliseconds.
        nbytes: bytes held by the cached feature maps.
    """

    def __init__(self, tool: Sam2Tool, shape: tuple[int, int], image_embed, high_res_feats, encoder_ms: float):
        """
        Args:
            tool: the tool whose model decodes.
            shape: (H, W) of the original slice.
            image_embed: (1, 256, S/16, S/16) float tensor, S = ``tool.image_size``.
            high_res_feats: [(1, 32, S/4, S/4), (1, 64, S/8, S/8)] tensors (already projected by the
                decoder's ``conv_s0`` / ``conv_s1``).
            encoder_ms: encoder wall time, milliseconds.
        """
        nbytes = int(sum(t.numel() * t.element_size() for t in (image_embed, *high_res_feats)))
        super().__init__(shape=(int(shape[0]), int(shape[1])), encoder_ms=float(encoder_ms), nbytes=nbytes)
        self._tool = tool
        self._image_embed = image_embed
        self._high_res_feats = list(high_res_feats)

    def predict(
        self,
        box: Sequence[float] | None = None,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] = (),
        mask_logits: np.ndarray | None = None,
    ) -> SegOutput:
        """Decode one mask.

        Args:
            box: (x0, y0, x1, y1) inclusive, pixels of the original slice, or None.
            points: N × (x, y) pixels of the original slice.
            labels: N ints, 1 positive / 0 negative.
            mask_logits: (1, 256, 256) (or (256, 256), (1, 1, 256, 256)) logits of an earlier
                ``SegOutput`` of this backend, or None.

        Returns:
            ``SegOutput`` with mask (H, W) bool (upsampled logits > 0), logits (1, 256, 256) float32
            (clamped to [-32, 32]), score = predicted IoU of the returned mask, decoder_ms.
            With ``multimask`` the decoder's three candidates are scored and the best one returned.

        Raises:
            ValueError: no prompt, a prompt off the slice, a bad label, or ill-shaped ``mask_logits``.
        """
        self.validate_prompts(box, points, labels)
        return decode(self._tool, self.shape, self._image_embed, self._high_res_feats, box, points, labels, mask_logits)

    def vision_features(self):
        """The lowest-resolution map as the backbone gave it, WITHOUT ``no_mem_embed``: (1, 256, S/16, S/16).

        What SAM 2's video path reads (memory attention and memory encoder); the decoder of this session reads
        ``vision_features() + no_mem_embed`` (the image predictor's single-frame path). Recovered by subtracting
        ``no_mem_embed`` again (exact up to one float rounding), so sessions stay as they are for every encoder
        runtime and cost no extra bytes.
        """
        import torch

        model = self._tool.model
        if not model.directly_add_no_mem_embed:
            return self._image_embed
        with torch.inference_mode():
            return self._image_embed - model.no_mem_embed.reshape(1, -1, 1, 1)

    @property
    def high_res_features(self) -> list:
        """[(1, 32, S/4, S/4), (1, 64, S/8, S/8)]: the decoder's projected high-resolution maps (read only)."""
        return list(self._high_res_feats)


def decode(tool: Sam2Tool, shape: tuple[int, int], image_embed, high_res_feats, box=None, points=(), labels=(),
           mask_logits=None, gate_absent: bool = False) -> SegOutput:
    """Prompt encoder + mask decoder on given features (``Sam2Session.predict`` without the prompt checks).

    Args:
        tool: the model and its frames.
        shape: (H, W) of the original slice.
        image_embed: (1, 256, S/16, S/16): the session's embedding (+ ``no_mem_embed``), or memory-conditioned
            pixel features (``lib.tools.sam2_memory``).
        high_res_feats: [(1, 32, S/4, S/4), (1, 64, S/8, S/8)].
        box, points, labels, mask_logits: as ``Sam2Session.predict`` (already validated).
        gate_absent: where the model has an object-score head (``pred_obj_scores``), an answer whose object score
            is <= 0 becomes the video predictor's "no object" logits (``NO_OBJ_SCORE``, so an empty mask), as
            ``SAM2Base._forward_sam_heads`` does; the image predictor ignores the head (False).
    """
    import torch
    import torch.nn.functional as F

    model = tool.model
    dev = tool.device
    h, w = shape
    mask_in = None if mask_logits is None else tool._from_contract_logits(mask_logits)
    t0 = time.perf_counter()
    with torch.inference_mode():
        # (x, y) pixels -> the model's square input frame, exactly as SAM2Transforms.transform_coords
        scale = torch.tensor([tool.image_size / w, tool.image_size / h], dtype=torch.float32, device=dev)
        coords, labs = [], []
        if box is not None:
            coords.append(torch.tensor(box, dtype=torch.float32, device=dev).reshape(2, 2))
            labs.append(torch.tensor([2, 3], dtype=torch.int32, device=dev))  # box corner labels
        if len(points):
            coords.append(torch.tensor(points, dtype=torch.float32, device=dev).reshape(-1, 2))
            labs.append(torch.tensor([int(v) for v in labels], dtype=torch.int32, device=dev))
        concat = (torch.cat(coords)[None] * scale, torch.cat(labs)[None])
        if mask_in is not None:
            mask_in = mask_in.to(dev)
        sparse, dense = model.sam_prompt_encoder(points=concat, boxes=None, masks=mask_in)
        low_res, iou, _, obj_score = model.sam_mask_decoder(
            image_embeddings=image_embed,
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=tool.multimask,
            repeat_image=False,
            high_res_features=high_res_feats,
        )
        best = int(torch.argmax(iou[0]))
        low = low_res[:, best : best + 1].float()  # (1, 1, S/4, S/4)
        if gate_absent and model.pred_obj_scores and float(obj_score.reshape(-1)[0]) <= 0.0:
            low = torch.full_like(low, NO_OBJ_SCORE)
        full = F.interpolate(low, (h, w), mode="bilinear", align_corners=False)
        mask = (full[0, 0] > 0.0).cpu().numpy()
        logits = tool._to_contract_logits(torch.clamp(low, -32.0, 32.0))
        score = float(iou[0, best])
    return SegOutput(mask=mask, logits=logits, score=score, decoder_ms=(time.perf_counter() - t0) * 1e3)


class Sam2Tool(Tool):
    """SAM 2.1 / MedSAM2 promptable segmenter (box, points, previous low-res logits).

    Attributes:
        name: registry name ("sam2" or "medsam2").
        capabilities: {box, point, mask_input}.
        weights: "<checkpoint file> (sha256 <hex>)" or "random (test only)".
        model: the ``sam2.modeling.sam2_base.SAM2Base`` in eval mode.
        device: torch.device the model runs on.
        image_size: side of the square model input, pixels.
        lowres_size: side of the model's own low-res logits (``image_size // 4``).
        multimask: decode three candidates and keep the highest predicted IoU.
        config_path: the yaml the model was built from.
        checkpoint: the checkpoint path (None with random weights).
    """

    capabilities = frozenset({BOX, POINT, MASK_INPUT})

    def __init__(
        self,
        name: str = "sam2",
        config: str = "configs/sam2.1/sam2.1_hiera_t.yaml",
        checkpoint: str | Path | None = None,
        device: str = "cpu",
        image_size: int | None = None,
        multimask: bool = True,
        allow_random_weights: bool = False,
        checkpoint_hint: str | None = None,
        encoder_runtime: str = "auto",
        block_export: bool = False,
    ) -> None:
        """
        Args:
            name: registry name; also names the MONAI Label conf key in error messages
                (``--conf <name>_checkpoint``).
            config: config name inside the ``sam2`` package (``configs/sam2.1/sam2.1_hiera_t.yaml``)
                or a yaml path. The yaml must be self-contained (no Hydra ``defaults`` list).
            checkpoint: ``.pt`` with ``{"model": state_dict}`` (the SAM 2 / MedSAM2 release format) or a
                bare state dict. Loaded strictly: every key must match the config.
            device: "cpu" (default) or "cuda[:i]"; CUDA without a GPU falls back to cpu with a warning.
            image_size: side of the square model input in pixels; None keeps the config's (1024 for the
                SAM 2.1 configs). MedSAM2 was trained at 512. Must be a multiple of 32 (the Hiera
                windows and FPN strides need it). No weight depends on it, so any checkpoint loads at
                any size; results are best at the size the checkpoint was trained at.
            multimask: True decodes three candidates and returns the one with the highest predicted
                IoU (the MedSAM-Agent inference behaviour); False decodes one mask (with SAM 2's
                stability fallback). Use the same value for data generation, training and inference.
            allow_random_weights: tests only. When the checkpoint is None or missing, build the model
                with random weights instead of raising ``MissingCheckpointError``.
            checkpoint_hint: extra sentence for ``MissingCheckpointError`` (e.g. how the app passes the
                path); None gives the default ``--conf <name>_checkpoint`` advice.
            encoder_runtime: "auto" | "torch" | "onnxruntime" | "openvino" for the image encoder
                (``lib.tools.encoder_runtime``; exported per checkpoint SHA-256 and ``image_size``, in the
                background on first use unless ``block_export``; any failure falls back to torch, logged).
            block_export: export in the first caller's thread instead of the background.

        Raises:
            MissingCheckpointError: the checkpoint is None or not a file (unless ``allow_random_weights``).
            FileNotFoundError: the config cannot be found.
            ValueError: bad ``image_size``, or a checkpoint whose keys do not fit the config.
        """
        import torch
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        self.name = name
        self.multimask = bool(multimask)
        self.config_path = resolve_config(config)
        ckpt = None if checkpoint in (None, "") else Path(checkpoint).expanduser()
        if ckpt is None or not ckpt.is_file():
            if not allow_random_weights:
                raise MissingCheckpointError(self._missing_message(ckpt, checkpoint_hint))
            if ckpt is not None:
                logger.warning("%s: checkpoint %s not found; random weights (allow_random_weights=True)", name, ckpt)
            ckpt = None
        self.checkpoint = ckpt
        self.device = _pick_device(device)

        cfg = OmegaConf.load(self.config_path)
        if "defaults" in cfg:
            raise ValueError(
                f"{self.config_path} has a Hydra 'defaults' list; give a self-contained model yaml "
                "(like the sam2 package's configs/sam2.1/*.yaml)"
            )
        if "model" not in cfg:
            raise ValueError(f"{self.config_path} has no top-level 'model' section; is it a SAM 2 model config?")
        overrides: dict[str, Any] = {**_POSTPROCESSING, **_VIDEO_POSTPROCESSING}
        if image_size is not None:
            image_size = int(image_size)
            if image_size < 64 or image_size % 32:
                raise ValueError(f"image_size must be a multiple of 32 and >= 64, got {image_size}")
            overrides["model.image_size"] = image_size
            # memory attention RoPE grid = backbone output grid; image-only use never runs it, but keep the
            # model consistent with MedSAM2's sam2.1_hiera_t512.yaml (feat_sizes [32, 32] at 512)
            grid = [image_size // 16, image_size // 16]
            for attn in ("self_attention", "cross_attention"):
                key = f"model.memory_attention.layer.{attn}.feat_sizes"
                if OmegaConf.select(cfg, key) is not None:
                    overrides[key] = grid
        for key, value in overrides.items():
            OmegaConf.update(cfg, key, value, force_add=True)
        OmegaConf.resolve(cfg)
        model = instantiate(cfg.model, _recursive_=True)
        sha = None  # random weights: the export is keyed by a hash of the state dict instead
        if ckpt is not None:
            self._load(model, ckpt)
            sha = sha256_file(ckpt)
            self.weights = f"{ckpt.name} (sha256 {sha})"
        else:
            self.weights = "random (test only)"
        self.model = model.to(self.device).eval()
        self.image_size = int(self.model.image_size)
        self.lowres_size = int(self.model.sam_prompt_encoder.mask_input_size[0])
        self._mean = torch.tensor(_MEAN, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(_STD, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self._lock = threading.Lock()
        self.encoder_calls = 0  # sessions encoded so far (for /info and tests)
        self.encoder = EncoderRunner(
            _Sam2ImageEncoder(self.model), name=f"sam2-{self.config_path.stem}", input_size=(self.image_size,) * 2,
            runtime=encoder_runtime, device=self.device, weights_sha256=sha, block=block_export)

    def prepare_encoder(self) -> None:
        """Load the exported image encoder, or start exporting it (see ``block_export``); idempotent."""
        self.encoder.prepare()

    def encoder_info(self) -> dict:
        """Which runtime the image encoder uses now (``EncoderRunner.info``), for /info."""
        return self.encoder.info()

    # ------------------------------------------------------------------ loading

    def _missing_message(self, ckpt: Path | None, hint: str | None) -> str:
        fname = ckpt.name if ckpt is not None else "<checkpoint>.pt"
        where = str(ckpt) if ckpt is not None else "<bundle>/models/" + fname
        source = _SOURCES.get(fname, "the model's official release page")
        hint = hint or (
            f"or pass its path with `--conf {self.name}_checkpoint /path/to/{fname}` "
            f"(bundle override: checkpoint=/path/to/{fname})"
        )
        return (
            f"{self.name}: checkpoint {fname} not found at {where}. Put {fname} at {where}, {hint}. "
            f"Get it yourself from {source}; it is never downloaded automatically."
        )

    def _load(self, model, ckpt: Path) -> None:
        import torch

        try:
            obj = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated download or a pickled full model
            raise ValueError(f"cannot read checkpoint {ckpt} as a SAM 2 state dict: {e}") from e
        state = obj["model"] if isinstance(obj, dict) and "model" in obj else obj
        if not isinstance(state, dict):
            raise ValueError(f"checkpoint {ckpt} holds a {type(state).__name__}, expected a state dict")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {ckpt.name} does not fit config {self.config_path.name}: "
                f"{len(missing)} missing keys (e.g. {list(missing)[:3]}), "
                f"{len(unexpected)} unexpected keys (e.g. {list(unexpected)[:3]}). "
                "Pass the config of the same model size (hiera t/s/b+/l) as model_config."
            )
        logger.info("%s: loaded %s", self.name, ckpt)

    # ------------------------------------------------------------------ logits frame

    def _to_contract_logits(self, low):
        """(1, 1, L, L) model logits -> (1, 256, 256) float32 numpy.

        L = ``lowres_size``. When 256 is a multiple of L (L = 128 at image_size 512) pixels are
        repeated, so ``_from_contract_logits`` (block mean) gives back exactly the model's logits;
        otherwise bilinear resampling.
        """
        import torch.nn.functional as F

        n = CONTRACT_LOGITS
        lsz = low.shape[-1]
        if lsz != n:
            if n % lsz == 0:
                low = F.interpolate(low, scale_factor=n // lsz, mode="nearest")
            else:
                low = F.interpolate(low, (n, n), mode="bilinear", align_corners=False)
        return low[0].float().cpu().numpy()

    def _from_contract_logits(self, mask_logits: np.ndarray):
        """(1, 256, 256) logits -> (1, 1, L, L) float tensor in the model's low-res frame."""
        import torch
        import torch.nn.functional as F

        arr = np.asarray(mask_logits, dtype=np.float32)
        n = CONTRACT_LOGITS
        if arr.size != n * n or arr.shape[-2:] != (n, n):
            raise ValueError(
                f"mask_logits must be the (1, {n}, {n}) logits of an earlier SegOutput, got shape {arr.shape}"
            )
        if not np.isfinite(arr).all():
            raise ValueError("mask_logits has NaN or infinite values")
        t = torch.from_numpy(arr.reshape(1, 1, n, n).copy())
        lsz = self.lowres_size
        if lsz != n:
            if n % lsz == 0:
                t = F.avg_pool2d(t, kernel_size=n // lsz)
            else:
                t = F.interpolate(t, (lsz, lsz), mode="bilinear", align_corners=False, antialias=lsz < n)
        return t

    # ------------------------------------------------------------------ encoding

    def start(self, image: np.ndarray) -> Sam2Session:
        """Encode one slice (image encoder once) and return its session.

        Args:
            image: (H, W) float32 in [0, 1] (already windowed) or (H, W, 3) uint8 RGB; ``image[y, x]``.

        Returns:
            ``Sam2Session`` holding the embedding on ``self.device``.
        """
        h, w = np.shape(image)[:2]
        t0 = time.perf_counter()
        feats = self.encoder(self.preprocess(image))
        ms = (time.perf_counter() - t0) * 1e3
        with self._lock:
            self.encoder_calls += 1
        return Sam2Session(self, (h, w), feats[-1], feats[:-1], ms)

    def preprocess(self, image: np.ndarray):
        """The slice as the model's input: (1, 3, S, S) float32, ImageNet-normalised, on ``self.device``.

        Args:
            image: as ``start``.
        """
        import torch
        import torch.nn.functional as F

        rgb = to_rgb_uint8(image)
        with torch.inference_mode():
            x = torch.tensor(rgb, device=self.device).permute(2, 0, 1).float().div_(255.0)
            # the stretch SAM2Transforms does with torchvision Resize (bilinear, antialias=True)
            x = F.interpolate(
                x[None], (self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
            return (x - self._mean) / self._std

    # ------------------------------------------------------------------ volumes

    def volume_memory(self, num_slices: int):
        """A fresh memory for one volume episode (``lib.tools.sam2_memory.Sam2VolumeMemory``).

        Args:
            num_slices: K, slices of the volume along the propagation axis (the object pointers' temporal
                encoding is scaled by it, as the video predictor's by the number of frames).
        """
        from lib.tools.sam2_memory import Sam2VolumeMemory

        return Sam2VolumeMemory(self, num_slices)
