#!/usr/bin/env bash
# Installs medtextseg into .venv and runs the test suite (the fast tier; add -m slow or "" for more).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_viewer.sh   # NiiVue bundle for the web viewer (npm ci; installs npm with apt-get if missing)
bash scripts/setup_browser.sh  # Chromium (Debian chromium, needs root): the web viewer's test
bash scripts/setup_atlas.sh  # Colin27 T1 + AAL atlas (Debian mricron-data, needs root): AAL tests / study
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -m "${PYTEST_MARKERS:-not slow}" "$@"
