"""GGUF export, checked with a real llama.cpp (llama-cpp-python): the same token ids as aigc's
tokenizer on ASCII, spaces, newlines, CJK, emoji and special tokens, and the same logits as
transformers on the same checkpoint, for GPT-2 and Llama with char and BPE tokenizers; and the
checkpoints it cannot represent refused with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import llama_cpp  # the dev extra installs it; without it this file fails, it is never skipped
import pytest

from aigc_cli.data.chat import CHAT_TEMPLATES
from aigc_cli.data.tokenization import build_char_tokenizer, copy_tokenizer_files, load_tokenizer, save_tokenizer, train_bpe_tokenizer
from aigc_cli.errors import AigcError
from aigc_cli.export import gguf as gguf_export
from tests.conftest import TINY_TEXT
from tests.tiny_pretrained import save_gpt2, save_llama

TEXTS = [
    "To be, or not to be, that is the question:",
    "  two leading spaces,   three inside, and a trailing one ",
    "lines\nand\n\nblank lines\n",
    "\ttabs\tand\r\nCRLF",
    "床前明月光，疑是地上霜。",
    "emoji 🙂 and unseen ones 🦙🚀, accents Ünïcödé",
    "unseen CJK 龍 and symbols ∑≠ ½",
    "<|endoftext|>text around<|endoftext|> an end-of-text",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "'s 've 'll numbers 12345 and 3.14",
    "a\nb \n c  \n\n  d",
]

# Random mixes of the same kinds of text, also where the two tokenizers' splitting could part
# (whitespace runs before letters, contractions, combining marks, flags, control characters).
PIECES = list("abcXYZ 019.,!?'\"-_\n\t\r") + ["  ", "   ", "\n\n", " \n", "'s", "'ll", "'S", "床", "龍", "🙂", "🦙", "👍🏽",
                                             "e\u0301", "\u00a0", "\u3000", "Ж", "١٢", "½", "<|im_end|>", "<|endoftext|>", "<|",
                                             "\u2028", "\x00", "\U0001F1EF\U0001F1F5", "한국어"]


def mixed_texts(n: int = 300) -> list[str]:
    import random

    rng = random.Random(0)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 25))) for _ in range(n)]


def checkpoint(tmp_path: Path, arch: str, kind: str, chat: bool = True) -> Path:
    """A tiny gpt-backend checkpoint as aigc writes it: aigc's tokenizer (+ ChatML tokens) and a model."""
    import torch

    directory = tmp_path / f"{arch}-{kind}"
    directory.mkdir()
    prepared = tmp_path / f"{arch}-{kind}-prepared"
    prepared.mkdir()
    tok = build_char_tokenizer(TINY_TEXT) if kind == "char" else train_bpe_tokenizer([TINY_TEXT], 400)
    save_tokenizer(tok, prepared)  # as `aigc prep` writes it
    if chat:  # as `aigc finetune` on conversations rewrites it: ChatML's tokens added, its template in the config
        from transformers import PreTrainedTokenizerFast

        from aigc_cli.data.chat_examples import prepare_chat_template

        tokenizer = PreTrainedTokenizerFast.from_pretrained(prepared)
        prepare_chat_template(tokenizer, "chatml")
        tokenizer.save_pretrained(prepared, save_jinja_files=False)
    copy_tokenizer_files(prepared, directory, model_max_length=64)  # as every checkpoint save does
    tok = load_tokenizer(directory)
    torch.manual_seed(0)  # save_gpt2 draws its weights from the global generator
    (save_gpt2 if arch == "gpt2" else save_llama)(directory, vocab_size=tok.get_vocab_size(), eos_id=0, **({"bos_id": 0} if arch == "llama" else {}))
    return directory


def aigc_ids(directory: Path, text: str) -> list[int]:
    return load_tokenizer(directory).encode(text, add_special_tokens=False).ids


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    made = {}

    def make(arch: str, kind: str):
        if (arch, kind) not in made:
            tmp = tmp_path_factory.mktemp(f"{arch}-{kind}")
            directory = checkpoint(tmp, arch, kind)
            made[arch, kind] = directory, gguf_export.export(directory, tmp / "out", None)
        return made[arch, kind]

    return make


CASES = [("gpt2", "char"), ("gpt2", "bpe"), ("llama", "char"), ("llama", "bpe")]


@pytest.mark.parametrize("arch,kind", CASES)
def test_llama_cpp_tokenizes_as_aigc(exported, arch, kind):
    directory, (gguf_path, _) = exported(arch, kind)
    vocab = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    for text in TEXTS + mixed_texts():
        ids = aigc_ids(directory, text)
        assert vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True) == ids, repr(text)
        assert vocab.detokenize(ids, special=True).decode("utf-8") == text, repr(text)


# f32: the exported weights alone (Llama agrees to ~1e-7; GPT-2 to ~2e-5, from llama.cpp's
# tanh-GELU, which looks its values up in a float16 table); default: llama.cpp's float16 KV cache.
@pytest.mark.parametrize("kv_cache", ["f32", "default"])
@pytest.mark.parametrize("arch,kind", CASES)
def test_llama_cpp_logits_match_transformers(exported, arch, kind, kv_cache):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    directory, (gguf_path, _) = exported(arch, kind)
    ids = aigc_ids(directory, "床前明月光 To be, or not 🙂\n<|im_end|>")[:30]
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if kv_cache == "f32" else {}
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=64, logits_all=True, verbose=False, n_threads=1, **cache)
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4
    if arch == "llama" and kv_cache == "f32":
        assert np.abs(got - expected).max() < 1e-6  # nothing approximated: the weights and RoPE order are exact
    assert np.abs(expected).max() > 1e-3  # logits that could differ


def test_chat_template_and_modelfile(exported):
    from gguf import GGUFReader

    _, (gguf_path, modelfile) = exported("llama", "char")
    reader = GGUFReader(str(gguf_path))
    field = reader.fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode("utf-8") == CHAT_TEMPLATES["chatml"]
    assert not list(gguf_path.parent.glob(".*.tmp"))
    text = modelfile.read_text(encoding="utf-8")
    assert "FROM ./model.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER num_ctx 64" in text
    assert "<|im_start|>{{ .Role }}" in text


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_loads_and_stays_close(tmp_path, dtype):
    import numpy as np

    directory = checkpoint(tmp_path, "llama", "bpe", chat=False)
    full = gguf_export.export(directory, tmp_path / "f32", "float32")[0]
    half = gguf_export.export(directory, tmp_path / "f16", dtype)[0]
    from gguf import GGMLQuantizationType, GGUFReader

    types = {t.name: t.tensor_type for t in GGUFReader(str(half)).tensors}
    assert types["token_embd.weight"] == GGMLQuantizationType[{"float16": "F16", "bfloat16": "BF16"}[dtype]]
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32  # llama.cpp keeps norms in float32
    ids = aigc_ids(directory, "To be, or not to be")
    logits = []
    for path in (full, half):
        llm = llama_cpp.Llama(str(path), n_ctx=32, logits_all=True, verbose=False, n_threads=1)
        llm.eval(ids)
        logits.append(np.asarray(llm.scores[: len(ids)]))
    assert np.abs(logits[0] - logits[1]).max() < 1e-2
    assert "No chat template" in (tmp_path / "f16" / "Modelfile").read_text(encoding="utf-8")


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_refusals(tmp_path):
    directory = checkpoint(tmp_path, "gpt2", "char", chat=False)

    def refused(match: str, dtype: str | None = None):
        with pytest.raises(AigcError, match=match) as info:
            gguf_export.export(directory, tmp_path / "out", dtype)
        assert info.value.exit_code == 2
        assert not (tmp_path / "out" / "model.gguf").exists()

    refused("q4_0", dtype="q4_0")
    _edit_json(directory / "config.json", activation_function="gelu")
    refused("activation is gelu")
    _edit_json(directory / "config.json", activation_function="gelu_new", architectures=["MistralForCausalLM"])
    refused("MistralForCausalLM")
    _edit_json(directory / "config.json", architectures=["GPT2LMHeadModel"])

    spec_path = directory / "tokenizer.json"
    original = spec_path.read_text(encoding="utf-8")
    spec = json.loads(original)
    spec["normalizer"] = {"type": "Lowercase"}
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    refused("normalizes text")
    spec = json.loads(original)
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    refused("pre-tokenizer")
    spec = json.loads(original)
    spec["model"]["vocab"]["\u2581"] = len(spec["model"]["vocab"])
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    refused("U\\+2581")
    spec_path.write_text(original, encoding="utf-8")
    assert gguf_export.export(directory, tmp_path / "out", None)[0].is_file()  # the untouched checkpoint exports


def test_refuses_a_tokenizer_larger_than_the_model(tmp_path):
    directory = checkpoint(tmp_path, "llama", "char", chat=False)
    save_llama(directory, vocab_size=100, eos_id=0)
    with pytest.raises(AigcError, match="embeddings"):
        gguf_export.export(directory, tmp_path / "out", None)


def test_embedding_rows_beyond_the_tokenizer_become_unused_tokens(tmp_path):
    directory = checkpoint(tmp_path, "llama", "char", chat=False)
    n_tokens = json.loads((directory / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    save_llama(directory, vocab_size=n_tokens + 5, eos_id=0)
    gguf_path = gguf_export.export(directory, tmp_path / "out", None)[0]
    vocab = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    assert vocab.n_vocab() == n_tokens + 5
    for text in TEXTS:
        assert vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True) == aigc_ids(directory, text)


def test_refuses_a_lora_adapter(tmp_path):
    directory = checkpoint(tmp_path, "llama", "char", chat=False)
    (directory / "adapter_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(AigcError, match="LoRA adapter") as info:
        gguf_export.export(directory, tmp_path / "out", None)
    assert info.value.exit_code == 2


def test_a_run_of_aigc_train_exports_exactly(cli, tmp_path, corpus):
    """The checkpoint `aigc prep` + `aigc train` really write (a Llama on the char tokenizer)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from tests.conftest import json_out, tiny_config

    cfg = tiny_config(tmp_path, corpus, model={"architecture": "llama", "block_size": 32},
                      train={"max_steps": 2, "eval_every": 1000, "save_every": 0, "sample_every_eval": False})
    assert cli("prep", cfg).exit_code == 0
    directory = Path(json_out(cli("train", cfg, "--json"))["checkpoint"])

    gguf_path, _ = gguf_export.export(directory, tmp_path / "gguf", None)
    vocab = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    for text in TEXTS:
        assert vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True) == aigc_ids(directory, text), text
    ids = aigc_ids(directory, "床前明月光 To be, or not 🙂\n")
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)(torch.tensor([ids])).logits[0].numpy()
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=32, logits_all=True, verbose=False, n_threads=1)
    llm.eval(ids)
    assert np.abs(np.asarray(llm.scores[: len(ids)]) - expected).max() < 1e-4


def test_refuses_bpe_and_llama_variants_it_cannot_represent(tmp_path):
    directory = checkpoint(tmp_path, "llama", "bpe", chat=False)
    spec_path, config_path = directory / "tokenizer.json", directory / "config.json"
    original = spec_path.read_text(encoding="utf-8")
    for change, match in (({"add_prefix_space": True}, "pre-tokenizer"), ({"use_regex": False}, "pre-tokenizer")):
        spec = json.loads(original)
        spec["pre_tokenizer"].update(change)
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        with pytest.raises(AigcError, match=match):
            gguf_export.export(directory, tmp_path / "out", None)
    spec = json.loads(original)
    spec["model"]["ignore_merges"] = True
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(AigcError, match="ignore_merges"):
        gguf_export.export(directory, tmp_path / "out", None)
    spec_path.write_text(original, encoding="utf-8")
    _edit_json(config_path, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(AigcError, match="linear RoPE") as info:
        gguf_export.export(directory, tmp_path / "out", None)
    assert info.value.exit_code == 2
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
