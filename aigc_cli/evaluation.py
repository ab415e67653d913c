"""`aigc eval` for language models: loss and perplexity of a checkpoint on a prepared split.

The score is deterministic: the split is cut into consecutive non-overlapping windows of the
model's context length and every token is counted once (no random batches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from aigc_cli.atomic_files import write_json_atomic
from aigc_cli.config import ExperimentConfig
from aigc_cli.data.batches import TokenArray
from aigc_cli.data.tokenization import load_tokenizer
from aigc_cli.errors import AigcError
from aigc_cli.generation import load_checkpoint_for_inference
from aigc_cli.provenance import write_provenance


@dataclass
class EvalResult:
    report: Path
    metrics: dict[str, float]


@torch.no_grad()
def evaluate_language_model(cfg: ExperimentConfig, checkpoint: str | Path | None) -> EvalResult:
    ec = cfg.eval
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
    out = Path(ec.out or Path(cfg.train.out_dir) / "eval" / "report.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, {"checkpoint": str(loaded.checkpoint), "backend": loaded.backend_name, "split": ec.split,
                            "prepared_data": cfg.data.prepared_dir, "tokens": total_tokens, "context": block,
                            "metrics": metrics})
    write_provenance(out.parent, cfg, data.meta.get("inputs"), checkpoint=str(loaded.checkpoint))
    return EvalResult(out, metrics)
