#!/usr/bin/env python
"""Side-by-side: LiteMedSAM latency and peak memory with glibc's default malloc vs the tuning setup_env.sh sets.

glibc serves allocations above its (dynamic, at most 32 MiB) mmap threshold with fresh mappings, and
returns freed heap memory above its trim threshold to the system; a model call allocates many large
temporaries, so each call page-faults them in again. ``scripts/setup_env.sh`` raises both thresholds
(``GLIBC_TUNABLES``). glibc reads them at process start only, so each variant runs in its own child
process, alternating (A B A B ...) so machine-speed drift hits both alike. Each child encodes a
512×512 slice ``--encodes`` times and decodes a box + 2 clicks ``--decodes`` times per encode; it
reports the medians (the first encode and the first 5 decodes are warm-up) and its peak RSS.

    python benchmarks/benchmark_malloc.py [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_env_tuning() -> str:
    """The ``MALLOC_TUNING`` value that scripts/setup_env.sh exports, read from the script itself so the two
    never drift apart."""
    for line in (ROOT / "scripts" / "setup_env.sh").read_text(encoding="utf-8").splitlines():
        if line.startswith("MALLOC_TUNING="):
            return line.split("=", 1)[1].strip().strip('"')
    raise SystemExit("scripts/setup_env.sh no longer sets MALLOC_TUNING=...; update this benchmark")


TUNING = setup_env_tuning()


def child(encodes: int, decodes: int) -> dict:
    """Run in the child: medians of encoder and decoder time (ms) and peak RSS (MiB)."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from lib.tools.litemedsam import LiteMedSAMTool

    tool = LiteMedSAMTool()
    img = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    enc, dec = [], []
    for _ in range(encodes):
        t = time.perf_counter()
        session = tool.start(img)
        enc.append(time.perf_counter() - t)
        for _ in range(decodes):
            t = time.perf_counter()
            session.predict(box=(100, 120, 300, 340), points=[(200, 200), (150, 300)], labels=[1, 0])
            dec.append(time.perf_counter() - t)
    return {"encoder_ms": round(1000 * float(np.median(enc[1:])), 1),
            "decoder_ms": round(1000 * float(np.median(dec[5:])), 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=3, help="child processes per variant, alternating")
    p.add_argument("--encodes", type=int, default=6)
    p.add_argument("--decodes", type=int, default=10)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.encodes, args.decodes)))
        return 0
    base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    variants = {"glibc default": base, "setup_env.sh tuning": {**base, "GLIBC_TUNABLES": TUNING}}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.pairs):
        for name, env in variants.items():
            out = subprocess.run([sys.executable, __file__, "--child", "--encodes", str(args.encodes),
                                  "--decodes", str(args.decodes)], env=env, capture_output=True, text=True,
                                 check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    import numpy as np

    report = {name: {k: round(float(np.median([r[k] for r in rs])), 1) for k in rs[0]} for name, rs in runs.items()}
    a, b = report["glibc default"], report["setup_env.sh tuning"]
    report["speedup"] = {k: round(a[k] / b[k], 2) for k in ("encoder_ms", "decoder_ms")}
    report["runs"] = runs
    report["setup"] = {"pairs": args.pairs, "image": "512x512", "unit": "median over children of per-child medians"}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
