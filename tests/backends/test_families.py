"""One contract, every registered backend (diffusers' SchedulerCommonTest pattern)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aigc_cli.backends import BACKENDS, get_backend
from aigc_cli.config import GPTModelConfig, RNNModelConfig
from aigc_cli.training.optimizer import make_optimizer
from aigc_cli.config import TrainConfig

VOCAB = 50
MODEL_CONFIGS = {
    "gpt2": ("gpt", GPTModelConfig(architecture="gpt2", n_layer=1, n_head=2, n_embd=32, block_size=16)),
    "llama": ("gpt", GPTModelConfig(architecture="llama", n_layer=1, n_head=4, n_kv_head=2, n_embd=32, block_size=16)),
    "lstm": ("rnn", RNNModelConfig(cell="lstm", n_layer=2, n_embd=16, hidden_size=32, block_size=16)),
    "gru": ("rnn", RNNModelConfig(cell="gru", n_layer=1, n_embd=16, hidden_size=32, block_size=16)),
    "rnn": ("rnn", RNNModelConfig(cell="rnn", n_layer=1, n_embd=16, hidden_size=32, block_size=16)),
}


def test_every_registered_backend_is_covered():
    # lora cannot be built from scratch (it adapts a base model): tests/training/test_finetune.py covers it;
    # text-to-image adapts a diffusers pipeline: tests/training/test_text_to_image_finetune.py; latent-diffusion
    # trains in two phases: tests/training/test_latent_diffusion.py; classifier, tagger
    # and reward: tests/training/test_classification.py, test_tagging.py, test_reward.py; the image backends run through the same loop in tests/cli/test_images.py; bigram (a lookup table
    # that learns at its own pace) and every other backend in tests/backends/test_contract.py.
    assert {backend for backend, _ in MODEL_CONFIGS.values()} == set(BACKENDS) - {"lora", "text-to-image", "latent-diffusion", "ddpm", "vae", "gan", "bigram", "classifier", "tagger", "reward"}


def _batch(seed=0):
    # A learnable pattern: each token is the previous one plus one.
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, VOCAB, (8, 1), generator=g)
    seq = (starts + torch.arange(17)) % VOCAB
    return seq[:, :-1], seq[:, 1:]


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_loss_goes_down(name):
    backend_name, cfg = MODEL_CONFIGS[name]
    backend = get_backend(backend_name)
    torch.manual_seed(0)
    model = backend.build(cfg, {"vocab_size": VOCAB, "eos_id": 0})
    opt = make_optimizer(backend.parameters(model, "model"), TrainConfig(learning_rate=1e-2, weight_decay=0.0), "cpu")
    losses = []
    for step in range(30):
        loss = backend.loss(model, _batch(step), "model")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_save_load_round_trip_and_incremental_logits(name, tmp_path: Path):
    backend_name, cfg = MODEL_CONFIGS[name]
    backend = get_backend(backend_name)
    model = backend.build(cfg, {"vocab_size": VOCAB, "eos_id": 0}).eval()
    backend.save(model, tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    restored = backend.load(tmp_path, "cpu").eval()
    ids = _batch()[0][:1, :10]
    with torch.no_grad():
        full, _ = backend.next_token_logits(restored, ids, None)
        original, _ = backend.next_token_logits(model, ids, None)
        # Cached decoding gives the same logits as re-reading the whole sequence.
        _, state = backend.next_token_logits(restored, ids[:, :9], None)
        cached, _ = backend.next_token_logits(restored, ids, state)
    torch.testing.assert_close(full, original)
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)
    assert full.shape == (1, VOCAB)


def test_gpt2_uses_the_fused_gelu_and_loads_old_checkpoints_onto_it(tmp_path: Path):
    from transformers.activations import GELUTanh

    backend = get_backend("gpt")
    _, cfg = MODEL_CONFIGS["gpt2"]
    torch.manual_seed(0)
    model = backend.build(cfg, {"vocab_size": VOCAB, "eos_id": 0}).eval()
    assert model.config.activation_function == "gelu_pytorch_tanh"
    assert any(isinstance(m, GELUTanh) for m in model.modules())
    # A checkpoint written before the switch (GPT-2's stock "gelu_new") is the same function:
    # it loads onto the fused kernel and gives the logits its own activation gives.
    model.config.activation_function = "gelu_new"
    backend.save(model, tmp_path)
    from transformers import AutoModelForCausalLM

    stock = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert stock.config.activation_function == "gelu_new"
    restored = backend.load(tmp_path, "cpu").eval()
    assert restored.config.activation_function == "gelu_pytorch_tanh"
    ids = _batch()[0][:2]
    with torch.no_grad():
        torch.testing.assert_close(restored(input_ids=ids).logits, stock(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_fused_activation_leaves_remote_code_configs_alone():
    from transformers import GPT2Config

    from aigc_cli.backends.gpt import use_fused_activation

    assert use_fused_activation(GPT2Config(activation_function="gelu_new")).activation_function == "gelu_pytorch_tanh"
    assert use_fused_activation(GPT2Config(activation_function="relu")).activation_function == "relu"
    # A repo's own modelling code (auto_map) may not look the name up in transformers' ACT2FN.
    remote = GPT2Config(activation_function="gelu_new", auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    assert use_fused_activation(remote).activation_function == "gelu_new"
