#!/usr/bin/env python
"""Rebuild the demo agent policy shipped for the sample studies (``demo/agent_policy``).

It is the compact SFT+GRPO policy of the agent benchmark's recipe, trained with seed 0 and the real LiteMedSAM
weights on the labelled training studies of ``scripts/make_sample_studies.py --real``: the phantoms and the real
abdominal CT (the real MR stays out: it is the held-out check), on fresh hand-off boxes and on the volume start
states the served volume agent meets (``lib.learning.policy.volume_data``)::

    python scripts/train_demo_policy.py --real [--work runs/demo] [--out demo/agent_policy]

runs the ``data``, ``trajectories``, ``sft`` and ``rl`` stages of ``benchmarks/benchmark.py`` with its defaults
(prompting ``all`` + local merge 0.5, as the app serves the agent; on 2 shared cores about 35 min of slice
expert trajectories, 20 of volume ones, SFT 25, GRPO 20), then copies the GRPO checkpoint to ``--out`` with
``provenance.json`` (command, commit, data, seeds, the SFT/GRPO validation metrics). ``./scripts/serve.sh``
serves it (``--conf demo_policy true``) until a policy is trained from the server's own labels. Its quality estimate
is then calibrated on the validation phantom and the real CT (the MR stays held out)::

    python scripts/calibrate_quality.py --checkpoint demo/agent_policy \
        --data runs/demo/sample-data/studies:training --cases ct_003,real_ct_001 --out runs/demo/calibration

It knows the sample studies' 14 labels; two real scans are far too few to generalise to a hospital's scans.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEEP = ("policy.pt", "policy.json", "rl_stats.json")


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def install(ckpt: Path, out: Path, work: Path, command: list[str]) -> dict:
    """Copy a compact-policy checkpoint folder's serving files to ``out`` with a provenance record."""
    if not (ckpt / "policy.json").is_file() or not (ckpt / "policy.pt").is_file():
        raise SystemExit(f"{ckpt} is not a compact policy checkpoint (policy.json + policy.pt expected)")
    out.mkdir(parents=True, exist_ok=True)
    for name in KEEP:
        if (ckpt / name).is_file():
            shutil.copy2(ckpt / name, out / name)
    meta = json.loads((ckpt / "policy.json").read_text())
    prov = {
        "what": "demo compact agent policy for the sample studies (scripts/make_sample_studies.py --seed 0 --real): "
                "trained on the phantoms and the real CT, slice and volume start states; the real MR is held out",
        "rebuild": "python scripts/train_demo_policy.py --real",
        "command": command,
        "commit": commit(),
        "installed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_checkpoint": str(ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt),
        "work_dir": str(work),
        "policy_sha256": hashlib.sha256((out / "policy.pt").read_bytes()).hexdigest(),
        "labels": meta.get("labels"),
        "parameters": meta.get("parameters"),
        "training": meta.get("provenance"),
        "evaluation": "BENCHMARKS.md: 'Agent on one slice: real CT and MR' and 'Agent through the volume'",
    }
    (out / "provenance.json").write_text(json.dumps(prov, indent=1, default=str) + "\n")
    return prov


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "demo", help="benchmark working folder (cached)")
    p.add_argument("--out", type=Path, default=ROOT / "demo" / "agent_policy")
    p.add_argument("--from-checkpoint", type=Path, default=None,
                   help="skip training: install this trained checkpoint folder (e.g. runs/agent_slice/ckpt/grpo)")
    args, rest = p.parse_known_args(argv)
    if args.from_checkpoint is None:
        import subprocess

        # the benchmark's own command line (a process, not an import: scripts do not import each other)
        rc = subprocess.call([sys.executable, str(ROOT / "benchmarks" / "benchmark.py"), "--work", str(args.work),
                              "--stages", "data,trajectories,sft,rl", "--seed", "0", *rest])
        if rc:
            return rc
        ckpt = args.work / "ckpt" / "grpo"
    else:
        ckpt = args.from_checkpoint
    prov = install(ckpt, args.out, args.work, ["scripts/train_demo_policy.py", *(argv or sys.argv[1:])])
    print(json.dumps({"out": str(args.out), "policy_sha256": prov["policy_sha256"], "labels": prov["labels"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
