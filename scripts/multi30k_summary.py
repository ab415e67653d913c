"""Collect scripts/multi30k.sh's stage outputs into one table (stdout) and summary.json."""

import json
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/multi30k")
read = lambda name: json.loads((out / f"{name}.json").read_text())
seconds = lambda name: int((out / f"{name}.seconds").read_text())

pretrain = read("pretrain")
routes = {
    "few-shot (k=2) pretrained GPT": (None, ["pretrain", "gen-fewshot"], "fewshot"),
    "full fine-tuning": (read("full"), ["full", "gen-full"], "full"),
    "LoRA fine-tuning": (read("lora"), ["lora", "gen-lora"], "lora"),
}
rows = []
for name, (result, stages, key) in routes.items():
    metrics = read(f"eval-{key}")["metrics"]
    rows.append({
        "route": name,
        "bleu": round(metrics["bleu"], 2), "chrf": round(metrics["chrf"], 2), "rougeL": round(metrics["rougeL"], 4),  # ROUGE in 0..1
        "trainable_params": result["trainable_params"] if result else 0,
        "total_params": result["total_params"] if result else None,
        "train_seconds": seconds(stages[0]) if result else 0,
        "generate_seconds": seconds(stages[1]),
    })
summary = {"pretrain": {"val_loss": pretrain["val_loss"], "seconds": seconds("pretrain")}, "routes": rows}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"pretraining: val loss {pretrain['val_loss']:.3f} in {seconds('pretrain')} s")
print("| route | BLEU | chrF | ROUGE-L | trainable params | train time | translate time |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    share = f"{r['trainable_params']:,} ({r['trainable_params'] / r['total_params']:.1%})" if r["total_params"] else "0"
    print(f"| {r['route']} | {r['bleu']} | {r['chrf']} | {r['rougeL']} | {share} | {r['train_seconds']} s | {r['generate_seconds']} s |")
