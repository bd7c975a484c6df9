"""Which agent policy the app serves (``--conf policy``), as a ``PolicyStore`` the infer tasks read."""

from __future__ import annotations

import logging
from pathlib import Path

from lib.agent.policies.store import PolicyStore
from lib.configs.app_conf import AppConf

logger = logging.getLogger(__name__)


def _load_compact(ckpt_dir: Path, stop_quality: str = ""):
    from lib.agent.policies.compact import CompactPolicy

    if not stop_quality:
        return CompactPolicy.load(ckpt_dir)
    try:
        threshold = stop_quality if stop_quality == "auto" else float(stop_quality)
        return CompactPolicy.load(ckpt_dir, stop_quality=threshold)
    except ValueError as e:  # "auto" on a checkpoint without a validated threshold: serve its learned stop
        logger.warning("--conf stop_quality %s: %s; serving the policy's learned stop", stop_quality, e)
        return CompactPolicy.load(ckpt_dir)


def policy_store(conf: AppConf, policy_dir: Path) -> PolicyStore:
    """compact: the checkpoint published by agent_sft / agent_rl in ``policy_dir``; vlm: ``conf.vlm_path``."""
    if conf.policy == "vlm":
        from lib.agent.policies.vlm import VLMConfig, VLMPolicy, check_checkpoint_dir

        check_checkpoint_dir(conf.vlm_path)  # a wrong path fails at start-up, naming --conf vlm_path

        def load_vlm(path: Path):
            # the ~17 GB load happens on the first agent request, not at start-up
            return VLMPolicy.from_pretrained(path, VLMConfig(device=conf.device if conf.device != "cpu" else "auto"))

        return PolicyStore(Path(conf.vlm_path), load_vlm, marker="config.json")
    return PolicyStore(policy_dir, lambda path: _load_compact(path, conf.stop_quality))
