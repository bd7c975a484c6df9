"""most_turns ranking and agent_turns bookkeeping on a stand-in datastore (pure logic)."""

from lib.activelearning.agent_turns import agent_info
from lib.activelearning.most_turns import MostTurns


class Store:
    def __init__(self, infos):
        self.infos = infos

    def get_unlabeled_images(self):
        return list(self.infos)

    def get_image_info(self, i):
        return dict(self.infos[i])


def test_most_turns_first_then_lowest_quality_then_least_recently_served():
    store = Store({
        "a": {"agent_turns": 2.0, "agent_quality": 0.9},
        "b": {"agent_turns": 4.0, "agent_quality": 0.8, "strategy": {"most_turns": {"ts": 50}}},
        "c": {"agent_turns": 4.0, "agent_quality": 0.6, "strategy": {"most_turns": {"ts": 99}}},
        "d": {},  # not scored yet: after every scored image
        "e": {"agent_turns": 4.0, "agent_quality": 0.6, "strategy": {"most_turns": {"ts": 10}}},
    })
    assert MostTurns()({}, store)["id"] == "e"  # 4 turns, quality 0.6, served longest ago
    del store.infos["e"]
    assert MostTurns()({}, store)["id"] == "c"
    store.infos = {"d": {}, "a": {"agent_turns": 1.0}}
    assert MostTurns()({}, store)["id"] == "a"
    assert MostTurns()({}, Store({})) is None


def test_agent_info_summarises_per_label_results():
    info = agent_info([
        {"turns": 2, "predicted_quality": 0.9, "stop_reason": "stop", "target": "liver"},
        {"turns": 5, "predicted_quality": 0.4, "stop_reason": "budget", "target": "pancreas"},
    ])
    assert info["agent_turns"] == 3.5 and info["agent_quality"] == 0.4
    assert info["agent_stop_reason"] == "budget" and info["agent_labels"] == ["liver", "pancreas"]
