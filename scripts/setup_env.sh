#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv) and install what is missing.
# Sourced by serve.sh and test.sh; safe to run repeatedly (a stamp file skips pip when
# requirements.txt has not changed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MEDSAM_AGENT_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "[setup] installing requirements (first run takes a few minutes)"
  # torch first, so sam2's build (which needs torch) never pulls another torch into an isolated
  # build environment; sam2 is built without its optional CUDA extension.
  "$PY" -m pip install --quiet --upgrade "pip<27" setuptools wheel
  "$PY" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" "numpy<2"
  SAM2_BUILD_CUDA=0 SAM2_BUILD_ALLOW_ERRORS=1 "$PY" -m pip install --quiet --no-build-isolation "sam2==1.1.0"
  "$PY" -m pip install --quiet -r "$ROOT/requirements.txt"
  echo "$WANT" > "$STAMP"
fi
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
# Offline and quiet by default: no experiment tracking (MLflow 3 rejects file stores), no hub access.
export MONAI_LABEL_TRACKING_ENABLED="${MONAI_LABEL_TRACKING_ENABLED:-false}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# files (JSON, READMEs) are UTF-8 whatever the machine locale is
export PYTHONUTF8=1
