"""The main job, README's first command ``tdpsim compare td-boot``: wall time and CPU time
end to end through the CLI, and the CPU time of one preset's ``simulate`` in process.

Each figure is taken for this tree and, with ``--baseline SRC`` (another checkout's
``src`` directory, e.g. ``git -C /work/main archive <commit> src | tar -x -C /tmp/base``),
for that tree in the same run, interleaved, so the ratio holds on a loaded machine.  The
CPU times (user+sys of the process tree) are steadier than wall time when the cores are
shared; the goal (issue 16 item 1) is <= 10 s wall on 2 cores.  ``--accel`` adds this
tree under the compiled model (``TDPSIM_ACCEL=1``, see ``tdpsim.accel``; needs its build).
Figures only, no assertions; every output is compared byte for byte with this tree's.

    python benchmarks/bench_main_job.py [--baseline /tmp/base/src] [--accel] [--repeat 1] [--preset hp3-seed]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE_SRC = str(Path(__file__).resolve().parent.parent / "src")
ACCEL_ENV = "TDPSIM_ACCEL"

CHILD = r"""
import sys, time
from tdpsim.sim import builtin_workload, simulate
wl = builtin_workload("td-boot")
t0 = time.process_time()
simulate(wl, sys.argv[1])
print(time.process_time() - t0)
"""


def run_child(src: str, argv: list[str], accel: bool = False
              ) -> tuple[float, float, float, bytes]:
    """(wall s, CPU s, peak RSS MiB, stdout) of ``python argv`` importing ``src`` (with the
    compiled model if ``accel``); the CPU time and RSS are this child's own (``wait4``),
    its worker processes included."""
    env = {k: v for k, v in os.environ.items() if k != ACCEL_ENV}
    env.update(PYTHONPATH=src, COLUMNS="200", **({ACCEL_ENV: "1"} if accel else {}))
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
    ap.add_argument("--accel", action="store_true", help="also this tree, compiled")
    args = ap.parse_args(argv)
    trees = [("this", HERE_SRC, False)] + [("compiled", HERE_SRC, True)] * args.accel \
        + ([("baseline", args.baseline, False)] if args.baseline else [])
    job: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in trees}
    one: dict[str, list[float]] = {name: [] for name, _, _ in trees}
    outs: dict[str, bytes] = {}
    for _ in range(args.repeat):
        for name, src, accel in trees:
            wall, cpu, _, out = run_child(src, ["-m", "tdpsim.cli.main", "compare", "td-boot"],
                                          accel)
            job[name].append((wall, cpu))
            outs[name] = out
            one[name].append(float(run_child(src, ["-c", CHILD, args.preset], accel)[3]))
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    for name, _, _ in trees:
        wall = min(w for w, _ in job[name])
        cpu = min(c for _, c in job[name])
        print(f"{name:>8}: tdpsim compare td-boot  wall {wall:6.1f} s  CPU {cpu:6.1f} s "
              f"(goal <= 10 s wall) | simulate td-boot {args.preset}: CPU {min(one[name]):5.2f} s")
    ref = "baseline" if args.baseline else "this"
    for name, _, _ in trees:
        if name == ref:
            continue
        print(f"speed-up of {name} over {ref}: compare wall "
              f"x{min(w for w, _ in job[ref]) / min(w for w, _ in job[name]):.2f}, "
              f"CPU x{min(c for _, c in job[ref]) / min(c for _, c in job[name]):.2f}; "
              f"one preset CPU x{min(one[ref]) / min(one[name]):.2f}; output "
              + ("byte-identical" if outs[name] == outs[ref] else "DIFFERS"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
