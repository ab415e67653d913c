"""`aigc export` as a user meets it: --json, where the files go, what it never overwrites, one
`error:` line and exit 2 for bad input, a failed export that leaves nothing behind, and `aigc info`
on what it wrote. (The safetensors format is the quick one to write, so most tests use it.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import json_out


def error_line(result) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0]


def test_json_names_every_file_written_with_its_size(cli, gpt2_run, tmp_path):
    out = json_out(cli("export", gpt2_run / "checkpoints" / "step-000001", "--format", "safetensors", "--out", tmp_path / "st", "--json"))
    assert out["format"] == "safetensors" and out["dtype"] == "fp32" and out["out"] == str(tmp_path / "st")
    assert out["checkpoint"].endswith("step-000001")
    names = {Path(f["path"]).name for f in out["files"]}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    for f in out["files"]:
        assert Path(f["path"]).stat().st_size == f["bytes"]
    assert out["bytes"] == sum(f["bytes"] for f in out["files"])
    record = json.loads((tmp_path / "st" / "aigc_export.json").read_text())
    assert record["format"] == "safetensors" and sorted(record["files"]) == sorted(names)


def test_a_run_directory_stands_for_its_latest_checkpoint_and_exports_beside_it(cli, gpt2_run):
    result = cli("export", gpt2_run, "--format", "safetensors")
    assert result.exit_code == 0, result.stderr
    assert f"to {gpt2_run / 'export' / 'safetensors'}" in result.stdout and "model.safetensors" in result.stdout
    again = json_out(cli("export", gpt2_run, "--format", "safetensors", "--json"))  # an earlier export is replaced
    assert again["out"] == str(gpt2_run / "export" / "safetensors")
    assert not [p for p in (gpt2_run / "export").iterdir() if p.name.startswith(".")]  # no temporaries left


def test_a_folder_aigc_did_not_write_is_kept_unless_forced(cli, gpt2_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    line = error_line(cli("export", gpt2_run, "--format", "safetensors", "--out", mine))
    assert "did not export" in line and "--force" in line
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    assert cli("export", gpt2_run, "--format", "safetensors", "--out", mine, "--force").exit_code == 0
    assert not (mine / "notes.txt").exists() and (mine / "model.safetensors").is_file()


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nowhere", "--format", "onnx"], "checkpoint not found"),
    (["{tmp}", "--format", "onnx"], "is not a checkpoint or run directory"),
    (["{run}", "--format", "tflite"], "--format tflite is not an export format — use one of: gguf, onnx, safetensors"),
    (["{run}", "--format", "onnx", "--dtype", "int4"], "--dtype int4 is not a dtype aigc exports"),
    (["{run}", "--format", "safetensors", "--out", "{run}/checkpoints/step-000001"], "holds the checkpoint being exported"),
    (["{run}", "--format", "safetensors", "--out", "{run}", "--force"], "holds the checkpoint being exported"),
    (["{run}", "--format", "safetensors", "--out", "{tmp}/file.txt"], "is a file"),
])
def test_bad_input_is_one_error_line_and_exit_2(cli, gpt2_run, tmp_path, args, message):
    (tmp_path / "file.txt").write_text("x")
    line = error_line(cli("export", *[a.format(tmp=tmp_path, run=gpt2_run) for a in args]))
    assert message in line


def test_a_model_that_is_not_a_causal_lm_is_refused(cli, tmp_path):
    import torch

    from aigc_cli.backends import RNNModelConfig, get_backend
    from aigc_cli.runs.checkpoints import write_checkpoint

    backend = get_backend("rnn")
    model = backend.build(RNNModelConfig(n_layer=1, n_embd=8, hidden_size=8, block_size=8), {"vocab_size": 10, "eos_id": 0})
    torch.manual_seed(0)
    write_checkpoint(tmp_path / "rnn", 1, "rnn", backend, model, {"step": 1}, None)
    line = error_line(cli("export", tmp_path / "rnn", "--format", "onnx", "--out", tmp_path / "o"))
    assert "holds a rnn model" in line and "gpt run" in line
    assert not (tmp_path / "o").exists()


def test_a_format_whose_module_is_missing_says_so(cli, gpt2_run, tmp_path, monkeypatch):
    from aigc_cli import export

    monkeypatch.setitem(export.FORMATS, "gguf", "aigc_cli.export.not_installed_here")
    line = error_line(cli("export", gpt2_run, "--format", "gguf", "--out", tmp_path / "g"))
    assert "the gguf exporter is not part of this aigc version" in line


def test_a_failed_export_leaves_the_earlier_one_intact_and_no_temporaries(cli, gpt2_run, tmp_path, monkeypatch):
    from aigc_cli.export import safetensors

    target = tmp_path / "st"
    assert cli("export", gpt2_run, "--format", "safetensors", "--out", target).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}

    def half_then_fail(checkpoint_dir, out_dir, dtype):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors, "export", half_then_fail)
    result = cli("export", gpt2_run, "--format", "safetensors", "--out", target)
    assert result.exit_code == 2 and "No space left on device" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["st"]


def test_info_describes_an_export_folder_and_file(cli, lora_run, tmp_path):
    assert cli("export", lora_run, "--format", "safetensors", "--dtype", "bf16", "--out", tmp_path / "st").exit_code == 0
    described = json_out(cli("info", tmp_path / "st", "--json"))
    assert described["kind"] == "safetensors export" and described["dtype"] == "bf16"
    assert described["source_checkpoint"].endswith("step-000001")
    assert described["architecture"]["model_type"] == "gpt2" and described["parameters"] > 0
    assert described["tokenizer"]["kind"] == "char" and described["missing_files"] is None
    assert {Path(f["path"]).name for f in described["files"]} >= {"model.safetensors", "tokenizer.json"}
    shown = cli("info", tmp_path / "st")
    assert shown.exit_code == 0 and "format: safetensors" in shown.stdout and "dtype: bf16" in shown.stdout
    file = json_out(cli("info", tmp_path / "st" / "model.safetensors", "--json"))
    assert file["kind"] == "safetensors file" and file["parameters"] == described["parameters"] and file["dtype"] == "bf16"


def test_info_describes_an_onnx_export(cli, gpt2_run, tmp_path):
    assert cli("export", gpt2_run, "--format", "onnx", "--out", gpt2_run / "export" / "onnx").exit_code == 0
    model = json_out(cli("info", gpt2_run / "export" / "onnx" / "model.onnx", "--json"))
    assert model["kind"] == "onnx file" and model["format"] == "onnx" and model["dtype"] == "fp32" and model["size_bytes"] > 0
    (gpt2_run / "config.yaml").write_text("model:\n  backend: gpt\n")  # (what makes a folder a run for `aigc info`)
    assert "onnx" in json_out(cli("info", gpt2_run, "--json"))["exports"]


def test_what_a_killed_export_left_is_removed_by_the_next(cli, gpt2_run, tmp_path):
    left = tmp_path / ".st.abc123.partial"  # as staging_dir names it
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"half")
    assert cli("export", gpt2_run, "--format", "safetensors", "--out", tmp_path / "st").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st"]


def test_gguf_through_the_cli_loads_in_llama_cpp_and_info_describes_it(cli, llama_run, tmp_path):
    import llama_cpp

    out = json_out(cli("export", llama_run, "--format", "gguf", "--dtype", "fp16", "--out", tmp_path / "gguf", "--json"))
    assert out["format"] == "gguf" and out["dtype"] == "fp16"
    assert {Path(f["path"]).name for f in out["files"]} == {"model.gguf", "Modelfile"}
    assert "FROM ./model.gguf" in (tmp_path / "gguf" / "Modelfile").read_text()
    model = llama_cpp.Llama(str(tmp_path / "gguf" / "model.gguf"), vocab_only=True, verbose=False)
    assert model.tokenize(b"To be, or not", add_bos=False)  # a file llama.cpp opens
    described = json_out(cli("info", tmp_path / "gguf", "--json"))
    assert described["kind"] == "gguf export" and described["dtype"] == "fp16"
    assert json_out(cli("info", tmp_path / "gguf" / "model.gguf", "--json"))["format"] == "gguf"
