"""AgentInfer without a server, on a tiny synthetic CT and a test-double tool: volume scope fills the structure's
slices and shares the provider's session cache with slice requests; scope "slice" fills one slice; bad scopes and
too many hand-off prompts; the scope choice Slicer shows."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi import HTTPException

from lib.agent.actions import Stop
from lib.agent.policies.base import Policy
from lib.infers.agent import AgentInfer
from lib.tools.base import BOX, POINT, SegOutput, Tool, ToolSession
from lib.tools.fake import mask_to_logits
from lib.tools.provider import ToolProvider

K, H, W = 9, 32, 32
ON = range(2, 7)  # slices the structure is on


class BrightSession(ToolSession):
    def __init__(self, image):
        super().__init__(shape=image.shape, encoder_ms=5.0, nbytes=image.nbytes)
        self.image = image

    def predict(self, box=None, points=(), labels=(), mask_logits=None) -> SegOutput:
        mask = np.zeros(self.shape, dtype=bool)
        if box is not None:
            x0, y0, x1, y1 = (int(v) for v in box)
            mask[y0:y1 + 1, x0:x1 + 1] = self.image[y0:y1 + 1, x0:x1 + 1] > 0.5
        return SegOutput(mask=mask, logits=mask_to_logits(mask), score=0.9)


class BrightTool(Tool):
    """Bright pixels inside the box; counts encoder passes."""

    name = "bright"
    capabilities = frozenset({BOX, POINT})
    weights = "test double"

    def __init__(self):
        self.starts = 0
        self._lock = threading.Lock()

    def start(self, image) -> BrightSession:
        with self._lock:
            self.starts += 1
        return BrightSession(np.asarray(image, dtype=np.float32))


class Provider(ToolProvider):
    """The real provider (cache, keys, sessions) around the test-double tool instead of a bundle."""

    def __init__(self):
        super().__init__("bright", "/nonexistent-bundle")
        self._bright = BrightTool()

    @property
    def tool(self):
        return self._bright

    def checkpoint_problem(self):
        return None


class StopAtOnce(Policy):
    name = "stop"
    labels = {"liver": 1}
    last_quality = 0.75

    def act(self, obs, info):
        self.stop_reason = "policy"
        return Stop()


class Store:
    def __init__(self):
        self.policy = StopAtOnce()
        self.episode_lock = threading.Lock()

    def get(self):
        return self.policy


@pytest.fixture
def ct(tmp_path):
    """A (K, J, I) CT: a 200 HU square on slices 2..6 (x 8..19, y 10..21), -500 HU elsewhere."""
    hu = np.full((K, H, W), -500, dtype=np.int16)
    hu[ON.start:ON.stop, 10:22, 8:20] = 200
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(path))
    return path


def task(provider, handoff=True, scope="volume"):
    return AgentInfer(provider, Store(), {"liver": 1}, handoff=handoff, scope=scope)


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # (K, J, I)


ROI_ON_4 = {"label": "liver", "roi": [8, 19, 10, 21, 4, 4]}  # IJK, interleaved


def test_volume_scope_fills_the_structure_and_shares_the_provider_cache(ct):
    provider = Provider()
    path, res = task(provider)({"image": str(ct), **ROI_ON_4})
    label = read(path)
    assert sorted(np.nonzero(label.any(axis=(1, 2)))[0].tolist()) == list(ON)
    assert (label[4, 10:22, 8:20] == 1).all() and label.sum() == len(ON) * 12 * 12
    assert res["scope"] == "volume" and res["slice"] == 4 and res["handoff_actions"] == 1
    assert res["slices_visited"][0] == 4 and res["slices_kept"] == list(ON)
    assert res["turns"] == 1 and res["actions"][0]["type"] == "box" and res["stop_reason"] == "policy"
    assert res["corrective_actions"] == 0 and res["ends"] == {"1": {"slice": 7, "reason": "empty"},
                                                            "-1": {"slice": 1, "reason": "empty"}}
    assert res["min_predicted_quality"] == 0.75 and res["timings"]["encoder_calls"] == provider.tool.starts
    assert [s["index"] for s in res["slices"]] == res["slices_visited"]
    assert "mask" not in res["slices"][0] and "logits" not in res["slices"][0]
    encoded = provider.tool.starts
    # a slice request on a visited slice finds its embedding under the provider's own key
    path, res = task(provider, scope="volume")({"image": str(ct), **ROI_ON_4, "scope": "slice"})
    assert provider.tool.starts == encoded and res["latencies"]["embedding_cached"] is True
    assert res["scope"] == "slice" and np.nonzero(read(path).any(axis=(1, 2)))[0].tolist() == [4]
    # and the volume again: nothing encoded, same label
    path2, res2 = task(provider)({"image": str(ct), **ROI_ON_4})
    assert provider.tool.starts == encoded and res2["timings"]["encoder_calls"] == 0
    assert res2["latencies"]["embedding_cached"] is True


def test_slice_scope_by_conf_and_autonomous_start_slice(ct):
    provider = Provider()
    path, res = task(provider, scope="slice")({"image": str(ct), **ROI_ON_4})
    assert res["scope"] == "slice" and np.nonzero(read(path).any(axis=(1, 2)))[0].tolist() == [4]
    assert res["corrective_actions"] == 0 and "slices" not in res
    # autonomous, volume: the policy stops at once on the requested slice, so nothing is segmented anywhere
    path, res = task(provider, handoff=False)({"image": str(ct), "label": "liver", "slice": 3, "scope": "volume"})
    assert res["slice"] == 3 and res["slices_visited"] == [3] and not read(path).any()
    assert res["ends"]["1"]["reason"] == "empty_seed"
    # no slice: the middle one
    _, res = task(provider, handoff=False)({"image": str(ct), "label": "liver"})
    assert res["slice"] == K // 2


@pytest.mark.parametrize("scope", ["cube", "3d", 1])
def test_a_bad_scope_is_a_422_naming_the_valid_ones(ct, scope):
    with pytest.raises(HTTPException) as e:
        task(Provider())({"image": str(ct), **ROI_ON_4, "scope": scope})
    assert e.value.status_code == 422 and "'volume'" in e.value.detail and "'slice'" in e.value.detail
    with pytest.raises(ValueError, match="volume, slice"):
        task(Provider(), scope="cube")


def test_more_hand_off_prompts_than_the_budget_use_the_first_ones_as_on_one_slice(ct):
    request = {**ROI_ON_4, "foreground": [[12, 14, 4], [13, 15, 4]], "max_turns": 2}
    _, one = task(Provider())({"image": str(ct), **request, "scope": "slice"})
    _, vol = task(Provider())({"image": str(ct), **request})
    assert one["turns"] == vol["turns"] == 2 and vol["handoff_actions"] == 3
    assert [a["type"] for a in vol["actions"]] == [a["type"] for a in one["actions"]] == ["box", "point"]


def test_slicer_sees_the_scope_choice_default_first():
    assert task(Provider()).config()["scope"] == ["volume", "slice"]
    assert task(Provider(), scope="slice").config()["scope"] == ["slice", "volume"]


def test_a_label_spelled_as_another_dataset_spells_it_is_the_apps_label(ct):
    path, res = task(Provider())({"image": str(ct), **ROI_ON_4, "label": "Liver "})
    assert res["target"] == "liver" and res["label_names"] == {"liver": 1} and read(path).any()
    with pytest.raises(HTTPException) as e:
        task(Provider())({"image": str(ct), **ROI_ON_4, "label": "liv"})
    assert e.value.status_code == 422 and "unknown label 'liv'" in e.value.detail and "liver" in e.value.detail


def test_a_label_the_policy_was_not_trained_on(ct):
    """The app defines `spleen`, the policy only knows `liver`: with a box the segmenter answers it and propagates,
    without corrections, and says so; without prompts (autonomous) it is a 409 that says how to get a policy."""
    provider = Provider()
    infer = AgentInfer(provider, Store(), {"liver": 1, "spleen": 2}, handoff=True)
    path, res = infer({"image": str(ct), **ROI_ON_4, "label": "spleen"})
    label = read(path)
    assert sorted(np.nonzero(label.any(axis=(1, 2)))[0].tolist()) == list(ON) and set(np.unique(label)) == {0, 2}
    assert res["policy"] == "stop" and res["corrective_actions"] == 0
    assert "no trained agent policy for label 'spleen'" in res["fallback"] and "propagated" in res["fallback"]
    _, trained = infer({"image": str(ct), **ROI_ON_4})
    assert "fallback" not in trained and trained["policy"] == "stop" and trained["quality"] == 0.75
    with pytest.raises(HTTPException) as e:
        AgentInfer(provider, Store(), {"liver": 1, "spleen": 2}, handoff=False)(
            {"image": str(ct), "label": "spleen", "slice": 4})
    assert e.value.status_code == 409 and "trained labels: ['liver']" in e.value.detail
    assert "agent_handoff with a box" in e.value.detail
