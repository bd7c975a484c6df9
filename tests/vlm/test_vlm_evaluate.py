"""``scripts/evaluate.py --policy vlm`` on the tiny random Qwen3-VL checkpoint: the VLM is a registered policy of
the one evaluation loop (``lib.agent.evaluation``), loaded from a local folder, never from the hub."""

from __future__ import annotations

import json

from tests.agent.test_scripts import _script, tiny_dataset  # noqa: F401  (tiny_dataset is a fixture)


def test_evaluate_runs_the_vlm_policy_from_a_local_checkpoint(tiny_dataset, checkpoint_dir, tmp_path):  # noqa: F811
    out = tmp_path / "eval-vlm"
    proc = _script("evaluate.py", "--dataset", str(tiny_dataset), "--split", "test", "--policy", "vlm",
                   "--checkpoint", str(checkpoint_dir), "--mode", "handoff", "--backend", "fake", "--max-turns", "2",
                   "--max-slices-per-case", "1", "--labels", "organ", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["policy"] == "vlm" and res["checkpoint"] == str(checkpoint_dir)
    assert res["n_targets"] == 2 and set(res["baselines"]) == {"box", "expert", "ellipse"}
    for row in res["rows"]:
        # a random tiny VLM cannot segment; the hand-off box still ran as its first action
        assert row["turns"] >= 1 and len(row["dice_per_turn"]) == 3

