"""The schema: shipped configs validate, mistakes get one clear line, nothing heavy is imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aigc_cli.config import load_config
from aigc_cli.errors import AigcError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert (cfg.data is not None or cfg.finetune.base) and cfg.train.max_steps >= 1


SHIPPED = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "aigc_cli" / "templates").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_shipped_config_pins_bf16(path):
    # train.precision: bf16 exits 2 on a CPU without native bf16 (AVX2 only); auto picks bf16 where it pays
    train = yaml.safe_load(path.read_text(encoding="utf-8").replace("__DIR__", "starters")).get("train") or {}
    assert train.get("precision", "auto") != "bf16", f"{path.name}: use train.precision: auto, which picks bf16 where the machine has it"


def _write(tmp_path, raw) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_overrides_are_merged_and_typed(tmp_path):
    path = _write(tmp_path, {"data": {"source": "x.txt"}})
    cfg = load_config(path, ["train.max_steps=7", "model.n_layer=2", "generate.prompts=[a, b]", "train.precision=bf16"])
    assert cfg.train.max_steps == 7 and cfg.model.n_layer == 2
    assert cfg.generate.prompts == ["a", "b"] and cfg.train.precision == "bf16"


def test_backend_override_switches_the_model_schema(tmp_path):
    path = _write(tmp_path, {"data": {"source": "x.txt"}, "model": {"backend": "rnn", "cell": "gru"}})
    assert load_config(path).model.cell == "gru"
    with pytest.raises(AigcError, match=r"unknown key 'model.cell'"):
        load_config(path, ["model.backend=gpt"])


@pytest.mark.parametrize("raw, overrides, expected", [
    ({"data": {"source": "x"}, "train": {"max_step": 5}}, [], r"unknown key 'train.max_step' — did you mean 'max_steps'\?"),
    ({"data": {"source": "x"}, "modle": {}}, [], r"unknown key 'modle' — did you mean 'model'\?"),
    ({"data": {"source": "x"}, "model": {"backend": "rnn", "hiden_size": 3}}, [], r"unknown key 'model.hiden_size' — did you mean 'hidden_size'\?"),
    ({"data": {"source": "x"}}, ["train.max_steps=many"], r"'train.max_steps'.*integer.*'many'"),
    ({"data": {"source": "x"}}, ["model.n_embd=30", "model.n_head=4"], r"not divisible by n_head=4"),
    ({"data": {"source": "x"}}, ["model.backend=transformer"], r"'model.backend' must be one of"),
    ({"data": {"seed": 1}}, [], r"missing required key 'data.source'"),
    ({"data": {"source": "x"}}, ["train.max_steps"], r"bad override 'train.max_steps'"),
])
def test_config_mistakes_name_the_key(tmp_path, raw, overrides, expected):
    with pytest.raises(AigcError, match=expected) as info:
        load_config(_write(tmp_path, raw), overrides)
    assert "\n" not in info.value.one_line()


def test_verbs_that_read_data_require_it(cli, tmp_path):
    result = cli("prep", _write(tmp_path, {"train": {"max_steps": 3}}))
    assert result.exit_code == 2 and "missing required key 'data.source'" in result.stderr


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  source: [unclosed\n")
    with pytest.raises(AigcError, match=r"not valid YAML at line"):
        load_config(path)


def test_print_config_shows_resolved_defaults(cli, tmp_path):
    path = _write(tmp_path, {"data": {"source": "x.txt"}})
    result = cli("train", path, "train.max_steps=3", "--print-config")
    assert result.exit_code == 0
    resolved = yaml.safe_load(result.stdout)
    assert resolved["train"]["max_steps"] == 3
    assert resolved["train"]["learning_rate"] == 1e-3 and resolved["model"]["backend"] == "gpt"


def _heavy_modules_after(args: list[str]) -> tuple[int, str, set[str]]:
    code = ("import sys\nfrom aigc_cli.cli import app\n"
            "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'diffusers', 'numpy') if m in sys.modules)\n"
            "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\nsys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    heavy_line = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY=")][-1]
    heavy = set(filter(None, heavy_line.removeprefix("HEAVY=").split(",")))
    return proc.returncode, proc.stderr, heavy


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["generate", "--help"], ["prep", "--help"], ["eval", "--help"]])
def test_help_does_not_import_torch(args):
    code, _, heavy = _heavy_modules_after(args)
    assert code == 0
    assert heavy == set()


def test_config_error_exits_2_without_torch_or_traceback(tmp_path):
    path = _write(tmp_path, {"data": {"source": "x"}, "train": {"max_stpes": 1}})
    code, stderr, heavy = _heavy_modules_after(["train", str(path)])
    assert code == 2
    assert "did you mean 'max_steps'" in stderr
    assert "Traceback" not in stderr
    assert heavy == set()
