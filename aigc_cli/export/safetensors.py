"""`--format safetensors`: a standalone transformers model directory — a LoRA run's adapter merged
into its base, or a copy of a full model — in the chosen dtype, with its tokenizer, so
`AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` load it alone."""

from __future__ import annotations

from pathlib import Path

from aigc_cli.export.standalone import copy_companions, standalone_model

DEFAULT_DTYPE = "fp32"


def export(checkpoint_dir: Path, out_dir: Path, dtype: str | None) -> list[Path]:
    model = standalone_model(checkpoint_dir, dtype, "safetensors")
    before = set(out_dir.iterdir())
    model.save_pretrained(out_dir)  # safetensors weights, config.json (its dtype), generation_config.json
    written = set(out_dir.iterdir()) - before
    companions = copy_companions(checkpoint_dir, out_dir, model)
    return sorted(written | set(companions))
