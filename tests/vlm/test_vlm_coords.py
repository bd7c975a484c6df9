"""Coordinate round trip on non-square slices: a 0..999 action emitted on the 512² model image lands on the
intended pixel of the original, through the inference path (VLMPolicy -> env) and the training paths (SFT export,
RL env step, verl scorer), all of which use ``lib.agent.coords`` via ``lib.agent.grammar``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lib.agent import coords
from lib.agent.actions import Box, Point
from lib.agent.env import EnvConfig, SegmentationEnv
from lib.agent.grammar import parse
from lib.agent.policies.base import Prefixed, StopPolicy
from lib.agent.policies.vlm import VLMConfig, VLMPolicy
from lib.agent.rollout import rollout
from lib.agent.vlm_image import MODEL_IMAGE_SIZE, model_image
from lib.learning.vlm.sft import ExportConfig, export_sft

S = MODEL_IMAGE_SIZE
SHAPES = [(300, 517), (517, 300)]  # (H, W): taller and wider than the model image along one axis each


def marker_pixels(shape):
    h, w = shape
    return [(0, 0), (w - 1, h - 1), (w - 1, 0), (w // 3, (2 * h) // 3), (123 % w, 77 % h)]


def point_call(gx: int, gy: int, kind: str = "positive") -> str:
    args = {"point_2d": [gx, gy], "point_type": kind}
    return f"<tool_call>{json.dumps({'name': 'add_point', 'arguments': args})}</tool_call>"


def box_call(g: list[int]) -> str:
    return f"<tool_call>{json.dumps({'name': 'add_bbox', 'arguments': {'bbox_2d': g}})}</tool_call>"


class Scripted(VLMPolicy):
    def __init__(self, answers):
        super().__init__(model=None, processor=None, config=VLMConfig())
        self.answers = list(answers)
        self.seen = []

    def generate_text(self, messages, temperature):
        self.seen.append(messages)
        return self.answers.pop(0)


@pytest.mark.parametrize("shape", SHAPES)
def test_model_image_shows_the_pixel_where_its_grammar_points(shape):
    """What the model sees at grammar (gx, gy) is the slice's content at the pixel that (gx, gy) decodes to."""
    h, w = shape
    for x, y in marker_pixels(shape):
        img = np.zeros(shape, dtype=np.float32)
        img[y, x] = 1.0
        seen = np.asarray(model_image(img))[..., 0].astype(int)
        v_star, u_star = np.unravel_index(np.argmax(seen), seen.shape)
        gx, gy = coords.xy_to_grammar(x, y, shape)
        u, v = coords.grammar_to_pixel(gx, S), coords.grammar_to_pixel(gy, S)
        # the marker's brightest model pixel is the grammar's model pixel or its neighbour (two roundings)
        assert abs(u - u_star) <= 1 and abs(v - v_star) <= 1
        # the model answering at the brightest model pixel decodes back onto the marker: exactly along a side of
        # at most 512 pixels; within one pixel along the 517-pixel side, which the 512 model pixels cannot resolve
        x2 = coords.grammar_to_pixel(coords.pixel_to_grammar(int(u_star), S), w)
        y2 = coords.grammar_to_pixel(coords.pixel_to_grammar(int(v_star), S), h)
        assert abs(x2 - x) <= (0 if w <= S else 1) and abs(y2 - y) <= (0 if h <= S else 1)


@pytest.mark.parametrize("shape", SHAPES)
def test_inference_path_lands_on_the_intended_pixel(shape, fake_tool):
    """VLMPolicy -> grammar.parse -> env -> tool: the emitted 0..999 integers reach the tool as the exact pixel."""
    h, w = shape
    img = np.zeros(shape, dtype=np.float32)
    targets = marker_pixels(shape)
    for x, y in targets:
        img[y, x] = 1.0
    box = Box(w // 5, h // 7, w - 2, h - 3)
    gbox = [*coords.xy_to_grammar(box.x0, box.y0, shape), *coords.xy_to_grammar(box.x1, box.y1, shape)]
    answers = [box_call(gbox)] + [point_call(*coords.xy_to_grammar(x, y, shape)) for x, y in targets[:4]]
    policy = Scripted(answers)
    env = SegmentationEnv(fake_tool, EnvConfig(max_turns=5))
    traj = rollout(env, policy, {"image": img, "target": "marker"})
    assert env.interaction.box == box.as_tuple()
    assert env.interaction.points == targets[:4]
    assert traj.actions[0] == {"type": "box", "box": list(box.as_tuple())}
    # every prompt image is the full-slice stretch: the model image is square whatever the slice shape
    assert all(np.asarray(m[-1]["content"][0]["image"]).shape == (S, S, 3) for m in policy.seen)


@pytest.mark.parametrize("shape", SHAPES)
def test_training_paths_emit_and_decode_the_same_integers(shape, fake_tool, tmp_path):
    """SFT export writes the grammar integers of the expert's pixels; parsing them (SFT target, RL env step,
    verl scorer all use ``grammar.parse``) gives back the exact pixels."""
    h, w = shape
    img = np.zeros(shape, dtype=np.float32)
    x, y = marker_pixels(shape)[3]
    img[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = 0.9
    box = Box(w // 5, h // 7, w - 2, h - 3)
    actions = [box, Point(x, y, True), Point(w - 1, 0, False)]
    env = SegmentationEnv(fake_tool, EnvConfig(max_turns=5))
    traj = rollout(env, Prefixed(actions, StopPolicy()), {"image": img, "target": "marker"})
    summary = export_sft([(traj, img)], tmp_path, ExportConfig())
    record = json.loads(summary.sharegpt.read_text())[0]
    answers = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
    gx, gy = coords.xy_to_grammar(x, y, shape)
    assert answers[1] == point_call(gx, gy)  # the same text the inference test emits for this pixel
    assert [parse(a, shape) for a in answers[:3]] == actions
    # RL: the environment parses the model's text itself
    env.reset(options={"image": img, "target": "marker"})
    env.step(answers[1])
    assert env.interaction.points == [(x, y)]
    # the exported turn-0 image is the inference model image
    from PIL import Image

    exported = np.asarray(Image.open(tmp_path / record["images"][0]))
    assert np.array_equal(exported, np.asarray(model_image(img)))
