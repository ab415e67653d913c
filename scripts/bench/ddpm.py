#!/usr/bin/env python
"""Benchmark: aigc's ddpm backend vs plain diffusers on the same UNet — training and DDIM sampling.

This is a benchmark, not a test. It answers two questions, in one process:
  1. training: how many optimisation steps (images) per second does `aigc_cli.training.train_model`
     reach, compared with the plain diffusers training loop of diffusers'
     examples/unconditional_image_generation/train_unconditional.py doing the same arithmetic?
  2. sampling: how many images per second does `aigc_cli.inference.image_sampling.sample_images` (DDIM, eta 0)
     make, compared with `diffusers.DDIMPipeline` on the same EMA UNet?

Same work on both sides (training)
    * the SAME UNet2DModel: `backend.build(cfg.model, meta)` right after `torch.manual_seed(seed)`, exactly
      as `train_model` builds it; the plain loop takes its `.unet` and `.scheduler` (the DDPMScheduler), so
      the initial weights are bit-identical and the global RNG stands at the same place afterwards;
    * the SAME batches: `ImageArray.random_batch` with a `torch.Generator().manual_seed(seed)`, batch
      --batch-size;
    * the SAME optimizer (`make_optimizer`: AdamW with train.* hyper-parameters), schedule (`lr_at`) and
      gradient clipping (`clip_grad_norm_` at train.grad_clip); fp32 (train.precision=fp32 on both sides);
    * the plain step is train_unconditional.py's: noise = randn, timesteps = randint(0, T), add_noise,
      `unet(noisy, timesteps[, class_labels]).sample`, MSE(float, float), backward, clip, step, then
      `EMAModel.step(unet.parameters())` (diffusers.training_utils.EMAModel, decay = model.ema_decay with
      its default warm-up min(decay, (1+k)/(10+k)) — aigc's formula, one update later; `--ema-foreach`
      turns on EMAModel's foreach path, off by default in diffusers and in train_unconditional.py; aigc's
      own EMA always uses torch._foreach_lerp_).
  The noise and timesteps come from the global RNG in the same order on both sides, so the final training
  losses should agree (to float noise at most); the summary shows them and warns when they do not.

What is timed (training)
    Only the optimisation steps, as in scripts/bench/train.py. aigc's loop evaluates at step 0 and at the
    end (eval_every = steps, eval_batches = 1, save_every = 0: only the final checkpoint); its throughput
    window restarts right after the step-0 evaluation and `images_per_s` is written to metrics.jsonl before
    the final evaluation/checkpoint/plot. With log_every dividing the steps (default: one window) we add up
    the windows: time = Σ window_images / images_per_s — every step including the loop's own per-step work
    (lr update, batch sampling, EMA, progress bookkeeping), excluding evaluation, checkpointing, plotting,
    setup and the tiny metrics write between windows. The plain loop is timed with perf_counter around
    exactly its step loop (lr update + batch + noise + forward/backward + clip + step + EMA), after model,
    optimizer and EMA setup. steps/s = images/s ÷ batch size.

What is timed (sampling)
    The model is unconditional (DDIMPipeline cannot pass class labels): the final checkpoint of the last aigc
    training run, loaded with `load_model` (or, with --class-conditional, a freshly built
    unconditional UNet of the same sizes). aigc: perf_counter around `sample_images(loaded, N, seed, gc)`
    (sampler ddim, eta 0, --sample-steps, generate batch_size = N so it is one batch like the pipeline's);
    that includes its per-image noise generators, building its DDIMScheduler and the uint8 conversion.
    Plain: `DDIMPipeline(unet=<the same EMA unet object>, scheduler=DDIMScheduler.from_config(...))`, built
    once outside the timer, progress bar disabled; perf_counter around making the generators and
    `pipe(batch_size=N, num_inference_steps=S, eta=0, generator=..., output_type="np")`. The pipeline gets
    aigc's per-image generators (seeded like sample_images'), so both start from identical noise.
    Grad mode: aigc's `backend.sample` is decorated with @torch.inference_mode, DDIMPipeline.__call__ with
    @torch.no_grad; both calls run inside `torch.inference_mode()` here, so both sides run in inference mode
    (a no_grad nested inside inference_mode stays in inference mode).
    Sanity (untimed): the shapes (aigc N×C×H×W uint8, pipeline N×H×W×C float), finiteness of the
    pipeline's floats and of aigc's `backend.sample` floats for the first few images, and the max abs
    difference between the two outputs (uint8 levels over all N images; floats over the first few).

Noise control on a busy 2-core machine
    One untimed warm-up run of each side first (training: --warmup-steps steps; sampling: N images, 2 steps),
    then --repeats rounds that interleave the two sides, alternating which goes first (plain, aigc |
    aigc, plain | ...), so slow drift of the machine's load hits both equally. We report the median of each
    side and ratio = median(aigc) / median(plain); the per-round tables show the 1-minute load average.
    Exit status 1 when either ratio is below --min-ratio (default 0.95).

Data and model: scikit-learn's digits at --image-size (16), prepared into a temporary directory; the UNet of
configs/digits-ddpm.yaml (block_out_channels [32, 64, 64], layers_per_block 1, attention_levels [2],
cosine schedule, ema_decay 0.995) but unconditional, and its train section (batch 64, lr 2e-3, ...).

Usage:
    python scripts/bench/ddpm.py                          # 50 steps, 3 repeats, 64 images × 25 DDIM steps
    python scripts/bench/ddpm.py --train-steps 200 --repeats 5 --threads 2
    python scripts/bench/ddpm.py --train-steps 4 --repeats 1 --sample-images 4 --sample-steps 2 \\
        --block-out-channels 16 32 --attention-levels 1   # a short run, seconds
    python scripts/bench/ddpm.py --smoke                  # one step of everything at tiny sizes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

# configs/digits-ddpm.yaml's model and train sections, unconditional (kept inline so the benchmark does not
# change when someone edits that file; the CLI flags below shrink or reshape the UNet).
DIGITS_DDPM = {
    "model": {"backend": "ddpm", "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "ema_decay": 0.995},
    "train": {"learning_rate": 2.0e-3, "min_lr": 1.0e-4, "warmup_steps": 100, "weight_decay": 0.0},
}
SANITY_IMAGES = 4  # images of the untimed float comparison


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-steps", type=int, default=50, help="optimizer steps per timed training run (default 50)")
    p.add_argument("--warmup-steps", type=int, default=None, help="steps of the untimed warm-up run of each loop (default min(5, --train-steps); 0: none)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per measurement (default 3)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    p.add_argument("--log-every", type=int, default=0, help="aigc's train.log_every (must divide --train-steps; default: = steps)")
    p.add_argument("--sample-images", type=int, default=64, help="images per timed sampling run (default 64)")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps (default 25)")
    p.add_argument("--image-size", type=int, default=16, help="data.image.size (default 16)")
    p.add_argument("--block-out-channels", type=int, nargs="+", default=[32, 64, 64], help="UNet channels per level (default 32 64 64)")
    p.add_argument("--layers-per-block", type=int, default=1, help="ResNet blocks per level (default 1)")
    p.add_argument("--attention-levels", type=int, nargs="*", default=[2], help="levels with self-attention (default 2; none: no attention)")
    p.add_argument("--class-conditional", action="store_true", help="train a class-conditional UNet (sampling still uses an unconditional one)")
    p.add_argument("--ema-foreach", action="store_true", help="plain loop: EMAModel(foreach=True) (diffusers' default is False)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--min-ratio", type=float, default=0.95, help="exit 1 when median(aigc)/median(plain) is below this, for either measurement")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="train.device and sampling device (default cpu; cuda is untested)")
    p.add_argument("--smoke", action="store_true", help="one step, 2 images × 2 DDIM steps, a tiny UNet (checks the script runs)")
    p.add_argument("--json", help="write the result rows here")
    args = p.parse_args(argv)
    if args.smoke:
        args.train_steps, args.warmup_steps, args.repeats, args.batch_size = 1, 0, 1, 8
        args.sample_images, args.sample_steps, args.image_size = 2, 2, 8
        args.block_out_channels, args.attention_levels = [16, 32], [1]
    args.log_every = args.log_every or args.train_steps
    if args.train_steps % args.log_every:
        p.error("--log-every must divide --train-steps (each throughput window must end exactly on a logged step)")
    if args.warmup_steps is None:
        args.warmup_steps = min(5, args.train_steps)
    if min(args.train_steps, args.repeats, args.batch_size, args.sample_images, args.sample_steps) < 1:
        p.error("--train-steps, --repeats, --batch-size, --sample-images and --sample-steps must be at least 1")
    return args


def make_raw_config(args, workdir: Path) -> dict:
    model = {**DIGITS_DDPM["model"], "block_out_channels": args.block_out_channels, "layers_per_block": args.layers_per_block,
             "attention_levels": args.attention_levels, "class_conditional": args.class_conditional}
    train = {**DIGITS_DDPM["train"], "batch_size": args.batch_size, "max_steps": args.train_steps, "eval_every": args.train_steps,
             "eval_batches": 1, "save_every": 0, "keep_last": 1, "log_every": args.log_every, "device": args.device,
             "precision": "fp32", "out_dir": str(workdir / "unused")}
    data = {"source": "digits", "image": {"size": args.image_size, "channels": 1}, "val_fraction": 0.15,
            "prepared_dir": str(workdir / "prepared")}
    return {"data": data, "model": model, "train": train}


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- training
def train_plain(cfg, steps: int, ema_foreach: bool) -> tuple[float, float]:
    """train_unconditional.py's loop on aigc's UNet. Returns (images/s over the steps, final train loss)."""
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DModel
    from diffusers.training_utils import EMAModel

    from aigc_cli.backends import get_backend
    from aigc_cli.data.images import ImageArray
    from aigc_cli.training.optimizer import lr_at, make_optimizer

    tc, mc, device = cfg.train, cfg.model, cfg.train.device
    train_data = ImageArray(cfg.data.prepared_dir, "train")
    torch.manual_seed(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    built = get_backend("ddpm").build(mc, train_data.meta)
    unet, noise_scheduler = built.unet.to(device), built.scheduler
    del built  # its own EMA copy: the plain loop keeps diffusers' EMAModel instead
    unet.train()
    opt = make_optimizer(unet.parameters(), tc, device)
    ema = EMAModel(unet.parameters(), decay=mc.ema_decay, foreach=ema_foreach, model_cls=UNet2DModel,
                   model_config=unet.config) if mc.ema_decay else None
    num_timesteps, clip, conditional = noise_scheduler.config.num_train_timesteps, tc.grad_clip, mc.class_conditional

    synchronize(device)
    t0 = time.perf_counter()
    for step in range(steps):
        lr = lr_at(step, tc)
        for group in opt.param_groups:
            group["lr"] = lr
        clean, labels = train_data.random_batch(tc.batch_size, None, gen)
        clean, labels = clean.to(device), labels.to(device)
        opt.zero_grad(set_to_none=True)
        noise = torch.randn(clean.shape, device=clean.device)
        timesteps = torch.randint(0, num_timesteps, (clean.shape[0],), device=clean.device).long()
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        prediction = unet(noisy, timesteps, class_labels=labels if conditional else None).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), clip)
        opt.step()
        if ema is not None:
            ema.step(unet.parameters())
    final_loss = loss.item()
    synchronize(device)
    elapsed = time.perf_counter() - t0
    return steps * tc.batch_size / elapsed, final_loss


def train_aigc(cfg, steps: int, out_dir: Path) -> tuple[float, float, Path]:
    """`train_model` itself. Returns (images/s over the steps only, final train loss, final checkpoint)."""
    from aigc_cli.training import train_model

    cfg = cfg.model_copy(deep=True)
    cfg.train.out_dir = str(out_dir)
    cfg.train.max_steps = steps
    cfg.train.eval_every = steps
    if steps % cfg.train.log_every:
        cfg.train.log_every = steps
    result = train_model(cfg, resume=False, quiet=True)

    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    windows = [r for r in rows if "images_per_s" in r]
    images_per_step = cfg.train.batch_size * cfg.train.grad_accum_steps
    seconds, previous, images = 0.0, 0, 0
    for r in windows:
        window_images = (r["step"] - previous) * images_per_step
        seconds += window_images / r["images_per_s"]
        images += window_images
        previous = r["step"]
    if previous != steps:
        raise RuntimeError(f"metrics.jsonl windows end at step {previous}, not {steps}")
    return images / seconds, windows[-1]["train_loss"], result.checkpoint


# ----------------------------------------------------------------------------- sampling
def sampling_model(cfg, checkpoint: Path | None, device: str):
    """The unconditional model both samplers use: aigc's final checkpoint, or a fresh unconditional UNet."""
    import torch

    from aigc_cli.backends import get_backend
    from aigc_cli.data.images import ImageArray
    from aigc_cli.inference.loading import in_memory_model, load_model

    if checkpoint is not None:
        return load_model(checkpoint, device, modality="image")
    backend = get_backend("ddpm")
    torch.manual_seed(cfg.train.seed)
    model = backend.build(cfg.model.model_copy(update={"class_conditional": False}), ImageArray(cfg.data.prepared_dir, "train").meta)
    return in_memory_model(Path("(built in memory)"), "ddpm", model.to(device).eval(), device)


def make_pipeline(loaded):
    from diffusers import DDIMPipeline, DDIMScheduler

    pipe = DDIMPipeline(unet=loaded.model.sampling_unet, scheduler=DDIMScheduler.from_config(loaded.model.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample_aigc(loaded, gc, seed: int):
    """Returns (images/s, uint8 N×C×H×W)."""
    import torch

    from aigc_cli.inference.image_sampling import sample_images

    synchronize(loaded.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        images, _ = sample_images(loaded, gc.num_images, seed, gc)
    elapsed = time.perf_counter() - t0
    return gc.num_images / elapsed, images


def sample_plain(pipe, count: int, steps: int, seed: int, device: str):
    """Returns (images/s, float N×H×W×C in [0, 1])."""
    import torch

    from aigc_cli.inference.image_sampling import image_seed

    synchronize(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        generators = [torch.Generator().manual_seed(image_seed(seed, i)) for i in range(count)]
        images = pipe(batch_size=count, num_inference_steps=steps, eta=0.0, generator=generators, output_type="np").images
    synchronize(device)
    elapsed = time.perf_counter() - t0
    return count / elapsed, images


def sanity_report(loaded, gc, seed: int, ours, plain) -> list[str]:
    """Shapes, finiteness and differences of the last timed outputs (untimed; see the docstring)."""
    import numpy as np
    import torch

    from aigc_cli.inference.image_sampling import image_seed

    plain_u8 = np.round(np.clip(plain, 0, 1) * 255).astype(np.uint8).transpose(0, 3, 1, 2)
    lines = [f"shapes: aigc {tuple(ours.shape)} uint8, pipeline {tuple(plain.shape)} {plain.dtype} "
             f"(→ N×C×H×W {tuple(plain_u8.shape)}): {'same' if plain_u8.shape == ours.shape else 'DIFFERENT'}",
             f"pipeline values finite: {bool(np.isfinite(plain).all())}"]
    if plain_u8.shape == ours.shape:
        lines.append(f"max |aigc - pipeline| over all {len(ours)} images: {int(np.abs(ours.astype(int) - plain_u8.astype(int)).max())} "
                     f"uint8 level(s) (identical initial noise; 0-1 is rounding)")
    k = min(SANITY_IMAGES, gc.num_images)
    generators = [torch.Generator().manual_seed(image_seed(seed, i)) for i in range(k)]
    shape = tuple(loaded.backend.latent_shape(loaded.model))
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(loaded.device)
    floats = loaded.backend.sample(loaded.model, noise, None, gc, generators).float().cpu()
    reference = torch.from_numpy(plain[:k]).permute(0, 3, 1, 2) * 2 - 1
    lines.append(f"aigc backend.sample floats finite ({k} images): {bool(torch.isfinite(floats).all())}; "
                 f"max |aigc - pipeline| in [-1, 1]: {(floats - reference).abs().max().item():.2e}")
    return lines


# ----------------------------------------------------------------------------- rounds and report
def interleaved(name: str, unit: str, repeats: int, run_plain, run_aigc) -> dict[str, list[float]]:
    """`repeats` rounds, alternating which side goes first; prints one row per round."""
    results = {"plain": [], "aigc": []}
    print(f"\n{name}\n{'round':>5}  {'first':>5}  {'plain ' + unit:>14}  {'aigc ' + unit:>14}  {'aigc/plain':>10}  {'load avg':>8}", flush=True)
    for r in range(repeats):
        order = ("plain", "aigc") if r % 2 == 0 else ("aigc", "plain")
        got = {}
        for side in order:
            got[side] = run_plain() if side == "plain" else run_aigc()
            results[side].append(got[side])
        print(f"{r + 1:>5}  {order[0]:>5}  {got['plain']:>14,.2f}  {got['aigc']:>14,.2f}  {got['aigc'] / got['plain']:>10.3f}  "
              f"{os.getloadavg()[0]:>8.2f}", flush=True)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers.utils import logging as diffusers_logging

    from aigc_cli.config import ImageGenerateConfig, validate_config
    from aigc_cli.data.images import prepare_images
    from aigc_cli.errors import AigcError

    diffusers_logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory(prefix="aigc-bench-ddpm-") as tmp:
            workdir = Path(tmp)
            cfg = validate_config(make_raw_config(args, workdir), source="bench")
            t = time.perf_counter()
            prep = prepare_images(cfg, log=lambda _: None)
            mc, tc = cfg.model, cfg.train
            print(f"data: digits → {prep.meta['train_images']:,} train images, 1×{args.image_size}×{args.image_size} "
                  f"({time.perf_counter() - t:.1f}s to prepare)", flush=True)
            print(f"model: ddpm {mc.model_dump(exclude={'backend'})}", flush=True)
            print(f"training: {args.train_steps} steps × batch {tc.batch_size}, fp32, device {args.device}, torch threads "
                  f"{torch.get_num_threads()}, cpus {os.cpu_count()}, log_every {args.log_every}, plain EMA foreach={args.ema_foreach}", flush=True)
            print(f"sampling: {args.sample_images} images × {args.sample_steps} DDIM steps (eta 0), inference_mode on both sides", flush=True)

            run_id, checkpoint, losses = 0, None, {"plain": [], "aigc": []}

            def plain_train(steps: int) -> float:
                rate, loss = train_plain(cfg, steps, args.ema_foreach)
                losses["plain"].append(loss)
                return rate

            def aigc_train(steps: int) -> float:
                nonlocal run_id, checkpoint
                run_id += 1
                rate, loss, checkpoint = train_aigc(cfg, steps, workdir / f"run-{run_id}")
                losses["aigc"].append(loss)
                return rate

            if args.warmup_steps:
                t = time.perf_counter()
                plain_train(args.warmup_steps)
                aigc_train(args.warmup_steps)
                print(f"training warm-up: {args.warmup_steps} steps of each loop ({time.perf_counter() - t:.1f}s, untimed)", flush=True)
            for kept in losses.values():
                kept.clear()  # the warm-up's losses are not the timed runs'
            train_rates = interleaved("training (images/s over the optimisation steps)", "img/s", args.repeats,
                                      lambda: plain_train(args.train_steps), lambda: aigc_train(args.train_steps))

            loaded = sampling_model(cfg, None if mc.class_conditional else checkpoint, args.device)
            pipe = make_pipeline(loaded)
            gc = ImageGenerateConfig(num_images=args.sample_images, sampler="ddim", num_inference_steps=args.sample_steps,
                                     eta=0.0, batch_size=args.sample_images)
            warm_gc = gc.model_copy(update={"num_inference_steps": min(2, args.sample_steps)})
            seed = 1337
            t = time.perf_counter()
            sample_plain(pipe, args.sample_images, warm_gc.num_inference_steps, seed, args.device)
            sample_aigc(loaded, warm_gc, seed)
            print(f"\nsampling model: {loaded.checkpoint}\nsampling warm-up: {args.sample_images} images × "
                  f"{warm_gc.num_inference_steps} steps on each side ({time.perf_counter() - t:.1f}s, untimed)", flush=True)
            last = {}

            def plain_sample() -> float:
                rate, last["plain"] = sample_plain(pipe, args.sample_images, args.sample_steps, seed, args.device)
                return rate

            def aigc_sample() -> float:
                rate, last["aigc"] = sample_aigc(loaded, gc, seed)
                return rate

            sample_rates = interleaved("sampling (images/s)", "img/s", args.repeats, plain_sample, aigc_sample)
            sanity = sanity_report(loaded, gc, seed, last["aigc"], last["plain"])
    except AigcError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    return report(args, train_rates, sample_rates, losses, sanity)


def report(args, train_rates, sample_rates, losses, sanity) -> int:
    med_train = {k: statistics.median(v) for k, v in train_rates.items()}
    med_sample = {k: statistics.median(v) for k, v in sample_rates.items()}
    ratios = {"training": med_train["aigc"] / med_train["plain"], "sampling": med_sample["aigc"] / med_sample["plain"]}
    bs = args.batch_size

    print(f"\n{'side':<34} {'median':>10} {'min':>9} {'max':>9}  {'final loss':>10}")
    print("-" * 78)
    for side, label in (("plain", "train: diffusers loop (steps/s)"), ("aigc", "train: aigc train_model (steps/s)")):
        v = [x / bs for x in train_rates[side]]
        print(f"{label:<34} {statistics.median(v):>10.3f} {min(v):>9.3f} {max(v):>9.3f}  {losses[side][-1]:>10.5f}")
    for side, label in (("plain", "sample: DDIMPipeline (img/s)"), ("aigc", "sample: aigc sample_images (img/s)")):
        v = sample_rates[side]
        print(f"{label:<34} {statistics.median(v):>10.2f} {min(v):>9.2f} {max(v):>9.2f}")
    print("-" * 78)
    for line in sanity:
        print(f"sanity: {line}")
    if abs(losses["plain"][-1] - losses["aigc"][-1]) > 1e-3:
        print(f"warning: final training losses differ ({losses['plain'][-1]:.6f} vs {losses['aigc'][-1]:.6f}): the loops may not do the same work")
    blocks = "×".join(map(str, args.block_out_channels))
    what = f"DDPM digits {args.image_size}×{args.image_size}, UNet {blocks}"
    harness.write_rows(args.json, [
        harness.row("ddpm", f"training steps/s ({what}, batch {bs}, fp32)", "steps/s", med_train["aigc"] / bs,
                    "plain diffusers loop (train_unconditional.py)", med_train["plain"] / bs, 0.95),
        harness.row("ddpm", f"sampling images/s ({what}, {args.sample_steps} DDIM steps)", "images/s", med_sample["aigc"],
                    "diffusers DDIMPipeline", med_sample["plain"], 0.95),
    ])
    failed = [name for name, r in ratios.items() if r < args.min_ratio]
    print(f"ratios aigc/plain (medians): training {ratios['training']:.3f}, sampling {ratios['sampling']:.3f}   "
          f"threshold {args.min_ratio:.2f}   → {'SLOWER THAN ALLOWED: ' + ', '.join(failed) if failed else 'OK'}")

    print(f"\n<!-- scripts/bench/ddpm.py: digits {args.image_size}×{args.image_size}, UNet {blocks}, batch {bs}, "
          f"{args.train_steps} steps, {args.sample_images} images × {args.sample_steps} DDIM steps, "
          f"median of {args.repeats}, torch threads {_threads()} -->")
    print("| measurement | side | median | ratio aigc / plain |")
    print("|---|---|---:|---:|")
    print(f"| training | plain diffusers loop | {med_train['plain'] / bs:.3f} steps/s ({med_train['plain']:.1f} img/s) | |")
    print(f"| training | aigc `train_model` | {med_train['aigc'] / bs:.3f} steps/s ({med_train['aigc']:.1f} img/s) | {ratios['training']:.3f} |")
    print(f"| sampling | diffusers `DDIMPipeline` | {med_sample['plain']:.2f} img/s | |")
    print(f"| sampling | aigc `sample_images` | {med_sample['aigc']:.2f} img/s | {ratios['sampling']:.3f} |")
    return 1 if failed else 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
