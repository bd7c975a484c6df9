"""lib.data.dataset: dataset.json parsing, exact slice sampling, case-level splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lib.data.dataset import Case, Dataset, DatasetError, SliceSample, iter_slices, split_cases


def test_reads_msd_dataset(tiny_dataset: Path) -> None:
    ds = Dataset.from_dir(tiny_dataset)
    assert ds.labels == {1: "a", 2: "b"}  # background dropped
    assert ds.modality == "CT" and ds.name == "tiny"
    assert [c.case_id for c in ds.cases("training")] == ["vol", "flat"]
    test = ds.cases("test")
    assert [c.case_id for c in test] == ["unseen"] and test[0].label_path is None
    assert ds.cases()[0].image_path == tiny_dataset / "imagesTr" / "vol.nii.gz"
    with pytest.raises(ValueError, match="split must be one of"):
        ds.cases("validation")


def test_iter_slices_yields_exactly_the_big_enough_targets(tiny_dataset: Path) -> None:
    ds = Dataset.from_dir(tiny_dataset)
    samples = list(iter_slices(ds, "training", min_area=20))
    got = [(s.case_id, s.slice_index, s.label_value, s.label_name, int(s.gt.sum())) for s in samples]
    assert got == [
        ("vol", 1, 1, "a", 25),
        ("vol", 2, 1, "a", 25),  # label 2 on slice 2 has 9 px < 20: skipped
        ("vol", 3, 1, "a", 25),
        ("vol", 4, 2, "b", 36),
        ("flat", None, 1, "a", 30),  # 2D label 2 has 10 px: skipped
    ]
    s = samples[1]
    assert isinstance(s, SliceSample) and s.gt.dtype == bool and s.image.shape == s.gt.shape == (16, 18)
    assert s.image[5, 5] == 2 * 100 - 1000  # really slice 2, raw HU
    assert s.modality == "CT"
    assert samples[-1].modality == "unknown" and samples[-1].image.dtype == np.uint8  # per-case modality
    small = [(x.slice_index, x.label_value) for x in iter_slices(ds, min_area=5) if x.case_id == "vol"]
    assert (2, 2) in small


def test_iter_slices_label_filter_cap_and_axis(tiny_dataset: Path) -> None:
    ds = Dataset.from_dir(tiny_dataset)
    only_b = [(s.case_id, s.slice_index) for s in iter_slices(ds, labels=["b"], min_area=5)]
    assert only_b == [("vol", 2), ("vol", 4), ("flat", None)]
    assert [s.label_value for s in iter_slices(ds, labels=[2], min_area=5)] == [2, 2, 2]
    capped = [(s.case_id, s.slice_index, s.label_value) for s in iter_slices(ds, max_per_case=2)]
    assert capped == [("vol", 1, 1), ("vol", 4, 2), ("flat", None, 1)]  # evenly spaced, not the first two
    # axis 2 (columns I): label "a" covers i = 3..7 with 3 slices x 5 rows = 15 px per column.
    side = [s for s in iter_slices(ds, axis=2, labels=["a"], min_area=15) if s.case_id == "vol"]
    assert [s.slice_index for s in side] == [3, 4, 5, 6, 7]
    assert side[0].gt.shape == (5, 16) and side[0].axis == 2
    with pytest.raises(ValueError, match="unknown label 'spleen'; this dataset has 1=a, 2=b"):
        list(iter_slices(ds, labels=["spleen"]))


def test_iter_slices_needs_ground_truth(tiny_dataset: Path) -> None:
    ds = Dataset.from_dir(tiny_dataset)
    with pytest.raises(ValueError, match="has no label"):
        list(iter_slices(ds, "test"))


def _write_spec(root: Path, spec) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))


def test_dataset_json_errors(tmp_path: Path, tiny_dataset: Path) -> None:
    with pytest.raises(DatasetError, match="no dataset.json"):
        Dataset.from_dir(tmp_path / "empty")
    _write_spec(tmp_path / "bad", '{"labels": {"1": "a"}, "training": [}')
    with pytest.raises(DatasetError, match="not valid JSON"):
        Dataset.from_dir(tmp_path / "bad")
    _write_spec(tmp_path / "nolabels", {"training": []})
    with pytest.raises(DatasetError, match="'labels'"):
        Dataset.from_dir(tmp_path / "nolabels")
    _write_spec(tmp_path / "badkey", {"labels": {"liver": "1"}, "training": []})
    with pytest.raises(DatasetError, match="must be an integer index"):
        Dataset.from_dir(tmp_path / "badkey")
    _write_spec(tmp_path / "nosplit", {"labels": {"1": "a"}})
    with pytest.raises(DatasetError, match="no 'training' or 'test'"):
        Dataset.from_dir(tmp_path / "nosplit")
    _write_spec(tmp_path / "badentry", {"labels": {"1": "a"}, "training": [{"label": "x.nii.gz"}]})
    with pytest.raises(DatasetError, match=r"training\[0\]"):
        Dataset.from_dir(tmp_path / "badentry")

    spec = json.loads((tiny_dataset / "dataset.json").read_text())
    spec["training"].append({"image": "imagesTr/gone.nii.gz", "label": "labelsTr/gone.nii.gz"})
    _write_spec(tiny_dataset, spec)
    with pytest.raises(DatasetError, match="2 missing file.*gone.nii.gz"):
        Dataset.from_dir(tiny_dataset)
    assert len(Dataset.from_dir(tiny_dataset, check_files=False).training) == 3


def test_split_cases_is_by_case_and_reproducible() -> None:
    cases = [Case(Path(f"c{n}.nii.gz"), Path(f"l{n}.nii.gz"), f"c{n}") for n in range(20)]
    train, val = split_cases(cases, 0.25, seed=3)
    ids_t, ids_v = {c.case_id for c in train}, {c.case_id for c in val}
    assert not ids_t & ids_v and ids_t | ids_v == {c.case_id for c in cases}
    assert len(val) == 5
    assert split_cases(cases, 0.25, seed=3) == (train, val)
    assert {c.case_id for c in split_cases(cases, 0.25, seed=4)[1]} != ids_v
    assert [c.case_id for c in train] == sorted(ids_t, key=lambda s: int(s[1:]))  # input order kept
    tr, va = split_cases(cases[:2], 0.1, seed=0)
    assert len(tr) == 1 and len(va) == 1
    assert split_cases(cases, 0.0) == (cases, [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_cases(cases, 1.0)
