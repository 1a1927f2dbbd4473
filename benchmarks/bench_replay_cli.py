"""``tdpsim replay-trace`` end to end through the CLI (issue 16 item 5: >= 500k lines/s on
a >= 50 MB trace, memory flat), beside the in-process replay of the same file.

Writes a trace of real captures at a quarter and at the full ``--mb``: the recorded runs
of the oracle (tests/kvmcheck/data/oracle/RELEASE/traces, Debian's kernel under QEMU TCG,
ftrace's own text with the irq-flags column: kvm_tdp_mmu_spte_changed, kvm_page_fault,
fast_page_fault of dirty logging, ...), one after the other and again until the size is
reached; they replay without anomalies (each run ends with its VM torn down, the next one
allocates new roots).  ``--synthetic`` writes ``bench_trace_replay.py``'s generated trace
instead (trace-cmd's line format, one root, mostly frozen children).  For each size it
times: the CLI in a fresh
interpreter (wall, CPU and peak RSS of that process), the CLI on the file's first 100
lines (start-up: imports, inference, rendering), and ``replay_trace`` in this process.
End-to-end lines/s = lines / CLI wall; per-line = (CLI - start-up) / lines.  With
``--baseline SRC`` the CLI figures are taken for that tree too, interleaved.  Figures
only, no assertions; the CLI outputs of the two trees are compared byte for byte.

    python benchmarks/bench_replay_cli.py [--mb 52] [--baseline /tmp/base/src] [--repeat 3]
                                          [--synthetic]
"""

from __future__ import annotations

import argparse
import lzma
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


ORACLE = Path(__file__).resolve().parents[1] / "tests" / "kvmcheck" / "data" / "oracle"


def real_captures(path: str, target_bytes: int, release: str) -> int:
    """Write the captures of ``release`` in name order, repeated, until the file reaches
    ``target_bytes``; returns the line count."""
    captures = sorted((ORACLE / release / "traces").glob("*.trace.xz"))
    if not captures:
        raise SystemExit(f"no captures under {ORACLE / release}")
    texts = [lzma.decompress(c.read_bytes()) for c in captures]
    lines = size = 0
    with open(path, "wb") as f:
        while size < target_bytes:
            for t in texts:
                f.write(t)
                size += len(t)
                lines += t.count(b"\n")
                if size >= target_bytes:
                    break
    return lines


def _cli(src: str, path: str) -> tuple[float, float, float, bytes]:
    return run_child(src, ["-m", "tdpsim.cli.main", "replay-trace", path])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=52, help="size of the full trace in MB")
    ap.add_argument("--baseline", metavar="SRC", help="src directory of the baseline tree")
    ap.add_argument("--release", default="6.12.117+deb12-amd64",
                    help="whose recorded captures make the trace (a directory of the oracle's)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="CLI runs per tree and size; the least of each figure is shown")
    ap.add_argument("--synthetic", action="store_true",
                    help="bench_trace_replay.py's generated trace instead of real captures")
    args = ap.parse_args(argv)
    trees = [("this", HERE_SRC)] + ([("baseline", args.baseline)] if args.baseline else [])
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as d:
        full = args.mb * 1_000_000
        for size in (full // 4, full):
            path = os.path.join(d, f"trace_{size}.txt")
            lines = (generate(path, size) if args.synthetic
                     else real_captures(path, size, args.release))
            head = os.path.join(d, "head.txt")
            with open(path) as f, open(head, "w") as h:
                h.writelines(islice(f, 100))
            t0, c0 = time.perf_counter(), time.process_time()
            replay_trace(path, ReplayOptions())
            wall_in, cpu_in = time.perf_counter() - t0, time.process_time() - c0
            print(f"{os.path.getsize(path) / 1e6:6.1f} MB {lines:>9,} lines | in process "
                  f"{lines / wall_in:>9,.0f} lines/s wall, {lines / cpu_in:>9,.0f} lines/s CPU")
            outs: dict[str, bytes] = {}
            runs: dict[str, list[tuple[float, ...]]] = {name: [] for name, _ in trees}
            for _ in range(args.repeat):  # interleaved: both trees see the same load
                for name, src in trees:
                    wall, cpu, rss, outs[name] = _cli(src, path)
                    s_wall, s_cpu, _, _ = _cli(src, head)
                    runs[name].append((wall, cpu, rss, s_wall, s_cpu))
            for name, _ in trees:
                # the least disturbed run of each figure
                wall, cpu, rss, s_wall, s_cpu = (min(r[i] for r in runs[name]) for i in range(5))
                per = (cpu - s_cpu) / lines * 1e6
                print(f"  {name:>8} CLI: wall {wall:6.2f} s = {lines / wall:>9,.0f} lines/s "
                      f"(goal >= 500,000) | CPU {cpu:6.2f} s = {lines / cpu:>9,.0f} lines/s | "
                      f"start-up CPU {s_cpu:5.2f} s (wall {s_wall:5.2f}) | "
                      f"{per:5.2f} us CPU per line after start-up | peak RSS {rss:5.0f} MiB")
            if args.baseline:
                same = outs["this"] == outs["baseline"]
                print(f"  CLI output {'byte-identical' if same else 'DIFFERS'} between trees")
            os.unlink(path)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
