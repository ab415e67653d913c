"""Tiny model directories as other tools write them (not `aigc train`): a tokenizers-built BPE
tokenizer saved as PreTrainedTokenizerFast, and a Llama or GPT-2 saved with save_pretrained."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def train_bpe(texts: list[str], vocab_size: int = 320, special_tokens=("<s>", "</s>", "<|endoftext|>")) -> Tokenizer:
    """Byte-level BPE with Llama's <s> and </s> and, to make the end-of-text choice matter, GPT-2's <|endoftext|>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, directory: Path, bos: str = "<s>", eos: str = "</s>") -> None:
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos).save_pretrained(directory)


def save_llama(directory: Path, vocab_size: int, eos_id: int, bos_id: int = 0, context: int = 64, seed: int = 0) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=context, bos_token_id=bos_id, eos_token_id=eos_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)


def save_gpt2(directory: Path, vocab_size: int, eos_id: int, context: int = 64) -> None:
    from transformers import AutoModelForCausalLM, GPT2Config

    config = GPT2Config(vocab_size=vocab_size, n_positions=context, n_embd=16, n_layer=1, n_head=2, bos_token_id=eos_id, eos_token_id=eos_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
