"""most_turns / lowest_quality ranking and agent_turns bookkeeping on a stand-in datastore (pure logic, no server)."""

from types import SimpleNamespace

from lib.activelearning.agent_turns import AgentTurnsScoring, agent_info, corrective_actions
from lib.activelearning.lowest_quality import LowestQuality
from lib.activelearning.most_turns import MostTurns
from lib.activelearning.ranking import lowest_quality_key, most_turns_key, ranked
from lib.activelearning.ranking import ranked as ranked_by


class Store:
    def __init__(self, infos):
        self.infos = infos

    def get_unlabeled_images(self):
        return list(self.infos)

    def get_image_info(self, i):
        return dict(self.infos[i])

    def get_image_uri(self, i):
        return f"/data/{i}.nii.gz"

    def update_image_info(self, i, info):
        self.infos[i] = {**self.infos[i], **info}


def test_most_turns_first_then_lowest_quality_then_least_recently_served():
    store = Store({
        "a": {"agent_turns": 2.0, "agent_quality": 0.9},
        "b": {"agent_turns": 4.0, "agent_quality": 0.8, "strategy": {"most_turns": {"ts": 50}}},
        "c": {"agent_turns": 4.0, "agent_quality": 0.6, "strategy": {"most_turns": {"ts": 99}}},
        "d": {},  # not scored yet: after every scored image
        "e": {"agent_turns": 4.0, "agent_quality": 0.6, "strategy": {"most_turns": {"ts": 10}}},
    })
    assert MostTurns()({}, store)["id"] == "e"  # 4 turns, quality 0.6, served longest ago
    assert ranked(store.get_unlabeled_images(), store.get_image_info) == ["e", "c", "b", "a", "d"]
    del store.infos["e"]
    assert MostTurns()({}, store)["id"] == "c"
    store.infos = {"d": {}, "a": {"agent_turns": 1.0}}
    assert MostTurns()({}, store)["id"] == "a"
    assert MostTurns()({}, Store({})) is None


def test_lowest_quality_first_then_most_turns_then_least_recently_served():
    store = Store({
        "a": {"agent_turns": 9.0, "agent_quality": 0.9},
        "b": {"agent_turns": 2.0, "agent_quality": 0.4, "strategy": {"lowest_quality": {"ts": 50}}},
        "c": {"agent_turns": 5.0, "agent_quality": 0.4, "strategy": {"lowest_quality": {"ts": 99}}},
        "d": {},  # not scored yet: after every image with a quality
        "e": {"agent_turns": 5.0, "agent_quality": 0.4, "strategy": {"lowest_quality": {"ts": 10}}},
        "f": {"agent_turns": 12.0, "agent_quality": None},  # scored by a policy without a quality: last but d
        "g": {"agent_turns": 0.0, "agent_quality": 0.2},
    })
    order = ranked_by(store.get_unlabeled_images(), store.get_image_info, "lowest_quality")
    assert order == ["g", "e", "c", "b", "a", "f", "d"]
    assert LowestQuality()({}, store)["id"] == "g"
    del store.infos["g"]
    served = LowestQuality()({}, store)
    assert served["id"] == "e" and served["agent_quality"] == 0.4 and served["agent_turns"] == 5.0
    assert LowestQuality()({}, Store({})) is None
    # the served timestamp is the strategy's own: most_turns' timestamps do not break lowest_quality's ties
    x = {"agent_turns": 1.0, "agent_quality": 0.5, "strategy": {"most_turns": {"ts": 7}}}
    assert lowest_quality_key(x) == (False, 0.5, -1.0, 0) and most_turns_key(x) == (False, -1.0, 0.5, 7)
    # the same infos ranked by most_turns (the app's strategy and the shared key agree)
    assert ranked(store.get_unlabeled_images(), store.get_image_info) == \
        ranked_by(store.get_unlabeled_images(), store.get_image_info, "most_turns")


def volume_result(target, corrective, quality=0.8, stop="policy"):
    """The keys of an agent result JSON in volume scope that active learning reads."""
    return {"scope": "volume", "target": target, "turns": 2, "handoff_actions": 0, "corrective_actions": corrective,
            "predicted_quality": 0.9, "min_predicted_quality": quality, "stop_reason": stop}


def test_agent_info_sums_corrective_actions_over_labels_with_a_per_label_breakdown():
    info = agent_info([volume_result("liver", 7, 0.9), volume_result("pancreas", 12, 0.4, "budget")])
    assert info["agent_turns"] == 19 and info["agent_actions_per_label"] == {"liver": 7, "pancreas": 12}
    assert info["agent_quality"] == 0.4 and info["agent_quality_per_label"] == {"liver": 0.9, "pancreas": 0.4}
    assert info["agent_stop_reason"] == "budget" and info["agent_labels"] == ["liver", "pancreas"]
    assert info["agent_scope"] == "volume"
    # slice-scope (and older) results: executed turns minus the user's hand-off prompts
    assert corrective_actions({"turns": 5, "handoff_actions": 1}) == 4 and corrective_actions({"turns": 3}) == 3
    # a user's request on one label updates that label and keeps the others
    again = agent_info([volume_result("liver", 2, 0.95)], previous=info)
    assert again["agent_actions_per_label"] == {"liver": 2, "pancreas": 12} and again["agent_turns"] == 14
    assert again["agent_quality"] == 0.4


def test_scoring_runs_the_agent_per_label_and_most_turns_serves_the_known_order():
    # corrective actions per (image, label): image totals c 9 (tie with b, lower quality), b 9, a 3, e 1
    table = {("a", "liver"): (1, 0.9), ("a", "spleen"): (2, 0.9),
             ("b", "liver"): (4, 0.8), ("b", "spleen"): (5, 0.85),
             ("c", "liver"): (8, 0.5), ("c", "spleen"): (1, 0.9),
             ("e", "liver"): (0, 0.95), ("e", "spleen"): (1, 0.95)}
    calls = []

    def agent(request):
        image = request["image"].split("/")[-1].split(".")[0]
        calls.append((image, request["label"], request.get("scope")))
        if image == "bad":
            raise ValueError("unreadable")
        corrective, q = table[image, request["label"]]
        return None, volume_result(request["label"], corrective, q)

    agent.store = SimpleNamespace(get=lambda: SimpleNamespace(labels={"liver": 1, "spleen": 2}))
    store = Store({i: {} for i in ("a", "b", "bad", "c", "e")})
    out = AgentTurnsScoring(agent, {"liver": 1, "spleen": 2, "lesion": 5})({"scope": "volume"}, store)
    assert out["scored"] == 4 and set(out["failed"]) == {"bad"}
    assert out["turns"] == {"a": 3, "b": 9, "c": 9, "e": 1}
    assert ("a", "spleen", "volume") in calls and not any(label == "lesion" for _, label, _ in calls)
    assert store.infos["c"]["agent_actions_per_label"] == {"liver": 8, "spleen": 1}
    assert ranked(store.get_unlabeled_images(), store.get_image_info) == ["c", "b", "a", "e", "bad"]
    served = MostTurns()({}, store)
    assert served["id"] == "c" and served["agent_turns"] == 9
    assert served["agent_actions_per_label"] == {"liver": 8, "spleen": 1}
