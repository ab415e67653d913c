"""`aigc train` for a classifier (model.backend classifier): labelled records into the one loop.

No `aigc prep`: the records are read from data.source (text in data.jsonl_field, label in
data.label_field), a seeded data.val_fraction held out (data.seed), the tokenizer made once into
<run_dir>/tokenizer (aigc's char or bpe tokenizer trained on the training texts, or
model.init_from's own), and the texts encoded with it as transformers would: the checkpoint's
tokenizer is what pipeline("text-classification") then uses. Everything else is the loop's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from aigc_cli.backends import get_backend
from aigc_cli.config import ExperimentConfig, require_data
from aigc_cli.data import labelled
from aigc_cli.errors import AigcError
from aigc_cli.runs.atomic_files import staging_dir
from aigc_cli.runs.checkpoints import load_weights, resolve_base
from aigc_cli.training.recipe import TrainingJob

LABELS_FILE = "labels.json"


@dataclass
class ClassificationData:
    tokenizer: object  # a transformers tokenizer
    labels: list[str]
    train: labelled.EncodedTexts
    val: labelled.EncodedTexts
    class_weights: list[float] | None


def make_tokenizer(cfg: ExperimentConfig, texts: list[str], tokenizer_dir: Path) -> None:
    """<run_dir>/tokenizer, once: model.init_from's tokenizer, or aigc's char/bpe one trained on
    `texts`, which puts end-of-text first in every sequence (the [CLS] position the head reads)."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    from aigc_cli.data import tokenization

    mc, data = cfg.model, require_data(cfg)
    with staging_dir(tokenizer_dir, replace=True) as tmp:
        if mc.init_from:
            ref = resolve_base(mc.init_from, "model.init_from")
            try:
                tok = AutoTokenizer.from_pretrained(ref)
            except (OSError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise AigcError(f"cannot load the tokenizer of model.init_from {ref}: {first}",
                                "pass a model directory holding its tokenizer (offline: a local directory, not a hub id)") from None
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token or tok.unk_token
            tok.save_pretrained(tmp)
            return
        if data.tokenizer.kind == "pretrained":
            raise AigcError("data.tokenizer.kind=pretrained for a classifier: its tokenizer is model.init_from's", "set model.init_from, or use kind char or bpe")
        tok = (tokenization.build_char_tokenizer("".join(texts)) if data.tokenizer.kind == "char"
               else tokenization.train_bpe_tokenizer(texts, data.tokenizer.vocab_size))
        eos = tokenization.EOS_TOKEN
        tok.post_processor = processors.TemplateProcessing(single=f"{eos} $A", pair=f"{eos} $A {eos} $B", special_tokens=[(eos, tok.token_to_id(eos))])
        tokenization.save_tokenizer(tok, tmp, mc.max_length)
        config_path = tmp / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["pad_token"] = eos
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def load_records(cfg: ExperimentConfig, path: str | None = None) -> list[labelled.LabelledText]:
    data = require_data(cfg)
    return labelled.read_labelled(path or data.source, data.jsonl_field, data.label_field, cfg.model.task)


def split_records(cfg: ExperimentConfig) -> tuple[list, list]:
    """data.source's records as (train, val): the same split for train and eval."""
    data = require_data(cfg)
    return labelled.held_out(load_records(cfg), data.val_fraction, data.seed)


def prepare(cfg: ExperimentConfig, tokenizer_dir: Path) -> ClassificationData:
    from transformers import AutoTokenizer

    mc = cfg.model
    train, val = split_records(cfg)
    if not (tokenizer_dir / "tokenizer.json").is_file() and not (tokenizer_dir / "tokenizer_config.json").is_file():
        make_tokenizer(cfg, [r.text for r in train], tokenizer_dir)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    names = labelled.label_names(train, mc.task, mc.labels)
    encoded = []
    for records in (train, val):
        ids = labelled.label_ids(records, names, mc.task)
        encoded.append(labelled.EncodedTexts(labelled.encode_texts(tok, [r.text for r in records], mc.max_length), ids,
                                             tok.pad_token_id, mc.task))
    weights = (labelled.class_weights(encoded[0].labels, len(names), mc.task)
               if mc.class_weights == "balanced" and mc.task != "regression" else None)
    return ClassificationData(tok, names, encoded[0], encoded[1], weights)


def model_maker(cfg: ExperimentConfig, backend, meta: dict):
    """A labels backend's make_model: LoRA on model.init_from (its adapter when resumed), the resumed
    weights, model.init_from's pretrained model, or a new one built from the sizes."""
    mc = cfg.model

    def make_model(previous: Path | None, device: str) -> torch.nn.Module:
        if mc.method == "lora":
            base = backend.pretrained(resolve_base(mc.init_from, "model.init_from"), mc, meta, device)
            return backend.load_adapter(base, previous) if previous else backend.add_adapters(base, cfg.finetune.lora)
        if previous is not None:
            return load_weights(backend, previous, device)
        if mc.init_from:
            return backend.pretrained(resolve_base(mc.init_from, "model.init_from"), mc, meta, device)
        return backend.build(mc, meta).to(device)

    return make_model


def classification_job(cfg: ExperimentConfig) -> TrainingJob:
    mc = cfg.model
    run_dir = Path(cfg.train.out_dir)
    tokenizer_dir = run_dir / "tokenizer"
    data = prepare(cfg, tokenizer_dir)
    backend = get_backend(mc.backend)
    meta = {"vocab_size": len(data.tokenizer), "pad_id": data.tokenizer.pad_token_id, "labels": data.labels,
            "class_weights": data.class_weights}

    make_model = model_maker(cfg, backend, meta)
    provenance = {"data_source": str(require_data(cfg).source), "labels": data.labels, "train_records": len(data.train),
                  "val_records": len(data.val)}
    if mc.init_from:
        provenance["init_from"] = mc.init_from
    return TrainingJob(mc.backend, backend, make_model, data.train, data.val, mc.max_length, tokenizer_dir, provenance=provenance)


# ----------------------------------------------------------------------------- tagger
def split_sentences(cfg: ExperimentConfig, path: str | None = None) -> tuple[list, list]:
    """data.source's tagged sentences as (train, val), or all of `path` as val."""
    from aigc_cli.data.tagged import read_tagged

    data = require_data(cfg)
    if path is not None:
        return [], read_tagged(path, data.tokens_field, data.tags_field)
    return labelled.held_out(read_tagged(data.source, data.tokens_field, data.tags_field), data.val_fraction, data.seed)


def tagging_job(cfg: ExperimentConfig) -> TrainingJob:
    from transformers import AutoTokenizer

    from aigc_cli.data.tagged import TaggedBatches, align, tag_names

    mc = cfg.model
    tokenizer_dir = Path(cfg.train.out_dir) / "tokenizer"
    train, val = split_sentences(cfg)
    if not (tokenizer_dir / "tokenizer_config.json").is_file():
        make_tokenizer(cfg, [" ".join(s.words) for s in train], tokenizer_dir)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    names = tag_names(train, mc.labels)
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({t for s in val for t in s.tags} - set(index))
    if unknown:
        raise AigcError(f"the validation sentences hold tags the training ones do not: {unknown[:5]}", "list every tag in model.labels")
    batches = [TaggedBatches(*align(tok, [s.words for s in part], [[index[t] for t in s.tags] for s in part], mc.max_length), tok.pad_token_id)
               for part in (train, val)]
    backend = get_backend(mc.backend)
    weights = (labelled.class_weights([index[t] for s in train for t in s.tags], len(names), "single_label")
               if mc.class_weights == "balanced" else None)
    meta = {"vocab_size": len(tok), "pad_id": tok.pad_token_id, "labels": names, "class_weights": weights}

    make_model = model_maker(cfg, backend, meta)
    provenance = {"data_source": str(require_data(cfg).source), "labels": names, "train_sentences": len(train), "val_sentences": len(val)}
    return TrainingJob(mc.backend, backend, make_model, batches[0], batches[1], mc.max_length, tokenizer_dir, provenance=provenance)


def label_job(cfg: ExperimentConfig) -> TrainingJob:
    """The job of a `labels` backend: a classifier's, a tagger's or a reward model's."""
    jobs = {"tagger": tagging_job, "reward": reward_job, "classifier": classification_job}
    return jobs[cfg.model.backend](cfg)


# ----------------------------------------------------------------------------- reward model
def split_pairs(cfg: ExperimentConfig, path: str | None = None) -> tuple[list, list]:
    """data.source's preference pairs as (train, val), or all of `path` as val."""
    from aigc_cli.data.chat_formats import read_preference_pairs

    data = require_data(cfg)
    if path is not None:
        return [], read_preference_pairs(path, cfg.finetune.columns)
    return labelled.held_out(read_preference_pairs(data.source, cfg.finetune.columns), data.val_fraction, data.seed)


def reward_tokenizer(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.truncation_side = "left"  # a long prompt loses its start, never the reply
    return tok


def encode_pairs(tok, pairs: list, max_length: int) -> labelled.PreferenceTexts:
    texts = [labelled.pair_texts(p) for p in pairs]
    return labelled.PreferenceTexts(labelled.encode_texts(tok, [c for c, _ in texts], max_length),
                                    labelled.encode_texts(tok, [r for _, r in texts], max_length), tok.pad_token_id)


def reward_job(cfg: ExperimentConfig) -> TrainingJob:
    mc = cfg.model
    tokenizer_dir = Path(cfg.train.out_dir) / "tokenizer"
    train, val = split_pairs(cfg)
    if not (tokenizer_dir / "tokenizer_config.json").is_file():
        make_tokenizer(cfg, [t for p in train for t in labelled.pair_texts(p)], tokenizer_dir)
    tok = reward_tokenizer(tokenizer_dir)
    backend = get_backend(mc.backend)
    meta = {"vocab_size": len(tok), "pad_id": tok.pad_token_id}

    make_model = model_maker(cfg, backend, meta)
    provenance = {"data_source": str(require_data(cfg).source), "train_pairs": len(train), "val_pairs": len(val)}
    return TrainingJob(mc.backend, backend, make_model, encode_pairs(tok, train, mc.max_length), encode_pairs(tok, val, mc.max_length),
                       mc.max_length, tokenizer_dir, provenance=provenance)
