"""`aigc finetune` on a tiny real GPT: masking, LoRA, merge, resume, templates, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import json_out, tiny_config

PAIRS = [("eins", "one"), ("zwei", "two"), ("drei", "three"), ("vier", "four"), ("fünf", "five"), ("sechs", "six"),
         ("sieben", "seven"), ("acht", "eight"), ("neun", "nine"), ("zehn", "ten")] * 3


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A tiny GPT trained for a few steps by `aigc train`: the base every test fine-tunes."""
    from typer.testing import CliRunner

    from aigc_cli.cli import app

    tmp = tmp_path_factory.mktemp("base")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(f"German: {de}\nEnglish: {en}" for de, en in PAIRS) * 20, encoding="utf-8")
    cfg = tiny_config(tmp, corpus, model={"block_size": 32})
    runner = CliRunner()
    assert runner.invoke(app, ["prep", str(cfg)]).exit_code == 0
    result = runner.invoke(app, ["train", str(cfg), "--json", "train.max_steps=10"])
    return Path(json.loads(result.stdout)["checkpoint"])


def write_pairs(tmp_path: Path, rows=None) -> Path:
    path = tmp_path / "pairs.jsonl"
    rows = rows if rows is not None else [{"de": de, "en": en} for de, en in PAIRS]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def finetune_config(tmp_path: Path, base: Path, method: str = "lora", **finetune) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    raw = {
        "data": {"source": "unused.txt"},
        "finetune": {"base": str(base), "method": method, "train_file": str(write_pairs(tmp_path)), "prompt_field": "de",
                     "response_field": "en", "template": "German: {de}\nEnglish: ", "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                     **finetune},
        "train": {"out_dir": str(tmp_path / "ft"), "max_steps": 12, "batch_size": 4, "learning_rate": 1e-2, "warmup_steps": 0,
                  "eval_every": 6, "eval_batches": 2, "save_every": 6, "log_every": 3},
        "generate": {"template": "German: {source}\nEnglish: ", "max_new_tokens": 6, "temperature": 0.7, "top_k": 10},
    }
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def test_loss_covers_only_the_response():
    from transformers import PreTrainedTokenizerFast

    from aigc_cli.data.pairs import IGNORE_INDEX, PairExamples, PairRecord
    from aigc_cli.data.tokenization import build_char_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=build_char_tokenizer("abcdefghijklmnopqrstuvwxyz:\n "), eos_token="<|endoftext|>")
    records = [PairRecord({"q": "abc", "a": "xyz"}, "t:1")]
    examples = PairExamples(records, tok, "Q: {q}\nA: ", "a", max_length=64, eos_id=tok.eos_token_id)
    inputs, targets = examples.batch([0])
    prompt_len = len("Q: abc\nA: ")
    # Every target before the response is ignored; the response and end-of-text are learned.
    assert (targets[0, :prompt_len - 1] == IGNORE_INDEX).all()
    assert tok.decode(targets[0, prompt_len - 1:prompt_len + 2].tolist()) == "xyz"
    assert targets[0, -1].item() == tok.eos_token_id
    assert tok.decode(inputs[0].tolist()) == "Q: abc\nA: xyz"


def test_truncation_is_counted():
    from transformers import PreTrainedTokenizerFast

    from aigc_cli.data.pairs import PairExamples, PairRecord
    from aigc_cli.data.tokenization import build_char_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=build_char_tokenizer("abcxyz"), eos_token="<|endoftext|>")
    records = [PairRecord({"q": "a" * 5, "a": "x" * 50}, "t:1"), PairRecord({"q": "b", "a": "y"}, "t:2")]
    examples = PairExamples(records, tok, "{q}", "a", max_length=16, eos_id=tok.eos_token_id)
    assert examples.truncated == 1 and max(len(r[0]) for r in examples.rows) == 17


def test_lora_trains_only_adapters_and_merge_matches(cli, tmp_path, base_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = json_out(cli("finetune", finetune_config(tmp_path, base_model), "--merge", "--json"))
    assert 0 < out["trainable_params"] < 0.2 * out["total_params"]
    adapter = Path(out["checkpoint"])
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()

    base = AutoModelForCausalLM.from_pretrained(base_model)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), adapter)
    base_weights = load_file(str(base_model / "model.safetensors"))
    # The base weights inside the tuned model are bit-identical to the base checkpoint.
    for name, tensor in tuned.get_base_model().state_dict().items():
        key = name.replace(".base_layer", "")
        if "lora_" not in name and key in base_weights:
            assert torch.equal(tensor, base_weights[key]), name
    adapters = load_file(str(adapter / "adapter_model.safetensors"))
    assert any(t.abs().sum() > 0 for n, t in adapters.items() if "lora_B" in n)  # B starts at zero: it trained

    merged = AutoModelForCausalLM.from_pretrained(out["merged"]).eval()
    ids = torch.tensor([[5, 9, 12, 40, 41, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, tuned.eval()(ids).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-4)

    # generate: the adapter (base + adapter) and the merged model give the same text for the same seed.
    texts = []
    for ckpt in (out["checkpoint"], out["merged"]):
        gen = json_out(cli("generate", tmp_path / "ft.yaml", "--checkpoint", ckpt, "--prompt", "zwei", "--prompt", "acht",
                           "--out", tmp_path / f"g-{Path(ckpt).name}.jsonl", "--json"))
        texts.append([json.loads(line)["completion"] for line in open(gen["outputs"], encoding="utf-8")])
    assert texts[0] == texts[1]


def test_loraplus_ratio_scales_only_the_b_matrices_step(cli, tmp_path, base_model):
    """One step from the same start: B begins at zero and A gets no gradient through a zero B, so
    after it B is exactly (Adam's step is linear in the rate) ratio × B of the plain run."""
    adapters = {}
    for name, ratio in (("plain", None), ("plus", 16.0)):
        lora = {"r": 4, "alpha": 8, "dropout": 0.0, "loraplus_lr_ratio": ratio}
        out = json_out(cli("finetune", finetune_config(tmp_path / name, base_model, lora=lora), "train.max_steps=1", "--json"))
        adapters[name] = load_file(f"{out['checkpoint']}/adapter_model.safetensors")
    b_names = [n for n in adapters["plain"] if "lora_B" in n]
    assert b_names and all(adapters["plain"][n].abs().sum() > 0 for n in b_names)
    for name, plain in adapters["plain"].items():
        expected = plain * 16 if name in b_names else plain
        torch.testing.assert_close(adapters["plus"][name], expected, rtol=1e-5, atol=1e-7)


def test_dora_trains_magnitudes_and_merges_exactly(cli, tmp_path, base_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = finetune_config(tmp_path, base_model, lora={"r": 4, "alpha": 8, "dropout": 0.0, "dora": True})
    out = json_out(cli("finetune", cfg, "--merge", "--json"))
    adapters = load_file(f"{out['checkpoint']}/adapter_model.safetensors")
    assert any("lora_magnitude_vector" in name for name in adapters)  # DoRA's per-column magnitudes were saved
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), out["checkpoint"]).eval()
    merged = AutoModelForCausalLM.from_pretrained(out["merged"]).eval()
    ids = torch.tensor([[5, 9, 12, 40, 41, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, tuned(ids).logits, atol=1e-4, rtol=1e-4)


def test_merge_of_an_adapter_on_tied_embeddings_keeps_the_logits(cli, tmp_path, base_model):
    # GPT-2 ties the output head to the token embeddings; an adapter on `wte` changes only the
    # input side, so a naive merge into the shared matrix would change the head as well.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = finetune_config(tmp_path, base_model, lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["c_attn", "wte"]})
    out = json_out(cli("finetune", cfg, "--merge", "--json"))
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), out["checkpoint"]).eval()
    merged = AutoModelForCausalLM.from_pretrained(out["merged"]).eval()
    assert merged.config.tie_word_embeddings is False
    ids = torch.tensor([[5, 9, 12, 40, 41, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, tuned(ids).logits, atol=1e-4, rtol=1e-4)


def test_full_finetune_with_frozen_layers(cli, tmp_path, base_model):
    out = json_out(cli("finetune", finetune_config(tmp_path, base_model, method="full", freeze_layers=0), "--json"))
    assert out["trainable_params"] == out["total_params"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out["checkpoint"])  # a standalone Hugging Face model


def test_a_stock_gpt2_base_is_fine_tuned_on_the_fused_gelu(tmp_path, base_model):
    # Hub GPT-2s say "gelu_new" (five tensor ops); the base is loaded onto the fused kernel of the
    # same function, and its logits stay those of the stock activation.
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.activations import GELUTanh

    from aigc_cli.training.finetune import load_base_model

    stock_dir = tmp_path / "stock"
    stock = AutoModelForCausalLM.from_pretrained(base_model).eval()
    stock.config.activation_function = "gelu_new"
    stock.save_pretrained(stock_dir)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(stock_dir)
    stock = AutoModelForCausalLM.from_pretrained(stock_dir).eval()
    assert stock.config.activation_function == "gelu_new"
    _, model, _ = load_base_model(SimpleNamespace(base=str(stock_dir), trust_remote_code=False), "cpu")
    assert any(isinstance(m, GELUTanh) for m in model.modules())
    ids = torch.tensor([[5, 9, 12, 40, 41, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, stock(ids).logits, atol=1e-5, rtol=1e-5)


def test_freeze_layers_keeps_bottom_block(cli, tmp_path, base_model):
    # The tiny base has one block; freezing it all is refused, which proves the count is checked.
    result = cli("finetune", finetune_config(tmp_path, base_model, method="full", freeze_layers=1))
    assert result.exit_code == 2 and "freeze_layers=1" in result.stderr


def test_lora_resume_continues_exactly(cli, tmp_path, base_model):
    full = json_out(cli("finetune", finetune_config(tmp_path / "a", base_model), "--json"))
    cfg = finetune_config(tmp_path / "b", base_model)
    json_out(cli("finetune", cfg, "train.max_steps=6", "train.lr_decay_steps=12", "--json"))
    resumed = json_out(cli("finetune", cfg, "--resume", "train.lr_decay_steps=12", "--json"))
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], abs=1e-6)
    a = load_file(f"{full['checkpoint']}/adapter_model.safetensors")
    b = load_file(f"{resumed['checkpoint']}/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_few_shot_prompting_fills_examples(cli, tmp_path, base_model):
    cfg = finetune_config(tmp_path, base_model)
    examples = tmp_path / "shots.jsonl"
    examples.write_text("".join(json.dumps({"source": de, "target": en}) + "\n" for de, en in PAIRS[:10]), encoding="utf-8")
    out = json_out(cli("generate", cfg, "--checkpoint", base_model, "--prompt", "zehn", "generate.few_shot.k=3",
                       f"generate.few_shot.examples_file={examples}", "--out", tmp_path / "fs.jsonl", "--json"))
    row = json.loads(open(out["outputs"], encoding="utf-8").readline())
    assert row["prompt"].count("German: ") == 4 and row["prompt"].endswith("German: zehn\nEnglish: ")
    again = json_out(cli("generate", cfg, "--checkpoint", base_model, "--prompt", "zehn", "generate.few_shot.k=3",
                         f"generate.few_shot.examples_file={examples}", "--out", tmp_path / "fs2.jsonl", "--json"))
    assert json.loads(open(again["outputs"], encoding="utf-8").readline())["prompt"] == row["prompt"]  # seeded draw


def test_text_metrics_report(cli, tmp_path):
    gens = tmp_path / "g.jsonl"
    gens.write_text("".join(json.dumps({"completion": c, "sample": 0}) + "\n" for c in ["a man rides a horse", "two dogs play"]))
    refs = tmp_path / "refs.txt"
    refs.write_text("a man rides a horse\ntwo cats sleep\n")
    cfg = tmp_path / "e.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": "x"}, "eval": {"metrics": ["bleu", "chrf", "rougeL"], "generations": str(gens),
                                                                      "references": str(refs), "out": str(tmp_path / "r.json")}}))
    out = json_out(cli("eval", cfg, "--json"))
    import sacrebleu

    assert out["metrics"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(["a man rides a horse", "two dogs play"], [["a man rides a horse", "two cats sleep"]]).score)
    assert 0 < out["metrics"]["chrf"] < 100 and out["metrics"]["rougeL"] == pytest.approx((1.0 + 1 / 3) / 2)  # ROUGE in 0..1


BAD_JSONL = '{"de": "a", "en": "b"}\n{oops\n'


def _file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("change, message", [
    (lambda t: ["finetune.template=German: {german} English: "], "pairs.jsonl:1: finetune.template names {german} but this record has no field 'german'"),
    (lambda t: [f"finetune.train_file={_file(t / 'empty.jsonl', '')}"], "holds no examples"),
    (lambda t: ["finetune.train_file=" + str(_file(t / "bad.jsonl", BAD_JSONL))], "bad.jsonl:2: malformed JSON"),
    (lambda t: [f"finetune.base={t}"], "not a model directory"),
    (lambda t: ["finetune.base=openai-community/gpt2"], "HF_HUB_OFFLINE"),
    (lambda t: [f"finetune.base={t / 'nope'}"], "finetune.base not found"),
])
def test_bad_finetune_input(cli, tmp_path, base_model, change, message):
    result = cli("finetune", finetune_config(tmp_path, base_model), *change(tmp_path))
    assert result.exit_code == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not (tmp_path / "ft" / "checkpoints").exists()


def test_tokenizer_model_mismatch(cli, tmp_path, base_model):
    import shutil

    from aigc_cli.data.tokenization import build_char_tokenizer, save_tokenizer

    broken = tmp_path / "broken"
    shutil.copytree(base_model, broken)
    (broken / "checksums.json").unlink()  # a hand-assembled model directory: nothing to verify against
    save_tokenizer(build_char_tokenizer("".join(chr(0x4E00 + i) for i in range(2000))), broken)
    result = cli("finetune", finetune_config(tmp_path, broken))
    assert result.exit_code == 2 and "tokenizer/model mismatch" in result.stderr


def test_a_lora_adapter_moved_with_its_base_still_loads(cli, tmp_path, base_model):
    """adapter_config.json names the base by absolute path (for peft and other tools);
    aigc_base.json records it relative to the adapter, so the pair can move together."""
    import shutil

    root = tmp_path / "before"
    shutil.copytree(base_model.parent.parent, root / "base-run")
    base = root / "base-run" / "checkpoints" / base_model.name
    cfg = finetune_config(root / "lora", base)
    out = json_out(cli("finetune", cfg, "--json"))
    first = json_out(cli("generate", cfg, "--prompt", "German: eins\nEnglish: ", "--out", tmp_path / "a.jsonl", "--json"))
    assert json.loads((Path(out["checkpoint"]) / "aigc_base.json").read_text())["relative_path"].startswith("..")

    kept = shutil.copy(cfg, tmp_path / "ft.yaml")  # the config stays where it was
    moved = tmp_path / "after"
    shutil.move(root, moved)
    adapter = moved / Path(out["checkpoint"]).relative_to(root)
    second = json_out(cli("generate", kept, "--checkpoint", adapter, "--prompt", "German: eins\nEnglish: ",
                          "--out", tmp_path / "b.jsonl", "--json"))
    rows = [json.loads(Path(r["outputs"]).read_text().splitlines()[0]) for r in (first, second)]
    assert rows[0]["completion"] == rows[1]["completion"]
    info = json_out(cli("info", adapter, "--json"))
    assert info["base_parameters"] > 0
