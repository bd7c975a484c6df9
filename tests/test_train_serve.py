"""Train as you serve: every recipe, trainer and infer task plays episodes under the served ``EpisodeSettings``.

A policy or an adapted segmenter trained under other settings (another CT window, no local merge, another
prompting mode) meets states at serving time it never saw. These tests fail when a recipe's episode
settings drift from what the app serves, or when the app hands its trainers anything but its own settings.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from lib.agent.settings import EpisodeSettings
from lib.learning.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SERVED = EpisodeSettings()


def test_sft_recipe_trains_as_served():
    from lib.learning.policy.sft import SFTConfig

    assert load_recipe(SFTConfig, ROOT / "configs" / "sft.yaml").data.episode == SERVED


def test_rl_recipe_trains_as_served():
    from lib.learning.policy.rl import RLConfig

    assert load_recipe(RLConfig, ROOT / "configs" / "rl.yaml").episode == SERVED


def test_vlm_grpo_recipe_trains_as_served():
    from trl import GRPOConfig, TrlParser

    from lib.learning.vlm.grpo import VLMGRPOArguments

    args, _ = TrlParser((VLMGRPOArguments, GRPOConfig)).parse_args_and_config(
        args=["--config", str(ROOT / "configs" / "vlm_grpo.yaml"), "--use_cpu", "true", "--bf16", "false"])
    assert args.episode.record(args.backend) == SERVED.record(args.backend)


@pytest.mark.parametrize("values", [
    yaml.safe_load((ROOT / "configs" / "tool_finetune.yaml").read_text()),
    json.loads((ROOT / "bundles" / "litemedsam" / "configs" / "train.json").read_text()),
], ids=["tool_finetune.yaml", "litemedsam train.json"])
def test_segmenter_recipes_train_as_served(values):
    from lib.learning.segmenter.config import ToolFinetuneConfig

    default = ToolFinetuneConfig()
    assert default.episode_record() == {"prompting": SERVED.prompting_for("litemedsam").value,
                                        "ct_window": list(SERVED.ct_window)}
    assert tuple(values["ct_window"]) == SERVED.ct_window
    assert values["box_jitter"] == SERVED.box_jitter
    assert values["val_prompting"] == SERVED.prompting_for("litemedsam").value


def test_a_changed_recipe_value_is_caught(tmp_path):
    from lib.learning.policy.rl import RLConfig

    text = (ROOT / "configs" / "rl.yaml").read_text().replace("local_radius: 0.5", "local_radius: 0.0")
    (tmp_path / "rl.yaml").write_text(text)
    assert load_recipe(RLConfig, tmp_path / "rl.yaml").episode != SERVED


# -- the app: one settings object for infer and train -------------------------------------------------------
CONF = {"ct_window": "50,350", "max_turns": "3", "local_radius": "0.3", "box_jitter": "0.05",
        "prompting": '{"litemedsam": "all_logits"}', "backends": "litemedsam", "encoder_runtime": "torch"}


@pytest.fixture(scope="module")
def app(tmp_path_factory, sample_data):
    """The real app object (not a server) over a copy of the sample studies, with non-default settings."""
    import os
    import shutil

    os.environ.setdefault("MONAI_ZOO_SOURCE", "local")  # offline, as serve.sh runs it
    studies = tmp_path_factory.mktemp("studies")
    shutil.copytree(sample_data / "studies", studies, dirs_exist_ok=True)
    spec = importlib.util.spec_from_file_location("_train_serve_main", ROOT / "main.py")
    main = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = main
    spec.loader.exec_module(main)
    policy_dir = tmp_path_factory.mktemp("policy") / "agent"
    return main.MedSAMAgentApp(str(ROOT), str(studies), {**CONF, "policy_dir": str(policy_dir)})


def test_the_app_serves_and_trains_with_one_settings_object(app):
    s = app.app_conf.episode
    assert s == EpisodeSettings(prompting={"litemedsam": "all_logits"}, local_radius=0.3, max_turns=3,
                                ct_window=(50, 350), box_jitter=0.05)
    for name in ("agent", "agent_handoff", "litemedsam"):
        assert app._infers[name].settings is s, name
    for name in ("agent_sft", "agent_rl"):
        assert app._trainers[name].settings is s, name
    tool_train = app._trainers["litemedsam_interactive"].overrides
    assert tool_train["ct_window"] == [50.0, 350.0] and tool_train["box_jitter"] == 0.05
    assert tool_train["val_prompting"] == "all_logits"


def test_the_served_encoder_runtime_reaches_every_litemedsam_encoder(app, monkeypatch):
    """--conf encoder_runtime (not the default "auto" here) runs LiteMedSAM's image encoder wherever the app
    builds one: the direct and agent infer tasks and the agent trainers (one provider), and the segmenter
    fine-tuning's validation and embedding pass (its own backend, built from train.json)."""
    import lib.learning.segmenter.finetune as finetune

    provider = app._providers["litemedsam"]
    assert provider._config().get_parsed_content("encoder_runtime") == "torch"
    for name in ("agent", "agent_handoff", "litemedsam"):
        assert app._infers[name].provider is provider, name
    for name in ("agent_sft", "agent_rl"):
        assert app._trainers[name].provider is provider, name
    cfg = app._trainers["litemedsam_interactive"]._parser().get_parsed_content("train_config")
    assert cfg.encoder_runtime == "torch"
    built = {}
    monkeypatch.setattr(finetune, "make_backend", lambda name, **kw: built.update(kw, name=name) or object())
    finetune.ToolFinetuner(cfg)
    assert built["name"] == "litemedsam" and built["encoder_runtime"] == "torch"


def test_in_server_trainers_pass_the_served_settings(app, monkeypatch, tmp_path, sample_data):
    """agent_sft / agent_rl hand the served settings to the learning code (captured, not trained)."""
    import lib.learning.policy.data as agent_data
    import lib.learning.policy.rl as rl
    import lib.learning.policy.sft as sft
    import lib.learning.policy.volume_data as volume_data
    from lib.data.dataset import Dataset

    seen = {}

    def fake_trajectories(samples, tool, labels, config=None, progress=None):
        seen["sft"] = config.episode
        return ["trajectory"]

    def fake_volume_trajectories(data, tool, labels, settings, starts, **kw):
        seen["sft_volume"] = settings
        return ["volume trajectory"]

    monkeypatch.setattr(agent_data, "expert_trajectories", fake_trajectories)
    monkeypatch.setattr(volume_data, "volume_expert_trajectories", fake_volume_trajectories)
    monkeypatch.setattr(sft, "train_sft", lambda config, *a, **k: {"steps": 0})
    monkeypatch.setattr(rl, "train_grpo", lambda config, *a, **k: seen.setdefault("rl", config.episode) and {})
    ds = Dataset.from_dir(sample_data / "studies")
    task = app._trainers["agent_sft"]
    task.train({**task.config(), "labels": ["liver"]}, ds, tmp_path / "sft", lambda info: None)
    (task.policy_dir).mkdir(parents=True, exist_ok=True)
    (task.policy_dir / "policy.json").write_text("{}")
    task = app._trainers["agent_rl"]
    task.train({**task.config(), "labels": ["liver"]}, ds, tmp_path / "rl", lambda info: None)
    assert seen["sft"] is app.app_conf.episode and seen["rl"] is app.app_conf.episode
    assert seen["sft_volume"] is app.app_conf.episode  # the volume start states are played as served too


def test_a_policy_trained_otherwise_is_reported(app):
    class Trained:
        episode = SERVED.record("litemedsam")  # trained with the defaults; the app serves CONF

    diff = app._infers["agent"].settings_mismatch(Trained())
    keys = {line.split(":")[0] for line in diff}
    assert keys == {"prompting", "local_radius", "max_turns", "ct_window"}

    class Same:
        episode = app.app_conf.episode.record("litemedsam")

    assert app._infers["agent"].settings_mismatch(Same()) == []


def test_checkpoints_record_their_settings(tmp_path):
    from lib.agent.policies.compact import CompactPolicy

    policy = CompactPolicy({"liver": 1})
    policy.episode = EpisodeSettings(local_radius=0.25).record("litemedsam")
    policy.save(tmp_path)
    meta = json.loads((tmp_path / "policy.json").read_text())
    assert meta["episode"] == {"prompting": "all", "local_radius": 0.25, "max_turns": 5, "ct_window": [40.0, 400.0]}
    assert CompactPolicy.load(tmp_path).episode == meta["episode"]
