#!/usr/bin/env bash
# Creates .venv (if missing) and installs medtextseg with its test tools and the server (serve extra);
# builds the web viewer when npm is there. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints-cpu.txt -e ".[dev,serve]"
bash scripts/setup_viewer.sh --optional  # the web viewer's NiiVue bundle (npm ci in viewer/); skipped without npm
