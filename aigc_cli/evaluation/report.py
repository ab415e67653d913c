"""The `aigc eval` report — one JSON file and a Markdown table beside it — and the quality gates.

Gates: `fail_under` / `fail_above` bound a metric's value; `max_drop` bounds how much worse it
may get than in a baseline report. Every failing metric is listed, and the verb exits 1.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from aigc_cli.runs.atomic_files import write_json_atomic, write_text_atomic
from aigc_cli.errors import AigcError

LOWER_IS_BETTER = frozenset({"ter", "loss", "perplexity", "bits_per_token", "prediction_perplexity", "prediction_loss", "fid", "kid", "self_bleu", "repetition", "mse", "mae"})
NO_DIRECTION = frozenset({"length_mean", "length_median", "length_min", "length_max", "kid_std", "fid_real_floor"})
_LM = ("loss", "perplexity", "bits_per_token")
# What each requested metric puts into the report (the rest put in their own name).
OUTPUTS = {"loss": _LM, "perplexity": _LM, "prediction_perplexity": ("prediction_perplexity", "prediction_loss"),
           "length": ("length_mean", "length_median", "length_min", "length_max"),
           "fid": ("fid", "fid_real_floor"), "kid": ("kid", "kid_std"), "coverage": ("confident_share", "min_class_share"),
           "adherence": ("adherence", "adherence_inverted", "adherence_weight")}


def output_names(requested: list[str]) -> list[str]:
    names: list[str] = []
    for metric in requested:
        names += [n for n in OUTPUTS.get(metric, (metric,)) if n not in names]
    return names


def parse_bounds(values: list[str] | None, option: str) -> dict[str, float]:
    """`bleu=25`, `bleu=25,rougeL=0.3` or `"bleu=25 rougeL=0.3"`, possibly repeated → {name: bound}."""
    bounds: dict[str, float] = {}
    for value in values or []:
        for pair in re.split(r"[,\s]+", value.strip()):
            name, sep, number = pair.partition("=")
            try:
                if not sep or not name:
                    raise ValueError
                bounds[name] = float(number)
            except ValueError:
                raise AigcError(f"bad {option} value {pair!r}", f"write NAME=NUMBER, e.g. {option} bleu=25 (several: bleu=25,rougeL=0.3)") from None
    return bounds


@dataclass
class Gates:
    fail_under: dict[str, float] = field(default_factory=dict)
    fail_above: dict[str, float] = field(default_factory=dict)
    max_drop: dict[str, float] = field(default_factory=dict)
    baseline_path: str | None = None
    baseline: dict[str, float] = field(default_factory=dict)

    def describe(self) -> dict:
        return {"fail_under": self.fail_under, "fail_above": self.fail_above, "max_drop": self.max_drop, "baseline": self.baseline_path}


def load_gates(fail_under: dict, fail_above: dict, max_drop: dict, baseline: str | None, produced: list[str]) -> Gates:
    """Check every gate against the metrics this evaluation reports, before any work is done."""
    for option, bounds in (("--fail-under", fail_under), ("--fail-above", fail_above), ("--max-drop", max_drop)):
        for name in bounds:
            if name not in produced:
                close = difflib.get_close_matches(name, produced, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise AigcError(f"unknown metric '{name}' in {option}", f"{hint}this evaluation reports: {', '.join(produced)}")
            if option == "--fail-under" and name in LOWER_IS_BETTER:
                raise AigcError(f"--fail-under {name}: lower {name} is better, so this gate would fail good results", f"use --fail-above {name}=VALUE")
            if option == "--fail-above" and name not in LOWER_IS_BETTER | NO_DIRECTION:
                raise AigcError(f"--fail-above {name}: higher {name} is better, so this gate would fail good results", f"use --fail-under {name}=VALUE")
            if option == "--max-drop" and (name in NO_DIRECTION or bounds[name] < 0):
                raise AigcError(f"--max-drop {name}={bounds[name]}: needs a metric with a better direction and a bound ≥ 0",
                                "bound length statistics with --fail-under / --fail-above")
    if max_drop and not baseline:
        raise AigcError("--max-drop needs --baseline", "pass the report.json of the run to compare with: --baseline previous.json")
    gates = Gates(dict(fail_under), dict(fail_above), dict(max_drop), baseline)
    if baseline:
        gates.baseline = _read_baseline(baseline)
        missing = [name for name in max_drop if name not in gates.baseline]
        if missing:
            raise AigcError(f"baseline {baseline} has no {', '.join(missing)}", "compare with a report that measured the same metrics")
    return gates


def _read_baseline(path: str) -> dict[str, float]:
    try:
        metrics = json.loads(Path(path).read_text(encoding="utf-8"))["metrics"]
    except FileNotFoundError:
        raise AigcError(f"baseline not found: {path}", "pass the report.json of an earlier `aigc eval`") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise AigcError(f"{path} is not an `aigc eval` report (JSON with a 'metrics' object)", "pass the report.json of an earlier `aigc eval`") from None
    if not isinstance(metrics, dict):
        raise AigcError(f"{path}: 'metrics' is not an object", "pass the report.json of an earlier `aigc eval`")
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def gate_failures(gates: Gates, metrics: dict[str, float]) -> list[str]:
    """One line per failing metric: its value and the bound it broke."""
    failures = []
    for name, bound in gates.fail_under.items():
        if not metrics[name] >= bound:  # (NaN fails too)
            failures.append(f"{name} {_fmt(metrics[name])} < {_fmt(bound)} (fail-under)")
    for name, bound in gates.fail_above.items():
        if not metrics[name] <= bound:
            failures.append(f"{name} {_fmt(metrics[name])} > {_fmt(bound)} (fail-above)")
    for name, allowed in gates.max_drop.items():
        before, now = gates.baseline[name], metrics[name]
        worse = now - before if name in LOWER_IS_BETTER else before - now
        if not worse <= allowed:
            verb = "rose" if name in LOWER_IS_BETTER else "dropped"
            failures.append(f"{name} {verb} from {_fmt(before)} to {_fmt(now)}, by {_fmt(worse)} > {_fmt(allowed)} (max-drop vs {gates.baseline_path})")
    return failures


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    size = abs(value)
    return f"{value:.1f}" if size >= 1000 else f"{value:.2f}" if size >= 10 else f"{value:.4f}"


def build_report(metrics: dict[str, float], details: dict, *, config: dict, versions: dict, inputs: list,
                 signatures: dict, gates: Gates, failures: list[str]) -> dict:
    report = {
        **details,
        "metrics": metrics,
        "signatures": signatures,
        "versions": versions,
        "inputs": inputs,
        "config": config,
        "gates": {**gates.describe(), "passed": not failures, "failures": failures},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if gates.baseline:
        report["baseline_metrics"] = {k: v for k, v in gates.baseline.items() if k in metrics}
    return report


def markdown_table(report: dict) -> str:
    """The report as Markdown: metrics (with gates and baseline when given), per-class scores, signatures."""
    gates, baseline = report["gates"], report.get("baseline_metrics", {})
    bounds = {}
    for name, bound in gates["fail_under"].items():
        bounds.setdefault(name, []).append(f"≥ {_fmt(bound)}")
    for name, bound in gates["fail_above"].items():
        bounds.setdefault(name, []).append(f"≤ {_fmt(bound)}")
    for name, allowed in gates["max_drop"].items():
        bounds.setdefault(name, []).append(f"worse by ≤ {_fmt(allowed)}")
    failed = {line.split(" ", 1)[0] for line in gates["failures"]}
    header, rule = ["metric", "value"], ["---", "---:"]
    if bounds:
        header, rule = header + ["gate"], rule + ["---"]
    if baseline:
        header, rule = header + ["baseline"], rule + ["---:"]
    lines = [f"scored: {report['scored']}", ""] if report.get("scored") else []
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    for name, value in report["metrics"].items():
        row = [name, _fmt(value)]
        if bounds:
            row.append(", ".join(bounds.get(name, [])) + (" **FAILED**" if name in failed else " ok" if name in bounds else ""))
        if baseline:
            row.append(_fmt(baseline[name]) if name in baseline else "")
        lines.append("| " + " | ".join(row) + " |")
    if "items" in report:
        lines += ["", f"{report['items']:,} items"]
    if "kid" in report["metrics"]:  # KID is an unscaled squared MMD: tiny numbers, often quoted × 1000
        lines += ["", f"kid is the unscaled squared MMD of the features (×10³ it is {_fmt(report['metrics']['kid'] * 1000)}, the scale papers often quote)"]
    if report.get("per_class"):
        lines += ["", "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {label} | {_fmt(s['precision'])} | {_fmt(s['recall'])} | {_fmt(s['f1'])} | {s['support']:,} |"
                  for label, s in report["per_class"].items()]
    if report.get("classification_report"):  # a classifier's per-class table, in scikit-learn's layout
        lines += ["", "```", report["classification_report"].rstrip("\n"), "```"]
    if report["signatures"]:
        lines += [""] + [f"- {name}: `{signature}`" for name, signature in report["signatures"].items()]
    return "\n".join(lines) + "\n"


def write_report(path: str | Path, report: dict) -> tuple[Path, Path, str]:
    """report.json and report.md beside it (both atomic); returns both paths and the table."""
    path = Path(path)
    table = markdown_table(report)
    write_json_atomic(path, report)
    markdown = path.with_suffix(".md")
    write_text_atomic(markdown, table)
    return path, markdown, table
