"""What a person watches while a model trains, beside metrics.jsonl.

- TensorBoard event files in the run directory (`tensorboard --logdir runs` shows every run by
  name): losses, learning rate and throughput as scalars, the samples as text or images.
- loss.png (train and validation loss against step), redrawn at every evaluation.
- Samples at every evaluation, from fixed seeds so that one step's can be compared with the
  next: <run_dir>/train_samples/step-NNNNNN.txt for text, step-NNNNNN.png (a grid) for images.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from aigc_cli.runs.atomic_files import write_bytes_atomic, write_text_atomic
from aigc_cli.backends import spec
from aigc_cli.config import ExperimentConfig

SAMPLES_DIR = "train_samples"
# metrics.jsonl key → TensorBoard tag; train and validation loss share the "loss" section.
_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "lr": "lr",
         "tokens_per_s": "throughput/tokens_per_s", "images_per_s": "throughput/images_per_s"}


class RunLogger:
    def __init__(self, cfg: ExperimentConfig, run_dir: Path, backend_name: str, backend, tokenizer_dir: Path | None,
                 device: str, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.backend_name, self.backend, self.tokenizer_dir, self.device = backend_name, backend, tokenizer_dir, device
        # purge_step hides what an interrupted run logged after the checkpoint we resume from.
        self.writer = SummaryWriter(str(self.run_dir), purge_step=start_step or None)
        self._model = None  # the LoadedModel of the training model, made at its first samples

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # also after an interruption: loss.png and the events show what was done

    def scalars(self, row: dict) -> None:
        """One metrics.jsonl row ({"step": N, name: value, ...}) as TensorBoard scalars."""
        step = row["step"]
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(_TAGS.get(key, key), value, step)

    def text(self, step: int, name: str, text: str) -> None:
        # TensorBoard renders text as Markdown; a code block keeps the sample's own line breaks.
        self.writer.add_text(name, "```\n" + text + "\n```", step)

    def images(self, step: int, name: str, grid) -> None:
        self.writer.add_image(name, grid, step, dataformats="CHW")

    def evaluated(self, step: int, model: torch.nn.Module) -> None:
        """After each validation estimate: samples (train.sample_every_eval) and a fresh loss.png."""
        if self.cfg.train.sample_every_eval and model is not None and spec(self.backend_name).modality != "labels":
            was_training = model.training
            model.eval()
            try:
                # The samples draw from their own seeded generators; fork_rng guarantees the training
                # RNG stream is left where it was, so a resumed run still matches an uninterrupted one.
                with torch.random.fork_rng(devices=[torch.cuda.current_device()] if self.device == "cuda" else []):
                    if spec(self.backend_name).modality == "image":
                        self._image_samples(step, model)
                    else:
                        self._text_samples(step, model)
            finally:
                model.train(was_training)
        plot_losses(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        self.writer.flush()

    def close(self) -> None:
        plot_losses(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        self.writer.close()

    def _text_samples(self, step: int, model: torch.nn.Module) -> None:
        from aigc_cli.generation.text import completion_seed
        from aigc_cli.inference.text_decoding import sample_texts

        if self.tokenizer_dir is None:
            return
        tc = self.cfg.train
        loaded = self._loaded(model)
        gc = self.cfg.generate.model_copy(update={"max_new_tokens": tc.sample_tokens})
        parts = []
        for number, prompt in enumerate(tc.sample_prompts):
            [completion] = sample_texts(loaded, [prompt], gc, [completion_seed(tc.seed, prompt, number)])
            parts.append(f"--- sample {number + 1}, prompt {prompt!r}\n{prompt}{completion.text}\n")
        text = "".join(parts)
        write_text_atomic(self.run_dir / SAMPLES_DIR / f"step-{step:06d}.txt", text)
        self.text(step, "samples", text)

    def _image_samples(self, step: int, model: torch.nn.Module) -> None:
        from aigc_cli.generation.images import make_grid, save_png
        from aigc_cli.inference.image_sampling import sample_images

        gc = self.cfg.generate.images
        images, _ = sample_images(self._loaded(model), self.cfg.train.sample_images, self.cfg.train.seed, gc)
        grid = make_grid(images, gc.grid_columns)
        path = self.run_dir / SAMPLES_DIR / f"step-{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_png(grid, tmp)
        tmp.replace(path)
        self.images(step, "samples", grid)

    def _loaded(self, model: torch.nn.Module):
        """The model training holds, as the inference layer takes it (the tokenizer read once)."""
        from aigc_cli.inference.loading import in_memory_model

        if self._model is None or self._model.model is not model:
            self._model = in_memory_model(self.run_dir, self.backend_name, model, self.device, self.tokenizer_dir)
        return self._model


def plot_losses(metrics_path: Path, out: Path) -> None:
    """loss.png: train and validation loss against step, written atomically (a viewer may have it open)."""
    if not metrics_path.is_file():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aigc_cli.data.records import log_records

    rows = [row for _, row in log_records(metrics_path)]  # (without a line torn by a killed run)
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if train or val:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(out, buffer.getvalue())
