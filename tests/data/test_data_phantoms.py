"""lib.data.phantoms: determinism, anatomy on the right side, realistic and deliberately hard targets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lib.data.phantoms import CT_PHASES, LABELS, ct_phantom, mr_phantom

SMALL = (12, 96, 96)


@pytest.fixture(scope="module")
def ct_small() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    return {seed: ct_phantom(seed, SMALL) for seed in (0, 1, 2)}


@pytest.fixture(scope="module")
def mr_small() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    return {seed: mr_phantom(seed, SMALL) for seed in (0, 1)}


def _centroid_i(mask: np.ndarray) -> float:
    return float(np.nonzero(mask)[2].mean())


def test_labels_table() -> None:
    assert LABELS == {1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right", 5: "lesion", 6: "pancreas"}


@pytest.mark.parametrize("make", [ct_phantom, mr_phantom])
def test_deterministic_per_seed_and_different_across_seeds(make) -> None:
    a_img, a_lab = make(7, SMALL)
    b_img, b_lab = make(7, SMALL)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, c_lab = make(8, SMALL)
    assert (a_lab != c_lab).mean() > 0.01
    assert not np.array_equal(a_img, c_img)


def test_default_ct_shape_dtype_and_all_labels(ct_small) -> None:
    img, lab = ct_phantom(3)
    assert img.shape == lab.shape == (24, 160, 160)
    assert img.dtype == np.int16 and lab.dtype == np.uint8
    assert set(np.unique(lab)) == {0, *LABELS}
    # Organs are 3D: their cross-section changes from slice to slice.
    areas = (lab == 1).sum(axis=(1, 2))
    assert len(set(areas[areas > 0].tolist())) > 5


def test_every_label_present_in_small_phantoms(ct_small, mr_small) -> None:
    for _, lab in [*ct_small.values(), *mr_small.values()]:
        assert set(np.unique(lab)) == {0, *LABELS}


def test_orientation_is_asymmetric(ct_small, mr_small) -> None:
    # Patient right (liver, right kidney) = image left = small column index i; spine posterior = large j.
    for _, lab in [*ct_small.values(), *mr_small.values()]:
        mid = lab.shape[2] / 2
        assert _centroid_i(lab == 1) < mid - 5
        assert _centroid_i(lab == 2) > mid + 10
        assert _centroid_i(lab == 4) < mid < _centroid_i(lab == 3)
    img, _ = ct_small[0]
    bone_rows = np.nonzero(img > 400)[1]
    assert bone_rows.mean() > img.shape[1] / 2 + 5


def test_lesion_lies_inside_the_liver(ct_small, mr_small) -> None:
    ring = np.zeros((3, 3, 3), bool)
    ring[1] = ndimage.generate_binary_structure(2, 1)  # in-plane 4-neighbourhood
    for _, lab in [*ct_small.values(), *mr_small.values()]:
        lesion = lab == 5
        rim = ndimage.binary_dilation(lesion, ring) & ~lesion
        assert (lab[rim] == 1).mean() > 0.85  # surrounded by liver, not by fat or other organs
        # Present on a few slices only.
        assert 1 <= np.any(lesion, axis=(1, 2)).sum() <= 8


@pytest.fixture(scope="module")
def ct_phases() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    return {phase: [ct_phantom(seed, SMALL, phase=phase) for seed in (0, 1)] for phase in CT_PHASES}


def test_ct_intensities_are_hounsfield_like(ct_phases) -> None:
    for phase, phantoms in ct_phases.items():
        for img, lab in phantoms:
            med = {v: float(np.median(img[lab == v])) for v in LABELS}
            assert 50 <= med[1] <= 70
            assert 30 <= med[2] <= 62
            if phase == "portal":
                assert med[3] > med[1] + 20  # enhanced cortex
            else:
                # Unenhanced kidney: darker than the liver and within ~20 HU of the pancreas.
                assert med[3] < med[1] and abs(med[3] - med[6]) < 20
            # Low-contrast lesion: darker than liver, but by no more than ~20 HU.
            assert 0 < med[1] - med[5] <= 22
            assert img[0, 0, 0] < -900  # air outside the body
            assert img.max() > 400  # bone
            body_fat = img[(lab == 0) & (img > -200) & (img < -50)]
            assert body_fat.size > 1000
            # Noise and texture are present (std within a homogeneous organ).
            core = ndimage.binary_erosion(lab == 1, iterations=2)
            assert 6 < float(img[core].std()) < 25


def test_phase_is_drawn_per_seed_and_changes_only_intensities(ct_phases) -> None:
    drawn = []
    for seed in (0, 1):
        img, lab = ct_phantom(seed, SMALL)
        same = [p for p, ph in ct_phases.items() if np.array_equal(ph[seed][0], img)]
        assert len(same) == 1
        drawn.append(same[0])
        np.testing.assert_array_equal(lab, ct_phases["portal"][seed][1])
        np.testing.assert_array_equal(lab, ct_phases["native"][seed][1])
    more = {
        p
        for seed in (2, 3, 4, 5)
        for p in CT_PHASES
        if np.array_equal(ct_phantom(seed, SMALL), ct_phantom(seed, SMALL, phase=p))
    }
    assert set(drawn) | more == set(CT_PHASES)  # both phases occur among a handful of seeds
    with pytest.raises(ValueError, match="phase"):
        ct_phantom(0, SMALL, phase="arterial")


def test_mr_intensities_and_bright_lesion(mr_small) -> None:
    for img, lab in mr_small.values():
        assert img.min() >= 0 and img.max() < 2000
        liver, lesion = float(np.median(img[lab == 1])), float(np.median(img[lab == 5]))
        assert lesion > 1.3 * liver
        # Bias field: the same tissue differs between anterior and posterior halves.
        fat = (lab == 0) & (img > 400)
        rows = np.nonzero(fat)[1]
        ant = img[fat & (np.arange(img.shape[1])[None, :, None] < np.median(rows))]
        post = img[fat & (np.arange(img.shape[1])[None, :, None] >= np.median(rows))]
        assert abs(float(np.mean(ant)) - float(np.mean(post))) > 10


def _box_fill(mask3d: np.ndarray) -> float:
    """Mean fraction of the tight box covered by the mask, over slices with >= 20 pixels."""
    fills = []
    for sl in mask3d:
        if sl.sum() >= 20:
            j, i = np.nonzero(sl)
            fills.append(sl.sum() / ((np.ptp(j) + 1) * (np.ptp(i) + 1)))
    return float(np.mean(fills))


def test_targets_are_not_trivial_for_a_box(ct_small) -> None:
    for img, lab in ct_small.values():
        # Curved, thin pancreas and lobed liver fill little of their box; kidneys are bean-shaped.
        assert _box_fill(lab == 6) < 0.62
        assert _box_fill(lab == 1) < 0.7
        assert _box_fill(lab == 3) < 0.8
        # Pancreas touches non-fat tissue of similar density that is not pancreas (bowel, vessels...).
        panc = lab == 6
        rim = ndimage.binary_dilation(panc, iterations=1) & ~panc
        similar = (img[rim] > 0) & (img[rim] < 100) & (lab[rim] != 6)
        assert similar.mean() > 0.05


def test_liver_and_spleen_touch_the_stomach_wall(ct_phases) -> None:
    # The stomach wall and the abdominal wall (unlabelled) have the organs' intensity: part of each
    # organ's border is a same-intensity contact that no edge separates.
    for img, lab in ct_phases["native"]:
        for organ in (1, 2):
            m = lab == organ
            rim = ndimage.binary_dilation(m, iterations=1) & ~m
            level = float(np.median(img[ndimage.binary_erosion(m, iterations=2)]))
            similar = (lab[rim] == 0) & (np.abs(img[rim] - level) < 20)
            assert similar.mean() > 0.03, organ


def test_bad_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="J, I >= 32"):
        ct_phantom(0, (4, 16, 16))
    with pytest.raises(ValueError, match="spacing"):
        ct_phantom(0, SMALL, spacing=(0.0, 1.0, 1.0))
