"""Which agent policy the app serves (``--conf policy``), as a ``PolicyStore`` the infer tasks read."""

from __future__ import annotations

from pathlib import Path

from lib.agent.policies.store import PolicyStore
from lib.configs.app_conf import AppConf


def _load_compact(ckpt_dir: Path):
    from lib.agent.policies.compact import CompactPolicy

    return CompactPolicy.load(ckpt_dir)


def policy_store(conf: AppConf, policy_dir: Path) -> PolicyStore:
    """compact: the checkpoint published by agent_sft / agent_rl in ``policy_dir``; vlm: ``conf.vlm_path``."""
    if conf.policy == "vlm":
        def load_vlm(path: Path):
            from lib.agent.policies.vlm import VLMPolicy

            return VLMPolicy.from_pretrained(path)

        return PolicyStore(Path(conf.vlm_path), load_vlm, marker="config.json")
    return PolicyStore(policy_dir, _load_compact)
