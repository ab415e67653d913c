"""Tiny checkpoints to export, saved as aigc saves them (random weights: an export must reproduce
whatever the model computes): gpt2 and llama runs, and a LoRA run on the gpt2 one whose adapter
is not zero, so merging it changes the logits."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serve.conftest import write_text_checkpoint


@pytest.fixture(scope="session")
def gpt2_run(tmp_path_factory) -> Path:
    return write_text_checkpoint(tmp_path_factory.mktemp("gpt2-model"), chat=False, architecture="gpt2")


@pytest.fixture(scope="session")
def llama_run(tmp_path_factory) -> Path:
    """A Llama with grouped-query attention (4 heads sharing 2 key/value heads) and tied
    embeddings, as `aigc train` builds one with model.n_kv_head."""
    import torch

    from aigc_cli.backends import GPTModelConfig, get_backend
    from aigc_cli.data.tokenization import build_char_tokenizer, eos_id, save_tokenizer
    from aigc_cli.runs.checkpoints import write_checkpoint
    from tests.conftest import TINY_TEXT

    root = tmp_path_factory.mktemp("llama-model")
    tokenizer = build_char_tokenizer(TINY_TEXT)
    save_tokenizer(tokenizer, root)
    torch.manual_seed(0)
    section = GPTModelConfig(architecture="llama", n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=96)
    model = get_backend("gpt").build(section, {"vocab_size": tokenizer.get_vocab_size(), "eos_id": eos_id(tokenizer)})
    write_checkpoint(root / "run", 1, "gpt", get_backend("gpt"), model.eval(), {"step": 1}, root)
    return root / "run"


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, gpt2_run) -> Path:
    import torch

    from aigc_cli.backends import get_backend
    from aigc_cli.backends.lora import add_adapters
    from aigc_cli.config import LoraConfig
    from aigc_cli.runs.checkpoints import latest_good_checkpoint, write_checkpoint

    base = latest_good_checkpoint(gpt2_run)
    model = add_adapters(get_backend("gpt").load(base, "cpu"), LoraConfig(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # peft starts B at zero: an adapter that would change nothing
    run = tmp_path_factory.mktemp("lora-model") / "run"
    write_checkpoint(run, 1, "lora", get_backend("lora"), model, {"step": 1}, base)
    return run
