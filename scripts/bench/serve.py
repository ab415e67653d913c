#!/usr/bin/env python
"""Serving throughput: `aigc serve` under 16 concurrent clients vs one client at a time.

A benchmark, not a test. A character-level GPT-2 (nanoGPT's shakespeare-char CPU size) is
trained briefly with `aigc train` on tinyshakespeare (or Python's docs when ../shared is absent),
so it writes text rather than an early end-of-text. One `aigc serve` process serves it on
127.0.0.1; the official `openai` client sends /v1/completions requests (lines of the validation
text as prompts, `--new-tokens` new tokens at most, temperature 0.8, a seed per request, not
streamed). Both sides talk to the same server in the same run:

  one at a time  one client, `--requests` requests in turn (each waits for the previous one);
  concurrent     `--clients` clients (threads), each sending `--requests` requests in turn, so
                 up to that many are in flight and the server decodes them in one batch.

Throughput is completion tokens (as `usage` reports them) per second of wall time over all
requests of a side; latency is the time from sending a request to its whole response, p50 and
p95 over every request of the side. Interleaved rounds, medians. Starting the server (loading
the model) is outside the timed region; a warm-up round goes first.

    python scripts/bench/serve.py
    python scripts/bench/serve.py --clients 16 --requests 8 --new-tokens 64 --json out.json
    python scripts/bench/serve.py --smoke
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from generate import read_prompts, train_model  # noqa: E402  the generation benchmark's model and prompts


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=16, help="concurrent clients in the concurrent measurement")
    p.add_argument("--requests", type=int, default=4, help="requests each client sends in turn")
    p.add_argument("--new-tokens", type=int, default=64, help="max_tokens of each request")
    p.add_argument("--train-steps", type=int, default=100, help="aigc train steps before serving (enough to stop predicting end-of-text)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    p.add_argument("--device", default="auto", help="aigc serve --device")
    p.add_argument("--smoke", action="store_true", help="tiny model, 2 tokens, 1 request per client (checks the script runs)")
    p.add_argument("--json", help="write the result rows here")
    args = p.parse_args(argv)
    if args.smoke:
        args.new_tokens, args.requests, args.train_steps, args.repeats = 2, 1, 2, 1
    return args


class ServerProcess:
    """`python -m aigc_cli serve RUN --port 0` until stopped; `url` is its /v1 base URL."""

    def __init__(self, run_dir: str, device: str):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(harness.REPO), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-m", "aigc_cli", "serve", run_dir, "--port", "0", "--device", device],
                                     cwd=harness.REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.url, ready, seen = None, threading.Event(), []

        def read():
            for line in self.proc.stderr:
                seen.append(line)
                found = re.search(r" at (http://\S+/v1) ", line)
                if found and not ready.is_set():
                    self.url = found.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(300) or self.url is None:
            self.stop()
            raise RuntimeError("aigc serve did not start: " + "".join(seen)[-2000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


def main(argv=None) -> int:
    args = parse_args(argv)
    import openai

    with tempfile.TemporaryDirectory(prefix="aigc-bench-serve-") as tmp:
        cfg = train_model(args, Path(tmp))
        total = args.clients * args.requests
        prompts = read_prompts(cfg, total, max(1, min(60, cfg.model.block_size - args.new_tokens)))
        server = ServerProcess(cfg.train.out_dir, args.device)
        try:
            client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=600)
            model = client.models.list().data[0].id
            latencies: dict[str, list[float]] = {"one at a time": [], "concurrent": []}

            def ask(i: int, side: str) -> int:
                start = time.perf_counter()
                done = client.completions.create(model=model, prompt=prompts[i], max_tokens=args.new_tokens, temperature=0.8, seed=i)
                latencies[side].append(time.perf_counter() - start)
                return done.usage.completion_tokens

            def one_at_a_time() -> float:
                start = time.perf_counter()
                tokens = sum(ask(i, "one at a time") for i in range(args.requests))
                return tokens / (time.perf_counter() - start)

            def concurrent() -> float:
                def client_loop(c: int) -> int:
                    return sum(ask(c * args.requests + r, "concurrent") for r in range(args.requests))

                start = time.perf_counter()
                with ThreadPoolExecutor(args.clients) as pool:
                    tokens = sum(pool.map(client_loop, range(args.clients)))
                return tokens / (time.perf_counter() - start)

            print(f"serve: gpt2 {cfg.model.n_layer}×{cfg.model.n_embd} on {args.device}, {args.clients} clients × {args.requests} "
                  f"requests, ≤{args.new_tokens} new tokens, temperature 0.8", flush=True)
            one_at_a_time(), concurrent()  # warm-up
            latencies = {side: [] for side in latencies}
            got = harness.interleaved({"one at a time": one_at_a_time, "concurrent": concurrent}, args.repeats, "serve")
        finally:
            server.stop()
    med = {name: harness.median(v) for name, v in got.items()}
    p50 = {side: statistics.median(v) for side, v in latencies.items()}
    p95 = {side: _percentile(v, 95) for side, v in latencies.items()}
    note = (f"p50 / p95 latency per request: one at a time {p50['one at a time']:.3f} / {p95['one at a time']:.3f} s, "
            f"{args.clients} concurrent {p50['concurrent']:.3f} / {p95['concurrent']:.3f} s")
    rows = [
        harness.row("serve", f"completion tokens/s, {args.clients} concurrent clients", "tokens/s", med["concurrent"],
                    "one client at a time, same server", med["one at a time"], 4.0, note=note),
        harness.row("serve", f"latency p50, {args.clients} concurrent clients", "s", p50["concurrent"]),
        harness.row("serve", f"latency p95, {args.clients} concurrent clients", "s", p95["concurrent"]),
        harness.row("serve", "latency p50, one client at a time", "s", p50["one at a time"]),
    ]
    harness.write_rows(args.json, rows)
    return 0


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))]


if __name__ == "__main__":
    sys.exit(main())
