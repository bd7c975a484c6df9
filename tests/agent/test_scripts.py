"""``scripts/evaluate.py`` and ``scripts/generate_trajectories.py`` end to end, on a tiny NIfTI dataset
made here, with the FakeTool backend (``--backend fake``, for tests only)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lib.agent.trajectories import read_jsonl
from lib.data.io import save_label_like, volume_from_array

from .conftest import disk

ROOT = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {"policy", "mode", "backend", "n_cases", "dice_per_turn", "final_dice", "final_iou", "mean_turns",
                "noc85", "noc90", "latency_ms", "rows", "per_label", "baselines"}


def _case(seed: int, shape=(3, 48, 56)) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume (HU): fat background, a two-tone "organ" (60 / 130 HU) and a bright "kidney"."""
    rng = np.random.default_rng(seed)
    k, h, w = shape
    img = np.full(shape, -100, dtype=np.int16)
    lab = np.zeros(shape, dtype=np.uint8)
    for z in range(k):
        cx, cy = 20 + int(rng.integers(-2, 3)), 22 + int(rng.integers(-2, 3))
        organ = disk((h, w), (cx, cy), 11 + z)
        xx = np.arange(w)[None, :].repeat(h, axis=0)
        img[z][organ & (xx <= cx + 3)] = 60
        img[z][organ & (xx > cx + 3)] = 130
        lab[z][organ] = 1
        kidney = disk((h, w), (45, 34), 5) & ~organ
        img[z][kidney] = 200
        lab[z][kidney] = 2
    return img, lab


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    entries = []
    for n in range(3):
        img, lab = _case(n)
        vol = volume_from_array(img, spacing=(5.0, 1.0, 1.0), modality="CT")
        sitk.WriteImage(vol.image, str(root / "images" / f"case_{n}.nii.gz"))
        save_label_like(lab, vol, root / "labels" / f"case_{n}.nii.gz")
        entries.append({"image": f"images/case_{n}.nii.gz", "label": f"labels/case_{n}.nii.gz"})
    spec = {"labels": {"0": "background", "1": "organ", "2": "kidney"}, "modality": {"0": "CT"},
            "training": entries[:1], "test": entries[1:]}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _load(name: str):
    mod_name = "_script_" + name.removesuffix(".py")
    spec = importlib.util.spec_from_file_location(mod_name, ROOT / "scripts" / name)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod  # dataclasses in the script look their module up
    spec.loader.exec_module(mod)
    return mod


def test_evaluate_handoff_end_to_end(tiny_dataset, tmp_path):
    out = tmp_path / "eval"
    proc = _script("evaluate.py", "--dataset", str(tiny_dataset), "--split", "test", "--policy", "expert",
                   "--mode", "handoff", "--backend", "fake", "--max-turns", "3", "--out", str(out), "--seed", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert SUMMARY_KEYS <= set(res)
    assert res["policy"] == "expert" and res["mode"] == "handoff" and res["backend"] == "fake"
    assert res["n_cases"] == 2 and len(res["rows"]) == res["n_targets"] == 12  # 2 cases x 3 slices x 2 labels
    assert len(res["dice_per_turn"]) == 4 and res["dice_per_turn"][0] == 0.0
    assert set(res["latency_ms"]) == {"encoder", "decoder", "policy"}
    assert set(res["baselines"]) == {"box", "expert", "ellipse"}
    assert set(res["per_label"]) == {"organ", "kidney"}
    # the progress constraint: starting from the same hand-off box, the expert never ends below box-only
    assert res["final_dice"] >= res["baselines"]["box"]["final_dice"]
    for row in res["rows"]:
        assert row["final_dice"] >= row["box_dice"] - 1e-12
        assert 0 <= row["noc85"] <= 20 and row["turns"] <= 3
    assert res["final_dice"] > 0.9
    assert (out / "report.md").read_text().count("baseline:") == 3
    for png in ("dice_vs_turn.png", "turns_strip.png"):
        assert (out / png).stat().st_size > 1000


def test_evaluate_autonomous_box_and_ellipse_in_process(tiny_dataset, tmp_path):
    evaluate = _load("evaluate.py")
    assert {"expert", "box", "ellipse"} <= set(evaluate.POLICIES)
    out = tmp_path / "box"
    assert evaluate.main(["--dataset", str(tiny_dataset), "--policy", "box", "--backend", "fake",
                          "--out", str(out), "--labels", "kidney", "--max-slices-per-case", "1"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["mode"] == "autonomous" and set(res["baselines"]) == {"box", "expert"}
    assert res["mean_turns"] == 1.0 and res["n_targets"] == 2
    assert res["final_dice"] == pytest.approx(res["baselines"]["box"]["final_dice"])
    out = tmp_path / "ellipse"
    assert evaluate.main(["--dataset", str(tiny_dataset), "--policy", "ellipse", "--mode", "handoff",
                          "--backend", "fake", "--out", str(out), "--labels", "kidney"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["final_dice"] == pytest.approx(res["baselines"]["ellipse"]["final_dice"]) and res["final_dice"] > 0.5
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--dataset", "x", "--policy", "ellipse", "--out", "y"])


def test_evaluate_volume_scope_with_baselines(tiny_dataset, tmp_path):
    evaluate = _load("evaluate.py")
    out = tmp_path / "volume"
    assert evaluate.main(["--dataset", str(tiny_dataset), "--scope", "volume", "--policy", "expert", "--mode",
                          "handoff", "--backend", "fake", "--out", str(out), "--labels", "organ,kidney",
                          "--baselines", "propagation,oracle_box"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["scope"] == "volume" and res["n_targets"] == 4  # 2 test cases x 2 labels
    assert set(res["baselines"]) == {"propagation", "oracle_box"} and set(res["per_label"]) == {"organ", "kidney"}
    assert set(res["per_label"]["organ"]) >= {"dice3d", "nsd", "actions", "seconds", "n"}
    # the expert drives the same propagation from the same box: never below it on these clean phantoms
    assert res["final_dice3d"] >= res["baselines"]["propagation"]["final_dice3d"] - 1e-9
    assert res["settings"]["episode"]["max_turns"] == 5 and (out / "dice3d_per_label.png").is_file()
    box = tmp_path / "box"
    assert evaluate.main(["--dataset", str(tiny_dataset), "--scope", "volume", "--policy", "box", "--mode",
                          "handoff", "--backend", "fake", "--out", str(box), "--labels", "kidney",
                          "--baselines", "propagation"]) == 0
    res = json.loads((box / "results.json").read_text())  # box = plain propagation: the baseline, exactly
    assert res["final_dice3d"] == pytest.approx(res["baselines"]["propagation"]["final_dice3d"])
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--dataset", "x", "--policy", "ellipse", "--scope", "volume", "--out", "y"])


def test_generate_trajectories_end_to_end_and_resumes(tiny_dataset, tmp_path):
    out = tmp_path / "traj.jsonl"
    args = ["--dataset", str(tiny_dataset), "--backend", "fake", "--out", str(out), "--split", "test",
            "--workers", "1", "--seed", "3"]
    proc = _script("generate_trajectories.py", *args, "--labels", "organ")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote 6 trajectories" in proc.stdout and "mean final IoU" in proc.stdout and "encoder" in proc.stdout
    first = read_jsonl(out)
    assert len(first) == 6 and {t.label for t in first} == {"organ"}
    assert all(t.ious[-1] >= 0.9 and t.backend == "fake" for t in first)
    assert {t.slice_index for t in first} == {0, 1, 2}
    # resume: the 6 organ targets are skipped, only the kidney ones are added
    gen = _load("generate_trajectories.py")
    assert gen.main(args + ["--labels", "organ,kidney"]) == 0
    both = read_jsonl(out)
    assert len(both) == 12 and [t.to_dict() for t in both[:6]] == [t.to_dict() for t in first]
    assert len({t.key for t in both}) == 12


def test_generate_trajectories_process_pool_matches_sequential(tiny_dataset, tmp_path):
    """Two spawned worker processes give the same trajectories as one process (seeds come from the keys)."""
    common = ["--dataset", str(tiny_dataset), "--backend", "fake", "--split", "test", "--labels", "kidney,organ",
              "--max-slices-per-case", "3"]
    seq, par = tmp_path / "seq.jsonl", tmp_path / "par.jsonl"
    assert _load("generate_trajectories.py").main([*common, "--out", str(seq), "--workers", "1"]) == 0
    proc = _script("generate_trajectories.py", *common, "--out", str(par), "--workers", "2", "--parallel", "process")
    assert proc.returncode == 0, proc.stderr[-3000:]

    def strip(t):
        d = t.to_dict()
        d.pop("timings")
        return d

    a = {t.key: strip(t) for t in read_jsonl(seq)}
    b = {t.key: strip(t) for t in read_jsonl(par)}
    assert len(a) == 6 and a == b


def test_calibrate_quality_then_evaluate_reports_raw_and_calibrated_quality(tiny_dataset, tmp_path):
    from lib.agent.policies.compact import CompactPolicy
    from lib.agent.policies.compact_config import CompactConfig

    ckpt = tmp_path / "policy"
    tiny = CompactConfig(size=64, box_bins=32, widths=(8, 16, 16, 32), label_dim=8, cond_dim=16, click_sigma=1.5)
    CompactPolicy({"organ": 1, "kidney": 2}, tiny).save(ckpt)
    calibrate = _load("calibrate_quality.py")
    assert calibrate.main(["--checkpoint", str(ckpt), "--data", f"{tiny_dataset}:test", "--backend", "fake",
                           "--max-turns", "3", "--out", str(tmp_path / "fit")]) == 0
    stored = json.loads((ckpt / "policy.json").read_text())["quality_calibration"]
    assert stored["method"] == "isotonic" and stored["fitted_on"]["cases"] == ["case_1", "case_2"]
    fit = stored["fitted_on"]
    assert fit["n"] >= 10 and fit["after"]["ece"] <= fit["before"]["ece"] and stored["inputs"] == ["policy", "tool"]
    assert (tmp_path / "fit" / "reliability_fit.png").stat().st_size > 1000
    assert CompactPolicy.load(ckpt).calibration is not None

    evaluate = _load("evaluate.py")
    out = tmp_path / "eval"
    assert evaluate.main(["--dataset", str(tiny_dataset), "--split", "test", "--policy", "compact", "--checkpoint",
                          str(ckpt), "--mode", "handoff", "--backend", "fake", "--max-turns", "3", "--baselines",
                          "box", "--no-noc", "--gated-stop", "0.5", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["baselines"]) == {"box", "gated"} and res["noc85"] != res["noc85"]  # NaN: not measured
    q, raw = res["quality_calibration"], res["quality_calibration_raw"]
    assert q["calibrated"] is True and raw["calibrated"] is False and q["n"] == raw["n"] >= 10
    assert set(q) >= {"ece", "spearman", "mae", "bins", "per_label"} and set(q["per_label"]) == {"organ", "kidney"}
    assert "tool_quality_calibration" in res and all(r["final_quality"] is not None for r in res["rows"])
    # the gate only ends episodes earlier, and replaying it on the learned-stop episodes gives what it did online
    gated = res["baselines"]["gated"]
    assert gated["mean_turns"] <= res["mean_turns"]
    replay = next(c for c in res["quality_gated_stop"]["curve"] if c["threshold"] == 0.5)
    assert replay["dice"] == pytest.approx(gated["final_dice"])
    assert replay["turns"] == pytest.approx(gated["mean_turns"])
    assert res["quality_gated_stop"]["learned"]["dice"] == pytest.approx(res["final_dice"])
    assert (out / "reliability.png").stat().st_size > 1000
    assert set(q["per_case"]) == {"case_1", "case_2"}
    lines = (out / "quality_pairs.csv").read_text().splitlines()
    assert lines[0].startswith("case_id,slice_index,label,quality") and len(lines) == q["n"] + 1
    with pytest.raises(SystemExit):
        evaluate.main(["--dataset", str(tiny_dataset), "--policy", "expert", "--gated-stop", "auto", "--backend",
                       "fake", "--out", str(out)])
