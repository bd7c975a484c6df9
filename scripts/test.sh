#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment, then run the whole test suite.
#   ./scripts/test.sh [pytest args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source "$ROOT/scripts/setup_env.sh"
python scripts/make_sample_studies.py --out "$ROOT/sample-data" >/dev/null
exec python -m pytest -q "$@"
