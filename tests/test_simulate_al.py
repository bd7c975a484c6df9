"""The simulated active-learning campaign's logic (scripts/simulate_al.py) on a stand-in lab: initial sets, the order
each strategy labels images in (the app's rank keys), the results.json shape, and one scoring episode with the
FakeTool. No model is trained here; the real campaign (LiteMedSAM + the compact policy) is BENCHMARKS.md's."""

import json

import numpy as np
import pytest
import simulate_al as sim

from lib.activelearning.ranking import agent_info
from lib.agent.actions import Box, Stop
from lib.agent.env import EnvConfig
from lib.agent.policies.base import Policy
from lib.tools.fake import FakeTool

POOL = ["a", "b", "c", "d", "e", "f"]
# the agent's score of each pool image, whatever the labelled set (a stand-in: the real lab re-scores per set)
TURNS = {"a": 3, "b": 9, "c": 9, "d": 1, "e": 5, "f": 0}
QUALITY = {"a": 0.5, "b": 0.8, "c": 0.6, "d": 0.2, "e": None, "f": 0.9}
# held-out Dice: each image adds its own gain, so the best order is known
GAIN = {"a": 0.05, "b": 0.10, "c": 0.02, "d": 0.01, "e": 0.03, "f": 0.04}


class StubLab(sim.Lab):
    def __init__(self):
        self.evaluated, self.scored = [], []

    def evaluate(self, labelled):
        self.evaluated.append(labelled)
        return {"dice3d": 0.5 + sum(GAIN[i] for i in labelled), "per_label": {"liver": 0.9}, "n_targets": 3}

    def scores(self, labelled, unlabelled):
        self.scored.append(labelled)
        return {i: {"agent_turns": TURNS[i], "agent_quality": QUALITY[i]} for i in unlabelled}


def config(tmp_path, **kw):
    return sim.CampaignConfig(out=tmp_path, data=tmp_path, **{"seeds": (0, 1, 2), "rounds": 3, **kw})


def test_each_strategy_labels_in_the_order_of_the_apps_rank_keys(tmp_path):
    cfg = config(tmp_path)
    res = sim.run_campaign(cfg, POOL, StubLab())
    assert set(res["runs"]) == {"most_turns", "lowest_quality", "random"}
    for seed in ("0", "1", "2"):
        start = sim.initial_set(POOL, 2, int(seed))
        firsts = {s: res["runs"][s][seed][0] for s in res["runs"]}
        assert all(r["labelled"] == start for r in firsts.values())  # one initial set per seed
        assert len({r["dice3d"] for r in firsts.values()}) == 1
        # most_turns: most corrective actions, ties (b, c: 9) broken by the lower quality (c), then id
        mt = [r["chosen"] for r in res["runs"]["most_turns"][seed][:-1]]
        assert mt == [i for i in ["c", "b", "e", "a", "d", "f"] if i not in start][:3]
        # lowest_quality: lowest quality first, the image without a quality (e) after every scored one
        lq = [r["chosen"] for r in res["runs"]["lowest_quality"][seed][:-1]]
        assert lq == [i for i in ["d", "a", "c", "b", "f", "e"] if i not in start][:3]
        ranking = res["runs"]["lowest_quality"][seed][0]["ranking"]
        assert ranking[0] == lq[0] and sorted(ranking) == sorted(set(POOL) - set(start))
    # random: seeded (the same draws again), from the unlabelled images, and different seeds differ somewhere
    again = sim.run_campaign(config(tmp_path, strategies=("random",)), POOL, StubLab())
    assert again["runs"]["random"] == res["runs"]["random"]
    draws = {s: tuple(r.get("chosen") for r in rows) for s, rows in res["runs"]["random"].items()}
    assert len(set(draws.values())) > 1
    for rows in res["runs"]["random"].values():
        assert all(r["score"] is None and r["chosen"] not in r["labelled"] for r in rows[:-1])


def test_results_shape_summary_and_plot(tmp_path):
    cfg = config(tmp_path, seeds=(0, 1), rounds=2)
    lab = StubLab()
    seen = []
    res = sim.run_campaign(cfg, POOL, lab, on_round=seen.append)
    assert len(seen) == 2 * 3 * 3
    rows = res["runs"]["most_turns"]["0"]
    assert [r["round"] for r in rows] == [0, 1, 2] and [r["n_labelled"] for r in rows] == [2, 3, 4]
    assert "chosen" not in rows[-1] and rows[0]["score"] == {"agent_turns": TURNS[rows[0]["chosen"]],
                                                             "agent_quality": QUALITY[rows[0]["chosen"]]}
    assert rows[1]["order"][-1] == rows[0]["chosen"] and rows[1]["dice3d"] > rows[0]["dice3d"]
    assert all(set(r) >= {"labelled", "dice3d", "per_label", "n_targets"} for r in rows)
    assert frozenset() not in lab.scored and all(len(s) < 4 for s in lab.scored)  # no scoring after the last round
    s = res["summary"]["most_turns"]
    assert set(s["curve"]) == {"2", "3", "4"} and s["curve"]["2"]["n"] == 2
    assert s["curve"]["3"]["min"] <= s["curve"]["3"]["mean"] <= s["curve"]["3"]["max"]
    json.dumps(res)  # results.json is plain JSON
    png = sim.plot(res, tmp_path / "figs" / "al.png")
    assert png.is_file() and png.stat().st_size > 1000
    md = sim.markdown(res)
    assert "| 3 | " in md and "`lowest_quality`" in md and f"{res['summary']['random']['mean_after_first']:.3f}" in md


def test_config_is_validated(tmp_path):
    with pytest.raises(ValueError, match="strategies"):
        config(tmp_path, strategies=("most_turns", "entropy"))
    with pytest.raises(ValueError, match="initial"):
        config(tmp_path, initial=1)
    with pytest.raises(ValueError, match="seeds"):
        config(tmp_path, seeds=(1, 1))
    with pytest.raises(ValueError, match="score_labels"):
        config(tmp_path, score_labels="some")
    with pytest.raises(ValueError, match="pool"):
        sim.run_campaign(config(tmp_path, rounds=5), POOL, StubLab())
    quick = sim.parse_args(["--out", str(tmp_path), "--quick", "--seeds", "3,4"])
    assert quick.seeds == (3,) and quick.rounds == 1 and quick.sft_steps == 5


class BoxThenStop(Policy):
    """On every slice: one box around the bright square, then stop, predicting ``quality``."""

    name = "box_then_stop"

    def __init__(self, quality):
        self.quality = quality

    def reset(self, obs, info, seed=None):
        super().reset(obs, info, seed)
        self.boxed = False

    def act(self, obs, info):
        self.last_quality = self.quality
        if self.boxed:
            return Stop()
        self.boxed = True
        return Box(6, 6, 17, 17)


def test_score_volume_gives_the_keys_agent_turns_scoring_records():
    vol = np.full((5, 24, 24), 0.1, dtype=np.float32)
    vol[1:4, 8:16, 8:16] = 0.9
    env = EnvConfig(max_turns=3)
    res = sim.score_volume(FakeTool(), BoxThenStop(0.7), vol, "liver", env, key="v")
    assert res["target"] == "liver" and res["scope"] == "volume" and res["handoff_actions"] == 0
    assert res["corrective_actions"] >= 1 and res["min_predicted_quality"] == pytest.approx(0.7)
    other = sim.score_volume(FakeTool(), BoxThenStop(0.3), vol, "spleen", env, key="v")
    info = agent_info([res, other])
    assert info["agent_quality"] == pytest.approx(0.3)
    assert info["agent_turns"] == res["corrective_actions"] + other["corrective_actions"]
