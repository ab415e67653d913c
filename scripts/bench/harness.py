"""What the benchmarks here share: result rows, interleaved medians, machine facts.

Every benchmark script takes `--smoke` (one iteration at tiny sizes: it checks the script runs,
its numbers mean nothing) and `--json PATH` (write its result rows there). `run_all.py` turns the
rows of all of them into the table of docs/benchmarks.md. A row compares aigc with the tool a user
would otherwise pick, measured in the same run on the same machine:

    {"benchmark": "train", "measurement": "...", "unit": "tokens/s", "aigc": 1.0, "peer": "plain PyTorch loop",
     "peer_value": 1.0, "ratio": 1.0, "target": 1.0, "note": "..."}

`ratio` is aigc/peer for rates (higher is better) and `target` the least ratio the project aims
for (None: reported for information). A row with `"absolute": true` instead states a limit on the
aigc value itself (`aigc <= target`, e.g. start-up seconds).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def text_source() -> str:
    """tinyshakespeare when the shared data is there, else the corpus that ships with Python."""
    return str(SHAKESPEARE) if SHAKESPEARE.is_file() else "builtin:python-docs"


def row(benchmark: str, measurement: str, unit: str, aigc: float, peer: str | None = None, peer_value: float | None = None,
        target: float | None = None, note: str = "", absolute: bool = False) -> dict:
    ratio = aigc / peer_value if peer_value else None
    return {"benchmark": benchmark, "measurement": measurement, "unit": unit, "aigc": aigc, "peer": peer,
            "peer_value": peer_value, "ratio": ratio, "target": target, "absolute": absolute, "note": note}


def met(r: dict) -> bool | None:
    if r.get("target") is None:
        return None
    if r.get("absolute"):
        return r["aigc"] <= r["target"]
    return r["ratio"] is not None and r["ratio"] >= r["target"]


def write_rows(path: str | None, rows: list[dict]) -> None:
    for r in rows:
        verdict = {True: "met", False: "MISSED", None: "info"}[met(r)]
        ratio = f"  ratio {r['ratio']:.3f}" if r["ratio"] is not None else ""
        peer = f"  vs {r['peer']} {r['peer_value']:,.4g}" if r["peer"] else ""
        print(f"[{r['benchmark']}] {r['measurement']}: aigc {r['aigc']:,.4g} {r['unit']}{peer}{ratio}  ({verdict})", flush=True)
    if path:
        Path(path).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


def interleaved(sides: dict[str, Callable[[], float]], repeats: int, label: str = "") -> dict[str, list[float]]:
    """Run every side `repeats` times, rotating which goes first each round so slow drift of the
    machine's load hits all sides alike; returns each side's measurements (take the median)."""
    names = list(sides)
    got: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            got[name].append(sides[name]())
        shown = "  ".join(f"{n} {got[n][-1]:,.4g}" for n in names)
        print(f"  {label} round {r + 1}/{repeats}: {shown}  (load {os.getloadavg()[0]:.2f})", flush=True)
    return got


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts = {"cpu": cpu, "cpu_features": cpu_bf16_features(), "cores": os.cpu_count(), "python": platform.python_version(),
             "torch": torch.__version__, "os": f"{platform.system()} {platform.release()}"}
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


def cpu_bf16_features() -> str:
    """What decides bf16 on this CPU: "AVX512-BF16, AMX", "AVX512-BF16" or "no native bf16 (AVX2)"."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        flags = []
    found = [name for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX")) if flag in flags]
    if found:
        return ", ".join(found)
    return "no native bf16" + (" (AVX2)" if "avx2" in flags else "")


def matmul_flops(device: str, dtype=None, size: int = 1024, seconds: float = 1.0) -> float:
    """Measured dense matmul throughput (FLOP/s) of this device: the ceiling for model FLOP utilisation."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        best = max(best, 4 * 2 * size ** 3 / elapsed)
        if time.perf_counter() > deadline:
            return best


def busy_processes(threshold: float = 20.0, own_pids: set[int] | None = None) -> list[str]:
    """Other processes using at least `threshold` % of a core right now: the contention to report."""
    import psutil

    own = own_pids or set()
    me = psutil.Process()
    own |= {me.pid, *(p.pid for p in me.children(recursive=True))}
    procs = [p for p in psutil.process_iter(["pid", "name", "cmdline"]) if p.pid not in own]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    busy = []
    for p in procs:
        try:
            share = p.cpu_percent(None)
        except psutil.Error:
            continue
        if share >= threshold:
            command = " ".join(p.info["cmdline"] or [p.info["name"] or "?"])[:80]
            busy.append(f"{share:.0f}% {command}")
    return busy


def quiet_libraries() -> None:
    """Offline, and no progress bars or library notes in the benchmark's output."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
