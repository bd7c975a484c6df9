"""Volume episodes (lib.agent.volume): propagation both ways, the end rule, one encode per slice, prefetch.

Most tests use ``BrightTool`` below, a test double that segments the bright (> 0.5) pixels inside the box, so
that a box past the end of a structure gives an empty mask (the FakeTool would segment the background
there). Each slice carries its index in pixel (0, 0) (a dark value), so the tool knows which slice it
encodes. One integration test runs the real LiteMedSAM.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from scipy import ndimage

from lib.agent.actions import Box, Point, Stop
from lib.agent.clicks import tight_box
from lib.agent.env import EnvConfig
from lib.agent.expert import ExpertConfig, ExpertPolicy
from lib.agent.policies.base import Policy, StopPolicy
from lib.agent.volume import (
    COLLAPSED,
    EMPTY,
    EMPTY_SEED,
    INTENSITY,
    LOW_SCORE,
    VOLUME_EDGE,
    DensePromptSession,
    VolumeConfig,
    VolumeEpisode,
    end_check,
    propagated_box,
)
from lib.tools.base import BOX, MASK_INPUT, POINT, SegOutput, Tool, ToolSession
from lib.tools.cache import SessionCache
from lib.tools.fake import mask_to_logits

MARK = 1000.0  # slice k is marked by pixel (0, 0) = k / MARK


def slice_of(image: np.ndarray) -> int:
    return int(round(float(image[0, 0]) * MARK))


class BrightSession(ToolSession):
    def __init__(self, image, tool, k):
        super().__init__(shape=image.shape, encoder_ms=1.0, nbytes=image.nbytes)
        self.image, self.tool, self.k = image, tool, k

    def predict(self, box=None, points=(), labels=(), mask_logits=None) -> SegOutput:
        self.validate_prompts(box, points, labels)
        self.tool.dense[self.k].append(mask_logits)
        bright = self.image > 0.5
        mask = np.zeros(self.shape, dtype=bool)
        if box is not None:
            x0, y0, x1, y1 = (int(v) for v in box)
            mask[y0:y1 + 1, x0:x1 + 1] = bright[y0:y1 + 1, x0:x1 + 1]
        comp, _ = ndimage.label(bright)
        for (x, y), lab in zip(points, labels):
            if comp[int(y), int(x)]:
                region = comp == comp[int(y), int(x)]
                mask = mask | region if lab else mask & ~region
        score = self.tool.scores.get(self.k, 0.9)
        return SegOutput(mask=mask, logits=mask_to_logits(mask) + self.k, score=score)


class BrightTool(Tool):
    """Bright pixels inside the box; clicks add/remove bright components. Counts encodes per slice."""

    name = "bright"

    def __init__(self, capabilities=frozenset({BOX, POINT, MASK_INPUT}), scores=None):
        self.capabilities = frozenset(capabilities)
        self.scores = dict(scores or {})
        self.starts: dict[int, int] = {}
        self.threads: dict[int, str] = {}
        self.dense: dict[int, list] = {}
        self.started = {}
        self._lock = threading.Lock()

    def start(self, image) -> BrightSession:
        k = slice_of(image)
        with self._lock:
            self.starts[k] = self.starts.get(k, 0) + 1
            self.threads[k] = threading.current_thread().name
            self.dense.setdefault(k, [])
            self.started.setdefault(k, threading.Event()).set()
        return BrightSession(np.asarray(image, dtype=np.float32), self, k)


def disk(shape, cx, cy, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def volume(radii, shape=(48, 48)):
    """(K, H, W) windowed volume + gt: a disk of radius radii[k] (0 = absent) centred at (24, 24)."""
    K = len(radii)
    gt = np.zeros((K, *shape), dtype=bool)
    for k, r in enumerate(radii):
        if r > 0:
            gt[k] = disk(shape, 24, 24, r)
    vol = np.where(gt, 0.8, 0.1).astype(np.float32)
    vol[:, 0, 0] = np.arange(K) / MARK
    return vol, gt


class ClickOnce(Policy):
    """Reviews every slice with one positive click at the centre, then stops."""

    name = "click_once"

    def act(self, obs, info):
        if info["turn"] >= 2:
            self.stop_reason = "done"
            return Stop()
        if info["turn"] == 0:
            return Box(14, 14, 34, 34)  # autonomous: its own box
        return Point(24, 24, True)


def dice3d(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


# -- pure pieces ------------------------------------------------------------------------------------------
def test_end_check_rule_and_order():
    cfg = VolumeConfig(min_area=10, collapse_fraction=0.25, min_score=0.5)
    assert end_check(100, 0.9, 120, cfg) is None
    assert end_check(9, 0.9, 10, cfg) == EMPTY
    assert end_check(0, float("nan"), 0, cfg) == EMPTY
    assert end_check(29, 0.9, 120, cfg) == COLLAPSED  # < 25 % of the previous slice
    assert end_check(30, 0.9, 120, cfg) is None
    assert end_check(100, 0.49, 100, cfg) == LOW_SCORE
    assert end_check(100, float("nan"), 100, cfg) is None  # no quality head: never fails on score
    assert end_check(5, 0.1, 120, cfg) == EMPTY  # empty is reported before collapse and score


def test_volume_config_is_validated():
    with pytest.raises(ValueError, match="collapse_fraction"):
        VolumeConfig(collapse_fraction=1.5)
    with pytest.raises(ValueError, match="lookahead"):
        VolumeConfig(lookahead=-1)


def test_propagated_box_grows_by_margin_and_clips():
    mask = np.zeros((40, 50), dtype=bool)
    mask[10:20, 5:45] = True  # 40 wide, 10 high
    box = propagated_box(mask, VolumeConfig(margin_px=3, margin_fraction=0.1))
    assert box == Box(1, 7, 48, 22)  # x: 4 px (10 % of 40) per side; y: 3 px (margin_px beats 1 px)
    edge = np.zeros((40, 50), dtype=bool)
    edge[0:5, 45:50] = True
    assert propagated_box(edge, VolumeConfig(margin_px=3, margin_fraction=0.0)) == Box(42, 0, 49, 7)


def test_dense_prompt_session_fills_only_missing_logits():
    tool = BrightTool()
    vol, _ = volume([5])
    inner = tool.start(vol[0])
    given, own = np.full((1, 256, 256), 1.0, np.float32), np.full((1, 256, 256), 2.0, np.float32)
    wrapped = DensePromptSession(inner, given)
    assert wrapped.shape == inner.shape and wrapped.nbytes == 0
    wrapped.predict(box=(1, 1, 10, 10))
    wrapped.predict(box=(1, 1, 10, 10), mask_logits=own)
    assert tool.dense[0][0] is given and tool.dense[0][1] is own


# -- propagation ------------------------------------------------------------------------------------------
def test_handoff_propagates_both_ways_and_ends_after_the_structure():
    radii = [0, 0, 6, 8, 10, 10, 9, 7, 5, 0, 0, 0]
    vol, gt = volume(radii)
    tool = BrightTool()
    res = VolumeEpisode(tool, StopPolicy(), EnvConfig(max_turns=5, prompting="all")).run(
        vol, "disk", seed_slice=4, prompts=[tight_box(gt[4])])
    assert res.seed_slice == 4 and res.handoff
    assert dice3d(res.mask, gt) == 1.0
    assert res.kept == [2, 3, 4, 5, 6, 7, 8]
    # two empty slices past each end: one bridged try, then the end at the first of them
    assert res.ends[+1] == {"slice": 9, "reason": EMPTY} and res.ends[-1] == {"slice": 1, "reason": EMPTY}
    assert sorted(res.visited) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert res.visited[:3] == [4, 5, 3]  # seed, then alternating directions
    seed = res.slices[0]
    assert seed.direction == 0 and seed.start is None and seed.corrective == 0 and seed.turns == 1
    up = next(s for s in res.slices if s.index == 5)
    assert up.direction == 1 and up.start.from_slice == 4 and up.actions[0]["type"] == "box"
    assert up.start.box == propagated_box(res.slices[0].mask, VolumeConfig())
    assert res.corrective_actions == 0
    assert res.to_dict()["kept"] == res.kept  # JSON-ready summary
    # each propagated slice's episode is given its neighbour's final mask (the policy's prior); the seed none
    assert seed.trajectory.prior is None
    for rec in res.slices[1:]:
        neighbour = next(s for s in res.slices if s.index == rec.start.from_slice)
        assert np.array_equal(rec.trajectory.prior_array(), neighbour.mask)


def test_each_visited_slice_is_encoded_exactly_once():
    radii = [0, 4, 6, 8, 10, 10, 9, 7, 5, 3, 0, 0, 0, 0]
    vol, gt = volume(radii)
    tool = BrightTool()
    res = VolumeEpisode(tool, ClickOnce(), EnvConfig(max_turns=3, prompting="all")).run(
        vol, "disk", seed_slice=5, prompts=[tight_box(gt[5])])
    assert set(res.visited) <= set(tool.starts)
    assert all(n == 1 for n in tool.starts.values()), tool.starts  # nothing encoded twice, prefetch included
    assert len(res.visited) == len(set(res.visited))
    # only the slice after each end may be encoded without a visit (prefetched while the end was decided)
    assert res.timings["encoder_calls"] == len(tool.starts) <= len(res.visited) + 2
    assert res.timings["encoded_not_visited"] == len(set(tool.starts) - set(res.visited))


def test_prefetch_encodes_the_next_slices_while_the_seed_is_decided():
    vol, gt = volume([0, 6, 8, 10, 8, 6, 0, 0])
    tool = BrightTool()
    seen = {}

    class Waiting(Policy):
        """On the seed slice, waits (up to 30 s) until both neighbours have started encoding."""

        name = "waiting"

        def act(self, obs, info):
            if not seen:
                for k in (2, 4):
                    seen[k] = tool.started.setdefault(k, threading.Event()).wait(timeout=30)
            return Stop()

    res = VolumeEpisode(tool, Waiting(), EnvConfig(prompting="all")).run(vol, "disk", seed_slice=3,
                                                                          prompts=[tight_box(gt[3])])
    assert seen == {2: True, 4: True}  # the neighbours were being encoded while the policy decided
    main = threading.current_thread().name
    assert tool.threads[3] == main and tool.threads[2] != main and tool.threads[4] != main
    assert res.timings["prefetched"] >= 2 and all(n == 1 for n in tool.starts.values())


def test_without_prefetch_everything_is_encoded_on_the_calling_thread():
    vol, gt = volume([0, 6, 8, 10, 8, 6, 0, 0])
    tool = BrightTool()
    res = VolumeEpisode(tool, StopPolicy(), EnvConfig(prompting="all"), VolumeConfig(prefetch=False)).run(
        vol, "disk", seed_slice=3, prompts=[tight_box(gt[3])])
    assert set(tool.threads.values()) == {threading.current_thread().name}
    assert res.timings["prefetched"] == 0 and sorted(tool.starts) == sorted(res.visited)


def test_a_one_slice_gap_is_bridged_and_a_two_slice_gap_ends_the_structure():
    vol, gt = volume([0, 6, 8, 10, 0, 10, 8, 6, 0, 0, 0, 0])
    res = VolumeEpisode(BrightTool(), StopPolicy(), EnvConfig(prompting="all")).run(
        vol, "disk", seed_slice=2, prompts=[tight_box(gt[2])])
    gap = next(s for s in res.slices if s.index == 4)
    assert gap.check == EMPTY and gap.kept and gap.bridged
    assert res.kept == [1, 2, 3, 4, 5, 6, 7] and dice3d(res.mask, gt) == 1.0
    assert next(s for s in res.slices if s.index == 6).start.from_slice == 5
    assert next(s for s in res.slices if s.index == 5).start.from_slice == 3  # tried from the last kept mask

    vol, gt = volume([0, 6, 8, 10, 0, 0, 10, 8, 0, 0])
    res = VolumeEpisode(BrightTool(), StopPolicy(), EnvConfig(prompting="all")).run(
        vol, "disk", seed_slice=2, prompts=[tight_box(gt[2])])
    assert res.kept == [1, 2, 3] and res.ends[+1] == {"slice": 4, "reason": EMPTY}
    assert 6 not in res.visited

    res = VolumeEpisode(BrightTool(), StopPolicy(), EnvConfig(prompting="all"), VolumeConfig(lookahead=0)).run(
        vol, "disk", seed_slice=2, prompts=[tight_box(gt[2])])
    assert res.ends[+1] == {"slice": 4, "reason": EMPTY} and 5 not in res.visited


def test_collapse_and_low_score_end_a_direction():
    vol, gt = volume([10, 10, 10, 10, 3, 3, 10, 10])
    res = VolumeEpisode(BrightTool(), StopPolicy(), EnvConfig(prompting="all")).run(
        vol, "disk", seed_slice=1, prompts=[tight_box(gt[1])])
    assert res.ends[+1] == {"slice": 4, "reason": COLLAPSED} and res.kept == [0, 1, 2, 3]
    assert res.ends[-1] == {"slice": -1, "reason": VOLUME_EDGE}

    vol, gt = volume([10] * 8)
    tool = BrightTool(scores={5: 0.2, 6: 0.3})
    res = VolumeEpisode(tool, StopPolicy(), EnvConfig(prompting="all")).run(
        vol, "disk", seed_slice=2, prompts=[tight_box(gt[2])])
    assert res.ends[+1] == {"slice": 5, "reason": LOW_SCORE} and res.kept == [0, 1, 2, 3, 4]
    tool = BrightTool(scores={5: 0.2})  # one bad slice: bridged
    res = VolumeEpisode(tool, StopPolicy(), EnvConfig(prompting="all")).run(
        vol, "disk", seed_slice=2, prompts=[tight_box(gt[2])])
    assert res.kept == list(range(8)) and next(s for s in res.slices if s.index == 5).bridged


def test_dense_prompt_carries_the_neighbours_logits_where_the_backend_takes_them():
    vol, gt = volume([0, 6, 8, 10, 8, 0, 0])
    tool = BrightTool()
    res = VolumeEpisode(tool, StopPolicy(), EnvConfig(prompting="all"), VolumeConfig(dense_prompt=True)).run(
        vol, "disk", seed_slice=3, prompts=[tight_box(gt[3])])
    assert tool.dense[3] == [None]  # the seed starts from the user's prompts only
    for rec in res.slices[1:]:
        sent = tool.dense[rec.index][0]
        assert rec.start.logits is not None and sent is rec.start.logits
        assert float(sent.max()) == pytest.approx(10 + rec.start.from_slice)  # the neighbour's own answer
    tool = BrightTool(capabilities={BOX, POINT})
    VolumeEpisode(tool, StopPolicy(), EnvConfig(prompting="all"), VolumeConfig(dense_prompt=True)).run(
        vol, "disk", seed_slice=3, prompts=[tight_box(gt[3])])
    assert all(v is None for calls in tool.dense.values() for v in calls)
    tool = BrightTool()
    VolumeEpisode(tool, StopPolicy(), EnvConfig(prompting="all"), VolumeConfig(dense_prompt=False)).run(
        vol, "disk", seed_slice=3, prompts=[tight_box(gt[3])])
    assert all(v is None for calls in tool.dense.values() for v in calls)


def test_policy_reviews_every_slice_within_its_budget_and_autonomous_seed():
    vol, gt = volume([0, 6, 8, 10, 8, 6, 0, 0])
    res = VolumeEpisode(BrightTool(), ClickOnce(), EnvConfig(max_turns=5, prompting="all")).run(vol, "disk")
    assert not res.handoff and res.seed_slice == 4  # autonomous: the middle slice, the policy's own box
    seed = res.slices[0]
    assert seed.actions[0] == {"type": "box", "box": [14, 14, 34, 34]} and seed.corrective == 2
    for rec in res.slices[1:]:
        assert rec.turns == 2 and rec.corrective == 1 and rec.stop_reason == "done"
    assert res.corrective_actions == 2 + len(res.slices) - 1


def test_ground_truth_scores_slices_and_drives_the_expert():
    vol, gt = volume([0, 6, 8, 10, 8, 6, 0, 0])
    ep = VolumeEpisode(BrightTool(), lambda env: ExpertPolicy(env, ExpertConfig(max_actions=3)),
                       EnvConfig(max_turns=3, prompting="all"))
    res = ep.run(vol, "disk", seed_slice=3, prompts=[tight_box(gt[3])], gt=gt, seed=1, meta={"case_id": "c1"})
    assert dice3d(res.mask, gt) == 1.0
    traj = res.slices[1].trajectory
    assert traj.ious and traj.case_id == "c1" and traj.slice_index == res.slices[1].index
    assert traj.source["volume_direction"] == res.slices[1].direction
    with pytest.raises(ValueError, match="bool mask"):
        ep.run(vol, "disk", seed_slice=3, prompts=[tight_box(gt[3])], gt=gt.astype(np.uint8))


def test_a_shared_cache_serves_a_second_run_without_encoding():
    vol, gt = volume([0, 6, 8, 10, 8, 6, 0, 0])
    tool, cache = BrightTool(), SessionCache()
    first = VolumeEpisode(tool, StopPolicy(), EnvConfig(prompting="all"), cache=cache).run(
        vol, "disk", seed_slice=3, prompts=[tight_box(gt[3])], key=("case", "win"))
    calls = first.timings["encoder_calls"]
    second = VolumeEpisode(tool, ClickOnce(), EnvConfig(prompting="all"), cache=cache).run(
        vol, "disk", seed_slice=3, prompts=[tight_box(gt[3])], key=("case", "win"))
    assert calls > 0 and second.timings["encoder_calls"] == 0
    assert all(s.encoder_cached and s.encoder_s == 0 for s in second.slices)
    assert second.timings["encoder_s_visited"] > 0  # what the visited slices cost when they were encoded
    assert all(n == 1 for n in tool.starts.values())


def test_empty_seed_ends_at_once_and_bad_inputs_raise():
    vol, gt = volume([0, 0, 0, 0])
    tool = BrightTool()
    ep = VolumeEpisode(tool, StopPolicy(), EnvConfig(prompting="all"))
    res = ep.run(vol, "disk", seed_slice=1, prompts=[Box(5, 5, 20, 20)])
    assert not res.mask.any() and res.visited == [1]
    assert res.ends[+1]["reason"] == EMPTY_SEED == res.ends[-1]["reason"]
    with pytest.raises(ValueError, match="K, J, I"):
        ep.run(vol[0], "disk")
    with pytest.raises(ValueError, match="outside the volume"):
        ep.run(vol, "disk", seed_slice=4)
    with pytest.raises(ValueError, match="turn budget"):
        VolumeEpisode(tool, StopPolicy(), EnvConfig(max_turns=1, prompting="all")).run(
            vol, "disk", seed_slice=1, prompts=[Box(5, 5, 20, 20), Point(6, 6, True)])


# -- the real segmenter ---------------------------------------------------------------------------------
def test_litemedsam_propagates_through_an_ellipsoid():
    from lib.tools.litemedsam import LiteMedSAMTool

    K, H, W = 9, 96, 96
    zz, yy, xx = np.mgrid[:K, :H, :W]
    gt = ((zz - 4) / 4.6) ** 2 + ((yy - 48) / 24) ** 2 + ((xx - 44) / 30) ** 2 < 1
    rng = np.random.default_rng(0)
    vol = np.clip(np.where(gt, 0.7, 0.25) + rng.normal(0, 0.02, gt.shape), 0, 1).astype(np.float32)

    class Counting(LiteMedSAMTool):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def start(self, image):
            self.calls += 1
            return super().start(image)

    tool = Counting()
    res = VolumeEpisode(tool, StopPolicy(), EnvConfig(max_turns=5, prompting="all", local_radius=0.5)).run(
        vol, "organ", seed_slice=4, prompts=[tight_box(gt[4])])
    assert dice3d(res.mask, gt) > 0.85
    assert len(set(res.visited)) == len(res.visited) and tool.calls == res.timings["encoder_calls"]
    assert tool.calls <= len(res.visited) + 2
    assert res.timings["encoder_s_visited"] > 0


def test_run_slice_replays_a_recorded_start_state():
    vol, gt = volume([0, 6, 8, 10, 8, 6, 0, 0])
    ep = VolumeEpisode(BrightTool(), ClickOnce(), EnvConfig(max_turns=3, prompting="all"),
                       VolumeConfig(dense_prompt=True))
    res = ep.run(vol, "disk", seed_slice=3, prompts=[tight_box(gt[3])], gt=gt)
    rec = next(s for s in res.slices if s.index == 5)
    again = ep.run_slice(vol, "disk", 5, rec.start, gt=gt)
    assert again.direction == 1 and again.start is rec.start and again.actions == rec.actions
    assert np.array_equal(again.mask, rec.mask) and again.trajectory.ious == rec.trajectory.ious
    seed = ep.run_slice(vol, "disk", 3, prompts=[tight_box(gt[3])])
    assert seed.direction == 0 and seed.start is None and np.array_equal(seed.mask, res.slices[0].mask)


def test_a_change_of_tissue_under_the_mask_ends_a_direction():
    vol, gt = volume([10] * 8)
    vol[5:][gt[5:]] = 0.6  # still bright to the tool, but another tissue than the seed's 0.8
    cfg = VolumeConfig(max_intensity_shift=0.1)
    res = VolumeEpisode(BrightTool(), StopPolicy(), EnvConfig(prompting="all"), cfg).run(
        vol, "disk", seed_slice=2, prompts=[tight_box(gt[2])])
    assert res.ends[+1] == {"slice": 5, "reason": INTENSITY} and res.kept == [0, 1, 2, 3, 4]
    assert next(s for s in res.slices if s.index == 5).intensity == pytest.approx(0.6)
    assert end_check(100, 0.9, 100, cfg, intensity_shift=0.11) == INTENSITY
    assert end_check(100, 0.9, 100, VolumeConfig(max_intensity_shift=1.0), intensity_shift=0.5) is None  # 1.0 = off


# -- SAM 2 memory (random hiera-tiny weights at image_size 128: the wiring, not accuracy) ----------------------
#: an end rule that only stops at empty masks, so random weights still walk several slices in each direction
WALK = VolumeConfig(min_area=1, collapse_fraction=0.0, min_score=0.0, max_intensity_shift=1.0)


@pytest.fixture(scope="module")
def sam2_tool():
    torch = pytest.importorskip("torch")
    pytest.importorskip("sam2")
    from lib.tools.sam2_tool import Sam2Tool

    torch.manual_seed(0)
    return Sam2Tool("sam2", image_size=128, allow_random_weights=True, encoder_runtime="torch")


class _WithoutMemory(Tool):
    """The same tool without ``volume_memory``: the path every backend took before the memory hook."""

    def __init__(self, tool):
        self.tool, self.name, self.capabilities = tool, tool.name, tool.capabilities

    def start(self, image):
        return self.tool.start(image)


def _sam2_run(tool, config, vol, gt):
    ep = VolumeEpisode(tool, ClickOnce(), EnvConfig(max_turns=3, prompting="all"), config)
    return ep.run(vol, "disk", seed_slice=3, prompts=[tight_box(gt[3])])


def test_sam2_memory_propagates_both_ways_and_encodes_each_slice_once(sam2_tool):
    from lib.tools.sam2_memory import Sam2MemorySession

    vol, gt = volume([6, 8, 10, 12, 10, 8, 6])
    seen = []  # the session each decode ran on
    original = Sam2MemorySession.predict

    def spy(self, *args, **kwargs):
        seen.append((self.k, self.direction))
        return original(self, *args, **kwargs)

    before = sam2_tool.encoder_calls
    Sam2MemorySession.predict = spy
    try:
        res = _sam2_run(sam2_tool, WALK, vol, gt)
    finally:
        Sam2MemorySession.predict = original
    assert res.memory and res.to_dict()["memory"] is True
    assert len(set(res.visited)) == len(res.visited)
    assert sam2_tool.encoder_calls - before == res.timings["encoder_calls"] <= len(res.visited) + 2
    seed, propagated = res.slices[0], res.slices[1:]
    assert seed.memory is None and seed.memory_s > 0  # the conditioning frame: decoded plain, remembered
    assert {+1, -1} <= {r.direction for r in propagated}
    for r in propagated:
        d = r.direction
        assert r.memory[0] == 3 and all((j - 3) * d > 0 for j in r.memory[1:])  # the seed, then its own side only
        assert (r.index, d) in seen and seen.count((r.index, d)) == r.turns  # every decode read the memory
        assert (r.memory_s > 0) == r.kept  # kept slices are remembered, failing ones are not
        previous = r.index - d
        if previous != 3 and any(s.index == previous and s.kept for s in res.slices):
            assert previous in r.memory
    assert res.timings["memory_s"] == pytest.approx(sum(r.memory_s for r in res.slices))
    again = _sam2_run(sam2_tool, WALK, vol, gt)  # deterministic
    assert again.visited == res.visited and np.array_equal(again.mask, res.mask)
    assert [s.actions for s in again.slices] == [s.actions for s in res.slices]


def test_sam2_memory_off_is_the_memoryless_path(sam2_tool):
    vol, gt = volume([6, 8, 10, 12, 10, 8, 6])
    off = _sam2_run(sam2_tool, dataclasses.replace(WALK, memory=False), vol, gt)
    plain = _sam2_run(_WithoutMemory(sam2_tool), WALK, vol, gt)
    assert not off.memory and all(s.memory is None and s.memory_s == 0 for s in off.slices)
    assert off.visited == plain.visited and np.array_equal(off.mask, plain.mask)
    for a, b in zip(off.slices, plain.slices, strict=True):
        assert a.actions == b.actions and a.score == b.score and np.array_equal(a.logits, b.logits)
    on = _sam2_run(sam2_tool, WALK, vol, gt)
    assert on.slices[0].score == off.slices[0].score  # the seed decodes without memory either way
    assert any(not np.array_equal(a.logits, b.logits) for a, b in zip(on.slices[1:3], off.slices[1:3]))


# -- the correction guard ---------------------------------------------------------------------------------
class ClickAt(Policy):
    """On propagated slices, one click at ``(x, y)`` then Stop; on the seed slice, Stop at once."""

    name = "click_at"

    def __init__(self, x, y, positive):
        self.point = Point(x, y, positive)

    def act(self, obs, info):
        if info["meta"]["source"]["volume_direction"] == 0 or info["turn"] >= 2:
            return Stop()
        return self.point


def guarded_volume():
    """A disk of radius 8 on every slice; off the seed slice (3) a bright speck (radius 1) inside the
    propagated box, which the box picks up (a leak); a bright blob far outside the box on every slice."""
    vol, gt = volume([8] * 7)
    speck, blob = disk(gt.shape[1:], 31, 31, 1), disk(gt.shape[1:], 42, 42, 3)
    for k in range(7):
        vol[k][blob] = 0.8
        if k != 3:
            vol[k][speck] = 0.8
    return vol, gt, speck, blob


@pytest.mark.parametrize("guard", [False, True])
def test_correction_guard_refuses_corrections_that_move_away_from_the_neighbour(guard):
    vol, gt, speck, blob = guarded_volume()
    tool, env = BrightTool(), EnvConfig(max_turns=3, prompting="all")
    cfg = VolumeConfig(correction_guard=guard, lookahead=0)
    plain = VolumeEpisode(tool, StopPolicy(), env, cfg).run(vol, "disk", seed_slice=3, prompts=[tight_box(gt[3])])
    assert plain.mask[4][speck].all()  # propagation leaks into the speck

    # a wrong correction: adds the far blob (the neighbour has no blob)
    bad = VolumeEpisode(tool, ClickAt(42, 42, True), env, cfg).run(vol, "disk", seed_slice=3,
                                                                   prompts=[tight_box(gt[3])])
    propagated = [r for r in bad.slices if r.direction]
    assert propagated and all(r.corrective == 1 for r in propagated)  # issued either way (and counted)
    assert all(r.refused == guard for r in propagated)
    assert bad.mask[4][blob].all() != guard
    if guard:
        assert np.array_equal(bad.mask, plain.mask)  # the refused slices keep the propagated answers
        assert all(r.to_dict()["refused"] for r in propagated)

    # a repair: removes the speck (the neighbour has none, or had it removed), kept with or without the guard
    good = VolumeEpisode(tool, ClickAt(31, 31, False), env, cfg).run(vol, "disk", seed_slice=3,
                                                                     prompts=[tight_box(gt[3])])
    assert not any(r.refused for r in good.slices)
    assert dice3d(good.mask, gt) == 1.0 > dice3d(plain.mask, gt)


# -- min_fill: a mask that undershot its box hands the box on ---------------------------------------------
class FragmentTool(BrightTool):
    """``BrightTool`` that answers a 3 x 3 fragment at the box's centre on the slices in ``fragment`` whenever
    the box is larger than the fragment (a segmenter that undershoots)."""

    def __init__(self, fragment):
        super().__init__()
        self.fragment = set(fragment)
        self.boxes: dict[int, list] = {}

    def start(self, image):
        session = super().start(image)
        inner = session.predict

        def predict(box=None, points=(), labels=(), mask_logits=None):
            self.boxes.setdefault(session.k, []).append(None if box is None else tuple(int(v) for v in box))
            out = inner(box=box, points=points, labels=labels, mask_logits=mask_logits)
            if session.k in self.fragment and box is not None:
                cx, cy = (int(box[0]) + int(box[2])) // 2, (int(box[1]) + int(box[3])) // 2
                mask = np.zeros_like(out.mask)
                mask[cy - 1:cy + 2, cx - 1:cx + 2] = out.mask[cy - 1:cy + 2, cx - 1:cx + 2]
                return SegOutput(mask=mask, logits=out.logits, score=out.score)
            return out

        session.predict = predict
        return session


def test_min_fill_hands_the_prompt_box_on_when_the_mask_undershot_it():
    vol, gt = volume([0, 8, 9, 10, 9, 8, 0])
    env, user = EnvConfig(prompting="all"), tight_box(gt[3])
    # the seed's answer is a 9-pixel fragment of a 21 x 21 box
    off = VolumeEpisode(FragmentTool({3}), StopPolicy(), env, VolumeConfig(lookahead=0)).run(
        vol, "disk", seed_slice=3, prompts=[user])
    tool = FragmentTool({3})
    on = VolumeEpisode(tool, StopPolicy(), env, VolumeConfig(lookahead=0, min_fill=0.25)).run(
        vol, "disk", seed_slice=3, prompts=[user])
    k4_off = next(s for s in off.slices if s.index == 4)
    k4_on = next(s for s in on.slices if s.index == 4)
    assert k4_off.start.box.area < 10 * 10  # the fragment's box: the next answer is a fragment too
    assert k4_on.start.box == user and tool.boxes[4] == [user.as_tuple()]  # the user's box, handed on
    assert dice3d(on.mask, gt) > dice3d(off.mask, gt)
    # a mask that fills its box hands on its own bounding box (+ margin), as without the rule
    k5_on = next(s for s in on.slices if s.index == 5)
    assert k5_on.start.box == propagated_box(k4_on.mask, VolumeConfig())
    with pytest.raises(ValueError, match="min_fill"):
        VolumeConfig(min_fill=1.5)
