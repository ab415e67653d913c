"""`aigc generate` for a classifier: texts in, one JSONL row per text out (label and probabilities), a manifest beside it.

Texts come from --prompt, generate.prompts or --prompts-file (a text file, one per line, or
CSV/JSONL/Parquet records whose data.jsonl_field is the text). They are scored
generate.batch_size at a time, longest first so a batch pads little. Each row's key is the
checkpoint's identity and the text: a re-run predicts only texts the manifest does not hold yet
(--force: all), and one whose predictions are all there loads no model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from aigc_cli.config import ExperimentConfig
from aigc_cli.errors import AigcError
from aigc_cli.generation.manifest import OutputManifest, item_key
from aigc_cli.runs.atomic_files import write_text_atomic
from aigc_cli.runs.checkpoints import checkpoint_identity, resolve_checkpoint
from aigc_cli.runs.locks import exclusive_lock


@dataclass
class Classifier:
    """A classifier checkpoint in memory: the model, its tokenizer, labels and task."""

    model: object
    tokenizer: object
    labels: list[str]
    task: str
    thresholds: list[float] | None
    max_length: int
    device: str


def load_classifier(checkpoint: str | Path, device: str = "auto") -> Classifier:
    """A classifier's or a tagger's checkpoint (task "tagging")."""
    from transformers import AutoTokenizer

    from aigc_cli.backends import backend_of_checkpoint, get_backend
    from aigc_cli.backends.classifier import TASKS
    from aigc_cli.devices import pick_device
    from aigc_cli.runs.checkpoints import load_weights

    device = pick_device(device)
    checkpoint = Path(checkpoint)
    name = backend_of_checkpoint(checkpoint)
    backend = get_backend(name)
    model = load_weights(backend, checkpoint, device).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    config = model.config
    labels = [config.id2label[i] for i in range(config.num_labels)]
    task = {"tagger": "tagging", "reward": "reward"}.get(name) or TASKS[config.problem_type]
    if name == "reward":
        tokenizer.truncation_side = "left"  # as in training: the reply stays
    return Classifier(model, tokenizer, labels, task, getattr(config, "aigc_thresholds", None),
                      backend.context_length(model) or 512, device)


def predict_tags(clf: Classifier, sentences: list[list[str]], batch_size: int) -> list[list[str]]:
    """Per sentence: a tag per word, read at each word's first sub-word token (words cut off by
    max_length get O)."""
    import torch

    from aigc_cli.backends.tagger import scores
    from aigc_cli.data.labelled import padded_with_mask
    from aigc_cli.data.tagged import IGNORE_INDEX, align

    ids, words = align(clf.tokenizer, sentences, None, clf.max_length)
    out: list[list[str]] = [["O"] * len(s) for s in sentences]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    pad = clf.tokenizer.pad_token_id
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch, mask = padded_with_mask([ids[i] for i in rows], pad)
            best = scores(clf.model, batch.to(clf.device), mask.to(clf.device)).argmax(-1).cpu().tolist()
            for j, i in enumerate(rows):
                for position, word in enumerate(words[i]):
                    if word != IGNORE_INDEX:
                        out[i][word] = clf.labels[best[j][position]]
    return out


def tagging_row(text: str, words: list[str], tags: list[str]) -> dict:
    from aigc_cli.data.tagged import entities

    spans = [{"type": kind, "start": first, "end": last + 1, "text": " ".join(words[first:last + 1])} for kind, first, last in entities(tags)]
    return {"text": text, "tokens": words, "tags": tags, "entities": spans}


def predict_scores(clf: Classifier, texts: list[str], batch_size: int) -> list[list[float]]:
    """Per text: the label probabilities (single/multi_label) or [value] (regression), in `texts`' order."""
    import torch

    from aigc_cli.backends.classifier import scores
    from aigc_cli.data.labelled import padded_with_mask

    ids = clf.tokenizer(texts, truncation=True, max_length=clf.max_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
    out: list[list[float] | None] = [None] * len(texts)
    pad = clf.tokenizer.pad_token_id
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch, mask = padded_with_mask([ids[i] for i in rows], pad)
            result = scores(clf.model, batch.to(clf.device), mask.to(clf.device)).float().cpu()
            for j, i in enumerate(rows):
                out[i] = result[j].reshape(-1).tolist()
    return out  # type: ignore[return-value]


def prediction_row(text: str, values: list[float], labels: list[str], task: str, thresholds: list[float] | None) -> dict:
    if task in ("regression", "reward"):
        return {"text": text, "score": values[0]}
    probabilities = {name: p for name, p in zip(labels, values)}
    if task == "multi_label":
        limits = thresholds or [0.5] * len(labels)
        return {"text": text, "labels": [n for n, p, t in zip(labels, values, limits) if p >= t], "probabilities": probabilities}
    best = max(range(len(values)), key=values.__getitem__)
    return {"text": text, "label": labels[best], "score": values[best], "probabilities": probabilities}


def read_texts(path: str, field: str) -> list[str]:
    """A prompts file: one text per line (.txt), or records whose `field` is the text."""
    from aigc_cli.data.records import read_lines, read_records

    file = Path(path)
    if file.suffix.lower() in (".txt", ".gz") and not file.name.endswith((".jsonl.gz", ".csv.gz", ".json.gz", ".tsv.gz")):
        texts = [line for _, line in read_lines(file)]
    else:
        texts = []
        for where, record in read_records(file):
            if not isinstance(record.get(field), str):
                raise AigcError(f"{where}: no text field '{field}'", "set data.jsonl_field to the column holding the text")
            texts.append(record[field])
    if not texts:
        raise AigcError(f"{path} holds no texts", "put one text per line, or give records with a text column")
    return texts


@dataclass
class PredictionResult:
    out: Path
    manifest: Path
    predicted: int
    reused: int

    def to_json(self) -> dict:
        return {"out": str(self.out), "manifest": str(self.manifest), "predicted": self.predicted, "reused": self.reused}

    def summary_lines(self) -> list[str]:
        return [f"predictions: {self.out} ({self.predicted} predicted, {self.reused} from the manifest)"]


def generate_predictions(cfg: ExperimentConfig, checkpoint: Path, texts: list[str] | None, log=lambda _: None,
                         force: bool = False) -> PredictionResult:
    gc = cfg.generate
    texts = texts if texts is not None else [p for p in gc.prompts if p]
    if not texts:
        raise AigcError("no texts to classify", "pass --prompt TEXT or --prompts-file FILE")
    checkpoint = resolve_checkpoint(checkpoint)
    out = Path(gc.out or Path(cfg.train.out_dir) / "predictions.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out, "predictions file"):
        identity = checkpoint_identity(checkpoint)
        keys = [item_key(checkpoint=identity, text=t, kind="classify") for t in texts]
        with OutputManifest(out.with_name(out.name + ".manifest.jsonl"), force) as manifest:
            missing = [i for i, k in enumerate(keys) if k not in manifest.done]
            if missing:
                clf = load_classifier(checkpoint, cfg.train.device)
                todo = sorted(set(missing), key=missing.index)
                log(f"classifying {len(todo)} text(s) with {checkpoint}")
                if clf.task == "tagging":  # words split on whitespace, a tag each
                    words = [texts[i].split() for i in todo]
                    rows = [tagging_row(texts[i], w, t) for i, w, t in zip(todo, words, predict_tags(clf, words, gc.batch_size))]
                else:
                    values = predict_scores(clf, [texts[i] for i in todo], gc.batch_size)
                    rows = [prediction_row(texts[i], v, clf.labels, clf.task, clf.thresholds) for i, v in zip(todo, values)]
                finished = {keys[i]: {"key": keys[i], "row": row} for i, row in zip(todo, rows) if keys[i] not in manifest.done}
                manifest.add_all(list(finished.values()))  # one fsync, not one per text
            manifest.finish(keys)
            rows = [manifest.done[k]["row"] for k in keys]
        write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return PredictionResult(out, out.with_name(out.name + ".manifest.jsonl"), len(set(missing)), len(texts) - len(missing))
