#!/usr/bin/env bash
# The whole test suite (what CI runs). Fails when any test fails or none ran.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check graph jobs dags tests bench
exec .venv/bin/pytest -q "$@"
