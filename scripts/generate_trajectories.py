#!/usr/bin/env python
"""Generate expert (hybrid-prompting) trajectories from a dataset folder into a JSONL file.

    python scripts/generate_trajectories.py --dataset sample-data/studies --backend litemedsam \\
        --out trajectories.jsonl [--split training] [--labels liver,spleen] [--max-slices-per-case N] \\
        [--workers 2] [--seed 0] [--tool-weights DIR] [--prompting newest]

Every (case, slice, label) of the split whose label covers >= ``--min-area`` pixels (2D images, or 2D
slices of 3D volumes along ``--axis``) becomes one episode of ``ExpertPolicy`` in ``SegmentationEnv``, played by
``lib.learning.policy.data.expert_episodes`` (the same per-target code the ``agent_sft`` task runs, with
``TrajectoryConfig``'s expert defaults and the served ``EpisodeSettings`` unless flags override them); kept
trajectories are appended to ``--out`` as they finish, one JSON line each.

- Resumable: keys (case, slice, label) already in ``--out`` are skipped; a partial last line left by an
  interrupted run is dropped first. Pruned episodes (the expert found no helpful action) are not written,
  so a resumed run tries them again.
- Both cores: ``--workers 2`` runs a pool of worker PROCESSES, each loading its own tool with 1 torch
  thread (measured faster than one process with 2 threads or 2 threads sharing one tool; BENCHMARKS.md).
  ``--parallel thread`` selects the thread pool instead.
- One encoder pass per slice: the targets of a slice (liver, spleen, ... on the same slice) are one job
  and share the tool session.
- Bounded memory: slices are streamed case by case; at most ``2 * workers`` slices are in flight.
- Deterministic: each episode's seed comes from (``--seed``, case, slice, label), not from run order.

The summary line reports trajectories written, mean final IoU, mean actions, throughput and the split of
worker time into encoder / decoder / other.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from multiprocessing import get_context  # noqa: E402
from typing import Any  # noqa: E402

from tqdm import tqdm  # noqa: E402

from lib.agent.env import SegmentationEnv  # noqa: E402
from lib.agent.expert import STRATEGIES  # noqa: E402
from lib.agent.rollout import SCRIPT_BACKENDS, load_backend, tool_name, window_slice  # noqa: E402
from lib.agent.settings import add_episode_args, episode_from_args  # noqa: E402
from lib.agent.trajectories import Trajectory, read_keys, repair_tail, write_jsonl  # noqa: E402
from lib.data.dataset import Dataset, SliceSample, iter_slices  # noqa: E402
from lib.learning.policy.data import TrajectoryConfig, expert_episodes  # noqa: E402


@dataclass(frozen=True)
class JobConfig:
    """What every worker needs to build its tool, env and expert (picklable for process workers)."""

    backend: str
    tool_weights: str | None
    threads: int
    data: TrajectoryConfig
    dataset: str


@dataclass
class Totals:
    """Running sums for the summary line."""

    written: int = 0
    pruned: int = 0
    errors: int = 0
    iou_sum: float = 0.0
    actions_sum: int = 0
    ms: dict[str, float] = field(default_factory=lambda: {"encoder_ms": 0.0, "decoder_ms": 0.0, "policy_ms": 0.0,
                                                          "other_ms": 0.0, "total_ms": 0.0})

    def add(self, traj: Trajectory) -> None:
        self.written += 1
        self.iou_sum += traj.final_iou or 0.0
        self.actions_sum += traj.n_actions
        for k in self.ms:
            self.ms[k] += float(traj.timings.get(k, 0.0))


# -- worker side (one tool per process, or one shared tool for threads) ------------------------------
_STATE: dict[str, Any] = {}


def init_worker(job: JobConfig) -> None:
    """Load the tool once per worker process."""
    _STATE["job"] = job
    _STATE["tool"] = load_backend(job.backend, job.tool_weights, threads=job.threads)


def run_slice(samples: list[SliceSample]) -> list[tuple[dict | None, str | None]]:
    """Expert episodes for every target of ONE slice, sharing one encoder pass.

    Returns one (trajectory dict or None when pruned, error text or None) per sample. The first episode
    encodes the slice (its trajectory carries the encoder time); the others reuse that session.
    """
    job: JobConfig = _STATE["job"]
    tool = _STATE["tool"]
    env = SegmentationEnv(tool, job.data.episode.env_config(tool_name(tool)))
    image = window_slice(samples[0], job.data.episode)
    session = None
    out: list[tuple[dict | None, str | None]] = []
    for sample in samples:
        try:
            session = session or tool.start(image)
            source = {"dataset": job.dataset, "modality": sample.modality}
            episodes = expert_episodes(env, job.data, sample, image, session, source)
        except Exception as err:  # one bad slice must not stop a long generation run
            where = f"{sample.case_id}/{sample.slice_index}/{sample.label_name}"
            out.append((None, f"{where}: {type(err).__name__}: {err}"))
            continue
        out += [(traj.to_dict(), None) if keep else (None, None) for traj, keep in episodes]
    return out


class _InlineExecutor(Executor):
    """Runs jobs in the calling thread (``--workers 1``): no pickling, easiest to debug."""

    def submit(self, fn, *args, **kwargs) -> Future:
        fut: Future = Future()
        fut.set_result(fn(*args, **kwargs))
        return fut


def make_executor(job: JobConfig, workers: int, parallel: str) -> Executor:
    if workers == 1:
        init_worker(job)
        return _InlineExecutor()
    if parallel == "process":
        # spawn: workers must not inherit a parent's torch thread pool or half-initialised locks
        return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=init_worker, initargs=(job,))
    init_worker(job)  # threads share one tool; the decoder is re-entrant under inference_mode
    return ThreadPoolExecutor(workers)


def pending_slices(ds: Dataset, args: argparse.Namespace, done: set) -> Iterator[list[SliceSample]]:
    """Targets not yet in the output, grouped by slice (``iter_slices`` yields a slice's labels together)."""
    group: list[SliceSample] = []
    for s in iter_slices(ds, args.split, axis=args.axis, labels=args.labels, min_area=args.min_area,
                         max_per_case=args.max_slices_per_case):
        if (s.case_id, s.slice_index, s.label_name) in done:
            continue
        if group and (group[0].case_id, group[0].slice_index) != (s.case_id, s.slice_index):
            yield group
            group = []
        group.append(s)
    if group:
        yield group


def count_targets(ds: Dataset, args: argparse.Namespace) -> int | None:
    """Total (slice, label) targets for the progress bar; None for big datasets (it reads every label map)."""
    cases = ds.cases(args.split)
    if len(cases) > 50:
        return None
    from lib.data.io import load_image

    values = ds.label_values(args.labels)
    n = 0
    for case in cases:
        lab = load_image(case.label_path).array
        if lab.ndim == 3:
            other = tuple(a for a in range(3) if a != args.axis)
            per = [int(((lab == v).sum(axis=other) >= args.min_area).sum()) for v in values]
        else:
            per = [int((lab == v).sum() >= args.min_area) for v in values]
        total = sum(per)
        n += min(total, args.max_slices_per_case) if args.max_slices_per_case else total
    return n


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, type=Path, help="folder with an MSD-style dataset.json")
    p.add_argument("--backend", default="litemedsam", choices=SCRIPT_BACKENDS,
                   help="segmentation backend (default litemedsam; 'fake' is a test double for tests only)")
    p.add_argument("--out", required=True, type=Path, help="JSONL file (appended to; existing keys are skipped)")
    p.add_argument("--split", default="training", choices=("training", "test"))
    p.add_argument("--labels", default=None, help="comma-separated label names or values (default: all)")
    p.add_argument("--max-slices-per-case", type=int, default=None, help="cap of (slice, label) targets per case")
    p.add_argument("--axis", type=int, default=0, help="slicing axis of 3D volumes (0 = K, axial for usual CT)")
    p.add_argument("--min-area", type=int, default=20, help="smallest target (pixels) worth an episode")
    p.add_argument("--workers", type=int, default=2, help="parallel workers (default 2 = both cores)")
    p.add_argument("--parallel", default="process", choices=("process", "thread"),
                   help="worker kind for --workers > 1 (default process: fastest, see BENCHMARKS.md)")
    p.add_argument("--seed", type=int, default=0, help="base seed (episode seeds derive from it and the key)")
    p.add_argument("--tool-weights", default=None, help="adapted segmenter weights (folder or file)")
    add_episode_args(p)
    p.add_argument("--strategy", default="hybrid", choices=STRATEGIES, help="expert strategy (default hybrid)")
    p.add_argument("--no-rebox", action="store_true", help="click-only corrections: the expert never redraws the box")
    p.add_argument("--limit", type=int, default=None, help="stop after this many new trajectories (benchmarks)")
    args = p.parse_args(argv)
    args.labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    if args.workers < 1:
        p.error("--workers must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ds = Dataset.from_dir(args.dataset)
    dropped = repair_tail(args.out)
    if dropped:
        print(f"dropped a partial last line ({dropped} bytes) from {args.out}", file=sys.stderr)
    done = read_keys(args.out)
    cpus = os.cpu_count() or 1
    job = JobConfig(
        backend=args.backend,
        tool_weights=args.tool_weights,
        # one torch thread per worker so 2 workers use 2 cores without oversubscription
        threads=1 if args.workers > 1 else min(cpus, 2),
        data=TrajectoryConfig(episode=episode_from_args(args, backend=args.backend), seed=args.seed,
                              strategy=args.strategy, **({"rebox_margins": ()} if args.no_rebox else {})),
        dataset=str(args.dataset),
    )
    total = count_targets(ds, args)
    totals = Totals()
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=len(done) if total else 0, unit="traj", desc="trajectories")
    executor = make_executor(job, args.workers, args.parallel)
    in_flight: set[Future] = set()
    submitted = 0

    def drain(block_until: int) -> None:
        nonlocal in_flight
        while len(in_flight) > block_until:
            finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for fut in finished:
                for traj_dict, error in fut.result():
                    if error:
                        totals.errors += 1
                        tqdm.write(f"error: {error}", file=sys.stderr)
                    elif traj_dict is None:
                        totals.pruned += 1
                    else:
                        traj = Trajectory.from_dict(traj_dict)
                        write_jsonl(args.out, [traj], append=True)
                        totals.add(traj)
                    bar.update(1)
                if totals.written:
                    bar.set_postfix(iou=f"{totals.iou_sum / totals.written:.3f}", refresh=False)

    try:
        for group in pending_slices(ds, args, done):
            if args.limit is not None:
                if submitted >= args.limit:
                    break
                group = group[: args.limit - submitted]
            in_flight.add(executor.submit(run_slice, group))
            submitted += len(group)
            drain(2 * args.workers - 1)
        drain(0)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        bar.close()
    wall = time.perf_counter() - t0
    n = totals.written
    ms = totals.ms
    busy = ms["total_ms"] or 1.0
    other = ms["total_ms"] - ms["encoder_ms"] - ms["decoder_ms"]
    print(
        f"wrote {n} trajectories to {args.out} ({totals.pruned} pruned, {len(done)} already present, "
        f"{totals.errors} errors) in {wall:.1f} s = {60 * n / max(wall, 1e-9):.1f} traj/min with {args.workers} "
        f"worker(s); mean final IoU {totals.iou_sum / max(n, 1):.3f}, "
        f"mean actions {totals.actions_sum / max(n, 1):.2f}; "
        f"worker time: encoder {100 * ms['encoder_ms'] / busy:.0f}%, decoder {100 * ms['decoder_ms'] / busy:.0f}%, "
        f"other {100 * other / busy:.0f}% (policy {100 * ms['policy_ms'] / busy:.0f}%); workers busy "
        f"{100 * ms['total_ms'] / 1e3 / max(wall * args.workers, 1e-9):.0f}% of the wall time"
    )
    return 0 if totals.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
