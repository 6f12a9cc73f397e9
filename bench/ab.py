"""A/B of two versions of the code on one machine: ``make bench`` parts run alternately.

    .venv/bin/python -m bench.ab --before <git ref> [--after <git ref>] [--rounds 3]

Each round runs ``bench.run`` once (one alternating round of its own) in a checkout of each
version, the version that starts alternating between rounds, so that drifts in background load
hit both alike. The ratios compared are each run's own side-by-side ratios (secured against
plain in the same run); the report gives every round and the median. Without ``--after`` the
working tree is the second version.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import REPO

PARTS = "pieces,throughput,drain,latency"
VARIANTS = "plain,secured_sqlite,secured_redis"
LEVELS = ("1", "16", "64")


def _checkout(ref: str, where: Path) -> Path:
    if not where.exists():
        subprocess.run(  # noqa: S603 - fixed git command, ref given by the operator
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), ref],  # noqa: S607
            check=True, capture_output=True)
    return where


def _run(tree: Path, out: Path, work: Path) -> dict[str, Any]:
    subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bench.run", "--rounds", "1", "--parts", PARTS,
         "--tp-variants", VARIANTS, "--out", str(out), "--work", str(work)],
        cwd=tree, check=True)
    results: dict[str, Any] = json.loads((out / "latest.json").read_text())
    return results


def figures(results: dict[str, Any]) -> dict[str, float]:
    """The compared figures of one ``bench.run`` result."""
    metrics = results.get("metrics", {})
    out = {key: float(metrics[key]) for key in (
        "throughput_ratio", "throughput_ratio_redis", "drain_ratio", "rpc_cpu_ratio",
        "rpc_cpu_floor_ratio") if key in metrics}
    levels = results.get("latency", {}).get("levels", {})
    for level in LEVELS:
        ratio = levels.get(level, {}).get("p99_ratio_vs_plain_akma")
        if ratio is not None:
            out[f"p99_vs_plain_akma_{level}"] = float(ratio)
    if "rpc_cpu_ratio" in out and "rpc_cpu_floor_ratio" in out:
        out["cpu_over_floor_64"] = out["rpc_cpu_ratio"] / out["rpc_cpu_floor_ratio"]
    return out


def report(runs: dict[str, list[dict[str, float]]], labels: dict[str, str]) -> str:
    keys = sorted({k for per in runs.values() for run in per for k in run})
    lines = ["| figure | " + " | ".join(f"{name} median" for name in runs) + " | rounds |",
             "|---|" + "---:|" * len(runs) + "---|"]
    for key in keys:
        medians = []
        rounds = []
        for name, per in runs.items():
            values = [run[key] for run in per if key in run]
            medians.append(f"{statistics.median(values):.2f}" if values else "-")
            rounds.append(f"{name}: " + ", ".join(f"{v:.2f}" for v in values))
        lines.append(f"| {key} | " + " | ".join(medians) + " | " + "; ".join(rounds) + " |")
    legend = "; ".join(f"{name} = {ref}" for name, ref in labels.items())
    return "\n".join([f"Versions: {legend}.", "", *lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", required=True, help="git ref of the first version")
    parser.add_argument("--after", default=None, help="git ref (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    base = REPO / "var" / "ab"
    trees = {"before": _checkout(args.before, base / "before")}
    trees["after"] = _checkout(args.after, base / "after") if args.after else REPO
    labels = {"before": args.before, "after": args.after or "working tree"}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for round_no in range(args.rounds):
        order = list(trees) if round_no % 2 == 0 else list(reversed(trees))
        for name in order:
            out = base / "out" / f"{name}-{round_no}"
            result = _run(trees[name], out, base / "work" / name)
            runs[name].append(figures(result))
            print(f"round {round_no + 1} {name}: {runs[name][-1]}", flush=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"# A/B run {stamp}\n\n" + report(runs, labels)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ab-latest.md").write_text(text)
    (args.out / "ab-latest.json").write_text(json.dumps(
        {"measured_at": stamp, "versions": labels, "runs": runs}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
