"""`aigc export --format onnx`: ONNX Runtime on the exported decoder gives transformers' logits
(prefill, cached decode steps, a left-padded batch) and aigc's greedy text, for gpt2, llama and
a merged LoRA run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import json_out

ort = pytest.importorskip("onnxruntime")

PROMPT = "To be, or not"
STEPS = 12


def export_onnx(cli, run: Path, *args: str) -> Path:
    out = json_out(cli("export", run, "--format", "onnx", "--json", *args))
    assert out["format"] == "onnx" and Path(out["out"]).is_dir()
    return Path(out["out"])


class OnnxDecoder:
    """The exported model driven as optimum and transformers.js drive it: empty past first, then
    the presents fed back as the next step's past."""

    def __init__(self, directory: Path):
        import json

        self.session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
        self.past_names = [i.name for i in self.session.get_inputs()][3:]
        config = json.loads((directory / "config.json").read_text())
        heads = config.get("num_attention_heads") or config["n_head"]
        self.kv_heads = config.get("num_key_value_heads") or heads
        self.head_dim = (config.get("hidden_size") or config["n_embd"]) // heads
        self.float = np.float16 if self.session.get_inputs()[3].type == "tensor(float16)" else np.float32

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list[np.ndarray] | None):
        if past is None:
            past = [np.zeros((ids.shape[0], self.kv_heads, 0, self.head_dim), self.float) for _ in self.past_names]
        feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64), "position_ids": positions.astype(np.int64),
                **dict(zip(self.past_names, past))}
        logits, *present = self.session.run(None, feed)
        return logits, present


@pytest.fixture(scope="module", params=["gpt2", "llama", "lora"])
def exported(request, cli_module):
    run = request.getfixturevalue(f"{request.param}_run")
    return run, export_onnx(cli_module, run)


@pytest.fixture(scope="module")
def cli_module():
    from typer.testing import CliRunner

    from aigc_cli.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def reference(run: Path):
    from aigc_cli.inference.loading import load_model

    return load_model(run, "cpu", modality="text")


def test_the_layout_is_optimums(exported):
    run, directory = exported
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs[3:] == [f"past_key_values.{i}.{p}" for i in range(2) for p in ("key", "value")]
    assert outputs == ["logits", *(f"present.{i}.{p}" for i in range(2) for p in ("key", "value"))]
    # (key/value heads, head dim): the llama's 4 query heads of 8 share 2 key/value heads
    expected = {"gpt2": (2, 16), "llama": (2, 8), "lora": (2, 16)}[run.parent.name.split("-")[0]]
    assert tuple(session.get_inputs()[3].shape[i] for i in (1, 3)) == expected
    names = {p.name for p in directory.iterdir()}
    assert {"model.onnx", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "aigc_export.json"} <= names


def test_prefill_and_cached_steps_match_transformers(exported):
    run, directory = exported
    loaded, decoder = reference(run), OnnxDecoder(directory)
    ids = torch.tensor([loaded.tokenizer.encode(PROMPT).ids])
    with torch.no_grad():
        out = loaded.model(input_ids=ids, use_cache=True)
    logits, present = decoder.step(ids.numpy(), np.ones(ids.shape), np.arange(ids.shape[1])[None], None)
    assert np.abs(logits - out.logits.numpy()).max() < 1e-4
    cache = out["cache"] if "cache" in out else out.past_key_values
    length = ids.shape[1]
    for _ in range(5):  # each step: one new token, the past from the step before
        token = torch.tensor([[int(logits[0, -1].argmax())]])
        from aigc_cli.backends.gpt import _with_cache

        with torch.no_grad():
            out = loaded.model(input_ids=token, use_cache=True, **_with_cache(loaded.model, cache))
        cache = out["cache"] if "cache" in out else out.past_key_values
        length += 1
        logits, present = decoder.step(token.numpy(), np.ones((1, length)), np.array([[length - 1]]), present)
        assert present[0].shape[2] == length
        assert np.abs(logits - out.logits.numpy()).max() < 1e-4


def test_a_left_padded_batch_matches_transformers(exported):
    run, directory = exported
    loaded, decoder = reference(run), OnnxDecoder(directory)
    rows = [loaded.tokenizer.encode(text).ids for text in ("The slings", "Whether 'tis nobler")]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.numpy()
    logits, _ = decoder.step(ids.numpy(), mask.numpy(), positions.numpy(), None)
    real = mask.numpy().astype(bool)
    assert np.abs(logits[real] - expected[real]).max() < 1e-4


def onnx_greedy(decoder: OnnxDecoder, prompt_ids: list[int], steps: int, stop_ids) -> list[int]:
    ids, new = np.array([prompt_ids]), []
    logits, past = decoder.step(ids, np.ones(ids.shape), np.arange(ids.shape[1])[None], None)
    length = ids.shape[1]
    while len(new) < steps:
        token = int(logits[0, -1].argmax())
        if token in stop_ids:
            break
        new.append(token)
        length += 1
        logits, past = decoder.step(np.array([[token]]), np.ones((1, length)), np.array([[length - 1]]), past)
    return new


def test_greedy_text_is_aigc_generates_and_transformers(exported):
    from aigc_cli.config import GenerateConfig
    from aigc_cli.inference.text_decoding import sample_texts

    run, directory = exported
    loaded = reference(run)
    prompt_ids = loaded.tokenizer.encode(PROMPT).ids
    new = onnx_greedy(OnnxDecoder(directory), prompt_ids, STEPS, loaded.stop_ids)
    [completion] = sample_texts(loaded, [PROMPT], GenerateConfig(temperature=0.0, max_new_tokens=STEPS), [0])
    assert loaded.tokenizer.decode(new) == completion.text
    with torch.no_grad():
        generated = loaded.model.generate(torch.tensor([prompt_ids]), max_new_tokens=len(new), min_new_tokens=len(new), do_sample=False)
    assert generated[0, len(prompt_ids):].tolist() == new
    assert len(new) > 0


def test_fp16_runs_close_to_fp32(cli, llama_run, tmp_path):
    directory = export_onnx(cli, llama_run, "--dtype", "fp16", "--out", tmp_path / "fp16")
    decoder = OnnxDecoder(directory)
    assert decoder.float is np.float16
    loaded = reference(llama_run)
    ids = torch.tensor([loaded.tokenizer.encode(PROMPT).ids])
    with torch.no_grad():
        expected = loaded.model(input_ids=ids).logits.numpy()
    logits, _ = decoder.step(ids.numpy(), np.ones(ids.shape), np.arange(ids.shape[1])[None], None)
    assert logits.dtype == np.float16
    assert np.abs(logits.astype(np.float32) - expected).max() < 1e-2


def test_bf16_is_refused_with_the_reason(cli, gpt2_run, tmp_path):
    result = cli("export", gpt2_run, "--format", "onnx", "--dtype", "bf16", "--out", tmp_path / "bf16")
    assert result.exit_code == 2
    assert "bfloat16" in result.stderr and "--dtype fp32" in result.stderr
    assert not (tmp_path / "bf16").exists()
