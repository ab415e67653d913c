"""One contract, every registered backend, no exclusions (diffusers' SchedulerCommonTest shape).

Each family is built tiny, then: its module implements exactly what its spec declares → every
part's loss is finite and backpropagates → save → load gives identical outputs → sampling works
through the inference layer → `aigc info` describes the checkpoint. A new family is covered
as it is registered: built from its section's defaults unless TINY names a smaller one.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from aigc_cli.backends import (BACKENDS, DDPMModelConfig, DecodesPadded, GANModelConfig, GPTModelConfig, LatentDiffusionModelConfig,
                               Reconstructs, RNNModelConfig, SamplesFromPrompts, StartsFromPretrained, UpdatesAfterStep, VAEModelConfig,
                               get_backend, protocols, spec)
from aigc_cli.runs.checkpoints import write_checkpoint
from aigc_cli.config import GenerateConfig, ImageGenerateConfig, LoraConfig, TrainConfig
from aigc_cli.data.tokenization import build_char_tokenizer, save_tokenizer
from aigc_cli.training.optimizer import make_optimizer

TEXT = "abcdefgh \n"
IMAGE_DATA = {"size": 8, "channels": 1, "classes": ["0", "1"]}
TINY = {  # sections smaller than their defaults, to keep the test fast
    "gpt": GPTModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16),
    "rnn": RNNModelConfig(n_layer=1, n_embd=8, hidden_size=16, block_size=16),
    "ddpm": DDPMModelConfig(block_out_channels=[8, 8], attention_levels=[1], num_train_timesteps=10),
    "vae": VAEModelConfig(channels=[4, 8], latent_dim=4),
    "gan": GANModelConfig(latent_dim=8, generator_channels=4, discriminator_channels=4),
    "latent-diffusion": LatentDiffusionModelConfig(autoencoder_channels=[4, 8], latent_channels=2, unet_channels=[8, 16], norm_num_groups=2,
                                                   attention_head_dim=4, text_width=16, text_heads=2, text_layers=1, num_train_timesteps=10),
}


def _text_meta(tokenizer) -> dict:
    return {"vocab_size": tokenizer.get_vocab_size(), "eos_id": 0}


def _adapted_gpt(tmp_path: Path, tokenizer):
    """lora is made by `aigc finetune`: adapters on a base model, which must stay on disk for loading."""
    gpt = get_backend("gpt")
    gpt.save(gpt.build(TINY["gpt"], _text_meta(tokenizer)), tmp_path / "base")
    return get_backend("lora").add_adapters(gpt.load(tmp_path / "base", "cpu"), LoraConfig(r=2, dropout=0.0))


def _adapted_pipeline(tmp_path: Path, tokenizer):
    """text-to-image is made by `aigc finetune` from a Stable-Diffusion-style pipeline directory."""
    from tests.tiny_text_to_image import tiny_text_to_image_pipeline

    base = tiny_text_to_image_pipeline(tmp_path / "pipeline")
    return get_backend("text-to-image").start(base, "lora", LoraConfig(r=2, dropout=0.0), IMAGE_DATA)


ADAPTED = {"lora": _adapted_gpt, "text-to-image": _adapted_pipeline}  # families without a `model:` section: made from another model


def _build(name: str, tmp_path: Path, tokenizer):
    entry = spec(name)
    if entry.config is None:
        return ADAPTED[name](tmp_path, tokenizer)
    meta = {"image": IMAGE_DATA, "labels": {**_text_meta(tokenizer), "pad_id": 0, "labels": ["no", "yes"]}}.get(entry.modality) or _text_meta(tokenizer)
    return get_backend(name).build(TINY.get(name) or entry.config(), meta)


@pytest.fixture
def tokenizer(tmp_path):
    tok = build_char_tokenizer(TEXT)
    (tmp_path / "tokenizer").mkdir()
    save_tokenizer(tok, tmp_path / "tokenizer")
    return tok


def _batch(name: str, tokenizer, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if spec(name).modality == "image":
        images = torch.rand(4, IMAGE_DATA["channels"], IMAGE_DATA["size"], IMAGE_DATA["size"], generator=g) * 2 - 1
        if spec(name).prompted:  # captions as token ids, not class labels
            return images, torch.randint(0, 50, (4, 16), generator=g)
        return images, torch.randint(0, len(IMAGE_DATA["classes"]), (4,), generator=g)
    ids = torch.randint(0, tokenizer.get_vocab_size(), (4, 17), generator=g)
    if spec(name).modality == "labels":  # ((ids, attention mask), label ids); the last row padded
        mask = torch.ones_like(ids)
        mask[3, 9:] = 0
        if name == "tagger":  # a tag per token, -100 on padding
            return (ids, mask), torch.randint(0, 2, (4, 17), generator=g).masked_fill(mask == 0, -100)
        return (ids, mask), torch.tensor([0, 1, 1, 0])
    return ids[:, :-1], ids[:, 1:]


def _trained_step(name: str, model, tokenizer) -> None:
    """One optimizer step per part (and the EMA update where declared), so saved weights are not
    the initial ones: a LoRA adapter starts as a no-op, an EMA as a copy."""
    backend, declared = get_backend(name), spec(name)
    model.train()
    for part in declared.parts:
        opt = make_optimizer(backend.parameters(model, part), TrainConfig(learning_rate=1e-2), "cpu")
        opt.zero_grad()
        backend.loss(model, _batch(name, tokenizer), part).backward()
        opt.step()
    if declared.ema:
        backend.after_step(model)
    model.eval()


def _checkpoint(name: str, tmp_path: Path, tokenizer) -> tuple[object, Path]:
    model = _build(name, tmp_path, tokenizer)
    _trained_step(name, model, tokenizer)
    tokenizer_dir = tmp_path / "tokenizer" if spec(name).modality != "image" else None
    path = write_checkpoint(tmp_path / "run", 1, name, get_backend(name), model, {"step": 1}, tokenizer_dir)
    return model, path


def test_every_registered_backend_can_be_built():
    assert set(ADAPTED) == {name for name, entry in BACKENDS.items() if entry.config is None}
    assert set(TINY) <= set(BACKENDS)


@pytest.mark.parametrize("name", BACKENDS)
def test_module_implements_exactly_what_its_spec_declares(name):
    module, declared = get_backend(name), spec(name)
    wanted = protocols(declared)
    for protocol in wanted:
        for member, stub in vars(protocol).items():
            if inspect.isfunction(stub) and not member.startswith("_"):
                assert member in vars(module), f"{name} lacks {protocol.__name__}.{member}"
                expected = list(inspect.signature(stub).parameters)[1:]  # without self
                got = inspect.signature(vars(module)[member]).parameters
                assert list(got)[:len(expected)] == expected, f"{name}.{member}{inspect.signature(vars(module)[member])}"
                assert all(p.default is not p.empty for p in list(got.values())[len(expected):]), f"{name}.{member}: extra arguments need defaults"
    for ability in (UpdatesAfterStep, Reconstructs, DecodesPadded, StartsFromPretrained, SamplesFromPrompts):
        assert isinstance(module, ability) == (ability in wanted), f"{name}: {ability.__name__} implemented but not declared, or declared but missing"
    if declared.config is not None:
        assert declared.config.model_fields["backend"].default == name, "the section's backend tag is the registry name"


@pytest.mark.parametrize("name", BACKENDS)
def test_loss_is_finite_and_backpropagates_for_every_part(name, tmp_path, tokenizer):
    backend = get_backend(name)
    torch.manual_seed(0)
    model = _build(name, tmp_path, tokenizer).train()
    for part in spec(name).parts:
        model.zero_grad(set_to_none=True)
        loss = backend.loss(model, _batch(name, tokenizer), part)
        assert loss.dim() == 0 and torch.isfinite(loss), f"{part}: {loss}"
        loss.backward()
        params = list(backend.parameters(model, part))
        assert params and all(p.grad is not None and torch.isfinite(p.grad).all() for p in params), f"{part}: parameters without a gradient"
        assert any(p.grad.abs().sum() > 0 for p in params), f"{part}: every gradient is zero"


@pytest.mark.parametrize("name", BACKENDS)
def test_save_then_load_gives_identical_outputs(name, tmp_path, tokenizer):
    from aigc_cli.runs.checkpoints import load_weights

    backend, declared = get_backend(name), spec(name)
    torch.manual_seed(0)
    model, path = _checkpoint(name, tmp_path, tokenizer)
    restored = load_weights(backend, path, "cpu").eval()
    with torch.no_grad():
        if declared.modality == "labels":
            (ids, mask), _ = _batch(name, tokenizer)
            torch.testing.assert_close(backend.scores(restored, ids, mask), backend.scores(model, ids, mask))
        elif declared.modality == "text":
            ids = _batch(name, tokenizer)[0][:2, :8]
            torch.testing.assert_close(backend.next_token_logits(restored, ids, None)[0], backend.next_token_logits(model, ids, None)[0])
            if declared.padded_decoding:  # (a classifier's outputs are compared below)
                mask = torch.ones_like(ids)
                mask[1, :3] = 0
                torch.testing.assert_close(backend.padded_next_token_logits(restored, ids, mask, None)[0],
                                           backend.padded_next_token_logits(model, ids, mask, None)[0])
        else:
            assert backend.image_info(restored) == backend.image_info(model)
            gc = ImageGenerateConfig(num_inference_steps=2)

            def images(m):
                generators = [torch.Generator().manual_seed(i) for i in range(2)]
                noise = torch.stack([torch.randn(backend.latent_shape(m), generator=g) for g in generators])
                return backend.sample(m, noise, None, gc, generators)

            torch.testing.assert_close(images(restored), images(model))
            if declared.reconstructs:
                real = _batch(name, tokenizer)[0]
                torch.testing.assert_close(backend.reconstruct(restored, real), backend.reconstruct(model, real))


@pytest.mark.parametrize("name", BACKENDS)
def test_sampling_works_through_the_inference_layer(name, tmp_path, tokenizer):
    from aigc_cli.inference.loading import load_model

    torch.manual_seed(0)
    _, path = _checkpoint(name, tmp_path, tokenizer)
    if spec(name).modality == "labels":  # a classifier predicts through generation/classification.py
        import json

        from aigc_cli.generation.classification import load_classifier, predict_scores

        config = json.loads((path / "tokenizer_config.json").read_text())
        (path / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "<|endoftext|>"}))
        if name == "tagger":
            from aigc_cli.generation.classification import predict_tags

            tags = predict_tags(load_classifier(path, "cpu"), [["ab", "c"], ["d"], ["abc", "d", "a"]], batch_size=2)
            assert [len(t) for t in tags] == [2, 1, 3] and all(tag in ("no", "yes") for row in tags for tag in row)
            return
        scores = predict_scores(load_classifier(path, "cpu"), ["ab", "abc d", "c"], batch_size=2)
        if name == "reward":  # one scalar each
            assert len(scores) == 3 and all(len(s) == 1 for s in scores)
            return
        assert len(scores) == 3 and all(len(s) == 2 and abs(sum(s) - 1) < 1e-5 for s in scores)
        return
    loaded = load_model(path, "cpu")
    assert loaded.modality == spec(name).modality
    if loaded.modality == "text":
        from aigc_cli.inference.text_decoding import sample_texts

        # Two prompts: a backend with padded decoding samples them as one batch.
        results = sample_texts(loaded, ["ab", "c"], GenerateConfig(max_new_tokens=3), [1, 2])
        assert len(results) == 2 and all(isinstance(c.text, str) and c.new_tokens <= 3 for c in results)
    else:
        from aigc_cli.inference.image_sampling import sample_images

        images, _ = sample_images(loaded, 3, 0, ImageGenerateConfig(num_inference_steps=2, batch_size=2))
        assert images.shape == (3, IMAGE_DATA["channels"], IMAGE_DATA["size"], IMAGE_DATA["size"]) and images.dtype.name == "uint8"


@pytest.mark.parametrize("name", BACKENDS)
def test_info_describes_the_saved_checkpoint(name, tmp_path, tokenizer):
    from aigc_cli.runs.inspection import describe

    backend = get_backend(name)
    torch.manual_seed(0)
    model, path = _checkpoint(name, tmp_path, tokenizer)
    info = describe(path)
    assert (info["kind"], info["backend"], info["step"]) == ("checkpoint", name, 1)
    trainable = sum(p.numel() for part in spec(name).parts for p in backend.parameters(model, part))
    assert info["parameters"] >= trainable > 0  # the saved tensors: the trained ones (and buffers such as batch-norm statistics)
    assert any(value is not None for value in info["architecture"].values())
    if spec(name).modality == "text":
        assert info["tokenizer"] == {"kind": "char", "vocab_size": tokenizer.get_vocab_size()}
