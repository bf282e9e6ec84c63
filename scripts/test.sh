#!/usr/bin/env bash
# Installs medtextseg into .venv and runs the test suite (the fast tier; add -m slow or "" for more).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_atlas.sh  # Colin27 T1 + AAL atlas (Debian mricron-data, needs root): AAL tests / study
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -m "${PYTEST_MARKERS:-not slow}" "$@"
