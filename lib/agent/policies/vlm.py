"""``VLMPolicy``: a Qwen3-VL / Qwen2.5-VL agent speaking the MedSAM-Agent tool-call grammar.

Each decision the policy shows the model the conversation so far (``lib.agent.vlm_prompt``: reference system
prompt with the three tool schemas, first-turn / follow-up user turns, history window of 5 turns, each turn's
own image in its own message), where the image of a turn is the slice stretched to 512² with the current mask
in green at alpha 0.5 (``lib.agent.vlm_image``). The answer is parsed with ``lib.agent.grammar.parse`` into
pixels of the slice through ``lib.agent.coords`` (the one 0..999 <-> pixel conversion).

Retry rules (the released MedSAM-Agent code, inference): ONE shared retry, reset after every accepted action, spent on

- an answer that is not one executable tool call (no ``<tool_call>``, bad JSON, unknown tool, bad values), or
- ``stop_action`` before any action executed (the model has not looked at a mask yet).

If the retry fails as well, the episode ends: an unparseable answer gives ``Stop`` with ``stop_reason =
"unparseable_output"`` (the current mask is the answer), a second early stop is accepted as the model's Stop.
Under greedy decoding a retry with the same prompt repeats the same answer, so retries sample at
``retry_temperature`` (the reference retried greedily, which could never change the outcome).

The model is loaded from a local folder only (``local_files_only=True``); nothing here touches the network.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lib.agent.actions import Action, Stop, from_dict
from lib.agent.grammar import GrammarError, encode, parse
from lib.agent.policies.base import Policy
from lib.agent.vlm_image import MODEL_IMAGE_SIZE, OVERLAY_ALPHA, model_image
from lib.agent.vlm_prompt import HISTORY_TURNS, Turn, chat_messages, user_text

_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class VLMConfig:
    """How the VLM policy runs. Defaults reproduce the reference inference.

    Attributes:
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
        dtype: "auto" (bfloat16 on CUDA, float32 on CPU: CPU bf16 matmuls are slow on most x86 cores),
            "float32", "bfloat16" or "float16".
        image_size: side of the square model image (512: 256 visual tokens per turn for Qwen3-VL).
        overlay_alpha: opacity of the green mask overlay.
        history_turns: completed (user, assistant) pairs kept in the prompt (reference: 5).
        max_new_tokens: generation cap per decision (reference: 128; a tool call needs about 40 tokens).
        temperature: 0 = greedy (reference); > 0 samples with ``top_p``.
        top_p: nucleus sampling mass when sampling.
        retries: shared retry budget per accepted action (reference: 1).
        retry_temperature: sampling temperature of a retry (0 = greedy, which repeats a greedy answer).
        attn_implementation: transformers attention backend ("sdpa", "eager", "flash_attention_2") or None
            for the library default.
    """

    device: str = "auto"
    dtype: str = "auto"
    image_size: int = MODEL_IMAGE_SIZE
    overlay_alpha: float = OVERLAY_ALPHA
    history_turns: int = HISTORY_TURNS
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    retries: int = 1
    retry_temperature: float = 1.0
    attn_implementation: str | None = "sdpa"

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"VLMConfig.dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if not (self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:")):
            raise ValueError(f"VLMConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        for name, lo in (("image_size", 28), ("max_new_tokens", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"VLMConfig.{name} must be an int >= {lo}, got {v!r}")
        for name in ("history_turns", "retries"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"VLMConfig.{name} must be an int >= 0, got {v!r}")
        for name, lo, hi in (("overlay_alpha", 0.0, 1.0), ("top_p", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not lo <= v <= hi:
                raise ValueError(f"VLMConfig.{name} must be a number in [{lo}, {hi}], got {v!r}")
        if self.top_p == 0:
            raise ValueError("VLMConfig.top_p must be > 0 (1.0 disables nucleus sampling)")
        for name in ("temperature", "retry_temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise ValueError(f"VLMConfig.{name} must be a finite number >= 0 (0 = greedy), got {v!r}")

    def resolved_device(self) -> str:
        """The torch device string this config means on this machine."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self):
        """The torch dtype this config means on ``resolved_device()``."""
        import torch

        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        return torch.bfloat16 if self.resolved_device().startswith("cuda") else torch.float32


def check_checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint folder, or FileNotFoundError saying what is missing and where it should be."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"VLM checkpoint folder {path} does not exist. Download the MedSAM-Agent-Qwen3-VL-8B-MedSAM2 "
            "checkpoint (or any Qwen3-VL / Qwen2.5-VL folder) yourself and pass its local path "
            "(app: --conf vlm_path DIR); nothing is downloaded at run time. See docs/vlm.md."
        )
    missing = [f for f in ("config.json",) if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a transformers checkpoint folder: no {', '.join(missing)}")
    return path


def load_vlm(path: str | Path, config: VLMConfig | None = None):
    """(model, processor) from a local checkpoint folder, on the config's device and dtype, in eval mode.

    ``local_files_only=True``: a missing file is an error, never a download.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    config = config or VLMConfig()
    path = check_checkpoint_dir(path)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    kwargs: dict[str, Any] = {"dtype": config.resolved_dtype(), "local_files_only": True}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    model.to(config.resolved_device()).eval()
    return model, processor


class VLMPolicy(Policy):
    """The VLM agent behind the ``Policy`` interface (see the module docstring).

    Args:
        model: a transformers image-text-to-text model (Qwen3-VL / Qwen2.5-VL), already on its device.
        processor: its processor (tokenizer + image processor + chat template).
        config: ``VLMConfig``.
        source: where the weights came from (shown in ``describe()``).

    Observation contract (``SegmentationEnv``): ``obs["image"]`` (H, W) float in [0, 1], ``obs["mask"]``
    (H, W) {0, 1}; ``info["target"]``, ``info["executed"]``, ``info["actions"]``, ``info["masks"]``.
    ``act`` returns an ``Action`` in pixels of the slice.
    """

    name = "vlm"

    def __init__(self, model: Any, processor: Any, config: VLMConfig | None = None, source: str = "") -> None:
        self.model = model
        self.processor = processor
        self.config = config or VLMConfig()
        self.source = source
        self.turns: list[Turn] = []
        self.outputs: list[str] = []
        self.retries_used = 0
        self._retries_left = self.config.retries
        self._image: np.ndarray | None = None
        self._target = ""

    @classmethod
    def from_pretrained(cls, path: str | Path, config: VLMConfig | None = None) -> VLMPolicy:
        """Load the policy from a local checkpoint folder (e.g. MedSAM-Agent-Qwen3-VL-8B-MedSAM2)."""
        config = config or VLMConfig()
        model, processor = load_vlm(path, config)
        return cls(model, processor, config, source=str(Path(path).expanduser()))

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts for ``/info``: policy name, weights folder, device, dtype, prompt settings."""
        param = next(iter(self.model.parameters()), None) if self.model is not None else None
        return {
            "policy": self.name,
            "model": self.source or type(self.model).__name__,
            "architecture": type(self.model).__name__,
            "device": str(param.device) if param is not None else self.config.resolved_device(),
            "dtype": str(param.dtype).replace("torch.", "") if param is not None else self.config.dtype,
            "image_size": self.config.image_size,
            "history_turns": self.config.history_turns,
            "max_new_tokens": self.config.max_new_tokens,
            "decoding": "greedy" if self.config.temperature == 0 else f"sampling T={self.config.temperature}",
        }

    # -- episode -------------------------------------------------------------------------------
    def reset(self, obs: Mapping[str, Any], info: Mapping[str, Any], seed: int | None = None) -> None:
        super().reset(obs, info, seed)
        self.turns = []
        self.outputs = []
        self.retries_used = 0
        self._retries_left = self.config.retries
        self._image = np.asarray(obs["image"])
        self._target = str(info.get("target", ""))

    def act(self, obs: Mapping[str, Any], info: Mapping[str, Any]) -> Action:
        if self._image is None:
            raise RuntimeError("call reset() before act()")
        shape = tuple(int(s) for s in self._image.shape[:2])
        if not self.turns and info.get("actions"):
            self.turns = self._handoff_turns(info, shape)
        executed = int(info.get("executed", 0))
        mask = np.asarray(obs["mask"], dtype=bool) if executed > 0 else None
        image = model_image(self._image, mask, self.config.image_size, self.config.overlay_alpha)
        asked = Turn(image, user_text(self._target, len(self.turns)))
        messages = chat_messages([*self.turns, asked], self.config.history_turns)
        temperature = self.config.temperature
        while True:
            text = self.generate_text(messages, temperature)
            self.outputs.append(text)
            try:
                action = parse(text, shape)
            except GrammarError:
                if self._spend_retry():
                    temperature = self.config.retry_temperature
                    continue
                self.stop_reason = "unparseable_output"
                return Stop()
            if isinstance(action, Stop) and executed == 0 and self._spend_retry():
                temperature = self.config.retry_temperature
                continue
            break
        self.turns.append(Turn(image, asked.text, text))
        if isinstance(action, Stop):
            self.stop_reason = "policy"
        else:
            self._retries_left = self.config.retries  # the reference resets the shared counter per valid action
        return action

    def _spend_retry(self) -> bool:
        if self._retries_left <= 0:
            return False
        self._retries_left -= 1
        self.retries_used += 1
        return True

    def _handoff_turns(self, info: Mapping[str, Any], shape: tuple[int, int]) -> list[Turn]:
        """History for actions executed before the policy was first asked (a user's hand-off box/clicks).

        They are shown as if the model had issued them: each with the image it would have seen and its
        tool-call text, so the conversation is the one the model was trained on.
        """
        turns: list[Turn] = []
        masks = list(info.get("masks", []))
        done = 0
        for record in info["actions"]:
            if record.get("invalid") or record.get("type") not in ("box", "point"):
                continue
            mask = masks[done - 1] if done > 0 else None
            image = model_image(self._image, mask, self.config.image_size, self.config.overlay_alpha)
            turns.append(Turn(image, user_text(self._target, len(turns)), encode(from_dict(record), shape)))
            done += 1
        return turns

    def episode_meta(self) -> dict[str, Any]:
        return {"vlm": {"outputs": [o[:500] for o in self.outputs], "retries_used": self.retries_used}}

    # -- model ------------------------------------------------------------------------------------
    def generate_text(self, messages: list[dict], temperature: float) -> str:
        """The model's answer to ``messages`` (special tokens stripped; ``<tool_call>`` is a normal token)."""
        import torch

        inputs = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        param = next(iter(self.model.parameters()))
        inputs = {k: (v.to(param.device) if hasattr(v, "to") else v) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(param.dtype)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        gen: dict[str, Any] = {"max_new_tokens": self.config.max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
        if temperature > 0:
            gen.update(do_sample=True, temperature=float(temperature), top_p=float(self.config.top_p), top_k=0)
        else:
            gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **gen)
        new = out[0, inputs["input_ids"].shape[1] :]
        return tokenizer.decode(new, skip_special_tokens=True)
