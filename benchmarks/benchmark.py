#!/usr/bin/env python
"""Benchmark of the compact agent on the sample phantoms: train (small budget), evaluate held out, report.

    python benchmarks/benchmark.py [--work runs/agent_slice] [--backend litemedsam] [--tool-weights DIR] \\
        [--sft-minutes M] [--rl-minutes M] [--eval-max-slices-per-case 0] [--stages all]

Stages (each cached in ``--work``, so an interrupted run resumes; ``--force STAGE`` redoes one):

1. ``data``: ``scripts/make_sample_studies.py`` phantoms (5 labelled training studies, 3 held-out test ones).
2. ``trajectories``: expert trajectories on the TRAINING split with the real tool, appended per case (slice
   passes, the volume start states' pass and, with ``--dagger CKPT``, the states that checkpoint reaches itself).
3. ``sft``: behaviour cloning (``configs/sft.yaml`` + the budget flags), validation split by case.
4. ``rl``: GRPO from the SFT checkpoint (``configs/rl.yaml`` + the budget flags).
5. ``eval``: every TEST target encoded once; box-only, ellipse, expert, compact SFT and compact SFT+GRPO in
   hand-off mode (the same jittered box for all, drawn exactly as ``scripts/evaluate.py`` draws it) and
   expert / SFT / SFT+GRPO in autonomous mode, at the same turn budget. Metrics come from
   ``scripts/evaluate.py``'s own scoring functions.
6. ``report``: the table goes into BENCHMARKS.md under "## Agent on one slice: compact policy, SFT and GRPO"
   (only that section is replaced), learning curves and Dice-vs-turn plots into docs/figures/.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

SECTION = "## Agent on one slice: compact policy, SFT and GRPO"
STAGES = ("data", "trajectories", "sft", "rl", "eval", "report")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from lib.agent.settings import add_episode_args, episode_from_args

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "agent_slice", help="working folder (cached stages)")
    p.add_argument("--backend", default="litemedsam", help="segmentation backend")
    p.add_argument("--tool-weights", default=None, help="adapted segmenter weights (folder with adapted.pt)")
    p.add_argument("--stages", default="all", help=f"comma-separated subset of {','.join(STAGES)} (default all)")
    p.add_argument("--force", default="", help="comma-separated stages to redo even when cached")
    p.add_argument("--sft-config", type=Path, default=ROOT / "configs" / "sft.yaml")
    p.add_argument("--rl-config", type=Path, default=ROOT / "configs" / "rl.yaml")
    p.add_argument("--sft-steps", type=int, default=None)
    p.add_argument("--sft-minutes", type=float, default=None, help="override the recipe's max_minutes")
    p.add_argument("--rl-steps", type=int, default=None)
    p.add_argument("--rl-minutes", type=float, default=None, help="override the recipe's max_minutes")
    p.add_argument("--box-to-point-prob", type=float, default=0.75,
                   help="expert Box-to-Point share for the SFT data (the hand-off mode starts from a box)")
    p.add_argument("--episodes-per-target", type=int, default=1)
    p.add_argument("--extra-episodes", type=int, default=1,
                   help="a second trajectory pass: this many more Box-to-Point episodes per target (new seeds, new "
                        "hand-off boxes): the hand-off refinement data the first pass has too little of")
    p.add_argument("--extra-retries", type=int, default=1, help="expert retries in the extra pass")
    p.add_argument("--train-max-slices-per-case", type=int, default=None)
    p.add_argument("--dagger", type=Path, default=None,
                   help="a compact policy checkpoint: one more trajectory pass (trajectories_dagger.jsonl) in which "
                        "the expert labels the volume states THAT policy reaches in its own volume episodes "
                        "(DAgger; the 'policy' start source); the SFT stage then trains on it too")
    p.add_argument("--eval-max-slices-per-case", type=int, default=0,
                   help="cap of held-out (slice, label) targets per case, evenly spaced (0 = every target, the "
                        "default: a cap of 24 kept 4 of the 14 lesion targets, 3 of them MR lesions a box gets right)")
    add_episode_args(p)  # for the expert data, GRPO and the evaluation alike
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the CPU is shared)")
    p.add_argument("--real", action="store_true",
                   help="add the real CT (training) and MR (held out) sample studies to the phantoms; the report "
                        "then shows phantoms and real side by side")
    p.add_argument("--benchmarks", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures")
    args = p.parse_args(argv)
    args.stages = list(STAGES) if args.stages == "all" else [s.strip() for s in args.stages.split(",")]
    args.force = {s.strip() for s in args.force.split(",") if s.strip()}
    args.episode = episode_from_args(args, backend=args.backend)
    unknown = set(args.stages) - set(STAGES) | args.force - set(STAGES)
    if unknown:
        p.error(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    return args


# ---- stages ---------------------------------------------------------------------------------------------
def stage_data(args: argparse.Namespace) -> Path:
    data = args.work / "sample-data"
    if not (data / "studies" / "dataset.json").is_file() or "data" in args.force:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_sample_studies.py"), "--out", str(data),
                        "--seed", str(args.seed), "--force", *(["--real"] if args.real else [])], check=True)
    return data / "studies"


def stage_trajectories(args: argparse.Namespace, studies: Path, tool, labels: dict[str, int]) -> Path:
    from lib.data.dataset import Dataset
    from lib.learning.policy.data import expert_trajectories
    from lib.learning.policy.sft import SFTConfig
    from lib.learning.policy.volume_data import VolumeStarts, volume_expert_trajectories
    from lib.learning.recipe import load_recipe

    cfg = sft_config(args, load_recipe)(SFTConfig).data
    volume_starts = cfg.volume
    cfg.volume = VolumeStarts(sources=())  # the slice passes; volume start states get their own pass and file
    ds = Dataset.from_dir(studies)
    path = per_case_pass(args, "", ds, cfg.split, lambda one: expert_trajectories(one, tool, labels, cfg))
    if args.extra_episodes:
        cfg.first_episode = cfg.episodes_per_target
        cfg.episodes_per_target = args.extra_episodes
        cfg.box_to_point_prob = 1.0
        # fewer click candidates per turn than the first pass's four: each rejected candidate costs a decoder call,
        # and this pass is there for new hand-off boxes (under the reference's `newest` prompting clicks were kept
        # in 5 of 145 expert actions; with `all` + local merge they are kept far more often, hence 2 candidates)
        cfg.retries = args.extra_retries
        per_case_pass(args, "_extra", ds, cfg.split, lambda one: expert_trajectories(one, tool, labels, cfg))
    volume_passes = [("_volume", volume_starts)] if volume_starts.enabled else []
    if args.dagger is not None:
        volume_passes.append(("_dagger", dataclasses.replace(volume_starts, sources=("policy",),
                                                             policy=str(args.dagger))))
    for name, starts in volume_passes:
        per_case_pass(args, name, ds, cfg.split, lambda one, starts=starts: volume_expert_trajectories(
            one, tool, labels, cfg.episode, starts, split=cfg.split, seed=cfg.seed, expert=cfg.expert_config()))
    return path


#: the trajectory passes, each with its own file (``trajectories{pass}.jsonl``) and time record
PASSES = ("", "_extra", "_volume", "_dagger")


def per_case_pass(args: argparse.Namespace, name: str, ds, split: str, generate) -> Path:
    """Run ``generate(one-case Dataset) -> trajectories`` case by case into ``trajectories{name}.jsonl``, appending
    after each case (an interrupted run resumes at the next case) and adding up its seconds beside it."""
    from lib.agent.trajectories import read_jsonl, repair_tail, write_jsonl
    from lib.data.dataset import Dataset

    path, times = args.work / f"trajectories{name}.jsonl", args.work / f"trajectories{name}_time.json"
    if "trajectories" in args.force:
        path.unlink(missing_ok=True)
        times.unlink(missing_ok=True)
    repair_tail(path)
    done = {t.case_id for t in read_jsonl(path)} if path.is_file() else set()
    spent = json.loads(times.read_text())["seconds"] if times.is_file() else 0.0
    for case in ds.cases(split):
        if case.case_id in done:
            continue
        t0 = time.perf_counter()
        trajs = generate(Dataset(root=ds.root, labels=ds.labels, modality=ds.modality, training=[case]))
        write_jsonl(path, trajs, append=True)
        spent += time.perf_counter() - t0
        times.write_text(json.dumps({"seconds": spent}))
        logging.info("trajectories%s: case %s -> %d in %.0f s", name, case.case_id, len(trajs),
                     time.perf_counter() - t0)
    return path


def trajectory_files(args: argparse.Namespace) -> list[Path]:
    return [p for p in (args.work / f"trajectories{n}.jsonl" for n in PASSES) if p.is_file()]


def trajectory_seconds(args: argparse.Namespace) -> float:
    return sum(json.loads(p.read_text())["seconds"] for p in (args.work / f"trajectories{n}_time.json" for n in PASSES)
               if p.is_file())


def sft_config(args: argparse.Namespace, load_recipe):
    def make(cls):
        cfg = load_recipe(cls, args.sft_config, steps=args.sft_steps, max_minutes=args.sft_minutes, seed=args.seed,
                          threads=args.threads)
        cfg.data.box_to_point_prob = args.box_to_point_prob
        cfg.data.episodes_per_target = args.episodes_per_target
        cfg.data.max_slices_per_case = args.train_max_slices_per_case
        cfg.data.episode = args.episode
        cfg.data.seed = args.seed
        return cfg

    return make


def stage_sft(args: argparse.Namespace, studies: Path, traj_path: Path, labels: dict[str, int]) -> dict:
    from lib.learning.checkpoint import publish
    from lib.learning.policy.sft import SFTConfig, train_sft
    from lib.learning.recipe import load_recipe

    out = args.work / "ckpt" / "sft"
    stats_path = out / "sft_stats.json"
    if stats_path.is_file() and "sft" not in args.force:
        return json.loads(stats_path.read_text())
    cfg = sft_config(args, load_recipe)(SFTConfig)
    scratch = args.work / "scratch-sft"
    shutil.rmtree(scratch, ignore_errors=True)
    from lib.agent.trajectories import read_jsonl

    trajs = [t for path in trajectory_files(args) for t in read_jsonl(path)]
    stats = train_sft(cfg, trajs, scratch, labels, images=studies)
    (scratch / "sft_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    publish(scratch, out)
    shutil.rmtree(scratch, ignore_errors=True)
    return stats


def stage_rl(args: argparse.Namespace, studies: Path, tool) -> dict:
    from lib.data.dataset import Dataset
    from lib.learning.checkpoint import publish
    from lib.learning.policy.rl import RLConfig, train_grpo
    from lib.learning.recipe import load_recipe

    out = args.work / "ckpt" / "grpo"
    stats_path = out / "rl_stats.json"
    if stats_path.is_file() and "rl" not in args.force:
        return json.loads(stats_path.read_text())
    cfg = load_recipe(RLConfig, args.rl_config, steps=args.rl_steps, max_minutes=args.rl_minutes, seed=args.seed,
                      threads=args.threads)
    cfg.episode = args.episode
    scratch = args.work / "scratch-rl"
    shutil.rmtree(scratch, ignore_errors=True)
    stats = train_grpo(cfg, Dataset.from_dir(studies), tool, args.work / "ckpt" / "sft", scratch)
    (scratch / "rl_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    publish(scratch, out)
    shutil.rmtree(scratch, ignore_errors=True)
    return stats


def stage_eval(args: argparse.Namespace, studies: Path, tool) -> dict:
    """Every test target once; all runs share the slice's session and the hand-off box
    (``lib.agent.evaluation.evaluate_targets``, the loop ``scripts/evaluate.py`` runs)."""
    from lib.agent.evaluation import Run, evaluate_targets
    from lib.data.dataset import Dataset, iter_slices

    path = args.work / "eval.json"
    if path.is_file() and "eval" not in args.force:
        return json.loads(path.read_text())
    ckpt = {"sft": str(args.work / "ckpt" / "sft"), "grpo": str(args.work / "ckpt" / "grpo")}
    runs = [Run("box", "handoff", name="handoff/box"), Run("expert", "handoff", name="handoff/expert"),
            Run("compact", "handoff", ckpt["sft"], "handoff/sft"),
            Run("compact", "handoff", ckpt["grpo"], "handoff/grpo"),
            Run("expert", "autonomous", name="autonomous/expert"),
            Run("compact", "autonomous", ckpt["sft"], "autonomous/sft"),
            Run("compact", "autonomous", ckpt["grpo"], "autonomous/grpo"),
            Run("ellipse", "handoff", name="handoff/ellipse")]
    ds = Dataset.from_dir(studies)
    samples = list(iter_slices(ds, "test", max_per_case=args.eval_max_slices_per_case or None))
    ev = evaluate_targets(tool, samples, runs, args.episode, seed=args.seed, measure_noc=False,
                          desc="benchmark eval")
    rows = [{k: ({"dice": v["dice"], "turns": v["turns"]} if isinstance(v, dict) else v) for k, v in r.items()
             if k not in ("encoder_ms", "handoff_box")} for r in ev.rows]
    per_label = {lab: {name: {"dice": m["dice"], "turns": m["turns"], "n": m["n"]} for name, m in runs_.items()}
                 for lab, runs_ in ev.per_label().items()}
    result = {"summary": ev.summary(), "per_label": per_label, "rows": rows, "n_targets": len(rows),
              "n_cases": len({r["case_id"] for r in rows}), "encoder_ms": float(np.mean(ev.encoder_ms)),
              "max_turns": args.episode.max_turns}
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


# ---- report ---------------------------------------------------------------------------------------------
def report(args: argparse.Namespace, ev: dict, sft: dict, rl: dict, traj_s: float, n_traj: int, backend: str) -> str:
    s = ev["summary"]
    box, expert = s["handoff/box"]["final_dice"], s["handoff/expert"]["final_dice"]
    gap = expert - box

    def closed(name: str) -> str:
        return f"{100 * (s[name]['final_dice'] - box) / gap:.0f}%" if gap > 1e-9 else "n/a"

    lines = [SECTION, "",
             f"Sample phantoms (`scripts/make_sample_studies.py --seed {args.seed}`): trained on the 5 labelled "
             f"studies (SFT/GRPO validation = held-out training cases {', '.join(sft.get('val_cases', []))}), "
             f"evaluated on the 3 held-out test studies: {ev['n_targets']} targets from {ev['n_cases']} cases "
             + (f"(≤ {args.eval_max_slices_per_case} per case)" if args.eval_max_slices_per_case else "(all of them)")
             + f". Backend `{backend}`"
             + (f" with adapted weights `{args.tool_weights}`" if args.tool_weights else " (released weights)")
             + f"; prompting `{args.episode.prompting_for(backend).value}`, local merge radius "
             f"{args.episode.local_radius or 'off'}; "
             f"turn budget {ev['max_turns']} (the hand-off box counts as turn 1); "
             "greedy policies; "
             f"`benchmarks/benchmark.py`, 2-core CPU shared with other jobs (torch threads {args.threads}). SFT data: "
             f"{args.episodes_per_target} expert episode(s) per training target (Box-to-Point share "
             f"{args.box_to_point_prob}) + {args.extra_episodes} Box-to-Point episode(s) with {args.extra_retries + 1} "
             "click candidate(s) per turn (new hand-off boxes).", "",
             "| mode | run | final Dice | mean turns | gap closed | Dice@1 | Dice@2 | Dice@3 | policy ms/decision |",
             "|---|---|---|---|---|---|---|---|---|"]
    names = [("handoff", "box", "box-only (1 turn)"), ("handoff", "ellipse", "ellipse in the box (no model)"),
             ("handoff", "expert", "expert oracle"), ("handoff", "sft", "compact SFT"),
             ("handoff", "grpo", "compact SFT+GRPO"), ("autonomous", "expert", "expert oracle"),
             ("autonomous", "sft", "compact SFT"), ("autonomous", "grpo", "compact SFT+GRPO")]
    for mode, key, label in names:
        r = s[f"{mode}/{key}"]
        d = r["dice_per_turn"]
        gapc = closed(f"{mode}/{key}") if mode == "handoff" and key not in ("box",) else ""
        ms = f"{r['policy_ms_per_decision']:.0f}" if key in ("sft", "grpo") else ""
        lines.append(f"| {mode} | {label} | {r['final_dice']:.3f} | {r['mean_turns']:.2f} | {gapc} | "
                     f"{d[1]:.3f} | {d[2]:.3f} | {d[3]:.3f} | {ms} |")
    lines += ["", "Per label, hand-off mode (final Dice; mean turns in brackets):", "",
              "| label | n | box-only | ellipse | expert | compact SFT | compact SFT+GRPO | GRPO ≥ box-only |",
              "|---|---|---|---|---|---|---|---|"]
    below = []
    for lab, m in ev["per_label"].items():
        ok = m["handoff/grpo"]["dice"] >= m["handoff/box"]["dice"] - 1e-9
        if not ok:
            below.append(lab)
        lines.append(f"| {lab} | {m['handoff/box']['n']} | {m['handoff/box']['dice']:.3f} | "
                     f"{m['handoff/ellipse']['dice']:.3f} | {m['handoff/expert']['dice']:.3f} "
                     f"({m['handoff/expert']['turns']:.2f}) | {m['handoff/sft']['dice']:.3f} "
                     f"({m['handoff/sft']['turns']:.2f}) | {m['handoff/grpo']['dice']:.3f} "
                     f"({m['handoff/grpo']['turns']:.2f}) | {'yes' if ok else '**no**'} |")
    lines += by_source(ev)
    vb = rl.get("val_best") or {}
    vi = rl.get("val_init") or {}
    lines += ["",
              "Training wall clock (this shared CPU): expert trajectories "
              f"{traj_s / 60:.1f} min ({n_traj} trajectories, one encode per slice); SFT {sft['time_s'] / 60:.1f} min "
              f"({sft['steps']} steps, {sft['n_train_states']} states; val kind accuracy "
              f"{_fmt(sft.get('val_accuracy'))}, val box IoU {_fmt(sft.get('val_box_iou'))}); GRPO "
              f"{rl['time_s'] / 60:.1f} min ({rl['steps']} steps, {rl['episodes']} episodes, "
              f"{rl['encodes']} encodes; best validation at step {rl['best_step']}).",
              "GRPO validation (greedy, held-out training case), start -> kept: "
              + "; ".join(f"{m}: reward {vi[m]['reward']:.3f} -> {vb[m]['reward']:.3f}, Dice {vi[m]['dice']:.3f} -> "
                          f"{vb[m]['dice']:.3f}, turns {vi[m]['turns']:.2f} -> {vb[m]['turns']:.2f}"
                          for m in vb if m in vi) + ".",
              ""]
    grpo, sftr = s["handoff/grpo"], s["handoff/sft"]
    n_hard = sum(m["handoff/box"]["dice"] < 0.85 for m in ev["per_label"].values())
    checks = [
        (f"hand-off: SFT+GRPO closes ≥ 60% of the box-only -> expert Dice gap ({closed('handoff/grpo')})",
         gap > 0 and (grpo["final_dice"] - box) >= 0.6 * gap),
        ("hand-off: SFT+GRPO never below box-only on a label's mean"
         + (f" (below on {', '.join(below)})" if below else ""), not below),
        (f"GRPO uses fewer turns than SFT at equal or better Dice (turns {sftr['mean_turns']:.2f} -> "
         f"{grpo['mean_turns']:.2f}, Dice {sftr['final_dice']:.3f} -> {grpo['final_dice']:.3f})",
         grpo["mean_turns"] < sftr["mean_turns"] and grpo["final_dice"] >= sftr["final_dice"] - 1e-9),
        (f"room for refinement: box-only Dice < 0.85 on {n_hard} labels", n_hard >= 2),
        (f"SFT ≤ 15 min ({sft['time_s'] / 60:.1f}), GRPO ≤ 30 min ({rl['time_s'] / 60:.1f})",
         sft["time_s"] <= 900 and rl["time_s"] <= 1800),
    ]
    lines += ["Checks (measured, not asserted):", ""]
    lines += [f"- {'PASS' if ok else 'MISS'}: {text}" for text, ok in checks]
    notes = args.work / "notes.md"
    if notes.is_file():  # the reading of these numbers, written by whoever ran the benchmark
        lines += ["", notes.read_text(encoding="utf-8").strip()]
    lines += ["", "![SFT learning curves](docs/figures/agent_sft_curves.png)",
              "![GRPO learning curves](docs/figures/agent_grpo_curves.png)",
              "![Dice vs turn](docs/figures/agent_dice_vs_turn.png)", ""]
    return "\n".join(lines)


def by_source(ev: dict) -> list[str]:
    """Hand-off final Dice on the phantoms and on the real studies (case ids ``real_*``) side by side, and per
    label on the real ones; nothing when the evaluation has no real study."""
    real = [r for r in ev["rows"] if str(r["case_id"]).startswith("real_")]
    if not real:
        return []
    runs = ("handoff/box", "handoff/ellipse", "handoff/expert", "handoff/sft", "handoff/grpo")
    groups = {"phantoms": [r for r in ev["rows"] if r not in real], "real": real}

    def row(name: str, rows: list) -> str:
        means = (f"{np.mean([r[k]['dice'] for r in rows]):.3f}" for k in runs)
        return f"| {name} | {len(rows)} | " + " | ".join(means) + " |"

    head = ["| {} | n | box-only | ellipse | expert | compact SFT | compact SFT+GRPO |", "|---" * 7 + "|"]
    out = ["", "Phantoms and real studies side by side, hand-off mode (final Dice):", "", head[0].format("data"),
           head[1]]
    out += [row(g, rows) for g, rows in groups.items() if rows]
    out += ["", "Real studies per label:", "", head[0].format("label"), head[1]]
    for lab in sorted({r["label"] for r in real}):
        out.append(row(lab, [r for r in real if r["label"] == lab]))
    return out + [""]


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write_section(path: Path, text: str) -> None:
    """Replace (or append) this script's section of BENCHMARKS.md, leaving every other section as it is."""
    old = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + ("\n" + old[nxt + 1:] if nxt >= 0 else "")
    path.write_text(new.rstrip("\n") + "\n", encoding="utf-8")


def figures(args: argparse.Namespace, ev: dict) -> None:
    args.figures.mkdir(parents=True, exist_ok=True)
    from lib.learning.policy.sft import plot_sft_history

    sft_dir = args.work / "ckpt" / "sft"
    st = json.loads((sft_dir / "sft_stats.json").read_text())
    plot_sft_history(args.figures / "agent_sft_curves.png", json.loads((sft_dir / "sft_history.json").read_text()),
                     f"SFT: {st['n_train_states']} states from {len(st['train_cases'])} cases, {st['steps']} steps")
    shutil.copyfile(args.work / "ckpt" / "grpo" / "rl_curves.png", args.figures / "agent_grpo_curves.png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"box": "tab:blue", "ellipse": "tab:purple", "expert": "tab:orange", "sft": "tab:green",
               "grpo": "tab:red"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    for ax, mode in zip(axes, ("handoff", "autonomous"), strict=True):
        for name, r in ev["summary"].items():
            if name.startswith(mode + "/"):
                # from turn 1: turn 0 is the empty mask for everyone, and a 0..1 axis hides the differences
                d = r["dice_per_turn"]
                key = name.split("/")[1]
                ax.plot(range(1, len(d)), d[1:], marker="o", label=key, color=colours[key])
        ax.set_title(f"{mode} (test phantoms)")
        ax.set_xlabel("turn (the hand-off box is turn 1)" if mode == "handoff" else "turn")
        ax.set_ylabel("mean Dice")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.figures / "agent_dice_vs_turn.png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    from lib.agent.rollout import load_backend
    from lib.agent.trajectories import read_jsonl
    from lib.data.dataset import Dataset

    studies = stage_data(args)
    ds = Dataset.from_dir(studies)
    labels = {name: value for value, name in ds.labels.items()}
    need_tool = {"trajectories", "rl", "eval"} & set(args.stages)
    tool = load_backend(args.backend, args.tool_weights, threads=args.threads) if need_tool else None
    traj_path = args.work / "trajectories.jsonl"
    if "trajectories" in args.stages:
        traj_path = stage_trajectories(args, studies, tool, labels)
    if "sft" in args.stages:
        stats = stage_sft(args, studies, traj_path, labels)
        print(f"SFT: {stats['steps']} steps in {stats['time_s']:.0f} s, val accuracy {stats.get('val_accuracy')}")
    if "rl" in args.stages:
        stats = stage_rl(args, studies, tool)
        print(f"GRPO: {stats['steps']} steps in {stats['time_s']:.0f} s, val {stats.get('val_best')}")
    if "eval" in args.stages:
        ev = stage_eval(args, studies, tool)
        print(json.dumps({k: round(v["final_dice"], 4) for k, v in ev["summary"].items()}))
    if "report" in args.stages:
        ev = json.loads((args.work / "eval.json").read_text())
        sft = json.loads((args.work / "ckpt" / "sft" / "sft_stats.json").read_text())
        rl = json.loads((args.work / "ckpt" / "grpo" / "rl_stats.json").read_text())
        n_traj = sum(len(read_jsonl(p)) for p in trajectory_files(args))
        text = report(args, ev, sft, rl, trajectory_seconds(args), n_traj, args.backend)
        figures(args, ev)
        write_section(args.benchmarks, text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
