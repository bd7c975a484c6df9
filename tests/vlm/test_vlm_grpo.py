"""Multi-turn GRPO with TRL's GRPOTrainer in our environment: episode token layout and one training step."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from lib.agent.trajectories import rle_decode
from lib.agent.vlm_prompt import FOLLOWUP_TURN, Turn, chat_messages, user_text
from lib.learning.vlm.grpo import (
    REWARD_FUNCS,
    EpisodeGRPOTrainer,
    VLMGRPOArguments,
    build_grpo_trainer,
    decode_array,
    episode_reward,
    invalid_actions,
    rl_dataset,
    rl_row,
)
from tests.vlm.scenes import two_tone_disk

IMAGE_SIZE = 64  # 4 visual tokens per turn keeps the CPU test short; the geometry is the 512 one, scaled


def two_image_rows():
    rows = []
    for k, (h, w) in enumerate([(48, 64), (64, 40)]):
        img, gt = two_tone_disk(h, w)
        rows.append(rl_row(img, gt, "disk", case_id=f"c{k}", slice_index=k))
    return rows


def grpo_config(tmp_path, **over):
    from trl import GRPOConfig

    kw = dict(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=4, num_generations=2,
              max_completion_length=12, learning_rate=1e-2, use_cpu=True, bf16=False, report_to=[],
              save_strategy="no", logging_steps=1, gradient_checkpointing=False, temperature=1.0, seed=0)
    kw.update(over)
    return GRPOConfig(**kw)


def distinct_characters(completions, **kwargs):
    """A reward that differs between sampled episodes, so the step has non-zero advantages to learn from."""
    return [len(set(c[0]["content"])) / 10.0 for c in completions]


def test_rl_rows_keep_the_exact_slice_and_gt():
    img, gt = two_tone_disk(30, 20)
    row = rl_row(img, gt, "disk", case_id="c", slice_index=None)
    assert np.array_equal(decode_array(row["image_npy"]), img) and decode_array(row["image_npy"]).dtype == np.float32
    assert np.array_equal(rle_decode(json.loads(row["gt_rle"])), gt)
    assert row["prompt"][1]["content"].startswith("The target to be segmented is: disk.")
    with pytest.raises(ValueError, match="bool"):
        rl_row(img, gt.astype(np.uint8), "disk")


def test_reward_functions_follow_the_trl_contract():
    assert episode_reward([[]] * 2, episode_reward=[0.5, None]) == [0.5, None]
    assert invalid_actions([[]] * 2, n_invalid=[0, 3]) == [-0.0, -3.0]
    assert set(REWARD_FUNCS) == {"episode", "invalid"}
    with pytest.raises(ValueError, match="rewards"):
        VLMGRPOArguments(rewards=["nope"])


def test_episodes_interleave_model_and_environment_tokens(tmp_path, tiny_vlm, processor, fake_tool):
    rows = two_image_rows()
    args = VLMGRPOArguments(backend="fake", use_lora=False, dtype="float32", image_size=IMAGE_SIZE, max_turns=2)
    trainer = build_grpo_trainer(args, grpo_config(tmp_path, reward_weights=[1.0, 0.1]), tool=fake_tool,
                                 model=tiny_vlm, processor=processor, train_dataset=rl_dataset(rows))
    trainer._rows = rows
    prompt_ids, completion_ids, tool_mask, completions, _, extra, images, _ = trainer._generate(
        [r["prompt"] for r in rows]
    )
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    tokens_per_image = (IMAGE_SIZE // 16) ** 2 // 4
    for p, c, m, imgs in zip(prompt_ids, completion_ids, tool_mask, images, strict=True):
        assert len(c) == len(m) and m[0] == 1
        # every image of the episode has its visual tokens in the sequence, in order (first in the prompt)
        assert (np.array(p + c) == pad).sum() == tokens_per_image * len(imgs)
        assert (np.array(p) == pad).sum() == tokens_per_image
        env_text = processor.tokenizer.decode([t for t, k in zip(c, m, strict=True) if k == 0])
        assert env_text.count(FOLLOWUP_TURN) == len(imgs) - 1
        # environment tokens (mask 0) never contain model samples: they are exactly the follow-up turns
        assert all(k == 0 for t, k in zip(c, m, strict=True) if t == pad)
        # the token sequence is exactly the chat template's rendering of the episode (model turns as sampled)
        segments, current = [], []
        for t, k in zip(c, m, strict=True):
            if k == 1:
                current.append(t)
            elif current:
                segments.append(current)
                current = []
        segments += [current] if current else []
        answers = [processor.tokenizer.decode(seg).removesuffix("<|im_end|>") for seg in segments]
        turns = [Turn(None, user_text("disk", k), answers[k] if k < len(answers) else None) for k in range(len(imgs))]
        rendered = processor.apply_chat_template(chat_messages(turns, image_payload=False), tokenize=False,
                                                 add_generation_prompt=len(answers) < len(imgs))
        full = re.sub(r"(<\|image_pad\|>)+", "<|image_pad|>", processor.tokenizer.decode(p + c))
        # an ended episode stops at the model's last token; the template would only close that turn
        assert rendered.startswith(full) and rendered[len(full) :] in ("", "\n", "<|im_end|>\n")
    assert len(extra["episode_reward"]) == 2 and all(isinstance(r, float) for r in extra["episode_reward"])
    assert all(len(i) >= 1 for i in images) and completions[0][0]["role"] == "assistant"


def test_one_grpo_step_on_a_two_image_batch(tmp_path, tiny_vlm, processor, fake_tool):
    from lib.learning.vlm.sft import lora_config

    args = VLMGRPOArguments(backend="fake", lora_r=8, lora_alpha=16, lora_dropout=0.0, dtype="float32",
                            image_size=IMAGE_SIZE, max_turns=2)
    trainer = EpisodeGRPOTrainer(
        model=tiny_vlm,
        reward_funcs=[episode_reward, invalid_actions, distinct_characters],
        args=grpo_config(tmp_path, reward_weights=[1.0, 0.1, 1.0]),
        train_dataset=rl_dataset(two_image_rows()),
        processing_class=processor,
        peft_config=lora_config(args),
        tool=fake_tool,
        env_config=args.env_config(),
        image_size=IMAGE_SIZE,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["episode/turns"] >= 1 and "rewards/episode_reward/mean" in log
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(before[n], p)]
    assert changed, "no LoRA weight moved: the multi-turn loss did not reach the parameters"
    # one tool session per start state: 2 images encoded for 4 episodes
    assert fake_tool.encoder_calls == 2
