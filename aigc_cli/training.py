"""The one training loop, for every backend (and, later, for fine-tuning).

Read it top to bottom: setup, then per step in nanoGPT's order — evaluate, checkpoint, step,
log. A backend with several parts (a GAN) is several optimizers here, never a special case.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from aigc_cli.backends import get_backend, modality
from aigc_cli.checkpoints import latest_checkpoint, read_training_state, write_checkpoint
from aigc_cli.config import ExperimentConfig, TrainConfig, require_data
from aigc_cli.data.batches import TokenArray
from aigc_cli.errors import EXIT_DIVERGED, AigcError
from aigc_cli.progress import StepProgress
from aigc_cli.provenance import write_provenance
from aigc_cli.run_logging import RunLogger


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    val_loss: float
    steps: int
    tokens_per_s: float  # images per second for image backends (see `unit`)
    unit: str = "tokens"


def pick_device(requested: str) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise AigcError("train.device=cuda but no CUDA GPU is visible", "use train.device=auto or cpu")
    return "cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu"


def pick_precision(requested: str, device: str) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. fp16 is never chosen: on CPU it is ~100× slower."""
    if requested == "fp32":
        return None
    supported = torch.cuda.is_bf16_supported() if device == "cuda" else torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if requested == "bf16":
        if not supported:
            raise AigcError(f"train.precision=bf16 but this {device} has no native bfloat16 support", "use train.precision=fp32 (or auto)")
        return torch.bfloat16
    return torch.bfloat16 if device == "cuda" and supported else None


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up to learning_rate, then cosine decay to min_lr at lr_decay_steps (nanoGPT's)."""
    decay_steps = tc.lr_decay_steps or tc.max_steps
    if step < tc.warmup_steps:
        return tc.learning_rate * (step + 1) / (tc.warmup_steps + 1)
    if step >= decay_steps:
        return tc.min_lr
    progress = (step - tc.warmup_steps) / max(1, decay_steps - tc.warmup_steps)
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.learning_rate - tc.min_lr)


def make_optimizer(params, tc: TrainConfig, device: str) -> torch.optim.AdamW:
    # Matrices get weight decay; biases, norms and other vectors do not (GPT-2 / nanoGPT practice).
    params = list(params)
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": tc.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), fused=device == "cuda")


@torch.no_grad()
def estimate_loss(backend, model, data, batch_size: int, block_size: int, batches: int,
                  seed: int, device: str, autocast) -> float:
    """Mean loss over `batches` random batches. Fixed seeds for the batches and for any noise the
    loss draws (diffusion timesteps, latents) make every estimate comparable; the training RNG
    stream is left exactly where it was."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device == "cuda" else []):
        torch.manual_seed(seed)
        for _ in range(batches):
            inputs, targets = data.random_batch(batch_size, block_size, generator)
            with autocast():
                total += backend.loss(model, (inputs.to(device), targets.to(device)), backend.PARTS[0]).item()
    model.train()
    return total / batches


@dataclass
class TrainingJob:
    """What differs between `aigc train` and `aigc finetune`; the loop below is shared."""

    backend_name: str
    backend: object
    make_model: Callable[[Path | None, str], torch.nn.Module]  # (checkpoint to resume or None, device) → model
    train_data: object  # anything with random_batch(batch_size, block_size, generator) → (inputs, targets)
    val_data: object
    block_size: int
    tokenizer_dir: Path | None  # copied into every checkpoint (None: the backend has no tokenizer)
    inputs: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)


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
            return backend.load(previous, device)
        return backend.build(mc, meta).to(device)

    job = TrainingJob(mc.backend, backend, make_model, train_data, val_data, block_size, tokenizer_dir,
                      meta["inputs"], {"prepared_data": str(data_dir)})
    return run_training(cfg, job, resume, quiet)


def run_training(cfg: ExperimentConfig, job: TrainingJob, resume: bool = False, quiet: bool = False) -> TrainResult:
    tc = cfg.train
    backend, block_size = job.backend, job.block_size
    train_data, val_data = job.train_data, job.val_data
    run_dir = Path(tc.out_dir)
    device = pick_device(tc.device)
    amp_dtype = pick_precision(tc.precision, device)
    autocast = (lambda: torch.autocast(device, dtype=amp_dtype)) if amp_dtype else nullcontext

    previous = latest_checkpoint(run_dir)
    if previous is not None and not resume:
        raise AigcError(f"{run_dir} already holds checkpoints (latest: {previous.name})",
                        "pass --resume to continue that run, or set train.out_dir to a new directory")
    if resume and previous is None:
        raise AigcError(f"--resume: no checkpoint in {run_dir}/checkpoints", "start without --resume, or point train.out_dir at an earlier run")

    torch.manual_seed(tc.seed)
    batch_generator = torch.Generator().manual_seed(tc.seed)
    state = read_training_state(previous) if previous is not None else None
    model = job.make_model(previous, device)
    model.train()
    optimizers = {part: make_optimizer(backend.parameters(model, part), tc, device) for part in backend.PARTS}
    start_step = 0
    if state is not None:
        for part, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][part])
        start_step = state["step"]
        torch.set_rng_state(state["rng"])
        if device == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        batch_generator.set_state(state["batch_generator"])

    run_dir.mkdir(parents=True, exist_ok=True)
    write_provenance(run_dir, cfg, job.inputs, device=device, precision=str(amp_dtype or "fp32"), **job.provenance)
    metrics_path = run_dir / "metrics.jsonl"
    _truncate_metrics(metrics_path, start_step)

    def checkpoint(step: int) -> Path:
        training_state = {"optimizers": {p: o.state_dict() for p, o in optimizers.items()}, "step": step,
                          "rng": torch.get_rng_state(), "batch_generator": batch_generator.get_state()}
        if device == "cuda":
            training_state["cuda_rng"] = torch.cuda.get_rng_state()
        return write_checkpoint(run_dir, step, job.backend_name, backend, model, training_state, job.tokenizer_dir, tc.keep_checkpoints)

    after_step = getattr(backend, "after_step", None)
    unit = "images" if modality(backend) == "image" else "tokens"
    val_loss, final, tokens_per_s = float("nan"), previous, 0.0
    window_start, window_tokens, train_loss = time.perf_counter(), 0, float("nan")
    with open(metrics_path, "a", encoding="utf-8") as metrics, \
            StepProgress(tc.max_steps, start_step, "train", quiet, tc.log_every) as progress, \
            RunLogger(cfg, run_dir, job.backend_name, backend, job.tokenizer_dir, device, start_step) as run_log:

        def record(row: dict) -> None:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            run_log.scalars(row)

        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        progress.message(f"training {job.backend_name} ({trainable:,} trainable of {sum(p.numel() for p in model.parameters()):,} parameters) "
                         f"on {device}, {str(amp_dtype or 'fp32').replace('torch.', '')}, run dir {run_dir}")
        for step in range(start_step, tc.max_steps + 1):
            lr = lr_at(step, tc)
            for opt in optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = lr

            # 1. evaluate
            if step % tc.eval_every == 0 or step == tc.max_steps:
                val_loss = estimate_loss(backend, model, val_data, tc.batch_size, block_size, tc.eval_batches,
                                         tc.seed + 1, device, autocast)
                record({"step": step, "val_loss": val_loss})
                progress.message(f"step {step}: val loss {val_loss:.4f}")
                run_log.evaluated(step, model)
                window_start = time.perf_counter()  # evaluation time is not training throughput

            # 2. checkpoint
            if step == tc.max_steps or (tc.save_every and step % tc.save_every == 0 and step > start_step):
                final = checkpoint(step)
            if step == tc.max_steps:
                break

            # 3. step: the same micro-batches feed every part (a GAN's D and G see the same data)
            batches = [train_data.random_batch(tc.batch_size, block_size, batch_generator) for _ in range(tc.grad_accum_steps)]
            for part, opt in optimizers.items():
                opt.zero_grad(set_to_none=True)
                part_loss = 0.0
                for inputs, targets in batches:
                    with autocast():
                        loss = backend.loss(model, (inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)), part)
                    (loss / tc.grad_accum_steps).backward()
                    part_loss += loss.detach()
                if tc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(backend.parameters(model, part), tc.grad_clip)
                opt.step()
            if after_step is not None:
                after_step(model)
            window_tokens += sum(inputs.numel() if unit == "tokens" else inputs.size(0) for inputs, _ in batches)

            # 4. log
            done = step + 1
            if done % tc.log_every == 0 or done == tc.max_steps:
                train_loss = float(part_loss) / tc.grad_accum_steps
                if not math.isfinite(train_loss):
                    raise AigcError(f"training diverged at step {done} (loss {train_loss})", "lower train.learning_rate or enable train.grad_clip", exit_code=EXIT_DIVERGED)
                elapsed = time.perf_counter() - window_start
                tokens_per_s = window_tokens / elapsed if elapsed > 0 else 0.0
                record({"step": done, "train_loss": train_loss, "lr": lr, f"{unit}_per_s": round(tokens_per_s, 1)})
                window_start, window_tokens = time.perf_counter(), 0
            progress.update(done, loss=train_loss, lr=lr, **{"tok/s" if unit == "tokens" else "img/s": tokens_per_s})

    return TrainResult(run_dir, final, val_loss, tc.max_steps, tokens_per_s, unit)


def _truncate_metrics(path: Path, keep_through_step: int) -> None:
    """On resume, drop lines logged after the checkpoint so the log reads as one run."""
    if not path.is_file():
        return
    from aigc_cli.atomic_files import write_text_atomic

    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) < keep_through_step or
            (json.loads(line).get("step") == keep_through_step and "train_loss" in json.loads(line))]
    write_text_atomic(path, "".join(line + "\n" for line in kept))

