"""The config `aigc eval` runs with: its command-line options merged into the experiment's, or,
scoring files alone, an eval section made of the options and the default metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aigc_cli.config import IMAGE_METRICS, MODEL_METRICS, ExperimentConfig, read_config, set_options, validate_config
from aigc_cli.errors import AigcError

DEFAULT_METRICS = {True: ["bleu", "chrf", "ter", "rouge1", "rouge2", "rougeL"],  # with references
                   False: ["distinct1", "distinct2", "self_bleu", "repetition", "length"]}
GATES = ("fail_under", "fail_above", "max_drop")


def eval_config(config: str | None, overrides: list[str] | None, options: dict[str, Any]) -> ExperimentConfig:
    """`options` are dotted keys (eval.generations, eval.fail_under, ...; None: not given).
    Command-line gates add to the config's: --fail-under bleu=25 keeps the config's rougeL bound."""
    if config is None:
        return _files_alone(options)
    if "=" in config and not Path(config).exists():
        raise AigcError(f"{config!r} is not a config file",
                        "join several gates with commas (--fail-under bleu=25,rougeL=0.3) or repeat the option; section.key=value overrides follow a CONFIG")
    raw = read_config(config, overrides or [])
    section = raw.get("eval") if isinstance(raw.get("eval"), dict) else {}
    for gate in GATES:
        configured = section.get(gate)
        if options.get(f"eval.{gate}") and isinstance(configured, dict):
            options = {**options, f"eval.{gate}": {**configured, **options[f"eval.{gate}"]}}
    return validate_config(set_options(raw, options), source=str(Path(config)))


def _files_alone(options: dict[str, Any]) -> ExperimentConfig:
    """Predictions (and references) scored without an experiment: text metrics only."""
    raw = set_options({}, options)
    section = raw.get("eval", {})
    if "generations" not in section:
        raise AigcError("nothing to evaluate", "pass an experiment CONFIG, or --predictions FILE (with --references FILE) to score files")
    section.setdefault("metrics", DEFAULT_METRICS["references" in section])
    needs_config = [m for m in section["metrics"] if m in MODEL_METRICS + IMAGE_METRICS]
    if needs_config:
        raise AigcError(f"{needs_config} score a checkpoint or images against prepared data",
                        "pass the experiment CONFIG as well (aigc eval CONFIG ...)")
    return validate_config(raw, source="command line")
