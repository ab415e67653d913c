#!/usr/bin/env bash
# The main job, end to end, on the built-in corpus (Python's own docstrings; no download):
#   prep → train → generate → eval with configs/quickstart.yaml, then where every output went.
# Extra arguments are config overrides, e.g.  scripts/quickstart.sh train.max_steps=300
set -euo pipefail
cd "$(dirname "$0")/.."
config=configs/quickstart.yaml

echo "== 1/4 prep" >&2
aigc prep "$config" "$@"
echo "== 2/4 train" >&2
# --resume: a second run continues (or just re-reports) the first, and a first run simply starts.
aigc train "$config" "$@" --resume
echo "== 3/4 generate" >&2
aigc generate "$config" "$@"
echo "== 4/4 eval" >&2
aigc eval "$config" "$@"
