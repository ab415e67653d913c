"""Hostile and careless inputs, one row per case, by the defect classes of issue 18: hangs,
values the schema took but the engine could not handle, nonsense accepted silently, writes over
files aigc did not make, and the one-line error contract everywhere.

Each case must end with its exit code and exactly one `error:` line naming the problem, no
traceback, every file that existed before byte-identical and no temporary left behind — and
must end at all: every case runs under a time limit, since a hang is one of the defects."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from aigc_cli.cli import app
from tests.robustness.conftest import CFG, STEP2, STEP4, changed_files, snapshot, world_copy
from tests.robustness.test_bad_inputs import NOTHING, both, foreign_copy, write

GEN = ["generate", CFG, "--out", "g.jsonl"]
TIME_LIMIT_S = 60  # far above any case; a hang fails the test instead of stalling the suite

BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{b}'] * 9) if b else ', '.join(['lol'] * 9)}]\n"
               for a, b in zip("abcdefghi", [None, *"abcdefgh"])) + "train:\n  max_steps: *i\n"


def config_with(**sections) -> Callable[[], None]:
    """The world's config with sections merged in, written as x.yaml."""

    def prepare() -> None:
        raw = yaml.safe_load(Path(CFG).read_text(encoding="utf-8"))
        for section, values in sections.items():
            raw.setdefault(section, {}).update(values)
        write("x.yaml", yaml.safe_dump(raw, allow_unicode=True))

    return prepare


def fifo(name: str) -> Callable[[], None]:
    return lambda: os.mkfifo(name)


def sixteen_bit_folder() -> None:
    from PIL import Image

    Path("scans").mkdir()
    for i in range(40):
        Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * (1000 + i))).save(f"scans/{i}.png")
    write("scans.yaml", yaml.safe_dump({"data": {"source": "scans", "prepared_dir": "pscans", "image": {"size": 8}, "val_fraction": 0.25},
                                        "model": {"backend": "vae"}}))


def foreign_with(name: str, content: bytes) -> Callable[[], None]:
    """The step-4 checkpoint without checksums.json (as copied by hand), with one file damaged."""
    return lambda: (foreign_copy("foreign"), write(f"foreign/{name}", content))


# name: (what to break in a fresh copy of the world, the command line, exit code, text of the error line)
CASES: dict[str, tuple[Callable[[], object], list[str], int, str]] = {
    # ---- 1. nothing aigc reads may hang or grow without bound
    "yaml-alias-bomb": (lambda: write("bomb.yaml", BOMB), ["train", "bomb.yaml"], 2, "expands to more than 100,000 values"),
    "yaml-alias-bomb-prep": (lambda: write("bomb.yaml", "data:\n  source: corpus.txt\n" + BOMB.replace("train:\n  max_steps: *i\n", "model:\n  n_layer: *i\n")),
                             ["prep", "bomb.yaml"], 2, "expands to more than 100,000 values"),
    "yaml-recursive-alias": (lambda: write("loop.yaml", "train: &t\n  x: *t\n"), ["train", "loop.yaml"], 2, "expands to more than 100,000 values"),
    "fifo-as-data-source": (fifo("pipe.txt"), ["prep", CFG, "data.source=pipe.txt", "data.prepared_dir=p2"], 2, "is not a regular file"),
    "fifo-as-prompts-file": (fifo("pipe.txt"), [*GEN, "--prompts-file", "pipe.txt"], 2, "is not a regular file"),
    "fifo-as-predictions": (fifo("pipe.jsonl"), ["eval", "--predictions", "pipe.jsonl", "--metrics", "distinct1"], 2, "is not a regular file"),
    "huge-value-in-error-message": (lambda: write("big.yaml", "train:\n  max_steps: [" + ", ".join(["1"] * 50_000) + "]\n"), ["train", "big.yaml"], 2,
                                    "'train.max_steps'"),
    # ---- 2. values the schema took that the engine could not handle
    "seed-beyond-torch": (NOTHING, [*GEN, "generate.seed=99999999999999999999"], 2, "'generate.seed'"),
    "seed-negative": (NOTHING, ["train", CFG, "train.seed=-5", "train.out_dir=r2"], 2, "'train.seed'"),
    "data-seed-beyond-torch": (NOTHING, ["prep", CFG, "data.seed=18446744073709551616", "data.prepared_dir=p2"], 2, "'data.seed'"),
    "max-new-tokens-terabytes": (NOTHING, [*GEN, "generate.max_new_tokens=1000000000000"], 2, "'generate.max_new_tokens'"),
    "template-format-spec": (config_with(generate={"template": "{source:d}"}), ["generate", "x.yaml", "--prompt", "x", "--out", "g.jsonl"], 2,
                             "placeholder aigc cannot fill: {source:d}"),
    "template-attribute-access": (config_with(generate={"template": "{source.__class__}"}), ["generate", "x.yaml", "--prompt", "x", "--out", "g.jsonl"], 2,
                                  "placeholder aigc cannot fill"),
    "template-conversion": (config_with(generate={"template": "Q: {source!r} A:"}), ["generate", "x.yaml", "--prompt", "x", "--out", "g.jsonl"], 2,
                            "placeholder aigc cannot fill: {source!r}"),
    "finetune-template-format-spec": (lambda: write("pairs.jsonl", '{"source": "a", "target": "b"}\n' * 4),
                                      ["finetune", CFG, f"finetune.base={STEP4}", "finetune.train_file=pairs.jsonl", "finetune.template=Q {source:>10}",
                                       "train.out_dir=ft"], 2, "placeholder aigc cannot fill"),
    "foreign-tokenizer-truncated": (foreign_with("tokenizer.json", b'{"version": "1.0", "trunc'), [*GEN, "--checkpoint", "foreign"], 2,
                                    "tokenizer.json is damaged"),
    "latest-pointer-binary": (lambda: write("run/checkpoints/latest", b"\x00\xff\xfe\x81garbage"), ["train", CFG], 2,
                              "run already holds checkpoints (newest: step-000004)"),
    "nul-byte-in-path": (lambda: write("nul.yaml", 'data:\n  source: "corpus\\0.txt"\n'), ["prep", "nul.yaml"], 2, "'data.source' holds a NUL byte"),
    "nul-byte-in-prompt-config": (lambda: write("nul.yaml", yaml.safe_dump({**yaml.safe_load(Path(CFG).read_text()), "generate": {"out": "a\0b"}})),
                                  ["generate", "nul.yaml"], 2, "'generate.out' holds a NUL byte"),
    "foreign-aigc-json-truncated": (foreign_with("aigc.json", b'{"backe'), [*GEN, "--checkpoint", "foreign"], 2, "aigc.json is damaged"),
    "foreign-aigc-json-unknown-backend": (foreign_with("aigc.json", b'{"backend": "nonsense", "step": 4}'), [*GEN, "--checkpoint", "foreign"], 2,
                                          "aigc.json is damaged"),
    "info-aigc-json-truncated": (foreign_with("aigc.json", b'{"backe'), ["info", "foreign"], 2, "aigc.json is damaged"),
    "info-config-json-binary": (foreign_with("config.json", b"\xff\x00\x81"), ["info", "foreign"], 2, "config.json"),
    "info-safetensors-garbage": (foreign_with("model.safetensors", b"\xff" * 64), ["info", "foreign"], 2, "model.safetensors"),
    "info-prepared-meta-binary": (lambda: write("prepared/meta.json", b"\x00\xff"), ["info", "prepared"], 2, "meta.json"),
    "runs-config-yaml-binary": (lambda: write("run/config.yaml", b"\x00\xff\xfe: ["), ["runs", "."], 2, "config.yaml"),
    # ---- 3. --resume with a config that no longer fits the checkpoint: refused before anything is written
    "resume-wider-model": (NOTHING, ["train", CFG, "--resume", "model.n_embd=64"], 2, "model.n_embd"),
    "resume-deeper-model": (NOTHING, ["train", CFG, "--resume", "model.n_layer=2"], 2, "model.n_layer"),
    "resume-other-architecture": (NOTHING, ["train", CFG, "--resume", "model.architecture=llama"], 2, "model.architecture"),
    "resume-other-head-count": (NOTHING, ["train", CFG, "--resume", "model.n_head=4"], 2, "model.n_head"),
    "resume-other-context": (NOTHING, ["train", CFG, "--resume", "model.block_size=8"], 2, "model.block_size"),
    "resume-other-prepared-data": (lambda: (write("other.txt", "completely different text, другой алфавит\n" * 300),
                                            CliRunner().invoke(app, ["prep", CFG, "data.source=other.txt", "data.prepared_dir=p2"])),
                                   ["train", CFG, "--resume", "data.prepared_dir=p2"], 2, "prepared data"),
    # ---- 5. writes over files aigc did not make
    "train-into-prepared-data": (NOTHING, ["train", CFG, "train.out_dir=prepared"], 2, "prepared holds files aigc did not write there"),
    "train-into-user-folder": (lambda: write("mine/config.yaml", "my own notes\n"), ["train", CFG, "train.out_dir=mine"], 2,
                               "mine holds files aigc did not write there"),
    "finetune-into-prepared-data": (lambda: write("pairs.jsonl", '{"source": "a", "target": "b"}\n' * 8),
                                    ["finetune", CFG, f"finetune.base={STEP4}", "finetune.train_file=pairs.jsonl", "train.out_dir=prepared"], 2,
                                    "prepared holds files aigc did not write there"),
    "generate-over-a-corpus": (NOTHING, ["generate", CFG, "--out", "corpus.txt"], 2, "corpus.txt exists and was not written by `aigc generate`"),
    "generate-over-the-config": (NOTHING, ["generate", CFG, "--out", CFG], 2, "was not written by `aigc generate`"),
    "text-config-image-checkpoint": (lambda: (foreign_copy("foreign"), write("foreign/aigc.json", '{"backend": "gan", "step": 4}')),
                                     [*GEN, "--checkpoint", "foreign"], 2, "holds a gan model, which makes images"),
    # ---- 6. usage errors: the same one line as every other error
    "usage-num-zero": (NOTHING, [*GEN, "--num", "0"], 2, "Invalid value for '--num'"),
    "usage-seed-not-a-number": (NOTHING, [*GEN, "--seed", "abc"], 2, "Invalid value for '--seed'"),
    "usage-unknown-option": (NOTHING, ["train", CFG, "--frobnicate"], 2, "No such option: --frobnicate"),
    "usage-missing-config": (NOTHING, ["train"], 2, "Missing argument 'CONFIG'"),
    "usage-unknown-verb": (NOTHING, ["trian", CFG], 2, "No such command 'trian'"),
    # ---- 6. the error contract: the user's path, "is a directory", never a temporary's name
    "eval-out-is-a-directory": (lambda: (write("p.txt", "a b c\n"), Path("outdir").mkdir()),
                                ["eval", "--predictions", "p.txt", "--references", "p.txt", "--out", "outdir"], 2, "cannot write or read outdir: Is a directory"),
    "config-is-a-directory": (NOTHING, ["train", "prepared"], 2, "config prepared is a directory"),
    "config-is-a-fifo": (fifo("cfg.yaml"), ["train", "cfg.yaml"], 2, "config file is not a regular file: cfg.yaml"),
    "prompts-file-is-a-directory": (NOTHING, [*GEN, "--prompts-file", "prepared"], 2, "prompts file prepared is a directory"),
    "predictions-is-a-directory": (NOTHING, ["eval", "--predictions", "prepared", "--metrics", "distinct1"], 2, "--predictions prepared is a directory"),
    "references-is-a-directory": (lambda: write("p.txt", "a\n"), ["eval", "--predictions", "p.txt", "--references", "run"], 2, "--references run is a directory"),
    "finetune-pairs-is-a-directory": (NOTHING, ["finetune", CFG, f"finetune.base={STEP4}", "finetune.train_file=prepared", "train.out_dir=ft"], 2,
                                      "finetune.train_file prepared is a directory"),
    # ---- 4. nonsense accepted silently
    "learning-rate-nan": (NOTHING, ["train", CFG, "train.learning_rate=nan", "train.out_dir=r2"], 2, "'train.learning_rate'"),
    "learning-rate-overflows-the-weights": (NOTHING, ["train", CFG, "train.out_dir=r2", "train.learning_rate=1e39", "train.warmup_steps=0",
                                                     "train.grad_clip=0", "train.save_every=1", "train.eval_every=1"], 4, "non-finite weights"),
    "learning-rate-inf": (NOTHING, ["train", CFG, "train.learning_rate=.inf", "train.out_dir=r2"], 2, "'train.learning_rate'"),
    "gate-bound-nan-option": (lambda: write("p.txt", "a b c\n"), ["eval", "--predictions", "p.txt", "--references", "p.txt", "--fail-under", "bleu=nan"], 2,
                              "'eval.fail_under.bleu'"),
    "gate-bound-nan-config": (config_with(eval={"fail_above": {"ter": float("nan")}}), ["eval", "x.yaml"], 2, "'eval.fail_above.ter'"),
    "prompts-jsonl-without-prompt-field": (lambda: write("p.jsonl", '{"question": "to be?"}\n{"question": "or not?"}\n'),
                                           [*GEN, "--prompts-file", "p.jsonl"], 2, "p.jsonl:1: no 'prompt' field (fields: question)"),
    "prompts-jsonl-null-prompt": (lambda: write("p.jsonl", '{"prompt": null}\n'), [*GEN, "--prompts-file", "p.jsonl"], 2, "p.jsonl:1"),
    "pairs-null-response": (lambda: write("pairs.jsonl", '{"source": "a", "target": null}\n' * 4),
                            ["finetune", CFG, f"finetune.base={STEP4}", "finetune.train_file=pairs.jsonl", "train.out_dir=ft"], 2, "pairs.jsonl:1"),
    "corpus-jsonl-null-text": (lambda: write("c.jsonl", '{"text": null}\n'), ["prep", CFG, "data.source=c.jsonl", "data.prepared_dir=p2"], 2, "c.jsonl:1"),
    "data-source-empty-string": (NOTHING, ["prep", CFG, "data.source=", "data.prepared_dir=p2"], 2, "'data.source'"),
    "data-source-blank": (NOTHING, ["prep", CFG, "data.source=' '", "data.prepared_dir=p2"], 2, "'data.source'"),
    "corpus-blank-after-cleaning": (lambda: write("blank.txt", " \n\t\n   \n" * 50), ["prep", CFG, "data.source=blank.txt", "data.prepared_dir=p2",
                                                                                      "data.cleaning.whitespace=true"], 2, "holds no text after cleaning"),
    "corpus-only-newlines": (lambda: write("nl.txt", "\n" * 500), ["prep", CFG, "data.source=nl.txt", "data.prepared_dir=p2"], 2, "holds no text after cleaning"),
    "duplicate-top-level-key": (lambda: write("dup.yaml", Path(CFG).read_text() + "train:\n  max_steps: 2\n"), ["train", "dup.yaml"], 2,
                                "key 'train' appears twice"),
    "duplicate-nested-key": (lambda: write("dup.yaml", "data:\n  source: corpus.txt\n  source: other.txt\n"), ["prep", "dup.yaml"], 2,
                             "key 'source' appears twice"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_adversarial_input(world, tmp_path, monkeypatch, name):
    prepare, args, code, message = CASES[name]
    copy = world_copy(world, tmp_path, monkeypatch)
    prepare()
    before = snapshot_regular(copy)

    def too_slow(signum, frame):
        raise AssertionError(f"aigc {' '.join(args)} ran past {TIME_LIMIT_S} s: it hangs")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(TIME_LIMIT_S)
    try:
        result = CliRunner().invoke(app, args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    output = result.stdout + result.stderr
    assert result.exit_code == code, output
    assert "Traceback" not in output and isinstance(result.exception, SystemExit), output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], output
    assert changed_files(before, copy) == []
    leftovers = [p.name for p in copy.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert leftovers == []


def snapshot_regular(root: Path) -> dict[str, str]:
    """snapshot() of the regular files: a FIFO planted by a case is not read (it would block)."""
    fifos = [p for p in root.rglob("*") if p.is_fifo()]
    for p in fifos:
        p.rename(p.with_name(p.name + ".fifo-aside"))
    try:
        return snapshot(root)
    finally:
        for p in fifos:
            p.with_name(p.name + ".fifo-aside").rename(p)


def test_sixteen_bit_images_keep_their_grey_levels(world, tmp_path, monkeypatch):
    """16-bit greyscale PNGs are scaled to 8 bits, not clipped to black and white."""
    world_copy(world, tmp_path, monkeypatch)
    sixteen_bit_folder()
    result = CliRunner().invoke(app, ["prep", "scans.yaml"])
    assert result.exit_code == 0, result.stderr
    from aigc_cli.data.images import ImageArray

    pixels = np.concatenate([np.asarray(ImageArray("pscans", split).images) for split in ("train", "val")])
    assert len(np.unique(pixels)) > 32  # a gradient, not two grey levels


def test_a_damaged_latest_pointer_falls_back_to_the_newest_intact_checkpoint(world, tmp_path, monkeypatch):
    world_copy(world, tmp_path, monkeypatch)
    write("run/checkpoints/latest", b"\x00\xff\xfe")
    result = CliRunner().invoke(app, ["generate", CFG, "--out", "g.jsonl", "--json"])
    assert result.exit_code == 0, result.stderr
    assert "latest is damaged" in result.stderr and f"with {STEP4}" in result.stderr


def test_a_bom_is_no_text_in_a_corpus(world, tmp_path, monkeypatch):
    world_copy(world, tmp_path, monkeypatch)
    write("bom.txt", "\ufeff" + "plain text\n" * 40)
    write("plain.txt", "plain text\n" * 40)
    for name in ("bom", "plain"):
        result = CliRunner().invoke(app, ["prep", CFG, f"data.source={name}.txt", f"data.prepared_dir=p-{name}", "--json"])
        assert result.exit_code == 0, result.stderr
    assert Path("p-bom/train.bin").read_bytes() == Path("p-plain/train.bin").read_bytes()


def test_a_bom_in_references_or_predictions_changes_no_score(world, tmp_path, monkeypatch):
    world_copy(world, tmp_path, monkeypatch)
    write("hyp.txt", "the cat sat on the mat\na dog ran\n")
    write("ref.txt", "the cat sat on a mat\na dog ran fast\n")
    write("hyp-bom.txt", "\ufeffthe cat sat on the mat\na dog ran\n")
    write("ref-bom.txt", "\ufeffthe cat sat on a mat\na dog ran fast\n")
    scores = []
    for hyp, ref in (("hyp.txt", "ref.txt"), ("hyp-bom.txt", "ref-bom.txt")):
        result = CliRunner().invoke(app, ["eval", "--predictions", hyp, "--references", ref, "--metrics", "bleu,chrf,rougeL", "--json"])
        assert result.exit_code == 0, result.stderr
        scores.append(__import__("json").loads(result.stdout)["metrics"])
    assert scores[0] == scores[1]
