#!/usr/bin/env python
"""Text preparation: `aigc prep` vs encoding with Hugging Face `tokenizers` directly — MB/s and peak memory.

A benchmark, not a test. Seeded synthetic corpora of two sizes (prep_memory.py's generator:
Zipf pseudo-words, Chinese lines, paragraphs) are encoded by both sides with the same byte-level
BPE tokenizer (vocabulary 8000, trained once beforehand by `aigc prep` on the smaller corpus,
untimed), each in its own child process whose wall time and peak RSS (`wait4`'s ru_maxrss) are
measured:

  aigc     `aigc prep` with data.tokenizer.kind=pretrained (that tokenizer), cleaning.unicode=none
           (the peer does not normalise either): both streaming passes, the SHA-256 of the input,
           the train/val split, meta.json and provenance — everything the command does.
  peer     the loop a user would write: `Tokenizer.from_file`, read ~1 MB of lines at a time,
           `encode_batch_fast`, append the ids as uint16 to one .bin file.

MB/s is corpus megabytes over the child's wall time, start-up included (which is why the corpora
are tens of megabytes). "Memory flat" means the peak RSS barely moves from the small corpus to the
large one.

    python scripts/bench/prep.py                    # 20 MB and 100 MB
    python scripts/bench/prep.py --sizes-mb 50 200 --json out.json
    python scripts/bench/prep.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from prep_memory import write_corpus  # noqa: E402

MB = 1_000_000
PEER = r"""
import sys
import numpy as np
from tokenizers import Tokenizer
tokenizer = Tokenizer.from_file(sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as corpus, open(sys.argv[3], "wb") as out:
    while True:
        lines = corpus.readlines(1 << 20)
        if not lines:
            break
        for encoding in tokenizer.encode_batch_fast(lines, add_special_tokens=False):
            np.asarray(encoding.ids, dtype=np.uint16).tofile(out)
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes-mb", type=float, nargs=2, default=[20, 100], help="the two corpus sizes in MB (small, large)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each side per size (median)")
    p.add_argument("--smoke", action="store_true", help="one 1 MB corpus, one run each (checks the script runs)")
    p.add_argument("--json", help="write the result rows here")
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes_mb, args.repeats = [1], 1
    return args


def measure(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    errors = child.stderr.read().decode(errors="replace")
    child.stderr.close()
    if child.returncode:
        raise RuntimeError(f"{command[:4]} failed ({child.returncode}): {errors[-2000:]}")
    return wall, usage.ru_maxrss * 1024 / MB  # Linux reports KiB


def write_config(path: Path, corpus: Path, prepared: Path, tokenizer: dict) -> Path:
    data = {"source": str(corpus), "prepared_dir": str(prepared), "tokenizer": tokenizer, "cleaning": {"unicode": "none"}}
    path.write_text(yaml.safe_dump({"data": data}), encoding="utf-8")
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    aigc = [sys.executable, "-m", "aigc_cli"]
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="aigc-bench-prep-") as tmp:
        work = Path(tmp)
        corpora = []
        for size in args.sizes_mb:
            corpus = work / f"corpus-{size:g}MB.txt"
            corpora.append((write_corpus(corpus, int(size * MB), seed=1234) / MB, corpus))
        # The shared tokenizer: BPE 8000 trained by aigc on (at most 16 MB of) the smaller corpus, untimed.
        tokenizer_dir, vocab = work / "bpe", 300 if args.smoke else 8000
        subprocess.run([*aigc, "prep", str(write_config(work / "bpe.yaml", corpora[0][1], tokenizer_dir,
                                                         {"kind": "bpe", "vocab_size": vocab})), "-q"],
                       check=True, stdout=subprocess.DEVNULL)
        for megabytes, corpus in corpora:
            config = write_config(work / "prep.yaml", corpus, work / "prepared", {"kind": "pretrained", "path": str(tokenizer_dir)})
            sides = {
                "aigc": lambda: measure([*aigc, "prep", str(config), "-q"]),
                "peer": lambda: measure([sys.executable, "-c", PEER, str(tokenizer_dir / "tokenizer.json"), str(corpus), str(work / "peer.bin")]),
            }
            got = {name: [] for name in sides}
            for r in range(args.repeats):
                for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                    shutil.rmtree(work / "prepared", ignore_errors=True)  # else aigc prep reuses the finished directory
                    got[name].append(sides[name]())
                print(f"  prep {megabytes:.0f} MB round {r + 1}: " + "  ".join(
                    f"{n} {megabytes / got[n][-1][0]:.2f} MB/s {got[n][-1][1]:.0f} MB RSS" for n in sides), flush=True)
            results[megabytes] = {name: (harness.median([w for w, _ in v]), max(m for _, m in v)) for name, v in got.items()}

    ordered = sorted(results.items())
    (small, s), (large, l) = ordered[0], ordered[-1]
    rate = {name: large / l[name][0] for name in ("aigc", "peer")}
    memory = (f"peak RSS {small:.0f} MB → {large:.0f} MB corpus: aigc {s['aigc'][1]:.0f} → {l['aigc'][1]:.0f} MB, "
              f"tokenizers {s['peer'][1]:.0f} → {l['peer'][1]:.0f} MB")
    rows.append(harness.row("prep", f"prep MB/s, {large:.0f} MB corpus, byte-level BPE {vocab}", "MB/s", rate["aigc"],
                            "tokenizers encode_batch_fast loop", rate["peer"], 0.9, memory))
    if len(ordered) > 1:
        rows.append(harness.row("prep", f"prep peak RSS growth, {small:.0f} → {large:.0f} MB corpus", "MB",
                                l["aigc"][1] - s["aigc"][1], target=100.0, absolute=True,
                                note=f"memory flat: at most +100 MB for a {large / small:.0f}× larger corpus"))
    harness.write_rows(args.json, rows)
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
