"""The agent in 3D through the real server (issue 16): one roi on the real CT's liver gives the liver through the
whole volume (``agent_handoff``, default ``--conf scope volume``, the shipped demo policy); ``scope: "slice"``
fills one slice and reuses the embeddings the volume request computed; two volume requests at once give the
serial labels; a bad ``scope`` is a 4xx and the server keeps serving.

One module-scoped server on the real CT only (``make_sample_studies.py --real`` with no phantoms); the 30 slices are
encoded once, by the first request, and every later request reuses them from the app's session cache, so the
module costs about one volume's encoder time plus decoder/policy time. The reference is TotalSegmentator's liver
(a model's output, not an expert's). Skipped only when the real samples are not in the cache
(``python scripts/fetch_real_samples.py`` fills it); this test never downloads anything itself. Requests wait
without a read timeout, so a busy machine only makes the module slower."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from serverproc import Server
from test_interactive_server import dice, ijk, organ_prompt

pytestmark = pytest.mark.server

IMAGE = "real_ct_001"
# Measured (roi = the tight box of the liver on its largest slice k = 24 of 30; LiteMedSAM; default VolumeConfig):
# the liver is kept on all 30 slices (it spans all 30 of this cropped scan). 3D Dice against TotalSegmentator's
# liver: 0.910 with the demo policy trained on the phantoms and this CT (0 corrective actions: it accepts every
# propagated slice), 0.899 with the earlier phantom-only demo (30 corrective actions). Floor = 0.899 - 0.04,
# the margin the slice tests on this CT use (tests/app/test_real_ct_server.py): a label written into the wrong
# slices, a broken propagation or a wrong window falls far below it.
LIVER_3D_FLOOR = 0.86
# the seed slice alone, scope "slice": measured 0.975 in tests/app/test_real_ct_server.py (floor 0.90 there too)
SLICE_FLOOR = 0.90


@pytest.fixture(scope="module")
def volume_server(tmp_path_factory, real_only_studies):
    root = tmp_path_factory.mktemp("volume-app")
    studies = real_only_studies(root)
    # a thread pool for infers, so concurrent requests really overlap inside the server; one torch thread: on a
    # shared 2-core machine torch's two intra-op threads spin against other jobs (measured in-process on this CT, a
    # volume request on cached embeddings took 129 s with 2 threads, 23 s with 1)
    srv = Server(studies, conf={"demo_policy": "true", "policy_dir": str(root / "policy"), "threads": "1"},
                 env={"MONAI_LABEL_INFER_CONCURRENCY": "4"}).wait()
    srv.root = root
    yield srv
    srv.stop()


def organ(studies: Path, name: str):
    """(value, (k, gt slice [i, j], interior click, tight roi on k), gt volume [i, j, k] bool) of ``name``."""
    spec = json.loads((studies / "dataset.json").read_text())
    (case,) = [c for c in spec["training"] if c["image"].startswith(IMAGE)]
    value = next(int(v) for v, n in spec["labels"].items() if n == name)
    gt = ijk(studies / case["label"])
    return value, organ_prompt(gt, value), gt == value


def infer(srv, model: str, params: dict, folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    out, res = MONAILabelClient(srv.url, tmpdir=str(folder)).infer(model, IMAGE, params)
    return ijk(out), res


@pytest.fixture(scope="module")
def liver_volume(volume_server):
    """The first request of the module: one roi on the liver's largest slice, default scope (volume)."""
    value, (k, _, _, roi), gt = organ(volume_server.studies, "liver")
    t0 = time.perf_counter()
    pred, res = infer(volume_server, "agent_handoff", {"label": "liver", "roi": roi}, volume_server.root / "liver")
    wall = time.perf_counter() - t0
    print(f"\nliver, one roi on k={k}: {wall:.1f}s wall; timings {res['timings']}")
    return {"value": value, "k": k, "roi": roi, "gt": gt, "pred": pred, "res": res, "wall_s": wall}


def test_one_roi_segments_the_liver_through_the_volume(liver_volume):
    lv = liver_volume
    pred, res, gt, k = lv["pred"], lv["res"], lv["gt"], lv["k"]
    assert pred.shape == gt.shape == (122, 101, 30)  # [i, j, k]: the whole volume
    assert set(np.unique(pred)) <= {0, lv["value"]} and res["label_names"] == {"liver": lv["value"]}
    liver3d = dice(pred == lv["value"], gt)
    print(f"3D Dice {liver3d:.3f}, {len(res['slices_visited'])} slices visited, {len(res['slices_kept'])} kept, "
          f"{res['corrective_actions']} corrective actions, ends {res['ends']}")
    assert liver3d >= LIVER_3D_FLOOR, (liver3d, {x: res[x] for x in ("slices_kept", "ends", "corrective_actions")})
    # it spans the structure: filled slices = the kept ones, covering (nearly) every slice the liver is on
    filled = sorted(int(z) for z in np.nonzero((pred > 0).any(axis=(0, 1)))[0])
    assert filled == res["slices_kept"]
    on = set(np.nonzero(gt.any(axis=(0, 1)))[0].tolist())
    assert len(on & set(filled)) >= 0.9 * len(on), (sorted(on), filled)
    # today's keys, for the seed slice ...
    assert res["scope"] == "volume" and res["slice"] == k and res["handoff_actions"] == 1
    assert res["actions"][0]["type"] == "box" and all("predicted_quality" in a for a in res["actions"])
    assert res["turns"] >= 1 and res["stop_reason"] and res["latencies"]["total_ms"] > 0
    # ... and the volume's
    assert res["slices_visited"][0] == k and set(res["slices_kept"]) <= set(res["slices_visited"])
    assert [s["index"] for s in res["slices"]] == res["slices_visited"]
    assert all({"index", "turns", "stop_reason", "corrective", "kept", "check"} <= set(s) for s in res["slices"])
    assert res["corrective_actions"] == sum(s["corrective"] for s in res["slices"])
    assert set(res["ends"]) == {"1", "-1"} and all("reason" in e for e in res["ends"].values())
    t = res["timings"]
    assert t["encoder_calls"] == len(res["slices_visited"]) + t["encoded_not_visited"]  # each slice encoded once
    assert {"encoder_s", "decoder_s", "policy_s", "wall_s"} <= set(t)


def test_scope_slice_fills_one_slice_and_reuses_the_volume_embeddings(volume_server, liver_volume):
    lv = liver_volume
    k = lv["k"]
    pred, res = infer(volume_server, "agent_handoff", {"label": "liver", "roi": lv["roi"], "scope": "slice"},
                      volume_server.root / "slice")
    assert res["scope"] == "slice" and "slices" not in res
    assert sorted(np.nonzero((pred > 0).any(axis=(0, 1)))[0].tolist()) == [k]  # the one slice asked for
    assert dice(pred[:, :, k] == lv["value"], lv["gt"][:, :, k]) >= SLICE_FLOOR
    # the volume request encoded slice k under the key a slice request uses: no encoder pass here
    assert res["latencies"]["embedding_cached"] is True and res["latencies"]["encoder_ms"] == 0.0


def test_two_volume_requests_at_once_give_the_serial_labels(volume_server, liver_volume):
    """Sent at once from two threads. (MONAI Label 0.8's /infer endpoint waits for each infer inside its event loop,
    so the server answers them one after the other today; the app must not depend on that.)"""
    _, (kk, _, _, kidney_roi), _ = organ(volume_server.studies, "kidney_left")
    requests_ = [("liver", {"label": "liver", "roi": liver_volume["roi"]}),
                 ("kidney", {"label": "kidney_left", "roi": kidney_roi})]
    serial = {"liver": (liver_volume["pred"], liver_volume["res"])}
    serial["kidney"] = infer(volume_server, "agent_handoff", requests_[1][1], volume_server.root / "kidney-serial")
    assert serial["kidney"][1]["slice"] == kk and serial["kidney"][1]["timings"]["encoder_calls"] == 0  # all cached

    def run(item):
        name, params = item
        return name, infer(volume_server, "agent_handoff", params, volume_server.root / f"{name}-concurrent")

    with cf.ThreadPoolExecutor(2) as pool:
        concurrent = dict(pool.map(run, requests_))
    for name, (pred, res) in concurrent.items():
        ref_pred, ref_res = serial[name]
        assert np.array_equal(pred, ref_pred), name
        assert res["slices_kept"] == ref_res["slices_kept"], name
        assert res["corrective_actions"] == ref_res["corrective_actions"], name
        assert [s["actions"] for s in res["slices"]] == [s["actions"] for s in ref_res["slices"]], name


@pytest.mark.parametrize("model", ["agent", "agent_handoff"])
def test_a_bad_scope_is_a_4xx_naming_the_valid_ones(volume_server, liver_volume, model):
    params = {"label": "liver", "roi": liver_volume["roi"], "scope": "cube"}
    r = requests.post(f"{volume_server.url}/infer/{model}", params={"image": IMAGE, "output": "json"},
                      data={"params": json.dumps(params)}, timeout=(30, None))
    assert 400 <= r.status_code < 500 and "'volume'" in r.text and "'slice'" in r.text, r.text
    assert volume_server.alive()
    # Slicer offers the choice (Options -> infer), the server's default first
    assert MONAILabelClient(volume_server.url).info()["models"][model]["config"]["scope"] == ["volume", "slice"]
    # and it still serves (one slice, cached embedding: cheap)
    pred, res = infer(volume_server, model, {**params, "scope": "slice", "slice": liver_volume["k"]},
                      volume_server.root / f"after-bad-{model}")
    assert res["scope"] == "slice" and (pred > 0).any()

