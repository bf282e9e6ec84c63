#!/usr/bin/env bash
# The FiLM/CBN study in one command (about 30 minutes on 2 CPU cores): builds the synthetic 2D benchmark and
# the Colin27 + AAL 2D dataset, then runs 3 seeds x 4 losses on both (studies/filmcbn_losses.yaml).
# ABLATION=1 also runs the 5-step fusion ablation on the synthetic set (studies/filmcbn_ablation.yaml).
# Rerun to resume: finished runs are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_atlas.sh  # Colin27 T1 + AAL atlas (Debian mricron-data, needs root): AAL tests / study
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORK=${WORK:-work}
mts=.venv/bin/medtextseg
[ -f "$WORK/synth2d/dataset.json" ] || $mts synth --out "$WORK/synth2d" --dim 2 --cases 300 --seed 0
[ -f "$WORK/aal2d/dataset.json" ] || $mts convert aal --src /usr/share/mricron/templates --dst "$WORK/aal2d" --spatial-dims 2
$mts study filmcbn_losses --out "$WORK/study_losses" --workers 2 \
  --data synthetic_2d="$WORK/synth2d" --data aal_2d="$WORK/aal2d"
if [ "${ABLATION:-0}" = 1 ]; then
  $mts study filmcbn_ablation --out "$WORK/study_ablation" --workers 2 --data synthetic_2d="$WORK/synth2d"
fi
