"""Volume evaluation (lib.agent.volume_eval): 3D metrics with mm tolerances, the results schema, shared encodes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from lib.agent.actions import Box, Stop
from lib.agent.env import EnvConfig
from lib.agent.policies.base import Policy, StopPolicy
from lib.agent.policies.ellipse import ellipse_mask
from lib.agent.volume_eval import (
    BASELINES,
    evaluate_target,
    evaluate_volumes,
    markdown_table,
    oracle_ellipse,
    seed_slice_of,
    volume_metrics,
    window_volume,
    write_outputs,
)
from lib.data.intensity import Windowing
from tests.agent.test_volume import BrightTool, volume


def cube(shape=(10, 20, 20), lo=(3, 5, 5), hi=(7, 15, 15)):
    m = np.zeros(shape, dtype=bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def test_volume_metrics_dice_and_nsd_tolerance_in_mm():
    gt = cube()
    assert volume_metrics(gt, gt, (5.0, 1.0, 1.0)) == {"dice3d": 1.0, "nsd": 1.0}
    shifted = np.roll(gt, 1, axis=2)  # one column over: 1 mm in-plane
    m = volume_metrics(shifted, gt, (5.0, 1.0, 1.0), tolerance_mm=2.0)
    assert m["dice3d"] == pytest.approx(2 * (shifted & gt).sum() / (2 * gt.sum()))
    assert m["nsd"] == pytest.approx(1.0)  # every surface voxel within 2 mm of the other surface
    up = np.roll(gt, 1, axis=0)  # one slice over: 5 mm, beyond the tolerance at the caps
    assert volume_metrics(up, gt, (5.0, 1.0, 1.0), tolerance_mm=2.0)["nsd"] < 1.0
    assert volume_metrics(up, gt, (1.0, 1.0, 1.0), tolerance_mm=2.0)["nsd"] == pytest.approx(1.0)
    empty = np.zeros_like(gt)
    assert volume_metrics(empty, gt, (1, 1, 1)) == {"dice3d": 0.0, "nsd": 0.0}
    assert volume_metrics(empty, empty, (1, 1, 1)) == {"dice3d": 1.0, "nsd": 1.0}
    with pytest.raises(ValueError, match="spacing"):
        volume_metrics(gt, gt, (1.0, 1.0))


def test_window_volume_windows_each_slice():
    raw = np.stack([np.full((4, 4), 40.0), np.full((4, 4), 240.0)])
    out = window_volume(raw, Windowing(mode="ct", level=40, width=400))
    assert out.dtype == np.float32 and out.shape == raw.shape
    assert out[0, 0, 0] == pytest.approx(0.5) and out[1, 0, 0] == pytest.approx(1.0)


def test_evaluate_target_runs_policy_and_baselines_on_shared_encodes():
    vol, gt = volume([0, 0, 6, 8, 10, 10, 9, 7, 5, 0, 0, 0])
    tool = BrightTool()
    row = evaluate_target(tool, StopPolicy(), vol, gt, (5.0, 1.5, 1.5), "disk", case_id="c0",
                          env_config=EnvConfig(prompting="all"), box_jitter=0.0)  # the tight box: exact answers
    assert row["seed_slice"] == 4 and row["gt_slices"] == [2, 8]
    for name in ("", *(f"{b}_" for b in BASELINES if b != "oracle_ellipse")):
        assert row[f"{name}dice3d"] == pytest.approx(1.0) and row[f"{name}nsd"] == pytest.approx(1.0)
    # no tool: the ellipse in each slice's box, close to the digital disks but not them
    assert 0.9 < row["oracle_ellipse_dice3d"] < 1.0 and row["oracle_ellipse_actions"] == 0
    assert row["actions"] == 0 and row["propagation_actions"] == 0
    assert all(n == 1 for n in tool.starts.values())  # four runs, one encode per slice
    # the policy run goes first and encodes what it visits; a slice it only prefetched past an end may be cancelled
    # before the worker starts it (on a busy machine) and then encoded by a baseline: once either way
    assert row["encoder_calls_total"] == len(tool.starts) and row["visited"] <= row["encoder_calls"] <= len(tool.starts)
    assert row["actions_per_slice"][0][0] < 0 < row["actions_per_slice"][-1][0]
    with pytest.raises(ValueError, match="mode"):
        evaluate_target(tool, StopPolicy(), vol, gt, (1, 1, 1), "disk", mode="both")


def test_split_expert_baselines_say_where_the_headroom_is():
    # the seed's (largest slice's) box answer is exact; every propagated slice leaks into a bright bar inside the
    # propagated box's margin (apart from the disk), which a negative click removes
    vol, gt = volume([7, 7, 7, 8, 7, 7, 7])
    for k in (0, 1, 2, 4, 5, 6):
        vol[k, 33:35, 15:34] = 0.8
    row = evaluate_target(BrightTool(), StopPolicy(), vol, gt, (5.0, 1.5, 1.5), "disk", case_id="c0",
                          env_config=EnvConfig(prompting="all", max_turns=3), box_jitter=0.0,
                          baselines=("propagation", "expert_seed", "expert_propagated"))
    assert row["seed_slice"] == 3
    assert row["expert_seed_actions"] == 0 and row["expert_seed_dice3d"] == pytest.approx(row["propagation_dice3d"])
    assert row["expert_propagated_actions"] >= 1 and row["expert_propagated_dice3d"] == pytest.approx(1.0)
    assert row["propagation_dice3d"] < 1.0
    with pytest.raises(ValueError, match="unknown baselines"):
        evaluate_target(BrightTool(), StopPolicy(), vol, gt, (1, 1, 1), "disk", baselines=("expert_slice",))


class Picky(Policy):
    """Knows only 'ball'; in autonomous mode draws its own box around the image centre."""

    name = "picky"
    labels = {"ball": 1}

    def label_index(self, name):
        if name != "ball":
            raise ValueError(name)
        return 0

    def act(self, obs, info):
        if info["turn"] == 0:
            return Box(8, 8, 40, 40)
        return Stop()


def _write_dataset(root, n_cases=2):
    """CT cases in HU: a ball (label 1, 200 HU) and, off to the side, a rod (label 2, 200 HU) on 0 HU."""
    (root / "img").mkdir(parents=True)
    (root / "lab").mkdir()
    entries = []
    for c in range(n_cases):
        _, ball = volume([0, 6, 8, 10 + c, 8, 6, 0, 0])
        lab = ball.astype(np.uint8)
        lab[2:5, 2:6, 2:6] = 2
        img = np.where(lab > 0, 200, 0).astype(np.int16)
        img[0, 0, 0] = -1000  # some air, so the image reads as CT
        for arr, folder in ((img, "img"), (lab, "lab")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing((1.5, 1.5, 5.0))
            sitk.WriteImage(im, str(root / folder / f"case{c}.nii.gz"))
        entries.append({"image": f"img/case{c}.nii.gz", "label": f"lab/case{c}.nii.gz"})
    spec = {"labels": {"0": "background", "1": "ball", "2": "rod"}, "modality": {"0": "CT"}, "test": entries}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_evaluate_volumes_schema_skips_unknown_labels_and_writes_outputs(tmp_path):
    ds = _write_dataset(tmp_path / "ds")
    rows = []
    res = evaluate_volumes(ds, BrightTool(), Picky(), env_config=EnvConfig(prompting="all"), box_jitter=0.0,
                           progress=rows.append)
    assert res["scope"] == "volume" and res["mode"] == "handoff" and res["n_targets"] == 2 == len(rows)
    assert res["skipped"] == {"rod": "not in the policy's label set ['ball']"}
    assert set(res["per_label"]) == {"ball"}
    assert set(res["per_label"]["ball"]) >= {"dice3d", "nsd", "actions", "seconds", "n"}
    assert set(res["baselines"]) == set(BASELINES)
    for b in BASELINES:
        assert set(res["baselines"][b]) >= {"final_dice3d", "per_label"}
        assert set(res["baselines"][b]["per_label"]["ball"]) >= {"dice3d", "nsd", "actions", "seconds", "n"}
    assert res["final_dice3d"] == pytest.approx(1.0)
    assert res["rows"][0]["spacing_mm"] == [5.0, 1.5, 1.5] and res["rows"][0]["modality"] == "CT"
    auto = evaluate_volumes(ds, BrightTool(), Picky(), mode="autonomous", env_config=EnvConfig(prompting="all"),
                            baselines=("propagation",), max_cases=1)
    assert auto["mode"] == "autonomous" and set(auto["baselines"]) == {"propagation"}
    assert auto["rows"][0]["actions"] >= 1  # the policy's own seed box is a corrective action
    paths = write_outputs(res, tmp_path / "out")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert json.loads(paths["json"].read_text())["scope"] == "volume"
    assert "| ball | 2 |" in markdown_table(res)


def test_seed_slice_rules():
    gt = np.zeros((10, 4, 4), dtype=bool)
    gt[3:10, :2, :2] = True
    gt[9] = True  # largest on the last slice (an organ cut by the field of view)
    gt[5, :3, :3] = True
    assert seed_slice_of(gt, "largest") == 9
    assert seed_slice_of(gt, "largest_interior") == 5
    edge_only = np.zeros((10, 4, 4), dtype=bool)
    edge_only[9, :2, :2] = True
    assert seed_slice_of(edge_only, "largest_interior") == 9  # nothing inside: the largest anyway
    with pytest.raises(ValueError, match="seed rule"):
        seed_slice_of(gt, "middle")


def test_oracle_ellipse_is_the_ellipse_in_each_slices_box_and_calls_no_tool():
    gt = np.zeros((4, 20, 30), dtype=bool)
    gt[1] = ellipse_mask(Box(3, 2, 20, 11), (20, 30))
    gt[2] = ellipse_mask(Box(5, 4, 14, 17), (20, 30))
    gt[2, 0, 29] = True  # a stray pixel: the box, and so the ellipse, now spans it
    res = oracle_ellipse(gt)
    assert res["encoder_calls"] == 0 and res["slices"] == 2
    assert np.array_equal(res["mask"][1], gt[1]) and not res["mask"][[0, 3]].any()
    assert np.array_equal(res["mask"][2], ellipse_mask(Box(5, 0, 29, 17), (20, 30)))
