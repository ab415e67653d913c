"""`aigc eval`: every metric in eval.metrics, one report (JSON + Markdown table), quality gates.

- loss / perplexity of a checkpoint on a prepared split. Deterministic: the split is cut into
  consecutive non-overlapping windows of the model's context length, every token counted once.
- text metrics of predictions (the JSONL of `aigc generate`, any JSONL, or text lines) against
  references, or of the predictions alone (text_metrics.py), streamed in chunks.
- image metrics (images.py).
Scoring text files needs neither a config nor torch: `aigc eval --predictions F --references R`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

from aigc_cli.config import IMAGE_BACKENDS, LABEL_BACKENDS, MODEL_METRICS, REFERENCE_METRICS, TEXT_METRICS, EvalConfig, ExperimentConfig, require_data
from aigc_cli.errors import AigcError
from aigc_cli.evaluation.report import Gates, build_report, gate_failures, load_gates, output_names, write_report

CHUNK = 1000  # items per sacrebleu call: big enough for its inner loops, small enough for flat memory


@dataclass
class EvalResult:
    report: Path
    markdown: Path
    table: str
    body: dict  # the report itself
    failures: list[str]  # failed quality gates, one line each

    def to_json(self) -> dict:
        return {**self.body, "report": str(self.report), "markdown": str(self.markdown)}

    def summary_lines(self) -> list[str]:
        return [f"eval report: {self.report} (table: {self.markdown})"]

    def gate_verdict(self) -> str | None:
        """What says which gates failed (the verb then exits 1), or None when all passed."""
        return "quality gate failed: " + "; ".join(self.failures) if self.failures else None


def evaluate(cfg: ExperimentConfig, checkpoint: str | Path | None, log=lambda _: None, config_free: bool = False) -> EvalResult:
    """Every metric in eval.metrics, checked against the gates, written as report.json + report.md;
    the report's lock is held throughout."""
    from aigc_cli.runs.locks import exclusive_lock

    with exclusive_lock(_report_path(cfg, config_free), "eval report"):
        return _evaluate(cfg, checkpoint, log, config_free)


def _report_path(cfg: ExperimentConfig, config_free: bool) -> Path:
    ec = cfg.eval
    if config_free and not ec.out and not ec.generations:
        raise AigcError("nothing to evaluate: no predictions given", "pass --predictions FILE (and --references FILE)")
    return Path(ec.out or (_beside(ec.generations) if config_free else Path(cfg.train.out_dir) / "eval" / "report.json"))


CLASSIFIER_OUTPUTS = {  # what `aigc eval` reports for each classifier task (roc_auc: two labels only)
    "single_label": ("accuracy", "macro_precision", "macro_recall", "macro_f1", "micro_precision", "micro_recall", "micro_f1",
                     "weighted_precision", "weighted_recall", "weighted_f1", "roc_auc"),
    "multi_label": ("subset_accuracy", "macro_precision", "macro_recall", "macro_f1", "micro_precision", "micro_recall", "micro_f1",
                    "weighted_precision", "weighted_recall", "weighted_f1", "samples_precision", "samples_recall", "samples_f1"),
    "regression": ("mse", "mae", "r2"),
    "reward": ("reward_accuracy", "mean_margin", "loss"),
    "tagging": ("token_accuracy", "micro_precision", "micro_recall", "micro_f1", "macro_precision", "macro_recall", "macro_f1",
                "weighted_precision", "weighted_recall", "weighted_f1"),
}


def _evaluate_classifier(cfg: ExperimentConfig, checkpoint, log, config_free: bool) -> EvalResult:
    """A classifier's report: every metric of its task on the held-out records; eval.metrics does not apply."""
    from aigc_cli.evaluation.classification import evaluate_classifier

    ec = cfg.eval
    if config_free:
        raise AigcError("a classifier is scored on labelled records its config names", "pass the experiment config: aigc eval CONFIG")
    gates = load_gates(ec.fail_under, ec.fail_above, ec.max_drop, ec.baseline, list(CLASSIFIER_OUTPUTS[{"tagger": "tagging", "reward": "reward"}.get(cfg.model.backend) or cfg.model.task]))
    out = _report_path(cfg, config_free)
    metrics, details = evaluate_classifier(cfg, checkpoint or cfg.train.out_dir, out.parent, log)
    missing = [n for bounds in (ec.fail_under, ec.fail_above, ec.max_drop) for n in bounds if n not in metrics]
    if missing:
        raise AigcError(f"gate on {', '.join(missing)}, which this evaluation could not compute (roc_auc needs two labels)",
                        f"gate on: {', '.join(metrics)}")
    inputs = [{"role": "labelled records", "path": str(ec.references or cfg.data.source)}]
    return _report(cfg, config_free, metrics, details, {}, inputs, gates, [])


def _evaluate(cfg: ExperimentConfig, checkpoint, log, config_free: bool) -> EvalResult:
    ec = cfg.eval
    if cfg.model.backend in LABEL_BACKENDS:
        return _evaluate_classifier(cfg, checkpoint, log, config_free)
    produced = output_names(ec.metrics)
    gates = load_gates(ec.fail_under, ec.fail_above, ec.max_drop, ec.baseline, produced)  # before any slow work
    metrics: dict[str, float] = {}
    details: dict = {}
    if "clip_score" in ec.metrics:
        metrics, details = _clip_score(ec, log)
    if cfg.model.backend in IMAGE_BACKENDS and set(ec.metrics) - {"clip_score"}:
        from aigc_cli.evaluation.images import evaluate_images  # (config validation matched metrics to the backend)

        image_metrics, image_details = evaluate_images(cfg, checkpoint, log)
        metrics.update(image_metrics)
        scored = [d["scored"] for d in (details, image_details) if d.get("scored")]
        details.update(image_details, scored="; ".join(scored))
    elif set(MODEL_METRICS) & set(ec.metrics):
        if config_free:
            raise AigcError(f"{[m for m in ec.metrics if m in MODEL_METRICS]} score a checkpoint on prepared data",
                            "pass the experiment config too: aigc eval CONFIG --checkpoint DIR")
        lm_metrics, lm_details = evaluate_language_model(cfg, checkpoint)
        lm_details["scored"] = (f"{lm_details['checkpoint']} on the {lm_details['split']} split of {lm_details['prepared_data']}: "
                                f"{lm_details['windows']:,} windows of {lm_details['context']} tokens ({lm_details['tokens']:,} tokens)")
        log(f"scored {lm_details['scored']}")
        metrics.update(lm_metrics)
        details.update(lm_details, scored="; ".join(d["scored"] for d in (details, lm_details) if d.get("scored")))
    inputs = [{"role": "prepared data", **i} for i in details.pop("inputs", None) or []]
    signatures: dict[str, str] = {}
    text_names = [m for m in ec.metrics if m in TEXT_METRICS]
    if text_names:  # (never with an image backend: the config refuses it)
        if "prediction_perplexity" in text_names and checkpoint is None and config_free:
            raise AigcError("prediction_perplexity scores the predictions under a model, and none was given", "pass --checkpoint DIR (a model or adapter directory)")
        text_metrics, text_details, signatures, text_inputs = score_text(ec, text_names, log, checkpoint or cfg.train.out_dir)
        metrics.update(text_metrics)
        scored = [d["scored"] for d in (details, text_details) if d.get("scored")]
        details.update(text_details, scored="; ".join(scored))
        inputs += text_inputs
    metrics = {name: metrics[name] for name in produced if name in metrics} | metrics
    return _report(cfg, config_free, metrics, details, signatures, inputs, gates, text_names)


def _clip_score(ec: EvalConfig, log) -> tuple[dict, dict]:
    from aigc_cli.evaluation.clip_score import SKIPPED, clip_score

    if not ec.generations:
        raise AigcError("clip_score scores images written by `aigc generate --prompt`, and eval.generations names none",
                        "set eval.generations to that --out folder")
    if not ec.clip_model:
        log(f"clip_score {SKIPPED}")
        return {}, {"clip_score": SKIPPED, "scored": f"clip_score {SKIPPED}"}
    result = clip_score(ec.generations, ec.clip_model)
    scored = f"clip_score of {result['clip_images']:,} images in {ec.generations} against their prompts ({ec.clip_model})"
    log(f"scored {scored}")
    return {"clip_score": result["clip_score"]}, {"clip_model": str(ec.clip_model), "generations": str(ec.generations),
                                                  "clip_images": result["clip_images"], "scored": scored}


def _report(cfg, config_free, metrics, details, signatures, inputs, gates: Gates, text_names) -> EvalResult:
    from aigc_cli.runs.provenance import software_versions, write_provenance
    from aigc_cli.evaluation.text_metrics import library_versions

    ec = cfg.eval
    out = _report_path(cfg, config_free)
    config = {"eval": ec.model_dump(mode="json")} if config_free else cfg.model_dump(mode="json")
    failures = gate_failures(gates, metrics)
    body = build_report(metrics, details, config=config, versions={**software_versions(), **library_versions(text_names)},
                        inputs=inputs, signatures=signatures, gates=gates, failures=failures)
    report, markdown, table = write_report(out, body)
    if not config_free:
        write_provenance(out.parent, cfg, inputs, checkpoint=details.get("checkpoint"))
    return EvalResult(report, markdown, table, body, failures)


def _beside(predictions: str) -> Path:
    path = Path(predictions)
    stem = path.name.removesuffix(".gz").rsplit(".", 1)[0]
    return path.with_name(f"{stem}.eval.json")


# ----------------------------------------------------------------------------- text
def score_text(ec: EvalConfig, names: list[str], log, checkpoint: str | Path | None = None) -> tuple[dict, dict, dict, list]:
    """Stream predictions (and references) through every requested scorer: metrics, details,
    signatures and input hashes."""
    from aigc_cli.data.records import sha256_file

    references = [ec.references] if isinstance(ec.references, str) else list(ec.references or [])
    if not ec.generations:
        raise AigcError(f"eval.metrics {names} need predictions", "pass --predictions FILE (eval.generations): the JSONL of `aigc generate` or one item per line")
    needing = [n for n in names if n in REFERENCE_METRICS]
    if needing and not references:
        raise AigcError(f"{needing} compare with references, and none were given", "pass --references FILE (eval.references), once per reference set")
    scorers = _scorers(ec, names)
    if "prediction_perplexity" in names:
        scorers["prediction_perplexity"] = PredictionPerplexity(checkpoint, ec.batch_size)
    items = lambda: _chunks(ec, references)  # noqa: E731 — read twice when CIDEr-D needs its document frequencies first
    if "cider" in scorers:
        for predictions, refs in items():
            scorers["cider"].add_references(refs)
    count = 0
    for predictions, refs in items():
        for scorer in scorers.values():
            scorer.add(predictions, refs)
        count += len(predictions)
    scored = f"{count:,} items of {ec.generations}" + (f" against {', '.join(map(str, references))}" if references else "")
    log(f"scored {scored}")
    metrics: dict[str, float] = {}
    details: dict = {"items": count, "scored": scored}
    for scorer in scorers.values():
        metrics.update(scorer.result())
    if "labels" in scorers:
        details.update(scorers["labels"].report()[1])
    if "prediction_perplexity" in scorers:
        details["prediction_perplexity"] = scorers["prediction_perplexity"].details()
    signatures = {name: s.signature() for name, s in scorers.items() if hasattr(s, "signature")}
    inputs = [{"role": role, "path": str(path), "sha256": sha256_file(path)}
              for role, path in [("predictions", ec.generations)] + [("references", r) for r in references]]
    return metrics, details, signatures, inputs


def _scorers(ec: EvalConfig, names: list[str]) -> dict:
    from aigc_cli.evaluation import text_metrics as tm

    scorers: dict = {}
    for name in ("bleu", "chrf", "ter"):
        if name in names:
            scorers[name] = tm.SacrebleuScorer(name, ec.lang, ec.bleu_tokenize)
    rouge = [n for n in names if n.startswith("rouge")]
    if rouge:
        scorers["rouge"] = tm.RougeScorer(rouge, ec.rouge_stemmer)
    if "cider" in names:
        scorers["cider"] = tm.CiderD()
    labels = [n for n in names if n in ("accuracy", "precision", "recall", "f1")]
    if labels:
        scorers["labels"] = tm.LabelScorer(labels)
    stats = [n for n in names if n in ("distinct1", "distinct2", "repetition", "length")]
    if stats:
        scorers["predictions"] = tm.PredictionStats(stats)
    if "self_bleu" in names:
        scorers["self_bleu"] = tm.SelfBleu(ec.self_bleu_sample, ec.lang, ec.bleu_tokenize)
    return scorers


def _chunks(ec: EvalConfig, references: list[str]):
    """(predictions, references per item) in chunks of CHUNK items."""
    from aigc_cli.evaluation.inputs import Item, read_items, read_rows

    if references:
        items = read_items(ec.generations, references, ec.predictions_field, ec.references_field)
    else:
        items = (Item(row.texts[0], [], row.where) for row in read_rows(ec.generations, ec.predictions_field, "predictions", skip_later_samples=True))
    empty = True
    while chunk := list(itertools.islice(items, CHUNK)):
        empty = False
        yield [item.prediction for item in chunk], [item.references for item in chunk]
    if empty:
        raise AigcError(f"{ec.generations} holds no predictions", "pass the file written by `aigc generate`, or one item per line")


# ----------------------------------------------------------------------------- language model
class PredictionPerplexity:
    """Perplexity of the predictions under a checkpoint: how fluent the model finds them, with no
    references needed. Each prediction is scored as a document of its own, every token predicted
    after the end-of-text token (the context a generated document starts from). Text longer than
    the model's context is scored as lm-evaluation-harness's loglikelihood_rolling scores it:
    consecutive windows of the context length, the last one shifted back to end at the text's end
    so its few new tokens are predicted with a full context (the tokens before them are context
    only, not scored again). exp(mean loss over all scored tokens)."""

    def __init__(self, checkpoint: str | Path, batch_size: int):
        from aigc_cli.inference.heldout import LossSum
        from aigc_cli.inference.loading import load_model

        self.loaded = load_model(checkpoint, modality="text")
        self.window = self.loaded.backend.context_length(self.loaded.model) or 1024
        self.batch_size = batch_size
        self.scored, self.items, self.empty = LossSum(), 0, 0

    def add(self, predictions: list[str], references=None) -> None:
        from aigc_cli.inference.heldout import heldout_loss

        loaded = self.loaded
        windows: list[tuple[list[int], int]] = []  # (ids, how many leading targets are context only)
        for text in predictions:
            ids = [loaded.eos_id] + (loaded.tokenizer.encode(text, add_special_tokens=False).ids if text else [])
            self.items += 1
            self.empty += len(ids) == 1
            windows += rolling_windows(ids, self.window)
        windows.sort(key=lambda w: len(w[0]))  # similar lengths share a batch: less padding
        batches = (self._padded(windows[start:start + self.batch_size]) for start in range(0, len(windows), self.batch_size))
        self.scored = heldout_loss(self.loaded, self.loaded.validation_part, batches, self.loaded.device, per="token", so_far=self.scored)

    def _padded(self, windows: list[tuple[list[int], int]]):
        """(inputs, targets) of windows of different lengths: padding sits after each row's tokens,
        which a causal model never looks at; its targets, and those of context-only tokens, are ignored."""
        import torch

        from aigc_cli.inference.heldout import IGNORE_INDEX

        width = max(len(ids) for ids, _ in windows) - 1
        inputs = torch.full((len(windows), width), self.loaded.eos_id, dtype=torch.long)
        targets = torch.full((len(windows), width), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, context_only) in enumerate(windows):
            inputs[row, :len(ids) - 1] = torch.tensor(ids[:-1])
            targets[row, context_only:len(ids) - 1] = torch.tensor(ids[1 + context_only:])
        return inputs, targets

    def result(self) -> dict[str, float]:
        if not self.scored.weight:
            raise AigcError("prediction_perplexity: every prediction is empty, so there is nothing to score", "check the predictions file (and --predictions-field)")
        loss = self.scored.mean
        return {"prediction_perplexity": math.exp(min(loss, 700.0)), "prediction_loss": loss}

    def details(self) -> dict:
        return {"checkpoint": str(self.loaded.checkpoint), "backend": self.loaded.backend_name, "tokens": self.scored.weight,
                "items": self.items, "empty_predictions": self.empty, "context": self.window}

def rolling_windows(ids: list[int], window: int) -> list[tuple[list[int], int]]:
    """Windows of at most window+1 ids (window inputs, each predicting the next id) covering every
    target ids[1:] once: consecutive while whole, the last one moved back to end at the end of the
    text, its repeated leading targets marked context-only (lm-eval's rolling windows)."""
    targets = len(ids) - 1
    out = [(ids[start:start + window + 1], 0) for start in range(0, targets - targets % window, window)]
    rest = targets % window
    if rest:
        start = max(0, len(ids) - 1 - window)
        out.append((ids[start:], (len(ids) - 1 - start) - rest))
    return out


def evaluate_language_model(cfg: ExperimentConfig, checkpoint: str | Path | None) -> tuple[dict, dict]:
    from aigc_cli.data.batches import TokenArray
    from aigc_cli.data.tokenization import load_tokenizer
    from aigc_cli.inference.heldout import heldout_loss
    from aigc_cli.inference.loading import load_model

    ec = cfg.eval
    require_data(cfg)
    loaded = load_model(checkpoint or cfg.train.out_dir, modality="text")
    data = TokenArray(cfg.data.prepared_dir, ec.split)
    if load_tokenizer(cfg.data.prepared_dir).get_vocab() != loaded.tokenizer.get_vocab():
        raise AigcError(f"{loaded.checkpoint} was trained with a different tokenizer than {cfg.data.prepared_dir}",
                        "evaluate on the prepared data the model was trained on (data.prepared_dir)")
    block = min(cfg.model.block_size, loaded.backend.context_length(loaded.model) or cfg.model.block_size)
    data.check_fits(block)
    windows = data.sequential_batches(ec.batch_size, block, ec.max_batches)
    scored = heldout_loss(loaded, loaded.validation_part, windows, loaded.device, per="token")
    loss = scored.mean
    metrics = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_token": loss / math.log(2)}
    return metrics, {"checkpoint": str(loaded.checkpoint), "backend": loaded.backend_name, "split": ec.split,
                     "prepared_data": cfg.data.prepared_dir, "tokens": scored.weight, "windows": scored.rows, "context": block,
                     "inputs": data.meta.get("inputs")}
