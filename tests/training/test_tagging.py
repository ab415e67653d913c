"""The tagger: entity reading and scores against seqeval, sub-word alignment, CoNLL and JSONL data
through train → generate → eval, and pipeline("token-classification") loading the checkpoint."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from aigc_cli.data.tagged import IGNORE_INDEX, align, entities, read_conll
from aigc_cli.evaluation.classification import entity_metrics
from tests.conftest import json_out

seqeval = pytest.importorskip("seqeval.metrics")
from seqeval.metrics.sequence_labeling import get_entities  # noqa: E402

PEOPLE, PLACES, FILLER = [["Alice"], ["Bob"], ["Carol", "Smith"]], [["Paris"], ["New", "York"], ["Rome"]], ["went", "to", "the", "met", "in", "and"]


def _random_tags(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG"]) for _ in range(n)]  # ill-formed I- starts too


def test_entities_and_scores_match_seqeval():
    rng = random.Random(0)
    truth = [_random_tags(rng, rng.randint(1, 12)) for _ in range(300)]
    predicted = [[t if rng.random() < 0.7 else rng.choice(["O", "B-PER", "I-LOC", "B-ORG"]) for t in row] for row in truth]
    for row in truth[:100]:
        assert entities(row) == [(kind, start, end) for kind, start, end in get_entities(row)]
    metrics, details = entity_metrics(truth, predicted)
    assert metrics["micro_precision"] == pytest.approx(seqeval.precision_score(truth, predicted))
    assert metrics["micro_recall"] == pytest.approx(seqeval.recall_score(truth, predicted))
    assert metrics["micro_f1"] == pytest.approx(seqeval.f1_score(truth, predicted))
    assert metrics["macro_f1"] == pytest.approx(seqeval.f1_score(truth, predicted, average="macro"))
    assert metrics["weighted_f1"] == pytest.approx(seqeval.f1_score(truth, predicted, average="weighted"))
    assert details["classification_report"] == seqeval.classification_report(truth, predicted)


def _sentences(n: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 6)):
            k = rng.random()
            if k < 0.5:
                kind, entity = ("PER", rng.choice(PEOPLE)) if k < 0.25 else ("LOC", rng.choice(PLACES))
                words += entity
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(entity) - 1)
            else:
                words.append(rng.choice(FILLER))
                tags.append("O")
        out.append((words, tags))
    return out


def test_first_sub_token_carries_the_tag(tmp_path):
    from transformers import AutoTokenizer

    from aigc_cli.config import ExperimentConfig
    from aigc_cli.training.classification import make_tokenizer

    cfg = ExperimentConfig.model_validate({"data": {"source": "x.conll", "tokenizer": {"kind": "char"}}, "model": {"backend": "tagger"}})
    make_tokenizer(cfg, ["Alice went to New York"], tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    [ids], [targets] = align(tok, [["Alice", "went"]], [[1, 0]], 64)
    # end-of-text first (the [CLS] position), then A-l-i-c-e, w-e-n-t: one character a token
    assert len(ids) == 1 + 5 + 4
    assert targets == [IGNORE_INDEX, 1] + [IGNORE_INDEX] * 4 + [0] + [IGNORE_INDEX] * 3


@pytest.mark.parametrize("fmt", ["conll", "jsonl"])
def test_train_generate_eval_and_pipeline(cli, tmp_path, fmt):
    from transformers import pipeline

    sentences = _sentences(200)
    if fmt == "conll":
        source = tmp_path / "data.conll"
        source.write_text("-DOCSTART- O\n\n" + "\n\n".join("\n".join(f"{w} {t}" for w, t in zip(*s)) for s in sentences) + "\n")
        assert [(s.words, s.tags) for s in read_conll(source)] == sentences
    else:
        source = tmp_path / "data.jsonl"
        source.write_text("".join(json.dumps({"words": w, "ner": t}) + "\n" for w, t in sentences))
    raw = {"data": {"source": str(source), "val_fraction": 0.2, "tokens_field": "words", "tags_field": "ner"},
           "model": {"backend": "tagger", "n_layer": 1, "n_embd": 32, "n_head": 2, "max_length": 64, "dropout": 0.0},
           "train": {"out_dir": str(tmp_path / "run"), "max_steps": 60, "batch_size": 16, "learning_rate": 3e-3, "warmup_steps": 4,
                     "weight_decay": 0.0, "eval_every": 60, "eval_batches": 4, "log_every": 20}}
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = json_out(cli("train", config, "--json"))
    labels = json.loads((tmp_path / "run" / "checkpoints" / "step-000060" / "config.json").read_text())["id2label"]
    assert labels == {"0": "O", "1": "B-LOC", "2": "I-LOC", "3": "B-PER", "4": "I-PER"}

    json_out(cli("generate", config, "--prompt", "Alice went to New York", "--json"))
    [row] = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert row["tags"] == ["B-PER", "O", "O", "B-LOC", "I-LOC"]
    assert row["entities"] == [{"type": "PER", "start": 0, "end": 1, "text": "Alice"}, {"type": "LOC", "start": 3, "end": 5, "text": "New York"}]

    report = json_out(cli("eval", config, "--json", "--fail-under", "micro_f1=0.9"))
    assert report["metrics"]["micro_f1"] >= 0.9 and "micro avg" in report["classification_report"]

    tagged = pipeline("token-classification", model=out["checkpoint"])("Alice went to Rome")
    assert tagged and {t["entity"] for t in tagged} <= set(labels.values())


def test_lora_tagger_trains_saves_resumes_and_loads_in_pipeline(cli, tmp_path):
    """LoRA (peft TOKEN_CLS) on a pretrained tagger: the checkpoint's top level is the merged model,
    which pipeline("token-classification") loads and which tags as aigc does; adapter/ is the peft
    adapter with the head in modules_to_save, which on the base gives the merged model's logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    source = tmp_path / "data.jsonl"
    source.write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in _sentences(200)))

    def experiment(name: str, model: dict, train: dict) -> str:
        raw = {"data": {"source": str(source), "val_fraction": 0.2},
               "model": {"backend": "tagger", "n_layer": 1, "n_embd": 32, "n_head": 2, "max_length": 64, "dropout": 0.0, **model},
               "train": {"out_dir": str(tmp_path / name), "batch_size": 16, "learning_rate": 3e-3, "warmup_steps": 2, "weight_decay": 0.0,
                         "eval_batches": 2, "log_every": 5, **train},
               "finetune": {"lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"]}}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return str(path)

    base = json_out(cli("train", experiment("base", {}, {"max_steps": 30, "eval_every": 30}), "--json"))["checkpoint"]
    config = experiment("lora", {"init_from": base, "method": "lora"}, {"max_steps": 20, "eval_every": 10, "save_every": 10})
    first = json_out(cli("train", config, "train.max_steps=10", "--json"))
    resumed = json_out(cli("train", config, "--resume", "--json"))
    assert first["checkpoint"].endswith("step-000010") and resumed["checkpoint"].endswith("step-000020")
    checkpoint = tmp_path / "lora" / "checkpoints" / "step-000020"
    adapter = json.loads((checkpoint / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "TOKEN_CLS" and adapter["r"] == 4 and "classifier" in adapter["modules_to_save"]
    assert not (checkpoint / "adapter_config.json").exists()  # the top level is a plain transformers model

    json_out(cli("generate", config, "--prompt", "Alice went to New York", "--json"))
    [row] = [json.loads(line) for line in (tmp_path / "lora" / "predictions.jsonl").read_text().splitlines()]
    assert row["tags"][0] == "B-PER" and row["entities"], row  # it learned (base 30 steps + LoRA 20)
    tagged = pipeline("token-classification", model=str(checkpoint))("Alice went to New York")
    # pipeline() tags every sub-word token (characters here); each word's first one is aigc's tag for it
    tok = AutoTokenizer.from_pretrained(checkpoint)
    starts, offset = [], 0
    for word in row["tokens"]:
        starts.append(offset)
        offset += len(word) + 1
    by_start = {t["start"]: t["entity"] for t in tagged}
    assert [by_start.get(s, "O") for s in starts] == row["tags"]

    merged = AutoModelForTokenClassification.from_pretrained(checkpoint).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForTokenClassification.from_pretrained(base), checkpoint / "adapter").eval()
    ids = tok("Alice went to Rome", return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(merged(**ids).logits, with_adapter(**ids).logits, atol=1e-5)
        assert not torch.allclose(merged(**ids).logits, AutoModelForTokenClassification.from_pretrained(base).eval()(**ids).logits, atol=1e-3)


def test_balanced_class_weights_weigh_rare_tags_up(tmp_path):
    """model.class_weights balanced: n / (K × count) per tag over the training words, in config.json,
    and the loss is the weighted cross-entropy over the tagged (not -100) tokens."""
    import torch
    import torch.nn.functional as F

    from aigc_cli.backends import tagger
    from aigc_cli.config import ExperimentConfig
    from aigc_cli.training.classification import tagging_job

    source = tmp_path / "data.jsonl"
    source.write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in _sentences(60)))
    cfg = ExperimentConfig.model_validate({"data": {"source": str(source), "val_fraction": 0.2, "tokenizer": {"kind": "char"}},
                                           "model": {"backend": "tagger", "n_layer": 1, "n_embd": 16, "n_head": 2, "class_weights": "balanced"},
                                           "train": {"out_dir": str(tmp_path / "run")}})
    job = tagging_job(cfg)
    model = job.make_model(None, "cpu").eval()  # no dropout: the two forwards below agree
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    counts = [sum(t == i for row in job.train_data.targets for t in row) for i in range(len(names))]  # (no sentence is cut)
    total = sum(counts)
    assert model.config.aigc_class_weights == pytest.approx([total / (len(names) * c) for c in counts])
    assert model.config.aigc_class_weights[names.index("O")] < 1 < model.config.aigc_class_weights[names.index("I-LOC")]

    (ids, mask), targets = job.train_data.random_batch(8, 0, torch.Generator().manual_seed(0))
    logits = model(input_ids=ids, attention_mask=mask).logits
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), weight=torch.tensor(model.config.aigc_class_weights), ignore_index=-100)
    assert tagger.loss(model, ((ids, mask), targets), "model").item() == pytest.approx(expected.item(), rel=1e-5)
