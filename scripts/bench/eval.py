#!/usr/bin/env python
"""Benchmark: `aigc eval`'s text path against calling sacrebleu and rouge-score directly.

Two questions:
1. Speed. BLEU + chrF + ROUGE-1/2/L on --pairs prediction/reference pairs, once through aigc's
   code path (`aigc_cli.evaluation.evaluate` with a config-free eval section: streamed reading,
   chunked sacrebleu statistics, rouge-score with aigc's tokenizer, input hashing, report.json
   and report.md written) and once as the libraries' own one-liners on lists read into memory
   (`sacrebleu.corpus_bleu`, `sacrebleu.corpus_chrf`, a `rouge_scorer.RougeScorer` loop). Same
   process, --iterations interleaved rounds alternating which side goes first, medians; the two
   sides' numbers must agree. Target: aigc within 1.2x of direct (exit 1 when slower).
2. Memory. In a fresh subprocess per size, the peak of Python allocations (tracemalloc) while
   scoring N pairs after a warm-up run, for --pairs and 4x --pairs. aigc streams, so its peak
   should not grow with N; the direct side holds the lists, shown for contrast.

Data: the English side of ../shared/data/multi30k/train.en.gz as references when present (its
ASCII lines, where aigc's ROUGE tokenizer is rouge-score's, cycled to reach the size), else
synthetic sentences; each prediction is its reference with seeded edits
(a word dropped, two swapped, one replaced), so the scores are in a realistic range.

Usage:
    python scripts/bench/eval.py                      # 10,000 pairs, 3 rounds, memory at 10k / 40k
    python scripts/bench/eval.py --pairs 2000 --iterations 5
    python scripts/bench/eval.py --smoke              # tiny sizes, no ratio check (what the test runs)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MULTI30K = REPO.parent / "shared" / "data" / "multi30k" / "train.en.gz"
METRICS = ["bleu", "chrf", "rouge1", "rouge2", "rougeL"]
WARM_UP = 1000
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

WORDS = "a man woman dog child red blue ball street runs sits plays with in on the of near big small green".split()


def reference_lines() -> list[str]:
    if MULTI30K.is_file():
        with gzip.open(MULTI30K, "rt", encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip() and line.isascii()]
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 16))) for _ in range(5000)]


def make_pair_files(pairs: int, folder: Path) -> tuple[Path, Path]:
    refs = reference_lines()
    rng = random.Random(1234)
    hyp_path, ref_path = pair_files(pairs, folder)
    with open(hyp_path, "w", encoding="utf-8") as hyp_out, open(ref_path, "w", encoding="utf-8") as ref_out:
        for i in range(pairs):
            words = refs[i % len(refs)].split()
            edit = rng.randrange(4)
            if edit == 0 and len(words) > 2:
                del words[rng.randrange(len(words))]
            elif edit == 1 and len(words) > 2:
                j = rng.randrange(len(words) - 1)
                words[j], words[j + 1] = words[j + 1], words[j]
            elif edit == 2:
                words[rng.randrange(len(words))] = rng.choice(WORDS)
            hyp_out.write(" ".join(words) + "\n")
            ref_out.write(refs[i % len(refs)] + "\n")
    return hyp_path, ref_path


def run_aigc(hyp: Path, ref: Path, out: Path) -> dict[str, float]:
    from aigc_cli.config import validate_config
    from aigc_cli.evaluation import evaluate

    cfg = validate_config({"eval": {"generations": str(hyp), "references": str(ref), "metrics": METRICS, "out": str(out)}})
    return evaluate(cfg, None, config_free=True).body["metrics"]


def run_direct(hyp: Path, ref: Path) -> dict[str, float]:
    import sacrebleu
    from rouge_score import rouge_scorer

    hyps = hyp.read_text(encoding="utf-8").splitlines()
    refs = ref.read_text(encoding="utf-8").splitlines()
    scores = {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score}
    types = ["rouge1", "rouge2", "rougeL"]
    scorer = rouge_scorer.RougeScorer(types)
    sums = dict.fromkeys(types, 0.0)
    for h, r in zip(hyps, refs):
        result = scorer.score(r, h)
        for t in types:
            sums[t] += result[t].fmeasure
    return scores | {t: sums[t] / len(hyps) for t in types}


def timed(fn, *args) -> tuple[float, dict]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def speed(pairs: int, iterations: int, folder: Path) -> tuple[float, float, float]:
    hyp, ref = make_pair_files(pairs, folder)
    run_aigc(hyp, ref, folder / "warm.json")  # imports, tokenizer tables: not what we measure
    run_direct(hyp, ref)
    aigc_times, direct_times = [], []
    for round_number in range(iterations):
        order = ["aigc", "direct"] if round_number % 2 == 0 else ["direct", "aigc"]
        for side in order:
            if side == "aigc":
                seconds, ours = timed(run_aigc, hyp, ref, folder / "report.json")
                aigc_times.append(seconds)
            else:
                seconds, theirs = timed(run_direct, hyp, ref)
                direct_times.append(seconds)
        for name in METRICS:
            if abs(ours[name] - theirs[name]) > 1e-9 * max(1.0, abs(theirs[name])):
                sys.exit(f"{name} differs: aigc {ours[name]} vs direct {theirs[name]}")
        print(f"round {round_number + 1}: aigc {aigc_times[-1]:.2f} s, direct {direct_times[-1]:.2f} s", flush=True)
    aigc, direct = statistics.median(aigc_times), statistics.median(direct_times)
    return aigc, direct, aigc / direct


def pair_files(pairs: int, folder: Path) -> tuple[Path, Path]:
    return folder / f"hyp-{pairs}.txt", folder / f"ref-{pairs}.txt"


def memory_child(side: str, pairs: int, folder: Path) -> None:
    """In a fresh process: the peak of memory allocated by Python (tracemalloc) while scoring
    `pairs` pairs, counted from after a warm-up on WARM_UP pairs (one full chunk; imports and
    first-use tables are not what we measure). The files exist already, so making them does not
    count. (Peak RSS is too coarse here: importing nltk and scipy sets a high-water mark that
    scoring tens of thousands of sentences stays under.)"""
    import tracemalloc

    small, big = pair_files(WARM_UP, folder), pair_files(pairs, folder)
    run = (lambda h, r: run_aigc(h, r, folder / f"mem-{pairs}.json")) if side == "aigc" else run_direct
    run(*small)
    tracemalloc.start()
    run(*big)
    peak = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"growth_mib": peak / 2**20}))


def memory(pairs: int, folder: Path, sides: tuple[str, ...]) -> dict:
    growth = {}
    for n in (WARM_UP, pairs, 4 * pairs):
        make_pair_files(n, folder)
    for side in sides:
        for n in (pairs, 4 * pairs):
            out = subprocess.run([sys.executable, __file__, "--memory-child", side, "--pairs", str(n), "--folder", str(folder)],
                                 check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            growth[(side, n)] = json.loads(out.stdout.strip().splitlines()[-1])["growth_mib"]
            print(f"memory: {side:6} {n:>7,} pairs: peak allocated {growth[(side, n)]:.1f} MiB", flush=True)
    return growth


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=10_000, help="pairs for the speed run and the smaller memory run (default 10,000)")
    p.add_argument("--iterations", type=int, default=3, help="interleaved timed rounds (default 3)")
    p.add_argument("--max-ratio", type=float, default=1.2, help="exit 1 when median(aigc)/median(direct) is above this")
    p.add_argument("--smoke", action="store_true", help="200 pairs, 1 round, memory of aigc's side only, no ratio check (a quick run that everything works)")
    p.add_argument("--memory-child", choices=["aigc", "direct"], help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--json", help="write the result rows here (for run_all.py)")
    args = p.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.pairs, Path(args.folder))
        return
    if args.smoke:
        args.pairs, args.iterations = 200, 1
    with tempfile.TemporaryDirectory() as tmp:
        aigc, direct, ratio = speed(args.pairs, args.iterations, Path(tmp))
        print(f"speed: {args.pairs:,} pairs, BLEU+chrF+ROUGE-1/2/L: aigc {aigc:.2f} s, direct {direct:.2f} s, ratio {ratio:.3f} (target ≤ {args.max_ratio})")
        growth = memory(args.pairs, Path(tmp), ("aigc",) if args.smoke else ("aigc", "direct"))
    small, large = growth[("aigc", args.pairs)], growth[("aigc", 4 * args.pairs)]
    print(f"memory: aigc peaked at {small:.1f} MiB for {args.pairs:,} pairs and {large:.1f} MiB for {4 * args.pairs:,}")
    harness.write_rows(args.json, [
        harness.row("eval", f"eval BLEU+chrF+ROUGE-1/2/L, {args.pairs:,} pairs", "pairs/s", args.pairs / aigc,
                    "sacrebleu + rouge-score directly", args.pairs / direct, target=0.85),
        harness.row("eval", f"eval peak memory, {args.pairs:,} → {4 * args.pairs:,} pairs", "MiB", large - small,
                    note="growth of aigc's peak Python allocations with 4× the pairs (flat = streamed)"),
    ])
    if not args.smoke and ratio > args.max_ratio:
        sys.exit(f"aigc is {ratio:.2f}x slower than the libraries called directly (target ≤ {args.max_ratio})")


if __name__ == "__main__":
    main()
