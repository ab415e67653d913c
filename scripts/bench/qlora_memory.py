#!/usr/bin/env python
"""Peak memory of QLoRA (finetune.quantization 4bit / 8bit) against plain LoRA, same model and data.

A measurement, not a timing: each variant runs `aigc finetune` (aigc_cli.training.finetune
itself: load the base — quantized by bitsandbytes for 4bit/8bit —, add the LoRA adapters, train
--steps steps with the loop's validation passes) in a fresh Python process, so no variant
inherits another's allocations. Two phases are told apart, because loading a quantized base
reads the full-precision file while it quantizes:

  the steps  from the moment the base is in memory until training returns (finetune's
             bookkeeping after it, where plain LoRA reloads the adapter to count parameters, is
             not fine-tuning memory). This is the row's number and its ratio.
  the run    loading included (the note).

  CUDA  torch.cuda.max_memory_allocated(), its peak reset when the steps begin.
  CPU   the resident set's high-water mark (VmHWM; Linux resets it when the steps begin through
        /proc/self/clear_refs, elsewhere only the whole run is measured), minus the resident set
        once torch, transformers, peft and bitsandbytes are imported (the same ~0.45 GB in every
        variant, which would hide the model's share). The resident set counts the pages of a
        memory-mapped safetensors file that were read, as the full-precision weights are used.
  weights    model.get_memory_footprint() of the loaded base (bitsandbytes' scales not included).

The base is a randomly initialised Llama built by aigc's gpt backend (the values of the weights
do not change the memory), sized for QLoRA's regime — frozen weights larger than the
activations of a small batch — trained on synthetic prompt/response pairs with a character
tokenizer. Precision is train.precision=auto for every variant (bf16 autocast where the GPU/CPU
has it natively), which is also the 4-bit compute dtype. Ratios are variant / plain LoRA: lower
is better.

    python scripts/bench/qlora_memory.py                 # Llama 8 × 1024 on CPU, 16 × 2048 on CUDA
    python scripts/bench/qlora_memory.py --device cpu --layers 4 --width 512 --steps 4
    python scripts/bench/qlora_memory.py --quick         # tiny model, 2 steps (checks the script runs; alias --smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

sys.path.insert(1, str(harness.REPO))  # this checkout's aigc_cli, also when run as a plain script

MIB = 2**20
VARIANTS = ("none", "4bit", "8bit")
LABELS = {"none": "plain LoRA (fp32 base)", "4bit": "QLoRA 4bit (NF4)", "8bit": "QLoRA 8bit (LLM.int8)"}
# layers, width, block, batch: QLoRA's regime, where the frozen weights outweigh the activations
SIZES = {"cpu": (8, 1024, 64, 2), "cuda": (16, 2048, 512, 4), "quick": (1, 64, 64, 4)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--layers", type=int, help="Llama blocks (default by device)")
    p.add_argument("--width", type=int, help="hidden size, a multiple of 64 (default by device)")
    p.add_argument("--block", type=int, help="tokens per example")
    p.add_argument("--batch", type=int, help="examples per step")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per variant")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--quick", "--smoke", action="store_true", dest="quick", help="a tiny model for 2 steps: checks the script runs; the numbers mean little")
    p.add_argument("--json", help="write the result rows here (for run_all.py)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure one variant from this config
    args = p.parse_args(argv)
    if args.quick:
        args.steps = 2
    return args


def make_experiment(folder: Path, args, device: str) -> Path:
    """A random Llama base, its tokenizer, synthetic pairs, and the finetune config (quantization set per variant)."""
    import torch

    from aigc_cli.backends import GPTModelConfig, gpt
    from aigc_cli.data.tokenization import build_char_tokenizer, eos_id, save_tokenizer

    layers, width, block, batch = SIZES["quick" if args.quick else device]
    layers, width, block, batch = args.layers or layers, args.width or width, args.block or block, args.batch or batch
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    pairs = [{"prompt": " ".join(words[(i + k) % len(words)] for k in range(3)), "response": " ".join(words[(i * 5 + k) % len(words)] for k in range(5))}
             for i in range(64)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    tok = build_char_tokenizer("".join(p["prompt"] + p["response"] for p in pairs) + "Q: A\n")
    torch.manual_seed(0)
    model = gpt.build(GPTModelConfig(architecture="llama", n_layer=layers, n_head=max(1, width // 64), n_embd=width, block_size=block),
                      {"vocab_size": tok.get_vocab_size(), "eos_id": eos_id(tok)})
    base = folder / "base"
    model.save_pretrained(base)
    save_tokenizer(tok, base, block)
    config = {
        "finetune": {"base": str(base), "method": "lora", "train_file": str(folder / "pairs.jsonl"), "prompt_field": "prompt",
                     "response_field": "response", "template": "Q: {prompt}\nA: ", "max_length": block, "packing": True,
                     "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
        "train": {"device": device, "max_steps": args.steps, "batch_size": batch, "learning_rate": 1e-3, "warmup_steps": 0,
                  "eval_every": max(1, args.steps // 2), "eval_batches": 2, "save_every": 0, "log_every": 1, "sample_every_eval": False},
    }
    path = folder / "experiment.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def measure_child(config_path: str, variant: str) -> None:
    """In the fresh process: import everything, note the resident set, fine-tune, print the peaks."""
    import aigc_cli.training.quantization  # noqa: F401 — first: it quiets bitsandbytes' import-time log
    import bitsandbytes  # noqa: F401 — imported by every variant alike, so the baseline is the same
    import peft  # noqa: F401
    import psutil
    import torch
    import transformers  # noqa: F401

    from aigc_cli.config import load_config
    from aigc_cli.training import finetune

    cuda = torch.cuda.is_available()
    got = {"variant": variant, "baseline_rss": psutil.Process().memory_info().rss}
    load, train = finetune.load_base_model, finetune.run_training

    def loaded(*a, **k):
        ref, model, tokenizer = load(*a, **k)
        got["weights"] = model.get_memory_footprint()
        return ref, model, tokenizer

    def trained(*a, **k):
        # The base is in memory now: the peaks from here on are those of the training steps.
        got["load_peak_rss"], got["load_cuda_peak"] = _peak_rss(), torch.cuda.max_memory_allocated() if cuda else None
        got["train_peak_rss"] = _reset_peak_rss()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        result = train(*a, **k)
        got["train_peak_rss"] = _peak_rss() if got["train_peak_rss"] else None  # None: no /proc/self/clear_refs here
        got["run_peak_rss"] = max(got["load_peak_rss"], _peak_rss())
        got["train_cuda_peak"] = torch.cuda.max_memory_allocated() if cuda else None
        return result

    finetune.load_base_model, finetune.run_training = loaded, trained  # (finetune's bookkeeping after training is left out)
    out_dir = Path(config_path).parent / f"run-{variant}"
    cfg = load_config(config_path, [f"finetune.quantization={variant}", f"train.out_dir={out_dir}"])
    result = finetune.finetune_model(cfg, quiet=True)
    print(json.dumps({**got, "val_loss": result.val_loss, "trainable": result.trainable_params, "total": result.total_params}))


def _peak_rss() -> int:
    """The high-water mark of this process's resident set (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _reset_peak_rss() -> bool:
    """Linux: set VmHWM back to the current resident set (proc(5), clear_refs value 5), after
    glibc has handed the memory freed while loading back to the system (malloc_trim): else the
    resident set would keep the loader's freed buffers, which the steps can reuse."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_variant(config: Path, variant: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(harness.REPO), os.environ.get("PYTHONPATH")])), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, __file__, "--child", str(config), "--variants", variant], env=env, cwd=harness.REPO,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"variant {variant} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        measure_child(args.child, args.variants[0])
        return 0
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    with tempfile.TemporaryDirectory(prefix="aigc-qlora-mem-") as tmp:
        config = make_experiment(Path(tmp), args, device)
        shape = _shape(config)
        got = {}
        for variant in args.variants:
            got[variant] = run_variant(config, variant)
            print(f"  {LABELS[variant]}: {_describe(got[variant], device)}", flush=True)
    if device == "cuda":
        what, peak = "CUDA max_memory_allocated during the steps", lambda r: r["train_cuda_peak"]
    elif all(r["train_peak_rss"] for r in got.values()):
        what, peak = "peak RSS during the steps, above the imports", lambda r: r["train_peak_rss"] - r["baseline_rss"]
    else:
        what, peak = "peak RSS of the whole run, above the imports", lambda r: r["run_peak_rss"] - r["baseline_rss"]
    print(f"\nLoRA fine-tuning, {shape}, {args.steps} steps, {device}: {what}")
    print(f"{'variant':<26} {'weights MiB':>12} {'peak MiB':>10} {'ratio':>7}")
    for variant, r in got.items():
        ratio = f"{peak(r) / peak(got['none']):.2f}×" if "none" in got else ""
        print(f"{LABELS[variant]:<26} {r['weights'] / MIB:>12,.1f} {peak(r) / MIB:>10,.1f} {ratio:>7}")
    rows = []
    plain = got.get("none")
    for variant in (v for v in got if v != "none"):
        r = got[variant]
        weights = f"; the base's weights {r['weights'] / MIB:,.1f} MiB" + (f" against {plain['weights'] / MIB:,.1f} MiB" if plain else "")
        whole = "" if device == "cuda" else f"; total peak RSS of the whole run (loading included) {r['run_peak_rss'] / MIB:,.0f} MiB" + \
            (f" against {plain['run_peak_rss'] / MIB:,.0f} MiB" if plain else "")
        rows.append(harness.row("qlora_memory", f"peak memory of LoRA fine-tuning on a {variant} base ({shape}, {device}; {what})", "MiB",
                                peak(r) / MIB, LABELS["none"] if plain else None, peak(plain) / MIB if plain else None,
                                note=f"ratio = {variant} / plain LoRA: lower is better{weights}{whole}"))
    harness.write_rows(args.json, rows)
    return 0


def _shape(config: Path) -> str:
    import yaml

    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    base = json.loads((Path(raw["finetune"]["base"]) / "config.json").read_text(encoding="utf-8"))
    return (f"Llama {base['num_hidden_layers']}×{base['hidden_size']}, block {raw['finetune']['max_length']}, "
            f"batch {raw['train']['batch_size']}, LoRA r {raw['finetune']['lora']['r']} on every projection")


def _describe(r: dict, device: str) -> str:
    where = f"CUDA peak {r['train_cuda_peak'] / MIB:,.1f} MiB in the steps, {r['load_cuda_peak'] / MIB:,.1f} loading; " if device == "cuda" else ""
    steps = f"{(r['train_peak_rss'] - r['baseline_rss']) / MIB:,.1f} in the steps, " if r["train_peak_rss"] else ""
    return (f"{where}weights {r['weights'] / MIB:,.1f} MiB; peak RSS above the imports: {steps}"
            f"{(r['load_peak_rss'] - r['baseline_rss']) / MIB:,.1f} loading; val loss {r['val_loss']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
