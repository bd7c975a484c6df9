"""A tiny randomly initialised Qwen3-VL, its tokenizer and processor, built in-process (no hub access).

The tokenizer is a byte-level BPE trained here on the prompt texts (any UTF-8 text stays encodable) plus the Qwen
special tokens, with
the Qwen3-VL chat template as TRL ships it; ``<tool_call>`` / ``</tool_call>`` are added as NORMAL tokens, as
in Qwen's tokenizer, so decoding with ``skip_special_tokens=True`` keeps them. The vision tower uses the real
geometry (16-pixel patches, 2x2 merge, temporal patch 2), so a 512² image costs 256 visual tokens as with the
released checkpoint, but it is one layer of width 32.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    PreTrainedTokenizerFast,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor  # noqa: E402
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor  # noqa: E402
from trl.chat_template_utils import qwen3_vl_chat_template  # noqa: E402

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]
NORMAL_ADDED = ["<tool_call>", "</tool_call>"]


def _corpus() -> list[str]:
    """Texts the tiny BPE learns merges from, so the ~2,300-character system prompt costs ~40 tokens."""
    from lib.agent.vlm_prompt import FIRST_TURN, FOLLOWUP_TURN, SYSTEM_PROMPT

    calls = [f'<tool_call>{{"name": "add_point", "arguments": {{"point_2d": [{i}, {999 - i}], "point_type": '
             f'"{"positive" if i % 2 else "negative"}"}}}}</tool_call>' for i in range(0, 1000, 37)]
    calls += [f'<tool_call>{{"name": "add_bbox", "arguments": {{"bbox_2d": [{i}, {i}, {i + 300}, {i + 200}]}}}}'
              "</tool_call>" for i in range(0, 600, 41)]
    calls += ['<tool_call>{"name": "stop_action", "arguments": {}}</tool_call>']
    return [SYSTEM_PROMPT, FIRST_TURN.format(target="disk"), FOLLOWUP_TURN, *calls] * 3


def tiny_tokenizer(vocab_size: int = 1500) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained in-process on the prompt texts (every byte stays encodable)."""
    from tokenizers import trainers

    tok = Tokenizer(models.BPE())
    # no regex split: merges may cross word boundaries, so the long, repeated prompt texts compress well
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 additional_special_tokens=SPECIAL)
    hf.add_tokens([AddedToken(t, special=False, normalized=False) for t in NORMAL_ADDED])
    hf.chat_template = qwen3_vl_chat_template
    return hf


def tiny_processor() -> Qwen3VLProcessor:
    tokenizer = tiny_tokenizer()
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        size={"shortest_edge": 32 * 32, "longest_edge": 1024 * 1024},
    )
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                            video_processor=Qwen3VLVideoProcessor(), chat_template=qwen3_vl_chat_template)


def tiny_model(processor: Qwen3VLProcessor, seed: int = 0) -> Qwen3VLForConditionalGeneration:
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=16384,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                             "mrope_interleaved": True},
        ),
        vision_config=dict(
            depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
            temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=1024, deepstack_visual_indexes=[0],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.config.get_text_config().pad_token_id = ids["<|endoftext|>"]
    return model.eval()
