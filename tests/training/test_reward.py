"""The reward model: its loss is TRL RewardTrainer's (TRL's own compute_loss on the same model and
batch), and train → generate → eval through the CLI ranks chosen above rejected."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import yaml

from tests.conftest import json_out

QUESTIONS = ["How do I sort a list?", "What is a tuple?", "Explain dicts", "How to read a file?"]
GOOD = ["Use sorted() or list.sort(); both take key=.", "A tuple is an immutable sequence.", "A dict maps keys to values.", "Use open() in a with block."]
BAD = ["no idea", "whatever", "ask someone else", "I won't say"]


def test_loss_is_trl_reward_trainers():
    pytest.importorskip("trl")
    from trl import RewardTrainer

    from aigc_cli.backends import get_backend
    from aigc_cli.config import ExperimentConfig

    backend = get_backend("reward")
    mc = ExperimentConfig.model_validate({"model": {"backend": "reward", "n_layer": 1, "n_embd": 16, "n_head": 2, "max_length": 16, "dropout": 0.0}}).model
    torch.manual_seed(0)
    model = backend.build(mc, {"vocab_size": 50, "pad_id": 0}).eval()
    ids = torch.randint(1, 50, (6, 10))
    mask = torch.ones_like(ids)
    mask[4, 7:] = 0  # a padded rejected row
    ours = backend.loss(model, ((ids, mask), torch.zeros(6)), "model")

    # TRL's RewardTrainer.compute_loss itself, on a trainer holding only what it reads.
    identity = lambda t: t
    trainer = SimpleNamespace(model=model, accelerator=SimpleNamespace(gather_for_metrics=identity, gather=identity),
                              _total_train_tokens=0, _tp_size=1, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                              args=SimpleNamespace(center_rewards_coefficient=None))
    theirs = RewardTrainer.compute_loss(trainer, model, {"input_ids": ids, "attention_mask": mask})
    torch.testing.assert_close(ours, theirs)
    chosen, rejected = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).chunk(2)
    assert trainer._metrics["eval"]["accuracy"] == [pytest.approx((chosen > rejected).float().mean().item())]


def test_train_generate_eval(cli, tmp_path):
    rng = random.Random(0)
    rows = [{"prompt": QUESTIONS[k], "chosen": GOOD[k], "rejected": rng.choice(BAD)} for k in (rng.randrange(4) for _ in range(160))]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {"data": {"source": str(source), "val_fraction": 0.2, "tokenizer": {"kind": "bpe", "vocab_size": 400}},
           "model": {"backend": "reward", "n_layer": 1, "n_embd": 32, "n_head": 2, "max_length": 64, "dropout": 0.0},
           "train": {"out_dir": str(tmp_path / "run"), "max_steps": 30, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 4,
                     "weight_decay": 0.0, "eval_every": 30, "eval_batches": 4, "log_every": 10}}
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = json_out(cli("train", config, "--json"))
    assert out["stats"]["val_reward_accuracy"] > 0.9
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-000030" / "config.json").read_text())
    assert saved["id2label"] == {"0": "reward"} and saved["problem_type"] == "regression"

    json_out(cli("generate", config, "--prompt", "What is a tuple?\nA tuple is an immutable sequence.", "--prompt", "What is a tuple?\nwhatever", "--json"))
    good, bad = [json.loads(line)["score"] for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert good > bad

    report = json_out(cli("eval", config, "--json", "--fail-under", "reward_accuracy=0.9"))
    assert set(report["metrics"]) == {"reward_accuracy", "mean_margin", "loss"} and report["metrics"]["mean_margin"] > 0
