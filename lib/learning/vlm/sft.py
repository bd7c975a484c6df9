"""VLM supervised fine-tuning: expert trajectories -> multimodal chat data -> TRL ``SFTTrainer`` + PEFT LoRA.

Data (one conversation per episode, ``lib.agent.vlm_prompt.training_windows`` for longer ones):

- **LLaMA-Factory ShareGPT** (``<out>/<name>.json`` + ``dataset_info.json``): records
  ``{"system": SYSTEM_PROMPT, "messages": [{"role": "user", "content": "<image>..."}, {"role": "assistant",
  "content": "<tool_call>...</tool_call>"}, ...], "images": ["images/...png", ...]}``, image paths relative to
  ``<out>`` (LLaMA-Factory's ``media_dir``), one ``<image>`` per user message, in order.
- **Hugging Face ``datasets``** (``<out>/hf``, ``load_from_disk``): columns ``messages`` (HF multimodal chat, image
  placeholders ``{"type": "image"}``) and ``images`` (PNG-encoded), the form TRL's VLM collator takes.

Both are rendered by ``lib.agent.vlm_prompt`` and ``lib.agent.vlm_image`` exactly as inference renders a
decision, and each assistant message is ``lib.agent.grammar.encode`` of the expert's action, so parsing it back
on the slice gives the expert's pixel action exactly (for slices up to 1000 pixels a side; ``lib.agent.coords``).

Training: ``VLMSFTArguments`` (ours: model folder, data, LoRA) + TRL's ``SFTConfig`` (optimiser, batch,
precision, ``assistant_only_loss``), both filled from ``configs/vlm_sft.yaml`` by ``trl.TrlParser``; multi-GPU
and multi-node through ``accelerate launch`` (``configs/accelerate/``), no distributed code here.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lib.agent.actions import Stop, from_dict
from lib.agent.grammar import encode
from lib.agent.trajectories import Trajectory, rle_decode
from lib.agent.vlm_image import MODEL_IMAGE_SIZE, OVERLAY_ALPHA, model_image
from lib.agent.vlm_prompt import (
    HISTORY_TURNS,
    SHAREGPT_IMAGE_TOKEN,
    SYSTEM_PROMPT,
    Turn,
    chat_messages,
    sharegpt_messages,
    training_windows,
    user_text,
)

#: JSON schema of one LLaMA-Factory ShareGPT multimodal record as written here
SHAREGPT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["messages", "images"],
    "properties": {
        "system": {"type": "string"},
        "messages": {
            "type": "array",
            "minItems": 2,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {"role": {"enum": ["user", "assistant"]}, "content": {"type": "string"}},
                "additionalProperties": False,
            },
        },
        "images": {"type": "array", "items": {"type": "string"}},
    },
}


# -- episodes -> conversations ---------------------------------------------------------------------------
class EpisodeExportError(ValueError):
    """A trajectory that cannot become SFT data; ``kind`` is a short reason counted in the export summary."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def episode_turns(
    traj: Trajectory,
    image: np.ndarray,
    image_size: int = MODEL_IMAGE_SIZE,
    alpha: float = OVERLAY_ALPHA,
) -> list[Turn]:
    """The decisions of a trajectory as the VLM would have seen and answered them.

    Args:
        traj: an episode (usually the expert's); every issued action becomes one turn, Stop included.
        image: the slice the episode ran on, as the environment got it ((H, W) float in [0, 1] or RGB uint8).
        image_size / alpha: model image side and overlay opacity (``lib.agent.vlm_image``).

    Returns:
        One completed ``Turn`` per action: turn 0 shows the plain image, turn k the mask after the k-th
        executed action, and the response is the action's tool-call text.

    Raises:
        EpisodeExportError: the trajectory holds an invalid action (SFT imitates executable actions only),
            its shape does not match ``image``, or its masks do not match its actions.
    """
    shape = tuple(int(s) for s in np.asarray(image).shape[:2])
    if tuple(traj.shape) != shape:
        raise EpisodeExportError("shape_mismatch", f"trajectory {traj.key} is on a {tuple(traj.shape)} slice "
                                 f"but the image is {shape}")
    masks = [rle_decode(r) for r in traj.masks]
    turns: list[Turn] = []
    executed = 0
    for record in traj.actions:
        if record.get("invalid"):
            raise EpisodeExportError("invalid_action", f"trajectory {traj.key} has an invalid action "
                                     f"({record['invalid']}); SFT imitates executable actions only")
        action = from_dict(record)
        mask = masks[executed - 1] if executed else None
        turns.append(Turn(model_image(image, mask, image_size, alpha), user_text(traj.label, len(turns)),
                          encode(action, shape)))
        if not isinstance(action, Stop):
            executed += 1
    if executed != len(masks):
        raise EpisodeExportError("mask_count", f"trajectory {traj.key} has {executed} executed actions but "
                                 f"{len(masks)} masks")
    return turns


def episode_slug(traj: Trajectory) -> str:
    """A file-name-safe id of an episode: ``<case>_s<slice>_<label>``."""
    raw = f"{traj.case_id}_s{'x' if traj.slice_index is None else traj.slice_index}_a{traj.axis}_{traj.label}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw)


# -- writers -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportConfig:
    """What ``export_sft`` writes.

    Attributes:
        name: dataset name (the ShareGPT file ``<name>.json`` and its ``dataset_info.json`` key).
        image_size / overlay_alpha / history_turns: the inference settings the data must match.
        write_hf: also write the Hugging Face dataset for TRL under ``<out>/hf``.
    """

    name: str = "medsam_agent_sft"
    image_size: int = MODEL_IMAGE_SIZE
    overlay_alpha: float = OVERLAY_ALPHA
    history_turns: int = HISTORY_TURNS
    write_hf: bool = True

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"ExportConfig.name must be a plain file name (letters, digits, _ . -), got {self.name!r}")
        if self.history_turns < 0:
            raise ValueError(f"ExportConfig.history_turns must be >= 0, got {self.history_turns}")


@dataclass
class ExportSummary:
    """Counts of an export and where its files are."""

    episodes: int = 0
    conversations: int = 0
    images: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    sharegpt: Path | None = None
    dataset_info: Path | None = None
    hf_dataset: Path | None = None


def export_sft(
    episodes: Iterable[tuple[Trajectory, np.ndarray]],
    out_dir: str | Path,
    config: ExportConfig | None = None,
) -> ExportSummary:
    """Write trajectories as LLaMA-Factory ShareGPT data (+ a TRL ``datasets`` dataset).

    Args:
        episodes: (trajectory, slice image) pairs; the image as the environment got it.
        out_dir: output folder; ``images/`` (PNG), ``<name>.json``, ``dataset_info.json`` and ``hf/``.
        config: ``ExportConfig``.
    """
    config = config or ExportConfig()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    summary = ExportSummary()
    records: list[dict[str, Any]] = []
    hf_rows: list[dict[str, Any]] = []
    for traj, image in episodes:
        try:
            turns = episode_turns(traj, image, config.image_size, config.overlay_alpha)
        except EpisodeExportError as err:
            summary.skipped[err.kind] = summary.skipped.get(err.kind, 0) + 1
            continue
        summary.episodes += 1
        slug = episode_slug(traj)
        paths = []
        for k, t in enumerate(turns):
            rel = f"images/{slug}_t{k}.png"
            t.image.save(out / rel)
            paths.append(rel)
        summary.images += len(paths)
        start = 0
        for conv in training_windows(turns, config.history_turns):
            # the window's images are the turns' own, in order: locate it in the episode by identity
            start = next(i for i in range(start, len(turns)) if turns[i] is conv[0])
            conv_paths = paths[start : start + len(conv)]
            records.append({"system": SYSTEM_PROMPT, "messages": sharegpt_messages(conv), "images": conv_paths,
                            "meta": {"key": list(traj.key), "axis": traj.axis, "shape": list(traj.shape)}})
            if config.write_hf:
                hf_rows.append({"messages": chat_messages(conv, history=len(conv), image_payload=False),
                                "images": [_png(t.image) for t in conv]})
            summary.conversations += 1
    summary.sharegpt = out / f"{config.name}.json"
    summary.sharegpt.write_text(json.dumps(records, indent=1), encoding="utf-8")
    summary.dataset_info = out / "dataset_info.json"
    summary.dataset_info.write_text(json.dumps(dataset_info(config.name), indent=2), encoding="utf-8")
    if config.write_hf:
        summary.hf_dataset = out / "hf"
        to_hf_dataset(hf_rows).save_to_disk(str(summary.hf_dataset))
    return summary


def dataset_info(name: str) -> dict[str, Any]:
    """LLaMA-Factory ``dataset_info.json`` entry for the ShareGPT file ``<name>.json``."""
    return {
        name: {
            "file_name": f"{name}.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "system": "system", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
    }


def _png(image: Image.Image) -> dict[str, Any]:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def to_hf_dataset(rows: Sequence[dict[str, Any]]):
    """``datasets.Dataset`` with ``messages`` (chat, image placeholders) and ``images`` (PNG) columns."""
    import datasets

    text = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    features = datasets.Features(
        {
            "messages": [{"role": datasets.Value("string"), "content": [text]}],
            "images": datasets.Sequence(datasets.Image()),
        }
    )
    return datasets.Dataset.from_list(list(rows), features=features)


def validate_sharegpt(records: Sequence[dict[str, Any]], root: str | Path | None = None) -> None:
    """Raise ValueError naming the record and problem unless every record is valid LLaMA-Factory ShareGPT.

    Checks the JSON schema, that roles alternate user/assistant starting with user and ending with assistant,
    that the ``<image>`` placeholders equal the images in number, and (with ``root``) that every image exists.
    """
    import jsonschema

    for i, rec in enumerate(records):
        try:
            jsonschema.validate(rec, SHAREGPT_SCHEMA)
        except jsonschema.ValidationError as err:
            raise ValueError(f"record {i}: {err.message}") from None
        roles = [m["role"] for m in rec["messages"]]
        if roles != ["user", "assistant"] * (len(roles) // 2) or len(roles) % 2:
            raise ValueError(f"record {i}: roles must alternate user, assistant, ... and end with assistant: {roles}")
        n_tokens = sum(m["content"].count(SHAREGPT_IMAGE_TOKEN) for m in rec["messages"])
        if n_tokens != len(rec["images"]):
            n_img = len(rec["images"])
            raise ValueError(f"record {i}: {n_tokens} {SHAREGPT_IMAGE_TOKEN} placeholders but {n_img} images")
        if root is not None:
            missing = [p for p in rec["images"] if not (Path(root) / p).is_file()]
            if missing:
                raise ValueError(f"record {i}: missing image file(s) {missing[:3]} under {root}")


def iter_sharegpt_actions(record: dict[str, Any]) -> Iterator[str]:
    """The assistant texts of a ShareGPT record, in order (what a round-trip check parses back)."""
    for m in record["messages"]:
        if m["role"] == "assistant":
            yield m["content"]


# -- training -----------------------------------------------------------------------------------------------
@dataclass
class VLMSFTArguments:
    """Our side of an SFT run (TRL's ``SFTConfig`` holds the optimiser, batch and precision settings).

    Attributes:
        model_path: local folder of the base checkpoint (e.g. Qwen3-VL-8B-Instruct or the released agent).
        dataset_path: ``<out>/hf`` written by ``scripts/export_sft.py`` (``datasets.load_from_disk``).
        eval_fraction: share of conversations held out for evaluation (0 = none).
        use_lora: train LoRA adapters (True) or every language-model weight (False).
        lora_r / lora_alpha / lora_dropout: LoRA rank, scale and dropout. r=16, alpha=32: the common 2x ratio;
            IBISAgent used r=8 for the same size of model and task.
        lora_target_modules: module name suffixes adapted. The defaults are the language model's attention
            and MLP projections only; the vision tower (``qkv``, ``proj``, ``linear_fc*``) stays frozen, since
            a grounding model's visual features already work at 512² and the task changes only the answers.
        dtype: weights dtype for loading ("bfloat16" on GPUs, "float32" on CPU).
        attn_implementation: transformers attention backend.
        split_seed: seed of the train/eval split.
        save_merged: after training, also write the LoRA-merged model + processor to ``<output_dir>/merged``,
            a plain checkpoint folder that ``VLMPolicy.from_pretrained`` and the GRPO recipe load.
    """

    model_path: str = ""
    dataset_path: str = ""
    eval_fraction: float = 0.0
    use_lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    dtype: str = "bfloat16"
    attn_implementation: str = "sdpa"
    split_seed: int = 0
    save_merged: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.lora_r < 1 or self.lora_alpha < 1:
            raise ValueError(f"lora_r and lora_alpha must be >= 1, got {self.lora_r}, {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.use_lora and not self.lora_target_modules:
            raise ValueError("use_lora needs lora_target_modules (module name suffixes such as q_proj)")


def lora_config(args: VLMSFTArguments):
    """PEFT ``LoraConfig`` of the language model's projections (see ``VLMSFTArguments``)."""
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        # anchored on the language model so same-named modules elsewhere (none in Qwen3-VL today) stay frozen
        target_modules=rf".*language_model.*\.({'|'.join(map(re.escape, args.lora_target_modules))})$",
        task_type="CAUSAL_LM",
    )


def load_for_training(args: VLMSFTArguments):
    """(model, processor) from ``args.model_path`` (local files only), ready for a trainer."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from lib.agent.policies.vlm import check_checkpoint_dir

    path = check_checkpoint_dir(args.model_path)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=getattr(torch, args.dtype), attn_implementation=args.attn_implementation, local_files_only=True
    )
    return model, processor


def load_sft_dataset(args: VLMSFTArguments):
    """(train, eval or None) from ``args.dataset_path``."""
    import datasets

    ds = datasets.load_from_disk(args.dataset_path)
    if args.eval_fraction <= 0:
        return ds, None
    split = ds.train_test_split(test_size=args.eval_fraction, seed=args.split_seed)
    return split["train"], split["test"]


def build_sft_trainer(args: VLMSFTArguments, sft_config, model=None, processor=None, train_dataset=None,
                      eval_dataset=None):
    """A TRL ``SFTTrainer`` for the exported conversations; model/processor/data default to ``args``'s paths.

    ``sft_config.assistant_only_loss`` (default True in ``configs/vlm_sft.yaml``) trains only the tool calls;
    TRL swaps in its training chat template for Qwen2.5-VL / Qwen3-VL (others need ``{% generation %}``
    markers in their template, or ``assistant_only_loss: false``).
    """
    from trl import SFTTrainer

    if model is None or processor is None:
        model, processor = load_for_training(args)
    if train_dataset is None:
        train_dataset, eval_dataset = load_sft_dataset(args)
    return SFTTrainer(
        model=model,
        args=sft_config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        peft_config=lora_config(args) if args.use_lora else None,
    )


def save_merged(trainer, processor, out_dir: str | Path) -> Path | None:
    """Write the trained model with LoRA merged (or the full model) + processor to ``out_dir``; main process only.

    Returns the folder on the main process, None elsewhere.
    """
    if not trainer.accelerator.is_main_process:
        return None
    out = Path(out_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
