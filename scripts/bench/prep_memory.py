#!/usr/bin/env python
"""Measure `aigc prep`'s peak memory and wall time on large synthetic corpora.

prepare.py promises "Memory stays flat however large the corpus is". This script checks it:
it writes deterministic synthetic text corpora of two sizes (default ~20 MB and ~200 MB) into a
temporary directory, runs `aigc prep --json` on each as a child process — once with the char
tokenizer, once with byte-level BPE (vocab 8000) — and reports the child's peak resident memory,
wall time and the number of tokens written.

Corpus: seeded (same bytes on every run for the same --seed and size) and streamed to disk in
~1 MB blocks, so generating it never holds the corpus in memory. Lines of Zipf-distributed
pseudo-words (a 40,000-word syllable lexicon, a few accented words, numbers), ~2% never-seen-before
words (so the number of distinct words keeps growing with size, as in real text: names, typos,
numbers), ~10% lines of Chinese (a 3,000-character set, Zipf-weighted, with ，。 punctuation),
and blank lines between paragraphs. BPE therefore has real merges to learn, and the char
tokenizer sees a few thousand distinct characters.

Peak RSS: `os.wait4` on the child returns that process's own `ru_maxrss` (the kernel's exact high
water mark — not the cumulative RUSAGE_CHILDREN maximum, which would mix runs). While it runs we
also poll its RSS with psutil every 20 ms and split the maximum by phase (the child's
"pass 1/2" / "pass 2/2" log lines on stderr): pass 1 reads the corpus and builds the tokenizer,
pass 2 encodes and writes train.bin / val.bin.

BPE budget: data.tokenizer.max_train_bytes caps how much text BPE is trained on (default 16 MB,
chosen from this script's measurements: BPE training holds ~10-12x its training text, so a 100 MB
budget peaked at ~1.2 GB). We pass 16 MB explicitly (below the smaller corpus), so both sizes train
on the same amount of text and any growth of peak RSS with corpus size is the streaming's fault.
`--bpe-max-train-mb 0` leaves the config default; `--bpe-max-train-mb 100` shows the old behaviour.

Usage:
    python scripts/bench/prep_memory.py                    # 20 MB and 200 MB, char and bpe
    python scripts/bench/prep_memory.py --sizes-mb 20 200 --bpe-max-train-mb 0
    python scripts/bench/prep_memory.py --keep /tmp/corpora  # keep corpora and prepared dirs
    python scripts/bench/prep_memory.py --smoke              # 1 and 2 MB, char only (checks the script runs)
Exit status 1 when a tokenizer's peak RSS on the largest corpus exceeds the smallest's by more
than --max-growth-mb (default 100 MB) — i.e. memory is not flat.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from itertools import accumulate
from pathlib import Path

import yaml

MB = 1_000_000


# ----------------------------------------------------------------------------- corpus
def _syllable_word(rng: random.Random, low: int = 1, high: int = 4) -> str:
    onsets = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
              "br", "ch", "cl", "dr", "gr", "pl", "sh", "st", "th", "tr", "qu"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y", "ee"]
    codas = ["", "", "", "n", "r", "s", "t", "l", "m", "ng", "ck", "st"]
    return "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.randint(low, high)))


def write_corpus(path: Path, target_bytes: int, seed: int) -> int:
    """Write ~target_bytes of deterministic text to `path`, streaming; returns the bytes written."""
    rng = random.Random(seed)
    lexicon = list(dict.fromkeys(_syllable_word(rng) for _ in range(45_000)))[:40_000]
    lexicon[:0] = ["the", "of", "and", "to", "in", "is", "that", "it", "was", "for", "on", "with", "as", "by"]
    lexicon += ["café", "naïve", "Zürich", "façade", "São", "Ångström", "résumé", "coöperate", "über", "niño"]
    word_cw = list(accumulate(1.0 / (rank + 1) ** 1.07 for rank in range(len(lexicon))))
    hanzi = [chr(0x4E00 + rng.randrange(0x5000)) for _ in range(3_000)]
    hanzi_cw = list(accumulate(1.0 / (rank + 1) ** 0.9 for rank in range(len(hanzi))))
    ends = [".", ".", ".", ".", "?", "!", ";", ":"]

    written = 0
    block: list[str] = []
    block_bytes = 0
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        while written < target_bytes:
            r = rng.random()
            if r < 0.06:
                line = ""  # paragraph break
            elif r < 0.16:
                n = rng.randint(8, 40)
                chars = rng.choices(hanzi, cum_weights=hanzi_cw, k=n)
                for i in range(rng.randint(3, 8), n, rng.randint(4, 9)):
                    chars[i] += "，"
                line = "".join(chars) + "。"
            else:
                n = rng.randint(5, 20)
                words = rng.choices(lexicon, cum_weights=word_cw, k=n)
                for i in range(n):
                    u = rng.random()
                    if u < 0.02:
                        words[i] = _syllable_word(rng, 2, 5)  # a never-seen word: vocabulary keeps growing
                    elif u < 0.025:
                        words[i] = str(rng.randrange(100_000))
                    elif u < 0.06:
                        words[i] = words[i].capitalize()
                    if 0 < i < n - 1 and rng.random() < 0.07:
                        words[i] += ","
                line = " ".join(words).capitalize() + rng.choice(ends)
            line += "\n"
            block.append(line)
            block_bytes += len(line.encode("utf-8")) if not line.isascii() else len(line)
            if block_bytes >= 1 << 20:
                out.write("".join(block))
                written += block_bytes
                block, block_bytes = [], 0
        if block:
            out.write("".join(block))
            written += block_bytes
    return written


# ----------------------------------------------------------------------------- measuring one prep
def measure_prep(config: Path, aigc: list[str]) -> dict:
    """Run `aigc prep CONFIG --json` and measure it. Peak RSS from wait4; per-phase RSS from polling."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen([*aigc, "prep", str(config), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    phase = ["start"]
    stderr_lines: list[str] = []

    def read_stderr():
        for line in proc.stderr:
            stderr_lines.append(line)
            if line.startswith("pass 1/2"):
                phase[0] = "pass1"
            elif line.startswith("pass 2/2"):
                phase[0] = "pass2"

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    stdout_chunks: list[str] = []
    out_reader = threading.Thread(target=lambda: stdout_chunks.append(proc.stdout.read()), daemon=True)
    out_reader.start()

    polled = {"start": 0, "pass1": 0, "pass2": 0}
    ps = psutil.Process(proc.pid)
    while True:
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            raise RuntimeError("lost the child process") from None
        if pid:
            break
        try:
            rss = ps.memory_info().rss
        except psutil.Error:
            rss = 0
        polled[phase[0]] = max(polled[phase[0]], rss)
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    out_reader.join()
    if proc.returncode != 0:
        sys.stderr.write("".join(stderr_lines))
        raise RuntimeError(f"aigc prep exited with {proc.returncode}")
    result = json.loads(stdout_chunks[0])
    return {"peak_rss_mb": usage.ru_maxrss * 1024 / MB,  # Linux: KiB
            "pass1_mb": polled["pass1"] / MB, "pass2_mb": polled["pass2"] / MB, "wall_s": wall,
            "tokens": result["train_tokens"] + result["val_tokens"], "vocab": result["vocab_size"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes-mb", type=float, nargs="+", default=[20, 200], help="corpus sizes in MB (default 20 200)")
    p.add_argument("--tokenizers", nargs="+", choices=["char", "bpe"], default=["char", "bpe"])
    p.add_argument("--vocab-size", type=int, default=8000, help="BPE vocabulary (default 8000)")
    p.add_argument("--bpe-max-train-mb", type=float, default=16,
                   help="data.tokenizer.max_train_bytes in MB (default 16, below the smallest corpus; 0: leave the config default)")
    p.add_argument("--seed", type=int, default=1234, help="corpus seed")
    p.add_argument("--max-growth-mb", type=float, default=100, help="exit 1 when peak RSS grows more than this from the smallest to the largest corpus")
    p.add_argument("--keep", help="write corpora, configs and prepared data here (kept) instead of a temporary directory")
    p.add_argument("--smoke", action="store_true", help="1 and 2 MB corpora, char tokenizer only (checks the script runs)")
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes_mb, args.tokenizers = [1, 2], ["char"]

    aigc = [shutil.which("aigc")] if shutil.which("aigc") else [sys.executable, "-m", "aigc_cli"]
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        workdir, cleanup = Path(args.keep), None
    else:
        cleanup = tempfile.TemporaryDirectory(prefix="aigc-prepmem-")
        workdir = Path(cleanup.name)

    rows = []
    try:
        for size in sorted(args.sizes_mb):
            corpus = workdir / f"corpus-{size:g}MB.txt"
            t = time.perf_counter()
            actual = corpus.stat().st_size if corpus.is_file() else write_corpus(corpus, int(size * MB), args.seed)
            print(f"corpus {corpus.name}: {actual / MB:.1f} MB ({time.perf_counter() - t:.1f}s to write)", flush=True)
            for kind in args.tokenizers:
                tokenizer = {"kind": kind}
                if kind == "bpe":
                    tokenizer["vocab_size"] = args.vocab_size
                    if args.bpe_max_train_mb:
                        tokenizer["max_train_bytes"] = int(args.bpe_max_train_mb * MB)
                prepared = workdir / f"prepared-{size:g}MB-{kind}"
                shutil.rmtree(prepared, ignore_errors=True)
                config = workdir / f"prep-{size:g}MB-{kind}.yaml"
                config.write_text(yaml.safe_dump({"data": {"source": str(corpus), "tokenizer": tokenizer,
                                                           "prepared_dir": str(prepared)}}), encoding="utf-8")
                m = measure_prep(config, aigc)
                label = kind if kind == "char" else f"bpe {args.vocab_size}" + (f" (train {args.bpe_max_train_mb:g} MB)" if args.bpe_max_train_mb else " (train ≤100 MB)")
                rows.append({"size": actual / MB, "kind": kind, "label": label, **m})
                print(f"  {label}: peak RSS {m['peak_rss_mb']:.0f} MB, {m['wall_s']:.1f}s, {m['tokens']:,} tokens", flush=True)
                if not args.keep:
                    shutil.rmtree(prepared, ignore_errors=True)
            if not args.keep:
                corpus.unlink()
    finally:
        if cleanup is not None:
            cleanup.cleanup()

    print()
    header = f"{'corpus MB':>9}  {'tokenizer':<26} {'peak RSS MB':>11} {'pass1 MB':>9} {'pass2 MB':>9} {'wall s':>7} {'tokens':>13} {'vocab':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['size']:>9.1f}  {r['label']:<26} {r['peak_rss_mb']:>11.0f} {r['pass1_mb']:>9.0f} {r['pass2_mb']:>9.0f} "
              f"{r['wall_s']:>7.1f} {r['tokens']:>13,} {r['vocab']:>6,}")
    print("-" * len(header))
    print("peak RSS: the child's ru_maxrss (exact); pass1/pass2: max of 20 ms RSS samples in each phase")

    failed = False
    for kind in args.tokenizers:
        mine = [r for r in rows if r["kind"] == kind]
        if len(mine) >= 2:
            small, large = mine[0], mine[-1]
            growth = large["peak_rss_mb"] - small["peak_rss_mb"]
            flat = growth <= args.max_growth_mb
            failed |= not flat
            print(f"{kind}: {small['size']:.0f} MB → {large['size']:.0f} MB corpus ({large['size'] / small['size']:.0f}×): "
                  f"peak RSS {small['peak_rss_mb']:.0f} → {large['peak_rss_mb']:.0f} MB ({growth:+.0f} MB) "
                  f"→ {'flat' if flat else 'GROWS WITH CORPUS SIZE'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
