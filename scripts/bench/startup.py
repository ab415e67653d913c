#!/usr/bin/env python
"""Start-up: `aigc --help` wall time (target < 0.5 s) next to `python -c "import torch"`.

A benchmark, not a test. Both are fresh child processes of this interpreter, run alternately
`--repeats` times after one untimed run each (to warm the file cache); the medians are reported.
`aigc --help` (and every config error) must not import torch, so it should take a fraction of
what importing torch alone takes.

    python scripts/bench/startup.py
    python scripts/bench/startup.py --smoke
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10, help="timed runs of each command")
    p.add_argument("--smoke", action="store_true", help="one run of each (checks the script runs)")
    p.add_argument("--json", help="write the result rows here")
    args = p.parse_args(argv)
    if args.smoke:
        args.repeats = 1
    return args


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    commands = {"aigc": [sys.executable, "-m", "aigc_cli", "--help"], "torch": [sys.executable, "-c", "import torch"]}
    if not args.smoke:
        for command in commands.values():
            wall_time(command)
    got = harness.interleaved({name: (lambda c=command: wall_time(c)) for name, command in commands.items()}, args.repeats, "start-up")
    aigc, torch_import = harness.median(got["aigc"]), harness.median(got["torch"])
    harness.write_rows(args.json, [harness.row(
        "startup", "`aigc --help` wall time (python -m aigc_cli --help)", "s", aigc, target=0.5, absolute=True,
        note=f"`python -c \"import torch\"` takes {torch_import:.2f} s here: --help is {torch_import / aigc:.1f}× faster than importing torch")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
