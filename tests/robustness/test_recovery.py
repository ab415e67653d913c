"""Recovering from what unattended runs meet: a damaged newest checkpoint, Ctrl-C, a diverging
loss, a half-finished image folder, a full disk, a read-only directory."""

from __future__ import annotations

import json
import os
import resource
import signal
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aigc_cli.cli import app
from tests.conftest import json_out
from tests.robustness.conftest import CFG, STEP2, STEP4, changed_files, snapshot, start_aigc, world_copy


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_damaged_newest_checkpoint_is_reported_and_the_previous_one_used(world, tmp_path, monkeypatch):
    from aigc_cli.runs.checkpoints import checkpoint_problem

    copy = world_copy(world, tmp_path, monkeypatch)
    weights = Path(STEP4, "model.safetensors")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a torn write
    staging = Path("run/checkpoints/.step-000006.x1y2.partial")  # what a kill during a save leaves
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half")

    result = run("train", CFG, "--resume", "train.max_steps=6", "train.log_every=1", "--json")
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("step-000004 is damaged (model.safetensors does not match its checksum)" in w for w in warnings), result.stderr
    assert any(f"using {STEP2} instead" in w for w in warnings), result.stderr
    rows = [json.loads(line) for line in (copy / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r][-4:] == [3, 4, 5, 6]  # steps 3 and 4 were trained again
    assert not staging.exists()
    for step in ("step-000004", "step-000006"):
        assert checkpoint_problem(copy / "run" / "checkpoints" / step) is None


def test_ctrl_c_saves_a_checkpoint_and_the_resumed_run_is_exact(world, tmp_path, monkeypatch):
    steps = ["train.max_steps=12", "train.save_every=2"]
    world_copy(world, tmp_path / "straight", monkeypatch)
    straight = json_out(run("train", CFG, "--resume", *steps, "--json"))
    straight_weights = Path(straight["checkpoint"], "model.safetensors").read_bytes()

    copy = world_copy(world, tmp_path / "interrupted", monkeypatch)
    latest = copy / "run" / "checkpoints" / "latest"

    def press_ctrl_c_after_step_6():
        deadline = time.monotonic() + 300
        while latest.read_text().strip() != "step-000006" and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c_after_step_6)
    presser.start()
    interrupted = run("train", CFG, "--resume", *steps)
    presser.join()
    assert interrupted.exit_code == 130, interrupted.stderr
    line = next(line for line in interrupted.stderr.splitlines() if line.startswith("interrupted:"))
    saved = latest.read_text().strip()
    assert f"SIGINT during training: checkpoint run/checkpoints/{saved} holds step" in line and "--resume" in line
    assert 6 <= int(saved.removeprefix("step-")) < 12

    resumed = json_out(run("train", CFG, "--resume", *steps, "--json"))
    assert Path(resumed["checkpoint"], "model.safetensors").read_bytes() == straight_weights
    # Resuming a finished run (a cron job repeating itself) reports it and leaves its checkpoint alone.
    checksums = Path(resumed["checkpoint"], "checksums.json").read_bytes()
    assert json_out(run("train", CFG, "--resume", *steps, "--json"))["checkpoint"] == resumed["checkpoint"]
    assert Path(resumed["checkpoint"], "checksums.json").read_bytes() == checksums


NAN = ["train.out_dir=nan", "train.learning_rate=1e30", "train.warmup_steps=0", "train.grad_clip=0", "train.save_every=1", "train.max_steps=6",
       "train.log_every=1"]


def _all_finite(checkpoint: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    return all(torch.isfinite(t).all() for t in load_file(checkpoint / "model.safetensors").values())


def test_nonfinite_loss_stops_with_exit_4_and_keeps_the_last_good_checkpoint(world, tmp_path, monkeypatch):
    copy = world_copy(world, tmp_path, monkeypatch)
    result = run("train", CFG, *NAN)
    assert result.exit_code == 4, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training diverged: non-finite loss" in errors[0] and "at step 2" in errors[0], result.stderr
    assert "the last good checkpoint is nan/checkpoints/step-000001" in errors[0]
    assert (copy / "nan" / "checkpoints" / "latest").read_text().strip() == "step-000001"
    assert [p.name for p in (copy / "nan" / "checkpoints").glob("step-*")] == ["step-000001"]
    assert _all_finite(copy / "nan" / "checkpoints" / "step-000001")


def test_skip_nonfinite_counts_the_skipped_batches(world, tmp_path, monkeypatch):
    copy = world_copy(world, tmp_path, monkeypatch)
    result = run("train", CFG, *NAN, "train.skip_nonfinite=true", "--json")
    out = json_out(result)
    assert out["skipped_batches"] == 5  # every update after the first one would have been NaN
    rows = [json.loads(line) for line in (copy / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_nonfinite"] for r in rows if "train_loss" in r] == [0, 1, 2, 3, 4, 5]
    assert _all_finite(Path(out["checkpoint"]))


def test_image_generation_rerun_samples_only_what_is_missing(tmp_path):
    from tests.cli.test_images import image_config

    cfg = image_config(tmp_path, "vae", train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    json_out(run("prep", cfg, "--json"))
    json_out(run("train", cfg, "--json"))
    out = tmp_path / "samples"
    generate = ["generate", cfg, "--num", "6", "--out", out, "generate.images.batch_size=2"]
    json_out(run(*generate, "--json"))
    outputs = {k: v for k, v in snapshot(out).items() if k != "provenance.json"}  # provenance records the time

    # As if killed during the last batch: its images and manifest lines missing, a temporary left.
    (out / "00004.png").unlink()
    (out / "00005.png").rename(out / ".00005.png.k1ll3d.tmp")
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(manifest.read_text().splitlines(keepends=True)[:4]) + '{"key": "torn')
    rerun = run(*generate)
    assert rerun.exit_code == 0 and "4 already done (in manifest.jsonl), sampling 2" in rerun.stderr, rerun.stderr
    assert {k: v for k, v in snapshot(out).items() if k != "provenance.json"} == outputs

    # A damaged image is noticed (its hash no longer matches) and its batch sampled again.
    (out / "00001.png").write_bytes(b"not a png any more")
    repaired = run(*generate)
    assert "4 already done (in manifest.jsonl), sampling 2" in repaired.stderr
    assert {k: v for k, v in snapshot(out).items() if k != "provenance.json"} == outputs

    forced = run(*generate, "--force")
    assert forced.exit_code == 0 and "already done" not in forced.stderr and "sampling 6 image(s)" in forced.stderr
    assert {k: v for k, v in snapshot(out).items() if k != "provenance.json"} == outputs


def test_full_disk_leaves_earlier_outputs_intact(world, tmp_path, monkeypatch):
    """A file-size limit stands in for a full disk (both fail the write with an OSError mid-file)."""
    copy = world_copy(world, tmp_path, monkeypatch)
    (copy / "prompts.txt").write_text("".join(f"To be {i}\n" for i in range(20)), encoding="utf-8")
    manifest = copy / "run" / "generations.jsonl.manifest.jsonl"
    old_manifest = manifest.read_text()
    before = snapshot(copy)

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    process = start_aigc("generate", CFG, "--prompts-file", "prompts.txt", "--seed", "7", cwd=copy, preexec_fn=small_disk)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "generations.jsonl" in errors[0] and "File too large" in errors[0], err
    assert "Traceback" not in err
    # The finished completions were recorded (a re-run with more space reuses them); nothing else changed.
    assert manifest.read_text().startswith(old_manifest)
    assert changed_files(before, copy) == ["run/generations.jsonl.manifest.jsonl"]
    assert not [p for p in copy.rglob("*") if p.name.endswith((".tmp", ".partial"))]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_read_only_directory_is_a_clear_error(world, tmp_path, monkeypatch):
    copy = world_copy(world, tmp_path, monkeypatch)
    before = snapshot(copy)
    copy.chmod(0o555)
    try:
        result = run("generate", CFG, "--out", "g.jsonl")
    finally:
        copy.chmod(0o755)
    assert result.exit_code == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Permission denied" in errors[0], result.stderr
    assert changed_files(before, copy) == []
