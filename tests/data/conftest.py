"""Fixtures for tests/data: a tiny hand-made MSD dataset whose slices and areas are known exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


def write_image(array: np.ndarray, path: Path, spacing=None) -> Path:
    """Write an array ((K, J, I) or (H, W)) with SimpleITK; spacing in array order."""
    img = sitk.GetImageFromArray(array)
    if spacing is not None:
        img.SetSpacing([float(s) for s in reversed(spacing)])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """MSD folder with one 3D CT case, one 2D PNG case and one unlabelled test image.

    3D case ``vol`` (K, J, I) = (5, 16, 18), label 1 "a" 5x5 = 25 px on slices 1, 2, 3; label 2 "b"
    3x3 = 9 px on slice 2 and 6x6 = 36 px on slice 4. Image values encode the slice (k * 100 - 1000) so a
    test can tell which slice it got. 2D case ``flat`` (20, 24): label 1 = 30 px, label 2 = 10 px.
    """
    root = tmp_path / "ds"
    img = np.zeros((5, 16, 18), dtype=np.int16)
    for k in range(5):
        img[k] = k * 100 - 1000
    img[:, 0, 0] = 300  # HU-like range so the modality guess says CT
    lab = np.zeros(img.shape, dtype=np.uint8)
    lab[1:4, 2:7, 3:8] = 1
    lab[2, 10:13, 10:13] = 2
    lab[4, 8:14, 8:14] = 2
    write_image(img, root / "imagesTr" / "vol.nii.gz", spacing=(3.0, 0.8, 0.8))
    write_image(lab, root / "labelsTr" / "vol.nii.gz", spacing=(3.0, 0.8, 0.8))

    flat = (np.arange(20 * 24).reshape(20, 24) % 251).astype(np.uint8)
    flat_lab = np.zeros((20, 24), dtype=np.uint8)
    flat_lab[0:5, 0:6] = 1
    flat_lab[10:12, 10:15] = 2
    write_image(flat, root / "imagesTr" / "flat.png")
    write_image(flat_lab, root / "labelsTr" / "flat.png")
    write_image(img, root / "imagesTs" / "unseen.nii.gz")

    spec = {
        "name": "tiny",
        "labels": {"0": "background", "1": "a", "2": "b"},
        "modality": {"0": "CT"},
        "training": [
            {"image": "./imagesTr/vol.nii.gz", "label": "./labelsTr/vol.nii.gz"},
            {"image": "./imagesTr/flat.png", "label": "./labelsTr/flat.png", "modality": "unknown"},
        ],
        "test": ["./imagesTs/unseen.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    return root
