"""The YAML recipes fill our argument dataclasses and TRL's configs (trl.TrlParser), and bad values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lib.learning.vlm.grpo import VLMGRPOArguments
from lib.learning.vlm.sft import VLMSFTArguments

ROOT = Path(__file__).resolve().parents[2]


def test_sft_recipe_parses():
    from trl import SFTConfig, TrlParser

    args, cfg = TrlParser((VLMSFTArguments, SFTConfig)).parse_args_and_config(
        args=["--config", str(ROOT / "configs/vlm_sft.yaml"), "--use_cpu", "true", "--bf16", "false"]
    )
    assert args.use_lora and "q_proj" in args.lora_target_modules
    assert cfg.assistant_only_loss and cfg.max_length is None


def test_grpo_recipe_parses_with_reference_settings():
    from trl import GRPOConfig, TrlParser

    args, cfg = TrlParser((VLMGRPOArguments, GRPOConfig)).parse_args_and_config(
        args=["--config", str(ROOT / "configs/vlm_grpo.yaml"), "--use_cpu", "true", "--bf16", "false"]
    )
    assert cfg.num_generations == 8 and cfg.learning_rate == 1e-6 and cfg.beta == 0.0
    assert args.rewards == ["episode", "invalid"] and len(cfg.reward_weights) == 2 and args.max_turns == 5


def test_accelerate_configs_are_valid_yaml():
    for name in ("multi_gpu.yaml", "multi_node.yaml"):
        cfg = yaml.safe_load((ROOT / "configs/accelerate" / name).read_text())
        assert cfg["distributed_type"] == "MULTI_GPU" and cfg["num_processes"] >= cfg["num_machines"]


@pytest.mark.parametrize("kwargs", [{"eval_fraction": 1.0}, {"lora_r": 0}, {"dtype": "int8"}])
def test_sft_arguments_reject_bad_values(kwargs):
    with pytest.raises(ValueError):
        VLMSFTArguments(**kwargs)


def test_grpo_arguments_reject_bad_values():
    with pytest.raises(ValueError):
        VLMGRPOArguments(prompting="sometimes")
    with pytest.raises(ValueError):
        VLMGRPOArguments(max_turns=0)
