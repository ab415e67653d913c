"""Continued pretraining: `aigc train` with model.init_from, on data prepared with the model's tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from tests.conftest import TINY_TEXT, json_out, tiny_config
from tests.tiny_pretrained import save_gpt2, save_llama, save_tokenizer, train_bpe

FP32 = {"precision": "fp32"}  # bf16 autocast on some CPUs: the equalities below are exact in fp32


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny GPT trained by `aigc train` (char tokenizer): the model every test continues. Returns its run directory."""
    from typer.testing import CliRunner

    from aigc_cli.cli import app

    tmp = tmp_path_factory.mktemp("base")
    corpus = tmp / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    cfg = tiny_config(tmp, corpus, train=FP32)
    runner = CliRunner()
    assert runner.invoke(app, ["prep", str(cfg)]).exit_code == 0
    assert runner.invoke(app, ["train", str(cfg)]).exit_code == 0
    return tmp / "run"


def continued_config(tmp_path: Path, init_from: Path | str, source: Path | None = None, model=None, train=None, tokenizer=None) -> Path:
    """An experiment continuing `init_from`; the model section names no sizes (they come from the model)."""
    source = source or Path(init_from).parent / "corpus.txt"
    path = tiny_config(tmp_path, source, train={**FP32, **(train or {})},
                       data={"tokenizer": tokenizer or {"kind": "pretrained"}})
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["model"] = {"init_from": str(init_from), "block_size": 16, **(model or {})}
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def val_losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in rows if "val_loss" in r]


def error_line(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def test_continued_run_starts_at_the_base_weights_and_lowers_the_loss(cli, tmp_path, base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = continued_config(tmp_path, base)
    prepared = json_out(cli("prep", cfg, "--json"))
    # The base's own tokenizer, from its latest checkpoint: the same tokens as the base was trained on.
    assert (tmp_path / "prepared" / "train.bin").read_bytes() == (base.parent / "prepared" / "train.bin").read_bytes()
    assert prepared["vocab_size"] == json.loads((base.parent / "prepared" / "meta.json").read_text())["vocab_size"]

    result = json_out(cli("train", cfg, "--json"))
    losses = val_losses(tmp_path / "run")
    # Step 0 evaluates the same fixed batches as the base's last evaluation did: same weights, same loss.
    assert losses[0] == val_losses(base)[-1]
    assert result["val_loss"] < losses[0] - 0.1

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    assert (saved["n_layer"], saved["n_head"], saved["n_embd"], saved["architecture"]) == (1, 2, 32, "gpt2")  # the base's, filled in
    base_checkpoint = base / "checkpoints" / "step-000020"
    record = json.loads((tmp_path / "run" / "provenance.json").read_text())["init_from"]
    assert record["ref"] == str(base_checkpoint.resolve())
    assert set(record["sha256"]) == {"config.json", "generation_config.json", "model.safetensors"}
    assert record["sha256"]["model.safetensors"] == json.loads((base_checkpoint / "checksums.json").read_text())["files"]["model.safetensors"]

    # The output is a plain transformers model directory with its tokenizer.
    checkpoint = Path(result["checkpoint"])
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer("To be, or not", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.size(1), model.config.vocab_size)
    trained, started = load_file(checkpoint / "model.safetensors"), load_file(base_checkpoint / "model.safetensors")
    assert any(not torch.equal(trained[k], started[k]) for k in started)


def test_resume_loads_the_runs_checkpoint_not_init_from(cli, tmp_path, base):
    # The schedule is fixed to 20 steps, so stopping at 10 and resuming replays the uninterrupted run.
    schedule = {"lr_decay_steps": 20}
    straight = continued_config(tmp_path / "straight", base, train=schedule)
    assert cli("prep", straight).exit_code == 0
    assert cli("train", straight).exit_code == 0

    copy = shutil.copytree(base / "checkpoints" / "step-000020", tmp_path / "copy-of-base")
    halves = continued_config(tmp_path / "halves", copy, source=base.parent / "corpus.txt", train=schedule)
    assert cli("prep", halves).exit_code == 0
    assert cli("train", halves, "train.max_steps=10").exit_code == 0
    shutil.rmtree(copy)  # gone: a resumed run needs only its own checkpoint (as a hub id needs no network then)
    resumed = json_out(cli("train", halves, "--resume", "--json"))

    final = load_file(Path(resumed["checkpoint"]) / "model.safetensors")
    expected = load_file(tmp_path / "straight" / "run" / "checkpoints" / "step-000020" / "model.safetensors")
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    record = json.loads((tmp_path / "halves" / "run" / "provenance.json").read_text())["init_from"]
    assert record["ref"] == str(copy.resolve()) and "model.safetensors" in record["sha256"]  # the first start's record, kept


def test_resume_with_other_sizes_is_refused(cli, tmp_path, base):
    cfg = continued_config(tmp_path, base)
    assert cli("prep", cfg).exit_code == 0
    assert cli("train", cfg, "train.max_steps=5", "train.save_every=5").exit_code == 0
    assert "model.n_layer=2" in error_line(cli("train", cfg, "--resume", "model.n_layer=2"))


@pytest.mark.parametrize("overrides, message", [
    (["model.n_layer=3"], "model.n_layer=3, but model.init_from {ref} has 1"),
    (["model.n_embd=64", "model.n_head=2"], "model.n_embd=64, but model.init_from {ref} has 32"),
    (["model.architecture=llama"], "model.architecture=llama, but model.init_from {ref} is a 'gpt2' model"),
    (["model.block_size=32"], "model.block_size=32 is longer than the context of model.init_from {ref} (16 tokens)"),
])
def test_sizes_that_do_not_fit_the_pretrained_model_are_exit_2(cli, tmp_path, base, overrides, message):
    cfg = continued_config(tmp_path, base)
    assert cli("prep", cfg).exit_code == 0
    line = error_line(cli("train", cfg, *overrides))
    assert message.format(ref=(base / "checkpoints" / "step-000020").resolve()) in line
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_sizes_equal_to_the_models_are_accepted(tmp_path, base):
    from aigc_cli.config import load_config
    from aigc_cli.runs.init_from import pretrained_start

    cfg = load_config(continued_config(tmp_path, base), ["model.n_layer=1", "model.n_embd=32", "model.intermediate_size=128"])
    filled, start = pretrained_start(cfg, base.parent / "prepared")
    assert (filled.model.n_layer, filled.model.n_head, filled.model.intermediate_size) == (1, 2, 128)  # 4×n_embd is GPT-2's null
    assert start.ref == str((base / "checkpoints" / "step-000020").resolve()) and start.dropout is None


def test_a_llama_configs_sizes_fill_the_section_and_a_given_dropout_replaces_its_own(tmp_path):
    from aigc_cli.backends.gpt import start_from
    from aigc_cli.config import load_config
    from aigc_cli.runs.init_from import pretrained_start

    save_llama(tmp_path / "llama", vocab_size=300, eos_id=1)
    cfg = load_config(continued_config(tmp_path, tmp_path / "llama", source=tmp_path / "unused.txt"),
                      ["model.intermediate_size=null", "model.dropout=0.2"])
    filled, start = pretrained_start(cfg, tmp_path / "no-prepared-data-yet")
    model = filled.model
    assert (model.architecture, model.n_layer, model.n_head, model.n_kv_head, model.n_embd, model.intermediate_size) == ("llama", 1, 2, 1, 32, 64)
    assert start.dropout == 0.2 and model.dropout == 0.2
    assert start_from(start.ref, "cpu", dropout=start.dropout).config.attention_dropout == 0.2


def test_other_tokenizer_is_exit_2_naming_both(cli, tmp_path, base):
    other = tmp_path / "other.txt"
    other.write_text("a completely different alphabet: xyz qrs\n" * 50, encoding="utf-8")
    cfg = continued_config(tmp_path, base, source=other, tokenizer={"kind": "char"})
    assert cli("prep", cfg).exit_code == 0
    line = error_line(cli("train", cfg))
    assert (f"the prepared data in {tmp_path / 'prepared'} was tokenized with a char tokenizer built by `aigc prep`, "
            f"not with the tokenizer of model.init_from {(base / 'checkpoints' / 'step-000020').resolve()}") in line
    assert "data.tokenizer.kind=pretrained" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("vocab_size, eos, message", [
    (100, 0, "has a 313-token vocabulary, but model.init_from {ref} has only 100 embeddings"),
    (400, 5, "ends documents with token 0, but model.init_from {ref}'s end-of-text is 5"),
])
def test_model_without_room_for_the_vocabulary_or_another_eos_is_exit_2(cli, tmp_path, base, vocab_size, eos, message):
    model_dir = tmp_path / "bare-gpt2"  # weights and config only: no tokenizer to compare, the sizes still are
    save_gpt2(model_dir, vocab_size, eos)
    cfg = continued_config(tmp_path, model_dir, source=base.parent / "corpus.txt",
                           tokenizer={"kind": "pretrained", "path": str(base)})
    assert cli("prep", cfg).exit_code == 0
    line = error_line(cli("train", cfg))
    assert message.format(ref=model_dir.resolve()) in line and str(tmp_path / "prepared") in line


def test_hub_id_offline_is_exit_2_at_once(cli, tmp_path, base, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = continued_config(tmp_path, "some-org/some-model", source=base.parent / "corpus.txt")
    expected = "model.init_from 'some-org/some-model' is a hub id, but HF_HUB_OFFLINE is set so nothing can be downloaded"
    assert expected in error_line(cli("prep", cfg))  # the tokenizer would come from it too
    line = error_line(cli("train", cfg, f"data.prepared_dir={base.parent / 'prepared'}"))
    assert expected in line and "pass a local model directory" in line


def test_a_llama_saved_by_transformers_continues_with_its_own_tokenizer(cli, tmp_path):
    """Any Hugging Face causal LM directory: a Llama with a BPE tokenizer whose end-of-text is </s>."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aigc_cli.data.batches import TokenArray

    documents = [line for line in TINY_TEXT.splitlines()[:6]] * 10
    model_dir = tmp_path / "tiny-llama"
    tok = train_bpe(documents)
    save_tokenizer(tok, model_dir)
    save_llama(model_dir, tok.get_vocab_size(), eos_id=tok.token_to_id("</s>"), bos_id=tok.token_to_id("<s>"))
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in documents), encoding="utf-8")
    cfg = continued_config(tmp_path, model_dir, source=source, train={"max_steps": 10, "learning_rate": 1e-2})

    assert json_out(cli("prep", cfg, "--json"))["vocab_size"] == tok.get_vocab_size()
    hf_tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eos = hf_tokenizer.eos_token_id
    train_ids = list(TokenArray(tmp_path / "prepared", "train").tokens)
    # Documents as the model's own tokenizer encodes them (no special tokens), each followed by </s>.
    encoded = {tuple(hf_tokenizer(d, add_special_tokens=False).input_ids) for d in documents}
    ends = [i for i, t in enumerate(train_ids) if t == eos]
    pieces = [tuple(train_ids[start + 1:end]) for start, end in zip([-1] + ends, ends)]
    assert train_ids[-1] == eos and len(pieces) > 10 and all(p in encoded for p in pieces)

    result = json_out(cli("train", cfg, "--json"))
    # Step 0's loss is the Llama's own on the same validation batches.
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    val, generator = TokenArray(tmp_path / "prepared", "val"), torch.Generator().manual_seed(1337 + 1)
    with torch.no_grad():
        losses = [F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten()).item()
                  for x, y in (val.random_batch(4, 16, generator) for _ in range(2))]
    first = val_losses(tmp_path / "run")[0]
    assert abs(first - sum(losses) / len(losses)) < 1e-5
    assert result["val_loss"] < first

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    assert (saved["architecture"], saved["n_kv_head"], saved["intermediate_size"]) == ("llama", 1, 64)
    checkpoint = Path(result["checkpoint"])
    assert AutoModelForCausalLM.from_pretrained(checkpoint).config.model_type == "llama"
    reloaded = AutoTokenizer.from_pretrained(checkpoint)
    assert (reloaded.bos_token, reloaded.eos_token) == ("<s>", "</s>")  # the model's own tokens, not aigc's
