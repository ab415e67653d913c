"""What a person watches during training: TensorBoard events, samples at each evaluation, loss.png."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import json_out, tiny_config


def read_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def test_text_run_writes_tensorboard_samples_and_plot(cli, tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus, train={"sample_prompts": ["To be", ""]})
    json_out(cli("prep", cfg, "--json"))
    trained = cli("train", cfg)
    run = tmp_path / "run"
    assert trained.exit_code == 0 and f"train_samples/, TensorBoard events; watch with: tensorboard --logdir {run}" in trained.stdout
    assert (run / "loss.png").stat().st_size > 1000
    assert list(run.glob("events.out.tfevents.*"))

    events = read_events(run)
    tags = events.Tags()
    assert {"loss/train", "loss/val", "lr", "throughput/tokens_per_s"} <= set(tags["scalars"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("loss/val")] == val
    assert [e.step for e in events.Scalars("loss/train")] == [r["step"] for r in rows if "train_loss" in r]

    files = sorted(p.name for p in (run / "train_samples").iterdir())
    assert files == ["step-000000.txt", "step-000010.txt", "step-000020.txt"]
    text = (run / "train_samples" / "step-000020.txt").read_text(encoding="utf-8")
    assert text.startswith("--- sample 1, prompt 'To be'\nTo be") and "--- sample 2, prompt ''" in text
    last_text = events.Tensors("samples/text_summary")[-1]  # TensorBoard keeps text as tensors
    assert last_text.step == 20 and "To be" in last_text.tensor_proto.string_val[0].decode()


def test_samples_can_be_switched_off(cli, tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus, train={"sample_every_eval": False})
    json_out(cli("prep", cfg, "--json"))
    trained = cli("train", cfg)
    assert trained.exit_code == 0 and "train_samples/" not in trained.stdout
    assert not (tmp_path / "run" / "train_samples").exists()
    assert (tmp_path / "run" / "loss.png").is_file()


def test_image_run_writes_sample_grids(cli, tmp_path):
    from PIL import Image

    from tests.cli.test_images import image_config

    cfg = image_config(tmp_path, "vae", train={"eval_every": 15, "sample_images": 6}, generate={"images": {"grid_columns": 3}})
    json_out(cli("prep", cfg, "--json"))
    json_out(cli("train", cfg, "--json"))
    run = tmp_path / "run"
    grids = sorted(p.name for p in (run / "train_samples").iterdir())
    assert grids == ["step-000000.png", "step-000015.png", "step-000030.png"]
    # 3 × 2 tiles of 8 px with 2 px borders
    assert Image.open(run / "train_samples" / "step-000030.png").size == (3 * 10 + 2, 2 * 10 + 2)
    events = read_events(run)
    assert "samples" in events.Tags()["images"] and "throughput/images_per_s" in events.Tags()["scalars"]
    assert [e.step for e in events.Images("samples")] == [0, 15, 30]


def test_loss_plot_is_redrawn_at_each_evaluation(tmp_path):
    """Not only at the end: an evaluation redraws loss.png from what metrics.jsonl holds so far."""
    import torch

    from aigc_cli.backends import get_backend
    from aigc_cli.config import validate_config
    from aigc_cli.training.run_logging import RunLogger

    cfg = validate_config({"data": {"source": "x"}, "train": {"out_dir": str(tmp_path), "sample_every_eval": False}})
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "val_loss": 3.0}\n{"step": 5, "train_loss": 2.5, "lr": 0.001}\n')
    with RunLogger(cfg, tmp_path, "gpt", get_backend("gpt"), None, "cpu") as log:
        log.evaluated(5, torch.nn.Linear(1, 1))
        assert (tmp_path / "loss.png").stat().st_size > 1000
