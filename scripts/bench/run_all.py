#!/usr/bin/env python
"""Run every benchmark in scripts/bench/ and write the table of docs/benchmarks.md.

Each benchmark compares aigc with the tool a user would otherwise pick, in the same run on the
same machine (see each script's docstring for what exactly is timed), and writes result rows
(harness.py describes them). This script runs them one after another, each in its own process,
records the machine, the date and how busy the machine was (the load average and any other
process using a core: benchmarks on a shared machine are noisy, and the table says so), and
writes one Markdown table with the ratio of each measurement and whether it meets its target.

    python scripts/bench/run_all.py                       # everything, → docs/benchmarks.md
    python scripts/bench/run_all.py --only train generate --out /tmp/b.md
    python scripts/bench/run_all.py --smoke --out /tmp/smoke.md   # one iteration of each, in this process

A benchmark script that is absent is listed as missing; one that fails is listed as failed (with
the end of its output), and the others still run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402

BENCHMARKS = ["startup", "prep", "train", "generate", "ddpm", "eval", "serve", "qlora_memory", "chat", "text_to_image", "classify"]  # eval.py: sacrebleu + rouge-score vs aigc eval


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    p.add_argument("--smoke", action="store_true", help="one iteration of each at tiny sizes, in this process (what the test runs)")
    p.add_argument("--out", help="Markdown file to write (default docs/benchmarks.md; with --smoke, nothing unless given)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds one benchmark may take")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every benchmark (on a machine shared with other work, 1 "
                                               "keeps the peers' and aigc's spinning thread pools from fighting the other load)")
    return p.parse_args(argv)


def run_benchmark(name: str, smoke: bool, timeout: int, threads: int | None = None) -> tuple[list[dict], str | None]:
    """(rows, None) or ([], why it has no rows)."""
    script = HERE / f"{name}.py"
    if not script.is_file():
        return [], "missing"
    with tempfile.TemporaryDirectory(prefix=f"aigc-bench-{name}-") as tmp:
        out = Path(tmp) / "rows.json"
        if smoke:
            try:
                _load(name, script).main(["--smoke", "--json", str(out)])
            except Exception:  # noqa: BLE001 — report the failure and go on with the others
                return [], "failed: " + traceback.format_exc(limit=-3).strip().replace("\n", " ⏎ ")[-600:]
        else:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(harness.REPO), os.environ.get("PYTHONPATH")])),
                   "HF_HUB_OFFLINE": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
            try:
                done = subprocess.run([sys.executable, str(script), "--json", str(out)], env=env, cwd=harness.REPO,
                                      timeout=timeout, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            except subprocess.TimeoutExpired:
                return [], f"failed: no result within {timeout} s"
            print(done.stdout, flush=True)
            if not out.is_file():
                return [], f"failed (exit {done.returncode}): " + done.stdout.strip()[-600:].replace("\n", " ⏎ ")
        if not out.is_file():
            return [], "failed: wrote no result rows"
        return json.loads(out.read_text(encoding="utf-8")), None


def _load(name: str, script: Path):
    spec = importlib.util.spec_from_file_location(f"aigc_bench_{name}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (and pickling) look a class's module up there
    spec.loader.exec_module(module)
    return module


def markdown(rows: list[dict], problems: dict[str, str], facts: dict, smoke: bool) -> str:
    lines = ["# Benchmarks", "",
             "Written by `python scripts/bench/run_all.py` (scripts in [`scripts/bench/`](../scripts/bench/); each one's "
             "docstring says exactly what is timed). Every row compares aigc with the tool a user would otherwise pick, "
             "measured in the same run on the same machine; ratio = aigc / peer (higher is better).", ""]
    if smoke:
        lines += ["**Smoke run (`--smoke`): one iteration at tiny sizes — these numbers mean nothing.**", ""]
    lines += [f"- date: {facts['date']}", f"- machine: {facts['machine']}",
              "- precision: fp32 unless a row says bf16 autocast (generation and DDPM sampling always run in fp32); "
              "eval, prep and startup do no model arithmetic",
              f"- load average (1 min) before / after: {facts['load_before']:.2f} / {facts['load_after']:.2f} on {facts['cores']} cores",
              f"- other busy processes at the start: {facts['busy'] or 'none'}", f"- threads per benchmark (OMP_NUM_THREADS): {facts['threads']}",
              f"- wall time of the whole run: {facts['wall']:.0f} s", "",
              "| benchmark | measurement | aigc | peer | ratio | target | result |", "|---|---|---:|---|---:|---:|---|"]
    for r in rows:
        verdict = {True: "met", False: "**missed**", None: "info"}[harness.met(r)]
        peer = f"{r['peer']}: {_number(r['peer_value'])} {r['unit']}" if r["peer"] else ""
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else ""
        target = "" if r["target"] is None else (f"≤ {_number(r['target'])} {r['unit']}" if r.get("absolute") else f"≥ {r['target']:g}×")
        lines.append(f"| {r['benchmark']} | {r['measurement']} | {_number(r['aigc'])} {r['unit']} | {peer} | {ratio} | {target} | {verdict} |")
    for name, why in problems.items():
        lines.append(f"| {name} | — | | | | | {why.split(':')[0]} |")
    notes = [f"- **{r['benchmark']}** ({r['measurement']}): {r['note']}" for r in rows if r.get("note")]
    notes += [f"- **{name}**: {why}" for name, why in problems.items()]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"


def main(argv=None) -> int:
    args = parse_args(argv)
    names = args.only or BENCHMARKS
    start = time.perf_counter()
    machine = harness.machine()
    facts = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "cores": machine["cores"],
             "machine": ", ".join(f"{k} {v}" for k, v in machine.items()), "load_before": os.getloadavg()[0],
             "busy": "; ".join(harness.busy_processes()) if not args.smoke else "not checked (smoke run)",
             "threads": args.threads or os.environ.get("OMP_NUM_THREADS") or "torch's default"}
    rows, problems = [], {}
    for name in names:
        print(f"== {name}", flush=True)
        got, why = run_benchmark(name, args.smoke, args.timeout, args.threads)
        rows += got
        if why:
            problems[name] = why
            print(f"{name}: {why}", flush=True)
    facts["load_after"], facts["wall"] = os.getloadavg()[0], time.perf_counter() - start
    text = markdown(rows, problems, facts, args.smoke)
    out = args.out or (None if args.smoke else str(harness.REPO / "docs" / "benchmarks.md"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(out).with_name(f".{Path(out).name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
        print(f"wrote {out}")
    else:
        print(text)
    return 1 if any(why.startswith("failed") for why in problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
