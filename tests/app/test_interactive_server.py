"""The direct interactive task over the real server, driven by MONAILabelClient and plain HTTP."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException
from scipy import ndimage

pytestmark = pytest.mark.server


def ijk(path) -> np.ndarray:
    """Volume indexed [i, j, k] (Slicer's IJK), read with nibabel, independently of the app."""
    return np.asarray(nib.load(str(path)).dataobj)


def labelled_ct(studies: Path) -> tuple[str, Path]:
    ds = json.loads((studies / "dataset.json").read_text())
    for case in ds["training"]:
        name = Path(case["image"]).name
        if name.startswith("ct") and name.endswith(".nii.gz"):
            return name[: -len(".nii.gz")], studies / case["label"]
    raise AssertionError("sample studies have no labelled CT")


def organ_prompt(gt_ijk: np.ndarray, value: int):
    """Slice with the largest cross-section of `value`, its tight roi, and a click deep inside it."""
    areas = (gt_ijk == value).sum(axis=(0, 1))
    k = int(areas.argmax())
    m = gt_ijk[:, :, k] == value
    ii, jj = np.nonzero(m)
    dt = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    ci, cj = np.unravel_index(dt.argmax(), dt.shape)
    roi = [int(ii.min()), int(ii.max()), int(jj.min()), int(jj.max()), k, k]
    return k, m, [[int(ci), int(cj), k]], roi


def dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def datastore_fingerprint(studies: Path) -> dict[str, str]:
    return {str(p.relative_to(studies)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(studies.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_info_offers_litemedsam_and_is_slicer_compatible(server):
    info = MONAILabelClient(server.url).info()
    assert "config" not in info  # Slicer rejects a top-level config key
    m = info["models"]["litemedsam"]
    assert m["type"] == "deepgrow" and m["dimension"] == 2
    assert "liver" in info["labels"]
    # no checkpoint was given for SAM 2.1 / MedSAM2, so they must not be offered
    assert "sam2" not in info["models"] and "medsam2" not in info["models"]


# Released LiteMedSAM weights were trained with boxes; a click on top of a box can hurt small organs
# (spleen 0.95 -> 0.49 on these phantoms), which interactive fine-tuning (issue 3) addresses. So the
# spleen case sends the box alone, as a Slicer user drawing only an ROI would. The bar is 0.8, not
# higher: the phantom's liver touches the stomach wall at its own intensity (box + click: 0.84).
@pytest.mark.parametrize("organ,with_click", [("liver", True), ("spleen", False)])
def test_box_and_clicks_segment_an_organ_in_the_right_slice(server, tmp_path, organ, with_click):
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    value = client.info()["labels"].index(organ) + 1
    image_id, label_path = labelled_ct(server.studies)
    gt = ijk(label_path)
    k, m, fg, roi = organ_prompt(gt, value)
    params = {"foreground": fg if with_click else [], "background": [], "roi": roi, "label": organ, "slice": k}
    out_file, res = client.infer("litemedsam", image_id, params)
    pred = ijk(out_file)
    assert pred.shape == gt.shape
    assert dice(pred[:, :, k] > 0, m) >= 0.8, res
    assert (np.delete(pred, k, axis=2) > 0).sum() == 0  # nothing written outside the clicked slice
    assert res["label_names"] == {organ: value} and np.unique(pred).tolist() == [0, value]
    # orientation: the written label overlaps the organ far better than its transpose or flips would
    flipped = pred[::-1, :, k] > 0
    assert dice(pred[:, :, k] > 0, m) > dice(flipped, m) + 0.3


def test_second_request_on_the_same_slice_skips_the_encoder(server, tmp_path):
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    image_id, label_path = labelled_ct(server.studies)
    k, m, fg, roi = organ_prompt(ijk(label_path), 4)
    fresh = {"foreground": fg, "roi": roi, "slice": k}
    client.infer("litemedsam", image_id, fresh)
    _, res = client.infer("litemedsam", image_id, {**fresh, "background": [[roi[0], roi[2], k]]})
    assert res["latencies"]["embedding_cached"] is True and res["latencies"]["encoder_ms"] == 0.0


def _expert_click(pred: np.ndarray, gt: np.ndarray, k: int) -> tuple[str, list[int]]:
    """The corrective click an annotator makes: deepest pixel of the largest error region, IJK."""
    regions = []
    for error, kind in ((gt & ~pred, "foreground"), (pred & ~gt, "background")):
        components, n = ndimage.label(error)
        regions += [(components == c, kind) for c in range(1, n + 1)]
    region, kind = max(regions, key=lambda r: r[0].sum())
    dt = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    i, j = np.unravel_index(dt.argmax(), dt.shape)
    return kind, [int(i), int(j), k]


def test_slicer_clicks_are_merged_near_the_click_and_undo_gives_the_earlier_answer(server, tmp_path):
    """Each request carries all clicks; one that adds a click to the last request is that session's next
    turn, and its answer only changes the mask near the new click (the local merge agent episodes use)."""
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    value = client.info()["labels"].index("pancreas") + 1
    image_id, label_path = labelled_ct(server.studies)
    k, m, _, roi = organ_prompt(ijk(label_path), value)
    params = {"foreground": [], "background": [], "roi": roi, "label": "pancreas", "slice": k}
    out_file, res = client.infer("litemedsam", image_id, params)
    assert res["answer"] == "decoded"
    masks, answers = [ijk(out_file)[:, :, k] > 0], [params]
    for _ in range(2):
        kind, click = _expert_click(masks[-1], m, k)
        params = {**params, kind: params[kind] + [click]}
        out_file, res = client.infer("litemedsam", image_id, params)
        new = ijk(out_file)[:, :, k] > 0
        assert res["answer"] == "merged", res
        # whatever changed lies within 0.5 x the earlier mask's equivalent radius of the click
        radius = max(0.5 * np.sqrt(masks[-1].sum() / np.pi), 2.0)
        ii, jj = np.nonzero(new ^ masks[-1])
        assert ((ii - click[0]) ** 2 + (jj - click[1]) ** 2 <= radius**2 + 1e-6).all(), (click, radius)
        masks.append(new)
        answers.append(params)
    # the same prompts again, or an undo back to the box alone, give the answers the user saw
    for params, mask in ((answers[1], masks[1]), (answers[0], masks[0])):
        out_file, res = client.infer("litemedsam", image_id, params)
        assert res["answer"] == "repeated" and res["latencies"]["decoder_ms"] == 0.0
        assert np.array_equal(ijk(out_file)[:, :, k] > 0, mask)


def _post_infer(server, model, image, params):
    return requests.post(f"{server.url}/infer/{model}", params={"image": image, "output": "json"},
                         data={"params": json.dumps(params)}, timeout=120)


def test_bad_input_gets_a_4xx_and_the_server_keeps_serving(server, tmp_path):
    studies = server.studies
    image_id, label_path = labelled_ct(studies)
    k, m, fg, roi = organ_prompt(ijk(label_path), 1)
    # uploads the datastore accepts but no tool can use: corrupted, empty, 4D
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    bad_files = {"broken": b"\x1f\x8b this is not a nifti", "empty": b""}
    for name, payload in bad_files.items():
        (tmp_path / f"{name}.nii.gz").write_bytes(payload)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4)), str(tmp_path / "fourd.nii.gz"))
    for name in ("broken", "empty", "fourd"):
        client.upload_image(str(tmp_path / f"{name}.nii.gz"), image_id=name)
    before = datastore_fingerprint(studies / "labels")

    cases = [
        ("litemedsam", "no_such_image", {"foreground": fg}, "not in the datastore"),
        ("litemedsam", image_id, {"foreground": [[9999, 5, k]]}, "outside the image"),
        ("litemedsam", image_id, {"foreground": [[5, 5, 999]]}, "outside the image"),
        ("litemedsam", image_id, {"foreground": [[1, 2]], "background": [[1, 2, 3]], "slice": k}, "not on slice"),
        ("litemedsam", image_id, {}, "slice"),
        ("medsam2", image_id, {"foreground": fg}, "MedSAM2_latest.pt"),
        ("no_model", image_id, {"foreground": fg}, "available models"),
    ]
    for model, image, params, message in cases:
        r = _post_infer(server, model, image, params)
        assert 400 <= r.status_code < 500, (model, image, params, r.status_code, r.text)
        assert message in r.text, r.text
        assert server.alive()

    for bad, message in [("broken", "corrupted"), ("empty", "empty"), ("fourd", "4D")]:
        r = _post_infer(server, "litemedsam", bad, {"foreground": [[1, 1, 1]]})
        assert 400 <= r.status_code < 500, (bad, r.status_code, r.text)
        assert message.lower() in r.text.lower(), r.text

    # malformed params JSON
    r = requests.post(f"{server.url}/infer/litemedsam", params={"image": image_id, "output": "json"},
                      data={"params": "{not json"}, timeout=60)
    assert r.status_code == 422 and "not valid JSON" in r.text, r.text
    assert server.alive()

    # the next valid request still succeeds, and no label in the datastore changed
    out_file, _ = client.infer("litemedsam", image_id, {"foreground": fg, "roi": roi})
    assert dice(ijk(out_file)[:, :, k] > 0, m) > 0.8
    assert datastore_fingerprint(studies / "labels") == before
    for bad in ("broken", "empty", "fourd"):
        assert requests.delete(f"{server.url}/datastore/", params={"id": bad}, timeout=30).status_code == 200


def test_client_raises_a_clear_exception_for_unknown_images(server, tmp_path):
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    with pytest.raises(MONAILabelClientException) as e:
        client.infer("litemedsam", "no_such_image", {"foreground": [[1, 1, 1]]})
    assert "not in the datastore" in str(e.value.msg) or "not in the datastore" in str(e.value)
