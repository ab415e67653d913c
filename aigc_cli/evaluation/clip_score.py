"""CLIP score of text-to-image outputs (torchmetrics.multimodal.CLIPScore): for each image written by
`aigc generate --prompt` (its folder's samples.json pairs every file with its prompt),
100 × max(cos(CLIP image embedding, CLIP text embedding), 0), averaged. The CLIP model is a local
directory (eval.clip_model: CLIPModel weights with its processor and tokenizer files); nothing is
downloaded. Without eval.clip_model the metric is skipped, and the report says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aigc_cli.errors import AigcError

SKIPPED = "skipped: eval.clip_model (a local CLIP model directory) is not set; nothing is downloaded"


def _embedding_tensors():
    import torch

    class EmbeddingTensors(torch.nn.Module):
        """The CLIP model with get_image_features/get_text_features returning the projected embeddings as
        tensors: transformers 5 returns an output object (pooler_output), torchmetrics 1.9 expects a tensor."""

        def __init__(self, model):
            super().__init__()
            self.model, self.config = model, model.config

        def get_image_features(self, *args, **kwargs):
            return _tensor(self.model.get_image_features(*args, **kwargs))

        def get_text_features(self, *args, **kwargs):
            return _tensor(self.model.get_text_features(*args, **kwargs))

    return EmbeddingTensors


def _tensor(features):
    return features if hasattr(features, "norm") else features.pooler_output


def prompted_images(folder: str | Path) -> tuple[list[Path], list[str]]:
    """(image files, their prompts) of a folder written by `aigc generate --prompt/--prompts-file`."""
    folder = Path(folder)
    try:
        samples = json.loads((folder / "samples.json").read_text(encoding="utf-8"))
        files, prompts, per_prompt = samples["files"], samples["prompts"], samples["per_prompt"]
    except (OSError, ValueError, KeyError, TypeError):
        raise AigcError(f"clip_score: {folder} is not a folder written by `aigc generate --prompt` (no samples.json with prompts and files)",
                        "set eval.generations to the --out folder of `aigc generate --prompt ...` on a text-to-image checkpoint") from None
    if len(files) != len(prompts) * per_prompt:
        raise AigcError(f"clip_score: {folder / 'samples.json'} lists {len(files)} files for {len(prompts)} prompts × {per_prompt}",
                        "run `aigc generate` into the folder again")
    return [folder / f for f in files], [p for p in prompts for _ in range(per_prompt)]


def clip_score(folder: str | Path, clip_model: str | Path, batch_size: int = 32) -> dict:
    """{"clip_score": mean score, "clip_images": count}."""
    import torch
    from torchmetrics.multimodal.clip_score import CLIPScore

    from aigc_cli.generation.images import read_png

    files, prompts = prompted_images(folder)
    if not Path(clip_model, "config.json").is_file():
        raise AigcError(f"eval.clip_model {clip_model} is not a CLIP model directory (no config.json)",
                        "point it at a local directory saved by CLIPModel.save_pretrained with its CLIPProcessor")
    _clip_config(clip_model)
    from transformers import CLIPModel, CLIPProcessor

    EmbeddingTensors = _embedding_tensors()

    # A callable: torchmetrics takes a path only when it names a hub model it knows ("openai/...").
    def model_and_processor():
        return EmbeddingTensors(CLIPModel.from_pretrained(clip_model).eval()), CLIPProcessor.from_pretrained(clip_model)

    try:
        metric = CLIPScore(model_name_or_path=model_and_processor)
    except (OSError, ValueError) as exc:
        raise AigcError(f"cannot load the CLIP model {clip_model}: {str(exc).strip().splitlines()[0]}",
                        "save the model and its processor (CLIPModel and CLIPProcessor .save_pretrained) into that directory") from None
    for start in range(0, len(files), batch_size):
        pixels = np.stack([read_png(f) for f in files[start:start + batch_size]])
        images = torch.from_numpy(np.repeat(pixels, 3, axis=1) if pixels.shape[1] == 1 else pixels)
        metric.update(images, prompts[start:start + batch_size])
    return {"clip_score": float(metric.compute()), "clip_images": len(files)}


def _clip_config(clip_model: str | Path) -> None:
    """A whole CLIP model (text and vision towers, model_type "clip"): a text encoder alone, a pipeline
    or another model would load with random weights filled in, or fail deep inside transformers."""
    import json

    try:
        config = json.loads(Path(clip_model, "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind != "clip":
        found = f"its config.json is for model_type {kind!r}" if kind else "its config.json is not a model config"
        raise AigcError(f"eval.clip_model {clip_model} is not a CLIP model (CLIPModel: text and vision): {found}",
                        "point it at a local directory saved by CLIPModel.save_pretrained with its CLIPProcessor (e.g. a copy of openai/clip-vit-base-patch16)")
