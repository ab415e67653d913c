#!/usr/bin/env python
"""Classifier throughput: `aigc train` (model.backend classifier) vs transformers.Trainer, and
`aigc generate` on the checkpoint vs pipeline("text-classification").

A benchmark, not a test. Both tools use the same saved base: a BertForSequenceClassification of
the sizes below (random weights, aigc's classifier.bert_config: dropout 0.1, one token type) with
aigc's BPE tokenizer (end-of-text first, the [CLS] position the head reads), saved once with
save_pretrained and loaded by both. The data is aigc's classify starter's (every machine has it):
the standard library's function summaries labelled by the package they come from
(aigc_cli/data/builtin_corpus.py `python_docstring_labels`, eight labels), aigc's seeded held-out
split, the same training rows given to the Trainer.

  train  aigc: `train_model` in this process, model.init_from the base (its weights and head kept:
         same labels), method full. Trainer: `AutoModelForSequenceClassification.from_pretrained`
         of the base, the rows tokenized by the same tokenizer (truncation at max_length) and
         padded per batch to its longest (DataCollatorWithPadding) — as aigc pads. Same batch
         size, max_length, learning rate, AdamW (fused on both: aigc's and the Trainer's default
         adamw_torch_fused), betas, weight decay, clipping, cosine schedule without warm-up, seed,
         precision (bf16 autocast where aigc's train.precision auto picks it — the classifier
         backend takes it on CUDA only, so on CPU both run fp32 — `--precision` forces one).
         Trainer: report_to none, no saving, no evaluation, no logging rows, workers 0.
         Timing (as chat.py): the wall time from the end of warm-up step W to the end of the last
         step, over the examples of the steps in between: it holds fetching and collating the
         batch, forward, backward, clipping, the optimizer and scheduler, each loop's own
         bookkeeping; aigc's loop's `train_step` is wrapped, the Trainer's `on_step_end` callback.
  predict  aigc: `generate_predictions` (what `aigc generate` runs) with force, on a trained
         checkpoint: load, tokenize, score length-sorted batches under inference_mode, write the
         JSONL and its manifest. pipeline: `pipeline("text-classification", model=checkpoint,
         top_k=None, batch_size=B)` built and called on the same texts, its results written as
         JSONL. Both in fp32 (aigc's generate scores classifiers in fp32; so does the pipeline by
         default); the wall time of each whole call, model loading included on both sides.
         Texts: every standard-library function summary (all packages), distinct.

Each side runs `--repeats` interleaved rounds (rotating who goes first); the medians are compared.

    python scripts/bench/classify.py                    # train and predict, 3 rounds
    python scripts/bench/classify.py --only train --steps 60 --repeats 5 --json out.json
    python scripts/bench/classify.py --smoke            # tiny sizes, one round
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

SIZES = {  # BERT layers × heads × width; tokens per text at most; training and prediction batch sizes
    "cpu": {"model": (4, 4, 256), "max_length": 128, "batch": 32, "predict_batch": 64, "vocab": 2000},
    "cuda": {"model": (6, 8, 512), "max_length": 128, "batch": 64, "predict_batch": 256, "vocab": 4000},
    "smoke": {"model": (1, 2, 32), "max_length": 64, "batch": 4, "predict_batch": 8, "vocab": 300},
}
HYPER = {"learning_rate": 5e-4, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.01, "grad_clip": 1.0, "seed": 1337}
SMOKE_ROWS = 64
VAL_FRACTION = 0.05


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=["train", "predict"], default=["train", "predict"], help="run only these")
    p.add_argument("--steps", type=int, default=40, help="timed optimizer steps per training run")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps at the start of every training run (at least 1)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="training precision; auto: what aigc's train.precision auto picks for the classifier here")
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
    base: Path  # the saved BertForSequenceClassification and its tokenizer
    device: str
    precision: str  # "bf16" or "fp32", training on both sides
    size: dict
    source: Path  # the labelled records (JSONL text/label)
    train_rows: list[dict] = field(default_factory=list)  # aigc's training split, what the Trainer gets too
    texts: list[str] = field(default_factory=list)  # what both predict

    def path(self, name: str) -> Path:
        return self.folder / name


# ----------------------------------------------------------------------------- the shared base and data
def make_setup(folder: Path, args) -> Setup:
    import torch

    from aigc_cli.backends import ClassifierModelConfig, classifier, spec
    from aigc_cli.config import validate_config
    from aigc_cli.data.builtin_corpus import python_docstring_labels, python_function_summaries
    from aigc_cli.training.classification import make_tokenizer, split_records
    from aigc_cli.training.precision import pick_precision

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    size = SIZES["smoke" if args.smoke else device]
    rows = python_docstring_labels()
    texts = sorted({p["target"] for p in python_function_summaries()})
    if args.smoke:
        rows, texts = rows[::max(1, len(rows) // SMOKE_ROWS)], texts[:SMOKE_ROWS]
    source = folder / "labelled.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    layers, heads, width = size["model"]
    model_section = {"backend": "classifier", "n_layer": layers, "n_head": heads, "n_embd": width, "max_length": size["max_length"]}
    cfg = validate_config({"data": {"source": str(source), "val_fraction": VAL_FRACTION, "tokenizer": {"kind": "bpe", "vocab_size": size["vocab"]}},
                           "model": model_section}, source="bench")
    train, _ = split_records(cfg)
    base = folder / "base"
    make_tokenizer(cfg, [r.text for r in train], base)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    labels = sorted({r["label"] for r in rows})
    torch.manual_seed(HYPER["seed"])
    model = classifier.build(ClassifierModelConfig(**model_section), {"vocab_size": len(tok), "pad_id": tok.pad_token_id, "labels": labels})
    model.save_pretrained(base)

    if args.precision == "auto":
        precision = "bf16" if pick_precision("auto", device, spec("classifier")) is not None else "fp32"
    else:
        precision = args.precision
    train_rows = [{"text": r.text, "label": r.label} for r in train]
    return Setup(folder, base, device, precision, size, source, train_rows, texts)


# ----------------------------------------------------------------------------- the clock both sides use
class StepClock:
    """perf_counter at the end of every optimizer step, and how many examples each step trained on."""

    def __init__(self, device: str):
        self.device, self.ends, self.counts = device, [], []

    def counted(self, amount: int) -> None:
        self.counts.append(amount)

    def step_ended(self) -> None:
        _sync(self.device)
        self.ends.append(time.perf_counter())

    def rate(self, warmup: int) -> float:
        if len(self.ends) <= warmup or len(self.counts) != len(self.ends):
            raise RuntimeError(f"the clock saw {len(self.ends)} step ends and {len(self.counts)} batches for {warmup} warm-up steps")
        return sum(self.counts[warmup:]) / (self.ends[-1] - self.ends[warmup - 1])


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- training
def aigc_config(setup: Setup, total_steps: int, out_dir: Path):
    from aigc_cli.config import validate_config

    size = setup.size
    layers, heads, width = size["model"]
    train = {"device": setup.device, "precision": setup.precision, "max_steps": total_steps, "batch_size": size["batch"],
             "warmup_steps": 0, "eval_every": total_steps, "eval_batches": 1, "save_every": 0, "keep_last": 1,
             "log_every": total_steps, "sample_every_eval": False, "out_dir": str(out_dir),
             **{k: HYPER[k] for k in ("learning_rate", "beta1", "beta2", "weight_decay", "grad_clip", "seed")}}
    model = {"backend": "classifier", "init_from": str(setup.base), "max_length": size["max_length"],
             "n_layer": layers, "n_head": heads, "n_embd": width}
    return validate_config({"data": {"source": str(setup.source), "val_fraction": VAL_FRACTION}, "model": model, "train": train}, source="bench")


@contextmanager
def clocked_train_step(clock: StepClock):
    """aigc's loop with every `train_step` counted and its end timed (restored afterwards)."""
    from aigc_cli.training import loop

    original = loop.train_step

    def timed(run, batches):
        result = original(run, batches)
        clock.counted(sum(inputs[0].size(0) for inputs, _ in batches))
        clock.step_ended()
        return result

    loop.train_step = timed
    try:
        yield
    finally:
        loop.train_step = original


def run_aigc_train(setup: Setup, steps: int, warmup: int, out_dir: Path) -> float:
    from aigc_cli.training.loop import train_model

    clock = StepClock(setup.device)
    with clocked_train_step(clock):
        train_model(aigc_config(setup, warmup + steps, out_dir), quiet=True)
    return clock.rate(warmup)


def run_trainer(setup: Setup, steps: int, warmup: int, out_dir: Path) -> float:
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, PrinterCallback, Trainer,
                              TrainerCallback, TrainingArguments)

    clock = StepClock(setup.device)

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_ended()

    class Counted(Trainer):
        def training_step(self, model, inputs, *rest, **kw):
            clock.counted(int(inputs["input_ids"].size(0)))
            return super().training_step(model, inputs, *rest, **kw)

    model = AutoModelForSequenceClassification.from_pretrained(setup.base, dtype=torch.float32, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(setup.base)
    label2id = model.config.label2id
    max_length = setup.size["max_length"]
    encoded = tokenizer([r["text"] for r in setup.train_rows], truncation=True, max_length=max_length)
    data = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                              "labels": [label2id[r["label"]] for r in setup.train_rows]})
    arguments = TrainingArguments(
        output_dir=str(out_dir), max_steps=warmup + steps, per_device_train_batch_size=setup.size["batch"],
        learning_rate=HYPER["learning_rate"], adam_beta1=HYPER["beta1"], adam_beta2=HYPER["beta2"], weight_decay=HYPER["weight_decay"],
        max_grad_norm=HYPER["grad_clip"], lr_scheduler_type="cosine", warmup_steps=0, seed=HYPER["seed"],
        bf16=setup.precision == "bf16", fp16=False, use_cpu=setup.device == "cpu", optim="adamw_torch_fused",
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0)
    trainer = Counted(model=model, args=arguments, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
                      processing_class=tokenizer)
    trainer.add_callback(StepEnds())
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return clock.rate(warmup)


# ----------------------------------------------------------------------------- prediction
def trained_checkpoint(setup: Setup, args) -> Path:
    """A short aigc run on the base: the checkpoint both sides predict with."""
    from aigc_cli.training.loop import train_model

    steps = 2 if args.smoke else 20
    return Path(train_model(aigc_config(setup, steps, setup.path("predict-run")), quiet=True).checkpoint)


def run_aigc_predict(setup: Setup, checkpoint: Path, out: Path) -> float:
    from aigc_cli.config import validate_config
    from aigc_cli.generation.classification import generate_predictions

    cfg = validate_config({"model": {"backend": "classifier"}, "train": {"device": setup.device, "out_dir": str(setup.path("predict-run"))},
                           "generate": {"batch_size": setup.size["predict_batch"], "out": str(out)}}, source="bench")
    start = time.perf_counter()
    result = generate_predictions(cfg, checkpoint, setup.texts, force=True)
    elapsed = time.perf_counter() - start
    assert result.predicted == len(setup.texts), result
    return len(setup.texts) / elapsed


def run_pipeline(setup: Setup, checkpoint: Path, out: Path) -> float:
    from transformers import pipeline

    start = time.perf_counter()
    classify = pipeline("text-classification", model=str(checkpoint), top_k=None, device=setup.device)
    results = classify(setup.texts, batch_size=setup.size["predict_batch"], truncation=True, max_length=setup.size["max_length"])
    out.write_text("".join(json.dumps({"text": t, "probabilities": {d["label"]: d["score"] for d in r}}, ensure_ascii=False) + "\n"
                           for t, r in zip(setup.texts, results)), encoding="utf-8")
    elapsed = time.perf_counter() - start
    assert len(results) == len(setup.texts)
    return len(setup.texts) / elapsed


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch

    harness.quiet_libraries()
    rows = []
    with tempfile.TemporaryDirectory(prefix="aigc-bench-classify-") as tmp:
        setup = make_setup(Path(tmp), args)
        layers, heads, width = setup.size["model"]
        shape = f"bert {layers}×{heads}×{width}, max_length {setup.size['max_length']}, {setup.device}"
        print(f"classify: {shape}; {len(setup.train_rows):,} training rows, {len(setup.texts):,} texts to predict; "
              f"{args.warmup_steps} + {args.steps} steps × {args.repeats} rounds, torch threads {torch.get_num_threads()}", flush=True)
        counter = iter(range(10 ** 6))
        if "train" in args.only:
            sides = {"aigc": lambda: run_aigc_train(setup, args.steps, args.warmup_steps, setup.path(f"run-{next(counter)}")),
                     "trainer": lambda: run_trainer(setup, args.steps, args.warmup_steps, setup.path(f"run-{next(counter)}"))}
            got = harness.interleaved(sides, args.repeats, "train")
            rows.append(train_row(setup, shape, got))
        if "predict" in args.only:
            checkpoint = trained_checkpoint(setup, args)
            sides = {"aigc": lambda: run_aigc_predict(setup, checkpoint, setup.path(f"aigc-{next(counter)}.jsonl")),
                     "pipeline": lambda: run_pipeline(setup, checkpoint, setup.path(f"pipeline-{next(counter)}.jsonl"))}
            got = harness.interleaved(sides, args.repeats, "predict")
            rows.append(predict_row(setup, shape, got))
    harness.write_rows(args.json, rows)
    return 0


def _spread(got: dict[str, list[float]], names: tuple[str, str]) -> str:
    return ", ".join(f"{n}'s rounds {min(got[n]):,.4g}–{max(got[n]):,.4g}" for n in names) + f" (load {os.getloadavg()[0]:.2f} at the end)"


def train_row(setup: Setup, shape: str, got: dict[str, list[float]]) -> dict:
    precision = "bf16 autocast" if setup.precision == "bf16" else "fp32"
    what = f"classifier training examples/s (batch {setup.size['batch']}, {shape}, {precision})"
    note = ("examples per second of the steps after warm-up, the same saved BertForSequenceClassification and tokenizer loaded "
            "by both; both pad each batch to its longest text; aigc draws rows at random, the Trainer in shuffled epochs, so "
            "the batches differ step by step (the rate is per example); fused AdamW on both; " + _spread(got, ("aigc", "trainer")))
    return harness.row("classify", what, "examples/s", harness.median(got["aigc"]), "transformers.Trainer (same model, data, "
                       "batch, optimizer, precision)", harness.median(got["trainer"]), 1.0, note)


def predict_row(setup: Setup, shape: str, got: dict[str, list[float]]) -> dict:
    what = (f"classifier prediction examples/s, {len(setup.texts):,} texts, batch {setup.size['predict_batch']} "
            f"({shape}, fp32 on both)")
    note = ("wall time of the whole call on both sides, model loading included: aigc's generate_predictions (tokenize all, "
            "longest first, padded batches under inference_mode, JSONL rows with every label's probability and the manifest) vs "
            "pipeline('text-classification', top_k=None, batch_size=B) built and called on the texts in their order, its results "
            "written as JSONL; " + _spread(got, ("aigc", "pipeline")))
    return harness.row("classify", what, "examples/s", harness.median(got["aigc"]), "transformers pipeline (batched)",
                       harness.median(got["pipeline"]), 1.5, note)


if __name__ == "__main__":
    sys.exit(main())
