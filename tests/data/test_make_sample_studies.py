"""scripts/make_sample_studies.py run as a subprocess: datastore layout, 2D set, skip/force, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from lib.data.dataset import Dataset, iter_slices
from lib.data.io import load_image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_sample_studies.py"
ARGS = ["--n-ct", "2", "--n-mr", "2", "--n-2d", "2", "--seed", "5"]


def _run(out: Path, *extra: str) -> str:
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), *ARGS, *extra],
        check=True,
        capture_output=True,
        text=True,
        cwd=out.parent,  # the script must not depend on the working directory
    )
    return res.stdout


def test_layout_skip_force_and_determinism(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    summary = _run(out)
    assert "2 CT + 2 MR" in summary and summary.count("\n") == 1

    studies, gt = out / "studies", out / "groundtruth"
    images = sorted(p.name for p in studies.iterdir() if p.is_file() and p.name != "dataset.json")
    assert images == ["ct_000.nii.gz", "ct_001.nii.gz", "mr_000.nii.gz", "mr_001.nrrd"]
    # 2 CT -> 1 unlabelled, 2 MR -> 1 unlabelled (the NRRD one); their ground truth is outside the datastore.
    assert sorted(p.name for p in (studies / "labels" / "final").iterdir()) == ["ct_000.nii.gz", "mr_000.nii.gz"]
    assert sorted(p.name for p in gt.iterdir()) == ["ct_001.nii.gz", "mr_001.nrrd"]

    spec = json.loads((studies / "dataset.json").read_text())
    assert spec["labels"]["0"] == "background" and spec["labels"]["1"] == "liver" and spec["labels"]["5"] == "lesion"
    assert [e["label"] for e in spec["test"]] == ["../groundtruth/ct_001.nii.gz", "../groundtruth/mr_001.nrrd"]
    ds = Dataset.from_dir(studies)  # every referenced file exists
    assert [c.case_id for c in ds.cases("training")] == ["ct_000", "mr_000"]
    assert [c.modality for c in ds.cases("test")] == ["CT", "MR"]

    ct = load_image(studies / "ct_000.nii.gz")
    lab = load_image(studies / "labels" / "final" / "ct_000.nii.gz")
    assert ct.array.shape == lab.array.shape == (24, 160, 160) and ct.modality == "CT"
    assert ct.spacing == (5.0, 1.5, 1.5) and lab.spacing == ct.spacing
    np.testing.assert_allclose(lab.image.GetOrigin(), ct.image.GetOrigin())
    assert set(np.unique(lab.array)) == {0, 1, 2, 3, 4, 5, 6}
    # CT phases alternate: ct_000 portal-venous (enhanced kidney cortex), ct_001 non-contrast.
    ct1, lab1 = load_image(studies / "ct_001.nii.gz"), load_image(gt / "ct_001.nii.gz")
    kidney = {n: float(np.median(c.array[lb.array == 3])) for n, (c, lb) in enumerate([(ct, lab), (ct1, lab1)])}
    assert kidney[0] > kidney[1] + 40, kidney
    mr = load_image(studies / "mr_001.nrrd")
    assert mr.array.shape == (20, 160, 160) and mr.array.min() >= 0

    s2d = Dataset.from_dir(out / "slices2d")
    assert len(s2d.training) == 1 and len(s2d.test) == 1
    img2d = load_image(s2d.training[0].image_path)
    lab2d = load_image(s2d.training[0].label_path)
    assert img2d.array.dtype == np.uint8 and img2d.array.shape == (160, 160)
    assert lab2d.array.dtype == np.uint8 and 1 < lab2d.array.max() <= 6  # class ids, not 0/255
    # Soft-tissue window: air is black, bone saturates white, soft tissue in between.
    assert img2d.array[0, 0] == 0 and img2d.array.max() == 255
    assert 100 < np.median(img2d.array[lab2d.array == 1]) < 160
    assert {s.label_name for s in iter_slices(s2d)} >= {"liver", "spleen", "kidney_left", "kidney_right"}

    # Existing data is kept without --force ...
    stamp = (studies / "ct_000.nii.gz").stat().st_mtime_ns
    assert "already" in _run(out)
    assert (studies / "ct_000.nii.gz").stat().st_mtime_ns == stamp
    # ... and regenerated with it, to identical label arrays.
    before = {p.name: load_image(p).array for p in [*(studies / "labels" / "final").iterdir(), *gt.iterdir()]}
    (studies / "stale.nii.gz").write_bytes(b"")
    _run(out, "--force")
    assert not (studies / "stale.nii.gz").exists()
    for name, arr in before.items():
        p = studies / "labels" / "final" / name
        np.testing.assert_array_equal(load_image(p if p.exists() else gt / name).array, arr)


def test_real_studies_join_an_existing_datastore_once(tmp_path: Path) -> None:
    from test_real_samples import fake_cache

    cache = fake_cache(tmp_path / "cache")  # a fake sdist's studies: runs offline, without the real cache
    out = tmp_path / "sample"
    small = ["--n-ct", "1", "--n-mr", "1", "--n-2d", "0"]
    # not in the cache: a note saying what to run, the phantoms alone, exit status 0
    note = _run(out, *small, "--real", "--cache", str(tmp_path / "empty"))
    assert "real studies not added" in note and "fetch_real_samples.py" in note
    assert not (out / "studies" / "real_ct_001.nii.gz").exists() and not (out / "real").exists()

    summary = _run(out, *small, "--real", "--cache", str(cache))  # added to the existing phantoms
    assert "already in" in summary and "added real_ct_001" in summary
    studies, gt = out / "studies", out / "groundtruth"
    spec = json.loads((studies / "dataset.json").read_text())
    assert spec["labels"]["1"] == "liver" and spec["labels"]["5"] == "lesion" and spec["labels"]["2"] == "spleen"
    assert [e["image"] for e in spec["training"]][-1] == "real_ct_001.nii.gz"
    assert spec["test"][-1] == {"image": "real_mr_001.nii.gz", "label": "../groundtruth/real_mr_001.nii.gz",
                                "modality": "MR"}
    assert spec["numTraining"] == len(spec["training"]) and spec["numTest"] == len(spec["test"])
    assert "NOT AN EXPERT" in spec["description"]
    ds = Dataset.from_dir(studies)
    assert (studies / "labels" / "final" / "real_ct_001.nii.gz").is_file()
    assert (gt / "real_mr_001.nii.gz").is_file() and not (studies / "labels" / "final" / "real_mr_001.nii.gz").exists()
    ct = load_image(studies / "real_ct_001.nii.gz")
    lab = load_image(studies / "labels" / "final" / "real_ct_001.nii.gz")
    assert ct.modality == "CT" and ct.array.shape == lab.array.shape
    np.testing.assert_allclose(lab.image.GetOrigin(), ct.image.GetOrigin())
    assert set(np.unique(lab.array)) == {0, 1, 2}  # the fake CT's liver and spleen, phantom values
    assert {c.case_id for c in ds.cases("test")} >= {"real_mr_001"}
    real = Dataset.from_dir(out / "real")
    assert [c.case_id for c in real.training] == ["real_ct_001"] and [c.case_id for c in real.test] == ["real_mr_001"]

    # a second run changes nothing
    stamps = {p: p.stat().st_mtime_ns for p in [*studies.rglob("*"), *(out / "real").rglob("*")] if p.is_file()}
    again = _run(out, *small, "--real", "--cache", str(cache))
    assert "real studies already in" in again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
