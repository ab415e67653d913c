"""aigc_cli.evaluation.options: the config `aigc eval` runs with — default metrics for files
alone, command-line gates added to the config's, options typed as given."""

from __future__ import annotations

import pytest
import yaml

from aigc_cli.errors import AigcError
from aigc_cli.evaluation.options import DEFAULT_METRICS, eval_config


def _config(tmp_path, eval_section: dict) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "corpus.txt"}, "eval": eval_section}), encoding="utf-8")
    return str(path)


def test_files_alone_get_the_default_metrics():
    with_refs = eval_config(None, None, {"eval.generations": "p.txt", "eval.references": "r.txt"})
    alone = eval_config(None, None, {"eval.generations": "p.txt", "eval.references": None})
    assert with_refs.eval.metrics == DEFAULT_METRICS[True] and alone.eval.metrics == DEFAULT_METRICS[False]
    assert eval_config(None, None, {"eval.generations": "p.txt", "eval.metrics": ["chrf"]}).eval.metrics == ["chrf"]


@pytest.mark.parametrize("options, message", [
    ({"eval.references": "r.txt"}, "nothing to evaluate"),
    ({"eval.generations": "p.txt", "eval.metrics": ["bleu", "loss"]}, r"\['loss'\] score a checkpoint or images"),
])
def test_files_alone_refuse_what_needs_a_config(options, message):
    with pytest.raises(AigcError, match=message):
        eval_config(None, None, options)


def test_command_line_gates_add_to_the_config_gates(tmp_path):
    config = _config(tmp_path, {"metrics": ["bleu", "chrf"], "fail_under": {"bleu": 20, "chrf": 40}})
    cfg = eval_config(config, None, {"eval.fail_under": {"bleu": 25.0}, "eval.fail_above": {"ter": 60.0}})
    assert cfg.eval.fail_under == {"bleu": 25.0, "chrf": 40.0} and cfg.eval.fail_above == {"ter": 60.0}
    assert eval_config(config, None, {"eval.fail_under": None}).eval.fail_under == {"bleu": 20.0, "chrf": 40.0}


def test_options_come_after_overrides_and_stay_as_typed(tmp_path):
    config = _config(tmp_path, {"lang": "de"})
    cfg = eval_config(config, ["eval.lang=fr", "eval.out=x.json"], {"eval.lang": "no", "eval.out": None})
    assert cfg.eval.lang == "no" and cfg.eval.out == "x.json"  # 'no' is Norwegian, not YAML's false


def test_a_gate_where_the_config_should_be_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AigcError, match="'bleu=25' is not a config file"):
        eval_config("bleu=25", None, {})
