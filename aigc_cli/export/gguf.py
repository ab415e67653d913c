"""`aigc export --format gguf`: a checkpoint as one GGUF file for llama.cpp and Ollama.

Written with the `gguf` package's GGUFWriter, not llama.cpp's convert_hf_to_gguf.py, because that
converter gets aigc's checkpoints wrong: it reads a character vocabulary as SentencePiece and then
mis-tokenizes every space, it needs GPT-2's `n_ctx` (transformers 5 no longer writes it), and it
refuses byte-level BPE vocabularies it has no hash for. Here each tokenizer is mapped onto the
llama.cpp tokenizer that reproduces it exactly, and anything else is refused (exit 2):

- char (aigc's `build_char_tokenizer`: one token per character, UTF-8 byte fallback, no
  merges, no pre-tokenizer) → llama.cpp's SentencePiece tokenizer ("llama") with no space
  prefix: with no multi-character tokens there is nothing to merge, so each character is its
  token, or its `<0xXX>` bytes where it has none. The space token is stored as "▁", the
  character that tokenizer writes for a space.
- byte-level BPE (aigc's `train_bpe_tokenizer`, GPT-2 style: ByteLevel pre-tokenizer with
  GPT-2's split, no prefix space) → llama.cpp's BPE tokenizer ("gpt2") with pre-tokenizer
  "gpt-2", the same vocabulary and merges in rank order.

Added tokens (end-of-text, chat tokens) become CONTROL tokens when special, USER_DEFINED
otherwise, so llama.cpp splits them out of the text as `tokenizers` does. Weights: GPT-2
(GPT2LMHeadModel) and Llama (LlamaForCausalLM), in float32 (default), float16 or bfloat16;
norms and biases stay float32, as llama.cpp needs. The chat template goes into
`tokenizer.chat_template`, and an Ollama `Modelfile` is written beside the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from aigc_cli.errors import AigcError

GGUF_NAME = "model.gguf"
MODELFILE_NAME = "Modelfile"
DEFAULT_DTYPE = "fp32"  # what --json reports when --dtype is not given
DTYPES = {"float32": "f32", "f32": "f32", "fp32": "f32", "float16": "f16", "f16": "f16", "fp16": "f16",
          "bfloat16": "bf16", "bf16": "bf16"}
ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama"}
SPM_SPACE = "\u2581"  # "▁": SentencePiece's (and llama.cpp's "llama" tokenizer's) space
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # llama.cpp's GPT-2 uses tanh-GELU
# Go templates for Ollama of aigc's built-in chat templates (aigc_cli.data.chat.CHAT_TEMPLATES);
# EOS_TOKEN stands for the tokenizer's end-of-text token.
OLLAMA_TEMPLATES = {
    "chatml": '{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n',
    "llama3": ('{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>'
               '{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n'),
    "zephyr": '{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}EOS_TOKEN\n{{ end }}<|assistant|>\n',
}


def export(checkpoint_dir: Path, out_dir: Path, dtype: str | None) -> list[Path]:
    """Write `out_dir/model.gguf` and `out_dir/Modelfile` from a gpt-backend checkpoint; return both paths."""
    import gguf

    from aigc_cli.runs.atomic_files import fsync_directory, naming_the_path, write_text_atomic

    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    kind = _gguf_dtype(dtype)
    config = _model_config(checkpoint_dir)
    arch = ARCHITECTURES[config["architectures"][0]]
    vocab = _vocabulary(checkpoint_dir)
    tensors = _tensors(checkpoint_dir, config, arch)
    n_vocab = tensors["token_embd.weight"].shape[0]
    if len(vocab.tokens) > n_vocab:
        raise AigcError(f"the tokenizer of {checkpoint_dir} has {len(vocab.tokens)} tokens but the model only {n_vocab} embeddings",
                        "export the checkpoint together with the tokenizer it was trained with")
    vocab.pad_to(n_vocab)
    chat_template = _chat_template(checkpoint_dir)
    modelfile_text = _modelfile(chat_template, vocab, config, arch)

    out_dir.mkdir(parents=True, exist_ok=True)
    gguf_path = out_dir / GGUF_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{GGUF_NAME}.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(checkpoint_dir.resolve().name)
        _write_hyperparameters(writer, config, arch, n_vocab, kind)
        vocab.write(writer)
        if chat_template:
            writer.add_chat_template(chat_template)
        for name, array in tensors.items():
            _add_tensor(writer, name, array, kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, gguf_path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # a full disk names model.gguf, not our temporary
            raise naming_the_path(exc, gguf_path, tmp) from exc
        raise
    fsync_directory(out_dir)
    modelfile = out_dir / MODELFILE_NAME
    write_text_atomic(modelfile, modelfile_text)
    return [gguf_path, modelfile]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _gguf_dtype(dtype: str | None) -> str:
    if dtype is None:
        return "f32"
    kind = DTYPES.get(dtype.lower())
    if kind is None:
        raise AigcError(f"--dtype {dtype} is not a GGUF export type aigc writes",
                        "use float32 (the default: logits as the checkpoint's), float16 or bfloat16; quantize further with llama.cpp's llama-quantize")
    return kind


# ----------------------------------------------------------------------------- model
def _model_config(checkpoint_dir: Path) -> dict:
    path = checkpoint_dir / "config.json"
    if (checkpoint_dir / "adapter_config.json").is_file():
        raise AigcError(f"{checkpoint_dir} is a LoRA adapter, not a whole model",
                        "merge it into its base first (aigc export --format safetensors), then export that directory as GGUF")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AigcError(f"no config.json in {checkpoint_dir}",
                        "GGUF export takes a checkpoint of the gpt backend (a Hugging Face model directory)") from None
    except ValueError as exc:
        raise AigcError(f"{path} is not valid JSON ({exc})", "copy the checkpoint again") from None
    archs = config.get("architectures") or []
    if len(archs) != 1 or archs[0] not in ARCHITECTURES:
        raise AigcError(f"{checkpoint_dir} is a {'/'.join(archs) or config.get('model_type', 'unknown')} model, which aigc cannot write as GGUF",
                        f"GGUF export supports {' and '.join(ARCHITECTURES)} (the gpt backend's gpt2 and llama architectures); "
                        "use --format onnx or safetensors for others")
    if config.get("quantization_config"):
        raise AigcError(f"{checkpoint_dir} holds quantized weights ({config['quantization_config'].get('quant_method', '?')})",
                        "export the full-precision checkpoint (merge a QLoRA run with --format safetensors first)")
    (_check_gpt2 if ARCHITECTURES[archs[0]] == "gpt2" else _check_llama)(config, checkpoint_dir)
    return config


def _refuse(checkpoint_dir: Path, what: str) -> None:
    raise AigcError(f"{checkpoint_dir}: {what}, which llama.cpp's model cannot represent, so no GGUF file was written",
                    "export it with --format onnx or safetensors instead")


def _check_gpt2(config: dict, checkpoint_dir: Path) -> None:
    activation = config.get("activation_function", "gelu_new")
    if activation not in GPT2_ACTIVATIONS:
        _refuse(checkpoint_dir, f"its GPT-2 activation is {activation} (llama.cpp computes tanh-GELU, gelu_new)")
    for key, wanted in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False)):
        if config.get(key, wanted) != wanted:
            _refuse(checkpoint_dir, f"its config sets {key}={config[key]}")


def _check_llama(config: dict, checkpoint_dir: Path) -> None:
    if config.get("hidden_act", "silu") != "silu":
        _refuse(checkpoint_dir, f"its Llama activation is {config['hidden_act']}, not silu")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            _refuse(checkpoint_dir, f"its config sets {key}=true")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        _refuse(checkpoint_dir, f"it uses {rope_type} RoPE scaling (aigc exports plain RoPE only)")


def _rope_theta(config: dict) -> float:
    params = config.get("rope_parameters") or {}
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def _write_hyperparameters(writer: Any, config: dict, arch: str, n_vocab: int, kind: str) -> None:
    import gguf

    writer.add_vocab_size(n_vocab)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16}[kind])
    if arch == "gpt2":
        n_embd = config["n_embd"]
        writer.add_context_length(config["n_positions"])  # transformers 5 writes no n_ctx
        writer.add_embedding_length(n_embd)
        writer.add_feed_forward_length(config.get("n_inner") or 4 * n_embd)
        writer.add_block_count(config["n_layer"])
        writer.add_head_count(config["n_head"])
        writer.add_head_count_kv(config["n_head"])
        writer.add_layer_norm_eps(config.get("layer_norm_epsilon", 1e-5))
        return
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _load_state(checkpoint_dir: Path) -> dict:
    from safetensors.torch import load_file

    index = checkpoint_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (checkpoint_dir / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise AigcError(f"no model.safetensors in {checkpoint_dir}",
                        "point at a checkpoint directory of the gpt backend (a LoRA run: merge it first with --format safetensors)")
    state = {}
    for shard in shards:
        state.update(load_file(str(checkpoint_dir / shard)))
    return state


def _tensors(checkpoint_dir: Path, config: dict, arch: str) -> dict:
    """GGUF tensor name → float32 numpy array in llama.cpp's layout, in file order."""
    import gguf
    import torch

    n_layer = config["n_layer"] if arch == "gpt2" else config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2 if arch == "gpt2" else gguf.MODEL_ARCH.LLAMA, n_layer)
    out = {}
    for hf_name, tensor in _load_state(checkpoint_dir).items():
        if hf_name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue  # buffers (the causal mask, RoPE frequencies), not weights
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            _refuse(checkpoint_dir, f"it holds the tensor {hf_name}, which has no place in llama.cpp's {arch} model")
        tensor = tensor.to(torch.float32)
        if arch == "gpt2" and hf_name.endswith(".weight") and any(k in hf_name for k in (".c_attn.", ".c_proj.", ".c_fc.")):
            tensor = tensor.T  # GPT-2's Conv1D keeps weights as (in, out)
        if arch == "llama" and hf_name.endswith((".q_proj.weight", ".k_proj.weight")):
            heads = config["num_attention_heads"] if ".q_proj." in hf_name else (config.get("num_key_value_heads") or config["num_attention_heads"])
            tensor = _permute_for_rope(tensor, heads)
        out[name] = tensor.contiguous().numpy()
    if "token_embd.weight" not in out:
        _refuse(checkpoint_dir, "it has no token embedding")
    if "output.weight" in out and (out["output.weight"] == out["token_embd.weight"]).all():
        del out["output.weight"]  # tied: llama.cpp reuses token_embd when output is absent
    return out


def _permute_for_rope(weight, n_head: int):
    """HF Llama rotates the two halves of each head (rotate_half); llama.cpp's "llama" RoPE
    rotates adjacent pairs: reorder the rows of q/k so both compute the same thing (as
    convert_hf_to_gguf.py's LlamaModel.permute does)."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _add_tensor(writer: Any, name: str, array, kind: str) -> None:
    import gguf
    import numpy as np

    if array.ndim < 2 or kind == "f32":
        writer.add_tensor(name, array.astype(np.float32))
    elif kind == "f16":
        writer.add_tensor(name, array.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.BF16), raw_dtype=gguf.GGMLQuantizationType.BF16)


# ----------------------------------------------------------------------------- tokenizer
class Vocabulary:
    """The tokenizer as llama.cpp reads it: tokens, their types (and scores), merges, special ids."""

    def __init__(self, model: str, pre: str | None, tokens: list[str], types: list[int], merges: list[str],
                 eos_id: int, bos_id: int | None):
        self.model, self.pre, self.tokens, self.types, self.merges = model, pre, tokens, types, merges
        self.eos_id, self.bos_id = eos_id, bos_id

    def pad_to(self, n_vocab: int) -> None:
        """Rows of the embedding no token uses (a vocabulary rounded up) as UNUSED tokens."""
        import gguf

        for i in range(len(self.tokens), n_vocab):
            self.tokens.append(f"[PAD{i}]")
            self.types.append(gguf.TokenType.UNUSED)

    def write(self, writer: Any) -> None:
        writer.add_tokenizer_model(self.model)
        if self.pre:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.model == "llama":
            # Scores rank SentencePiece merges; a character vocabulary has none to rank.
            writer.add_token_scores([0.0] * len(self.tokens))
            writer.add_add_space_prefix(False)
            writer.add_remove_extra_whitespaces(False)
        if self.merges:
            writer.add_token_merges(self.merges)
        writer.add_eos_token_id(self.eos_id)
        if self.bos_id is not None:
            writer.add_bos_token_id(self.bos_id)
        # aigc encodes text with add_special_tokens=False: no BOS or EOS is put around a prompt.
        writer.add_add_bos_token(False)
        writer.add_add_eos_token(False)

    def text(self, token_id: int) -> str:
        return self.tokens[token_id].replace(SPM_SPACE, " ") if self.model == "llama" else self.tokens[token_id]


def _vocabulary(checkpoint_dir: Path) -> Vocabulary:
    from aigc_cli.data.tokenization import configured_eos_id, load_tokenizer

    path = checkpoint_dir / "tokenizer.json"
    tok = load_tokenizer(checkpoint_dir)  # refuses a missing or damaged file
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        _refuse_tokenizer(path, f"its model is {model.get('type')}, not BPE")
    if spec.get("normalizer") is not None:
        _refuse_tokenizer(path, f"it normalizes text ({spec['normalizer'].get('type')})")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            _refuse_tokenizer(path, f"its BPE sets {key}={model[key]!r}")
    added = {t["id"]: t for t in spec.get("added_tokens") or []}
    for token in added.values():
        for key in ("lstrip", "rstrip", "single_word"):
            if token.get(key):
                _refuse_tokenizer(path, f"its added token {token['content']!r} sets {key} (llama.cpp would split text around it differently)")
    vocab = dict(model.get("vocab") or {})
    for token_id, token in added.items():
        vocab.setdefault(token["content"], token_id)
    by_id = {i: t for t, i in vocab.items()}
    if sorted(by_id) != list(range(len(by_id))) or len(by_id) != len(vocab):
        _refuse_tokenizer(path, "its token ids are not one each of 0..N-1")
    tokens = [by_id[i] for i in range(len(by_id))]
    pre = spec.get("pre_tokenizer")
    if pre is None and not model.get("merges") and model.get("byte_fallback"):
        shaped = _char_vocabulary(path, tokens, added)
    elif _is_gpt2_byte_level(pre):
        shaped = _byte_level_vocabulary(path, tokens, added, model)
    else:
        _refuse_tokenizer(path, f"its pre-tokenizer ({(pre or {}).get('type', 'none')}) and BPE model are neither aigc's character "
                                "tokenizer nor byte-level BPE without a prefix space")
    bos = _config_id(checkpoint_dir, "bos_token_id")
    return Vocabulary(*shaped, eos_id=configured_eos_id(checkpoint_dir, tok, checkpoint_dir),
                      bos_id=bos if bos is not None and bos < len(tokens) else None)


def _is_gpt2_byte_level(pre: Any) -> bool:
    """ByteLevel with GPT-2's split and no prefix space: what llama.cpp's "gpt-2" pre-tokenizer does."""
    return (isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("add_prefix_space") is False
            and pre.get("use_regex", True) is True)


def _refuse_tokenizer(path: Path, what: str) -> None:
    raise AigcError(f"{path}: {what}; no llama.cpp tokenizer reads text exactly as it does, so no GGUF file was written",
                    "GGUF export supports aigc's char and bpe tokenizers (data.tokenizer.kind); use --format onnx or safetensors")


def _config_id(checkpoint_dir: Path, key: str) -> int | None:
    value = json.loads((checkpoint_dir / "config.json").read_text(encoding="utf-8")).get(key)
    value = value[0] if isinstance(value, list) and value else value
    return value if isinstance(value, int) else None


def _added_type(token: dict) -> int:
    import gguf

    return gguf.TokenType.CONTROL if token.get("special") else gguf.TokenType.USER_DEFINED


def _char_vocabulary(path: Path, tokens: list[str], added: dict) -> tuple:
    """A character vocabulary as llama.cpp's SentencePiece tokenizer: with every ordinary token a
    single character, that tokenizer merges nothing, and a character without a token falls back
    to its UTF-8 bytes, as `tokenizers`' byte_fallback does."""
    import gguf

    byte_tokens = {f"<0x{b:02X}>" for b in range(256)}
    if not byte_tokens <= set(tokens):
        _refuse_tokenizer(path, "its byte fallback lacks some of the 256 <0xXX> tokens")
    if SPM_SPACE in tokens:
        _refuse_tokenizer(path, f"it has a token for {SPM_SPACE!r} (U+2581), the character llama.cpp's tokenizer writes for a space")
    types, out = [], []
    for i, token in enumerate(tokens):
        if i in added:
            types.append(_added_type(added[i]))
            out.append(token)
        elif token in byte_tokens:
            types.append(gguf.TokenType.BYTE)
            out.append(token)
        elif len(token) == 1:
            types.append(gguf.TokenType.NORMAL)
            out.append(SPM_SPACE if token == " " else token)
        else:
            _refuse_tokenizer(path, f"its ordinary token {token!r} is longer than one character, but it has no merges")
    return "llama", None, out, types, []


def _byte_level_vocabulary(path: Path, tokens: list[str], added: dict, model: dict) -> tuple:
    """Byte-level BPE as llama.cpp's "gpt2" tokenizer: GPT-2's split, then the merges by rank."""
    import gguf

    if model.get("byte_fallback"):
        _refuse_tokenizer(path, "it is byte-level BPE with byte_fallback")
    if model.get("ignore_merges"):
        _refuse_tokenizer(path, "its BPE sets ignore_merges (whole words looked up before merging)")
    alphabet = set(_byte_level_alphabet())
    ordinary = [t for i, t in enumerate(tokens) if i not in added]
    if not alphabet <= set(ordinary):
        _refuse_tokenizer(path, "it lacks some of the 256 byte-level tokens")
    if any(not set(t) <= alphabet for t in ordinary):
        _refuse_tokenizer(path, "it has ordinary tokens outside the byte-level alphabet")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    if any(len(m.split(" ")) != 2 for m in merges):
        _refuse_tokenizer(path, "one of its merges has a space inside a part, which GGUF's 'a b' merges cannot hold")
    types = [_added_type(added[i]) if i in added else gguf.TokenType.NORMAL for i in range(len(tokens))]
    return "gpt2", "gpt-2", list(tokens), types, merges


def _byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-ins of the 256 bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


# ----------------------------------------------------------------------------- chat, Ollama
def _chat_template(checkpoint_dir: Path) -> str | None:
    """The checkpoint's template: chat_template.jinja (transformers 5) or tokenizer_config.json's."""
    jinja = checkpoint_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        config = json.loads((checkpoint_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) and template else None


def _modelfile(chat_template: str | None, vocab: Vocabulary, config: dict, arch: str) -> str:
    """An Ollama Modelfile: the file, its context, where replies stop and, for aigc's built-in
    chat templates, the same template in Ollama's Go syntax."""
    from aigc_cli.data.chat import CHAT_TEMPLATES, CHAT_TEMPLATE_TOKENS

    context = config["n_positions"] if arch == "gpt2" else config["max_position_embeddings"]
    eos = vocab.text(vocab.eos_id)
    lines = [f"# Written by `aigc export --format gguf`. Run: ollama create NAME -f {MODELFILE_NAME}",
             f"FROM ./{GGUF_NAME}", f"PARAMETER num_ctx {context}", f"PARAMETER stop {json.dumps(eos)}"]
    builtin = next((name for name, source in CHAT_TEMPLATES.items() if source == chat_template), None)
    if builtin:
        if builtin != "zephyr":
            lines.append(f"PARAMETER stop {json.dumps(CHAT_TEMPLATE_TOKENS[builtin][-1])}")
        lines.append(f'TEMPLATE """{OLLAMA_TEMPLATES[builtin].replace("EOS_TOKEN", eos)}"""')
    elif chat_template:
        lines.append("# The chat template is in the GGUF metadata (tokenizer.chat_template); Ollama reads it from there.")
    else:
        lines += ["# No chat template: prompts are continued as plain text.", 'TEMPLATE """{{ .Prompt }}"""']
    return "\n".join(lines) + "\n"
