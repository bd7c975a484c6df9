#!/usr/bin/env python
"""A simulated annotation campaign: does ranking images by the agent (``most_turns``, ``lowest_quality``) pick
the images that help most, compared with ``random``? Inner ring only (no server)::

    python scripts/simulate_al.py --out runs/al_campaign [--seeds 0,1] [--rounds 2] [--quick]

Setup. The sample studies (``scripts/make_sample_studies.py --seed 0 --real``, written into ``--data`` when it
holds none): the pool is the labelled TRAINING volumes (phantoms + the real abdominal CT), the held-out set is
the TEST volumes (phantoms + the real MR, ground truth in ``groundtruth/``). For every seed and strategy:

1. start with ``initial`` pool images drawn by the seed (the same initial set for every strategy of a seed);
2. a round = adapt the segmenter (LiteMedSAM prompt encoder + mask decoder fine-tuned from the RELEASED
   weights on the labelled images, ``tool_steps``), retrain the compact policy from scratch (SFT,
   ``sft_steps``, on expert trajectories of the labelled images: slice hand-off episodes + volume start
   states, the app's ``agent_sft`` recipe), then measure the volume agent's held-out mean 3D Dice (hand-off
   from one jittered box on each target's largest slice, as ``lib.agent.volume_eval.evaluate_volumes``);
3. label ONE more image: ``most_turns`` / ``lowest_quality`` run the agent on every unlabelled pool image
   exactly as the server's ``agent_turns`` scoring does (autonomous ``VolumeEpisode`` from the middle slice, in
   volume scope, per label; ``lib.activelearning.ranking.agent_info``) and take the first image of
   ``lib.activelearning.ranking.ranked`` (the app's own rank keys); ``random`` draws one with the seed.

Simplifications (said so in the outputs): the expert trajectories of each pool image are generated ONCE, with
the released segmenter weights, and reused every round (the expert would drive the adapted segmenter in the
app); training is seeded with ``train_seed`` whatever the campaign seed, so a labelled SET always gives the same
model and is trained once (cached under ``--out/cache/sets``, which makes the run resumable and lets strategies
and seeds that reach the same set share it); the campaign seeds vary the initial set and random's draws.
Slice embeddings are computed once per slice (the image encoder is frozen by the adaptation).

Outputs in ``--out``: ``results.json`` (per strategy, per seed, per round: labelled ids, held-out mean 3D Dice
and per label, the chosen image and its score), ``al_campaign.png`` (held-out Dice against the number of
labelled images, one line per strategy, mean and min-max over seeds; ``--figure`` copies it), ``simulate_al.log``
(with the progress bar).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from lib.activelearning.ranking import RANK_KEYS, agent_info, ranked  # noqa: E402

logger = logging.getLogger("simulate_al")

STRATEGIES = ("most_turns", "lowest_quality", "random")
SCORE_LABELS = ("labelled", "all")


@dataclass
class CampaignConfig:
    """A simulated campaign (module docstring). Budgets are per round."""

    out: Path = Path("runs/al_campaign")
    data: Path = Path("runs/al_campaign/sample-data")
    seeds: tuple[int, ...] = (0, 1)
    strategies: tuple[str, ...] = STRATEGIES
    initial: int = 2
    rounds: int = 2
    tool_steps: int = 60
    sft_steps: int = 60
    train_seed: int = 0
    max_slices_per_case: int = 8
    volume_slices_per_target: int = 2
    score_labels: str = "labelled"
    backend: str = "litemedsam"
    threads: int = 1
    heldout_max_cases: int | None = None
    figure: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out, self.data = Path(self.out), Path(self.data)
        self.figure = None if self.figure is None else Path(self.figure)
        self.seeds = tuple(int(s) for s in self.seeds)
        self.strategies = tuple(self.strategies)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        bad = sorted(set(self.strategies) - set(STRATEGIES))
        if bad or not self.strategies:
            raise ValueError(f"strategies must be some of {STRATEGIES}, got {self.strategies}")
        if self.initial < 2:
            raise ValueError(f"initial must be >= 2 (the segmenter's adaptation holds one image out), got "
                             f"{self.initial}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        for name in ("tool_steps", "sft_steps", "max_slices_per_case", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.volume_slices_per_target < 0:
            raise ValueError(f"volume_slices_per_target must be >= 0 (0 = off), got {self.volume_slices_per_target}")
        if self.score_labels not in SCORE_LABELS:
            raise ValueError(f"score_labels must be one of {SCORE_LABELS}, got {self.score_labels!r}")
        if self.heldout_max_cases is not None and self.heldout_max_cases < 1:
            raise ValueError(f"heldout_max_cases must be >= 1 or None, got {self.heldout_max_cases}")

    def check_pool(self, pool: Sequence[str]) -> None:
        if len(pool) < self.initial + self.rounds:
            raise ValueError(f"the pool has {len(pool)} images; initial {self.initial} + rounds {self.rounds} need "
                             f"{self.initial + self.rounds}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    def training_record(self) -> dict[str, Any]:
        """What a labelled set's models and scores depend on (a cached set trained otherwise is refused)."""
        keys = ("tool_steps", "sft_steps", "train_seed", "max_slices_per_case", "volume_slices_per_target",
                "score_labels", "backend")
        return {k: getattr(self, k) for k in keys}


# -- the campaign (pure logic: a ``Lab`` trains, evaluates and scores) ----------------------------------------
class Lab:
    """What a campaign needs per labelled set; ``scripts/simulate_al.py`` runs the real one (``RealLab``), tests
    a stand-in. Both methods are pure functions of the labelled set (cached by the real lab)."""

    def evaluate(self, labelled: frozenset[str]) -> dict[str, Any]:
        """Held-out metrics of the models trained on ``labelled``: ``{"dice3d": mean over targets, "per_label":
        {label: mean 3D Dice}, "n_targets": int, ...}``."""
        raise NotImplementedError

    def scores(self, labelled: frozenset[str], unlabelled: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Image info (``agent_info`` keys) of every unlabelled pool image, scored with the models of ``labelled``."""
        raise NotImplementedError


def initial_set(pool: Sequence[str], n: int, seed: int) -> list[str]:
    """The seed's initial labelled images (the same for every strategy)."""
    rng = np.random.default_rng([int(seed), 0])
    return sorted(str(x) for x in rng.choice(sorted(pool), size=n, replace=False))


def choose(strategy: str, unlabelled: Sequence[str], scores: Mapping[str, Mapping[str, Any]] | None,
           rng: np.random.Generator) -> str:
    """The next image a strategy serves. Ranked strategies use the app's rank keys (nothing was served before in a
    simulation: every served image is labelled at once); ``random`` draws from the sorted ids with ``rng``."""
    if strategy == "random":
        return str(sorted(unlabelled)[int(rng.integers(len(unlabelled)))])
    if scores is None:
        raise ValueError(f"{strategy} needs the agent's scores")
    return ranked(list(unlabelled), lambda i: dict(scores[i]), strategy, key=RANK_KEYS[strategy])[0]


def run_campaign(cfg: CampaignConfig, pool: Sequence[str], lab: Lab,
                 on_round: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every (seed, strategy) campaign; returns the ``results.json`` dict.

    ``results["runs"][strategy][str(seed)]`` is a list of rounds: ``round``, ``n_labelled``, ``labelled``
    (sorted ids), ``dice3d`` (held-out mean 3D Dice), ``per_label``, ``n_targets``, and, except in the last
    round, ``chosen`` (the image labelled next) with ``score`` (its ``agent_turns`` / ``agent_quality`` when the
    strategy scored the pool, else None) and ``ranking`` (the ranked strategy's full order)."""
    cfg.check_pool(pool)
    pool = sorted(str(p) for p in pool)
    runs: dict[str, dict[str, list]] = {s: {} for s in cfg.strategies}
    for seed in cfg.seeds:
        start = initial_set(pool, cfg.initial, seed)
        for strategy in cfg.strategies:
            rng = np.random.default_rng([int(seed), 1])
            labelled = list(start)
            rows = []
            for r in range(cfg.rounds + 1):
                key = frozenset(labelled)
                ev = lab.evaluate(key)
                row = {"round": r, "n_labelled": len(labelled), "labelled": sorted(labelled),
                       "order": list(labelled), "dice3d": ev["dice3d"], "per_label": ev["per_label"],
                       "n_targets": ev.get("n_targets")}
                if r < cfg.rounds:
                    unlabelled = [p for p in pool if p not in key]
                    scores = None if strategy == "random" else lab.scores(key, unlabelled)
                    pick = choose(strategy, unlabelled, scores, rng)
                    row["chosen"] = pick
                    row["score"] = None if scores is None else {
                        k: scores[pick].get(k) for k in ("agent_turns", "agent_quality")}
                    if scores is not None:
                        row["ranking"] = ranked(unlabelled, lambda i, s=scores: dict(s[i]), strategy,
                                                key=RANK_KEYS[strategy])
                    labelled.append(pick)
                rows.append(row)
                if on_round is not None:
                    on_round({"seed": seed, "strategy": strategy, **row})
            runs[strategy][str(seed)] = rows
    return {"config": cfg.to_dict(), "pool": pool, "runs": runs, "summary": summarise(runs)}


def summarise(runs: Mapping[str, Mapping[str, list]]) -> dict[str, Any]:
    """Per strategy and number of labelled images: mean / min / max held-out Dice over seeds, and the mean over
    the rounds after the first (the area under the curve, where strategies differ)."""
    out: dict[str, Any] = {}
    for strategy, by_seed in runs.items():
        per_n: dict[int, list[float]] = {}
        for rows in by_seed.values():
            for row in rows:
                per_n.setdefault(int(row["n_labelled"]), []).append(float(row["dice3d"]))
        curve = {str(n): {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v)), "n": len(v)}
                 for n, v in sorted(per_n.items())}
        later = [float(row["dice3d"]) for rows in by_seed.values() for row in rows if row["round"] > 0]
        out[strategy] = {"curve": curve, "mean_after_first": float(np.mean(later)) if later else float("nan")}
    return out


def plot(results: Mapping[str, Any], path: Path) -> Path:
    """Held-out mean 3D Dice against the number of labelled images: one line per strategy (mean over seeds),
    shaded min-max over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"most_turns": "tab:red", "lowest_quality": "tab:blue", "random": "tab:grey"}
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for i, (strategy, s) in enumerate(results["summary"].items()):
        ns = [int(n) for n in s["curve"]]
        mean = [s["curve"][str(n)]["mean"] for n in ns]
        lo = [s["curve"][str(n)]["min"] for n in ns]
        hi = [s["curve"][str(n)]["max"] for n in ns]
        x = np.asarray(ns, dtype=float) + (i - 1) * 0.04  # a little apart: the first point is shared
        c = colours.get(strategy, f"C{i}")
        ax.plot(x, mean, marker="o", color=c, label=f"{strategy}")
        ax.fill_between(x, lo, hi, color=c, alpha=0.15)
    seeds = results["config"]["seeds"]
    ax.set_xlabel("labelled pool images")
    ax.set_ylabel("held-out mean 3D Dice (volume agent, hand-off)")
    ax.set_title(f"Simulated campaign: mean and min-max over seeds {seeds}")
    ax.set_xticks(sorted({int(n) for s in results["summary"].values() for n in s["curve"]}))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown(results: Mapping[str, Any]) -> str:
    """The campaign as Markdown: held-out mean 3D Dice per number of labelled images and strategy (mean and
    min-max over seeds), then every seed's picks and curve."""
    summary = results["summary"]
    strategies = list(summary)
    ns = sorted({int(n) for s in summary.values() for n in s["curve"]})
    seeds = results["config"]["seeds"]
    lines = [f"Held-out mean 3D Dice (mean over seeds {', '.join(map(str, seeds))}; min-max in brackets):", "",
             "| labelled images | " + " | ".join(f"`{s}`" for s in strategies) + " |",
             "|---|" + "---|" * len(strategies)]
    for n in ns:
        cells = []
        for s in strategies:
            c = summary[s]["curve"].get(str(n))
            cells.append("" if c is None else f"{c['mean']:.3f} ({c['min']:.3f}-{c['max']:.3f})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("| mean after the first round | " + " | ".join(f"{summary[s]['mean_after_first']:.3f}"
                                                             for s in strategies) + " |")
    lines += ["", "Per seed: the images each strategy labelled, in order, and the held-out Dice after each round "
              "(chosen image's score: corrective actions / lowest predicted quality):", "",
              "| seed | strategy | initial | picks (score) | held-out 3D Dice per round |", "|---|---|---|---|---|"]
    for s in strategies:
        for seed, rows in results["runs"][s].items():
            picks = []
            for r in rows[:-1]:
                sc = r.get("score")
                q = None if not sc else sc.get("agent_quality")
                picks.append(r["chosen"] + ("" if not sc else f" ({sc['agent_turns']} / "
                                            f"{'n/a' if q is None else f'{q:.2f}'})"))
            lines.append(f"| {seed} | `{s}` | {', '.join(rows[0]['labelled'])} | {'; '.join(picks)} | "
                         + " → ".join(f"{r['dice3d']:.3f}" for r in rows) + " |")
    return "\n".join(lines)


# -- the real lab: LiteMedSAM + the compact policy -----------------------------------------------------------
def set_name(labelled: frozenset[str]) -> str:
    return "+".join(sorted(labelled))


class EmbeddingMemo:
    """Wraps ``tool.embed`` so each distinct windowed slice is encoded once per process (the image encoder is
    frozen: the adaptation trains the prompt encoder and mask decoder only). Keyed by the pixels' SHA-1."""

    def __init__(self, tool) -> None:
        import hashlib

        self._hash = hashlib.sha1
        self._embed = tool.embed
        self.memo: dict[str, Any] = {}
        self.calls = 0
        tool.embed = self

    def __call__(self, image: np.ndarray):
        a = np.ascontiguousarray(image)
        key = self._hash(a.tobytes() + str(a.shape).encode() + str(a.dtype).encode()).hexdigest()
        if key not in self.memo:
            self.calls += 1
            self.memo[key] = self._embed(image)
        return self.memo[key]


class RealLab(Lab):
    """LiteMedSAM adapted per labelled set + a compact policy trained per labelled set (cached on disk)."""

    def __init__(self, cfg: CampaignConfig, studies: Path) -> None:
        import torch

        from lib.agent.settings import EpisodeSettings
        from lib.data.dataset import Dataset
        from lib.learning.segmenter.backends import LiteMedSAMBackend
        from lib.tools.litemedsam import LiteMedSAMTool, released_checkpoint

        if cfg.backend != "litemedsam":
            raise ValueError("the campaign adapts LiteMedSAM (the only backend with a fine-tuning recipe)")
        torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.ds = Dataset.from_dir(studies)
        self.labels = {name: int(v) for v, name in self.ds.labels.items() if int(v)}
        self.settings = EpisodeSettings()
        self.cases = {c.case_id: c for c in self.ds.cases("training")}
        heldout = self.ds.cases("test")
        self.heldout = heldout[: cfg.heldout_max_cases] if cfg.heldout_max_cases else heldout
        self.cache = cfg.out / "cache"

        class Backend(LiteMedSAMBackend):  # the trainable backend, its encoder on ``cfg.threads`` threads
            def __init__(self) -> None:
                self.tool = LiteMedSAMTool(adapted=None, device="cpu", threads=cfg.threads, encoder_runtime="auto",
                                           block_export=True)
                self.net = self.tool.net
                self._sha = released_checkpoint()[1]
                self.encoder_calls = 0

        self.backend = Backend()
        self.backend.tool.prepare_encoder()
        self.tool = self.backend.tool  # the agent drives the same network the adaptation trains
        self.released = self.backend.trainable_state_dict()
        self.memo = EmbeddingMemo(self.tool)
        self._volumes: dict[str, tuple] = {}
        self._loaded: str | None = None
        self.policy = None
        self.seconds: dict[str, float] = {}

    @property
    def pool(self) -> list[str]:
        return sorted(self.cases)

    def _tick(self, what: str, t0: float) -> None:
        self.seconds[what] = self.seconds.get(what, 0.0) + time.perf_counter() - t0

    # -- data
    def volume(self, case) -> tuple:
        """(windowed (K, J, I) float32, integer labels, spacing, windowing key) of a case, loaded once."""
        from lib.agent.volume_eval import load_case, window_volume

        if case.case_id not in self._volumes:
            vol, lab = load_case(self.ds, case)
            win = self.settings.windowing(vol.modality)
            self._volumes[case.case_id] = (window_volume(vol.array, win), lab, vol.spacing, win.key)
        return self._volumes[case.case_id]

    def trajectories(self, case_id: str) -> list:
        """Expert trajectories of one pool image (slice hand-off episodes + volume start states), generated once
        with the RELEASED segmenter weights and cached."""
        from lib.agent.trajectories import read_jsonl, write_jsonl
        from lib.data.dataset import Dataset
        from lib.learning.policy.data import TrajectoryConfig, expert_trajectories
        from lib.learning.policy.volume_data import VolumeStarts

        path = self.cache / "trajectories" / f"{case_id}.jsonl"
        if path.is_file():
            return read_jsonl(path)
        t0 = time.perf_counter()
        self.backend.load_trainable(self.released)
        self._loaded = None
        n = self.cfg.volume_slices_per_target
        data = TrajectoryConfig(episode=self.settings, seed=self.cfg.train_seed,
                                max_slices_per_case=self.cfg.max_slices_per_case,
                                volume=VolumeStarts(max_slices_per_target=n) if n else VolumeStarts(sources=()))
        one = Dataset(root=self.ds.root, labels=self.ds.labels, modality=self.ds.modality,
                      training=[self.cases[case_id]])
        trajs = expert_trajectories(one, self.tool, self.labels, data)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        write_jsonl(tmp, trajs, append=False)
        tmp.replace(path)
        self._tick("trajectories", t0)
        logger.info("expert trajectories of %s: %d in %.0f s", case_id, len(trajs), time.perf_counter() - t0)
        return trajs

    # -- training (cached per labelled set)
    def train(self, labelled: frozenset[str]) -> Path:
        """Adapt the segmenter and train the policy on ``labelled``; returns the set's folder (``adapted.pt``,
        ``adapted.json``, ``policy/``, ``train.json``)."""
        from lib.learning.checkpoint import publish
        from lib.learning.policy.data import TrajectoryConfig
        from lib.learning.policy.sft import SFTConfig, train_sft
        from lib.learning.segmenter.config import ToolFinetuneConfig
        from lib.learning.segmenter.finetune import finetune

        folder = self.cache / "sets" / set_name(labelled)
        if (folder / "train.json").is_file():
            old = json.loads((folder / "train.json").read_text()).get("config")
            if old is not None and old != self.cfg.training_record():
                raise SystemExit(f"{folder} was trained with {old}, not {self.cfg.training_record()}; "
                                 "use another --out")
            return folder
        trajs = [t for c in sorted(labelled) for t in self.trajectories(c)]
        t0 = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.load_trainable(self.released)
        self._loaded = None
        steps = self.cfg.tool_steps
        tcfg = ToolFinetuneConfig.from_yaml(
            ROOT / "configs" / "tool_finetune.yaml", steps=steps, val_every=steps, warmup_steps=min(50, steps // 5),
            seed=self.cfg.train_seed, threads=self.cfg.threads, cache_dir=str(self.cache / "embeddings"),
            progress=False, max_val_samples=8, patience=0)
        info = finetune(self.ds, tcfg, folder / "tool", cases=[self.cases[c] for c in sorted(labelled)],
                        source=f"pool images {sorted(labelled)}", backend=self.backend)
        shutil.copy2(folder / "tool" / "adapted.pt", folder / "adapted.pt")
        shutil.copy2(folder / "tool" / "adapted.json", folder / "adapted.json")
        t_tool = time.perf_counter() - t0
        self._tick("tool_finetune", t0)
        t1 = time.perf_counter()
        scfg = SFTConfig(data=TrajectoryConfig(episode=self.settings, seed=self.cfg.train_seed),
                         steps=self.cfg.sft_steps, eval_every=self.cfg.sft_steps, val_fraction=0.0,
                         warmup_steps=min(20, self.cfg.sft_steps // 5), max_minutes=0, seed=self.cfg.train_seed,
                         threads=self.cfg.threads)
        scratch = folder / "policy.tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        stats = train_sft(scfg, trajs, scratch, self.labels, images=self.ds)
        publish(scratch, folder / "policy")
        shutil.rmtree(scratch, ignore_errors=True)
        self._tick("sft", t1)
        record = {"labelled": sorted(labelled), "config": self.cfg.training_record(), "n_trajectories": len(trajs),
                  "tool": {"steps": info["steps"], "before": info["metrics"]["before"].get("dice_per_click"),
                           "after": info["metrics"]["after"].get("dice_per_click"), "seconds": t_tool},
                  "sft": {k: stats.get(k) for k in ("steps", "n_train_states", "train_loss", "time_s")}}
        (folder / "train.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
        logger.info("trained %s: tool %.0f s (best step %s), SFT %.0f s on %d trajectories", set_name(labelled),
                    t_tool, info["steps"]["best"], time.perf_counter() - t1, len(trajs))
        return folder

    def load(self, labelled: frozenset[str]) -> None:
        """Put the set's adapted segmenter into the tool and its policy into ``self.policy``."""
        import torch

        from lib.agent.policies.compact import CompactPolicy

        name = set_name(labelled)
        if self._loaded == name:
            return
        folder = self.train(labelled)
        self.backend.load_trainable(self.released)
        delta = torch.load(folder / "adapted.pt", map_location="cpu", weights_only=True)
        self.tool.net.load_state_dict(delta, strict=False)
        self.policy = CompactPolicy.load(folder / "policy")
        self._loaded = name

    # -- the measurements
    def evaluate(self, labelled: frozenset[str]) -> dict[str, Any]:
        from lib.agent.volume_eval import evaluate_target

        path = self.cache / "sets" / set_name(labelled) / "eval.json"
        if path.is_file():
            return json.loads(path.read_text())
        self.load(labelled)
        t0 = time.perf_counter()
        env = self.settings.env_config(self.cfg.backend)
        rows = []
        for case in self.heldout:
            pixels, lab, spacing, wkey = self.volume(case)
            for name, value in sorted(self.labels.items(), key=lambda x: x[1]):
                gt = lab == value
                if not gt.any():
                    continue
                r = evaluate_target(self.tool, self.policy, pixels, gt, spacing, name, case_id=case.case_id,
                                    mode="handoff", env_config=env, baselines=(), box_jitter=self.settings.box_jitter,
                                    seed=0, key=(case.case_id, wkey))
                rows.append({"case_id": case.case_id, "label": name, "dice3d": r["dice3d"], "nsd": r["nsd"],
                             "actions": r["actions"]})
        per_label = {n: float(np.mean([r["dice3d"] for r in rows if r["label"] == n]))
                     for n in sorted({r["label"] for r in rows})}
        per_case = {c: float(np.mean([r["dice3d"] for r in rows if r["case_id"] == c]))
                    for c in sorted({r["case_id"] for r in rows})}
        out = {"dice3d": float(np.mean([r["dice3d"] for r in rows])), "per_label": per_label, "per_case": per_case,
               "nsd": float(np.mean([r["nsd"] for r in rows])), "n_targets": len(rows), "rows": rows,
               "seconds": time.perf_counter() - t0}
        path.write_text(json.dumps(out, indent=1) + "\n")
        self._tick("evaluate", t0)
        logger.info("held-out %s: mean 3D Dice %.3f over %d targets (%.0f s)", set_name(labelled), out["dice3d"],
                    len(rows), out["seconds"])
        return out

    def score_labels(self, labelled: frozenset[str]) -> list[str]:
        """Labels the scoring pass runs: every label of the policy (``all``, the server's default request) or the
        labels present in the labelled images (``labelled``, a scoring request naming them)."""
        if self.cfg.score_labels == "all":
            return list(self.labels)
        present: set[int] = set()
        for c in labelled:
            present |= {int(v) for v in np.unique(self.volume(self.cases[c])[1])}
        return [n for n, v in self.labels.items() if v in present]

    def scores(self, labelled: frozenset[str], unlabelled: Sequence[str]) -> dict[str, dict[str, Any]]:
        path = self.cache / "sets" / set_name(labelled) / "scores.json"
        done = json.loads(path.read_text()) if path.is_file() else {}
        todo = [c for c in unlabelled if c not in done]
        if not todo:
            return {c: done[c] for c in unlabelled}
        self.load(labelled)
        t0 = time.perf_counter()
        names = self.score_labels(labelled)
        for c in todo:
            pixels, _, _, wkey = self.volume(self.cases[c])
            results = [score_volume(self.tool, self.policy, pixels, name, self.settings.env_config(self.cfg.backend),
                                    key=(c, wkey), case_id=c) for name in names]
            done[c] = agent_info(results)
            path.write_text(json.dumps(done, indent=1) + "\n")
        self._tick("scoring", t0)
        logger.info("scored %s with the models of %s (%d labels): %s (%.0f s)", todo, set_name(labelled), len(names),
                    {c: (done[c]["agent_turns"], _round(done[c]["agent_quality"])) for c in todo},
                    time.perf_counter() - t0)
        return {c: done[c] for c in unlabelled}


def _round(q: float | None) -> float | None:
    return None if q is None else round(float(q), 3)


def score_volume(tool, policy, pixels: np.ndarray, label: str, env_config, *, key: Any = None,
                 case_id: str = "", volume_config=None) -> dict[str, Any]:
    """The agent's result keys that ``agent_turns`` scoring records, for one label of one image: an autonomous
    volume episode seeded on the middle slice (what the server's scoring request runs in volume scope)."""
    from lib.agent.volume import VolumeConfig, VolumeEpisode
    from lib.tools.cache import SessionCache

    ep = VolumeEpisode(tool, policy, env_config, volume_config or VolumeConfig(), cache=SessionCache(1 << 30))
    res = ep.run(pixels, label, seed_slice=None, prompts=[], seed=0, key=key, meta={"case_id": case_id})
    kept_q = [s.predicted_quality for s in res.slices if s.kept and s.predicted_quality is not None]
    first = res.slices[0] if res.slices else None
    return {"scope": "volume", "target": label, "corrective_actions": int(res.corrective_actions),
            "min_predicted_quality": min(kept_q) if kept_q else None,
            "predicted_quality": None if first is None else first.predicted_quality,
            "stop_reason": None if first is None else first.stop_reason, "handoff_actions": 0}


# -- command line ---------------------------------------------------------------------------------------------
class _Tee:
    """tqdm's stream: the terminal and the log file."""

    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, s: str) -> None:
        for st in self.streams:
            st.write(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def parse_args(argv: list[str] | None = None) -> CampaignConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = CampaignConfig()
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "al_campaign")
    p.add_argument("--data", type=Path, default=None,
                   help="sample-data folder (its studies/ is used; generated with --seed 0 --real when missing; "
                        "default: <out>/sample-data)")
    p.add_argument("--seeds", default=",".join(map(str, d.seeds)), help="comma-separated campaign seeds")
    p.add_argument("--strategies", default=",".join(d.strategies))
    p.add_argument("--initial", type=int, default=d.initial, help="labelled images at the start")
    p.add_argument("--rounds", type=int, default=d.rounds, help="images added, one per round")
    p.add_argument("--tool-steps", type=int, default=d.tool_steps, help="segmenter fine-tune steps per round")
    p.add_argument("--sft-steps", type=int, default=d.sft_steps, help="policy SFT steps per round")
    p.add_argument("--train-seed", type=int, default=d.train_seed)
    p.add_argument("--max-slices-per-case", type=int, default=d.max_slices_per_case,
                   help="slice hand-off targets per image for the expert trajectories")
    p.add_argument("--volume-slices-per-target", type=int, default=d.volume_slices_per_target,
                   help="volume start states per (image, label) and source (0 = off)")
    p.add_argument("--score-labels", choices=SCORE_LABELS, default=d.score_labels,
                   help="labels the agent scores a pool image on: those present in the labelled images, or all")
    p.add_argument("--heldout-max-cases", type=int, default=None)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--figure", type=Path, default=None, help="also copy the plot here (docs/figures/...)")
    p.add_argument("--report-only", action="store_true",
                   help="only redraw the plot and report.md from <out>/results.json")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 seed, 1 round, 5 steps each, 2 slices per image, 1 held-out case")
    a = p.parse_args(argv)
    kw = dict(out=a.out, data=a.data or a.out / "sample-data", seeds=tuple(int(s) for s in a.seeds.split(",")),
              strategies=tuple(s.strip() for s in a.strategies.split(",")), initial=a.initial, rounds=a.rounds,
              tool_steps=a.tool_steps, sft_steps=a.sft_steps, train_seed=a.train_seed,
              max_slices_per_case=a.max_slices_per_case, volume_slices_per_target=a.volume_slices_per_target,
              score_labels=a.score_labels, threads=a.threads, heldout_max_cases=a.heldout_max_cases, figure=a.figure)
    if a.quick:
        kw.update(seeds=kw["seeds"][:1], rounds=1, tool_steps=5, sft_steps=5, max_slices_per_case=2,
                  volume_slices_per_target=1, heldout_max_cases=1)
    try:
        cfg = CampaignConfig(**kw)
        cfg.extra["report_only"] = a.report_only
        return cfg
    except ValueError as e:
        p.error(str(e))
        raise


def write_report(results: Mapping[str, Any], cfg: CampaignConfig) -> None:
    """``al_campaign.png`` (copied to ``cfg.figure``) and ``report.md`` in ``cfg.out``."""
    png = plot(results, cfg.out / "al_campaign.png")
    if cfg.figure is not None:
        cfg.figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, cfg.figure)
    (cfg.out / "report.md").write_text(markdown(results) + "\n", encoding="utf-8")


def studies_folder(data: Path) -> Path:
    studies = data / "studies"
    if not (studies / "dataset.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_sample_studies.py"), "--out", str(data),
                        "--seed", "0", "--real"], check=True)
    return studies


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    cfg.out.mkdir(parents=True, exist_ok=True)
    if cfg.extra.pop("report_only", False):
        write_report(json.loads((cfg.out / "results.json").read_text()), cfg)
        print(markdown(json.loads((cfg.out / "results.json").read_text())))
        return 0
    log_path = cfg.out / "simulate_al.log"
    log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.StreamHandler(sys.stderr), logging.StreamHandler(log_file)])
    from tqdm import tqdm

    t0 = time.perf_counter()
    studies = studies_folder(cfg.data)
    lab = RealLab(cfg, studies)
    logger.info("pool %s, held out %s, config %s", lab.pool, [c.case_id for c in lab.heldout], cfg.to_dict())
    for c in lab.pool:  # every pool image may get labelled: its expert trajectories first (cached)
        lab.trajectories(c)
    total = len(cfg.seeds) * len(cfg.strategies) * (cfg.rounds + 1)
    bar = tqdm(total=total, desc="campaign rounds", unit="round", file=_Tee(sys.stderr, log_file), mininterval=1)

    def on_round(row: dict[str, Any]) -> None:
        bar.update(1)
        bar.set_postfix(seed=row["seed"], strategy=row["strategy"], n=row["n_labelled"], dice=f"{row['dice3d']:.3f}")
        logger.info("seed %s %s round %d: %d labelled, held-out 3D Dice %.3f%s", row["seed"], row["strategy"],
                    row["round"], row["n_labelled"], row["dice3d"],
                    f", next {row['chosen']} (score {row['score']})" if "chosen" in row else "")

    results = run_campaign(cfg, lab.pool, lab, on_round)
    bar.close()
    results.update({
        "heldout": [c.case_id for c in lab.heldout],
        # this process only: a resumed run does not count what earlier runs cached (each set's train.json and
        # eval.json keep their own seconds)
        "seconds_this_run": {"total": time.perf_counter() - t0, **lab.seconds},
        "encoder_calls": lab.memo.calls,
        "notes": ("expert trajectories generated once per pool image with the released segmenter weights and reused "
                  "every round; training seeded with train_seed whatever the campaign seed (a labelled set is "
                  "trained once and shared); seeds vary the initial set and random's draws"),
        "sets": {p.name: json.loads((p / "train.json").read_text())
                 for p in sorted((cfg.out / "cache" / "sets").glob("*")) if (p / "train.json").is_file()},
    })
    (cfg.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    write_report(results, cfg)
    for strategy, s in results["summary"].items():
        logger.info("%s: %s; mean after the first round %.3f", strategy,
                    {n: round(v["mean"], 3) for n, v in s["curve"].items()}, s["mean_after_first"])
    logger.info("campaign done in %.1f min", (time.perf_counter() - t0) / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
