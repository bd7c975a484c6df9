import json

import pytest

from lib.agent.settings import EpisodeSettings
from lib.configs.app_conf import AppConf
from lib.configs.labels import resolve_labels


def test_defaults_and_typed_parsing():
    c = AppConf.parse({"backends": "litemedsam, medsam2", "threads": "2", "ct_window": "50,350", "preload": "true",
                       "labels": '{"liver": 1}', "prompting": '{"litemedsam": "newest"}', "models": "ignored"})
    assert c.backends == ("litemedsam", "medsam2") and c.threads == 2 and c.episode.ct_window == (50.0, 350.0)
    assert c.preload is True and c.labels == {"liver": 1}
    assert c.episode.prompting["litemedsam"] == "newest" and c.episode.prompting["medsam2"] == "all_logits"
    # keys left out keep EpisodeSettings' defaults: what the app serves is defined once
    default = EpisodeSettings()
    assert c.episode.local_radius == default.local_radius and c.episode.max_turns == default.max_turns
    assert AppConf.parse({}).backends == ("litemedsam", "sam2", "medsam2")
    assert AppConf.parse({}).encoder_runtime == "auto"
    assert AppConf.parse({"encoder_runtime": "openvino"}).encoder_runtime == "openvino"
    assert AppConf.parse({}).scope == "volume" and AppConf.parse({"scope": " Slice "}).scope == "slice"
    assert AppConf.parse({}).stop_quality == "" and AppConf.parse({"stop_quality": "Auto"}).stop_quality == "auto"


@pytest.mark.parametrize("conf,message", [
    ({"backends": "litemedsam,foo"}, "unknown"),
    ({"threads": "two"}, "integer"),
    ({"ct_window": "40"}, "level,width"),
    ({"preload": "maybe"}, "true or false"),
    ({"labels": "{liver: 1}"}, "not valid JSON"),
    ({"labels": '{"liver": 0}'}, "positive integer"),
    ({"prompting": '{"litemedsam": "sometimes"}'}, "one of"),
    ({"session_cache_mb": "0"}, "> 0"),
    ({"max_turns": "0"}, "max_turns"),
    ({"local_radius": "-1"}, "local_radius"),
    ({"box_jitter": "0.7"}, "box_jitter"),
    ({"scope": "cube"}, "scope 'cube': use one of volume, slice"),
    ({"stop_quality": "1.5"}, "stop_quality '1.5': use auto or a number"),
    ({"encoder_runtime": "tensorrt"}, "encoder_runtime 'tensorrt': use one of"),
])
def test_bad_conf_values_are_explained(conf, message):
    with pytest.raises(ValueError, match=message):
        AppConf.parse(conf)


def test_labels_come_from_dataset_json_when_not_configured(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "2": "spleen", "1": "liver"}}))
    assert list(resolve_labels({}, tmp_path).items()) == [("liver", 1), ("spleen", 2)]
    assert resolve_labels({"kidney": 3}, tmp_path) == {"kidney": 3}
    assert resolve_labels({}, tmp_path / "missing") == {"foreground": 1}


def test_stop_quality_conf_reaches_the_served_policy(tmp_path):
    from lib.agent.policies.compact import CompactPolicy
    from lib.agent.policies.compact_config import CompactConfig
    from lib.agent.quality import QualityCalibration
    from lib.configs.policy import policy_store

    tiny = CompactConfig(size=64, box_bins=32, widths=(8, 16, 16, 32), label_dim=8, cond_dim=16)
    cal = QualityCalibration((0.0, 1.0), (0.1, 0.9), fitted_on={"stop_threshold": 0.8})
    CompactPolicy({"liver": 1}, tiny, calibration=cal).save(tmp_path / "with")
    CompactPolicy({"liver": 1}, tiny).save(tmp_path / "without")
    served = lambda conf, d: policy_store(AppConf.parse(conf), tmp_path / d).get()  # noqa: E731
    assert served({"stop_quality": "auto"}, "with").stop_quality == 0.8
    assert served({"stop_quality": "0.6"}, "with").stop_quality == 0.6
    assert served({}, "with").stop_quality is None and served({}, "with").calibration == cal
    assert served({"stop_quality": "auto"}, "without").stop_quality is None  # no validated threshold: learned stop
