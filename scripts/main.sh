#!/usr/bin/env bash
# Installs medtextseg into .venv and runs the main job on the embedded default, about 30 minutes on 2 CPU cores
# with bfloat16 units (about three times as long on a CPU without them, which trains in float32):
# synthetic bp-MRI benchmark -> text-guided 3D model and image-only baseline (same steps) -> the text model's
# presence threshold chosen on the validation split -> predictions and metrics on the test split -> report
# (tables, overlays, loss curves) in work/report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORK=${WORK:-work}
STEPS=${STEPS:-}
mts=.venv/bin/medtextseg
set_steps=()
[ -n "$STEPS" ] && set_steps=(--set "train.steps=$STEPS")

[ -f "$WORK/data/dataset.json" ] || $mts synth --out "$WORK/data" --cases 150 --seed 0
for model in text:default image_only:image_only; do
  name=${model%%:*}; preset=${model##*:}
  run="$WORK/runs/$name"
  if grep -qs '"event": "end"' "$run/log.jsonl"; then
    echo "$run: training already finished"
  elif [ -f "$run/last.pt" ]; then
    $mts train --out "$run" --resume "${set_steps[@]}"      # a killed run continues where it stopped
  else
    $mts train --data "$WORK/data" --out "$run" --preset "$preset" "${set_steps[@]}"
  fi
  # the presence threshold (when to answer "not there" with an empty mask), chosen on the validation split
  [ "$name" = text ] && $mts calibrate-presence --model "$run" --data "$WORK/data"
  $mts evaluate --model "$run" --data "$WORK/data" --out "$WORK/eval/$name" --overlay-channel 2
done
$mts compare text-guided="$WORK/eval/text" image-only="$WORK/eval/image_only" --out "$WORK/report"
