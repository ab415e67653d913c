"""`aigc eval` for image backends.

- loss: the backend's training loss on the held-out split (fixed noise seed, so comparable).
- fid / kid: generated images against the held-out real images, in the feature space of
  Inception-v3 when the user has its weights locally, else of a small CNN classifier trained on
  the labelled prepared data (the report says which). The FID of the held-out real images
  against the real training images is reported beside it as the floor a perfect model reaches.
- coverage: what that classifier makes of the samples — the share of each class, and the share
  it recognises with probability ≥ 0.9.
- psnr / ssim: the vae's reconstructions of the held-out images against the originals.
- adherence (a model that samples from prompts): images for the held-out captions, scored by
  prompt_adherence.py (the digit named, and ", inverted" and thin/bold where measurable).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aigc_cli.backends import spec
from aigc_cli.config import ExperimentConfig, require_data
from aigc_cli.data.images import IMAGE_SUFFIXES, ImageArray, open_image, to_array
from aigc_cli.errors import AigcError
from aigc_cli.generation.images import reconstruct_images
from aigc_cli.inference.heldout import heldout_loss
from aigc_cli.inference.image_sampling import sample_images
from aigc_cli.inference.loading import load_model


def evaluate_images(cfg: ExperimentConfig, checkpoint: str | Path | None, log=lambda _: None) -> tuple[dict, dict]:
    from aigc_cli.evaluation import image_metrics

    ec = cfg.eval
    data_dir = require_data(cfg).prepared_dir
    real_val, real_train = ImageArray(data_dir, "val"), ImageArray(data_dir, "train")
    names = set(ec.metrics)
    metrics: dict[str, float] = {}
    details: dict = {"prepared_data": str(data_dir), "inputs": real_val.meta.get("inputs")}
    loaded = None
    if names & {"loss", "psnr", "ssim", "adherence"} or (names & {"fid", "kid", "coverage"} and not ec.generations):
        loaded = load_model(checkpoint or cfg.train.out_dir, modality="image")
        details.update(checkpoint=str(loaded.checkpoint), backend=loaded.backend_name)
        if loaded.info["size"] != real_val.meta["size"] or loaded.info["channels"] != real_val.meta["channels"]:
            raise AigcError(f"{loaded.checkpoint} makes {loaded.info['channels']}×{loaded.info['size']}² images but {data_dir} holds "
                            f"{real_val.meta['channels']}×{real_val.meta['size']}²", "evaluate on the prepared data the model was trained on")

    if "loss" in names:
        # A fixed seed for the noise the loss draws, so losses of different checkpoints compare.
        metrics["loss"] = heldout_loss(loaded, loaded.validation_part, _loss_batches(loaded, data_dir, real_val, ec.batch_size), loaded.device,
                                       per="row", seed=cfg.train.seed + 1).mean
    if "adherence" in names:
        scores, details["adherence"] = _adherence(cfg, loaded, data_dir, log)
        metrics.update(scores)
    if names & {"psnr", "ssim"}:
        originals, reconstructed = reconstruct_images(loaded, "val", cfg)
        if "psnr" in names:
            metrics["psnr"] = image_metrics.psnr(originals, reconstructed)
        if "ssim" in names:
            metrics["ssim"] = image_metrics.ssim(originals, reconstructed)
        details["reconstructed_images"] = len(originals)

    if names & {"fid", "kid", "coverage"}:
        if ec.generations:
            generated = read_image_folder(ec.generations, real_val.meta["size"], real_val.meta["channels"])
            details["generations"] = str(ec.generations)
        else:
            log(f"sampling {ec.num_samples} images from {loaded.checkpoint} (seed {cfg.generate.seed})")
            generated, _ = sample_images(loaded, ec.num_samples, cfg.generate.seed, cfg.generate.images)
            details["sampled"] = {"count": ec.num_samples, "seed": cfg.generate.seed, **cfg.generate.images.model_dump(mode="json")}
        classifier = None
        if "coverage" in names or ec.image_features == "classifier" or (ec.image_features == "auto" and not ec.inception_weights):
            classifier = _classifier(data_dir, real_train, log)
        if names & {"fid", "kid"}:
            space = _feature_space(cfg, classifier)
            details["feature_space"] = space.name
            real = np.asarray(real_val.images)
            if "fid" in names:
                metrics["fid"] = image_metrics.fid(real, generated, space)
                # The floor: real held-out images against real training images of the same count.
                metrics["fid_real_floor"] = image_metrics.fid(real, np.asarray(real_train.images[: max(len(real), len(generated))]), space)
            if "kid" in names:
                metrics["kid"], metrics["kid_std"] = image_metrics.kid(real, generated, space)
            details["real_images"] = len(real)
        if "coverage" in names:
            coverage = image_metrics.class_coverage(classifier, generated, real_train.num_classes)
            metrics["confident_share"] = coverage["confident_share"]
            metrics["min_class_share"] = coverage["min_class_share"]
            details["class_shares"] = dict(zip(real_train.meta["classes"], coverage["class_shares"]))
            details["classes_covered"] = coverage["classes_covered"]
        details["generated_images"] = len(generated)
    details["scored"] = _what_was_scored(details, names)
    log(f"scored {details['scored']}")
    return metrics, details


def _loss_batches(loaded, data_dir, real_val: ImageArray, batch_size: int):
    """The held-out batches the loss takes: (images, labels), or (images, caption token ids) for a model that samples from prompts."""
    if not spec(loaded.backend_name).prompted:
        return real_val.batches(batch_size)
    from aigc_cli.data.images import CaptionedImages

    return CaptionedImages(data_dir, "val", lambda texts: loaded.backend.tokenize(loaded.model, texts)).batches(batch_size)


def _adherence(cfg: ExperimentConfig, loaded, data_dir, log) -> tuple[dict, dict]:
    """Prompt adherence of eval.num_samples images, one per held-out caption in order (cycling), each
    seeded as `aigc generate` seeds image k of a prompt."""
    from aigc_cli.data.images import CaptionedImages
    from aigc_cli.evaluation.prompt_adherence import DigitReader, check_digit_prompts, prompt_adherence

    if not spec(loaded.backend_name).prompted:
        raise AigcError(f"eval.metrics adherence scores images sampled from prompts; {loaded.checkpoint} ({loaded.backend_name}) takes none",
                        "evaluate a latent-diffusion or text-to-image checkpoint")
    val, train = CaptionedImages(data_dir, "val", list), CaptionedImages(data_dir, "train", list)
    count = cfg.eval.num_samples
    prompts = [val.captions[i % len(val.captions)] for i in range(count)]
    check_digit_prompts(prompts, f"the held-out captions of {data_dir}")
    log(f"sampling {count} images for held-out captions from {loaded.checkpoint} (seed {cfg.generate.seed}) to score prompt adherence")
    images = prompted_images(loaded, prompts, cfg.generate.seed, cfg.generate.images)
    metrics, details = prompt_adherence(images, prompts, np.asarray(train.images), train.captions, DigitReader())
    return metrics, {**details, "seed": cfg.generate.seed, **cfg.generate.images.model_dump(mode="json", include={"sampler", "num_inference_steps", "guidance_scale"})}


def prompted_images(loaded, prompts: list[str], seed: int, gc) -> np.ndarray:
    """uint8 images, one per prompt; the k-th time a prompt appears its image is seeded as
    `aigc generate` seeds that prompt's image k, so the two make the same pictures."""
    import torch

    from aigc_cli.generation.text_to_image import prompt_image_seed
    from aigc_cli.inference.image_sampling import to_uint8

    seen: dict[str, int] = {}
    seeds = []
    for prompt in prompts:
        seeds.append(prompt_image_seed(seed, prompt, seen.get(prompt, 0)))
        seen[prompt] = seen.get(prompt, 0) + 1
    shape = tuple(loaded.backend.latent_shape(loaded.model))
    out = []
    for start in range(0, len(prompts), gc.batch_size):
        generators = [torch.Generator().manual_seed(s) for s in seeds[start:start + gc.batch_size]]
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(loaded.device)
        images = loaded.backend.sample_prompts(loaded.model, noise, prompts[start:start + gc.batch_size], gc, generators, gc.negative_prompt)
        out.append(to_uint8(loaded.backend.as_data_channels(loaded.model, images)))
    return np.concatenate(out)


def _what_was_scored(details: dict, names: set[str]) -> str:
    parts = []
    if "checkpoint" in details:
        parts.append(f"{details['checkpoint']} ({details['backend']})")
    if "loss" in names:
        parts.append(f"loss on the val split of {details['prepared_data']}")
    if "reconstructed_images" in details:
        parts.append(f"{details['reconstructed_images']:,} reconstructed val images")
    if "adherence" in details:
        parts.append(f"prompt adherence of {details['adherence']['samples']:,} images for held-out captions")
    if "generated_images" in details:
        source = details.get("generations") or f"sampled with seed {details['sampled']['seed']}"
        parts.append(f"{details['generated_images']:,} generated images ({source}) against {details.get('real_images', 0):,} "
                     f"real val images in {details.get('feature_space', 'classifier')} features")
    return "; ".join(parts)


def _classifier(data_dir, real_train: ImageArray, log):
    from aigc_cli.evaluation import image_metrics

    if real_train.labels is None or real_train.num_classes < 2:
        raise AigcError("coverage and classifier features need labelled data",
                        "prepare labelled images (`digits`, or data.image.class_folders=true), or set eval.inception_weights for FID/KID")
    classifier, _ = image_metrics.cached_classifier(data_dir, np.asarray(real_train.images), real_train.labels, real_train.num_classes, log=log)
    return classifier


def _feature_space(cfg: ExperimentConfig, classifier):
    from aigc_cli.evaluation import image_metrics

    ec = cfg.eval
    if ec.image_features == "inception" or (ec.image_features == "auto" and ec.inception_weights):
        if not ec.inception_weights:
            raise AigcError("eval.image_features=inception needs eval.inception_weights", "set it to a local pt_inception-2015-12-05 weights file (nothing is downloaded)")
        return image_metrics.inception_features(ec.inception_weights)
    return image_metrics.classifier_features(classifier)


def read_image_folder(folder: str | Path, size: int, channels: int) -> np.ndarray:
    """Generated PNGs (e.g. `aigc generate`'s folder, without grids) as uint8 (N, C, H, W)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AigcError(f"eval.generations {folder} is not a folder", "pass the folder written by `aigc generate` for image models")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(("grid", "reconstructions")))
    if len(files) < 2:
        raise AigcError(f"eval.generations {folder} holds {len(files)} images; FID/KID need at least 2", "generate more images (--num)")
    try:
        return np.stack([to_array(open_image(f), size, channels) for f in files])
    except Exception as exc:  # noqa: BLE001
        raise AigcError(f"cannot read the images in {folder}: {exc}", "pass a folder of PNG/JPEG files") from None
