#!/usr/bin/env python
"""Chat fine-tuning throughput: `aigc finetune` SFT and DPO vs TRL's SFTTrainer and DPOTrainer.

A benchmark, not a test. Both tools train the same saved base — a GPT-2 built by aigc's gpt
backend from a config (random weights, dropout 0), with a character-level tokenizer holding
<|im_start|>/<|im_end|> as special tokens and a chatml `chat_template` that marks each assistant
turn with `{% generation %}` (it renders exactly as aigc's built-in chatml) — on the same rows of
aigc's built-in chat data (aigc_cli/data/builtin_chat.py: `python_chat("train")` conversations
for SFT, `python_preferences("train")` pairs for DPO), with the same batch size, max_length,
learning rate, AdamW betas, weight decay, clipping, seed and precision (bf16 autocast where
aigc's `train.precision: auto` picks it — CUDA with bf16, CPUs with AVX512-BF16 or AMX — else
fp32; `--precision` forces one). TRL runs offline with local files, report_to none, no saving,
no evaluation, no logging rows, dataloader workers 0, gradient checkpointing off (TRL's default
is on; aigc does not checkpoint).

  SFT  aigc: `finetune_model` in this process, finetune.method full, format messages,
       train_on assistant, packing true (whole conversations in rows of up to max_length tokens,
       positions restarting per conversation, no attention across them).
       TRL: `SFTTrainer`, `SFTConfig(packing=True, packing_strategy="bfd", assistant_only_loss=True)`.
       BFD packing is TRL's padding-free mode (TRL turns `padding_free` on with it): the same
       rows of whole conversations, given as one flattened sequence with position ids. Plain
       `padding_free=True` without packing would put a batch of B single conversations in a step,
       not B rows of max_length tokens, so packing is the like-for-like setting. TRL's own
       template patching is not needed: the base's template has generation markers, so both
       label the same tokens (each assistant reply and its <|im_end|>).
       Metric: conversation tokens per second — every token of the packed conversations, padding
       not counted, counted the same on both sides (a conversation of n tokens counts n).
  DPO  aigc: finetune.method dpo, preference.weights lora (the reference is the model with its
       adapters disabled), loss_type sigmoid, one forward over a [prompt | chosen | rejected] row
       per pair (the prompt computed once for both replies; a 4D mask keeps the rejected reply
       from seeing the chosen one; the same log-probs as two sequences, tested).
       TRL: `DPOTrainer(peft_config=LoraConfig(...))`, loss_type sigmoid, which also takes its
       reference from the adapter-disabled model. Same beta, LoRA r, alpha, dropout 0 and target
       modules (c_attn, c_proj, c_fc). Metric: preference pairs per second.

Timing, the same on both sides: the wall time from the end of warm-up step W to the end of the
last step (perf_counter, after a CUDA synchronize), over the tokens or pairs of the steps in
between. It holds every step's whole per-step work — fetching and collating the batch, forward,
backward, clipping, the optimizer and scheduler, each loop's own bookkeeping — and nothing
before or after: model loading, tokenizing, packing, the first W steps, evaluations, saving.
aigc: its loop's `train_step` is wrapped (evaluations at step 0 and at the end only, log rows
only at the end, no checkpoint before the end). TRL: a callback's `on_step_end`, tokens counted
in `training_step`. Each side runs `--repeats` interleaved rounds (rotating who goes first), each
a fresh run from the saved base; the medians are compared.

    python scripts/bench/chat.py                      # SFT and DPO, 40 timed steps × 3 rounds
    python scripts/bench/chat.py --only dpo --steps 100 --repeats 5 --json out.json
    python scripts/bench/chat.py --smoke              # tiny sizes, 1 + 2 steps, one round
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

sys.path.insert(1, str(harness.REPO))  # this checkout's aigc_cli, also when run as a plain script

SIZES = {  # GPT-2 layers × heads × width; tokens per packed SFT row; tokens per DPO sequence; batch sizes
    "cpu": {"model": (4, 4, 128), "sft_length": 256, "dpo_length": 128, "sft_batch": 8, "dpo_batch": 8},
    "cuda": {"model": (6, 6, 384), "sft_length": 1024, "dpo_length": 128, "sft_batch": 16, "dpo_batch": 32},
    "smoke": {"model": (1, 2, 32), "sft_length": 128, "dpo_length": 128, "sft_batch": 2, "dpo_batch": 2},
}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["c_attn", "c_proj", "c_fc"]}
BETA = 0.1
HYPER = {"learning_rate": 5e-4, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.1, "grad_clip": 1.0, "seed": 1337}
SMOKE_ROWS = 48

# chatml (aigc_cli/data/chat.py's, rendered identically) with TRL's generation markers around
# each assistant reply and its <|im_end|>: what both tools learn.
CHATML_WITH_GENERATION = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=["sft", "dpo"], default=["sft", "dpo"], help="run only these")
    p.add_argument("--steps", type=int, default=40, help="timed optimizer steps per run")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps at the start of every run (at least 1)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: what aigc's train.precision auto picks here (bf16 autocast where native, else fp32)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 warm-up + 2 timed steps, one round (checks the script runs)")
    p.add_argument("--json", help="write the result rows here")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup_steps, args.repeats = 2, 1, 1
    if args.warmup_steps < 1:
        p.error("--warmup-steps must be at least 1: the clock starts at the end of the last warm-up step")
    return args


@dataclass
class Setup:
    folder: Path
    base: Path  # the saved base model and tokenizer (with its chat template)
    device: str
    precision: str  # "bf16" or "fp32", for the pair of tools alike
    size: dict
    pad_id: int  # the tokenizer's end-of-text, which both tools pad with; it never occurs inside a conversation
    sft_rows: list[dict] = field(default_factory=list)
    dpo_rows: list[dict] = field(default_factory=list)

    def path(self, name: str) -> Path:
        return self.folder / name


# ----------------------------------------------------------------------------- the shared base and data
def make_setup(folder: Path, args) -> Setup:
    import torch

    from aigc_cli.backends import GPTModelConfig, gpt, spec
    from aigc_cli.data.builtin_chat import jsonl, python_chat, python_preferences
    from aigc_cli.data.tokenization import build_char_tokenizer, eos_id, save_tokenizer
    from aigc_cli.training.precision import pick_precision

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    size = SIZES["smoke" if args.smoke else device]
    sft_rows = [c.row() for c in python_chat("train")]
    # chosen and rejected as assistant messages: what TRL's conversational DPO path takes (aigc reads both forms)
    dpo_rows = [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
                 "rejected": [{"role": "assistant", "content": p.rejected}]} for p in python_preferences("train")]
    val_sft, val_dpo = [c.row() for c in python_chat("val")][:16], [r.row() for r in python_preferences("val")][:16]
    for r in val_dpo:
        r["chosen"], r["rejected"] = [{"role": "assistant", "content": r["chosen"]}], [{"role": "assistant", "content": r["rejected"]}]
    if args.smoke:
        sft_rows, dpo_rows = sft_rows[:SMOKE_ROWS], dpo_rows[:SMOKE_ROWS]
    for name, rows in (("sft_train", sft_rows), ("sft_val", val_sft), ("dpo_train", dpo_rows), ("dpo_val", val_dpo)):
        (folder / f"{name}.jsonl").write_text(jsonl(rows), encoding="utf-8")

    text = json.dumps([sft_rows, dpo_rows, val_sft, val_dpo], ensure_ascii=False)
    tok = build_char_tokenizer(text + "\n")
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    base = folder / "base"
    base.mkdir()
    layers, heads, width = size["model"]
    context = max(size["sft_length"], size["dpo_length"])
    torch.manual_seed(HYPER["seed"])
    model = gpt.build(GPTModelConfig(architecture="gpt2", n_layer=layers, n_head=heads, n_embd=width, block_size=context, dropout=0.0),
                      {"vocab_size": tok.get_vocab_size(), "eos_id": eos_id(tok)})
    model.save_pretrained(base)
    save_tokenizer(tok, base, context)
    config_path = base / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = CHATML_WITH_GENERATION
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    if args.precision == "auto":
        # aigc's auto: the same answer for the gpt (SFT, full) and lora (DPO) backends, both cpu_bf16
        precision = "bf16" if pick_precision("auto", device, spec("gpt")) is not None else "fp32"
    else:
        precision = args.precision
    return Setup(folder, base, device, precision, size, eos_id(tok), sft_rows, dpo_rows)


# ----------------------------------------------------------------------------- the clock both sides use
class StepClock:
    """perf_counter at the end of every optimizer step, and what each step trained on (tokens or
    pairs; tensors are summed only at the end, so counting never syncs a GPU)."""

    def __init__(self, device: str):
        self.device, self.ends, self.counts = device, [], []

    def counted(self, amount) -> None:
        self.counts.append(amount)

    def step_ended(self) -> None:
        _sync(self.device)
        self.ends.append(time.perf_counter())

    def rate(self, warmup: int) -> float:
        if len(self.ends) <= warmup or len(self.counts) != len(self.ends):
            raise RuntimeError(f"the clock saw {len(self.ends)} step ends and {len(self.counts)} batches for {warmup} warm-up steps")
        done = sum(float(c) for c in self.counts[warmup:])
        return done / (self.ends[-1] - self.ends[warmup - 1])


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def aigc_sft_tokens(batches, pad_id: int):
    """Conversation tokens in aigc's packed batches: the non-pad inputs plus one per conversation
    (each conversation's inputs are its tokens but the last; a conversation starts where its
    position id is 0; padding is a run of pad ids of its own)."""
    total = 0
    for inputs, _ in batches:
        ids, positions = inputs if isinstance(inputs, tuple) else (inputs, None)
        real = ids != pad_id
        starts = ((positions == 0) & real).sum() if positions is not None else ids.size(0)
        total += int(real.sum()) + int(starts)
    return total


def aigc_dpo_pairs(batches, pad_id: int) -> int:
    """Pairs in aigc's preference batches: a row each when shared-prompt rows ((ids, positions,
    segments), [B, W]), two ([2B, T], chosen rows then rejected) otherwise."""
    return sum(inputs[0].size(0) if isinstance(inputs, tuple) else inputs.size(0) // 2 for inputs, _ in batches)


# ----------------------------------------------------------------------------- aigc
def aigc_config(setup: Setup, kind: str, total_steps: int, out_dir: Path):
    from aigc_cli.config import validate_config

    size = setup.size
    finetune = {"base": str(setup.base), "max_length": size[f"{kind}_length"]}
    if kind == "sft":
        finetune.update(method="full", format="messages", train_on="assistant", packing=True,
                        train_file=str(setup.path("sft_train.jsonl")), val_file=str(setup.path("sft_val.jsonl")))
    else:
        finetune.update(method="dpo", format="preference", lora=dict(LORA),
                        preference={"weights": "lora", "loss_type": "sigmoid", "beta": BETA},
                        train_file=str(setup.path("dpo_train.jsonl")), val_file=str(setup.path("dpo_val.jsonl")))
    train = {"device": setup.device, "precision": setup.precision, "max_steps": total_steps, "batch_size": size[f"{kind}_batch"],
             "warmup_steps": 0, "eval_every": total_steps, "eval_batches": 1, "save_every": 0, "keep_last": 1,
             "log_every": total_steps, "sample_every_eval": False, "out_dir": str(out_dir),
             **{k: HYPER[k] for k in ("learning_rate", "beta1", "beta2", "weight_decay", "grad_clip", "seed")}}
    return validate_config({"finetune": finetune, "train": train}, source="bench")


@contextmanager
def clocked_train_step(clock: StepClock, count):
    """aigc's loop with every `train_step` counted and its end timed (restored afterwards)."""
    from aigc_cli.training import loop

    original = loop.train_step

    def timed(run, batches):
        result = original(run, batches)
        clock.counted(count(batches))
        clock.step_ended()
        return result

    loop.train_step = timed
    try:
        yield
    finally:
        loop.train_step = original


def run_aigc(setup: Setup, kind: str, steps: int, warmup: int, out_dir: Path) -> float:
    from aigc_cli.training.finetune import finetune_model

    clock = StepClock(setup.device)
    count = (lambda b: aigc_sft_tokens(b, setup.pad_id)) if kind == "sft" else (lambda b: aigc_dpo_pairs(b, setup.pad_id))
    with clocked_train_step(clock, count):
        finetune_model(aigc_config(setup, kind, warmup + steps, out_dir), quiet=True)
    return clock.rate(warmup)


# ----------------------------------------------------------------------------- TRL
def trl_arguments(setup: Setup, kind: str, total_steps: int, out_dir: Path) -> dict:
    return dict(output_dir=str(out_dir), max_steps=total_steps, per_device_train_batch_size=setup.size[f"{kind}_batch"],
                learning_rate=HYPER["learning_rate"], adam_beta1=HYPER["beta1"], adam_beta2=HYPER["beta2"],
                weight_decay=HYPER["weight_decay"], max_grad_norm=HYPER["grad_clip"], lr_scheduler_type="cosine", warmup_steps=0,
                seed=HYPER["seed"], bf16=setup.precision == "bf16", fp16=False, use_cpu=setup.device == "cpu",
                activation_checkpointing=False, logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
                disable_tqdm=True, dataloader_num_workers=0, max_length=setup.size[f"{kind}_length"])


def run_trl(setup: Setup, kind: str, steps: int, warmup: int, out_dir: Path) -> float:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback

    clock = StepClock(setup.device)

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_ended()

    model = AutoModelForCausalLM.from_pretrained(setup.base, dtype=torch.float32, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(setup.base)
    arguments = trl_arguments(setup, kind, warmup + steps, out_dir)
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        class Counted(SFTTrainer):
            def training_step(self, model, inputs, *rest, **kw):
                clock.counted((inputs["input_ids"] != setup.pad_id).sum())  # padding-free: one row, no padding
                return super().training_step(model, inputs, *rest, **kw)

        config = SFTConfig(**arguments, packing=True, packing_strategy="bfd", assistant_only_loss=True)
        trainer = Counted(model=model, args=config, train_dataset=Dataset.from_list(setup.sft_rows), processing_class=tokenizer)
    else:
        from peft import LoraConfig
        from trl import DPOConfig, DPOTrainer

        class Counted(DPOTrainer):
            def training_step(self, model, inputs, *rest, **kw):
                clock.counted(inputs["input_ids"].size(0) // 2)  # [chosen; rejected]
                return super().training_step(model, inputs, *rest, **kw)

        lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules=LORA["target_modules"],
                          task_type="CAUSAL_LM")
        config = DPOConfig(**arguments, beta=BETA, loss_type=["sigmoid"])
        trainer = Counted(model=model, args=config, train_dataset=Dataset.from_list(setup.dpo_rows), processing_class=tokenizer,
                          peft_config=lora)
    trainer.add_callback(StepEnds())
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return clock.rate(warmup)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch

    harness.quiet_libraries()
    rows = []
    with tempfile.TemporaryDirectory(prefix="aigc-bench-chat-") as tmp:
        setup = make_setup(Path(tmp), args)
        layers, heads, width = setup.size["model"]
        shape = f"gpt2 {layers}×{heads}×{width}, {'bf16 autocast' if setup.precision == 'bf16' else 'fp32'}, {setup.device}"
        print(f"chat: {shape}; {len(setup.sft_rows):,} conversations, {len(setup.dpo_rows):,} preference pairs; "
              f"{args.warmup_steps} + {args.steps} steps × {args.repeats} rounds, torch threads {torch.get_num_threads()}", flush=True)
        counter = iter(range(10 ** 6))
        for kind in args.only:
            sides = {name: (lambda run=run: run(setup, kind, args.steps, args.warmup_steps, setup.path(f"run-{next(counter)}")))
                     for name, run in (("aigc", run_aigc), ("trl", run_trl))}
            got = harness.interleaved(sides, args.repeats, kind)
            rows.append(result_row(kind, setup, shape, got))
    harness.write_rows(args.json, rows)
    return 0


def result_row(kind: str, setup: Setup, shape: str, got: dict[str, list[float]]) -> dict:
    aigc, trl = harness.median(got["aigc"]), harness.median(got["trl"])
    spread = f"aigc's rounds {min(got['aigc']):,.4g}–{max(got['aigc']):,.4g}, TRL's {min(got['trl']):,.4g}–{max(got['trl']):,.4g}"
    if kind == "sft":
        what = f"SFT conversation tokens/s (full weights, packed rows of {setup.size['sft_length']}, batch {setup.size['sft_batch']}, {shape})"
        note = ("conversation tokens (padding not counted) per second of the steps after warm-up; aigc packs best-fit into "
                "[B, max_length] rows and pads each batch to its widest row (pads are computed, not counted), TRL flattens its "
                "BFD-packed rows into one padding-free sequence; aigc draws rows at random, TRL in shuffled epochs, so the "
                "rows differ step by step (the rate is per token); TRL's SFTTrainer computes its entropy and token-accuracy "
                "metrics every step, with host syncs (unconditional in TRL 1.16); TRL's default gradient checkpointing is "
                f"turned off (aigc does not checkpoint); {spread}")
        return harness.row("chat", what, "tokens/s", aigc, "TRL SFTTrainer (packing bfd, padding-free, assistant_only_loss)", trl, 1.1, note)
    what = (f"DPO pairs/s (LoRA r {LORA['r']} on c_attn/c_proj/c_fc, reference = adapters disabled, sigmoid, β {BETA}, "
            f"max_length {setup.size['dpo_length']}, batch {setup.size['dpo_batch']} pairs, {shape})")
    note = ("preference pairs per second of the steps after warm-up; both run one policy forward and one gradient-free reference "
            "forward with the adapters disabled per step: aigc over one [prompt | chosen | rejected] row per pair (the prompt "
            "computed once, no logits at the prompt positions every row shares), TRL over [chosen; rejected] rows, each with "
            "its prompt, right-padded to the batch's longest; the losses are the same (tested against TRL's code); TRL's "
            "completion also scores the newline chatml writes after <|im_end|> (one token per reply); aigc's rows are drawn "
            "at random, TRL's in shuffled epochs; TRL's default gradient checkpointing is turned off (aigc does not "
            f"checkpoint); {spread}")
    return harness.row("chat", what, "pairs/s", aigc, "TRL DPOTrainer (peft LoRA, adapter-disabled reference)", trl, 1.2, note)


if __name__ == "__main__":
    sys.exit(main())
