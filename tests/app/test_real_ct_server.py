"""The real abdominal CT (TotalSegmentator's test scan, ``lib.data.real_samples``) through the real server: the
hand-off agent with the shipped demo policy, and the direct LiteMedSAM task, on the liver's largest slice.

The reference is TotalSegmentator's liver (a model's output, not an expert's). Skipped only when the real
samples are not in the cache (``python scripts/fetch_real_samples.py`` fills it; ``./scripts/test.sh`` runs it);
this test never downloads anything itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monailabel.client import MONAILabelClient
from serverproc import Server
from test_interactive_server import dice, ijk, organ_prompt

pytestmark = pytest.mark.server

IMAGE = "real_ct_001"
# Measured on this CT (liver's largest slice k = 24 of 30; 122 x 101 px at 3 mm; liver 2083 px; tight roi box):
# the ellipse inscribed in the box scores 0.776; the direct LiteMedSAM box + interior click 0.975 (box alone
# 0.975); the hand-off agent 0.975 (the demo policy, trained on the phantoms and this CT, keeps the user's box and
# stops; the earlier phantom-only demo redrew it and scored 0.942). The agent's floor stays 0.90 (below the
# phantom-only demo's 0.942 - 0.04) so that a retrained demo that corrects is not held to one that stops;
# the direct floor is the measured value minus 0.04: room for float
# differences between platforms, still far above the trivial ellipse: a label that no longer overlays its image
# or a wrong intensity window falls below them.
AGENT_FLOOR = 0.90
DIRECT_FLOOR = 0.93


@pytest.fixture(scope="module")
def real_server(tmp_path_factory, real_only_studies):
    root = tmp_path_factory.mktemp("real-ct-app")
    studies = real_only_studies(root)
    srv = Server(studies, conf={"demo_policy": "true", "policy_dir": str(root / "policy")}).wait()
    yield srv
    srv.stop()


def liver_prompt(studies: Path):
    spec = json.loads((studies / "dataset.json").read_text())
    (case,) = [c for c in spec["training"] if c["image"].startswith(IMAGE)]
    liver = next(int(v) for v, name in spec["labels"].items() if name == "liver")
    return liver, organ_prompt(ijk(studies / case["label"]), liver)


def test_handoff_agent_and_direct_litemedsam_on_the_real_ct_liver(real_server, tmp_path):
    client = MONAILabelClient(real_server.url, tmpdir=str(tmp_path))
    info = client.info()
    assert info["agent"]["trained"] is True  # the demo policy, trained on the phantoms only
    assert {"liver", "stomach", "aorta"} <= set(info["labels"])
    liver, (k, gt, fg, roi) = liver_prompt(real_server.studies)
    assert liver == 1  # the phantoms' value: one label set for phantoms and real studies

    # scope "slice": the returned slice is the one compared (the default, "volume", is tests/app/test_volume_server.py)
    out, res = client.infer("agent_handoff", IMAGE, {"label": "liver", "roi": roi, "scope": "slice"})
    pred = ijk(out)
    assert pred.shape == (*gt.shape, 30)  # [i, j, k]: the whole volume, 30 slices
    assert res["handoff_actions"] == 1 and res["actions"][0]["type"] == "box"
    assert res["label_names"] == {"liver": liver}
    agent = dice(pred[:, :, k] == liver, gt)
    print(f"hand-off agent Dice {agent:.3f}, actions {[a['type'] for a in res['actions']]}")
    assert agent >= AGENT_FLOOR, (agent, res)
    assert not (pred[:, :, [i for i in range(pred.shape[2]) if i != k]] > 0).any()  # the one slice asked for

    out, res = client.infer("litemedsam", IMAGE, {"foreground": fg, "background": [], "roi": roi, "label": "liver",
                                                  "slice": k})
    direct = dice(ijk(out)[:, :, k] > 0, gt)
    print(f"direct LiteMedSAM box + click Dice {direct:.3f}")
    assert direct >= DIRECT_FLOOR, (direct, res)
