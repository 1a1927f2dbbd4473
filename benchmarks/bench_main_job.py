"""The main job, README's first command ``tdpsim compare td-boot``: wall time and CPU time
end to end through the CLI, and the CPU time of one preset's ``simulate`` in process.

Each figure is taken for this tree and, with ``--baseline SRC`` (another checkout's
``src`` directory, e.g. ``git -C /work/main archive <commit> src | tar -x -C /tmp/base``),
for that tree in the same run, interleaved, so the ratio holds on a loaded machine.  The
CPU times (user+sys of the process tree) are steadier than wall time when the cores are
shared; the goal (issue 16 item 1) is <= 10 s wall on 2 cores.  Figures only, no
assertions; the outputs of the two trees are compared byte for byte.

    python benchmarks/bench_main_job.py [--baseline /tmp/base/src] [--repeat 1] [--preset hp3-seed]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE_SRC = str(Path(__file__).resolve().parent.parent / "src")

CHILD = r"""
import sys, time
from tdpsim.sim import builtin_workload, simulate
wl = builtin_workload("td-boot")
t0 = time.process_time()
simulate(wl, sys.argv[1])
print(time.process_time() - t0)
"""


def run_child(src: str, argv: list[str]) -> tuple[float, float, float, bytes]:
    """(wall s, CPU s, peak RSS MiB, stdout) of ``python argv`` importing ``src``; the CPU
    time and RSS are this child's own (``wait4``), its worker processes included."""
    env = dict(os.environ, PYTHONPATH=src, COLUMNS="200")
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    out = p.stdout.read()  # type: ignore[union-attr]
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode not in (0, 1):  # 1: replay-trace found anomalies
        raise SystemExit(f"{argv}: exit {p.returncode}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", metavar="SRC", help="src directory of the baseline tree")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--preset", default="hp3-seed", help="preset timed in process")
    args = ap.parse_args(argv)
    trees = [("this", HERE_SRC)] + ([("baseline", args.baseline)] if args.baseline else [])
    job: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in trees}
    one: dict[str, list[float]] = {name: [] for name, _ in trees}
    outs: dict[str, bytes] = {}
    for _ in range(args.repeat):
        for name, src in trees:
            wall, cpu, _, out = run_child(src, ["-m", "tdpsim.cli.main", "compare", "td-boot"])
            job[name].append((wall, cpu))
            outs[name] = out
            one[name].append(float(run_child(src, ["-c", CHILD, args.preset])[3]))
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    for name, _ in trees:
        wall = min(w for w, _ in job[name])
        cpu = min(c for _, c in job[name])
        print(f"{name:>8}: tdpsim compare td-boot  wall {wall:6.1f} s  CPU {cpu:6.1f} s "
              f"(goal <= 10 s wall) | simulate td-boot {args.preset}: CPU {min(one[name]):5.2f} s")
    if args.baseline:
        b, t = job["baseline"], job["this"]
        print(f"speed-up: compare wall x{min(w for w, _ in b) / min(w for w, _ in t):.2f}, "
              f"CPU x{min(c for _, c in b) / min(c for _, c in t):.2f}; one preset CPU "
              f"x{min(one['baseline']) / min(one['this']):.2f}; output "
              + ("byte-identical" if outs["baseline"] == outs["this"] else "DIFFERS"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
