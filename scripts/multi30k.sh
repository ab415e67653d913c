#!/usr/bin/env bash
# Multi30k German→English, the whole pipeline on 2 CPU cores (README "Fine-tuning results"):
#   1. pretrain a small GPT on the monolingual German and English training sentences;
#   2. route A: few-shot prompting of that model (k=2 examples before each input);
#      route B: full fine-tuning on the training pairs; route C: LoRA fine-tuning (+ merge);
#   3. translate test_2016_flickr with each route and score BLEU, chrF and ROUGE-L.
# Needs ../shared/data/multi30k. Writes work/, prepared/multi30k, runs/multi30k/ and
# runs/multi30k/summary.json. Each stage's wall time is printed and stored in the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/data/multi30k
test_de=$data/test_2016_flickr.de.gz
out=runs/multi30k
mkdir -p work/multi30k/mono "$out"

# Each stage's --json object is saved as $out/<name>.json, with its wall time in $out/<name>.seconds.
stage() {
  local name=$1; shift
  echo "== $name: $*" >&2
  local start=$SECONDS
  "$@" --json > "$out/$name.json"
  echo $((SECONDS - start)) > "$out/$name.seconds"
}

gzip -dc "$data/train.de.gz" > work/multi30k/mono/train.de.txt
gzip -dc "$data/train.en.gz" > work/multi30k/mono/train.en.txt

stage prep     aigc prep configs/multi30k-pretrain.yaml --quiet
stage pretrain aigc train configs/multi30k-pretrain.yaml --quiet
stage full     aigc finetune configs/multi30k-full.yaml --quiet
stage lora     aigc finetune configs/multi30k-lora.yaml --merge --quiet

pretrained=$(python -c "import json; print(json.load(open('$out/pretrain.json'))['checkpoint'])")
full=$(python -c "import json; print(json.load(open('$out/full.json'))['checkpoint'])")
# The merged model gives the adapter's text (tested) without the adapter's per-token overhead.
lora=$(python -c "import json; print(json.load(open('$out/lora.json'))['merged'])")

stage gen-fewshot aigc generate configs/multi30k-pretrain.yaml --checkpoint "$pretrained" --prompts-file "$test_de" --out "$out/test.fewshot.jsonl" --quiet
stage gen-full    aigc generate configs/multi30k-full.yaml --checkpoint "$full" --prompts-file "$test_de" --out "$out/test.full.jsonl" --quiet
stage gen-lora    aigc generate configs/multi30k-lora.yaml --checkpoint "$lora" --prompts-file "$test_de" --out "$out/test.lora.jsonl" --quiet

stage eval-fewshot aigc eval configs/multi30k-pretrain.yaml eval.generations="$out/test.fewshot.jsonl" eval.out="$out/eval.fewshot.json" --quiet
stage eval-full    aigc eval configs/multi30k-full.yaml eval.generations="$out/test.full.jsonl" eval.out="$out/eval.full.json" --quiet
stage eval-lora    aigc eval configs/multi30k-lora.yaml eval.generations="$out/test.lora.jsonl" eval.out="$out/eval.lora.json" --quiet

python scripts/multi30k_summary.py "$out"
