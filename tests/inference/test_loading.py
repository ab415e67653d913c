"""One loader for every checkpoint: it knows its modality, tokenizer, device and precision."""

from __future__ import annotations

import pytest
import torch

from aigc_cli.errors import AigcError
from aigc_cli.inference.loading import in_memory_model, load_model
from tests.conftest import TINY_TEXT, json_out, tiny_config


def train(tmp_path, config) -> dict:
    from typer.testing import CliRunner

    from aigc_cli.cli import app

    runner = CliRunner()
    json_out(runner.invoke(app, ["prep", str(config), "--json", "-q"]))
    return json_out(runner.invoke(app, ["train", str(config), "--json", "-q"]))


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("text")
    (tmp / "corpus.txt").write_text(TINY_TEXT, encoding="utf-8")
    return tmp, train(tmp, tiny_config(tmp, tmp / "corpus.txt", train={"max_steps": 2, "eval_every": 2, "save_every": 0}))


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    from tests.cli.test_images import image_config

    tmp = tmp_path_factory.mktemp("image")
    return tmp, train(tmp, image_config(tmp, "vae", train={"max_steps": 2, "eval_every": 2}))


def test_a_text_checkpoint_loads_with_its_tokenizer(text_run):
    tmp, out = text_run
    loaded = load_model(tmp / "run", "cpu")  # a run directory stands for its latest checkpoint
    assert str(loaded.checkpoint) == out["checkpoint"] and loaded.backend_name == "gpt"
    assert loaded.modality == "text" and loaded.device == "cpu" and loaded.dtype == torch.float32
    assert not loaded.model.training
    assert loaded.tokenizer.id_to_token(loaded.eos_id) == "<|endoftext|>"
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("To be").ids) == "To be"


def test_an_image_checkpoint_loads_without_a_tokenizer(image_run):
    tmp, out = image_run
    loaded = load_model(out["checkpoint"], modality="image")
    assert loaded.modality == "image" and loaded.tokenizer is None and loaded.eos_id is None
    assert loaded.info["size"] == 8 and loaded.info["channels"] == 1 and not loaded.model.training


def test_a_checkpoint_of_the_other_modality_is_an_error(text_run, image_run):
    with pytest.raises(AigcError, match="holds a gpt text model, not an image model"):
        load_model(text_run[1]["checkpoint"], modality="image")
    with pytest.raises(AigcError, match="holds a vae image model, not a text model"):
        load_model(image_run[1]["checkpoint"], modality="text")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_an_explicit_cuda_without_a_gpu_is_an_error(text_run):
    with pytest.raises(AigcError, match="device=cuda but no CUDA GPU is visible"):
        load_model(text_run[1]["checkpoint"], "cuda")


def test_a_model_in_memory_is_described_like_a_loaded_one(text_run):
    tmp, out = text_run
    loaded = load_model(out["checkpoint"], "cpu")
    described = in_memory_model(tmp / "run", "gpt", loaded.model, "cpu", loaded.checkpoint)
    assert (described.modality, described.eos_id, described.dtype, described.backend) == \
        (loaded.modality, loaded.eos_id, loaded.dtype, loaded.backend)
    assert described.tokenizer.get_vocab() == loaded.tokenizer.get_vocab()


def test_decoding_stops_at_generation_config_end_ids(text_run, tmp_path):
    import json

    from aigc_cli.inference.loading import end_token_ids

    loaded = load_model(text_run[1]["checkpoint"], "cpu")
    assert loaded.stop_ids == (loaded.eos_id,)  # an aigc model trained on text: end-of-text alone
    for named, expected in [([7, 5], (0, 7, 5)), (9, (0, 9)), ([0, 3], (0, 3)), (None, (0,))]:
        (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": named}), encoding="utf-8")
        model = type("NoGenerationConfig", (torch.nn.Module,), {})()  # (so only the file names ids)
        assert end_token_ids(tmp_path, model, 0) == expected
    (tmp_path / "generation_config.json").write_text("{damaged", encoding="utf-8")
    assert end_token_ids(tmp_path, loaded.model, 0) == (0, *([] if loaded.eos_id == 0 else [loaded.eos_id]))
