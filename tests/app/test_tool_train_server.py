"""Interactive fine-tuning of LiteMedSAM through the real server (issue 3): ``/train/litemedsam_interactive``
on the datastore's final labels, stats in ``/info``, and the next interactive request decodes with the
adapted weights without a restart. Driven with MONAILabelClient and plain HTTP."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from serverproc import Server
from test_interactive_server import labelled_ct, organ_prompt

pytestmark = pytest.mark.server

#: a short run: a few liver slices of the labelled cases, two validation items; minutes on 2 cores
TRAIN = {"steps": 30, "lr": 5e-4, "labels": "liver", "max_per_case": 2, "max_val_samples": 2, "val_every": 30,
         "seed": 0}


@pytest.fixture(scope="module")
def tool_server(sample_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("tool-app")
    studies = root / "studies"
    shutil.copytree(sample_data / "studies", studies)
    # adapted weights go to a private folder, never into the repository's bundle
    srv = Server(studies, conf={"models_dir": str(root / "models"), "policy_dir": str(root / "policy")}).wait()
    srv.models_dir = root / "models" / "litemedsam"
    yield srv
    srv.stop()


def test_train_task_adapts_the_tool_and_the_next_click_uses_it(tool_server, tmp_path):
    client = MONAILabelClient(tool_server.url, tmpdir=str(tmp_path))
    info = client.info()
    assert "litemedsam_interactive" in info["trainers"]
    assert info["tools"]["litemedsam"]["weights"] == "released"

    image_id, label_path = labelled_ct(tool_server.studies)
    k, _, fg, roi = organ_prompt(np.asarray(nib.load(str(label_path)).dataobj), 1)
    params = {"label": "liver", "foreground": fg, "background": [], "roi": roi}
    _, before = client.infer("litemedsam", image_id, params)
    assert before["weights"].startswith("released") or "adapted" not in before["weights"], before

    task = tool_server.train("litemedsam_interactive", TRAIN)  # in the background, waited on by progress
    assert task["status"] == "DONE", (task, tool_server.tail())

    info = client.info()
    stats = info["train_stats"]["litemedsam_interactive"]
    assert stats["status"] == "done" and stats["steps"] >= 1, stats
    assert len(stats["best_val"]["dice_per_click"]) == 5 and stats["n_images"] >= 2
    assert (tool_server.models_dir / "adapted.pt").is_file() and (tool_server.models_dir / "adapted.json").is_file()
    tools = info["tools"]["litemedsam"]
    assert tools["weights"] == "adapted" and tools["data"]["labels"] == ["liver"], tools

    # no restart: the provider sees the new .pt and the same request now decodes with the adapted weights
    out, after = client.infer("litemedsam", image_id, params)
    assert "adapted" in after["weights"], after
    assert after["latencies"]["embedding_cached"] is False  # new weights invalidate cached sessions
    assert int((np.asarray(nib.load(out).dataobj)[:, :, k] == 1).sum()) > 0


def test_bad_training_options_are_a_clear_4xx(tool_server):
    r = requests.post(f"{tool_server.url}/train/litemedsam_interactive", params={"run_sync": "true"},
                      json={"steps": "many"}, timeout=120)
    assert 400 <= r.status_code < 500 and "steps" in r.text, r.text
    r = requests.post(f"{tool_server.url}/train/litemedsam_interactive", params={"run_sync": "true"},
                      json={"steps": -3}, timeout=120)
    assert 400 <= r.status_code < 500 and "steps" in r.text, r.text
    assert tool_server.alive()
    assert json.loads(requests.get(f"{tool_server.url}/info/", timeout=60).text)["name"] == "MedSAM-Agent"
