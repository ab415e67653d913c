"""The one training loop, for every backend (and, later, for fine-tuning).

Read it top to bottom: setup, then per step in nanoGPT's order — evaluate, checkpoint, step,
log. A backend with several parts (a GAN) is several optimizers here, never a special case.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from aigc_cli.backends import get_backend, modality
from aigc_cli.atomic_files import naming_the_path, remove_stale_temporaries
from aigc_cli.checkpoints import (CHECKPOINTS, latest_good_checkpoint, list_checkpoints, load_weights, read_training_state,
                                  write_checkpoint)
from aigc_cli.config import ExperimentConfig, TrainConfig, require_data
from aigc_cli.data.batches import TokenArray
from aigc_cli.devices import pick_device
from aigc_cli.distributed import ParallelModel, Processes, mean_over_processes, seed_own_noise, start_processes, wait_for_all
from aigc_cli.errors import EXIT_DIVERGED, EXIT_SIGINT, EXIT_SIGTERM, AigcError, Interrupted, Terminated
from aigc_cli.locks import exclusive_lock
from aigc_cli.progress import StepProgress
from aigc_cli.provenance import write_provenance
from aigc_cli.run_logging import RunLogger


# What the training loop (and finetune) write directly in the run directory; other verbs may
# write beside them (generations.jsonl, eval/) under their own locks.
RUN_FILES = ("metrics.jsonl", "config.yaml", "provenance.json", "loss.png", "tokenizer", "merged")


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

    def to_json(self) -> dict:
        return {"run_dir": str(self.run_dir), "checkpoint": str(self.checkpoint), "val_loss": self.val_loss,
                "steps": self.steps, f"{self.unit}_per_s": self.tokens_per_s, "skipped_batches": self.skipped_batches}

    def summary_lines(self) -> list[str]:
        written = "config.yaml, metrics.jsonl, loss.png" + (", train_samples/" if self.wrote_samples else "") + ", TensorBoard events"
        which = "" if self.val_loss_name == "loss" else f" ({self.val_loss_name})"
        return [f"run directory: {self.run_dir}  ({written}; watch with: tensorboard --logdir {self.run_dir})",
                f"final checkpoint: {self.checkpoint}",
                f"validation loss{which}: {self.val_loss:.4f} after {self.steps} steps"]


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls at several times the fp32 rate (measured here: ≈820 against
    ≈195 GFLOP/s). Without them oneDNN emulates bf16, slower than fp32."""
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def pick_precision(requested: str, device: str, backend=None) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. fp16 is never chosen: on CPU it is ~100× slower.
    auto: bf16 on CUDA GPUs that have it, and on CPUs with native bf16 for backends measured to
    gain there at the same loss (`CPU_BF16 = True`: gpt and lora 1.15-1.95×, ddpm 1.2×, gan 1.3×)."""
    if requested == "fp32":
        return None
    supported = torch.cuda.is_bf16_supported() if device == "cuda" else torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if requested == "bf16":
        if not supported:
            raise AigcError(f"train.precision=bf16 but this {device} has no native bfloat16 support", "use train.precision=fp32 (or auto)")
        return torch.bfloat16
    if device == "cuda":
        return torch.bfloat16 if supported else None
    return torch.bfloat16 if getattr(backend, "CPU_BF16", False) and cpu_has_native_bf16() else None


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up to learning_rate, then cosine decay to min_lr at lr_decay_steps (nanoGPT's)."""
    decay_steps = tc.lr_decay_steps or tc.max_steps
    if step < tc.warmup_steps:
        return tc.learning_rate * (step + 1) / (tc.warmup_steps + 1)
    if step >= decay_steps:
        return tc.min_lr
    progress = (step - tc.warmup_steps) / max(1, decay_steps - tc.warmup_steps)
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.learning_rate - tc.min_lr)


def make_optimizer(params, tc: TrainConfig, device: str, sharded: bool = False) -> torch.optim.AdamW:
    # Matrices get weight decay; biases, norms and other vectors do not (GPT-2 / nanoGPT practice).
    # A parameter may carry `lr_scale` (LoRA+'s B matrices): its group's rate is the schedule's × that.
    params = list(params)
    groups = []
    for scale in sorted({getattr(p, "lr_scale", 1.0) for p in params}):
        scaled = [p for p in params if getattr(p, "lr_scale", 1.0) == scale]
        groups += [{"params": [p for p in scaled if p.dim() >= 2], "weight_decay": tc.weight_decay, "lr_scale": scale},
                   {"params": [p for p in scaled if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale}]
    # One fused kernel per step on CUDA and CPU alike (on CPU ~15x faster than the default per-tensor
    # loop); FSDP's sharded DTensor parameters take the multi-tensor (foreach) path instead.
    kind = {"foreach": True} if sharded else {"fused": True}
    return torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), **kind)


@torch.no_grad()
def estimate_loss(parallel: ParallelModel, part: str, data, batch_size: int, block_size: int, batches: int,
                  seed: int, device: str, autocast) -> float:
    """Mean loss over `batches` random batches. Fixed seeds for the batches and for any noise the
    loss draws (diffusion timesteps, latents) make every estimate comparable; the training RNG
    stream is left exactly where it was. Several processes each score their rows of every batch."""
    parallel.eval()
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros((), device=device)
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device == "cuda" else []):
        torch.manual_seed(seed)
        for _ in range(batches):
            inputs, targets = data.random_batch(batch_size, block_size, generator, shard=parallel.procs.shard)
            with autocast():
                total += parallel.loss(inputs.to(device), targets.to(device), part).float()
    parallel.train()
    return mean_over_processes(total, parallel.procs).item() / batches


@dataclass
class TrainingJob:
    """What differs between `aigc train` and `aigc finetune`; the loop below is shared."""

    backend_name: str
    backend: object
    make_model: Callable[[Path | None, str], torch.nn.Module]  # (checkpoint to resume or None, device) → model
    train_data: object  # anything with random_batch(batch_size, block_size, generator, shard) → (inputs, targets)
    val_data: object
    block_size: int
    tokenizer_dir: Path | None  # copied into every checkpoint (None: the backend has no tokenizer)
    inputs: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    verb: str = "train"  # for the resume hint: `aigc <verb> CONFIG --resume`


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


def train_model(cfg: ExperimentConfig, resume: bool = False, quiet: bool = False) -> TrainResult:
    """`aigc train`: a fresh model of model.* on the prepared token arrays or images."""
    mc = cfg.model
    data_dir = Path(require_data(cfg).prepared_dir)
    backend = get_backend(mc.backend)
    if modality(backend) == "image":
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
        return backend.build(mc, meta).to(device)

    job = TrainingJob(mc.backend, backend, make_model, train_data, val_data, block_size, tokenizer_dir,
                      meta["inputs"], {"prepared_data": str(data_dir)})
    return run_training(cfg, job, resume, quiet)


def run_training(cfg: ExperimentConfig, job: TrainingJob, resume: bool = False, quiet: bool = False) -> TrainResult:
    """The loop, holding train.out_dir's lock, with SIGINT/SIGTERM turned into a clean stop."""
    # Under torchrun only process 0 writes into the run directory, so only it holds the lock.
    is_main = int(os.environ.get("RANK", "0")) == 0
    with (exclusive_lock(cfg.train.out_dir, "run directory") if is_main else nullcontext()), StopSignals() as stop:
        return _train(cfg, job, resume, quiet, stop)


def _train(cfg: ExperimentConfig, job: TrainingJob, resume: bool, quiet: bool, stop: StopSignals) -> TrainResult:
    tc = cfg.train
    backend, block_size = job.backend, job.block_size
    train_data, val_data = job.train_data, job.val_data
    run_dir = Path(tc.out_dir)
    device = pick_device(tc.device)
    procs = start_processes(tc.strategy, tc.batch_size, job.backend_name, device)
    amp_dtype = pick_precision(tc.precision, device, backend)
    autocast = (lambda: torch.autocast(device, dtype=amp_dtype)) if amp_dtype else nullcontext

    if run_dir.exists() and not run_dir.is_dir():
        raise AigcError(f"train.out_dir {run_dir} is a file", "set train.out_dir to a directory path")
    existing = list_checkpoints(run_dir)
    if existing and not resume:
        raise AigcError(f"{run_dir} already holds checkpoints (newest: {existing[-1].name})",
                        "pass --resume to continue that run, or set train.out_dir to a new directory")
    for stale in (remove_stale_temporaries(run_dir, RUN_FILES) + remove_stale_temporaries(run_dir / CHECKPOINTS)) if procs.is_main else []:
        if not quiet:
            print(f"removed {stale.name}, left by an interrupted run", file=sys.stderr)
    # A run killed before its first checkpoint has nothing to resume: --resume starts it over,
    # so the same command can be repeated until the run is complete.
    previous = latest_good_checkpoint(run_dir) if resume else None
    if resume and previous is None and not quiet:
        print(f"--resume: no checkpoint in {run_dir / CHECKPOINTS} yet; starting from step 0", file=sys.stderr)

    torch.manual_seed(tc.seed)
    batch_generator = torch.Generator().manual_seed(tc.seed)
    state = read_training_state(previous) if previous is not None else None
    model = job.make_model(previous, device)
    model.train()
    parallel = ParallelModel(backend, model, procs, device, tc.compile)
    optimizers = {part: make_optimizer(backend.parameters(model, part), tc, device, parallel.sharded) for part in backend.PARTS}
    start_step, skipped = 0, 0
    if state is not None:
        for part, opt in optimizers.items():
            parallel.load_optimizer_state(opt, state["optimizers"][part])
        start_step = state["step"]
        torch.set_rng_state(state["rng"])
        if device == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        batch_generator.set_state(state["batch_generator"])
        skipped = state.get("skipped_batches", 0)
    seed_own_noise(procs, tc.seed, start_step)

    metrics_path = run_dir / "metrics.jsonl"
    if procs.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_provenance(run_dir, cfg, job.inputs, device=device, precision=str(amp_dtype or "fp32"),
                         processes=procs.world_size, strategy=procs.strategy, **job.provenance)
        _truncate_metrics(metrics_path, start_step)

    def checkpoint(step: int) -> Path:
        nonlocal last_saved
        # Every process takes part in gathering the full state; process 0 alone writes it.
        optimizer_states = {p: parallel.optimizer_state(o) for p, o in optimizers.items()}
        full_model = parallel.unsharded()
        path = run_dir / CHECKPOINTS / f"step-{step:06d}"
        if procs.is_main:
            training_state = {"optimizers": optimizer_states, "step": step, "rng": torch.get_rng_state(),
                              "batch_generator": batch_generator.get_state(), "skipped_batches": skipped}
            if device == "cuda":
                training_state["cuda_rng"] = torch.cuda.get_rng_state()
            path = write_checkpoint(run_dir, step, job.backend_name, backend, full_model, training_state, job.tokenizer_dir, tc.keep_last)
        wait_for_all(procs)
        last_saved = step
        return path

    val_loss_name = "loss" if len(backend.PARTS) == 1 else f"{backend.PARTS[0]} loss"
    after_step = getattr(backend, "after_step", None)
    unit = "images" if modality(backend) == "image" else "tokens"
    val_loss, final, tokens_per_s = float("nan"), previous, 0.0
    last_saved = start_step if previous is not None else None
    window_start, window_tokens, train_loss = time.perf_counter(), 0, float("nan")
    # Process 0 alone writes logs; with FSDP no single process holds the whole model to sample from.
    with (open(metrics_path, "a", encoding="utf-8") if procs.is_main else nullcontext()) as metrics, \
            StepProgress(tc.max_steps, start_step, "train", quiet or not procs.is_main, tc.log_every) as progress, \
            (RunLogger(cfg, run_dir, job.backend_name, backend, job.tokenizer_dir, device, start_step)
             if procs.is_main else nullcontext()) as run_log:

        def record(row: dict) -> None:
            if metrics is None:
                return
            try:
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
            except OSError as exc:
                raise naming_the_path(exc, metrics_path) from exc
            run_log.scalars(row)

        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        evaluations = sum(1 for s in range(start_step, tc.max_steps + 1) if s % tc.eval_every == 0 or s == tc.max_steps)
        progress.announce(f"training {job.backend_name} ({trainable:,} trainable of {sum(p.numel() for p in model.parameters()):,} parameters) "
                          f"on {_where(device, procs)}, {str(amp_dtype or 'fp32').replace('torch.', '')}, run dir {run_dir}", evaluations)
        for step in range(start_step, tc.max_steps + 1):
            if stop.signum is not None and step < tc.max_steps:
                final = checkpoint(step) if last_saved != step else final
                raise _interrupted(stop.signum, step, final, job.verb)
            lr = lr_at(step, tc)
            for opt in optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)

            # 1. evaluate
            if step % tc.eval_every == 0 or step == tc.max_steps:
                eval_start = time.perf_counter()
                val_loss = estimate_loss(parallel, backend.PARTS[0], val_data, tc.batch_size, block_size, tc.eval_batches,
                                         tc.seed + 1, device, autocast)
                record({"step": step, "val_loss": val_loss})
                progress.message(f"step {step}: val {val_loss_name} {val_loss:.4f}")
                if run_log is not None:
                    # No samples from a model whose loss is not finite (nothing to read, and sampling would fail).
                    run_log.evaluated(step, None if parallel.sharded or not math.isfinite(val_loss) else model)
                window_start = time.perf_counter()  # evaluation time is not training throughput
                progress.evaluated(window_start - eval_start)

            # 2. checkpoint
            # Never the step a run starts from: step 0 holds nothing, and rewriting the checkpoint
            # resumed from would change its identity (and every generation manifest keyed on it).
            if (step == tc.max_steps or (tc.save_every and step % tc.save_every == 0)) and step > start_step:
                final = checkpoint(step)
            if step == tc.max_steps:
                break

            # 3. step: the same micro-batches feed every part (a GAN's D and G see the same data)
            batches = [train_data.random_batch(tc.batch_size, block_size, batch_generator, shard=procs.shard)
                       for _ in range(tc.grad_accum_steps)]
            skipped_now = False
            for part, opt in optimizers.items():
                opt.zero_grad(set_to_none=True)
                part_loss = 0.0
                for micro, (inputs, targets) in enumerate(batches):
                    with parallel.gradient_sync(micro == len(batches) - 1):
                        with autocast():
                            loss = parallel.loss(inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True), part)
                        (loss / tc.grad_accum_steps).backward()
                    part_loss += loss.detach()
                finite = torch.isfinite(mean_over_processes(part_loss, procs))  # every process decides alike
                if tc.grad_clip:
                    norm = torch.nn.utils.clip_grad_norm_(backend.parameters(model, part), tc.grad_clip)
                    finite &= torch.isfinite(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
                # One host sync per part and step: a non-finite update must never reach the weights.
                if not finite.item():
                    if not tc.skip_nonfinite:
                        what = "loss" if len(optimizers) == 1 else f"{part} loss"
                        raise _diverged(what, float(part_loss) / tc.grad_accum_steps, step + 1, final)
                    opt.zero_grad(set_to_none=True)
                    skipped_now = True
                    continue
                opt.step()
            skipped += skipped_now
            if after_step is not None:
                after_step(model)
            window_tokens += procs.world_size * sum(inputs.numel() if unit == "tokens" else inputs.size(0) for inputs, _ in batches)

            # 4. log
            done = step + 1
            if done % tc.log_every == 0 or done == tc.max_steps:
                train_loss = float(mean_over_processes(part_loss, procs)) / tc.grad_accum_steps
                elapsed = time.perf_counter() - window_start
                tokens_per_s = window_tokens / elapsed if elapsed > 0 else 0.0
                row = {"step": done, "train_loss": train_loss, "lr": lr, f"{unit}_per_s": round(tokens_per_s, 1)}
                record({**row, "skipped_nonfinite": skipped} if tc.skip_nonfinite else row)
                window_start, window_tokens = time.perf_counter(), 0
            progress.update(done, loss=train_loss, lr=lr, **{"tok/s" if unit == "tokens" else "img/s": tokens_per_s})

    return TrainResult(run_dir, final, val_loss, tc.max_steps, tokens_per_s, unit, skipped, val_loss_name, tc.sample_every_eval)


def _interrupted(signum: int, step: int, checkpoint: Path | None, verb: str) -> Interrupted:
    name = signal.Signals(signum).name
    saved = f"checkpoint {checkpoint} holds step {step}" if checkpoint is not None else "no step was finished"
    return Interrupted(f"{name} during training: {saved}", f"`aigc {verb} CONFIG --resume` (same config and overrides) continues the run",
                       exit_code=EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)


def _diverged(what: str, loss: float, step: int, last_good: Path | None) -> AigcError:
    where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written"
    return AigcError(f"training diverged: non-finite {what} ({loss}) at step {step}; {where}",
                     "lower train.learning_rate, set train.grad_clip, or set train.skip_nonfinite=true to skip such batches",
                     exit_code=EXIT_DIVERGED)


def _where(device: str, procs: Processes) -> str:
    if procs.world_size == 1:
        return device
    return f"{procs.world_size} processes ({procs.strategy}, {device})"


def _truncate_metrics(path: Path, keep_through_step: int) -> None:
    """On resume, drop lines logged after the checkpoint so the log reads as one run."""
    if not path.is_file():
        return
    from aigc_cli.atomic_files import write_text_atomic
    from aigc_cli.data.records import log_records

    rows = list(log_records(path))  # without the half-written last line of a killed run (or of a full disk)
    kept = [line for line, row in rows if row.get("step", 0) < keep_through_step or
            (row.get("step") == keep_through_step and "train_loss" in row)]
    write_text_atomic(path, "".join(line + "\n" for line in kept))

