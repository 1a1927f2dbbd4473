"""``tdpsim replay-trace`` end to end through the CLI (issue 16 item 5: >= 500k lines/s on
a >= 50 MB trace, memory flat), beside the in-process replay of the same file.

Writes the trace of ``bench_trace_replay.py`` (real ``trace-cmd report`` line format, no
anomalies) at a quarter and at the full ``--mb``, and times for each: the CLI in a fresh
interpreter (wall, CPU and peak RSS of that process), the CLI on the file's first 100
lines (start-up: imports, inference, rendering), and ``replay_trace`` in this process.
End-to-end lines/s = lines / CLI wall; per-line = (CLI - start-up) / lines.  With
``--baseline SRC`` the CLI figures are taken for that tree too, interleaved.  Figures
only, no assertions; the CLI outputs of the two trees are compared byte for byte.

    python benchmarks/bench_replay_cli.py [--mb 52] [--baseline /tmp/base/src]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_main_job import HERE_SRC, run_child  # noqa: E402
from bench_trace_replay import generate  # noqa: E402

from tdpsim.trace.replay import ReplayOptions, replay_trace  # noqa: E402


def _cli(src: str, path: str) -> tuple[float, float, float, bytes]:
    return run_child(src, ["-m", "tdpsim.cli.main", "replay-trace", path])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=52, help="size of the full trace in MB")
    ap.add_argument("--baseline", metavar="SRC", help="src directory of the baseline tree")
    args = ap.parse_args(argv)
    trees = [("this", HERE_SRC)] + ([("baseline", args.baseline)] if args.baseline else [])
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as d:
        full = args.mb * 1_000_000
        for size in (full // 4, full):
            path = os.path.join(d, f"trace_{size}.txt")
            lines = generate(path, size)
            head = os.path.join(d, "head.txt")
            with open(path) as f, open(head, "w") as h:
                h.writelines(islice(f, 100))
            t0, c0 = time.perf_counter(), time.process_time()
            replay_trace(path, ReplayOptions())
            wall_in, cpu_in = time.perf_counter() - t0, time.process_time() - c0
            print(f"{os.path.getsize(path) / 1e6:6.1f} MB {lines:>9,} lines | in process "
                  f"{lines / wall_in:>9,.0f} lines/s wall, {lines / cpu_in:>9,.0f} lines/s CPU")
            outs = {}
            for name, src in trees:
                wall, cpu, rss, outs[name] = _cli(src, path)
                s_wall, s_cpu, _, _ = _cli(src, head)
                per = (cpu - s_cpu) / lines * 1e6
                print(f"  {name:>8} CLI: wall {wall:6.2f} s = {lines / wall:>9,.0f} lines/s "
                      f"(goal >= 500,000) | CPU {cpu:6.2f} s = {lines / cpu:>9,.0f} lines/s | "
                      f"start-up CPU {s_cpu:5.2f} s (wall {s_wall:5.2f}) | "
                      f"{per:5.2f} us CPU per line after start-up | peak RSS {rss:5.0f} MiB")
            if args.baseline:
                same = outs["this"] == outs["baseline"]
                print(f"  CLI output {'byte-identical' if same else 'DIFFERS'} between trees")
            os.unlink(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
