"""Benchmark: start-up of the command line (issue 16 goal: ``tdpsim --help`` <= 0.5 s wall).

Runs ``python -m tdpsim ARGS`` in fresh processes (so nothing is cached in this one) and
prints the best and median wall time of each command line, and the baseline in the same
run: a bare ``python -c pass`` and ``python -c "import typer"`` (what any typer CLI pays).
Also lists heavy modules that ``tdpsim --help`` must not import.  Prints figures only.

    PYTHONPATH=src python benchmarks/bench_startup.py [-n RUNS]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HEAVY = ("matplotlib", "polars", "numpy", "ray", "greenlet", "tdpsim.model.tdp_mmu",
         "tdpsim.report.html", "tdpsim.trace.parser", "tdpsim.explore.engine")

CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import typer'": [sys.executable, "-c", "import typer"],
    "tdpsim --help": [sys.executable, "-m", "tdpsim", "--help"],
    "tdpsim --version": [sys.executable, "-m", "tdpsim", "--version"],
    "tdpsim compare --help": [sys.executable, "-m", "tdpsim", "compare", "--help"],
    "tdpsim policies": [sys.executable, "-m", "tdpsim", "policies"],
}


def _time(cmd: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - t0)
    return out


def _imported_by_help() -> list[str]:
    code = ("import sys\nfrom tdpsim.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return res.stderr.split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=7)
    args = ap.parse_args()
    env_note = f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs"
    print(f"start-up, {args.runs} fresh processes each ({env_note})")
    for name, cmd in CASES.items():
        t = _time(cmd, args.runs)
        print(f"  {name:28s} best {min(t) * 1e3:7.1f} ms   median "
              f"{statistics.median(t) * 1e3:7.1f} ms")
    heavy = _imported_by_help()
    print("heavy modules imported by `tdpsim --help`: " + (", ".join(heavy) or "none"))
    print("goal: tdpsim --help <= 500 ms wall")


if __name__ == "__main__":
    main()
