#!/usr/bin/env python
"""The chat starters end to end, measured: text-gpt → chat-sft → chat-dpo (offline, built-in data).

Writes the three starter configs into DIR (default demo-chat/), runs each step with the real CLI
and prints what the README reports: the held-out assistant-token loss before and after SFT, the
share of greedy replies that end at <|im_end|> (not at max_new_tokens), chrF/ROUGE-L of those
replies, and on held-out preference pairs the share where the model gives the chosen answer a
higher log-probability than the rejected one, before (chat-sft) and after DPO, with DPO's own
val_rewards/accuracies. Each step's wall time and the CPU's bf16 features are printed too.

    python scripts/chat_demo.py                  # everything, in demo-chat/ (reuses finished runs)
    python scripts/chat_demo.py --dir /tmp/d --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "bench"))


def aigc(*args: str, cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "aigc_cli", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"aigc {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def preference_accuracy(model_dir: Path, pairs_file: Path, max_length: int = 128) -> float:
    """Share of pairs whose chosen reply gets the higher summed log-probability under the model."""
    import torch
    from transformers import AutoTokenizer

    from aigc_cli.config import ChatColumnsConfig
    from aigc_cli.data.chat_examples import PreferenceExamples, prepare_chat_template
    from aigc_cli.data.chat_formats import read_preference_pairs
    from aigc_cli.inference.loading import load_model
    from aigc_cli.training.preference import sequence_logps

    loaded = load_model(model_dir, "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = PreferenceExamples(read_preference_pairs(str(pairs_file), ChatColumnsConfig()), tokenizer,
                                  prepare_chat_template(tokenizer, "chatml"), max_length, tokenizer.eos_token_id)
    wins = 0
    with torch.no_grad():
        for start in range(0, len(examples), 16):
            indices = list(range(start, min(start + 16, len(examples))))
            inputs, targets = examples.batch(indices)
            logits = loaded.model(input_ids=inputs).logits
            sums, _ = sequence_logps(logits, targets)
            wins += int((sums[:len(indices)] > sums[len(indices):]).sum())
    return wins / len(examples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="demo-chat")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    import harness

    facts = harness.machine()
    out: dict = {"machine": facts}
    for name in ("text-gpt", "chat-sft", "chat-dpo"):
        if not (work / "starters" / f"{name}.yaml").is_file():
            aigc("init", "starters", "--template", name, cwd=work)
    s = "starters/"
    if not (work / "runs/text-gpt/checkpoints/latest").is_file():
        aigc("prep", s + "text-gpt.yaml", cwd=work)
        out["text_gpt_train_s"], _ = aigc("train", s + "text-gpt.yaml", cwd=work)
    out["sft_s"], _ = aigc("finetune", s + "chat-sft.yaml", "--resume", cwd=work)
    val = [r for r in metrics(work / "runs/chat-sft") if "val_loss" in r]
    out["sft_val_loss_before"], out["sft_val_loss_after"] = val[0]["val_loss"], val[-1]["val_loss"]
    gen = work / "runs/chat-sft/generations.jsonl"
    if gen.exists():
        gen.unlink()
    out["generate_s"], _ = aigc("generate", s + "chat-sft.yaml", "--prompts-file", s + "python-chat-val-prompts.jsonl", cwd=work)
    rows = [json.loads(line) for line in gen.read_text().splitlines()]
    out["replies"] = len(rows)
    out["replies_ending_at_end_of_turn"] = sum(r.get("finish_reason") == "eos" for r in rows) / len(rows)
    out["reply_tokens_mean"] = sum(r.get("new_tokens", 0) for r in rows) / len(rows)
    _, report = aigc("eval", s + "chat-sft.yaml", "--json", cwd=work)
    out["sft_eval"] = json.loads(report).get("metrics", json.loads(report))
    prefs = work / s / "python-prefs-val.jsonl"
    checkpoints = work / "runs/chat-sft/checkpoints"
    sft_checkpoint = checkpoints / (checkpoints / "latest").read_text().strip()
    out["pref_accuracy_sft"] = preference_accuracy(sft_checkpoint, prefs)
    out["dpo_s"], _ = aigc("finetune", s + "chat-dpo.yaml", "--resume", "--merge", cwd=work)
    dval = [r for r in metrics(work / "runs/chat-dpo") if "val_rewards/accuracies" in r]
    out["dpo_val_rewards_accuracies_before"], out["dpo_val_rewards_accuracies_after"] = dval[0]["val_rewards/accuracies"], dval[-1]["val_rewards/accuracies"]
    out["pref_accuracy_dpo"] = preference_accuracy(work / "runs/chat-dpo/merged", prefs)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
