"""LiteMedSAM with its real weights: geometry of the 256² letterbox and its inverse, prompts, weights."""

import numpy as np
import pytest

from lib.tools.litemedsam import LiteMedSAMTool, released_checkpoint


@pytest.fixture(scope="module")
def tool():
    return LiteMedSAMTool()


def ellipse_image(h, w, cy, cx, ry, rx):
    yy, xx = np.mgrid[:h, :w]
    m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    img = np.where(m, 0.75, 0.2).astype(np.float32) + np.random.default_rng(1).normal(0, 0.02, (h, w)).astype(
        np.float32)
    return np.clip(img, 0, 1), m


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_released_checkpoint_is_the_shipped_file():
    path, sha = released_checkpoint()
    assert path.is_file() and len(sha) == 64


def test_preprocess_letterboxes_longest_side_to_256():
    x, (h, w) = LiteMedSAMTool.preprocess(np.random.rand(300, 517).astype(np.float32))
    assert x.shape == (1, 3, 256, 256) and (h, w) == (149, 256)
    assert float(x[..., h:, :].abs().sum()) == 0.0  # zero padding at the bottom only
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


@pytest.mark.parametrize("shape,centre", [((300, 517), (90, 380)), ((517, 300), (380, 90))])
def test_box_on_a_non_square_slice_maps_back_to_the_right_pixels(tool, shape, centre):
    h, w = shape
    cy, cx = centre
    img, m = ellipse_image(h, w, cy, cx, 40, 45)
    ys, xs = np.nonzero(m)
    sess = tool.start(img)
    out = sess.predict(box=(xs.min(), ys.min(), xs.max(), ys.max()))
    assert out.mask.shape == (h, w) and out.mask.dtype == bool
    assert out.logits.shape == (1, 256, 256)
    assert dice(out.mask, m) > 0.9
    # the transposed object (a classic axis bug) would not match
    assert dice(out.mask, m.T[:h, :w] if m.T.shape == m.shape else np.zeros_like(m)) < 0.5


def test_rgb_input_matches_gray_input(tool):
    img, m = ellipse_image(120, 160, 60, 90, 30, 35)
    rgb = (np.repeat(img[..., None], 3, -1) * 255).astype(np.uint8)
    a = tool.start(rgb).predict(box=(55, 30, 125, 90))
    b = tool.start(img).predict(box=(55, 30, 125, 90))
    assert dice(a.mask, m) > 0.9 and dice(a.mask, b.mask) > 0.97


def test_points_reach_the_decoder(tool):
    # released weights were box-trained (clicks are what interactive fine-tuning fixes), so only check
    # that point prompts are encoded at the right place: moving the click moves the mask
    img, _ = ellipse_image(120, 160, 60, 40, 20, 25)
    img2, _ = ellipse_image(120, 160, 60, 120, 20, 25)
    both = np.maximum(img, img2)
    sess = tool.start(both)
    left = sess.predict(points=[(40, 60)], labels=[1])
    right = sess.predict(points=[(120, 60)], labels=[1])
    assert left.mask.shape == (120, 160)
    # where the (possibly sub-threshold) evidence peaks follows the click
    col = lambda out: np.unravel_index(out.logits[0].argmax(), out.logits[0].shape)[1]  # noqa: E731
    assert col(left) < col(right)
