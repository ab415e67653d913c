"""`aigc eval`: loss and perplexity of a checkpoint on a prepared split, and text metrics
(BLEU, chrF from sacrebleu; ROUGE-L from rouge-score) of generated text against references.

The loss is deterministic: the split is cut into consecutive non-overlapping windows of the
model's context length and every token is counted once (no random batches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from aigc_cli.atomic_files import write_json_atomic
from aigc_cli.config import IMAGE_BACKENDS, TEXT_METRICS, ExperimentConfig, require_data
from aigc_cli.data.batches import TokenArray
from aigc_cli.data.tokenization import load_tokenizer
from aigc_cli.errors import AigcError
from aigc_cli.generation import load_checkpoint_for_inference
from aigc_cli.locks import exclusive_lock
from aigc_cli.provenance import write_provenance


@dataclass
class EvalResult:
    report: Path
    metrics: dict[str, float]


def evaluate(cfg: ExperimentConfig, checkpoint: str | Path | None, log=lambda _: None) -> EvalResult:
    """Every metric in eval.metrics, one report; the report's lock is held throughout."""
    with exclusive_lock(Path(cfg.eval.out or Path(cfg.train.out_dir) / "eval" / "report.json"), "eval report"):
        return _evaluate(cfg, checkpoint, log)


def _evaluate(cfg: ExperimentConfig, checkpoint: str | Path | None, log=lambda _: None) -> EvalResult:
    ec = cfg.eval
    metrics: dict[str, float] = {}
    details: dict = {}
    if cfg.model.backend in IMAGE_BACKENDS:
        from aigc_cli.image_evaluation import evaluate_images  # (config validation matched metrics to the backend)

        metrics, details = evaluate_images(cfg, checkpoint, log)
    elif "loss" in ec.metrics:
        lm_metrics, lm_details = evaluate_language_model(cfg, checkpoint)
        metrics.update(lm_metrics)
        details.update(lm_details)
    if any(m in TEXT_METRICS for m in ec.metrics):  # (never with an image backend: the config refuses it)
        text_metrics, text_details = score_generations(ec.generations, ec.references, [m for m in ec.metrics if m in TEXT_METRICS])
        metrics.update(text_metrics)
        details.update(text_details)
    out = Path(ec.out or Path(cfg.train.out_dir) / "eval" / "report.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, {**details, "metrics": metrics})
    write_provenance(out.parent, cfg, details.get("inputs"), checkpoint=details.get("checkpoint"))
    return EvalResult(out, metrics)


def score_generations(generations: str | None, references: str | None, names: list[str]) -> tuple[dict, dict]:
    import json

    from aigc_cli.data.pairs import read_lines

    if not generations or not references:
        raise AigcError(f"eval.metrics {names} need eval.generations and eval.references",
                        "set eval.generations to the JSONL of `aigc generate` and eval.references to the reference texts")
    if not Path(generations).is_file():
        raise AigcError(f"eval.generations not found: {generations}", "run `aigc generate` first or fix the path")
    hypotheses = []
    for number, line in enumerate(read_lines(generations), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AigcError(f"{generations}:{number}: malformed JSON ({exc.msg})", "pass the JSONL written by `aigc generate`") from None
        if row.get("sample", 0) == 0:
            hypotheses.append(row["completion"].strip())
    ref_lines = read_lines(references)
    if references.removesuffix(".gz").endswith(".jsonl"):
        ref_lines = [json.loads(line)["reference"] for line in ref_lines if line.strip()]
    if len(ref_lines) != len(hypotheses):
        raise AigcError(f"{generations} has {len(hypotheses)} completions but {references} has {len(ref_lines)} references",
                        "generate from the inputs that belong to these references, one completion per input")
    metrics: dict[str, float] = {}
    if "bleu" in names or "chrf" in names:
        import sacrebleu

        if "bleu" in names:
            metrics["bleu"] = sacrebleu.corpus_bleu(hypotheses, [ref_lines]).score
        if "chrf" in names:
            metrics["chrf"] = sacrebleu.corpus_chrf(hypotheses, [ref_lines]).score
    if "rougeL" in names:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        scores = [scorer.score(ref, hyp)["rougeL"].fmeasure for ref, hyp in zip(ref_lines, hypotheses)]
        metrics["rougeL"] = 100.0 * sum(scores) / len(scores)
    return metrics, {"generations": str(generations), "references": str(references), "segments": len(hypotheses)}


@torch.no_grad()
def evaluate_language_model(cfg: ExperimentConfig, checkpoint: str | Path | None) -> tuple[dict, dict]:
    ec = cfg.eval
    require_data(cfg)
    loaded = load_checkpoint_for_inference(checkpoint or cfg.train.out_dir)
    data = TokenArray(cfg.data.prepared_dir, ec.split)
    if load_tokenizer(cfg.data.prepared_dir).get_vocab() != loaded.tokenizer.get_vocab():
        raise AigcError(f"{loaded.checkpoint} was trained with a different tokenizer than {cfg.data.prepared_dir}",
                        "evaluate on the prepared data the model was trained on (data.prepared_dir)")
    block = min(cfg.model.block_size, loaded.backend.context_length(loaded.model) or cfg.model.block_size)
    data.check_fits(block)
    total_loss, total_tokens = 0.0, 0
    for inputs, targets in data.sequential_batches(ec.batch_size, block, ec.max_batches):
        batch = (inputs.to(loaded.device), targets.to(loaded.device))
        n = targets.numel()
        total_loss += loaded.backend.loss(loaded.model, batch, loaded.backend.PARTS[0]).item() * n
        total_tokens += n
    loss = total_loss / total_tokens
    metrics = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_token": loss / math.log(2)}
    return metrics, {"checkpoint": str(loaded.checkpoint), "backend": loaded.backend_name, "split": ec.split,
                     "prepared_data": cfg.data.prepared_dir, "tokens": total_tokens, "context": block,
                     "inputs": data.meta.get("inputs")}
