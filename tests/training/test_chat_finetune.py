"""`aigc finetune` on conversations: the chat template travels with the checkpoint, the tuned
model stops at its end-of-turn token, packing runs through the loop, bad data is exit 2."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import json_out, tiny_config

REPLIES = {"hi": "hello there.", "how are you?": "fine, thanks."}
CONVERSATIONS = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in REPLIES.items()]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A tiny GPT pretrained by `aigc train` on the replies as plain text: LoRA needs a base whose
    frozen embeddings already mean something (on random ones the logits cannot grow sharp)."""
    from typer.testing import CliRunner

    from aigc_cli.cli import app

    tmp = tmp_path_factory.mktemp("base")
    corpus = tmp / "corpus.txt"
    corpus.write_text(" ".join(f"{q} {a}" for q, a in REPLIES.items()) * 300 + "\n", encoding="utf-8")
    cfg = tiny_config(tmp, corpus, model={"block_size": 64, "n_layer": 2},
                      train={"max_steps": 100, "batch_size": 8, "learning_rate": 1e-2, "eval_every": 1000, "save_every": 0, "sample_every_eval": False})
    runner = CliRunner()
    assert runner.invoke(app, ["prep", str(cfg)]).exit_code == 0
    return Path(json.loads(runner.invoke(app, ["train", str(cfg), "--json"]).stdout)["checkpoint"])


def chat_config(tmp_path: Path, base: Path, rows=None, name: str = "chat.jsonl", **finetune) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / name
    if not data.exists():
        rows = rows if rows is not None else [{"messages": c} for c in CONVERSATIONS] * 10
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    raw = {"finetune": {"base": str(base), "method": "lora", "train_file": str(data), "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, **finetune},
           "train": {"out_dir": str(tmp_path / "ft"), "max_steps": 40, "batch_size": 8, "learning_rate": 2e-2, "warmup_steps": 0, "min_lr": 1e-3,
                     "eval_every": 1000, "eval_batches": 1, "save_every": 0, "log_every": 10, "sample_every_eval": False}}
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize("method, lr", [("full", 1e-2), ("lora", 2e-2)])
def test_a_tuned_model_formats_like_training_and_stops_at_end_of_turn(cli, tmp_path, base_model, method, lr):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from aigc_cli.config import GenerateConfig
    from aigc_cli.data.chat import CHAT_TEMPLATES
    from aigc_cli.data.chat_examples import conversation_labels, prepare_chat_template
    from aigc_cli.inference.loading import load_model
    from aigc_cli.inference.text_decoding import sample_texts

    result = cli("finetune", chat_config(tmp_path, base_model, method=method), f"finetune.method={method}", f"train.learning_rate={lr}",
                 *(["--merge"] if method == "lora" else []), "--json")
    out = json_out(result)
    assert out["format"] == "messages" and result.stderr.count("finetune.format auto: detected 'messages' (field 'messages' of role/content)") == 1
    checkpoint = Path(out["checkpoint"])
    assert json.loads((checkpoint / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATES["chatml"]

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    eot, eos = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id
    assert GenerationConfig.from_pretrained(checkpoint).eos_token_id == [eot, eos]
    # The checkpoint's tokenizer renders a prompt exactly as training tokenized it.
    trained = AutoTokenizer.from_pretrained(base_model)
    template = prepare_chat_template(trained, "chatml")
    for conversation in CONVERSATIONS:
        ids, labels = conversation_labels(trained, template, conversation, "assistant", "t:1")
        prompt = tokenizer.apply_chat_template(conversation[:1], add_generation_prompt=True)["input_ids"]
        first_label = next(i for i, t in enumerate(labels) if t != -100)
        assert prompt == ids[:first_label]

    # aigc's decode loop, stopping at the end-of-turn id, and transformers' generate reading the
    # checkpoint's generation_config.json: both end the reply there, far before max_new_tokens.
    loaded = dataclasses.replace(load_model(checkpoint, "cpu"), eos_id=eot)
    hf_model = AutoModelForCausalLM.from_pretrained(out.get("merged", checkpoint)).eval()
    for question, reply in REPLIES.items():
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
        [completion] = sample_texts(loaded, [text], GenerateConfig(temperature=0, max_new_tokens=40), [0])
        assert completion.finish_reason == "eos" and completion.text == reply and completion.new_tokens < 40
        prompt = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            generated = hf_model.generate(prompt, max_new_tokens=40, do_sample=False)[0, prompt.size(1):].tolist()
        assert generated[-1] == eot and len(generated) < 40 and tokenizer.decode(generated[:-1]) == reply


def test_packed_sharegpt_from_parquet_trains_and_resumes_exactly(cli, tmp_path, base_model):
    import datasets
    from safetensors.torch import load_file

    rows = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}, {"from": "human", "value": "and?"},
                               {"from": "gpt", "value": "that is all."}]} for q, a in REPLIES.items()] * 6
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / run / "chat.parquet"))
    settings = dict(name="chat.parquet", packing=True, train_on="last_assistant", max_length=64)
    full = cli("finetune", chat_config(tmp_path / "a", base_model, **settings), "train.max_steps=4", "train.save_every=2", "--json")
    assert "detected 'sharegpt' (field 'conversations' of from/value)" in full.stderr and " packed rows," in full.stderr
    full = json_out(full)
    cfg = chat_config(tmp_path / "b", base_model, **settings)
    json_out(cli("finetune", cfg, "train.max_steps=2", "train.lr_decay_steps=4", "--json"))
    resumed = json_out(cli("finetune", cfg, "train.max_steps=4", "--resume", "train.lr_decay_steps=4", "--json"))
    a = load_file(f"{full['checkpoint']}/adapter_model.safetensors")
    b = load_file(f"{resumed['checkpoint']}/adapter_model.safetensors")
    # The added tokens' rows are trained and saved with the adapter, and resuming (which grows the
    # base's embeddings again before loading the adapter) continues bit for bit.
    assert any("trainable_tokens" in name for name in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


BAD_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}


@pytest.mark.parametrize("setup, message", [
    (lambda t: {"rows": [{"messages": CONVERSATIONS[0]}, BAD_ROW]}, "chat.jsonl:2: messages[1] is an empty assistant turn"),
    (lambda t: {"rows": [{"messages": CONVERSATIONS[0]}], "format": "alpaca"}, "chat.jsonl:1: field 'instruction' is missing"),
    (lambda t: {"rows": [{"prompt": "hi", "chosen": "a", "rejected": "b"}]}, "holds preference pairs (chosen/rejected), which finetune.method lora cannot learn from"),
    (lambda t: {"val_source_file": str(t / "x.txt"), "val_target_file": str(t / "x.txt"), "_": (t / "x.txt").write_text("a\n")}, "finetune.val_source_file/val_target_file hold pairs, not messages records"),
    (lambda t: {"rows": [{"question": "hi"}]}, "chat.jsonl:1: finetune.format auto cannot tell this record's format (fields: 'question')"),
    (lambda t: {"train_file": None, "source_file": str(t / "x.txt"), "target_file": str(t / "x.txt"), "format": "messages",
                "_": (t / "x.txt").write_text("a\n")}, "finetune.format messages reads records from finetune.train_file"),
    (lambda t: {"train_file": str(t)}, "is a directory, not a data file or a `datasets.save_to_disk` directory"),
    (lambda t: {"rows": [{"messages": CONVERSATIONS[0]}] * 3, "max_length": 8}, "no conversation has a trained token left after truncation to 8 tokens"),
])
def test_bad_chat_data_is_exit_2_naming_the_row(cli, tmp_path, base_model, setup, message):
    settings = setup(tmp_path)
    rows = settings.pop("rows", None)
    settings.pop("_", None)
    result = cli("finetune", chat_config(tmp_path, base_model, rows=rows, **settings))
    assert result.exit_code == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not (tmp_path / "ft" / "checkpoints").exists()


PREFERENCES = [{"prompt": q, "chosen": a, "rejected": other} for (q, a), other in zip(REPLIES.items(), reversed(list(REPLIES.values())))]


@pytest.mark.parametrize("method", ["dpo", "simpo"])
def test_preference_tuning_through_finetune_raises_held_out_reward_accuracy(cli, tmp_path, base_model, method):
    """`aigc finetune` with a preference method on preference records: the chat template is set
    up as for SFT, the loop logs the rewards, and held-out reward accuracy ends above where it began."""
    rows = PREFERENCES * 8
    val = tmp_path / "val.jsonl"
    tmp_path.mkdir(parents=True, exist_ok=True)
    val.write_text("".join(json.dumps(r) + "\n" for r in PREFERENCES), encoding="utf-8")
    cfg = chat_config(tmp_path, base_model, rows=rows, name="prefs.jsonl", method=method, val_file=str(val))
    result = cli("finetune", cfg, "train.max_steps=16", "train.eval_every=8", "train.batch_size=4", "train.learning_rate=1e-2", "--json")
    out = json_out(result)
    assert out["format"] == "preference" and out["stats"]["val_rewards/accuracies"] == 1.0, result.stderr
    rows = [json.loads(line) for line in (Path(out["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in rows if "val_rewards/accuracies" in r]
    assert evaluations[0]["step"] == 0 and evaluations[-1]["val_rewards/margins"] > evaluations[0]["val_rewards/margins"]
    checkpoint = Path(out["checkpoint"])
    from aigc_cli.data.chat import CHAT_TEMPLATES

    assert json.loads((checkpoint / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATES["chatml"]
    assert (checkpoint / "adapter_config.json").is_file()
