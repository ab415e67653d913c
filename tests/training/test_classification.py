"""The classifier backend through the real CLI: train → generate → eval, pipeline() loading the
checkpoint unchanged, multi-label and regression, LoRA on a pretrained encoder, clear errors."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from tests.conftest import json_out

POSITIVE, NEGATIVE, FILLER = ["good", "great", "lovely"], ["bad", "awful", "poor"], ["the", "film", "was", "a", "day", "food", "so"]


def _records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = [rng.choice(FILLER) for _ in range(4)]
        words.insert(rng.randrange(5), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label, "tags": [t for t in ("pos", "long") if t == label or len(words[0]) > 3],
                     "score": float(label == "pos") + 0.1 * len(words[0])})
    return rows


def _experiment(tmp_path, model: dict | None = None, **sections) -> str:
    data = tmp_path / "data.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in _records(240)), encoding="utf-8")
    raw = {"data": {"source": str(data), "val_fraction": 0.2},
           "model": {"backend": "classifier", "n_layer": 1, "n_embd": 32, "n_head": 2, "max_length": 48, "dropout": 0.0, **(model or {})},
           "train": {"out_dir": str(tmp_path / "run"), "max_steps": 60, "batch_size": 16, "learning_rate": 3e-3, "warmup_steps": 4, "weight_decay": 0.0,
                     "eval_every": 30, "eval_batches": 4, "log_every": 10}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from typer.testing import CliRunner

    from aigc_cli.cli import app

    tmp_path = tmp_path_factory.mktemp("classifier")
    config = _experiment(tmp_path, data={"tokenizer": {"kind": "bpe", "vocab_size": 300}})
    result = CliRunner().invoke(app, ["train", config, "--json"], catch_exceptions=False)
    return tmp_path, config, json_out(result)


def test_single_label_learns_and_pipeline_loads_the_checkpoint_unchanged(cli, trained):
    from transformers import pipeline

    tmp_path, config, out = trained
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_loss" in r]
    assert val[-1]["val_loss"] < val[0]["val_loss"] - 0.2 and val[-1]["val_accuracy"] > 0.8
    checkpoint = out["checkpoint"]
    config_json = json.loads((tmp_path / "run" / "checkpoints" / "step-000060" / "config.json").read_text())
    assert config_json["id2label"] == {"0": "neg", "1": "pos"} and config_json["problem_type"] == "single_label_classification"

    texts = ["the film was good", "awful food", "so a day lovely the"]
    predictions = tmp_path / "predictions.jsonl"
    json_out(cli("generate", config, "--prompt", texts[0], "--prompt", texts[1], "--prompt", texts[2], "--out", predictions, "--json"))
    ours = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["text"] for r in ours] == texts
    assert [r["label"] for r in ours] == ["pos", "neg", "pos"]

    theirs = pipeline("text-classification", model=checkpoint, top_k=None)(texts)
    for mine, other in zip(ours, theirs):
        assert max(other, key=lambda d: d["score"])["label"] == mine["label"]
        assert {d["label"]: d["score"] for d in other} == pytest.approx(mine["probabilities"], abs=1e-5)

    again = json_out(cli("generate", config, "--prompt", texts[0], "--prompt", texts[1], "--prompt", texts[2], "--out", predictions, "--json"))
    assert again["reused"] == 3 and again["predicted"] == 0  # the manifest holds them all


def test_eval_reports_and_gates(cli, trained):
    tmp_path, config, _ = trained
    report = json_out(cli("eval", config, "--json"))
    assert report["metrics"]["accuracy"] > 0.8 and 0.0 <= report["metrics"]["roc_auc"] <= 1.0
    assert "weighted avg" in report["classification_report"]
    assert (tmp_path / "run" / "eval" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert "precision    recall  f1-score   support" in (tmp_path / "run" / "eval" / "report.md").read_text()
    failed = cli("eval", config, "--fail-under", "accuracy=1.01")
    assert failed.exit_code == 1 and "accuracy" in failed.stderr
    unknown = cli("eval", config, "--fail-under", "bleu=1")
    assert unknown.exit_code == 2 and "unknown metric 'bleu'" in unknown.stderr


@pytest.mark.parametrize("task, label_field, extra", [("multi_label", "tags", {"thresholds": {"long": 0.4}}), ("regression", "score", {})])
def test_multi_label_and_regression(cli, tmp_path, task, label_field, extra):
    from transformers import pipeline

    config = _experiment(tmp_path, {"task": task, **extra}, data={"label_field": label_field}, train={"max_steps": 10, "eval_every": 10})
    out = json_out(cli("train", config, "--json"))
    json_out(cli("generate", config, "--prompt", "good film", "--json"))
    [row] = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    report = json_out(cli("eval", config, "--json"))
    if task == "multi_label":
        assert set(row["probabilities"]) == {"long", "pos"} and isinstance(row["labels"], list)
        assert json.loads((tmp_path / "run" / "checkpoints" / "step-000010" / "config.json").read_text())["aigc_thresholds"] == [0.4, 0.5]
        assert "samples avg" in report["classification_report"]
        [theirs] = pipeline("text-classification", model=out["checkpoint"], top_k=None)(["good film"])  # sigmoid, by problem_type
        assert {d["label"]: d["score"] for d in theirs} == pytest.approx(row["probabilities"], abs=1e-5)
    else:
        assert isinstance(row["score"], float) and set(report["metrics"]) == {"mse", "mae", "r2"}


def test_lora_on_a_pretrained_encoder_and_resume(cli, trained, tmp_path):
    from transformers import pipeline

    _, _, out = trained
    config = _experiment(tmp_path, {"init_from": out["checkpoint"], "method": "lora"}, finetune={"lora": {"r": 4, "dropout": 0.0}},
                         train={"max_steps": 6, "eval_every": 3, "save_every": 3})
    first = json_out(cli("train", config, "train.max_steps=3", "--json"))
    resumed = json_out(cli("train", config, "--resume", "--json"))
    assert first["checkpoint"].endswith("step-000003") and resumed["checkpoint"].endswith("step-000006")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000006"
    adapter = json.loads((checkpoint / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and adapter["r"] == 4
    assert pipeline("text-classification", model=str(checkpoint))("good film")[0]["label"] in ("pos", "neg")


def test_errors(cli, tmp_path):
    lora_without_base = cli("train", _experiment(tmp_path, {"method": "lora"}))
    assert lora_without_base.exit_code == 2 and "model.init_from" in lora_without_base.stderr
    offline = cli("train", _experiment(tmp_path, {"init_from": "no-such-org/no-such-model"}))
    assert offline.exit_code == 2 and "no-such-org/no-such-model" in offline.stderr
    missing_field = cli("train", _experiment(tmp_path, data={"label_field": "sentiment"}))
    assert missing_field.exit_code == 2 and "no 'sentiment' field" in missing_field.stderr


def chinese_reviews(n: int, seed: int = 1) -> list[dict]:
    """Short Chinese reviews (subject, adverb, an opinion word, a tail) labelled 正面/负面 by the opinion."""
    rng = random.Random(seed)
    good, bad = ["很好", "不错", "满意", "好吃", "喜欢", "推荐", "精彩", "舒服"], ["很差", "糟糕", "失望", "难吃", "讨厌", "后悔", "无聊", "太贵"]
    subjects, adverbs = ["这个电影", "今天的饭菜", "酒店服务", "这本书", "新手机", "那家店", "快递", "音乐会"], ["真的", "非常", "有点", "实在", "", "还是"]
    tails = ["。", "！", "，下次再说。", "，朋友也这么说。", ""]
    rows = []
    for _ in range(n):
        label = rng.choice(["正面", "负面"])
        opinion = rng.choice(good if label == "正面" else bad)
        rows.append({"text": rng.choice(subjects) + rng.choice(adverbs) + opinion + rng.choice(tails), "label": label})
    return rows


def test_chinese_texts_with_the_char_tokenizer(cli, tmp_path):
    """Not English-only: a classifier on CJK text, one token per character, Chinese label names in
    config.json and the predictions, and it learns (held-out accuracy)."""
    from transformers import AutoTokenizer

    rows = chinese_reviews(400)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    config = _experiment(tmp_path, data={"tokenizer": {"kind": "char"}}, train={"max_steps": 80, "eval_every": 80})
    out = json_out(cli("train", config, "--json"))
    tok = AutoTokenizer.from_pretrained(out["checkpoint"])
    assert tok.convert_ids_to_tokens(tok("服务糟糕")["input_ids"]) == ["<|endoftext|>", "服", "务", "糟", "糕"]
    json_out(cli("generate", config, "--prompt", "这个电影非常精彩！", "--prompt", "酒店服务实在糟糕。", "--json"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == ["这个电影非常精彩！", "酒店服务实在糟糕。"] and all(set(r["probabilities"]) == {"正面", "负面"} for r in rows)
    assert [r["label"] for r in rows] == ["正面", "负面"]
    report = json_out(cli("eval", config, "--json"))
    assert "正面" in report["classification_report"] and report["metrics"]["accuracy"] > 0.9


def _causal_lm_base(directory, architecture: str, texts: list[str]) -> str:
    """An aigc gpt-backend model directory (gpt.build + save_pretrained, its char tokenizer beside it)."""
    import torch

    from aigc_cli.backends import GPTModelConfig, gpt
    from aigc_cli.data.tokenization import build_char_tokenizer, eos_id, save_tokenizer

    tok = build_char_tokenizer("".join(texts))
    torch.manual_seed(0)
    mc = GPTModelConfig(architecture=architecture, n_layer=1, n_head=2, n_embd=32, block_size=64, dropout=0.0)
    gpt.build(mc, {"vocab_size": tok.get_vocab_size(), "eos_id": eos_id(tok)}).save_pretrained(directory)
    save_tokenizer(tok, directory, 64)
    return str(directory)


@pytest.mark.parametrize("architecture, head", [("gpt2", "GPT2ForSequenceClassification"), ("llama", "LlamaForSequenceClassification")])
def test_a_causal_lm_base_gets_a_classification_head(cli, tmp_path, architecture, head):
    """model.init_from an aigc gpt/llama model: transformers' *ForSequenceClassification reading the
    last non-pad token (config.pad_token_id set), which pipeline() loads with the same probabilities."""
    from transformers import pipeline

    rows = _records(240)
    base = _causal_lm_base(tmp_path / "base", architecture, [r["text"] for r in rows])
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = _experiment(tmp_path, {"init_from": base}, train={"max_steps": 40, "eval_every": 40, "learning_rate": 3e-3})
    out = json_out(cli("train", config, "--json"))
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-000040" / "config.json").read_text())
    assert saved["architectures"] == [head] and saved["pad_token_id"] is not None
    assert saved["id2label"] == {"0": "neg", "1": "pos"}
    assert out["stats"]["val_accuracy"] > 0.8

    texts = ["the film was good", "awful food so", "a day lovely"]
    json_out(cli("generate", config, *[arg for t in texts for arg in ("--prompt", t)], "--json"))
    ours = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    theirs = pipeline("text-classification", model=out["checkpoint"], top_k=None)(texts)
    for mine, other in zip(ours, theirs):
        assert {d["label"]: d["score"] for d in other} == pytest.approx(mine["probabilities"], abs=1e-5)


def test_the_train_summary_names_only_what_a_classifier_writes(cli, tmp_path):
    """A classifier writes no train_samples/ (sample_every_eval is for text and images): the summary says so."""
    result = cli("train", _experiment(tmp_path, train={"max_steps": 2, "eval_every": 2, "log_every": 1}))
    assert result.exit_code == 0, result.stderr
    summary = result.stdout + result.stderr
    assert "metrics.jsonl" in summary and "train_samples" not in summary
    assert not (tmp_path / "run" / "train_samples").exists()
