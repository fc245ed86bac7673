#!/usr/bin/env bash
# Idempotent project setup: .venv with pinned deps, redis-server, GraphFrames jars.
# A second run with nothing changed takes seconds (stamp files keyed on inputs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=.venv
JARS=.jars
GF_VERSION=0.12.2
t0=$(date +%s)

# 1. Python environment (editable install, pinned by constraints.txt).
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Python packages (cold: ~3 min)"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -c constraints.txt -e ".[airflow,notebooks,dev]"
  "$VENV/bin/pip" check
  echo "$want" > "$VENV/.stamp"
else
  echo "[setup] Python packages up to date"
fi

# 2. redis-server from Debian packages (tests start their own instances).
if ! command -v redis-server >/dev/null 2>&1; then
  echo "[setup] installing redis-server"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version | head -1

# 3. GraphFrames JVM jars from Maven Central with mvn (never committed).
mkdir -p "$JARS"
have=1
for art in graphframes-spark4_2.13 graphframes-graphx-spark4_2.13; do
  [ -f "$JARS/$art-$GF_VERSION.jar" ] || have=0
done
if [ $have = 1 ]; then
  echo "[setup] GraphFrames jars present"
  rm -f "$JARS/UNAVAILABLE.txt"
elif [ -f "$JARS/UNAVAILABLE.txt" ] && [ -z "${RINGFENCE_RETRY_JARS:-}" ] \
     && [ $(( $(date +%s) - $(stat -c %Y "$JARS/UNAVAILABLE.txt") )) -lt 86400 ]; then
  echo "[setup] WARNING: GraphFrames jars unavailable (checked < 24 h ago; RINGFENCE_RETRY_JARS=1 to retry):"
  sed 's/^/[setup]   /' "$JARS/UNAVAILABLE.txt"
else
  : > "$JARS/UNAVAILABLE.txt.tmp"
  for art in graphframes-spark4_2.13 graphframes-graphx-spark4_2.13; do
    coord="io.graphframes:$art:$GF_VERSION"
    echo "[setup] mvn fetch $coord"
    if ! out=$(mvn -B -q -U -Dstyle.color=never dependency:copy -Dartifact="$coord:jar" -DoutputDirectory="$JARS" 2>&1); then
      echo "$coord: $(echo "$out" | sed 's/\x1b\[[0-9;]*m//g' | grep -E 'Could not|Missing|not found|ERROR' | head -2 | tr '\n' ' ')" >> "$JARS/UNAVAILABLE.txt.tmp"
    fi
  done
  if [ -s "$JARS/UNAVAILABLE.txt.tmp" ]; then
    mv "$JARS/UNAVAILABLE.txt.tmp" "$JARS/UNAVAILABLE.txt"
    echo "[setup] WARNING: GraphFrames jars could not be fetched (graph stages that need them will fail clearly):"
    sed 's/^/[setup]   /' "$JARS/UNAVAILABLE.txt"
  else
    rm -f "$JARS/UNAVAILABLE.txt.tmp" "$JARS/UNAVAILABLE.txt"
  fi
fi
echo "[setup] done in $(( $(date +%s) - t0 )) s"
