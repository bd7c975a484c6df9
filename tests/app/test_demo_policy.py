"""The demo policy shipped for the sample studies: served out of the box with ``--conf demo_policy true`` (what
``./scripts/serve.sh`` passes), it segments a sample CT liver with no training. Trained on the phantoms and the real
CT; the real MR is its held-out check."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from monailabel.client import MONAILabelClient
from serverproc import Server
from test_agent_server import dice, ijk, labelled, liver_slice

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]


def test_demo_policy_provenance_matches_the_weights():
    demo = ROOT / "demo" / "agent_policy"
    prov = json.loads((demo / "provenance.json").read_text())
    assert prov["policy_sha256"] == hashlib.sha256((demo / "policy.pt").read_bytes()).hexdigest()
    assert prov["rebuild"].startswith("python scripts/train_demo_policy.py")
    # the phantoms' six labels and the real CT's TotalSegmentator organs (scripts/make_sample_studies.py --real)
    assert set(prov["labels"]) == {"liver", "spleen", "kidney_left", "kidney_right", "lesion", "pancreas", "stomach",
                                   "gallbladder", "aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein",
                                   "duodenum", "colon", "small_bowel"}
    assert "real_ct_001" in json.dumps(prov["training"]) and "real_mr_001" not in json.dumps(prov["training"])


def test_demo_policy_serves_the_agent_without_training(sample_data, tmp_path):
    studies = tmp_path / "studies"
    shutil.copytree(sample_data / "studies", studies)
    policy_dir = tmp_path / "policy"
    with Server(studies, conf={"demo_policy": "true", "policy_dir": str(policy_dir), "scope": "slice"}) as srv:
        client = MONAILabelClient(srv.url, tmpdir=str(tmp_path))
        assert client.info()["agent"]["trained"] is True
        image_id, label_path = labelled(studies)[0]
        k, gt = liver_slice(label_path)
        out, res = client.infer("agent", image_id, {"label": "liver", "slice": k})
        assert dice(ijk(out)[:, :, k] == 1, gt) >= 0.8, res
        assert "settings_mismatch" not in res, res  # it records the settings the app serves
    assert (policy_dir / "policy.pt").is_file()  # copied to the served folder, where training will replace it
