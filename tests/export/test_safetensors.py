"""`aigc export --format safetensors`: a standalone transformers directory that loads with
AutoModelForCausalLM and AutoTokenizer alone — a LoRA run merged into its base, or a full model copied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.conftest import json_out

TEXT = "Whether 'tis nobler in the mind"


def export_safetensors(cli, run: Path, *args: str) -> Path:
    out = json_out(cli("export", run, "--format", "safetensors", "--json", *args))
    assert out["format"] == "safetensors"
    return Path(out["out"])


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def load_standalone(directory: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(directory, dtype="auto").eval(), AutoTokenizer.from_pretrained(directory)


def test_a_lora_run_merges_into_a_standalone_model(cli, lora_run, gpt2_run):
    from aigc_cli.inference.loading import load_model

    directory = export_safetensors(cli, lora_run)
    assert directory == lora_run / "export" / "safetensors"
    assert not (directory / "adapter_config.json").exists() and (directory / "model.safetensors").is_file()
    model, tokenizer = load_standalone(directory)
    ids = torch.tensor([tokenizer(TEXT).input_ids])
    adapter_on_base = load_model(lora_run, "cpu")
    assert type(adapter_on_base.model).__name__ == "PeftModelForCausalLM"
    assert tokenizer(TEXT).input_ids == adapter_on_base.tokenizer.encode(TEXT).ids
    expected = logits_of(adapter_on_base.model, ids)
    assert (logits_of(model, ids) - expected).abs().max() < 1e-4
    # The adapter matters: the base alone gives other logits.
    assert (logits_of(load_model(gpt2_run, "cpu").model, ids) - expected).abs().max() > 1e-3
    # aigc loads the folder too (generate --checkpoint, serve), and decodes what the adapter on its base decodes.
    from aigc_cli.config import GenerateConfig
    from aigc_cli.inference.text_decoding import sample_texts

    greedy = GenerateConfig(temperature=0.0, max_new_tokens=10)
    assert sample_texts(load_model(directory, "cpu"), [TEXT], greedy, [0]) == sample_texts(adapter_on_base, [TEXT], greedy, [0])


def test_a_full_model_is_copied(cli, llama_run):
    from aigc_cli.inference.loading import load_model

    directory = export_safetensors(cli, llama_run)
    model, tokenizer = load_standalone(directory)
    ids = torch.tensor([tokenizer(TEXT).input_ids])
    assert torch.equal(logits_of(model, ids), logits_of(load_model(llama_run, "cpu").model, ids))
    assert json.loads((directory / "generation_config.json").read_text())["eos_token_id"] == model.config.eos_token_id


@pytest.mark.parametrize("dtype, stored, torch_dtype", [("fp16", "F16", torch.float16), ("bf16", "BF16", torch.bfloat16)])
def test_the_dtype_is_honoured(cli, lora_run, tmp_path, dtype, stored, torch_dtype):
    directory = export_safetensors(cli, lora_run, "--dtype", dtype, "--out", tmp_path / dtype)
    with safe_open(str(directory / "model.safetensors"), framework="pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {stored}
    model, tokenizer = load_standalone(directory)
    assert next(model.parameters()).dtype == torch_dtype
    assert json.loads((directory / "aigc_export.json").read_text())["dtype"] == dtype
    full = export_safetensors(cli, lora_run, "--out", tmp_path / "fp32")
    ids = torch.tensor([tokenizer(TEXT).input_ids])
    reference = logits_of(load_standalone(full)[0], ids)
    assert (logits_of(model, ids) - reference).abs().max() < 0.05  # the same model, rounded
