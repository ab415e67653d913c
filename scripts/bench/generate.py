#!/usr/bin/env python
"""Generation throughput: aigc's sampling vs `model.generate` (KV cache), one prompt and 64 at once.

A benchmark, not a test. A character-level GPT-2 (nanoGPT's shakespeare-char CPU size) is
trained briefly with `aigc train` on tinyshakespeare (or Python's docs when ../shared is absent),
so it writes text rather than an early end-of-text. Both sides then sample from the same loaded
model with the same settings (temperature 0.8, top-k 200, `--new-tokens` new tokens at most,
stopping at end-of-text), and tokens/s counts the new tokens each side actually produced:

  single   one prompt at a time: aigc's `sample_texts` with one prompt (what `aigc generate --stream` and a
           one-prompt run use) vs `model.generate(do_sample=True, ...)`, over `--single-prompts`
           prompts in turn;
  batched  64 prompts (lines of the validation text, different lengths): aigc's `sample_texts`
           with all 64 left-padded into one batch vs the one-at-a-time loop over the same 64
           prompts, and vs `model.generate` on the same left-padded batch with its attention mask.

The timed region is the sampling call(s) only; loading the checkpoint, reading prompts and
writing JSONL are outside it. Interleaved rounds, medians.

    python scripts/bench/generate.py
    python scripts/bench/generate.py --new-tokens 100 --repeats 5 --json out.json
    python scripts/bench/generate.py --smoke
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new-tokens", type=int, default=64, help="max new tokens per completion")
    p.add_argument("--prompts", type=int, default=64, help="prompts in the batched measurement")
    p.add_argument("--single-prompts", type=int, default=4, help="prompts sampled one after another in the single measurement")
    p.add_argument("--train-steps", type=int, default=100, help="aigc train steps before sampling (enough to stop predicting end-of-text)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    p.add_argument("--smoke", action="store_true", help="tiny model, 2 prompts, 2 tokens (checks the script runs)")
    p.add_argument("--json", help="write the result rows here")
    args = p.parse_args(argv)
    if args.smoke:
        args.new_tokens, args.prompts, args.single_prompts, args.train_steps, args.repeats = 2, 2, 1, 2, 1
    return args


def train_model(args, workdir: Path):
    from aigc_cli.config import validate_config
    from aigc_cli.data.prepare import prepare_text_corpus
    from aigc_cli.training import train_model as aigc_train

    source = harness.text_source()
    model = {"backend": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128}
    if args.smoke:
        source = str(workdir / "tiny.txt")
        Path(source).write_text("To be, or not to be, that is the question.\n" * 200, encoding="utf-8")
        model = {"backend": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32}
    cfg = validate_config({
        "data": {"source": source, "tokenizer": {"kind": "char"}, "split": "tail", "prepared_dir": str(workdir / "prepared")},
        "model": model,
        "train": {"out_dir": str(workdir / "run"), "max_steps": args.train_steps, "batch_size": 12, "warmup_steps": 20,
                  "eval_every": args.train_steps, "eval_batches": 1, "save_every": 0, "precision": "fp32"},
    }, source="bench")
    prepare_text_corpus(cfg, log=lambda _: None)
    aigc_train(cfg, quiet=True)
    return cfg


def read_prompts(cfg, count: int, longest: int) -> list[str]:
    """Lines of the validation text, of varied lengths (nonempty, at most `longest` characters)."""
    from aigc_cli.data.batches import TokenArray
    from aigc_cli.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer(Path(cfg.data.prepared_dir))
    text = tokenizer.decode(TokenArray(cfg.data.prepared_dir, "val").tokens[:200_000].tolist())
    lines = [line.strip()[:longest] for line in text.splitlines() if line.strip()]
    return (lines * (count // max(1, len(lines)) + 1))[:count]


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from aigc_cli.generation.text import completion_seed
    from aigc_cli.inference.loading import load_model
    from aigc_cli.inference.text_decoding import sample_texts

    with tempfile.TemporaryDirectory(prefix="aigc-bench-generate-") as tmp:
        cfg = train_model(args, Path(tmp))
        loaded = load_model(cfg.train.out_dir, "cpu")
        prompts = read_prompts(cfg, args.prompts, min(60, cfg.model.block_size - args.new_tokens))
    gc = cfg.generate.model_copy(update={"max_new_tokens": args.new_tokens, "batch_size": len(prompts)})
    seeds = [completion_seed(gc.seed, p, 0) for p in prompts]
    model, eos, tok = loaded.model, loaded.eos_id, loaded.tokenizer
    print(f"generate: gpt2 {model.config.n_layer}×{model.config.n_embd}, {len(prompts)} prompts, ≤{args.new_tokens} new tokens, "
          f"temperature {gc.temperature}, top-k {gc.top_k}, torch threads {torch.get_num_threads()}", flush=True)

    def encode(prompt: str) -> list[int]:
        return tok.encode(prompt, add_special_tokens=False).ids or [eos]

    def hf_generate(batch: list[str]) -> int:
        rows = [encode(p) for p in batch]
        width = max(map(len, rows))
        ids = torch.tensor([[eos] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=gc.temperature, top_k=gc.top_k,
                             max_new_tokens=args.new_tokens, pad_token_id=eos, eos_token_id=eos)
        return sum(_until_eos(row, eos) for row in out[:, width:].tolist())

    def timed(work) -> float:
        start = time.perf_counter()
        tokens = work()
        return tokens / (time.perf_counter() - start)

    singles = prompts[:args.single_prompts]
    single = {
        "aigc": lambda: timed(lambda: sum(sample_texts(loaded, [p], gc, [s])[0].new_tokens for p, s in zip(singles, seeds))),
        "hf": lambda: timed(lambda: sum(hf_generate([p]) for p in singles)),
    }
    batched = {
        "aigc_batched": lambda: timed(lambda: sum(c.new_tokens for c in sample_texts(loaded, prompts, gc, seeds))),
        "aigc_one_at_a_time": lambda: timed(lambda: sum(sample_texts(loaded, [p], gc, [s])[0].new_tokens for p, s in zip(prompts, seeds))),
        "hf_batched": lambda: timed(lambda: hf_generate(prompts)),
    }
    with torch.inference_mode():
        for side in (*single.values(), *batched.values()):
            side()  # warm-up
        got = harness.interleaved(single, args.repeats, "single") | harness.interleaved(batched, args.repeats, f"{len(prompts)} prompts")
    med = {name: harness.median(v) for name, v in got.items()}
    rows = [
        harness.row("generate", "generation tokens/s, 1 prompt at a time (KV cache)", "tokens/s", med["aigc"],
                    "transformers model.generate", med["hf"], 1.0),
        harness.row("generate", f"generation tokens/s, {len(prompts)} prompts batched", "tokens/s", med["aigc_batched"],
                    "aigc one prompt at a time", med["aigc_one_at_a_time"], 4.0),
        harness.row("generate", f"generation tokens/s, {len(prompts)} prompts batched", "tokens/s", med["aigc_batched"],
                    "transformers model.generate, same batch", med["hf_batched"], 1.0),
    ]
    harness.write_rows(args.json, rows)
    return 0


def _until_eos(row: list[int], eos: int) -> int:
    return row.index(eos) if eos in row else len(row)


if __name__ == "__main__":
    sys.exit(main())
