"""The one training loop, for every backend and for fine-tuning, read top to bottom.

`run_training` is torchtune's recipe_main: take the run directory's lock, `setup`, `train`.
`train` is nanoGPT's loop: per step evaluate, checkpoint, step, log; recipe.py holds the pieces.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from aigc_cli.backends import get_backend, spec
from aigc_cli.runs.checkpoints import load_weights
from aigc_cli.runs.init_from import PretrainedStart, pretrained_start, provenance_record
from aigc_cli.config import ExperimentConfig, require_data
from aigc_cli.data.batches import TokenArray
from aigc_cli.errors import EXIT_SIGINT, EXIT_SIGTERM, Interrupted, Terminated
from aigc_cli.runs.locks import exclusive_lock
from aigc_cli.training.distributed import Processes, mean_over_processes
from aigc_cli.training.loss_stats import process_means
from aigc_cli.training.metrics import MetricsLog
from aigc_cli.training.optimizer import lr_at, set_learning_rate
from aigc_cli.training.progress import StepProgress
from aigc_cli.training.recipe import Run, TrainingJob, next_batches, save_checkpoint, setup, train_step, validation


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    val_loss: float
    steps: int
    tokens_per_s: float  # images per second for image backends (see `unit`)
    unit: str = "tokens"
    skipped_batches: int = 0  # steps whose non-finite loss was skipped (train.skip_nonfinite)
    val_loss_name: str = "loss"  # which loss val_loss is: a GAN's is its discriminator's
    wrote_samples: bool = False  # train_samples/ (train.sample_every_eval)
    stats: dict[str, float] = field(default_factory=dict)  # what the loss reported: last logged step's and last validation's ("val_")

    def to_json(self) -> dict:
        out = {"run_dir": str(self.run_dir), "checkpoint": str(self.checkpoint), "val_loss": self.val_loss,
               "steps": self.steps, f"{self.unit}_per_s": self.tokens_per_s, "skipped_batches": self.skipped_batches}
        return {**out, "stats": self.stats} if self.stats else out

    def summary_lines(self) -> list[str]:
        written = "config.yaml, metrics.jsonl, loss.png" + (", train_samples/" if self.wrote_samples else "") + ", TensorBoard events"
        which = "" if self.val_loss_name == "loss" else f" ({self.val_loss_name})"
        return [f"run directory: {self.run_dir}  ({written}; watch with: tensorboard --logdir {self.run_dir})",
                f"final checkpoint: {self.checkpoint}",
                f"validation loss{which}: {self.val_loss:.4f} after {self.steps} steps"] + stats_lines(self.stats)


def stats_lines(stats: dict[str, float]) -> list[str]:
    """The reported scalars of a result, validation's and training's on a line each."""
    val = {name.removeprefix("val_"): v for name, v in stats.items() if name.startswith("val_")}
    train = {name: v for name, v in stats.items() if not name.startswith("val_")}
    return [f"{label}: " + ", ".join(f"{name} {value:.4f}" for name, value in values.items())
            for label, values in (("validation", val), ("last logged step", train)) if values]


def train_model(cfg: ExperimentConfig, resume: bool = False, quiet: bool = False) -> TrainResult:
    """`aigc train`: a fresh model of model.* (or model.init_from's pretrained one) on the prepared token arrays or images."""
    if spec(cfg.model.backend).recipe:  # several jobs in sequence (latent diffusion: the autoencoder, then the UNet)
        import importlib

        return importlib.import_module(spec(cfg.model.backend).recipe).train_model(cfg, resume, quiet)
    if spec(cfg.model.backend).modality == "labels":  # a classifier reads labelled records, not prepared token arrays
        from aigc_cli.training.classification import label_job

        return run_training(cfg, label_job(cfg), resume, quiet)
    # With init_from, model.* is the pretrained model's: the run's config.yaml says what it trains.
    cfg, start = pretrained_start(cfg, Path(require_data(cfg).prepared_dir), resume)
    return run_training(cfg, prepared_data_job(cfg, start), resume, quiet)


def prepared_data_job(cfg: ExperimentConfig, start: PretrainedStart | None = None) -> TrainingJob:
    """What `aigc train` trains: model.* built fresh, or `start`'s pretrained model (model.init_from),
    or loaded to resume, on data.prepared_dir."""
    mc = cfg.model
    data_dir = Path(require_data(cfg).prepared_dir)
    if start is None and getattr(mc, "init_from", None):  # a caller other than train_model: a fresh start
        _, start = pretrained_start(cfg, data_dir)
    backend = get_backend(mc.backend)
    if spec(mc.backend).modality == "image":
        from aigc_cli.data.images import ImageArray

        train_data, val_data = ImageArray(data_dir, "train"), ImageArray(data_dir, "val")
        block_size, tokenizer_dir = 0, None
    else:
        train_data, val_data = TokenArray(data_dir, "train"), TokenArray(data_dir, "val")
        train_data.check_fits(mc.block_size)
        val_data.check_fits(mc.block_size)
        block_size, tokenizer_dir = mc.block_size, data_dir
    meta = train_data.meta

    def make_model(previous: Path | None, device: str) -> torch.nn.Module:
        if previous is not None:
            return load_weights(backend, previous, device)
        if start is not None:
            return backend.start_from(start.ref, device, mc.trust_remote_code, start.dropout)
        return backend.build(mc, meta).to(device)

    provenance = {"prepared_data": str(data_dir)}
    if start is not None and int(os.environ.get("RANK", "0")) == 0:  # only process 0 writes provenance.json (and hashes weights for it)
        provenance["init_from"] = provenance_record(start, mc.init_from)
    return TrainingJob(mc.backend, backend, make_model, train_data, val_data, block_size, tokenizer_dir,
                       meta["inputs"], provenance)


def run_training(cfg: ExperimentConfig, job: TrainingJob, resume: bool = False, quiet: bool = False) -> TrainResult:
    """The loop, holding train.out_dir's lock, with SIGINT/SIGTERM turned into a clean stop."""
    # Under torchrun only process 0 writes into the run directory, so only it holds the lock.
    is_main = int(os.environ.get("RANK", "0")) == 0
    with (exclusive_lock(cfg.train.out_dir, "run directory") if is_main else nullcontext()), StopSignals() as stop:
        run = setup(cfg, job, resume, quiet)
        return train(run, stop, quiet)


def train(run: Run, stop: StopSignals, quiet: bool = False) -> TrainResult:
    """From run.start_step to train.max_steps, per step in nanoGPT's order: evaluate, checkpoint, step, log."""
    tc = run.tc
    val_loss, train_loss, per_s, throughput = float("nan"), float("nan"), 0.0, Throughput()
    val_stats: dict[str, float] = {}
    train_stats: dict[str, float] = {}  # what the loss reports beside its value (loss_stats), at the last log row
    with StepProgress(tc.max_steps, run.start_step, "train", quiet or not run.procs.is_main, tc.log_every) as progress, \
            MetricsLog(run) as metrics:
        progress.announce(_announcement(run), _evaluations_left(run))
        for step in range(run.start_step, tc.max_steps + 1):
            if stop.signum is not None and step < tc.max_steps:
                if run.last_saved != step:
                    save_checkpoint(run, step)
                raise _interrupted(stop.signum, step, run.checkpoint, run.job.verb)
            lr = set_learning_rate(run.optimizers, lr_at(step, tc))

            # 1. evaluate
            if step % tc.eval_every == 0 or step == tc.max_steps:
                eval_start = time.perf_counter()
                val_loss, val_stats = validation(run)
                metrics.record({"step": step, "val_loss": val_loss, **val_stats})
                progress.message(f"step {step}: val {run.val_loss_name} {val_loss:.4f}")
                # No samples from a model whose loss is not finite (nothing to read, and sampling would fail).
                metrics.evaluated(step, None if run.parallel.sharded or not math.isfinite(val_loss) else run.model)
                progress.evaluated(throughput.restart() - eval_start)  # evaluation time is not training throughput

            # 2. checkpoint
            # Never the step a run starts from: step 0 holds nothing, and rewriting the checkpoint
            # resumed from would change its identity (and every generation manifest keyed on it).
            if (step == tc.max_steps or (tc.save_every and step % tc.save_every == 0)) and step > run.start_step:
                save_checkpoint(run, step)
            if step == tc.max_steps:
                break

            # 3. step
            result = train_step(run, next_batches(run))
            throughput.count(result.samples)

            # 4. log
            done = step + 1
            if done % tc.log_every == 0 or done == tc.max_steps:
                train_loss = float(mean_over_processes(result.loss, run.procs)) / tc.grad_accum_steps
                train_stats = process_means(result.stats, run.procs)
                per_s = throughput.per_second()
                row = {"step": done, "train_loss": train_loss, **train_stats, "lr": lr, f"{run.unit}_per_s": round(per_s, 1)}
                metrics.record({**row, "skipped_nonfinite": run.skipped} if tc.skip_nonfinite else row)
                throughput.restart()
            progress.update(done, loss=train_loss, lr=lr, **{{"tokens": "tok/s", "images": "img/s"}.get(run.unit, "ex/s"): per_s})

    wrote_samples = tc.sample_every_eval and run.declared.modality != "labels"  # a classifier writes no samples
    return TrainResult(run.run_dir, run.checkpoint, val_loss, tc.max_steps, per_s, run.unit, run.skipped, run.val_loss_name,
                       wrote_samples, {**train_stats, **val_stats})


class Throughput:
    """Tokens (or images) per second of training alone: restarted after every evaluation and log row."""

    def __init__(self):
        self.since, self.samples = time.perf_counter(), 0

    def restart(self) -> float:
        self.since, self.samples = time.perf_counter(), 0
        return self.since

    def count(self, samples: int) -> None:
        self.samples += samples

    def per_second(self) -> float:
        elapsed = time.perf_counter() - self.since
        return self.samples / elapsed if elapsed > 0 else 0.0


def _announcement(run: Run) -> str:
    """The first line: what trains where; StepProgress adds the estimated duration once it is measured."""
    trainable = sum(_elements(p) for p in run.model.parameters() if p.requires_grad)
    total = sum(_elements(p) for p in run.model.parameters())
    return (f"training {run.job.backend_name} ({trainable:,} trainable of {total:,} parameters) on {_where(run.device, run.procs)}, "
            f"{str(run.amp_dtype or 'fp32').replace('torch.', '')}, run dir {run.run_dir}")


def _elements(param: torch.Tensor) -> int:
    # A 4-bit quantized weight (QLoRA) is stored two values to a byte; its quant_state knows the real shape.
    state = getattr(param, "quant_state", None)
    return state.shape.numel() if state is not None else param.numel()


def _evaluations_left(run: Run) -> int:
    tc = run.tc
    return sum(1 for s in range(run.start_step, tc.max_steps + 1) if s % tc.eval_every == 0 or s == tc.max_steps)


class StopSignals:
    """SIGINT and SIGTERM during training only set a flag: the loop finishes the step it is in,
    saves a checkpoint and stops (exit 130 / 143). A second signal stops at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated
        self.signum = signum
        # os.write, not print: a signal handler may run while print holds the stream's lock.
        os.write(2, f"\n{signal.Signals(signum).name} received: finishing this step, then saving a checkpoint "
                    f"(send it again to stop at once)\n".encode())


def _interrupted(signum: int, step: int, checkpoint: Path | None, verb: str) -> Interrupted:
    name = signal.Signals(signum).name
    saved = f"checkpoint {checkpoint} holds step {step}" if checkpoint is not None else "no step was finished"
    return Interrupted(f"{name} during training: {saved}", f"`aigc {verb} CONFIG --resume` (same config and overrides) continues the run",
                       exit_code=EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)


def _where(device: str, procs: Processes) -> str:
    if procs.world_size == 1:
        return device
    return f"{procs.world_size} processes ({procs.strategy}, {device})"
