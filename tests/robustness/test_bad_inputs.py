"""Bad inputs across configs, data files, checkpoints and output directories. Each must end with
its documented exit code and one `error:` line naming the problem — no traceback — and leave
every file that existed before byte-identical (and no temporaries behind)."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from pathlib import Path
from typing import Callable

import pytest
import yaml
from typer.testing import CliRunner

from aigc_cli.cli import app
from tests.robustness.conftest import CFG, STEP2, STEP4, changed_files, snapshot, world_copy


def write(path: str, content: str | bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def flip_byte(path: str) -> None:
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def foreign_copy(name: str) -> str:
    """The step-4 checkpoint copied as if from elsewhere: no checksums.json to verify it by."""
    shutil.copytree(STEP4, name)
    Path(name, "checksums.json").unlink()
    return name


def truncate_weights() -> None:
    path = Path(foreign_copy("foreign"), "model.safetensors")
    path.write_bytes(path.read_bytes()[:1000])


def pickle_weights() -> None:
    import torch
    from safetensors.torch import load_file

    directory = Path(foreign_copy("pickled"))
    torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()


def drop_training_state() -> None:
    for step in (STEP2, STEP4):
        Path(step, "checksums.json").unlink()
        Path(step, "training_state.pt").unlink()


def broken_image_folder() -> None:
    write("imgs/a.png", b"\x89PNG\r\n\x1a\n not really a png")
    write("images.yaml", yaml.safe_dump({"data": {"source": "imgs", "prepared_dir": "pimg"}, "model": {"backend": "vae"}}))


def hold_lock(target: str) -> Callable[[], None]:
    """Another process (as far as the lock file says: PID 999999) holds `target`'s lock."""

    def prepare() -> None:
        from aigc_cli.runs.locks import lock_path

        lock_path(target).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path(target), os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # flock conflicts between open files, even in one process
        os.write(fd, f"pid=999999\nhost={socket.gethostname()}\ncommand=aigc train\n".encode())
        HELD.append(fd)

    return prepare


def both(*steps: Callable[[], object]) -> Callable[[], None]:
    return lambda: [step() for step in steps] and None


HELD: list[int] = []
NOTHING = lambda: None  # noqa: E731
GEN = ["generate", CFG, "--out", "g.jsonl"]

# name: (what to break in a fresh copy of the world, the command line, exit code, text of the error line)
CASES: dict[str, tuple[Callable[[], object], list[str], int, str]] = {
    # ---- configs
    "config-missing": (NOTHING, ["train", "missing.yaml"], 2, "config file not found: missing.yaml"),
    "config-yaml-syntax": (lambda: write("bad.yaml", "train: [1,\n"), ["train", "bad.yaml"], 2, "bad.yaml is not valid YAML at line"),
    "config-not-a-mapping": (lambda: write("list.yaml", "- train\n- model\n"), ["train", "list.yaml"], 2, "must hold a mapping of sections"),
    "config-not-utf8": (lambda: write("binary.yaml", b"\xff\xfe\x00\x81garbage"), ["train", "binary.yaml"], 2, "is not UTF-8 text"),
    "config-unknown-key": (NOTHING, ["train", CFG, "train.max_step=5"], 2, "unknown key 'train.max_step' — did you mean 'max_steps'?"),
    "config-renamed-key": (NOTHING, ["train", CFG, "train.keep_checkpoints=2"], 2, "unknown key 'train.keep_checkpoints'"),
    "config-wrong-type": (NOTHING, ["train", CFG, "train.max_steps=many"], 2, "'train.max_steps'"),
    "config-out-of-range": (NOTHING, ["train", CFG, "train.keep_last=-1"], 2, "'train.keep_last'"),
    "config-bad-override": (NOTHING, ["train", CFG, "train.max_steps"], 2, "bad override 'train.max_steps'"),
    "config-override-into-value": (NOTHING, ["train", CFG, "train.max_steps.x=1"], 2, "max_steps is a value, not a section"),
    "config-unknown-backend": (NOTHING, ["train", CFG, "model.backend=transformer"], 2, "'model.backend' must be one of"),
    "config-heads-do-not-divide": (NOTHING, ["train", CFG, "model.n_head=3"], 2, "not divisible by n_head=3"),
    # ---- data files
    "data-source-missing": (NOTHING, ["prep", CFG, "data.source=nope.txt", "data.prepared_dir=p2"], 2, "data.source not found: nope.txt"),
    "data-source-empty": (lambda: write("empty.txt", ""), ["prep", CFG, "data.source=empty.txt", "data.prepared_dir=p2"], 2, "holds no text"),
    "data-jsonl-malformed": (lambda: write("bad.jsonl", '{"text": "a"}\n{bad\n'), ["prep", CFG, "data.source=bad.jsonl", "data.prepared_dir=p2"], 2,
                             "bad.jsonl:2: malformed JSON"),
    "data-jsonl-field-missing": (lambda: write("other.jsonl", '{"other": "a"}\n'), ["prep", CFG, "data.source=other.jsonl", "data.prepared_dir=p2"], 2,
                                 "no field 'text'"),
    "data-prepared-from-other-settings": (NOTHING, ["prep", CFG, "data.cleaning.whitespace=true"], 2, "prepared from other inputs or settings"),
    "data-prepared-dir-is-foreign": (NOTHING, ["prep", CFG, "data.prepared_dir=run"], 2, "run exists and is not a prepared-data directory"),
    "data-images-all-broken": (broken_image_folder, ["prep", "images.yaml"], 2, "yielded no usable images"),
    "data-not-prepared": (NOTHING, ["train", CFG, "data.prepared_dir=nowhere", "train.out_dir=r2"], 2, "no prepared data in nowhere"),
    "data-meta-damaged": (lambda: write("prepared/meta.json", "{"), ["train", CFG, "train.out_dir=r2"], 2, "prepared data in prepared is damaged"),
    "data-tokens-truncated": (lambda: write("prepared/train.bin", b"\x01\x00" * 4), ["train", CFG, "train.out_dir=r2"], 2, "fewer than block_size+1"),
    "data-tokens-empty": (lambda: write("prepared/train.bin", b""), ["train", CFG, "train.out_dir=r2"], 2, "prepared data in prepared is damaged"),
    "prompts-file-missing": (NOTHING, [*GEN, "--prompts-file", "nope.txt"], 2, "prompts file not found"),
    "prompts-jsonl-malformed": (lambda: write("p.jsonl", "{oops\n"), [*GEN, "--prompts-file", "p.jsonl"], 2, "p.jsonl:1: malformed JSON"),
    "prompts-file-empty": (lambda: write("p.txt", ""), [*GEN, "--prompts-file", "p.txt"], 2, "holds no prompts"),
    "finetune-pairs-malformed": (lambda: write("pairs.jsonl", "[1,"), ["finetune", CFG, f"finetune.base={STEP4}", "finetune.train_file=pairs.jsonl",
                                                                      "train.out_dir=ft"], 2, "pairs.jsonl:1: malformed JSON"),
    # ---- checkpoints
    "checkpoint-missing": (NOTHING, [*GEN, "--checkpoint", "nope"], 2, "checkpoint not found: nope"),
    "checkpoint-not-a-model": (NOTHING, [*GEN, "--checkpoint", "prepared"], 2, "prepared is not a checkpoint or run directory"),
    "checkpoint-weights-bit-flip": (lambda: flip_byte(f"{STEP4}/model.safetensors"), [*GEN, "--checkpoint", STEP4], 2,
                                    "step-000004 is damaged: model.safetensors does not match its checksum"),
    "checkpoint-checksums-garbage": (lambda: write(f"{STEP4}/checksums.json", "{{{"), [*GEN, "--checkpoint", STEP4], 2, "checksums.json is unreadable"),
    "checkpoint-file-deleted": (lambda: Path(STEP4, "config.json").unlink(), [*GEN, "--checkpoint", STEP4], 2, "config.json is missing"),
    "checkpoint-all-damaged-resume": (both(lambda: flip_byte(f"{STEP2}/training_state.pt"), lambda: flip_byte(f"{STEP4}/model.safetensors")),
                                      ["train", CFG, "--resume"], 2, "every checkpoint in run/checkpoints is damaged"),
    "checkpoint-all-damaged-generate": (both(lambda: flip_byte(f"{STEP2}/model.safetensors"), lambda: flip_byte(f"{STEP4}/tokenizer.json")),
                                        [*GEN, "--checkpoint", "run"], 2, "every checkpoint in run/checkpoints is damaged"),
    "checkpoint-foreign-truncated": (truncate_weights, [*GEN, "--checkpoint", "foreign"], 2, "cannot load the checkpoint foreign"),
    "checkpoint-pickled-weights": (pickle_weights, [*GEN, "--checkpoint", "pickled"], 2, "pytorch_model.bin holds pickled weights"),
    "checkpoint-without-training-state": (drop_training_state, ["train", CFG, "--resume"], 2, "has no training_state.pt, so training cannot resume"),
    "checkpoint-eval-damaged": (lambda: flip_byte(f"{STEP4}/model.safetensors"), ["eval", CFG, "--checkpoint", STEP4], 2,
                                "model.safetensors does not match its checksum"),
    "checkpoint-finetune-base-damaged": (lambda: flip_byte(f"{STEP4}/model.safetensors"), ["finetune", CFG, f"finetune.base={STEP4}", "train.out_dir=ft"],
                                         2, "finetune.base run/checkpoints/step-000004 is damaged"),
    "run-exists-without-resume": (NOTHING, ["train", CFG], 2, "run already holds checkpoints (newest: step-000004)"),
    # ---- output directories
    "out-dir-is-a-file": (NOTHING, ["train", CFG, "train.out_dir=corpus.txt"], 2, "train.out_dir corpus.txt is a file"),
    "out-file-is-a-directory": (NOTHING, ["generate", CFG, "--out", "prepared"], 2, "--out prepared is a directory"),
    "out-file-under-a-file": (NOTHING, ["generate", CFG, "--out", "corpus.txt/g.jsonl"], 2, "a file is in the way"),
    "prepared-dir-under-a-file": (NOTHING, ["prep", CFG, "data.prepared_dir=corpus.txt/p"], 2, "a file is in the way"),
    "locked-run-dir": (hold_lock("run"), ["train", CFG, "--resume"], 3, "run directory run is in use by aigc process 999999 (`aigc train`)"),
    "locked-generate-output": (hold_lock("run/generations.jsonl"), ["generate", CFG], 3, "output file run/generations.jsonl is in use by aigc process 999999"),
    "locked-prepared-dir": (hold_lock("prepared"), ["prep", CFG], 3, "prepared-data directory prepared is in use by aigc process 999999"),
    "locked-eval-report": (hold_lock("run/eval/report.json"), ["eval", CFG], 3, "eval report run/eval/report.json is in use"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(world, tmp_path, monkeypatch, name):
    prepare, args, code, message = CASES[name]
    copy = world_copy(world, tmp_path, monkeypatch)
    try:
        prepare()
        before = snapshot(copy)
        result = CliRunner().invoke(app, args)
    finally:
        while HELD:
            os.close(HELD.pop())
    output = result.stdout + result.stderr
    assert result.exit_code == code, output
    assert "Traceback" not in output and isinstance(result.exception, SystemExit), output  # an exit code, not a crash
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], output
    assert changed_files(before, copy) == []
    leftovers = [p.name for p in copy.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert leftovers == []

