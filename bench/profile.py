"""Summarise the py-spy profiles the bench leaves with ``AKMA_BENCH_PROFILE_DIR``.

    .venv/bin/python -m bench.profile DIR/tp-secured_sqlite-0-consumer.txt [--top 30]

Each child runs under ``py-spy record --format raw --threads``: one line per distinct stack,
``thread (id): name;frame;frame;... count``. For every thread this prints the share of its
samples spent in each function itself ("self") and under it ("inclusive"), which is what the
profiles in docs/benchmarks.md were read from. Frames are named ``function file`` without the
line number, so one function's lines add up.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


@dataclass
class ThreadProfile:
    samples: int = 0
    self_: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)


def frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match['func']} {Path(match['file']).name}"


def parse(lines: list[str]) -> dict[str, ThreadProfile]:
    threads: dict[str, ThreadProfile] = defaultdict(ThreadProfile)
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = "all"
        if frames[0].startswith("thread ("):
            # "thread (7163): envelope-open_0": the name is what tells threads apart.
            thread = frames[0].split(": ", 1)[-1]
            frames = frames[1:]
        names = [frame_name(f) for f in frames] or ["(idle)"]
        profile = threads[thread]
        profile.samples += count
        profile.self_[names[-1]] += count
        for name in set(names):
            profile.inclusive[name] += count
    return dict(threads)


def report(threads: dict[str, ThreadProfile], top: int) -> str:
    out: list[str] = []
    total = sum(p.samples for p in threads.values())
    for thread, profile in sorted(threads.items(), key=lambda kv: -kv[1].samples):
        out.append(f"== thread {thread}: {profile.samples} samples "
                   f"({profile.samples / max(total, 1):.0%} of the process)")
        for title, counter in (("self", profile.self_), ("inclusive", profile.inclusive)):
            out.append(f"-- {title}")
            for name, count in counter.most_common(top):
                out.append(f"{100 * count / profile.samples:5.1f}%  {name}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="summarise a bench py-spy profile")
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    print(report(parse(args.profile.read_text().splitlines()), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
