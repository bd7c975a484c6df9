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
# glibc malloc: serve the models' large temporaries from the heap and keep freed memory (up to 1 GiB)
# instead of mmap-ing and page-faulting them in on every call. Measured side by side (BENCHMARKS.md,
# issue 2, benchmarks/benchmark_malloc.py): LiteMedSAM's encoder 1.65x faster, peak RSS +35-220 MB.
# Read at process start, so it only reaches processes started from this shell; set
# MEDSAM_AGENT_MALLOC_TUNING=0 to keep glibc's defaults.
MALLOC_TUNING="glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824"
if [ "${MEDSAM_AGENT_MALLOC_TUNING:-1}" != 0 ] && [[ ":${GLIBC_TUNABLES:-}:" != *":$MALLOC_TUNING:"* ]]; then
  export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}$MALLOC_TUNING"
fi
