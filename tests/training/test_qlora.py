"""finetune.quantization (QLoRA): LoRA adapters trained on a base that bitsandbytes holds in 4 or
8 bits, on tiny real GPT-2 and Llama models, on the CPU (bitsandbytes' CPU backend)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import json_out

PAIRS = [("eins", "one"), ("zwei", "two"), ("drei", "three"), ("vier", "four"), ("fünf", "five"), ("sechs", "six")] * 4


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """A tiny untrained GPT-2 and Llama built by the gpt backend, saved as model directories."""
    from aigc_cli.backends import GPTModelConfig, gpt
    from aigc_cli.data.tokenization import build_char_tokenizer, eos_id, save_tokenizer

    text = "".join(de + en for de, en in PAIRS) + "German: English\n"
    tok = build_char_tokenizer(text)
    out = {}
    for arch in ("gpt2", "llama"):
        directory = tmp_path_factory.mktemp(arch)
        torch.manual_seed(0)
        model = gpt.build(GPTModelConfig(architecture=arch, n_layer=1, n_head=2, n_embd=32, block_size=32),
                          {"vocab_size": tok.get_vocab_size(), "eos_id": eos_id(tok)})
        model.save_pretrained(directory)
        save_tokenizer(tok, directory, 32)
        out[arch] = directory
    return out


def qlora_config(tmp_path: Path, base: Path, quantization: str, **train) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"de": de, "en": en}, ensure_ascii=False) + "\n" for de, en in PAIRS), encoding="utf-8")
    raw = {
        "data": {"source": "unused.txt"},
        "finetune": {"base": str(base), "method": "lora", "quantization": quantization, "train_file": str(pairs),
                     "prompt_field": "de", "response_field": "en", "template": "German: {de}\nEnglish: ",
                     "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "train": {"out_dir": str(tmp_path / "ft"), "max_steps": 6, "batch_size": 4, "learning_rate": 2e-2, "warmup_steps": 0,
                  "eval_every": 3, "eval_batches": 1, "save_every": 3, "log_every": 3, "sample_every_eval": False, **train},
        "generate": {"template": "German: {source}\nEnglish: ", "max_new_tokens": 4, "temperature": 0.7, "top_k": 10},
    }
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_adapters_train_on_bitsandbytes_layers_on_cpu(bases, arch, quantization):
    """Forward and backward through bitsandbytes' own CPU kernels: the projections are its
    Linear4bit/Linear8bitLt under peft's LoRA layers, only the adapters learn, and the loss falls."""
    import bitsandbytes as bnb

    from aigc_cli.backends import lora
    from aigc_cli.training.finetune import load_base_model
    from aigc_cli.training.quantization import parameter_counts

    fc = SimpleNamespace(base=str(bases[arch]), trust_remote_code=False)
    _, model, _ = load_base_model(fc, "cpu", quantization, torch.float32)
    layer = bnb.nn.Linear4bit if quantization == "4bit" else bnb.nn.Linear8bitLt
    quantized = [m for m in model.modules() if isinstance(m, layer)]
    assert len(quantized) == (4 if arch == "gpt2" else 7)  # every attention and MLP projection of the one block
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # still tied after the copies
    model = lora.add_adapters(model, SimpleNamespace(r=4, alpha=8, dropout=0.0, target_modules=None, modules_to_save=None,
                                                     rslora=False, dora=False))
    wrapped = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert wrapped and all(isinstance(m.get_base_layer(), layer) for m in wrapped)
    _, total = parameter_counts(model)
    assert total == sum(t.numel() for t in load_file(str(bases[arch] / "model.safetensors")).values()) + \
        sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)  # 4-bit weights counted unpacked

    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=2e-2)
    ids = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(4):
        loss = lora.loss(model, (ids[:, :-1], ids[:, 1:]), "model")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        model.eval()  # a validation pass between steps (bitsandbytes must not repack the weights for inference)
        with torch.no_grad():
            lora.loss(model, (ids[:, :-1], ids[:, 1:]), "model")
        model.train()
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    assert all(not torch.equal(a, p) for a, p in zip(before, trainable) if a.abs().sum() == 0)  # every B left zero
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_qlora_adapter_is_plain_peft_and_merges_into_full_precision(cli, tmp_path, bases):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = bases["llama"]
    cfg = qlora_config(tmp_path, base, "8bit")
    result = cli("finetune", cfg, "--merge")
    assert result.exit_code == 0, result.stderr
    assert "checkpoint (lora, on a 8bit base)" in result.stdout and "merged into the full-precision base" in result.stdout
    run = tmp_path / "ft"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert all(math.isfinite(v) for v in val) and val[-1] < val[0], val
    adapter = run / "checkpoints" / "step-000006"
    assert json.loads((adapter / "aigc_quantization.json").read_text())["quantization"] == "8bit"
    assert json.loads((run / "provenance.json").read_text())["quantization"] == "8bit"
    trained = load_file(str(adapter / "adapter_model.safetensors"))
    assert any(t.abs().sum() > 0 for n, t in trained.items() if "lora_B" in n)

    # The adapter loads with plain peft on the unquantized base, its weights as saved.
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    assert not any(type(m).__module__.startswith("bitsandbytes") for m in tuned.modules())
    loaded = {n.replace(".default", ""): p for n, p in tuned.named_parameters() if "lora_" in n}
    assert all(torch.equal(loaded[n], t) for n, t in trained.items())
    merged = AutoModelForCausalLM.from_pretrained(run / "merged").eval()
    assert "quantization_config" not in json.loads((run / "merged" / "config.json").read_text())
    ids = torch.tensor([[5, 9, 12, 40, 41, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, tuned(ids).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(merged(ids).logits, AutoModelForCausalLM.from_pretrained(base)(ids).logits, atol=1e-4)

    # generate puts the adapter on the full-precision base: the same text as the merged model.
    texts = []
    for checkpoint in (adapter, run / "merged"):
        out = json_out(cli("generate", cfg, "--checkpoint", checkpoint, "--prompt", "zwei", "--out", tmp_path / f"{checkpoint.name}.jsonl", "--json"))
        texts.append([json.loads(line)["completion"] for line in open(out["outputs"], encoding="utf-8")])
    assert texts[0] == texts[1]


def test_qlora_resume_reloads_the_adapter_onto_the_quantized_base(cli, tmp_path, bases):
    cfg = qlora_config(tmp_path / "a", bases["gpt2"], "4bit")
    full = json_out(cli("finetune", cfg, "--json"))
    # The same run interrupted after its step-3 checkpoint: resuming must give the same step 6.
    run = tmp_path / "b" / "ft"
    shutil.copytree(tmp_path / "a" / "ft", run)
    shutil.rmtree(run / "checkpoints" / "step-000006")
    (run / "checkpoints" / "latest").write_text("step-000003\n")
    resumed = json_out(cli("finetune", cfg, f"train.out_dir={run}", "--resume", "--json"))
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], abs=1e-6)
    assert resumed["total_params"] == full["total_params"] and resumed["trainable_params"] == full["trainable_params"]
    a = load_file(f"{full['checkpoint']}/adapter_model.safetensors")
    b = load_file(f"{resumed['checkpoint']}/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (Path(resumed["checkpoint"]) / "aigc_quantization.json").is_file()


def test_quantization_needs_lora(cli, tmp_path, bases):
    cfg = qlora_config(tmp_path, bases["gpt2"], "4bit")
    result = cli("finetune", cfg, "finetune.method=full")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "quantization=4bit needs LoRA adapters (method=lora, or preference.weights=lora under dpo/orpo/simpo), not method=full:" in errors[0], result.stderr
    assert not (tmp_path / "ft").exists()


def test_quantization_refuses_fsdp(cli, tmp_path, bases, monkeypatch):
    # Checked before anything loads or joins a process group, so one process can stand for torchrun's first.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = cli("finetune", qlora_config(tmp_path, bases["gpt2"], "8bit"), "train.strategy=fsdp")
    assert result.exit_code == 2 and "cannot be combined with train.strategy=fsdp" in result.stderr, result.stderr
    assert not (tmp_path / "ft" / "checkpoints").exists()
