#!/usr/bin/env bash
# A private Orthanc PACS with its DICOMweb plugin (Debian packages `orthanc`, `orthanc-dicomweb`), run as a
# plain process of this user: no system service, storage in a work folder, HTTP on 127.0.0.1 only.
#   ./scripts/orthanc.sh start  [--port 8042] [--storage runs/orthanc]   # idempotent; prints the DICOMweb URL
#   ./scripts/orthanc.sh stop   [--storage runs/orthanc]
#   ./scripts/orthanc.sh status [--port 8042] [--storage runs/orthanc]
# DICOMweb root: http://127.0.0.1:PORT/dicom-web (QIDO-RS, WADO-RS, STOW-RS). The settings are
# configs/orthanc/orthanc.json; the port and the storage folder are written next to a copy of it in
# STORAGE/config at each start. Log: STORAGE/orthanc.log.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CMD="${1:-}"
[ $# -gt 0 ] && shift
PORT="${ORTHANC_PORT:-8042}"
STORAGE="${ORTHANC_STORAGE:-$ROOT/runs/orthanc}"
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --storage) STORAGE="$2"; shift 2 ;;
    *) echo "[orthanc] unknown argument $1" >&2; exit 2 ;;
  esac
done
ORTHANC_BIN="${ORTHANC_BIN:-$(command -v Orthanc || echo /usr/sbin/Orthanc)}"
PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
mkdir -p "$STORAGE"
STORAGE="$(cd "$STORAGE" && pwd)"
PIDFILE="$STORAGE/orthanc.pid"
LOG="$STORAGE/orthanc.log"
URL="http://127.0.0.1:$PORT/dicom-web"

running_pid() {  # the pid of our Orthanc when it is alive, else nothing
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q Orthanc "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"
  fi
}

answers() {  # true when a DICOMweb server answers QIDO-RS on $URL
  python3 - "$URL" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/studies?limit=1", timeout=5) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

port_busy() {  # true when something accepts connections on 127.0.0.1:$PORT
  python3 - "$PORT" <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
except OSError:
    sys.exit(1)
sys.exit(0)
PY
}

case "$CMD" in
  start)
    if [ ! -x "$ORTHANC_BIN" ] || [ ! -f "$PLUGIN" ]; then
      echo "[orthanc] Orthanc with its DICOMweb plugin is not installed (need $ORTHANC_BIN and $PLUGIN)." >&2
      echo "[orthanc] Debian/Ubuntu: sudo apt-get install orthanc orthanc-dicomweb" >&2
      exit 3
    fi
    if [ -n "$(running_pid)" ] && answers; then
      echo "[orthanc] already running (pid $(running_pid), storage $STORAGE): $URL"
      exit 0
    fi
    if [ -n "$(running_pid)" ]; then
      echo "[orthanc] pid $(running_pid) is alive but does not answer on $URL (another port?); stop it first:" >&2
      echo "[orthanc]   $0 stop --storage $STORAGE" >&2
      exit 1
    fi
    if port_busy; then
      echo "[orthanc] port $PORT is already in use on 127.0.0.1 (a system Orthanc service? 'sudo systemctl stop" \
           "orthanc', or pass --port)" >&2
      exit 1
    fi
    mkdir -p "$STORAGE/db" "$STORAGE/config"
    cp "$ROOT/configs/orthanc/orthanc.json" "$STORAGE/config/orthanc.json"
    # Orthanc reads every .json file of the folder it is given and merges them
    cat > "$STORAGE/config/local.json" <<EOF
{ "HttpPort" : $PORT, "StorageDirectory" : "$STORAGE/db", "IndexDirectory" : "$STORAGE/db" }
EOF
    setsid "$ORTHANC_BIN" "$STORAGE/config" >"$LOG" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    # wait while it starts (no fixed deadline for a slow machine; a hang guard of 10 minutes)
    for _ in $(seq 1 1200); do
      if answers; then
        echo "[orthanc] started (pid $(cat "$PIDFILE"), storage $STORAGE, log $LOG): $URL"
        exit 0
      fi
      if [ -z "$(running_pid)" ]; then
        echo "[orthanc] Orthanc exited while starting; the end of $LOG:" >&2
        tail -n 20 "$LOG" >&2
        rm -f "$PIDFILE"
        exit 1
      fi
      sleep 0.5
    done
    echo "[orthanc] Orthanc did not answer on $URL; see $LOG" >&2
    exit 1
    ;;
  stop)
    pid="$(running_pid)"
    if [ -z "$pid" ]; then
      echo "[orthanc] not running (storage $STORAGE)"
      rm -f "$PIDFILE"
      exit 0
    fi
    kill "$pid"
    for _ in $(seq 1 120); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$PIDFILE"
    echo "[orthanc] stopped (pid $pid)"
    ;;
  status)
    if [ -n "$(running_pid)" ] && answers; then
      echo "[orthanc] running (pid $(running_pid), storage $STORAGE): $URL"
    else
      echo "[orthanc] not running (storage $STORAGE)"
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 start|stop|status [--port 8042] [--storage DIR]" >&2
    exit 2
    ;;
esac
