"""`aigc eval` with eval.metrics [clip_score] on the folder `aigc generate --prompt` wrote: torchmetrics'
CLIPScore with a tiny CLIPModel saved locally (built from CLIPConfig), checked against the score
computed by hand from the model's embeddings; without eval.clip_model it is skipped, and said so."""

import json
import os

import numpy as np
import pytest
import torch
import yaml

from tests.generation.test_text_to_image_generate import run_dir  # noqa: F401 (fixture: a text-to-image checkpoint)
from tests.tiny_text_to_image import write_clip_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPTS = ["a bold seven", "a thin one"]
CLIP_SEED = 2  # a random tiny CLIP whose mean cosine on these images is positive


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    root = tmp_path_factory.mktemp("clip")
    write_clip_tokenizer(root / "tok")
    tokenizer = CLIPTokenizer(str(root / "tok" / "vocab.json"), str(root / "tok" / "merges.txt"), model_max_length=16)
    torch.manual_seed(CLIP_SEED)
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
            "max_position_embeddings": 16, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2, "image_size": 32, "patch_size": 8}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def generated(tmp_path_factory, run_dir):  # noqa: F811
    from typer.testing import CliRunner

    from aigc_cli.cli import app

    root = tmp_path_factory.mktemp("gen")
    cfg = root / "gen.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"out_dir": str(run_dir)}, "generate": {"images": {"num_inference_steps": 2, "batch_size": 2}}}))
    args = ["generate", str(cfg), "--num", "2", "--out", str(root / "out")] + [a for p in PROMPTS for a in ("--prompt", p)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return cfg, root / "out"


def _by_hand(clip_dir, folder) -> float:
    from transformers import CLIPModel, CLIPProcessor

    from aigc_cli.generation.images import read_png

    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    samples = json.loads((folder / "samples.json").read_text())
    scores = []
    for i, name in enumerate(samples["files"]):
        pixels = read_png(folder / name)
        image = np.repeat(pixels, 3, axis=0) if pixels.shape[0] == 1 else pixels
        inputs = processor(text=[samples["prompts"][i // samples["per_prompt"]]], images=[torch.from_numpy(image)], return_tensors="pt",
                           padding=True)
        with torch.no_grad():
            img = model.get_image_features(pixel_values=inputs["pixel_values"])
            txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        img = getattr(img, "pooler_output", img)
        txt = getattr(txt, "pooler_output", txt)
        scores.append(100 * torch.nn.functional.cosine_similarity(img, txt).item())
    return max(float(np.mean(scores)), 0.0)  # torchmetrics: the mean of 100·cos over the pairs, floored at 0


def test_clip_score_of_generated_images(cli, clip_dir, generated):
    cfg, folder = generated
    result = cli("eval", cfg, "eval.metrics=[clip_score]", f"eval.generations={folder}", f"eval.clip_model={clip_dir}", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    expected = _by_hand(clip_dir, folder)
    assert report["metrics"]["clip_score"] == pytest.approx(expected, abs=1e-3)
    assert 0.0 < expected <= 100.0  # (this tiny model's seed gives a positive score: the floor at 0 hides nothing)


def test_clip_score_without_a_clip_model_is_skipped_and_said(cli, generated):
    cfg, folder = generated
    result = cli("eval", cfg, "eval.metrics=[clip_score]", f"eval.generations={folder}", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert "clip_score" not in report["metrics"]
    assert "clip_score skipped" in result.stderr and "eval.clip_model" in result.stderr


def test_clip_score_needs_a_prompted_folder(cli, clip_dir, generated, tmp_path):
    cfg, _ = generated
    (tmp_path / "x.png").write_bytes(b"")
    result = cli("eval", cfg, "eval.metrics=[clip_score]", f"eval.generations={tmp_path}", f"eval.clip_model={clip_dir}")
    assert result.exit_code == 2 and "samples.json" in result.stderr
