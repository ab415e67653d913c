"""Checks of a verb's inputs on disk, made before anything heavy is imported or written.

A missing checkpoint, prepared-data directory or input file is found here, in a fraction of a
second, instead of after torch and transformers have loaded (seconds), and before any lock or
output directory is created: a refused command leaves nothing behind. Each message says which
command to run first. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from aigc_cli.runs.checkpoints import is_model_dir, list_checkpoints, resolve_checkpoint
from aigc_cli.config import IMAGE_BACKENDS, LABEL_BACKENDS, MODEL_METRICS, ExperimentConfig
from aigc_cli.errors import AigcError


def trained_checkpoint(config_path: str, checkpoint: str | None, out_dir: str) -> Path:
    """The checkpoint a verb reads: --checkpoint, else train.out_dir's latest good one."""
    if checkpoint is not None:
        return resolve_checkpoint(checkpoint)
    run_dir = Path(out_dir)
    if not run_dir.exists() or (run_dir.is_dir() and not list_checkpoints(run_dir) and not is_model_dir(run_dir)):
        raise AigcError(f"no trained model yet: {run_dir} holds no checkpoint",
                        f"train first (`aigc train {config_path}`), or pass --checkpoint DIR")
    return resolve_checkpoint(run_dir)


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


def check_train(config_path: str, cfg: ExperimentConfig, resume: bool = False) -> None:
    from aigc_cli.runs.init_from import pretrained_start

    if cfg.model.backend in LABEL_BACKENDS:  # a classifier reads its labelled records itself (no prep)
        from aigc_cli.config import require_data
        from aigc_cli.data.records import record_format

        record_format(require_data(cfg).source)  # a missing file, or a directory that is no dataset, said now
        writable_run_dir(Path(cfg.train.out_dir))
        return
    data_dir = prepared_data(config_path, cfg)
    writable_run_dir(Path(cfg.train.out_dir))
    if getattr(cfg.model, "autoencoder", None):  # latent-diffusion on a trained autoencoder: its folder is one
        _autoencoder_source(cfg.model.autoencoder)
    # model.init_from: the model exists, its sizes and context fit model.*, the prepared vocabulary is its own.
    cfg, _ = pretrained_start(cfg, data_dir, resume)
    if resume:
        _resume_fits(cfg, data_dir, ("model",))  # with init_from, model.* as filled in from the model, as config.yaml holds it


def _autoencoder_source(path: str) -> None:
    from aigc_cli.data.image_folders import autoencoder_folder
    from aigc_cli.runs.checkpoints import latest_good_checkpoint

    folder = Path(path).expanduser()
    if not folder.exists():
        raise AigcError(f"model.autoencoder not found: {folder}", "point it at an AutoencoderKL or pipeline directory")
    autoencoder_folder(latest_good_checkpoint(folder) or folder)


def _dreambooth_folders(cfg: ExperimentConfig) -> None:
    """DreamBooth's instance images are there, and its class images folder can be read or filled."""
    from aigc_cli.data.image_folders import image_files, writable_folder

    db = cfg.finetune.text_to_image.dreambooth
    if db.instance_prompt is None:
        return
    image_files(db.instance_dir, "finetune.text_to_image.dreambooth.instance_dir")
    if db.class_prompt is not None:
        writable_folder(db.class_dir or Path(cfg.train.out_dir) / "class_images", "finetune.text_to_image.dreambooth.class_dir")


def check_finetune(cfg: ExperimentConfig, resume: bool = False) -> None:
    from aigc_cli.runs.checkpoints import resolve_base

    fc = cfg.finetune
    resolve_base(fc.base)
    from aigc_cli.data.records import record_format

    for key in ("train_file", "source_file", "target_file", "val_file", "val_source_file", "val_target_file"):
        value = getattr(fc, key)
        if value and key in ("train_file", "val_file") and Path(value).is_dir():
            try:
                record_format(value)  # a `datasets.save_to_disk` directory, or an error saying what it is instead
            except AigcError as exc:
                raise AigcError(f"finetune.{key} {exc.message}", exc.hint) from None
        elif value:
            existing_file(value, f"finetune.{key}")
    writable_run_dir(Path(cfg.train.out_dir))
    _dreambooth_folders(cfg)
    if resume:
        # The chat template and the format decide the tokenizer the run saved and its new tokens.
        _resume_fits(cfg, None, ("finetune.base", "finetune.method", "finetune.lora", "finetune.template", "finetune.format", "finetune.chat_template", "finetune.quantization"))


def text_to_image_checkpoint(config_path: str, cfg: ExperimentConfig, checkpoint: str | None, prompts_file: str | None) -> Path | None:
    """The checkpoint `aigc generate` reads when it samples images from prompts (text-to-image,
    latent-diffusion: spec.prompted); None: another kind."""
    from aigc_cli.backends import backend_of_checkpoint, spec

    if prompts_file:
        existing_file(prompts_file, "prompts file", "pass an existing file to --prompts-file")
    found = trained_checkpoint(config_path, checkpoint, cfg.train.out_dir)
    return found if spec(backend_of_checkpoint(found)).prompted else None


def check_generate(config_path: str, cfg: ExperimentConfig, checkpoint: str | None, prompts_file: str | None) -> Path:
    if prompts_file:
        existing_file(prompts_file, "prompts file", "pass an existing file to --prompts-file")
    found = trained_checkpoint(config_path, checkpoint, cfg.train.out_dir)
    _same_modality(found, cfg)
    image = cfg.model.backend in IMAGE_BACKENDS
    default = "samples" if image else ("predictions.jsonl" if cfg.model.backend in LABEL_BACKENDS else "generations.jsonl")
    _output_of_generate(Path(cfg.generate.out or Path(cfg.train.out_dir) / default), image)
    return found


# ----------------------------------------------------------------------------- what may be written into
def writable_run_dir(run_dir: Path) -> None:
    """train.out_dir is new, empty, or a run directory aigc made: never a prepared-data folder or a
    folder of the user's own files, whose config.yaml or metrics.jsonl a run would overwrite."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    made_by_aigc = (run_dir / "provenance.json").is_file() or (run_dir / "checkpoints").is_dir() or (run_dir / "metrics.jsonl").is_file()
    if (run_dir / "meta.json").is_file() or not made_by_aigc:
        raise AigcError(f"train.out_dir {run_dir} holds files aigc did not write there (a run would overwrite its config.yaml and logs)",
                        "set train.out_dir to a new or empty folder")


def _output_of_generate(out: Path, image: bool) -> None:
    """An existing output is replaced only when aigc wrote it: its manifest lies beside or in it."""
    manifest = out / "manifest.jsonl" if image else out.with_name(out.name + ".manifest.jsonl")
    if image and out.is_dir() and any(out.iterdir()) and not manifest.is_file():
        raise AigcError(f"--out {out} holds files that were not written by `aigc generate`", "choose a new or empty folder for the images")
    if not image and out.is_file() and not manifest.is_file():
        raise AigcError(f"{out} exists and was not written by `aigc generate` (no {manifest.name} beside it)",
                        "choose another --out file (aigc never replaces a file it did not write)")


def _same_modality(checkpoint: Path, cfg: ExperimentConfig) -> None:
    from aigc_cli.backends import BACKENDS, backend_of_checkpoint

    found = backend_of_checkpoint(checkpoint)
    makes, wanted = BACKENDS[found].modality, BACKENDS[cfg.model.backend].modality
    if makes != wanted:
        kind = {"image": "images", "text": "text", "labels": "labels"}
        raise AigcError(f"{checkpoint} holds a {found} model, which makes {kind[makes]}, but the config's model.backend is "
                        f"{cfg.model.backend}, which makes {kind[wanted]}", "pass a checkpoint of this config's run, or the config it was trained with")


# ----------------------------------------------------------------------------- --resume
def _resume_fits(cfg: ExperimentConfig, data_dir: Path | None, keys: tuple[str, ...]) -> None:
    """The run's newest intact checkpoint was trained with the same model (and prepared data) as
    the config asks for now: else --resume would crash after rewriting the run's files, or train
    the old model while config.yaml claims new sizes. Schedule keys (max_steps, lr...) may change."""
    import yaml

    from aigc_cli.runs.checkpoints import latest_good_checkpoint

    checkpoint = latest_good_checkpoint(Path(cfg.train.out_dir), report=lambda _: None)
    if checkpoint is None or not (checkpoint / "config.yaml").is_file():
        return
    try:
        saved = yaml.safe_load((checkpoint / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return  # a checkpoint's own files were verified by their checksums; this one predates them
    now = cfg.model_dump(mode="json")
    differing = [key for key in keys for key in _differences(_at(saved, key), _at(now, key), key)]
    if data_dir is not None:
        differing += _data_differences(checkpoint, data_dir)
    if differing:
        raise AigcError(f"--resume: the config no longer fits {checkpoint}: {', '.join(differing[:6])} differ",
                        f"undo those changes to continue the run, or set train.out_dir to a new directory for a new one")


def _at(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _differences(saved, now, where: str) -> list[str]:
    if saved is None:
        return []  # not recorded then (a key added since): nothing to compare
    if isinstance(saved, dict) and isinstance(now, dict):
        if saved.get("backend", now.get("backend")) != now.get("backend"):
            return [f"{where}.backend"]
        return [d for key in saved if key in now for d in _differences(saved[key], now[key], f"{where}.{key}")]
    return [] if saved == now else [where]


def _data_differences(checkpoint: Path, data_dir: Path) -> list[str]:
    import json

    try:
        meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
        provenance = json.loads((checkpoint / "provenance.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    digests = lambda inputs: sorted(i.get("sha256") for i in inputs or [] if isinstance(i, dict))  # noqa: E731
    differing = []
    if provenance.get("inputs") is not None and digests(provenance["inputs"]) != digests(meta.get("inputs")):
        differing.append(f"the prepared data in {data_dir} (other input files)")
    ours, theirs = checkpoint / "tokenizer.json", data_dir / "tokenizer.json"
    if ours.is_file() and theirs.is_file() and ours.read_bytes() != theirs.read_bytes():
        differing.append(f"the tokenizer of {data_dir}")
    return differing


def check_eval(config_path: str | None, cfg: ExperimentConfig, checkpoint: str | None) -> Path | None:
    """The files the requested metrics read: predictions and references, the checkpoint and the
    prepared data for loss/perplexity, the checkpoint for image metrics sampled from it. Returns
    the checkpoint to score (None when no metric needs one)."""
    ec = cfg.eval
    # Images (an image backend's metrics, or clip_score of any checkpoint's prompted images): a folder of PNGs.
    image = config_path is not None and (cfg.model.backend in IMAGE_BACKENDS or "clip_score" in ec.metrics)
    if image and ec.generations and not Path(ec.generations).exists():
        raise AigcError(f"--predictions not found: {ec.generations}", "pass the folder `aigc generate` wrote")
    if image and cfg.model.backend not in IMAGE_BACKENDS and set(ec.metrics) != {"clip_score"}:
        raise AigcError(f"clip_score scores a folder of images; eval.metrics {sorted(set(ec.metrics) - {'clip_score'})} score text",
                        "evaluate clip_score on its own (eval.metrics=[clip_score])")
    for path, what in [(None if image else ec.generations, "--predictions")] + [(r, "--references") for r in _references(ec.references)]:
        if path:
            existing_file(path, what)
    if config_path is None:
        return resolve_checkpoint(checkpoint) if checkpoint is not None and "prediction_perplexity" in ec.metrics else None
    if cfg.model.backend in LABEL_BACKENDS:  # scored on labelled records, no prepared data
        return trained_checkpoint(config_path, checkpoint, cfg.train.out_dir)
    names = set(ec.metrics)
    if image:  # evaluation/images.py: what it samples or reconstructs needs the model
        needs_model = names & {"loss", "psnr", "ssim"} or (names & {"fid", "kid", "coverage"} and not ec.generations)
    else:
        needs_model = names & set(MODEL_METRICS) or "prediction_perplexity" in names
    if names & set(MODEL_METRICS) or (image and names - {"clip_score"}):
        prepared_data(config_path, cfg)
    return trained_checkpoint(config_path, checkpoint, cfg.train.out_dir) if needs_model else None


def _references(references) -> list[str]:
    if references is None:
        return []
    return [references] if isinstance(references, str) else list(references)
