"""Tokenizers: built once by `aigc prep`, saved as a Hugging Face tokenizer directory.

Both kinds we train are `tokenizers` objects, so a checkpoint directory loads with
`AutoTokenizer.from_pretrained` unchanged and round-trips any Unicode text:
- char: one token per character seen in the corpus; any other character falls back to its
  UTF-8 bytes (`<0x..>` tokens), so decode(encode(x)) == x even for unseen text.
- bpe: byte-level BPE (GPT-2 style) trained on the corpus with `tokenizers.BpeTrainer`.
A `pretrained` tokenizer is an existing model's (continued pretraining): its files are copied
as they are, so the prepared data and every checkpoint made from it read text as that model does.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from aigc_cli.errors import AigcError

EOS_TOKEN = "<|endoftext|>"
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
MIN_BPE_VOCAB = 257  # 256 byte symbols + end-of-text


def build_char_tokenizer(chars: Iterable[str]) -> Tokenizer:
    """EOS, the 256 byte-fallback tokens, then the corpus characters in code-point order."""
    vocab = {EOS_TOKEN: 0}
    for token in BYTE_TOKENS:
        vocab[token] = len(vocab)
    for ch in sorted(set(chars)):
        if ch not in vocab:
            vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token=None))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([EOS_TOKEN])
    return tok


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    if vocab_size < MIN_BPE_VOCAB:
        raise AigcError(f"data.tokenizer.vocab_size={vocab_size} is too small for byte-level BPE",
                        f"use at least {MIN_BPE_VOCAB} (256 bytes + end-of-text); 4000-32000 is typical")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(directory: str | Path) -> Tokenizer:
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise AigcError(f"no tokenizer.json in {directory}", "point at a prepared-data or checkpoint directory (run `aigc prep` first)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 — tokenizers raises its own Exception for a truncated or foreign file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AigcError(f"{path} is damaged or not a tokenizers file ({first})",
                        "copy the tokenizer.json of the prepared data or checkpoint again, or prepare the data again") from None


def eos_id(tok: Tokenizer) -> int:
    """The end-of-text id: ours, or the usual names in a pretrained tokenizer."""
    for name in (EOS_TOKEN, "</s>", "<eos>", "<|im_end|>"):
        token_id = tok.token_to_id(name)
        if token_id is not None:
            return token_id
    raise AigcError("the tokenizer has no end-of-text token", "use a tokenizer with <|endoftext|> or </s>")


def save_tokenizer(tok: Tokenizer, directory: str | Path, model_max_length: int | None = None) -> None:
    """tokenizer.json + tokenizer_config.json: what AutoTokenizer needs, and nothing else."""
    directory = Path(directory)
    tok.save(str(directory / "tokenizer.json"))
    eos = tok.id_to_token(eos_id(tok))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "bos_token": eos,
              "clean_up_tokenization_spaces": False}
    if model_max_length:
        config["model_max_length"] = model_max_length
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "tokenizer.model")


# Written by transformers 5's save_pretrained but meaningless elsewhere: where the files were
# loaded from (is_local, local_files_only) and 5.x's own class and backend names.
SESSION_KEYS = ("is_local", "local_files_only", "backend", "name_or_path", "_commit_hash")
PORTABLE_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def portable_tokenizer_config(config: dict) -> dict:
    """tokenizer_config.json as base checkpoints write it, so transformers 4.x (which many serving
    stacks still pin) loads it too: `PreTrainedTokenizerFast`, no session-local keys."""
    config = {k: v for k, v in config.items() if k not in SESSION_KEYS}
    cls = config.get("tokenizer_class") or "PreTrainedTokenizerFast"
    config["tokenizer_class"] = PORTABLE_CLASSES.get(cls, cls)
    return config


def copy_tokenizer_files(src: str | Path, dst: str | Path, model_max_length: int | None = None) -> None:
    """Put the tokenizer next to a checkpoint (files copied as they are), recording the context length."""
    src, dst = Path(src), Path(dst)
    if not (src / "tokenizer.json").is_file():
        raise AigcError(f"no tokenizer.json in {src}", "point at a prepared-data or checkpoint directory (run `aigc prep` first)")
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    config_path = dst / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    config = portable_tokenizer_config(config)
    if model_max_length:
        config["model_max_length"] = model_max_length
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- pretrained
@dataclass
class PretrainedTokenizer:
    source: str  # the directory (absolute) or hub id it came from
    directory: Path  # holds its tokenizer.json and the files beside it
    tokenizer: Tokenizer
    eos_id: int
    sha256: str  # of tokenizer.json: what the prepared data's fingerprint and meta.json record


@contextmanager
def pretrained_tokenizer(ref: str, key: str) -> Iterator[PretrainedTokenizer]:
    """The tokenizer of a model directory, a checkpoint, run or prepared-data directory, or a hub id.
    One without a tokenizer.json (a sentencepiece tokenizer.model, GPT-2's vocab.json and
    merges.txt) or from the hub is loaded by transformers and saved once as tokenizer.json into a
    temporary directory, which lives as long as this context."""
    from aigc_cli.data.records import sha256_file
    from aigc_cli.runs.checkpoints import hub_id, latest_good_checkpoint

    path = Path(ref).expanduser()
    if path.exists():
        path = (latest_good_checkpoint(path) or path).resolve()  # a run directory means its latest intact checkpoint
        if not path.is_dir():
            raise AigcError(f"{key} {ref} is not a directory", "point it at a model, checkpoint or prepared-data directory")
    source = str(path) if path.exists() else hub_id(ref, key)
    if path.exists() and not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")):
        raise AigcError(f"{key} {path} holds no tokenizer (no tokenizer.json, tokenizer.model or vocab.json)",
                        "point it at a Hugging Face model, checkpoint or prepared-data directory")
    with tempfile.TemporaryDirectory(prefix="aigc-tokenizer-") as converted:
        directory = path if (path / "tokenizer.json").is_file() else _saved_by_transformers(source, key, Path(converted))
        tok = load_tokenizer(directory)
        model_dir = path if path.is_dir() else None
        yield PretrainedTokenizer(source, directory, tok, configured_eos_id(directory, tok, model_dir),
                                  sha256_file(directory / "tokenizer.json"))


def _saved_by_transformers(source: str, key: str, out: Path) -> Path:
    from transformers import AutoTokenizer

    try:
        # Never remote code: a tokenizer defined by a repository's own Python is not one aigc can copy.
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 — a missing file, a missing converter dependency, a network error
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AigcError(f"cannot load the tokenizer of {key} {source}: {first}",
                        "point it at a directory holding tokenizer.json (a Hugging Face model, checkpoint or prepared-data directory)") from None
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise AigcError(f"the tokenizer of {key} {source} ({type(tokenizer).__name__}) has no tokenizers (tokenizer.json) form",
                        "convert it once (AutoTokenizer.from_pretrained(...).save_pretrained(DIR) with a fast tokenizer) and point at DIR")
    tokenizer.save_pretrained(out)
    return out


def configured_eos_id(directory: Path, tok: Tokenizer, model_dir: Path | None = None) -> int:
    """The end-of-text id a pretrained tokenizer declares: tokenizer_config.json's or
    special_tokens_map.json's eos_token, else the model's config.json eos_token_id, else the usual names."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            token = json.loads((directory / name).read_text(encoding="utf-8")).get("eos_token")
        except (OSError, ValueError, AttributeError):
            continue
        token = token.get("content") if isinstance(token, dict) else token
        token_id = tok.token_to_id(token) if isinstance(token, str) else None
        if token_id is not None:
            return token_id
    try:
        stated = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("eos_token_id") if model_dir else None
    except (OSError, ValueError, AttributeError):
        stated = None
    stated = stated[0] if isinstance(stated, list) and stated else stated
    if isinstance(stated, int) and tok.id_to_token(stated) is not None:
        return stated
    return eos_id(tok)


def copy_pretrained_tokenizer(pretrained: PretrainedTokenizer, dst: Path) -> None:
    """Its files into a prepared-data directory, tokenizer_config.json naming the end-of-text token
    prep used (so generate and eval stop where the documents end)."""
    copy_tokenizer_files(pretrained.directory, dst)
    config_path = dst / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["eos_token"] = pretrained.tokenizer.id_to_token(pretrained.eos_id)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
