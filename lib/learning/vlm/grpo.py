"""Multi-turn GRPO of the VLM policy with TRL's ``GRPOTrainer``, played in OUR environment with OUR reward.

One GRPO sample = one whole episode in ``SegmentationEnv`` (one tool session per episode, shared by all its
actions; the G rollouts of a start state share the encoded slice, never the prompt state):

- prompt = system + first user turn (plain 512² image), rendered by ``lib.agent.vlm_prompt`` exactly as at
  inference;
- completion = the model's tool calls, each followed by the environment's answer as a new user turn with the
  mask overlay (``lib.agent.vlm_image``), until Stop or the turn budget. The environment's tokens carry
  ``tool_mask = 0`` and are not trained; the model's tokens are kept exactly as sampled (never re-tokenised
  from decoded text, which misaligned log-probs in the reference);
- reward = registered functions of the finished episode (``REWARD_FUNCS``): ``episode`` = the environment's
  episode reward (``lib.agent.rewards``, the reference's R by default) and ``invalid`` = minus the number of
  invalid actions; weights in ``GRPOConfig.reward_weights``.

Why a ``GRPOTrainer`` subclass rather than ``rollout_func`` / ``environment_factory`` (TRL 1.16, both
experimental): ``environment_factory`` renders tools through the chat template's own tool preamble and returns
results as ``tool`` messages, i.e. a different prompt from the one the model is run with; ``rollout_func``
returns token ids only, and TRL then rebuilds the vision inputs from the dataset's first image, so the overlay
images inside a multi-turn completion would have no pixels. ``EpisodeGRPOTrainer`` therefore overrides
``_generate`` (same return contract as TRL's) to play episodes, generating each turn with TRL's own
``_generate_single_turn`` (model unwrapping for DeepSpeed/FSDP, sampling settings), and hands every episode's
images to TRL's multi-image forward path, which TRL enables for VLM tool use (``self.tools`` non-empty and
per-sample tool images). The ``use_vllm`` generation path is not wired for these episodes.

Loss, advantages (group-normalised, ``scale_rewards="group"``), clipping, KL and multi-GPU / multi-node
(``accelerate launch``) are TRL's.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lib.agent.env import EnvConfig, SegmentationEnv
from lib.agent.settings import DEFAULT_LOCAL_RADIUS, DEFAULT_MAX_TURNS, EpisodeSettings
from lib.agent.trajectories import rle_decode, rle_encode
from lib.agent.vlm_image import MODEL_IMAGE_SIZE, OVERLAY_ALPHA, model_image
from lib.agent.vlm_prompt import SYSTEM_PROMPT, Turn, chat_messages, user_text
from lib.data.intensity import DEFAULT_CT_WINDOW
from lib.learning.vlm.sft import VLMSFTArguments
from lib.tools.base import Tool


# -- rewards (TRL contract: f(prompts=, completions=, **columns) -> list[float | None]) --------------------
def episode_reward(completions: list, episode_reward: list[float | None], **kwargs) -> list[float | None]:
    """The environment's episode reward of each rollout (``lib.agent.rewards.episode_reward``; None without gt)."""
    return [None if r is None else float(r) for r in episode_reward]


def invalid_actions(completions: list, n_invalid: list[int], **kwargs) -> list[float]:
    """Minus the number of invalid actions (unparseable text, off-image, unsupported) of each rollout."""
    return [-float(n) for n in n_invalid]


#: reward functions by name, as ``VLMGRPOArguments.rewards`` names them
REWARD_FUNCS: dict[str, Callable[..., list[float | None]]] = {"episode": episode_reward, "invalid": invalid_actions}


# -- RL rows ------------------------------------------------------------------------------------------------
def encode_array(arr: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes (exact dtype and shape, no image quantisation)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def decode_array(data: bytes) -> np.ndarray:
    """Inverse of ``encode_array``."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def first_prompt(target: str) -> list[dict[str, str]]:
    """The text of an episode's first prompt (system + first user turn, image not included), for TRL's
    ``prompt`` column and logs; the rollout renders the real prompt with its image through ``vlm_prompt``."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_text(target, 0)}]


def rl_row(image: np.ndarray, gt: np.ndarray, target: str, case_id: str = "", slice_index: int | None = None,
           axis: int = 0) -> dict[str, Any]:
    """One start state of RL: the slice as the environment takes it, its ground truth and the target name.

    Args:
        image: (H, W) float32 in [0, 1] (windowed) or (H, W, 3) uint8 RGB.
        gt: (H, W) bool ground truth of ``target``.
    """
    gt = np.asarray(gt)
    if gt.dtype != bool or gt.shape != np.asarray(image).shape[:2]:
        raise ValueError(f"gt must be an (H, W) bool mask on the image grid, got {gt.dtype} {gt.shape}")
    return {
        "prompt": first_prompt(target),
        "target": str(target),
        "image_npy": encode_array(image),
        "gt_rle": json.dumps(rle_encode(gt)),
        "case_id": str(case_id),
        "slice_index": -1 if slice_index is None else int(slice_index),
        "axis": int(axis),
    }


def rl_dataset(rows: Iterable[dict[str, Any]]):
    """``datasets.Dataset`` of ``rl_row`` dicts (save it with ``save_to_disk``)."""
    import datasets

    return datasets.Dataset.from_list(list(rows))


# -- configuration ------------------------------------------------------------------------------------------
@dataclass
class VLMGRPOArguments(VLMSFTArguments):
    """Our side of a GRPO run (TRL's ``GRPOConfig`` holds G, lr, clipping, batch and precision).

    Model and LoRA fields are those of ``VLMSFTArguments`` (``model_path`` is usually the SFT output);
    ``dataset_path`` is an RL-rows dataset (``rl_dataset(...).save_to_disk``, see ``scripts/train_vlm_grpo.py``).

    Attributes:
        backend: segmentation tool of the environment ("litemedsam", "sam2", "medsam2"; "fake" in tests).
        tool_weights: checkpoint of the tool (None = the bundle's default).
        tool_device: device of the tool ("cpu", "cuda", ...).
        prompting / local_radius / max_turns / ct_window: the episode settings (``EpisodeSettings``, flat here
            because TRL's parser takes flat fields); defaults = what the app serves. ``prompting`` None = the
            served mode of ``backend`` (the reference used "newest"; measured harmful for LiteMedSAM).
        invalid_penalty: per-step penalty of an invalid action inside the environment.
        image_size / overlay_alpha: the model image, as at inference.
        rewards: names in ``REWARD_FUNCS``, weighted by ``GRPOConfig.reward_weights`` in the same order.
        source_dataset: MSD-style dataset folder to build the RL rows from when ``dataset_path`` does not exist
            yet (``scripts/train_vlm_grpo.py``); ``source_split`` / ``source_axis`` / ``source_min_area`` /
            ``source_max_per_case`` select its (slice, label) targets as ``scripts/generate_trajectories.py`` does.
    """

    backend: str = "litemedsam"
    tool_weights: str | None = None
    tool_device: str = "cpu"
    prompting: str | None = None
    local_radius: float = DEFAULT_LOCAL_RADIUS
    max_turns: int = DEFAULT_MAX_TURNS
    ct_window: list[float] = field(default_factory=lambda: list(DEFAULT_CT_WINDOW))
    invalid_penalty: float = 0.1
    image_size: int = MODEL_IMAGE_SIZE
    overlay_alpha: float = OVERLAY_ALPHA
    rewards: list[str] = field(default_factory=lambda: ["episode", "invalid"])
    source_dataset: str | None = None
    source_split: str = "training"
    source_axis: int = 0
    source_min_area: int = 20
    source_max_per_case: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [r for r in self.rewards if r not in REWARD_FUNCS]
        if unknown or not self.rewards:
            raise ValueError(f"rewards must name functions of {sorted(REWARD_FUNCS)}, got {self.rewards}")
        self.episode  # noqa: B018  (EpisodeSettings validates the episode fields, naming the allowed values)

    @property
    def episode(self) -> EpisodeSettings:
        """The episode settings of this run, as the app's ``EpisodeSettings``."""
        prompting = {self.backend: self.prompting} if self.prompting else {}
        return EpisodeSettings(prompting=prompting, local_radius=self.local_radius, max_turns=self.max_turns,
                               ct_window=tuple(self.ct_window))

    def env_config(self) -> EnvConfig:
        return self.episode.env_config(self.backend, invalid_penalty=self.invalid_penalty)


# -- episodes -----------------------------------------------------------------------------------------------
@dataclass
class _Episode:
    """Token-level record of one rollout: prompt ids, then model tokens (mask 1) and env tokens (mask 0)."""

    env: SegmentationEnv
    image: np.ndarray
    target: str
    prompt_ids: list[int]
    pixel_values: list[Any]
    grids: list[Any]
    images: list[Any]
    completion_ids: list[int] = field(default_factory=list)
    tool_mask: list[int] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    done: bool = False

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.completion_ids


def _session_key(row: dict[str, Any]) -> str:
    return hashlib.sha1(row["image_npy"]).hexdigest()


try:  # TRL is optional for the rest of the project; this module is only imported to train
    from trl import GRPOTrainer as _GRPOTrainer
except ImportError:  # pragma: no cover - exercised only without trl installed
    _GRPOTrainer = object


def _episode_marker() -> None:
    """Marks the trainer as multi-turn with images (see ``EpisodeGRPOTrainer``); never called."""


class EpisodeGRPOTrainer(_GRPOTrainer):
    """``trl.GRPOTrainer`` whose completions are whole episodes of ``SegmentationEnv`` (module docstring).

    Args:
        tool: the segmentation tool, loaded once; every episode opens one session on it (shared by the G
            rollouts of the same slice, since a session holds only the image embedding).
        env_config: episode rules (turn budget, prompting, invalid penalty, reward weights).
        image_size / overlay_alpha: the model image.
        *args, **kwargs: ``GRPOTrainer``'s (model, reward_funcs, args, train_dataset, processing_class, ...).
    """

    def __init__(self, *args, tool: Tool, env_config: EnvConfig | None = None, image_size: int = MODEL_IMAGE_SIZE,
                 overlay_alpha: float = OVERLAY_ALPHA, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.use_vllm:
            raise ValueError("EpisodeGRPOTrainer generates episodes with transformers; set use_vllm: false")
        if not self._is_vlm:
            raise TypeError("EpisodeGRPOTrainer needs a vision-language processor as processing_class")
        self.tool = tool
        self.env_config = env_config or EnvConfig()
        self.image_size = image_size
        self.overlay_alpha = overlay_alpha
        # TRL builds the forward pass's vision inputs from every image of a sample (prompt and completion) only
        # on its VLM tool-use path, gated on `self.tools`; we own generation, so the marker is never called.
        self.tools = [_episode_marker]
        # a sampled vision placeholder would claim image features that do not exist (the next forward fails or
        # TRL drops every image of the batch); a policy never needs to write one, so it is never sampled
        vision = [self._image_pad_token_id, self._video_pad_token_id]
        for name in ("<|vision_start|>", "<|vision_end|>"):
            vision.append(self._tokenizer.convert_tokens_to_ids(name))
        suppress = sorted({int(t) for t in vision if t is not None and t != self._tokenizer.unk_token_id})
        self.generation_config.suppress_tokens = suppress
        self.generation_kwargs["suppress_tokens"] = suppress
        self._rows: list[dict[str, Any]] | None = None
        self._tail_text: str | None = None

    # TRL passes only prompts to `_generate`; the episode needs the whole row (image, gt, target)
    def _generate_and_score_completions(self, inputs):
        self._rows = inputs
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self._rows = None

    def _generate(self, prompts: list):
        rows = self._rows
        if rows is None or len(rows) != len(prompts):
            raise RuntimeError("EpisodeGRPOTrainer._generate is called by _generate_and_score_completions only")
        episodes = self._start_episodes(rows)
        while True:
            active = [e for e in episodes if not e.done]
            if not self._any_active(len(active)):
                break
            # keep ranks in lockstep: a rank whose episodes all ended still joins the generation collectives
            batch = active or [episodes[0]]
            completion_ids, _ = self._generate_single_turn(
                [e.ids for e in batch], None, self._vision_inputs(batch), 1, has_tool_images=True
            )
            if not active:
                continue
            for e, ids in zip(batch, completion_ids, strict=True):
                self._advance(e, list(ids))
        return self._results(episodes)

    def _any_active(self, n_local: int) -> bool:
        import torch

        n = torch.tensor([n_local], device=self.accelerator.device)
        return bool(self.accelerator.gather(n).sum().item() > 0)

    def _start_episodes(self, rows: Sequence[dict[str, Any]]) -> list[_Episode]:
        sessions: dict[str, Any] = {}
        episodes = []
        for row in rows:
            image = decode_array(row["image_npy"])
            key = _session_key(row)
            if key not in sessions:
                sessions[key] = self.tool.start(image)
            env = SegmentationEnv(self.tool, self.env_config)
            gt = rle_decode(json.loads(row["gt_rle"]))
            _, info = env.reset(options={"image": image, "gt": gt, "target": row["target"], "session": sessions[key]})
            first = model_image(image, None, self.image_size, self.overlay_alpha)
            messages = chat_messages([Turn(first, user_text(row["target"], 0))])
            enc = self.processing_class.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )
            episodes.append(_Episode(env=env, image=image, target=row["target"], info=info,
                                     prompt_ids=enc["input_ids"][0].tolist(), pixel_values=[enc["pixel_values"]],
                                     grids=[enc["image_grid_thw"]], images=[first]))
        return episodes

    def _vision_inputs(self, batch: Sequence[_Episode]) -> dict[str, Any]:
        import torch

        return {
            "pixel_values": torch.cat([p for e in batch for p in e.pixel_values]),
            "image_grid_thw": torch.cat([g for e in batch for g in e.grids]),
        }

    def _advance(self, e: _Episode, ids: list[int]) -> None:
        """Append the sampled tokens, step the env with their text, and append its answer if it goes on."""
        text = self._tokenizer.decode(ids, skip_special_tokens=True)
        e.completion_ids += ids
        e.tool_mask += [1] * len(ids)
        e.responses.append(text)
        _, _, terminated, truncated, e.info = e.env.step(text)
        if terminated or truncated:
            e.done = True
            return
        overlay = model_image(e.image, e.env.mask, self.image_size, self.overlay_alpha)
        env_text = self._turn_tail(e.target)
        if ids and ids[-1] in self.eos_token_ids:
            closing = self._tokenizer.convert_ids_to_tokens(ids[-1])
            if env_text.startswith(closing):
                env_text = env_text[len(closing) :]  # the model closed its own turn with the template's token
        enc = self.processing_class(text=[env_text], images=[overlay], return_tensors="pt", add_special_tokens=False)
        env_ids = enc["input_ids"][0].tolist()
        e.completion_ids += env_ids
        e.tool_mask += [0] * len(env_ids)
        e.pixel_values.append(enc["pixel_values"])
        e.grids.append(enc["image_grid_thw"])
        e.images.append(overlay)

    def _turn_tail(self, target: str) -> str:
        """Template text from the end of an assistant answer to the next assistant turn's start: closing of the
        answer, the follow-up user turn with its image placeholder, and the generation prompt."""
        if self._tail_text is None:
            sentinel = "\u2403ANSWER\u2403"
            turns = [Turn(None, user_text(target, 0), sentinel), Turn(None, user_text(target, 1))]
            text = self.processing_class.apply_chat_template(
                chat_messages(turns, image_payload=False), add_generation_prompt=True, tokenize=False
            )
            self._tail_text = text.split(sentinel, 1)[1]
        return self._tail_text

    def _results(self, episodes: Sequence[_Episode]):
        mode = "train" if self.model.training else "eval"
        infos = [e.info for e in episodes]
        for name, values in (
            ("episode/turns", [i.get("turn", 0) for i in infos]),
            ("episode/final_iou", [(i.get("ious") or [0.0])[-1] for i in infos]),
            ("episode/stopped", [float(i.get("stop_reason") == "stop") for i in infos]),
            ("episode/invalid", [i.get("n_invalid", 0) for i in infos]),
        ):
            self._metrics[mode][name].append(float(np.mean(values)))
        completions = [[{"role": "assistant", "content": "\n".join(e.responses)}] for e in episodes]
        extra = {
            "episode_reward": [i.get("episode_reward") for i in infos],
            "n_invalid": [int(i.get("n_invalid", 0)) for i in infos],
        }
        images = [list(e.images) for e in episodes]
        return (
            [e.prompt_ids for e in episodes],
            [e.completion_ids for e in episodes],
            [e.tool_mask for e in episodes],
            completions,
            None,  # sampling log-probs: only needed for vLLM importance sampling, which is not used here
            extra,
            images,
            images,  # "tool images": TRL only checks them for presence; pixels come from `images` in order
        )


def build_grpo_trainer(args: VLMGRPOArguments, grpo_config, tool: Tool | None = None, model=None, processor=None,
                       train_dataset=None) -> EpisodeGRPOTrainer:
    """An ``EpisodeGRPOTrainer`` from our arguments and TRL's ``GRPOConfig``; missing parts load from ``args``."""
    import datasets

    from lib.learning.vlm.sft import load_for_training, lora_config

    if tool is None:
        from lib.agent.rollout import load_backend

        tool = load_backend(args.backend, args.tool_weights, device=args.tool_device)
    if model is None or processor is None:
        model, processor = load_for_training(args)
    if train_dataset is None:
        train_dataset = datasets.load_from_disk(args.dataset_path)
    if grpo_config.reward_weights is not None and len(grpo_config.reward_weights) != len(args.rewards):
        raise ValueError(f"reward_weights {grpo_config.reward_weights} must match rewards {args.rewards} in length")
    return EpisodeGRPOTrainer(
        model=model,
        reward_funcs=[REWARD_FUNCS[name] for name in args.rewards],
        args=grpo_config,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=lora_config(args) if args.use_lora else None,
        tool=tool,
        env_config=args.env_config(),
        image_size=args.image_size,
        overlay_alpha=args.overlay_alpha,
    )
