"""Real processes, really killed: training resumes bit-identically, generation resumes without
redoing finished items, a kill during a checkpoint write loses nothing, and a second process on
a busy directory is refused with exit code 3."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.conftest import json_out, tiny_config
from tests.robustness.conftest import freeze, read_text, start_aigc, wait_until

TRAIN = {"max_steps": 16, "save_every": 4, "eval_every": 8, "log_every": 1, "grad_accum_steps": 2}
MODEL = {"dropout": 0.1}  # dropout draws from the global RNG stream: its state must be restored too


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]


def _latest_step(run_dir: Path) -> int:
    name = read_text(run_dir / "checkpoints" / "latest").strip()
    return int(name.removeprefix("step-")) if name.startswith("step-") and name.endswith(tuple("0123456789")) else -1


def test_training_killed_three_ways_ends_bit_identical(cli, tmp_path, corpus):
    from aigc_cli.runs.checkpoints import checkpoint_problem, latest_good_checkpoint

    reference = tiny_config(tmp_path / "reference", corpus, train=TRAIN, model=MODEL)
    json_out(cli("prep", reference, "--json"))
    straight = json_out(cli("train", reference, "--json"))

    cfg = tiny_config(tmp_path / "killed", corpus, train=TRAIN, model=MODEL)
    run = tmp_path / "killed" / "run"
    json_out(cli("prep", cfg, "--json"))

    # 1. SIGKILL at whatever point it has reached after committing step 4. Frozen first (SIGSTOP),
    #    so however fast the machine, it is still running — and holding its lock — for a second
    #    process, which is refused.
    first = start_aigc("train", cfg, cwd=tmp_path)
    wait_until(lambda: _latest_step(run) >= 4, first)
    freeze(first)
    refused = cli("train", cfg, "--resume")
    assert refused.exit_code == 3, refused.stderr
    assert f"in use by aigc process {first.pid}" in refused.stderr and "Traceback" not in refused.stderr
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_after = _latest_step(run)
    assert 4 <= killed_after < 16

    # 2. SIGTERM: the step in progress finishes, a checkpoint is saved, exit 143 with the way to resume.
    second = start_aigc("train", cfg, "--resume", cwd=tmp_path)
    wait_until(lambda: _latest_step(run) > killed_after, second)
    second.send_signal(signal.SIGTERM)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 143, err
    assert f"left locked by process {first.pid}, which is no longer running" in err  # the stale lock was taken over
    interrupted = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert len(interrupted) == 1 and "aigc train CONFIG --resume" in interrupted[0], err
    stopped_at = _latest_step(run)
    assert killed_after < stopped_at < 16 and f"holds step {stopped_at}" in interrupted[0]
    assert checkpoint_problem(run / "checkpoints" / f"step-{stopped_at:06d}") is None

    # 3. SIGKILL in the middle of writing a checkpoint: frozen while its staging directory exists
    #    (if the rename won the race, let it go on to the next checkpoint and try again).
    third = start_aigc("train", cfg, "--resume", cwd=tmp_path)
    writing = lambda: next((p for p in (run / "checkpoints").glob(".step-*.partial") if ".removing." not in p.name), None)
    while True:
        staging = wait_until(writing, third, poll=0.0005)
        freeze(third)
        if staging.is_dir():
            break
        third.send_signal(signal.SIGCONT)
    third.send_signal(signal.SIGKILL)
    third.wait()
    assert staging.is_dir()  # killed before the rename: a torn checkpoint was left behind
    # The newest committed checkpoint is intact and loads.
    good = latest_good_checkpoint(run)
    assert good is not None and checkpoint_problem(good) is None
    assert json_out(cli("generate", cfg, "--checkpoint", run, "--out", tmp_path / "g.jsonl", "--json"))["count"] == 1

    resumed = json_out(cli("train", cfg, "--resume", "--json"))
    assert not staging.exists()  # cleaned up by the next run
    a = Path(straight["checkpoint"]) / "model.safetensors"
    b = Path(resumed["checkpoint"]) / "model.safetensors"
    assert a.read_bytes() == b.read_bytes()
    assert _losses(run) == _losses(tmp_path / "reference" / "run")  # the same trajectory, step by step


def test_generation_killed_half_way_reruns_only_the_rest(cli, tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus, train={"max_steps": 4, "eval_every": 4}, generate={"max_new_tokens": 16, "num_samples": 2,
                                                                                                  "batch_size": 2})  # finished in pairs: a kill can land between them
    json_out(cli("prep", cfg, "--json"))
    json_out(cli("train", cfg, "--json"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"To be {i}\n" for i in range(4)), encoding="utf-8")
    total = 4 * 2
    reference = tmp_path / "reference.jsonl"
    assert json_out(cli("generate", cfg, "--prompts-file", prompts, "--out", reference, "--json"))["count"] == total

    out = tmp_path / "out.jsonl"
    manifest = tmp_path / "out.jsonl.manifest.jsonl"
    process = start_aigc("generate", cfg, "--prompts-file", prompts, "--out", out, cwd=tmp_path)
    wait_until(lambda: read_text(manifest).count("\n") >= 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = read_text(manifest).count("\n")  # records are whole lines; a torn last one does not count
    assert 2 <= done < total and not out.exists()

    rerun = cli("generate", cfg, "--prompts-file", prompts, "--out", out, "--json")
    assert rerun.exit_code == 0, rerun.stderr
    assert f"{done} already done" in rerun.stderr and f"generating {total - done}" in rerun.stderr
    assert out.read_bytes() == reference.read_bytes()
    assert len(manifest.read_text().splitlines()) == total

    again = cli("generate", cfg, "--prompts-file", prompts, "--out", out, "--json")
    assert f"{total} already done" in again.stderr and "generating 0" in again.stderr
    forced = cli("generate", cfg, "--prompts-file", prompts, "--out", out, "--force", "--json")
    assert "already done" not in forced.stderr and out.read_bytes() == reference.read_bytes()
