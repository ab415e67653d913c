"""Tiny models built in memory (random weights, the char tokenizer of the test corpus), as the
inference layer takes them: no training, no checkpoint on disk."""

from __future__ import annotations

import pytest

from tests.conftest import TINY_TEXT


def text_model(backend: str = "gpt", architecture: str = "gpt2", context: int = 32):
    import torch

    from aigc_cli.data.tokenization import build_char_tokenizer
    from aigc_cli.inference.loading import in_memory_model

    tokenizer = build_char_tokenizer(TINY_TEXT)
    torch.manual_seed(0)
    if backend == "rnn":
        from aigc_cli.backends import RNNModelConfig, get_backend

        section = RNNModelConfig(n_layer=1, n_embd=16, hidden_size=32, block_size=context)
        model = get_backend("rnn").build(section, {"vocab_size": tokenizer.get_vocab_size(), "eos_id": 0})
    elif architecture == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=context, n_embd=32, n_layer=2, n_head=2))
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=context))
    return in_memory_model("(in memory)", backend, model.eval(), "cpu", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def gpt2():
    return text_model()
