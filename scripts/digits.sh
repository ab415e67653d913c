#!/usr/bin/env bash
# The three image families on scikit-learn's digits (shipped offline), 16×16 greyscale
# (README "Image results"): for each of ddpm, vae and gan — train, sample 100 images into a
# grid, and evaluate FID/KID (in the feature space of a classifier aigc trains on the labelled
# digits) and class coverage on 500 samples. Writes runs/digits-*/ and runs/digits/summary.json.
# Usage: scripts/digits.sh [ddpm vae gan]
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/digits
mkdir -p "$out"
models=("${@:-ddpm vae gan}")
models=(${models[@]})

stage() {
  local name=$1; shift
  echo "== $name: $*" >&2
  local start=$SECONDS
  "$@" --json > "$out/$name.json"
  echo $((SECONDS - start)) > "$out/$name.seconds"
}

stage prep aigc prep configs/digits-ddpm.yaml --quiet
for model in "${models[@]}"; do
  rm -rf "runs/digits-$model"
  stage "train-$model" aigc train "configs/digits-$model.yaml" --quiet
  checkpoint=$(python -c "import json; print(json.load(open('$out/train-$model.json'))['checkpoint'])")
  stage "generate-$model" aigc generate "configs/digits-$model.yaml" --checkpoint "$checkpoint" --out "runs/digits-$model/samples" --quiet
  stage "eval-$model" aigc eval "configs/digits-$model.yaml" --checkpoint "$checkpoint" --quiet
done
python scripts/digits_summary.py "$out" "${models[@]}"
