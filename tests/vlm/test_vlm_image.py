"""The model image: corner-aligned stretch, exact coordinate inverse, green alpha-0.5 overlay."""

from __future__ import annotations

import numpy as np
import pytest

from lib.agent.vlm_image import model_image, model_to_slice, overlay, slice_to_model, stretch, stretch_mask


def test_stretch_keeps_flat_images_flat_and_corners_aligned():
    img = np.full((300, 517), 0.5, dtype=np.float32)
    out = stretch(img, 512)
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    assert (out == 128).all()
    ramp = np.tile(np.linspace(0.0, 1.0, 300, dtype=np.float32), (40, 1))  # (40, 300): brightness = column
    out = stretch(ramp, 512)[..., 0].astype(int)
    # first and last columns land on the first and last model columns (corner-aligned, like the grammar)
    assert out[:, 0].max() <= 1 and out[:, -1].min() >= 254
    assert (np.diff(out[0]) >= 0).all()


def test_rgb_channels_stay_separate():
    rgb = np.zeros((50, 70, 3), dtype=np.uint8)
    rgb[..., 2] = 200
    out = stretch(rgb, 64)
    assert (out[..., 0] == 0).all() and (out[..., 2] == 200).all()


@pytest.mark.parametrize("shape", [(300, 517), (517, 300), (1024, 1024), (37, 5)])
def test_coordinate_maps_are_exact_inverses(shape):
    for x, y in [(0, 0), (shape[1] - 1, shape[0] - 1), (shape[1] // 3, shape[0] // 2)]:
        u, v = slice_to_model(x, y, shape)
        assert model_to_slice(u, v, shape) == pytest.approx((x, y), abs=1e-9)
    assert slice_to_model(shape[1] - 1, shape[0] - 1, shape) == pytest.approx((511, 511))


def test_overlay_is_green_at_alpha_half_and_leaves_the_rest():
    plain = np.full((4, 4, 3), 100, dtype=np.uint8)
    mask = np.zeros((4, 4), dtype=bool)
    mask[1, 2] = True
    out = overlay(plain, mask)
    assert tuple(out[1, 2]) == (50, 178, 50)  # 0.5 * 100 + 0.5 * (0, 255, 0), rounded half to even
    assert (out[~mask] == 100).all()


def test_model_image_draws_the_mask_on_the_plain_image_only():
    img = np.full((30, 40), 0.2, dtype=np.float32)
    mask = np.zeros((30, 40), dtype=bool)
    mask[10:20, 5:15] = True
    first = np.asarray(model_image(img, None, 64))
    later = np.asarray(model_image(img, mask, 64))
    assert (first == np.asarray(model_image(img, np.zeros_like(mask), 64))).all()
    greened = later[..., 1] > later[..., 0]
    assert (greened == stretch_mask(mask, 64)).all()
    with pytest.raises(ValueError, match="must have the slice"):
        model_image(img, mask[:5], 64)
