from __future__ import annotations

import numpy as np
import pytest

from lib.agent.actions import Box, Point
from lib.agent.clicks import interior_point, tight_box
from lib.agent.env import EnvConfig, SegmentationEnv
from lib.agent.expert import BOX_TO_POINT, SEQUENTIAL_CLICK, ExpertConfig, ExpertPolicy, keep_trajectory
from lib.agent.policies.base import Prefixed, StopPolicy
from lib.agent.policies.box import BoxPolicy
from lib.agent.policies.ellipse import ellipse_mask
from lib.agent.rollout import episode_seed, rollout
from lib.tools.fake import FakeTool
from lib.tools.interaction import Prompting

from .conftest import disk


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Three-tone blob plus a bright distractor touching it: needs a box and corrections."""
    h, w = 80, 90
    gt = disk((h, w), (40, 40), 22) | disk((h, w), (62, 40), 10)
    img = np.full((h, w), 0.1, dtype=np.float32)
    xx = np.arange(w)[None, :].repeat(h, axis=0)
    img[gt & (xx < 35)] = 0.8
    img[gt & (xx >= 35) & (xx < 55)] = 0.6
    img[gt & (xx >= 55)] = 0.4
    distractor = disk((h, w), (40, 70), 6) & ~gt
    img[distractor] = 0.8
    return img, gt


@pytest.mark.parametrize("prompting", list(Prompting))
@pytest.mark.parametrize("strategy", [BOX_TO_POINT, SEQUENTIAL_CLICK])
def test_expert_reaches_high_iou_and_never_loses_iou(prompting, strategy):
    img, gt = _scene()
    env = SegmentationEnv(FakeTool(), EnvConfig(prompting=prompting))
    cfg = ExpertConfig(strategy=strategy)
    traj = rollout(env, ExpertPolicy(env, cfg), {"image": img, "gt": gt, "target": "blob"}, seed=3)
    assert traj.ious[-1] >= 0.9
    assert traj.n_actions <= cfg.max_actions
    # progress constraint: every kept action raised IoU by >= tau
    gains = np.diff([0.0, *traj.ious])
    assert np.all(gains >= cfg.tau - 1e-12), traj.ious
    assert traj.stop_reason == "target_reached" and traj.actions[-1] == {"type": "stop"}
    first = traj.actions[0]["type"]
    assert first == ("box" if strategy == BOX_TO_POINT else "point")
    assert traj.policy_meta["strategy"] == strategy


def test_expert_rejects_a_harmful_best_candidate_and_uses_the_next():
    """A tool on which the best-ranked click destroys the mask: the expert must revert and go on."""

    class Spiteful(FakeTool):
        def start(self, image):
            session = super().start(image)
            predict = session.predict

            def worse(box=None, points=(), labels=(), mask_logits=None):
                out = predict(box=box, points=points, labels=labels, mask_logits=mask_logits)
                if points and tuple(points[-1]) == spoiled:
                    return type(out)(mask=np.zeros_like(out.mask), logits=out.logits * 0 - 10, score=0.0)
                return out

            session.predict = worse
            return session

    img, gt = _scene()
    env = SegmentationEnv(Spiteful(), EnvConfig(prompting="all"))
    expert = ExpertPolicy(env, ExpertConfig(strategy=BOX_TO_POINT, rebox_margins=()))
    obs, info = env.reset(seed=0, options={"image": img, "gt": gt, "target": "blob"})
    expert.reset(obs, info, seed=0)
    obs, _, _, _, info = env.step(expert.act(obs, info))
    best = expert.candidates(env.mask, 1)[0]
    spoiled = (best.x, best.y)
    action = expert.act(obs, info)
    assert isinstance(action, Point) and (action.x, action.y) != spoiled
    assert expert.tries[-1] >= 2
    before = info["ious"][-1]
    _, _, _, _, info = env.step(action)
    assert info["ious"][-1] >= before + 0.01


def test_expert_stops_when_nothing_helps_and_trajectory_is_pruned():
    class Blind(FakeTool):
        def start(self, image):
            session = super().start(image)
            predict = session.predict

            def nothing(**kw):
                out = predict(**kw)
                return type(out)(mask=np.zeros_like(out.mask), logits=out.logits * 0 - 10, score=0.0)

            session.predict = nothing
            return session

    img, gt = _scene()
    env = SegmentationEnv(Blind())
    traj = rollout(env, ExpertPolicy(env), {"image": img, "gt": gt, "target": "blob"}, seed=0)
    assert traj.n_actions == 0 and traj.stop_reason == "no_improving_candidate"
    assert not keep_trajectory(traj.ious)
    assert keep_trajectory(traj.ious, ExpertConfig(prune=False))


def test_hybrid_mixes_strategies_reproducibly():
    img, gt = _scene()
    env = SegmentationEnv(FakeTool())
    expert = ExpertPolicy(env, ExpertConfig(box_to_point_prob=0.5))
    opts = {"image": img, "gt": gt, "target": "blob"}
    strategies = [rollout(env, expert, opts, seed=episode_seed(0, "c", i, "blob")).policy_meta["strategy"]
                  for i in range(16)]
    assert set(strategies) == {BOX_TO_POINT, SEQUENTIAL_CLICK}
    again = [rollout(env, expert, opts, seed=episode_seed(0, "c", i, "blob")).policy_meta["strategy"]
             for i in range(16)]
    assert again == strategies


def test_expert_first_actions():
    img, gt = _scene()
    env = SegmentationEnv(FakeTool())
    obs, info = env.reset(options={"image": img, "gt": gt})
    sc = ExpertPolicy(env, ExpertConfig(strategy=SEQUENTIAL_CLICK))
    sc.reset(obs, info, seed=0)
    assert sc.act(obs, info) == interior_point(gt)
    btp = ExpertPolicy(env, ExpertConfig(strategy=BOX_TO_POINT, box_jitter=0.0))
    btp.reset(obs, info, seed=0)
    assert btp.act(obs, info) == tight_box(gt)


def test_expert_needs_ground_truth():
    env = SegmentationEnv(FakeTool())
    obs, info = env.reset(options={"image": np.zeros((8, 8), dtype=np.float32)})
    with pytest.raises(ValueError, match="oracle"):
        ExpertPolicy(env).reset(obs, info)


@pytest.mark.parametrize(
    "kw, match",
    [({"tau": -0.1}, "tau"), ({"retries": -1}, "retries"), ({"strategy": "random"}, "strategy"),
     ({"box_jitter": 0.6}, "box_jitter"), ({"rebox_margins": (-1,)}, "rebox_margins"),
     ({"max_actions": 0}, "max_actions"), ({"selection": "random"}, "selection")],
)
def test_expert_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        ExpertConfig(**kw)


def test_box_policy_and_handoff_prefix():
    img, gt = _scene()
    env = SegmentationEnv(FakeTool())
    opts = {"image": img, "gt": gt, "target": "blob"}
    box = Box(15, 15, 75, 65)
    traj = rollout(env, BoxPolicy(box=box), opts, seed=0)
    assert traj.actions == [{"type": "box", "box": list(box.as_tuple())}, {"type": "stop"}]
    assert traj.policy_meta["box"] == list(box.as_tuple())
    drawn = rollout(env, BoxPolicy(env=env), opts, seed=1)
    assert drawn.actions[0]["type"] == "box" and drawn.n_actions == 1
    handoff = rollout(env, Prefixed([box], ExpertPolicy(env)), opts, seed=0)
    assert handoff.actions[0] == traj.actions[0] and handoff.ious[-1] >= traj.ious[-1]
    assert handoff.policy_meta["handoff_actions"] == 1
    assert rollout(env, StopPolicy(), opts).n_actions == 0


def test_ellipse_mask_is_the_inscribed_ellipse():
    gt = disk((40, 40), (20, 20), 10)
    box = tight_box(gt)
    m = ellipse_mask(box, gt.shape)
    assert m.dtype == bool and m.shape == gt.shape
    assert (m & gt).sum() / (m | gt).sum() > 0.9
    assert not m[box.y0 - 1].any() and not m[:, box.x1 + 1].any()
    literal = ellipse_mask(Box(0, 0, 4, 4), (5, 6)).astype(int)  # centre (2, 2), semi-axes 2.5 px
    assert literal.tolist() == [
        [0, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 0, 0],
    ]
    with pytest.raises(ValueError, match="empty"):
        ellipse_mask(Box(3, 3, 3, 8), (10, 10))


def test_hybrid_episode_equals_the_fixed_strategy_episode_it_draws():
    """benchmarks/benchmark_expert.py assembles hybrid results from the two fixed strategies; this keeps it exact."""
    img, gt = _scene()
    env = SegmentationEnv(FakeTool(), EnvConfig(prompting="all"))
    opts = {"image": img, "gt": gt, "target": "blob"}
    for seed in range(6):
        hybrid = rollout(env, ExpertPolicy(env, ExpertConfig(box_jitter=0.2)), opts, seed=seed)
        drawn = BOX_TO_POINT if np.random.default_rng(seed).random() < 0.5 else SEQUENTIAL_CLICK
        assert hybrid.policy_meta["strategy"] == drawn
        fixed = rollout(env, ExpertPolicy(env, ExpertConfig(box_jitter=0.2, strategy=drawn)), opts, seed=seed)
        assert fixed.actions == hybrid.actions and fixed.ious == hybrid.ious


class _PointDeaf(FakeTool):
    """A box-trained tool: point-only prompts (no box, no logits) give an empty mask, like LiteMedSAM."""

    def start(self, image):
        session = super().start(image)
        predict = session.predict

        def deaf(box=None, points=(), labels=(), mask_logits=None):
            out = predict(box=box, points=points, labels=labels, mask_logits=mask_logits)
            if box is None and mask_logits is None:
                return type(out)(mask=np.zeros_like(out.mask), logits=out.logits * 0 - 10, score=0.0)
            return out

        session.predict = deaf
        return session


def test_sequential_click_falls_back_to_the_box_opening():
    img, gt = _scene()
    env = SegmentationEnv(_PointDeaf(), EnvConfig(prompting="all"))
    opts = {"image": img, "gt": gt, "target": "blob"}
    sc = rollout(env, ExpertPolicy(env, ExpertConfig(strategy=SEQUENTIAL_CLICK)), opts, seed=5)
    assert sc.policy_meta["fell_back"] and sc.actions[0]["type"] == "box" and sc.ious[-1] >= 0.9
    btp = rollout(env, ExpertPolicy(env, ExpertConfig(strategy=BOX_TO_POINT)), opts, seed=5)
    assert btp.actions == sc.actions and not btp.policy_meta["fell_back"]  # then exactly Box-to-Point
    pruned = rollout(env, ExpertPolicy(env, ExpertConfig(strategy=SEQUENTIAL_CLICK, opening_fallback=False)), opts)
    assert pruned.n_actions == 0 and not keep_trajectory(pruned.ious)


def test_best_selection_keeps_the_largest_gain():
    img, gt = _scene()
    env = SegmentationEnv(FakeTool(), EnvConfig(prompting="all"))
    opts = {"image": img, "gt": gt, "target": "blob"}
    cfg = {"strategy": BOX_TO_POINT, "box_jitter": 0.3}
    first = rollout(env, ExpertPolicy(env, ExpertConfig(**cfg, selection="first")), opts, seed=2)
    best = rollout(env, ExpertPolicy(env, ExpertConfig(**cfg, selection="best")), opts, seed=2)
    assert best.actions[0] == first.actions[0]  # the opening is taken in rank order either way
    assert best.ious[1] >= first.ious[1] and best.ious[-1] >= 0.9
    assert np.all(np.diff([0.0, *best.ious]) >= 0.01 - 1e-12)
