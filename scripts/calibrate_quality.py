#!/usr/bin/env python
"""Calibrate a compact policy's predicted quality on validation cases and store the calibration with it.

    python scripts/calibrate_quality.py --checkpoint demo/agent_policy \\
        --data runs/demo3/sample-data/studies:training --cases ct_003,real_ct_001 --out runs/calib

The policy plays every (slice, label) target of the validation cases in hand-off and autonomous mode (the same
episodes ``scripts/evaluate.py`` plays; one encoding per slice). Each mask the policy judges gives a pair
(predicted quality, the tool's IoU output of the same mask, true IoU). A logistic blend of the two predictions
followed by an isotonic regression on the true IoU (``lib.agent.quality.fit_blend``; ``--inputs policy``: the value
head alone, isotonic) becomes the policy's ``quality_calibration`` in ``policy.json`` (the weights are untouched),
which the policy applies whenever it is loaded: the served ``quality`` then means "about this IoU on cases like
the validation cases". The quality-gated stop threshold is chosen on the same hand-off episodes (the fewest turns
at no loss of Dice against the learned stop) and stored with it (``CompactPolicy(stop_quality="auto")``).

Use cases the policy was not trained on where you have them: a calibration fitted on training cases inherits the
value head's optimism there. Measure the result on held-out cases with ``scripts/evaluate.py`` (its
``results.json`` has ``quality_calibration``). Outputs in ``--out``: ``calibration.json`` (the fit, metrics before
and after on the fitting pairs, the stop-threshold curve) and ``reliability_fit.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

from lib.agent.eval_report import plot_reliability  # noqa: E402
from lib.agent.evaluation import MODES  # noqa: E402
from lib.agent.policies.compact import CompactPolicy  # noqa: E402
from lib.agent.quality import nan_to_none  # noqa: E402
from lib.agent.rollout import SCRIPT_BACKENDS, load_backend  # noqa: E402
from lib.agent.settings import add_episode_args, episode_from_args  # noqa: E402
from lib.data.dataset import Dataset, iter_slices  # noqa: E402
from lib.learning.policy.calibration import fit_calibration  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="compact policy folder (policy.pt + policy.json)")
    p.add_argument("--data", required=True, action="append",
                   help="DATASET_DIR[:SPLIT] with the validation cases (split default 'training'); repeatable")
    p.add_argument("--cases", default=None, help="comma-separated case ids to use (default: every case of --data)")
    p.add_argument("--labels", default=None, help="comma-separated label names (default: all the policy knows)")
    p.add_argument("--modes", default="handoff,autonomous", help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--max-slices-per-case", type=int, default=None)
    p.add_argument("--min-area", type=int, default=20)
    p.add_argument("--backend", default="litemedsam", choices=SCRIPT_BACKENDS)
    p.add_argument("--tool-weights", default=None)
    add_episode_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--inputs", default="policy,tool", choices=("policy,tool", "policy"),
                   help="what the served quality blends: the value head and the tool's IoU output (default), or the "
                        "value head alone")
    p.add_argument("--dry-run", action="store_true", help="fit and report, but leave the checkpoint as it is")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    if not args.modes or any(m not in MODES for m in args.modes):
        p.error(f"--modes must be a subset of {','.join(MODES)}")
    args.cases = {c.strip() for c in args.cases.split(",") if c.strip()} if args.cases else None
    args.labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    args.episode = episode_from_args(args, backend=args.backend)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    ckpt = str(args.checkpoint)
    policy = CompactPolicy.load(ckpt, calibration=None)  # judge with the raw value head
    labels = args.labels or sorted(policy.labels)
    tool = load_backend(args.backend, args.tool_weights, threads=args.threads)
    groups, data = [], []
    for spec in args.data:
        folder, _, split = spec.partition(":")
        ds = Dataset.from_dir(folder)
        known = [n for n in labels if n in ds.labels.values()]
        groups.append(s for s in iter_slices(ds, split or "training", labels=known, min_area=args.min_area,
                                             max_per_case=args.max_slices_per_case)
                      if args.cases is None or s.case_id in args.cases)
        data.append(f"{folder}:{split or 'training'}")
    try:
        fit = fit_calibration(policy, tool, groups, args.episode, modes=args.modes, seed=args.seed,
                              inputs=args.inputs,
                              meta={"data": data, "backend": args.backend, "tool_weights": args.tool_weights})
    except ValueError as e:
        raise SystemExit(f"{e} (data {args.data}, cases {sorted(args.cases) if args.cases else 'all'})") from None
    cal, before, tool_only, after = fit.calibration, fit.before, fit.tool, fit.after
    fitted_on, pairs_n, used_cases = cal.fitted_on, cal.fitted_on["n"], fit.cases
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": ckpt, "calibration": cal.to_dict(), "before": nan_to_none(before),
              "tool": nan_to_none(tool_only),
              "after": nan_to_none(after), "stop_curve": None if fit.stop is None else fit.stop["curve"],
              "wall_s": time.perf_counter() - t0}
    (args.out / "calibration.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    plot_reliability(args.out / "reliability_fit.png", {"value head, raw": nan_to_none(before),
                                                         "tool IoU output, raw": nan_to_none(tool_only),
                                                         "served, calibrated": nan_to_none(after)},
                     f"fitting pairs ({pairs_n} masks, {len(used_cases)} cases)")
    if not args.dry_run:
        policy.calibration = cal
        policy.save(ckpt)
    s = fitted_on["stop_choice"]
    print(f"quality calibration on {pairs_n} judged masks ({', '.join(sorted(used_cases))}): value head Spearman "
          f"{before['spearman']:.3f} ECE {before['ece']:.3f}, tool Spearman {tool_only['spearman']:.3f} ECE "
          f"{tool_only['ece']:.3f} -> served Spearman {after['spearman']:.3f} ECE {after['ece']:.3f} (in-sample); "
          + (f"stop threshold {fitted_on['stop_threshold']} (hand-off Dice {s['gated']['dice']:.3f} in "
             f"{s['gated']['turns']:.2f} turns vs learned {s['learned']['dice']:.3f} in {s['learned']['turns']:.2f})"
             if s and s["gated"] else "no stop threshold saves a turn without losing Dice")
          + ("" if args.dry_run else f"; stored in {ckpt}/policy.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
