"""The agent through the real server: SFT from /train, hot reload, agent infer, active learning,
concurrency, crash safety and bad input (issue 5). Driven with MONAILabelClient and plain HTTP."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from serverproc import Server

pytestmark = pytest.mark.server

#: a short SFT run: enough for the liver on the sample phantoms, small enough for CI on 2 cores; two volume start
#: states per image (each costs the encodes of a propagation through the liver)
SFT = {"steps": 150, "max_slices_per_case": 8, "volume_slices_per_target": 2, "seed": 0, "labels": ["liver"]}


def ijk(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def agent_server(sample_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("agent-app")
    studies = root / "studies"
    shutil.copytree(sample_data / "studies", studies)
    # a thread pool for infers, so concurrent requests really overlap inside the server
    # one-slice agent requests: these tests check training, reload, scoring and bad input on a slice; the volume
    # scope (the default) has its own server test (test_volume_server.py) and would multiply this file's time
    srv = Server(studies, conf={"policy_dir": str(root / "policy"), "scope": "slice"},
                 env={"MONAI_LABEL_INFER_CONCURRENCY": "4"}).wait()
    srv.policy_dir = root / "policy"
    yield srv
    srv.stop()


def labelled(studies: Path, prefix="ct") -> list[tuple[str, Path]]:
    ds = json.loads((studies / "dataset.json").read_text())
    return [(Path(c["image"]).name.split(".")[0], studies / c["label"]) for c in ds["training"]
            if Path(c["image"]).name.startswith(prefix)]


def liver_slice(label_path: Path) -> tuple[int, np.ndarray]:
    gt = ijk(label_path)
    k = int((gt == 1).sum(axis=(0, 1)).argmax())
    return k, gt[:, :, k] == 1


def post_json(srv, path, body=None, **params):
    # waits for completion however busy the machine is (no read timeout); a dead server closes the connection
    return requests.post(f"{srv.url}{path}", params=params, json=body or {}, timeout=(30, None))


def test_agent_is_listed_and_explains_it_needs_training(agent_server, tmp_path):
    info = MONAILabelClient(agent_server.url).info()
    assert info["models"]["agent"]["type"] == "segmentation"
    assert info["models"]["agent_handoff"]["type"] == "deepgrow"
    assert {"agent_sft", "agent_rl"} <= set(info["trainers"])
    assert {"most_turns", "lowest_quality"} <= set(info["strategies"]) and "agent_turns" in info["scoring"]
    assert info["agent"]["trained"] is False
    image_id, _ = labelled(agent_server.studies)[0]
    r = requests.post(f"{agent_server.url}/infer/agent", params={"image": image_id, "output": "json"},
                      data={"params": json.dumps({"label": "liver"})}, timeout=120)
    assert r.status_code == 409 and "agent_sft" in r.text, r.text


def test_training_with_zero_labelled_images_is_a_clear_4xx(tmp_path):
    studies = tmp_path / "empty_studies"
    studies.mkdir()
    (studies / "dataset.json").write_text(json.dumps({"labels": {"1": "liver"}}))
    with Server(studies, conf={"policy_dir": str(tmp_path / "p")}) as srv:
        r = post_json(srv, "/train/agent_sft", SFT, run_sync="true")
        assert 400 <= r.status_code < 500 and "no labelled images" in r.text, r.text
        assert srv.alive()


def test_sft_from_the_server_then_the_agent_segments_without_restart(agent_server, tmp_path):
    task = agent_server.train("agent_sft", SFT)  # in the background, as Slicer's Train button runs it
    assert task["status"] == "DONE", (task, agent_server.tail())
    info = MONAILabelClient(agent_server.url).info()
    stats = info["train_stats"]["agent_sft"]
    assert stats["status"] == "done" and stats["n_images"] >= 2, stats
    assert stats["n_volume_trajectories"] >= 2 * stats["n_images"], stats  # the states the volume agent meets
    cal = stats["quality_calibration"]  # fitted on the held-out validation case after training, stored with it
    assert isinstance(cal, dict) and cal["n"] >= 10 and cal["cases"] == stats["val_cases"], stats
    assert json.loads((agent_server.policy_dir / "policy.json").read_text())["quality_calibration"]["x"]
    assert info["agent"]["trained"] is True
    client = MONAILabelClient(agent_server.url, tmpdir=str(tmp_path))
    image_id, label_path = labelled(agent_server.studies)[0]
    k, gt = liver_slice(label_path)
    out, res = client.infer("agent", image_id, {"label": "liver", "slice": k})
    pred = ijk(out)[:, :, k] == 1
    assert dice(pred, gt) >= 0.8, res
    assert res["turns"] >= 1 and res["actions"] and res["stop_reason"]
    assert all("predicted_quality" in a for a in res["actions"])
    assert res["quality_calibrated"] is True and 0 <= res["quality"] <= 1 and "IoU" in res["quality_meaning"]
    assert res["label_names"] == {"liver": 1}
    # handoff: the user's box is the first action, the agent continues
    ii, jj = np.nonzero(gt)
    roi = [int(ii.min()), int(ii.max()), int(jj.min()), int(jj.max()), k, k]
    out, res = client.infer("agent_handoff", image_id, {"label": "liver", "roi": roi})
    assert res["handoff_actions"] == 1 and res["actions"][0]["type"] == "box"
    assert dice(ijk(out)[:, :, k] == 1, gt) >= 0.8


def test_active_learning_ranks_by_agent_turns(agent_server):
    r = post_json(agent_server, "/scoring/agent_turns", {"labels": ["liver", "spleen"]}, run_sync="true")
    assert r.status_code == 200, r.text
    ds = requests.get(f"{agent_server.url}/datastore/", params={"output": "all"}, timeout=60).json()
    unlabeled = {i: o["image"]["info"] for i, o in ds["objects"].items() if "final" not in o.get("labels", {})}
    assert unlabeled and all("agent_turns" in v for v in unlabeled.values()), unlabeled
    nxt = post_json(agent_server, "/activelearning/most_turns").json()
    most = max(v["agent_turns"] for v in unlabeled.values())
    assert nxt["id"] in unlabeled and unlabeled[nxt["id"]]["agent_turns"] == most


def test_concurrent_agent_requests_do_not_cross_talk(agent_server, tmp_path):
    cases = [(image_id, liver_slice(lp)[0]) for image_id, lp in labelled(agent_server.studies)]
    cases = (cases * 4)[:4]
    cases = [(i, k + d) for d, (i, k) in enumerate(cases)]  # four different (image, slice) pairs

    def run(case):
        image_id, k = case
        client = MONAILabelClient(agent_server.url, tmpdir=str(tmp_path / f"{image_id}-{k}"))
        (tmp_path / f"{image_id}-{k}").mkdir(exist_ok=True)
        out, res = client.infer("agent", image_id, {"label": "liver", "slice": k})
        return ijk(out), res["actions"]

    sequential = [run(c) for c in cases]
    with cf.ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(run, cases))
    for (m1, a1), (m2, a2) in zip(sequential, concurrent):
        assert np.array_equal(m1, m2) and [x["type"] for x in a1] == [x["type"] for x in a2]


def test_a_crash_mid_training_leaves_the_served_policy_and_datastore(agent_server, tmp_path):
    before_policy = fingerprint(agent_server.policy_dir)
    before_labels = fingerprint(agent_server.studies / "labels")
    client = MONAILabelClient(agent_server.url, tmpdir=str(tmp_path))
    image_id, label_path = labelled(agent_server.studies)[0]
    k, _ = liver_slice(label_path)
    out0, _ = client.infer("agent", image_id, {"label": "liver", "slice": k})
    r = post_json(agent_server, "/train/agent_sft", {**SFT, "volume_slices_per_target": 0, "debug_fail_at_step": 5},
                  run_sync="true")
    assert r.status_code >= 400
    assert agent_server.alive()
    assert fingerprint(agent_server.policy_dir) == before_policy
    assert fingerprint(agent_server.studies / "labels") == before_labels
    stats = MONAILabelClient(agent_server.url).info()["train_stats"]["agent_sft"]
    assert stats["status"] == "failed" and "debug_fail_at_step" in stats["error"]
    out1, _ = client.infer("agent", image_id, {"label": "liver", "slice": k})
    assert np.array_equal(ijk(out0), ijk(out1))


@pytest.mark.parametrize("model,params,message", [
    ("agent", {"label": "heart"}, "valid labels"),
    ("agent", {}, "say which structure"),
    ("agent", {"label": "liver", "slice": 999}, "outside the image"),
    ("agent", {"label": "liver", "max_turns": 99}, "max_turns"),
    ("agent_handoff", {"label": "liver", "foreground": [[9999, 1, 1]]}, "outside the image"),
])
def test_bad_agent_requests_get_4xx(agent_server, model, params, message):
    image_id, _ = labelled(agent_server.studies)[0]
    before = fingerprint(agent_server.studies / "labels")
    r = requests.post(f"{agent_server.url}/infer/{model}", params={"image": image_id, "output": "json"},
                      data={"params": json.dumps(params)}, timeout=120)
    assert 400 <= r.status_code < 500 and message in r.text, r.text
    assert agent_server.alive() and fingerprint(agent_server.studies / "labels") == before
