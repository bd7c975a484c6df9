"""Client IJK -> (slice, x, y) with a deliberately asymmetric, oblique image in NIfTI and NRRD.

nibabel / pynrrd are the independent references: their arrays are indexed [i, j, k] in file voxel
order, exactly what 3D Slicer's IJK means.
"""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from lib.data.ijk import request_to_slice_prompts
from lib.data.io import get_slice, load_image, save_label_like


@pytest.fixture(params=[".nii.gz", ".nrrd"])
def asymmetric_image(tmp_path, request):
    # (K, J, I) = (7, 11, 13): every axis a different length, an L-shaped marker off-centre,
    # and an oblique, flipped direction so any axis swap or flip lands somewhere else.
    arr = np.zeros((7, 11, 13), dtype=np.int16)
    arr[5, 2:8, 9] = 100  # vertical bar at i=9, j=2..7 on k=5
    arr[5, 7, 9:12] = 100  # foot of the L at j=7, i=9..11
    img = sitk.GetImageFromArray(arr)
    c, s = np.cos(0.3), np.sin(0.3)
    img.SetDirection((c, -s, 0, s, c, 0, 0, 0, -1))
    img.SetSpacing((0.7, 1.3, 2.5))
    img.SetOrigin((10.0, -20.0, 5.0))
    path = tmp_path / f"asym{request.param}"
    sitk.WriteImage(img, str(path))
    return path


def ijk_array(path):
    """Array indexed [i, j, k] as Slicer's IJK, read without SimpleITK."""
    if str(path).endswith(".nrrd"):
        import nrrd

        data, _ = nrrd.read(str(path))  # pynrrd: Fortran order, data[i, j, k]
        return np.asarray(data)
    return np.asarray(nib.load(str(path)).dataobj)


def test_click_lands_on_the_voxel_the_client_clicked(asymmetric_image):
    ref = ijk_array(asymmetric_image)
    vol = load_image(asymmetric_image)
    size_ijk = tuple(reversed(vol.spatial_shape))
    assert ref.shape == size_ijk
    for i, j, k in zip(*np.nonzero(ref)):
        p = request_to_slice_prompts({"foreground": [[int(i), int(j), int(k)]]}, size_ijk)
        assert p.slice_index == k
        x, y = p.points[0]
        assert get_slice(vol, p.slice_index)[y, x] == 100
    # a transposed reading (x=j, y=i) would hit the marker here; the right one must not
    p = request_to_slice_prompts({"foreground": [[7, 9, 5]]}, size_ijk)
    assert ref[7, 9, 5] == 0 and ref[9, 7, 5] == 100
    assert get_slice(vol, 5)[p.points[0][1], p.points[0][0]] == 0


def test_written_label_comes_back_at_the_same_ijk(asymmetric_image, tmp_path):
    vol = load_image(asymmetric_image)
    p = request_to_slice_prompts({"foreground": [[11, 7, 5]]}, tuple(reversed(vol.spatial_shape)))
    label = np.zeros(vol.spatial_shape, dtype=np.uint8)
    x, y = p.points[0]
    label[p.slice_index, y, x] = 3
    suffix = ".nrrd" if str(asymmetric_image).endswith(".nrrd") else ".nii.gz"
    out = save_label_like(label, vol, tmp_path / f"label{suffix}")
    back = ijk_array(out)
    assert back.shape == ijk_array(asymmetric_image).shape
    assert back[11, 7, 5] == 3 and back.sum() == 3
    ref_img, out_img = sitk.ReadImage(str(asymmetric_image)), sitk.ReadImage(str(out))
    assert np.allclose(ref_img.GetDirection(), out_img.GetDirection())
    assert np.allclose(ref_img.GetOrigin(), out_img.GetOrigin())


def test_roi_becomes_an_inclusive_xy_box_on_the_roi_slice():
    p = request_to_slice_prompts({"roi": [2, 9, 1, 6, 4, 4]}, (13, 11, 7))
    assert p.box == (2, 1, 9, 6) and p.slice_index == 4 and p.points == []


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"foreground": [[13, 0, 0]]}, "outside the image"),
        ({"foreground": [[0, 0, 7]]}, "outside the image"),
        ({"foreground": [[1, 1, 1]], "background": [[2, 2, 2]]}, "not on slice"),
        ({"foreground": [["a", 1, 1]]}, "not a list of numbers"),
        ({"foreground": [[1]]}, r"must be \[i, j\] or \[i, j, k\]"),
        ({}, "cannot tell which slice"),
        ({"slice": 3}, "no prompt"),
        ({"roi": [5, 2, 1, 6, 4, 4]}, "i0 > i1"),
        ({"roi": [1, 2, 3]}, "roi"),
        ({"slice": 9, "roi": [1, 2, 1, 2]}, "slice 9 is outside"),
    ],
)
def test_bad_prompts_are_explained(request_, message):
    with pytest.raises(ValueError, match=message):
        request_to_slice_prompts(request_, (13, 11, 7))


def test_2d_images_have_no_slice():
    p = request_to_slice_prompts({"foreground": [[4, 3]], "background": [[1, 1, 0]]}, (13, 11))
    assert p.slice_index is None and p.points == [(4, 3), (1, 1)] and p.labels == [1, 0]
