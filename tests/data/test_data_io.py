"""lib.data.io: geometry-preserving round trips, every ImageLoadError case, slicing."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lib.data.io import (
    ImageLoadError,
    get_slice,
    load_image,
    normalize_modality,
    save_label_like,
    volume_from_array,
)

# Oblique and flipped: a swapped or mirrored axis anywhere lands the marker somewhere else.
_C, _S = np.cos(0.4), np.sin(0.4)
DIRECTION = (_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, -1.0)
ORIGIN = (12.5, -30.0, 41.0)
SPACING_KJI = (2.5, 0.9, 0.7)


def _asymmetric_ct() -> np.ndarray:
    arr = np.full((6, 9, 11), -1000, dtype=np.int16)
    arr[4, 1:7, 8] = 250  # L-shaped marker, off-centre on slice 4
    arr[4, 6, 8:11] = 250
    arr[0, 0, 0] = -1024
    return arr


def _assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd"])
def test_3d_roundtrip_keeps_values_geometry_and_label_geometry(tmp_path: Path, ext: str) -> None:
    arr = _asymmetric_ct()
    src = volume_from_array(arr, spacing=SPACING_KJI, origin=ORIGIN, direction=DIRECTION)
    sitk.WriteImage(src.image, str(tmp_path / f"img{ext}"))

    vol = load_image(tmp_path / f"img{ext}")
    np.testing.assert_array_equal(vol.array, arr)
    assert vol.array.shape == (6, 9, 11) and vol.is_3d and not vol.is_rgb
    assert vol.spacing == pytest.approx(SPACING_KJI)
    _assert_same_geometry(vol.image, src.image)
    assert vol.modality == "CT"
    # The marker voxel sits at the same physical point after the round trip.
    idx = (8, 1, 4)  # (i, j, k)
    np.testing.assert_allclose(
        vol.image.TransformIndexToPhysicalPoint(idx), src.image.TransformIndexToPhysicalPoint(idx), atol=1e-4
    )

    label = (arr == 250).astype(np.int64) * 3
    out = save_label_like(label, vol, tmp_path / "labels" / f"lab{ext}")
    back = load_image(out)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, label)
    _assert_same_geometry(back.image, vol.image)


def test_label_dtype_widens_to_uint16_and_accepts_bool_and_whole_floats(tmp_path: Path) -> None:
    ref = volume_from_array(np.zeros((2, 4, 5), np.int16), spacing=(1.0, 1.0, 1.0))
    big = np.zeros((2, 4, 5), np.int32)
    big[1, 2, 3] = 300
    assert load_image(save_label_like(big, ref, tmp_path / "big.nrrd")).array.dtype == np.uint16
    assert load_image(save_label_like(big > 0, ref, tmp_path / "b.nii.gz")).array.max() == 1
    assert load_image(save_label_like(big.astype(np.float32), ref, tmp_path / "f.nii.gz")).array[1, 2, 3] == 300


@pytest.mark.parametrize(
    "label, match",
    [
        (np.zeros((2, 4, 4), np.uint8), "does not match"),
        (np.full((2, 4, 5), 0.5, np.float32), "whole numbers"),
        (np.full((2, 4, 5), -1, np.int16), ">= 0"),
        (np.full((2, 4, 5), 70000, np.int32), "uint16"),
    ],
)
def test_save_label_rejects_bad_labels(tmp_path: Path, label: np.ndarray, match: str) -> None:
    ref = volume_from_array(np.zeros((2, 4, 5), np.int16))
    with pytest.raises(ValueError, match=match):
        save_label_like(label, ref, tmp_path / "x.nii.gz")


def test_save_label_rejects_bad_extension_and_3d_png(tmp_path: Path) -> None:
    ref = volume_from_array(np.zeros((2, 4, 5), np.int16))
    with pytest.raises(ValueError, match="use one of"):
        save_label_like(np.zeros((2, 4, 5), np.uint8), ref, tmp_path / "x.tif")
    with pytest.raises(ValueError, match="PNG labels must be 2D"):
        save_label_like(np.zeros((2, 4, 5), np.uint8), ref, tmp_path / "x.png")


def test_png_gray_and_rgb(tmp_path: Path) -> None:
    gray = (np.arange(7 * 9).reshape(7, 9) * 3).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(gray), str(tmp_path / "g.png"))
    g = load_image(tmp_path / "g.png")
    np.testing.assert_array_equal(g.array, gray)
    assert not g.is_3d and g.modality == "unknown"

    rgb = np.zeros((7, 9, 3), np.uint8)
    rgb[1, 2] = (255, 10, 20)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "c.png"))
    c = load_image(tmp_path / "c.png")
    assert c.array.shape == (7, 9, 3) and c.is_rgb and c.spatial_shape == (7, 9)
    np.testing.assert_array_equal(c.array[1, 2], (255, 10, 20))
    lab = np.zeros((7, 9), np.uint8)
    lab[1, 2] = 5  # stored as a value, not 0/255
    back = load_image(save_label_like(lab, c, tmp_path / "lab.png"))
    assert back.array.shape == (7, 9) and back.array[1, 2] == 5 and back.array.sum() == 5

    rgba = np.concatenate([rgb, np.full((7, 9, 1), 255, np.uint8)], axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(rgba, isVector=True), str(tmp_path / "a.png"))
    a = load_image(tmp_path / "a.png")
    assert a.array.shape == (7, 9, 3) and a.is_rgb  # alpha dropped
    np.testing.assert_array_equal(a.array, rgb)


def test_jpg_loads_as_2d(tmp_path: Path) -> None:
    rgb = np.full((8, 10, 3), 128, np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "p.jpg"))
    v = load_image(tmp_path / "p.jpg")
    assert v.array.shape[:2] == (8, 10) and not v.is_3d


def _write_dicom_series(folder: Path, arr: np.ndarray, spacing_xyz=(0.8, 0.7, 2.5), origin=(10.0, 20.0, 30.0)) -> None:
    vol = sitk.GetImageFromArray(arr)
    vol.SetSpacing(spacing_xyz)
    vol.SetOrigin(origin)
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.77"
    for k in range(arr.shape[0]):
        sl = vol[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{uid}.3.{k}",
            "0020|000d": f"{uid}.1",
            "0020|000e": f"{uid}.2",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(str(v) for v in vol.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:02d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder_and_single_file(tmp_path: Path) -> None:
    arr = (np.arange(3 * 8 * 10).reshape(3, 8, 10) + 50).astype(np.int16)  # not HU-like: tag decides
    _write_dicom_series(tmp_path / "series", arr)
    vol = load_image(tmp_path / "series")
    np.testing.assert_array_equal(vol.array, arr)
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert vol.modality == "CT"  # from the DICOM Modality tag
    one = load_image(tmp_path / "series" / "slice01.dcm")
    np.testing.assert_array_equal(one.array.reshape(8, 10), arr[1])
    assert one.modality == "CT"


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(tmp_path / "empty.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(ImageLoadError, match="cannot read"):
        load_image(tmp_path / "junk.nii.gz")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10)
    with pytest.raises(ImageLoadError, match="cannot read"):
        load_image(tmp_path / "junk.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageLoadError, match="unsupported image type '.txt'"):
        load_image(tmp_path / "notes.txt")
    (tmp_path / "nodicom").mkdir()
    with pytest.raises(ImageLoadError, match="no readable DICOM series"):
        load_image(tmp_path / "nodicom")
    assert issubclass(ImageLoadError, ValueError)


def test_4d_and_multichannel_3d_are_rejected_naming_supported_dims(tmp_path: Path) -> None:
    frames = [sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)) for _ in range(2)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "t.nii.gz"))
    with pytest.raises(ImageLoadError, match=r"4D image.*supported are 2D gray \(H, W\).*3D \(K, J, I\)"):
        load_image(tmp_path / "t.nii.gz")
    vec = sitk.GetImageFromArray(np.zeros((3, 4, 5, 2), np.float32), isVector=True)
    sitk.WriteImage(vec, str(tmp_path / "v.nrrd"))
    with pytest.raises(ImageLoadError, match="2 components per pixel"):
        load_image(tmp_path / "v.nrrd")


def test_modality_guess_and_explicit(tmp_path: Path) -> None:
    mr = volume_from_array(np.linspace(0, 900, 60).reshape(3, 4, 5).astype(np.int16))
    sitk.WriteImage(mr.image, str(tmp_path / "mr.nii.gz"))
    assert load_image(tmp_path / "mr.nii.gz").modality == "unknown"
    assert load_image(tmp_path / "mr.nii.gz", modality="MRI").modality == "MR"
    assert normalize_modality(" t2 ") == "MR" and normalize_modality("ct") == "CT"
    assert normalize_modality("pet") == "PET" and normalize_modality("") is None


def test_get_slice_axes_and_errors() -> None:
    arr = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    vol = volume_from_array(arr)
    np.testing.assert_array_equal(get_slice(vol, 2), arr[2])
    assert get_slice(vol, 1, axis=1).shape == (3, 5)
    np.testing.assert_array_equal(get_slice(vol, 4, axis=2), arr[:, :, 4])
    with pytest.raises(IndexError, match=r"valid indices are 0\.\.2"):
        get_slice(vol, 3)
    with pytest.raises(IndexError, match=r"0\.\.4"):
        get_slice(vol, -1, axis=2)
    with pytest.raises(ValueError, match="axis"):
        get_slice(vol, 0, axis=3)

    flat = volume_from_array(np.ones((4, 5), np.uint8))
    assert get_slice(flat, 0).shape == (4, 5) and get_slice(flat, None).shape == (4, 5)
    with pytest.raises(IndexError, match="2D"):
        get_slice(flat, 1)
