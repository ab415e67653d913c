#!/usr/bin/env python
"""Training throughput: `aigc train` vs a plain PyTorch loop vs `transformers.Trainer`, same model and data.

A benchmark, not a test. The sides train the same GPT-2 (same initial weights: each builds it
right after `torch.manual_seed(seed)` the way the gpt backend does) on the same prepared
character-level tinyshakespeare (or Python's own docs when ../shared is absent):

  aigc     `aigc_cli.training.train_model` itself, in this process. Timed from its metrics.jsonl
           throughput windows: every optimisation step with the loop's own per-step work, without
           the step-0 evaluation, the final checkpoint and the plot.
  aigc+compile  the same with `train.compile: true`, run for twice the steps: the first window
           holds the compilation, the second (steady state) is the one reported; the note gives
           how long compiling took. Not run with --smoke (compiling takes minutes on a small CPU).
  plain    the loop a user would write after nanoGPT's train.py: `get_batch` re-opening the memmap
           and stacking windows, AdamW with nanoGPT's weight-decay groups (fused on CUDA only, as in
           nanoGPT), the same warm-up + cosine schedule, clipping, cross-entropy. perf_counter
           around the step loop.
  trainer  `transformers.Trainer` with the same hyper-parameters (its default fused AdamW, cosine
           schedule with warm-up, clipping), a Dataset of the same windows in the same order, no
           evaluation, saving, logging or progress bar. Timed by its own `train_runtime`.
  trainer_stock  the same Trainer on the same weights, but with GPT2Config's default activation
           ("gelu_new", five tensor ops) where aigc builds the fused "gelu_pytorch_tanh" (the same
           function): the model a Trainer user gets by default. An information row, not like-for-like.
  aigc_bf16, trainer_bf16  on a CPU where aigc's `train.precision: auto` picks bf16 autocast
           (native AVX512-BF16 or AMX): aigc and Trainer (`bf16=True`) again, both in bf16 — a
           like-for-like row — and an informational row of each tool at its default precision;
           unless --no-compile, also both compiled in bf16 (Trainer's `torch_compile=True`, timed
           over the second half of twice the steps).

Each side first runs an untimed warm-up, then `--repeats` interleaved rounds (rotating who goes
first); the medians are compared. Model FLOP utilisation is nanoGPT's estimate (6N + 12·L·H·Q·T
FLOPs per token) against this machine's measured matmul throughput.

Model: nanoGPT's shakespeare-char CPU size (4 layers × 4 heads × 128, block 64, batch 12) on CPU;
its GPU size (6 × 6 × 384, block 256, batch 64, bf16) on CUDA.

    python scripts/bench/train.py                  # 200 steps × 3 rounds
    python scripts/bench/train.py --steps 500 --repeats 5 --json out.json
    python scripts/bench/train.py --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

SIZES = {
    "cpu": {"model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64}, "batch_size": 12, "precision": "fp32"},
    "cuda": {"model": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256}, "batch_size": 64, "precision": "bf16"},
    "smoke": {"model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16}, "batch_size": 4, "precision": "fp32"},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per timed run")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    p.add_argument("--warmup-steps", type=int, default=20, help="untimed steps of each side first (0: none)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-compile", action="store_true", help="leave out the train.compile side (it compiles for minutes on a small CPU)")
    p.add_argument("--smoke", action="store_true", help="one step of each side at tiny sizes (checks the script runs)")
    p.add_argument("--json", help="write the result rows here")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.repeats, args.warmup_steps = 1, 1, 0
    return args


def make_config(args, workdir: Path):
    import torch

    from aigc_cli.config import validate_config

    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    size = SIZES["smoke" if args.smoke else device]
    source = harness.text_source()
    if args.smoke:
        source = str(workdir / "tiny.txt")
        Path(source).write_text("To be, or not to be, that is the question.\n" * 200, encoding="utf-8")
    raw = {
        "data": {"source": source, "tokenizer": {"kind": "char"}, "split": "tail", "prepared_dir": str(workdir / "prepared")},
        "model": {"backend": "gpt", "architecture": "gpt2", "dropout": 0.0, **size["model"]},
        "train": {"batch_size": size["batch_size"], "learning_rate": 1e-3, "min_lr": 1e-4, "warmup_steps": 100,
                  "lr_decay_steps": 2000, "beta2": 0.99, "weight_decay": 0.1, "grad_clip": 1.0, "device": device,
                  "precision": size["precision"], "eval_batches": 1, "save_every": 0, "keep_last": 1,
                  "out_dir": str(workdir / "unused")},
    }
    return validate_config(raw, source="bench")


def build_model(cfg, stock_gelu: bool = False):
    """The gpt backend's model, as every side starts from it. `stock_gelu`: the same weights with
    GPT2Config's default activation, "gelu_new" (the same function as aigc's fused
    "gelu_pytorch_tanh", computed in five tensor ops): the model a Trainer user builds by default."""
    import torch

    from aigc_cli.backends import get_backend
    from aigc_cli.data.batches import TokenArray

    torch.manual_seed(cfg.train.seed)
    meta = TokenArray(cfg.data.prepared_dir, "train").meta
    model = get_backend("gpt").build(cfg.model, meta).to(cfg.train.device)
    if stock_gelu:
        from transformers.activations import ACT2FN

        model.config.activation_function = "gelu_new"
        for block in model.transformer.h:
            block.mlp.act = ACT2FN["gelu_new"]
    return model


def window_starts(cfg, steps: int) -> "object":
    """The start of every training window, in the order the loops draw them."""
    import numpy as np
    import torch

    n_tokens = len(np.memmap(Path(cfg.data.prepared_dir) / "train.bin", dtype=np.uint16, mode="r"))
    generator = torch.Generator().manual_seed(cfg.train.seed)
    return [torch.randint(n_tokens - cfg.model.block_size, (cfg.train.batch_size,), generator=generator) for _ in range(steps)]


# ----------------------------------------------------------------------------- the three sides
def run_aigc(cfg, steps: int, out_dir: Path, compile: bool = False) -> float:
    """tokens/s of the (last) throughput window; compiled runs go twice as long and report the second."""
    from aigc_cli.training import train_model

    cfg = cfg.model_copy(deep=True)
    cfg.train.out_dir, cfg.train.max_steps, cfg.train.compile = str(out_dir), 2 * steps if compile else steps, compile
    cfg.train.eval_every, cfg.train.log_every = cfg.train.max_steps, steps
    train_model(cfg, quiet=True)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    windows = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    if compile:
        tokens = steps * cfg.train.batch_size * cfg.model.block_size
        COMPILE_SECONDS.append(tokens / windows[0] - tokens / windows[-1])
    return windows[-1]


COMPILE_SECONDS: list[float] = []  # first window minus a steady one, per compiled run (the first run compiles)


def run_plain(cfg, steps: int) -> float:
    """nanoGPT's train.py loop, trimmed to what this comparison needs."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    tc, block = cfg.train, cfg.model.block_size
    device = tc.device
    model = build_model(cfg)
    data_path = Path(cfg.data.prepared_dir) / "train.bin"
    starts = window_starts(cfg, steps)

    def get_batch(step: int):
        data = np.memmap(data_path, dtype=np.uint16, mode="r")  # nanoGPT re-opens it every batch
        ix = starts[step]
        x = torch.stack([torch.from_numpy(data[i:i + block].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block].astype(np.int64)) for i in ix])
        return x.to(device), y.to(device)

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": tc.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), fused=device == "cuda")
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=tc.precision == "bf16")

    def lr_at(it: int) -> float:
        if it < tc.warmup_steps:
            return tc.learning_rate * (it + 1) / (tc.warmup_steps + 1)
        ratio = (it - tc.warmup_steps) / (tc.lr_decay_steps - tc.warmup_steps)
        return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (tc.learning_rate - tc.min_lr)

    _sync(device)
    start = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        x, y = get_batch(step)
        with autocast:
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    loss.item()
    return steps * tc.batch_size * block / (time.perf_counter() - start)


def with_precision(cfg, precision: str):
    cfg = cfg.model_copy(deep=True)
    cfg.train.precision = precision
    return cfg


def run_trainer(cfg, steps: int, out_dir: Path, compile: bool = False, stock_gelu: bool = False) -> float:
    """Timed by Trainer's own `train_runtime`; with `torch_compile=True` it runs twice the steps and
    the second half is timed (steady state, as for aigc+compile). `stock_gelu`: see build_model."""
    import numpy as np
    import torch
    from torch.utils.data import Dataset, SequentialSampler
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tc, block = cfg.train, cfg.model.block_size
    total = 2 * steps if compile else steps
    model = build_model(cfg, stock_gelu)
    tokens = np.memmap(Path(cfg.data.prepared_dir) / "train.bin", dtype=np.uint16, mode="r")
    starts = torch.cat(window_starts(cfg, total)).tolist()

    class Windows(Dataset):
        def __len__(self):
            return len(starts)

        def __getitem__(self, i):
            ids = torch.from_numpy(tokens[starts[i]:starts[i] + block].astype(np.int64))
            return {"input_ids": ids, "labels": ids}

    class InOrder(Trainer):  # the same windows in the same order as the other sides
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    class StepClock(TrainerCallback):  # only on compiled runs: its per-step sync would slow a GPU run
        def __init__(self):
            self.ends: dict[int, float] = {}

        def on_step_end(self, args, state, control, **kwargs):
            _sync(tc.device)
            self.ends[state.global_step] = time.perf_counter()

    arguments = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=tc.batch_size, max_steps=total, learning_rate=tc.learning_rate,
        weight_decay=tc.weight_decay, adam_beta1=tc.beta1, adam_beta2=tc.beta2, max_grad_norm=tc.grad_clip,
        lr_scheduler_type="cosine", warmup_steps=tc.warmup_steps, logging_steps=10 ** 9, save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, use_cpu=tc.device == "cpu",
        bf16=tc.precision == "bf16", seed=tc.seed, torch_compile=compile)
    clock = StepClock()
    trainer = InOrder(model=model, args=arguments, train_dataset=Windows(), callbacks=[clock] if compile else None)
    trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict
    runtime = trainer.train().metrics["train_runtime"]
    if compile:
        runtime = clock.ends[total] - clock.ends[steps]
    return steps * tc.batch_size * block / runtime


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def flops_per_token(cfg, model) -> float:
    """nanoGPT's estimate_mfu: 6N + 12·L·H·Q·T, N without the position embeddings."""
    mc = cfg.model
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return 6 * n + 12 * mc.n_layer * mc.n_head * (mc.n_embd // mc.n_head) * mc.block_size


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from aigc_cli.data.prepare import prepare_text_corpus

    with tempfile.TemporaryDirectory(prefix="aigc-bench-train-") as tmp:
        workdir = Path(tmp)
        cfg = make_config(args, workdir)
        prepare_text_corpus(cfg, log=lambda _: None)
        device, mc, tc = cfg.train.device, cfg.model, cfg.train
        print(f"train: gpt2 {mc.n_layer}×{mc.n_head}×{mc.n_embd}, block {mc.block_size}, batch {tc.batch_size}, {tc.precision}, "
              f"{device}, {args.steps} steps × {args.repeats} rounds, torch threads {torch.get_num_threads()}", flush=True)
        counter = iter(range(10 ** 6))
        sides = {"aigc": lambda steps: run_aigc(cfg, steps, workdir / f"aigc-{next(counter)}"),
                 "plain": lambda steps: run_plain(cfg, steps),
                 "trainer": lambda steps: run_trainer(cfg, steps, workdir / f"trainer-{next(counter)}"),
                 "trainer_stock": lambda steps: run_trainer(cfg, steps, workdir / f"trainer-{next(counter)}", stock_gelu=True)}
        if not (args.smoke or args.no_compile):
            sides["aigc_compile"] = lambda steps: run_aigc(cfg, steps, workdir / f"aigc-{next(counter)}", compile=True)
        if bf16_by_default(cfg):  # a CPU with native bf16: aigc's default (auto) is bf16 there, Trainer's is fp32
            bf16 = with_precision(cfg, "bf16")
            sides["aigc_bf16"] = lambda steps: run_aigc(bf16, steps, workdir / f"aigc-{next(counter)}")
            sides["trainer_bf16"] = lambda steps: run_trainer(bf16, steps, workdir / f"trainer-{next(counter)}")
            if "aigc_compile" in sides:
                sides["aigc_bf16_compile"] = lambda steps: run_aigc(bf16, steps, workdir / f"aigc-{next(counter)}", compile=True)
                sides["trainer_bf16_compile"] = lambda steps: run_trainer(bf16, steps, workdir / f"trainer-{next(counter)}", compile=True)
        if args.warmup_steps:
            for side in sides.values():
                side(args.warmup_steps)
        rates = harness.interleaved({name: (lambda side=side: side(args.steps)) for name, side in sides.items()}, args.repeats, "train")
        peak = harness.matmul_flops(device, torch.bfloat16 if tc.precision == "bf16" else torch.float32, size=256 if args.smoke else 1024,
                                    seconds=0.1 if args.smoke else 2.0)
        per_token = flops_per_token(cfg, build_model(cfg))

    med = {name: harness.median(v) for name, v in rates.items()}
    what = f"training tokens/s (gpt2 {mc.n_layer}×{mc.n_head}×{mc.n_embd}, block {mc.block_size}, batch {tc.batch_size}, {tc.precision}, {device})"
    mfu = {name: med[name] * per_token / peak for name in med}
    note = (f"model FLOP utilisation (nanoGPT's estimate) aigc {mfu['aigc']:.1%}, plain {mfu['plain']:.1%}, Trainer {mfu['trainer']:.1%} "
            f"of this machine's measured matmul throughput, {peak / 1e9:,.0f} GFLOP/s; "
            f"aigc's rounds spread {min(rates['aigc']):,.0f}–{max(rates['aigc']):,.0f} tokens/s")
    rows = [harness.row("train", what, "tokens/s", med["aigc"], "plain PyTorch loop (nanoGPT-style)", med["plain"], 1.0, note),
            harness.row("train", what, "tokens/s", med["aigc"], "transformers.Trainer", med["trainer"], 1.3)]
    rows.append(harness.row("train", what, "tokens/s", med["aigc"], "transformers.Trainer, GPT2Config's default gelu_new", med["trainer_stock"], None,
                            "not the same kernels: the same weights and function, with GPT-2's stock five-op tanh-GELU "
                            "where aigc builds the fused one; the rows above give Trainer aigc's model"))
    if "aigc_compile" in med:
        rows.append(harness.row("train", what.replace("training tokens/s", "training tokens/s with train.compile"), "tokens/s",
                                med["aigc_compile"], "transformers.Trainer", med["trainer"], 1.3,
                                f"MFU {mfu['aigc_compile']:.1%}; steady state after compiling, which took "
                                f"{COMPILE_SECONDS[0]:.0f} s the first time (later runs in this process reuse the compiled code)"))
    if "aigc_bf16" in med:
        what_bf16 = what.replace(f", {tc.precision},", ", bf16 autocast,")
        rows += [harness.row("train", what_bf16, "tokens/s", med["aigc_bf16"], "transformers.Trainer, bf16=True", med["trainer_bf16"], 1.3,
                             f"aigc's bf16 is {med['aigc_bf16'] / med['aigc']:.2f}× its fp32 on this CPU"),
                 harness.row("train", "training tokens/s, each tool's defaults (aigc: auto → bf16 on this CPU, fused GELU; "
                             "Trainer: fp32, GPT2Config's gelu_new)", "tokens/s", med["aigc_bf16"],
                             "transformers.Trainer, its defaults", med["trainer_stock"], None,
                             "not a like-for-like row: what each tool does when left at its defaults")]
    if "aigc_bf16_compile" in med:
        what_compiled = what_bf16.replace("training tokens/s", "training tokens/s with train.compile")
        rows += [harness.row("train", what_compiled, "tokens/s", med["aigc_bf16_compile"], "transformers.Trainer, bf16=True", med["trainer_bf16"], 1.3,
                             "both in bf16; Trainer as it runs unless told to compile (next row)"),
                 harness.row("train", what_compiled, "tokens/s", med["aigc_bf16_compile"], "transformers.Trainer, bf16=True, torch_compile=True",
                             med["trainer_bf16_compile"], None, "both compiled, both steady state after compiling")]
    harness.write_rows(args.json, rows)
    return 0


def bf16_by_default(cfg) -> bool:
    """Whether aigc's train.precision auto picks bf16 here where the benchmark size is fp32."""
    from aigc_cli.backends import spec
    from aigc_cli.training.precision import pick_precision

    return cfg.train.precision == "fp32" and pick_precision("auto", cfg.train.device, spec("gpt")) is not None


if __name__ == "__main__":
    sys.exit(main())
