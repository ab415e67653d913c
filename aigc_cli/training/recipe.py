"""The training recipe in three calls (torchtune's shape), which loop.py calls in nanoGPT's order.

`setup` builds a `Run` (model, its parallel wrapper, one optimizer per part, data, generators),
resumed exactly where a checkpoint left off; `train_step` takes one optimizer step per part on
the same micro-batches; `save_checkpoint` writes everything the next step depends on. A backend
with several parts (a GAN) is several optimizers here, never a special case.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from aigc_cli.runs.atomic_files import remove_stale_temporaries
from aigc_cli.backends import BackendSpec, spec
from aigc_cli.runs.checkpoints import CHECKPOINTS, latest_good_checkpoint, list_checkpoints, read_training_state, write_checkpoint
from aigc_cli.config import ExperimentConfig, TrainConfig
from aigc_cli.data.batches import to_device
from aigc_cli.devices import pick_device
from aigc_cli.errors import EXIT_DIVERGED, AigcError
from aigc_cli.runs.provenance import write_provenance
from aigc_cli.training.distributed import ParallelModel, Processes, mean_over_processes, seed_own_noise, start_processes, wait_for_all
from aigc_cli.training.loss_stats import batch_means, collect, process_means
from aigc_cli.training.metrics import METRICS, truncate_metrics
from aigc_cli.training.optimizer import make_optimizer
from aigc_cli.training.precision import pick_precision

# What the training loop (and finetune) write directly in the run directory; other verbs may
# write beside them (generations.jsonl, eval/) under their own locks.
RUN_FILES = (METRICS, "config.yaml", "provenance.json", "loss.png", "tokenizer", "merged")


@dataclass
class TrainingJob:
    """What differs between `aigc train` and `aigc finetune`; the recipe is shared."""

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
    parts: tuple[str, ...] | None = None  # the backend's parts this job trains (None: all; latent diffusion trains one per phase)


@dataclass
class Run:
    """Everything one training run holds between steps; a checkpoint saves what `setup` restores."""

    cfg: ExperimentConfig
    job: TrainingJob
    device: str
    procs: Processes
    amp_dtype: torch.dtype | None  # None: plain fp32
    model: torch.nn.Module  # the backend's own module (with FSDP: its shards)
    parallel: ParallelModel
    optimizers: dict[str, torch.optim.Optimizer]  # one per part, stepped in the order the spec declares
    batch_generator: torch.Generator  # draws every training batch; its state is checkpointed
    start_step: int = 0  # the step this process started (or resumed) from
    step: int = 0  # steps taken so far; train_step advances it
    skipped: int = 0  # steps whose non-finite loss was skipped (train.skip_nonfinite)
    checkpoint: Path | None = None  # the newest checkpoint written, or the one resumed from
    last_saved: int | None = None  # its step (None: none yet)

    @property
    def tc(self) -> TrainConfig:
        return self.cfg.train

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.train.out_dir)

    @property
    def declared(self) -> BackendSpec:
        return spec(self.job.backend_name)

    @property
    def unit(self) -> str:
        """What throughput counts: tokens, images for image backends, examples (texts) for classifiers."""
        return {"image": "images", "labels": "examples"}.get(self.declared.modality, "tokens")

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts this run optimises, in the declared order."""
        return self.job.parts or self.declared.parts

    @property
    def validation_part(self) -> str:
        return self.declared.validation_part if self.declared.validation_part in self.parts else self.parts[0]

    @property
    def val_loss_name(self) -> str:
        """Which loss the validation loss is: "loss", or the part's (a GAN's "discriminator loss")."""
        return self.declared.validation_label

    def autocast(self):
        return torch.autocast(self.device, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()


@dataclass
class StepResult:
    loss: torch.Tensor  # the last part's loss summed over the micro-batches, on the device (reading it syncs)
    skipped: bool  # a part's update was skipped for a non-finite loss or gradient
    samples: int  # tokens (or images) trained on in this step, over all processes
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # what the loss reported (loss_stats), mean over micro-batches


def setup(cfg: ExperimentConfig, job: TrainingJob, resume: bool = False, quiet: bool = False) -> Run:
    """The run at its first step: a fresh model, or everything restored from the newest good
    checkpoint (weights, optimizers, step, RNG streams, batch generator) when resuming."""
    tc = cfg.train
    device = pick_device(tc.device)
    procs = start_processes(tc.strategy, tc.batch_size, job.backend_name, device)
    amp_dtype = pick_precision(tc.precision, device, spec(job.backend_name))
    previous = _checkpoint_to_resume(Path(tc.out_dir), resume, procs, quiet)

    # The order of these draws is the run's identity: a resumed run must continue the same streams.
    torch.manual_seed(tc.seed)
    batch_generator = torch.Generator().manual_seed(tc.seed)
    state = read_training_state(previous) if previous is not None else None
    model = job.make_model(previous, device)
    model.train()
    parts = job.parts or spec(job.backend_name).parts
    parallel = ParallelModel(job.backend, model, procs, device, tc.compile, parts=parts)
    optimizers = {part: make_optimizer(job.backend.parameters(model, part), tc, device, parallel.sharded) for part in parts}
    run = Run(cfg, job, device, procs, amp_dtype, model, parallel, optimizers, batch_generator, checkpoint=previous)
    if state is not None:
        _restore(run, state)
    seed_own_noise(procs, tc.seed, run.start_step)
    if procs.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        write_provenance(run.run_dir, cfg, job.inputs, device=device, precision=str(amp_dtype or "fp32"),
                         processes=procs.world_size, strategy=procs.strategy, **job.provenance)
        truncate_metrics(run.run_dir / METRICS, run.start_step)
    return run


def _checkpoint_to_resume(run_dir: Path, resume: bool, procs: Processes, quiet: bool) -> Path | None:
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
    return previous


def _restore(run: Run, state: dict) -> None:
    for part, opt in run.optimizers.items():
        run.parallel.load_optimizer_state(opt, state["optimizers"][part])
    run.start_step = run.step = run.last_saved = state["step"]
    torch.set_rng_state(state["rng"])
    if run.device == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"])
    run.batch_generator.set_state(state["batch_generator"])
    run.skipped = state.get("skipped_batches", 0)


def next_batches(run: Run) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The next step's micro-batches (train.grad_accum_steps of them), this process's rows of each.
    A batch's inputs are a tensor, or a tuple of tensors the backend's loss takes together (token
    ids and position ids of packed rows); they go to the device together."""
    tc, job = run.tc, run.job
    return [job.train_data.random_batch(tc.batch_size, job.block_size, run.batch_generator, shard=run.procs.shard)
            for _ in range(tc.grad_accum_steps)]


def train_step(run: Run, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> StepResult:
    """One optimizer step per part, in the declared order, on the same micro-batches (a GAN's D and G see
    the same data). A non-finite loss or gradient never reaches the weights: the run stops with
    exit 4, or with train.skip_nonfinite that part's update is skipped."""
    tc, skipped = run.tc, False
    for part, opt in run.optimizers.items():
        opt.zero_grad(set_to_none=True)
        with collect() as reported:
            part_loss = _backward(run, part, batches)
        # One host sync per part and step: a non-finite update must never reach the weights.
        if not _clipped_and_finite(run, part, part_loss).item():
            if not tc.skip_nonfinite:
                what = "loss" if len(run.optimizers) == 1 else f"{part} loss"
                raise _diverged(what, float(part_loss) / tc.grad_accum_steps, run.step + 1, run.checkpoint)
            opt.zero_grad(set_to_none=True)
            skipped = True
            continue
        opt.step()
    run.skipped += skipped
    if run.declared.ema:
        run.job.backend.after_step(run.model)
    run.step += 1
    per_batch = (lambda inputs: inputs.numel()) if run.unit == "tokens" else (lambda inputs: inputs.size(0))
    # Packed text inputs are (ids, position_ids): count the ids.
    return StepResult(part_loss, skipped, run.procs.world_size * sum(per_batch(inputs[0] if isinstance(inputs, tuple) else inputs)
                                                                      for inputs, _ in batches), batch_means(reported))


def _backward(run: Run, part: str, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Gradients of `part`'s loss accumulated over the micro-batches; returns the summed loss."""
    part_loss = 0.0
    for micro, (inputs, targets) in enumerate(batches):
        with run.parallel.gradient_sync(micro == len(batches) - 1):
            with run.autocast():
                loss = run.parallel.loss(to_device(inputs, run.device), targets.to(run.device, non_blocking=True), part)
            (loss / run.tc.grad_accum_steps).backward()
        part_loss += loss.detach()
    return part_loss


def _clipped_and_finite(run: Run, part: str, part_loss: torch.Tensor) -> torch.Tensor:
    """Clips `part`'s gradients (train.grad_clip); true where its loss and gradient norm are finite."""
    finite = torch.isfinite(mean_over_processes(part_loss, run.procs))  # every process decides alike
    if run.tc.grad_clip:
        norm = torch.nn.utils.clip_grad_norm_(run.job.backend.parameters(run.model, part), run.tc.grad_clip)
        finite &= torch.isfinite(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
    return finite


def _weights_finite(run: Run) -> bool:
    # FSDP: each process checks its own shards (DTensor.to_local), and all decide alike.
    flags = [torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all() for p in run.model.parameters()]
    ok = torch.stack(flags).all().float() if flags else torch.ones(())
    return bool(mean_over_processes(ok, run.procs) == 1.0)


def _diverged(what: str, loss: float, step: int, last_good: Path | None) -> AigcError:
    where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written"
    return AigcError(f"training diverged: non-finite {what} ({loss}) at step {step}; {where}",
                     "lower train.learning_rate, set train.grad_clip, or set train.skip_nonfinite=true to skip such batches",
                     exit_code=EXIT_DIVERGED)


def estimate_loss(parallel: ParallelModel, part: str, data, batch_size: int, block_size: int, batches: int,
                  seed: int, device: str, autocast) -> float:
    """Mean loss over `batches` random batches. Fixed seeds for the batches and for any noise the
    loss draws (diffusion timesteps, latents) make every estimate comparable; the training RNG
    stream is left exactly where it was. Several processes each score their rows of every batch."""
    from aigc_cli.inference.heldout import heldout_loss

    parallel.eval()
    generator = torch.Generator().manual_seed(seed)
    drawn = (data.random_batch(batch_size, block_size, generator, shard=parallel.procs.shard) for _ in range(batches))
    loss = heldout_loss(parallel, part, drawn, device, per="batch", seed=seed, autocast=autocast,
                        across_processes=parallel.procs.world_size > 1).mean
    parallel.train()
    return loss


def validation_loss(run: Run) -> float:
    """The validation loss of the part the backend validates on, from train.eval_batches fixed batches."""
    tc = run.tc
    return estimate_loss(run.parallel, run.validation_part, run.job.val_data, tc.batch_size, run.job.block_size,
                         tc.eval_batches, tc.seed + 1, run.device, run.autocast)


def validation(run: Run) -> tuple[float, dict[str, float]]:
    """validation_loss, and the means of what the loss reported on those batches as "val_<name>"
    (a preference loss's reward accuracy on held-out pairs); every process must call it."""
    with collect() as reported:
        loss = validation_loss(run)
    return loss, process_means(batch_means(reported), run.procs, prefix="val_")


def save_checkpoint(run: Run, step: int) -> Path:
    """The checkpoint of `step` (the steps taken so far): weights, optimizer states, RNG streams and
    batch generator, so a resumed run continues bit for bit. Every process takes part in gathering
    the full state; process 0 alone writes it. Weights that are not all finite are never written:
    a finite loss can still be followed by an update that overflows (a huge learning rate)."""
    if not _weights_finite(run):
        raise _diverged("weights", float("nan"), step, run.checkpoint)
    optimizer_states = {part: run.parallel.optimizer_state(opt) for part, opt in run.optimizers.items()}
    full_model = run.parallel.unsharded()
    path = run.run_dir / CHECKPOINTS / f"step-{step:06d}"
    if run.procs.is_main:
        training_state = {"optimizers": optimizer_states, "step": step, "rng": torch.get_rng_state(),
                          "batch_generator": run.batch_generator.get_state(), "skipped_batches": run.skipped}
        if run.device == "cuda":
            training_state["cuda_rng"] = torch.cuda.get_rng_state()
        path = write_checkpoint(run.run_dir, step, run.job.backend_name, run.job.backend, full_model, training_state,
                                run.job.tokenizer_dir, run.tc.keep_last)
    wait_for_all(run.procs)
    run.checkpoint, run.last_saved = path, step
    return path
