"""Checks of a verb's inputs on disk, made before anything heavy is imported or written.

A missing checkpoint, prepared-data directory or input file is found here, in a fraction of a
second, instead of after torch and transformers have loaded (seconds), and before any lock or
output directory is created: a refused command leaves nothing behind. Each message says which
command to run first. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from aigc_cli.checkpoints import list_checkpoints, resolve_checkpoint
from aigc_cli.config import IMAGE_BACKENDS, MODEL_METRICS, ExperimentConfig
from aigc_cli.errors import AigcError


def trained_checkpoint(config_path: str, checkpoint: str | None, out_dir: str) -> Path:
    """The checkpoint a verb reads: --checkpoint, else train.out_dir's latest good one."""
    if checkpoint is not None:
        return resolve_checkpoint(checkpoint)
    run_dir = Path(out_dir)
    if not run_dir.exists() or (run_dir.is_dir() and not list_checkpoints(run_dir) and not _is_model_dir(run_dir)):
        raise AigcError(f"no trained model yet: {run_dir} holds no checkpoint",
                        f"train first (`aigc train {config_path}`), or pass --checkpoint DIR")
    return resolve_checkpoint(run_dir)


def _is_model_dir(path: Path) -> bool:
    from aigc_cli.checkpoints import MARKERS

    return any((path / name).is_file() for name in MARKERS)


def prepared_data(config_path: str, cfg: ExperimentConfig) -> Path:
    """data.prepared_dir, when `aigc prep` has written it."""
    from aigc_cli.config import require_data

    data_dir = Path(require_data(cfg).prepared_dir)
    if not (data_dir / "meta.json").is_file():
        raise AigcError(f"no prepared data in {data_dir}", f"run `aigc prep {config_path}` first (it writes data.prepared_dir)")
    return data_dir


def existing_file(path: str, what: str, hint: str = "check the path") -> Path:
    """An input file that must exist (a directory or a FIFO is refused: reading one would fail or hang)."""
    file = Path(path)
    if file.is_dir():
        raise AigcError(f"{what} {file} is a directory, not a file", "pass the path of a file")
    if not file.exists():
        raise AigcError(f"{what} not found: {file}", hint)
    if not file.is_file():
        raise AigcError(f"{what} {file} is not a regular file", "pass a regular file (not a pipe or device)")
    return file


def check_train(config_path: str, cfg: ExperimentConfig) -> None:
    prepared_data(config_path, cfg)


def check_finetune(cfg: ExperimentConfig) -> None:
    from aigc_cli.checkpoints import resolve_base

    fc = cfg.finetune
    resolve_base(fc.base)
    for key in ("train_file", "source_file", "target_file", "val_file", "val_source_file", "val_target_file"):
        value = getattr(fc, key)
        if value:
            existing_file(value, f"finetune.{key}")


def check_generate(config_path: str, cfg: ExperimentConfig, checkpoint: str | None, prompts_file: str | None) -> Path:
    if prompts_file:
        existing_file(prompts_file, "prompts file", "pass an existing file to --prompts-file")
    return trained_checkpoint(config_path, checkpoint, cfg.train.out_dir)


def check_eval(config_path: str | None, cfg: ExperimentConfig, checkpoint: str | None) -> Path | None:
    """The files the requested metrics read: predictions and references, the checkpoint and the
    prepared data for loss/perplexity, the checkpoint for image metrics sampled from it. Returns
    the checkpoint to score (None when no metric needs one)."""
    ec = cfg.eval
    image = config_path is not None and cfg.model.backend in IMAGE_BACKENDS
    if image and ec.generations and not Path(ec.generations).exists():  # images: a folder of PNGs
        raise AigcError(f"--predictions not found: {ec.generations}", "pass the folder `aigc generate` wrote")
    for path, what in [(None if image else ec.generations, "--predictions")] + [(r, "--references") for r in _references(ec.references)]:
        if path:
            existing_file(path, what)
    if config_path is None:
        return resolve_checkpoint(checkpoint) if checkpoint is not None and "prediction_perplexity" in ec.metrics else None
    names = set(ec.metrics)
    if image:  # evaluation/images.py: what it samples or reconstructs needs the model
        needs_model = names & {"loss", "psnr", "ssim"} or (names & {"fid", "kid", "coverage"} and not ec.generations)
    else:
        needs_model = names & set(MODEL_METRICS) or "prediction_perplexity" in names
    if names & set(MODEL_METRICS) or image:
        prepared_data(config_path, cfg)
    return trained_checkpoint(config_path, checkpoint, cfg.train.out_dir) if needs_model else None


def _references(references) -> list[str]:
    if references is None:
        return []
    return [references] if isinstance(references, str) else list(references)
