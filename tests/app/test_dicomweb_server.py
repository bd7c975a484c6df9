"""The app on a DICOMweb datastore (a real Orthanc, issue 18): geometry proven against the same studies as NIfTI,
JPEG 2000 series, labels saved as DICOM SEG and trained on, and bad input.

Fixtures (tests/app/conftest.py): one Orthanc and one server for the session; the real CT (plain and lossless JPEG
2000) and the real MR given an oblique direction, each also kept as the NIfTI it was written from ("twin").

Geometry: the agent's label for a series (MONAI Label downloads it from Orthanc and converts it) must land on the
voxels of its label for the NIfTI twin, sent to the same server as a file: no flips, no offsets, for an axial CT and
an MR whose direction is not the identity. The agent runs on one slice (``scope: "slice"``) to keep the suite's
time; the converted volume itself is checked voxel for voxel and in geometry (origin, spacing, direction), so a
volume label, which is made of such slices, lands the same way. Requests wait without a read timeout."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk
from monailabel.client import MONAILabelClient
from test_interactive_server import dice, organ_prompt

pytestmark = pytest.mark.server

SERIES = ["real_ct_001", "real_ct_001-jpeg2000", "real_mr_oblique"]
TWIN = {"real_ct_001": "real_ct_001", "real_ct_001-jpeg2000": "real_ct_001", "real_mr_oblique": "real_mr_oblique"}


def ijk(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def roi_for(dw, name: str):
    """(label value, k, tight liver roi on its largest slice) from the twin's ground truth."""
    gt_file = (dw["studies"] / "labels" / "final" / "real_ct_001.nii.gz") if name.startswith("real_ct") \
        else dw["mr_groundtruth"]
    liver = dw["labels"]["liver"]
    k, _, _, roi = organ_prompt(ijk(gt_file), liver)
    return liver, k, roi


def infer(srv, model: str, params: dict, folder: Path, image: str = "", file: Path | None = None):
    """(label [i, j, k], result JSON) of one request: on a datastore image id, or on a file sent with it."""
    folder.mkdir(parents=True, exist_ok=True)
    out, res = MONAILabelClient(srv.url, tmpdir=str(folder)).infer(model, image, params,
                                                                   file=str(file) if file else None)
    return ijk(out), res


def test_a_series_converts_to_its_nifti_twin_voxel_for_voxel(dicomweb_server, dicomweb_studies, tmp_path):
    dw = dicomweb_studies
    for name in SERIES:
        sid = dw["series"][name]
        r = requests.get(f"{dicomweb_server.url}/datastore/image", params={"image": sid}, timeout=(30, None))
        assert r.status_code == 200, r.text[:500]
        got_path = tmp_path / f"{name}.nii.gz"
        got_path.write_bytes(r.content)
        got, twin = sitk.ReadImage(str(got_path)), sitk.ReadImage(str(dw["studies"] / f"{TWIN[name]}.nii.gz"))
        assert got.GetSize() == twin.GetSize(), name
        assert np.array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(twin)), name
        assert np.allclose(got.GetOrigin(), twin.GetOrigin(), atol=1e-4), name
        assert np.allclose(got.GetSpacing(), twin.GetSpacing(), atol=1e-6), name
        assert np.allclose(got.GetDirection(), twin.GetDirection(), atol=1e-6), name
        if name == "real_mr_oblique":
            assert not np.allclose(got.GetDirection(), np.eye(3).ravel(), atol=0.1)
    # JPEG 2000 is what Orthanc stores for that series (it cannot transcode it; the app asks for it as stored)
    first = sorted(Path(dw["manifest"]["real_ct_001-jpeg2000"]["folder"]).glob("*.dcm"))[0]
    assert pydicom.dcmread(first, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"


@pytest.mark.parametrize("name", SERIES)
def test_the_agent_label_of_a_series_lands_on_the_voxels_of_its_nifti_twin(dicomweb_server, dicomweb_studies,
                                                                            tmp_path, name):
    dw = dicomweb_studies
    liver, k, roi = roi_for(dw, name)
    params = {"label": "liver", "roi": roi, "scope": "slice"}
    t0 = time.perf_counter()
    from_dicom, res = infer(dicomweb_server, "agent_handoff", params, tmp_path / "dicom",
                            image=dw["series"][name])
    t_dicom = time.perf_counter() - t0
    twin = dw["studies"] / f"{TWIN[name]}.nii.gz"
    from_nifti, _ = infer(dicomweb_server, "agent_handoff", params, tmp_path / "nifti", file=twin)
    assert from_dicom.shape == from_nifti.shape == ijk(twin).shape
    a, b = from_dicom == liver, from_nifti == liver
    agreement = dice(a, b)
    print(f"\n{name}: liver on k={k}, {a.sum()} voxels from DICOM, {b.sum()} from NIfTI, Dice {agreement:.4f}, "
          f"first request {t_dicom:.1f}s")
    assert a[:, :, k].sum() > 50 and res["slice"] == k
    assert agreement >= 0.99, agreement


def test_bad_input_is_a_clear_4xx_or_503_and_nothing_is_lost(dicomweb_server, dicomweb_studies, orthanc):
    dw = dicomweb_studies
    liver, k, roi = roi_for(dw, "real_ct_001")
    params = {"params": json.dumps({"label": "liver", "roi": roi, "scope": "slice"})}

    def post(image):
        return requests.post(f"{dicomweb_server.url}/infer/agent_handoff", params={"image": image, "output": "json"},
                             data=params, timeout=(30, None))

    r = post("1.2.3.4.5.6.7.8.9")  # no such series
    assert r.status_code == 404 and "is not a series on the DICOMweb server" in r.text, r.text
    # Orthanc down: a 503 naming it; back up, the same series answer again (nothing was lost)
    orthanc.stop()
    try:
        r = post(dw["series"]["real_ct_001"])
        assert r.status_code == 503 and "does not answer" in r.text and orthanc.url in r.text, r.text
        assert dicomweb_server.alive()
    finally:
        orthanc.start()
    r = post(dw["series"]["real_ct_001"])
    assert r.status_code == 200, r.text


def test_a_saved_label_is_a_dicom_seg_in_orthanc_and_trains_agent_sft(dicomweb_server, dicomweb_studies, orthanc):
    from dicomweb_client import DICOMwebClient

    dw = dicomweb_studies
    sid = dw["series"]["real_ct_001"]
    label_file = dw["studies"] / "labels" / "final" / "real_ct_001.nii.gz"
    # only kidney_left (3) and liver (1): MONAI Label alone would read them back as segments 1 and 2
    lab = sitk.ReadImage(str(label_file))
    arr = sitk.GetArrayFromImage(lab)
    kept = np.where(np.isin(arr, [1, 3]), arr, 0).astype(np.uint8)
    sent = sitk.GetImageFromArray(kept)
    sent.CopyInformation(lab)
    sent_file = dw["root"] / "liver_kidney.nii.gz"
    sitk.WriteImage(sent, str(sent_file), True)
    with open(sent_file, "rb") as fh:
        r = requests.put(f"{dicomweb_server.url}/datastore/label", params={"image": sid, "tag": "final"},
                         files={"label": (sent_file.name, fh)}, data={"params": json.dumps({})}, timeout=(30, None))
    assert r.status_code == 200, r.text
    # in Orthanc: a SEG series that refers to the CT series, segments named from the app's label set
    client = DICOMwebClient(orthanc.url)
    segs = [pydicom.Dataset.from_json(s) for s in client.search_for_series(search_filters={"Modality": "SEG"})]
    assert len(segs) == 1
    seg_uid = str(segs[0].SeriesInstanceUID)
    meta = pydicom.Dataset.from_json(client.retrieve_series_metadata(str(segs[0].StudyInstanceUID), seg_uid)[0])
    assert meta.ReferencedSeriesSequence[0].SeriesInstanceUID == sid
    assert sorted(s.SegmentLabel for s in meta.SegmentSequence) == ["kidney_left", "liver"]
    # a SEG is not an image: asking the agent to segment it is a 404 saying what it is
    r = requests.post(f"{dicomweb_server.url}/infer/agent_handoff", params={"image": seg_uid, "output": "json"},
                      data={"params": json.dumps({"label": "liver"})}, timeout=(30, None))
    assert r.status_code == 404 and "is a SEG series" in r.text, r.text
    # agent_sft trains on it: the datastore reads the SEG back with the label values (1 and 3) on the CT's grid
    r = requests.post(f"{dicomweb_server.url}/train/agent_sft", params={"run_sync": "true"},
                      json={"steps": 20, "max_slices_per_case": 2, "volume_slices_per_target": 0,
                            "labels": ["liver", "kidney_left"], "seed": 0},
                      timeout=(30, None))
    assert r.status_code == 200, (r.text[:2000], dicomweb_server.tail())
    stats = requests.get(f"{dicomweb_server.url}/info/", timeout=30).json()["train_stats"]["agent_sft"]
    assert stats["status"] == "done" and stats["n_images"] == 1, stats
    cached = list((dicomweb_server.root / "cache").rglob(f"labels/final/{sid}.nii.gz"))
    assert len(cached) == 1
    back = sitk.ReadImage(str(cached[0]))
    assert np.array_equal(sitk.GetArrayFromImage(back), kept)  # the same voxels, the same values
